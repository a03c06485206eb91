//! The closed vocabulary of status conditions: every type and reason the operator writes.
//!
//! Tests and users may match on these strings; adding one is an API change, renaming one is a
//! breaking change.

/// Condition types.
pub mod types {
    /// True when every other condition is true: the key exists and releases only to the bound hashes.
    pub const READY: &str = "Ready";
    /// The key exists in the vault, belongs to this binding and matches the declared type.
    pub const KEY_READY: &str = "KeyReady";
    /// The policy ConfigMap was read and hashed.
    pub const POLICY_RESOLVED: &str = "PolicyResolved";
    /// The key's release policy allows exactly the bound hashes.
    pub const RELEASE_POLICY_SYNCED: &str = "ReleasePolicySynced";

    /// kstatus: true while the operator is still working towards `Ready` on its own (a transient
    /// cause is retried, or a dependency such as the policy ConfigMap is awaited). Its reason is
    /// the cause's. Never true together with `Stalled`.
    pub const RECONCILING: &str = "Reconciling";
    /// kstatus: true when the binding cannot become `Ready` without a human (vault not allowed,
    /// key not owned, immutable policy, ...). Its reason is the cause's. The operator keeps
    /// looking (so a fix is noticed), but retrying alone will not help.
    pub const STALLED: &str = "Stalled";

    /// The conditions that make up `Ready` (each has a root-cause reason when false).
    pub const PARTS: [&str; 3] = [KEY_READY, POLICY_RESOLVED, RELEASE_POLICY_SYNCED];

    /// Every type, in the order they are shown.
    pub const ALL: [&str; 6] = [
        READY,
        RECONCILING,
        STALLED,
        KEY_READY,
        POLICY_RESOLVED,
        RELEASE_POLICY_SYNCED,
    ];
}

/// Condition reasons (CamelCase, as Kubernetes requires).
pub mod reasons {
    // --- Ready
    /// Ready=True.
    pub const READY: &str = "Ready";
    /// Ready=False because another condition is not true (its reason is in the message).
    pub const NOT_READY: &str = "NotReady";
    /// The binding is being deleted.
    pub const DELETING: &str = "Deleting";

    // --- Reconciling / Stalled (when false; when true they carry the cause's reason)
    /// Reconciling=False and Stalled=False: nothing left to do, the binding is `Ready`.
    pub const RECONCILED: &str = "Reconciled";
    /// Stalled=False while `Reconciling` is true: the operator is still working on its own.
    pub const PROGRESSING: &str = "Progressing";
    /// Reconciling=False while `Stalled` is true: retrying alone will not help.
    pub const STALLED: &str = "Stalled";

    // --- PolicyResolved
    /// The policy was read and hashed.
    pub const POLICY_RESOLVED: &str = "Resolved";
    /// The referenced ConfigMap does not exist.
    pub const CONFIG_MAP_NOT_FOUND: &str = "ConfigMapNotFound";
    /// The ConfigMap exists but is not labelled `ckb.dev/policy: "true"`.
    pub const CONFIG_MAP_NOT_LABELLED: &str = "ConfigMapNotLabelled";
    /// The ConfigMap has no such key.
    pub const POLICY_KEY_NOT_FOUND: &str = "PolicyKeyNotFound";
    /// The policy text is empty.
    pub const POLICY_EMPTY: &str = "PolicyEmpty";
    /// The policy is in `binaryData` or is not UTF-8.
    pub const POLICY_NOT_UTF8: &str = "PolicyNotUtf8";
    /// The policy cannot fit a pod's 256 KiB annotation budget once base64-encoded.
    pub const POLICY_TOO_LARGE: &str = "PolicyTooLarge";
    /// The ConfigMap's policy hashes to a value not in `spec.policy.sha256`: Key Vault is not
    /// changed for it (the message names both the ConfigMap's hash and the pinned ones).
    pub const POLICY_HASH_NOT_PINNED: &str = "PolicyHashNotPinned";
    /// The binding pins no hash and the policy source is `Pinned`: Key Vault is not changed; the
    /// message says which `spec.policy.sha256` to add.
    pub const POLICY_NOT_PINNED: &str = "PolicyNotPinned";

    // --- KeyReady
    /// The key exists, is ours and matches.
    pub const KEY_AVAILABLE: &str = "KeyAvailable";
    /// The vault is not in the operator's allow-list: it was not contacted.
    pub const VAULT_NOT_ALLOWED: &str = "VaultNotAllowed";
    /// A key of that name exists without our tags, or with another binding's or cluster's.
    pub const KEY_NOT_OWNED: &str = "KeyNotOwned";
    /// Taking over a key (`adopt: true`) needs the key owner's `ckb-adopt` tag naming this binding;
    /// the message says which tag to set.
    pub const ADOPT_CONSENT_MISSING: &str = "AdoptConsentMissing";
    /// The key exists but its type, size, curve or exportability differ from the spec.
    pub const KEY_MISMATCH: &str = "KeyMismatch";
    /// The key is soft-deleted and cannot be recovered by us (not ours, or purge protection state).
    pub const KEY_DELETED: &str = "KeyDeleted";
    /// Waiting for the policy before the key can be created.
    pub const WAITING_FOR_POLICY: &str = "WaitingForPolicy";
    /// Key Vault refused the operator's identity (401/403).
    pub const KEY_VAULT_FORBIDDEN: &str = "KeyVaultForbidden";
    /// Key Vault throttled the operator (429); it retries after the delay asked.
    pub const KEY_VAULT_THROTTLED: &str = "KeyVaultThrottled";
    /// Key Vault could not be reached or failed (5xx, timeout); retried with backoff.
    pub const KEY_VAULT_UNAVAILABLE: &str = "KeyVaultUnavailable";
    /// Key Vault rejected the request as invalid (400).
    pub const KEY_VAULT_REJECTED: &str = "KeyVaultRejected";

    // --- KeyReady: refused by the cluster's bounds (a ConfidentialKeyGrant, or the operator's
    // flags when the binding names no grant). The vault is not contacted.
    /// `spec.grantRef` names no ConfidentialKeyGrant.
    pub const GRANT_NOT_FOUND: &str = "GrantNotFound";
    /// The operator requires a grant (`--require-grant`) and the binding names none.
    pub const GRANT_REQUIRED: &str = "GrantRequired";
    /// The named grant does not select the binding's namespace.
    pub const NAMESPACE_NOT_GRANTED: &str = "NamespaceNotGranted";
    /// `spec.attestation.authority` is not one the grant (or `--allowed-authority`) allows.
    pub const AUTHORITY_NOT_ALLOWED: &str = "AuthorityNotAllowed";
    /// `spec.attestation.complianceStatus` is not one the grant (or
    /// `--allowed-compliance-status`) allows.
    pub const COMPLIANCE_STATUS_NOT_ALLOWED: &str = "ComplianceStatusNotAllowed";
    /// `spec.attestation.allowDebuggable: true` is not allowed.
    pub const DEBUGGABLE_NOT_ALLOWED: &str = "DebuggableNotAllowed";
    /// `spec.key.name` is outside the grant's key-name prefix.
    pub const KEY_NAME_NOT_ALLOWED: &str = "KeyNameNotAllowed";
    /// `spec.key.type` is not one of the grant's key types.
    pub const KEY_TYPE_NOT_ALLOWED: &str = "KeyTypeNotAllowed";
    /// `spec.key.adopt: true` is not allowed.
    pub const ADOPT_NOT_ALLOWED: &str = "AdoptNotAllowed";
    /// `spec.key.deletionPolicy: Delete` is not allowed.
    pub const DELETION_NOT_ALLOWED: &str = "DeletionPolicyNotAllowed";

    // --- ReleasePolicySynced
    /// The release policy allows exactly the bound hashes.
    pub const SYNCED: &str = "Synced";
    /// The key's release policy is immutable and differs: it can never be changed.
    pub const POLICY_IMMUTABLE: &str = "ReleasePolicyImmutable";
    /// Waiting for the key.
    pub const WAITING_FOR_KEY: &str = "WaitingForKey";
    /// Updating the release policy failed; retried.
    pub const SYNC_FAILED: &str = "SyncFailed";

    /// Every condition reason.
    pub const ALL: [&str; 40] = [
        READY,
        NOT_READY,
        DELETING,
        RECONCILED,
        PROGRESSING,
        STALLED,
        POLICY_RESOLVED,
        CONFIG_MAP_NOT_FOUND,
        CONFIG_MAP_NOT_LABELLED,
        POLICY_KEY_NOT_FOUND,
        POLICY_EMPTY,
        POLICY_NOT_UTF8,
        POLICY_TOO_LARGE,
        POLICY_HASH_NOT_PINNED,
        POLICY_NOT_PINNED,
        KEY_AVAILABLE,
        VAULT_NOT_ALLOWED,
        KEY_NOT_OWNED,
        ADOPT_CONSENT_MISSING,
        KEY_MISMATCH,
        KEY_DELETED,
        WAITING_FOR_POLICY,
        KEY_VAULT_FORBIDDEN,
        KEY_VAULT_THROTTLED,
        KEY_VAULT_UNAVAILABLE,
        KEY_VAULT_REJECTED,
        GRANT_NOT_FOUND,
        GRANT_REQUIRED,
        NAMESPACE_NOT_GRANTED,
        AUTHORITY_NOT_ALLOWED,
        COMPLIANCE_STATUS_NOT_ALLOWED,
        DEBUGGABLE_NOT_ALLOWED,
        KEY_NAME_NOT_ALLOWED,
        KEY_TYPE_NOT_ALLOWED,
        ADOPT_NOT_ALLOWED,
        DELETION_NOT_ALLOWED,
        SYNCED,
        POLICY_IMMUTABLE,
        WAITING_FOR_KEY,
        SYNC_FAILED,
    ];
}

/// Event reasons, beside the condition reasons: an event about a failure carries the condition's
/// reason (a Warning when the condition turns false); these name what the operator did.
pub mod events {
    use super::reasons;

    /// The key was created with its release policy.
    pub const KEY_CREATED: &str = "KeyCreated";
    /// The key's release policy was rewritten to the bound hashes.
    pub const RELEASE_POLICY_UPDATED: &str = "ReleasePolicyUpdated";
    /// An existing key was taken over (adopt, with the owner's consent).
    pub const KEY_ADOPTED: &str = "KeyAdopted";
    /// A key of an earlier operator version got its `ckb-binding-uid` tag.
    pub const KEY_TAGS_MIGRATED: &str = "KeyTagsMigrated";
    /// The binding's soft-deleted key was recovered.
    pub const KEY_RECOVERED: &str = "KeyRecovered";
    /// When the key's retired hashes retired was recorded on it (tag `ckb-retired`).
    pub const RETIREMENT_RECORDED: &str = "RetirementRecorded";
    /// Deletion with `Retain`: the key is left in place.
    pub const KEY_RETAINED: &str = "KeyRetained";
    /// Deletion of a binding outside the cluster's bounds: its vault was not contacted.
    pub const KEY_NOT_CONTACTED: &str = "KeyNotContacted";
    /// Deletion of a binding that never had a key.
    pub const NO_KEY_TO_DELETE: &str = "NoKeyToDelete";
    /// Deletion with `Delete`: the key was soft-deleted (the condition reason of a soft-deleted
    /// key, one spelling).
    pub const KEY_DELETED: &str = reasons::KEY_DELETED;
    /// Deletion with `Delete` of a key no longer tagged for the binding: left in place.
    pub const KEY_NOT_DELETED: &str = "KeyNotDeleted";
    /// Deletion with `Delete` of a key that no longer exists.
    pub const KEY_ALREADY_GONE: &str = "KeyAlreadyGone";
    /// Deleting the key failed; retried until the cleanup timeout.
    pub const KEY_DELETE_FAILED: &str = "KeyDeleteFailed";
    /// The cleanup timeout passed: the finalizer is released, the key left in place.
    pub const CLEANUP_ABANDONED: &str = "CleanupAbandoned";
    /// Live confidential pods the binding selects run without the sidecar.
    pub const PODS_NOT_INJECTED: &str = "PodsNotInjected";

    /// Every event reason that is not a condition reason.
    pub const ALL: [&str; 14] = [
        KEY_CREATED,
        RELEASE_POLICY_UPDATED,
        KEY_ADOPTED,
        KEY_TAGS_MIGRATED,
        KEY_RECOVERED,
        RETIREMENT_RECORDED,
        KEY_RETAINED,
        KEY_NOT_CONTACTED,
        NO_KEY_TO_DELETE,
        KEY_NOT_DELETED,
        KEY_ALREADY_GONE,
        KEY_DELETE_FAILED,
        CLEANUP_ABANDONED,
        PODS_NOT_INJECTED,
    ];

    /// Whether `reason` may be published on a binding: an event reason or a condition reason.
    pub fn is_published(reason: &str) -> bool {
        !reason.is_empty() && (ALL.contains(&reason) || reasons::ALL.contains(&reason))
    }
}

/// What a false condition's reason means for the binding as a whole (the kstatus view).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    /// Needs a human: the spec, the vault, the key or the operator's configuration must change.
    /// The binding is `Stalled` (kstatus: Failed; Argo CD: Degraded).
    Stalled,
    /// The operator is working on it (retries, backoff, waiting for a dependency that GitOps
    /// tools may apply later). The binding is `Reconciling` (kstatus: InProgress; Argo CD:
    /// Progressing).
    Transient,
    /// Only follows from another condition's failure ("waiting for ..."); that one decides.
    Derived,
}

/// Reasons that need a human. Adding a refusal reason that retrying cannot fix? List it here.
pub const STALLED_REASONS: &[&str] = &[
    reasons::CONFIG_MAP_NOT_LABELLED,
    reasons::POLICY_KEY_NOT_FOUND,
    reasons::POLICY_EMPTY,
    reasons::POLICY_NOT_UTF8,
    reasons::POLICY_TOO_LARGE,
    reasons::VAULT_NOT_ALLOWED,
    reasons::KEY_NOT_OWNED,
    reasons::KEY_MISMATCH,
    reasons::KEY_DELETED,
    reasons::KEY_VAULT_FORBIDDEN,
    reasons::KEY_VAULT_REJECTED,
    reasons::POLICY_IMMUTABLE,
    reasons::POLICY_HASH_NOT_PINNED,
    reasons::POLICY_NOT_PINNED,
    reasons::ADOPT_CONSENT_MISSING,
    // Refused by the cluster's bounds: the binding or a grant must change. (GrantNotFound stays
    // transient, like a missing ConfigMap: the grant may be applied later.)
    reasons::GRANT_REQUIRED,
    reasons::NAMESPACE_NOT_GRANTED,
    reasons::AUTHORITY_NOT_ALLOWED,
    reasons::COMPLIANCE_STATUS_NOT_ALLOWED,
    reasons::DEBUGGABLE_NOT_ALLOWED,
    reasons::KEY_NAME_NOT_ALLOWED,
    reasons::KEY_TYPE_NOT_ALLOWED,
    reasons::ADOPT_NOT_ALLOWED,
    reasons::DELETION_NOT_ALLOWED,
];

/// Reasons that only echo another condition's failure.
pub const DERIVED_REASONS: &[&str] = &[
    reasons::WAITING_FOR_POLICY,
    reasons::WAITING_FOR_KEY,
    reasons::NOT_READY,
];

/// The single classification of a false condition's reason: [`Severity::Stalled`] for the
/// reasons in [`STALLED_REASONS`], [`Severity::Derived`] for [`DERIVED_REASONS`], and
/// [`Severity::Transient`] for every other reason (throttling, Key Vault unavailable, a missing
/// ConfigMap, a failed update: the operator retries them with backoff).
///
/// `KeyVaultForbidden` is stalled although Azure role assignments take minutes to propagate: the
/// operator keeps retrying with backoff, and the condition clears by itself once access works.
pub fn severity(reason: &str) -> Severity {
    if STALLED_REASONS.contains(&reason) {
        Severity::Stalled
    } else if DERIVED_REASONS.contains(&reason) {
        Severity::Derived
    } else {
        Severity::Transient
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn terminal_reasons_are_stalled_and_retried_ones_transient() {
        for r in [
            reasons::VAULT_NOT_ALLOWED,
            reasons::KEY_NOT_OWNED,
            reasons::POLICY_IMMUTABLE,
            reasons::KEY_MISMATCH,
        ] {
            assert_eq!(severity(r), Severity::Stalled, "{r}");
        }
        for r in [
            reasons::KEY_VAULT_THROTTLED,
            reasons::KEY_VAULT_UNAVAILABLE,
            reasons::CONFIG_MAP_NOT_FOUND,
            reasons::SYNC_FAILED,
            "SomeFutureReason",
        ] {
            assert_eq!(severity(r), Severity::Transient, "{r}");
        }
        assert_eq!(severity(reasons::WAITING_FOR_KEY), Severity::Derived);
        assert_eq!(severity(reasons::WAITING_FOR_POLICY), Severity::Derived);
    }

    #[test]
    fn reasons_are_camel_case_and_classified_once() {
        for r in STALLED_REASONS.iter().chain(DERIVED_REASONS) {
            assert!(
                r.chars().next().is_some_and(|c| c.is_ascii_uppercase()),
                "{r}"
            );
            assert!(r.chars().all(|c| c.is_ascii_alphanumeric()), "{r}");
        }
        for r in STALLED_REASONS {
            assert!(!DERIVED_REASONS.contains(r), "{r} is in both lists");
        }
    }

    #[test]
    fn one_vocabulary_each_reason_spelled_once() {
        let all: Vec<&str> = reasons::ALL.iter().chain(&events::ALL).copied().collect();
        let mut unique = all.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), all.len(), "a reason is listed twice: {all:?}");
        for r in &all {
            assert!(
                r.chars().next().is_some_and(|c| c.is_ascii_uppercase())
                    && r.chars().all(|c| c.is_ascii_alphanumeric()),
                "{r}"
            );
        }
        for r in STALLED_REASONS.iter().chain(DERIVED_REASONS) {
            assert!(reasons::ALL.contains(r), "{r} is not in reasons::ALL");
        }
        assert!(events::is_published(events::KEY_DELETED));
        assert!(!events::is_published("SomethingElse"));
        assert!(!events::is_published(""));
    }
}
