//! Tests of `keyvault/credential.rs`.

use super::*;

#[test]
fn the_default_follows_the_pod() {
    assert_eq!(
        choose(
            None,
            Some("/var/run/secrets/azure/tokens/azure-identity-token")
        ),
        (CredentialKind::WorkloadIdentity, true)
    );
    assert_eq!(choose(None, None), (CredentialKind::ManagedIdentity, true));
    assert_eq!(
        choose(None, Some("")),
        (CredentialKind::ManagedIdentity, true)
    );
    assert_eq!(
        choose(Some(CredentialKind::AzureCli), Some("/t")),
        (CredentialKind::AzureCli, false)
    );
}

#[test]
fn an_aadsts_code_in_a_credential_error_is_a_refusal_unless_transient() {
    use azure_core::error::ErrorKind;
    let refused = azure_core::Error::with_message(
        ErrorKind::Credential,
        "ClientAssertionCredential authentication failed. invalid type: string \"AADSTS700213: No matching federated identity record\r\nTrace ID: x\"",
    );
    assert_eq!(entra_refusal_status(&refused), Some(401));
    let transient = azure_core::Error::with_message(
        ErrorKind::Credential,
        "AADSTS90033: A transient error has occurred",
    );
    assert_eq!(entra_refusal_status(&transient), None);
    let unreachable = azure_core::Error::with_message(ErrorKind::Credential, "connection refused");
    assert_eq!(entra_refusal_status(&unreachable), None);
    assert_eq!(aadsts_code("x AADSTS700024: y"), Some("AADSTS700024"));
    assert_eq!(aadsts_code("AADSTS: none"), None);
}

#[test]
fn static_token_needs_a_file() {
    let settings = CredentialSettings {
        kind: CredentialKind::StaticToken,
        static_token_file: None,
        authority_host: None,
        managed_identity_client_id: None,
        workload_identity: WorkloadIdentitySettings::default(),
    };
    assert!(matches!(
        build(&settings, None, &Refusals::default()),
        Err(CredentialError::MissingTokenFile)
    ));
}

#[tokio::test]
async fn static_token_is_read_from_the_file_each_time() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("token");
    std::fs::write(&path, "first\n").expect("write");
    let cred = StaticTokenCredential::new(&path);
    let t = cred
        .get_token(&["https://vault.azure.net/.default"], None)
        .await
        .expect("token");
    assert_eq!(t.token.secret(), "first");
    std::fs::write(&path, "second").expect("write");
    let t = cred
        .get_token(&["https://vault.azure.net/.default"], None)
        .await
        .expect("token");
    assert_eq!(t.token.secret(), "second");
    std::fs::write(&path, "  ").expect("write");
    assert!(cred.get_token(&["x"], None).await.is_err());
}
