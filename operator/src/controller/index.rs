//! Pure lookups between bindings, policy ConfigMaps and injected pods (no client: tested on values).

use std::collections::BTreeSet;

use ckb_crds::{ConfidentialKeyBinding, labels};
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use kube::ResourceExt;
use kube::runtime::reflector::ObjectRef;

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

/// Live injected pods of a binding: how many, and the policy hashes they carry.
pub fn pods_of_binding<'a>(
    pods: impl IntoIterator<Item = &'a Pod>,
    namespace: &str,
    name: &str,
) -> (i32, BTreeSet<String>) {
    let mut count = 0;
    let mut hashes = BTreeSet::new();
    for pod in pods {
        if pod.metadata.namespace.as_deref() != Some(namespace) || !is_live(pod) {
            continue;
        }
        let injected = pod
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(INJECTED_LABEL))
            .is_some_and(|v| v == "true");
        if !injected
            || !binding_names(pod.metadata.annotations.as_ref())
                .iter()
                .any(|n| n == name)
        {
            continue;
        }
        count += 1;
        if let Some(h) = pod
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(labels::POLICY_SHA256))
        {
            hashes.insert(h.clone());
        }
    }
    (count, hashes)
}

/// Label the webhook puts on the pods it injected (value `"true"`).
pub const INJECTED_LABEL: &str = "ckb.dev/injected";

/// Keeps only what the controller needs of a pod (our label and annotations, phase), so that a
/// cache of thousands of pods does not hold their specs and 100+ KiB policy annotations.
pub fn slim_pod(pod: &mut Pod) {
    pod.spec = None;
    pod.metadata.managed_fields = None;
    pod.metadata.owner_references = None;
    if let Some(a) = pod.metadata.annotations.as_mut() {
        a.retain(|k, _| k == labels::BINDINGS || k == labels::POLICY_SHA256);
    }
    if let Some(l) = pod.metadata.labels.as_mut() {
        l.retain(|k, _| k == INJECTED_LABEL);
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
    use std::collections::BTreeMap;

    fn pod(ns: &str, bindings: &str, hash: &str, phase: &str) -> Pod {
        let mut p = Pod::default();
        p.metadata.name = Some(format!("p-{bindings}-{phase}"));
        p.metadata.namespace = Some(ns.into());
        p.metadata.labels = Some(BTreeMap::from([(INJECTED_LABEL.into(), "true".into())]));
        p.metadata.annotations = Some(BTreeMap::from([
            (labels::BINDINGS.into(), bindings.into()),
            (labels::POLICY_SHA256.into(), hash.into()),
            (labels::AGENT_POLICY.into(), "cGFja2FnZQ==".into()),
        ]));
        p.status = Some(k8s_openapi::api::core::v1::PodStatus {
            phase: Some(phase.into()),
            ..Default::default()
        });
        p
    }

    #[test]
    fn pods_are_counted_per_binding_namespace_and_liveness() {
        let pods = vec![
            pod("payments", "orders,refunds", "h1", "Running"),
            pod("payments", "refunds", "h2", "Running"),
            pod("payments", "orders", "h3", "Succeeded"),
            pod("other", "orders", "h4", "Running"),
            pod("payments", "orders", "h5", "Pending"),
        ];
        let (n, hashes) = pods_of_binding(&pods, "payments", "orders");
        assert_eq!(n, 2);
        assert_eq!(hashes, ["h1".to_string(), "h5".into()].into());
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
        let mut p = pod("payments", "orders", "h1", "Running");
        p.spec = Some(Default::default());
        slim_pod(&mut p);
        assert!(p.spec.is_none());
        let a = p.metadata.annotations.as_ref().unwrap();
        assert!(!a.contains_key(labels::AGENT_POLICY));
        assert_eq!(pods_of_binding([&p], "payments", "orders").0, 1);
    }
}
