//! The decision of `doctor`: every reason the target's pods may not get their key, one check at a
//! time, from what was read ([`Facts`]). Pure.

use std::collections::BTreeMap;
use std::sync::Arc;

use ckb_crds::conditions::types;
use ckb_crds::{ConfidentialKeyBinding, labels};
use k8s_openapi::api::core::v1::{Container, Pod};

use super::facts::{Facts, WebhookState};
use super::{CHECKS, PSA_ENFORCE_LABEL, WI_CLIENT_ID_ANNOTATION, WI_ENV};
use crate::webhook::mutate::{
    INJECTED_LABEL, SIDECAR_NAME, WORKLOAD_IDENTITY_LABEL, select_bindings,
};
use crate::webhook::policy::annotation_policy_hash;

/// One verdict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// The check (one of [`CHECKS`]).
    pub check: &'static str,
    /// Whether this stops the pod from getting its key.
    pub problem: bool,
    /// What was found, and for a problem, what to do.
    pub message: String,
}

fn ok(check: &'static str, message: impl Into<String>) -> Finding {
    Finding {
        check,
        problem: false,
        message: message.into(),
    }
}

fn problem(check: &'static str, message: impl Into<String>) -> Finding {
    Finding {
        check,
        problem: true,
        message: message.into(),
    }
}

fn name_of<K: kube::Resource>(o: &K) -> String {
    o.meta().name.clone().unwrap_or_default()
}

fn is_live(p: &Pod) -> bool {
    let phase = p.status.as_ref().and_then(|s| s.phase.as_deref());
    p.metadata.deletion_timestamp.is_none() && !matches!(phase, Some("Succeeded" | "Failed"))
}

fn annotation<'a>(p: &'a Pod, key: &str) -> Option<&'a str> {
    p.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(key))
        .map(String::as_str)
}

fn sidecar(p: &Pod) -> Option<&Container> {
    let spec = p.spec.as_ref()?;
    spec.containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
        .find(|c| c.name == SIDECAR_NAME)
}

fn show_labels(l: &BTreeMap<String, String>) -> String {
    if l.is_empty() {
        return "none".into();
    }
    l.iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// Every reason the target's pods may not get their key, one finding per check (and per pod where
/// pods differ), in the order of [`CHECKS`], without the checks in `skip`.
pub fn diagnose(f: &Facts, skip: &[String]) -> Vec<Finding> {
    let mut out = vec![runtime_class(f), namespace_opt_in(f)];
    out.extend(pod_security(f));
    let selecting = select_bindings(&f.namespace, &f.template_labels, &f.bindings);
    out.push(binding(f, &selecting));
    out.extend(selecting.iter().map(|b| binding_ready(b)));
    out.push(match &f.webhook {
        WebhookState::Reachable(m) => ok("webhook", m.clone()),
        WebhookState::Missing(m) | WebhookState::Broken(m) => problem("webhook", m.clone()),
    });
    let live: Vec<&Pod> = f.pods.iter().filter(|p| is_live(p)).collect();
    if !selecting.is_empty() {
        if live.is_empty() {
            out.push(ok(
                "injection",
                "no live pods to examine (the checks above apply to the pods it will create)",
            ));
        }
        for pod in live {
            out.extend(per_pod(pod, &selecting));
        }
    }
    out.push(workload_identity_label(f));
    out.push(workload_identity_service_account(f));
    out.retain(|f| !skip.iter().any(|s| s == f.check));
    out.sort_by_key(|f| CHECKS.iter().position(|c| *c == f.check));
    out
}

fn runtime_class(f: &Facts) -> Finding {
    match f.template_spec.runtime_class_name.as_deref() {
        Some(rc) if f.confidential_runtime_classes.iter().any(|c| c == rc) => {
            if f.runtime_class_exists == Some(false) {
                problem(
                    "runtime-class",
                    format!(
                        "runtimeClassName {rc} is confidential, but no RuntimeClass {rc} exists: \
                         add a confidential node pool (AKS creates it with the pool)"
                    ),
                )
            } else {
                ok(
                    "runtime-class",
                    format!("runtimeClassName {rc} is a confidential runtime class"),
                )
            }
        }
        other => problem(
            "runtime-class",
            format!(
                "runtimeClassName is {}: the webhook only injects pods whose runtimeClassName is \
                 one of {}; set it in the pod template",
                other.map_or("unset".to_string(), |r| format!("{r:?}")),
                f.confidential_runtime_classes.join(", ")
            ),
        ),
    }
}

fn namespace_opt_in(f: &Facts) -> Finding {
    let ns = &f.namespace;
    let label = labels::INJECTION;
    if f.namespace_labels.get(label).map(String::as_str) == Some(labels::INJECTION_ENABLED) {
        ok(
            "namespace-opt-in",
            format!("namespace {ns} is labelled {label}=enabled"),
        )
    } else {
        problem(
            "namespace-opt-in",
            format!(
                "namespace {ns} is not labelled {label}=enabled, so the webhook never sees its pods: \
                 kubectl label namespace {ns} {label}=enabled, then restart the workload"
            ),
        )
    }
}

fn pod_security(f: &Facts) -> Vec<Finding> {
    let ns = &f.namespace;
    let level = match f
        .namespace_labels
        .get(PSA_ENFORCE_LABEL)
        .map(String::as_str)
    {
        Some(level @ ("baseline" | "restricted")) => problem(
            "pod-security",
            format!(
                "namespace {ns} enforces Pod Security level {level:?} ({PSA_ENFORCE_LABEL}), which \
                 refuses the hostPath volume the SKR sidecar needs (its attestation reference \
                 info): set the namespace to \"privileged\" (kubectl label namespace {ns} \
                 {PSA_ENFORCE_LABEL}=privileged --overwrite)"
            ),
        ),
        level => ok(
            "pod-security",
            format!(
                "Pod Security level of namespace {ns} is {} and admits the sidecar's hostPath volume",
                level.unwrap_or("not enforced")
            ),
        ),
    };
    let failures = f.create_failures.iter().map(|msg| {
        problem(
            "pod-security",
            format!("the ReplicaSet cannot create pods: {msg}"),
        )
    });
    std::iter::once(level).chain(failures).collect()
}

fn binding(f: &Facts, selecting: &[Arc<ConfidentialKeyBinding>]) -> Finding {
    let ns = &f.namespace;
    if !selecting.is_empty() {
        let names: Vec<String> = selecting.iter().map(|b| name_of(b.as_ref())).collect();
        return ok("binding", format!("selected by {}", names.join(", ")));
    }
    let near: Vec<String> = f.bindings.iter().map(|b| name_of(b.as_ref())).collect();
    problem(
        "binding",
        format!(
            "no ConfidentialKeyBinding of namespace {ns} selects the pods (labels {}){}",
            show_labels(&f.template_labels),
            if near.is_empty() {
                " and the namespace has none: create one".to_string()
            } else {
                format!(
                    "; the namespace has {}: check their spec.podSelector",
                    near.join(", ")
                )
            }
        ),
    )
}

fn binding_ready(b: &ConfidentialKeyBinding) -> Finding {
    let name = name_of(b);
    let observed = b.status.as_ref().and_then(|s| s.observed_generation);
    if observed != b.metadata.generation {
        return problem(
            "binding-ready",
            format!(
                "binding {name}: the operator has not yet reconciled its generation {} (is \
                 ckb-operator running?)",
                b.metadata.generation.unwrap_or_default()
            ),
        );
    }
    let (ready, cause) = crate::controller::status::cause(b);
    if ready {
        return ok("binding-ready", format!("binding {name} is Ready"));
    }
    let detail = [types::STALLED, types::RECONCILING, types::READY]
        .iter()
        .filter_map(|t| b.condition(t))
        .find(|c| c.reason == cause)
        .map(|c| c.message.clone())
        .unwrap_or_default();
    let stalled = b
        .condition(types::STALLED)
        .is_some_and(|c| c.status == "True");
    problem(
        "binding-ready",
        format!(
            "binding {name} is not Ready ({cause}): {detail}{}",
            if stalled {
                " — this needs a change from you; the operator cannot fix it by retrying"
            } else {
                " — the operator is still working on it"
            }
        ),
    )
}

/// The checks of one live pod: injection, then (when injected) its policy hash and the sidecar's
/// workload-identity environment.
fn per_pod(pod: &Pod, selecting: &[Arc<ConfidentialKeyBinding>]) -> Vec<Finding> {
    let pn = name_of(pod);
    let injected = pod
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(INJECTED_LABEL))
        .is_some_and(|v| v == "true")
        && sidecar(pod).is_some();
    if !injected {
        return vec![problem(
            "injection",
            format!(
                "pod {pn} has no {SIDECAR_NAME} sidecar: it was created before its binding \
                 existed, or while the webhook was down or not selecting it; restart the \
                 workload (kubectl rollout restart) so new pods are injected"
            ),
        )];
    }
    let named = annotation(pod, labels::BINDINGS).unwrap_or_default();
    let mut out: Vec<Finding> = selecting
        .iter()
        .map(|b| name_of(b.as_ref()))
        .filter(|bn| !named.split(',').any(|n| n.trim() == bn))
        .map(|bn| {
            problem(
                "injection",
                format!(
                    "pod {pn} was injected for {named:?} but not for binding {bn}, which now \
                     selects it: restart the workload"
                ),
            )
        })
        .collect();
    out.push(ok(
        "injection",
        format!("pod {pn} has the {SIDECAR_NAME} sidecar"),
    ));
    out.extend(policy_hash(pod, &pn, selecting));
    out.push(workload_identity_env(pod, &pn));
    out
}

fn policy_hash(pod: &Pod, pn: &str, selecting: &[Arc<ConfidentialKeyBinding>]) -> Vec<Finding> {
    let hash = match annotation(pod, labels::AGENT_POLICY).map(annotation_policy_hash) {
        Some(Ok(h)) => h.to_string(),
        Some(Err(e)) => {
            return vec![problem(
                "policy-hash",
                format!(
                    "pod {pn}: its {} annotation cannot be decoded ({e})",
                    labels::AGENT_POLICY
                ),
            )];
        }
        None => {
            return vec![problem(
                "policy-hash",
                format!(
                    "pod {pn} has no {} annotation: the VM runs no policy whose hash the key \
                     could be bound to",
                    labels::AGENT_POLICY
                ),
            )];
        }
    };
    selecting
        .iter()
        .map(|b| {
            let bn = name_of(b.as_ref());
            let bound: Vec<&str> = b
                .status
                .as_ref()
                .and_then(|s| s.policy.as_ref())
                .map(|p| p.bound_hashes.iter().map(|h| h.hash.as_str()).collect())
                .unwrap_or_default();
            if bound.contains(&hash.as_str()) {
                return ok(
                    "policy-hash",
                    format!(
                        "pod {pn}: policy hash {} is bound to binding {bn}'s key",
                        &hash[..12]
                    ),
                );
            }
            problem(
                "policy-hash",
                format!(
                    "pod {pn} runs policy hash {hash}, which binding {bn}'s key does not allow \
                     (bound: {}): Key Vault will refuse the release (the sidecar answers 403). \
                     Put the policy this pod runs in the binding's ConfigMap, or restart the pod \
                     so it gets the current one",
                    if bound.is_empty() {
                        "none".to_string()
                    } else {
                        bound.join(", ")
                    }
                ),
            )
        })
        .collect()
}

fn workload_identity_env(pod: &Pod, pn: &str) -> Finding {
    let env: Vec<&str> = sidecar(pod)
        .and_then(|c| c.env.as_ref())
        .map(|e| e.iter().map(|v| v.name.as_str()).collect())
        .unwrap_or_default();
    let missing: Vec<&str> = WI_ENV
        .iter()
        .copied()
        .filter(|n| !env.contains(n))
        .collect();
    if missing.is_empty() {
        return ok(
            "workload-identity-env",
            format!("pod {pn}: the {SIDECAR_NAME} container has the workload-identity environment"),
        );
    }
    problem(
        "workload-identity-env",
        format!(
            "pod {pn}: the {SIDECAR_NAME} container lacks {}: the Azure workload-identity \
             webhook did not reach it (is it installed, and does the pod carry its label at \
             creation?); without it the sidecar cannot authenticate to Key Vault",
            missing.join(", ")
        ),
    )
}

fn workload_identity_label(f: &Facts) -> Finding {
    if f.template_labels
        .get(WORKLOAD_IDENTITY_LABEL)
        .map(String::as_str)
        == Some("true")
    {
        return ok(
            "workload-identity-label",
            format!("the pods are labelled {WORKLOAD_IDENTITY_LABEL}=true"),
        );
    }
    problem(
        "workload-identity-label",
        format!(
            "the pods are not labelled {WORKLOAD_IDENTITY_LABEL}: \"true\": the SKR sidecar \
             authenticates to Key Vault with Azure workload identity; add the label to the pod \
             template"
        ),
    )
}

fn workload_identity_service_account(f: &Facts) -> Finding {
    let check = "workload-identity-service-account";
    let sa_name = f
        .template_spec
        .service_account_name
        .clone()
        .unwrap_or_else(|| "default".into());
    let Some(sa) = &f.service_account else {
        return problem(check, format!("ServiceAccount {sa_name} does not exist"));
    };
    let client = sa
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(WI_CLIENT_ID_ANNOTATION));
    match client {
        Some(id) if !id.trim().is_empty() => ok(
            check,
            format!("ServiceAccount {sa_name} names client id {id}"),
        ),
        _ => problem(
            check,
            format!(
                "ServiceAccount {sa_name} has no {WI_CLIENT_ID_ANNOTATION} annotation: annotate \
                 it with the client id of the identity that may release the key"
            ),
        ),
    }
}
