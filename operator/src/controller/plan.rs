//! The reconcile decision, as a pure function of what was observed.
//!
//! [`resolve_policy`] turns the referenced ConfigMap into a hash or a reason; [`plan`] turns the
//! binding, that result, the key as Key Vault reported it and the pods into one [`KeyAction`], the
//! status to write and the events to publish; [`settle`] folds the outcome of the action back into
//! the status. The I/O around them (`reconcile.rs`) only reads, calls and writes.
//!
//! The parts: `plan_policy.rs` (the policy ConfigMap and which hash may be bound),
//! `hashes.rs` (which hashes the release policy allows), `plan_owner.rs` (whose a key is),
//! `plan_key.rs` (the key and its one write), `plan_settle.rs` (the outcome of the write), `plan_cleanup.rs` (deletion).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use ckb_crds::conditions::{reasons, types};
use ckb_crds::{ConfidentialKeyBinding, ConfidentialKeyBindingStatus, PolicySource, tags};
use jiff::Timestamp;

use super::hashes::{Allowed, HashInputs, allowed_hashes, decode_retired, encode_retired};
use super::status::{Wanted, conditions};
use crate::keyvault::{DeletedVaultKey, KeyVaultError, NewKey, VaultKey, VaultUrl};
use crate::policy::{PolicyHash, ReleasePolicy};

pub use super::plan_key::{
    KeyDecision, KeyOrigin, KeyTarget, decide_key, failure_reason, key_differences, new_key,
};
pub use super::plan_owner::{Ownership, adopt_consent, had_this_key, owner_tags, ownership, owns};
pub use super::plan_policy::{
    ANNOTATION_BUDGET, PolicyConfigMap, PolicyProblem, ResolvedPolicy, policy_condition,
    resolve_policy,
};
pub use super::plan_settle::{failure_events, settle};

/// What the decision needs to know about the operator's configuration.
#[derive(Debug, Clone)]
pub struct PlanConfig {
    /// Vaults the operator may contact. Empty means none.
    pub allowed_vaults: BTreeSet<VaultUrl>,
    /// How long a hash that stopped being current stays bound.
    pub hash_grace: Duration,
    /// UID of the cluster's `kube-system` namespace (the `ckb-cluster` tag).
    pub cluster_uid: String,
    /// What a binding without `spec.policy.sha256` and `spec.policy.source` follows
    /// (`--policy-source-default`).
    pub policy_source_default: PolicySource,
    /// The longest a retired hash stays bound, pods or not (`--hash-retention-ceiling`).
    pub retention_ceiling: Duration,
    /// Runtime classes of confidential pods: only such pods keep a retired hash bound.
    pub confidential_runtime_classes: Vec<String>,
    /// The operator-wide bounds on what bindings may ask for (see [`super::grant`]).
    pub bounds: super::grant::ClusterBounds,
}

impl Default for PlanConfig {
    /// No vault, the flags' defaults (pinned policies, 10m grace, 24h ceiling), no cluster UID.
    fn default() -> Self {
        Self {
            allowed_vaults: BTreeSet::new(),
            hash_grace: Duration::from_secs(600),
            cluster_uid: String::new(),
            policy_source_default: PolicySource::Pinned,
            retention_ceiling: Duration::from_secs(24 * 3600),
            confidential_runtime_classes: vec![
                crate::webhook::mutate::DEFAULT_CONFIDENTIAL_RUNTIME_CLASS.to_string(),
            ],
            bounds: super::grant::ClusterBounds::default(),
        }
    }
}

/// The key as Key Vault reported it.
#[derive(Debug, Clone, PartialEq)]
pub enum KeyObservation {
    /// Key Vault was not asked (vault not allowed, policy unresolved).
    NotChecked,
    /// No key and no deleted key of that name.
    Absent,
    /// The key (its current version).
    Present(VaultKey),
    /// No key, but a soft-deleted one of that name.
    Deleted(DeletedVaultKey),
    /// Asking failed.
    Failed(KeyVaultError),
}

/// Everything [`plan`] looks at besides the binding and the configuration.
#[derive(Debug, Clone)]
pub struct Observed {
    /// The policy, or why there is none.
    pub policy: Result<ResolvedPolicy, PolicyProblem>,
    /// The key.
    pub key: KeyObservation,
    /// For each policy hash run by qualifying pods of this binding (`index::pod_policies`), the
    /// creation time of the earliest such pod.
    pub pod_policies: BTreeMap<String, Timestamp>,
    /// When this operator process first saw each hash of this binding retired.
    pub seen_retired: BTreeMap<String, Timestamp>,
    /// How many live qualifying pods this binding has.
    pub injected_pods: i32,
    /// The time of this reconcile.
    pub now: Timestamp,
    /// The grant the binding names and its namespace's labels (see [`super::grant::admit`]).
    pub grant: super::grant::GrantLookup,
}

/// The one Key Vault write a reconcile makes, if any.
#[derive(Debug, Clone, PartialEq)]
pub enum KeyAction {
    /// Nothing to write.
    None,
    /// Create the key.
    Create(NewKey),
    /// Replace the release policy of the current version (and the tags, when the retired hashes
    /// recorded on the key change with it).
    UpdatePolicy {
        /// Version to patch.
        version: String,
        /// The new release policy.
        policy_json: String,
        /// The key's tags with the new `ckb-retired` record, if it changes.
        tags: Option<BTreeMap<String, String>>,
    },
    /// Record on the key when its retired hashes retired (the `ckb-retired` tag, see
    /// [`super::hashes::encode_retired`]); the release policy is already right.
    RecordRetired {
        /// Version to patch.
        version: String,
        /// The key's tags with the new `ckb-retired` record.
        tags: BTreeMap<String, String>,
    },
    /// Take over an untagged key: add our tags and set the release policy.
    Adopt {
        /// Version to patch.
        version: String,
        /// The new release policy.
        policy_json: String,
        /// The key's tags plus ours.
        tags: BTreeMap<String, String>,
    },
    /// Add the `ckb-binding-uid` tag to a key this binding's earlier operator version created
    /// (and set the release policy).
    Retag {
        /// Version to patch.
        version: String,
        /// The new release policy.
        policy_json: String,
        /// The key's tags plus ours.
        tags: BTreeMap<String, String>,
    },
    /// Recover our soft-deleted key (the next pass checks its release policy).
    Recover,
}

/// An event to publish on the binding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedEvent {
    /// Warning rather than Normal.
    pub warning: bool,
    /// CamelCase reason.
    pub reason: String,
    /// Message.
    pub note: String,
}

/// The decision of one reconcile.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// The Key Vault write to make.
    pub action: KeyAction,
    /// Whether Key Vault must be asked about the key first (`false`: vault not allowed or
    /// policy unresolved; nothing is sent to Key Vault at all).
    pub contact_vault: bool,
    /// The status to write if the action succeeds (or when there is none).
    pub status: ConfidentialKeyBindingStatus,
    /// Events to publish (new failures; writes are reported by [`settle`]).
    pub events: Vec<PlannedEvent>,
    /// When the binding must be looked at again regardless of watches (end of a grace period).
    pub requeue_after: Option<Duration>,
    /// The conditions before transition bookkeeping (what [`settle`] amends on failure).
    pub wanted: Vec<Wanted>,
}

/// What the binding's release policy should allow: the allowed hashes (with why), and the release
/// policy they make (or why none can be built).
#[derive(Debug, Clone)]
pub struct DesiredPolicy {
    /// The bound hashes.
    pub allowed: Allowed,
    /// The release policy of those hashes.
    pub release: Result<ReleasePolicy, String>,
}

/// The bound hashes and their release policy, if the binding has any hash to bind (the
/// ConfigMap's, when it may be bound, or pins); `None`: nothing to bind, the key is left alone.
pub fn desired_policy(
    binding: &ConfidentialKeyBinding,
    observed: &Observed,
    config: &PlanConfig,
    bindable: Option<&PolicyHash>,
) -> Option<DesiredPolicy> {
    let spec = &binding.spec;
    if bindable.is_none() && spec.policy.sha256.is_empty() {
        return None;
    }
    let (recorded, in_vault) = match &observed.key {
        KeyObservation::Present(k) => {
            let recorded = k.tags.get(tags::RETIRED).map(|v| decode_retired(v));
            let held = k
                .release_policy
                .as_ref()
                .and_then(|p| ReleasePolicy::parse_json(&p.json).ok())
                .map(|p| p.hostdata_hashes());
            (recorded.unwrap_or_default(), Some(held.unwrap_or_default()))
        }
        KeyObservation::Absent | KeyObservation::Deleted(_) => {
            (BTreeMap::new(), Some(BTreeSet::new()))
        }
        KeyObservation::NotChecked | KeyObservation::Failed(_) => (BTreeMap::new(), None),
    };
    let previous_bound = binding
        .status
        .as_ref()
        .and_then(|s| s.policy.as_ref())
        .map(|p| p.bound_hashes.clone())
        .unwrap_or_default();
    let allowed = allowed_hashes(HashInputs {
        current: bindable,
        pinned: &spec.policy.sha256,
        additional: &spec.policy.additional_hashes,
        previous: &previous_bound,
        in_vault: in_vault.as_ref(),
        pods: &observed.pod_policies,
        seen_retired: &observed.seen_retired,
        recorded: &recorded,
        now: observed.now,
        grace: config.hash_grace,
        ceiling: config.retention_ceiling,
    });
    let set: BTreeSet<PolicyHash> = allowed
        .hashes()
        .iter()
        .filter_map(|h| h.parse().ok())
        .collect();
    let release = ReleasePolicy::for_binding(spec, &set).map_err(|e| e.to_string());
    Some(DesiredPolicy { allowed, release })
}

/// Decides what one reconcile does. Pure: same inputs, same plan.
pub fn plan(binding: &ConfidentialKeyBinding, observed: &Observed, config: &PlanConfig) -> Plan {
    let previous = binding.status.clone().unwrap_or_default();
    let mut status = ConfidentialKeyBindingStatus {
        observed_generation: binding.metadata.generation,
        conditions: Vec::new(),
        key: previous.key.clone(),
        policy: previous.policy.clone(),
        injected_pods: Some(observed.injected_pods),
        // Set by the reconcile from the last scan for missed injection (`uninjected.rs`).
        uninjected_pods: previous.uninjected_pods,
    };
    // 1. Policy: which of the ConfigMap's hash and the pins may be bound.
    let (resolved, bindable) =
        policy_condition(binding, &observed.policy, config.policy_source_default);
    // 2. Allowed hashes and the release policy they make.
    let desired = desired_policy(binding, observed, config, bindable);
    // 3. The key: the cluster's bounds (a grant, or the flags; a refusal contacts no vault), then
    // the key itself.
    let mut wanted = vec![resolved];
    let vault_allowed = match admission(binding, observed, config) {
        Ok(()) => true,
        Err(refused) => {
            wanted.push(refused);
            false
        }
    };
    let (key_part, synced) =
        key_conditions(binding, observed, config, desired.as_ref(), vault_allowed);
    let mut action = KeyAction::None;
    if let Some(decision) = key_part {
        action = decision.action.clone();
        record_policy(binding, observed, &mut status, desired.as_ref(), &decision);
        status.key = decision.key_status.or(status.key);
        wanted.push(decision.key_ready);
    }
    wanted.extend(synced);
    let contact_vault = vault_allowed && desired.as_ref().is_some_and(|d| d.release.is_ok());
    status.conditions = conditions(
        &previous.conditions,
        &wanted,
        binding.metadata.generation,
        observed.now,
    );
    let events = failure_events(&previous.conditions, &status.conditions);
    Plan {
        action,
        contact_vault,
        status,
        events,
        requeue_after: desired.and_then(|d| d.allowed.next_expiry),
        wanted,
    }
}

/// `Ok` when the vault URL is valid and the cluster's bounds admit the binding; else the
/// `KeyReady` condition saying why not.
fn admission(
    binding: &ConfidentialKeyBinding,
    observed: &Observed,
    config: &PlanConfig,
) -> Result<(), Wanted> {
    if let Err(e) = VaultUrl::parse(&binding.spec.key.vault) {
        return Err(Wanted::no(
            types::KEY_READY,
            reasons::KEY_VAULT_REJECTED,
            format!("vault URL is invalid: {e}"),
        ));
    }
    super::grant::admit(
        binding,
        &observed.grant,
        &config.allowed_vaults,
        &config.bounds,
    )
    .map(|_| ())
    .map_err(|refusal| Wanted::no(types::KEY_READY, refusal.reason, refusal.message))
}

/// The key decision (when the vault may be contacted and there is a release policy), else the
/// `KeyReady` condition of the wait; and the `ReleasePolicySynced` condition.
fn key_conditions(
    binding: &ConfidentialKeyBinding,
    observed: &Observed,
    config: &PlanConfig,
    desired: Option<&DesiredPolicy>,
    vault_allowed: bool,
) -> (Option<KeyDecision>, Vec<Wanted>) {
    let waiting_for =
        |message: &'static str| Wanted::no(types::KEY_READY, reasons::WAITING_FOR_POLICY, message);
    let waiting_for_key = || {
        Wanted::no(
            types::RELEASE_POLICY_SYNCED,
            reasons::WAITING_FOR_KEY,
            "waiting for the key",
        )
    };
    match (desired, vault_allowed) {
        (None, true) => (
            None,
            vec![
                waiting_for(
                    "the key is not created or changed until the binding has a policy hash to \
                     bind (see PolicyResolved)",
                ),
                waiting_for_key(),
            ],
        ),
        (
            Some(DesiredPolicy {
                release: Err(e), ..
            }),
            _,
        ) => {
            let mut out = Vec::new();
            if vault_allowed {
                out.push(waiting_for(
                    "the key is created once a release policy can be built",
                ));
            }
            out.push(Wanted::no(
                types::RELEASE_POLICY_SYNCED,
                reasons::SYNC_FAILED,
                format!("cannot build the release policy: {e}"),
            ));
            (None, out)
        }
        (
            Some(DesiredPolicy {
                allowed,
                release: Ok(release),
            }),
            true,
        ) => {
            let policy_json = release.to_json();
            let retired_tag = encode_retired(&allowed.retired());
            let target = KeyTarget {
                release,
                policy_json: &policy_json,
                retired_tag: retired_tag.as_deref(),
            };
            let decision = decide_key(binding, &observed.key, &target, config);
            let synced = decision.synced.clone();
            (Some(decision), vec![synced])
        }
        (_, false) => (None, vec![waiting_for_key()]),
    }
}

/// Writes the policy part of the status after a key decision: the current hash, the authority,
/// and the bound hashes, but those only when Key Vault holds them (or is about to): a hash
/// recorded but never written would later count as "ours" for InUse.
fn record_policy(
    binding: &ConfidentialKeyBinding,
    observed: &Observed,
    status: &mut ConfidentialKeyBindingStatus,
    desired: Option<&DesiredPolicy>,
    decision: &KeyDecision,
) {
    let Some(desired) = desired else { return };
    let writes_policy = !matches!(decision.action, KeyAction::None | KeyAction::Recover);
    let bound_now = writes_policy || decision.synced.ok;
    let mut p = status.policy.clone().unwrap_or_default();
    if let Ok(resolved) = &observed.policy {
        p.short_hash = Some(resolved.hash.short(12).to_string());
        p.current_hash = Some(resolved.hash.clone());
    }
    p.authority = Some(binding.spec.attestation.authority_url().to_string());
    if bound_now {
        p.bound_hashes = desired.allowed.bound.clone();
    }
    status.policy = Some(p);
}
