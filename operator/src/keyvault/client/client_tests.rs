//! Tests of the SDK client: challenge handling, conversions, lost create answers.

use std::collections::BTreeMap;

use async_trait::async_trait;
use azure_security_keyvault_keys::models::Key;

use super::sdk::*;
use super::*;
use crate::keyvault::{KeyVault, NewKey};

#[test]
fn version_and_name_come_from_the_kid() {
    assert_eq!(
        name_and_version("https://demo.vault.azure.net/keys/orders-key/0a1b2c").expect("ok"),
        ("orders-key".to_owned(), "0a1b2c".to_owned())
    );
    assert_eq!(
        name_and_version("https://127.0.0.1:8443/keys/k/v1").expect("ok"),
        ("k".to_owned(), "v1".to_owned())
    );
    assert!(name_and_version("https://demo.vault.azure.net/secrets/k/v").is_err());
    assert!(name_and_version("https://demo.vault.azure.net/keys/k").is_err());
}

#[test]
fn rsa_size_is_the_modulus_bit_length() {
    let mut n = vec![0xC5u8; 384];
    assert_eq!(rsa_bits(&n), Some(3072));
    n.insert(0, 0); // a leading zero byte (some encoders keep the sign byte)
    assert_eq!(rsa_bits(&n), Some(3072));
    assert_eq!(rsa_bits(&[0x01, 0, 0]), Some(17));
    assert_eq!(rsa_bits(&[]), None);
}

#[test]
fn a_key_bundle_becomes_our_type() {
    // The shape of the GetKey example of the Key Vault REST spec, with a release policy added.
    let n = base64url(&[0xB0u8; 256]);
    let policy = r#"{"anyOf":[{"allOf":[{"claim":"x-ms-sevsnpvm-hostdata","equals":"ab"}],"authority":"https://a.attest.azure.net"}],"version":"1.0.0"}"#;
    let body = serde_json::json!({
        "key": {"kid": "https://demo.vault.azure.net/keys/k1/78deebed173b48e48f55abf87ed4cf71",
                 "kty": "RSA-HSM", "key_ops": ["wrapKey", "unwrapKey"], "n": n, "e": "AQAB"},
        "attributes": {"enabled": true, "exportable": true, "created": 1_700_000_000, "updated": 1_700_000_000,
                       "recoveryLevel": "Recoverable+Purgeable"},
        "tags": {"managed-by": "ckb-operator"},
        "release_policy": {"contentType": "application/json; charset=utf-8", "data": base64url(policy.as_bytes()), "immutable": false}
    });
    let key: Key = serde_json::from_value(body).expect("SDK model");
    let ours = vault_key(key).expect("converts");
    assert_eq!(ours.name, "k1");
    assert_eq!(ours.version, "78deebed173b48e48f55abf87ed4cf71");
    assert_eq!(ours.kty, "RSA-HSM");
    assert_eq!(ours.size, Some(2048));
    assert!(ours.exportable && ours.enabled && !ours.managed);
    assert_eq!(
        ours.key_ops,
        vec!["wrapKey".to_owned(), "unwrapKey".to_owned()]
    );
    assert_eq!(
        ours.tags.get("managed-by").map(String::as_str),
        Some("ckb-operator")
    );
    let rp = ours.release_policy.expect("policy");
    assert_eq!(rp.json, policy);
    assert!(!rp.immutable);
}

#[test]
fn create_parameters_carry_exportable_policy_and_tags() {
    let key = NewKey {
        name: "k1".into(),
        kty: "RSA-HSM".into(),
        size: Some(3072),
        curve: None,
        key_ops: vec![
            "wrapKey".into(),
            "unwrapKey".into(),
            "encrypt".into(),
            "decrypt".into(),
        ],
        exportable: true,
        release_policy_json: Some(r#"{"version":"1.0.0"}"#.into()),
        tags: BTreeMap::from([("managed-by".to_owned(), "ckb-operator".to_owned())]),
    };
    let body = serde_json::to_value(create_parameters(&key)).expect("serializes");
    assert_eq!(body["kty"], "RSA-HSM");
    assert_eq!(body["key_size"], 3072);
    assert_eq!(body["attributes"]["exportable"], true);
    assert_eq!(
        body["release_policy"]["data"],
        base64url(br#"{"version":"1.0.0"}"#)
    );
    assert_eq!(body["release_policy"]["contentType"], POLICY_CONTENT_TYPE);
    assert_eq!(body["release_policy"]["immutable"], false);
    assert_eq!(body["tags"]["managed-by"], "ckb-operator");
    assert_eq!(
        body["key_ops"],
        serde_json::json!(["wrapKey", "unwrapKey", "encrypt", "decrypt"])
    );
}

#[test]
fn azure_hosts_are_recognised() {
    let azure = |u: &str| VaultUrl::parse(u).expect("url").is_azure();
    assert!(azure("https://demo.vault.azure.net"));
    assert!(azure("https://hsm.managedhsm.azure.net"));
    assert!(azure("https://demo.vault.azure.cn"));
    assert!(!azure("https://localhost:8443"));
    assert!(!azure("https://127.0.0.1"));
}

/// A vault that answers the first unauthenticated request with `challenge`, then serves one key.
#[derive(Debug)]
struct ChallengingVault {
    challenge: &'static str,
    seen: Mutex<Vec<(String, Option<String>)>>,
}

#[async_trait]
impl azure_core::http::HttpClient for ChallengingVault {
    async fn execute_request(
        &self,
        request: &azure_core::http::Request,
    ) -> azure_core::Result<azure_core::http::AsyncRawResponse> {
        use azure_core::http::headers::{HeaderName, Headers};
        let auth = request
            .headers()
            .get_optional_str(&HeaderName::from_static("authorization"))
            .map(str::to_owned);
        self.seen
            .lock()
            .expect("lock")
            .push((request.url().to_string(), auth.clone()));
        let mut headers = Headers::new();
        if auth.is_none() {
            headers.insert(HeaderName::from_static("www-authenticate"), self.challenge);
            return Ok(azure_core::http::AsyncRawResponse::from_bytes(
                azure_core::http::StatusCode::Unauthorized,
                headers,
                Vec::new(),
            ));
        }
        let host = request.url().host_str().unwrap_or_default().to_owned();
        let port = request
            .url()
            .port()
            .map(|p| format!(":{p}"))
            .unwrap_or_default();
        let body = serde_json::json!({
            "key": {"kid": format!("https://{host}{port}/keys/k1/v1"), "kty": "RSA", "n": base64url(&[0xC0u8; 256]), "e": "AQAB"},
            "attributes": {"enabled": true}
        });
        headers.insert(HeaderName::from_static("content-type"), "application/json");
        Ok(azure_core::http::AsyncRawResponse::from_bytes(
            azure_core::http::StatusCode::Ok,
            headers,
            serde_json::to_vec(&body).expect("json"),
        ))
    }
}

#[derive(Debug)]
struct FixedToken;

#[async_trait]
impl TokenCredential for FixedToken {
    async fn get_token(
        &self,
        _scopes: &[&str],
        _options: Option<azure_core::credentials::TokenRequestOptions<'_>>,
    ) -> azure_core::Result<azure_core::credentials::AccessToken> {
        Ok(azure_core::credentials::AccessToken {
            token: azure_core::credentials::Secret::new("tok"),
            expires_on: azure_core::time::OffsetDateTime::now_utc()
                + azure_core::time::Duration::minutes(5),
        })
    }
}

fn client_with(
    challenge: &'static str,
    kind: CredentialKind,
    resolve: &[&str],
) -> (AzureKeyVault, Arc<ChallengingVault>) {
    let vault = Arc::new(ChallengingVault {
        challenge,
        seen: Mutex::default(),
    });
    let config = ClientConfig {
        credential: CredentialSettings {
            kind,
            static_token_file: None,
            authority_host: None,
            managed_identity_client_id: None,
            workload_identity: Default::default(),
        },
        transport: TransportSettings {
            resolve: resolve
                .iter()
                .map(|r| r.parse().expect("override"))
                .collect(),
            ..Default::default()
        },
        limits: RateLimits::default(),
        read_retries: 0,
        read_retry_delay: Duration::ZERO,
        api_version: None,
    };
    let client = AzureKeyVault::assemble(
        config,
        Transport::new(vault.clone()),
        Arc::new(FixedToken),
        Refusals::default(),
    );
    (client, vault)
}

const REAL_CHALLENGE: &str = r#"Bearer authorization="https://login.microsoftonline.com/72f988bf-0000-4000-8000-00000000c4b0", resource="https://vault.azure.net""#;
const LOWKEY_CHALLENGE: &str = r#"Bearer resource="https://localhost:8443", authorization_uri="https://localhost:8443/foo/token""#;

#[tokio::test]
async fn the_real_challenge_is_answered_and_its_resource_checked() {
    let (client, vault) = client_with(REAL_CHALLENGE, CredentialKind::WorkloadIdentity, &[]);
    let url = VaultUrl::parse("https://demo.vault.azure.net").expect("url");
    let key = client
        .get_key(&url, "k1")
        .await
        .expect("get after challenge");
    assert_eq!((key.name.as_str(), key.version.as_str()), ("k1", "v1"));
    let seen = vault.seen.lock().expect("lock").clone();
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert_eq!(seen[0].1, None, "the first request carries no token");
    assert_eq!(seen[1].1.as_deref(), Some("Bearer tok"));
}

#[tokio::test]
async fn lowkeys_challenge_is_answered_for_an_overridden_host() {
    let (client, vault) = client_with(
        LOWKEY_CHALLENGE,
        CredentialKind::StaticToken,
        &["localhost=127.0.0.1:8443"],
    );
    let url = VaultUrl::parse("https://localhost:8443").expect("url");
    client
        .get_key(&url, "k1")
        .await
        .expect("get after Lowkey's challenge");
    let seen = vault.seen.lock().expect("lock").clone();
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert_eq!(seen[1].1.as_deref(), Some("Bearer tok"));
}

#[tokio::test]
async fn a_challenge_for_another_resource_is_refused_without_an_override() {
    // Without an override the SDK's check stays on: a host answering with a resource that is not
    // its domain gets no token.
    let (client, vault) = client_with(LOWKEY_CHALLENGE, CredentialKind::WorkloadIdentity, &[]);
    let url = VaultUrl::parse("https://localhost:8443").expect("url");
    let err = client.get_key(&url, "k1").await.expect_err("refused");
    assert!(
        matches!(&err, KeyVaultError::InvalidRequest { message } if message.contains("challenge")),
        "{err:?}"
    );
    assert_eq!(
        vault.seen.lock().expect("lock").len(),
        1,
        "no request with a token"
    );
}

#[tokio::test]
async fn the_static_token_is_never_sent_to_a_real_vault() {
    let (client, vault) = client_with(REAL_CHALLENGE, CredentialKind::StaticToken, &[]);
    let url = VaultUrl::parse("https://demo.vault.azure.net").expect("url");
    let err = client.get_key(&url, "k1").await.expect_err("refused");
    assert!(
        matches!(err, KeyVaultError::InvalidRequest { .. }),
        "{err:?}"
    );
    assert!(vault.seen.lock().expect("lock").is_empty(), "nothing sent");
    // With an override (the double stands in for that host) it is allowed.
    let (client, _) = client_with(
        REAL_CHALLENGE,
        CredentialKind::StaticToken,
        &[".vault.azure.net=127.0.0.1:1"],
    );
    client
        .get_key(&url, "k1")
        .await
        .expect("allowed behind an override");
}

#[derive(Debug, clap::Parser)]
struct Cli {
    #[command(flatten)]
    kv: KeyVaultArgs,
}

fn args(extra: &[&str]) -> KeyVaultArgs {
    use clap::Parser as _;
    let mut argv = vec!["ckb-operator"];
    argv.extend_from_slice(extra);
    Cli::try_parse_from(argv).expect("flags parse").kv
}

#[test]
fn flags_become_the_client_config() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = dir.path().join("ca.pem");
    let cert =
        rcgen::generate_simple_self_signed(vec!["demo.vault.azure.net".to_owned()]).expect("cert");
    std::fs::write(&ca, cert.cert.pem()).expect("write");
    let token = dir.path().join("token");
    std::fs::write(&token, "t").expect("write");
    let a = args(&[
        "--kv-credential",
        "static-token",
        "--kv-static-token-file",
        token.to_str().expect("utf8"),
        "--kv-resolve",
        ".vault.azure.net=127.0.0.1:8443",
        "--kv-ca-file",
        ca.to_str().expect("utf8"),
        "--kv-create-limit",
        "5",
        "--kv-other-limit",
        "50",
        "--kv-max-wait",
        "2s",
        "--kv-timeout",
        "1500ms",
        "--kv-api-version",
        "7.4",
    ]);
    let config = ClientConfig::from_args(&a, None).expect("config");
    assert_eq!(config.credential.kind, CredentialKind::StaticToken);
    assert_eq!(config.transport.resolve.len(), 1);
    assert_eq!(
        config.transport.ca_pem.as_deref(),
        Some(cert.cert.pem().as_bytes())
    );
    assert_eq!(config.transport.timeout, Some(Duration::from_millis(1500)));
    assert_eq!(
        (
            config.limits.creates,
            config.limits.other,
            config.limits.max_wait
        ),
        (5, 50, Duration::from_secs(2))
    );
    assert_eq!(config.limits.window, Duration::from_secs(10));
    assert_eq!(config.api_version.as_deref(), Some("7.4"));
    AzureKeyVault::from_args(&a).expect("client builds without contacting anything");

    // The default credential follows the pod.
    let plain = args(&[]);
    assert_eq!(
        ClientConfig::from_args(
            &plain,
            Some("/var/run/secrets/azure/tokens/azure-identity-token")
        )
        .expect("config")
        .credential
        .kind,
        CredentialKind::WorkloadIdentity
    );
    assert_eq!(
        ClientConfig::from_args(&plain, None)
            .expect("config")
            .credential
            .kind,
        CredentialKind::ManagedIdentity
    );

    // A CA file that cannot be read stops start-up with its path in the message.
    let missing = args(&["--kv-ca-file", "/nonexistent/ca.pem"]);
    let err = ClientConfig::from_args(&missing, None).expect_err("missing CA");
    assert!(err.to_string().contains("/nonexistent/ca.pem"), "{err}");
}
