//! The mutating admission webhook: pure pod mutation, its HTTPS server, and its certificates.
//!
//! - [`mutate`]: the pure decision (what a confidential pod must become), also used by `render`;
//!   its steps are in `inject`, binding selection in [`select`].
//! - [`policy`]: the agent policy prepared once per ConfigMap version (hash, annotation, encoding).
//! - [`review`]: the AdmissionReview wire format (parse, answer), pure.
//! - [`sources`]: where bindings and policies come from (reflector stores; a policy's text fetched
//!   once per ConfigMap version and kept in a cache bounded in bytes).
//! - [`server`]: the axum router and the TLS server; readiness ([`WebhookState`]).
//! - [`certs`]: self-managed CA + serving certificate in a Secret, `caBundle`, rotation; or mounted
//!   certificates (cert-manager).
//! - [`metrics`]: `ckb_admissions_total{result}`, `ckb_admission_duration_seconds`.
//!
//! Entry point for `ckb-operator run`: [`serve`], wired like this (every replica):
//!
//! ```text
//! let sources = Arc::new(StoreSources::new(caches.bindings.clone(), caches.config_maps.clone(), client.clone()));
//! let metrics = WebhookMetrics::default();
//! metrics.register(&mut registry);            // unprefixed registry: names carry `ckb_`
//! let state = WebhookState::new();            // the probe server's /readyz asks state.is_ready()
//! tokio::spawn(webhook::serve(args.webhook, Some(client.clone()), sources, metrics, state.clone(), shutdown));
//! ```
//!
//! Names the chart needs (all overridable by flags):
//! - listen address `--webhook-addr` (default `0.0.0.0:9443`), path `POST /mutate`, probes
//!   `GET /healthz`, `GET /readyz` on the same HTTPS port;
//! - Secret `--webhook-secret` (default `ckb-operator-webhook-tls`) in `--webhook-namespace`; the
//!   operator needs `get`, `create`, `update` on that Secret (create cannot be limited by name);
//! - MutatingWebhookConfiguration `--webhook-config-name` (default `ckb-operator`); the operator
//!   needs `get`, `patch` on it (it patches `clientConfig.caBundle` of every webhook entry);
//! - Service `--webhook-service` (default `ckb-operator-webhook`): the certificate names
//!   `<service>.<namespace>.svc` and `<service>.<namespace>.svc.cluster.local` unless
//!   `--webhook-cert-hosts` is given;
//! - cert-manager mode: `--webhook-cert-dir` with `tls.crt` and `tls.key`; nothing is written then.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum_server::tls_rustls::RustlsConfig;

use crate::crds::SidecarLogLevel;

pub mod certs;
pub mod identity;
mod inject;
mod injected;
pub mod metrics;
pub mod mutate;
mod pod_json;
pub mod policy;
pub mod psa;
pub mod review;
pub mod select;
pub mod server;
pub mod sources;

#[cfg(test)]
mod args_tests;
#[cfg(test)]
mod mutate_tests;
#[cfg(test)]
mod policy_tests;
#[cfg(test)]
mod review_tests;

pub use metrics::WebhookMetrics;
pub use mutate::{Decision, MatchedBinding, SidecarDefaults, decide};
pub use server::WebhookState;
pub use sources::{MapSources, Sources, StoreSources};

/// Errors of the webhook server.
#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    /// Binding the listen address failed.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The TLS server failed.
    #[error("webhook server: {0}")]
    Serve(#[source] std::io::Error),
    /// Certificates could not be set up.
    #[error("webhook certificates: {0}")]
    Certs(#[from] certs::CertError),
    /// Self-managed certificates need a Kubernetes client.
    #[error(
        "self-managed webhook certificates need a Kubernetes client (or use --webhook-cert-dir)"
    )]
    NoClient,
}

fn parse_log_level(s: &str) -> Result<SidecarLogLevel, String> {
    serde_json::from_value(serde_json::Value::String(s.to_ascii_lowercase()))
        .map_err(|_| format!("{s:?}: expected trace, debug, info, warning, error, fatal or panic"))
}

/// `--confidential-runtime-class`, declared once for `run`, `render` and `doctor` (which gives it
/// its own variable with `mut_arg`).
#[derive(Debug, Clone, clap::Args)]
pub struct RuntimeClassArgs {
    /// Runtime classes that mark a confidential pod; only such pods are ever changed.
    #[arg(
        long = "confidential-runtime-class",
        env = "CKB_CONFIDENTIAL_RUNTIME_CLASSES",
        value_delimiter = ',',
        default_value = mutate::DEFAULT_CONFIDENTIAL_RUNTIME_CLASS
    )]
    pub confidential_runtime_classes: Vec<String>,
}

/// What the mutation injects; shared by `run` (the webhook) and `render`.
#[derive(Debug, Clone, clap::Args)]
pub struct MutationArgs {
    /// Which pods are confidential.
    #[command(flatten)]
    pub runtime: RuntimeClassArgs,
    /// SKR sidecar image (pin a digest in production).
    #[arg(long = "sidecar-image", env = "CKB_SIDECAR_IMAGE", default_value = mutate::DEFAULT_SIDECAR_IMAGE)]
    pub sidecar_image: String,
    /// Port the SKR sidecar listens on, on the pod's loopback.
    #[arg(long = "sidecar-port", env = "CKB_SIDECAR_PORT", default_value_t = mutate::DEFAULT_SIDECAR_PORT)]
    pub sidecar_port: u16,
    /// SKR sidecar log level: trace, debug, info, warning, error, fatal, panic.
    #[arg(long = "sidecar-log-level", env = "CKB_SIDECAR_LOG_LEVEL", default_value = "warning", value_parser = parse_log_level)]
    pub sidecar_log_level: SidecarLogLevel,
}

impl MutationArgs {
    /// The sidecar defaults these flags describe.
    pub fn defaults(&self) -> SidecarDefaults {
        SidecarDefaults {
            image: self.sidecar_image.clone(),
            port: self.sidecar_port,
            log_level: self.sidecar_log_level,
            resources: None,
        }
    }
}

/// Webhook settings of `ckb-operator run`.
#[derive(Debug, Clone, clap::Args)]
pub struct WebhookArgs {
    /// Address the HTTPS admission server listens on.
    #[arg(
        long = "webhook-addr",
        env = "CKB_WEBHOOK_ADDR",
        default_value = "0.0.0.0:9443"
    )]
    pub addr: SocketAddr,
    /// Directory with mounted `tls.crt` and `tls.key` (cert-manager); when set, the operator does
    /// not manage certificates itself.
    #[arg(long = "webhook-cert-dir", env = "CKB_WEBHOOK_CERT_DIR")]
    pub cert_dir: Option<PathBuf>,
    /// Secret (in the webhook namespace) holding the self-managed CA and serving certificate.
    #[arg(
        long = "webhook-secret",
        env = "CKB_WEBHOOK_SECRET",
        default_value = "ckb-operator-webhook-tls"
    )]
    pub secret: String,
    /// MutatingWebhookConfiguration whose caBundle the operator keeps.
    #[arg(
        long = "webhook-config-name",
        env = "CKB_WEBHOOK_CONFIG_NAME",
        default_value = "ckb-operator"
    )]
    pub config_name: String,
    /// Service in front of the webhook (names the default certificate hosts).
    #[arg(
        long = "webhook-service",
        env = "CKB_WEBHOOK_SERVICE",
        default_value = "ckb-operator-webhook"
    )]
    pub service: String,
    /// Namespace of the operator (Secret, Service); by default the pod's own namespace.
    #[arg(long = "webhook-namespace", env = "CKB_WEBHOOK_NAMESPACE")]
    pub namespace: Option<String>,
    /// Names (DNS or IP) of the serving certificate, comma-separated; by default
    /// `<service>.<namespace>.svc` and `<service>.<namespace>.svc.cluster.local`. Add `127.0.0.1`
    /// for a webhook reached by URL on loopback (local development).
    #[arg(
        long = "webhook-cert-hosts",
        env = "CKB_WEBHOOK_CERT_HOSTS",
        value_delimiter = ','
    )]
    pub cert_hosts: Vec<String>,
    /// How often to re-check the certificates and the caBundle (e.g. `30s`, `2m`; a bare number
    /// is seconds, so the former `--webhook-cert-check-seconds` still works as an alias).
    #[arg(
        long = "webhook-cert-check-interval",
        alias = "webhook-cert-check-seconds",
        env = "CKB_WEBHOOK_CERT_CHECK_INTERVAL",
        default_value = "30s",
        value_parser = crate::duration::parse_duration
    )]
    pub cert_check_interval: Duration,
    /// Largest accepted AdmissionReview body, in bytes.
    #[arg(long = "webhook-max-body-bytes", env = "CKB_WEBHOOK_MAX_BODY_BYTES", default_value_t = 4 * 1024 * 1024)]
    pub max_body_bytes: usize,
    /// Longest time to receive a request body (e.g. `10s`; a bare number is seconds, so the
    /// former `--webhook-body-timeout-seconds` still works as an alias).
    #[arg(
        long = "webhook-body-timeout",
        alias = "webhook-body-timeout-seconds",
        env = "CKB_WEBHOOK_BODY_TIMEOUT",
        default_value = "10s",
        value_parser = crate::duration::parse_duration
    )]
    pub body_timeout: Duration,
    /// What the mutation injects.
    #[command(flatten)]
    pub mutation: MutationArgs,
}

impl WebhookArgs {
    /// The operator's namespace: the flag (`ckb-operator run` sets it from the client's default
    /// namespace, the pod's own in the cluster, when it is not given), else `ckb-system`.
    pub fn namespace(&self) -> String {
        self.namespace
            .clone()
            .unwrap_or_else(|| "ckb-system".to_string())
    }

    /// The serving certificate's names.
    pub fn hosts(&self) -> Vec<String> {
        if !self.cert_hosts.is_empty() {
            return self.cert_hosts.clone();
        }
        let ns = self.namespace();
        vec![
            format!("{}.{ns}.svc", self.service),
            format!("{}.{ns}.svc.cluster.local", self.service),
        ]
    }
}

/// Runs the webhook until `shutdown` resolves: gets a certificate (self-managed through `client`,
/// or from `--webhook-cert-dir`), keeps it fresh, serves `/mutate` over HTTPS. `state` turns ready
/// once a certificate is served and `sources` are synced; pass the same `state` to the probe server.
pub async fn serve(
    args: WebhookArgs,
    client: Option<kube::Client>,
    sources: Arc<dyn Sources>,
    metrics: WebhookMetrics,
    state: WebhookState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), WebhookError> {
    // The certificate tasks end with this function.
    let cert_tasks = tokio_util::sync::CancellationToken::new();
    let _end_cert_tasks = cert_tasks.clone().drop_guard();
    let tls = match &args.cert_dir {
        Some(dir) => {
            let (crt, key) = certs::read_cert_dir(dir)?;
            let tls = RustlsConfig::from_pem(crt, key)
                .await
                .map_err(certs::CertError::Io)?;
            tokio::spawn(certs::watch_cert_dir(
                dir.clone(),
                tls.clone(),
                Duration::from_secs(10),
                cert_tasks.clone(),
            ));
            tls
        }
        None => {
            let client = client.ok_or(WebhookError::NoClient)?;
            let cfg = certs::SelfManaged {
                namespace: args.namespace(),
                secret: args.secret.clone(),
                webhook_config: args.config_name.clone(),
                hosts: args.hosts(),
                timings: certs::CertTimings::default(),
                check_interval: args.cert_check_interval.max(Duration::from_secs(1)),
            };
            let m = certs::initial_self_managed(&client, &cfg).await;
            let tls =
                RustlsConfig::from_pem(m.tls_crt.clone().into_bytes(), m.tls_key.into_bytes())
                    .await
                    .map_err(certs::CertError::Io)?;
            tokio::spawn(certs::run_self_managed(
                client,
                cfg,
                tls.clone(),
                state.clone(),
                m.tls_crt,
                cert_tasks.clone(),
            ));
            tls
        }
    };
    state.set_tls_loaded();
    let admission = Arc::new(server::Admission {
        sources,
        defaults: args.mutation.defaults(),
        confidential_runtime_classes: args.mutation.runtime.confidential_runtime_classes.clone(),
        metrics,
        state: state.clone(),
        max_body_bytes: args.max_body_bytes,
        body_timeout: args.body_timeout.max(Duration::from_secs(1)),
    });
    let listener = std::net::TcpListener::bind(args.addr).map_err(|source| WebhookError::Bind {
        addr: args.addr,
        source,
    })?;
    tracing::info!(addr = %args.addr, "webhook listening");
    server::serve_tls(listener, server::router(admission), tls, state, shutdown)
        .await
        .map_err(WebhookError::Serve)
}
