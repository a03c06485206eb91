//! Where the webhook reads bindings and policies: in-memory caches, never the API server, so an
//! admission costs no API call.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use k8s_openapi::api::core::v1::ConfigMap;
use kube::runtime::reflector::{ObjectRef, Store};
use serde_json::Value;

use super::mutate::{self, Decision, MatchedBinding, SidecarDefaults};
use super::policy::PreparedPolicy;
use super::review::PodRequest;
use crate::caches::store_ready;
use crate::crds::ConfidentialKeyBinding;

/// Read access to the bindings and policy ConfigMaps the webhook needs.
pub trait Sources: Send + Sync + 'static {
    /// The bindings of a namespace (any order).
    fn bindings(&self, namespace: &str) -> Vec<Arc<ConfidentialKeyBinding>>;
    /// The policy (Rego text) under `key` of ConfigMap `namespace/config_map`, prepared, if cached.
    fn policy(&self, namespace: &str, config_map: &str, key: &str) -> Option<Arc<PreparedPolicy>>;
    /// Whether the caches hold a full initial listing. Until then the webhook refuses pods rather
    /// than let a selected pod through un-injected.
    fn ready(&self) -> bool {
        true
    }
}

/// [`Sources`] over the controller's reflector stores (bindings, and the ConfigMaps labelled
/// `ckb.dev/policy=true`).
#[derive(Clone)]
pub struct StoreSources {
    bindings: Store<ConfidentialKeyBinding>,
    config_maps: Store<ConfigMap>,
    ready: Arc<AtomicBool>,
    prepared: Arc<PreparedCache>,
}

/// Prepared policies by (namespace, ConfigMap, key), each with the resource version it was
/// prepared from. Bounded: the store holds every referenced policy already; this holds the
/// encodings of the few that pods are being created with (~0.4 MB each for a 120 KiB policy).
type PreparedCache =
    quick_cache::sync::Cache<(String, String, String), (String, Arc<PreparedPolicy>)>;

/// Policies whose preparation is kept (see [`PreparedCache`]).
pub const PREPARED_POLICIES_KEPT: usize = 32;

impl StoreSources {
    /// Wraps two stores; [`Sources::ready`] turns true once both have had their first listing
    /// (a background task waits for it).
    pub fn new(bindings: Store<ConfidentialKeyBinding>, config_maps: Store<ConfigMap>) -> Self {
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
            ready,
            prepared: Arc::new(quick_cache::sync::Cache::new(PREPARED_POLICIES_KEPT)),
        }
    }
}

impl Sources for StoreSources {
    fn bindings(&self, namespace: &str) -> Vec<Arc<ConfidentialKeyBinding>> {
        self.bindings
            .state_filter(|b| b.metadata.namespace.as_deref() == Some(namespace))
    }

    fn policy(&self, namespace: &str, config_map: &str, key: &str) -> Option<Arc<PreparedPolicy>> {
        let cm = self
            .config_maps
            .get(&ObjectRef::new(config_map).within(namespace))?;
        let rego = cm.data.as_ref()?.get(key)?;
        // The resource version changes with every change of the ConfigMap; without one (never
        // from the API server) nothing is kept.
        let Some(version) = cm
            .metadata
            .resource_version
            .as_deref()
            .filter(|v| !v.is_empty())
        else {
            return Some(Arc::new(PreparedPolicy::new(rego)));
        };
        let id = (
            namespace.to_string(),
            config_map.to_string(),
            key.to_string(),
        );
        if let Some((v, p)) = self.prepared.get(&id)
            && v == version
        {
            return Some(p);
        }
        let p = Arc::new(PreparedPolicy::new(rego));
        self.prepared.insert(id, (version.to_string(), p.clone()));
        Some(p)
    }

    fn ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }
}

/// [`Sources`] over plain maps: tests, `render`, the fuzz target.
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

    fn policy(&self, namespace: &str, config_map: &str, key: &str) -> Option<Arc<PreparedPolicy>> {
        self.policies
            .get(&(namespace.into(), config_map.into(), key.into()))
            .cloned()
    }
}

/// The bindings selecting a pod of `namespace`, with their policies looked up in `sources`.
pub fn matched_bindings(
    sources: &dyn Sources,
    namespace: &str,
    pod: &Value,
) -> Vec<MatchedBinding> {
    let labels = mutate::pod_labels(pod);
    mutate::select_bindings(namespace, &labels, &sources.bindings(namespace))
        .iter()
        .map(|b| {
            let r = &b.spec.policy.config_map_ref;
            MatchedBinding::from_binding(b, sources.policy(namespace, &r.name, &r.key))
        })
        .collect()
}

/// The whole admission decision for a parsed request: caches → pure decision.
pub fn admit(
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
    let bindings = matched_bindings(sources, &req.namespace, &req.object);
    mutate::decide(
        &req.object,
        &bindings,
        defaults,
        confidential_runtime_classes,
    )
}
