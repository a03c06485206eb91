//! The HTTPS admission server: a thin axum adapter over [`super::review::handle`] and
//! [`super::sources::admit`].

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum_server::accept::NoDelayAcceptor;
use axum_server::tls_rustls::{RustlsAcceptor, RustlsConfig};
use http_body_util::{BodyExt as _, LengthLimitError, Limited};
use hyper::body::{Frame, SizeHint};

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
    let body = Body::new(Chunks::new(a.body.into_chunks()));
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

/// A response body sent as a few shared buffers (see [`review::AnswerBody`]), one frame each, with
/// its exact length, so that HTTP/1.1 answers carry a `Content-Length` (not chunked encoding) and
/// HTTP/2 ones a `content-length`, as a one-buffer body would.
// NB: hand-written: http-body-util has no body of several buffers with a known length (its
// `StreamBody` reports none, so hyper would send the answer chunked), and copying the parts into
// one buffer is the per-admission copy of the policy this body exists to avoid.
struct Chunks {
    chunks: std::collections::VecDeque<Bytes>,
    remaining: u64,
}

impl Chunks {
    fn new(chunks: Vec<Bytes>) -> Self {
        Self {
            remaining: chunks.iter().map(|c| c.len() as u64).sum(),
            chunks: chunks.into_iter().filter(|c| !c.is_empty()).collect(),
        }
    }
}

impl hyper::body::Body for Chunks {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        let next = this.chunks.pop_front();
        if let Some(chunk) = &next {
            this.remaining -= chunk.len() as u64;
        }
        Poll::Ready(next.map(|chunk| Ok(Frame::data(chunk))))
    }

    fn is_end_stream(&self) -> bool {
        self.chunks.is_empty()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.remaining)
    }
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
            review::handle(&bytes, async |req| {
                let d = sources::admit(
                    adm.sources.as_ref(),
                    &adm.defaults,
                    &adm.confidential_runtime_classes,
                    req,
                )
                .await;
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
            .await
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

/// How every accepted connection is set up: `TCP_NODELAY`, then the TLS handshake.
///
/// Without `TCP_NODELAY` a patch response that spans several TCP segments ends with a short
/// segment that Nagle's algorithm holds back until the client acknowledges the previous ones, and
/// the client delays that acknowledgement (up to 40 ms on Linux): the webhook's p99 was about
/// 43 ms even on one connection (docs/benchmarks.md). The API server's own listener sets it too.
pub(crate) fn acceptor(tls: RustlsConfig) -> RustlsAcceptor<NoDelayAcceptor> {
    RustlsAcceptor::new(tls).acceptor(NoDelayAcceptor::new())
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
    let server = axum_server::from_tcp(listener)?
        .acceptor(acceptor(tls))
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

#[cfg(test)]
mod tests {
    use axum_server::accept::Accept as _;
    use tokio::net::TcpListener;

    use super::*;

    /// The connection the server hands to HTTP has `TCP_NODELAY` set, after the TLS handshake
    /// with a real client (the same acceptor `serve_tls` uses).
    #[tokio::test]
    async fn accepted_connections_have_tcp_nodelay() {
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
        let tls = RustlsConfig::from_pem(
            cert.cert.pem().into_bytes(),
            cert.signing_key.serialize_pem().into_bytes(),
        )
        .await
        .unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let client = reqwest::Client::builder()
            .tls_danger_accept_invalid_certs(true)
            .timeout(Duration::from_secs(5))
            .build()
            .unwrap();
        // The client completes the handshake and then waits for an answer nobody sends.
        let request = tokio::spawn(async move {
            let _ = client
                .get(format!("https://localhost:{}/", addr.port()))
                .send()
                .await;
        });
        let (tcp, _) = listener.accept().await.unwrap();
        assert!(!tcp.nodelay().unwrap(), "a fresh socket starts without it");
        let (tls_stream, _service) = acceptor(tls).accept(tcp, ()).await.unwrap();
        let (socket, session) = tls_stream.get_ref();
        assert!(!session.is_handshaking());
        assert!(
            socket.nodelay().unwrap(),
            "TCP_NODELAY on the accepted socket"
        );
        request.abort();
    }

    /// A patch answer, sent in parts (the prepared policy's buffer in the middle), goes out as one
    /// HTTP/1.1 body with its exact `Content-Length`, not chunked, and is the same bytes as the
    /// answer in one buffer.
    #[tokio::test]
    async fn a_patch_answer_goes_out_with_its_length_and_its_bytes() {
        use crate::webhook::sources::{self, MapSources};
        const REVIEW: &str =
            include_str!("../../tests/data/admission/pod-create-confidential.json");
        const BINDINGS: &str = include_str!("../../tests/data/admission/bindings.yaml");
        let rego = "package agent_policy\ndefault CreateContainerRequest := true\n".repeat(3000);
        let mut map =
            MapSources::default().with_policy("payments", "orders-policy", "policy.rego", &rego);
        for b in serde_saphyr::from_multiple(BINDINGS).unwrap() {
            map = map.with_binding(b);
        }
        let classes = vec!["kata-cc-isolation".to_string()];
        let expected = review::handle(REVIEW.as_bytes(), async |req| {
            sources::admit(&map, &SidecarDefaults::default(), &classes, req).await
        })
        .await;
        assert_eq!(expected.outcome, review::Outcome::Patched);
        assert_eq!(expected.body.chunks().len(), 3, "sent in parts");
        let admission = Arc::new(Admission {
            sources: Arc::new(map),
            defaults: SidecarDefaults::default(),
            confidential_runtime_classes: classes,
            metrics: WebhookMetrics::default(),
            state: WebhookState::new(),
            max_body_bytes: 1 << 20,
            body_timeout: Duration::from_secs(5),
        });
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(axum::serve(listener, router(admission)).into_future());
        let response = reqwest::Client::new()
            .post(format!("http://{addr}/mutate"))
            .header(header::CONTENT_TYPE, "application/json")
            .body(REVIEW)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.version(), reqwest::Version::HTTP_11);
        let headers = response.headers().clone();
        assert_eq!(
            headers[header::CONTENT_LENGTH],
            expected.body.len().to_string()
        );
        assert!(
            headers.get(header::TRANSFER_ENCODING).is_none(),
            "{headers:?}"
        );
        let body = response.bytes().await.unwrap();
        assert_eq!(body.as_ref(), expected.body.to_vec().as_slice());
        server.abort();
    }
}
