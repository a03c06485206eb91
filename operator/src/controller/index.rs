//! Pure lookups between bindings, policy ConfigMaps and injected pods (no client: tested on values).

use std::collections::BTreeMap;

use ckb_crds::{ConfidentialKeyBinding, labels};
use jiff::Timestamp;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, PodSpec};
use kube::ResourceExt;
use kube::runtime::reflector::ObjectRef;

use crate::webhook::mutate::selector_matches;
use crate::webhook::policy::annotation_policy_hash;

/// Bindings whose `spec.policy.configMapRef` names this ConfigMap (same namespace).
pub fn bindings_for_config_map<'a>(
    bindings: impl IntoIterator<Item = &'a ConfidentialKeyBinding>,
    cm: &ConfigMap,
) -> Vec<ObjectRef<ConfidentialKeyBinding>> {
    let ns = cm.namespace();
    let name = cm.name_any();
    bindings
        .into_iter()
        .filter(|b| b.namespace() == ns && b.spec.policy.config_map_ref.name == name)
        .map(ObjectRef::from_obj)
        .collect()
}

/// The binding names a pod's `ckb.dev/bindings` annotation lists (comma-separated).
pub fn binding_names(
    pod_annotations: Option<&std::collections::BTreeMap<String, String>>,
) -> Vec<String> {
    pod_annotations
        .and_then(|a| a.get(labels::BINDINGS))
        .map(|v| {
            v.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

/// Bindings an injected pod names.
pub fn bindings_for_pod(pod: &Pod) -> Vec<ObjectRef<ConfidentialKeyBinding>> {
    let Some(ns) = pod.metadata.namespace.as_deref() else {
        return Vec::new();
    };
    binding_names(pod.metadata.annotations.as_ref())
        .into_iter()
        .map(|n| ObjectRef::new(&n).within(ns))
        .collect()
}

/// Whether the pod still runs (or may run): not Succeeded or Failed. A pod being deleted still
/// counts until it is gone, since its containers may still be up.
pub fn is_live(pod: &Pod) -> bool {
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    !matches!(phase, Some("Succeeded") | Some("Failed"))
}

/// The live pods of a binding that may keep a retired hash bound, and since when.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodPolicies {
    /// How many live pods qualify (`status.injectedPods`).
    pub count: i32,
    /// For each policy hash the qualifying pods run, the creation time of the earliest of them.
    pub earliest: BTreeMap<String, Timestamp>,
}

/// The live pods that qualify for a binding: in its namespace, injected and naming it, in one of
/// the `confidential` runtime classes, matched by its `podSelector`, with an agent-policy
/// annotation whose hash was recomputed when the pod was cached (see [`slim_pod`]; the
/// `ckb.dev/policy-sha256` annotation, which anyone who creates pods can write, is never read).
/// The creation time is the API server's, so a pod cannot claim to be older than it is.
pub fn pod_policies<'a>(
    pods: impl IntoIterator<Item = &'a Pod>,
    binding: &ConfidentialKeyBinding,
    confidential: &[String],
) -> PodPolicies {
    let namespace = binding.metadata.namespace.as_deref().unwrap_or_default();
    let name = binding.metadata.name.as_deref().unwrap_or_default();
    let mut out = PodPolicies::default();
    for pod in pods {
        if pod.metadata.namespace.as_deref() != Some(namespace) || !is_live(pod) {
            continue;
        }
        let pod_labels = pod.metadata.labels.clone().unwrap_or_default();
        let injected = pod_labels.get(INJECTED_LABEL).is_some_and(|v| v == "true");
        let names_it = binding_names(pod.metadata.annotations.as_ref())
            .iter()
            .any(|n| n == name);
        let runtime = pod
            .spec
            .as_ref()
            .and_then(|s| s.runtime_class_name.as_deref());
        let confidential_pod = runtime.is_some_and(|r| confidential.iter().any(|c| c == r));
        if !injected
            || !names_it
            || !confidential_pod
            || !selector_matches(&binding.spec.pod_selector, &pod_labels)
        {
            continue;
        }
        let hash = pod
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(COMPUTED_POLICY_SHA256));
        let created = pod.metadata.creation_timestamp.as_ref().map(|t| t.0);
        let (Some(hash), Some(created)) = (hash, created) else {
            continue;
        };
        out.count += 1;
        out.earliest
            .entry(hash.clone())
            .and_modify(|t| *t = (*t).min(created))
            .or_insert(created);
    }
    out
}

/// Label the webhook puts on the pods it injected (value `"true"`).
pub const INJECTED_LABEL: &str = "ckb.dev/injected";

/// Key under which [`slim_pod`] keeps the SHA-256 it computed from the pod's agent-policy
/// annotation. Not a valid annotation key (two slashes), so no pod can carry it: whatever a pod
/// brings under this key is dropped before the hash is computed.
pub const COMPUTED_POLICY_SHA256: &str = "ckb-operator.internal//agent-policy-sha256";

/// Keeps only what the controller needs of a pod, so that a cache of thousands of pods does not
/// hold their specs and 100+ KiB policy annotations: labels (for the binding's selector), the
/// bindings annotation, the runtime class, the phase, the creation time, and the SHA-256 of the
/// decoded agent-policy annotation computed here (under [`COMPUTED_POLICY_SHA256`]; absent when
/// the pod has no such annotation or it is not base64).
pub fn slim_pod(pod: &mut Pod) {
    let runtime_class = pod.spec.as_ref().and_then(|s| s.runtime_class_name.clone());
    pod.spec = runtime_class.map(|rc| PodSpec {
        runtime_class_name: Some(rc),
        ..Default::default()
    });
    pod.metadata.managed_fields = None;
    pod.metadata.owner_references = None;
    if let Some(a) = pod.metadata.annotations.as_mut() {
        // As the webhook reads it (line breaks of wrapped base64 ignored, as the Kata shim does).
        let computed = a
            .get(labels::AGENT_POLICY)
            .and_then(|v| annotation_policy_hash(v).ok());
        a.retain(|k, _| k == labels::BINDINGS);
        if let Some(h) = computed {
            a.insert(COMPUTED_POLICY_SHA256.to_string(), h.to_string());
        }
    }
    let phase = pod.status.as_ref().and_then(|s| s.phase.clone());
    pod.status = phase.map(|p| k8s_openapi::api::core::v1::PodStatus {
        phase: Some(p),
        ..Default::default()
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::hash::encode_annotation;
    use crate::policy::hash_rego;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    const CONFIDENTIAL: &str = "kata-cc-isolation";

    fn binding() -> ConfidentialKeyBinding {
        let spec = serde_json::from_value(serde_json::json!({
            "podSelector": {"matchLabels": {"app": "orders"}},
            "key": {"vault": "https://demo.vault.azure.net", "name": "k"},
            "attestation": {"authority": "https://a.attest.azure.net"},
            "policy": {"configMapRef": {"name": "pol"}}
        }))
        .unwrap();
        let mut b = ConfidentialKeyBinding::new("orders", spec);
        b.metadata.namespace = Some("payments".into());
        b
    }

    /// An injected pod as the API server stores it, slimmed as the cache does.
    fn pod(ns: &str, bindings: &str, rego: &str, phase: &str) -> Pod {
        let mut p = raw_pod(ns, bindings, rego, phase);
        slim_pod(&mut p);
        p
    }

    fn raw_pod(ns: &str, bindings: &str, rego: &str, phase: &str) -> Pod {
        let mut p = Pod::default();
        p.metadata.name = Some(format!("p-{bindings}-{phase}"));
        p.metadata.namespace = Some(ns.into());
        p.metadata.creation_timestamp = Some(Time("2026-01-01T00:00:00Z".parse().unwrap()));
        p.metadata.labels = Some(BTreeMap::from([
            (INJECTED_LABEL.into(), "true".into()),
            ("app".into(), "orders".into()),
        ]));
        p.metadata.annotations = Some(BTreeMap::from([
            (labels::BINDINGS.into(), bindings.into()),
            (
                labels::POLICY_SHA256.into(),
                hash_rego(rego.as_bytes()).to_string(),
            ),
            (labels::AGENT_POLICY.into(), encode_annotation(rego)),
        ]));
        p.spec = Some(PodSpec {
            runtime_class_name: Some(CONFIDENTIAL.into()),
            containers: vec![Default::default()],
            ..Default::default()
        });
        p.status = Some(k8s_openapi::api::core::v1::PodStatus {
            phase: Some(phase.into()),
            ..Default::default()
        });
        p
    }

    fn policies(pods: &[Pod]) -> PodPolicies {
        pod_policies(pods, &binding(), &[CONFIDENTIAL.to_string()])
    }

    fn h(rego: &str) -> String {
        hash_rego(rego.as_bytes()).to_string()
    }

    #[test]
    fn pods_are_counted_per_binding_namespace_and_liveness() {
        let pods = vec![
            pod("payments", "orders,refunds", "p1", "Running"),
            pod("payments", "refunds", "p2", "Running"),
            pod("payments", "orders", "p3", "Succeeded"),
            pod("other", "orders", "p4", "Running"),
            pod("payments", "orders", "p5", "Pending"),
        ];
        let got = policies(&pods);
        assert_eq!(got.count, 2);
        assert_eq!(got.earliest.keys().cloned().collect::<Vec<_>>(), {
            let mut v = vec![h("p1"), h("p5")];
            v.sort();
            v
        });
    }

    #[test]
    fn the_hash_is_recomputed_from_the_annotation_never_read_from_the_pod() {
        // A pod claiming hash A in ckb.dev/policy-sha256 but running policy B counts for B.
        let mut p = raw_pod("payments", "orders", "B", "Running");
        p.metadata
            .annotations
            .as_mut()
            .unwrap()
            .insert(labels::POLICY_SHA256.into(), h("A"));
        // It also tries to smuggle a precomputed value under the internal key.
        p.metadata
            .annotations
            .as_mut()
            .unwrap()
            .insert(COMPUTED_POLICY_SHA256.into(), h("A"));
        slim_pod(&mut p);
        assert_eq!(
            policies(&[p]).earliest.keys().cloned().collect::<Vec<_>>(),
            vec![h("B")]
        );
        // Without an agent-policy annotation a pod keeps nothing.
        let mut bare = raw_pod("payments", "orders", "A", "Running");
        bare.metadata
            .annotations
            .as_mut()
            .unwrap()
            .remove(labels::AGENT_POLICY);
        bare.metadata
            .annotations
            .as_mut()
            .unwrap()
            .insert(COMPUTED_POLICY_SHA256.into(), h("A"));
        slim_pod(&mut bare);
        assert_eq!(policies(&[bare]), PodPolicies::default());
    }

    #[test]
    fn only_confidential_selected_injected_pods_qualify() {
        let mut plain = raw_pod("payments", "orders", "A", "Pending");
        plain.spec.as_mut().unwrap().runtime_class_name = None;
        let mut other_class = raw_pod("payments", "orders", "A", "Pending");
        other_class.spec.as_mut().unwrap().runtime_class_name = Some("runc".into());
        let mut unselected = raw_pod("payments", "orders", "A", "Pending");
        unselected
            .metadata
            .labels
            .as_mut()
            .unwrap()
            .insert("app".into(), "other".into());
        let mut not_injected = raw_pod("payments", "orders", "A", "Pending");
        not_injected
            .metadata
            .labels
            .as_mut()
            .unwrap()
            .remove(INJECTED_LABEL);
        let mut pods = vec![plain, other_class, unselected, not_injected];
        pods.iter_mut().for_each(slim_pod);
        assert_eq!(policies(&pods), PodPolicies::default());
    }

    #[test]
    fn the_earliest_creation_per_hash_is_kept() {
        let mut old = raw_pod("payments", "orders", "A", "Running");
        old.metadata.creation_timestamp = Some(Time("2025-06-01T00:00:00Z".parse().unwrap()));
        let new = raw_pod("payments", "orders", "A", "Running");
        let mut pods = vec![new, old];
        pods.iter_mut().for_each(slim_pod);
        let got = policies(&pods);
        assert_eq!(got.count, 2);
        assert_eq!(
            got.earliest[&h("A")],
            "2025-06-01T00:00:00Z".parse::<Timestamp>().unwrap()
        );
    }

    #[test]
    fn a_pod_triggers_the_bindings_it_names_in_its_namespace() {
        let p = pod("payments", "orders, refunds", "h", "Running");
        let refs = bindings_for_pod(&p);
        assert_eq!(
            refs,
            vec![
                ObjectRef::new("orders").within("payments"),
                ObjectRef::new("refunds").within("payments")
            ]
        );
    }

    #[test]
    fn a_config_map_triggers_the_bindings_that_reference_it() {
        let mk = |ns: &str, name: &str, cm: &str| {
            let spec = serde_json::from_value(serde_json::json!({
                "podSelector": {},
                "key": {"vault": "https://demo.vault.azure.net", "name": "k"},
                "attestation": {"authority": "https://a.attest.azure.net"},
                "policy": {"configMapRef": {"name": cm}}
            }))
            .unwrap();
            let mut b = ConfidentialKeyBinding::new(name, spec);
            b.metadata.namespace = Some(ns.into());
            b
        };
        let bindings = [
            mk("payments", "a", "pol"),
            mk("payments", "b", "other"),
            mk("x", "c", "pol"),
        ];
        let mut cm = ConfigMap::default();
        cm.metadata.name = Some("pol".into());
        cm.metadata.namespace = Some("payments".into());
        assert_eq!(
            bindings_for_config_map(&bindings, &cm),
            vec![ObjectRef::new("a").within("payments")]
        );
    }

    #[test]
    fn slim_pod_keeps_only_what_the_controller_reads() {
        let p = pod("payments", "orders", "A", "Running");
        let spec = p.spec.as_ref().unwrap();
        assert!(spec.containers.is_empty());
        assert_eq!(spec.runtime_class_name.as_deref(), Some(CONFIDENTIAL));
        let a = p.metadata.annotations.as_ref().unwrap();
        assert!(!a.contains_key(labels::AGENT_POLICY));
        assert!(!a.contains_key(labels::POLICY_SHA256));
        assert_eq!(a[COMPUTED_POLICY_SHA256], h("A"));
        assert_eq!(policies(&[p]).count, 1);
    }

    #[test]
    fn a_wrapped_base64_annotation_hashes_as_the_webhook_reads_it() {
        let rego = "package agent_policy\n# long enough to span two wrapped lines of base64\n";
        let mut p = raw_pod("payments", "orders", rego, "Running");
        let a = p.metadata.annotations.as_mut().unwrap();
        let value = a.get_mut(labels::AGENT_POLICY).unwrap();
        let (head, tail) = value.split_at(76);
        *value = format!("{head}\r\n{tail}\n");
        slim_pod(&mut p);
        let a = p.metadata.annotations.as_ref().unwrap();
        assert_eq!(a[COMPUTED_POLICY_SHA256], h(rego));
    }
}
