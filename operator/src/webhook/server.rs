//! The HTTPS admission server: a thin axum adapter over [`super::review::handle`] and
//! [`super::sources::admit`].

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum_server::tls_rustls::RustlsConfig;
use http_body_util::{BodyExt as _, LengthLimitError, Limited};

use super::metrics::WebhookMetrics;
use super::mutate::SidecarDefaults;
use super::review::{self, Answer};
use super::sources::{self, Sources};

/// Readiness of the webhook, shared with the operator's probe server: ready once a certificate is
/// loaded, the HTTPS listener is accepting, and the caches have their first listing.
#[derive(Clone, Default)]
pub struct WebhookState {
    inner: Arc<StateInner>,
}

#[derive(Default)]
struct StateInner {
    tls_loaded: AtomicBool,
    listening: AtomicBool,
    sources: OnceLock<Arc<dyn Sources>>,
}

impl std::fmt::Debug for WebhookState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookState")
            .field("tls_loaded", &self.inner.tls_loaded.load(Ordering::Relaxed))
            .field("listening", &self.inner.listening.load(Ordering::Relaxed))
            .finish()
    }
}

impl WebhookState {
    /// A state that is not ready.
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether the webhook can answer admissions: certificate served and caches synced.
    pub fn is_ready(&self) -> bool {
        self.inner.tls_loaded.load(Ordering::Acquire)
            && self.inner.listening.load(Ordering::Acquire)
            && self.inner.sources.get().is_none_or(|s| s.ready())
    }

    /// Marks a certificate as loaded into the TLS configuration.
    pub fn set_tls_loaded(&self) {
        self.inner.tls_loaded.store(true, Ordering::Release);
    }

    pub(crate) fn set_listening(&self, on: bool) {
        self.inner.listening.store(on, Ordering::Release);
    }

    pub(crate) fn set_sources(&self, sources: Arc<dyn Sources>) {
        let _ = self.inner.sources.set(sources);
    }
}

/// Everything the admission handler needs.
pub struct Admission {
    /// Bindings and policies.
    pub sources: Arc<dyn Sources>,
    /// Sidecar defaults.
    pub defaults: SidecarDefaults,
    /// Runtime classes that mark a confidential pod.
    pub confidential_runtime_classes: Vec<String>,
    /// Metrics.
    pub metrics: WebhookMetrics,
    /// Readiness.
    pub state: WebhookState,
    /// Largest accepted request body, in bytes.
    pub max_body_bytes: usize,
    /// Longest time to receive a request body.
    pub body_timeout: Duration,
}

/// The router: `POST /mutate`, `POST /mutate-psa-refused` (see [`super::psa`]), `GET /healthz`,
/// `GET /readyz`.
pub fn router(admission: Arc<Admission>) -> Router {
    admission.state.set_sources(admission.sources.clone());
    Router::new()
        .route("/mutate", post(mutate))
        .route(super::psa::PATH, post(mutate_psa_refused))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .with_state(admission)
}

async fn readyz(State(adm): State<Arc<Admission>>) -> Response {
    if adm.state.is_ready() {
        (StatusCode::OK, "ready").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready").into_response()
    }
}

fn to_response(a: Answer) -> Response {
    let status = StatusCode::from_u16(a.http_status).unwrap_or(StatusCode::BAD_REQUEST);
    (status, [(header::CONTENT_TYPE, "application/json")], a.body).into_response()
}

async fn mutate(State(adm): State<Arc<Admission>>, body: Body) -> Response {
    admission(adm, body, false).await
}

/// For namespaces whose Pod Security level refuses the sidecar's volume (the chart routes only
/// those here): pods that would be injected are refused with the reason.
async fn mutate_psa_refused(State(adm): State<Arc<Admission>>, body: Body) -> Response {
    admission(adm, body, true).await
}

async fn admission(adm: Arc<Admission>, body: Body, psa_refuses: bool) -> Response {
    let start = Instant::now();
    let collected = tokio::time::timeout(
        adm.body_timeout,
        Limited::new(body, adm.max_body_bytes).collect(),
    )
    .await;
    let answer = match collected {
        Err(_) => review::invalid(
            None,
            &format!(
                "the request body did not arrive within {:?}",
                adm.body_timeout
            ),
            408,
        ),
        Ok(Err(e)) if e.downcast_ref::<LengthLimitError>().is_some() => review::invalid(
            None,
            &format!(
                "the request body is larger than {} bytes",
                adm.max_body_bytes
            ),
            413,
        ),
        Ok(Err(e)) => review::invalid(None, &format!("cannot read the request body: {e}"), 400),
        Ok(Ok(collected)) => {
            let bytes = collected.to_bytes();
            review::handle(&bytes, |req| {
                let d = sources::admit(
                    adm.sources.as_ref(),
                    &adm.defaults,
                    &adm.confidential_runtime_classes,
                    req,
                );
                let d = if psa_refuses {
                    super::psa::refuse_injection(d, &req.namespace)
                } else {
                    d
                };
                tracing::info!(
                    uid = %req.uid,
                    namespace = %req.namespace,
                    decision = match &d {
                        super::mutate::Decision::Allow { .. } => "allow",
                        super::mutate::Decision::Patch { .. } => "patch",
                        super::mutate::Decision::Deny { .. } => "deny",
                    },
                    "pod admission"
                );
                d
            })
        }
    };
    if answer.outcome == review::Outcome::Invalid {
        tracing::warn!(
            http_status = answer.http_status,
            "invalid admission request"
        );
    }
    adm.metrics
        .observe(answer.outcome, start.elapsed().as_secs_f64());
    to_response(answer)
}

/// Serves `router` over TLS on an already bound listener until `shutdown` resolves, then drains
/// connections for up to 10 s. Readiness turns on once the listener accepts.
pub async fn serve_tls(
    listener: std::net::TcpListener,
    router: Router,
    tls: RustlsConfig,
    state: WebhookState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    listener.set_nonblocking(true)?;
    let handle = axum_server::Handle::new();
    let server = axum_server::from_tcp_rustls(listener, tls)?
        .handle(handle.clone())
        .first_request_timeout(Duration::from_secs(10));
    let h = handle.clone();
    tokio::spawn(async move {
        shutdown.await;
        h.graceful_shutdown(Some(Duration::from_secs(10)));
    });
    let s = state.clone();
    let h = handle.clone();
    tokio::spawn(async move {
        if h.listening().await.is_some() {
            s.set_listening(true);
        }
    });
    let result = server.serve(router.into_make_service()).await;
    state.set_listening(false);
    result
}
