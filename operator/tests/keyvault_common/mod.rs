//! The Key Vault client suite shared by the runs against the Key Vault double and against Lowkey
//! Vault: the same assertions, limited by what the target implements.

#![allow(dead_code)] // each test binary uses part of it

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use ckb_operator::keyvault::credential::{
    CredentialKind, CredentialSettings, WorkloadIdentitySettings,
};
use ckb_operator::keyvault::transport::TransportSettings;
use ckb_operator::keyvault::{AzureKeyVault, KeyVault, KeyVaultError, NewKey, VaultUrl};

/// A credential that sends the content of `token_file` as the bearer token (tests only).
pub fn static_token(token_file: PathBuf) -> CredentialSettings {
    CredentialSettings {
        kind: CredentialKind::StaticToken,
        static_token_file: Some(token_file),
        authority_host: None,
        managed_identity_client_id: None,
        workload_identity: Default::default(),
    }
}

/// A workload identity credential: application `client_id` of `tenant_id`, its federated token
/// read from `token_file`, exchanged at `authority_host`.
pub fn workload_identity(
    authority_host: &str,
    tenant_id: &str,
    client_id: &str,
    token_file: PathBuf,
) -> CredentialSettings {
    CredentialSettings {
        kind: CredentialKind::WorkloadIdentity,
        static_token_file: None,
        authority_host: Some(authority_host.into()),
        managed_identity_client_id: None,
        workload_identity: WorkloadIdentitySettings {
            tenant_id: Some(tenant_id.into()),
            client_id: Some(client_id.into()),
            token_file: Some(token_file),
        },
    }
}

/// A transport that reaches each host pattern of `hosts` at `addr`, trusting `ca_pem`.
pub fn transport_to(
    addr: SocketAddr,
    hosts: &[&str],
    ca_pem: String,
    timeout: Duration,
) -> TransportSettings {
    TransportSettings {
        resolve: hosts
            .iter()
            .map(|h| format!("{h}={addr}").parse().expect("override"))
            .collect(),
        ca_pem: Some(ca_pem.into_bytes()),
        timeout: Some(timeout),
    }
}

/// What a target implements beyond the general key API.
#[derive(Debug, Clone, Copy)]
pub struct Capabilities {
    /// `exportable` + `release_policy` (the double; not Lowkey).
    pub release_policy: bool,
    /// HSM key types (`RSA-HSM`); Lowkey accepts them as software keys too.
    pub hsm: bool,
}

/// A release policy in the grammar of domain.md §4.3.
pub const POLICY: &str = r#"{"anyOf":[{"allOf":[{"claim":"x-ms-attestation-type","equals":"sevsnpvm"},{"claim":"x-ms-sevsnpvm-hostdata","equals":"8d4d3f43b5b31b2bbc5cdbbf6dcd5fa3f0ea2cb8f84e1ad4a0a0e0b4fdb76a10"},{"claim":"x-ms-compliance-status","equals":"azure-signed-katacc-uvm"},{"claim":"x-ms-sevsnpvm-is-debuggable","equals":"false"}],"authority":"https://sharedeus.eus.attest.azure.net"}],"version":"1.0.0"}"#;

/// Tags as the operator writes them.
pub fn tags(binding: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("managed-by".to_owned(), "ckb-operator".to_owned()),
        ("ckb-binding".to_owned(), format!("apps/{binding}")),
        (
            "ckb-cluster".to_owned(),
            "6a0f6b1e-0000-4000-8000-000000000001".to_owned(),
        ),
    ])
}

/// The key a binding asks for, within what the target implements (RSA 2048: quick to make; the
/// binding default 3072 is exercised by [`create_then_get`]).
pub fn new_key(name: &str, caps: Capabilities) -> NewKey {
    NewKey {
        name: name.to_owned(),
        kty: if caps.hsm { "RSA-HSM" } else { "RSA" }.to_owned(),
        size: Some(2048),
        curve: None,
        key_ops: vec![
            "wrapKey".into(),
            "unwrapKey".into(),
            "encrypt".into(),
            "decrypt".into(),
        ],
        exportable: caps.release_policy,
        release_policy_json: caps.release_policy.then(|| POLICY.to_owned()),
        tags: tags(name),
    }
}

fn same_json(a: &str, b: &str) -> bool {
    let a: serde_json::Value = serde_json::from_str(a).expect("JSON");
    let b: serde_json::Value = serde_json::from_str(b).expect("JSON");
    a == b
}

/// Create, then read back: what was asked for is what the vault reports.
pub async fn create_then_get(kv: &AzureKeyVault, vault: &VaultUrl, caps: Capabilities) {
    let mut asked = new_key("orders-key", caps);
    asked.size = Some(3072);
    let created = kv.create_key(vault, &asked).await.expect("create");
    assert_eq!(created.name, "orders-key");
    assert!(!created.version.is_empty());
    assert!(
        created
            .id
            .ends_with(&format!("/keys/orders-key/{}", created.version)),
        "{}",
        created.id
    );
    assert_eq!(created.kty, asked.kty);
    assert_eq!(created.size, Some(3072));
    assert_eq!(created.tags, asked.tags);
    assert!(created.enabled);

    let got = kv.get_key(vault, "orders-key").await.expect("get");
    assert_eq!(got.version, created.version);
    assert_eq!(got.tags, asked.tags);
    assert_eq!(got.size, Some(3072));
    let mut ops = got.key_ops.clone();
    ops.sort();
    assert_eq!(ops, ["decrypt", "encrypt", "unwrapKey", "wrapKey"]);
    if caps.release_policy {
        assert!(got.exportable);
        let policy = got.release_policy.expect("release policy stored");
        assert!(same_json(&policy.json, POLICY), "{}", policy.json);
        assert!(!policy.immutable);
    } else {
        assert!(got.release_policy.is_none());
    }
}

/// A name that was never created is NotFound, for keys and deleted keys.
pub async fn missing_is_not_found(kv: &AzureKeyVault, vault: &VaultUrl) {
    let err = kv.get_key(vault, "never-made").await.expect_err("missing");
    assert!(
        matches!(err, KeyVaultError::NotFound { ref message } if !message.is_empty()),
        "{err:?}"
    );
    let err = kv
        .get_deleted_key(vault, "never-made")
        .await
        .expect_err("missing");
    assert!(matches!(err, KeyVaultError::NotFound { .. }), "{err:?}");
}

/// Soft-delete, read the deleted key, refuse to re-create the name, recover.
pub async fn delete_get_deleted_recover(kv: &AzureKeyVault, vault: &VaultUrl, caps: Capabilities) {
    let created = kv
        .create_key(vault, &new_key("to-delete", caps))
        .await
        .expect("create");
    let deleted = kv.delete_key(vault, "to-delete").await.expect("delete");
    assert_eq!(deleted.key.name, "to-delete");
    assert_eq!(deleted.key.tags, tags("to-delete"));
    assert!(
        deleted
            .recovery_id
            .as_deref()
            .is_some_and(|r| r.ends_with("/deletedkeys/to-delete")),
        "{deleted:?}"
    );
    assert!(deleted.scheduled_purge_date.is_some());

    let err = kv.get_key(vault, "to-delete").await.expect_err("deleted");
    assert!(matches!(err, KeyVaultError::NotFound { .. }), "{err:?}");
    let got = kv
        .get_deleted_key(vault, "to-delete")
        .await
        .expect("get deleted");
    assert_eq!(got.key.version, created.version);

    let err = kv
        .create_key(vault, &new_key("to-delete", caps))
        .await
        .expect_err("name is taken by the deleted key");
    assert!(
        matches!(err, KeyVaultError::DeletedRecoverable { .. }),
        "{err:?}"
    );

    let recovered = kv
        .recover_deleted_key(vault, "to-delete")
        .await
        .expect("recover");
    assert_eq!(recovered.version, created.version);
    // Recovery completes asynchronously on the real service; poll briefly.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        match kv.get_key(vault, "to-delete").await {
            Ok(k) => {
                assert_eq!(k.version, created.version);
                assert_eq!(k.tags, tags("to-delete"));
                break;
            }
            Err(KeyVaultError::NotFound { .. }) if std::time::Instant::now() < deadline => {
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            Err(e) => panic!("recovered key not readable: {e:?}"),
        }
    }
}

/// PATCH the tags (and the release policy where implemented) of the current version.
pub async fn update_tags_and_policy(kv: &AzureKeyVault, vault: &VaultUrl, caps: Capabilities) {
    let created = kv
        .create_key(vault, &new_key("to-update", caps))
        .await
        .expect("create");
    let mut new_tags = tags("to-update");
    new_tags.insert("ckb-binding".into(), "apps/renamed".into());
    let new_policy = POLICY.replace("8d4d3f43", "00000000");
    let updated = kv
        .update_key(
            vault,
            "to-update",
            &created.version,
            caps.release_policy.then_some(new_policy.as_str()),
            Some(&new_tags),
        )
        .await
        .expect("update");
    assert_eq!(
        updated.version, created.version,
        "a PATCH makes no new version"
    );
    assert_eq!(updated.tags, new_tags);
    let got = kv.get_key(vault, "to-update").await.expect("get");
    assert_eq!(got.tags, new_tags);
    if caps.release_policy {
        let policy = got.release_policy.expect("policy");
        assert!(same_json(&policy.json, &new_policy), "{}", policy.json);
    }
}

/// Re-creating an existing name makes a new version (the behaviour the controller must avoid
/// causing by accident).
pub async fn create_again_makes_a_new_version(
    kv: &AzureKeyVault,
    vault: &VaultUrl,
    caps: Capabilities,
) {
    let first = kv
        .create_key(vault, &new_key("twice", caps))
        .await
        .expect("create");
    let second = kv
        .create_key(vault, &new_key("twice", caps))
        .await
        .expect("create again");
    assert_ne!(first.version, second.version);
    let got = kv.get_key(vault, "twice").await.expect("get");
    assert_eq!(got.version, second.version);
}
