//! Tests of [`super::checks::diagnose`] and [`super::report`].

use std::collections::BTreeMap;
use std::sync::Arc;

use ckb_crds::{
    BoundHash, BoundHashReason, ConfidentialKeyBinding, ConfidentialKeyBindingStatus, PolicyStatus,
    labels,
};
use k8s_openapi::api::core::v1::Pod;

use super::*;
use crate::webhook::mutate::{INJECTED_LABEL, SIDECAR_NAME, WORKLOAD_IDENTITY_LABEL};
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
                hash: bound.parse().unwrap(),
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

fn good() -> Facts {
    facts(pod(true, true, true), binding(true, &hash()))
}

#[test]
fn a_pod_whose_hash_is_not_bound_is_a_policy_hash_problem() {
    let f = facts(pod(true, true, true), binding(true, &"0".repeat(64)));
    assert_eq!(problems(&f), ["policy-hash"]);
}

#[test]
fn a_wrapped_base64_policy_annotation_is_read_as_the_webhook_reads_it() {
    let mut f = good();
    let annotations = f.pods[0].metadata.annotations.as_mut().unwrap();
    let value = annotations.get_mut(labels::AGENT_POLICY).unwrap();
    // Line breaks every 76 characters, as `base64` without `-w0` writes it.
    let wrapped: Vec<String> = value
        .as_bytes()
        .chunks(76)
        .map(|c| String::from_utf8_lossy(c).into_owned())
        .collect();
    assert!(wrapped.len() > 1, "the test policy must span several lines");
    *value = wrapped.join("\n");
    assert_eq!(problems(&f), Vec::<&str>::new());
}

#[test]
fn pods_without_the_workload_identity_label_are_a_problem() {
    let mut f = good();
    f.template_labels.remove(WORKLOAD_IDENTITY_LABEL);
    assert_eq!(problems(&f), ["workload-identity-label"]);
}

#[test]
fn a_pod_without_the_sidecar_is_an_injection_problem() {
    let f = facts(pod(false, true, false), binding(true, &hash()));
    assert_eq!(problems(&f), ["injection"]);
}

#[test]
fn a_baseline_namespace_is_a_pod_security_problem() {
    let mut f = good();
    f.namespace_labels
        .insert(PSA_ENFORCE_LABEL.into(), "baseline".into());
    assert_eq!(problems(&f), ["pod-security"]);
}

#[test]
fn a_stalled_binding_is_a_problem_that_needs_a_human() {
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
}

#[test]
fn a_sidecar_without_the_identity_environment_is_a_problem_unless_skipped() {
    let f = facts(pod(true, true, false), binding(true, &hash()));
    assert_eq!(problems(&f), ["workload-identity-env"]);
    assert!(
        diagnose(&f, &["workload-identity-env".into()])
            .iter()
            .all(|f| !f.problem)
    );
}

#[test]
fn a_namespace_not_opted_in_is_a_problem() {
    let mut f = good();
    f.namespace_labels.clear();
    assert_eq!(problems(&f), ["namespace-opt-in"]);
}

#[test]
fn a_pod_without_a_confidential_runtime_class_is_a_problem() {
    let mut f = good();
    f.template_spec.runtime_class_name = None;
    assert_eq!(problems(&f), ["runtime-class"]);
}

#[test]
fn a_broken_webhook_is_a_problem() {
    let mut f = good();
    f.webhook = WebhookState::Broken("no endpoint".into());
    assert_eq!(problems(&f), ["webhook"]);
}

#[test]
fn pods_no_binding_selects_are_a_problem() {
    let mut f = good();
    f.template_labels.insert("app".into(), "other".into());
    assert_eq!(problems(&f), ["binding"]);
}

#[test]
fn a_missing_service_account_is_a_problem() {
    let mut f = good();
    f.service_account = None;
    assert_eq!(problems(&f), ["workload-identity-service-account"]);
}
