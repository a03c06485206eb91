//! One reconcile of one binding: read, decide ([`super::plan`]), make at most one Key Vault write,
//! write the status, publish events. Wrapped in `finalizer()` so deletion runs its cleanup.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ckb_crds::{
    ConfidentialKeyBinding, ConfidentialKeyBindingStatus, DeletionPolicy, FIELD_MANAGER,
};
use jiff::Timestamp;
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder};
use kube::runtime::finalizer::{self, finalizer};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Api, Client, Resource, ResourceExt};
use serde_json::json;
use tracing::{Instrument, debug, info, info_span, warn};

use super::backoff::{ErrorBackoff, jittered};
use super::hashes::remember_retired;
use super::index::pod_policies;
use super::plan::{
    KeyAction, KeyObservation, Observed, PlanConfig, PlannedEvent, PolicyConfigMap, owns, plan,
    resolve_policy, settle,
};
use crate::keyvault::{KeyVault, KeyVaultError, VaultKey, VaultUrl};
use crate::telemetry::ControllerMetrics;

/// Errors of a reconcile.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A Kubernetes API call failed.
    #[error("kubernetes API: {0}")]
    Kube(#[source] kube::Error),
    /// A Key Vault call failed (the status says which and why).
    #[error("key vault: {0}")]
    KeyVault(#[source] KeyVaultError),
    /// Adding or removing the finalizer, or the wrapped reconcile, failed.
    #[error("finalizer: {0}")]
    Finalizer(#[source] Box<finalizer::Error<Error>>),
    /// The object has no namespace or name.
    #[error("binding has no namespace or name")]
    Unnamed,
}

impl Error {
    /// The Key Vault error inside, if any (through the finalizer wrapper).
    pub fn key_vault(&self) -> Option<&KeyVaultError> {
        match self {
            Error::KeyVault(e) => Some(e),
            Error::Finalizer(f) => match f.as_ref() {
                finalizer::Error::ApplyFailed(e) | finalizer::Error::CleanupFailed(e) => {
                    e.key_vault()
                }
                _ => None,
            },
            _ => None,
        }
    }

    /// A short label for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self.key_vault() {
            Some(KeyVaultError::Throttled { .. }) => "throttled",
            Some(_) => "keyvault",
            None => "kubernetes",
        }
    }
}

/// Timing settings of the controller.
#[derive(Debug, Clone)]
pub struct Timing {
    /// Period after which a converged binding is looked at again (jittered by ±10%).
    pub resync: Duration,
    /// How long after its deletion a binding whose key cannot be deleted (vault unreachable)
    /// keeps its finalizer before it is released with the key left in place.
    pub cleanup_timeout: Duration,
    /// First retry delay after a failure.
    pub backoff_base: Duration,
    /// Longest retry delay.
    pub backoff_max: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Self {
            resync: Duration::from_secs(600),
            cleanup_timeout: Duration::from_secs(600),
            backoff_base: Duration::from_secs(1),
            backoff_max: Duration::from_secs(300),
        }
    }
}

/// What the last successful look at a key found, so watch-triggered reconciles within a resync
/// period make no Key Vault call when nothing they decide on changed.
#[derive(Debug, Clone)]
struct Verified {
    generation: Option<i64>,
    key: VaultKey,
    at: Instant,
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
    /// Policy ConfigMaps (labelled `ckb.dev/policy=true`).
    pub config_maps: Store<ConfigMap>,
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
        config_maps: Store<ConfigMap>,
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

    fn seen_retired(&self, uid: &str) -> BTreeMap<String, Timestamp> {
        let map = self.retired.lock().unwrap_or_else(|e| e.into_inner());
        map.get(uid).cloned().unwrap_or_default()
    }

    /// Remembers the retired hashes of the status about to be written (see
    /// [`remember_retired`]); forgets the binding once none is retired.
    fn remember_retired(&self, uid: &str, status: &ConfidentialKeyBindingStatus, now: Timestamp) {
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

    fn verified(&self, obj: &ObjectRef<ConfidentialKeyBinding>) -> Option<Verified> {
        let map = self.verified.lock().unwrap_or_else(|e| e.into_inner());
        map.get(obj).cloned()
    }

    fn set_verified(&self, obj: &ObjectRef<ConfidentialKeyBinding>, v: Option<Verified>) {
        let mut map = self.verified.lock().unwrap_or_else(|e| e.into_inner());
        match v {
            Some(v) => map.insert(obj.clone(), v),
            None => map.remove(obj),
        };
    }
}

/// The reconcile entry point for the controller runtime.
pub async fn reconcile(
    binding: Arc<ConfidentialKeyBinding>,
    ctx: Arc<Context>,
) -> Result<Action, Error> {
    let ns = binding.namespace().ok_or(Error::Unnamed)?;
    let name = binding.name_any();
    let span = info_span!(
        "reconcile",
        binding = %name,
        namespace = %ns,
        vault = %binding.spec.key.vault_url()
    );
    async move {
        let started = Instant::now();
        let api: Api<ConfidentialKeyBinding> = Api::namespaced(ctx.client.clone(), &ns);
        // Key Vault calls of this reconcile count against its namespace's share of the vault.
        let share = ctx
            .admission(&binding)
            .map_or(ctx.config.bounds.namespace_share_percent, |a| {
                a.rate_share_percent
            });
        let result = crate::keyvault::limiter::with_namespace_share(
            &ns,
            share,
            finalizer(&api, ckb_crds::FINALIZER, binding, |event| async {
                match event {
                    finalizer::Event::Apply(b) => apply(&b, &ctx).await,
                    finalizer::Event::Cleanup(b) => cleanup(&b, &ctx).await,
                }
            }),
        )
        .await
        .map_err(|e| Error::Finalizer(Box::new(e)));
        ctx.metrics
            .reconciled(result.is_ok(), started.elapsed().as_secs_f64());
        result
    }
    .instrument(span)
    .await
}

/// The error policy: per-binding exponential backoff with jitter; `Retry-After` for throttling.
pub fn error_policy(
    binding: Arc<ConfidentialKeyBinding>,
    error: &Error,
    ctx: Arc<Context>,
) -> Action {
    Action::requeue(retry_delay(binding.as_ref(), error, &ctx))
}

/// Records the failure and returns how long to wait before retrying this binding.
pub fn retry_delay(binding: &ConfidentialKeyBinding, error: &Error, ctx: &Context) -> Duration {
    let obj = ObjectRef::from_obj(binding);
    let floor = match error.key_vault() {
        Some(KeyVaultError::Throttled { retry_after, .. }) => Some(*retry_after),
        _ => None,
    };
    let delay = ctx.backoff.failed(&obj, floor);
    warn!(binding = %obj, error = %error, kind = error.kind(), retry_in = ?delay, "reconcile failed");
    delay
}

async fn observe_key(vault: &dyn KeyVault, url: &VaultUrl, name: &str) -> KeyObservation {
    match vault.get_key(url, name).await {
        Ok(k) => KeyObservation::Present(k),
        Err(KeyVaultError::NotFound { .. }) => match vault.get_deleted_key(url, name).await {
            Ok(d) => KeyObservation::Deleted(d),
            Err(KeyVaultError::NotFound { .. }) => KeyObservation::Absent,
            Err(e) => KeyObservation::Failed(e),
        },
        Err(e) => KeyObservation::Failed(e),
    }
}

async fn execute(
    vault: &dyn KeyVault,
    url: &VaultUrl,
    name: &str,
    action: &KeyAction,
) -> Option<Result<VaultKey, KeyVaultError>> {
    Some(match action {
        KeyAction::None => return None,
        KeyAction::Create(new) => vault.create_key(url, new).await,
        KeyAction::UpdatePolicy {
            version,
            policy_json,
            tags,
        } => {
            vault
                .update_key(url, name, version, Some(policy_json), tags.as_ref())
                .await
        }
        KeyAction::RecordRetired { version, tags } => {
            vault.update_key(url, name, version, None, Some(tags)).await
        }
        KeyAction::Adopt {
            version,
            policy_json,
            tags,
        }
        | KeyAction::Retag {
            version,
            policy_json,
            tags,
        } => {
            vault
                .update_key(url, name, version, Some(policy_json), Some(tags))
                .await
        }
        KeyAction::Recover => vault.recover_deleted_key(url, name).await,
    })
}

/// Reads the policy ConfigMap: from the cache of labelled ones, else straight from the API so
/// that "not labelled" can be told from "missing".
async fn policy_config_map(
    ctx: &Context,
    binding: &ConfidentialKeyBinding,
) -> Result<Option<Arc<ConfigMap>>, Error> {
    let ns = binding.namespace().ok_or(Error::Unnamed)?;
    let name = &binding.spec.policy.config_map_ref.name;
    // The cache leaves out a policy over the annotation budget: read it once to say how large.
    if let Some(cm) = ctx.config_maps.get(&ObjectRef::new(name).within(&ns))
        && !super::runtime::omitted(&cm, &binding.spec.policy.config_map_ref.key)
    {
        return Ok(Some(cm));
    }
    let api: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), &ns);
    api.get_opt(name)
        .await
        .map(|o| o.map(Arc::new))
        .map_err(Error::Kube)
}

async fn apply(binding: &ConfidentialKeyBinding, ctx: &Context) -> Result<Action, Error> {
    let obj = ObjectRef::from_obj(binding);
    let cm = policy_config_map(ctx, binding).await?;
    let policy = resolve_policy(
        binding,
        match cm.as_deref() {
            Some(c) => PolicyConfigMap::Found(c),
            None => PolicyConfigMap::Missing,
        },
    );
    let pods = ctx.pods.state();
    let qualifying = pod_policies(
        pods.iter().map(|p| p.as_ref()),
        binding,
        &ctx.config.confidential_runtime_classes,
    );
    let uid = binding.uid_str().to_string();
    let mut observed = Observed {
        policy,
        key: KeyObservation::NotChecked,
        pod_policies: qualifying.earliest,
        seen_retired: ctx.seen_retired(&uid),
        injected_pods: qualifying.count,
        now: (ctx.clock)(),
        grant: ctx.grants.lookup(binding),
    };

    let mut current = plan(binding, &observed, &ctx.config);
    let mut events: Vec<PlannedEvent> = Vec::new();
    let mut status: ConfidentialKeyBindingStatus;
    let mut failure: Option<KeyVaultError> = None;
    let url = VaultUrl::parse(&binding.spec.key.vault);
    let key_name = binding.spec.key.name.clone();

    if current.contact_vault
        && let Ok(url) = &url
    {
        // Within a resync period, trust what was last verified if it leads to no write; a
        // change that needs a write is always decided on a fresh read.
        let fresh_enough = |v: &Verified| {
            v.generation == binding.metadata.generation
                && v.at.elapsed() < ctx.timing.resync.mul_f64(0.8)
        };
        let mut from_cache = false;
        observed.key = match ctx.verified(&obj).filter(fresh_enough) {
            Some(v) => {
                from_cache = true;
                KeyObservation::Present(v.key)
            }
            None => observe_key(ctx.vault.as_ref(), url, &key_name).await,
        };
        current = plan(binding, &observed, &ctx.config);
        if from_cache && current.action != KeyAction::None {
            observed.key = observe_key(ctx.vault.as_ref(), url, &key_name).await;
            current = plan(binding, &observed, &ctx.config);
        }
        if let KeyObservation::Failed(e) = &observed.key {
            failure = Some(e.clone());
        }
        // A recovery is followed by one more pass, which checks the recovered key's policy.
        let mut passes = 0;
        loop {
            passes += 1;
            let outcome = execute(ctx.vault.as_ref(), url, &key_name, &current.action).await;
            let (s, ev) = settle(binding, &current, outcome.as_ref(), observed.now);
            status = s;
            events.extend(ev);
            match (&current.action, &outcome) {
                (KeyAction::Recover, Some(Ok(_))) if passes < 2 => {
                    observed.key = observe_key(ctx.vault.as_ref(), url, &key_name).await;
                    current = plan(binding, &observed, &ctx.config);
                    continue;
                }
                (_, Some(Err(e))) => failure = Some(e.clone()),
                (_, Some(Ok(k))) => ctx.set_verified(
                    &obj,
                    Some(Verified {
                        generation: binding.metadata.generation,
                        key: k.clone(),
                        at: Instant::now(),
                    }),
                ),
                (_, None) => {
                    if let KeyObservation::Present(k) = &observed.key
                        && current.status.conditions.iter().all(|c| c.status == "True")
                        && !from_cache
                    {
                        ctx.set_verified(
                            &obj,
                            Some(Verified {
                                generation: binding.metadata.generation,
                                key: k.clone(),
                                at: Instant::now(),
                            }),
                        );
                    }
                }
            }
            break;
        }
    } else {
        let (s, ev) = settle(binding, &current, None, observed.now);
        status = s;
        events.extend(ev);
    }
    if failure.is_some() {
        ctx.set_verified(&obj, None);
    }
    ctx.remember_retired(&uid, &status, observed.now);

    events.extend(super::uninjected::apply(
        &mut status,
        binding.status.as_ref(),
        ctx.uninjected.get(&obj).as_deref(),
        ctx.uninjected.report(&obj),
    ));
    if binding.status.as_ref() != Some(&status) {
        write_status(ctx, binding, &status).await?;
    }
    publish(ctx, binding, &events).await;

    if let Some(e) = failure {
        return Err(Error::KeyVault(e));
    }
    ctx.backoff.reset(&obj);
    let resync = jittered(ctx.timing.resync, 0.1, rand::random::<f64>());
    let next = match current.requeue_after {
        // A grace period ends: look again just after it.
        Some(grace) => resync.min(grace + Duration::from_secs(1)),
        None => resync,
    };
    debug!(requeue_in = ?next, "reconciled");
    Ok(Action::requeue(next))
}

async fn write_status(
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

async fn publish(ctx: &Context, binding: &ConfidentialKeyBinding, events: &[PlannedEvent]) {
    let reference = binding.object_ref(&());
    for e in events {
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

/// What to do with the key of a binding being deleted.
async fn cleanup(binding: &ConfidentialKeyBinding, ctx: &Context) -> Result<Action, Error> {
    let obj = ObjectRef::from_obj(binding);
    ctx.set_verified(&obj, None);
    ctx.retired
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .remove(binding.uid_str());
    let spec = &binding.spec.key;
    let event = |warning: bool, reason: &str, note: String| PlannedEvent {
        warning,
        reason: reason.into(),
        note,
    };
    let done = |ev: PlannedEvent| {
        let obj = obj.clone();
        async move {
            publish(ctx, binding, &[ev]).await;
            ctx.backoff.reset(&obj);
            Ok(Action::await_change())
        }
    };
    if spec.deletion_policy == DeletionPolicy::Retain {
        return done(event(
            false,
            "KeyRetained",
            format!(
                "deletionPolicy Retain: key {} in {} is left in place with its tags",
                spec.name,
                spec.vault_url()
            ),
        ))
        .await;
    }
    let url = match (VaultUrl::parse(&spec.vault), ctx.admission(binding)) {
        (Ok(u), Ok(_)) => u,
        (_, refused) => {
            let why = refused.err().map_or_else(
                || format!("vault {} is not allowed", spec.vault_url()),
                |r| format!("{} ({})", r.message, r.reason),
            );
            return done(event(
                false,
                "KeyNotContacted",
                format!("{why}; nothing was deleted"),
            ))
            .await;
        }
    };
    let never_created = binding
        .status
        .as_ref()
        .and_then(|s| s.key.as_ref())
        .is_none();
    if never_created {
        return done(event(
            false,
            "NoKeyToDelete",
            "the binding never had a key; Key Vault was not called".into(),
        ))
        .await;
    }
    let result = async {
        match ctx.vault.get_key(&url, &spec.name).await {
            Err(KeyVaultError::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
            Ok(k) if owns(binding, &k, &ctx.config.cluster_uid) => {
                match ctx.vault.delete_key(&url, &spec.name).await {
                    Ok(_) | Err(KeyVaultError::NotFound { .. }) => Ok(Some(true)),
                    Err(e) => Err(e),
                }
            }
            Ok(_) => Ok(Some(false)),
        }
    }
    .await;
    match result {
        Ok(Some(true)) => {
            done(event(
                false,
                "KeyDeleted",
                format!(
                    "soft-deleted key {} in {} (recoverable for the vault's retention period)",
                    spec.name,
                    spec.vault_url()
                ),
            ))
            .await
        }
        Ok(Some(false)) => {
            done(event(
                true,
                "KeyNotDeleted",
                format!(
                    "key {} in {} no longer carries this binding's tags; it was not deleted",
                    spec.name,
                    spec.vault_url()
                ),
            ))
            .await
        }
        Ok(None) => {
            done(event(
                false,
                "KeyAlreadyGone",
                format!("key {} in {} does not exist", spec.name, spec.vault_url()),
            ))
            .await
        }
        Err(e) => {
            let deleted_at = binding
                .metadata
                .deletion_timestamp
                .as_ref()
                .map(|t| t.0)
                .unwrap_or_else(|| (ctx.clock)());
            let waited = (ctx.clock)().duration_since(deleted_at);
            let waited = Duration::try_from(waited).unwrap_or(Duration::ZERO);
            if waited >= ctx.timing.cleanup_timeout {
                return done(event(
                    true,
                    "CleanupAbandoned",
                    format!(
                        "could not delete key {} in {} for {}s ({e}); the finalizer is released \
                         and the key is LEFT IN PLACE: delete it by hand if needed",
                        spec.name,
                        spec.vault_url(),
                        waited.as_secs()
                    ),
                ))
                .await;
            }
            // One event for the first failure, not one per retry.
            if ctx.backoff.failures(&obj) == 0 {
                publish(
                    ctx,
                    binding,
                    &[event(
                        true,
                        "KeyDeleteFailed",
                        format!(
                            "deleting key {} in {} failed: {e}; retrying for up to {}s",
                            spec.name,
                            spec.vault_url(),
                            ctx.timing.cleanup_timeout.as_secs()
                        ),
                    )],
                )
                .await;
            }
            Err(Error::KeyVault(e))
        }
    }
}

/// Sets `ckb_bindings{ready}` and the per-binding series from the binding cache.
pub fn count_ready(store: &Store<ConfidentialKeyBinding>, metrics: &ControllerMetrics) {
    let (mut ready, mut not_ready) = (0, 0);
    metrics.set_binding_states(store.state().iter().map(|b| super::status::metric_state(b)));
    for b in store.state() {
        if b.condition(ckb_crds::conditions::types::READY)
            .is_some_and(|c| c.status == "True")
        {
            ready += 1;
        } else {
            not_ready += 1;
        }
    }
    metrics.set_bindings(ready, not_ready);
}
