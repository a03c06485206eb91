//! The caches every replica keeps and both the controller and the webhook read: bindings, the
//! policy ConfigMaps bindings reference (summarized: per referenced key a hash and a size, never
//! the text), injected pods, grants and namespace labels. The reflectors that fill them are the
//! controller's ([`crate::controller::runtime::reflectors`]); the webhook only reads them, and so
//! does not depend on the controller. The webhook fetches a policy's text when a pod needs it and
//! keeps a bounded number of bytes of them ([`crate::webhook::sources`]).

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use ckb_crds::grant::ConfidentialKeyGrant;
use ckb_crds::{ConfidentialKeyBinding, labels};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Resource;
use kube::core::PartialObjectMeta;
use kube::runtime::reflector::{self, ObjectRef, Store};
use tokio::sync::broadcast;

use crate::policy::{PolicyHash, hash_rego};

/// The caches shared by the controller and the webhook.
#[derive(Clone)]
pub struct Caches {
    /// Every ConfidentialKeyBinding.
    pub bindings: Store<ConfidentialKeyBinding>,
    /// The ConfigMaps labelled `ckb.dev/policy=true` that bindings reference, summarized for the
    /// referenced keys (hashes and sizes, never the policy text: see [`PolicySummary`]).
    pub config_maps: Store<PolicySummary>,
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

/// The longest policy text the webhook fetches and prepares: the most Rego whose base64 fits a
/// pod's 256 KiB of annotations. Anything longer is refused anyway (`PolicyTooLarge`).
pub const POLICY_CACHE_LIMIT: usize = crate::controller::plan::ANNOTATION_BUDGET / 4 * 3;

/// The label selector of policy ConfigMaps (`ckb.dev/policy=true`): the only ConfigMaps watched
/// and read. [`is_policy_config_map`] is the same test on an object.
pub fn policy_label_selector() -> String {
    format!("{}=true", labels::POLICY)
}

/// Whether a ConfigMap's metadata carries the policy label ([`policy_label_selector`]).
pub fn is_policy_config_map(metadata: &ObjectMeta) -> bool {
    metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(labels::POLICY))
        .is_some_and(|v| v == "true")
}

/// What the cache keeps of a referenced policy ConfigMap: not its text, but what the controller
/// decides on (per referenced key: the SHA-256 of the policy, its length, whether it is blank),
/// and the resource version the webhook fetches the text for (see
/// [`crate::webhook::sources::StoreSources`]). About 200 bytes per key, whatever the ConfigMap
/// holds.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct PolicySummary {
    /// Name, namespace, uid and resource version of the ConfigMap (nothing else).
    pub metadata: ObjectMeta,
    /// Whether it is labelled `ckb.dev/policy=true` ([`is_policy_config_map`]).
    pub labelled: bool,
    /// Every key it was summarized for (the keys bindings reference), found or not.
    pub keys: BTreeMap<String, PolicyKey>,
}

/// What a policy ConfigMap holds under one key.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub enum PolicyKey {
    /// Text under `data`.
    Text {
        /// Length in bytes.
        bytes: usize,
        /// Whether it is empty or only whitespace.
        blank: bool,
        /// SHA-256 of the bytes.
        hash: PolicyHash,
    },
    /// Only under `binaryData`.
    Binary,
    /// Neither under `data` nor under `binaryData`.
    Absent,
}

impl PolicyKey {
    /// What `cm` holds under `key`; `data` wins over `binaryData`, as the API server allows no
    /// key in both.
    pub fn of(cm: &ConfigMap, key: &str) -> Self {
        if let Some(text) = cm.data.as_ref().and_then(|d| d.get(key)) {
            return PolicyKey::Text {
                bytes: text.len(),
                blank: text.trim().is_empty(),
                hash: hash_rego(text.as_bytes()),
            };
        }
        if cm.binary_data.as_ref().is_some_and(|b| b.contains_key(key)) {
            return PolicyKey::Binary;
        }
        PolicyKey::Absent
    }
}

impl PolicySummary {
    /// Summarizes `cm` for `keys` (hashing each referenced text once).
    pub fn of<'a>(cm: &ConfigMap, keys: impl IntoIterator<Item = &'a String>) -> Self {
        let m = &cm.metadata;
        Self {
            metadata: ObjectMeta {
                name: m.name.clone(),
                namespace: m.namespace.clone(),
                uid: m.uid.clone(),
                resource_version: m.resource_version.clone(),
                ..Default::default()
            },
            labelled: is_policy_config_map(m),
            keys: keys
                .into_iter()
                .map(|k| (k.clone(), PolicyKey::of(cm, k)))
                .collect(),
        }
    }

    /// The resource version summarized (empty when unknown).
    pub fn version(&self) -> &str {
        self.metadata
            .resource_version
            .as_deref()
            .unwrap_or_default()
    }
}

/// A [`PolicySummary`] is kept in a [`Store`] under the ConfigMap's name, as a ConfigMap would be.
impl Resource for PolicySummary {
    type DynamicType = ();
    type Scope = k8s_openapi::NamespaceResourceScope;

    fn kind(dt: &()) -> Cow<'_, str> {
        ConfigMap::kind(dt)
    }
    fn group(dt: &()) -> Cow<'_, str> {
        ConfigMap::group(dt)
    }
    fn version(dt: &()) -> Cow<'_, str> {
        ConfigMap::version(dt)
    }
    fn plural(dt: &()) -> Cow<'_, str> {
        ConfigMap::plural(dt)
    }
    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

/// The ConfigMaps bindings reference, with the keys they read.
pub fn referenced_config_maps<'a>(
    bindings: impl IntoIterator<Item = &'a ConfidentialKeyBinding>,
) -> HashMap<ObjectRef<PolicySummary>, BTreeSet<String>> {
    let mut out: HashMap<ObjectRef<PolicySummary>, BTreeSet<String>> = HashMap::new();
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
