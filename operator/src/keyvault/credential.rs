//! How the operator authenticates to Key Vault. The choice is explicit (`--kv-credential`), and
//! logged at start; the default follows what the pod has: a federated token file means workload
//! identity, otherwise managed identity.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use azure_core::credentials::{AccessToken, Secret, TokenCredential, TokenRequestOptions};
use azure_core::http::{ClientOptions, Transport};

/// `--kv-credential`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum CredentialKind {
    /// Azure workload identity (AKS): `AZURE_CLIENT_ID`, `AZURE_TENANT_ID`, `AZURE_FEDERATED_TOKEN_FILE`.
    WorkloadIdentity,
    /// The managed identity of the node or VM (IMDS).
    ManagedIdentity,
    /// The developer's `az login` (a laptop).
    AzureCli,
    /// A bearer token read from `--kv-static-token-file` at each request: for tests and the local
    /// demo against the Key Vault double only.
    StaticToken,
}

impl CredentialKind {
    /// The name as given on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            CredentialKind::WorkloadIdentity => "workload-identity",
            CredentialKind::ManagedIdentity => "managed-identity",
            CredentialKind::AzureCli => "azure-cli",
            CredentialKind::StaticToken => "static-token",
        }
    }
}

/// The credential to use: the explicit choice, else workload identity when the pod has a federated
/// token file (`AZURE_FEDERATED_TOKEN_FILE`), else managed identity. Returns whether it was defaulted.
pub fn choose(
    explicit: Option<CredentialKind>,
    federated_token_file: Option<&str>,
) -> (CredentialKind, bool) {
    match explicit {
        Some(kind) => (kind, false),
        None if federated_token_file.is_some_and(|f| !f.is_empty()) => {
            (CredentialKind::WorkloadIdentity, true)
        }
        None => (CredentialKind::ManagedIdentity, true),
    }
}

/// Failure to build a credential.
#[derive(Debug, thiserror::Error)]
pub enum CredentialError {
    /// `static-token` without `--kv-static-token-file`.
    #[error("--kv-credential static-token needs --kv-static-token-file")]
    MissingTokenFile,
    /// The SDK refused the configuration (missing environment, bad authority host, ...).
    #[error("cannot set up the {kind} credential: {source}")]
    Sdk {
        /// Which credential.
        kind: &'static str,
        /// The SDK's error.
        #[source]
        source: azure_core::Error,
    },
}

/// Settings for building the credential.
#[derive(Debug, Clone)]
pub struct CredentialSettings {
    /// Which credential.
    pub kind: CredentialKind,
    /// For `static-token`.
    pub static_token_file: Option<PathBuf>,
    /// Entra ID authority host (`https://login.microsoftonline.com` by default) for workload identity.
    pub authority_host: Option<String>,
    /// Client id of a user-assigned managed identity.
    pub managed_identity_client_id: Option<String>,
    /// Workload identity: tenant, client id and token file. `None` = the SDK reads
    /// `AZURE_TENANT_ID`, `AZURE_CLIENT_ID`, `AZURE_FEDERATED_TOKEN_FILE` (set by the AKS webhook).
    pub workload_identity: WorkloadIdentitySettings,
}

/// Explicit workload identity settings (tests); each `None` falls back to the SDK's environment variable.
#[derive(Debug, Clone, Default)]
pub struct WorkloadIdentitySettings {
    /// `AZURE_TENANT_ID`.
    pub tenant_id: Option<String>,
    /// `AZURE_CLIENT_ID`.
    pub client_id: Option<String>,
    /// `AZURE_FEDERATED_TOKEN_FILE`.
    pub token_file: Option<PathBuf>,
}

/// Builds the credential. `transport` carries the same trust roots and overrides as the Key Vault
/// calls, so a local token endpoint (`--kv-authority-host`) can be reached in tests.
pub fn build(
    settings: &CredentialSettings,
    transport: Option<Transport>,
) -> Result<Arc<dyn TokenCredential>, CredentialError> {
    let mut client_options = ClientOptions {
        transport,
        ..Default::default()
    };
    let sdk = |kind: CredentialKind| {
        move |source| CredentialError::Sdk {
            kind: kind.as_str(),
            source,
        }
    };
    Ok(match settings.kind {
        CredentialKind::WorkloadIdentity => {
            if let Some(host) = &settings.authority_host {
                let mut custom = azure_core::cloud::CustomConfiguration::default();
                custom.authority_host = host.clone();
                client_options.cloud = Some(Arc::new(custom.into()));
            }
            let wi = &settings.workload_identity;
            let options = azure_identity::WorkloadIdentityCredentialOptions {
                credential_options: azure_identity::ClientAssertionCredentialOptions {
                    client_options,
                },
                tenant_id: wi.tenant_id.clone(),
                client_id: wi.client_id.clone(),
                token_file_path: wi.token_file.clone(),
            };
            azure_identity::WorkloadIdentityCredential::new(Some(options))
                .map_err(sdk(settings.kind))?
        }
        CredentialKind::ManagedIdentity => {
            let options = azure_identity::ManagedIdentityCredentialOptions {
                user_assigned_id: settings
                    .managed_identity_client_id
                    .clone()
                    .map(azure_identity::UserAssignedId::ClientId),
                client_options,
            };
            azure_identity::ManagedIdentityCredential::new(Some(options))
                .map_err(sdk(settings.kind))?
        }
        CredentialKind::AzureCli => {
            azure_identity::AzureCliCredential::new(None).map_err(sdk(settings.kind))?
        }
        CredentialKind::StaticToken => {
            let path = settings
                .static_token_file
                .clone()
                .ok_or(CredentialError::MissingTokenFile)?;
            Arc::new(StaticTokenCredential { path })
        }
    })
}

/// A bearer token read from a file at each request (so a test can rotate it). For tests and the
/// local demo only: [`super::client::AzureKeyVault`] refuses to send it to a real vault.
#[derive(Debug)]
pub struct StaticTokenCredential {
    path: PathBuf,
}

impl StaticTokenCredential {
    /// Reads the token from `path`.
    pub fn new(path: &Path) -> Self {
        Self {
            path: path.to_owned(),
        }
    }
}

#[async_trait::async_trait]
impl TokenCredential for StaticTokenCredential {
    async fn get_token(
        &self,
        _scopes: &[&str],
        _options: Option<TokenRequestOptions<'_>>,
    ) -> azure_core::Result<AccessToken> {
        let token = tokio::fs::read_to_string(&self.path).await.map_err(|e| {
            azure_core::Error::with_message(
                azure_core::error::ErrorKind::Credential,
                format!(
                    "cannot read the static token file {}: {e}",
                    self.path.display()
                ),
            )
        })?;
        let token = token.trim().to_owned();
        if token.is_empty() {
            return Err(azure_core::Error::with_message(
                azure_core::error::ErrorKind::Credential,
                format!("the static token file {} is empty", self.path.display()),
            ));
        }
        Ok(AccessToken {
            token: Secret::new(token),
            // NB: short, so the SDK's token cache asks again soon and a rotated file is picked up.
            expires_on: azure_core::time::OffsetDateTime::now_utc()
                + azure_core::time::Duration::minutes(5),
        })
    }
}

#[cfg(test)]
mod tests {
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
    fn static_token_needs_a_file() {
        let settings = CredentialSettings {
            kind: CredentialKind::StaticToken,
            static_token_file: None,
            authority_host: None,
            managed_identity_client_id: None,
            workload_identity: WorkloadIdentitySettings::default(),
        };
        assert!(matches!(
            build(&settings, None),
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
}
