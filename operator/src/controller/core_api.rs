//! The few calls the controller makes into the pure policy core, in one place.
//!
//! NB: temporary stand-in with the same names as `crate::policy::{hash, release}` while that
//! module is being written in parallel; it is replaced by a re-export once it lands.

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;

use ckb_crds::ConfidentialKeyBindingSpec;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

/// A SHA-256 policy hash: 64 lowercase hex digits.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PolicyHash(String);

impl PolicyHash {
    /// The 64 hex digits.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for PolicyHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for PolicyHash {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.len() == 64
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            Ok(Self(s.to_string()))
        } else {
            Err(format!("{s:?} is not 64 lowercase hex digits"))
        }
    }
}

/// SHA-256 of the Rego bytes.
pub fn hash_rego(rego: &[u8]) -> PolicyHash {
    PolicyHash(hex::encode(Sha256::digest(rego)))
}

/// A release policy.
#[derive(Debug, Clone, PartialEq)]
pub struct ReleasePolicy(Value);

impl ReleasePolicy {
    /// The policy a binding needs for these hashes.
    pub fn for_binding(
        spec: &ConfidentialKeyBindingSpec,
        hashes: &BTreeSet<PolicyHash>,
    ) -> Result<Self, String> {
        if hashes.is_empty() {
            return Err("no hash to bind".into());
        }
        let att = &spec.attestation;
        let any: Vec<Value> = hashes
            .iter()
            .map(|h| {
                let mut all = vec![
                    json!({"claim":"x-ms-attestation-type","equals":"sevsnpvm"}),
                    json!({"claim":"x-ms-compliance-status","equals":att.compliance_status}),
                    json!({"claim":"x-ms-sevsnpvm-hostdata","equals":h.as_str()}),
                ];
                if !att.allow_debuggable {
                    all.push(json!({"claim":"x-ms-sevsnpvm-is-debuggable","equals":"false"}));
                }
                for c in &att.extra_claims {
                    all.push(json!({"claim":c.claim,"equals":c.equals}));
                }
                json!({"authority": att.authority_url(), "allOf": all})
            })
            .collect();
        Ok(Self(json!({"version":"1.0.0","anyOf":any})))
    }

    /// Deterministic JSON.
    pub fn to_json(&self) -> String {
        canonical(&self.0).to_string()
    }

    /// Parses a stored policy.
    pub fn parse_json(s: &str) -> Result<Self, String> {
        serde_json::from_str(s).map(Self).map_err(|e| e.to_string())
    }

    /// Equal once order is ignored.
    pub fn same_meaning(&self, other: &Self) -> bool {
        canonical(&self.0) == canonical(&other.0)
    }
}

fn canonical(v: &Value) -> Value {
    match v {
        Value::Object(m) => {
            Value::Object(m.iter().map(|(k, v)| (k.clone(), canonical(v))).collect())
        }
        Value::Array(a) => {
            let mut items: Vec<Value> = a.iter().map(canonical).collect();
            items.sort_by_key(|x| x.to_string());
            Value::Array(items)
        }
        other => other.clone(),
    }
}
