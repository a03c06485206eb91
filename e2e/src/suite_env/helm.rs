//! The chart, installed and upgraded with helm in development mode.

use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::Api;

use super::tools::output_text;
use super::{CRD_NAME, Environment, NAMESPACE, RELEASE};
use crate::cluster::{repo_root, wait_for};
use crate::workload_identity::OPERATOR_CLIENT_ID;

impl Environment {
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

    pub(super) async fn helm_install(&self) -> Result<()> {
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
        crd_established(&self.cp.client(), CRD_NAME, Duration::from_secs(60)).await
    }
}

/// Waits until the CustomResourceDefinition `name` is Established (and so usable).
pub async fn crd_established(client: &kube::Client, name: &str, timeout: Duration) -> Result<()> {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    wait_for(timeout, &format!("CRD {name} to be Established"), || {
        let crds = crds.clone();
        async move {
            let crd = crds.get_opt(name).await?;
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
