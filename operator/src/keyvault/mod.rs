//! Key Vault: the operations the controller needs, as our own domain types.
//!
//! [`KeyVault`] is the contract between the controller and Key Vault. The production implementation
//! wraps the official SDK (`azure_security_keyvault_keys`); tests use the same implementation
//! against the Key Vault double and Lowkey Vault. No SDK type crosses this boundary.

use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;

/// A vault's base URL, normalised: `https://<host>` without a trailing slash.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct VaultUrl(String);

impl VaultUrl {
    /// Normalises a vault URL (lowercase host, no trailing slash). Only `https://` URLs are accepted.
    pub fn parse(url: &str) -> Result<Self, KeyVaultError> {
        let trimmed = url.trim().trim_end_matches('/');
        let Some(host) = trimmed.strip_prefix("https://") else {
            return Err(KeyVaultError::InvalidRequest {
                message: format!("vault URL {url:?} must start with https://"),
            });
        };
        if host.is_empty() || host.contains('/') {
            return Err(KeyVaultError::InvalidRequest {
                message: format!("vault URL {url:?} must be https://<host> with no path"),
            });
        }
        Ok(Self(format!("https://{}", host.to_ascii_lowercase())))
    }

    /// The URL, `https://<host>`.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The host name (`contoso.vault.azure.net`).
    pub fn host(&self) -> &str {
        self.0.trim_start_matches("https://")
    }

    /// Whether this is a Managed HSM (`*.managedhsm.azure.net`).
    pub fn is_managed_hsm(&self) -> bool {
        self.host()
            .split(':')
            .next()
            .unwrap_or_default()
            .ends_with(".managedhsm.azure.net")
    }
}

impl std::fmt::Display for VaultUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// A release policy as stored on a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredReleasePolicy {
    /// Content type (`application/json; charset=utf-8` for the JSON grammar).
    pub content_type: Option<String>,
    /// The policy document, decoded from the base64url `data` field (UTF-8 JSON).
    pub json: String,
    /// Once true, the policy can never change.
    pub immutable: bool,
}

/// A key (its current version) as Key Vault reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VaultKey {
    /// Full identifier, `https://<vault>/keys/<name>/<version>`.
    pub id: String,
    /// Key name.
    pub name: String,
    /// Version (last path segment of `id`).
    pub version: String,
    /// Key type as reported (`RSA-HSM`, `EC-HSM`, `oct-HSM`, or software `RSA`, ...).
    pub kty: String,
    /// Size in bits where it can be told (RSA: from the modulus; oct: if reported).
    pub size: Option<u32>,
    /// Curve of an EC key.
    pub curve: Option<String>,
    /// Allowed operations.
    pub key_ops: Vec<String>,
    /// Whether the key is exportable (only exportable keys can be released).
    pub exportable: bool,
    /// Whether the key is enabled.
    pub enabled: bool,
    /// Tags.
    pub tags: BTreeMap<String, String>,
    /// The release policy, if the key has one.
    pub release_policy: Option<StoredReleasePolicy>,
    /// Whether the key is managed by another Azure service (such keys must not be touched).
    pub managed: bool,
}

/// A soft-deleted key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeletedVaultKey {
    /// The key as it was.
    pub key: VaultKey,
    /// `https://<vault>/deletedkeys/<name>`.
    pub recovery_id: Option<String>,
    /// When it was deleted (Unix seconds).
    pub deleted_date: Option<i64>,
    /// When it will be purged (Unix seconds).
    pub scheduled_purge_date: Option<i64>,
}

/// What to create.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewKey {
    /// Key name.
    pub name: String,
    /// `RSA-HSM`, `EC-HSM` or `oct-HSM` (software types are accepted for tests against emulators).
    pub kty: String,
    /// RSA / oct size in bits.
    pub size: Option<u32>,
    /// EC curve.
    pub curve: Option<String>,
    /// Operations.
    pub key_ops: Vec<String>,
    /// Exportable (needs a release policy).
    pub exportable: bool,
    /// Release policy JSON (the client base64url-encodes it), or none.
    pub release_policy_json: Option<String>,
    /// Tags.
    pub tags: BTreeMap<String, String>,
}

/// Errors from Key Vault, by what the caller should do about them. Each carries the service's message.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum KeyVaultError {
    /// The key (or deleted key) does not exist.
    #[error("not found: {message}")]
    NotFound {
        /// The service's message.
        message: String,
    },
    /// A key of that name is soft-deleted and can be recovered (creating it is refused with 409).
    #[error("key is deleted but recoverable: {message}")]
    DeletedRecoverable {
        /// The service's message.
        message: String,
    },
    /// 401 or 403: the identity may not do this.
    #[error("forbidden (HTTP {status}): {message}")]
    Forbidden {
        /// 401 or 403.
        status: u16,
        /// The service's message.
        message: String,
    },
    /// 429: try again after `retry_after`.
    #[error("throttled, retry after {retry_after:?}: {message}")]
    Throttled {
        /// How long the service asked to wait.
        retry_after: Duration,
        /// The service's message.
        message: String,
    },
    /// 409 for another reason.
    #[error("conflict: {message}")]
    Conflict {
        /// The service's message.
        message: String,
    },
    /// The release policy is immutable and cannot be changed.
    #[error("release policy is immutable: {message}")]
    ImmutablePolicy {
        /// The service's message.
        message: String,
    },
    /// 5xx, timeout, connection failure: may succeed later. `outcome_unknown` is true when a write
    /// may or may not have happened (timeout after sending), so the caller must read before retrying.
    #[error("transient failure: {message}")]
    Transient {
        /// What happened.
        message: String,
        /// A write may have been applied.
        outcome_unknown: bool,
    },
    /// 400: the request is wrong and will not succeed as is.
    #[error("invalid request: {message}")]
    InvalidRequest {
        /// The service's message.
        message: String,
    },
}

impl KeyVaultError {
    /// Whether retrying later can succeed without a change of spec or permissions.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            KeyVaultError::Throttled { .. } | KeyVaultError::Transient { .. }
        )
    }
}

/// The Key Vault operations the operator uses. Every method addresses the key's current version.
#[async_trait]
pub trait KeyVault: Send + Sync {
    /// `GET /keys/{name}`.
    async fn get_key(&self, vault: &VaultUrl, name: &str) -> Result<VaultKey, KeyVaultError>;
    /// `POST /keys/{name}/create`: creates the key, or a new version of it.
    async fn create_key(&self, vault: &VaultUrl, key: &NewKey) -> Result<VaultKey, KeyVaultError>;
    /// `PATCH /keys/{name}/{version}`: sets the release policy (and tags, when given).
    async fn update_key(
        &self,
        vault: &VaultUrl,
        name: &str,
        version: &str,
        release_policy_json: Option<&str>,
        tags: Option<&BTreeMap<String, String>>,
    ) -> Result<VaultKey, KeyVaultError>;
    /// `DELETE /keys/{name}`: soft-deletes every version.
    async fn delete_key(
        &self,
        vault: &VaultUrl,
        name: &str,
    ) -> Result<DeletedVaultKey, KeyVaultError>;
    /// `GET /deletedkeys/{name}`.
    async fn get_deleted_key(
        &self,
        vault: &VaultUrl,
        name: &str,
    ) -> Result<DeletedVaultKey, KeyVaultError>;
    /// `POST /deletedkeys/{name}/recover`.
    async fn recover_deleted_key(
        &self,
        vault: &VaultUrl,
        name: &str,
    ) -> Result<VaultKey, KeyVaultError>;
}

/// Key Vault client settings of `ckb-operator run`.
#[derive(Debug, Clone, clap::Args)]
pub struct KeyVaultArgs {}
