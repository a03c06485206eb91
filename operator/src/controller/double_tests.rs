//! Reconcile against the Key Vault double: the real reconcile, the real Key Vault client (official
//! SDK, HTTPS, 401 challenge) pointed at the double by host override, and the double's request log
//! as the evidence of what was (not) written.

use std::sync::Arc;
use std::time::{Duration, Instant};

use ckb_crds::ConfidentialKeyBinding;
use ckb_crds::conditions::{reasons, types};
use ckb_doubles::{Config, Fault, KeyVaultDouble, LogEntry};

use super::plan::owner_tags;
use super::reconcile::retry_delay;
use super::reconcile_tests::{
    CLUSTER, Harness, REGO_A, REGO_B, binding, cond, deleting, demo_allowed, policy_json, quick, t0,
};
use crate::keyvault::client::ClientConfig;
use crate::keyvault::credential::{CredentialKind, CredentialSettings};
use crate::keyvault::transport::TransportSettings;
use crate::keyvault::{AzureKeyVault, KeyVault, KeyVaultError, NewKey, RateLimits, VaultUrl};

const HOST: &str = "demo.vault.azure.net";

struct Setup {
    double: KeyVaultDouble,
    /// A second client, playing a human with `az` (out-of-band changes).
    admin: AzureKeyVault,
    h: Harness,
    _dir: tempfile::TempDir,
}

fn client(double: &KeyVaultDouble, dir: &tempfile::TempDir) -> AzureKeyVault {
    client_with(double, dir, RateLimits::default())
}

fn client_with(
    double: &KeyVaultDouble,
    dir: &tempfile::TempDir,
    limits: RateLimits,
) -> AzureKeyVault {
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "operator-token").unwrap();
    let addr = double.addr();
    AzureKeyVault::new(ClientConfig {
        credential: CredentialSettings {
            kind: CredentialKind::StaticToken,
            static_token_file: Some(token_file),
            authority_host: None,
            managed_identity_client_id: None,
            workload_identity: Default::default(),
        },
        transport: TransportSettings {
            resolve: vec![format!(".vault.azure.net={addr}").parse().unwrap()],
            ca_pem: Some(double.ca_pem().into_bytes()),
            timeout: Some(Duration::from_secs(10)),
        },
        limits,
        read_retries: 2,
        read_retry_delay: Duration::from_millis(20),
        api_version: None,
    })
    .unwrap()
}

async fn setup(allowed: bool) -> Setup {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let double = KeyVaultDouble::start(Config::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let operator = client(&double, &dir);
    let admin = client(&double, &dir);
    let h = Harness::with_vault(demo_allowed(allowed), quick(), Arc::new(operator));
    Setup {
        double,
        admin,
        h,
        _dir: dir,
    }
}

fn url() -> VaultUrl {
    VaultUrl::parse("https://demo.vault.azure.net").unwrap()
}

/// Authenticated requests (the SDK's token-less first probe is the auth challenge, not a call).
fn calls(log: &[LogEntry]) -> Vec<String> {
    log.iter()
        .filter(|e| e.authenticated)
        .map(|e| format!("{} {}", e.method, e.path.trim_end_matches('/')))
        .collect()
}

fn writes(log: &[LogEntry]) -> Vec<String> {
    log.iter()
        .filter(|e| e.write)
        .map(|e| format!("{} {}", e.method, e.path.trim_end_matches('/')))
        .collect()
}

/// The most creates `host` received in any `window` (by the double's arrival times, to the ms).
fn busiest_window(log: &[LogEntry], host: &str, window: Duration) -> usize {
    let arrivals: Vec<u64> = log
        .iter()
        .filter(|e| e.host == host && e.write && e.method == "POST")
        .map(|e| e.received_ms)
        .collect();
    let window = window.as_millis() as u64;
    arrivals
        .iter()
        .map(|&t| {
            arrivals
                .iter()
                .filter(|&&u| u >= t && u < t + window)
                .count()
        })
        .max()
        .unwrap_or(0)
}

fn versions(double: &KeyVaultDouble, name: &str) -> usize {
    double.keys()[HOST]["keys"][name]
        .as_array()
        .map_or(0, |v| v.len())
}

async fn stored_policy(s: &Setup) -> String {
    s.admin
        .get_key(&url(), "orders-key")
        .await
        .unwrap()
        .release_policy
        .unwrap()
        .json
}

#[tokio::test]
async fn creates_once_then_steady_state_makes_no_write_over_many_resyncs() {
    let s = setup(true).await;
    let mut b = binding();
    s.h.reconcile(&mut b).await.unwrap();
    assert_eq!(cond(&b, types::READY).0, "True");
    assert_eq!(
        writes(&s.double.log()),
        vec!["POST /keys/orders-key/create"]
    );
    let k = s.admin.get_key(&url(), "orders-key").await.unwrap();
    assert!(k.exportable);
    assert_eq!(k.kty, "RSA-HSM");
    assert_eq!(k.tags, owner_tags(&b, CLUSTER));
    s.double.clear_log();
    s.h.api.clear();
    for _ in 0..25 {
        s.h.advance(600);
        s.h.reconcile(&mut b).await.unwrap();
    }
    let log = s.double.log();
    assert_eq!(
        writes(&log),
        Vec::<String>::new(),
        "no write in steady state"
    );
    assert_eq!(
        calls(&log),
        vec!["GET /keys/orders-key"; 25],
        "one GET per resync"
    );
    assert_eq!(versions(&s.double, "orders-key"), 1);
    assert!(s.h.api.lines().is_empty(), "no status write, no event");
}

#[tokio::test]
async fn policy_change_patches_old_and_new_then_prunes_old() {
    let mut s = setup(true).await;
    let mut b = binding();
    s.h.reconcile(&mut b).await.unwrap();
    s.h.set_pod("orders-1", REGO_A, true);
    s.h.set_policy(REGO_B);
    s.double.clear_log();
    s.h.reconcile(&mut b).await.unwrap();
    assert_eq!(writes(&s.double.log()).len(), 1);
    assert!(writes(&s.double.log())[0].starts_with("PATCH /keys/orders-key/"));
    assert!(
        crate::policy::ReleasePolicy::parse_json(&stored_policy(&s).await)
            .unwrap()
            .same_meaning(
                &crate::policy::ReleasePolicy::parse_json(&policy_json(&b, &[REGO_A, REGO_B]))
                    .unwrap()
            )
    );
    // Grace over and the pod gone: the old hash is pruned.
    s.h.advance(660);
    s.h.set_pod("orders-1", REGO_A, false);
    s.h.reconcile(&mut b).await.unwrap();
    let now = crate::policy::ReleasePolicy::parse_json(&stored_policy(&s).await).unwrap();
    let want = crate::policy::ReleasePolicy::parse_json(&policy_json(&b, &[REGO_B])).unwrap();
    assert!(now.same_meaning(&want));
    assert_eq!(
        versions(&s.double, "orders-key"),
        1,
        "PATCH, never a new version"
    );
}

#[tokio::test]
async fn out_of_band_edit_is_restored_at_resync() {
    let s = setup(true).await;
    let mut b = binding();
    s.h.reconcile(&mut b).await.unwrap();
    let k = s.admin.get_key(&url(), "orders-key").await.unwrap();
    let widened = policy_json(&b, &[REGO_A, REGO_B]);
    s.admin
        .update_key(&url(), "orders-key", &k.version, Some(&widened), None)
        .await
        .unwrap();
    s.double.clear_log();
    s.h.advance(600);
    s.h.reconcile(&mut b).await.unwrap();
    assert_eq!(writes(&s.double.log()).len(), 1);
    let restored = crate::policy::ReleasePolicy::parse_json(&stored_policy(&s).await).unwrap();
    let want = crate::policy::ReleasePolicy::parse_json(&policy_json(&b, &[REGO_A])).unwrap();
    assert!(restored.same_meaning(&want));
}

fn new_key(b: &ConfidentialKeyBinding, tags: std::collections::BTreeMap<String, String>) -> NewKey {
    NewKey {
        name: "orders-key".into(),
        kty: "RSA-HSM".into(),
        size: Some(3072),
        curve: None,
        key_ops: vec!["wrapKey".into(), "unwrapKey".into()],
        exportable: true,
        release_policy_json: Some(policy_json(b, &[REGO_B])),
        tags,
    }
}

#[tokio::test]
async fn foreign_tags_mean_key_not_owned_and_zero_writes() {
    let s = setup(true).await;
    let mut b = binding();
    let mut foreign = owner_tags(&b, CLUSTER);
    foreign.insert(ckb_crds::tags::CLUSTER.into(), "another-cluster".into());
    s.admin
        .create_key(&url(), &new_key(&b, foreign))
        .await
        .unwrap();
    s.double.clear_log();
    for adopt in [false, true] {
        b.spec.key.adopt = adopt;
        s.h.reconcile(&mut b).await.unwrap();
        assert_eq!(cond(&b, types::KEY_READY).1, reasons::KEY_NOT_OWNED);
    }
    assert_eq!(writes(&s.double.log()), Vec::<String>::new());
    assert_eq!(calls(&s.double.log()), vec!["GET /keys/orders-key"; 2]);
}

#[tokio::test]
async fn adopt_takes_an_untagged_key_with_our_tags_and_policy() {
    let s = setup(true).await;
    let mut b = binding();
    // The key's owner consents with the ckb-adopt tag (someone with Key Vault rights).
    let untagged = std::collections::BTreeMap::from([
        ("team".to_string(), "payments".to_string()),
        (
            ckb_crds::tags::ADOPT.to_string(),
            "payments/orders".to_string(),
        ),
    ]);
    s.admin
        .create_key(&url(), &new_key(&b, untagged))
        .await
        .unwrap();
    s.double.clear_log();
    s.h.reconcile(&mut b).await.unwrap();
    assert_eq!(cond(&b, types::KEY_READY).1, reasons::KEY_NOT_OWNED);
    assert_eq!(writes(&s.double.log()), Vec::<String>::new());
    b.spec.key.adopt = true;
    s.h.reconcile(&mut b).await.unwrap();
    assert_eq!(cond(&b, types::READY).0, "True");
    let k = s.admin.get_key(&url(), "orders-key").await.unwrap();
    assert_eq!(k.tags.get("team").map(String::as_str), Some("payments"));
    assert_eq!(
        k.tags.get(ckb_crds::tags::BINDING).map(String::as_str),
        Some("payments/orders")
    );
    assert!(!k.tags.contains_key(ckb_crds::tags::ADOPT));
    assert_eq!(
        b.status
            .as_ref()
            .unwrap()
            .key
            .as_ref()
            .unwrap()
            .origin
            .as_deref(),
        Some("Adopted")
    );
    assert_eq!(versions(&s.double, "orders-key"), 1);
}

#[tokio::test]
async fn delete_soft_deletes_and_retain_leaves_the_key() {
    for policy in ["Delete", "Retain"] {
        let s = setup(true).await;
        let mut b = binding();
        s.h.reconcile(&mut b).await.unwrap();
        s.double.clear_log();
        let mut gone = deleting(b, policy, t0());
        s.h.reconcile(&mut gone).await.unwrap();
        let log = s.double.log();
        let exists = s.admin.get_key(&url(), "orders-key").await.is_ok();
        if policy == "Delete" {
            assert_eq!(writes(&log), vec!["DELETE /keys/orders-key"]);
            assert!(!exists);
            assert!(s.admin.get_deleted_key(&url(), "orders-key").await.is_ok());
        } else {
            assert_eq!(calls(&log), Vec::<String>::new());
            assert!(exists);
        }
    }
}

#[tokio::test]
async fn a_vault_not_allowed_gets_zero_requests() {
    let s = setup(false).await;
    let mut b = binding();
    s.h.reconcile(&mut b).await.unwrap();
    assert_eq!(cond(&b, types::KEY_READY).1, reasons::VAULT_NOT_ALLOWED);
    let mut gone = deleting(b, "Delete", t0());
    s.h.reconcile(&mut gone).await.unwrap();
    assert!(s.double.log().is_empty(), "{:?}", s.double.log());
}

#[tokio::test]
async fn a_429_storm_converges_with_one_key_version_and_status_shows_the_throttling() {
    let s = setup(true).await;
    let mut b = binding();
    let mut storm = Fault::status("POST", "^/keys/orders-key/create$", 429);
    storm.count = Some(2);
    // Neither the double's default (1 s) nor the client's when the header is lost (10 s): the
    // delay can only come from the header on the wire.
    storm.retry_after_secs = Some(2);
    s.double.inject(storm).unwrap();
    let mut throttled_seen = false;
    let mut throttles = 0;
    let started = Instant::now();
    loop {
        match s.h.reconcile(&mut b).await {
            Ok(_) => break,
            Err(e) => {
                throttled_seen |= cond(&b, types::KEY_READY).1 == reasons::KEY_VAULT_THROTTLED;
                match e.key_vault() {
                    Some(KeyVaultError::Throttled { retry_after, .. }) => {
                        assert_eq!(*retry_after, Duration::from_secs(2), "the header's value");
                        throttles += 1;
                    }
                    other => panic!("expected a throttle, got {other:?}"),
                }
                let delay = retry_delay(&b, &e, &s.h.ctx);
                // Retry-After plus at most a quarter of it as jitter.
                assert!(
                    delay >= Duration::from_secs(2) && delay <= Duration::from_millis(2500),
                    "Retry-After honoured: {delay:?}"
                );
            }
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "did not converge"
        );
    }
    assert_eq!(throttles, 2, "both 429s reached the reconcile");
    assert!(
        throttled_seen,
        "the status showed KeyVaultThrottled while throttled"
    );
    assert_eq!(cond(&b, types::READY).0, "True");
    assert_eq!(
        versions(&s.double, "orders-key"),
        1,
        "exactly one key version"
    );
    let warnings: Vec<_> =
        s.h.api
            .events()
            .into_iter()
            .filter(|(_, r)| r == reasons::KEY_VAULT_THROTTLED)
            .collect();
    assert_eq!(
        warnings.len(),
        1,
        "one event for the throttling, not one per attempt"
    );
}

/// Creates allowed per throttling window in the throughput figure (time scaled by 10).
const PER_WINDOW: u32 = 10;
/// Resyncs in one simulated hour (one every 10 minutes).
const RESYNCS: usize = 6;
/// The throttling window of the throughput figure (10 s scaled by 10).
const WINDOW: Duration = Duration::from_secs(1);

/// The double throttling on a 1 s window, and a harness whose real client is allowed `vaults`
/// bench vaults and keeps the same limits with its margin scaled alike.
async fn throttled_harness(vaults: usize) -> (KeyVaultDouble, Harness, tempfile::TempDir) {
    let config = Config {
        throttle: ckb_doubles::keyvault::throttle::ThrottleLimits {
            window_ms: 1000,
            ..Default::default()
        },
        ..Config::default()
    };
    let double = KeyVaultDouble::start(config).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let defaults = RateLimits::default();
    let limits = RateLimits {
        creates: PER_WINDOW,
        window: WINDOW,
        // Time scaled by 10: the margin too (200 ms on a 10 s window).
        margin: defaults.margin / 10,
        ..defaults
    };
    let kv = client_with(&double, &dir, limits);
    let allowed = (0..vaults)
        .map(|v| VaultUrl::parse(&format!("https://bench{v}.vault.azure.net")).unwrap())
        .collect();
    let h = Harness::with_vault(allowed, quick(), Arc::new(kv));
    (double, h, dir)
}

/// `n` bindings spread round-robin over `vaults` bench vaults.
fn bench_bindings(n: usize, vaults: usize) -> Vec<ConfidentialKeyBinding> {
    (0..n)
        .map(|i| {
            let mut b = binding();
            b.metadata.name = Some(format!("b{i}"));
            b.spec.key.name = format!("key-{i}");
            // EC keys: the double generates them in microseconds, so the figure measures
            // the controller and the throttling, not RSA key generation (100+ ms of CPU per
            // RSA-3072 key) on the same two cores.
            b.spec.key.key_type = ckb_crds::KeyType::EcHsm;
            b.spec.key.size = None;
            b.spec.key.curve = Some(ckb_crds::Curve::P256);
            b.spec.key.vault = format!("https://bench{}.vault.azure.net", i % vaults);
            b
        })
        .collect()
}

/// Reconciles every binding, 16 at a time per vault, retrying the failed ones (up to 50 rounds)
/// until all succeed; returns them and the seconds it took.
async fn reconcile_until_all_succeed(
    h: &Harness,
    mut pending: Vec<ConfidentialKeyBinding>,
    vaults: usize,
) -> (Vec<ConfidentialKeyBinding>, f64) {
    use futures::StreamExt;
    let started = Instant::now();
    let mut done = Vec::new();
    for _ in 0..50 {
        let results: Vec<(ConfidentialKeyBinding, bool)> = futures::stream::iter(pending)
            .map(|mut b| async move {
                let ok = h.reconcile(&mut b).await.is_ok();
                (b, ok)
            })
            .buffer_unordered(16 * vaults)
            .collect()
            .await;
        pending = Vec::new();
        for (b, ok) in results {
            if ok { done.push(b) } else { pending.push(b) }
        }
        if pending.is_empty() {
            break;
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    assert!(
        pending.is_empty(),
        "{} bindings never converged",
        pending.len()
    );
    (done, elapsed)
}

/// Every bench key has exactly one version, one create was made per binding and none was
/// refused with 429; prints the busiest window of any one vault.
fn check_one_create_per_binding_within_the_limit(double: &KeyVaultDouble, n: usize, vaults: usize) {
    let keys = double.keys();
    for v in 0..vaults {
        let host = format!("bench{v}.vault.azure.net");
        for (name, versions) in keys[&host]["keys"].as_object().unwrap() {
            assert_eq!(versions.as_array().unwrap().len(), 1, "{host}/{name}");
        }
    }
    let log = double.log();
    let creates = writes(&log).len();
    assert_eq!(creates, n, "one create per binding");
    // The double answers 429 to any create over the service's limit (it does not count the
    // refusal): none means the client never sent more than the limit in any window.
    let refused = log.iter().filter(|e| e.status == Some(429)).count();
    assert_eq!(refused, 0, "the client exceeded the service's limit");
    let busiest = (0..vaults)
        .map(|v| busiest_window(&log, &format!("bench{v}.vault.azure.net"), WINDOW))
        .max()
        .unwrap_or(0);
    println!(
        "throughput: {vaults} vault(s): at most {busiest} creates in any {WINDOW:?} window of \
         one vault (the double's request log; limit {PER_WINDOW}), {refused} answered 429"
    );
}

/// Prints the rate to Ready of `n` bindings in `elapsed` seconds and its ratio to the limit.
fn report_throughput(n: usize, vaults: usize, elapsed: f64) -> f64 {
    let rate = n as f64 / elapsed;
    let limit = f64::from(PER_WINDOW) / WINDOW.as_secs_f64() * vaults as f64;
    println!(
        "throughput: {n} bindings over {vaults} vault(s) Ready in {elapsed:.1} s: \
         {rate:.1} bindings/s, limit {limit:.0} creates/s, ratio {:.2}",
        rate / limit
    );
    println!(
        "BENCH\tcontroller\t{n} bindings over {vaults} vault(s) to Ready: bindings/s \
         (vs the limit, time x10)\t{rate:.2}\t{limit:.0}\t{:.2}",
        rate / limit
    );
    rate
}

/// One simulated hour of resyncs (every 10 min), every binding reconciled once per resync:
/// asserts no write and one GET per binding per resync, and prints the figures.
async fn steady_state_hour(
    h: &Harness,
    double: &KeyVaultDouble,
    done: &mut [ConfidentialKeyBinding],
    vaults: usize,
) {
    use futures::StreamExt;
    let n = done.len();
    double.clear_log();
    let started = Instant::now();
    for _ in 0..RESYNCS {
        h.advance(600);
        let results: Vec<bool> = futures::stream::iter(done.iter_mut())
            .map(|b| async move { h.reconcile(b).await.is_ok() })
            .buffer_unordered(16 * vaults)
            .collect()
            .await;
        assert!(
            results.iter().all(|ok| *ok),
            "a steady-state reconcile failed"
        );
    }
    let steady_secs = started.elapsed().as_secs_f64();
    let log = double.log();
    let steady_writes = writes(&log).len();
    let gets = calls(&log).iter().filter(|c| c.starts_with("GET ")).count();
    let all_calls = calls(&log).len();
    assert_eq!(steady_writes, 0, "no write in steady state");
    assert_eq!(
        all_calls,
        n * RESYNCS,
        "only GETs, one per binding per resync"
    );
    let per_binding_resync = gets as f64 / (n * RESYNCS) as f64;
    println!(
        "steady: {vaults} vault(s), {n} bindings, one simulated hour ({RESYNCS} resyncs): \
         {steady_writes} writes, {gets} GETs ({per_binding_resync:.2} per binding per \
         resync), {:.0} reconciles/s",
        (n * RESYNCS) as f64 / steady_secs
    );
    println!(
        "BENCH\tcontroller\tsteady state, {vaults} vault(s), 1 simulated hour: Key Vault \
         writes\t{steady_writes}\t0\t"
    );
    println!(
        "BENCH\tcontroller\tsteady state, {vaults} vault(s): GETs per binding per resync \
         (vs at most 1)\t{per_binding_resync:.2}\t1\t{per_binding_resync:.2}"
    );
    println!(
        "BENCH\tcontroller\tsteady state, {vaults} vault(s): reconciles/s\t{:.0}\t\t",
        (n * RESYNCS) as f64 / steady_secs
    );
}

/// Figures more than a test (it prints them): bindings per second to Ready for a batch over 1 and
/// over 10 vaults, against the double throttling at Key Vault's limits with time scaled by 10 (a
/// 1 s window instead of 10 s, so the limit is 10 creates/s per vault instead of 1; the client's
/// safety margin is scaled the same way), and the ratio to that limit; then the steady state over
/// one simulated hour (six resyncs), from the double's request log. It asserts what must hold
/// whatever the machine: every binding Ready, exactly one key version each, the limits are per
/// vault (ten vaults go clearly faster than one), and the steady state makes no write and exactly
/// one GET per binding per resync.
///
/// `CKB_BENCH_BINDINGS` sets the batch (100 in the test suite; `scripts/bench.sh` runs 1,000 in
/// release mode and reads the `BENCH` lines).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throughput_to_ready_under_real_throttling() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let n: usize = std::env::var("CKB_BENCH_BINDINGS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100);
    let mut rates: Vec<f64> = Vec::new();
    for vaults in [1usize, 10] {
        let (double, h, _dir) = throttled_harness(vaults).await;
        let (mut done, elapsed) =
            reconcile_until_all_succeed(&h, bench_bindings(n, vaults), vaults).await;
        assert!(done.iter().all(|b| cond(b, types::READY).0 == "True"));
        check_one_create_per_binding_within_the_limit(&double, n, vaults);
        rates.push(report_throughput(n, vaults, elapsed));
        steady_state_hour(&h, &double, &mut done, vaults).await;
    }
    assert!(
        rates[1] > 1.5 * rates[0],
        "10 vaults ({:.1}/s) should beat 1 vault ({:.1}/s): limits are per vault",
        rates[1],
        rates[0]
    );
}

fn namespace(name: &str) -> kube::core::PartialObjectMeta<k8s_openapi::api::core::v1::Namespace> {
    use kube::core::PartialObjectMetaExt as _;
    kube::api::ObjectMeta {
        name: Some(name.into()),
        ..Default::default()
    }
    .into_response_partial()
}

fn grant(spec: serde_json::Value) -> ckb_crds::grant::ConfidentialKeyGrant {
    ckb_crds::grant::ConfidentialKeyGrant::new("payments", serde_json::from_value(spec).unwrap())
}

/// Narrowing a grant re-plans the binding that names it: each narrowing (an authority, the
/// namespace, a key type) refuses it with its reason and a Warning event, and the vault gets not
/// one request for it; widened again, it is Ready with its key as it was.
#[tokio::test]
async fn narrowing_a_grant_refuses_its_binding_without_contacting_the_vault() {
    use kube::runtime::watcher::Event;
    // No --allowed-vault: the grant alone admits the vault.
    let mut s = setup(false).await;
    s.h.namespaces
        .apply_watcher_event(&Event::Apply(namespace("payments")));
    let wide = serde_json::json!({
        "vault": "https://demo.vault.azure.net",
        "namespaces": {"names": ["payments"]},
        "keyTypes": ["RSA-HSM"],
        "attestation": {"authorities": ["https://sharedeus.eus.attest.azure.net"]}
    });
    s.h.grants
        .apply_watcher_event(&Event::Apply(grant(wide.clone())));
    let mut b = binding();
    b.spec.grant_ref = Some(ckb_crds::GrantRef {
        name: "payments".into(),
    });
    s.h.reconcile(&mut b).await.unwrap();
    assert_eq!(cond(&b, types::READY).0, "True");
    let policy = stored_policy(&s).await;

    let narrowings = [
        (
            serde_json::json!({"attestation": {"authorities": ["https://sharedwus.wus.attest.azure.net"]}}),
            reasons::AUTHORITY_NOT_ALLOWED,
        ),
        (
            serde_json::json!({"namespaces": {"names": ["billing"]}}),
            reasons::NAMESPACE_NOT_GRANTED,
        ),
        (
            serde_json::json!({"keyTypes": ["EC-HSM"]}),
            reasons::KEY_TYPE_NOT_ALLOWED,
        ),
    ];
    for (narrow, reason) in narrowings {
        let mut spec = wide.clone();
        for (k, v) in narrow.as_object().unwrap() {
            spec[k] = v.clone();
        }
        s.h.grants.apply_watcher_event(&Event::Apply(grant(spec)));
        s.double.clear_log();
        s.h.api.clear();
        s.h.reconcile(&mut b).await.unwrap();
        assert_eq!(cond(&b, types::KEY_READY), ("False".into(), reason.into()));
        assert_eq!(cond(&b, types::READY).0, "False");
        assert!(
            s.h.api
                .events()
                .contains(&("Warning".to_string(), reason.to_string())),
            "{reason}: {:?}",
            s.h.api.events()
        );
        assert!(
            s.double.log().is_empty(),
            "{reason}: the vault was contacted: {:?}",
            calls(&s.double.log())
        );
        // Widened again: Ready, nothing written.
        s.h.grants
            .apply_watcher_event(&Event::Apply(grant(wide.clone())));
        s.h.reconcile(&mut b).await.unwrap();
        assert_eq!(cond(&b, types::READY).0, "True", "{reason}");
        assert_eq!(writes(&s.double.log()), Vec::<String>::new());
    }
    assert_eq!(stored_policy(&s).await, policy);
}

/// When a hash retired is recorded on the key (tag `ckb-retired`), so an operator restart (or a
/// new leader) neither forgets it nor lets a rewritten status lengthen the hash's life.
#[tokio::test]
async fn a_restart_neither_forgets_nor_lengthens_a_retirement() {
    let mut s = setup(true).await;
    let mut b = binding();
    s.h.reconcile(&mut b).await.unwrap();
    // The policy changes to B at t0: A retires (grace 10m) and the retirement is on the key.
    s.h.set_policy(REGO_B);
    s.h.reconcile(&mut b).await.unwrap();
    let k = s.admin.get_key(&url(), "orders-key").await.unwrap();
    let a = crate::policy::hash_rego(REGO_A.as_bytes()).to_string();
    assert_eq!(
        k.tags.get(ckb_crds::tags::RETIRED),
        Some(&format!("{}={}", &a[..16], t0().as_second()))
    );
    // Someone with status rights moves A's retirement to t0+9m (not in the future then).
    let nine = (t0() + jiff::SignedDuration::from_mins(9)).to_string();
    for h in &mut b
        .status
        .as_mut()
        .unwrap()
        .policy
        .as_mut()
        .unwrap()
        .bound_hashes
    {
        if h.hash == a {
            h.since = nine.clone();
        }
    }
    // The operator restarts: a new process, no memory, the same vault.
    let dir = tempfile::tempdir().unwrap();
    let mut restarted = Harness::with_vault(
        demo_allowed(true),
        quick(),
        Arc::new(client(&s.double, &dir)),
    );
    restarted.set_policy(REGO_B);
    // Within A's grace (t0+5m): A is still bound, counted from t0 (not lost).
    restarted.advance(300);
    restarted.reconcile(&mut b).await.unwrap();
    let bound = &b
        .status
        .as_ref()
        .unwrap()
        .policy
        .as_ref()
        .unwrap()
        .bound_hashes;
    let a_bound = bound.iter().find(|h| h.hash == a).expect("A still bound");
    assert_eq!(a_bound.since, t0().to_string());
    // At t0+10m30s the grace is over, whatever the status says: A is pruned.
    restarted.advance(330);
    s.double.clear_log();
    restarted.reconcile(&mut b).await.unwrap();
    let now = crate::policy::ReleasePolicy::parse_json(&stored_policy(&s).await).unwrap();
    let want = crate::policy::ReleasePolicy::parse_json(&policy_json(&b, &[REGO_B])).unwrap();
    assert!(now.same_meaning(&want));
    assert_eq!(writes(&s.double.log()).len(), 1);
    let k = s.admin.get_key(&url(), "orders-key").await.unwrap();
    assert!(
        !k.tags.contains_key(ckb_crds::tags::RETIRED),
        "{:?}",
        k.tags
    );
    assert_eq!(k.tags, owner_tags(&b, CLUSTER));
}
