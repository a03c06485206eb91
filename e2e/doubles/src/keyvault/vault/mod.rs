//! The state of one vault and its key operations, as synchronous functions over values (the
//! HTTP layer wraps them). Shapes follow the 7.4 spec's `KeyBundle`, `DeletedKeyBundle`,
//! `KeyItem`; rules follow the spec's descriptions and Key Vault's documentation.
//!
//! `model` holds what is stored, `params` the request parts create and update share, `shapes`
//! the JSON answers, `create` the create operation; the other operations are here.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use super::material::Kty;
use super::throttle::Throttle;
use super::{ServiceError, VaultKind};

mod create;
mod model;
mod params;
mod shapes;

pub use model::{
    Answer, DEFAULT_POLICY_CONTENT_TYPE, DeletedKey, KEY_OPS, Key, KeyVersion, MAX_TAG_LEN,
    MAX_TAGS, RECOVERABLE_DAYS, RECOVERY_LEVEL, StoredPolicy, valid_key_name,
};
use params::{
    attributes_object, immutable_error, opt_bool, opt_i64, parse_key_ops, parse_policy, parse_tags,
};

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
        let attrs = attributes_object(body)?;
        let enabled = opt_bool(&attrs, "enabled", "attributes.")?;
        let exportable = opt_bool(&attrs, "exportable", "attributes.")?;
        let nbf = opt_i64(&attrs, "nbf")?;
        let exp = opt_i64(&attrs, "exp")?;

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
}

#[cfg(test)]
mod tests;
