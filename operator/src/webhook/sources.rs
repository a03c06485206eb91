//! Where the webhook reads bindings and policies: in-memory caches, never the API server, so an
//! admission costs no API call.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use k8s_openapi::api::core::v1::ConfigMap;
use kube::runtime::reflector::{ObjectRef, Store};
use serde_json::Value;

use super::mutate::{self, Decision, MatchedBinding, SidecarDefaults};
use super::review::PodRequest;
use crate::controller::runtime::store_ready;
use crate::crds::ConfidentialKeyBinding;

/// Read access to the bindings and policy ConfigMaps the webhook needs.
pub trait Sources: Send + Sync + 'static {
    /// The bindings of a namespace (any order).
    fn bindings(&self, namespace: &str) -> Vec<Arc<ConfidentialKeyBinding>>;
    /// The Rego text under `key` of ConfigMap `namespace/config_map`, if cached.
    fn policy(&self, namespace: &str, config_map: &str, key: &str) -> Option<String>;
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
}

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
        }
    }
}

impl Sources for StoreSources {
    fn bindings(&self, namespace: &str) -> Vec<Arc<ConfidentialKeyBinding>> {
        self.bindings
            .state_filter(|b| b.metadata.namespace.as_deref() == Some(namespace))
    }

    fn policy(&self, namespace: &str, config_map: &str, key: &str) -> Option<String> {
        let cm = self
            .config_maps
            .get(&ObjectRef::new(config_map).within(namespace))?;
        cm.data.as_ref()?.get(key).cloned()
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
    pub policies: BTreeMap<(String, String, String), String>,
}

impl MapSources {
    /// Adds a policy.
    pub fn with_policy(mut self, namespace: &str, config_map: &str, key: &str, rego: &str) -> Self {
        self.policies.insert(
            (namespace.into(), config_map.into(), key.into()),
            rego.into(),
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

    fn policy(&self, namespace: &str, config_map: &str, key: &str) -> Option<String> {
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
            let policy = sources
                .policy(namespace, &r.name, &r.key)
                .map(Arc::<str>::from);
            MatchedBinding::from_binding(b, policy)
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
