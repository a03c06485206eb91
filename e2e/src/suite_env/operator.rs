//! The operator as a local process: its kubeconfig (the chart ServiceAccount's token), flags and
//! environment, start, readiness, graceful stop and kill.

use std::fs;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use kube::Api;

use super::{Environment, NAMESPACE, RELEASE, SERVICE_ACCOUNT};
use crate::cluster::{Proc, log_tail, wait_for};
use crate::workload_identity::OperatorIdentity;

/// Identity of the local operator in the leader Lease: fixed, so a restarted operator takes the
/// Lease back at once instead of waiting for the previous holder's Lease to expire.
const OPERATOR_IDENTITY: &str = "ckb-e2e-operator";
/// How long the operator may take to become ready.
const OPERATOR_READY_TIMEOUT: Duration = Duration::from_secs(120);

impl Environment {
    pub(super) async fn write_operator_kubeconfig(&self) -> Result<()> {
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
}
