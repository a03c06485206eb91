//! Reading and growing the raw JSON pod: parent maps and arrays created on demand (unknown fields
//! kept), container names, ports, native sidecars, and containment for "already injected".

use serde_json::{Map, Value};

/// Whether `have` contains everything `want` says: objects by key (extra keys allowed, e.g. fields
/// the API server defaulted), arrays of objects element-wise in any order, everything else equal.
pub(super) fn contains(have: &Value, want: &Value) -> bool {
    match (have, want) {
        (Value::Object(h), Value::Object(w)) => w
            .iter()
            .all(|(k, wv)| h.get(k).is_some_and(|hv| contains(hv, wv))),
        (Value::Array(h), Value::Array(w)) if w.iter().all(Value::is_object) => {
            w.iter().all(|wv| h.iter().any(|hv| contains(hv, wv)))
        }
        _ => have == want,
    }
}

/// The object under `key`, created (or replacing a non-object) when missing.
pub(super) fn object_mut<'a>(
    parent: &'a mut Map<String, Value>,
    key: &str,
) -> &'a mut Map<String, Value> {
    let slot = parent
        .entry(key.to_string())
        .or_insert_with(|| Value::Object(Map::new()));
    if !slot.is_object() {
        *slot = Value::Object(Map::new());
    }
    match slot {
        Value::Object(m) => m,
        _ => unreachable!("just made an object"),
    }
}

/// The array under `key`, created (or replacing a non-array) when missing.
pub(super) fn array_mut<'a>(parent: &'a mut Map<String, Value>, key: &str) -> &'a mut Vec<Value> {
    let slot = parent
        .entry(key.to_string())
        .or_insert_with(|| Value::Array(Vec::new()));
    if !slot.is_array() {
        *slot = Value::Array(Vec::new());
    }
    match slot {
        Value::Array(a) => a,
        _ => unreachable!("just made an array"),
    }
}

/// A container's name (empty when it has none).
pub(super) fn container_name(c: &Value) -> &str {
    c.get("name").and_then(Value::as_str).unwrap_or("")
}

/// Whether the container is a native sidecar (an init container with `restartPolicy: Always`).
pub(super) fn is_native_sidecar(c: &Value) -> bool {
    c.get("restartPolicy").and_then(Value::as_str) == Some("Always")
}

/// The container ports a container declares.
pub(super) fn ports_of(c: &Value) -> impl Iterator<Item = i64> + '_ {
    c.get("ports")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|p| p.get("containerPort").and_then(Value::as_i64))
}
