//! Folding the outcome of a plan's Key Vault write back into the status and events. Pure.

use ckb_crds::conditions::{events as event_reasons, reasons, types};
use ckb_crds::{ConfidentialKeyBinding, ConfidentialKeyBindingStatus};
use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;

use super::plan::{KeyAction, Plan, PlannedEvent};
use super::plan_key::{KeyOrigin, failure_reason, key_status};
use super::status::{Wanted, conditions, new_failures};
use crate::keyvault::{KeyVaultError, VaultKey};

/// One Warning event per condition that turned false.
pub fn failure_events(previous: &[Condition], current: &[Condition]) -> Vec<PlannedEvent> {
    new_failures(previous, current)
        .into_iter()
        .map(|c| PlannedEvent {
            warning: true,
            reason: c.reason.clone(),
            note: c.message.clone(),
        })
        .collect()
}

/// Folds the outcome of the plan's action into its status: the key as returned on success, a
/// false condition with the error's reason on failure. Returns the status and the events to
/// publish (one Normal event per successful write, one Warning per new failure).
pub fn settle(
    binding: &ConfidentialKeyBinding,
    plan: &Plan,
    outcome: Option<&Result<VaultKey, KeyVaultError>>,
    now: Timestamp,
) -> (ConfidentialKeyBindingStatus, Vec<PlannedEvent>) {
    match outcome {
        _ if plan.action == KeyAction::None => (plan.status.clone(), plan.events.clone()),
        None => (plan.status.clone(), plan.events.clone()),
        Some(Ok(key)) => written(binding, plan, key),
        Some(Err(e)) => failed(binding, plan, e, now),
    }
}

/// The event reason, its note, and the key's origin after a successful write (`None`: as before).
fn what_was_written(
    binding: &ConfidentialKeyBinding,
    action: &KeyAction,
    key: &VaultKey,
) -> (&'static str, String, Option<KeyOrigin>) {
    let vault = binding.spec.key.vault_url();
    let name = &binding.spec.key.name;
    match action {
        KeyAction::Create(_) => (
            event_reasons::KEY_CREATED,
            format!("created key {} in {vault} with the release policy", key.id),
            Some(KeyOrigin::Created),
        ),
        KeyAction::UpdatePolicy { .. } => (
            event_reasons::RELEASE_POLICY_UPDATED,
            format!("updated the release policy of {}", key.id),
            None,
        ),
        KeyAction::RecordRetired { tags, .. } => (
            event_reasons::RETIREMENT_RECORDED,
            format!(
                "recorded on key {} when its retired hashes stopped being current or pinned \
                 ({}={}): their grace period and retention ceiling count from then, across \
                 operator restarts",
                key.id,
                ckb_crds::tags::RETIRED,
                tags.get(ckb_crds::tags::RETIRED)
                    .map_or("<none>", |v| v.as_str())
            ),
            None,
        ),
        KeyAction::Adopt { .. } => (
            event_reasons::KEY_ADOPTED,
            format!(
                "adopted key {}: added ckb tags, set the release policy",
                key.id
            ),
            Some(KeyOrigin::Adopted),
        ),
        KeyAction::Retag { .. } => (
            event_reasons::KEY_TAGS_MIGRATED,
            format!(
                "added the {} tag to {} (a key tagged by an earlier operator version)",
                ckb_crds::tags::BINDING_UID,
                key.id
            ),
            None,
        ),
        KeyAction::Recover => (
            event_reasons::KEY_RECOVERED,
            format!("recovered soft-deleted key {name} in {vault}"),
            None,
        ),
        KeyAction::None => unreachable!("settle handles a plan without a write"),
    }
}

/// [`settle`] after a successful write.
fn written(
    binding: &ConfidentialKeyBinding,
    plan: &Plan,
    key: &VaultKey,
) -> (ConfidentialKeyBindingStatus, Vec<PlannedEvent>) {
    let previous = binding.status.clone().unwrap_or_default();
    let mut status = plan.status.clone();
    let (reason, note, origin) = what_was_written(binding, &plan.action, key);
    let origin = origin.unwrap_or_else(|| KeyOrigin::of(status.key.as_ref()));
    status.key = Some(key_status(key, origin));
    let mut events = vec![PlannedEvent {
        warning: false,
        reason: reason.into(),
        note,
    }];
    events.extend(failure_events(&previous.conditions, &status.conditions));
    (status, events)
}

/// The condition a failed write turns false, its reason, and what was being done.
fn what_failed(
    action: &KeyAction,
    e: &KeyVaultError,
) -> (&'static str, &'static str, &'static str) {
    match action {
        KeyAction::UpdatePolicy { .. } => (
            types::RELEASE_POLICY_SYNCED,
            if matches!(e, KeyVaultError::ImmutablePolicy { .. }) {
                reasons::POLICY_IMMUTABLE
            } else {
                reasons::SYNC_FAILED
            },
            "updating the release policy",
        ),
        KeyAction::RecordRetired { .. } => (
            types::RELEASE_POLICY_SYNCED,
            reasons::SYNC_FAILED,
            "recording the retired hashes on the key",
        ),
        KeyAction::Create(_) => (types::KEY_READY, failure_reason(e), "creating the key"),
        KeyAction::Adopt { .. } => (types::KEY_READY, failure_reason(e), "adopting the key"),
        KeyAction::Retag { .. } => (
            types::KEY_READY,
            failure_reason(e),
            "adding the binding UID tag to the key",
        ),
        KeyAction::Recover => (types::KEY_READY, failure_reason(e), "recovering the key"),
        KeyAction::None => unreachable!("settle handles a plan without a write"),
    }
}

/// [`settle`] after a failed write.
fn failed(
    binding: &ConfidentialKeyBinding,
    plan: &Plan,
    e: &KeyVaultError,
    now: Timestamp,
) -> (ConfidentialKeyBindingStatus, Vec<PlannedEvent>) {
    let previous = binding.status.clone().unwrap_or_default();
    let mut status = plan.status.clone();
    let vault = binding.spec.key.vault_url();
    let name = &binding.spec.key.name;
    let (type_, reason, what) = what_failed(&plan.action, e);
    let mut wanted = plan.wanted.clone();
    for w in &mut wanted {
        if w.type_ == type_ {
            *w = Wanted::no(
                type_,
                reason,
                format!("{what} {name} in {vault} failed: {e}"),
            );
        } else if type_ == types::KEY_READY && w.type_ == types::RELEASE_POLICY_SYNCED {
            *w = Wanted::no(
                types::RELEASE_POLICY_SYNCED,
                reasons::WAITING_FOR_KEY,
                "waiting for the key",
            );
        }
    }
    // The hashes were not written: keep what Key Vault holds as bound.
    status.policy = match (previous.policy.clone(), status.policy.clone()) {
        (Some(mut prev), Some(now_p)) => {
            prev.current_hash = now_p.current_hash;
            prev.short_hash = now_p.short_hash;
            prev.authority = now_p.authority;
            Some(prev)
        }
        (None, Some(mut now_p)) => {
            now_p.bound_hashes.clear();
            Some(now_p)
        }
        (p, None) => p,
    };
    status.conditions = conditions(
        &previous.conditions,
        &wanted,
        binding.metadata.generation,
        now,
    );
    let events = failure_events(&previous.conditions, &status.conditions);
    (status, events)
}
