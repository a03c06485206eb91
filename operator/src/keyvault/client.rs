//! [`AzureKeyVault`]: the [`KeyVault`] contract on the official SDK (`azure_security_keyvault_keys`).
//!
//! One SDK `KeyClient` per vault (cached: it holds the vault's challenge scope and token cache).
//! Every call goes through the process-wide [`RateLimiter`] and is counted in [`KeyVaultMetrics`].
//!
//! Retries, deliberately (the SDK's default would retry everything, writes and 429 included, for up
//! to 60 s inside one call):
//! - the SDK's own retry policy is switched off (`RetryOptions::none()`), so exactly one layer decides;
//! - reads (GET) are retried here a few times quickly on 5xx and lost connections: they change
//!   nothing, and a short blip should not cost a whole requeue;
//! - writes are never resent blindly: a lost answer makes the outcome unknown, and a create whose
//!   outcome is unknown is resolved by a GET before any second create (see [`KeyVault::create_key`]
//!   on this type), so no extra key version is made;
//! - 429 is never retried inside a call: it is returned as [`KeyVaultError::Throttled`] with the
//!   service's delay, and the vault's limiter backs off until then for every caller, so the
//!   controller requeues after `Retry-After` instead of holding a worker.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use azure_core::credentials::TokenCredential;
use azure_core::http::{ClientOptions, RequestContent, Response, RetryOptions, Transport};
use azure_security_keyvault_keys::models::{
    CreateKeyParameters, CurveName, DeletedKey, Key, KeyAttributes, KeyOperation, KeyReleasePolicy,
    KeyType, UpdateKeyPropertiesParameters,
};
use azure_security_keyvault_keys::{KeyClient, KeyClientOptions};
use base64::Engine as _;

use super::credential::{self, CredentialError, CredentialKind, CredentialSettings};
use super::errors::{self, CallKind, HttpFailure, TransportFailure};
use super::limiter::{CallClass, RateLimiter, RateLimits};
use super::metrics::{CallLabels, KeyVaultMetrics, OperationLabels, VaultLabels};
use super::transport::{self, ResolveOverride, TransportError, TransportSettings};
use super::{
    DeletedVaultKey, KeyVault, KeyVaultArgs, KeyVaultError, NewKey, StoredReleasePolicy, VaultKey,
    VaultUrl,
};

/// Content type of a release policy in the JSON grammar.
const POLICY_CONTENT_TYPE: &str = "application/json; charset=utf-8";

/// How far back (service clock vs ours) a key version may have been created and still be taken as
/// the result of a create whose answer was lost.
const CREATE_CLOCK_SKEW: Duration = Duration::from_secs(120);

/// Failure to set the client up.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// Credential.
    #[error(transparent)]
    Credential(#[from] CredentialError),
    /// Transport (CA file, reqwest).
    #[error(transparent)]
    Transport(#[from] TransportError),
}

/// Everything the client needs, without the command line (tests build it directly).
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Credential.
    pub credential: CredentialSettings,
    /// Transport: overrides, trust roots, timeout.
    pub transport: TransportSettings,
    /// Per-vault rate limits.
    pub limits: RateLimits,
    /// Extra attempts of a read after a 5xx or a lost connection.
    pub read_retries: u32,
    /// First delay between read attempts (then x4).
    pub read_retry_delay: Duration,
    /// Key Vault API version; `None` = the SDK's (2025-07-01).
    pub api_version: Option<String>,
}

impl ClientConfig {
    /// Config from the command line; `federated_token_file` is `AZURE_FEDERATED_TOKEN_FILE`.
    pub fn from_args(
        args: &KeyVaultArgs,
        federated_token_file: Option<&str>,
    ) -> Result<Self, SetupError> {
        let (kind, _) = credential::choose(args.credential, federated_token_file);
        let mut transport = TransportSettings {
            resolve: args.resolve.clone(),
            ca_pem: None,
            timeout: Some(args.timeout),
        };
        if let Some(ca) = &args.ca_file {
            transport.load_ca(ca)?;
        }
        Ok(Self {
            credential: CredentialSettings {
                kind,
                static_token_file: args.static_token_file.clone(),
                authority_host: args.authority_host.clone(),
                managed_identity_client_id: args.managed_identity_client_id.clone(),
                workload_identity: Default::default(),
            },
            transport,
            limits: RateLimits {
                creates: args.create_limit,
                other: args.other_limit,
                max_wait: args.max_wait,
                ..RateLimits::default()
            },
            read_retries: 2,
            read_retry_delay: Duration::from_millis(100),
            api_version: args.api_version.clone(),
        })
    }
}

/// The operations, for metrics labels and call kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Get,
    Create,
    Update,
    Delete,
    GetDeleted,
    Recover,
}

impl Op {
    fn label(self) -> &'static str {
        match self {
            Op::Get => "get",
            Op::Create => "create",
            Op::Update => "update",
            Op::Delete => "delete",
            Op::GetDeleted => "get_deleted",
            Op::Recover => "recover",
        }
    }

    fn kind(self) -> CallKind {
        match self {
            Op::Get | Op::GetDeleted => CallKind::Read,
            Op::Update => CallKind::Update,
            Op::Create | Op::Delete | Op::Recover => CallKind::Write,
        }
    }

    fn class(self) -> CallClass {
        match self {
            Op::Create => CallClass::Create,
            _ => CallClass::Other,
        }
    }
}

/// The Key Vault client of the operator.
pub struct AzureKeyVault {
    credential: Arc<dyn TokenCredential>,
    credential_kind: CredentialKind,
    transport: Transport,
    resolve: Vec<ResolveOverride>,
    api_version: Option<String>,
    read_retries: u32,
    read_retry_delay: Duration,
    clients: Mutex<HashMap<VaultUrl, Arc<KeyClient>>>,
    limiter: RateLimiter,
    metrics: KeyVaultMetrics,
    /// Creates whose answer was lost, by (vault host, key name), with when they were sent.
    pending_creates: Mutex<HashMap<(String, String), SystemTime>>,
}

impl std::fmt::Debug for AzureKeyVault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AzureKeyVault")
            .field("credential", &self.credential_kind.as_str())
            .field("resolve", &self.resolve)
            .field("limits", &self.limiter.limits())
            .finish_non_exhaustive()
    }
}

impl AzureKeyVault {
    /// The client `ckb-operator run` uses: credential, transport and limits from the flags. Logs the
    /// credential chosen (and whether by default) and any test plumbing in use.
    pub fn from_args(args: &KeyVaultArgs) -> Result<Self, SetupError> {
        let federated = std::env::var("AZURE_FEDERATED_TOKEN_FILE").ok();
        let (kind, defaulted) = credential::choose(args.credential, federated.as_deref());
        tracing::info!(
            credential = kind.as_str(),
            chosen = if defaulted {
                "by default (AZURE_FEDERATED_TOKEN_FILE set: workload identity, else managed identity)"
            } else {
                "explicitly (--kv-credential)"
            },
            create_limit_per_10s = args.create_limit,
            other_limit_per_10s = args.other_limit,
            "Key Vault credential"
        );
        if !args.resolve.is_empty() || args.ca_file.is_some() {
            tracing::warn!(
                resolve = ?args.resolve.iter().map(|r| format!("{:?}={}", r.pattern, r.addr)).collect::<Vec<_>>(),
                ca_file = ?args.ca_file,
                "Key Vault test plumbing in use: host overrides and/or a private CA"
            );
        }
        if kind == CredentialKind::StaticToken && args.resolve.is_empty() {
            tracing::warn!(
                "static-token credential without --kv-resolve: calls to real Azure vaults will be refused"
            );
        }
        Self::new(ClientConfig::from_args(args, federated.as_deref())?)
    }

    /// A client from explicit settings.
    pub fn new(config: ClientConfig) -> Result<Self, SetupError> {
        let http = transport::http_client(&config.transport)?;
        let transport = Transport::new(Arc::new(http));
        let credential = credential::build(&config.credential, Some(transport.clone()))?;
        Ok(Self::assemble(config, transport, credential))
    }

    fn assemble(
        config: ClientConfig,
        transport: Transport,
        credential: Arc<dyn TokenCredential>,
    ) -> Self {
        Self {
            credential,
            credential_kind: config.credential.kind,
            transport,
            resolve: config.transport.resolve,
            api_version: config.api_version,
            read_retries: config.read_retries,
            read_retry_delay: config.read_retry_delay,
            clients: Mutex::default(),
            limiter: RateLimiter::new(config.limits),
            metrics: KeyVaultMetrics::default(),
            pending_creates: Mutex::default(),
        }
    }

    /// The metrics this client records into (register them once with [`KeyVaultMetrics::register`]).
    pub fn metrics(&self) -> &KeyVaultMetrics {
        &self.metrics
    }

    /// The process-wide per-vault limiter.
    pub fn limiter(&self) -> &RateLimiter {
        &self.limiter
    }

    /// The SDK client for `vault`, made on first use.
    fn client_for(&self, vault: &VaultUrl) -> Result<Arc<KeyClient>, KeyVaultError> {
        let host = host_without_port(vault.host());
        let overridden = transport::find_override(&self.resolve, host).is_some();
        if self.credential_kind == CredentialKind::StaticToken && !overridden && is_azure_host(host)
        {
            return Err(KeyVaultError::InvalidRequest {
                message: format!(
                    "the static-token credential is for tests and the local double only; it is not sent to {vault} \
                     (no --kv-resolve override for {host})"
                ),
            });
        }
        let mut clients = self.clients.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(client) = clients.get(vault) {
            return Ok(client.clone());
        }
        let mut options = KeyClientOptions {
            client_options: ClientOptions {
                transport: Some(self.transport.clone()),
                retry: RetryOptions::none(),
                ..Default::default()
            },
            // NB: a double on loopback answers the challenge with its own resource; the check that
            // the resource is the vault's domain stays on for every vault not redirected by an override.
            verify_challenge_resource: Some(!overridden),
            ..Default::default()
        };
        if let Some(v) = &self.api_version {
            options.api_version = v.clone();
        }
        let client = KeyClient::new(vault.as_str(), self.credential.clone(), Some(options))
            .map_err(|e| KeyVaultError::InvalidRequest {
                message: format!("cannot make a Key Vault client for {vault}: {e}"),
            })?;
        let client = Arc::new(client);
        clients.insert(vault.clone(), client.clone());
        Ok(client)
    }

    /// One operation: limiter slot, SDK call, mapping, metrics; reads retried on transient failures.
    async fn call<T, R, F, Fut>(
        &self,
        vault: &VaultUrl,
        op: Op,
        send: F,
        convert: impl Fn(T) -> Result<R, String>,
    ) -> Result<R, KeyVaultError>
    where
        T: serde::de::DeserializeOwned,
        F: Fn(Arc<KeyClient>) -> Fut,
        Fut: Future<Output = azure_core::Result<Response<T>>>,
    {
        let client = self.client_for(vault)?;
        let host = vault.host().to_owned();
        let attempts = if op.kind() == CallKind::Read {
            1 + self.read_retries
        } else {
            1
        };
        let mut delay = self.read_retry_delay;
        let mut attempt = 1;
        loop {
            let permit = match self.limiter.acquire(&host, op.class()).await {
                Ok(p) => p,
                Err(e) => {
                    self.metrics
                        .throttled
                        .get_or_create(&VaultLabels {
                            vault: host.clone(),
                        })
                        .inc();
                    return Err(e);
                }
            };
            let op_labels = OperationLabels {
                operation: op.label().into(),
            };
            self.metrics
                .limiter_wait
                .get_or_create(&op_labels)
                .observe(permit.waited().as_secs_f64());
            let started = tokio::time::Instant::now();
            let sent = send(client.clone()).await;
            // The call is over for the service: its window now runs from here.
            drop(permit);
            let result = match sent {
                Ok(response) => match response.into_model() {
                    Ok(model) => convert(model).map_err(|m| unexpected_answer(op, m)),
                    Err(e) => Err(unexpected_answer(op, e.to_string())),
                },
                Err(e) => Err(map_sdk_error(&e, op.kind())),
            };
            self.metrics
                .duration
                .get_or_create(&op_labels)
                .observe(started.elapsed().as_secs_f64());
            let outcome = match &result {
                Ok(_) => "ok",
                Err(e) => e.kind(),
            };
            self.metrics
                .requests
                .get_or_create(&CallLabels {
                    operation: op.label().into(),
                    outcome: outcome.into(),
                })
                .inc();
            match result {
                Err(KeyVaultError::Throttled {
                    retry_after,
                    message,
                }) => {
                    self.limiter.back_off(&host, retry_after);
                    self.metrics
                        .throttled
                        .get_or_create(&VaultLabels {
                            vault: host.clone(),
                        })
                        .inc();
                    tracing::debug!(vault = %vault, operation = op.label(), ?retry_after, "Key Vault throttled");
                    return Err(KeyVaultError::Throttled {
                        retry_after,
                        message,
                    });
                }
                Err(KeyVaultError::Transient {
                    message,
                    outcome_unknown,
                }) if attempt < attempts => {
                    tracing::debug!(vault = %vault, operation = op.label(), attempt, %message, "retrying read");
                    debug_assert!(!outcome_unknown, "reads have no unknown outcome");
                    tokio::time::sleep(delay).await;
                    delay *= 4;
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    async fn get_key_with_created(
        &self,
        vault: &VaultUrl,
        name: &str,
    ) -> Result<(VaultKey, Option<i64>), KeyVaultError> {
        let name_owned = name.to_owned();
        self.call(
            vault,
            Op::Get,
            |c| {
                let name = name_owned.clone();
                async move { c.get_key(&name, None).await }
            },
            |key: Key| {
                let created = key
                    .attributes
                    .as_ref()
                    .and_then(|a| a.created)
                    .map(|t| t.unix_timestamp());
                vault_key(key).map(|k| (k, created))
            },
        )
        .await
    }

    /// After a create whose answer was lost: `Some(key)` when the key has a version made by it (or
    /// at least not older than it), `None` when the create did not apply.
    async fn find_created_version(
        &self,
        vault: &VaultUrl,
        name: &str,
        sent_at: SystemTime,
    ) -> Result<Option<VaultKey>, KeyVaultError> {
        let earliest = sent_at
            .checked_sub(CREATE_CLOCK_SKEW)
            .unwrap_or(SystemTime::UNIX_EPOCH)
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        match self.get_key_with_created(vault, name).await {
            // A version without a creation time is taken as ours: a missing version is repaired by
            // the next reconcile, an extra one never can be.
            Ok((key, created)) if created.is_none_or(|c| c >= earliest) => Ok(Some(key)),
            Ok(_) => Ok(None),
            Err(KeyVaultError::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn pending_create(&self, key: &(String, String)) -> Option<SystemTime> {
        self.pending_creates
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(key)
            .copied()
    }

    fn set_pending_create(&self, key: (String, String), at: Option<SystemTime>) {
        let mut pending = self
            .pending_creates
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        match at {
            Some(at) => {
                pending.insert(key, at);
            }
            None => {
                pending.remove(&key);
            }
        }
    }

    async fn create_once(&self, vault: &VaultUrl, key: &NewKey) -> Result<VaultKey, KeyVaultError> {
        let params = create_parameters(key);
        let name = key.name.clone();
        self.call(
            vault,
            Op::Create,
            |c| {
                let name = name.clone();
                let params = params.clone();
                async move {
                    let body: RequestContent<CreateKeyParameters> = params.try_into()?;
                    c.create_key(&name, body, None).await
                }
            },
            vault_key,
        )
        .await
    }
}

#[async_trait]
impl KeyVault for AzureKeyVault {
    async fn get_key(&self, vault: &VaultUrl, name: &str) -> Result<VaultKey, KeyVaultError> {
        self.get_key_with_created(vault, name).await.map(|(k, _)| k)
    }

    /// Creates the key. A create whose answer is lost (timeout, reset, 5xx) is followed by a GET
    /// before anything else: if the key now has a version made by it, that version is returned as
    /// the result; if not, the error says the create did not apply (`outcome_unknown: false`) and
    /// the caller may create again. If even the GET fails, the create stays pending and the next
    /// `create_key` of that key in this process GETs first instead of creating, so a retried create
    /// never makes a second version.
    async fn create_key(&self, vault: &VaultUrl, key: &NewKey) -> Result<VaultKey, KeyVaultError> {
        let pending_key = (vault.host().to_owned(), key.name.clone());
        if let Some(sent_at) = self.pending_create(&pending_key) {
            match self.find_created_version(vault, &key.name, sent_at).await? {
                Some(existing) => {
                    self.set_pending_create(pending_key, None);
                    return Ok(existing);
                }
                None => self.set_pending_create(pending_key.clone(), None),
            }
        }
        let sent_at = SystemTime::now();
        match self.create_once(vault, key).await {
            Err(KeyVaultError::Transient {
                message,
                outcome_unknown: true,
            }) => {
                self.set_pending_create(pending_key.clone(), Some(sent_at));
                tracing::warn!(vault = %vault, key = %key.name, %message, "create answer lost; reading the key before any new create");
                match self.find_created_version(vault, &key.name, sent_at).await {
                    Ok(Some(created)) => {
                        self.set_pending_create(pending_key, None);
                        Ok(created)
                    }
                    Ok(None) => {
                        self.set_pending_create(pending_key, None);
                        Err(KeyVaultError::Transient {
                            message: format!(
                                "{message} (the key was read afterwards: the create did not apply)"
                            ),
                            outcome_unknown: false,
                        })
                    }
                    Err(read_error) => Err(KeyVaultError::Transient {
                        message: format!(
                            "{message} (reading the key afterwards failed too: {read_error}; the next create reads first)"
                        ),
                        outcome_unknown: true,
                    }),
                }
            }
            other => other,
        }
    }

    async fn update_key(
        &self,
        vault: &VaultUrl,
        name: &str,
        version: &str,
        release_policy_json: Option<&str>,
        tags: Option<&BTreeMap<String, String>>,
    ) -> Result<VaultKey, KeyVaultError> {
        let params = UpdateKeyPropertiesParameters {
            release_policy: release_policy_json.map(|json| KeyReleasePolicy {
                content_type: Some(POLICY_CONTENT_TYPE.into()),
                encoded_policy: Some(json.as_bytes().to_vec()),
                immutable: None,
            }),
            tags: tags.map(|t| t.iter().map(|(k, v)| (k.clone(), v.clone())).collect()),
            ..Default::default()
        };
        let (name, version) = (name.to_owned(), version.to_owned());
        self.call(
            vault,
            Op::Update,
            |c| {
                let (name, version, params) = (name.clone(), version.clone(), params.clone());
                async move {
                    let body: RequestContent<UpdateKeyPropertiesParameters> = params.try_into()?;
                    let options =
                        azure_security_keyvault_keys::models::KeyClientUpdateKeyPropertiesOptions {
                            key_version: Some(version),
                            ..Default::default()
                        };
                    c.update_key_properties(&name, body, Some(options)).await
                }
            },
            vault_key,
        )
        .await
    }

    async fn delete_key(
        &self,
        vault: &VaultUrl,
        name: &str,
    ) -> Result<DeletedVaultKey, KeyVaultError> {
        let name = name.to_owned();
        self.call(
            vault,
            Op::Delete,
            |c| {
                let name = name.clone();
                async move { c.delete_key(&name, None).await }
            },
            deleted_vault_key,
        )
        .await
    }

    async fn get_deleted_key(
        &self,
        vault: &VaultUrl,
        name: &str,
    ) -> Result<DeletedVaultKey, KeyVaultError> {
        let name = name.to_owned();
        self.call(
            vault,
            Op::GetDeleted,
            |c| {
                let name = name.clone();
                async move { c.get_deleted_key(&name, None).await }
            },
            deleted_vault_key,
        )
        .await
    }

    async fn recover_deleted_key(
        &self,
        vault: &VaultUrl,
        name: &str,
    ) -> Result<VaultKey, KeyVaultError> {
        let name = name.to_owned();
        self.call(
            vault,
            Op::Recover,
            |c| {
                let name = name.clone();
                async move { c.recover_deleted_key(&name, None).await }
            },
            vault_key,
        )
        .await
    }
}

fn unexpected_answer(op: Op, detail: String) -> KeyVaultError {
    // The service answered 2xx with something we cannot read: a write may have been applied.
    KeyVaultError::Transient {
        message: format!("unexpected answer to {}: {detail}", op.label()),
        outcome_unknown: op.kind() != CallKind::Read,
    }
}

/// Maps an SDK error (HTTP answer or transport failure).
fn map_sdk_error(error: &azure_core::Error, kind: CallKind) -> KeyVaultError {
    use azure_core::error::ErrorKind;
    match error.kind() {
        ErrorKind::HttpResponse {
            status,
            raw_response,
            ..
        } => {
            let status = u16::from(*status);
            let failure = match raw_response {
                Some(raw) => {
                    let headers = raw.headers();
                    let retry_after = errors::retry_after(
                        |name| {
                            headers
                                .iter()
                                .find(|(k, _)| k.as_str().eq_ignore_ascii_case(name))
                                .map(|(_, v)| v.as_str())
                        },
                        SystemTime::now(),
                    );
                    HttpFailure::from_parts(status, raw.body().as_ref(), retry_after)
                }
                None => HttpFailure {
                    status,
                    message: error.to_string(),
                    ..Default::default()
                },
            };
            errors::classify_http(&failure, kind)
        }
        ErrorKind::Connection => {
            errors::classify_transport(TransportFailure::Connect, kind, error_chain(error))
        }
        ErrorKind::Io => {
            errors::classify_transport(TransportFailure::AfterSend, kind, error_chain(error))
        }
        // Entra ID refused the identity (its federation or application is wrong): a refusal
        // naming the identity (see credential.rs), not an outage.
        ErrorKind::Credential if credential::entra_refusal_status(error).is_some() => {
            KeyVaultError::Forbidden {
                status: credential::entra_refusal_status(error).unwrap_or(401),
                message: error_chain(error),
            }
        }
        // No token: nothing was sent. Often passing (IMDS or the token endpoint not ready yet), so
        // retryable; the message says which credential failed.
        ErrorKind::Credential => KeyVaultError::Transient {
            message: format!(
                "could not get a token for Key Vault: {}",
                error_chain(error)
            ),
            outcome_unknown: false,
        },
        // Challenge refused (wrong resource), bad URL, unreadable request: will not pass as is.
        _ => KeyVaultError::InvalidRequest {
            message: error_chain(error),
        },
    }
}

/// The error and its sources, `a: b: c`.
fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(s) = source {
        let s_text = s.to_string();
        if !text.contains(&s_text) {
            text.push_str(": ");
            text.push_str(&s_text);
        }
        source = s.source();
    }
    text
}

fn host_without_port(host: &str) -> &str {
    host.rsplit_once(':').map_or(host, |(h, _)| h)
}

/// Host names of real Azure vaults (public and sovereign clouds).
fn is_azure_host(host: &str) -> bool {
    const SUFFIXES: [&str; 5] = [
        ".azure.net",
        ".azure.cn",
        ".usgovcloudapi.net",
        ".microsoftazure.de",
        ".windows.net",
    ];
    let host = host.to_ascii_lowercase();
    SUFFIXES.iter().any(|s| host.ends_with(s))
}

fn create_parameters(key: &NewKey) -> CreateKeyParameters {
    let kty: KeyType = key
        .kty
        .parse()
        .unwrap_or(KeyType::UnknownValue(key.kty.clone()));
    let is_ec = matches!(kty, KeyType::Ec | KeyType::EcHsm);
    CreateKeyParameters {
        kty: Some(kty),
        key_size: if is_ec {
            None
        } else {
            key.size.map(|s| s as i32)
        },
        curve: key
            .curve
            .as_ref()
            .map(|c| c.parse().unwrap_or(CurveName::UnknownValue(c.clone()))),
        key_ops: Some(
            key.key_ops
                .iter()
                .map(|o| o.parse().unwrap_or(KeyOperation::UnknownValue(o.clone())))
                .collect(),
        ),
        key_attributes: Some(KeyAttributes {
            enabled: Some(true),
            exportable: key.exportable.then_some(true),
            ..Default::default()
        }),
        release_policy: key
            .release_policy_json
            .as_ref()
            .map(|json| KeyReleasePolicy {
                content_type: Some(POLICY_CONTENT_TYPE.into()),
                encoded_policy: Some(json.as_bytes().to_vec()),
                immutable: Some(false),
            }),
        tags: Some(
            key.tags
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        ),
        ..Default::default()
    }
}

/// `https://<vault>/keys/<name>/<version>` -> (name, version).
fn name_and_version(kid: &str) -> Result<(String, String), String> {
    let path = kid
        .strip_prefix("https://")
        .and_then(|rest| rest.split_once('/'))
        .map(|(_, path)| path)
        .ok_or_else(|| format!("key id {kid:?} is not https://<vault>/keys/<name>/<version>"))?;
    let mut parts = path.split('/').filter(|p| !p.is_empty());
    match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some("keys"), Some(name), Some(version), None) => {
            Ok((name.to_owned(), version.to_owned()))
        }
        _ => Err(format!(
            "key id {kid:?} is not https://<vault>/keys/<name>/<version>"
        )),
    }
}

fn release_policy(policy: Option<KeyReleasePolicy>) -> Result<Option<StoredReleasePolicy>, String> {
    let Some(policy) = policy else {
        return Ok(None);
    };
    let Some(data) = policy.encoded_policy else {
        return Ok(None);
    };
    // The SDK has already decoded base64url; what is left must be the UTF-8 policy document.
    let json =
        String::from_utf8(data).map_err(|e| format!("release policy is not UTF-8 text: {e}"))?;
    Ok(Some(StoredReleasePolicy {
        content_type: policy.content_type,
        json,
        immutable: policy.immutable.unwrap_or(false),
    }))
}

/// Size in bits of an RSA modulus (leading zero bytes are not part of it).
fn rsa_bits(n: &[u8]) -> Option<u32> {
    let first = n.iter().position(|&b| b != 0)?;
    let significant = &n[first..];
    Some((significant.len() as u32 - 1) * 8 + (8 - significant[0].leading_zeros()))
}

struct KeyParts {
    jwk: Option<azure_security_keyvault_keys::models::JsonWebKey>,
    attributes: Option<KeyAttributes>,
    tags: Option<HashMap<String, String>>,
    release_policy: Option<KeyReleasePolicy>,
    managed: Option<bool>,
}

fn to_vault_key(parts: KeyParts) -> Result<VaultKey, String> {
    let jwk = parts.jwk.ok_or("the answer has no key")?;
    let id = jwk.kid.clone().ok_or("the key has no kid")?;
    let (name, version) = name_and_version(&id)?;
    let kty = jwk.kty.as_ref().map(|k| k.to_string()).unwrap_or_default();
    let size = match (&jwk.n, &jwk.k) {
        (Some(n), _) => rsa_bits(n),
        (None, Some(k)) if !k.is_empty() => Some(k.len() as u32 * 8),
        _ => None,
    };
    let attributes = parts.attributes.unwrap_or_default();
    Ok(VaultKey {
        id,
        name,
        version,
        kty,
        size,
        curve: jwk.crv.as_ref().map(|c| c.to_string()),
        key_ops: jwk.key_ops.clone().unwrap_or_default(),
        exportable: attributes.exportable.unwrap_or(false),
        // Key Vault always reports `enabled`; its default on create is true.
        enabled: attributes.enabled.unwrap_or(true),
        tags: parts.tags.unwrap_or_default().into_iter().collect(),
        release_policy: release_policy(parts.release_policy)?,
        managed: parts.managed.unwrap_or(false),
    })
}

fn vault_key(key: Key) -> Result<VaultKey, String> {
    to_vault_key(KeyParts {
        jwk: key.key,
        attributes: key.attributes,
        tags: key.tags,
        release_policy: key.release_policy,
        managed: key.managed,
    })
}

fn deleted_vault_key(key: DeletedKey) -> Result<DeletedVaultKey, String> {
    Ok(DeletedVaultKey {
        recovery_id: key.recovery_id.clone(),
        deleted_date: key.deleted_date.map(|t| t.unix_timestamp()),
        scheduled_purge_date: key.scheduled_purge_date.map(|t| t.unix_timestamp()),
        key: to_vault_key(KeyParts {
            jwk: key.key,
            attributes: key.attributes,
            tags: key.tags,
            release_policy: key.release_policy,
            managed: key.managed,
        })?,
    })
}

/// Unpadded base64url, as Key Vault writes release policies (for tests and logs).
pub fn base64url(data: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(data)
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert!(is_azure_host("demo.vault.azure.net"));
        assert!(is_azure_host("hsm.managedhsm.azure.net"));
        assert!(is_azure_host("demo.vault.azure.cn"));
        assert!(!is_azure_host("localhost"));
        assert!(!is_azure_host("127.0.0.1"));
        assert_eq!(host_without_port("localhost:8443"), "localhost");
        assert_eq!(
            host_without_port("demo.vault.azure.net"),
            "demo.vault.azure.net"
        );
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
        let client =
            AzureKeyVault::assemble(config, Transport::new(vault.clone()), Arc::new(FixedToken));
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
        let cert = rcgen::generate_simple_self_signed(vec!["demo.vault.azure.net".to_owned()])
            .expect("cert");
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
}
