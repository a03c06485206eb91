//! The Key Vault double: the key operations of the data-plane REST API (7.4 / 2025-07-01) that
//! the operator and the SKR sidecar use, with the service's validation, soft delete, throttling
//! and secure key release.

pub mod material;
pub mod release;
pub mod route;
pub mod throttle;
pub mod vault;

use serde_json::{Value, json};

/// Premium vault or Managed HSM: decided by the request's host name, as in Azure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub enum VaultKind {
    /// `<name>.vault.azure.net` (and any host that is not a Managed HSM).
    Premium,
    /// `<name>.managedhsm.azure.net`.
    ManagedHsm,
}

impl VaultKind {
    /// The kind a host name designates.
    pub fn from_host(host: &str) -> Self {
        if host.ends_with(".managedhsm.azure.net") {
            Self::ManagedHsm
        } else {
            Self::Premium
        }
    }

    /// The token resource (audience) named in the 401 challenge.
    pub fn resource(self) -> &'static str {
        match self {
            Self::Premium => "https://vault.azure.net",
            Self::ManagedHsm => "https://managedhsm.azure.net",
        }
    }
}

/// Key permissions (the access-policy names of the operations; RBAC data actions map to them).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Permission {
    /// Read a key or a deleted key, list versions.
    Get,
    /// List keys.
    List,
    /// Create a key or a new version.
    Create,
    /// PATCH a key version.
    Update,
    /// Soft-delete.
    Delete,
    /// Recover a soft-deleted key.
    Recover,
    /// Purge a soft-deleted key.
    Purge,
    /// Secure key release.
    Release,
}

impl Permission {
    /// Every permission.
    pub const ALL: [Permission; 8] = [
        Self::Get,
        Self::List,
        Self::Create,
        Self::Update,
        Self::Delete,
        Self::Recover,
        Self::Purge,
        Self::Release,
    ];

    /// The RBAC data action named in a 403 message.
    pub fn data_action(self) -> &'static str {
        match self {
            Self::Get => "Microsoft.KeyVault/vaults/keys/read",
            Self::List => "Microsoft.KeyVault/vaults/keys/read",
            Self::Create => "Microsoft.KeyVault/vaults/keys/create/action",
            Self::Update => "Microsoft.KeyVault/vaults/keys/update/action",
            Self::Delete => "Microsoft.KeyVault/vaults/keys/delete",
            Self::Recover => "Microsoft.KeyVault/vaults/keys/recover/action",
            Self::Purge => "Microsoft.KeyVault/vaults/deletedkeys/delete",
            Self::Release => "Microsoft.KeyVault/vaults/keys/release/action",
        }
    }
}

/// An error answer in Key Vault's shape: `{"error": {"code", "message", "innererror"?}}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceError {
    /// HTTP status.
    pub status: u16,
    /// `error.code`.
    pub code: String,
    /// `error.message`.
    pub message: String,
    /// `error.innererror.code`, when the service sets one.
    pub inner: Option<String>,
}

impl ServiceError {
    /// Any error.
    pub fn new(status: u16, code: &str, message: impl Into<String>) -> Self {
        Self {
            status,
            code: code.to_owned(),
            message: message.into(),
            inner: None,
        }
    }

    /// With an inner error code.
    pub fn with_inner(mut self, inner: &str) -> Self {
        self.inner = Some(inner.to_owned());
        self
    }

    /// 400 `BadParameter`, the service's code for validation failures.
    pub fn bad_parameter(message: impl Into<String>) -> Self {
        Self::new(400, "BadParameter", message)
    }

    /// 404 `KeyNotFound` with the service's message.
    pub fn key_not_found(name_or_id: &str) -> Self {
        Self::new(
            404,
            "KeyNotFound",
            format!(
                "A key with (name/id) {name_or_id} was not found in this key vault. If you recently \
                 deleted this key you may be able to recover it using the correct recovery command. \
                 For help resolving this issue, please see https://go.microsoft.com/fwlink/?linkid=2125182"
            ),
        )
    }

    /// 404 for a name that is not soft-deleted.
    pub fn deleted_key_not_found(name: &str) -> Self {
        Self::new(404, "KeyNotFound", format!("Deleted Key not found: {name}"))
    }

    /// 409 on a name that is deleted but recoverable.
    pub fn deleted_but_recoverable(name: &str) -> Self {
        Self::new(
            409,
            "Conflict",
            format!(
                "Key {name} is currently in a deleted but recoverable state, and its name cannot be \
                 reused; in this state, the key can be recovered or purged."
            ),
        )
        .with_inner("ObjectIsDeletedButRecoverable")
    }

    /// 403 for a caller without the permission.
    pub fn forbidden_by_rbac(permission: Permission, resource: &str) -> Self {
        Self::new(
            403,
            "Forbidden",
            format!(
                "Caller is not authorized to perform action on resource.\r\nIf role assignments, \
                 deny assignments or role definitions were changed recently, please observe \
                 propagation time.\r\nAction: '{}'\r\nResource: '{resource}'",
                permission.data_action()
            ),
        )
        .with_inner("ForbiddenByRbac")
    }

    /// The JSON body.
    pub fn body(&self) -> Value {
        let mut error = json!({"code": self.code, "message": self.message});
        if let Some(inner) = &self.inner {
            error["innererror"] = json!({"code": inner});
        }
        json!({ "error": error })
    }
}

impl std::fmt::Display for ServiceError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}: {}", self.status, self.code, self.message)
    }
}

impl std::error::Error for ServiceError {}
