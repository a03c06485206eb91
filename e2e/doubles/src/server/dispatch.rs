//! The one handler every request goes through: it logs the request, applies the armed faults,
//! and routes by host (Entra ID, attestation, vault) or to the admin API.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, Method, Uri, header};
use axum::response::Response;

use super::admin::admin;
use super::authorities::{attestation_handler, entra_handler};
use super::http::{
    bearer, error_response, full_host, is_attestation_host, looks_like_jwt, now_secs, query_param,
    strip_port,
};
use super::listen::ConnControl;
use super::vault_api::{VaultRequest, vault_handler};
use super::{Shared, lock};
use crate::entra;
use crate::faults::{Fault, LogEntry};
use crate::keyvault::ServiceError;

/// The one handler: logs, applies faults, routes by host.
pub(super) async fn dispatch(
    State(shared): State<Arc<Shared>>,
    conn: Option<axum::Extension<ConnControl>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let received_ms = crate::faults::unix_millis();
    let full = full_host(&headers, &uri);
    let host = strip_port(&full).to_owned();
    let path = uri.path().to_owned();
    if path == "/_double" || path.starts_with("/_double/") {
        return admin(&shared, &method, &path, &host, &body);
    }
    let authenticated = headers.contains_key(header::AUTHORIZATION);
    if host == entra::AUTHORITY_HOST {
        return entra_handler(&shared, &method, &path, &body);
    }
    // An access token of the Entra double, checked once here so the log can name its issuer.
    let entra_token = bearer(&headers)
        .filter(|t| looks_like_jwt(t))
        .map(|t| shared.entra.verify_access_token(t, None, now_secs()));
    let token_issuer = entra_token
        .as_ref()
        .and_then(|r| r.as_ref().ok())
        .map(|i| i.issuer.clone());
    let token_client_id = entra_token
        .as_ref()
        .and_then(|r| r.as_ref().ok())
        .map(|i| i.client_id.clone());
    let attestation = is_attestation_host(&host);
    let api_version = query_param(&uri, "api-version");
    // The SDK's first request of a client carries no token (it is the challenge probe); faults
    // are meant for the real calls, so they only match authenticated requests on vault hosts.
    let fired = if authenticated || attestation {
        lock(&shared.faults).take(method.as_str(), &path, &host)
    } else {
        None
    };
    let log = |status: Option<u16>, write: bool, fault: Option<String>| {
        tracing::info!(
            method = %method,
            host = %host,
            path = %path,
            api_version = api_version.as_deref().unwrap_or("-"),
            status = status.map_or_else(|| "reset".to_owned(), |s| s.to_string()),
            write,
            fault = fault.as_deref().unwrap_or("-"),
            "request"
        );
        let mut log = lock(&shared.log);
        let seq = log.len() as u64 + 1;
        log.push(LogEntry {
            seq,
            method: method.to_string(),
            host: host.clone(),
            path: path.clone(),
            api_version: api_version.clone(),
            authenticated,
            status,
            write,
            fault,
            received_ms,
            token_issuer: token_issuer.clone(),
            token_client_id: token_client_id.clone(),
        });
    };
    let reset = |conn: &Option<axum::Extension<ConnControl>>| {
        if let Some(c) = conn {
            c.0.0.notify_one();
        }
    };

    if let Some(f) = fired.as_ref().filter(|f| !f.fault.after_apply) {
        if f.fault.delay_ms > 0 {
            tokio::time::sleep(Duration::from_millis(f.fault.delay_ms)).await;
        }
        if f.fault.reset {
            log(None, false, Some(f.description.clone()));
            reset(&conn);
            return std::future::pending().await;
        }
        if let Some(status) = f.fault.status {
            log(Some(status), false, Some(f.description.clone()));
            return fault_response(status, &f.fault);
        }
    }

    let (response, wrote) = if attestation
        || path == "/certs"
        || path.starts_with("/.well-known/")
        || path.starts_with("/attest/")
    {
        (
            attestation_handler(&shared, &method, &path, &host, &body),
            false,
        )
    } else {
        let req = VaultRequest {
            method: &method,
            path: &path,
            full_host: &full,
            host: &host,
            headers: &headers,
            entra_token: entra_token.as_ref(),
            api_version: api_version.as_deref(),
            body: &body,
        };
        vault_handler(&shared, &req).await
    };

    if let Some(f) = fired.as_ref().filter(|f| f.fault.after_apply) {
        if f.fault.delay_ms > 0 {
            tokio::time::sleep(Duration::from_millis(f.fault.delay_ms)).await;
        }
        if f.fault.reset {
            log(None, wrote, Some(f.description.clone()));
            reset(&conn);
            return std::future::pending().await;
        }
        let status = f.fault.status.unwrap_or(500);
        log(Some(status), wrote, Some(f.description.clone()));
        return fault_response(status, &f.fault);
    }
    log(Some(response.status().as_u16()), wrote, None);
    response
}

fn fault_response(status: u16, fault: &Fault) -> Response {
    let e = match status {
        429 => ServiceError::new(429, "Throttled", "Injected fault: too many requests"),
        503 => ServiceError::new(
            503,
            "ServiceUnavailable",
            "Injected fault: service unavailable",
        ),
        s => ServiceError::new(
            s,
            "InternalServerError",
            format!("Injected fault: status {s}"),
        ),
    };
    let mut r = error_response(&e);
    if matches!(status, 429 | 503) {
        r.headers_mut().insert(
            header::RETRY_AFTER,
            HeaderValue::from(fault.retry_after_secs.unwrap_or(1)),
        );
    }
    r
}
