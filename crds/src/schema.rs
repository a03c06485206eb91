//! Validation rules embedded in the CRD schema (CEL `x-kubernetes-validations` and item schemas),
//! and the schema adjustments that keep the generated CRD structural and explainable.
//!
//! The rules are what makes `kubectl apply` refuse a bad binding before the operator ever sees it,
//! so each message names the field and says why. Rules are built with kube's typed [`Rule`], whose
//! [`Reason`] has only the four reasons the API server accepts.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    CustomResourceDefinition, JSONSchemaProps, JSONSchemaPropsOrArray, JSONSchemaPropsOrBool,
};
use kube::core::{Reason, Rule};
use schemars::{Schema, SchemaGenerator, json_schema};
use serde_json::{Value, json};

/// Claims the operator always pins itself; `extraClaims` may not name them.
pub const PINNED_CLAIMS: [&str; 4] = [
    "x-ms-attestation-type",
    "x-ms-sevsnpvm-hostdata",
    "x-ms-compliance-status",
    "x-ms-sevsnpvm-is-debuggable",
];

/// Longest vault URL the schema accepts: `https://` + 24-character name + `.managedhsm.azure.net/`.
/// NB: a bound length also keeps the CEL cost estimate of the rules that read `vault` low.
pub const VAULT_MAX_LENGTH: u32 = 64;

fn rule(expr: &str, field_path: Option<&str>, reason: Reason, message: &str) -> Rule {
    let r = Rule::new(expr).reason(reason).message(message);
    match field_path {
        Some(p) => r.field_path(p),
        None => r,
    }
}

fn rules_value(rules: Vec<Rule>) -> Value {
    serde_json::to_value(rules).expect("CEL rules serialize")
}

/// Cross-field rules on `spec.key`.
pub fn key_rules() -> Value {
    use Reason::*;
    rules_value(vec![
        rule(
            "self.type != 'EC-HSM' || has(self.curve)",
            Some(".curve"),
            FieldValueRequired,
            "key.curve is required when key.type is EC-HSM (P-256, P-384 or P-521)",
        ),
        rule(
            "!has(self.curve) || self.type == 'EC-HSM'",
            Some(".curve"),
            FieldValueForbidden,
            "key.curve may only be set when key.type is EC-HSM",
        ),
        rule(
            "!has(self.size) || self.type != 'RSA-HSM' || self.size in [2048, 3072, 4096]",
            Some(".size"),
            FieldValueInvalid,
            "key.size of an RSA-HSM key must be 2048, 3072 or 4096",
        ),
        rule(
            "!has(self.size) || self.type != 'oct-HSM' || self.size in [128, 192, 256]",
            Some(".size"),
            FieldValueInvalid,
            "key.size of an oct-HSM key must be 128, 192 or 256",
        ),
        rule(
            "!has(self.size) || self.type != 'EC-HSM'",
            Some(".size"),
            FieldValueForbidden,
            "key.size is not used with EC-HSM: the curve sets the size",
        ),
        rule(
            "self.type != 'oct-HSM' || self.vault.matches('^https://[^/]+[.]managedhsm[.]azure[.]net/?$')",
            Some(".type"),
            FieldValueInvalid,
            "key.type oct-HSM needs a Managed HSM: key.vault must be https://<name>.managedhsm.azure.net",
        ),
        rule(
            "self.type != 'EC-HSM' || !has(self.operations) || self.operations.all(o, o == 'sign' || o == 'verify')",
            Some(".operations"),
            FieldValueInvalid,
            "key.operations of an EC-HSM key may only be sign and verify",
        ),
        rule(
            "self.type != 'oct-HSM' || !has(self.operations) || self.operations.all(o, o != 'sign' && o != 'verify')",
            Some(".operations"),
            FieldValueInvalid,
            "key.operations of an oct-HSM key may not include sign or verify",
        ),
        rule(
            "self.vault.lowerAscii().replace('/', '') == oldSelf.vault.lowerAscii().replace('/', '')",
            Some(".vault"),
            FieldValueForbidden,
            "key.vault is immutable: create a new binding for a key in another vault",
        ),
        rule(
            "self.name == oldSelf.name",
            Some(".name"),
            FieldValueForbidden,
            "key.name is immutable: create a new binding for another key",
        ),
    ])
}

/// Rules on `spec.attestation.extraClaims`.
pub fn extra_claims_rules() -> Value {
    let names = PINNED_CLAIMS
        .iter()
        .map(|c| format!("'{c}'"))
        .collect::<Vec<_>>()
        .join(", ");
    rules_value(vec![rule(
        &format!("self.all(c, !(c.claim in [{names}]))"),
        None,
        Reason::FieldValueForbidden,
        "attestation.extraClaims may not name x-ms-attestation-type, x-ms-sevsnpvm-hostdata, x-ms-compliance-status or x-ms-sevsnpvm-is-debuggable: the operator pins them (use attestation.complianceStatus and attestation.allowDebuggable)",
    )])
}

/// Schema of `spec.key.size`: a plain `int32` (the derive would say `uint32` with a float minimum);
/// the allowed values depend on the key type and are checked by [`key_rules`].
pub fn key_size_schema(_: &mut SchemaGenerator) -> Schema {
    json_schema!({"type": "integer", "format": "int32", "minimum": 1})
}

/// Schema of `spec.sidecar.port`: a TCP port as an `int32`.
pub fn port_schema(_: &mut SchemaGenerator) -> Schema {
    json_schema!({"type": "integer", "format": "int32", "minimum": 1, "maximum": 65535})
}

/// Schema of a percentage (a grant's `rateLimitPercent`): an `int32` from 1 to 100.
pub fn percent_schema(_: &mut SchemaGenerator) -> Schema {
    json_schema!({"type": "integer", "format": "int32", "minimum": 1, "maximum": 100})
}

/// Item schema of a grant's `namespaces.names`.
pub fn namespace_name_schema() -> Value {
    json!({
        "type": "string",
        "pattern": "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$",
        "maxLength": 63,
        "description": "A namespace name."
    })
}

/// Item schema of a grant's `attestation.authorities`.
pub fn authority_item_schema() -> Value {
    json!({
        "type": "string",
        "pattern": r"^https://[0-9a-zA-Z]([0-9a-zA-Z-]*[0-9a-zA-Z])?(\.[0-9a-zA-Z]([0-9a-zA-Z-]*[0-9a-zA-Z])?)*(:[0-9]{1,5})?/?$",
        "maxLength": 253,
        "description": "An attestation authority, https://<host>[:port]."
    })
}

/// Item schema of a grant's `attestation.complianceStatuses`.
pub fn compliance_item_schema() -> Value {
    json!({
        "type": "string",
        "minLength": 1,
        "maxLength": 128,
        "description": "A value of the x-ms-compliance-status claim."
    })
}

/// Rules on a grant's `namespaces`.
pub fn namespaces_rules() -> Value {
    rules_value(vec![rule(
        "has(self.names) || has(self.selector)",
        None,
        Reason::FieldValueRequired,
        "namespaces needs names, a selector, or both (an empty selector {} selects every namespace)",
    )])
}

/// The CustomResourceDefinition of `K` as the chart installs it: the derive's output without the
/// one `nullable` it adds outside the API structs (the optional `status` itself), for the same
/// reason as [`no_null_members`]: a `null` should be pruned, not stored.
pub fn crd_without_nullable<K: kube::CustomResourceExt>() -> CustomResourceDefinition {
    let mut crd = K::crd();
    for version in &mut crd.spec.versions {
        if let Some(root) = version
            .schema
            .as_mut()
            .and_then(|s| s.open_api_v3_schema.as_mut())
        {
            strip_nullable(root);
        }
    }
    crd
}

fn strip_nullable(schema: &mut JSONSchemaProps) {
    schema.nullable = None;
    for p in schema.properties.iter_mut().flat_map(|m| m.values_mut()) {
        strip_nullable(p);
    }
    match schema.items.as_mut() {
        Some(JSONSchemaPropsOrArray::Schema(s)) => strip_nullable(s),
        Some(JSONSchemaPropsOrArray::Schemas(v)) => v.iter_mut().for_each(strip_nullable),
        None => {}
    }
    if let Some(JSONSchemaPropsOrBool::Schema(s)) = schema.additional_properties.as_mut() {
        strip_nullable(s);
    }
}

/// Makes the optional members of one struct's schema non-nullable.
///
/// Used as `#[schemars(transform = schema::no_null_members)]` on every API struct. Why: the derive
/// marks each `Option` member `nullable: true`, and with that the API server keeps an explicit
/// `null` instead of pruning it, so `has(self.curve)` is true for `curve: null` and the CEL rules
/// give confusing answers. Without it, a `null` is dropped as if the member were absent, which is
/// what an `Option` means here. It also keeps the member's own description: for an optional enum
/// the derive would otherwise replace it with the enum type's description, and `kubectl explain`
/// would describe the type instead of the field.
pub fn no_null_members(schema: &mut Schema) {
    let Some(props) = schema.get_mut("properties").and_then(Value::as_object_mut) else {
        return;
    };
    for prop in props.values_mut() {
        let Some(obj) = prop.as_object_mut() else {
            continue;
        };
        obj.remove("nullable");
        // `type: [T, "null"]` -> `type: T`
        if let Some(Value::Array(types)) = obj.get_mut("type") {
            types.retain(|t| t != "null");
            if types.len() == 1 {
                let t = types.remove(0);
                obj.insert("type".into(), t);
            }
        }
        // `enum: [..., null]` -> without null
        if let Some(Value::Array(values)) = obj.get_mut("enum") {
            values.retain(|v| !v.is_null());
        }
        // `anyOf: [S, {type: null}]` -> S, merged under the member's own metadata.
        let Some(Value::Array(alternatives)) = obj.get("anyOf") else {
            continue;
        };
        let rest: Vec<Value> = alternatives
            .iter()
            .filter(|a| !is_null_schema(a))
            .cloned()
            .collect();
        if rest.len() == alternatives.len() {
            continue;
        }
        obj.remove("anyOf");
        match <[Value; 1]>::try_from(rest) {
            Ok([Value::Object(inner)]) => {
                for (k, v) in inner {
                    if k != "nullable" {
                        obj.entry(k).or_insert(v);
                    }
                }
            }
            Ok([other]) => {
                obj.insert("anyOf".into(), Value::Array(vec![other]));
            }
            Err(rest) => {
                obj.insert("anyOf".into(), Value::Array(rest));
            }
        }
    }
}

fn is_null_schema(v: &Value) -> bool {
    v.get("type") == Some(&json!("null"))
        || v.get("enum") == Some(&json!([null]))
        || v.get("const") == Some(&Value::Null)
}
