//! Validation rules embedded in the CRD schema (CEL `x-kubernetes-validations` and item schemas).
//!
//! They are what makes `kubectl apply` refuse a bad binding before the operator ever sees it, so each
//! message names the field and says why.

use serde_json::{Value, json};

/// Claims the operator always pins itself; `extraClaims` may not name them.
pub const PINNED_CLAIMS: [&str; 4] = [
    "x-ms-attestation-type",
    "x-ms-sevsnpvm-hostdata",
    "x-ms-compliance-status",
    "x-ms-sevsnpvm-is-debuggable",
];

/// Cross-field rules on `spec.key`.
pub fn key_rules() -> Value {
    json!([
        {
            "rule": "self.type != 'EC-HSM' || has(self.curve)",
            "fieldPath": ".curve",
            "reason": "FieldValueRequired",
            "message": "key.curve is required when key.type is EC-HSM (P-256, P-384 or P-521)"
        },
        {
            "rule": "!has(self.curve) || self.type == 'EC-HSM'",
            "fieldPath": ".curve",
            "reason": "FieldValueForbidden",
            "message": "key.curve may only be set when key.type is EC-HSM"
        },
        {
            "rule": "!has(self.size) || self.type != 'RSA-HSM' || self.size in [2048, 3072, 4096]",
            "fieldPath": ".size",
            "reason": "FieldValueNotSupported",
            "message": "key.size of an RSA-HSM key must be 2048, 3072 or 4096"
        },
        {
            "rule": "!has(self.size) || self.type != 'oct-HSM' || self.size in [128, 192, 256]",
            "fieldPath": ".size",
            "reason": "FieldValueNotSupported",
            "message": "key.size of an oct-HSM key must be 128, 192 or 256"
        },
        {
            "rule": "!has(self.size) || self.type != 'EC-HSM'",
            "fieldPath": ".size",
            "reason": "FieldValueForbidden",
            "message": "key.size is not used with EC-HSM: the curve sets the size"
        },
        {
            "rule": "self.type != 'oct-HSM' || self.vault.matches('^https://[^/]+[.]managedhsm[.]azure[.]net/?$')",
            "fieldPath": ".type",
            "reason": "FieldValueInvalid",
            "message": "key.type oct-HSM needs a Managed HSM: key.vault must be https://<name>.managedhsm.azure.net"
        },
        {
            "rule": "self.type != 'EC-HSM' || !has(self.operations) || self.operations.all(o, o == 'sign' || o == 'verify')",
            "fieldPath": ".operations",
            "reason": "FieldValueNotSupported",
            "message": "key.operations of an EC-HSM key may only be sign and verify"
        },
        {
            "rule": "self.type != 'oct-HSM' || !has(self.operations) || self.operations.all(o, o != 'sign' && o != 'verify')",
            "fieldPath": ".operations",
            "reason": "FieldValueNotSupported",
            "message": "key.operations of an oct-HSM key may not include sign or verify"
        },
        {
            "rule": "self.vault.lowerAscii().replace('/', '') == oldSelf.vault.lowerAscii().replace('/', '')",
            "fieldPath": ".vault",
            "reason": "FieldValueForbidden",
            "message": "key.vault is immutable: create a new binding for a key in another vault"
        },
        {
            "rule": "self.name == oldSelf.name",
            "fieldPath": ".name",
            "reason": "FieldValueForbidden",
            "message": "key.name is immutable: create a new binding for another key"
        }
    ])
}

/// Rules on `spec.attestation.extraClaims`.
pub fn extra_claims_rules() -> Value {
    json!([
        {
            "rule": format!(
                "self.all(c, !(c.claim in [{}]))",
                PINNED_CLAIMS.iter().map(|c| format!("'{c}'")).collect::<Vec<_>>().join(", ")
            ),
            "reason": "FieldValueForbidden",
            "message": "attestation.extraClaims may not name x-ms-attestation-type, x-ms-sevsnpvm-hostdata, x-ms-compliance-status or x-ms-sevsnpvm-is-debuggable: the operator pins them (use attestation.complianceStatus and attestation.allowDebuggable)"
        }
    ])
}

/// Item schema of `spec.policy.additionalHashes`.
pub fn hash_item_schema() -> Value {
    json!({
        "type": "string",
        "pattern": "^[0-9a-f]{64}$",
        "description": "SHA-256 of an agent policy: 64 lowercase hex digits."
    })
}
