//! `bench-webhook`: the admission server alone, for `scripts/bench.sh`, next to its baseline.
//!
//! Modes (`--mode`):
//! - `webhook`: the operator's real router and accept loop (`webhook::server::serve_tls`) over
//!   in-memory sources holding one binding whose ConfigMap carries a 120 KiB agent policy;
//! - `webhook-no-nodelay`: the same router on axum-server's default accept loop, which leaves
//!   Nagle's algorithm on (how the webhook was served before `TCP_NODELAY`), for the before/after;
//! - `baseline`: a trivial HTTPS server on the same stack (axum, axum-server, rustls, aws-lc-rs,
//!   `TCP_NODELAY`) that reads the body and answers the bytes the webhook answers for that body,
//!   computed once at start;
//! - `profile`: no server; answers the request of `--case` (default `patch`, the confidential pod)
//!   `--iterations` times in this process (parse, decide, encode: the handler minus transport) and
//!   exits, for an instruction profile under `valgrind --tool=callgrind` (counts are repeatable on
//!   a noisy machine, where times are not) or `perf record`.
//!
//! It writes the request bodies (`patch.json`: a confidential pod matched by the binding, `allow.json`:
//! a pod that needs no change) into `--out`, prints `port=<port>` once listening, and serves until
//! killed. The load generator is a public tool (h2load), not this program.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum_server::accept::NoDelayAcceptor;
use axum_server::tls_rustls::{RustlsAcceptor, RustlsConfig};
use ckb_operator::crds::ConfidentialKeyBinding;
use ckb_operator::webhook::mutate::SidecarDefaults;
use ckb_operator::webhook::review;
use ckb_operator::webhook::server::{self, Admission};
use ckb_operator::webhook::sources::admit;
use ckb_operator::webhook::{MapSources, WebhookMetrics, WebhookState};
use clap::{Parser, ValueEnum};

const CONFIDENTIAL: &str =
    include_str!("../../../operator/tests/data/admission/pod-create-confidential.json");
const RUNC: &str = include_str!("../../../operator/tests/data/admission/pod-create-runc.json");
const CLASSES: [&str; 1] = ["kata-cc-isolation"];

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Mode {
    Webhook,
    WebhookNoNodelay,
    Baseline,
    Profile,
}

/// The admission server alone, or its baseline, for `scripts/bench.sh`.
#[derive(Parser, Debug)]
struct Args {
    /// What to serve.
    #[arg(long, value_enum)]
    mode: Mode,
    /// Address to listen on (port 0: any free port, printed as `port=<port>`).
    #[arg(long, default_value = "127.0.0.1:0")]
    addr: SocketAddr,
    /// Where to write the request bodies.
    #[arg(long)]
    out: PathBuf,
    /// Size of the agent policy in KiB.
    #[arg(long, default_value_t = 120)]
    policy_kib: usize,
    /// Log each admission as the operator does (JSON lines on stderr).
    #[arg(long)]
    log: bool,
    /// Admissions answered in `--mode profile`.
    #[arg(long, default_value_t = 200)]
    iterations: usize,
    /// The request `--mode profile` answers.
    #[arg(long, value_enum, default_value_t = Case::Patch)]
    case: Case,
}

/// The two benchmark requests.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Case {
    /// A confidential pod matched by the binding: the answer is the policy patch.
    Patch,
    /// A pod that needs no change.
    Allow,
}

/// Rego-like text of about `kib` KiB (genpolicy's output for 1-3 containers is 90-150 KiB).
fn policy(kib: usize) -> String {
    let mut s = String::from("package agent_policy\n\n");
    let mut i = 0;
    while s.len() < kib * 1024 {
        s.push_str(&format!(
            "    {{\"name\": \"rule_{i}\", \"allowed\": [\"/bin/sh\", \"-c\"], \"layer\": \"{i:064x}\"}},\n"
        ));
        i += 1;
    }
    s
}

/// The binding of `operator/tests/data/admission/bindings.yaml` that selects the confidential pod.
fn sources(kib: usize) -> Result<MapSources> {
    let binding: ConfidentialKeyBinding = serde_json::from_value(serde_json::json!({
        "apiVersion": "ckb.dev/v1alpha1",
        "kind": "ConfidentialKeyBinding",
        "metadata": {"name": "orders-key", "namespace": "payments"},
        "spec": {
            "podSelector": {"matchLabels": {"app": "orders"}},
            "key": {"vault": "https://contoso.vault.azure.net", "name": "orders-key"},
            "attestation": {"authority": "https://sharedeus.eus.attest.azure.net"},
            "policy": {"configMapRef": {"name": "orders-policy", "key": "policy.rego"}}
        }
    }))?;
    Ok(MapSources::default()
        .with_policy("payments", "orders-policy", "policy.rego", &policy(kib))
        .with_binding(binding))
}

/// The confidential runtime classes, as the webhook's configuration lists them.
fn classes() -> Vec<String> {
    CLASSES.iter().map(|c| c.to_string()).collect()
}

/// The webhook's state over `sources`, configured as the operator's defaults configure it.
fn admission(sources: MapSources) -> Arc<Admission> {
    Arc::new(Admission {
        sources: Arc::new(sources),
        defaults: SidecarDefaults::default(),
        confidential_runtime_classes: classes(),
        metrics: WebhookMetrics::default(),
        state: WebhookState::new(),
        max_body_bytes: 4 * 1024 * 1024,
        body_timeout: Duration::from_secs(10),
    })
}

/// The webhook's answer to `body` (the handler without transport).
fn handle(sources: &MapSources, classes: &[String], body: &[u8]) -> review::Answer {
    // MapSources answers at once: polled in place, no runtime.
    futures::executor::block_on(review::handle(body, async |req| {
        admit(sources, &SidecarDefaults::default(), classes, req).await
    }))
}

/// The webhook's answer to `body` in one buffer, as the baseline will replay it.
fn answer(sources: &MapSources, body: &[u8]) -> Vec<u8> {
    handle(sources, &classes(), body).body.to_vec()
}

/// The baseline's handler: the answer recorded for the body, or 400 for any other body.
async fn replay(State(answers): State<Arc<HashMap<Bytes, Bytes>>>, body: Bytes) -> Response {
    match answers.get(&body) {
        Some(a) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/json")],
            a.clone(),
        )
            .into_response(),
        None => StatusCode::BAD_REQUEST.into_response(),
    }
}

/// The webhook's answers to the two requests, computed once at start.
struct Answers {
    /// To the confidential pod: the policy patch.
    patch: Vec<u8>,
    /// To the pod that needs no change: an allow without a patch.
    allow: Vec<u8>,
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    if args.log {
        tracing_subscriber::fmt()
            .json()
            .with_writer(std::io::stderr)
            .init();
    }
    let sources = sources(args.policy_kib)?;
    let answers = checked_answers(&sources)?;
    if args.mode == Mode::Profile {
        profile(&sources, args.case, args.iterations);
        return Ok(());
    }
    write_requests(&args.out, &answers)?;
    let tls = self_signed_tls().await?;
    let listener = std::net::TcpListener::bind(args.addr)?;
    listener.set_nonblocking(true)?;
    println!("port={}", listener.local_addr()?.port());
    match args.mode {
        Mode::Webhook => serve_webhook(listener, tls, sources).await,
        Mode::WebhookNoNodelay => serve_without_nodelay(listener, tls, sources).await,
        Mode::Baseline => serve_baseline(listener, tls, answers).await,
        Mode::Profile => unreachable!("returned above"),
    }
}

/// The answers to the two requests, checked to be what they claim (a patch and a plain allow)
/// before anything is measured.
fn checked_answers(sources: &MapSources) -> Result<Answers> {
    let patch = answer(sources, CONFIDENTIAL.as_bytes());
    let allow = answer(sources, RUNC.as_bytes());
    let patch_json: serde_json::Value = serde_json::from_slice(&patch)?;
    let allow_json: serde_json::Value = serde_json::from_slice(&allow)?;
    if patch_json["response"]["patch"].as_str().is_none()
        || allow_json["response"]["allowed"] != true
        || allow_json["response"].get("patch").is_some()
    {
        bail!("the benchmark requests no longer produce a patch and an allow");
    }
    Ok(Answers { patch, allow })
}

/// Answers the request of `case` `iterations` times in this process and reports how long that
/// took.
fn profile(sources: &MapSources, case: Case, iterations: usize) {
    let classes = classes();
    let body = match case {
        Case::Patch => CONFIDENTIAL,
        Case::Allow => RUNC,
    };
    let start = std::time::Instant::now();
    for _ in 0..iterations {
        std::hint::black_box(handle(
            sources,
            &classes,
            std::hint::black_box(body.as_bytes()),
        ));
    }
    eprintln!(
        "bench-webhook: {iterations} admissions ({case:?}) in {:?}",
        start.elapsed()
    );
}

/// Writes the two request bodies into `out` for the load generator.
fn write_requests(out: &Path, answers: &Answers) -> Result<()> {
    std::fs::create_dir_all(out)?;
    std::fs::write(out.join("patch.json"), CONFIDENTIAL)?;
    std::fs::write(out.join("allow.json"), RUNC)?;
    eprintln!(
        "bench-webhook: response bytes: patch {}, allow {}",
        answers.patch.len(),
        answers.allow.len()
    );
    Ok(())
}

/// TLS with a fresh self-signed certificate for `localhost` (the load generator does not verify).
async fn self_signed_tls() -> Result<RustlsConfig> {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()])?;
    RustlsConfig::from_pem(
        cert.cert.pem().into_bytes(),
        cert.signing_key.serialize_pem().into_bytes(),
    )
    .await
    .context("TLS configuration")
}

/// `--mode webhook`: the operator's router on its own accept loop.
async fn serve_webhook(
    listener: std::net::TcpListener,
    tls: RustlsConfig,
    sources: MapSources,
) -> Result<()> {
    let adm = admission(sources);
    let state = adm.state.clone();
    state.set_tls_loaded();
    server::serve_tls(
        listener,
        server::router(adm),
        tls,
        state,
        std::future::pending(),
    )
    .await?;
    Ok(())
}

/// `--mode webhook-no-nodelay`: the operator's router on axum-server's default accept loop.
async fn serve_without_nodelay(
    listener: std::net::TcpListener,
    tls: RustlsConfig,
    sources: MapSources,
) -> Result<()> {
    let router = server::router(admission(sources));
    axum_server::from_tcp_rustls(listener, tls)?
        .serve(router.into_make_service())
        .await?;
    Ok(())
}

/// `--mode baseline`: replays the recorded answers on the same stack, `TCP_NODELAY` on.
async fn serve_baseline(
    listener: std::net::TcpListener,
    tls: RustlsConfig,
    answers: Answers,
) -> Result<()> {
    let answers: HashMap<Bytes, Bytes> = [
        (
            Bytes::from_static(CONFIDENTIAL.as_bytes()),
            Bytes::from(answers.patch),
        ),
        (
            Bytes::from_static(RUNC.as_bytes()),
            Bytes::from(answers.allow),
        ),
    ]
    .into();
    let router: Router = Router::new()
        .route("/mutate", post(replay))
        .with_state(Arc::new(answers));
    axum_server::from_tcp(listener)?
        .acceptor(RustlsAcceptor::new(tls).acceptor(NoDelayAcceptor::new()))
        .serve(router.into_make_service())
        .await?;
    Ok(())
}
