//! Helpers shared by the handlers: the request's host and query, the caller's bearer token, and
//! answers in the services' JSON shapes.

use std::time::{SystemTime, UNIX_EPOCH};

use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use serde_json::Value;

use crate::keyvault::ServiceError;

/// What the admin API and the authorities' handlers read of a request.
pub(super) struct Call<'a> {
    pub(super) method: &'a Method,
    pub(super) path: &'a str,
    /// Host without port.
    pub(super) host: &'a str,
    pub(super) body: &'a [u8],
}

pub(super) fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or_default()
}

/// The request's host (with port if any), from `Host` or the HTTP/2 authority.
pub(super) fn full_host(headers: &HeaderMap, uri: &Uri) -> String {
    headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_owned)
        .or_else(|| uri.authority().map(|a| a.as_str().to_owned()))
        .unwrap_or_else(|| "localhost".to_owned())
        .to_ascii_lowercase()
}

pub(super) fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        return host
            .split(']')
            .next()
            .map_or(host, |h| &host[..h.len() + 1]);
    }
    host.rsplit_once(':')
        .filter(|(_, p)| p.chars().all(|c| c.is_ascii_digit()))
        .map_or(host, |(h, _)| h)
}

pub(super) fn query_param(uri: &Uri, name: &str) -> Option<String> {
    uri.query()?.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        (k == name).then(|| v.replace("%2D", "-").replace("%2d", "-"))
    })
}

pub(super) fn is_attestation_host(host: &str) -> bool {
    host.ends_with(".attest.azure.net")
}

pub(super) fn json_response(status: u16, body: &Value) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    if body.is_null() {
        return status.into_response();
    }
    let mut r = (status, body.to_string()).into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json; charset=utf-8"),
    );
    r
}

pub(super) fn error_response(e: &ServiceError) -> Response {
    json_response(e.status, &e.body())
}

/// The bearer token of a request, if any.
pub(super) fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim)
        .filter(|t| !t.is_empty())
}

/// Whether a bearer token is a compact JWS with a JSON payload (else it is an opaque test token).
pub(super) fn looks_like_jwt(token: &str) -> bool {
    crate::jose::CompactJws::parse(token)
        .and_then(|j| j.claims())
        .is_ok()
}
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_and_query_helpers() {
        assert_eq!(
            strip_port("demo.vault.azure.net:8443"),
            "demo.vault.azure.net"
        );
        assert_eq!(strip_port("demo.vault.azure.net"), "demo.vault.azure.net");
        assert_eq!(strip_port("[::1]:80"), "[::1]");
        let uri: Uri = "/keys/k?x=1&api-version=7.4".parse().unwrap();
        assert_eq!(query_param(&uri, "api-version").as_deref(), Some("7.4"));
        assert_eq!(query_param(&uri, "missing"), None);
    }
}
