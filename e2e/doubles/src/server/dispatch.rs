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
    Call, bearer, error_response, full_host, is_attestation_host, looks_like_jwt, now_secs,
    query_param, strip_port,
};
use super::listen::ConnControl;
use super::vault_api::{VaultRequest, vault_handler};
use super::{Shared, lock};
use crate::entra::{self, AccessTokenInfo};
use crate::faults::{Fault, Fired, LogEntry};
use crate::keyvault::ServiceError;

/// The one handler: the admin API and the Entra double answer at once; every other request is
/// logged and may meet a fault.
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
    let call = Call {
        method: &method,
        path: &path,
        host: &host,
        body: &body,
    };
    if path == "/_double" || path.starts_with("/_double/") {
        return admin(&shared, &call);
    }
    if host == entra::AUTHORITY_HOST {
        return entra_handler(&shared, &call);
    }
    let req = ServiceRequest {
        authenticated: headers.contains_key(header::AUTHORIZATION),
        attestation: is_attestation_host(&host),
        // Checked once here so that the log can name the token's issuer.
        entra_token: bearer(&headers)
            .filter(|t| looks_like_jwt(t))
            .map(|t| shared.entra.verify_access_token(t, None, now_secs())),
        api_version: query_param(&uri, "api-version"),
        call,
        full_host: &full,
        headers: &headers,
        received_ms,
    };
    serve_with_faults(&shared, &req, conn.as_ref().map(|c| &c.0)).await
}

/// A request for the attestation double or a vault, with what the log records of it.
struct ServiceRequest<'a> {
    call: Call<'a>,
    /// Host with port.
    full_host: &'a str,
    headers: &'a HeaderMap,
    api_version: Option<String>,
    /// Whether it carries an `Authorization` header.
    authenticated: bool,
    /// Whether its host is an attestation authority.
    attestation: bool,
    /// The bearer token checked as an access token of the Entra double, when it is a JWT.
    entra_token: Option<Result<AccessTokenInfo, String>>,
    received_ms: u64,
}

/// Takes the fault armed for the request, if any, and answers with it before or after the
/// operation as it says; logs the request either way.
async fn serve_with_faults(
    shared: &Arc<Shared>,
    req: &ServiceRequest<'_>,
    conn: Option<&ConnControl>,
) -> Response {
    let call = &req.call;
    // The SDK's first request of a client carries no token (it is the challenge probe); faults
    // are meant for the real calls, so they only match authenticated requests on vault hosts.
    let fired = if req.authenticated || req.attestation {
        lock(&shared.faults).take(call.method.as_str(), call.path, call.host)
    } else {
        None
    };
    if let Some(f) = fired.as_ref().filter(|f| !f.fault.after_apply)
        && let Some(response) = play_fault(shared, req, conn, f, false, None).await
    {
        return response;
    }
    let (response, wrote) = route(shared, req).await;
    if let Some(f) = fired.as_ref().filter(|f| f.fault.after_apply)
        && let Some(response) = play_fault(shared, req, conn, f, wrote, Some(500)).await
    {
        return response;
    }
    record(shared, req, Some(response.status().as_u16()), wrote, None);
    response
}

/// Plays `fired`: its delay, then a reset of the connection (never answering) or its status
/// (`default_status` when it names none). `None` when it only delays, the request then goes on.
async fn play_fault(
    shared: &Shared,
    req: &ServiceRequest<'_>,
    conn: Option<&ConnControl>,
    fired: &Fired,
    wrote: bool,
    default_status: Option<u16>,
) -> Option<Response> {
    let fault = &fired.fault;
    if fault.delay_ms > 0 {
        tokio::time::sleep(Duration::from_millis(fault.delay_ms)).await;
    }
    if fault.reset {
        record(shared, req, None, wrote, Some(fired.description.clone()));
        if let Some(c) = conn {
            c.0.notify_one();
        }
        return std::future::pending().await;
    }
    let status = fault.status.or(default_status)?;
    record(
        shared,
        req,
        Some(status),
        wrote,
        Some(fired.description.clone()),
    );
    Some(fault_response(status, fault))
}

/// Attestation hosts and the attestation paths go to the attestation double, the rest to the
/// vaults; the answer and whether the operation committed a change.
async fn route(shared: &Arc<Shared>, req: &ServiceRequest<'_>) -> (Response, bool) {
    let call = &req.call;
    let path = call.path;
    if req.attestation
        || path == "/certs"
        || path.starts_with("/.well-known/")
        || path.starts_with("/attest/")
    {
        return (attestation_handler(shared, call), false);
    }
    let vault = VaultRequest {
        method: call.method,
        path,
        full_host: req.full_host,
        host: call.host,
        headers: req.headers,
        entra_token: req.entra_token.as_ref(),
        api_version: req.api_version.as_deref(),
        body: call.body,
    };
    vault_handler(shared, &vault).await
}

/// Logs the request (a `None` status: the connection was reset) to tracing and to the request
/// log the admin API serves.
fn record(
    shared: &Shared,
    req: &ServiceRequest<'_>,
    status: Option<u16>,
    write: bool,
    fault: Option<String>,
) {
    let call = &req.call;
    tracing::info!(
        method = %call.method,
        host = %call.host,
        path = %call.path,
        api_version = req.api_version.as_deref().unwrap_or("-"),
        status = status.map_or_else(|| "reset".to_owned(), |s| s.to_string()),
        write,
        fault = fault.as_deref().unwrap_or("-"),
        "request"
    );
    let token = req.entra_token.as_ref().and_then(|r| r.as_ref().ok());
    let mut log = lock(&shared.log);
    let seq = log.len() as u64 + 1;
    log.push(LogEntry {
        seq,
        method: call.method.to_string(),
        host: call.host.to_owned(),
        path: call.path.to_owned(),
        api_version: req.api_version.clone(),
        authenticated: req.authenticated,
        status,
        write,
        fault,
        received_ms: req.received_ms,
        token_issuer: token.map(|i| i.issuer.clone()),
        token_client_id: token.map(|i| i.client_id.clone()),
    });
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
