//! The official Key Vault SDK against the double: the challenge round trip (first request with
//! no token and no body), the empty path segments, API version 2025-07-01, and that the SDK
//! parses what the double answers (exportable, release policy, deleted key, release result).

mod common;

use std::sync::Arc;

use azure_core::credentials::{AccessToken, TokenCredential, TokenRequestOptions};
use azure_core::http::{ClientOptions, RequestContent, Transport};
use azure_security_keyvault_keys::models::{
    CreateKeyParameters, CurveName, KeyAttributes, KeyReleasePolicy, KeyType, ReleaseParameters,
    UpdateKeyPropertiesParameters,
};
use azure_security_keyvault_keys::{KeyClient, KeyClientOptions};
use ckb_doubles::TokenRequest;
use ckb_doubles::sidecar::{RuntimeKey, Trust, open_release};
use common::*;

#[derive(Debug)]
struct FixedToken(&'static str);

#[async_trait::async_trait]
impl TokenCredential for FixedToken {
    async fn get_token(
        &self,
        scopes: &[&str],
        _options: Option<TokenRequestOptions<'_>>,
    ) -> azure_core::Result<AccessToken> {
        // The scope comes from the double's challenge.
        assert_eq!(scopes, ["https://vault.azure.net/.default"]);
        Ok(AccessToken::new(
            self.0.to_owned(),
            azure_core::time::OffsetDateTime::now_utc() + azure_core::time::Duration::hours(1),
        ))
    }
}

fn client(env: &Env, token: &'static str) -> KeyClient {
    let options = KeyClientOptions {
        client_options: ClientOptions {
            transport: Some(Transport::new(Arc::new(env.client.clone()))),
            ..ClientOptions::default()
        },
        // 127.0.0.1 is not under vault.azure.net, but the URL here keeps the real host name.
        verify_challenge_resource: Some(true),
        ..KeyClientOptions::default()
    };
    KeyClient::new(&env.url(VAULT), Arc::new(FixedToken(token)), Some(options)).unwrap()
}

// Long by design: one key's life through the official SDK, in the order a client lives it; each
// step needs the state the previous one left.
#[tokio::test]
async fn the_official_sdk_creates_reads_updates_deletes_recovers_and_releases() {
    let env = Env::start().await;
    let sdk = client(&env, "operator-token");
    let hash = "c".repeat(64);
    let policy = aks_policy(MAA, &hash);

    let params = CreateKeyParameters {
        kty: Some(KeyType::EcHsm),
        curve: Some(CurveName::P256),
        key_attributes: Some(KeyAttributes {
            exportable: Some(true),
            ..Default::default()
        }),
        release_policy: Some(KeyReleasePolicy {
            content_type: Some("application/json; charset=utf-8".into()),
            encoded_policy: Some(policy.to_string().into_bytes()),
            immutable: Some(false),
        }),
        tags: Some([("managed-by".to_owned(), "ckb-operator".to_owned())].into()),
        ..Default::default()
    };
    let created = sdk
        .create_key("sdk-key", RequestContent::try_from(params).unwrap(), None)
        .await
        .expect("create")
        .into_model()
        .unwrap();
    assert_eq!(created.key_attributes_exportable(), Some(true));
    let stored = created.release_policy.as_ref().unwrap();
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(stored.encoded_policy.as_ref().unwrap())
            .unwrap(),
        policy
    );

    let got = sdk
        .get_key("sdk-key", None)
        .await
        .expect("get")
        .into_model()
        .unwrap();
    assert_eq!(
        got.key.as_ref().unwrap().kid,
        created.key.as_ref().unwrap().kid
    );

    let other = aks_policy(MAA, &"d".repeat(64));
    let update = UpdateKeyPropertiesParameters {
        release_policy: Some(KeyReleasePolicy {
            encoded_policy: Some(other.to_string().into_bytes()),
            ..Default::default()
        }),
        ..Default::default()
    };
    let updated = sdk
        .update_key_properties("sdk-key", RequestContent::try_from(update).unwrap(), None)
        .await
        .expect("update")
        .into_model()
        .unwrap();
    let data = updated.release_policy.unwrap().encoded_policy.unwrap();
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&data).unwrap(),
        other
    );

    let deleted = sdk
        .delete_key("sdk-key", None)
        .await
        .expect("delete")
        .into_model()
        .unwrap();
    assert!(
        deleted
            .recovery_id
            .unwrap()
            .ends_with("/deletedkeys/sdk-key")
    );
    let again = sdk
        .get_deleted_key("sdk-key", None)
        .await
        .expect("get deleted")
        .into_model()
        .unwrap();
    assert!(again.scheduled_purge_date.is_some());
    let conflict = sdk
        .create_key(
            "sdk-key",
            RequestContent::try_from(CreateKeyParameters {
                kty: Some(KeyType::EcHsm),
                ..Default::default()
            })
            .unwrap(),
            None,
        )
        .await
        .expect_err("deleted but recoverable");
    assert_eq!(conflict.http_status().map(u16::from), Some(409));
    sdk.recover_deleted_key("sdk-key", None)
        .await
        .expect("recover");

    // The path and the challenge as they went over the wire.
    let log = env.double.log();
    assert!(
        !log[0].authenticated,
        "the SDK starts with the challenge probe"
    );
    assert_eq!(log[0].status, Some(401));
    assert!(
        log.iter()
            .any(|e| e.method == "GET" && e.path == "/keys/sdk-key/")
    );
    assert!(
        log.iter()
            .any(|e| e.method == "PATCH" && e.path == "/keys/sdk-key/")
    );
    assert!(
        log.iter()
            .all(|e| e.api_version.as_deref() == Some("2025-07-01"))
    );

    // Release through the SDK with the release identity; the sidecar logic opens the answer.
    let releaser = client(&env, "release-token");
    sdk.update_key_properties(
        "sdk-key",
        RequestContent::try_from(UpdateKeyPropertiesParameters {
            release_policy: Some(KeyReleasePolicy {
                encoded_policy: Some(policy.to_string().into_bytes()),
                ..Default::default()
            }),
            ..Default::default()
        })
        .unwrap(),
        None,
    )
    .await
    .expect("re-pin");
    let runtime = RuntimeKey::generate().unwrap();
    let token = env
        .double
        .mint_token(&TokenRequest {
            issuer_host: MAA.into(),
            hostdata: hash,
            runtime: runtime.jwks(),
            ..TokenRequest::default()
        })
        .unwrap();
    let result = releaser
        .release(
            "sdk-key",
            RequestContent::try_from(ReleaseParameters {
                target_attestation_token: Some(token),
                ..Default::default()
            })
            .unwrap(),
            None,
        )
        .await
        .expect("release")
        .into_model()
        .unwrap();
    let released = open_release(
        result.value.as_deref().unwrap(),
        VAULT,
        &runtime,
        &Trust {
            roots: vec![env.double.ca_der()],
        },
    )
    .unwrap();
    assert_eq!(released.kty, "EC-HSM");
    assert!(
        env.double
            .log()
            .iter()
            .any(|e| e.path == "/keys/sdk-key//release" && e.status == Some(200))
    );
}

trait Exportable {
    fn key_attributes_exportable(&self) -> Option<bool>;
}

impl Exportable for azure_security_keyvault_keys::models::Key {
    fn key_attributes_exportable(&self) -> Option<bool> {
        self.attributes.as_ref().and_then(|a| a.exportable)
    }
}
