//! What deleting a binding does with its key, as pure decisions; `reconcile.rs` makes the Key
//! Vault calls between them (see the module docs of [`super`] for the behaviour).

use std::time::Duration;

use ckb_crds::conditions::events;
use ckb_crds::{ConfidentialKeyBinding, DeletionPolicy};

use super::grant::{Admitted, Refusal};
use super::plan::{PlannedEvent, owns};
use crate::keyvault::{KeyVaultError, VaultKey, VaultUrl};

fn event(warning: bool, reason: &str, note: String) -> PlannedEvent {
    PlannedEvent {
        warning,
        reason: reason.into(),
        note,
    }
}

/// The first step of a deletion.
#[derive(Debug, Clone, PartialEq)]
pub enum CleanupStart {
    /// Nothing to ask Key Vault: publish the event and release the finalizer.
    Done(PlannedEvent),
    /// Read the key in this vault, then [`after_get`].
    ReadKey(VaultUrl),
}

/// Decides whether a deletion needs Key Vault at all: not with `Retain`, not for a binding
/// outside the cluster's bounds, not for one that never had a key.
pub fn plan_cleanup(
    binding: &ConfidentialKeyBinding,
    admission: Result<Admitted, Refusal>,
) -> CleanupStart {
    let spec = &binding.spec.key;
    if spec.deletion_policy == DeletionPolicy::Retain {
        return CleanupStart::Done(event(
            false,
            events::KEY_RETAINED,
            format!(
                "deletionPolicy Retain: key {} in {} is left in place with its tags",
                spec.name,
                spec.vault_url()
            ),
        ));
    }
    let url = match (VaultUrl::parse(&spec.vault), admission) {
        (Ok(u), Ok(_)) => u,
        (_, refused) => {
            let why = refused.err().map_or_else(
                || format!("vault {} is not allowed", spec.vault_url()),
                |r| format!("{} ({})", r.message, r.reason),
            );
            return CleanupStart::Done(event(
                false,
                events::KEY_NOT_CONTACTED,
                format!("{why}; nothing was deleted"),
            ));
        }
    };
    let never_created = binding
        .status
        .as_ref()
        .and_then(|s| s.key.as_ref())
        .is_none();
    if never_created {
        return CleanupStart::Done(event(
            false,
            events::NO_KEY_TO_DELETE,
            "the binding never had a key; Key Vault was not called".into(),
        ));
    }
    CleanupStart::ReadKey(url)
}

/// What Key Vault said about the key of a binding being deleted.
#[derive(Debug, Clone, PartialEq)]
pub enum KeyFate {
    /// It was soft-deleted.
    Deleted,
    /// It no longer carries this binding's tags: left in place.
    NotOurs,
    /// There is no such key.
    AlreadyGone,
    /// Key Vault could not be asked, or refused.
    Failed(KeyVaultError),
}

/// The fate of the key, as read: `None` when it is this binding's, to be deleted (then
/// [`after_delete`]).
pub fn after_get(
    binding: &ConfidentialKeyBinding,
    read: Result<VaultKey, KeyVaultError>,
    cluster_uid: &str,
) -> Option<KeyFate> {
    match read {
        Err(KeyVaultError::NotFound { .. }) => Some(KeyFate::AlreadyGone),
        Err(e) => Some(KeyFate::Failed(e)),
        Ok(k) if owns(binding, &k, cluster_uid) => None,
        Ok(_) => Some(KeyFate::NotOurs),
    }
}

/// The fate of the key, once deleted (a key gone meanwhile counts as deleted).
pub fn after_delete<T>(deleted: Result<T, KeyVaultError>) -> KeyFate {
    match deleted {
        Ok(_) | Err(KeyVaultError::NotFound { .. }) => KeyFate::Deleted,
        Err(e) => KeyFate::Failed(e),
    }
}

/// The end of a deletion pass.
#[derive(Debug, Clone, PartialEq)]
pub enum CleanupEnd {
    /// Publish the event and release the finalizer.
    Done(PlannedEvent),
    /// Keep the finalizer and retry after the error (publishing the event, the first time).
    Retry(Option<PlannedEvent>, KeyVaultError),
}

/// How a deletion pass ends, given the key's fate, how long ago the binding was deleted, the
/// cleanup timeout, and whether this is the first failure (one event, not one per retry).
pub fn cleanup_outcome(
    binding: &ConfidentialKeyBinding,
    fate: KeyFate,
    waited: Duration,
    timeout: Duration,
    first_failure: bool,
) -> CleanupEnd {
    let spec = &binding.spec.key;
    let (name, vault) = (&spec.name, spec.vault_url());
    let done = |warning, reason, note| CleanupEnd::Done(event(warning, reason, note));
    match fate {
        KeyFate::Deleted => done(
            false,
            events::KEY_DELETED,
            format!(
                "soft-deleted key {name} in {vault} (recoverable for the vault's retention period)"
            ),
        ),
        KeyFate::NotOurs => done(
            true,
            events::KEY_NOT_DELETED,
            format!(
                "key {name} in {vault} no longer carries this binding's tags; it was not deleted"
            ),
        ),
        KeyFate::AlreadyGone => done(
            false,
            events::KEY_ALREADY_GONE,
            format!("key {name} in {vault} does not exist"),
        ),
        KeyFate::Failed(e) if waited >= timeout => done(
            true,
            events::CLEANUP_ABANDONED,
            format!(
                "could not delete key {name} in {vault} for {}s ({e}); the finalizer is released \
                 and the key is LEFT IN PLACE: delete it by hand if needed",
                waited.as_secs()
            ),
        ),
        KeyFate::Failed(e) => {
            let ev = first_failure.then(|| {
                event(
                    true,
                    events::KEY_DELETE_FAILED,
                    format!(
                        "deleting key {name} in {vault} failed: {e}; retrying for up to {}s",
                        timeout.as_secs()
                    ),
                )
            });
            CleanupEnd::Retry(ev, e)
        }
    }
}
