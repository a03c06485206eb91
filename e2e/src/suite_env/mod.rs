//! The e2e suite's environment: a real local control plane, the Key Vault and Attestation
//! doubles, the Helm chart installed in development mode, and the real `ckb-operator` binary
//! running as a local process with the chart's ServiceAccount token; with the options and helpers
//! the suite needs (grace and resync periods, stop/kill/start of the operator, waits on binding
//! conditions and pods, keys in the double, the sidecar's release for a pod). The suites, the
//! demo (`ckb-demo`) and the README test all run on it.
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! use ckb_e2e::suite_env::{EnvOptions, Environment};
//! let env = Environment::start(EnvOptions::default()).await?;
//! env.apply_yaml("apiVersion: v1\nkind: Namespace\nmetadata: {name: demo}\n")?;
//! println!("kubeconfig: {}", env.cp.kubeconfig().display());
//! # Ok(()) }
//! ```
//!
//! - The doubles run **in this process** ([`ckb_doubles::KeyVaultDouble`]), so a test can read
//!   their request log, inject faults and mint attestation tokens.
//! - The chart is installed with `helm install` (release `ckb-operator`, namespace `ckb-system`)
//!   with `devMode.enabled=true`: CRD, ServiceAccount, RBAC and the webhook configuration pointing
//!   at `https://127.0.0.1:<port>/mutate`, where the local operator serves it.
//! - The operator authenticates to the API server with a token of the chart's ServiceAccount, so
//!   the chart's RBAC is exactly what it may do; to Key Vault with Azure workload identity, as the
//!   chart configures it ([`crate::workload_identity::OperatorIdentity`]): a ServiceAccount token
//!   for `api://AzureADTokenExchange` exchanged at the Entra ID double for an access token the Key
//!   Vault double accepts. It reaches `*.vault.azure.net`, `*.managedhsm.azure.net`,
//!   `*.attest.azure.net` and `login.microsoftonline.com` at the doubles through `--kv-resolve`
//!   and trusts their CA through `--kv-ca-file`.
//! - Waits are polls on a condition with a timeout, never fixed sleeps.
//! - Everything is torn down when the [`Environment`] is dropped, also when a test panics (then
//!   the tail of the operator's log and of every control-plane log is printed first).
//!
//! The parts: [`tools`] (the operator binary and helm), [`helm`] (the chart), [`operator`] (the
//! operator process), [`kubectl`], [`waits`] (binding conditions, pods), [`double`] (the Key Vault
//! double's state and the sidecar's release for a pod), [`fixtures`] (manifests the tests apply).

use std::fs;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use ckb_doubles::{Config as DoubleConfig, KeyVaultDouble};

mod double;
mod fixtures;
mod helm;
mod kubectl;
mod operator;
mod tools;
mod waits;

pub use crate::cluster::wait_for;
use crate::cluster::{ClusterOptions, ControlPlane, Proc, free_ports, log_tail};
use crate::workload_identity::{IdentityOptions, OperatorIdentity};
pub use double::{VAULT_ADMIN_KV_TOKEN, app_env, hostdata_of_annotation, pod_annotation};
pub use fixtures::{BindingManifest, policy_config_map_yaml};
pub use helm::crd_established;
pub use tools::{helm_binary, operator_binary};

/// Namespace the chart is installed in (and the operator's own namespace).
pub const NAMESPACE: &str = "ckb-system";
/// Helm release name; with it the chart's objects are all called `ckb-operator`.
pub const RELEASE: &str = "ckb-operator";
/// The chart's ServiceAccount (the release's full name).
pub const SERVICE_ACCOUNT: &str = "ckb-operator";
/// Name of the CRD the chart installs.
pub const CRD_NAME: &str = "confidentialkeybindings.ckb.dev";
/// Bearer token a workload's sidecar presents to the Key Vault double (release only).
pub const RELEASE_KV_TOKEN: &str = "release-token";
/// The vault of the samples and of most tests.
pub const DEMO_VAULT: &str = "https://demo.vault.azure.net";
/// The attestation authority of the samples and of most tests.
pub const DEMO_AUTHORITY: &str = "https://sharedeus.eus.attest.azure.net";
/// The confidential RuntimeClass of AKS (the handler is what AKS names it; nothing runs pods here).
const RUNTIME_CLASS_YAML: &str = "apiVersion: node.k8s.io/v1\nkind: RuntimeClass\nmetadata:\n  \
name: kata-cc-isolation\nhandler: kata-cc\n";

/// Settings of an [`Environment`].
#[derive(Debug, Clone)]
pub struct EnvOptions {
    /// Vaults the operator may contact (`--allowed-vault`; also the chart's `keyVault.allowedVaults`).
    pub allowed_vaults: Vec<String>,
    /// `--hash-grace-period`: short, so tests see old hashes pruned.
    pub hash_grace_period: Duration,
    /// `--resync-period`.
    pub resync_period: Duration,
    /// `--max-retry-delay`: short, so a binding recovers quickly after a fault.
    pub max_retry_delay: Duration,
    /// The chart's `webhook.failurePolicy`.
    pub failure_policy: String,
    /// Extra `--set` values for `helm install` (`key=value`).
    pub helm_set: Vec<String>,
    /// The operator's federated ServiceAccount token: lifetime and refresh.
    pub identity: IdentityOptions,
    /// Lifetime of the access tokens the Entra double issues (the SDK renews 5 minutes before
    /// expiry, so a lifetime just over 5 minutes makes the operator exchange again every few seconds).
    pub entra_token_lifetime: Duration,
    /// Record every API request of the operator (the chart's ServiceAccount) in the API server's
    /// audit log ([`ControlPlane::audit_log`]).
    pub audit_operator: bool,
}

impl Default for EnvOptions {
    fn default() -> Self {
        Self {
            allowed_vaults: vec![DEMO_VAULT.to_string()],
            hash_grace_period: Duration::from_secs(5),
            resync_period: Duration::from_secs(60),
            max_retry_delay: Duration::from_secs(5),
            failure_policy: "Fail".to_string(),
            helm_set: Vec::new(),
            identity: IdentityOptions::default(),
            entra_token_lifetime: Duration::from_secs(3600),
            audit_operator: false,
        }
    }
}

/// A running control plane + doubles + chart + operator. Drop it to tear everything down.
pub struct Environment {
    /// The control plane (admin client, kubectl, API server restart, logs).
    pub cp: ControlPlane,
    /// The Key Vault and Attestation doubles (request log, faults, keys, tokens).
    pub double: KeyVaultDouble,
    /// The settings it was started with.
    pub opts: EnvOptions,
    operator: Option<Proc>,
    operator_bin: PathBuf,
    operator_kubeconfig: PathBuf,
    operator_log: PathBuf,
    /// The operator's workload identity (federation in the Entra double, token file).
    pub identity: Option<OperatorIdentity>,
    kv_ca_file: PathBuf,
    webhook_addr: SocketAddr,
    metrics_addr: SocketAddr,
    helm: PathBuf,
    helm_home: PathBuf,
    http: reqwest::Client,
}

impl Environment {
    /// Starts everything and waits until the operator is ready (`/readyz`) and the webhook
    /// configuration carries its CA.
    pub async fn start(opts: EnvOptions) -> Result<Self> {
        let started = Instant::now();
        // Built before anything starts, so a compile error costs no cluster.
        let operator_bin = operator_binary()?;
        let cluster = ClusterOptions {
            audited_users: if opts.audit_operator {
                vec![format!(
                    "system:serviceaccount:{NAMESPACE}:{SERVICE_ACCOUNT}"
                )]
            } else {
                Vec::new()
            },
        };
        let cp = ControlPlane::start_with(cluster)
            .await
            .context("local control plane")?;
        let double = KeyVaultDouble::start(DoubleConfig::default())
            .await
            .context("Key Vault and Attestation doubles")?;
        let dir = cp.dir().to_path_buf();
        let kv_ca_file = dir.join("doubles-ca.pem");
        fs::write(&kv_ca_file, double.ca_pem())?;
        double.entra().set_token_lifetime(opts.entra_token_lifetime);
        let helm_home = dir.join("helm");
        fs::create_dir_all(&helm_home)?;
        let http = double.client_for(&[]);
        let [webhook_port, metrics_port] = free_ports::<2>()?;
        let loopback = |port| SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let mut env = Self {
            cp,
            double,
            opts,
            operator: None,
            operator_bin,
            operator_kubeconfig: dir.join("operator.kubeconfig"),
            operator_log: dir.join("operator.log"),
            identity: None,
            kv_ca_file,
            webhook_addr: loopback(webhook_port),
            metrics_addr: loopback(metrics_port),
            helm: helm_binary(),
            helm_home,
            http,
        };
        env.helm_install().await?;
        // What an AKS Kata confidential node pool provides; the API server refuses pods naming a
        // RuntimeClass that does not exist.
        env.apply_yaml(RUNTIME_CLASS_YAML)?;
        env.identity = Some(
            OperatorIdentity::start(
                &env.cp,
                &env.double,
                NAMESPACE,
                SERVICE_ACCOUNT,
                env.opts.identity.clone(),
            )
            .await
            .context("the operator's workload identity")?,
        );
        env.write_operator_kubeconfig().await?;
        env.start_operator().await?;
        tracing::info!(
            elapsed_ms = started.elapsed().as_millis() as u64,
            "e2e environment ready"
        );
        Ok(env)
    }

    /// The webhook URL the chart registers.
    pub fn webhook_url(&self) -> String {
        format!("https://{}/mutate", self.webhook_addr)
    }

    /// The operator's `/metrics` URL.
    pub fn metrics_url(&self) -> String {
        format!("http://{}/metrics", self.metrics_addr)
    }

    /// Path of the operator's log file.
    pub fn operator_log(&self) -> &Path {
        &self.operator_log
    }

    /// Path of the kubeconfig the operator uses (the chart ServiceAccount's token).
    pub fn operator_kubeconfig(&self) -> &Path {
        &self.operator_kubeconfig
    }

    /// `https://<vault host>:<double port>`: a vault URL a client made by
    /// [`Self::double_client`] reaches the double with.
    pub fn double_url(&self, host: &str) -> String {
        format!("https://{host}:{}", self.double.addr().port())
    }

    /// An HTTPS client trusting the doubles' CA that reaches `hosts` at the double.
    pub fn double_client(&self, hosts: &[&str]) -> reqwest::Client {
        self.double.client_for(hosts)
    }

    /// Prints the tail of the operator's log and of every control-plane log to stderr.
    pub fn print_logs(&self, lines: usize) {
        eprintln!(
            "----- operator ({}) last {lines} lines -----\n{}",
            self.operator_log.display(),
            log_tail(&self.operator_log, lines)
        );
        self.cp.print_logs(lines);
    }
}

impl Drop for Environment {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "----- operator ({}) last 80 lines -----\n{}",
                self.operator_log.display(),
                log_tail(&self.operator_log, 80)
            );
        }
        // The operator first (it would only log errors while the API server goes away); the
        // control plane and the doubles stop when their fields drop.
        if let Some(mut p) = self.operator.take() {
            p.stop(Duration::ZERO);
        }
    }
}
