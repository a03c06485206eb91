//! The state of one vault and its key operations, as synchronous functions over values (the
//! HTTP layer wraps them). Shapes follow the 7.4 spec's `KeyBundle`, `DeletedKeyBundle`,
//! `KeyItem`; rules follow the spec's descriptions and Key Vault's documentation.

use std::collections::BTreeMap;

use serde_json::{Map, Value, json};

use super::material::{Curve, Kty, Material};
use super::throttle::Throttle;
use super::{ServiceError, VaultKind};
use crate::jose::{b64url, b64url_decode};
use crate::policy::ReleasePolicy;

/// Days a soft-deleted key stays recoverable (the service's default retention).
pub const RECOVERABLE_DAYS: i64 = 90;
/// The recovery level of a vault with soft delete and no purge protection.
pub const RECOVERY_LEVEL: &str = "Recoverable+Purgeable";
/// Key operations the API knows (`JsonWebKeyOperation`).
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
    fn to_json(&self) -> Value {
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

    fn find(&self, version: Option<&str>) -> Option<&KeyVersion> {
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

/// One vault.
#[derive(Debug)]
pub struct Vault {
    /// Premium or Managed HSM.
    pub kind: VaultKind,
    /// Live keys by name.
    pub keys: BTreeMap<String, Key>,
    /// Soft-deleted keys by name.
    pub deleted: BTreeMap<String, DeletedKey>,
    /// This vault's throttling counters.
    pub throttle: Throttle,
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
    fn read(body: Value) -> Self {
        Self {
            status: 200,
            body,
            wrote: false,
        }
    }
    fn write(body: Value) -> Self {
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

fn new_version_id() -> String {
    let mut b = [0u8; 16];
    // Random like the service's ids; a failure of the system RNG is not recoverable anyway.
    aws_lc_rs::rand::fill(&mut b).expect("system random generator");
    hex::encode(b)
}

fn opt_i64(attrs: &Map<String, Value>, field: &str) -> Result<Option<i64>, ServiceError> {
    match attrs.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v.as_i64().map(Some).ok_or_else(|| {
            ServiceError::bad_parameter(format!(
                "attributes.{field} must be a Unix time in seconds"
            ))
        }),
    }
}

fn opt_bool(
    obj: &Map<String, Value>,
    field: &str,
    what: &str,
) -> Result<Option<bool>, ServiceError> {
    match obj.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(_) => Err(ServiceError::bad_parameter(format!(
            "{what}{field} must be a boolean"
        ))),
    }
}

fn parse_key_ops(v: Option<&Value>) -> Result<Option<Vec<String>>, ServiceError> {
    let Some(v) = v.filter(|v| !v.is_null()) else {
        return Ok(None);
    };
    let list = v
        .as_array()
        .ok_or_else(|| ServiceError::bad_parameter("key_ops must be a list of operations"))?;
    let mut ops = Vec::new();
    for op in list {
        let op = op.as_str().unwrap_or_default();
        if !KEY_OPS.contains(&op) {
            return Err(ServiceError::bad_parameter(format!(
                "Invalid key operation '{op}'. Valid operations: {}",
                KEY_OPS.join(", ")
            )));
        }
        ops.push(op.to_owned());
    }
    Ok(Some(ops))
}

fn parse_tags(v: Option<&Value>) -> Result<Option<BTreeMap<String, String>>, ServiceError> {
    let Some(v) = v.filter(|v| !v.is_null()) else {
        return Ok(None);
    };
    let obj = v
        .as_object()
        .ok_or_else(|| ServiceError::bad_parameter("tags must be an object of strings"))?;
    if obj.len() > MAX_TAGS {
        return Err(ServiceError::bad_parameter(format!(
            "A key can have at most {MAX_TAGS} tags; {} were given",
            obj.len()
        )));
    }
    let mut tags = BTreeMap::new();
    for (k, v) in obj {
        let v = v
            .as_str()
            .ok_or_else(|| ServiceError::bad_parameter(format!("tag '{k}' must be a string")))?;
        if k.chars().count() > MAX_TAG_LEN || v.chars().count() > MAX_TAG_LEN {
            return Err(ServiceError::bad_parameter(format!(
                "Tag names and values are limited to {MAX_TAG_LEN} characters (tag '{k}')"
            )));
        }
        tags.insert(k.clone(), v.to_owned());
    }
    Ok(Some(tags))
}

/// Parses and validates a `release_policy` object of a request.
fn parse_policy(v: Option<&Value>) -> Result<Option<StoredPolicy>, ServiceError> {
    let Some(v) = v.filter(|v| !v.is_null()) else {
        return Ok(None);
    };
    let obj = v
        .as_object()
        .ok_or_else(|| ServiceError::bad_parameter("release_policy must be an object"))?;
    let content_type = match obj.get("contentType") {
        None | Some(Value::Null) => DEFAULT_POLICY_CONTENT_TYPE.to_owned(),
        Some(Value::String(s)) => s.clone(),
        Some(_) => {
            return Err(ServiceError::bad_parameter(
                "release_policy.contentType must be a string",
            ));
        }
    };
    let data = obj
        .get("data")
        .and_then(Value::as_str)
        .ok_or_else(|| ServiceError::bad_parameter("release_policy.data is required"))?;
    let data = b64url_decode(data).ok_or_else(|| {
        ServiceError::bad_parameter(
            "release_policy.data must be the base64url encoding of the policy",
        )
    })?;
    ReleasePolicy::parse(&data).map_err(|e| {
        ServiceError::bad_parameter(format!("The release policy is not valid: {e}"))
    })?;
    let immutable = opt_bool(obj, "immutable", "release_policy.")?.unwrap_or(false);
    Ok(Some(StoredPolicy {
        content_type,
        data,
        immutable,
    }))
}

fn immutable_error() -> ServiceError {
    ServiceError::bad_parameter(
        "The key release policy is immutable: once marked immutable, the flag cannot be reset and \
         the policy cannot be changed.",
    )
}

impl Vault {
    /// An empty vault.
    pub fn new(kind: VaultKind) -> Self {
        Self {
            kind,
            keys: BTreeMap::new(),
            deleted: BTreeMap::new(),
            throttle: Throttle::default(),
        }
    }

    /// The key types this kind of vault creates (AKV "About keys": Premium vaults hold RSA and EC,
    /// software or HSM; Managed HSM holds HSM keys only, including oct-HSM).
    pub fn allowed_kty(&self) -> &'static [Kty] {
        match self.kind {
            VaultKind::Premium => &[Kty::Rsa, Kty::RsaHsm, Kty::Ec, Kty::EcHsm],
            VaultKind::ManagedHsm => &[Kty::RsaHsm, Kty::EcHsm, Kty::OctHsm],
        }
    }

    /// The JSON `KeyBundle` of a version.
    pub fn bundle(base: &str, name: &str, k: &KeyVersion) -> Value {
        let mut jwk = Map::new();
        jwk.insert(
            "kid".into(),
            format!("{base}/keys/{name}/{}", k.version).into(),
        );
        jwk.insert("kty".into(), k.kty.as_str().into());
        jwk.insert("key_ops".into(), k.key_ops.clone().into());
        k.material.add_public_members(&mut jwk);
        let mut out = json!({"key": jwk, "attributes": Self::attributes(k)});
        if !k.tags.is_empty() {
            out["tags"] = json!(k.tags);
        }
        if let Some(p) = &k.release_policy {
            out["release_policy"] = p.to_json();
        }
        out
    }

    /// The JSON `KeyAttributes` of a version.
    pub fn attributes(k: &KeyVersion) -> Value {
        let mut a = json!({
            "enabled": k.enabled,
            "created": k.created,
            "updated": k.updated,
            "recoveryLevel": RECOVERY_LEVEL,
            "recoverableDays": RECOVERABLE_DAYS,
            "exportable": k.exportable,
        });
        if let Some(nbf) = k.nbf {
            a["nbf"] = nbf.into();
        }
        if let Some(exp) = k.exp {
            a["exp"] = exp.into();
        }
        a
    }

    fn deleted_bundle(base: &str, name: &str, d: &DeletedKey) -> Value {
        let latest = d.key.latest().expect("a stored key has a version");
        let mut out = Self::bundle(base, name, latest);
        out["recoveryId"] = format!("{base}/deletedkeys/{name}").into();
        out["deletedDate"] = d.deleted_date.into();
        out["scheduledPurgeDate"] = d.scheduled_purge_date.into();
        out
    }

    /// The throttling class of a create body (HSM or software by `kty`).
    pub fn create_class(body: &[u8]) -> super::throttle::Class {
        let kty = serde_json::from_slice::<Value>(body)
            .ok()
            .and_then(|v| v.get("kty").and_then(Value::as_str).and_then(Kty::parse));
        match kty {
            Some(k) if !k.is_hsm() => super::throttle::Class::SoftwareCreate,
            _ => super::throttle::Class::HsmCreate,
        }
    }

    /// `POST /keys/{name}/create`.
    pub fn create(
        &mut self,
        base: &str,
        name: &str,
        body: &Value,
        now: i64,
    ) -> Result<Answer, ServiceError> {
        if !valid_key_name(name) {
            return Err(ServiceError::bad_parameter(format!(
                "The request URI contains an invalid name: {name}. Key names match ^[0-9a-zA-Z-]+$ \
                 and have at most 127 characters."
            )));
        }
        if self.deleted.contains_key(name) {
            return Err(ServiceError::deleted_but_recoverable(name));
        }
        let body = body
            .as_object()
            .ok_or_else(|| ServiceError::bad_parameter("The request body must be a JSON object"))?;
        let kty_text = body
            .get("kty")
            .and_then(Value::as_str)
            .ok_or_else(|| ServiceError::bad_parameter("The parameter kty is required"))?;
        let kty = Kty::parse(kty_text).ok_or_else(|| {
            ServiceError::bad_parameter(format!(
                "Invalid kty '{kty_text}'. Valid values: EC, EC-HSM, RSA, RSA-HSM, oct, oct-HSM"
            ))
        })?;
        if !self.allowed_kty().contains(&kty) {
            let what = match self.kind {
                VaultKind::Premium => "a key vault",
                VaultKind::ManagedHsm => "a managed HSM",
            };
            let allowed: Vec<&str> = self.allowed_kty().iter().map(|k| k.as_str()).collect();
            return Err(ServiceError::bad_parameter(format!(
                "Key type {kty_text} is not supported in {what}; supported: {}",
                allowed.join(", ")
            )));
        }
        let key_size = match body.get("key_size") {
            None | Some(Value::Null) => None,
            Some(v) => Some(
                v.as_u64()
                    .ok_or_else(|| ServiceError::bad_parameter("key_size must be an integer"))?,
            ),
        };
        if let Some(exp) = body.get("public_exponent").filter(|v| !v.is_null()) {
            // NB: the double's RSA generator only makes 65537 keys; Key Vault documents the
            // parameter without listing the values it accepts.
            if exp.as_u64() != Some(65537) {
                return Err(ServiceError::bad_parameter(
                    "public_exponent: only 65537 is supported by this double",
                ));
            }
        }
        let material = match kty {
            Kty::Rsa | Kty::RsaHsm => {
                let bits = key_size.unwrap_or(2048);
                if ![2048, 3072, 4096].contains(&bits) {
                    return Err(ServiceError::bad_parameter(format!(
                        "Invalid key size {bits} for {kty_text}: supported sizes are 2048, 3072 and 4096"
                    )));
                }
                if body.contains_key("crv") && !body["crv"].is_null() {
                    return Err(ServiceError::bad_parameter("crv is only valid for EC keys"));
                }
                Material::generate_rsa(bits as u32)
            }
            Kty::Ec | Kty::EcHsm => {
                let crv = match body.get("crv").and_then(Value::as_str) {
                    Some(c) => Curve::parse(c).ok_or_else(|| {
                        ServiceError::bad_parameter(format!(
                            "Invalid curve '{c}'. Valid values: P-256, P-384, P-521, P-256K"
                        ))
                    })?,
                    None => match key_size {
                        None | Some(256) => Curve::P256,
                        Some(384) => Curve::P384,
                        Some(521) => Curve::P521,
                        Some(other) => {
                            return Err(ServiceError::bad_parameter(format!(
                                "Invalid key size {other} for {kty_text}"
                            )));
                        }
                    },
                };
                let expected_size = match crv {
                    Curve::P256 | Curve::P256K => 256,
                    Curve::P384 => 384,
                    Curve::P521 => 521,
                };
                if key_size.is_some_and(|s| s != expected_size) {
                    return Err(ServiceError::bad_parameter(format!(
                        "key_size {} does not match curve {}",
                        key_size.unwrap_or_default(),
                        crv.as_str()
                    )));
                }
                Material::generate_ec(crv)
            }
            Kty::Oct | Kty::OctHsm => {
                let bits = key_size.unwrap_or(256);
                if ![128, 192, 256].contains(&bits) {
                    return Err(ServiceError::bad_parameter(format!(
                        "Invalid key size {bits} for {kty_text}: supported sizes are 128, 192 and 256"
                    )));
                }
                Material::generate_oct(bits as u32)
            }
        }
        .map_err(|e| ServiceError::new(500, "InternalServerError", e.to_string()))?;

        let key_ops = parse_key_ops(body.get("key_ops"))?.unwrap_or_else(|| {
            let defaults: &[&str] = match kty {
                Kty::Rsa | Kty::RsaHsm => &[
                    "encrypt",
                    "decrypt",
                    "sign",
                    "verify",
                    "wrapKey",
                    "unwrapKey",
                ],
                Kty::Ec | Kty::EcHsm => &["sign", "verify"],
                Kty::Oct | Kty::OctHsm => &["encrypt", "decrypt", "wrapKey", "unwrapKey"],
            };
            defaults.iter().map(|s| (*s).to_owned()).collect()
        });
        let empty = Map::new();
        let attrs = match body.get("attributes") {
            None | Some(Value::Null) => &empty,
            Some(Value::Object(a)) => a,
            Some(_) => return Err(ServiceError::bad_parameter("attributes must be an object")),
        };
        let enabled = opt_bool(attrs, "enabled", "attributes.")?.unwrap_or(true);
        let exportable = opt_bool(attrs, "exportable", "attributes.")?.unwrap_or(false);
        let nbf = opt_i64(attrs, "nbf")?;
        let exp = opt_i64(attrs, "exp")?;
        let tags = parse_tags(body.get("tags"))?.unwrap_or_default();
        let mut release_policy = parse_policy(body.get("release_policy"))?;

        if exportable && !kty.is_hsm() {
            return Err(ServiceError::bad_parameter(format!(
                "Only HSM-protected keys can be exportable; {kty_text} is not an HSM key type"
            )));
        }
        let previous = self.keys.get(name).and_then(Key::latest);
        let previous_policy = previous.and_then(|p| p.release_policy.clone());
        if let Some(prev) = previous_policy.as_ref().filter(|p| p.immutable) {
            // NB: whether an immutable policy binds later versions is not documented; refusing a
            // different policy is the conservative reading of "cannot be changed under any
            // circumstances".
            if release_policy.as_ref().is_some_and(|p| p != prev) {
                return Err(immutable_error());
            }
        }
        if exportable && release_policy.is_none() {
            match previous_policy {
                // NB: the spec only says the policy is mandatory on the *first* version; a later
                // version without one keeps the key's current policy here (inheritance is not
                // documented).
                Some(p) => release_policy = Some(p),
                None => {
                    return Err(ServiceError::bad_parameter(
                        "Release policy must be provided when creating the first version of an \
                         exportable key.",
                    ));
                }
            }
        }

        let version = KeyVersion {
            version: new_version_id(),
            kty,
            key_ops,
            material,
            enabled,
            nbf,
            exp,
            created: now,
            updated: now,
            exportable,
            tags,
            release_policy,
        };
        let bundle = Self::bundle(base, name, &version);
        self.keys
            .entry(name.to_owned())
            .or_default()
            .versions
            .push(version);
        Ok(Answer::write(bundle))
    }

    /// `GET /keys/{name}[/{version}]`.
    pub fn get(
        &self,
        base: &str,
        name: &str,
        version: Option<&str>,
    ) -> Result<Answer, ServiceError> {
        let k = self.find(name, version)?;
        Ok(Answer::read(Self::bundle(base, name, k)))
    }

    /// Finds a live key version.
    pub fn find(&self, name: &str, version: Option<&str>) -> Result<&KeyVersion, ServiceError> {
        self.keys
            .get(name)
            .and_then(|k| k.find(version))
            .ok_or_else(|| match version {
                Some(v) => ServiceError::key_not_found(&format!("{name}/{v}")),
                None => ServiceError::key_not_found(name),
            })
    }

    /// `GET /keys/{name}/versions`.
    pub fn versions(&self, base: &str, name: &str) -> Result<Answer, ServiceError> {
        let key = self
            .keys
            .get(name)
            .ok_or_else(|| ServiceError::key_not_found(name))?;
        let value: Vec<Value> = key
            .versions
            .iter()
            .map(|k| Self::item(base, name, k, true))
            .collect();
        Ok(Answer::read(json!({"value": value, "nextLink": null})))
    }

    /// `GET /keys`.
    pub fn list(&self, base: &str) -> Answer {
        let value: Vec<Value> = self
            .keys
            .iter()
            .filter_map(|(name, k)| k.latest().map(|v| Self::item(base, name, v, false)))
            .collect();
        Answer::read(json!({"value": value, "nextLink": null}))
    }

    fn item(base: &str, name: &str, k: &KeyVersion, with_version: bool) -> Value {
        let kid = if with_version {
            format!("{base}/keys/{name}/{}", k.version)
        } else {
            format!("{base}/keys/{name}")
        };
        let mut out = json!({"kid": kid, "attributes": Self::attributes(k)});
        if !k.tags.is_empty() {
            out["tags"] = json!(k.tags);
        }
        out
    }

    /// `PATCH /keys/{name}[/{version}]`.
    pub fn update(
        &mut self,
        base: &str,
        name: &str,
        version: Option<&str>,
        body: &Value,
        now: i64,
    ) -> Result<Answer, ServiceError> {
        let body = body
            .as_object()
            .ok_or_else(|| ServiceError::bad_parameter("The request body must be a JSON object"))?;
        let key_ops = parse_key_ops(body.get("key_ops"))?;
        let tags = parse_tags(body.get("tags"))?;
        let policy = parse_policy(body.get("release_policy"))?;
        let empty = Map::new();
        let attrs = match body.get("attributes") {
            None | Some(Value::Null) => &empty,
            Some(Value::Object(a)) => a,
            Some(_) => return Err(ServiceError::bad_parameter("attributes must be an object")),
        };
        let enabled = opt_bool(attrs, "enabled", "attributes.")?;
        let exportable = opt_bool(attrs, "exportable", "attributes.")?;
        let nbf = opt_i64(attrs, "nbf")?;
        let exp = opt_i64(attrs, "exp")?;

        let current = self.find(name, version)?.clone();
        if exportable.is_some_and(|e| e != current.exportable) {
            // NB: `exportable` is set when a key is created; the update operation's spec lists it
            // in KeyAttributes but nothing documents changing it afterwards.
            return Err(ServiceError::bad_parameter(
                "attributes.exportable cannot be changed after the key is created",
            ));
        }
        if let (Some(new), Some(old)) = (&policy, &current.release_policy)
            && old.immutable
            && new != old
        {
            return Err(immutable_error());
        }

        let k = self
            .keys
            .get_mut(name)
            .and_then(|k| match version {
                None => k.versions.last_mut(),
                Some(v) => k.versions.iter_mut().find(|x| x.version == v),
            })
            .expect("found above");
        if let Some(ops) = key_ops {
            k.key_ops = ops;
        }
        if let Some(tags) = tags {
            k.tags = tags;
        }
        if let Some(p) = policy {
            k.release_policy = Some(p);
        }
        if let Some(e) = enabled {
            k.enabled = e;
        }
        if nbf.is_some() {
            k.nbf = nbf;
        }
        if exp.is_some() {
            k.exp = exp;
        }
        k.updated = now;
        Ok(Answer::write(Self::bundle(base, name, k)))
    }

    /// `DELETE /keys/{name}`: soft delete, answering the `DeletedKeyBundle`.
    pub fn delete(&mut self, base: &str, name: &str, now: i64) -> Result<Answer, ServiceError> {
        let key = self
            .keys
            .remove(name)
            .ok_or_else(|| ServiceError::key_not_found(name))?;
        let deleted = DeletedKey {
            key,
            deleted_date: now,
            scheduled_purge_date: now + RECOVERABLE_DAYS * 86_400,
        };
        let body = Self::deleted_bundle(base, name, &deleted);
        self.deleted.insert(name.to_owned(), deleted);
        Ok(Answer::write(body))
    }

    /// `GET /deletedkeys/{name}`.
    pub fn get_deleted(&self, base: &str, name: &str) -> Result<Answer, ServiceError> {
        let d = self
            .deleted
            .get(name)
            .ok_or_else(|| ServiceError::deleted_key_not_found(name))?;
        Ok(Answer::read(Self::deleted_bundle(base, name, d)))
    }

    /// `POST /deletedkeys/{name}/recover`: the key comes back with all its versions.
    pub fn recover(&mut self, base: &str, name: &str) -> Result<Answer, ServiceError> {
        let d = self
            .deleted
            .remove(name)
            .ok_or_else(|| ServiceError::deleted_key_not_found(name))?;
        let body = Self::bundle(
            base,
            name,
            d.key.latest().expect("a stored key has a version"),
        );
        self.keys.insert(name.to_owned(), d.key);
        Ok(Answer::write(body))
    }

    /// `DELETE /deletedkeys/{name}`: purge.
    pub fn purge(&mut self, name: &str) -> Result<Answer, ServiceError> {
        self.deleted
            .remove(name)
            .ok_or_else(|| ServiceError::deleted_key_not_found(name))?;
        Ok(Answer {
            status: 204,
            body: Value::Null,
            wrote: true,
        })
    }

    /// A state dump for tests and the demo: everything but private key material (a fingerprint
    /// of the material stands in for it).
    pub fn dump(&self, base: &str) -> Value {
        let version = |name: &str, k: &KeyVersion| {
            let mut v = Self::bundle(base, name, k);
            v["material_sha256"] = k.material.fingerprint().into();
            if let Some(p) = &k.release_policy {
                v["release_policy_json"] = serde_json::from_slice(&p.data).unwrap_or(Value::Null);
            }
            v
        };
        let keys: Map<String, Value> = self
            .keys
            .iter()
            .map(|(n, k)| {
                (
                    n.clone(),
                    k.versions.iter().map(|v| version(n, v)).collect(),
                )
            })
            .collect();
        let deleted: Map<String, Value> = self
            .deleted
            .iter()
            .map(|(n, d)| {
                (
                    n.clone(),
                    json!({"deletedDate": d.deleted_date, "scheduledPurgeDate": d.scheduled_purge_date,
                           "versions": d.key.versions.iter().map(|v| version(n, v)).collect::<Vec<_>>()}),
                )
            })
            .collect();
        json!({"kind": self.kind, "keys": keys, "deleted": deleted})
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = "https://demo.vault.azure.net";

    fn policy_b64() -> String {
        b64url(br#"{"version":"1.0.0","anyOf":[{"authority":"https://a","allOf":[{"claim":"c","equals":"1"}]}]}"#)
    }

    #[test]
    fn names_follow_the_spec_pattern() {
        assert!(valid_key_name("Key-1"));
        assert!(!valid_key_name("key_1"));
        assert!(!valid_key_name(""));
        assert!(!valid_key_name(&"a".repeat(128)));
        assert!(valid_key_name(&"a".repeat(127)));
    }

    #[test]
    fn create_get_new_version_delete_recover() {
        let mut v = Vault::new(VaultKind::Premium);
        let a = v
            .create(BASE, "k1", &json!({"kty": "EC-HSM", "crv": "P-384"}), 1)
            .unwrap();
        assert!(a.wrote);
        assert_eq!(a.body["key"]["crv"], "P-384");
        let b = v.create(BASE, "k1", &json!({"kty": "EC-HSM"}), 2).unwrap();
        assert_ne!(a.body["key"]["kid"], b.body["key"]["kid"]);
        assert_eq!(v.get(BASE, "k1", None).unwrap().body, b.body);
        let first_version = a.body["key"]["kid"]
            .as_str()
            .unwrap()
            .rsplit('/')
            .next()
            .unwrap();
        assert_eq!(v.get(BASE, "k1", Some(first_version)).unwrap().body, a.body);
        let d = v.delete(BASE, "k1", 3).unwrap();
        assert_eq!(d.body["recoveryId"], format!("{BASE}/deletedkeys/k1"));
        assert_eq!(v.get(BASE, "k1", None).unwrap_err().status, 404);
        let err = v
            .create(BASE, "k1", &json!({"kty": "EC-HSM"}), 4)
            .unwrap_err();
        assert_eq!(
            (err.status, err.inner.as_deref()),
            (409, Some("ObjectIsDeletedButRecoverable"))
        );
        v.recover(BASE, "k1").unwrap();
        assert_eq!(v.keys["k1"].versions.len(), 2);
    }

    #[test]
    fn exportable_rules() {
        let mut v = Vault::new(VaultKind::Premium);
        let e = v
            .create(
                BASE,
                "k",
                &json!({"kty": "RSA-HSM", "attributes": {"exportable": true}}),
                1,
            )
            .unwrap_err();
        assert!(e.message.contains("Release policy must be provided"), "{e}");
        let e = v
            .create(
                BASE,
                "k",
                &json!({"kty": "RSA", "attributes": {"exportable": true},
                "release_policy": {"data": policy_b64()}}),
                1,
            )
            .unwrap_err();
        assert_eq!(e.status, 400);
        let ok = v
            .create(
                BASE,
                "k",
                &json!({"kty": "RSA-HSM", "attributes": {"exportable": true},
                "release_policy": {"data": policy_b64()}}),
                1,
            )
            .unwrap();
        assert_eq!(ok.body["attributes"]["exportable"], true);
        assert_eq!(
            ok.body["release_policy"]["contentType"],
            DEFAULT_POLICY_CONTENT_TYPE
        );
        // A later version may omit the policy.
        let later = v
            .create(
                BASE,
                "k",
                &json!({"kty": "RSA-HSM", "attributes": {"exportable": true}}),
                2,
            )
            .unwrap();
        assert_eq!(later.body["release_policy"], ok.body["release_policy"]);
    }

    #[test]
    fn kty_per_vault_kind() {
        let mut premium = Vault::new(VaultKind::Premium);
        assert_eq!(
            premium
                .create(BASE, "k", &json!({"kty": "oct-HSM"}), 1)
                .unwrap_err()
                .status,
            400
        );
        let mut hsm = Vault::new(VaultKind::ManagedHsm);
        assert_eq!(
            hsm.create(BASE, "k", &json!({"kty": "RSA"}), 1)
                .unwrap_err()
                .status,
            400
        );
        assert_eq!(
            hsm.create(BASE, "k", &json!({"kty": "EC"}), 1)
                .unwrap_err()
                .status,
            400
        );
        let oct = hsm
            .create(BASE, "k", &json!({"kty": "oct-HSM", "key_size": 256}), 1)
            .unwrap();
        assert!(
            oct.body["key"].get("k").is_none(),
            "symmetric material is never shown"
        );
    }
}
