//! What a vault stores (keys, their versions, release policies, soft-deleted keys) and what an
//! operation answers.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use super::super::material::{Kty, Material};
use crate::jose::b64url;

/// Days a soft-deleted key stays recoverable (the service's default retention).
pub const RECOVERABLE_DAYS: i64 = 90;
/// The recovery level of a vault with soft delete and no purge protection.
pub const RECOVERY_LEVEL: &str = "Recoverable+Purgeable";
/// Key operations the API knows (`JsonWebKeyOperation`); an RSA key created without `key_ops`
/// gets the first six.
pub const KEY_OPS: &[&str] = &[
    "encrypt",
    "decrypt",
    "sign",
    "verify",
    "wrapKey",
    "unwrapKey",
    "import",
    "export",
];
/// Content type of a release policy when the request gives none (spec default).
pub const DEFAULT_POLICY_CONTENT_TYPE: &str = "application/json; charset=utf-8";
/// At most this many tags per key (Key Vault documentation, "About keys").
pub const MAX_TAGS: usize = 15;
/// Tag names and values at most this long (same source).
pub const MAX_TAG_LEN: usize = 256;

/// A release policy as stored on a key version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredPolicy {
    /// `contentType`.
    pub content_type: String,
    /// The decoded policy document (JSON bytes).
    pub data: Vec<u8>,
    /// Once true, never false again, and the policy never changes.
    pub immutable: bool,
}

impl StoredPolicy {
    pub(super) fn to_json(&self) -> Value {
        json!({"contentType": self.content_type, "data": b64url(&self.data), "immutable": self.immutable})
    }
}

/// One version of a key.
#[derive(Debug, Clone)]
pub struct KeyVersion {
    /// 32 lowercase hex characters.
    pub version: String,
    /// Key type.
    pub kty: Kty,
    /// Permitted operations.
    pub key_ops: Vec<String>,
    /// The key material.
    pub material: Material,
    /// `attributes.enabled`.
    pub enabled: bool,
    /// `attributes.nbf`.
    pub nbf: Option<i64>,
    /// `attributes.exp`.
    pub exp: Option<i64>,
    /// `attributes.created`.
    pub created: i64,
    /// `attributes.updated`.
    pub updated: i64,
    /// `attributes.exportable`.
    pub exportable: bool,
    /// Tags.
    pub tags: BTreeMap<String, String>,
    /// Release policy.
    pub release_policy: Option<StoredPolicy>,
}

/// A key: its versions, oldest first.
#[derive(Debug, Clone, Default)]
pub struct Key {
    /// Versions in creation order; the last is current.
    pub versions: Vec<KeyVersion>,
}

impl Key {
    /// The current version.
    pub fn latest(&self) -> Option<&KeyVersion> {
        self.versions.last()
    }

    pub(super) fn find(&self, version: Option<&str>) -> Option<&KeyVersion> {
        match version {
            None => self.latest(),
            Some(v) => self.versions.iter().find(|k| k.version == v),
        }
    }
}

/// A soft-deleted key.
#[derive(Debug, Clone)]
pub struct DeletedKey {
    /// The key as it was.
    pub key: Key,
    /// When it was deleted.
    pub deleted_date: i64,
    /// When it would be purged.
    pub scheduled_purge_date: i64,
}

/// What a successful operation answers.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    /// HTTP status.
    pub status: u16,
    /// JSON body (`Value::Null` for none).
    pub body: Value,
    /// Whether state was committed.
    pub wrote: bool,
}

impl Answer {
    pub(super) fn read(body: Value) -> Self {
        Self {
            status: 200,
            body,
            wrote: false,
        }
    }
    pub(super) fn write(body: Value) -> Self {
        Self {
            status: 200,
            body,
            wrote: true,
        }
    }
}

/// Key names: `^[0-9a-zA-Z-]+$`, at most 127 characters (7.4 spec, `key-name` parameter).
pub fn valid_key_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 127
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

pub(super) fn new_version_id() -> String {
    let mut b = [0u8; 16];
    // Random like the service's ids; a failure of the system RNG is not recoverable anyway.
    aws_lc_rs::rand::fill(&mut b).expect("system random generator");
    hex::encode(b)
}
