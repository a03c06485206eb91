//! Logging, the metrics registry, and the probe/metrics HTTP server.
//!
//! Every part of the operator registers its metrics (named `ckb_*`) in one [`Registry`], served at
//! `/metrics`. `/healthz` answers while the process runs; `/readyz` answers 200 only when every
//! registered readiness check is true (caches synced, webhook certificate served).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;

/// Errors of the telemetry set-up.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The log filter is invalid.
    #[error("invalid log level {0:?}: {1}")]
    LogLevel(String, String),
    /// A global subscriber was already installed.
    #[error("logging already initialised: {0}")]
    AlreadyInitialised(String),
    /// The HTTP server could not bind or failed.
    #[error("metrics server on {addr}: {source}")]
    Serve {
        /// Address.
        addr: SocketAddr,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
}

/// Logging and probe settings of `ckb-operator run`.
#[derive(Debug, Clone, clap::Args)]
pub struct TelemetryArgs {
    /// Address of the `/metrics`, `/healthz` and `/readyz` HTTP server.
    #[arg(long, env = "CKB_METRICS_ADDR", default_value = "0.0.0.0:8080")]
    pub metrics_addr: SocketAddr,
    /// Log format.
    #[arg(long, env = "CKB_LOG_FORMAT", value_enum, default_value = "json")]
    pub log_format: LogFormat,
    /// Log filter: a level (`info`) or per-module directives (`info,ckb_operator=debug`).
    #[arg(long, env = "CKB_LOG_LEVEL", default_value = "info")]
    pub log_level: String,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// One JSON object per line (for log collectors).
    Json,
    /// Human-readable text.
    Text,
}

/// Installs the global `tracing` subscriber. `level` is an `EnvFilter` directive
/// (`info`, `ckb_operator=debug,kube=warn`, ...).
pub fn init_logging(format: LogFormat, level: &str) -> Result<(), Error> {
    use tracing_subscriber::EnvFilter;
    let filter =
        EnvFilter::try_new(level).map_err(|e| Error::LogLevel(level.into(), e.to_string()))?;
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    let result = match format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .try_init(),
        LogFormat::Text => builder.try_init(),
    };
    result.map_err(|e| Error::AlreadyInitialised(e.to_string()))
}

/// Labels of `ckb_reconciles_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    /// `ok` (converged or nothing to do) or `error` (retried with backoff).
    pub result: String,
}

/// Labels of `ckb_bindings`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReadyLabels {
    /// `"true"` or `"false"`.
    pub ready: String,
}

/// Labels of the per-binding series `ckb_binding_ready`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, PartialOrd, Ord, EncodeLabelSet)]
pub struct BindingLabels {
    /// The binding's namespace.
    pub namespace: String,
    /// The binding's name.
    pub name: String,
    /// Why it is (not) Ready: `Ready`, or the cause's reason from the condition vocabulary (the
    /// `Stalled` or `Reconciling` reason), or `Unknown` before the operator wrote a status.
    pub reason: String,
}

/// One binding as the per-binding series show it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BindingState {
    /// Namespace, name and reason.
    pub labels: BindingLabels,
    /// Whether its Ready condition is true.
    pub ready: bool,
    /// Matching confidential pods running without the sidecar (`status.uninjectedPods`).
    pub uninjected_pods: i64,
}

/// Labels of `ckb_binding_uninjected_pods`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, PartialOrd, Ord, EncodeLabelSet)]
pub struct BindingRefLabels {
    /// The binding's namespace.
    pub namespace: String,
    /// The binding's name.
    pub name: String,
}

/// The controller's metrics.
#[derive(Debug, Clone)]
pub struct ControllerMetrics {
    /// `ckb_reconciles_total{result}`.
    pub reconciles: Family<ResultLabels, Counter>,
    /// `ckb_reconcile_duration_seconds`.
    pub duration: Histogram,
    /// `ckb_bindings{ready}`.
    pub bindings: Family<ReadyLabels, Gauge>,
    /// `ckb_binding_ready{namespace,name,reason}`: 1 when Ready, else 0; one series per binding.
    pub binding_ready: Family<BindingLabels, Gauge>,
    /// `ckb_binding_uninjected_pods{namespace,name}`: matching confidential pods without the
    /// sidecar (admitted before the binding existed or while the webhook was down).
    pub binding_uninjected: Family<BindingRefLabels, Gauge>,
    /// The label sets last written, so series of deleted bindings (or of a reason no longer
    /// current) are removed: cardinality stays at one series per live binding.
    shown: Arc<Mutex<BTreeMap<BindingRefLabels, BindingLabels>>>,
}

impl ControllerMetrics {
    /// Creates the metrics and registers them in `registry` under their full `ckb_*` names (the
    /// registry adds no prefix; the Key Vault client and the webhook name theirs the same way).
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self {
            reconciles: Family::default(),
            duration: Histogram::new(exponential_buckets(0.005, 2.0, 14)),
            bindings: Family::default(),
            binding_ready: Family::default(),
            binding_uninjected: Family::default(),
            shown: Arc::default(),
        };
        registry.register(
            "ckb_reconciles",
            "Reconciles of bindings by result",
            m.reconciles.clone(),
        );
        registry.register(
            "ckb_reconcile_duration_seconds",
            "Duration of one reconcile of one binding",
            m.duration.clone(),
        );
        registry.register(
            "ckb_bindings",
            "Bindings by their Ready condition",
            m.bindings.clone(),
        );
        registry.register(
            "ckb_binding_ready",
            "Per binding: 1 when its Ready condition is true, else 0; reason is Ready or the \
             Stalled/Reconciling cause (one series per binding)",
            m.binding_ready.clone(),
        );
        registry.register(
            "ckb_binding_uninjected_pods",
            "Per binding: matching confidential pods running without the sidecar (restart them)",
            m.binding_uninjected.clone(),
        );
        m
    }

    /// Replaces the per-binding series with `states` (every live binding): sets each one's
    /// series and removes those of bindings that are gone or whose reason changed.
    pub fn set_binding_states(&self, states: impl IntoIterator<Item = BindingState>) {
        let mut shown = self.shown.lock().unwrap_or_else(|e| e.into_inner());
        let mut now: BTreeMap<BindingRefLabels, BindingLabels> = BTreeMap::new();
        for st in states {
            let key = BindingRefLabels {
                namespace: st.labels.namespace.clone(),
                name: st.labels.name.clone(),
            };
            self.binding_ready
                .get_or_create(&st.labels)
                .set(i64::from(st.ready));
            self.binding_uninjected
                .get_or_create(&key)
                .set(st.uninjected_pods);
            now.insert(key, st.labels);
        }
        for (key, labels) in shown.iter() {
            match now.get(key) {
                Some(l) if l == labels => {}
                Some(_) => {
                    self.binding_ready.remove(labels);
                }
                None => {
                    self.binding_ready.remove(labels);
                    self.binding_uninjected.remove(key);
                }
            }
        }
        *shown = now;
    }

    /// Records one reconcile.
    pub fn reconciled(&self, ok: bool, seconds: f64) {
        let result = if ok { "ok" } else { "error" }.to_string();
        self.reconciles
            .get_or_create(&ResultLabels { result })
            .inc();
        self.duration.observe(seconds);
    }

    /// Sets the number of bindings that are and are not Ready.
    pub fn set_bindings(&self, ready: i64, not_ready: i64) {
        self.bindings
            .get_or_create(&ReadyLabels {
                ready: "true".into(),
            })
            .set(ready);
        self.bindings
            .get_or_create(&ReadyLabels {
                ready: "false".into(),
            })
            .set(not_ready);
    }
}

/// A new registry for every part's metrics. It adds no prefix: each metric is registered under
/// its full `ckb_*` name.
pub fn registry() -> Registry {
    Registry::default()
}

/// Named readiness checks; the process is ready when all are true.
#[derive(Debug, Clone, Default)]
pub struct Readiness {
    checks: Arc<Mutex<BTreeMap<&'static str, bool>>>,
}

impl Readiness {
    /// Declares a check (not ready until [`Readiness::set`] says so).
    pub fn require(&self, name: &'static str) {
        self.lock().entry(name).or_insert(false);
    }

    /// Sets a check.
    pub fn set(&self, name: &'static str, ready: bool) {
        self.lock().insert(name, ready);
    }

    /// The checks that are not true.
    pub fn failing(&self) -> Vec<&'static str> {
        self.lock()
            .iter()
            .filter(|(_, ok)| !**ok)
            .map(|(n, _)| *n)
            .collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<&'static str, bool>> {
        self.checks.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[derive(Clone)]
struct ServerState {
    registry: Arc<Registry>,
    readiness: Readiness,
}

/// The `/metrics`, `/healthz`, `/readyz` router.
pub fn router(registry: Arc<Registry>, readiness: Readiness) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .with_state(ServerState {
            registry,
            readiness,
        })
}

async fn metrics(State(s): State<ServerState>) -> impl IntoResponse {
    let mut body = String::new();
    match prometheus_client::encoding::text::encode(&mut body, &s.registry) {
        Ok(()) => (
            StatusCode::OK,
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            body,
        )
            .into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

async fn readyz(State(s): State<ServerState>) -> impl IntoResponse {
    let failing = s.readiness.failing();
    if failing.is_empty() {
        (StatusCode::OK, "ok".to_string())
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {}", failing.join(", ")),
        )
    }
}

/// Serves the probe/metrics router on `addr` until `shutdown` is cancelled. Returns the bound
/// address through `bound` (useful with port 0).
pub async fn serve(
    addr: SocketAddr,
    router: Router,
    shutdown: CancellationToken,
    bound: Option<tokio::sync::oneshot::Sender<SocketAddr>>,
) -> Result<(), Error> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| Error::Serve { addr, source })?;
    let local = listener
        .local_addr()
        .map_err(|source| Error::Serve { addr, source })?;
    if let Some(tx) = bound {
        let _ = tx.send(local);
    }
    tracing::info!(%local, "serving /metrics, /healthz, /readyz");
    axum::serve(listener, router)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
        .map_err(|source| Error::Serve { addr, source })
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    async fn get_text(router: Router, path: &str) -> (StatusCode, String) {
        let resp = router
            .oneshot(
                axum::http::Request::builder()
                    .uri(path)
                    .body(Body::empty())
                    .unwrap(),
            )
            .await
            .unwrap();
        let status = resp.status();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8(body.to_vec()).unwrap())
    }

    #[tokio::test]
    async fn metrics_are_served_with_the_prefix() {
        let mut reg = registry();
        let m = ControllerMetrics::register(&mut reg);
        m.reconciled(true, 0.01);
        m.reconciled(false, 0.2);
        m.set_bindings(3, 1);
        let r = router(Arc::new(reg), Readiness::default());
        let (status, body) = get_text(r, "/metrics").await;
        assert_eq!(status, StatusCode::OK);
        assert!(
            body.contains("ckb_reconciles_total{result=\"ok\"} 1"),
            "{body}"
        );
        assert!(
            body.contains("ckb_reconciles_total{result=\"error\"} 1"),
            "{body}"
        );
        assert!(
            body.contains("ckb_reconcile_duration_seconds_count 2"),
            "{body}"
        );
        assert!(body.contains("ckb_bindings{ready=\"true\"} 3"), "{body}");
    }

    fn state(ns: &str, name: &str, reason: &str, ready: bool) -> BindingState {
        BindingState {
            labels: BindingLabels {
                namespace: ns.into(),
                name: name.into(),
                reason: reason.into(),
            },
            ready,
            uninjected_pods: 0,
        }
    }

    #[tokio::test]
    async fn per_binding_series_follow_the_bindings_and_are_removed_with_them() {
        let mut reg = registry();
        let m = ControllerMetrics::register(&mut reg);
        let reg = Arc::new(reg);
        let r = router(reg.clone(), Readiness::default());
        m.set_binding_states([
            state("a", "one", "KeyVaultThrottled", false),
            state("b", "two", "Ready", true),
        ]);
        let (_, body) = get_text(r.clone(), "/metrics").await;
        assert!(
            body.contains(
                r#"ckb_binding_ready{namespace="a",name="one",reason="KeyVaultThrottled"} 0"#
            ),
            "{body}"
        );
        assert!(
            body.contains(r#"ckb_binding_ready{namespace="b",name="two",reason="Ready"} 1"#),
            "{body}"
        );
        // "one" becomes Ready (its old reason's series goes), "two" is deleted.
        let mut one = state("a", "one", "Ready", true);
        one.uninjected_pods = 2;
        m.set_binding_states([one]);
        let (_, body) = get_text(r, "/metrics").await;
        assert!(
            body.contains(r#"ckb_binding_ready{namespace="a",name="one",reason="Ready"} 1"#),
            "{body}"
        );
        assert!(
            body.contains(r#"ckb_binding_uninjected_pods{namespace="a",name="one"} 2"#),
            "{body}"
        );
        assert!(!body.contains("KeyVaultThrottled"), "{body}");
        assert!(!body.contains(r#"name="two""#), "{body}");
    }

    #[tokio::test]
    async fn readyz_waits_for_every_check() {
        let ready = Readiness::default();
        ready.require("caches");
        ready.require("webhook-certificate");
        let r = router(Arc::new(registry()), ready.clone());
        let (status, body) = get_text(r.clone(), "/readyz").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(body.contains("caches") && body.contains("webhook-certificate"));
        ready.set("caches", true);
        ready.set("webhook-certificate", true);
        assert_eq!(get_text(r.clone(), "/readyz").await.0, StatusCode::OK);
        assert_eq!(get_text(r, "/healthz").await.0, StatusCode::OK);
    }
}
