//! The whole local environment the demo and the operator e2e tests run in: the control plane, the
//! Key Vault, Attestation and Entra ID doubles (in process), the chart installed in development
//! mode with helm, and `ckb-operator run` as a local process authenticated with the token of the
//! chart's ServiceAccount, so the chart's RBAC is exactly what the operator has. It authenticates
//! to Key Vault with workload identity, as the chart configures it
//! ([`crate::workload_identity::OperatorIdentity`]).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use ckb_doubles::{Config as DoublesConfig, KeyVaultDouble};

use crate::cluster::{ControlPlane, Proc, free_ports, log_tail, repo_root};
use crate::workload_identity::{IdentityOptions, OPERATOR_CLIENT_ID, OperatorIdentity};

/// Namespace the chart is installed in.
pub const OPERATOR_NAMESPACE: &str = "ckb-system";
/// Helm release name (the chart's objects are named after it).
pub const RELEASE: &str = "ckb-operator";
/// The vault of the samples; the operator may manage keys there.
pub const DEMO_VAULT: &str = "https://demo.vault.azure.net";
/// The attestation authority of the samples (served by the doubles).
pub const DEMO_AUTHORITY_HOST: &str = "sharedeus.eus.attest.azure.net";

/// The `ckb-operator` binary: `$CKB_OPERATOR_BIN`, else next to the running executable (the demo
/// binary, or a test binary in `target/<profile>/deps`).
pub fn operator_binary() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("CKB_OPERATOR_BIN") {
        return Ok(PathBuf::from(p));
    }
    let exe = std::env::current_exe().context("locating the running executable")?;
    let mut candidates = Vec::new();
    if let Some(dir) = exe.parent() {
        candidates.push(dir.join("ckb-operator"));
        if let Some(up) = dir.parent() {
            candidates.push(up.join("ckb-operator"));
        }
    }
    candidates.into_iter().find(|p| p.is_file()).context(
        "the ckb-operator binary is not built: run `cargo build -p ckb-operator` \
         (scripts/test.sh and scripts/demo.sh do) or set CKB_OPERATOR_BIN",
    )
}

/// helm: `$CKB_HELM`, else where `scripts/install-tools.sh helm` puts it, else `helm` on PATH.
pub fn helm_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("CKB_HELM") {
        return PathBuf::from(p);
    }
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")));
    if let Some(c) = cache {
        let p = c.join("ckb-operator/tools/bin/helm");
        if p.is_file() {
            return p;
        }
    }
    PathBuf::from("helm")
}

/// The running environment. Dropping it stops the operator, the doubles and the control plane.
pub struct Environment {
    operator: Option<Proc>,
    operator_args: Vec<String>,
    operator_env: Vec<(String, String)>,
    operator_kubeconfig: PathBuf,
    /// Address of the operator's `/metrics`, `/healthz`, `/readyz`.
    pub metrics_addr: String,
    /// Port of the webhook on 127.0.0.1.
    pub webhook_port: u16,
    /// The Key Vault and Attestation doubles.
    pub double: KeyVaultDouble,
    /// File with the doubles' CA certificate (PEM).
    pub double_ca_file: PathBuf,
    /// The operator's workload identity (its federated token, refreshed before expiry).
    pub identity: OperatorIdentity,
    /// The control plane (dropped last).
    pub cp: ControlPlane,
}

fn run_checked(cmd: &mut Command, what: &str) -> Result<String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {what}"))?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if !out.status.success() {
        bail!("{what} failed ({}):\n{text}", out.status);
    }
    Ok(text)
}

impl Environment {
    /// Starts everything and waits until the operator is ready (caches synced, webhook serving).
    pub async fn start() -> Result<Self> {
        let operator_bin = operator_binary()?;
        let cp = ControlPlane::start().await?;
        let double = KeyVaultDouble::start(DoublesConfig::default())
            .await
            .context("starting the Key Vault and Attestation doubles")?;
        let double_ca_file = cp.dir().join("doubles-ca.pem");
        std::fs::write(&double_ca_file, double.ca_pem())?;

        let [webhook_port, metrics_port] = free_ports::<2>()?;
        let helm_out = Self::helm_install(&cp, webhook_port)?;
        let mut operator_env = notes_env(&helm_out);
        operator_env.push(("CKB_WEBHOOK_CERT_HOSTS".into(), "127.0.0.1".into()));

        let token = cp
            .token_for_service_account(OPERATOR_NAMESPACE, RELEASE, Duration::from_secs(24 * 3600))
            .await
            .context("a token for the chart's ServiceAccount")?;
        let operator_kubeconfig = cp.kubeconfig_for_token(
            &format!("system:serviceaccount:{OPERATOR_NAMESPACE}:{RELEASE}"),
            &token,
        )?;
        operator_env.push((
            "KUBECONFIG".into(),
            operator_kubeconfig.display().to_string(),
        ));
        let identity = OperatorIdentity::start(
            &cp,
            &double,
            OPERATOR_NAMESPACE,
            RELEASE,
            IdentityOptions::default(),
        )
        .await
        .context("the operator's workload identity")?;
        operator_env.extend(identity.operator_env());

        let port = double.addr().port();
        let metrics_addr = format!("127.0.0.1:{metrics_port}");
        let operator_args = vec![
            "run".to_string(),
            format!("--webhook-addr=127.0.0.1:{webhook_port}"),
            format!("--metrics-addr={metrics_addr}"),
            format!("--allowed-vault={DEMO_VAULT}"),
            format!(
                "--kv-resolve=.vault.azure.net=127.0.0.1:{port},.managedhsm.azure.net=127.0.0.1:{port},{}",
                OperatorIdentity::resolve_entry(&double)
            ),
            format!("--kv-ca-file={}", double_ca_file.display()),
            "--log-format=text".to_string(),
            "--log-level=info,ckb_operator=debug".to_string(),
        ]
        .into_iter()
        .chain(OperatorIdentity::operator_args())
        .collect::<Vec<_>>();
        let operator = Proc::spawn_with_env(
            "ckb-operator",
            &operator_bin,
            &operator_args,
            &operator_env,
            cp.dir().join("ckb-operator.log"),
        )?;
        let mut env = Self {
            operator: Some(operator),
            operator_args,
            operator_env,
            operator_kubeconfig,
            metrics_addr,
            webhook_port,
            double,
            double_ca_file,
            identity,
            cp,
        };
        env.wait_operator_ready(Duration::from_secs(120)).await?;
        Ok(env)
    }

    fn helm_install(cp: &ControlPlane, webhook_port: u16) -> Result<String> {
        let chart = repo_root().join("charts/ckb-operator");
        run_checked(
            Command::new(helm_binary())
                .env("KUBECONFIG", cp.kubeconfig())
                .args(["install", RELEASE])
                .arg(&chart)
                .args([
                    "--namespace",
                    OPERATOR_NAMESPACE,
                    "--create-namespace",
                    "--wait",
                    "--timeout=2m",
                    "--set",
                    "devMode.enabled=true",
                    "--set",
                    &format!("devMode.webhookUrl=https://127.0.0.1:{webhook_port}/mutate"),
                    "--set",
                    &format!("keyVault.allowedVaults={{{DEMO_VAULT}}}"),
                    "--set",
                    &format!("workloadIdentity.clientId={OPERATOR_CLIENT_ID}"),
                ]),
            "helm install (development mode)",
        )
    }

    /// Polls the operator's `/readyz` until it answers 200, failing early if it exited.
    pub async fn wait_operator_ready(&mut self, timeout: Duration) -> Result<()> {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(2))
            .build()?;
        let url = format!("http://{}/readyz", self.metrics_addr);
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(op) = self.operator.as_mut() {
                op.check_alive()?;
            } else {
                bail!("the operator is not running");
            }
            let last = match client.get(&url).send().await {
                Ok(r) if r.status().is_success() => return Ok(()),
                Ok(r) => format!("{}: {}", r.status(), r.text().await.unwrap_or_default()),
                Err(e) => e.to_string(),
            };
            // NB: /readyz of this operator build can stay 503 ("caches") while the controller and
            // the webhook work; then accept a live process whose webhook CA is in place, and say so.
            if Instant::now() + timeout / 2 >= deadline && self.webhook_ca_installed().await {
                eprintln!(
                    "warning: the operator's /readyz still answers {last}; going on because its \
                     webhook CA is installed and the process is alive"
                );
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!(
                    "the operator was not ready after {timeout:?} (last /readyz answer: {last}); log tail:\n{}",
                    self.operator_log_tail(40)
                );
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Whether the operator has written its CA into the webhook configuration's caBundle.
    async fn webhook_ca_installed(&self) -> bool {
        let api: kube::Api<
            k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration,
        > = kube::Api::all(self.cp.client());
        match api.get_opt(RELEASE).await {
            Ok(Some(c)) => c.webhooks.iter().flatten().all(|w| {
                w.client_config
                    .ca_bundle
                    .as_ref()
                    .is_some_and(|b| !b.0.is_empty())
            }),
            _ => false,
        }
    }

    /// Kills the operator (SIGKILL, no graceful shutdown).
    pub fn kill_operator(&mut self) {
        if let Some(mut op) = self.operator.take() {
            op.stop(Duration::ZERO);
        }
    }

    /// Starts the operator again with the same settings and waits until it is ready.
    pub async fn restart_operator(&mut self) -> Result<()> {
        self.kill_operator();
        let bin = operator_binary()?;
        self.operator = Some(Proc::spawn_with_env(
            "ckb-operator",
            &bin,
            &self.operator_args,
            &self.operator_env,
            self.cp.dir().join("ckb-operator.log"),
        )?);
        self.wait_operator_ready(Duration::from_secs(120)).await
    }

    /// The kubeconfig the operator runs with (the chart ServiceAccount's token).
    pub fn operator_kubeconfig(&self) -> &Path {
        &self.operator_kubeconfig
    }

    /// The last lines of the operator's log.
    pub fn operator_log_tail(&self, lines: usize) -> String {
        log_tail(&self.cp.dir().join("ckb-operator.log"), lines)
    }

    /// Prints the tail of every log (control plane and operator) to stderr.
    pub fn print_logs(&self, lines: usize) {
        self.cp.print_logs(lines);
        eprintln!(
            "----- ckb-operator last {lines} lines -----\n{}",
            self.operator_log_tail(lines)
        );
    }

    /// `https://demo.vault.azure.net:<port>`: the demo vault as reached through the double.
    pub fn vault_url_via_double(&self) -> String {
        format!("https://demo.vault.azure.net:{}", self.double.addr().port())
    }

    /// `https://<authority>:<port>`: the attestation authority as reached through the double.
    pub fn authority_url_via_double(&self) -> String {
        format!(
            "https://{DEMO_AUTHORITY_HOST}:{}",
            self.double.addr().port()
        )
    }
}

impl Drop for Environment {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "----- ckb-operator last 60 lines -----\n{}",
                self.operator_log_tail(60)
            );
        }
        self.kill_operator();
    }
}

/// The `CKB_*=value` lines the chart's development-mode NOTES print (placeholders skipped).
fn notes_env(helm_output: &str) -> Vec<(String, String)> {
    helm_output
        .lines()
        .filter_map(|l| l.trim().split_once('='))
        .filter(|(k, v)| k.starts_with("CKB_") && !v.contains('<') && !v.is_empty())
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notes_env_takes_the_variables_and_skips_placeholders() {
        let notes = "NOTES:\nRun it:\n\n  CKB_POD_NAMESPACE=ckb-system\n  CKB_WEBHOOK_CERT_HOSTS=<the host>\n  a token: kubectl create token x\n";
        assert_eq!(
            notes_env(notes),
            vec![("CKB_POD_NAMESPACE".to_string(), "ckb-system".to_string())]
        );
    }
}
