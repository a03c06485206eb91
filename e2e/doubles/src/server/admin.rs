//! The test-only admin API under `/_double/`: health, CA, request log, faults, vault state,
//! attestation tokens.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::http::{Call, is_attestation_host, json_response, now_secs};
use super::{Shared, lock};
use crate::attestation::TokenRequest;
use crate::faults::Fault;

pub(super) fn dump(shared: &Shared) -> Value {
    let vaults = lock(&shared.vaults);
    let map: serde_json::Map<String, Value> = vaults
        .iter()
        .map(|(host, v)| (host.clone(), v.dump(&format!("https://{host}"))))
        .collect();
    Value::Object(map)
}

pub(super) fn admin(shared: &Shared, call: &Call<'_>) -> Response {
    match (call.method.as_str(), call.path) {
        ("GET", "/_double/health") => json_response(200, &json!({"status": "ok"})),
        ("GET", "/_double/ca") => (StatusCode::OK, shared.pki.ca_pem().to_owned()).into_response(),
        ("GET", "/_double/log") => json_response(200, &json!(*lock(&shared.log))),
        ("DELETE", "/_double/log") => {
            lock(&shared.log).clear();
            json_response(204, &Value::Null)
        }
        ("GET", "/_double/keys") => json_response(200, &dump(shared)),
        ("POST", "/_double/reset") => {
            lock(&shared.vaults).clear();
            lock(&shared.faults).clear();
            lock(&shared.log).clear();
            json_response(204, &Value::Null)
        }
        ("GET", "/_double/faults") => {
            let list: Vec<Value> = lock(&shared.faults)
                .list()
                .into_iter()
                .map(|(id, f, remaining)| json!({"id": id, "fault": f, "remaining": remaining}))
                .collect();
            json_response(200, &json!(list))
        }
        ("DELETE", "/_double/faults") => {
            lock(&shared.faults).clear();
            json_response(204, &Value::Null)
        }
        ("POST", "/_double/faults") => match serde_json::from_slice::<Fault>(call.body) {
            Ok(f) => match lock(&shared.faults).add(f) {
                Ok(id) => json_response(201, &json!({"id": id})),
                Err(e) => bad_request(&e.to_string()),
            },
            Err(e) => bad_request(&format!("fault: {e}")),
        },
        ("POST", "/_double/token") => mint_token(shared, call),
        _ => json_response(
            404,
            &json!({"error": format!("no admin route {} {}", call.method, call.path)}),
        ),
    }
}

/// 400 with the message in the admin API's error shape.
fn bad_request(message: &str) -> Response {
    json_response(400, &json!({"error": message}))
}

/// `POST /_double/token`: a token for the request in the body (all defaults when empty), issued
/// by the attestation host it was sent to unless the request names one.
fn mint_token(shared: &Shared, call: &Call<'_>) -> Response {
    let mut raw: Value = if call.body.is_empty() {
        json!({})
    } else {
        match serde_json::from_slice(call.body) {
            Ok(v) => v,
            Err(e) => return bad_request(&format!("token request: {e}")),
        }
    };
    if raw.get("issuer_host").is_none() && is_attestation_host(call.host) {
        raw["issuer_host"] = call.host.into();
    }
    match serde_json::from_value::<TokenRequest>(raw) {
        Ok(req) => match shared.attestation.mint(&req, now_secs()) {
            Ok(token) => json_response(200, &json!({"token": token})),
            Err(e) => json_response(500, &json!({"error": e.to_string()})),
        },
        Err(e) => bad_request(&format!("token request: {e}")),
    }
}
