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

use std::collections::BTreeMap;
use std::fs;
use std::io::Write as _;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, anyhow, bail};
use ckb_crds::ConfidentialKeyBinding;
use ckb_doubles::sidecar::{self, ReleaseCall, ReleasedKey, RuntimeKey, SidecarError, Trust};
use ckb_doubles::{Config as DoubleConfig, KeyVaultDouble, TokenRequest};
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::Api;
use kube::api::ListParams;
use serde_json::Value;

pub use crate::cluster::wait_for;
use crate::cluster::{ControlPlane, Proc, free_ports, log_tail, repo_root};
use crate::workload_identity::{IdentityOptions, OPERATOR_CLIENT_ID, OperatorIdentity};

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
/// Identity of the local operator in the leader Lease: fixed, so a restarted operator takes the
/// Lease back at once instead of waiting for the previous holder's Lease to expire.
const OPERATOR_IDENTITY: &str = "ckb-e2e-operator";
/// How long the operator may take to become ready.
const OPERATOR_READY_TIMEOUT: Duration = Duration::from_secs(120);

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

/// The `ckb-operator` binary: `$CKB_OPERATOR_BIN`, else built once with `cargo build -p
/// ckb-operator` (a no-op when up to date) into the workspace's target directory.
pub fn operator_binary() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("CKB_OPERATOR_BIN") {
        return Ok(PathBuf::from(p));
    }
    let root = repo_root();
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = Command::new(cargo)
        .current_dir(&root)
        .args([
            "build",
            "-j2",
            "-p",
            "ckb-operator",
            "--bin",
            "ckb-operator",
        ])
        .stdin(Stdio::null())
        .status()
        .context("running cargo build -p ckb-operator")?;
    if !status.success() {
        bail!("cargo build -p ckb-operator failed ({status})");
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    let bin = target.join("debug/ckb-operator");
    if !bin.is_file() {
        bail!("{} is missing after the build", bin.display());
    }
    Ok(bin)
}

/// helm: `$CKB_HELM`, else the one `scripts/install-tools.sh helm` installs, else `helm` on PATH.
pub fn helm_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("CKB_HELM") {
        return PathBuf::from(p);
    }
    let tools = std::env::var_os("CKB_TOOLS_DIR")
        .map(PathBuf::from)
        .or_else(|| {
            let cache = std::env::var_os("XDG_CACHE_HOME")
                .map(PathBuf::from)
                .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
            Some(cache.join("ckb-operator/tools"))
        });
    tools
        .map(|t| t.join("bin/helm"))
        .filter(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from("helm"))
}

fn output_text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

impl Environment {
    /// Starts everything and waits until the operator is ready (`/readyz`) and the webhook
    /// configuration carries its CA.
    pub async fn start(opts: EnvOptions) -> Result<Self> {
        let started = Instant::now();
        // Built before anything starts, so a compile error costs no cluster.
        let operator_bin = operator_binary()?;
        let cp = ControlPlane::start().await.context("local control plane")?;
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

    /// A `helm` command with the admin kubeconfig and helm's own state in the run directory.
    pub fn helm_command(&self) -> Command {
        let mut cmd = Command::new(&self.helm);
        cmd.env("KUBECONFIG", self.cp.kubeconfig())
            .env("HELM_CONFIG_HOME", self.helm_home.join("config"))
            .env("HELM_CACHE_HOME", self.helm_home.join("cache"))
            .env("HELM_DATA_HOME", self.helm_home.join("data"))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        cmd
    }

    /// Runs helm with `args`; fails with its output on a non-zero exit.
    pub fn helm(&self, args: &[&str]) -> Result<String> {
        let out = self
            .helm_command()
            .args(args)
            .output()
            .with_context(|| format!("running {}", self.helm.display()))?;
        let text = output_text(&out);
        if !out.status.success() {
            bail!("helm {} failed: {text}", args.join(" "));
        }
        Ok(text)
    }

    /// The `--set` values of the dev-mode install (also what `helm upgrade` is given).
    pub fn helm_values(&self) -> Vec<String> {
        let mut v = vec![
            "devMode.enabled=true".to_string(),
            format!("devMode.webhookUrl={}", self.webhook_url()),
            format!("webhook.failurePolicy={}", self.opts.failure_policy),
            // The ServiceAccount names the operator's identity, as on AKS.
            "workloadIdentity.enabled=true".to_string(),
            format!("workloadIdentity.clientId={OPERATOR_CLIENT_ID}"),
        ];
        for (i, vault) in self.opts.allowed_vaults.iter().enumerate() {
            v.push(format!("keyVault.allowedVaults[{i}]={vault}"));
        }
        v.extend(self.opts.helm_set.iter().cloned());
        v
    }

    async fn helm_install(&self) -> Result<()> {
        let chart = repo_root().join("charts/ckb-operator");
        let chart = chart.display().to_string();
        let values = self.helm_values();
        let mut args = vec![
            "install",
            RELEASE,
            &chart,
            "--namespace",
            NAMESPACE,
            "--create-namespace",
        ];
        for v in &values {
            args.extend(["--set", v]);
        }
        self.helm(&args)?;
        self.wait_crd_established().await
    }

    /// Waits until the binding CRD is Established (and so usable).
    pub async fn wait_crd_established(&self) -> Result<()> {
        let crds: Api<CustomResourceDefinition> = Api::all(self.cp.client());
        wait_for(Duration::from_secs(60), "the CRD to be Established", || {
            let crds = crds.clone();
            async move {
                let crd = crds.get_opt(CRD_NAME).await?;
                let established = crd
                    .and_then(|c| c.status)
                    .and_then(|s| s.conditions)
                    .unwrap_or_default()
                    .iter()
                    .any(|c| c.type_ == "Established" && c.status == "True");
                Ok(established.then_some(()))
            }
        })
        .await
    }

    async fn write_operator_kubeconfig(&self) -> Result<()> {
        let sa = SERVICE_ACCOUNT;
        // The ServiceAccount exists as soon as helm returns; the token is good for the run.
        let token = self
            .cp
            .token_for_service_account(NAMESPACE, sa, Duration::from_secs(4 * 3600))
            .await
            .context("token of the chart's ServiceAccount")?;
        let path = self
            .cp
            .kubeconfig_for_token(&format!("system:serviceaccount:{NAMESPACE}:{sa}"), &token)?;
        fs::copy(&path, &self.operator_kubeconfig)?;
        Ok(())
    }

    /// The flags the local operator runs with.
    fn operator_args(&self) -> Vec<String> {
        let addr = self.double.addr();
        let resolve = [
            ".vault.azure.net",
            ".managedhsm.azure.net",
            ".attest.azure.net",
        ]
        .iter()
        .map(|s| format!("{s}={addr}"))
        .chain([OperatorIdentity::resolve_entry(&self.double)])
        .collect::<Vec<_>>()
        .join(",");
        // Whole seconds: both duration parsers of the operator accept `<n>s`.
        let secs = |d: Duration| format!("{}s", d.as_secs().max(1));
        let mut args = vec![
            "run".to_string(),
            format!("--kv-resolve={resolve}"),
            format!("--kv-ca-file={}", self.kv_ca_file.display()),
            format!("--hash-grace-period={}", secs(self.opts.hash_grace_period)),
            format!("--resync-period={}", secs(self.opts.resync_period)),
            format!("--max-retry-delay={}", secs(self.opts.max_retry_delay)),
            format!("--webhook-addr={}", self.webhook_addr),
            "--webhook-cert-hosts=127.0.0.1".to_string(),
            format!("--webhook-namespace={NAMESPACE}"),
            format!("--webhook-config-name={RELEASE}"),
            "--webhook-cert-check-interval=2s".to_string(),
            format!("--metrics-addr={}", self.metrics_addr),
            "--log-format=text".to_string(),
        ];
        for v in &self.opts.allowed_vaults {
            args.push(format!("--allowed-vault={v}"));
        }
        args.extend(OperatorIdentity::operator_args());
        args
    }

    /// Starts the operator process (if not running) and waits until it is ready.
    pub async fn start_operator(&mut self) -> Result<()> {
        if self.operator_running() {
            return Ok(());
        }
        let log_level = std::env::var("CKB_E2E_OPERATOR_LOG").unwrap_or_else(|_| "info".into());
        let mut env = vec![
            (
                "KUBECONFIG".to_string(),
                self.operator_kubeconfig.display().to_string(),
            ),
            ("CKB_POD_NAMESPACE".to_string(), NAMESPACE.to_string()),
            ("CKB_POD_NAME".to_string(), OPERATOR_IDENTITY.to_string()),
            ("CKB_LOG_LEVEL".to_string(), log_level),
        ];
        env.extend(
            self.identity
                .iter()
                .flat_map(OperatorIdentity::operator_env),
        );
        self.operator = Some(Proc::start(
            "ckb-operator",
            &self.operator_bin,
            &self.operator_args(),
            &env,
            true,
            self.operator_log.clone(),
        )?);
        self.wait_operator_ready().await
    }

    /// Process id of the running operator (for its memory figures in `scripts/bench.sh`).
    pub fn operator_pid(&self) -> Option<u32> {
        self.operator.as_ref().map(Proc::id)
    }

    /// The operator's metrics and probe address.
    pub fn metrics_addr(&self) -> SocketAddr {
        self.metrics_addr
    }

    fn operator_running(&mut self) -> bool {
        self.operator.as_mut().is_some_and(Proc::is_running)
    }

    /// Waits until `/readyz` answers 200 and the webhook configuration carries a CA bundle.
    pub async fn wait_operator_ready(&mut self) -> Result<()> {
        let url = format!("http://{}/readyz", self.metrics_addr);
        let deadline = Instant::now() + OPERATOR_READY_TIMEOUT;
        loop {
            if let Some(p) = self.operator.as_mut() {
                p.check_alive()?;
            }
            let last = match self.http.get(&url).send().await {
                Ok(r) if r.status().is_success() => break,
                Ok(r) => format!("{} {}", r.status(), r.text().await.unwrap_or_default()),
                Err(e) => e.to_string(),
            };
            if Instant::now() >= deadline {
                bail!(
                    "the operator was not ready after {OPERATOR_READY_TIMEOUT:?} (last: {last}); \
                     log tail:\n{}",
                    log_tail(&self.operator_log, 60)
                );
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        let configs: Api<MutatingWebhookConfiguration> = Api::all(self.cp.client());
        wait_for(
            Duration::from_secs(60),
            "the webhook configuration's caBundle",
            || {
                let configs = configs.clone();
                async move {
                    let c = configs.get(RELEASE).await?;
                    let has_ca = c.webhooks.unwrap_or_default().iter().all(|w| {
                        w.client_config
                            .ca_bundle
                            .as_ref()
                            .is_some_and(|b| !b.0.is_empty())
                    });
                    Ok(has_ca.then_some(()))
                }
            },
        )
        .await
    }

    /// Stops the operator gracefully (SIGTERM; SIGKILL after 20 s) and waits for its exit.
    pub fn stop_operator(&mut self) {
        if let Some(mut p) = self.operator.take() {
            p.stop(Duration::from_secs(20));
        }
    }

    /// Kills the operator at once (SIGKILL), as a crash or an OOM kill would.
    pub fn kill_operator(&mut self) {
        if let Some(mut p) = self.operator.take() {
            p.stop(Duration::ZERO);
        }
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

    /// Applies YAML (one or more documents) with `kubectl apply` as the admin.
    pub fn apply_yaml(&self, yaml: &str) -> Result<String> {
        self.kubectl_stdin(&["apply", "-f", "-"], yaml)
    }

    /// Runs kubectl as the admin with `input` on stdin; fails with its output on a non-zero exit.
    pub fn kubectl_stdin(&self, args: &[&str], input: &str) -> Result<String> {
        let out = self.kubectl_stdin_output(args, input)?;
        let text = output_text(&out);
        if !out.status.success() {
            bail!("kubectl {} failed: {text}", args.join(" "));
        }
        Ok(text)
    }

    /// Runs kubectl as the admin with `input` on stdin and returns its output, whatever the exit.
    pub fn kubectl_stdin_output(&self, args: &[&str], input: &str) -> Result<Output> {
        let mut child = self
            .cp
            .kubectl_command()
            .args(args)
            .stdin(Stdio::piped())
            .spawn()
            .context("running kubectl")?;
        child
            .stdin
            .take()
            .ok_or_else(|| anyhow!("kubectl stdin"))?
            .write_all(input.as_bytes())?;
        Ok(child.wait_with_output()?)
    }

    /// Runs kubectl as the admin; fails with its output on a non-zero exit.
    pub fn kubectl(&self, args: &[&str]) -> Result<String> {
        let out = self.cp.kubectl(args)?;
        let text = output_text(&out);
        if !out.status.success() {
            bail!("kubectl {} failed: {text}", args.join(" "));
        }
        Ok(text)
    }

    /// Creates a namespace, opted in to injection when `opted_in`.
    pub fn create_namespace(&self, name: &str, opted_in: bool) -> Result<()> {
        let labels = if opted_in {
            "\n  labels:\n    ckb.dev/injection: enabled"
        } else {
            ""
        };
        self.apply_yaml(&format!(
            "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {name}{labels}\n"
        ))?;
        Ok(())
    }

    /// Waits until `namespace` is gone.
    pub async fn wait_namespace_gone(&self, name: &str, timeout: Duration) -> Result<()> {
        let api: Api<Namespace> = Api::all(self.cp.client());
        wait_for(timeout, &format!("namespace {name} to be gone"), || {
            let api = api.clone();
            async move { Ok(api.get_opt(name).await?.is_none().then_some(())) }
        })
        .await
    }

    /// The binding's condition `type_` as `(status, reason, message)`, if present.
    pub fn condition(b: &ConfidentialKeyBinding, type_: &str) -> Option<(String, String, String)> {
        b.status
            .as_ref()?
            .conditions
            .iter()
            .find(|c| c.type_ == type_)
            .map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()))
    }

    /// Waits until the binding's condition `type_` has `status` (and `reason`, when given), for
    /// the binding's current generation; returns the binding.
    pub async fn wait_binding_condition(
        &self,
        namespace: &str,
        name: &str,
        type_: &str,
        status: &str,
        reason: Option<&str>,
        timeout: Duration,
    ) -> Result<ConfidentialKeyBinding> {
        let api: Api<ConfidentialKeyBinding> = Api::namespaced(self.cp.client(), namespace);
        let what = format!(
            "binding {namespace}/{name} {type_}={status}{}",
            reason.map(|r| format!(" reason={r}")).unwrap_or_default()
        );
        wait_for(timeout, &what, || {
            let api = api.clone();
            async move {
                let Some(b) = api.get_opt(name).await? else {
                    bail!("the binding does not exist");
                };
                let current =
                    b.status.as_ref().and_then(|s| s.observed_generation) == b.metadata.generation;
                match Self::condition(&b, type_) {
                    Some((s, r, m)) => {
                        if current && s == status && reason.is_none_or(|want| want == r) {
                            Ok(Some(b))
                        } else {
                            bail!("{type_}={s} reason={r}: {m}")
                        }
                    }
                    None => Ok(None),
                }
            }
        })
        .await
    }

    /// Waits until the binding is Ready=True and returns it.
    pub async fn wait_binding_ready(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<ConfidentialKeyBinding> {
        self.wait_binding_condition(
            namespace,
            name,
            ckb_crds::conditions::types::READY,
            "True",
            None,
            Duration::from_secs(90),
        )
        .await
    }

    /// Waits until exactly `count` pods match `selector` in `namespace` and `check` holds for each.
    pub async fn wait_pods(
        &self,
        namespace: &str,
        selector: &str,
        count: usize,
        timeout: Duration,
        check: impl Fn(&Pod) -> bool,
    ) -> Result<Vec<Pod>> {
        let api: Api<Pod> = Api::namespaced(self.cp.client(), namespace);
        let lp = ListParams::default().labels(selector);
        let check = &check;
        let waited = wait_for(
            timeout,
            &format!("{count} pod(s) {selector} in {namespace}"),
            || {
                let (api, lp) = (api.clone(), lp.clone());
                async move {
                    let pods: Vec<Pod> = api
                        .list(&lp)
                        .await?
                        .items
                        .into_iter()
                        .filter(|p| p.metadata.deletion_timestamp.is_none())
                        .collect();
                    if pods.len() == count && pods.iter().all(check) {
                        Ok(Some(pods))
                    } else {
                        bail!("{} pod(s) found", pods.len())
                    }
                }
            },
        )
        .await;
        // What the controllers and admission said is what explains a missing pod.
        waited.map_err(|e| {
            let events = self
                .kubectl(&["get", "events", "-n", namespace, "--sort-by=.lastTimestamp"])
                .unwrap_or_else(|e| e.to_string());
            e.context(format!("events in {namespace}:\n{events}"))
        })
    }

    /// The double's state of `vault_host` (keys and soft-deleted keys), if the vault was touched.
    pub fn vault_state(&self, vault_host: &str) -> Option<Value> {
        self.double.keys().get(vault_host).cloned()
    }

    /// The latest version of a key in the double (its bundle plus `release_policy_json`), if any.
    pub fn key(&self, vault_host: &str, name: &str) -> Option<Value> {
        self.vault_state(vault_host)?
            .pointer(&format!("/keys/{name}"))?
            .as_array()?
            .last()
            .cloned()
    }

    /// Whether the double holds `name` soft-deleted in `vault_host`.
    pub fn key_soft_deleted(&self, vault_host: &str, name: &str) -> bool {
        self.vault_state(vault_host)
            .and_then(|v| v.pointer(&format!("/deleted/{name}")).cloned())
            .is_some()
    }

    /// The number of versions of a key in the double.
    pub fn key_versions(&self, vault_host: &str, name: &str) -> usize {
        self.vault_state(vault_host)
            .and_then(|v| v.pointer(&format!("/keys/{name}")).cloned())
            .and_then(|v| v.as_array().map(Vec::len))
            .unwrap_or(0)
    }

    /// Plays the SKR sidecar of `pod` as the real one would: vault, key and authority from the
    /// pod's injected env, hostdata = SHA-256 of the pod's agent-policy annotation; gets a token
    /// from the attestation double (adjusted by `tweak`), releases and unwraps the key.
    pub async fn release_for_pod(
        &self,
        pod: &Pod,
        tweak: impl FnOnce(&mut TokenRequest),
    ) -> Result<std::result::Result<ReleasedKey, SidecarError>> {
        let env = app_env(pod);
        let get = |k: &str| {
            env.get(k)
                .cloned()
                .ok_or_else(|| anyhow!("pod has no {k} env"))
        };
        let vault_host = get("SKR_AKV_ENDPOINT")?;
        let maa_host = get("SKR_MAA_ENDPOINT")?;
        let key_name = get("SKR_KEY_NAME")?;
        let annotation = pod
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(ckb_crds::labels::AGENT_POLICY))
            .ok_or_else(|| anyhow!("pod has no agent policy annotation"))?;
        let hostdata = hostdata_of_annotation(annotation)?;
        let mut req = TokenRequest {
            issuer_host: maa_host.clone(),
            hostdata,
            ..TokenRequest::default()
        };
        tweak(&mut req);
        let maa_host_for_url = req.issuer_host.clone();
        let client = self.double_client(&[&vault_host, &maa_host_for_url]);
        let runtime = RuntimeKey::generate()?;
        let token =
            sidecar::attest(&client, &self.double_url(&maa_host_for_url), &runtime, req).await?;
        let vault_url = self.double_url(&vault_host);
        let call = ReleaseCall {
            vault_url: &vault_url,
            key_name: &key_name,
            version: None,
            bearer: RELEASE_KV_TOKEN,
            token: &token,
            api_version: "7.4",
            enc: None,
        };
        let trust = Trust {
            roots: vec![self.double.ca_der()],
        };
        Ok(sidecar::release_key(&client, &call, &runtime, &trust).await)
    }
}

/// A policy ConfigMap (labelled so the operator watches it) named `name` holding `rego`, as YAML.
pub fn policy_config_map_yaml(ns: &str, name: &str, rego: &str) -> String {
    let body: String = rego.lines().map(|l| format!("    {l}\n")).collect();
    format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {name}\n  namespace: {ns}\n  labels:\n    \
         ckb.dev/policy: \"true\"\ndata:\n  policy.rego: |\n{body}"
    )
}

/// The `x-ms-sevsnpvm-hostdata` the confidential VM of a pod with this agent-policy annotation
/// reports: the lowercase hex SHA-256 of the annotation's decoded bytes, computed here with `sha2`
/// and `base64` rather than the operator's own functions, so that a wrong definition shared by
/// the webhook and the controller does not pass.
pub fn hostdata_of_annotation(annotation: &str) -> Result<String> {
    use base64::Engine as _;
    use sha2::Digest as _;
    let rego = base64::engine::general_purpose::STANDARD
        .decode(annotation)
        .context("the agent policy annotation is not standard base64")?;
    Ok(hex::encode(sha2::Sha256::digest(&rego)))
}

/// The env of the pod's first app container (not the `skr` sidecar), by name.
pub fn app_env(pod: &Pod) -> BTreeMap<String, String> {
    pod.spec
        .as_ref()
        .and_then(|s| s.containers.iter().find(|c| c.name != "skr"))
        .and_then(|c| c.env.as_ref())
        .map(|env| {
            env.iter()
                .filter_map(|e| e.value.clone().map(|v| (e.name.clone(), v)))
                .collect()
        })
        .unwrap_or_default()
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
