//! The operator's workload identity credential against the Entra ID token endpoint double and the
//! Key Vault double (strict: only Entra's tokens are accepted): the federated token is exchanged at
//! the authority host, access tokens are refreshed before they expire (and a rotated token file is
//! read at the next exchange), and a federation that does not match is a refusal naming the
//! identity.

mod keyvault_common;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;

use ckb_doubles::entra::{AssertionSigner, FederatedCredential};
use ckb_doubles::{Config, KeyVaultDouble};
use ckb_operator::keyvault::client::ClientConfig;
use ckb_operator::keyvault::{AzureKeyVault, KeyVault, KeyVaultError, RateLimits, VaultUrl};
use keyvault_common::{Capabilities, new_key, transport_to, workload_identity};

const DOUBLE: Capabilities = Capabilities {
    release_policy: true,
    hsm: true,
};
const VAULT: &str = "https://demo.vault.azure.net";
const TENANT: &str = "72f988bf-0000-4000-8000-00000000c4b0";
const CLIENT: &str = "3c5a1f3e-0000-4000-8000-0000000000aa";
const K8S_ISSUER: &str = "https://kubernetes.default.svc.cluster.local";

struct Setup {
    double: KeyVaultDouble,
    kv: AzureKeyVault,
    vault: VaultUrl,
    k8s: AssertionSigner,
    token_file: PathBuf,
    _dir: tempfile::TempDir,
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

impl Setup {
    /// Writes a fresh ServiceAccount token (as the kubelet or the TokenRequest API would).
    fn rotate_token(&self, sa: &str) {
        let t = self
            .k8s
            .service_account_token(K8S_ISSUER, "ckb-system", sa, now(), 600);
        std::fs::write(&self.token_file, t).expect("token file");
    }
}

async fn setup(federated_subject_sa: &str, token_lifetime: Duration) -> Setup {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let k8s = AssertionSigner::generate();
    let mut config = Config {
        strict_auth: true,
        ..Config::default()
    };
    config.entra.issuers.push(k8s.trusted(K8S_ISSUER));
    config
        .entra
        .credentials
        .push(FederatedCredential::service_account(
            CLIENT,
            K8S_ISSUER,
            "ckb-system",
            federated_subject_sa,
        ));
    config.entra.token_lifetime = token_lifetime;
    let mut perms = BTreeSet::new();
    perms.extend(ckb_doubles::Permission::ALL);
    config.entra_permissions.insert(CLIENT.to_string(), perms);
    let double = KeyVaultDouble::start(config).await.expect("double starts");
    let dir = tempfile::tempdir().expect("tempdir");
    let token_file = dir.path().join("azure-identity-token");
    let setup_k8s = k8s;
    let kv = AzureKeyVault::new(ClientConfig {
        credential: workload_identity(
            "https://login.microsoftonline.com/",
            TENANT,
            CLIENT,
            token_file.clone(),
        ),
        transport: transport_to(
            double.addr(),
            &[".vault.azure.net", "login.microsoftonline.com"],
            double.ca_pem(),
            Duration::from_secs(10),
        ),
        limits: RateLimits::default(),
        read_retries: 0,
        read_retry_delay: Duration::ZERO,
        api_version: None,
    })
    .expect("client");
    let s = Setup {
        double,
        kv,
        vault: VaultUrl::parse(VAULT).expect("url"),
        k8s: setup_k8s,
        token_file,
        _dir: dir,
    };
    s.rotate_token("ckb-operator");
    s
}

#[tokio::test]
async fn the_federated_token_is_exchanged_and_only_entra_tokens_reach_the_vault() {
    let s = setup("ckb-operator", Duration::from_secs(3600)).await;
    s.kv.create_key(&s.vault, &new_key("orders-key", DOUBLE))
        .await
        .expect("create with an Entra token");
    s.kv.get_key(&s.vault, "orders-key").await.expect("get");
    let exchanges = s.double.entra().exchanges();
    assert_eq!(
        exchanges.len(),
        1,
        "one exchange, then cached: {exchanges:?}"
    );
    assert_eq!(exchanges[0].status, 200);
    assert_eq!(exchanges[0].client_id.as_deref(), Some(CLIENT));
    assert_eq!(
        exchanges[0].assertion_subject.as_deref(),
        Some("system:serviceaccount:ckb-system:ckb-operator")
    );
    let calls: Vec<_> = s
        .double
        .log()
        .into_iter()
        .filter(|e| e.host == "demo.vault.azure.net" && e.authenticated)
        .collect();
    assert!(calls.len() >= 2, "{calls:?}");
    for c in &calls {
        assert_eq!(c.token_issuer, Some(s.double.entra().issuer()), "{c:?}");
        assert_eq!(c.token_client_id.as_deref(), Some(CLIENT), "{c:?}");
    }
}

#[tokio::test]
async fn access_tokens_are_refreshed_before_they_expire_with_the_rotated_token_file() {
    // The SDK renews a token 5 minutes before it expires: with a 302 s lifetime, every token is
    // used for about 2 s, then exchanged again.
    let s = setup("ckb-operator", Duration::from_secs(302)).await;
    s.kv.create_key(&s.vault, &new_key("orders-key", DOUBLE))
        .await
        .expect("create");
    let first_iat = s.double.entra().exchanges()[0].assertion_iat;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    s.rotate_token("ckb-operator");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        s.kv.get_key(&s.vault, "orders-key").await.expect("get");
        let ex = s.double.entra().exchanges();
        if ex.len() >= 2 {
            assert!(ex.iter().all(|e| e.status == 200), "{ex:?}");
            // The second exchange presented the rotated ServiceAccount token.
            assert!(ex[1].assertion_iat > first_iat, "{ex:?}");
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no second exchange: {ex:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // Every call to the vault carried a valid Entra token (the strict double refuses any other,
    // and an expired one).
    let calls: Vec<_> = s
        .double
        .log()
        .into_iter()
        .filter(|e| e.host == "demo.vault.azure.net" && e.authenticated)
        .collect();
    assert!(
        calls.iter().all(|c| c.status.is_some_and(|st| st < 400)),
        "{calls:?}"
    );
    assert!(calls.iter().all(|c| c.token_issuer.is_some()), "{calls:?}");
}

#[tokio::test]
async fn a_federation_for_another_subject_is_a_refusal_naming_the_identity() {
    let s = setup("someone-else", Duration::from_secs(3600)).await;
    let err =
        s.kv.create_key(&s.vault, &new_key("orders-key", DOUBLE))
            .await
            .expect_err("Entra refuses the exchange");
    let KeyVaultError::Forbidden { status, message } = &err else {
        panic!("expected a refusal, got {err:?}");
    };
    assert_eq!(*status, 401);
    for needle in [
        CLIENT,
        TENANT,
        "system:serviceaccount:ckb-system:ckb-operator",
        "AADSTS700213",
    ] {
        assert!(message.contains(needle), "{needle} not in {message}");
    }
    // Nothing reached the vault with a token.
    assert!(
        s.double
            .log()
            .iter()
            .all(|e| !(e.host == "demo.vault.azure.net" && e.authenticated)),
        "{:?}",
        s.double.log()
    );
}

#[tokio::test]
async fn a_federation_changed_while_running_is_refused_at_the_next_refresh_not_at_expiry() {
    // 302 s tokens: each is in the SDK's refresh window (its last 5 minutes) 2 s after issue, but
    // valid for 5 more minutes: a refusal seen within this test is the refresh's, not the expiry's.
    let s = setup("ckb-operator", Duration::from_secs(302)).await;
    s.kv.create_key(&s.vault, &new_key("orders-key", DOUBLE))
        .await
        .expect("create");
    s.double
        .entra()
        .set_credentials(vec![FederatedCredential::service_account(
            CLIENT,
            K8S_ISSUER,
            "ckb-system",
            "someone-else",
        )]);
    let refused = || {
        s.double
            .entra()
            .exchanges()
            .iter()
            .any(|e| e.aadsts == Some(700213))
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let err = loop {
        let seen_before = refused();
        match s.kv.get_key(&s.vault, "orders-key").await {
            // The call during which the refresh was refused may still use the valid token; none
            // after it.
            Ok(_) => assert!(
                !seen_before,
                "a call succeeded with the cached token after Entra refused the identity"
            ),
            Err(e) => break e,
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no refusal: {:?}",
            s.double.entra().exchanges()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let KeyVaultError::Forbidden { message, .. } = &err else {
        panic!("expected a refusal, got {err:?}");
    };
    for needle in [
        CLIENT,
        "system:serviceaccount:ckb-system:ckb-operator",
        "AADSTS700213",
    ] {
        assert!(message.contains(needle), "{needle} not in {message}");
    }

    // Federated again: the next call exchanges and succeeds (no restart).
    s.double
        .entra()
        .set_credentials(vec![FederatedCredential::service_account(
            CLIENT,
            K8S_ISSUER,
            "ckb-system",
            "ckb-operator",
        )]);
    s.kv.get_key(&s.vault, "orders-key")
        .await
        .expect("a fixed federation is used at once");
}
