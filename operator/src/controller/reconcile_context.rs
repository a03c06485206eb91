//! What a reconcile needs ([`Context`]): clients, settings, caches, and the little this process
//! remembers between reconciles (the last verified key, the retirements it saw).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use ckb_crds::{ConfidentialKeyBinding, ConfidentialKeyBindingStatus, FIELD_MANAGER};
use jiff::Timestamp;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Patch, PatchParams};
use kube::runtime::events::{Event, EventType, Recorder};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Api, Client, Resource, ResourceExt};
use serde_json::json;
use tracing::{info, warn};

use super::backoff::ErrorBackoff;
use super::hashes::remember_retired;
use super::plan::PlanConfig;
use super::plan::PlannedEvent;
use super::reconcile::{Error, Timing};
use crate::caches::PolicySummary;
use crate::keyvault::{KeyVault, VaultKey};
use crate::telemetry::ControllerMetrics;

/// What the last successful look at a key found, so watch-triggered reconciles within a resync
/// period make no Key Vault call when nothing they decide on changed.
#[derive(Debug, Clone)]
pub(super) struct Verified {
    pub(super) generation: Option<i64>,
    pub(super) key: VaultKey,
    pub(super) at: Instant,
}

/// A clock (fixed in tests).
pub type Clock = Arc<dyn Fn() -> Timestamp + Send + Sync>;

/// Everything a reconcile needs.
pub struct Context {
    /// Kubernetes client.
    pub client: Client,
    /// Key Vault.
    pub vault: Arc<dyn KeyVault>,
    /// Decision settings.
    pub config: PlanConfig,
    /// Timings.
    pub timing: Timing,
    /// The referenced policy ConfigMaps (labelled `ckb.dev/policy=true`), summarized.
    pub config_maps: Store<PolicySummary>,
    /// Injected pods (slimmed, see `index::slim_pod`).
    pub pods: Store<Pod>,
    /// Event recorder.
    pub recorder: Recorder,
    /// Metrics.
    pub metrics: ControllerMetrics,
    /// Per-binding failure counts.
    pub backoff: ErrorBackoff,
    /// Time source.
    pub clock: Clock,
    /// Pods that missed injection, as the last scan found them (see [`super::uninjected`]).
    pub uninjected: super::uninjected::Uninjected,
    /// ConfidentialKeyGrants and namespace labels (empty until [`Context::with_grants`]).
    pub grants: super::runtime::GrantStores,
    verified: Mutex<HashMap<ObjectRef<ConfidentialKeyBinding>, Verified>>,
    /// Per binding UID: when this process first saw each of its hashes retired. The status says
    /// the same, but anyone with status rights can rewrite it; this memory makes sure a status
    /// patch never lengthens a hash's life while the process runs.
    retired: Mutex<HashMap<String, BTreeMap<String, Timestamp>>>,
}

impl Context {
    /// Builds a context.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        client: Client,
        vault: Arc<dyn KeyVault>,
        config: PlanConfig,
        timing: Timing,
        config_maps: Store<PolicySummary>,
        pods: Store<Pod>,
        recorder: Recorder,
        metrics: ControllerMetrics,
        clock: Clock,
    ) -> Self {
        let backoff = ErrorBackoff::new(timing.backoff_base, timing.backoff_max);
        Self {
            client,
            vault,
            config,
            timing,
            config_maps,
            pods,
            recorder,
            metrics,
            backoff,
            clock,
            uninjected: Default::default(),
            grants: super::runtime::GrantStores::default(),
            verified: Mutex::default(),
            retired: Mutex::default(),
        }
    }

    pub(super) fn seen_retired(&self, uid: &str) -> BTreeMap<String, Timestamp> {
        let map = self.retired.lock().unwrap_or_else(|e| e.into_inner());
        map.get(uid).cloned().unwrap_or_default()
    }

    /// Remembers the retired hashes of the status about to be written (see
    /// [`remember_retired`]); forgets the binding once none is retired.
    pub(super) fn remember_retired(
        &self,
        uid: &str,
        status: &ConfidentialKeyBindingStatus,
        now: Timestamp,
    ) {
        let mut map = self.retired.lock().unwrap_or_else(|e| e.into_inner());
        let old = map.remove(uid).unwrap_or_default();
        let bound = status
            .policy
            .as_ref()
            .map(|p| p.bound_hashes.as_slice())
            .unwrap_or_default();
        let merged = remember_retired(&old, bound, now);
        if !merged.is_empty() {
            map.insert(uid.to_string(), merged);
        }
    }

    /// Forgets what this process saw of a binding's retirements (the binding is going).
    pub(super) fn forget_retired(&self, uid: &str) {
        let mut map = self.retired.lock().unwrap_or_else(|e| e.into_inner());
        map.remove(uid);
    }

    /// Reads grants and namespace labels from these caches.
    pub fn with_grants(mut self, grants: super::runtime::GrantStores) -> Self {
        self.grants = grants;
        self
    }

    /// Whether the cluster's bounds admit the binding (a grant, or the operator's flags).
    pub fn admission(
        &self,
        binding: &ConfidentialKeyBinding,
    ) -> Result<super::grant::Admitted, super::grant::Refusal> {
        super::grant::admit(
            binding,
            &self.grants.lookup(binding),
            &self.config.allowed_vaults,
            &self.config.bounds,
        )
    }

    pub(super) fn verified(&self, obj: &ObjectRef<ConfidentialKeyBinding>) -> Option<Verified> {
        let map = self.verified.lock().unwrap_or_else(|e| e.into_inner());
        map.get(obj).cloned()
    }

    pub(super) fn set_verified(
        &self,
        obj: &ObjectRef<ConfidentialKeyBinding>,
        v: Option<Verified>,
    ) {
        let mut map = self.verified.lock().unwrap_or_else(|e| e.into_inner());
        match v {
            Some(v) => map.insert(obj.clone(), v),
            None => map.remove(obj),
        };
    }
}

/// Applies the binding's status (server-side apply, the operator's field manager).
pub(super) async fn write_status(
    ctx: &Context,
    binding: &ConfidentialKeyBinding,
    status: &ConfidentialKeyBindingStatus,
) -> Result<(), Error> {
    let ns = binding.namespace().ok_or(Error::Unnamed)?;
    let api: Api<ConfidentialKeyBinding> = Api::namespaced(ctx.client.clone(), &ns);
    let patch = json!({
        "apiVersion": ConfidentialKeyBinding::api_version(&()),
        "kind": ConfidentialKeyBinding::kind(&()),
        "status": status,
    });
    api.patch_status(
        &binding.name_any(),
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await
    .map_err(Error::Kube)?;
    Ok(())
}

/// Publishes events on the binding (and logs them); a failure to publish is logged only.
pub(super) async fn publish(
    ctx: &Context,
    binding: &ConfidentialKeyBinding,
    events: &[PlannedEvent],
) {
    let reference = binding.object_ref(&());
    for e in events {
        debug_assert!(
            ckb_crds::conditions::events::is_published(&e.reason),
            "event reason {:?} is not in the vocabulary (ckb_crds::conditions)",
            e.reason
        );
        let ev = Event {
            type_: if e.warning {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: e.reason.clone(),
            note: Some(truncate(&e.note, 1000)),
            action: "Reconcile".into(),
            secondary: None,
        };
        if e.warning {
            warn!(reason = %e.reason, note = %e.note, "event");
        } else {
            info!(reason = %e.reason, note = %e.note, "event");
        }
        if let Err(err) = ctx.recorder.publish(&ev, &reference).await {
            // An event that cannot be published must not fail the reconcile: the status holds
            // the same information.
            warn!(error = %err, reason = %e.reason, "cannot publish event");
        }
    }
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_string()
}
