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

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use azure_core::credentials::TokenCredential;
use azure_core::http::{ClientOptions, Response, RetryOptions, Transport};
use azure_security_keyvault_keys::{KeyClient, KeyClientOptions};

use super::credential::{self, CredentialError, CredentialKind, CredentialSettings, Refusals};
use super::errors::CallKind;
use super::limiter::{CallClass, RateLimiter, RateLimits};
use super::metrics::{CallLabels, KeyVaultMetrics, OperationLabels, VaultLabels};
use super::transport::{self, ResolveOverride, TransportError, TransportSettings};
use super::{KeyVaultArgs, KeyVaultError, VaultUrl};
use sdk::{map_sdk_error, unexpected_answer};

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
    /// Exchanges Entra ID refused (workload identity).
    refusals: Refusals,
    /// The SDK clients by vault, made when [`Self::refusals`] had the count kept beside them.
    clients: Mutex<(u64, HashMap<VaultUrl, Arc<KeyClient>>)>,
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
        let refusals = Refusals::default();
        let credential = credential::build(&config.credential, Some(transport.clone()), &refusals)?;
        Ok(Self::assemble(config, transport, credential, refusals))
    }

    fn assemble(
        config: ClientConfig,
        transport: Transport,
        credential: Arc<dyn TokenCredential>,
        refusals: Refusals,
    ) -> Self {
        Self {
            credential,
            credential_kind: config.credential.kind,
            transport,
            resolve: config.transport.resolve,
            api_version: config.api_version,
            read_retries: config.read_retries,
            read_retry_delay: config.read_retry_delay,
            refusals,
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
        let host = vault.host_name();
        let overridden = transport::find_override(&self.resolve, host).is_some();
        if self.credential_kind == CredentialKind::StaticToken && !overridden && vault.is_azure() {
            return Err(KeyVaultError::InvalidRequest {
                message: format!(
                    "the static-token credential is for tests and the local double only; it is not sent to {vault} \
                     (no --kv-resolve override for {host})"
                ),
            });
        }
        let mut guard = self.clients.lock().unwrap_or_else(|e| e.into_inner());
        let (made_at, clients) = &mut *guard;
        let refused = self.refusals.count();
        if *made_at != refused {
            // Entra ID refused an exchange since these clients were made: each SDK client keeps
            // its still-valid access token when a refresh fails, which would hide the refusal
            // until that token expires. New clients have no token: the next call exchanges again.
            if !clients.is_empty() {
                tracing::warn!(
                    "Entra ID refused the operator's identity: dropping the cached Key Vault access tokens"
                );
            }
            clients.clear();
            *made_at = refused;
        }
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

    /// [`Self::call`] for an operation on the key `name` (`send` gets its own copy at each attempt).
    async fn call_named<T, R, F, Fut>(
        &self,
        vault: &VaultUrl,
        op: Op,
        name: &str,
        send: F,
        convert: impl Fn(T) -> Result<R, String>,
    ) -> Result<R, KeyVaultError>
    where
        T: serde::de::DeserializeOwned,
        F: Fn(Arc<KeyClient>, String) -> Fut,
        Fut: Future<Output = azure_core::Result<Response<T>>>,
    {
        self.call(vault, op, |c| send(c, name.to_owned()), convert)
            .await
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
        let host = vault.host();
        let attempts = if op.kind() == CallKind::Read {
            1 + self.read_retries
        } else {
            1
        };
        let mut delay = self.read_retry_delay;
        let mut attempt = 1;
        loop {
            let result = self.attempt(host, op, send(client.clone()), &convert).await;
            match result {
                Err(KeyVaultError::Throttled {
                    retry_after,
                    message,
                }) => {
                    self.limiter.back_off(host, retry_after);
                    self.count_throttled(host);
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

    /// One attempt: waits for a limiter slot, sends (the future is only polled once the slot is
    /// taken), maps the answer and records the metrics.
    async fn attempt<T, R>(
        &self,
        host: &str,
        op: Op,
        sent: impl Future<Output = azure_core::Result<Response<T>>>,
        convert: impl Fn(T) -> Result<R, String>,
    ) -> Result<R, KeyVaultError>
    where
        T: serde::de::DeserializeOwned,
    {
        let permit = self
            .limiter
            .acquire(host, op.class())
            .await
            .inspect_err(|_| {
                self.count_throttled(host);
            })?;
        let op_labels = OperationLabels {
            operation: op.label().into(),
        };
        self.metrics
            .limiter_wait
            .get_or_create(&op_labels)
            .observe(permit.waited().as_secs_f64());
        let started = tokio::time::Instant::now();
        let sent = sent.await;
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
        result
    }

    fn count_throttled(&self, host: &str) {
        self.metrics
            .throttled
            .get_or_create(&VaultLabels {
                vault: host.to_owned(),
            })
            .inc();
    }
}

mod create;
mod ops;
mod sdk;

pub use sdk::base64url;

#[cfg(test)]
mod client_tests;
