//! How the operator authenticates to Key Vault. The choice is explicit (`--kv-credential`), and
//! logged at start; the default follows what the pod has: a federated token file means workload
//! identity, otherwise managed identity.
//!
//! Workload identity is the SDK's client-assertion credential (`azure_identity`'s
//! `ClientAssertionCredential`, which its `WorkloadIdentityCredential` wraps) with the projected
//! ServiceAccount token read from `AZURE_FEDERATED_TOKEN_FILE` at every exchange (see
//! [`FederatedTokenFile`]). When Entra ID refuses the exchange (a 4xx with an `AADSTS` code: the
//! federated credential does not match the token's issuer, subject or audience, or the application
//! is unknown), the error names the identity (client id, tenant, token subject) and
//! [`entra_refusal_status`] lets the client report it as a refusal, not as an outage.
//!
//! An access token Entra ID issued stays valid until it expires, and the SDK's Key Vault client
//! keeps using its cached one when a refresh fails. So a federation that breaks while the operator
//! runs would show only when that token expires. Instead, every refused exchange is counted in
//! [`Refusals`], and the Key Vault client drops its SDK clients (with their cached tokens) when the
//! count moves: the next call exchanges again and reports the refusal, naming the identity. An
//! exchange happens only in the last 5 minutes of a token's life (the SDK's refresh window), so
//! this shows a broken federation at most that much earlier than the token's expiry would.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

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

/// How many token exchanges Entra ID refused (the identity or its federation, never a transient
/// failure): shared by the credential, which counts, and the Key Vault client, which drops its
/// cached access tokens when the count moves.
#[derive(Debug, Clone, Default)]
pub struct Refusals(Arc<AtomicU64>);

impl Refusals {
    /// Refused exchanges so far.
    pub fn count(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }

    fn record(&self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

/// Builds the credential. `transport` carries the same trust roots and overrides as the Key Vault
/// calls, so a local token endpoint (`--kv-authority-host`) can be reached in tests. Refused
/// exchanges are counted in `refusals`.
pub fn build(
    settings: &CredentialSettings,
    transport: Option<Transport>,
    refusals: &Refusals,
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
            let wi = resolve_workload_identity(&settings.workload_identity)
                .map_err(sdk(settings.kind))?;
            let identity = wi.describe();
            let inner = azure_identity::ClientAssertionCredential::new(
                wi.tenant_id,
                wi.client_id,
                FederatedTokenFile {
                    path: wi.token_file,
                },
                Some(azure_identity::ClientAssertionCredentialOptions { client_options }),
            )
            .map_err(sdk(settings.kind))?;
            Arc::new(NamedCredential {
                inner,
                identity,
                refusals: refusals.clone(),
            })
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

/// The workload identity settings with the environment's defaults filled in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedWorkloadIdentity {
    /// Tenant id.
    pub tenant_id: String,
    /// Client id of the application or user-assigned managed identity.
    pub client_id: String,
    /// The projected ServiceAccount token file.
    pub token_file: PathBuf,
}

impl ResolvedWorkloadIdentity {
    /// `client id <id> in tenant <tenant> (federated token <file>, subject <sub>)`: what a user
    /// compares with the federated identity credential when Entra refuses the exchange.
    pub fn describe(&self) -> String {
        let subject = std::fs::read_to_string(&self.token_file)
            .ok()
            .and_then(|t| jwt_claim(t.trim(), "sub"))
            .unwrap_or_else(|| "unreadable".to_string());
        format!(
            "workload identity client id {} in tenant {} (federated token {}, subject {subject})",
            self.client_id,
            self.tenant_id,
            self.token_file.display()
        )
    }
}

fn env_or(value: &Option<String>, var: &str) -> azure_core::Result<String> {
    value
        .clone()
        .or_else(|| std::env::var(var).ok())
        .filter(|v| !v.is_empty())
        .ok_or_else(|| {
            azure_core::Error::with_message(
                azure_core::error::ErrorKind::Credential,
                format!(
                    "workload identity needs {var} (set by the Azure Workload Identity webhook)"
                ),
            )
        })
}

/// Fills the settings not given from `AZURE_TENANT_ID`, `AZURE_CLIENT_ID` and
/// `AZURE_FEDERATED_TOKEN_FILE`, as the SDK's workload identity credential does.
pub fn resolve_workload_identity(
    wi: &WorkloadIdentitySettings,
) -> azure_core::Result<ResolvedWorkloadIdentity> {
    let token_file = match &wi.token_file {
        Some(p) => p.display().to_string(),
        None => env_or(&None, "AZURE_FEDERATED_TOKEN_FILE")?,
    };
    Ok(ResolvedWorkloadIdentity {
        tenant_id: env_or(&wi.tenant_id, "AZURE_TENANT_ID")?,
        client_id: env_or(&wi.client_id, "AZURE_CLIENT_ID")?,
        token_file: PathBuf::from(token_file),
    })
}

/// A claim of a JWT's payload, read without checking anything (for messages only).
fn jwt_claim(token: &str, claim: &str) -> Option<String> {
    use base64::Engine as _;
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    let v: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    v.get(claim)?.as_str().map(str::to_owned)
}

/// The client assertion of workload identity: the projected ServiceAccount token, read from its
/// file at every exchange.
// NB: hand-written instead of the SDK's `WorkloadIdentityCredential`, which reads the file when
// built (the file must exist before the operator starts) and then at most every 10 minutes: with
// the kubelet's rotation of a short-lived token that can hand Entra an expired assertion. An
// exchange happens only when the access token is about to expire, so reading a small file each
// time costs nothing and always presents the freshest token.
#[derive(Debug)]
pub struct FederatedTokenFile {
    /// `AZURE_FEDERATED_TOKEN_FILE`.
    pub path: PathBuf,
}

#[async_trait::async_trait]
impl azure_identity::ClientAssertion for FederatedTokenFile {
    async fn secret(
        &self,
        _options: Option<azure_core::http::ClientMethodOptions<'_>>,
    ) -> azure_core::Result<String> {
        let token = tokio::fs::read_to_string(&self.path).await.map_err(|e| {
            azure_core::Error::with_message(
                azure_core::error::ErrorKind::Credential,
                format!(
                    "cannot read the federated token file {}: {e}",
                    self.path.display()
                ),
            )
        })?;
        Ok(token.trim().to_owned())
    }
}

/// A credential whose refusals by Entra ID name the identity, and are counted.
#[derive(Debug)]
struct NamedCredential {
    inner: Arc<dyn TokenCredential>,
    identity: String,
    refusals: Refusals,
}

#[async_trait::async_trait]
impl TokenCredential for NamedCredential {
    async fn get_token(
        &self,
        scopes: &[&str],
        options: Option<TokenRequestOptions<'_>>,
    ) -> azure_core::Result<AccessToken> {
        self.inner.get_token(scopes, options).await.map_err(|e| {
            if entra_refusal_status(&e).is_some() {
                self.refusals.record();
                let message = format!("Entra ID refused the {}: {e}", self.identity);
                azure_core::Error::with_error(azure_core::error::ErrorKind::Credential, e, message)
            } else {
                e
            }
        })
    }
}

/// `AADSTS` codes of Entra ID that say "try again", not "this identity is refused".
const TRANSIENT_AADSTS: [&str; 2] = ["AADSTS50000", "AADSTS90033"];

/// The `AADSTS<n>` code in a text, if any.
fn aadsts_code(text: &str) -> Option<&str> {
    let at = text.find("AADSTS")?;
    let digits = text[at + 6..]
        .bytes()
        .take_while(u8::is_ascii_digit)
        .count();
    (digits > 0).then(|| &text[at..at + 6 + digits])
}

/// The HTTP status when `error` is (or wraps) a refusal by Entra ID's token endpoint: a 4xx
/// answer carrying `AADSTS` error codes. Such a refusal is about the identity or its federation
/// (wrong issuer, subject or audience, unknown application) and does not pass by retrying.
// NB: azure_identity 1.0 reads the error body's `error_description` as a borrowed string, which
// fails on the `\r\n` escapes Entra puts in it (Trace ID, Correlation ID, Timestamp lines): the
// status is then lost and only the description survives, inside the parse error's text. So a
// credential error whose text carries an `AADSTS` code (not a transient one) counts as a refusal
// too, reported as 401.
pub fn entra_refusal_status(error: &azure_core::Error) -> Option<u16> {
    if *error.kind() == azure_core::error::ErrorKind::Credential {
        let mut text = error.to_string();
        let mut source = std::error::Error::source(error);
        while let Some(s) = source {
            text.push('\n');
            text.push_str(&s.to_string());
            source = s.source();
        }
        if let Some(code) = aadsts_code(&text)
            && !TRANSIENT_AADSTS.contains(&code)
        {
            return Some(401);
        }
    }
    let mut current: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = current {
        if let Some(az) = e.downcast_ref::<azure_core::Error>()
            && let azure_core::error::ErrorKind::HttpResponse {
                status,
                error_code: Some(_),
                ..
            } = az.kind()
        {
            let status = u16::from(*status);
            if (400..500).contains(&status) && status != 429 {
                return Some(status);
            }
        }
        current = e.source();
    }
    None
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
#[path = "credential_tests.rs"]
mod credential_tests;
