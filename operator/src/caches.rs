//! The caches every replica keeps and both the controller and the webhook read: bindings, the
//! policy ConfigMaps bindings reference (only the referenced keys, each bounded), injected pods,
//! grants and namespace labels. The reflectors that fill them are the controller's
//! ([`crate::controller::runtime::reflectors`]); the webhook only reads them, and so does not
//! depend on the controller.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use ckb_crds::ConfidentialKeyBinding;
use ckb_crds::grant::ConfidentialKeyGrant;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod};
use kube::Resource;
use kube::core::PartialObjectMeta;
use kube::runtime::reflector::{self, ObjectRef, Store};
use tokio::sync::broadcast;

/// The caches shared by the controller and the webhook.
#[derive(Clone)]
pub struct Caches {
    /// Every ConfidentialKeyBinding.
    pub bindings: Store<ConfidentialKeyBinding>,
    /// ConfigMaps labelled `ckb.dev/policy=true` that bindings reference, with only the referenced
    /// keys, each up to [`POLICY_CACHE_LIMIT`] (see [`policy_view`]).
    pub config_maps: Store<ConfigMap>,
    /// Pods labelled `ckb.dev/injected=true`, slimmed to what the controller reads.
    pub pods: Store<Pod>,
    /// ConfidentialKeyGrants and namespace labels.
    pub grants: GrantStores,
}

impl Caches {
    /// Waits until every cache has listed its objects once.
    pub async fn wait_until_ready(&self) {
        store_ready(&self.bindings).await;
        store_ready(&self.config_maps).await;
        store_ready(&self.pods).await;
        store_ready(&self.grants.grants).await;
        store_ready(&self.grants.namespaces).await;
    }
}

/// The caches the cluster's bounds are read from.
#[derive(Clone)]
pub struct GrantStores {
    /// Every ConfidentialKeyGrant.
    pub grants: Store<ConfidentialKeyGrant>,
    /// Every namespace, metadata only (labels, for grants' namespace selectors).
    pub namespaces: Store<PartialObjectMeta<Namespace>>,
}

impl Default for GrantStores {
    /// Empty stores (no grant, no namespace known).
    fn default() -> Self {
        Self {
            grants: reflector::store::<ConfidentialKeyGrant>().0,
            namespaces: reflector::store::<PartialObjectMeta<Namespace>>().0,
        }
    }
}

/// The longest policy text the cache holds: the most Rego whose base64 fits a pod's 256 KiB of
/// annotations. Anything longer is refused anyway (`PolicyTooLarge`); it is not held in memory.
pub const POLICY_CACHE_LIMIT: usize = crate::controller::plan::ANNOTATION_BUDGET / 4 * 3;

/// Annotation on a *cached copy* of a ConfigMap (never written to the cluster) listing the
/// referenced keys left out because their value is over [`POLICY_CACHE_LIMIT`].
pub const OMITTED_ANNOTATION: &str = "ckb.dev/cache-omitted-keys";

/// What the cache keeps of a referenced policy ConfigMap: its metadata (without managed fields),
/// and of `data` and `binaryData` only the `keys` bindings reference; a `data` value over
/// [`POLICY_CACHE_LIMIT`] is left out and named in [`OMITTED_ANNOTATION`]; `binaryData` values
/// are emptied (only their presence is reported).
pub fn policy_view(cm: ConfigMap, keys: &BTreeSet<String>) -> ConfigMap {
    let mut omitted = Vec::new();
    let data = cm.data.map(|d| {
        d.into_iter()
            .filter(|(k, v)| {
                if !keys.contains(k) {
                    return false;
                }
                if v.len() > POLICY_CACHE_LIMIT {
                    omitted.push(k.clone());
                    return false;
                }
                true
            })
            .collect()
    });
    let binary_data = cm.binary_data.map(|d| {
        d.into_keys()
            .filter(|k| keys.contains(k))
            .map(|k| (k, ByteString(Vec::new())))
            .collect()
    });
    let mut metadata = cm.metadata;
    metadata.managed_fields = None;
    metadata.annotations = None;
    if !omitted.is_empty() {
        metadata.annotations = Some([(OMITTED_ANNOTATION.to_string(), omitted.join(","))].into());
    }
    ConfigMap {
        metadata,
        data,
        binary_data,
        immutable: cm.immutable,
    }
}

/// Whether a cached copy left out `key` for its size (the reconcile then reads the ConfigMap
/// directly, to report how large it is).
pub fn omitted(cm: &ConfigMap, key: &str) -> bool {
    cm.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(OMITTED_ANNOTATION))
        .is_some_and(|v| v.split(',').any(|k| k == key))
}

/// The ConfigMaps bindings reference, with the keys they read.
pub fn referenced_config_maps<'a>(
    bindings: impl IntoIterator<Item = &'a ConfidentialKeyBinding>,
) -> HashMap<ObjectRef<ConfigMap>, BTreeSet<String>> {
    let mut out: HashMap<ObjectRef<ConfigMap>, BTreeSet<String>> = HashMap::new();
    for b in bindings {
        let Some(ns) = b.metadata.namespace.as_deref() else {
            continue;
        };
        let r = &b.spec.policy.config_map_ref;
        out.entry(ObjectRef::new(&r.name).within(ns))
            .or_default()
            .insert(r.key.clone());
    }
    out
}

/// Waits until `store` has listed its objects once; false if its writer is gone first.
///
/// NB: use this rather than `Store::wait_until_ready` wherever several tasks wait on one store.
/// kube-runtime's readiness signal is a oneshot receiver behind a mutex: it keeps only the waker
/// of the last waiter that polled it, so of several concurrent waiters all but one may never be
/// woken (seen on a real API server: the readiness probe and the controller's first pass hung
/// forever). Polling again on a short timer lets every waiter see the signal.
pub async fn store_ready<K>(store: &Store<K>) -> bool
where
    K: Resource + Clone + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone,
{
    loop {
        if let Ok(r) = tokio::time::timeout(STORE_READY_POLL, store.wait_until_ready()).await {
            return r.is_ok();
        }
    }
}

/// How often [`store_ready`] looks again.
const STORE_READY_POLL: Duration = Duration::from_millis(100);

/// Sender side of the binding triggers.
pub type Triggers = broadcast::Sender<ObjectRef<ConfidentialKeyBinding>>;

#[cfg(test)]
#[path = "caches_tests.rs"]
mod tests;
