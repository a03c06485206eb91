//! The webhook over HTTP: captured AdmissionReview bodies through the router (`oneshot`), and over
//! real TLS, including a certificate rotation under load.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use axum_server::tls_rustls::RustlsConfig;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use ckb_operator::crds::ConfidentialKeyBinding;
use ckb_operator::webhook::certs::{self, CertTimings, TlsMaterial};
use ckb_operator::webhook::mutate::SidecarDefaults;
use ckb_operator::webhook::server::{self, Admission};
use ckb_operator::webhook::{MapSources, WebhookMetrics, WebhookState};
use http_body_util::BodyExt as _;
use pretty_assertions::assert_eq;
use serde_json::{Value, json};
use tower::ServiceExt as _;

fn data(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/admission")
        .join(name)
}

fn read(name: &str) -> Vec<u8> {
    std::fs::read(data(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn sources() -> MapSources {
    let yaml = String::from_utf8(read("bindings.yaml")).unwrap();
    let bindings: Vec<ConfidentialKeyBinding> = serde_saphyr::from_multiple(&yaml).unwrap();
    let rego = String::from_utf8(read("orders-policy.rego")).unwrap();
    let mut s =
        MapSources::default().with_policy("payments", "orders-policy", "policy.rego", &rego);
    for b in bindings {
        s = s.with_binding(b);
    }
    s
}

fn admission(metrics: WebhookMetrics) -> Arc<Admission> {
    Arc::new(Admission {
        sources: Arc::new(sources()),
        defaults: SidecarDefaults::default(),
        confidential_runtime_classes: vec!["kata-cc-isolation".into()],
        metrics,
        state: WebhookState::new(),
        max_body_bytes: 4 * 1024 * 1024,
        body_timeout: Duration::from_secs(5),
    })
}

async fn post(router: axum::Router, body: Vec<u8>) -> (StatusCode, Value) {
    let resp = router
        .oneshot(
            Request::post("/mutate")
                .header("content-type", "application/json")
                .body(Body::from(body))
                .unwrap(),
        )
        .await
        .unwrap();
    let status = resp.status();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    let json: Value = serde_json::from_slice(&bytes).unwrap_or_else(|e| {
        panic!(
            "answer is not JSON ({e}): {}",
            String::from_utf8_lossy(&bytes)
        )
    });
    (status, json)
}

fn apply_answer(review: &[u8], answer: &Value) -> Value {
    let req: Value = serde_json::from_slice(review).unwrap();
    let mut pod = req["request"]["object"].clone();
    assert_eq!(answer["response"]["patchType"], "JSONPatch");
    let patch_bytes = STANDARD
        .decode(answer["response"]["patch"].as_str().unwrap())
        .unwrap();
    let patch: json_patch::Patch = serde_json::from_slice(&patch_bytes).unwrap();
    json_patch::patch(&mut pod, &patch.0).unwrap();
    pod
}

#[tokio::test]
async fn confidential_pod_gets_the_exact_expected_patch() {
    let router = server::router(admission(WebhookMetrics::default()));
    let review = read("pod-create-confidential.json");
    let (status, answer) = post(router, review.clone()).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(answer["apiVersion"], "admission.k8s.io/v1");
    assert_eq!(answer["kind"], "AdmissionReview");
    assert_eq!(
        answer["response"]["uid"],
        "4b2f0c7e-1f3a-4c59-9d8e-3a1b2c4d5e6f"
    );
    assert_eq!(answer["response"]["allowed"], true);
    assert!(
        answer["response"].get("warnings").is_none(),
        "the pod has the WI label"
    );
    let got = apply_answer(&review, &answer);
    let expected: Value =
        serde_json::from_slice(&read("pod-create-confidential.expected.json")).unwrap();
    assert_eq!(got, expected);
    // The policy annotation decodes to the ConfigMap's Rego, and the hash is of those bytes.
    let rego = read("orders-policy.rego");
    let ann = &got["metadata"]["annotations"];
    assert_eq!(
        STANDARD
            .decode(
                ann["io.katacontainers.config.agent.policy"]
                    .as_str()
                    .unwrap()
            )
            .unwrap(),
        rego
    );
    use sha2::Digest as _;
    assert_eq!(
        ann["ckb.dev/policy-sha256"],
        json!(hex::encode(sha2::Sha256::digest(&rego)))
    );
}

#[tokio::test]
async fn injected_pod_sent_again_is_allowed_unchanged() {
    let router = server::router(admission(WebhookMetrics::default()));
    let review = read("pod-create-confidential.json");
    let (_, first) = post(router.clone(), review.clone()).await;
    let mut again: Value = serde_json::from_slice(&review).unwrap();
    again["request"]["object"] = apply_answer(&review, &first);
    let (status, answer) = post(router, serde_json::to_vec(&again).unwrap()).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(answer["response"]["allowed"], true);
    assert!(answer["response"].get("patch").is_none(), "{answer}");
}

#[tokio::test]
async fn non_confidential_pod_is_allowed_without_patch() {
    let router = server::router(admission(WebhookMetrics::default()));
    let (status, answer) = post(router, read("pod-create-runc.json")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(answer["response"]["allowed"], true);
    assert_eq!(
        answer["response"]["uid"],
        "7c1d2e3f-0000-4000-8000-000000000002"
    );
    assert!(answer["response"].get("patch").is_none());
}

#[tokio::test]
async fn wrong_kind_and_missing_object_are_refused_with_the_uid() {
    for (file, uid, words) in [
        (
            "configmap-create.json",
            "7c1d2e3f-0000-4000-8000-000000000003",
            "Pods only",
        ),
        (
            "pod-create-missing-object.json",
            "7c1d2e3f-0000-4000-8000-000000000004",
            "no object",
        ),
    ] {
        let router = server::router(admission(WebhookMetrics::default()));
        let (status, answer) = post(router, read(file)).await;
        assert_eq!(status, StatusCode::OK, "{file}");
        let r = &answer["response"];
        assert_eq!(r["uid"], uid, "{file}");
        assert_eq!(r["allowed"], false, "{file}");
        assert_eq!(r["status"]["code"], 400, "{file}");
        assert!(
            r["status"]["message"].as_str().unwrap().contains(words),
            "{file}: {r}"
        );
    }
}

#[tokio::test]
async fn malformed_truncated_and_foreign_bodies_get_a_clean_error() {
    let good = read("pod-create-confidential.json");
    let mut v1beta1: Value = serde_json::from_slice(&good).unwrap();
    v1beta1["apiVersion"] = json!("admission.k8s.io/v1beta1");
    let cases: Vec<(&str, Vec<u8>, StatusCode)> = vec![
        ("not json", b"hello".to_vec(), StatusCode::BAD_REQUEST),
        ("empty", Vec::new(), StatusCode::BAD_REQUEST),
        (
            "truncated",
            good[..good.len() / 2].to_vec(),
            StatusCode::BAD_REQUEST,
        ),
        ("array", b"[1,2,3]".to_vec(), StatusCode::BAD_REQUEST),
        (
            "no request",
            br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}"#.to_vec(),
            StatusCode::BAD_REQUEST,
        ),
        // The uid is readable here, so the answer is a normal 200 review that refuses.
        (
            "v1beta1",
            serde_json::to_vec(&v1beta1).unwrap(),
            StatusCode::OK,
        ),
    ];
    for (name, body, want_status) in cases {
        let router = server::router(admission(WebhookMetrics::default()));
        let (status, answer) = post(router, body).await;
        assert_eq!(status, want_status, "{name}");
        assert_eq!(answer["response"]["allowed"], false, "{name}");
        assert_eq!(answer["response"]["status"]["code"], 400, "{name}");
    }
}

#[tokio::test]
async fn ten_mib_body_is_refused_cleanly() {
    let metrics = WebhookMetrics::default();
    let router = server::router(admission(metrics.clone()));
    let mut body = br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"x","object":{"metadata":{"annotations":{"a":""#.to_vec();
    body.extend(std::iter::repeat_n(b'a', 10 * 1024 * 1024));
    body.extend(br#""}}}}}"#);
    let (status, answer) = post(router, body).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(answer["response"]["allowed"], false);
    assert!(
        answer["response"]["status"]["message"]
            .as_str()
            .unwrap()
            .contains("larger than 4194304 bytes")
    );
    let mut registry = prometheus_client::registry::Registry::default();
    metrics.register(&mut registry);
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
    assert!(
        text.contains("ckb_admissions_total{result=\"invalid\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("ckb_admission_duration_seconds_count 1"),
        "{text}"
    );
}

#[tokio::test]
async fn health_answers_and_readiness_waits_for_a_certificate() {
    let adm = admission(WebhookMetrics::default());
    let router = server::router(adm.clone());
    let get = |path: &'static str| {
        let router = router.clone();
        async move {
            router
                .oneshot(Request::get(path).body(Body::empty()).unwrap())
                .await
                .unwrap()
                .status()
        }
    };
    assert_eq!(get("/healthz").await, StatusCode::OK);
    assert_eq!(get("/readyz").await, StatusCode::SERVICE_UNAVAILABLE);
    assert!(!adm.state.is_ready());
}

// ---------------------------------------------------------------- real TLS

fn material(hosts: &[String], timings: &CertTimings) -> TlsMaterial {
    let now = jiff::Timestamp::now();
    let empty = TlsMaterial::default();
    let steps = certs::plan(&empty, hosts, now, timings);
    certs::apply(&empty, &steps, hosts, now, timings).unwrap()
}

fn client(trust_pem: &str) -> reqwest::Client {
    let certs = reqwest::Certificate::from_pem_bundle(trust_pem.as_bytes()).unwrap();
    reqwest::Client::builder()
        .tls_certs_only(certs)
        // A new connection (and TLS handshake) per request, so a reload is seen at once.
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

struct Running {
    addr: std::net::SocketAddr,
    tls: RustlsConfig,
    state: WebhookState,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

async fn start(m: &TlsMaterial) -> Running {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let tls = RustlsConfig::from_pem(
        m.tls_crt.clone().into_bytes(),
        m.tls_key.clone().into_bytes(),
    )
    .await
    .unwrap();
    let adm = admission(WebhookMetrics::default());
    let state = adm.state.clone();
    state.set_tls_loaded();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let router = server::router(adm);
    let (t, s) = (tls.clone(), state.clone());
    tokio::spawn(async move {
        server::serve_tls(listener, router, t, s, async {
            let _ = rx.await;
        })
        .await
        .unwrap();
    });
    Running {
        addr,
        tls,
        state,
        stop: Some(tx),
    }
}

async fn wait_ready(r: &Running, c: &reqwest::Client) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let ok = c
            .get(format!("https://{}/readyz", r.addr))
            .send()
            .await
            .is_ok_and(|resp| resp.status().is_success());
        if ok && r.state.is_ready() {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "webhook never became ready"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn admit_once(
    c: &reqwest::Client,
    addr: std::net::SocketAddr,
    body: &[u8],
) -> Result<Value, String> {
    let resp = c
        .post(format!("https://{addr}/mutate"))
        .header("content-type", "application/json")
        .body(body.to_vec())
        .send()
        .await
        .map_err(|e| format!("{e:?}"))?;
    if resp.status() != 200 {
        return Err(format!("HTTP {}", resp.status()));
    }
    resp.json::<Value>().await.map_err(|e| e.to_string())
}

#[tokio::test]
async fn admission_over_real_tls() {
    let hosts = vec!["127.0.0.1".to_string()];
    let m = material(&hosts, &CertTimings::default());
    let mut r = start(&m).await;
    let c = client(&m.ca_bundle);
    wait_ready(&r, &c).await;
    let review = read("pod-create-confidential.json");
    let answer = admit_once(&c, r.addr, &review).await.unwrap();
    let expected: Value =
        serde_json::from_slice(&read("pod-create-confidential.expected.json")).unwrap();
    assert_eq!(apply_answer(&review, &answer), expected);
    // A client that does not trust our CA is refused at the handshake.
    let stranger = material(&hosts, &CertTimings::default());
    assert!(
        admit_once(&client(&stranger.ca_bundle), r.addr, &review)
            .await
            .is_err()
    );
    let _ = r.stop.take().map(|s| s.send(()));
}

/// Plans and applies a full CA rotation of `a` on the real clock. Phase 1: the next CA joins the
/// bundle, the serving certificate still signed by the old CA. Phase 2: the next CA signs a new
/// serving certificate, the old CA stays trusted. Returns the material after each phase.
fn rotate_the_ca(a: &TlsMaterial, hosts: &[String], t: &CertTimings) -> (TlsMaterial, TlsMaterial) {
    let now = jiff::Timestamp::now();
    // Phase 1: the next CA joins the bundle; the serving certificate is still signed by the old CA.
    let steps = certs::plan(a, hosts, now, t);
    assert!(steps.contains(&certs::Step::IntroduceNextCa), "{steps:?}");
    let introduced = certs::apply(a, &steps, hosts, now, t).unwrap();
    assert_eq!(introduced.tls_crt, a.tls_crt);
    // Phase 2: the next CA signs a new serving certificate; the old CA stays trusted.
    let steps = certs::plan(&introduced, hosts, now, t);
    assert!(steps.contains(&certs::Step::PromoteNextCa), "{steps:?}");
    let promoted = certs::apply(&introduced, &steps, hosts, now, t).unwrap();
    assert_ne!(promoted.ca_crt, a.ca_crt);
    let blocks = |pem: &str| {
        use rustls_pki_types::pem::PemObject as _;
        let mut v: Vec<Vec<u8>> = rustls_pki_types::CertificateDer::pem_slice_iter(pem.as_bytes())
            .map(|c| c.unwrap().as_ref().to_vec())
            .collect();
        v.sort();
        v
    };
    assert_eq!(
        blocks(&promoted.ca_bundle),
        blocks(&introduced.ca_bundle),
        "old and new CA both trusted"
    );
    assert_eq!(blocks(&promoted.ca_bundle).len(), 2);
    (introduced, promoted)
}

/// Admission workers sending `review` over `c` while the certificates change; each returns the
/// failures it saw (an error or an answer that is not an allowed patch).
fn spawn_admission_workers(
    c: &reqwest::Client,
    review: &Arc<Vec<u8>>,
    addr: std::net::SocketAddr,
) -> Vec<tokio::task::JoinHandle<Vec<String>>> {
    const WORKERS: usize = 4;
    const PER_WORKER: usize = 40;
    let mut workers = Vec::new();
    for _ in 0..WORKERS {
        let (c, review) = (c.clone(), review.clone());
        workers.push(tokio::spawn(async move {
            let mut failures = Vec::new();
            for _ in 0..PER_WORKER {
                match admit_once(&c, addr, &review).await {
                    Ok(v)
                        if v["response"]["allowed"] == true
                            && v["response"]["patch"].is_string() => {}
                    Ok(v) => failures.push(format!("unexpected answer {v}")),
                    Err(e) => failures.push(e),
                }
            }
            failures
        }));
    }
    workers
}

#[tokio::test]
async fn admissions_keep_succeeding_while_the_certificate_and_ca_rotate() {
    let hosts = vec!["127.0.0.1".to_string()];
    // Short lifetimes so that the real clock drives a full CA rotation: the CA is "near expiry"
    // at once, and the next CA may sign as soon as it is in the bundle.
    let t = CertTimings {
        ca_validity: Duration::from_secs(86_400),
        ca_renew_before: Duration::from_secs(2 * 86_400),
        ca_promote_after: Duration::ZERO,
        serving_validity: Duration::from_secs(3600),
        serving_renew_before: Duration::from_secs(60),
    };
    let a = material(&hosts, &t);
    let (introduced, promoted) = rotate_the_ca(&a, &hosts, &t);

    let mut r = start(&a).await;
    // The API server trusts what the caBundle says after phase 1.
    let c = client(&introduced.ca_bundle);
    wait_ready(&r, &c).await;
    let review = Arc::new(read("pod-create-confidential.json"));

    let workers = spawn_admission_workers(&c, &review, r.addr);
    // Swap certificates back and forth while the workers run (bounded: 20 reloads).
    for i in 0..20 {
        let m = if i % 2 == 0 { &promoted } else { &a };
        r.tls
            .reload_from_pem(
                m.tls_crt.clone().into_bytes(),
                m.tls_key.clone().into_bytes(),
            )
            .await
            .unwrap();
        tokio::task::yield_now().await;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    r.tls
        .reload_from_pem(
            promoted.tls_crt.clone().into_bytes(),
            promoted.tls_key.clone().into_bytes(),
        )
        .await
        .unwrap();
    let mut failures = Vec::new();
    for w in workers {
        failures.extend(w.await.unwrap());
    }
    assert!(
        failures.is_empty(),
        "{} failures: {:?}",
        failures.len(),
        &failures[..failures.len().min(3)]
    );

    // The new certificate is what is served now: a client trusting only the new CA gets through,
    // one trusting only the old CA does not.
    assert!(
        admit_once(&client(&promoted.ca_crt), r.addr, &review)
            .await
            .is_ok()
    );
    assert!(
        admit_once(&client(&a.ca_crt), r.addr, &review)
            .await
            .is_err()
    );
    let _ = r.stop.take().map(|s| s.send(()));
}

#[tokio::test]
async fn mounted_certificates_are_reloaded_when_the_files_change() {
    let hosts = vec!["127.0.0.1".to_string()];
    let a = material(&hosts, &CertTimings::default());
    let b = material(&hosts, &CertTimings::default());
    let dir = tempfile::tempdir().unwrap();
    let write = |m: &TlsMaterial| {
        // Written as kubelet does for a Secret volume: the new pair appears at once (rename).
        for (name, content) in [("tls.crt", &m.tls_crt), ("tls.key", &m.tls_key)] {
            let tmp = dir.path().join(format!(".{name}.tmp"));
            std::fs::write(&tmp, content).unwrap();
            std::fs::rename(&tmp, dir.path().join(name)).unwrap();
        }
    };
    write(&a);
    let mut r = start(&a).await;
    tokio::spawn(certs::watch_cert_dir(
        dir.path().to_path_buf(),
        r.tls.clone(),
        Duration::from_millis(50),
        tokio_util::sync::CancellationToken::new(),
    ));
    let review = read("pod-create-confidential.json");
    assert!(
        admit_once(&client(&a.ca_crt), r.addr, &review)
            .await
            .is_ok()
    );
    write(&b);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while admit_once(&client(&b.ca_crt), r.addr, &review)
        .await
        .is_err()
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "new certificate never served"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        admit_once(&client(&a.ca_crt), r.addr, &review)
            .await
            .is_err()
    );
    let _ = r.stop.take().map(|s| s.send(()));
}

#[derive(clap::Parser)]
struct TestCli {
    #[command(flatten)]
    webhook: ckb_operator::webhook::WebhookArgs,
}

#[test]
fn flags_have_the_documented_defaults() {
    use clap::Parser as _;
    let cli = TestCli::parse_from(["test", "--webhook-namespace", "ckb-system"]);
    let w = &cli.webhook;
    assert_eq!(w.addr.to_string(), "0.0.0.0:9443");
    assert_eq!(w.secret, "ckb-operator-webhook-tls");
    assert_eq!(w.config_name, "ckb-operator");
    assert_eq!(
        w.hosts(),
        vec![
            "ckb-operator-webhook.ckb-system.svc".to_string(),
            "ckb-operator-webhook.ckb-system.svc.cluster.local".to_string()
        ]
    );
    assert_eq!(w.max_body_bytes, 4 * 1024 * 1024);
    assert_eq!(
        w.mutation.runtime.confidential_runtime_classes,
        vec!["kata-cc-isolation".to_string()]
    );
    assert_eq!(w.mutation.defaults(), SidecarDefaults::default());
    let cli = TestCli::parse_from([
        "test",
        "--confidential-runtime-class",
        "kata-cc-isolation,kata-cc",
        "--sidecar-log-level",
        "Debug",
        "--webhook-cert-hosts",
        "127.0.0.1,localhost",
    ]);
    assert_eq!(
        cli.webhook
            .mutation
            .runtime
            .confidential_runtime_classes
            .len(),
        2
    );
    assert_eq!(cli.webhook.mutation.sidecar_log_level.as_str(), "debug");
    assert_eq!(
        cli.webhook.hosts(),
        vec!["127.0.0.1".to_string(), "localhost".into()]
    );
    assert!(TestCli::try_parse_from(["test", "--sidecar-log-level", "loud"]).is_err());
}

#[tokio::test]
async fn serve_with_mounted_certificates_becomes_ready_and_admits() {
    use clap::Parser as _;
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let hosts = vec!["127.0.0.1".to_string()];
    let m = material(&hosts, &CertTimings::default());
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("tls.crt"), &m.tls_crt).unwrap();
    std::fs::write(dir.path().join("tls.key"), &m.tls_key).unwrap();
    // A free loopback port (serve binds the address it is given).
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let cli = TestCli::parse_from([
        "test",
        "--webhook-addr",
        &addr.to_string(),
        "--webhook-cert-dir",
        dir.path().to_str().unwrap(),
    ]);
    let state = WebhookState::new();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(ckb_operator::webhook::serve(
        cli.webhook,
        None,
        Arc::new(sources()),
        WebhookMetrics::default(),
        state.clone(),
        async {
            let _ = rx.await;
        },
    ));
    let c = client(&m.ca_crt);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !state.is_ready() {
        assert!(tokio::time::Instant::now() < deadline, "never ready");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let review = read("pod-create-confidential.json");
    let answer = admit_once(&c, addr, &review).await.unwrap();
    assert_eq!(answer["response"]["allowed"], true);
    let _ = tx.send(());
    task.await.unwrap().unwrap();
    assert!(!state.is_ready(), "not ready once stopped");
}

// ---------------------------------------------------------------- denials on the wire
//
// What the API server reads is the HTTP answer: a denial must be `allowed: false` with a 403
// status and a message naming the bindings, or kubectl would create the pod (or say nothing
// useful). Every deny path of the decision is driven through the router here.

/// A binding in `payments` selecting `app=<app>`, with its policy in ConfigMap `cm`.
fn ckb(name: &str, app: &str, cm: &str, sidecar: Option<Value>) -> ConfidentialKeyBinding {
    let mut spec = json!({
        "podSelector": {"matchLabels": {"app": app}},
        "key": {"vault": "https://contoso.vault.azure.net", "name": name},
        "attestation": {"authority": "https://sharedeus.eus.attest.azure.net"},
        "policy": {"configMapRef": {"name": cm, "key": "policy.rego"}}
    });
    if let Some(s) = sidecar {
        spec["sidecar"] = s;
    }
    serde_json::from_value(json!({
        "apiVersion": "ckb.dev/v1alpha1",
        "kind": "ConfidentialKeyBinding",
        "metadata": {"name": name, "namespace": "payments"},
        "spec": spec,
    }))
    .unwrap()
}

const AUDIT_REGO: &str =
    "package agent_policy\ndefault AllowRequestsFailingPolicy := false\n# audit\n";

/// The captured confidential pod CREATE, changed by `edit` (on the whole review).
fn review_with(edit: impl FnOnce(&mut Value)) -> Vec<u8> {
    let mut v: Value = serde_json::from_slice(&read("pod-create-confidential.json")).unwrap();
    edit(&mut v);
    serde_json::to_vec(&v).unwrap()
}

fn admission_over(sources: Arc<dyn ckb_operator::webhook::Sources>) -> Arc<Admission> {
    Arc::new(Admission {
        sources,
        defaults: SidecarDefaults::default(),
        confidential_runtime_classes: vec!["kata-cc-isolation".into()],
        metrics: WebhookMetrics::default(),
        state: WebhookState::new(),
        max_body_bytes: 4 * 1024 * 1024,
        body_timeout: Duration::from_secs(5),
    })
}

const CAPTURED_UID: &str = "4b2f0c7e-1f3a-4c59-9d8e-3a1b2c4d5e6f";

/// Checks a refusal as the API server reads it: HTTP 200 (so `allowed` is read), the request's
/// uid, `allowed` exactly `false`, status 403 Forbidden, no patch, and every word in the message.
#[track_caller]
fn assert_denied(case: &str, status: StatusCode, answer: &Value, words: &[&str]) {
    assert_eq!(status, StatusCode::OK, "{case}: {answer}");
    assert_eq!(answer["apiVersion"], "admission.k8s.io/v1", "{case}");
    assert_eq!(answer["kind"], "AdmissionReview", "{case}");
    let r = &answer["response"];
    assert_eq!(r["uid"], CAPTURED_UID, "{case}: {r}");
    assert_eq!(r["allowed"], json!(false), "{case}: {r}");
    assert_eq!(r["status"]["code"], json!(403), "{case}: {r}");
    assert_eq!(r["status"]["reason"], "Forbidden", "{case}: {r}");
    assert!(
        r.get("patch").is_none(),
        "{case}: a denial carries no patch: {r}"
    );
    assert!(r.get("patchType").is_none(), "{case}: {r}");
    let message = r["status"]["message"].as_str().unwrap_or_default();
    assert!(message.starts_with("ckb-operator"), "{case}: {message}");
    for w in words {
        assert!(message.contains(w), "{case}: {w:?} not in {message:?}");
    }
}

/// Sets the field at `pointer` (its parent must exist; an array element must too).
fn set(v: &mut Value, pointer: &str, value: Value) {
    let (parent, last) = pointer.rsplit_once('/').unwrap();
    match v.pointer_mut(parent) {
        Some(Value::Object(m)) => {
            m.insert(last.to_string(), value);
        }
        Some(Value::Array(a)) => a[last.parse::<usize>().unwrap()] = value,
        _ => panic!("{parent} not in the review"),
    }
}

/// An edit of the captured review before it is sent.
type Edit = Box<dyn FnOnce(&mut Value)>;

/// A denial case: its name, the webhook's sources, the edit of the review, and the words the
/// denial must contain.
type DenialCase = (&'static str, MapSources, Edit, Vec<&'static str>);

/// The review as captured.
fn no_edit() -> Edit {
    Box::new(|_| {})
}

/// The review with `value` at `pointer`.
fn edit_at(pointer: &'static str, value: Value) -> Edit {
    Box::new(move |v| set(v, pointer, value))
}

// Long by design: one table of every deny path of the decision, each a pod edit or a set of
// bindings and the words its denial must name.
fn denial_cases() -> Vec<DenialCase> {
    let orders = || ckb("orders-key", "orders", "orders-policy", None);
    let rego = String::from_utf8(read("orders-policy.rego")).unwrap();
    let base = || {
        MapSources::default()
            .with_policy("payments", "orders-policy", "policy.rego", &rego)
            .with_policy("payments", "audit-policy", "policy.rego", AUDIT_REGO)
    };
    let other_policy = STANDARD.encode(AUDIT_REGO);
    vec![
        (
            "two bindings with different policies",
            base().with_binding(orders()).with_binding(ckb(
                "audit-key",
                "orders",
                "audit-policy",
                None,
            )),
            no_edit(),
            vec!["audit-key", "orders-key", "different agent policies"],
        ),
        (
            "policy ConfigMap not cached",
            base().with_binding(ckb("web-key", "orders", "web-policy", None)),
            no_edit(),
            vec!["web-key", "web-policy", "not available"],
        ),
        (
            "a foreign agent policy on the pod",
            base().with_binding(orders()),
            edit_at(
                "/request/object/metadata/annotations",
                json!({"io.katacontainers.config.agent.policy": other_policy}),
            ),
            vec!["orders-key", "already carries an agent policy annotation"],
        ),
        (
            "an app container on the sidecar's port",
            base().with_binding(orders()),
            edit_at(
                "/request/object/spec/containers/1/ports",
                json!([{"containerPort": 8080, "protocol": "TCP"}]),
            ),
            vec!["orders-key", "\"metrics\"", "port 8080"],
        ),
        (
            "a native sidecar on the sidecar's port",
            base().with_binding(orders()),
            edit_at(
                "/request/object/spec/initContainers",
                json!([{"name": "proxy", "image": "proxy:1", "restartPolicy": "Always",
                            "ports": [{"containerPort": 8080}]}]),
            ),
            vec!["orders-key", "\"proxy\"", "port 8080"],
        ),
        (
            "annotations over 256 KiB with the policy",
            base().with_binding(orders()),
            edit_at(
                "/request/object/metadata/annotations",
                json!({"example.com/blob": "x".repeat(256 * 1024)}),
            ),
            vec!["orders-key", "262144"],
        ),
        (
            "an env var the operator would set, set otherwise",
            base().with_binding(orders()),
            edit_at(
                "/request/object/spec/containers/0/env",
                json!([{"name": "SKR_KEY_NAME", "value": "something-else"}]),
            ),
            vec!["orders-key", "SKR_KEY_NAME", "something-else"],
        ),
        (
            "bindings asking for different sidecar ports",
            base()
                .with_binding(ckb(
                    "orders-key",
                    "orders",
                    "orders-policy",
                    Some(json!({"port": 9000})),
                ))
                .with_binding(ckb(
                    "billing-key",
                    "orders",
                    "orders-policy",
                    Some(json!({"port": 9001})),
                )),
            no_edit(),
            vec!["billing-key", "orders-key"],
        ),
        (
            "two binding names with the same env suffix",
            base().with_binding(orders()).with_binding(ckb(
                "orders.key",
                "orders",
                "orders-policy",
                None,
            )),
            no_edit(),
            vec!["orders-key", "orders.key", "ORDERS_KEY"],
        ),
        (
            "an init container named like the sidecar",
            base().with_binding(orders()),
            edit_at(
                "/request/object/spec/initContainers",
                json!([{"name": "skr", "image": "busybox"}]),
            ),
            vec!["orders-key", "init container named \"skr\""],
        ),
        (
            "a container named like the sidecar that is not it",
            base().with_binding(orders()),
            edit_at(
                "/request/object/spec/containers/1",
                json!({"name": "skr", "image": "evil.example/skr:1"}),
            ),
            vec!["orders-key", "already has a container named \"skr\""],
        ),
        (
            "a volume named like the reference-info volume that is not it",
            base().with_binding(orders()),
            edit_at(
                "/request/object/spec/volumes",
                json!([{"name": "ckb-skr-reference-info", "emptyDir": {}}]),
            ),
            vec!["orders-key", "ckb-skr-reference-info"],
        ),
    ]
}

/// Sends the review `edit` makes to a webhook over `sources`: denied with `words` on the wire,
/// and counted once as denied.
async fn assert_denied_and_counted(case: &str, sources: MapSources, edit: Edit, words: &[&str]) {
    let metrics = WebhookMetrics::default();
    let mut adm = admission_over(Arc::new(sources));
    Arc::get_mut(&mut adm).unwrap().metrics = metrics.clone();
    let (status, answer) = post(server::router(adm), review_with(edit)).await;
    assert_denied(case, status, &answer, words);
    let mut registry = prometheus_client::registry::Registry::default();
    metrics.register(&mut registry);
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
    assert!(
        text.contains("ckb_admissions_total{result=\"denied\"} 1"),
        "{case}: {text}"
    );
}

#[tokio::test]
async fn every_denial_reaches_the_wire_as_allowed_false_403_naming_the_bindings() {
    let cases = denial_cases();
    let n = cases.len();
    for (case, sources, edit, words) in cases {
        assert_denied_and_counted(case, sources, edit, &words).await;
    }
    assert_eq!(n, 12, "every deny path of the decision has a case");
}

/// Sources whose caches have not had their first listing yet.
struct NotSynced(MapSources);

impl ckb_operator::webhook::Sources for NotSynced {
    fn bindings(&self, namespace: &str) -> Vec<Arc<ConfidentialKeyBinding>> {
        self.0.bindings(namespace)
    }
    fn policy<'a>(
        &'a self,
        namespace: &'a str,
        config_map: &'a str,
        key: &'a str,
    ) -> futures::future::BoxFuture<'a, Option<Arc<ckb_operator::webhook::mutate::PreparedPolicy>>>
    {
        self.0.policy(namespace, config_map, key)
    }
    fn ready(&self) -> bool {
        false
    }
}

#[tokio::test]
async fn a_confidential_pod_is_denied_while_the_caches_are_not_synced() {
    use ckb_operator::webhook::Sources as _;
    let adm = admission_over(Arc::new(NotSynced(sources())));
    adm.state.set_tls_loaded();
    let router = server::router(adm.clone());
    let (status, answer) = post(router.clone(), read("pod-create-confidential.json")).await;
    assert_denied(
        "caches not synced",
        status,
        &answer,
        &["caches are not synced", "retry"],
    );
    // Readiness says so too, so that a load balancer would not send it traffic.
    assert!(!adm.state.is_ready());
    // A pod that is not confidential never needs the caches: admitted unchanged.
    let (status, answer) = post(router, read("pod-create-runc.json")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(answer["response"]["allowed"], json!(true), "{answer}");
    assert!(answer["response"].get("patch").is_none(), "{answer}");
    // The same sources, synced, admit the same pod with a patch: the denial above is about
    // readiness only.
    assert!(sources().ready());
    let (_, answer) = post(
        server::router(admission(WebhookMetrics::default())),
        read("pod-create-confidential.json"),
    )
    .await;
    assert_eq!(answer["response"]["allowed"], json!(true), "{answer}");
}

#[tokio::test]
async fn only_a_pod_create_is_decided_other_operations_pass_unchanged() {
    // A pod that a CREATE would refuse (port clash) and a pod a CREATE would patch: any other
    // operation, or a CREATE of a sub-resource, passes through unchanged.
    let clash = |v: &mut Value| {
        set(
            v,
            "/request/object/spec/containers/1/ports",
            json!([{"containerPort": 8080}]),
        )
    };
    let (_, create_clash) = post(
        server::router(admission(WebhookMetrics::default())),
        review_with(clash),
    )
    .await;
    assert_eq!(create_clash["response"]["allowed"], json!(false));
    for (operation, sub_resource) in [
        ("UPDATE", None),
        ("DELETE", None),
        ("CONNECT", None),
        ("CREATE", Some("ephemeralcontainers")),
        ("CREATE", Some("binding")),
    ] {
        for clashing in [true, false] {
            let body = review_with(|v| {
                if clashing {
                    clash(v);
                }
                set(v, "/request/operation", json!(operation));
                if let Some(s) = sub_resource {
                    v["request"]["subResource"] = json!(s);
                }
            });
            let case = format!("{operation} {sub_resource:?} clashing={clashing}");
            let (status, answer) =
                post(server::router(admission(WebhookMetrics::default())), body).await;
            assert_eq!(status, StatusCode::OK, "{case}");
            let r = &answer["response"];
            assert_eq!(r["uid"], CAPTURED_UID, "{case}");
            assert_eq!(r["allowed"], json!(true), "{case}: {r}");
            assert!(r.get("status").is_none(), "{case}: {r}");
            assert!(r.get("patch").is_none(), "{case}: {r}");
            assert!(r.get("patchType").is_none(), "{case}: {r}");
        }
    }
}
