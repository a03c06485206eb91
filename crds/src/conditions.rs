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

    /// Every type, in the order they are shown.
    pub const ALL: [&str; 4] = [READY, KEY_READY, POLICY_RESOLVED, RELEASE_POLICY_SYNCED];
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

    // --- ReleasePolicySynced
    /// The release policy allows exactly the bound hashes.
    pub const SYNCED: &str = "Synced";
    /// The key's release policy is immutable and differs: it can never be changed.
    pub const POLICY_IMMUTABLE: &str = "ReleasePolicyImmutable";
    /// Waiting for the key.
    pub const WAITING_FOR_KEY: &str = "WaitingForKey";
    /// Updating the release policy failed; retried.
    pub const SYNC_FAILED: &str = "SyncFailed";
}
