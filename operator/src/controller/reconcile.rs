//! One reconcile of one binding: read, decide ([`super::plan`]), make at most one Key Vault write,
//! write the status, publish events. Wrapped in `finalizer()` so deletion runs its cleanup.

use std::sync::Arc;
use std::time::{Duration, Instant};

use ckb_crds::{ConfidentialKeyBinding, ConfidentialKeyBindingStatus};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::runtime::controller::Action;
use kube::runtime::finalizer::{self, finalizer};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Api, ResourceExt};
use tracing::{Instrument, debug, info_span, warn};

use super::backoff::jittered;
use super::index::pod_policies;
use super::plan::{
    KeyAction, KeyObservation, Observed, Plan, PlannedEvent, PolicyConfigMap, plan, resolve_policy,
    settle,
};
use super::plan_cleanup::{
    CleanupEnd, CleanupStart, after_delete, after_get, cleanup_outcome, plan_cleanup,
};
pub use super::reconcile_context::{Clock, Context};
use super::reconcile_context::{Verified, publish, write_status};
use crate::caches::PolicySummary;
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

/// The policy ConfigMap's summary: from the cache of labelled ones when it was summarized for the
/// binding's key, else straight from the API (so that "not labelled" can be told from "missing",
/// and a key a new binding references is not reported missing before the cache fetched it).
async fn policy_config_map(
    ctx: &Context,
    binding: &ConfidentialKeyBinding,
) -> Result<Option<Arc<PolicySummary>>, Error> {
    let ns = binding.namespace().ok_or(Error::Unnamed)?;
    let r = &binding.spec.policy.config_map_ref;
    if let Some(s) = ctx.config_maps.get(&ObjectRef::new(&r.name).within(&ns))
        && s.keys.contains_key(&r.key)
    {
        return Ok(Some(s));
    }
    let api: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), &ns);
    api.get_opt(&r.name)
        .await
        .map(|o| o.map(|cm| Arc::new(PolicySummary::of(&cm, [&r.key]))))
        .map_err(Error::Kube)
}

/// What [`apply`] read from the caches.
async fn observe(binding: &ConfidentialKeyBinding, ctx: &Context) -> Result<Observed, Error> {
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
    Ok(Observed {
        policy,
        key: KeyObservation::NotChecked,
        pod_policies: qualifying.earliest,
        seen_retired: ctx.seen_retired(binding.uid_str()),
        injected_pods: qualifying.count,
        now: (ctx.clock)(),
        grant: ctx.grants.lookup(binding),
    })
}

/// The outcome of the Key Vault part of a reconcile.
struct Synced {
    /// The plan last made (its `requeue_after` decides the next look).
    plan: Plan,
    status: ConfidentialKeyBindingStatus,
    events: Vec<PlannedEvent>,
    failure: Option<KeyVaultError>,
}

/// Reads the key (or trusts what was verified within the resync period if that leads to no
/// write), makes the plan's one write, and folds the outcome into the status.
async fn sync_key(
    binding: &ConfidentialKeyBinding,
    ctx: &Context,
    url: &VaultUrl,
    mut observed: Observed,
) -> Synced {
    let obj = ObjectRef::from_obj(binding);
    let key_name = &binding.spec.key.name;
    let verified = |k: &VaultKey| Verified {
        generation: binding.metadata.generation,
        key: k.clone(),
        at: Instant::now(),
    };
    // Within a resync period, trust what was last verified if it leads to no write; a change
    // that needs a write is always decided on a fresh read.
    let fresh_enough = |v: &Verified| {
        v.generation == binding.metadata.generation
            && v.at.elapsed() < ctx.timing.resync.mul_f64(0.8)
    };
    let cached = ctx.verified(&obj).filter(fresh_enough);
    let from_cache = cached.is_some();
    observed.key = match cached {
        Some(v) => KeyObservation::Present(v.key),
        None => observe_key(ctx.vault.as_ref(), url, key_name).await,
    };
    let mut current = plan(binding, &observed, &ctx.config);
    if from_cache && current.action != KeyAction::None {
        observed.key = observe_key(ctx.vault.as_ref(), url, key_name).await;
        current = plan(binding, &observed, &ctx.config);
    }
    let mut failure = match &observed.key {
        KeyObservation::Failed(e) => Some(e.clone()),
        _ => None,
    };
    let mut events = Vec::new();
    // A recovery is followed by one more pass, which checks the recovered key's policy.
    for pass in 1..=2 {
        let outcome = execute(ctx.vault.as_ref(), url, key_name, &current.action).await;
        let (status, ev) = settle(binding, &current, outcome.as_ref(), observed.now);
        events.extend(ev);
        match (&current.action, &outcome) {
            (KeyAction::Recover, Some(Ok(_))) if pass < 2 => {
                observed.key = observe_key(ctx.vault.as_ref(), url, key_name).await;
                current = plan(binding, &observed, &ctx.config);
                continue;
            }
            (_, Some(Err(e))) => failure = Some(e.clone()),
            (_, Some(Ok(k))) => ctx.set_verified(&obj, Some(verified(k))),
            (_, None) => {
                if let KeyObservation::Present(k) = &observed.key
                    && current.status.conditions.iter().all(|c| c.status == "True")
                    && !from_cache
                {
                    ctx.set_verified(&obj, Some(verified(k)));
                }
            }
        }
        return Synced {
            plan: current,
            status,
            events,
            failure,
        };
    }
    unreachable!("the second pass always returns")
}

async fn apply(binding: &ConfidentialKeyBinding, ctx: &Context) -> Result<Action, Error> {
    let obj = ObjectRef::from_obj(binding);
    let observed = observe(binding, ctx).await?;
    let now = observed.now;
    let first = plan(binding, &observed, &ctx.config);
    let synced = match VaultUrl::parse(&binding.spec.key.vault) {
        Ok(url) if first.contact_vault => sync_key(binding, ctx, &url, observed).await,
        _ => {
            let (status, events) = settle(binding, &first, None, now);
            Synced {
                plan: first,
                status,
                events,
                failure: None,
            }
        }
    };
    let Synced {
        plan: current,
        mut status,
        mut events,
        failure,
    } = synced;
    if failure.is_some() {
        ctx.set_verified(&obj, None);
    }
    ctx.remember_retired(binding.uid_str(), &status, now);

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

/// What to do with the key of a binding being deleted: the decisions are `plan_cleanup.rs`'s;
/// this makes the Key Vault calls between them.
async fn cleanup(binding: &ConfidentialKeyBinding, ctx: &Context) -> Result<Action, Error> {
    let obj = ObjectRef::from_obj(binding);
    ctx.set_verified(&obj, None);
    ctx.forget_retired(binding.uid_str());
    let spec = &binding.spec.key;
    let end = match plan_cleanup(binding, ctx.admission(binding)) {
        CleanupStart::Done(ev) => CleanupEnd::Done(ev),
        CleanupStart::ReadKey(url) => {
            let read = ctx.vault.get_key(&url, &spec.name).await;
            let fate = match after_get(binding, read, &ctx.config.cluster_uid) {
                Some(fate) => fate,
                None => after_delete(ctx.vault.delete_key(&url, &spec.name).await),
            };
            let deleted_at = binding
                .metadata
                .deletion_timestamp
                .as_ref()
                .map(|t| t.0)
                .unwrap_or_else(|| (ctx.clock)());
            let waited = (ctx.clock)().duration_since(deleted_at);
            let waited = Duration::try_from(waited).unwrap_or(Duration::ZERO);
            let first_failure = ctx.backoff.failures(&obj) == 0;
            cleanup_outcome(
                binding,
                fate,
                waited,
                ctx.timing.cleanup_timeout,
                first_failure,
            )
        }
    };
    match end {
        CleanupEnd::Done(ev) => {
            publish(ctx, binding, &[ev]).await;
            ctx.backoff.reset(&obj);
            Ok(Action::await_change())
        }
        CleanupEnd::Retry(ev, e) => {
            publish(ctx, binding, ev.as_slice()).await;
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
