//! Where the webhook reads bindings and policies.
//!
//! Bindings come from the reflector's store, so an admission costs no API call for them. The
//! policy text does not stay in the reflector's cache (it keeps a summary: per referenced key the
//! SHA-256 and the size, see [`PolicySummary`]), so that memory does not grow by a policy per
//! binding. The webhook fetches the text with one GET the first time a pod needs that version of
//! the ConfigMap, prepares it ([`PreparedPolicy`]), checks it against the summary, and keeps the
//! prepared policies in a cache bounded in bytes ([`PREPARED_POLICY_BYTES`]): the few policies
//! pods are being created with cost no API call either.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures::FutureExt as _;
use futures::future::BoxFuture;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Api, Client};
use serde_json::Value;
use tokio::sync::Semaphore;
use tracing::warn;

use super::mutate::{self, Decision, MatchedBinding, SidecarDefaults};
use super::policy::PreparedPolicy;
use super::review::PodRequest;
use crate::caches::{
    POLICY_CACHE_LIMIT, PolicyKey, PolicySummary, is_policy_config_map, store_ready,
};
use crate::crds::ConfidentialKeyBinding;

/// Read access to the bindings and policy ConfigMaps the webhook needs.
pub trait Sources: Send + Sync + 'static {
    /// The bindings of a namespace (any order).
    fn bindings(&self, namespace: &str) -> Vec<Arc<ConfidentialKeyBinding>>;
    /// The policy (Rego text) under `key` of ConfigMap `namespace/config_map`, prepared; `None`
    /// when it is not available (the pod is then refused, naming the ConfigMap).
    fn policy<'a>(
        &'a self,
        namespace: &'a str,
        config_map: &'a str,
        key: &'a str,
    ) -> BoxFuture<'a, Option<Arc<PreparedPolicy>>>;
    /// Whether the caches hold a full initial listing. Until then the webhook refuses pods rather
    /// than let a selected pod through un-injected.
    fn ready(&self) -> bool {
        true
    }
}

/// [`Sources`] over the reflector stores (bindings, and the summaries of the referenced
/// ConfigMaps labelled `ckb.dev/policy=true`), fetching policy text on demand.
#[derive(Clone)]
pub struct StoreSources {
    bindings: Store<ConfidentialKeyBinding>,
    config_maps: Store<PolicySummary>,
    client: Client,
    ready: Arc<AtomicBool>,
    prepared: Arc<PreparedCache>,
    fetches: Arc<Semaphore>,
}

/// Prepared policies by (namespace, ConfigMap, key, resource version). A version nobody asks for
/// any more is evicted like any unused entry.
type PreparedId = (String, String, String, String);

/// The prepared policies, bounded by their bytes ([`PREPARED_POLICY_BYTES`]).
type PreparedCache = quick_cache::sync::Cache<PreparedId, Arc<PreparedPolicy>, PreparedBytes>;

/// Weighs a prepared policy by the bytes it holds ([`prepared_bytes`]).
#[derive(Clone)]
struct PreparedBytes;

impl quick_cache::Weighter<PreparedId, Arc<PreparedPolicy>> for PreparedBytes {
    fn weight(&self, id: &PreparedId, policy: &Arc<PreparedPolicy>) -> u64 {
        let id_bytes = id.0.len() + id.1.len() + id.2.len() + id.3.len();
        (prepared_bytes(policy) + id_bytes) as u64
    }
}

/// The heap bytes of a prepared policy: its annotation (base64 of the Rego, 4/3 of the text) and
/// the base64 of that annotation's JSON token (4/3 again), about 3.1 times the Rego text.
pub fn prepared_bytes(policy: &PreparedPolicy) -> usize {
    let annotation = policy.annotation().len();
    annotation + (annotation + 2).div_ceil(3) * 4 + crate::policy::hash::HASH_HEX_LEN
}

/// How many prepared policies the cache is sized for (its bound is [`PREPARED_POLICY_BYTES`]).
pub const PREPARED_POLICIES_KEPT: usize = 32;

/// The most bytes of prepared policies the webhook keeps: 16 MiB, about 43 policies of 120 KiB
/// (0.37 MiB each prepared), or 26 of the largest that fit a pod's annotations.
pub const PREPARED_POLICY_BYTES: u64 = 16 * 1024 * 1024;

/// The longest an admission waits for a policy the cache does not hold (its GET, or another
/// admission's GET of the same policy): under the API server's timeout for the webhook (the
/// chart's `webhook.timeoutSeconds`, 5 s by default), so that an API server too slow to answer
/// yields the refusal naming the ConfigMap rather than a webhook timeout.
pub const POLICY_FETCH_TIMEOUT: Duration = Duration::from_secs(2);

/// Policy GETs in flight at once: each holds a whole ConfigMap (up to about 1 MiB) until the
/// policy is prepared, so this bounds that memory whatever pods are created at once.
const FETCHES_IN_FLIGHT: usize = 4;

impl StoreSources {
    /// Reads bindings and policy summaries from two stores and policy text through `client`;
    /// [`Sources::ready`] turns true once both stores have had their first listing (a background
    /// task waits for it).
    pub fn new(
        bindings: Store<ConfidentialKeyBinding>,
        config_maps: Store<PolicySummary>,
        client: Client,
    ) -> Self {
        let ready = Arc::new(AtomicBool::new(false));
        let (b, c, r) = (bindings.clone(), config_maps.clone(), ready.clone());
        tokio::spawn(async move {
            // NB: not Store::wait_until_ready: other tasks wait on the same stores (see store_ready).
            if store_ready(&b).await && store_ready(&c).await {
                r.store(true, Ordering::Release);
            }
        });
        Self {
            bindings,
            config_maps,
            client,
            ready,
            prepared: Arc::new(quick_cache::sync::Cache::with_weighter(
                PREPARED_POLICIES_KEPT,
                PREPARED_POLICY_BYTES,
                PreparedBytes,
            )),
            fetches: Arc::new(Semaphore::new(FETCHES_IN_FLIGHT)),
        }
    }

    /// The bytes of prepared policies held now (at most [`PREPARED_POLICY_BYTES`]).
    pub fn prepared_bytes_held(&self) -> u64 {
        self.prepared.weight()
    }

    /// The prepared policy of `key` in the version the summary names, from the cache or fetched.
    async fn prepared(
        &self,
        namespace: &str,
        config_map: &str,
        key: &str,
    ) -> Option<Arc<PreparedPolicy>> {
        let summary = self
            .config_maps
            .get(&ObjectRef::new(config_map).within(namespace))?;
        let PolicyKey::Text { bytes, hash, .. } = summary.keys.get(key)? else {
            return None;
        };
        // Over the limit it cannot fit a pod's annotations: refused without reading it.
        if *bytes > POLICY_CACHE_LIMIT {
            return None;
        }
        let version = summary.version();
        let id = (
            namespace.to_string(),
            config_map.to_string(),
            key.to_string(),
            version.to_string(),
        );
        // One GET per policy version, whatever the number of pods waiting for it.
        let guard = match self.prepared.get_value_or_guard_async(&id).await {
            Ok(p) => return Some(p),
            Err(guard) => guard,
        };
        let (fetched_version, rego) = self.fetch(namespace, config_map, key).await?;
        let policy = Arc::new(PreparedPolicy::new(&rego));
        if fetched_version != version {
            // The ConfigMap changed since the summary: the newer text is what the reflector is
            // about to summarize. decide() checks its hash against the pins as for any other;
            // it is not kept (the next summary names that version).
            return Some(policy);
        }
        if policy.hash() != hash {
            warn!(
                configmap = %format!("{namespace}/{config_map}"),
                key,
                version,
                "the policy read does not hash to what the cache holds for the same version; refused"
            );
            return None;
        }
        let _ = guard.insert(policy.clone());
        Some(policy)
    }

    /// GETs the ConfigMap and returns its resource version and the text under `key`, if it is
    /// still a labelled policy ConfigMap with a policy there that can fit a pod's annotations.
    async fn fetch(
        &self,
        namespace: &str,
        config_map: &str,
        key: &str,
    ) -> Option<(String, String)> {
        let _permit = self.fetches.acquire().await.ok()?;
        let api: Api<ConfigMap> = Api::namespaced(self.client.clone(), namespace);
        let cm = match api.get_opt(config_map).await {
            Ok(Some(cm)) => cm,
            Ok(None) => return None,
            Err(e) => {
                warn!(configmap = %format!("{namespace}/{config_map}"), error = %e, "cannot read a policy ConfigMap for an admission");
                return None;
            }
        };
        if !is_policy_config_map(&cm.metadata) {
            return None;
        }
        let version = cm.metadata.resource_version.unwrap_or_default();
        let rego = cm.data?.remove(key)?;
        (rego.len() <= POLICY_CACHE_LIMIT).then_some((version, rego))
    }
}

impl Sources for StoreSources {
    fn bindings(&self, namespace: &str) -> Vec<Arc<ConfidentialKeyBinding>> {
        self.bindings
            .state_filter(|b| b.metadata.namespace.as_deref() == Some(namespace))
    }

    fn policy<'a>(
        &'a self,
        namespace: &'a str,
        config_map: &'a str,
        key: &'a str,
    ) -> BoxFuture<'a, Option<Arc<PreparedPolicy>>> {
        async move {
            let lookup = self.prepared(namespace, config_map, key);
            match tokio::time::timeout(POLICY_FETCH_TIMEOUT, lookup).await {
                Ok(p) => p,
                Err(_) => {
                    warn!(configmap = %format!("{namespace}/{config_map}"), timeout = ?POLICY_FETCH_TIMEOUT, "a policy ConfigMap was not read in time for an admission");
                    None
                }
            }
        }
        .boxed()
    }

    fn ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }
}

/// [`Sources`] over plain maps: tests, `render`, the fuzz target. Its futures are ready at once.
#[derive(Debug, Clone, Default)]
pub struct MapSources {
    /// Bindings (each carries its namespace).
    pub bindings: Vec<Arc<ConfidentialKeyBinding>>,
    /// Policies by (namespace, ConfigMap name, key).
    pub policies: BTreeMap<(String, String, String), Arc<PreparedPolicy>>,
}

impl MapSources {
    /// Adds a policy.
    pub fn with_policy(mut self, namespace: &str, config_map: &str, key: &str, rego: &str) -> Self {
        self.policies.insert(
            (namespace.into(), config_map.into(), key.into()),
            Arc::new(PreparedPolicy::new(rego)),
        );
        self
    }

    /// Adds a binding.
    pub fn with_binding(mut self, binding: ConfidentialKeyBinding) -> Self {
        self.bindings.push(Arc::new(binding));
        self
    }
}

impl Sources for MapSources {
    fn bindings(&self, namespace: &str) -> Vec<Arc<ConfidentialKeyBinding>> {
        self.bindings
            .iter()
            .filter(|b| b.metadata.namespace.as_deref() == Some(namespace))
            .cloned()
            .collect()
    }

    fn policy<'a>(
        &'a self,
        namespace: &'a str,
        config_map: &'a str,
        key: &'a str,
    ) -> BoxFuture<'a, Option<Arc<PreparedPolicy>>> {
        let p = self
            .policies
            .get(&(namespace.into(), config_map.into(), key.into()))
            .cloned();
        futures::future::ready(p).boxed()
    }
}

/// The bindings selecting a pod of `namespace`, with their policies looked up in `sources`.
pub async fn matched_bindings(
    sources: &dyn Sources,
    namespace: &str,
    pod: &Value,
) -> Vec<MatchedBinding> {
    let labels = mutate::pod_labels(pod);
    let candidates = sources.bindings(namespace);
    let selected = mutate::select_bindings(namespace, &labels, &candidates);
    let mut out = Vec::with_capacity(selected.len());
    for b in selected.iter() {
        let r = &b.spec.policy.config_map_ref;
        let policy = sources.policy(namespace, &r.name, &r.key).await;
        out.push(MatchedBinding::from_binding(b, policy));
    }
    out
}

/// The whole admission decision for a parsed request: caches → pure decision.
pub async fn admit(
    sources: &dyn Sources,
    defaults: &SidecarDefaults,
    confidential_runtime_classes: &[String],
    req: &PodRequest,
) -> Decision {
    // Cheap exit first: non-confidential pods never need the caches.
    if !mutate::is_confidential(&req.object, confidential_runtime_classes) {
        return Decision::Allow { warnings: vec![] };
    }
    if !sources.ready() {
        return Decision::Deny {
            message:
                "ckb-operator: the webhook's caches are not synced yet; retry in a few seconds"
                    .to_string(),
        };
    }
    let bindings = matched_bindings(sources, &req.namespace, &req.object).await;
    mutate::decide(
        &req.object,
        &bindings,
        defaults,
        confidential_runtime_classes,
    )
}

#[cfg(test)]
#[path = "sources_tests.rs"]
mod tests;
