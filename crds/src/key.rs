//! The kinds of values in a binding's `spec.key`: key types, curves, operations, deletion policy.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// HSM-backed key types that can be exportable (and so released).
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash, JsonSchema)]
pub enum KeyType {
    /// RSA key in an HSM.
    #[default]
    #[serde(rename = "RSA-HSM")]
    RsaHsm,
    /// Elliptic-curve key in an HSM.
    #[serde(rename = "EC-HSM")]
    EcHsm,
    /// Symmetric (AES) key in a Managed HSM.
    #[serde(rename = "oct-HSM")]
    OctHsm,
}

impl KeyType {
    /// The wire name, as Key Vault spells it (`RSA-HSM`, `EC-HSM`, `oct-HSM`).
    pub fn as_str(self) -> &'static str {
        match self {
            KeyType::RsaHsm => "RSA-HSM",
            KeyType::EcHsm => "EC-HSM",
            KeyType::OctHsm => "oct-HSM",
        }
    }
}

impl std::fmt::Display for KeyType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Elliptic curves for EC-HSM keys.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
pub enum Curve {
    /// NIST P-256.
    #[serde(rename = "P-256")]
    P256,
    /// NIST P-384.
    #[serde(rename = "P-384")]
    P384,
    /// NIST P-521.
    #[serde(rename = "P-521")]
    P521,
}

impl Curve {
    /// The wire name (`P-256`, `P-384`, `P-521`).
    pub fn as_str(self) -> &'static str {
        match self {
            Curve::P256 => "P-256",
            Curve::P384 => "P-384",
            Curve::P521 => "P-521",
        }
    }
}

/// Key operations, as Key Vault names them.
#[derive(
    Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, JsonSchema,
)]
#[serde(rename_all = "camelCase")]
pub enum KeyOperation {
    /// Encrypt with the public part.
    Encrypt,
    /// Decrypt.
    Decrypt,
    /// Sign.
    Sign,
    /// Verify a signature.
    Verify,
    /// Wrap another key.
    WrapKey,
    /// Unwrap another key.
    UnwrapKey,
}

impl KeyOperation {
    /// The wire name (`encrypt`, `wrapKey`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            KeyOperation::Encrypt => "encrypt",
            KeyOperation::Decrypt => "decrypt",
            KeyOperation::Sign => "sign",
            KeyOperation::Verify => "verify",
            KeyOperation::WrapKey => "wrapKey",
            KeyOperation::UnwrapKey => "unwrapKey",
        }
    }
}

/// What happens to the key when its binding is deleted.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum DeletionPolicy {
    /// Leave the key in the vault, tags included.
    #[default]
    Retain,
    /// Soft-delete the key (it stays recoverable for the vault's retention period).
    Delete,
}
