//! `ckb-operator doctor`: every reason a pod (or a Deployment's pods) may not get its key, read
//! from the live cluster and said in plain language.
//!
//! ```text
//! ckb-operator doctor -n payments deployment/orders
//! ckb-operator doctor -n payments orders-7c9f8d-x2x1q
//! ```
//!
//! The checks (each can be left out with `--skip <name>`):
//!
//! | name | what must hold |
//! |---|---|
//! | `runtime-class` | the pod asks for a confidential runtime class, and that RuntimeClass exists |
//! | `namespace-opt-in` | the namespace is labelled `ckb.dev/injection: enabled` |
//! | `pod-security` | the namespace's Pod Security `enforce` level is `privileged` (or unset): `baseline` and `restricted` refuse the injected `hostPath` volume |
//! | `binding` | at least one ConfidentialKeyBinding of the namespace selects the pod |
//! | `binding-ready` | each selecting binding is `Ready` for its current generation |
//! | `webhook` | the webhook configuration exists, has a CA bundle, and its Service has ready endpoints (or its URL answers) |
//! | `injection` | the pod carries the `skr` sidecar for every selecting binding |
//! | `policy-hash` | the pod's agent-policy hash is one of each binding's bound hashes |
//! | `workload-identity-label` | the pod is labelled `azure.workload.identity/use: "true"` |
//! | `workload-identity-service-account` | its ServiceAccount carries `azure.workload.identity/client-id` |
//! | `workload-identity-env` | the workload-identity webhook gave the `skr` container its `AZURE_*` environment |
//!
//! The decision ([`diagnose`]) is a pure function of what was read ([`Facts`]); [`gather`] reads.
//! Exit code 0 when nothing is wrong, 1 when a problem was found (or the cluster could not be read).

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context as _, bail};
use ckb_crds::conditions::types;
use ckb_crds::{ConfidentialKeyBinding, labels};
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::{Namespace, Pod, PodSpec, ServiceAccount};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::node::v1::RuntimeClass;
use kube::api::ListParams;
use kube::{Api, Client};
use std::sync::Arc;

use crate::policy::hash::hash_annotation;
use crate::webhook::mutate::{
    DEFAULT_CONFIDENTIAL_RUNTIME_CLASS, INJECTED_LABEL, SIDECAR_NAME, WORKLOAD_IDENTITY_LABEL,
    select_bindings, selector_matches,
};

/// The ServiceAccount annotation naming the workload identity's client id.
pub const WI_CLIENT_ID_ANNOTATION: &str = "azure.workload.identity/client-id";
/// The environment the workload-identity webhook gives every container of a labelled pod.
pub const WI_ENV: [&str; 2] = ["AZURE_CLIENT_ID", "AZURE_FEDERATED_TOKEN_FILE"];
/// The Pod Security Admission label holding the enforced level.
pub const PSA_ENFORCE_LABEL: &str = "pod-security.kubernetes.io/enforce";

/// Every check, in the order they are reported.
pub const CHECKS: [&str; 11] = [
    "runtime-class",
    "namespace-opt-in",
    "pod-security",
    "binding",
    "binding-ready",
    "webhook",
    "injection",
    "policy-hash",
    "workload-identity-label",
    "workload-identity-service-account",
    "workload-identity-env",
];

/// Arguments of `ckb-operator doctor`.
#[derive(Debug, clap::Args)]
pub struct DoctorArgs {
    /// What to examine: `<pod>`, `pod/<name>` or `deployment/<name>`.
    pub target: String,
    /// Namespace of the target.
    #[arg(
        short = 'n',
        long = "namespace",
        env = "CKB_DOCTOR_NAMESPACE",
        default_value = "default"
    )]
    pub namespace: String,
    /// Name of the operator's MutatingWebhookConfiguration (the chart's full name).
    #[arg(
        long = "webhook-configuration",
        env = "CKB_DOCTOR_WEBHOOK_CONFIGURATION",
        default_value = "ckb-operator"
    )]
    pub webhook_configuration: String,
    /// Runtime classes of confidential pods (as the operator is configured).
    #[arg(
        long = "confidential-runtime-class",
        env = "CKB_DOCTOR_CONFIDENTIAL_RUNTIME_CLASSES",
        value_delimiter = ',',
        default_value = DEFAULT_CONFIDENTIAL_RUNTIME_CLASS
    )]
    pub confidential_runtime_classes: Vec<String>,
    /// Checks to leave out (the possible values below), e.g. `workload-identity-env`
    /// on a cluster without the workload-identity webhook.
    #[arg(long = "skip", env = "CKB_DOCTOR_SKIP", value_delimiter = ',', value_parser = clap::builder::PossibleValuesParser::new(CHECKS))]
    pub skip: Vec<String>,
}

/// The webhook as the cluster shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WebhookState {
    /// No MutatingWebhookConfiguration of that name.
    Missing(String),
    /// It exists, but something is wrong (no CA bundle, no ready endpoint, URL not answering).
    Broken(String),
    /// It exists and can be reached, as far as can be seen from here.
    Reachable(String),
}

/// What `doctor` read from the cluster.
#[derive(Debug, Clone)]
pub struct Facts {
    /// `pod ns/name` or `deployment ns/name`, for messages.
    pub target: String,
    /// The target's namespace.
    pub namespace: String,
    /// The namespace's labels.
    pub namespace_labels: BTreeMap<String, String>,
    /// Labels of the pods the target makes (the Deployment's template, or the pod's own).
    pub template_labels: BTreeMap<String, String>,
    /// Their spec (the Deployment's template, or the pod's own).
    pub template_spec: PodSpec,
    /// The live pods: the pod itself, or the Deployment's.
    pub pods: Vec<Pod>,
    /// Every binding of the namespace.
    pub bindings: Vec<Arc<ConfidentialKeyBinding>>,
    /// The pods' ServiceAccount, if it exists.
    pub service_account: Option<ServiceAccount>,
    /// Whether the RuntimeClass the pods ask for exists (`None`: they ask for none).
    pub runtime_class_exists: Option<bool>,
    /// The webhook.
    pub webhook: WebhookState,
    /// Runtime classes of confidential pods.
    pub confidential_runtime_classes: Vec<String>,
    /// Why the Deployment's ReplicaSets cannot create pods (their `ReplicaFailure` messages).
    pub create_failures: Vec<String>,
}

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

fn pod_name(p: &Pod) -> String {
    p.metadata.name.clone().unwrap_or_default()
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

fn sidecar(p: &Pod) -> Option<&k8s_openapi::api::core::v1::Container> {
    p.spec
        .as_ref()?
        .containers
        .iter()
        .chain(p.spec.as_ref()?.init_containers.iter().flatten())
        .find(|c| c.name == SIDECAR_NAME)
}

/// Every reason the target's pods may not get their key, one finding per check (and per pod where
/// pods differ). Pure.
pub fn diagnose(f: &Facts, skip: &[String]) -> Vec<Finding> {
    let mut out = Vec::new();
    let ns = f.namespace.as_str();

    // runtime-class
    let rc = f.template_spec.runtime_class_name.as_deref();
    match rc {
        Some(rc) if f.confidential_runtime_classes.iter().any(|c| c == rc) => {
            if f.runtime_class_exists == Some(false) {
                out.push(problem(
                    "runtime-class",
                    format!(
                        "runtimeClassName {rc} is confidential, but no RuntimeClass {rc} exists: \
                         add a confidential node pool (AKS creates it with the pool)"
                    ),
                ));
            } else {
                out.push(ok(
                    "runtime-class",
                    format!("runtimeClassName {rc} is a confidential runtime class"),
                ));
            }
        }
        other => out.push(problem(
            "runtime-class",
            format!(
                "runtimeClassName is {}: the webhook only injects pods whose runtimeClassName is \
                 one of {}; set it in the pod template",
                other.map_or("unset".to_string(), |r| format!("{r:?}")),
                f.confidential_runtime_classes.join(", ")
            ),
        )),
    }

    // namespace-opt-in
    if f.namespace_labels
        .get(labels::INJECTION)
        .map(String::as_str)
        == Some(labels::INJECTION_ENABLED)
    {
        out.push(ok(
            "namespace-opt-in",
            format!("namespace {ns} is labelled {}=enabled", labels::INJECTION),
        ));
    } else {
        out.push(problem(
            "namespace-opt-in",
            format!(
                "namespace {ns} is not labelled {}=enabled, so the webhook never sees its pods: \
                 kubectl label namespace {ns} {}=enabled, then restart the workload",
                labels::INJECTION,
                labels::INJECTION
            ),
        ));
    }

    // pod-security
    match f.namespace_labels.get(PSA_ENFORCE_LABEL).map(String::as_str) {
        Some(level @ ("baseline" | "restricted")) => out.push(problem(
            "pod-security",
            format!(
                "namespace {ns} enforces Pod Security level {level:?} ({PSA_ENFORCE_LABEL}), which \
                 refuses the hostPath volume the SKR sidecar needs (its attestation reference \
                 info): set the namespace to \"privileged\" (kubectl label namespace {ns} \
                 {PSA_ENFORCE_LABEL}=privileged --overwrite)"
            ),
        )),
        level => out.push(ok(
            "pod-security",
            format!(
                "Pod Security level of namespace {ns} is {} and admits the sidecar's hostPath volume",
                level.unwrap_or("not enforced")
            ),
        )),
    }
    for msg in &f.create_failures {
        out.push(problem(
            "pod-security",
            format!("the ReplicaSet cannot create pods: {msg}"),
        ));
    }

    // binding
    let selecting = select_bindings(ns, &f.template_labels, &f.bindings);
    if selecting.is_empty() {
        let near: Vec<String> = f
            .bindings
            .iter()
            .map(|b| b.metadata.name.clone().unwrap_or_default())
            .collect();
        out.push(problem(
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
        ));
    } else {
        out.push(ok(
            "binding",
            format!(
                "selected by {}",
                selecting
                    .iter()
                    .map(|b| b.metadata.name.clone().unwrap_or_default())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        ));
    }

    // binding-ready
    for b in &selecting {
        let name = b.metadata.name.clone().unwrap_or_default();
        let observed = b.status.as_ref().and_then(|s| s.observed_generation);
        if observed != b.metadata.generation {
            out.push(problem(
                "binding-ready",
                format!(
                    "binding {name}: the operator has not yet reconciled its generation {} (is \
                     ckb-operator running?)",
                    b.metadata.generation.unwrap_or_default()
                ),
            ));
            continue;
        }
        let (ready, cause) = crate::controller::status::cause(b);
        if ready {
            out.push(ok("binding-ready", format!("binding {name} is Ready")));
            continue;
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
        out.push(problem(
            "binding-ready",
            format!(
                "binding {name} is not Ready ({cause}): {detail}{}",
                if stalled {
                    " — this needs a change from you; the operator cannot fix it by retrying"
                } else {
                    " — the operator is still working on it"
                }
            ),
        ));
    }

    // webhook
    match &f.webhook {
        WebhookState::Reachable(m) => out.push(ok("webhook", m.clone())),
        WebhookState::Missing(m) | WebhookState::Broken(m) => {
            out.push(problem("webhook", m.clone()))
        }
    }

    // Per pod: injection, hash, workload identity env.
    let live: Vec<&Pod> = f.pods.iter().filter(|p| is_live(p)).collect();
    if live.is_empty() && !selecting.is_empty() {
        out.push(ok(
            "injection",
            "no live pods to examine (the checks above apply to the pods it will create)",
        ));
    }
    for pod in &live {
        let pn = pod_name(pod);
        let injected = pod
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(INJECTED_LABEL))
            .is_some_and(|v| v == "true")
            && sidecar(pod).is_some();
        if selecting.is_empty() {
            continue;
        }
        if !injected {
            out.push(problem(
                "injection",
                format!(
                    "pod {pn} has no {SIDECAR_NAME} sidecar: it was created before its binding \
                     existed, or while the webhook was down or not selecting it; restart the \
                     workload (kubectl rollout restart) so new pods are injected"
                ),
            ));
            continue;
        }
        let named = annotation(pod, labels::BINDINGS).unwrap_or_default();
        for b in &selecting {
            let bn = b.metadata.name.clone().unwrap_or_default();
            if !named.split(',').any(|n| n.trim() == bn) {
                out.push(problem(
                    "injection",
                    format!(
                        "pod {pn} was injected for {named:?} but not for binding {bn}, which now \
                         selects it: restart the workload"
                    ),
                ));
            }
        }
        out.push(ok(
            "injection",
            format!("pod {pn} has the {SIDECAR_NAME} sidecar"),
        ));

        // policy-hash
        let hash = match annotation(pod, labels::AGENT_POLICY).map(hash_annotation) {
            Some(Ok(h)) => Some(h.to_string()),
            Some(Err(e)) => {
                out.push(problem(
                    "policy-hash",
                    format!(
                        "pod {pn}: its {} annotation cannot be decoded ({e})",
                        labels::AGENT_POLICY
                    ),
                ));
                None
            }
            None => {
                out.push(problem(
                    "policy-hash",
                    format!(
                        "pod {pn} has no {} annotation: the VM runs no policy whose hash the key \
                         could be bound to",
                        labels::AGENT_POLICY
                    ),
                ));
                None
            }
        };
        if let Some(hash) = hash {
            for b in &selecting {
                let bn = b.metadata.name.clone().unwrap_or_default();
                let bound: Vec<&str> = b
                    .status
                    .as_ref()
                    .and_then(|s| s.policy.as_ref())
                    .map(|p| p.bound_hashes.iter().map(|h| h.hash.as_str()).collect())
                    .unwrap_or_default();
                if bound.contains(&hash.as_str()) {
                    out.push(ok(
                        "policy-hash",
                        format!(
                            "pod {pn}: policy hash {} is bound to binding {bn}'s key",
                            &hash[..12]
                        ),
                    ));
                } else {
                    out.push(problem(
                        "policy-hash",
                        format!(
                            "pod {pn} runs policy hash {hash}, which binding {bn}'s key does not \
                             allow (bound: {}): Key Vault will refuse the release (the sidecar \
                             answers 403). Put the policy this pod runs in the binding's \
                             ConfigMap, or restart the pod so it gets the current one",
                            if bound.is_empty() {
                                "none".to_string()
                            } else {
                                bound.join(", ")
                            }
                        ),
                    ));
                }
            }
        }

        // workload-identity-env
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
            out.push(ok(
                "workload-identity-env",
                format!(
                    "pod {pn}: the {SIDECAR_NAME} container has the workload-identity environment"
                ),
            ));
        } else {
            out.push(problem(
                "workload-identity-env",
                format!(
                    "pod {pn}: the {SIDECAR_NAME} container lacks {}: the Azure workload-identity \
                     webhook did not reach it (is it installed, and does the pod carry its label \
                     at creation?); without it the sidecar cannot authenticate to Key Vault",
                    missing.join(", ")
                ),
            ));
        }
    }

    // workload-identity-label
    if f.template_labels
        .get(WORKLOAD_IDENTITY_LABEL)
        .map(String::as_str)
        == Some("true")
    {
        out.push(ok(
            "workload-identity-label",
            format!("the pods are labelled {WORKLOAD_IDENTITY_LABEL}=true"),
        ));
    } else {
        out.push(problem(
            "workload-identity-label",
            format!(
                "the pods are not labelled {WORKLOAD_IDENTITY_LABEL}: \"true\": the SKR sidecar \
                 authenticates to Key Vault with Azure workload identity; add the label to the \
                 pod template"
            ),
        ));
    }

    // workload-identity-service-account
    let sa_name = f
        .template_spec
        .service_account_name
        .clone()
        .unwrap_or_else(|| "default".into());
    match &f.service_account {
        None => out.push(problem(
            "workload-identity-service-account",
            format!("ServiceAccount {sa_name} does not exist"),
        )),
        Some(sa) => {
            let client = sa
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(WI_CLIENT_ID_ANNOTATION));
            match client {
                Some(id) if !id.trim().is_empty() => out.push(ok(
                    "workload-identity-service-account",
                    format!("ServiceAccount {sa_name} names client id {id}"),
                )),
                _ => out.push(problem(
                    "workload-identity-service-account",
                    format!(
                        "ServiceAccount {sa_name} has no {WI_CLIENT_ID_ANNOTATION} annotation: \
                         annotate it with the client id of the identity that may release the key"
                    ),
                )),
            }
        }
    }

    out.retain(|f| !skip.iter().any(|s| s == f.check));
    out.sort_by_key(|f| CHECKS.iter().position(|c| *c == f.check));
    out
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

/// Reads the facts about `target` from the cluster.
pub async fn gather(client: &Client, args: &DoctorArgs) -> anyhow::Result<Facts> {
    let ns = args.namespace.as_str();
    let (kind, name) = match args.target.split_once('/') {
        Some((k, n)) => (k.to_ascii_lowercase(), n.to_string()),
        None => ("pod".to_string(), args.target.clone()),
    };
    let pods_api: Api<Pod> = Api::namespaced(client.clone(), ns);
    let (target, template_labels, template_spec, pods, create_failures) = match kind.as_str() {
        "pod" | "pods" | "po" => {
            let pod = pods_api
                .get_opt(&name)
                .await?
                .with_context(|| format!("pod {ns}/{name} not found"))?;
            let labels = pod.metadata.labels.clone().unwrap_or_default();
            let spec = pod.spec.clone().unwrap_or_default();
            (format!("pod {ns}/{name}"), labels, spec, vec![pod], vec![])
        }
        "deployment" | "deployments" | "deploy" => {
            let api: Api<Deployment> = Api::namespaced(client.clone(), ns);
            let d = api
                .get_opt(&name)
                .await?
                .with_context(|| format!("deployment {ns}/{name} not found"))?;
            let spec = d.spec.clone().unwrap_or_default();
            let template = spec.template.clone();
            let labels = template
                .metadata
                .as_ref()
                .and_then(|m| m.labels.clone())
                .unwrap_or_default();
            let all = pods_api.list(&ListParams::default()).await?;
            let pods: Vec<Pod> = all
                .items
                .into_iter()
                .filter(|p| {
                    selector_matches(
                        &spec.selector,
                        &p.metadata.labels.clone().unwrap_or_default(),
                    )
                })
                .collect();
            let rs_api: Api<ReplicaSet> = Api::namespaced(client.clone(), ns);
            let uid = d.metadata.uid.clone().unwrap_or_default();
            let failures = rs_api
                .list(&ListParams::default())
                .await?
                .items
                .into_iter()
                .filter(|rs| {
                    rs.metadata
                        .owner_references
                        .iter()
                        .flatten()
                        .any(|o| o.uid == uid)
                })
                .flat_map(|rs| rs.status.and_then(|s| s.conditions).unwrap_or_default())
                .filter(|c| c.type_ == "ReplicaFailure" && c.status == "True")
                .filter_map(|c| c.message)
                .collect();
            (
                format!("deployment {ns}/{name}"),
                labels,
                template.spec.unwrap_or_default(),
                pods,
                failures,
            )
        }
        other => bail!("cannot examine a {other:?}: give <pod>, pod/<name> or deployment/<name>"),
    };
    let namespace = Api::<Namespace>::all(client.clone())
        .get_opt(ns)
        .await?
        .with_context(|| format!("namespace {ns} not found"))?;
    let bindings = Api::<ConfidentialKeyBinding>::namespaced(client.clone(), ns)
        .list(&ListParams::default())
        .await
        .context("listing ConfidentialKeyBindings (is the CRD installed?)")?
        .items
        .into_iter()
        .map(Arc::new)
        .collect();
    let sa_name = template_spec
        .service_account_name
        .clone()
        .unwrap_or_else(|| "default".into());
    let service_account = Api::<ServiceAccount>::namespaced(client.clone(), ns)
        .get_opt(&sa_name)
        .await?;
    let runtime_class_exists = match template_spec.runtime_class_name.as_deref() {
        Some(rc) => Some(
            Api::<RuntimeClass>::all(client.clone())
                .get_opt(rc)
                .await?
                .is_some(),
        ),
        None => None,
    };
    let webhook = webhook_state(client, &args.webhook_configuration).await?;
    Ok(Facts {
        target,
        namespace: ns.to_string(),
        namespace_labels: namespace.metadata.labels.unwrap_or_default(),
        template_labels,
        template_spec,
        pods,
        bindings,
        service_account,
        runtime_class_exists,
        webhook,
        confidential_runtime_classes: args.confidential_runtime_classes.clone(),
        create_failures,
    })
}

async fn webhook_state(client: &Client, name: &str) -> anyhow::Result<WebhookState> {
    let Some(cfg) = Api::<MutatingWebhookConfiguration>::all(client.clone())
        .get_opt(name)
        .await?
    else {
        return Ok(WebhookState::Missing(format!(
            "no MutatingWebhookConfiguration {name}: is ckb-operator installed (or is its name \
             another; see --webhook-configuration)?"
        )));
    };
    let Some(hook) = cfg.webhooks.iter().flatten().next() else {
        return Ok(WebhookState::Broken(format!(
            "MutatingWebhookConfiguration {name} has no webhook"
        )));
    };
    let cc = &hook.client_config;
    if cc.ca_bundle.as_ref().is_none_or(|b| b.0.is_empty()) {
        return Ok(WebhookState::Broken(format!(
            "MutatingWebhookConfiguration {name} has no caBundle yet: the API server cannot \
             trust the webhook (the operator, or cert-manager, writes it once running)"
        )));
    }
    if let Some(svc) = &cc.service {
        let slices = Api::<EndpointSlice>::namespaced(client.clone(), &svc.namespace)
            .list(
                &ListParams::default().labels(&format!("kubernetes.io/service-name={}", svc.name)),
            )
            .await?;
        let ready = slices
            .items
            .iter()
            .flat_map(|s| s.endpoints.iter())
            .filter(|e| e.conditions.as_ref().and_then(|c| c.ready) != Some(false))
            .count();
        return Ok(if ready == 0 {
            WebhookState::Broken(format!(
                "the webhook's Service {}/{} has no ready endpoint: no operator replica is \
                 serving, so confidential pods are refused (failurePolicy Fail) or admitted \
                 without the sidecar (Ignore)",
                svc.namespace, svc.name
            ))
        } else {
            WebhookState::Reachable(format!(
                "the webhook's Service {}/{} has {ready} ready endpoint(s)",
                svc.namespace, svc.name
            ))
        });
    }
    if let Some(url) = &cc.url {
        let authority = url
            .trim_start_matches("https://")
            .split('/')
            .next()
            .unwrap_or_default()
            .to_string();
        let addr = if authority.contains(':') {
            authority.clone()
        } else {
            format!("{authority}:443")
        };
        let reached = tokio::time::timeout(
            Duration::from_secs(3),
            tokio::net::TcpStream::connect(addr.as_str()),
        )
        .await;
        return Ok(match reached {
            Ok(Ok(_)) => {
                WebhookState::Reachable(format!("the webhook at {url} accepts connections"))
            }
            Ok(Err(e)) => {
                WebhookState::Broken(format!("the webhook at {url} cannot be reached: {e}"))
            }
            Err(_) => {
                WebhookState::Broken(format!("the webhook at {url} does not answer within 3 s"))
            }
        });
    }
    Ok(WebhookState::Broken(format!(
        "MutatingWebhookConfiguration {name} names neither a Service nor a URL"
    )))
}

/// Prints the findings; the text a user reads.
pub fn report(target: &str, findings: &[Finding]) -> String {
    let problems = findings.iter().filter(|f| f.problem).count();
    let mut out = format!("{target}\n");
    for f in findings {
        out.push_str(&format!(
            "  {} [{}] {}\n",
            if f.problem { "PROBLEM" } else { "ok     " },
            f.check,
            f.message
        ));
    }
    if problems == 0 {
        out.push_str("Nothing is wrong: the pods can get their key.\n");
    } else {
        out.push_str(&format!(
            "{problems} problem(s) found: the pods may not get their key until each is fixed.\n"
        ));
    }
    out
}

/// `ckb-operator doctor`.
pub async fn run(args: DoctorArgs) -> anyhow::Result<()> {
    let client = Client::try_default()
        .await
        .context("cannot reach the cluster (kubeconfig)")?;
    let facts = gather(&client, &args).await?;
    let findings = diagnose(&facts, &args.skip);
    print!("{}", report(&facts.target, &findings));
    let problems = findings.iter().filter(|f| f.problem).count();
    if problems > 0 {
        bail!("{problems} problem(s) found for {}", facts.target);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use ckb_crds::{BoundHash, BoundHashReason, ConfidentialKeyBindingStatus, PolicyStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
    use serde_json::json;

    const REGO: &str = "package agent_policy\ndefault CreateContainerRequest := true\n";

    fn hash() -> String {
        crate::policy::hash::hash_rego(REGO.as_bytes()).to_string()
    }

    fn binding(ready: bool, bound: &str) -> Arc<ConfidentialKeyBinding> {
        let mut b: ConfidentialKeyBinding = serde_json::from_value(json!({
            "apiVersion": "ckb.dev/v1alpha1", "kind": "ConfidentialKeyBinding",
            "metadata": {"name": "orders", "namespace": "payments", "generation": 2},
            "spec": {
                "podSelector": {"matchLabels": {"app": "orders"}},
                "key": {"vault": "https://demo.vault.azure.net", "name": "k", "type": "EC-HSM", "curve": "P-256"},
                "attestation": {"authority": "https://a.attest.azure.net"},
                "policy": {"configMapRef": {"name": "p", "key": "policy.rego"}}
            }
        }))
        .unwrap();
        let cond = |t: &str, s: &str, r: &str| Condition {
            type_: t.into(),
            status: s.into(),
            reason: r.into(),
            message: format!("{r} message"),
            observed_generation: Some(2),
            last_transition_time: Time(jiff::Timestamp::UNIX_EPOCH),
        };
        b.status = Some(ConfidentialKeyBindingStatus {
            observed_generation: Some(2),
            conditions: if ready {
                vec![cond("Ready", "True", "Ready")]
            } else {
                vec![
                    cond("Ready", "False", "NotReady"),
                    cond("Stalled", "True", "VaultNotAllowed"),
                ]
            },
            policy: Some(PolicyStatus {
                bound_hashes: vec![BoundHash {
                    hash: bound.into(),
                    reason: BoundHashReason::Current,
                    since: "2026-01-01T00:00:00Z".into(),
                }],
                ..Default::default()
            }),
            ..Default::default()
        });
        Arc::new(b)
    }

    fn pod(injected: bool, wi_label: bool, wi_env: bool) -> Pod {
        let mut labels = json!({"app": "orders"});
        if wi_label {
            labels[WORKLOAD_IDENTITY_LABEL] = json!("true");
        }
        let mut containers = vec![json!({"name": "app", "image": "app"})];
        let mut annotations = json!({});
        if injected {
            labels[INJECTED_LABEL] = json!("true");
            annotations[labels::BINDINGS] = json!("orders");
            annotations[labels::AGENT_POLICY] = json!(crate::policy::hash::encode_annotation(REGO));
            let env: Vec<_> = if wi_env {
                WI_ENV
                    .iter()
                    .map(|n| json!({"name": n, "value": "x"}))
                    .collect()
            } else {
                vec![]
            };
            containers.push(json!({"name": SIDECAR_NAME, "image": "skr", "env": env}));
        }
        serde_json::from_value(json!({
            "metadata": {"name": "orders-1", "namespace": "payments", "labels": labels, "annotations": annotations},
            "spec": {"runtimeClassName": "kata-cc-isolation", "serviceAccountName": "orders", "containers": containers},
            "status": {"phase": "Pending"}
        }))
        .unwrap()
    }

    fn facts(p: Pod, b: Arc<ConfidentialKeyBinding>) -> Facts {
        Facts {
            target: "pod payments/orders-1".into(),
            namespace: "payments".into(),
            namespace_labels: BTreeMap::from([(labels::INJECTION.into(), "enabled".into())]),
            template_labels: p.metadata.labels.clone().unwrap_or_default(),
            template_spec: p.spec.clone().unwrap(),
            pods: vec![p],
            bindings: vec![b],
            service_account: Some({
                let mut sa = json!({"metadata": {"name": "orders", "annotations": {}}});
                sa["metadata"]["annotations"][WI_CLIENT_ID_ANNOTATION] = json!("0000");
                serde_json::from_value(sa).unwrap()
            }),
            runtime_class_exists: Some(true),
            webhook: WebhookState::Reachable("reachable".into()),
            confidential_runtime_classes: vec!["kata-cc-isolation".into()],
            create_failures: vec![],
        }
    }

    fn problems(f: &Facts) -> Vec<&'static str> {
        diagnose(f, &[])
            .into_iter()
            .filter(|f| f.problem)
            .map(|f| f.check)
            .collect()
    }

    #[test]
    fn a_healthy_pod_has_no_problem_and_every_check_ran() {
        let f = facts(pod(true, true, true), binding(true, &hash()));
        let all = diagnose(&f, &[]);
        assert!(all.iter().all(|f| !f.problem), "{all:#?}");
        for c in CHECKS {
            assert!(all.iter().any(|f| f.check == c), "check {c} did not run");
        }
        assert!(report("pod payments/orders-1", &all).contains("Nothing is wrong"));
    }

    #[test]
    fn each_broken_case_is_pinpointed() {
        let good = || facts(pod(true, true, true), binding(true, &hash()));
        let mut f = facts(pod(true, true, true), binding(true, &"0".repeat(64)));
        assert_eq!(problems(&f), ["policy-hash"]);
        f = good();
        f.template_labels.remove(WORKLOAD_IDENTITY_LABEL);
        assert_eq!(problems(&f), ["workload-identity-label"]);
        let f = facts(pod(false, true, false), binding(true, &hash()));
        assert_eq!(problems(&f), ["injection"]);
        let mut f = good();
        f.namespace_labels
            .insert(PSA_ENFORCE_LABEL.into(), "baseline".into());
        assert_eq!(problems(&f), ["pod-security"]);
        let f = facts(pod(true, true, true), binding(false, &hash()));
        assert_eq!(problems(&f), ["binding-ready"]);
        let msg = diagnose(&f, &[])
            .into_iter()
            .find(|f| f.problem)
            .unwrap()
            .message;
        assert!(
            msg.contains("VaultNotAllowed") && msg.contains("needs a change"),
            "{msg}"
        );
        let f = facts(pod(true, true, false), binding(true, &hash()));
        assert_eq!(problems(&f), ["workload-identity-env"]);
        assert!(
            diagnose(&f, &["workload-identity-env".into()])
                .iter()
                .all(|f| !f.problem)
        );
        let mut f = good();
        f.namespace_labels.clear();
        assert_eq!(problems(&f), ["namespace-opt-in"]);
        let mut f = good();
        f.template_spec.runtime_class_name = None;
        assert_eq!(problems(&f), ["runtime-class"]);
        let mut f = good();
        f.webhook = WebhookState::Broken("no endpoint".into());
        assert_eq!(problems(&f), ["webhook"]);
        let mut f = good();
        f.template_labels.insert("app".into(), "other".into());
        assert_eq!(problems(&f), ["binding"]);
        let mut f = good();
        f.service_account = None;
        assert_eq!(problems(&f), ["workload-identity-service-account"]);
    }
}
