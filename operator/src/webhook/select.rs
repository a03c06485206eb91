//! Which bindings select a pod: namespace, deletion, and `spec.podSelector` with Kubernetes
//! label-selector semantics (matching by [`kube::core::Selector`]).

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, LabelSelectorRequirement};
use kube::core::{Selector, SelectorExt as _};
use serde_json::Value;

use crate::crds::ConfidentialKeyBinding;

/// Bindings (of any namespace) that select a pod of `namespace` with these labels: same namespace,
/// not being deleted, and `spec.podSelector` matches. Sorted by name.
pub fn select_bindings(
    namespace: &str,
    pod_labels: &BTreeMap<String, String>,
    bindings: &[Arc<ConfidentialKeyBinding>],
) -> Vec<Arc<ConfidentialKeyBinding>> {
    let mut out: Vec<_> = bindings
        .iter()
        .filter(|b| b.metadata.namespace.as_deref() == Some(namespace))
        .filter(|b| b.metadata.deletion_timestamp.is_none())
        .filter(|b| selector_matches(&b.spec.pod_selector, pod_labels))
        .cloned()
        .collect();
    out.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    out
}

/// The labels of a pod as raw JSON (string values only; others cannot be labels).
pub fn pod_labels(pod: &Value) -> BTreeMap<String, String> {
    pod.pointer("/metadata/labels")
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| v.as_str().map(|v| (k.clone(), v.to_string())))
                .collect()
        })
        .unwrap_or_default()
}

/// Kubernetes label-selector semantics: every `matchLabels` pair and every `matchExpressions`
/// requirement must hold; an empty selector matches everything. A malformed requirement (unknown
/// operator, `In`/`NotIn` without values, `Exists`/`DoesNotExist` with values) matches nothing, as
/// the API server would have refused it.
pub fn selector_matches(selector: &LabelSelector, labels: &BTreeMap<String, String>) -> bool {
    // NB: kube's conversion accepts `NotIn` with no values (matching everything) and `Exists`
    // with values; the API server's validation refuses both, so they are checked here first.
    if !selector.match_expressions.iter().flatten().all(well_formed) {
        return false;
    }
    Selector::try_from(selector.clone()).is_ok_and(|s| s.matches(labels))
}

/// The API server's rule for a requirement (`ValidateLabelSelectorRequirement`).
fn well_formed(r: &LabelSelectorRequirement) -> bool {
    let has_values = r.values.as_ref().is_some_and(|v| !v.is_empty());
    match r.operator.as_str() {
        "In" | "NotIn" => has_values,
        "Exists" | "DoesNotExist" => !has_values,
        _ => false,
    }
}
