//! Key Vault release policies: the value type of the policy grammar, the builder that turns a
//! binding into one, and the parser for policies read back from a key.
//!
//! Grammar (Key Vault "key management policy grammar", version `1.0.0`):
//!
//! ```json
//! {"version": "1.0.0",
//!  "anyOf": [{"authority": "https://<maa-host>",
//!             "allOf": [{"claim": "<name>", "equals": <string | number | bool>}, ...]}]}
//! ```
//!
//! An authority entry has `allOf` or `anyOf` (not both). Policies written before the grammar's
//! `version` existed spell a condition `{"claim", "condition": "equals", "value"}`; Key Vault may
//! hand those back, so the parser reads both and [`ReleasePolicy::same_meaning`] compares by meaning.
//! Nested `allOf`/`anyOf` inside a condition list are refused: the Secure Key Release documentation
//! says combining them is not supported yet, and a policy we cannot evaluate we must not claim to
//! understand.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ckb_crds::ConfidentialKeyBindingSpec;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;

use super::hash::PolicyHash;

/// The grammar version the operator writes.
pub const POLICY_VERSION: &str = "1.0.0";
/// `contentType` of a release policy on a key.
pub const CONTENT_TYPE: &str = "application/json; charset=utf-8";
/// Claim: the kind of TEE the token attests.
pub const CLAIM_ATTESTATION_TYPE: &str = "x-ms-attestation-type";
/// Claim: SEV-SNP `HOST_DATA`, the SHA-256 of the agent policy.
pub const CLAIM_HOSTDATA: &str = "x-ms-sevsnpvm-hostdata";
/// Claim: the compliance status of the utility VM.
pub const CLAIM_COMPLIANCE_STATUS: &str = "x-ms-compliance-status";
/// Claim: whether the VM is debuggable.
pub const CLAIM_IS_DEBUGGABLE: &str = "x-ms-sevsnpvm-is-debuggable";
/// Value of [`CLAIM_ATTESTATION_TYPE`] for SEV-SNP confidential containers.
pub const ATTESTATION_TYPE_SEVSNPVM: &str = "sevsnpvm";

/// Errors of release policies: malformed JSON or base64, grammar we do not support, and policies
/// that break the invariants every policy the operator writes must hold.
#[derive(Debug, thiserror::Error)]
pub enum ReleasePolicyError {
    /// The text is not JSON.
    #[error("the release policy is not JSON: {0}")]
    Json(#[source] serde_json::Error),
    /// The `data` is not base64url.
    #[error("the release policy data is not base64url: {0}")]
    Base64(#[source] base64::DecodeError),
    /// The decoded `data` is not UTF-8.
    #[error("the release policy data does not decode to UTF-8 text")]
    NotUtf8,
    /// A part of the policy has the wrong shape (wrong type, missing member).
    #[error("release policy {path}: {problem}")]
    Malformed {
        /// JSON path of the part, e.g. `anyOf[0].allOf[2]`.
        path: String,
        /// What is wrong.
        problem: String,
    },
    /// A member the grammar does not have.
    #[error("release policy {path}: unknown member {member:?}")]
    UnknownMember {
        /// JSON path of the object.
        path: String,
        /// The member name.
        member: String,
    },
    /// A condition uses an operator other than `equals`.
    #[error(
        "release policy {path}: unsupported operator {operator:?} (the grammar has only \"equals\")"
    )]
    UnsupportedOperator {
        /// JSON path of the condition.
        path: String,
        /// The operator found.
        operator: String,
    },
    /// `allOf`/`anyOf` nested inside a list of conditions.
    #[error(
        "release policy {path}: nested allOf/anyOf inside conditions is not supported (Secure Key Release does not support combining them)"
    )]
    Nested {
        /// JSON path of the nested rule.
        path: String,
    },
    /// A claim value that is not a string, number or boolean.
    #[error(
        "release policy {path}: a claim value must be a string, number or boolean, not {found}"
    )]
    InvalidValue {
        /// JSON path of the value.
        path: String,
        /// The JSON type found.
        found: &'static str,
    },
    /// No policy hash to bind.
    #[error(
        "no policy hash to bind: a release policy without x-ms-sevsnpvm-hostdata would release the key to any confidential pod"
    )]
    NoHashes,
    /// The top-level `anyOf` is empty (nothing could ever release the key; almost surely a bug).
    #[error("the release policy has no authority entry (empty anyOf)")]
    EmptyAnyOf,
    /// The grammar version is not the one the operator writes.
    #[error("the release policy version is {found:?}, expected \"{POLICY_VERSION}\"")]
    WrongVersion {
        /// The version found (`None` when absent).
        found: Option<String>,
    },
    /// An authority that is not `https://<host>[:port]` without a trailing slash.
    #[error(
        "release policy anyOf[{index}]: authority {authority:?} must be https://<host> without path or trailing slash, as the token's issuer"
    )]
    InvalidAuthority {
        /// Index of the authority entry.
        index: usize,
        /// The authority found.
        authority: String,
    },
    /// An authority entry whose conditions are `anyOf`: any single claim would release the key.
    #[error(
        "release policy anyOf[{index}]: conditions must be allOf (with anyOf a single claim would release the key)"
    )]
    NotAllOf {
        /// Index of the authority entry.
        index: usize,
    },
    /// An authority entry that does not pin a required claim.
    #[error("release policy anyOf[{index}]: missing required claim {claim}")]
    MissingClaim {
        /// Index of the authority entry.
        index: usize,
        /// The claim.
        claim: &'static str,
    },
    /// A required claim with a value the operator never writes.
    #[error("release policy anyOf[{index}]: claim {claim} must be {expected}, found {found}")]
    WrongClaimValue {
        /// Index of the authority entry.
        index: usize,
        /// The claim.
        claim: &'static str,
        /// What it must be.
        expected: &'static str,
        /// What it is.
        found: String,
    },
    /// The same claim twice in one authority entry.
    #[error("release policy anyOf[{index}]: claim {claim} appears more than once")]
    DuplicateClaim {
        /// Index of the authority entry.
        index: usize,
        /// The claim.
        claim: String,
    },
    /// `extraClaims` names a claim the operator pins itself.
    #[error(
        "attestation.extraClaims may not set {claim}: the operator pins it (use complianceStatus / allowDebuggable)"
    )]
    PinnedExtraClaim {
        /// The claim.
        claim: String,
    },
}

/// The value a claim must equal: a string, number or boolean (the grammar has no objects or arrays).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum ClaimValue {
    /// A JSON string (Microsoft's policies compare `"false"`, `"0"` as strings).
    String(String),
    /// A JSON number. Integers are kept exactly; a fractional number is an `f64`, whose last digit
    /// may change when it is parsed back (serde_json's fast float parsing), so two policies that
    /// differ only there may compare as different and the key's policy be rewritten once. The
    /// claims release policies pin are strings, booleans and integers.
    Number(serde_json::Number),
    /// A JSON boolean.
    Bool(bool),
}

impl ClaimValue {
    /// A string value.
    pub fn string(s: impl Into<String>) -> Self {
        ClaimValue::String(s.into())
    }

    /// The string, when the value is one.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            ClaimValue::String(s) => Some(s),
            _ => None,
        }
    }

    /// A totally ordered key for comparing by meaning: type first, then the JSON text. `"0"` and `0`
    /// stay different because Key Vault's coercion between them is not documented.
    fn sort_key(&self) -> (u8, String) {
        match self {
            ClaimValue::String(s) => (0, s.clone()),
            ClaimValue::Number(n) => (1, n.to_string()),
            ClaimValue::Bool(b) => (2, b.to_string()),
        }
    }
}

impl fmt::Display for ClaimValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClaimValue::String(s) => write!(f, "{s:?}"),
            ClaimValue::Number(n) => write!(f, "{n}"),
            ClaimValue::Bool(b) => write!(f, "{b}"),
        }
    }
}

/// One condition: `claim` must equal `equals`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ClaimEquals {
    /// Claim name; dots address nested claims.
    pub claim: String,
    /// The value the claim must equal.
    pub equals: ClaimValue,
}

impl ClaimEquals {
    /// `claim` must equal the string `value`.
    pub fn string(claim: impl Into<String>, value: impl Into<String>) -> Self {
        ClaimEquals {
            claim: claim.into(),
            equals: ClaimValue::String(value.into()),
        }
    }
}

/// How the conditions of an authority entry combine.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub enum Conditions {
    /// Every condition must hold.
    #[serde(rename = "allOf")]
    AllOf(Vec<ClaimEquals>),
    /// At least one condition must hold.
    #[serde(rename = "anyOf")]
    AnyOf(Vec<ClaimEquals>),
}

impl Conditions {
    /// The conditions, whichever way they combine.
    pub fn claims(&self) -> &[ClaimEquals] {
        match self {
            Conditions::AllOf(c) | Conditions::AnyOf(c) => c,
        }
    }
}

/// Tokens from one authority, and the claims they must carry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct AuthorityRule {
    /// The conditions (serialized as the `allOf` or `anyOf` member).
    #[serde(flatten)]
    pub conditions: Conditions,
    /// The attestation authority, compared with the token's issuer.
    pub authority: String,
}

/// A Key Vault release policy (see the module documentation for the grammar).
///
/// Serializes to the current grammar with members in alphabetical order (`anyOf` before `version`,
/// `allOf` before `authority`, `claim` before `equals`), so equal values give identical bytes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ReleasePolicy {
    /// The authority entries; a token must satisfy at least one.
    #[serde(rename = "anyOf")]
    pub any_of: Vec<AuthorityRule>,
    /// Grammar version; absent in policies of the older grammar.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
}

/// A condition list reduced to what it means: how it combines, and the set of (claim, value).
type MeaningOfRule = (String, bool, BTreeSet<(String, (u8, String))>);

impl ReleasePolicy {
    /// The release policy a binding's key must carry to be released to pods whose agent policy has
    /// one of `hashes`: one authority entry per hash, each pinning attestation type `sevsnpvm`, the
    /// hash as `x-ms-sevsnpvm-hostdata`, the compliance status, `x-ms-sevsnpvm-is-debuggable` =
    /// `"false"` unless debuggable VMs are allowed, then the extra claims (sorted by name).
    ///
    /// Fails when there is no hash, or when the result would break [`ReleasePolicy::validate`].
    pub fn for_binding(
        spec: &ConfidentialKeyBindingSpec,
        hashes: &BTreeSet<PolicyHash>,
    ) -> Result<ReleasePolicy, ReleasePolicyError> {
        if hashes.is_empty() {
            return Err(ReleasePolicyError::NoHashes);
        }
        let att = &spec.attestation;
        let mut extra: Vec<&ckb_crds::ClaimCondition> = att.extra_claims.iter().collect();
        extra.sort_by(|a, b| a.claim.cmp(&b.claim));
        for c in &extra {
            if ckb_crds::schema::PINNED_CLAIMS.contains(&c.claim.as_str()) {
                return Err(ReleasePolicyError::PinnedExtraClaim {
                    claim: c.claim.clone(),
                });
            }
        }
        let authority = att.authority_url().to_owned();
        let any_of = hashes
            .iter()
            .map(|hash| {
                let mut claims = vec![
                    ClaimEquals::string(CLAIM_ATTESTATION_TYPE, ATTESTATION_TYPE_SEVSNPVM),
                    ClaimEquals::string(CLAIM_HOSTDATA, hash.as_str()),
                    ClaimEquals::string(CLAIM_COMPLIANCE_STATUS, att.compliance_status.clone()),
                ];
                if !att.allow_debuggable {
                    claims.push(ClaimEquals::string(CLAIM_IS_DEBUGGABLE, "false"));
                }
                claims.extend(
                    extra
                        .iter()
                        .map(|c| ClaimEquals::string(c.claim.clone(), c.equals.clone())),
                );
                AuthorityRule {
                    conditions: Conditions::AllOf(claims),
                    authority: authority.clone(),
                }
            })
            .collect();
        let policy = ReleasePolicy {
            any_of,
            version: Some(POLICY_VERSION.to_owned()),
        };
        policy.validate()?;
        Ok(policy)
    }

    /// The policy as compact JSON in the current grammar; equal values give identical text.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("a release policy always serializes")
    }

    /// The `data` of the key's release policy: base64url without padding of [`Self::to_json`].
    pub fn encoded(&self) -> String {
        URL_SAFE_NO_PAD.encode(self.to_json())
    }

    /// Whether two policies release the key to the same tokens: the order of authority entries and
    /// of claims does not matter, nor duplicates, nor the grammar (current or older) or version; a
    /// one-condition `anyOf` means the same as a one-condition `allOf`. Authorities and values are
    /// compared exactly (a trailing slash or `"0"` versus `0` counts as a difference, since Key
    /// Vault's normalisation of them is not documented; rewriting is the safe side).
    pub fn same_meaning(&self, other: &ReleasePolicy) -> bool {
        self.meaning() == other.meaning()
    }

    fn meaning(&self) -> BTreeSet<MeaningOfRule> {
        self.any_of
            .iter()
            .map(|rule| {
                let claims = rule.conditions.claims();
                let all = matches!(rule.conditions, Conditions::AllOf(_)) || claims.len() == 1;
                let set = claims
                    .iter()
                    .map(|c| (c.claim.clone(), c.equals.sort_key()))
                    .collect();
                (rule.authority.clone(), all, set)
            })
            .collect()
    }

    /// Every `x-ms-sevsnpvm-hostdata` value the policy names (string values only, as written).
    pub fn hostdata_hashes(&self) -> BTreeSet<String> {
        self.any_of
            .iter()
            .flat_map(|r| r.conditions.claims())
            .filter(|c| c.claim == CLAIM_HOSTDATA)
            .filter_map(|c| c.equals.as_str().map(str::to_owned))
            .collect()
    }

    /// The `x-ms-sevsnpvm-hostdata` values that are well-formed policy hashes.
    pub fn bound_hashes(&self) -> BTreeSet<PolicyHash> {
        self.hostdata_hashes()
            .into_iter()
            .filter_map(|h| h.parse().ok())
            .collect()
    }

    /// The distinct authorities the policy trusts.
    pub fn authorities(&self) -> BTreeSet<&str> {
        self.any_of.iter().map(|r| r.authority.as_str()).collect()
    }

    /// The invariants of every policy the operator writes: version `1.0.0`; at least one authority
    /// entry; each entry with an `https://` authority and an `allOf` that pins
    /// `x-ms-attestation-type` = `sevsnpvm`, an `x-ms-sevsnpvm-hostdata` that is a policy hash and a
    /// non-empty `x-ms-compliance-status`, with no claim twice. A policy that breaks one could
    /// release the key to a pod the binding never named.
    pub fn validate(&self) -> Result<(), ReleasePolicyError> {
        if self.version.as_deref() != Some(POLICY_VERSION) {
            return Err(ReleasePolicyError::WrongVersion {
                found: self.version.clone(),
            });
        }
        if self.any_of.is_empty() {
            return Err(ReleasePolicyError::EmptyAnyOf);
        }
        for (index, rule) in self.any_of.iter().enumerate() {
            if !is_https_authority(&rule.authority) {
                return Err(ReleasePolicyError::InvalidAuthority {
                    index,
                    authority: rule.authority.clone(),
                });
            }
            let Conditions::AllOf(claims) = &rule.conditions else {
                return Err(ReleasePolicyError::NotAllOf { index });
            };
            let mut by_claim: BTreeMap<&str, &ClaimValue> = BTreeMap::new();
            for c in claims {
                if by_claim.insert(&c.claim, &c.equals).is_some() {
                    return Err(ReleasePolicyError::DuplicateClaim {
                        index,
                        claim: c.claim.clone(),
                    });
                }
            }
            let required = |claim: &'static str| {
                by_claim
                    .get(claim)
                    .copied()
                    .ok_or(ReleasePolicyError::MissingClaim { index, claim })
            };
            let wrong = |claim, expected, found: &ClaimValue| ReleasePolicyError::WrongClaimValue {
                index,
                claim,
                expected,
                found: found.to_string(),
            };
            let v = required(CLAIM_HOSTDATA)?;
            if !v.as_str().is_some_and(PolicyHash::is_valid) {
                return Err(wrong(
                    CLAIM_HOSTDATA,
                    "a string of 64 lowercase hex digits",
                    v,
                ));
            }
            let v = required(CLAIM_ATTESTATION_TYPE)?;
            if v.as_str() != Some(ATTESTATION_TYPE_SEVSNPVM) {
                return Err(wrong(CLAIM_ATTESTATION_TYPE, "\"sevsnpvm\"", v));
            }
            let v = required(CLAIM_COMPLIANCE_STATUS)?;
            if v.as_str().is_none_or(str::is_empty) {
                return Err(wrong(CLAIM_COMPLIANCE_STATUS, "a non-empty string", v));
            }
        }
        Ok(())
    }
}

impl<'de> Deserialize<'de> for ReleasePolicy {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let v = Value::deserialize(deserializer)?;
        ReleasePolicy::from_value(&v).map_err(serde::de::Error::custom)
    }
}

impl fmt::Display for ReleasePolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_json())
    }
}

fn is_https_authority(a: &str) -> bool {
    let Some(host) = a.strip_prefix("https://") else {
        return false;
    };
    let (name, port) = match host.rsplit_once(':') {
        Some((n, p)) => (n, Some(p)),
        None => (host, None),
    };
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
        && !name.starts_with('.')
        && !name.ends_with('.')
        && port
            .is_none_or(|p| !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()))
}

#[cfg(test)]
#[path = "release_tests.rs"]
mod tests;
