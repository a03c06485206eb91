//! The HTTPS listener: one port serving every vault host (Premium or Managed HSM by host name),
//! the attestation hosts, and the test-only admin API under `/_double/`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use serde_json::{Value, json};
use tokio::sync::{Notify, oneshot};
use tower::ServiceExt as _;

use crate::attestation::{Attestation, AttestationError, TokenRequest};
use crate::entra::{self, AccessTokenInfo, Entra, EntraConfig};
use crate::faults::{Fault, FaultError, Faults, LogEntry};
use crate::keyvault::release;
use crate::keyvault::route::Route;
use crate::keyvault::throttle::{Class, ThrottleLimits, retry_after_secs};
use crate::keyvault::vault::{Answer, Vault};
use crate::keyvault::{Permission, ServiceError, VaultKind};
use crate::pki::{DEFAULT_SANS, Pki, PkiError};

/// The tenant named in the 401 challenge by default (any GUID-shaped value works for clients).
pub const DEFAULT_TENANT: &str = "72f988bf-0000-4000-8000-00000000c4b0";

/// Configuration of the doubles.
#[derive(Debug, Clone)]
pub struct Config {
    /// Address to listen on (127.0.0.1 with port 0 by default).
    pub listen: SocketAddr,
    /// Tenant in the challenge's `authorization` URL.
    pub tenant: String,
    /// Known bearer tokens and their permissions.
    pub tokens: BTreeMap<String, BTreeSet<Permission>>,
    /// Strict: only the tokens above are accepted. Permissive (default): any other bearer token
    /// has every permission, so that any test credential works for the demo.
    pub strict_auth: bool,
    /// Accepted `api-version` values.
    pub api_versions: Vec<String>,
    /// Throttling limits of every vault.
    pub throttle: ThrottleLimits,
    /// Subject alternative names of the serving certificate.
    pub sans: Vec<String>,
    /// Where the release operation reaches attestation authorities: host suffix (or host) ->
    /// address. Empty: every `*.attest.azure.net` host is this process.
    pub authority_resolve: Vec<(String, SocketAddr)>,
    /// Extra CA certificates (PEM) trusted when fetching an authority's keys, besides our own CA.
    pub extra_trust_pem: Vec<String>,
    /// The Entra ID token endpoint double, served on `login.microsoftonline.com`: its tenant,
    /// trusted issuers and federated identity credentials.
    pub entra: EntraConfig,
    /// Permissions of the applications (client ids) holding an access token of the Entra double.
    /// An application not listed has every permission, unless `strict_auth`.
    pub entra_permissions: BTreeMap<String, BTreeSet<Permission>>,
}

impl Default for Config {
    fn default() -> Self {
        let mut tokens = BTreeMap::new();
        tokens.insert(
            "operator-token".to_owned(),
            [
                Permission::Get,
                Permission::List,
                Permission::Create,
                Permission::Update,
                Permission::Delete,
                Permission::Recover,
            ]
            .into_iter()
            .collect(),
        );
        tokens.insert(
            "release-token".to_owned(),
            [Permission::Release].into_iter().collect(),
        );
        tokens.insert(
            "admin-token".to_owned(),
            Permission::ALL.into_iter().collect(),
        );
        tokens.insert(
            "reader-token".to_owned(),
            [Permission::Get].into_iter().collect(),
        );
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            tenant: DEFAULT_TENANT.to_owned(),
            tokens,
            strict_auth: false,
            api_versions: vec!["7.4".to_owned(), "2025-07-01".to_owned()],
            throttle: ThrottleLimits::default(),
            sans: DEFAULT_SANS.iter().map(|s| (*s).to_owned()).collect(),
            authority_resolve: Vec::new(),
            extra_trust_pem: Vec::new(),
            entra: EntraConfig::new(DEFAULT_TENANT),
            entra_permissions: BTreeMap::new(),
        }
    }
}

/// Errors starting the doubles.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Certificates.
    #[error(transparent)]
    Pki(#[from] PkiError),
    /// Attestation keys.
    #[error(transparent)]
    Attestation(#[from] AttestationError),
    /// Entra token signing key.
    #[error("Entra double key: {0}")]
    Entra(#[from] crate::jose::JoseError),
    /// TLS configuration.
    #[error("TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
    /// Binding the listener.
    #[error("listening on {0}: {1}")]
    Bind(SocketAddr, #[source] std::io::Error),
}

struct Shared {
    config: Config,
    addr: SocketAddr,
    pki: Pki,
    attestation: Attestation,
    entra: Entra,
    vaults: Mutex<BTreeMap<String, Vault>>,
    faults: Mutex<Faults>,
    log: Mutex<Vec<LogEntry>>,
    resolve: Vec<(String, SocketAddr)>,
    clients: Mutex<HashMap<String, reqwest::Client>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding a lock must not take the whole double down for other tests.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A running Key Vault + Attestation double. Dropping it stops the listener and its connections.
pub struct KeyVaultDouble {
    shared: Arc<Shared>,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl std::fmt::Debug for KeyVaultDouble {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyVaultDouble")
            .field("addr", &self.shared.addr)
            .finish()
    }
}

/// Per-connection control handed to handlers: lets a fault drop the TCP connection.
#[derive(Clone)]
struct ConnControl(Arc<Notify>);

impl KeyVaultDouble {
    /// Generates the CA and keys, binds, and serves in the background.
    pub async fn start(config: Config) -> Result<Self, StartError> {
        // Harmless when a provider is already installed; needed by reqwest otherwise.
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let pki = Pki::generate(&config.sans)?;
        let attestation = Attestation::new(&pki)?;
        let entra = Entra::new(config.entra.clone())?;
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .map_err(|e| StartError::Bind(config.listen, e))?;
        let addr = listener
            .local_addr()
            .map_err(|e| StartError::Bind(config.listen, e))?;

        let mut tls = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(
            vec![
                CertificateDer::from(pki.server_cert_der.clone()),
                CertificateDer::from(pki.ca_der().to_vec()),
            ],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(pki.server_key_der.clone())),
        )?;
        tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));

        let resolve = if config.authority_resolve.is_empty() {
            vec![(".attest.azure.net".to_owned(), addr)]
        } else {
            config.authority_resolve.clone()
        };
        let shared = Arc::new(Shared {
            config,
            addr,
            pki,
            attestation,
            entra,
            vaults: Mutex::new(BTreeMap::new()),
            faults: Mutex::new(Faults::default()),
            log: Mutex::new(Vec::new()),
            resolve,
            clients: Mutex::new(HashMap::new()),
        });
        let router = Router::new().fallback(dispatch).with_state(shared.clone());
        let (tx, rx) = oneshot::channel();
        let task = tokio::spawn(accept_loop(listener, acceptor, router, rx));
        Ok(Self {
            shared,
            shutdown: Some(tx),
            task: Some(task),
        })
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.shared.addr
    }

    /// The CA certificate (PEM) that clients must trust.
    pub fn ca_pem(&self) -> String {
        self.shared.pki.ca_pem().to_owned()
    }

    /// The CA certificate (DER).
    pub fn ca_der(&self) -> Vec<u8> {
        self.shared.pki.ca_der().to_vec()
    }

    /// The request log so far.
    pub fn log(&self) -> Vec<LogEntry> {
        lock(&self.shared.log).clone()
    }

    /// Clears the request log.
    pub fn clear_log(&self) {
        lock(&self.shared.log).clear();
    }

    /// Arms a fault; returns its id.
    pub fn inject(&self, fault: Fault) -> Result<u64, FaultError> {
        lock(&self.shared.faults).add(fault)
    }

    /// Disarms every fault.
    pub fn clear_faults(&self) {
        lock(&self.shared.faults).clear();
    }

    /// State dump of every vault (no private material).
    pub fn keys(&self) -> Value {
        dump(&self.shared)
    }

    /// Forgets every vault, fault and log entry.
    pub fn reset(&self) {
        lock(&self.shared.vaults).clear();
        lock(&self.shared.faults).clear();
        lock(&self.shared.log).clear();
    }

    /// Mints an attestation token.
    pub fn mint_token(&self, req: &TokenRequest) -> Result<String, AttestationError> {
        self.shared.attestation.mint(req, now_secs())
    }

    /// The Entra ID token endpoint double (federated credentials, token exchanges).
    pub fn entra(&self) -> &Entra {
        &self.shared.entra
    }

    /// The attestation JWKS (as served at `/certs`).
    pub fn attestation_jwks(&self) -> Value {
        self.shared.attestation.jwks()
    }

    /// An HTTPS client that trusts the CA and reaches `hosts` at this double.
    pub fn client_for(&self, hosts: &[&str]) -> reqwest::Client {
        let mut b = reqwest::Client::builder()
            .tls_certs_only([
                reqwest::Certificate::from_der(self.shared.pki.ca_der()).expect("own CA parses")
            ]);
        for h in hosts {
            b = b.resolve(h, self.shared.addr);
        }
        b.timeout(Duration::from_secs(30))
            .build()
            .expect("client builds")
    }

    /// Stops the listener and waits for it.
    pub async fn shutdown(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for KeyVaultDouble {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

async fn accept_loop(
    listener: tokio::net::TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    router: Router,
    mut shutdown: oneshot::Receiver<()>,
) {
    // Connections live in the set so that stopping the double also ends them.
    let mut conns = tokio::task::JoinSet::new();
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = &mut shutdown => break,
            Some(_) = conns.join_next(), if !conns.is_empty() => continue,
        };
        let Ok((tcp, _peer)) = accepted else { continue };
        let acceptor = acceptor.clone();
        let router = router.clone();
        conns.spawn(async move {
            // Keep a duplicate of the socket: a reset fault sets SO_LINGER 0 on it and closes
            // it, so the client sees a connection reset rather than an orderly close.
            let Ok(std_tcp) = tcp.into_std() else { return };
            let Ok(dup) = std_tcp.try_clone() else { return };
            let Ok(tcp) = tokio::net::TcpStream::from_std(std_tcp) else {
                return;
            };
            let Ok(tls) = acceptor.accept(tcp).await else {
                return;
            };
            let kill = Arc::new(Notify::new());
            let ctl = ConnControl(kill.clone());
            let svc = hyper::service::service_fn(
                move |mut req: hyper::Request<hyper::body::Incoming>| {
                    req.extensions_mut().insert(ctl.clone());
                    let router = router.clone();
                    async move { router.oneshot(req.map(Body::new)).await }
                },
            );
            let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            let conn = builder.serve_connection(TokioIo::new(tls), svc);
            tokio::select! {
                _ = conn => {}
                _ = kill.notified() => {
                    let _ = socket2::SockRef::from(&dup).set_linger(Some(Duration::ZERO));
                }
            }
            drop(dup);
        });
    }
}

fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or_default()
}

/// The request's host (with port if any), from `Host` or the HTTP/2 authority.
fn full_host(headers: &HeaderMap, uri: &Uri) -> String {
    headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_owned)
        .or_else(|| uri.authority().map(|a| a.as_str().to_owned()))
        .unwrap_or_else(|| "localhost".to_owned())
        .to_ascii_lowercase()
}

fn strip_port(host: &str) -> &str {
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

fn query_param(uri: &Uri, name: &str) -> Option<String> {
    uri.query()?.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        (k == name).then(|| v.replace("%2D", "-").replace("%2d", "-"))
    })
}

fn is_attestation_host(host: &str) -> bool {
    host.ends_with(".attest.azure.net")
}

fn json_response(status: u16, body: &Value) -> Response {
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

fn error_response(e: &ServiceError) -> Response {
    json_response(e.status, &e.body())
}

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

/// The one handler: logs, applies faults, routes by host.
async fn dispatch(
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
        vault_handler(
            &shared,
            &method,
            &path,
            &full,
            &host,
            &headers,
            entra_token.as_ref(),
            api_version.as_deref(),
            &body,
        )
        .await
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

/// The bearer token of a request, if any.
fn bearer(headers: &HeaderMap) -> Option<&str> {
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
fn looks_like_jwt(token: &str) -> bool {
    crate::jose::CompactJws::parse(token)
        .and_then(|j| j.claims())
        .is_ok()
}

/// `POST /{tenant}/oauth2/v2.0/token` on the authority host.
fn entra_handler(shared: &Shared, method: &Method, path: &str, body: &[u8]) -> Response {
    let tenant = path
        .strip_prefix('/')
        .and_then(|p| p.strip_suffix("/oauth2/v2.0/token"))
        .filter(|t| !t.is_empty() && !t.contains('/'));
    match (method.as_str(), tenant) {
        ("POST", Some(tenant)) => {
            let (status, answer) = shared.entra.token(tenant, body, now_secs());
            tracing::info!(tenant, status, "entra token request");
            let mut r = json_response(status, &answer);
            r.headers_mut()
                .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            r
        }
        _ => json_response(
            404,
            &json!({"error": "not_found", "error_description": format!("{method} {path} is not served by the Entra double")}),
        ),
    }
}

fn attestation_handler(
    shared: &Shared,
    method: &Method,
    path: &str,
    host: &str,
    body: &[u8],
) -> Response {
    // The sidecar writes `SevSnpVM`, the REST reference `SevSnpVm`.
    if method == Method::POST && path.eq_ignore_ascii_case("/attest/SevSnpVm") {
        let req = serde_json::from_slice::<Value>(body)
            .map_err(|e| format!("body is not JSON: {e}"))
            .and_then(|b| crate::attestation::token_request_for_attest(&b, host));
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
    match (method.as_str(), path) {
        ("GET", "/certs") => json_response(200, &shared.attestation.jwks()),
        ("GET", "/.well-known/openid-configuration") => {
            json_response(200, &Attestation::openid_configuration(host))
        }
        _ => json_response(
            404,
            &json!({"error": {"code": "NotFound", "message": format!("{method} {path} is not served by the attestation double")}}),
        ),
    }
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

#[allow(clippy::too_many_arguments)]
async fn vault_handler(
    shared: &Arc<Shared>,
    method: &Method,
    path: &str,
    full_host: &str,
    host: &str,
    headers: &HeaderMap,
    entra_token: Option<&Result<AccessTokenInfo, String>>,
    api_version: Option<&str>,
    body: &[u8],
) -> (Response, bool) {
    let kind = VaultKind::from_host(host);
    // 1. Authentication: the challenge exactly as the SDK expects it.
    let Some(token) = bearer(headers) else {
        return (
            challenge(
                shared,
                kind,
                "AKV10000: Request is missing a Bearer or PoP token.",
            ),
            false,
        );
    };
    let permissions: BTreeSet<Permission> = match (shared.config.tokens.get(token), entra_token) {
        (Some(p), _) => p.clone(),
        // A JWT must be a valid access token of the Entra double, for this vault's resource.
        (None, Some(Err(why))) => {
            return (
                challenge(shared, kind, &format!("AKV10022: Invalid token: {why}.")),
                false,
            );
        }
        (None, Some(Ok(info))) if info.audience.trim_end_matches('/') != kind.resource() => {
            return (
                challenge(
                    shared,
                    kind,
                    &format!(
                        "AKV10022: Invalid audience. Expected {}, found: {}.",
                        kind.resource(),
                        info.audience
                    ),
                ),
                false,
            );
        }
        (None, Some(Ok(info))) => match shared.config.entra_permissions.get(&info.client_id) {
            Some(p) => p.clone(),
            None if !shared.config.strict_auth => Permission::ALL.into_iter().collect(),
            None => BTreeSet::new(),
        },
        (None, None) if !shared.config.strict_auth => Permission::ALL.into_iter().collect(),
        (None, None) => {
            return (
                challenge(shared, kind, "AKV10022: Invalid audience or unknown token."),
                false,
            );
        }
    };
    // 2. api-version.
    let latest = shared
        .config
        .api_versions
        .last()
        .cloned()
        .unwrap_or_default();
    match api_version {
        None => {
            return (
                error_response(&ServiceError::bad_parameter(
                    "The api-version query parameter (?api-version=) is required for all requests.",
                )),
                false,
            );
        }
        Some(v) if !shared.config.api_versions.iter().any(|a| a == v) => {
            return (
                error_response(&ServiceError::bad_parameter(format!(
                    "The specified version ({v}) is not recognized. Consider using the latest \
                     supported version ({latest})."
                ))),
                false,
            );
        }
        Some(_) => {}
    }
    // 3. Route and permission.
    let Some(route) = Route::parse(method.as_str(), path) else {
        return (
            error_response(&ServiceError::new(
                404,
                "NotFound",
                format!("The operation {method} {path} is not supported by this Key Vault double."),
            )),
            false,
        );
    };
    let base = format!("https://{full_host}");
    let resource = format!("{base}/keys/{}", route.key_name().unwrap_or_default());
    if !permissions.contains(&route.permission()) {
        return (
            error_response(&ServiceError::forbidden_by_rbac(
                route.permission(),
                &resource,
            )),
            false,
        );
    }
    // 4. Throttling, per vault.
    let class = match route {
        Route::Create { .. } => Vault::create_class(body),
        _ => Class::Other,
    };
    {
        let mut vaults = lock(&shared.vaults);
        let vault = vaults
            .entry(host.to_owned())
            .or_insert_with(|| Vault::new(kind));
        if let Err(wait) = vault
            .throttle
            .admit(class, &shared.config.throttle, Instant::now())
        {
            return (throttled(wait), false);
        }
    }
    // 5. Body.
    let json_body = if body.is_empty() {
        Value::Null
    } else {
        match serde_json::from_slice::<Value>(body) {
            Ok(v) => v,
            Err(e) => {
                return (
                    error_response(&ServiceError::bad_parameter(format!(
                        "The request body is not valid JSON: {e}"
                    ))),
                    false,
                );
            }
        }
    };
    // 6. The operation.
    let now = now_secs();
    let result: Result<Answer, ServiceError> = match &route {
        Route::Release { name, version } => release_op(
            shared,
            &base,
            host,
            name,
            version.as_deref(),
            &json_body,
            api_version.unwrap_or("7.4"),
        )
        .await
        .map(|body| Answer {
            status: 200,
            body,
            wrote: false,
        }),
        _ => {
            let mut vaults = lock(&shared.vaults);
            let vault = vaults
                .entry(host.to_owned())
                .or_insert_with(|| Vault::new(kind));
            match &route {
                Route::ListKeys => Ok(vault.list(&base)),
                Route::GetKey { name, version } => vault.get(&base, name, version.as_deref()),
                Route::ListVersions { name } => vault.versions(&base, name),
                Route::Create { name } => vault.create(&base, name, &json_body, now),
                Route::Update { name, version } => {
                    vault.update(&base, name, version.as_deref(), &json_body, now)
                }
                Route::Delete { name } => vault.delete(&base, name, now),
                Route::GetDeleted { name } => vault.get_deleted(&base, name),
                Route::Recover { name } => vault.recover(&base, name),
                Route::Purge { name } => vault.purge(name),
                Route::Release { .. } => unreachable!("handled above"),
            }
        }
    };
    match result {
        Ok(a) => (json_response(a.status, &a.body), a.wrote),
        Err(e) => (error_response(&e), false),
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
async fn fetch_jwks(shared: &Shared, issuer: &str) -> Result<Value, String> {
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

fn dump(shared: &Shared) -> Value {
    let vaults = lock(&shared.vaults);
    let map: serde_json::Map<String, Value> = vaults
        .iter()
        .map(|(host, v)| (host.clone(), v.dump(&format!("https://{host}"))))
        .collect();
    Value::Object(map)
}

fn admin(shared: &Shared, method: &Method, path: &str, host: &str, body: &[u8]) -> Response {
    let bad = |m: String| json_response(400, &json!({"error": m}));
    match (method.as_str(), path) {
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
        ("POST", "/_double/faults") => match serde_json::from_slice::<Fault>(body) {
            Ok(f) => match lock(&shared.faults).add(f) {
                Ok(id) => json_response(201, &json!({"id": id})),
                Err(e) => bad(e.to_string()),
            },
            Err(e) => bad(format!("fault: {e}")),
        },
        ("POST", "/_double/token") => {
            let mut raw: Value = if body.is_empty() {
                json!({})
            } else {
                match serde_json::from_slice(body) {
                    Ok(v) => v,
                    Err(e) => return bad(format!("token request: {e}")),
                }
            };
            if raw.get("issuer_host").is_none() && is_attestation_host(host) {
                raw["issuer_host"] = host.into();
            }
            match serde_json::from_value::<TokenRequest>(raw) {
                Ok(req) => match shared.attestation.mint(&req, now_secs()) {
                    Ok(token) => json_response(200, &json!({"token": token})),
                    Err(e) => json_response(500, &json!({"error": e.to_string()})),
                },
                Err(e) => bad(format!("token request: {e}")),
            }
        }
        _ => json_response(
            404,
            &json!({"error": format!("no admin route {method} {path}")}),
        ),
    }
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
