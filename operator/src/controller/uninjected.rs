//! Pods that missed injection: confidential pods a binding selects that run without the sidecar,
//! because they were admitted before the binding existed (GitOps tools and Helm apply custom
//! resources last) or while the webhook was down with `failurePolicy: Ignore`.
//!
//! The controller's pod cache holds injected pods only, and a cache of every pod of the cluster
//! would cost memory in proportion to the cluster. Instead a scanner lists, every `interval`,
//! the pods of each namespace that has bindings, filtered on the server by the binding's own
//! `podSelector` plus "not injected" (`ckb.dev/injected!=true`), from the API server's watch
//! cache (`resourceVersion=0`): nothing is kept but the names found. It triggers the bindings
//! whose set changed; the reconcile then writes `status.uninjectedPods` and a Warning event naming
//! the pods and the fix.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ckb_crds::ConfidentialKeyBinding;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::api::ListParams;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Api, Client, ResourceExt};
use tracing::{debug, warn};

use super::index::is_live;
use super::plan::PlannedEvent;
use crate::webhook::mutate::{DEFAULT_CONFIDENTIAL_RUNTIME_CLASS, INJECTED_LABEL};

/// The event reason of pods that missed injection.
pub const EVENT_REASON: &str = ckb_crds::conditions::events::PODS_NOT_INJECTED;

/// How many pod names an event lists (the count is always complete).
const NAMES_SHOWN: usize = 10;

/// Pause between two lists of one scan.
const PACE: Duration = Duration::from_millis(100);

/// Pause between two scans.
pub const SCAN_INTERVAL: Duration = Duration::from_secs(30);

/// What the last scan found, by binding: the names of its uninjected pods (sorted).
#[derive(Debug, Clone)]
pub struct Uninjected {
    found: Arc<Mutex<HashMap<ObjectRef<ConfidentialKeyBinding>, Vec<String>>>>,
    /// What the last event of each binding named, so a set is reported once.
    reported: Arc<Mutex<HashMap<ObjectRef<ConfidentialKeyBinding>, Vec<String>>>>,
    /// Runtime classes of confidential pods (the webhook's `--confidential-runtime-class`).
    pub runtime_classes: Arc<Mutex<Vec<String>>>,
}

impl Default for Uninjected {
    fn default() -> Self {
        Self {
            found: Arc::default(),
            reported: Arc::default(),
            runtime_classes: Arc::new(Mutex::new(vec![
                DEFAULT_CONFIDENTIAL_RUNTIME_CLASS.to_string(),
            ])),
        }
    }
}

impl Uninjected {
    /// The uninjected pods of a binding, if it was scanned.
    pub fn get(&self, binding: &ObjectRef<ConfidentialKeyBinding>) -> Option<Vec<String>> {
        self.lock().get(binding).cloned()
    }

    /// Records a scan result; returns whether it differs from the previous one.
    pub fn set(&self, binding: ObjectRef<ConfidentialKeyBinding>, pods: Vec<String>) -> bool {
        let mut map = self.lock();
        map.insert(binding, pods.clone()) != Some(pods)
    }

    /// Whether the binding's uninjected pods differ from what was last reported (and marks them
    /// reported).
    pub fn report(&self, binding: &ObjectRef<ConfidentialKeyBinding>) -> bool {
        let now = self.get(binding);
        let mut reported = self.reported.lock().unwrap_or_else(|e| e.into_inner());
        match now {
            Some(now) => reported.insert(binding.clone(), now.clone()) != Some(now),
            None => false,
        }
    }

    /// Sets the confidential runtime classes.
    pub fn set_runtime_classes(&self, classes: Vec<String>) {
        *self
            .runtime_classes
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = classes;
    }

    fn retain(&self, live: &HashSet<ObjectRef<ConfidentialKeyBinding>>) {
        self.lock().retain(|k, _| live.contains(k));
        self.reported
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|k, _| live.contains(k));
    }

    fn lock(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<ObjectRef<ConfidentialKeyBinding>, Vec<String>>> {
        self.found.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A label selector as the API's `labelSelector` query string, with "not injected" added; `None`
/// when the selector cannot be written as one (then the binding is not scanned).
pub fn query(selector: &LabelSelector) -> Option<String> {
    let mut parts: Vec<String> = selector
        .match_labels
        .iter()
        .flatten()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    for e in selector.match_expressions.iter().flatten() {
        let values = e.values.clone().unwrap_or_default();
        parts.push(match e.operator.as_str() {
            "In" if !values.is_empty() => format!("{} in ({})", e.key, values.join(",")),
            "NotIn" if !values.is_empty() => format!("{} notin ({})", e.key, values.join(",")),
            "Exists" => e.key.clone(),
            "DoesNotExist" => format!("!{}", e.key),
            _ => return None,
        });
    }
    parts.push(format!("{INJECTED_LABEL}!=true"));
    Some(parts.join(","))
}

/// Of the listed pods, the live confidential ones without the sidecar (sorted names).
pub fn missed(pods: &[Pod], runtime_classes: &[String]) -> Vec<String> {
    let mut names: Vec<String> = pods
        .iter()
        .filter(|p| is_live(p) && p.metadata.deletion_timestamp.is_none())
        .filter(|p| {
            p.spec
                .as_ref()
                .and_then(|s| s.runtime_class_name.as_deref())
                .is_some_and(|rc| runtime_classes.iter().any(|c| c == rc))
        })
        .map(|p| p.name_any())
        .collect();
    names.sort();
    names
}

/// Sets `status.uninjectedPods` from the last scan (left unset before the first) and returns the
/// Warning event to publish when the set of pods changed to a non-empty one.
pub fn apply(
    status: &mut ckb_crds::ConfidentialKeyBindingStatus,
    previous: Option<&ckb_crds::ConfidentialKeyBindingStatus>,
    found: Option<&[String]>,
    changed: bool,
) -> Option<PlannedEvent> {
    let found = found?;
    let count = i32::try_from(found.len()).unwrap_or(i32::MAX);
    status.uninjected_pods = Some(count);
    let before = previous.and_then(|p| p.uninjected_pods).unwrap_or(0);
    if found.is_empty() || (!changed && before == count) {
        return None;
    }
    let shown = found
        .iter()
        .take(NAMES_SHOWN)
        .cloned()
        .collect::<Vec<_>>()
        .join(", ");
    let more = found.len().saturating_sub(NAMES_SHOWN);
    Some(PlannedEvent {
        warning: true,
        reason: EVENT_REASON.into(),
        note: format!(
            "{count} matching confidential pod(s) run without the SKR sidecar (admitted before \
             this binding existed, or while the webhook was unavailable): {shown}{}. They cannot \
             get the key: restart their workload (kubectl rollout restart) so the new pods are \
             injected",
            if more > 0 {
                format!(" and {more} more")
            } else {
                String::new()
            }
        ),
    })
}

/// Scans every `interval` until dropped; calls `changed` with each binding whose uninjected pods
/// changed (for a reconcile).
pub async fn scan(
    client: Client,
    bindings: Store<ConfidentialKeyBinding>,
    state: Uninjected,
    interval: Duration,
    changed: impl Fn(ObjectRef<ConfidentialKeyBinding>),
) {
    loop {
        let classes = state
            .runtime_classes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let all = bindings.state();
        let live: HashSet<_> = all
            .iter()
            .map(|b| ObjectRef::from_obj(b.as_ref()))
            .collect();
        state.retain(&live);
        for b in all {
            let (Some(ns), Some(q)) = (b.namespace(), query(&b.spec.pod_selector)) else {
                continue;
            };
            let api: Api<Pod> = Api::namespaced(client.clone(), &ns);
            // From the API server's watch cache; names and specs are read, nothing is kept.
            let lp = ListParams::default().labels(&q).match_any();
            match api.list(&lp).await {
                Ok(list) => {
                    let found = missed(&list.items, &classes);
                    let obj = ObjectRef::from_obj(b.as_ref());
                    if state.set(obj.clone(), found.clone()) {
                        debug!(binding = %obj, uninjected = found.len(), "uninjected pods changed");
                        changed(obj);
                    }
                }
                Err(e) => {
                    warn!(error = %e, namespace = %ns, "listing pods for missed injection failed")
                }
            }
            // At most ~10 lists a second, however many bindings.
            tokio::time::sleep(PACE).await;
        }
        tokio::time::sleep(interval).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn selector_becomes_a_query_that_excludes_injected_pods() {
        let s: LabelSelector = serde_json::from_value(json!({
            "matchLabels": {"app": "orders"},
            "matchExpressions": [
                {"key": "tier", "operator": "In", "values": ["a", "b"]},
                {"key": "canary", "operator": "DoesNotExist"}
            ]
        }))
        .unwrap();
        assert_eq!(
            query(&s).unwrap(),
            "app=orders,tier in (a,b),!canary,ckb.dev/injected!=true"
        );
        let bad: LabelSelector = serde_json::from_value(json!({
            "matchExpressions": [{"key": "x", "operator": "Sideways"}]
        }))
        .unwrap();
        assert_eq!(query(&bad), None);
    }

    #[test]
    fn only_live_confidential_pods_count() {
        let pod = |name: &str, rc: Option<&str>, phase: &str| -> Pod {
            serde_json::from_value(json!({
                "metadata": {"name": name},
                "spec": {"runtimeClassName": rc, "containers": []},
                "status": {"phase": phase}
            }))
            .unwrap()
        };
        let pods = [
            pod("b", Some("kata-cc-isolation"), "Running"),
            pod("a", Some("kata-cc-isolation"), "Pending"),
            pod("plain", None, "Running"),
            pod("done", Some("kata-cc-isolation"), "Succeeded"),
        ];
        assert_eq!(missed(&pods, &["kata-cc-isolation".into()]), ["a", "b"]);
    }

    #[test]
    fn count_in_status_and_one_event_per_change() {
        let mut st = ckb_crds::ConfidentialKeyBindingStatus::default();
        assert!(apply(&mut st, None, None, false).is_none());
        assert_eq!(st.uninjected_pods, None, "unset before the first scan");
        let pods = vec!["orders-1".to_string(), "orders-2".to_string()];
        let ev = apply(&mut st, None, Some(&pods), true).expect("an event");
        assert_eq!(st.uninjected_pods, Some(2));
        assert!(ev.warning);
        assert!(ev.note.contains("orders-1, orders-2"), "{}", ev.note);
        assert!(ev.note.contains("rollout restart"), "{}", ev.note);
        let prev = st.clone();
        assert!(apply(&mut st, Some(&prev), Some(&pods), false).is_none());
        let none: Vec<String> = vec![];
        assert!(apply(&mut st, Some(&prev), Some(&none), true).is_none());
        assert_eq!(st.uninjected_pods, Some(0));
        let many: Vec<String> = (0..12).map(|i| format!("p{i:02}")).collect();
        let ev = apply(&mut st, None, Some(&many), true).unwrap();
        assert!(ev.note.contains("and 2 more"), "{}", ev.note);
    }
}
