//! Key Vault: the operations the controller needs, as our own domain types.
//!
//! [`KeyVault`] is the contract between the controller and Key Vault. The production implementation
//! wraps the official SDK (`azure_security_keyvault_keys`); tests use the same implementation
//! against the Key Vault double and Lowkey Vault. No SDK type crosses this boundary.
//!
//! Using it from `run`:
//! - `AzureKeyVault::from_args(&args.keyvault)?` builds the client (credential logged at start);
//!   share it as `Arc<dyn KeyVault>`: its per-vault rate limits and SDK clients are process-wide.
//! - `client.metrics().register(&mut registry)` adds the `ckb_keyvault_*` series (registry without
//!   a prefix of its own).
//! - Errors say what to do: [`KeyVaultError::Throttled`] carries the delay to requeue after (the
//!   vault is already backed off for every caller); [`KeyVaultError::Transient`] is retryable, and
//!   when `outcome_unknown` is set a write may have happened, so read before writing again
//!   (`create_key` already does this for itself: a create whose answer was lost is resolved by a
//!   GET, and a retried create of that key reads first, so no second version is made); the others
//!   need a change of spec, permissions or vault state.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use async_trait::async_trait;

pub mod client;
pub mod credential;
pub mod errors;
pub mod limiter;
pub mod metrics;
pub mod transport;

pub use client::AzureKeyVault;
pub use credential::CredentialKind;
pub use limiter::{RateLimiter, RateLimits};
pub use metrics::KeyVaultMetrics;
pub use transport::ResolveOverride;

/// A vault's base URL, normalised: `https://<host>[:<port>]`, lowercase, without a trailing slash.
/// The one place a vault's URL and host are read (with the `url` crate).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct VaultUrl {
    url: String,
    name: String,
}

impl VaultUrl {
    /// Parses and normalises a vault URL. Only `https://<host>[:<port>]` is accepted: no path
    /// (a trailing `/` is dropped), query, fragment or user.
    pub fn parse(url: &str) -> Result<Self, KeyVaultError> {
        let invalid = |why: String| KeyVaultError::InvalidRequest {
            message: format!("vault URL {url:?} {why}"),
        };
        let parsed =
            url::Url::parse(url.trim()).map_err(|e| invalid(format!("is not a URL ({e})")))?;
        if parsed.scheme() != "https" {
            return Err(invalid("must start with https://".into()));
        }
        if parsed.path() != "/"
            || parsed.query().is_some()
            || parsed.fragment().is_some()
            || !parsed.username().is_empty()
            || parsed.password().is_some()
        {
            return Err(invalid("must be https://<host> with no path".into()));
        }
        let name = parsed
            .host_str()
            .filter(|h| !h.is_empty())
            .ok_or_else(|| invalid("names no host".into()))?
            .to_owned();
        let url = match parsed.port() {
            Some(port) => format!("https://{name}:{port}"),
            None => format!("https://{name}"),
        };
        Ok(Self { url, name })
    }

    /// The URL, `https://<host>[:<port>]`.
    pub fn as_str(&self) -> &str {
        &self.url
    }

    /// The host with its port if the URL names one (`contoso.vault.azure.net`,
    /// `localhost:8443`): what the per-vault limits and metrics are keyed by.
    pub fn host(&self) -> &str {
        self.url.trim_start_matches("https://")
    }

    /// The host name without port (`contoso.vault.azure.net`).
    pub fn host_name(&self) -> &str {
        &self.name
    }

    /// Whether this is a Managed HSM (`*.managedhsm.azure.net`).
    pub fn is_managed_hsm(&self) -> bool {
        self.name.ends_with(".managedhsm.azure.net")
    }

    /// Whether the host is a real Azure vault's (public and sovereign clouds).
    pub fn is_azure(&self) -> bool {
        const SUFFIXES: [&str; 5] = [
            ".azure.net",
            ".azure.cn",
            ".usgovcloudapi.net",
            ".microsoftazure.de",
            ".windows.net",
        ];
        SUFFIXES.iter().any(|s| self.name.ends_with(s))
    }
}

impl std::fmt::Display for VaultUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.url)
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
    /// A short name of the variant, for metrics labels and logs (`not_found`, `throttled`, ...).
    pub fn kind(&self) -> &'static str {
        match self {
            KeyVaultError::NotFound { .. } => "not_found",
            KeyVaultError::DeletedRecoverable { .. } => "deleted_recoverable",
            KeyVaultError::Forbidden { .. } => "forbidden",
            KeyVaultError::Throttled { .. } => "throttled",
            KeyVaultError::Conflict { .. } => "conflict",
            KeyVaultError::ImmutablePolicy { .. } => "immutable_policy",
            KeyVaultError::Transient { .. } => "transient",
            KeyVaultError::InvalidRequest { .. } => "invalid_request",
        }
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
pub struct KeyVaultArgs {
    /// How to authenticate to Key Vault. Default: workload-identity when AZURE_FEDERATED_TOKEN_FILE
    /// is set (an AKS pod with workload identity), else managed-identity. The choice is logged at start.
    #[arg(long = "kv-credential", env = "CKB_KV_CREDENTIAL", value_enum)]
    pub credential: Option<CredentialKind>,
    /// File holding the bearer token of `--kv-credential static-token` (tests and the local demo;
    /// refused for real Azure vaults unless a --kv-resolve override redirects them).
    #[arg(long = "kv-static-token-file", env = "CKB_KV_STATIC_TOKEN_FILE")]
    pub static_token_file: Option<PathBuf>,
    /// Entra ID authority host for workload identity (default: AZURE_AUTHORITY_HOST, else the public cloud).
    #[arg(long = "kv-authority-host", env = "CKB_KV_AUTHORITY_HOST")]
    pub authority_host: Option<String>,
    /// Client id of a user-assigned managed identity (`--kv-credential managed-identity`).
    #[arg(
        long = "kv-managed-identity-client-id",
        env = "CKB_KV_MANAGED_IDENTITY_CLIENT_ID"
    )]
    pub managed_identity_client_id: Option<String>,
    /// Connect to ADDR for a host (`demo.vault.azure.net=127.0.0.1:8443`) or every host under a
    /// suffix (`.vault.azure.net=127.0.0.1:8443`). Repeatable; for tests and the local demo.
    #[arg(long = "kv-resolve", env = "CKB_KV_RESOLVE", value_delimiter = ',')]
    pub resolve: Vec<ResolveOverride>,
    /// PEM file of the only CA certificates to trust for Key Vault and the token endpoint (the
    /// double's CA). Default: the system's roots.
    #[arg(long = "kv-ca-file", env = "CKB_KV_CA_FILE")]
    pub ca_file: Option<PathBuf>,
    /// Key creates per vault per 10 s (Key Vault allows 10 HSM key creates per 10 s per vault).
    #[arg(long = "kv-create-limit", env = "CKB_KV_CREATE_LIMIT", default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..))]
    pub create_limit: u32,
    /// Other Key Vault transactions per vault per 10 s. Key Vault allows 500 for RSA-3072 HSM
    /// keys (250 for RSA-4096) per vault, and the pods' own release calls draw on the same budget:
    /// the default, 100, leaves them most of it.
    #[arg(long = "kv-other-limit", env = "CKB_KV_OTHER_LIMIT", default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..))]
    pub other_limit: u32,
    /// Longest a call waits for a rate-limit slot; beyond it the call reports Throttled and the
    /// binding is requeued (`30s`, `500ms`, `2m`).
    #[arg(long = "kv-max-wait", env = "CKB_KV_MAX_WAIT", default_value = "30s", value_parser = crate::duration::parse_duration)]
    pub max_wait: Duration,
    /// Timeout of one Key Vault request, connect to answer (`30s`, `500ms`, `2m`).
    #[arg(long = "kv-timeout", env = "CKB_KV_TIMEOUT", default_value = "30s", value_parser = crate::duration::parse_duration)]
    pub timeout: Duration,
    /// Key Vault REST API version (default: the SDK's, 2025-07-01).
    #[arg(long = "kv-api-version", env = "CKB_KV_API_VERSION")]
    pub api_version: Option<String>,
}

#[cfg(test)]
mod keyvault_tests;
