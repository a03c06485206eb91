//! The Key Vault client against the Key Vault double (in process, HTTPS on loopback, real host
//! names through `--kv-resolve`): the shared suite, then faults: 429 storms, 5xx, timeouts and
//! resets, with the double's request log and key versions as the evidence.

mod keyvault_common;

use std::time::Duration;

use ckb_doubles::{Config, Fault, KeyVaultDouble, LogEntry};
use ckb_operator::keyvault::client::ClientConfig;
use ckb_operator::keyvault::{AzureKeyVault, KeyVault, KeyVaultError, RateLimits, VaultUrl};
use keyvault_common::{Capabilities, new_key, static_token, transport_to, workload_identity};

const DOUBLE: Capabilities = Capabilities {
    release_policy: true,
    hsm: true,
};
const VAULT: &str = "https://demo.vault.azure.net";
const CREATE_PATH: &str = "^/keys/orders-key/create$";
const GET_PATH: &str = "^/keys/orders-key/?$";

struct Setup {
    double: KeyVaultDouble,
    kv: AzureKeyVault,
    vault: VaultUrl,
    _dir: tempfile::TempDir,
}

struct Options {
    timeout: Duration,
    token: &'static str,
    limits: RateLimits,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(10),
            token: "operator-token",
            limits: RateLimits::default(),
        }
    }
}

async fn setup(options: Options, config: Config) -> Setup {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let double = KeyVaultDouble::start(config).await.expect("double starts");
    let dir = tempfile::tempdir().expect("tempdir");
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, options.token).expect("token file");
    let kv = AzureKeyVault::new(ClientConfig {
        credential: static_token(token_file),
        transport: transport_to(
            double.addr(),
            &[".vault.azure.net", ".managedhsm.azure.net"],
            double.ca_pem(),
            options.timeout,
        ),
        limits: options.limits,
        read_retries: 2,
        read_retry_delay: Duration::from_millis(20),
        api_version: None,
    })
    .expect("client");
    Setup {
        double,
        kv,
        vault: VaultUrl::parse(VAULT).expect("url"),
        _dir: dir,
    }
}

async fn default_setup() -> Setup {
    setup(Options::default(), Config::default()).await
}

/// Authenticated requests of `method` on `path` (the SDK's first, token-less probe of each client is
/// the challenge and is not a call).
fn calls(log: &[LogEntry], method: &str, path: &str) -> usize {
    let re = regex_lite(path);
    log.iter()
        .filter(|e| e.authenticated && e.method == method && re(&e.path))
        .count()
}

/// Exact or `^...$`-anchored simple patterns used in these tests (`/?` allowed at the end).
fn regex_lite(pattern: &str) -> impl Fn(&str) -> bool + '_ {
    move |path: &str| {
        let p = pattern.trim_start_matches('^').trim_end_matches('$');
        match p.strip_suffix("/?") {
            Some(base) => path == base || path == format!("{base}/"),
            None => path == p,
        }
    }
}

fn versions(double: &KeyVaultDouble, host: &str, name: &str) -> usize {
    double.keys()[host]["keys"][name]
        .as_array()
        .map_or(0, |v| v.len())
}

// ---- the shared suite ----

#[tokio::test]
async fn suite_create_then_get() {
    let s = default_setup().await;
    keyvault_common::create_then_get(&s.kv, &s.vault, DOUBLE).await;
}

#[tokio::test]
async fn suite_missing_is_not_found() {
    let s = default_setup().await;
    keyvault_common::missing_is_not_found(&s.kv, &s.vault).await;
}

#[tokio::test]
async fn suite_delete_get_deleted_recover() {
    let s = default_setup().await;
    keyvault_common::delete_get_deleted_recover(&s.kv, &s.vault, DOUBLE).await;
}

#[tokio::test]
async fn suite_update_tags_and_policy() {
    let s = default_setup().await;
    keyvault_common::update_tags_and_policy(&s.kv, &s.vault, DOUBLE).await;
}

#[tokio::test]
async fn suite_create_again_makes_a_new_version() {
    let s = default_setup().await;
    keyvault_common::create_again_makes_a_new_version(&s.kv, &s.vault, DOUBLE).await;
}

// ---- what only the double implements ----

#[tokio::test]
async fn challenge_is_answered_once_per_vault_then_every_call_is_authenticated() {
    let s = default_setup().await;
    s.kv.create_key(&s.vault, &new_key("orders-key", DOUBLE))
        .await
        .expect("create");
    s.kv.get_key(&s.vault, "orders-key").await.expect("get");
    let log = s.double.log();
    let probes: Vec<&LogEntry> = log.iter().filter(|e| !e.authenticated).collect();
    assert_eq!(probes.len(), 1, "{log:#?}");
    assert_eq!(probes[0].status, Some(401));
    assert_eq!(calls(&log, "POST", CREATE_PATH), 1);
    assert_eq!(calls(&log, "GET", GET_PATH), 1);
}

#[tokio::test]
async fn managed_hsm_oct_key() {
    let s = default_setup().await;
    let hsm = VaultUrl::parse("https://contoso.managedhsm.azure.net").expect("url");
    let mut key = new_key("aes-key", DOUBLE);
    key.kty = "oct-HSM".into();
    key.size = Some(256);
    let created =
        s.kv.create_key(&hsm, &key)
            .await
            .expect("oct-HSM on Managed HSM");
    assert_eq!(created.kty, "oct-HSM");
    // oct-HSM is not allowed on a Premium vault: a 400 with the service's message.
    let err =
        s.kv.create_key(&s.vault, &key)
            .await
            .expect_err("not on a vault");
    assert!(
        matches!(err, KeyVaultError::InvalidRequest { ref message } if !message.is_empty()),
        "{err:?}"
    );
}

#[tokio::test]
async fn exportable_without_policy_is_invalid() {
    let s = default_setup().await;
    let mut key = new_key("orders-key", DOUBLE);
    key.release_policy_json = None;
    let err = s.kv.create_key(&s.vault, &key).await.expect_err("refused");
    assert!(
        matches!(err, KeyVaultError::InvalidRequest { .. }),
        "{err:?}"
    );
    assert_eq!(versions(&s.double, "demo.vault.azure.net", "orders-key"), 0);
}

#[tokio::test]
async fn immutable_policy_refusal_is_typed() {
    let s = default_setup().await;
    // The operator never makes a policy immutable; a user may have done it on a key it adopts.
    let http = s.double.client_for(&["demo.vault.azure.net"]);
    let body = serde_json::json!({
        "kty": "RSA-HSM", "key_size": 2048, "attributes": {"exportable": true},
        "release_policy": {"contentType": "application/json; charset=utf-8",
                           "data": ckb_operator::keyvault::client::base64url(keyvault_common::POLICY.as_bytes()),
                           "immutable": true}
    });
    let url = format!(
        "https://demo.vault.azure.net:{}/keys/locked/create?api-version=7.4",
        s.double.addr().port()
    );
    let status = http
        .post(url)
        .bearer_auth("admin-token")
        .json(&body)
        .send()
        .await
        .expect("raw create")
        .status();
    assert!(status.is_success(), "{status}");
    let key = s.kv.get_key(&s.vault, "locked").await.expect("get");
    assert!(key.release_policy.as_ref().expect("policy").immutable);
    let err =
        s.kv.update_key(
            &s.vault,
            "locked",
            &key.version,
            Some(&keyvault_common::POLICY.replace("8d4d3f43", "11111111")),
            None,
        )
        .await
        .expect_err("immutable");
    assert!(
        matches!(err, KeyVaultError::ImmutablePolicy { .. }),
        "{err:?}"
    );
    // A new version with another policy is refused the same way.
    let mut again = new_key("locked", DOUBLE);
    again.release_policy_json = Some(keyvault_common::POLICY.replace("8d4d3f43", "22222222"));
    let err =
        s.kv.create_key(&s.vault, &again)
            .await
            .expect_err("immutable");
    assert!(
        matches!(err, KeyVaultError::ImmutablePolicy { .. }),
        "{err:?}"
    );
    assert_eq!(versions(&s.double, "demo.vault.azure.net", "locked"), 1);
}

/// A client presenting `token` to a double that accepts only the tokens it knows.
async fn strict_double_with_token(token: &'static str) -> Setup {
    let config = Config {
        strict_auth: true,
        ..Config::default()
    };
    setup(
        Options {
            token,
            ..Options::default()
        },
        config,
    )
    .await
}

#[tokio::test]
async fn forbidden_carries_the_status_and_message() {
    let s = strict_double_with_token("reader-token").await;
    let err =
        s.kv.create_key(&s.vault, &new_key("orders-key", DOUBLE))
            .await
            .expect_err("reader may not create");
    assert!(
        matches!(err, KeyVaultError::Forbidden { status: 403, ref message } if !message.is_empty()),
        "{err:?}"
    );
    assert_eq!(
        calls(&s.double.log(), "POST", CREATE_PATH),
        1,
        "no retry of a refusal"
    );
}

#[tokio::test]
async fn an_unknown_token_is_forbidden_401() {
    let s = strict_double_with_token("no-such-token").await;
    let err =
        s.kv.get_key(&s.vault, "orders-key")
            .await
            .expect_err("refused");
    assert!(
        matches!(err, KeyVaultError::Forbidden { status: 401, .. }),
        "{err:?}"
    );
}

// ---- faults ----

#[tokio::test]
async fn a_429_storm_is_surfaced_not_retried_and_backs_the_vault_off() {
    let s = setup(
        Options {
            limits: RateLimits {
                max_wait: Duration::from_secs(5),
                ..RateLimits::default()
            },
            ..Options::default()
        },
        Config::default(),
    )
    .await;
    s.kv.create_key(&s.vault, &new_key("orders-key", DOUBLE))
        .await
        .expect("create");
    // Every GET is throttled, asking for 1 s.
    let mut storm = Fault::status("GET", GET_PATH, 429);
    storm.count = None;
    storm.retry_after_secs = Some(1);
    s.double.inject(storm).expect("fault");

    let started = tokio::time::Instant::now();
    let mut results = Vec::new();
    for _ in 0..3 {
        // Eight callers at once, three rounds: every call is one request at most.
        let round =
            futures::future::join_all((0..8).map(|_| s.kv.get_key(&s.vault, "orders-key"))).await;
        results.extend(round);
    }
    let elapsed = started.elapsed();
    for r in &results {
        match r {
            Err(KeyVaultError::Throttled {
                retry_after,
                message,
            }) => {
                assert!(*retry_after <= Duration::from_secs(1), "{retry_after:?}");
                assert!(!message.is_empty());
            }
            other => panic!("expected Throttled, got {other:?}"),
        }
    }
    let gets = calls(&s.double.log(), "GET", GET_PATH);
    // No call retried a 429 (the SDK's retry is off): at most one request per call. And after the
    // first 429 of a round the vault is backed off, so the rounds are at least 1 s apart.
    assert!((1..=24).contains(&gets), "{gets} GETs for 24 calls");
    assert!(
        elapsed >= Duration::from_secs(2),
        "{elapsed:?}: the back-off was not honoured"
    );
    assert!(elapsed < Duration::from_secs(15), "{elapsed:?}");
    let throttled = s.kv.metrics().throttled_count("demo.vault.azure.net");
    assert_eq!(throttled, 24);
    assert_eq!(
        s.kv.metrics().requests_count("get", "throttled") as usize,
        gets
    );

    // When the storm ends the next call goes through after the back-off.
    s.double.clear_faults();
    s.kv.get_key(&s.vault, "orders-key")
        .await
        .expect("after the storm");
}

#[tokio::test]
async fn a_429_on_create_is_throttled_with_the_delay_and_makes_no_key() {
    let s = default_setup().await;
    let mut f = Fault::status("POST", CREATE_PATH, 429);
    f.retry_after_secs = Some(3);
    s.double.inject(f).expect("fault");
    let err =
        s.kv.create_key(&s.vault, &new_key("orders-key", DOUBLE))
            .await
            .expect_err("throttled");
    assert!(
        matches!(err, KeyVaultError::Throttled { retry_after, .. } if retry_after == Duration::from_secs(3)),
        "{err:?}"
    );
    assert_eq!(calls(&s.double.log(), "POST", CREATE_PATH), 1);
    assert_eq!(versions(&s.double, "demo.vault.azure.net", "orders-key"), 0);
    // The vault is backed off for everyone: a call now waits out the 3 s.
    let deadline =
        s.kv.limiter()
            .backoff_deadline("demo.vault.azure.net")
            .expect("backed off");
    assert!(deadline > tokio::time::Instant::now() + Duration::from_secs(2));
}

#[tokio::test]
async fn reads_are_retried_briefly_on_5xx_and_resets() {
    let s = default_setup().await;
    s.kv.create_key(&s.vault, &new_key("orders-key", DOUBLE))
        .await
        .expect("create");
    s.double
        .inject(Fault::status("GET", GET_PATH, 503).times(1))
        .expect("fault");
    s.double
        .inject(Fault::reset("GET", GET_PATH).times(1))
        .expect("fault");
    let key =
        s.kv.get_key(&s.vault, "orders-key")
            .await
            .expect("third try succeeds");
    assert_eq!(key.name, "orders-key");
    // 503, reset, then the answer.
    assert_eq!(
        calls(&s.double.log(), "GET", GET_PATH),
        3,
        "{:#?}",
        s.double.log()
    );

    // A lasting failure gives up after 3 attempts, typed as transient with a known outcome.
    s.double.clear_log();
    let mut lasting = Fault::status("GET", GET_PATH, 500);
    lasting.count = None;
    s.double.inject(lasting).expect("fault");
    let err =
        s.kv.get_key(&s.vault, "orders-key")
            .await
            .expect_err("fails");
    assert!(
        matches!(err, KeyVaultError::Transient { outcome_unknown: false, ref message } if message.contains("500") || message.contains("Injected")),
        "{err:?}"
    );
    assert_eq!(calls(&s.double.log(), "GET", GET_PATH), 3);
}

#[tokio::test]
async fn a_create_that_times_out_after_applying_makes_exactly_one_version() {
    let s = setup(
        Options {
            timeout: Duration::from_millis(2500),
            ..Options::default()
        },
        Config::default(),
    )
    .await;
    s.double
        .inject(
            Fault::status("POST", CREATE_PATH, 500)
                .after_apply()
                .delayed(6000),
        )
        .expect("fault");
    // An EC key: made in microseconds, so the create is surely applied before the client's
    // timeout, however busy the machine.
    let key =
        s.kv.create_key(&s.vault, &ec_key("orders-key"))
            .await
            .expect("the lost create is found by a GET and returned");
    assert_eq!(key.name, "orders-key");
    // The double logs the delayed create only when it answers (if the dropped connection lets it):
    // the key's versions are the evidence that exactly one create was applied.
    assert_eq!(versions(&s.double, "demo.vault.azure.net", "orders-key"), 1);
    let log = s.double.log();
    assert!(calls(&log, "POST", CREATE_PATH) <= 1, "{log:#?}");
    assert!(
        calls(&log, "GET", GET_PATH) >= 1,
        "a GET resolved the outcome: {log:#?}"
    );
    // Past the fault's delay still one version: nothing was resent.
    tokio::time::sleep(Duration::from_millis(4000)).await;
    assert_eq!(versions(&s.double, "demo.vault.azure.net", "orders-key"), 1);
    assert!(calls(&s.double.log(), "POST", CREATE_PATH) <= 1);
    assert_eq!(
        key.version,
        s.kv.get_key(&s.vault, "orders-key")
            .await
            .expect("get")
            .version
    );
}

#[tokio::test]
async fn a_create_reset_after_applying_makes_exactly_one_version() {
    let s = default_setup().await;
    s.double
        .inject(Fault::reset("POST", CREATE_PATH).after_apply())
        .expect("fault");
    let key =
        s.kv.create_key(&s.vault, &new_key("orders-key", DOUBLE))
            .await
            .expect("found by the GET");
    assert_eq!(calls(&s.double.log(), "POST", CREATE_PATH), 1);
    assert_eq!(versions(&s.double, "demo.vault.azure.net", "orders-key"), 1);
    assert_eq!(key.tags, keyvault_common::tags("orders-key"));
}

#[tokio::test]
async fn a_create_that_failed_before_applying_is_reported_known_and_can_be_retried() {
    let s = default_setup().await;
    s.double
        .inject(Fault::reset("POST", CREATE_PATH).times(1))
        .expect("fault");
    let err =
        s.kv.create_key(&s.vault, &new_key("orders-key", DOUBLE))
            .await
            .expect_err("lost");
    assert!(
        matches!(err, KeyVaultError::Transient { outcome_unknown: false, ref message } if message.contains("did not apply")),
        "{err:?}"
    );
    assert_eq!(versions(&s.double, "demo.vault.azure.net", "orders-key"), 0);
    s.kv.create_key(&s.vault, &new_key("orders-key", DOUBLE))
        .await
        .expect("retry creates");
    assert_eq!(versions(&s.double, "demo.vault.azure.net", "orders-key"), 1);
    assert_eq!(calls(&s.double.log(), "POST", CREATE_PATH), 2);
}

#[tokio::test]
async fn when_even_the_read_fails_the_next_create_reads_first() {
    let s = default_setup().await;
    s.double
        .inject(Fault::reset("POST", CREATE_PATH).after_apply())
        .expect("fault");
    let mut reads_fail = Fault::status("GET", GET_PATH, 503);
    reads_fail.count = Some(3); // all 3 attempts of the GET that follows the lost create
    s.double.inject(reads_fail).expect("fault");
    let err =
        s.kv.create_key(&s.vault, &new_key("orders-key", DOUBLE))
            .await
            .expect_err("outcome unknown");
    assert!(
        matches!(
            err,
            KeyVaultError::Transient {
                outcome_unknown: true,
                ..
            }
        ),
        "{err:?}"
    );
    // The caller retries the create: the client reads first and returns the key made the first time.
    let key =
        s.kv.create_key(&s.vault, &new_key("orders-key", DOUBLE))
            .await
            .expect("found");
    assert_eq!(key.name, "orders-key");
    assert_eq!(
        calls(&s.double.log(), "POST", CREATE_PATH),
        1,
        "{:#?}",
        s.double.log()
    );
    assert_eq!(versions(&s.double, "demo.vault.azure.net", "orders-key"), 1);
}

#[tokio::test]
async fn a_5xx_on_update_is_transient_with_unknown_outcome_and_not_resent() {
    let s = default_setup().await;
    let key =
        s.kv.create_key(&s.vault, &new_key("orders-key", DOUBLE))
            .await
            .expect("create");
    let patch = format!("^/keys/orders-key/{}$", key.version);
    s.double
        .inject(Fault::status("PATCH", &patch, 503))
        .expect("fault");
    let err =
        s.kv.update_key(
            &s.vault,
            "orders-key",
            &key.version,
            None,
            Some(&keyvault_common::tags("x")),
        )
        .await
        .expect_err("503");
    assert!(
        matches!(
            err,
            KeyVaultError::Transient {
                outcome_unknown: true,
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(calls(&s.double.log(), "PATCH", &patch), 1);
}

#[tokio::test]
async fn creates_are_paced_by_the_local_limit() {
    let s = setup(
        Options {
            limits: RateLimits {
                creates: 2,
                window: Duration::from_secs(1),
                ..RateLimits::default()
            },
            ..Options::default()
        },
        Config::default(),
    )
    .await;
    let started = tokio::time::Instant::now();
    // EC keys: quick to make, so the time measured is the pacing.
    let keys: Vec<_> = (0..5).map(|i| ec_key(&format!("paced-{i}"))).collect();
    let results =
        futures::future::join_all(keys.iter().map(|k| s.kv.create_key(&s.vault, k))).await;
    for r in results {
        r.expect("create");
    }
    // 5 creates at 2 per second: the fifth starts 2 s after the first.
    let elapsed = started.elapsed();
    assert!(elapsed >= Duration::from_secs(2), "{elapsed:?}");
    assert!(elapsed < Duration::from_secs(30), "{elapsed:?}");
}

// ---- workload identity against a local token endpoint ----

/// Entra ID's token endpoint, reduced to the client-assertion grant: answers `token`, and records
/// each request's form.
async fn token_endpoint(
    token: &'static str,
) -> (
    std::net::SocketAddr,
    String,
    std::sync::Arc<std::sync::Mutex<Vec<std::collections::HashMap<String, String>>>>,
) {
    use std::collections::HashMap;
    use std::sync::{Arc, Mutex};
    let seen: Arc<Mutex<Vec<HashMap<String, String>>>> = Arc::default();
    let cert = rcgen::generate_simple_self_signed(vec!["login.ckb.test".to_owned()]).expect("cert");
    let config = axum_server::tls_rustls::RustlsConfig::from_pem(
        cert.cert.pem().into_bytes(),
        cert.signing_key.serialize_pem().into_bytes(),
    )
    .await
    .expect("tls config");
    let recorded = seen.clone();
    let app = axum::Router::new().route(
        "/{tenant}/oauth2/v2.0/token",
        axum::routing::post(
            move |axum::extract::Path(tenant): axum::extract::Path<String>,
                  axum::Form(mut form): axum::Form<HashMap<String, String>>| {
                let recorded = recorded.clone();
                async move {
                    form.insert("tenant".into(), tenant);
                    recorded.lock().expect("lock").push(form);
                    axum::Json(serde_json::json!({
                        "token_type": "Bearer", "expires_in": 3600, "ext_expires_in": 3600,
                        "access_token": token
                    }))
                }
            },
        ),
    );
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let server = axum_server::from_tcp_rustls(listener, config).expect("server");
    tokio::spawn(async move {
        let _ = server.serve(app.into_make_service()).await;
    });
    (addr, cert.cert.pem(), seen)
}

#[tokio::test]
async fn workload_identity_gets_its_token_from_the_authority_host() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    // Strict: only the token the endpoint hands out is accepted.
    let config = Config {
        strict_auth: true,
        ..Config::default()
    };
    let double = KeyVaultDouble::start(config).await.expect("double starts");
    let (token_addr, token_ca, seen) = token_endpoint("operator-token").await;
    let dir = tempfile::tempdir().expect("tempdir");
    let sa_token = dir.path().join("azure-identity-token");
    std::fs::write(&sa_token, "service-account-jwt").expect("write");
    let mut transport = transport_to(
        double.addr(),
        &[".vault.azure.net"],
        format!("{}\n{token_ca}", double.ca_pem()),
        Duration::from_secs(10),
    );
    transport.resolve.push(
        format!("login.ckb.test={token_addr}")
            .parse()
            .expect("override"),
    );
    let kv = AzureKeyVault::new(ClientConfig {
        credential: workload_identity(
            "https://login.ckb.test",
            "72f988bf-0000-4000-8000-00000000c4b0",
            "3c5a1f3e-0000-4000-8000-0000000000aa",
            sa_token,
        ),
        transport,
        limits: RateLimits::default(),
        read_retries: 0,
        read_retry_delay: Duration::ZERO,
        api_version: None,
    })
    .expect("client");
    let vault = VaultUrl::parse(VAULT).expect("url");
    kv.create_key(&vault, &new_key("orders-key", DOUBLE))
        .await
        .expect("create with a workload identity token");
    let seen = seen.lock().expect("lock").clone();
    assert_eq!(seen.len(), 1, "one token request, then cached: {seen:?}");
    let form = &seen[0];
    assert_eq!(form["tenant"], "72f988bf-0000-4000-8000-00000000c4b0");
    assert_eq!(form["client_id"], "3c5a1f3e-0000-4000-8000-0000000000aa");
    assert_eq!(form["client_assertion"], "service-account-jwt");
    assert_eq!(form["grant_type"], "client_credentials");
    // The scope comes from the vault's challenge.
    assert_eq!(form["scope"], "https://vault.azure.net/.default");
    kv.get_key(&vault, "orders-key")
        .await
        .expect("token reused");
}

// ---- the local limit against the service's ----

fn ec_key(name: &str) -> ckb_operator::keyvault::NewKey {
    let mut k = new_key(name, DOUBLE);
    k.kty = "EC-HSM".into();
    k.size = None;
    k.curve = Some("P-256".into());
    k.key_ops = vec!["sign".into(), "verify".into()];
    k
}

/// The double counting HSM creates like Key Vault (10 per window), with a 1 s window to keep the
/// test short, and the client's limit set to the same figure.
async fn throttled_setup(client_creates: u32) -> Setup {
    let config = Config {
        throttle: ckb_doubles::keyvault::throttle::ThrottleLimits {
            window_ms: 1000,
            hsm_creates: 10,
            ..Default::default()
        },
        ..Config::default()
    };
    setup(
        Options {
            limits: RateLimits {
                creates: client_creates,
                window: Duration::from_secs(1),
                margin: Duration::from_millis(100),
                max_wait: Duration::from_secs(30),
                ..RateLimits::default()
            },
            ..Options::default()
        },
        config,
    )
    .await
}

#[tokio::test]
async fn at_the_services_limit_the_client_paces_creates_and_never_sees_a_429() {
    let s = throttled_setup(10).await;
    let keys: Vec<_> = (0..25).map(|i| ec_key(&format!("burst-{i}"))).collect();
    let started = tokio::time::Instant::now();
    let results =
        futures::future::join_all(keys.iter().map(|k| s.kv.create_key(&s.vault, k))).await;
    let elapsed = started.elapsed();
    for r in &results {
        assert!(r.is_ok(), "{r:?}");
    }
    let log = s.double.log();
    let throttled = log.iter().filter(|e| e.status == Some(429)).count();
    assert_eq!(throttled, 0, "{log:#?}");
    assert_eq!(
        log.iter()
            .filter(|e| e.authenticated && e.method == "POST")
            .count(),
        25
    );
    eprintln!(
        "figure: 25 concurrent creates at the service's limit (10 per 1 s window): {:.2} s, 0 x 429",
        elapsed.as_secs_f64()
    );
    // 25 creates at 10 per 1.1 s (window + margin): the last window starts after 2.2 s.
    assert!(elapsed >= Duration::from_millis(2200), "{elapsed:?}");
    assert!(elapsed < Duration::from_secs(30), "{elapsed:?}");
}

#[tokio::test]
async fn above_the_services_limit_the_excess_is_throttled_once_and_typed() {
    // A client allowed 100 creates per window against a service allowing 10: the service's 429s
    // come back as Throttled, each call sends one request, and no key is made twice.
    let s = throttled_setup(100).await;
    let keys: Vec<_> = (0..25).map(|i| ec_key(&format!("burst-{i}"))).collect();
    let results =
        futures::future::join_all(keys.iter().map(|k| s.kv.create_key(&s.vault, k))).await;
    let ok = results.iter().filter(|r| r.is_ok()).count();
    let throttled = results
        .iter()
        .filter(|r| matches!(r, Err(KeyVaultError::Throttled { retry_after, .. }) if *retry_after <= Duration::from_secs(1)))
        .count();
    assert_eq!(ok + throttled, 25, "{results:?}");
    assert_eq!(ok, 10, "the service admits 10 per window");
    let log = s.double.log();
    assert_eq!(
        log.iter()
            .filter(|e| e.authenticated && e.method == "POST")
            .count(),
        25,
        "one request per call"
    );
    let made: usize = (0..25)
        .map(|i| versions(&s.double, "demo.vault.azure.net", &format!("burst-{i}")))
        .sum();
    assert_eq!(made, 10);
    assert_eq!(s.kv.metrics().throttled_count("demo.vault.azure.net"), 15);
}
