//! The Key Vault data-plane API: authentication (the 401 challenge the SDK expects), the
//! api-version, the route and its permission, per-vault throttling, then the operation.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, HeaderValue, Method, header};
use axum::response::Response;
use serde_json::Value;

use super::authorities::fetch_jwks;
use super::http::{bearer, error_response, json_response, now_secs};
use super::{Shared, lock};
use crate::entra::AccessTokenInfo;
use crate::keyvault::release;
use crate::keyvault::route::Route;
use crate::keyvault::throttle::{Class, retry_after_secs};
use crate::keyvault::vault::{Answer, Vault};
use crate::keyvault::{Permission, ServiceError, VaultKind};

fn throttled(wait: Duration) -> Response {
    let e = ServiceError::new(
        429,
        "Throttled",
        "Request was not processed because too many requests were received. Reason: \
         VaultRequestTypeLimitReached",
    );
    let mut r = error_response(&e);
    r.headers_mut().insert(
        header::RETRY_AFTER,
        HeaderValue::from(retry_after_secs(wait)),
    );
    r
}

fn challenge(shared: &Shared, kind: VaultKind, message: &str) -> Response {
    let e = ServiceError::new(401, "Unauthorized", message);
    let mut r = error_response(&e);
    let value = format!(
        "Bearer authorization=\"https://login.microsoftonline.com/{}\", resource=\"{}\"",
        shared.config.tenant,
        kind.resource()
    );
    if let Ok(v) = HeaderValue::from_str(&value) {
        r.headers_mut().insert(header::WWW_AUTHENTICATE, v);
    }
    r
}

/// Why a request is refused before its operation runs.
enum Refusal {
    /// 401 with the challenge the SDK expects, and this message.
    Challenge(String),
    /// 429: the vault's limit is reached for this long.
    Throttled(Duration),
    /// Any other error answer.
    Error(ServiceError),
}

impl Refusal {
    fn response(self, shared: &Shared, kind: VaultKind) -> Response {
        match self {
            Self::Challenge(message) => challenge(shared, kind, &message),
            Self::Throttled(wait) => throttled(wait),
            Self::Error(e) => error_response(&e),
        }
    }
}

/// A request to a vault host, as the dispatcher read it.
pub(super) struct VaultRequest<'a> {
    pub(super) method: &'a Method,
    pub(super) path: &'a str,
    /// Host with port, for the URLs in answers.
    pub(super) full_host: &'a str,
    /// Host without port: the vault.
    pub(super) host: &'a str,
    pub(super) headers: &'a HeaderMap,
    /// The bearer token checked as an access token of the Entra double, when it is a JWT.
    pub(super) entra_token: Option<&'a Result<AccessTokenInfo, String>>,
    pub(super) api_version: Option<&'a str>,
    pub(super) body: &'a [u8],
}

/// The answer and whether the operation committed a change. In the service's order:
/// authentication, api-version, route and permission, throttling, body, operation.
pub(super) async fn vault_handler(
    shared: &Arc<Shared>,
    req: &VaultRequest<'_>,
) -> (Response, bool) {
    let kind = VaultKind::from_host(req.host);
    let checked = async {
        let permissions = authenticate(shared, kind, req)?;
        check_api_version(shared, req.api_version)?;
        let route = authorize(req, &permissions)?;
        throttle(shared, kind, req.host, &route, req.body)?;
        let body = parse_body(req.body)?;
        Ok::<_, Refusal>((route, body))
    };
    let (route, body) = match checked.await {
        Ok(checked) => checked,
        Err(refused) => return (refused.response(shared, kind), false),
    };
    match operate(shared, kind, req, &route, &body).await {
        Ok(a) => (json_response(a.status, &a.body), a.wrote),
        Err(e) => (error_response(&e), false),
    }
}

/// The caller's permissions, from its bearer token; the challenge exactly as the SDK expects it
/// when there is none or it is not valid here.
fn authenticate(
    shared: &Shared,
    kind: VaultKind,
    req: &VaultRequest<'_>,
) -> Result<BTreeSet<Permission>, Refusal> {
    let Some(token) = bearer(req.headers) else {
        return Err(Refusal::Challenge(
            "AKV10000: Request is missing a Bearer or PoP token.".into(),
        ));
    };
    match (shared.config.tokens.get(token), req.entra_token) {
        (Some(p), _) => Ok(p.clone()),
        // A JWT must be a valid access token of the Entra double, for this vault's resource.
        (None, Some(Err(why))) => Err(Refusal::Challenge(format!(
            "AKV10022: Invalid token: {why}."
        ))),
        (None, Some(Ok(info))) if info.audience.trim_end_matches('/') != kind.resource() => {
            Err(Refusal::Challenge(format!(
                "AKV10022: Invalid audience. Expected {}, found: {}.",
                kind.resource(),
                info.audience
            )))
        }
        (None, Some(Ok(info))) => Ok(match shared.config.entra_permissions.get(&info.client_id) {
            Some(p) => p.clone(),
            None if !shared.config.strict_auth => Permission::ALL.into_iter().collect(),
            None => BTreeSet::new(),
        }),
        (None, None) if !shared.config.strict_auth => Ok(Permission::ALL.into_iter().collect()),
        (None, None) => Err(Refusal::Challenge(
            "AKV10022: Invalid audience or unknown token.".into(),
        )),
    }
}

/// The `api-version` query parameter is required and must be one the double knows.
fn check_api_version(shared: &Shared, api_version: Option<&str>) -> Result<(), Refusal> {
    let latest = shared
        .config
        .api_versions
        .last()
        .cloned()
        .unwrap_or_default();
    match api_version {
        None => Err(Refusal::Error(ServiceError::bad_parameter(
            "The api-version query parameter (?api-version=) is required for all requests.",
        ))),
        Some(v) if !shared.config.api_versions.iter().any(|a| a == v) => {
            Err(Refusal::Error(ServiceError::bad_parameter(format!(
                "The specified version ({v}) is not recognized. Consider using the latest \
                 supported version ({latest})."
            ))))
        }
        Some(_) => Ok(()),
    }
}

/// The operation the request names, if the caller may perform it.
fn authorize(req: &VaultRequest<'_>, permissions: &BTreeSet<Permission>) -> Result<Route, Refusal> {
    let (method, path) = (req.method, req.path);
    let Some(route) = Route::parse(method.as_str(), path) else {
        return Err(Refusal::Error(ServiceError::new(
            404,
            "NotFound",
            format!("The operation {method} {path} is not supported by this Key Vault double."),
        )));
    };
    if !permissions.contains(&route.permission()) {
        let resource = format!(
            "https://{}/keys/{}",
            req.full_host,
            route.key_name().unwrap_or_default()
        );
        return Err(Refusal::Error(ServiceError::forbidden_by_rbac(
            route.permission(),
            &resource,
        )));
    }
    Ok(route)
}

/// Counts the request against its vault's limits, or answers 429 (a refusal is not counted).
fn throttle(
    shared: &Shared,
    kind: VaultKind,
    host: &str,
    route: &Route,
    body: &[u8],
) -> Result<(), Refusal> {
    let class = match route {
        Route::Create { .. } => Vault::create_class(body),
        _ => Class::Other,
    };
    let mut vaults = lock(&shared.vaults);
    let vault = vaults
        .entry(host.to_owned())
        .or_insert_with(|| Vault::new(kind));
    vault
        .throttle
        .admit(class, &shared.config.throttle, Instant::now())
        .map_err(Refusal::Throttled)
}

fn parse_body(body: &[u8]) -> Result<Value, Refusal> {
    if body.is_empty() {
        return Ok(Value::Null);
    }
    serde_json::from_slice::<Value>(body).map_err(|e| {
        Refusal::Error(ServiceError::bad_parameter(format!(
            "The request body is not valid JSON: {e}"
        )))
    })
}

/// Performs the operation on the vault's state (a release also verifies the attestation token).
async fn operate(
    shared: &Arc<Shared>,
    kind: VaultKind,
    req: &VaultRequest<'_>,
    route: &Route,
    body: &Value,
) -> Result<Answer, ServiceError> {
    let base = format!("https://{}", req.full_host);
    let host = req.host;
    let now = now_secs();
    if let Route::Release { name, version } = route {
        let api_version = req.api_version.unwrap_or("7.4");
        return release_op(
            shared,
            &base,
            host,
            name,
            version.as_deref(),
            body,
            api_version,
        )
        .await
        .map(|body| Answer {
            status: 200,
            body,
            wrote: false,
        });
    }
    let mut vaults = lock(&shared.vaults);
    let vault = vaults
        .entry(host.to_owned())
        .or_insert_with(|| Vault::new(kind));
    match route {
        Route::ListKeys => Ok(vault.list(&base)),
        Route::GetKey { name, version } => vault.get(&base, name, version.as_deref()),
        Route::ListVersions { name } => vault.versions(&base, name),
        Route::Create { name } => vault.create(&base, name, body, now),
        Route::Update { name, version } => vault.update(&base, name, version.as_deref(), body, now),
        Route::Delete { name } => vault.delete(&base, name, now),
        Route::GetDeleted { name } => vault.get_deleted(&base, name),
        Route::Recover { name } => vault.recover(&base, name),
        Route::Purge { name } => vault.purge(name),
        Route::Release { .. } => unreachable!("handled above"),
    }
}

async fn release_op(
    shared: &Arc<Shared>,
    base: &str,
    host: &str,
    name: &str,
    version: Option<&str>,
    body: &Value,
    api_version: &str,
) -> Result<Value, ServiceError> {
    let req = release::parse_request(body)?;
    let key = {
        let vaults = lock(&shared.vaults);
        let vault = vaults
            .get(host)
            .ok_or_else(|| ServiceError::key_not_found(name))?;
        vault.find(name, version)?.clone()
    };
    let policy = release::check_releasable(&key)?;
    let target = release::inspect_target(&req.target)?;
    if policy.authorities_for(&target.issuer).next().is_none() {
        return Err(release::attestation_refused(&format!(
            "The token's issuer {} is not an authority of the key release policy.",
            target.issuer
        )));
    }
    let jwks = fetch_jwks(shared, &target.issuer).await.map_err(|e| {
        release::attestation_refused(&format!(
            "Could not get the signing keys of {}: {e}.",
            target.issuer
        ))
    })?;
    release::verify_target(&target, &jwks, now_secs())?;
    release::evaluate(&policy, &target)?;
    let runtime = release::runtime_key(&target.claims)?;
    let signer = shared
        .pki
        .release_signer(host)
        .map_err(|e| ServiceError::new(500, "InternalServerError", e.to_string()))?;
    release::build_answer(&signer, base, name, &key, req.enc, api_version, &runtime)
}
