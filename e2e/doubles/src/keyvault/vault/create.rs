//! `POST /keys/{name}/create`: the request's checks in the service's order, the key material,
//! and the rules on exportable keys and their release policies.

use serde_json::{Map, Value};

use super::super::material::{Curve, Kty, Material};
use super::super::{ServiceError, VaultKind};
use super::Vault;
use super::model::{
    Answer, KEY_OPS, Key, KeyVersion, StoredPolicy, new_version_id, valid_key_name,
};
use super::params::{
    attributes_object, immutable_error, opt_bool, opt_i64, parse_key_ops, parse_policy, parse_tags,
};

impl Vault {
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
        let (kty, kty_text) = self.requested_kty(body)?;
        let material = generate(body, kty, kty_text)?;
        let key_ops = parse_key_ops(body.get("key_ops"))?.unwrap_or_else(|| {
            default_key_ops(kty)
                .iter()
                .map(|s| (*s).to_owned())
                .collect()
        });
        let attrs = attributes_object(body)?;
        let enabled = opt_bool(&attrs, "enabled", "attributes.")?.unwrap_or(true);
        let exportable = opt_bool(&attrs, "exportable", "attributes.")?.unwrap_or(false);
        let nbf = opt_i64(&attrs, "nbf")?;
        let exp = opt_i64(&attrs, "exp")?;
        let tags = parse_tags(body.get("tags"))?.unwrap_or_default();
        let requested_policy = parse_policy(body.get("release_policy"))?;
        if exportable && !kty.is_hsm() {
            return Err(ServiceError::bad_parameter(format!(
                "Only HSM-protected keys can be exportable; {kty_text} is not an HSM key type"
            )));
        }
        let release_policy = self.new_version_policy(name, exportable, requested_policy)?;

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

    /// The request's `kty`, which must be one this kind of vault holds (with its text, for
    /// messages).
    fn requested_kty<'b>(
        &self,
        body: &'b Map<String, Value>,
    ) -> Result<(Kty, &'b str), ServiceError> {
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
        Ok((kty, kty_text))
    }

    /// The release policy of a new version of `name`: the requested one, which may not differ
    /// from an immutable policy of the current version; an exportable key must have one.
    fn new_version_policy(
        &self,
        name: &str,
        exportable: bool,
        requested: Option<StoredPolicy>,
    ) -> Result<Option<StoredPolicy>, ServiceError> {
        let previous = self.keys.get(name).and_then(Key::latest);
        let previous_policy = previous.and_then(|p| p.release_policy.clone());
        if let Some(prev) = previous_policy.as_ref().filter(|p| p.immutable) {
            // NB: whether an immutable policy binds later versions is not documented; refusing a
            // different policy is the conservative reading of "cannot be changed under any
            // circumstances".
            if requested.as_ref().is_some_and(|p| p != prev) {
                return Err(immutable_error());
            }
        }
        if !exportable || requested.is_some() {
            return Ok(requested);
        }
        match previous_policy {
            // NB: the spec only says the policy is mandatory on the *first* version; a later
            // version without one keeps the key's current policy here (inheritance is not
            // documented).
            Some(p) => Ok(Some(p)),
            None => Err(ServiceError::bad_parameter(
                "Release policy must be provided when creating the first version of an \
                 exportable key.",
            )),
        }
    }
}

/// The operations a key gets when the request names none.
fn default_key_ops(kty: Kty) -> &'static [&'static str] {
    match kty {
        // Every operation the API knows but import and export.
        Kty::Rsa | Kty::RsaHsm => &KEY_OPS[..6],
        Kty::Ec | Kty::EcHsm => &["sign", "verify"],
        Kty::Oct | Kty::OctHsm => &["encrypt", "decrypt", "wrapKey", "unwrapKey"],
    }
}

/// New key material of the requested type, size or curve.
fn generate(body: &Map<String, Value>, kty: Kty, kty_text: &str) -> Result<Material, ServiceError> {
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
    match kty {
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
        Kty::Ec | Kty::EcHsm => Material::generate_ec(curve(body, key_size, kty_text)?),
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
    .map_err(|e| ServiceError::new(500, "InternalServerError", e.to_string()))
}

/// The curve of an EC key: `crv`, else from `key_size` (P-256 by default); both must agree.
fn curve(
    body: &Map<String, Value>,
    key_size: Option<u64>,
    kty_text: &str,
) -> Result<Curve, ServiceError> {
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
    Ok(crv)
}
