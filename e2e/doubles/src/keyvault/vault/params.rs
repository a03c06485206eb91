//! The parts of a request body that create and update share (key operations, tags, attributes,
//! release policy), parsed and validated as the service does.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use super::super::ServiceError;
use super::model::{DEFAULT_POLICY_CONTENT_TYPE, KEY_OPS, MAX_TAG_LEN, MAX_TAGS, StoredPolicy};
use crate::jose::b64url_decode;
use crate::policy::ReleasePolicy;

pub(super) fn opt_i64(
    attrs: &Map<String, Value>,
    field: &str,
) -> Result<Option<i64>, ServiceError> {
    match attrs.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v.as_i64().map(Some).ok_or_else(|| {
            ServiceError::bad_parameter(format!(
                "attributes.{field} must be a Unix time in seconds"
            ))
        }),
    }
}

pub(super) fn opt_bool(
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

pub(super) fn parse_key_ops(v: Option<&Value>) -> Result<Option<Vec<String>>, ServiceError> {
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

pub(super) fn parse_tags(
    v: Option<&Value>,
) -> Result<Option<BTreeMap<String, String>>, ServiceError> {
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
pub(super) fn parse_policy(v: Option<&Value>) -> Result<Option<StoredPolicy>, ServiceError> {
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

pub(super) fn immutable_error() -> ServiceError {
    ServiceError::bad_parameter(
        "The key release policy is immutable: once marked immutable, the flag cannot be reset and \
         the policy cannot be changed.",
    )
}

/// The request's `attributes` object (none: empty).
pub(super) fn attributes_object(
    body: &Map<String, Value>,
) -> Result<Map<String, Value>, ServiceError> {
    match body.get("attributes") {
        None | Some(Value::Null) => Ok(Map::new()),
        Some(Value::Object(a)) => Ok(a.clone()),
        Some(_) => Err(ServiceError::bad_parameter("attributes must be an object")),
    }
}
