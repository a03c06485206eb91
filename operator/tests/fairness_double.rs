//! Fairness on a shared vault, against the throttling Key Vault double: the operator's default
//! rate share leaves the vault's budget to the pods' own release calls, and within the operator's
//! share one namespace cannot starve another.
//!
//! Time is scaled by 10: the double counts per 1 s instead of Key Vault's 10 s, and every budget is
//! divided by 20 (Key Vault's 500 RSA-3072 HSM transactions per 10 s become 25 per 1 s; the
//! operator's default `--kv-other-limit` of 100 becomes 5). The pods' sidecars are played by a
//! second client with its own limiter (another process, another identity) spending the rest.

use std::sync::Arc;
use std::time::Duration;

use ckb_doubles::keyvault::throttle::ThrottleLimits;
use ckb_doubles::{Config, KeyVaultDouble, LogEntry};
use ckb_operator::keyvault::client::ClientConfig;
use ckb_operator::keyvault::credential::{CredentialKind, CredentialSettings};
use ckb_operator::keyvault::limiter::with_namespace_share;
use ckb_operator::keyvault::transport::TransportSettings;
use ckb_operator::keyvault::{AzureKeyVault, KeyVault, KeyVaultError, RateLimits, VaultUrl};
use tokio::time::Instant;

const VAULT: &str = "https://shared.vault.azure.net";
/// The vault's budget of "other" transactions per (scaled) window: 500 / 20.
const VAULT_BUDGET: u32 = 25;
/// The operator's default share, scaled the same way: 100 / 20.
const OPERATOR_DEFAULT: u32 = 5;
/// What the pods' release calls spend per window: the rest of the budget, less a margin.
const PODS: u32 = 18;
const WINDOW: Duration = Duration::from_secs(1);

fn client(double: &KeyVaultDouble, dir: &tempfile::TempDir, other: u32) -> AzureKeyVault {
    let token_file = dir.path().join(format!("token-{other}"));
    std::fs::write(&token_file, "operator-token").expect("token file");
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
            resolve: vec![
                format!(".vault.azure.net={addr}")
                    .parse()
                    .expect("override"),
            ],
            ca_pem: Some(double.ca_pem().into_bytes()),
            timeout: Some(Duration::from_secs(10)),
        },
        limits: RateLimits {
            creates: 10,
            other,
            window: WINDOW,
            margin: Duration::from_millis(100),
            max_wait: Duration::from_secs(60),
        },
        read_retries: 0,
        read_retry_delay: Duration::from_millis(20),
        api_version: None,
    })
    .expect("client")
}

async fn double() -> KeyVaultDouble {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    KeyVaultDouble::start(Config {
        throttle: ThrottleLimits {
            window_ms: WINDOW.as_millis() as u64,
            other: VAULT_BUDGET,
            ..ThrottleLimits::default()
        },
        ..Config::default()
    })
    .await
    .expect("double starts")
}

/// One GET (of a key that does not exist: the double counts it like any other transaction).
async fn get(kv: &AzureKeyVault, vault: &VaultUrl, name: &str) -> Result<(), KeyVaultError> {
    match kv.get_key(vault, name).await {
        Ok(_) | Err(KeyVaultError::NotFound { .. }) => Ok(()),
        Err(e) => Err(e),
    }
}

/// `n` GETs at once, in `namespace` with `percent` of the limits (or outside any namespace);
/// returns when each finished and its outcome.
fn calls(
    kv: &Arc<AzureKeyVault>,
    namespace: Option<&'static str>,
    percent: u32,
    n: usize,
) -> Vec<tokio::task::JoinHandle<(Instant, Result<(), KeyVaultError>)>> {
    let vault = VaultUrl::parse(VAULT).expect("url");
    (0..n)
        .map(|i| {
            let kv = kv.clone();
            let vault = vault.clone();
            tokio::spawn(async move {
                let name = format!("k{i}");
                let r = match namespace {
                    Some(ns) => with_namespace_share(ns, percent, get(&kv, &vault, &name)).await,
                    None => get(&kv, &vault, &name).await,
                };
                (Instant::now(), r)
            })
        })
        .collect()
}

async fn finish(
    tasks: Vec<tokio::task::JoinHandle<(Instant, Result<(), KeyVaultError>)>>,
) -> Vec<(Instant, Result<(), KeyVaultError>)> {
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.expect("task"));
    }
    out
}

fn throttled(log: &[LogEntry]) -> usize {
    log.iter().filter(|e| e.status == Some(429)).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_default_share_leaves_the_pods_their_budget_and_namespaces_share_the_rest() {
    let double = double().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let operator = Arc::new(client(&double, &dir, OPERATOR_DEFAULT));
    let pods = Arc::new(client(&double, &dir, PODS));

    let t0 = Instant::now();
    // A namespace whose 12 bindings all need Key Vault at once, then one with 2.
    let noisy = calls(&operator, Some("noisy"), 50, 12);
    tokio::time::sleep(Duration::from_millis(50)).await;
    let quiet = calls(&operator, Some("quiet"), 50, 2);
    // Meanwhile the pods release their keys as fast as they may, for three windows.
    let mut pod_results = Vec::new();
    for _ in 0..3 {
        pod_results.extend(finish(calls(&pods, None, 100, PODS as usize)).await);
    }
    let quiet = finish(quiet).await;
    let noisy = finish(noisy).await;

    let log = double.log();
    assert_eq!(
        throttled(&log),
        0,
        "the vault answered 429: the operator's share left the pods too little"
    );
    for (_, r) in pod_results.iter().chain(&quiet).chain(&noisy) {
        r.as_ref().expect("every call succeeded");
    }
    // The quiet namespace is served as soon as slots open again, not after the noisy one's 12
    // calls: the noisy calls beyond their share (2 of 5) yield to it.
    for (at, _) in &quiet {
        assert!(
            *at - t0 < 2 * WINDOW,
            "quiet call done after {:?}",
            *at - t0
        );
    }
    // The share is not a cap on slots nobody else wants: the noisy namespace takes the rest of
    // every window (12 calls in about 3 windows; held to its share, 6).
    let last_noisy = noisy.iter().map(|(t, _)| *t - t0).max().expect("some");
    assert!(
        last_noisy < 5 * WINDOW,
        "noisy finished after {last_noisy:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_taking_the_whole_budget_gets_the_pods_throttled() {
    // The previous default (`--kv-other-limit` = the whole per-vault budget): the same pods are
    // throttled while the operator is busy. This is what the test above guards against.
    let double = double().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let operator = Arc::new(client(&double, &dir, VAULT_BUDGET));
    let pods = Arc::new(client(&double, &dir, PODS));
    let busy = calls(&operator, None, 100, 3 * VAULT_BUDGET as usize);
    tokio::time::sleep(Duration::from_millis(50)).await;
    let pod_results = finish(calls(&pods, None, 100, PODS as usize)).await;
    let _ = finish(busy).await;
    let pods_throttled = pod_results
        .iter()
        .filter(|(_, r)| matches!(r, Err(KeyVaultError::Throttled { .. })))
        .count();
    assert!(
        pods_throttled > 0 && throttled(&double.log()) > 0,
        "expected the pods to be throttled (429s: {})",
        throttled(&double.log())
    );
}
