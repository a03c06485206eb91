//! The authorities the doubles play or reach: the Entra ID token endpoint, the attestation
//! service (tokens, signing keys, discovery), and the HTTPS client that fetches an authority's
//! signing keys for a key release.

use std::time::Duration;

use axum::http::{HeaderValue, Method, header};
use axum::response::Response;
use serde_json::{Value, json};

use super::http::{Call, json_response, now_secs};
use super::{Shared, lock};
use crate::attestation::Attestation;

/// `POST /{tenant}/oauth2/v2.0/token` on the authority host.
pub(super) fn entra_handler(shared: &Shared, call: &Call<'_>) -> Response {
    let tenant = call
        .path
        .strip_prefix('/')
        .and_then(|p| p.strip_suffix("/oauth2/v2.0/token"))
        .filter(|t| !t.is_empty() && !t.contains('/'));
    match (call.method.as_str(), tenant) {
        ("POST", Some(tenant)) => {
            let (status, answer) = shared.entra.token(tenant, call.body, now_secs());
            tracing::info!(tenant, status, "entra token request");
            let mut r = json_response(status, &answer);
            r.headers_mut()
                .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            r
        }
        _ => json_response(
            404,
            &json!({"error": "not_found", "error_description": format!("{} {} is not served by the Entra double", call.method, call.path)}),
        ),
    }
}

pub(super) fn attestation_handler(shared: &Shared, call: &Call<'_>) -> Response {
    // The sidecar writes `SevSnpVM`, the REST reference `SevSnpVm`.
    if call.method == Method::POST && call.path.eq_ignore_ascii_case("/attest/SevSnpVm") {
        let req = serde_json::from_slice::<Value>(call.body)
            .map_err(|e| format!("body is not JSON: {e}"))
            .and_then(|b| crate::attestation::token_request_for_attest(&b, call.host));
        return match req {
            Ok(req) => match shared.attestation.mint(&req, now_secs()) {
                Ok(token) => json_response(200, &json!({"token": token})),
                Err(e) => json_response(
                    500,
                    &json!({"error": {"code": "InternalError", "message": e.to_string()}}),
                ),
            },
            Err(m) => json_response(
                400,
                &json!({"error": {"code": "InvalidParameter", "message": m}}),
            ),
        };
    }
    match (call.method.as_str(), call.path) {
        ("GET", "/certs") => json_response(200, &shared.attestation.jwks()),
        ("GET", "/.well-known/openid-configuration") => {
            json_response(200, &Attestation::openid_configuration(call.host))
        }
        _ => json_response(
            404,
            &json!({"error": {"code": "NotFound", "message": format!("{} {} is not served by the attestation double", call.method, call.path)}}),
        ),
    }
}

fn client_for_host(shared: &Shared, host: &str) -> Result<reqwest::Client, String> {
    if let Some(c) = lock(&shared.clients).get(host) {
        return Ok(c.clone());
    }
    let mut certs =
        vec![reqwest::Certificate::from_der(shared.pki.ca_der()).map_err(|e| e.to_string())?];
    for pem in &shared.config.extra_trust_pem {
        certs.extend(
            reqwest::Certificate::from_pem_bundle(pem.as_bytes()).map_err(|e| e.to_string())?,
        );
    }
    let mut b = reqwest::Client::builder()
        .tls_certs_only(certs)
        .timeout(Duration::from_secs(10));
    if let Some((_, addr)) = shared.resolve.iter().find(|(suffix, _)| {
        host == suffix.trim_start_matches('.') || host.ends_with(suffix.as_str())
    }) {
        b = b.resolve(host, *addr);
    }
    let client = b.build().map_err(|e| e.to_string())?;
    lock(&shared.clients).insert(host.to_owned(), client.clone());
    Ok(client)
}

async fn get_json(shared: &Shared, url: &str) -> Result<Value, String> {
    let parsed = reqwest::Url::parse(url).map_err(|e| format!("{url}: {e}"))?;
    if parsed.scheme() != "https" {
        return Err(format!("{url} is not https"));
    }
    let host = parsed
        .host_str()
        .ok_or_else(|| format!("{url} has no host"))?;
    let client = client_for_host(shared, host)?;
    let resp = client
        .get(parsed.clone())
        .send()
        .await
        .map_err(|e| format!("{url}: {e}"))?;
    if !resp.status().is_success() {
        return Err(format!("{url} answered {}", resp.status()));
    }
    resp.json::<Value>()
        .await
        .map_err(|e| format!("{url}: {e}"))
}

/// OpenID discovery then the JWKS; falls back to `<issuer>/certs` (MAA's path) when the
/// authority has no discovery document.
pub(super) async fn fetch_jwks(shared: &Shared, issuer: &str) -> Result<Value, String> {
    let issuer = issuer.trim_end_matches('/');
    let jwks_uri = match get_json(
        shared,
        &format!("{issuer}/.well-known/openid-configuration"),
    )
    .await
    {
        Ok(meta) => meta
            .get("jwks_uri")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .ok_or("the OpenID metadata has no jwks_uri")?,
        Err(_) => format!("{issuer}/certs"),
    };
    get_json(shared, &jwks_uri).await
}
