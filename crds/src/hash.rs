//! [`PolicyHash`]: the one type of an agent policy hash in the API, the operator and the webhook.
//!
//! SEV-SNP `HOST_DATA` holds the SHA-256 of the pod's agent policy (the decoded Rego bytes), and
//! Microsoft Azure Attestation reports it as `x-ms-sevsnpvm-hostdata`: 64 lowercase hex digits,
//! which Key Vault compares byte for byte with the release policy. Spec fields
//! (`spec.policy.sha256`, `spec.policy.additionalHashes`) and status fields
//! (`status.policy.currentHash`, `status.policy.boundHashes[].hash`) all hold this type, so a value
//! that is not a hash can neither be applied (the schema's pattern) nor reach the release policy.

use std::borrow::Cow;
use std::fmt;
use std::str::FromStr;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Length of a policy hash in hex digits (SHA-256 = 32 bytes).
pub const HASH_HEX_LEN: usize = 64;

/// SHA-256 of an agent policy's Rego bytes, as 64 lowercase hex digits.
///
/// The only ways to get one are from a 32-byte digest or by parsing a string that is exactly 64
/// lowercase hex digits, so a `PolicyHash` is always a value `x-ms-sevsnpvm-hostdata` can carry.
/// Its schema is a string with that pattern: the API server refuses anything else.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PolicyHash(String);

/// A string that is not a policy hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidPolicyHash {
    /// The offending text (cut to 80 characters).
    pub value: String,
}

impl fmt::Display for InvalidPolicyHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:?} is not a policy hash: expected 64 lowercase hex digits (SHA-256)",
            self.value
        )
    }
}

impl std::error::Error for InvalidPolicyHash {}

impl PolicyHash {
    /// The 64 lowercase hex digits.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The first `n` hex digits (all 64 when `n` is larger), as shown by `kubectl get`.
    pub fn short(&self, n: usize) -> &str {
        &self.0[..n.min(HASH_HEX_LEN)]
    }

    /// The hash of a 32-byte SHA-256 digest.
    pub fn from_digest(digest: [u8; 32]) -> Self {
        PolicyHash(hex::encode(digest))
    }

    /// The hashes joined by `sep`, as messages list them.
    pub fn join(hashes: &[PolicyHash], sep: &str) -> String {
        hashes
            .iter()
            .map(PolicyHash::as_str)
            .collect::<Vec<_>>()
            .join(sep)
    }

    /// Whether `s` is exactly 64 lowercase hex digits.
    pub fn is_valid(s: &str) -> bool {
        s.len() == HASH_HEX_LEN && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    }
}

impl fmt::Display for PolicyHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for PolicyHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PolicyHash({})", self.0)
    }
}

impl FromStr for PolicyHash {
    type Err = InvalidPolicyHash;

    /// Accepts exactly 64 lowercase hex digits. Upper case is refused rather than folded: the claim
    /// is compared byte for byte by Key Vault, so an upper-case value in a spec is a mistake to report.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        PolicyHash::try_from(s.to_owned())
    }
}

impl TryFrom<String> for PolicyHash {
    type Error = InvalidPolicyHash;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        if PolicyHash::is_valid(&s) {
            Ok(PolicyHash(s))
        } else {
            Err(InvalidPolicyHash {
                value: s.chars().take(80).collect(),
            })
        }
    }
}

impl From<PolicyHash> for String {
    fn from(h: PolicyHash) -> String {
        h.0
    }
}

impl AsRef<str> for PolicyHash {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl PartialEq<str> for PolicyHash {
    fn eq(&self, other: &str) -> bool {
        self.0 == other
    }
}

impl PartialEq<String> for PolicyHash {
    fn eq(&self, other: &String) -> bool {
        self.0 == *other
    }
}

impl PartialEq<&str> for PolicyHash {
    fn eq(&self, other: &&str) -> bool {
        self.0 == *other
    }
}

impl Serialize for PolicyHash {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for PolicyHash {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        PolicyHash::try_from(s).map_err(serde::de::Error::custom)
    }
}

impl JsonSchema for PolicyHash {
    fn schema_name() -> Cow<'static, str> {
        "PolicyHash".into()
    }

    fn inline_schema() -> bool {
        true
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "pattern": "^[0-9a-f]{64}$",
            "description": "SHA-256 of an agent policy: 64 lowercase hex digits."
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_exactly_64_lowercase_hex_digits() {
        let good = "a".repeat(64);
        assert_eq!(good.parse::<PolicyHash>().unwrap().as_str(), good);
        for bad in [
            String::new(),
            "a".repeat(63),
            "a".repeat(65),
            "A".repeat(64),
            format!("{}g", "a".repeat(63)),
            format!(" {}", "a".repeat(63)),
        ] {
            let e = bad.parse::<PolicyHash>().unwrap_err();
            assert!(e.to_string().contains("not a policy hash"), "{e}");
        }
    }

    #[test]
    fn serde_refuses_what_the_schema_refuses() {
        let good = format!("\"{}\"", "0".repeat(64));
        let h: PolicyHash = serde_json::from_str(&good).unwrap();
        assert_eq!(serde_json::to_string(&h).unwrap(), good);
        assert!(serde_json::from_str::<PolicyHash>(&format!("\"{}\"", "F".repeat(64))).is_err());
        let schema = serde_json::to_value(schemars::schema_for!(PolicyHash)).unwrap();
        assert_eq!(schema["pattern"], "^[0-9a-f]{64}$");
        assert_eq!(schema["type"], "string");
    }

    #[test]
    fn short_form_is_a_prefix() {
        let h = PolicyHash::from_digest([0xab; 32]);
        assert_eq!(h.short(12), "abababababab");
        assert_eq!(h.short(100), h.as_str());
    }
}
