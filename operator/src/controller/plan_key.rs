//! The key's part of the decision: who a key belongs to (its tags), whether it matches the spec,
//! and the one Key Vault write that brings it in step ([`decide_key`]). Pure.

use std::collections::BTreeMap;

use ckb_crds::conditions::{reasons, types};
use ckb_crds::{ConfidentialKeyBinding, KeyStatus, tags};

use super::plan::{KeyAction, KeyObservation, PlanConfig};
use super::plan_owner::{
    Ownership, adopt_consent, had_this_key, key_base, owner_tags, ownership, owns,
};
use super::status::Wanted;
use crate::keyvault::{KeyVaultError, NewKey, VaultKey};
use crate::policy::ReleasePolicy;

/// How the key differs from the spec (type, size, curve, exportable); empty when it matches.
pub fn key_differences(binding: &ConfidentialKeyBinding, key: &VaultKey) -> Vec<String> {
    let spec = &binding.spec.key;
    let mut diffs = Vec::new();
    if key.kty != spec.key_type.as_str() {
        diffs.push(format!("type is {} (spec: {})", key.kty, spec.key_type));
    }
    if let (Some(want), Some(have)) = (spec.effective_size(), key.size)
        && want != have
    {
        diffs.push(format!("size is {have} (spec: {want})"));
    }
    if let Some(curve) = spec.curve {
        match &key.curve {
            Some(c) if c == curve.as_str() => {}
            Some(c) => diffs.push(format!("curve is {c} (spec: {})", curve.as_str())),
            None => diffs.push(format!("curve is unset (spec: {})", curve.as_str())),
        }
    }
    if !key.exportable {
        diffs.push("the key is not exportable (it can never be released)".into());
    }
    if key.managed {
        diffs.push("the key is managed by another Azure service".into());
    }
    diffs
}

/// The key to create for this binding.
pub fn new_key(binding: &ConfidentialKeyBinding, policy_json: &str, cluster_uid: &str) -> NewKey {
    let spec = &binding.spec.key;
    NewKey {
        name: spec.name.clone(),
        kty: spec.key_type.as_str().to_string(),
        size: spec.effective_size(),
        curve: spec.curve.map(|c| c.as_str().to_string()),
        key_ops: spec
            .effective_operations()
            .iter()
            .map(|o| o.as_str().to_string())
            .collect(),
        exportable: true,
        release_policy_json: Some(policy_json.to_string()),
        tags: owner_tags(binding, cluster_uid),
    }
}

/// Where a binding's key came from (`status.key.origin`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyOrigin {
    /// The operator created it for this binding.
    Created,
    /// The binding took it over (adopt, with the owner's consent).
    Adopted,
    /// The operator found the binding's own key already there.
    Existing,
}

impl KeyOrigin {
    /// The status value.
    pub fn as_str(self) -> &'static str {
        match self {
            KeyOrigin::Created => "Created",
            KeyOrigin::Adopted => "Adopted",
            KeyOrigin::Existing => "Existing",
        }
    }

    /// The origin a status names (`Existing` for anything else, as for a status without one).
    pub fn of(status: Option<&KeyStatus>) -> KeyOrigin {
        match status.and_then(|k| k.origin.as_deref()) {
            Some("Created") => KeyOrigin::Created,
            Some("Adopted") => KeyOrigin::Adopted,
            _ => KeyOrigin::Existing,
        }
    }
}

/// The status of a key as Key Vault returned it.
pub fn key_status(key: &VaultKey, origin: KeyOrigin) -> KeyStatus {
    KeyStatus {
        id: key.id.clone(),
        version: key.version.clone(),
        key_type: key.kty.clone(),
        origin: Some(origin.as_str().to_string()),
    }
}

/// Condition reason for a Key Vault failure.
pub fn failure_reason(e: &KeyVaultError) -> &'static str {
    match e {
        KeyVaultError::Forbidden { .. } => reasons::KEY_VAULT_FORBIDDEN,
        KeyVaultError::Throttled { .. } => reasons::KEY_VAULT_THROTTLED,
        KeyVaultError::Transient { .. } => reasons::KEY_VAULT_UNAVAILABLE,
        KeyVaultError::ImmutablePolicy { .. } => reasons::POLICY_IMMUTABLE,
        KeyVaultError::DeletedRecoverable { .. } => reasons::KEY_DELETED,
        KeyVaultError::NotFound { .. }
        | KeyVaultError::Conflict { .. }
        | KeyVaultError::InvalidRequest { .. } => reasons::KEY_VAULT_REJECTED,
    }
}

/// What the key should hold: the release policy of the bound hashes and the record of their
/// retirements (the `ckb-retired` tag).
#[derive(Debug, Clone)]
pub struct KeyTarget<'a> {
    /// The release policy.
    pub release: &'a ReleasePolicy,
    /// The same, as sent to Key Vault.
    pub policy_json: &'a str,
    /// The `ckb-retired` tag value (`None`: no tag).
    pub retired_tag: Option<&'a str>,
}

impl KeyTarget<'_> {
    /// `tags` with the `ckb-retired` record this target wants.
    fn with_retired(&self, mut tags: BTreeMap<String, String>) -> BTreeMap<String, String> {
        match self.retired_tag {
            Some(v) => tags.insert(tags::RETIRED.to_string(), v.to_string()),
            None => tags.remove(tags::RETIRED),
        };
        tags
    }
}

/// The key's part of a plan.
#[derive(Debug, Clone, PartialEq)]
pub struct KeyDecision {
    /// The `KeyReady` condition.
    pub key_ready: Wanted,
    /// The `ReleasePolicySynced` condition.
    pub synced: Wanted,
    /// The Key Vault write.
    pub action: KeyAction,
    /// The key status to record (`None`: keep the previous one).
    pub key_status: Option<KeyStatus>,
}

impl KeyDecision {
    /// A decision to write nothing, waiting on the key.
    fn stop(key_ready: Wanted) -> Self {
        Self {
            key_ready,
            synced: waiting(),
            action: KeyAction::None,
            key_status: None,
        }
    }
}

fn waiting() -> Wanted {
    Wanted::no(
        types::RELEASE_POLICY_SYNCED,
        reasons::WAITING_FOR_KEY,
        "waiting for the key",
    )
}

fn synced() -> Wanted {
    Wanted::yes(
        types::RELEASE_POLICY_SYNCED,
        reasons::SYNCED,
        "the release policy allows exactly the bound hashes",
    )
}

/// `KeyReady=True`. NB: one message whatever was done to get there (created, adopted, patched):
/// the status then stays byte-identical from the write to every later resync; the action is in
/// events.
fn available(binding: &ConfidentialKeyBinding) -> Wanted {
    Wanted::yes(
        types::KEY_READY,
        reasons::KEY_AVAILABLE,
        format!(
            "key {} in {} belongs to this binding and matches the spec",
            binding.spec.key.name,
            binding.spec.key.vault_url()
        ),
    )
}

/// Decides what to do with the key, as Key Vault reported it.
pub fn decide_key(
    binding: &ConfidentialKeyBinding,
    key: &KeyObservation,
    target: &KeyTarget<'_>,
    config: &PlanConfig,
) -> KeyDecision {
    let key_name = &binding.spec.key.name;
    let vault = binding.spec.key.vault_url();
    match key {
        KeyObservation::NotChecked => KeyDecision::stop(Wanted::no(
            types::KEY_READY,
            reasons::KEY_VAULT_UNAVAILABLE,
            "not checked",
        )),
        KeyObservation::Failed(e) => KeyDecision::stop(Wanted::no(
            types::KEY_READY,
            failure_reason(e),
            format!("reading key {key_name} in {vault} failed: {e}"),
        )),
        KeyObservation::Absent => KeyDecision {
            key_ready: available(binding),
            synced: synced(),
            action: KeyAction::Create(new_key(binding, target.policy_json, &config.cluster_uid)),
            key_status: None,
        },
        KeyObservation::Deleted(deleted) if owns(binding, &deleted.key, &config.cluster_uid) => {
            KeyDecision {
                key_ready: available(binding),
                synced: waiting(),
                action: KeyAction::Recover,
                key_status: None,
            }
        }
        KeyObservation::Deleted(_) => KeyDecision::stop(Wanted::no(
            types::KEY_READY,
            reasons::KEY_DELETED,
            format!(
                "key {key_name} in {vault} is soft-deleted and is not this binding's: purge or \
                 recover it, or name another key"
            ),
        )),
        KeyObservation::Present(k) => decide_present(binding, k, target, config),
    }
}

/// Whether the binding may write to a key that is there: `Ok(false)` its own, `Ok(true)` one it
/// takes over (adopt with the owner's consent), `Err` why not (nothing is written).
fn claim(
    binding: &ConfidentialKeyBinding,
    k: &VaultKey,
    owner: &Ownership,
) -> Result<bool, Wanted> {
    let at = format!(
        "key {} in {}",
        binding.spec.key.name,
        binding.spec.key.vault_url()
    );
    let consent_tag = format!("{}={}", tags::ADOPT, binding.key_ref());
    let whose = match owner {
        Ownership::Ours => return Ok(false),
        Ownership::OursWithoutUid if had_this_key(binding, &k.id) => return Ok(false),
        Ownership::OursWithoutUid => format!(
            "was created for a binding named {} before this one (it has no {} tag and this \
             binding never had it)",
            binding.key_ref(),
            tags::BINDING_UID
        ),
        Ownership::EarlierBinding(uid) => format!(
            "belongs to an earlier binding named {} (UID {uid}; a deleted and re-created binding \
             or namespace)",
            binding.key_ref()
        ),
        Ownership::Untagged => "exists without ckb-operator tags".to_string(),
        Ownership::Foreign(shown) => {
            return Err(Wanted::no(
                types::KEY_READY,
                reasons::KEY_NOT_OWNED,
                format!(
                    "{at} belongs to another binding or cluster ({shown}); it is never modified"
                ),
            ));
        }
    };
    if !binding.spec.key.adopt {
        return Err(Wanted::no(
            types::KEY_READY,
            reasons::KEY_NOT_OWNED,
            format!(
                "{at} {whose}; to take it over, set spec.key.adopt: true and have someone with \
                 Key Vault rights add the tag {consent_tag} to the key (keeping its other tags)"
            ),
        ));
    }
    if !adopt_consent(&k.tags, binding) {
        return Err(Wanted::no(
            types::KEY_READY,
            reasons::ADOPT_CONSENT_MISSING,
            format!(
                "{at} {whose}; adopt needs the key owner's consent: someone with Key Vault rights \
                 must add the tag {consent_tag} to the key (keeping its other tags); the operator \
                 never sets it itself"
            ),
        ));
    }
    Ok(true)
}

/// Whether the key's release policy means the same as the target's, and whether it is immutable.
fn release_policy_state(k: &VaultKey, target: &KeyTarget<'_>) -> (bool, bool) {
    let same = k
        .release_policy
        .as_ref()
        .and_then(|p| ReleasePolicy::parse_json(&p.json).ok())
        .is_some_and(|p| p.same_meaning(target.release));
    let immutable = k.release_policy.as_ref().is_some_and(|p| p.immutable);
    (same, immutable)
}

/// [`decide_key`] for a key that is there.
fn decide_present(
    binding: &ConfidentialKeyBinding,
    k: &VaultKey,
    target: &KeyTarget<'_>,
    config: &PlanConfig,
) -> KeyDecision {
    let at = format!(
        "key {} in {}",
        binding.spec.key.name,
        binding.spec.key.vault_url()
    );
    let owner = ownership(&k.tags, binding, &config.cluster_uid);
    let adopting = match claim(binding, k, &owner) {
        Ok(adopting) => adopting,
        Err(refused) => return KeyDecision::stop(refused),
    };
    let diffs = key_differences(binding, k);
    if !diffs.is_empty() {
        return KeyDecision::stop(Wanted::no(
            types::KEY_READY,
            reasons::KEY_MISMATCH,
            format!("{at}: {}", diffs.join("; ")),
        ));
    }
    let (same, immutable) = release_policy_state(k, target);
    let version = k.version.clone();
    if adopting {
        return adopt(binding, k, target, config, same || !immutable);
    }
    let previous = binding.status.as_ref().and_then(|s| s.key.as_ref());
    let origin = match previous {
        Some(p) if key_base(&p.id) == key_base(&k.id) => KeyOrigin::of(Some(p)),
        _ => KeyOrigin::Existing,
    };
    let decided = |action: KeyAction| KeyDecision {
        key_ready: available(binding),
        synced: synced(),
        action,
        key_status: Some(key_status(k, origin)),
    };
    if owner == Ownership::OursWithoutUid && !immutable {
        let mut tags = target.with_retired(k.tags.clone());
        tags.extend(owner_tags(binding, &config.cluster_uid));
        let policy_json = target.policy_json.to_string();
        let retag = KeyAction::Retag {
            version,
            policy_json,
            tags,
        };
        return decided(retag);
    }
    let tags_same = k.tags.get(tags::RETIRED).map(String::as_str) == target.retired_tag;
    if same {
        let action = match tags_same {
            true => KeyAction::None,
            false => KeyAction::RecordRetired {
                version,
                tags: target.with_retired(k.tags.clone()),
            },
        };
        return decided(action);
    }
    if immutable {
        return KeyDecision {
            synced: Wanted::no(
                types::RELEASE_POLICY_SYNCED,
                reasons::POLICY_IMMUTABLE,
                "the key's release policy is immutable and differs from the bound hashes: it can \
                 never change; create a binding for a new key",
            ),
            ..decided(KeyAction::None)
        };
    }
    let update = KeyAction::UpdatePolicy {
        version,
        policy_json: target.policy_json.to_string(),
        tags: (!tags_same).then(|| target.with_retired(k.tags.clone())),
    };
    decided(update)
}

/// [`decide_key`] for a key the binding takes over (adopt, with the owner's consent): our tags
/// and the release policy, unless its release policy is immutable and differs (`writable` false).
fn adopt(
    binding: &ConfidentialKeyBinding,
    k: &VaultKey,
    target: &KeyTarget<'_>,
    config: &PlanConfig,
    writable: bool,
) -> KeyDecision {
    if !writable {
        return KeyDecision {
            key_ready: Wanted::no(
                types::KEY_READY,
                reasons::KEY_NOT_OWNED,
                format!(
                    "key {} in {} has an immutable release policy that differs; it cannot be \
                     adopted",
                    binding.spec.key.name,
                    binding.spec.key.vault_url()
                ),
            ),
            synced: Wanted::no(
                types::RELEASE_POLICY_SYNCED,
                reasons::POLICY_IMMUTABLE,
                "the key's release policy is immutable and differs",
            ),
            action: KeyAction::None,
            key_status: None,
        };
    }
    let mut tags = target.with_retired(k.tags.clone());
    tags.remove(tags::ADOPT);
    tags.extend(owner_tags(binding, &config.cluster_uid));
    KeyDecision {
        key_ready: available(binding),
        synced: synced(),
        action: KeyAction::Adopt {
            version: k.version.clone(),
            policy_json: target.policy_json.to_string(),
            tags,
        },
        key_status: Some(key_status(k, KeyOrigin::Adopted)),
    }
}
