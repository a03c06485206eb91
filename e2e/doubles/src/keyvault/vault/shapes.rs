//! The JSON shapes of the 7.4 spec: `KeyBundle`, `KeyAttributes`, `DeletedKeyBundle`, `KeyItem`,
//! and the state dump for tests.

use serde_json::{Map, Value, json};

use super::Vault;
use super::model::{DeletedKey, KeyVersion, RECOVERABLE_DAYS, RECOVERY_LEVEL};

impl Vault {
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

    pub(super) fn deleted_bundle(base: &str, name: &str, d: &DeletedKey) -> Value {
        let latest = d.key.latest().expect("a stored key has a version");
        let mut out = Self::bundle(base, name, latest);
        out["recoveryId"] = format!("{base}/deletedkeys/{name}").into();
        out["deletedDate"] = d.deleted_date.into();
        out["scheduledPurgeDate"] = d.scheduled_purge_date.into();
        out
    }

    pub(super) fn item(base: &str, name: &str, k: &KeyVersion, with_version: bool) -> Value {
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
