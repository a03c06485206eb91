//! kubectl as the admin: apply YAML, run commands, namespaces.

use std::io::Write as _;
use std::process::{Output, Stdio};
use std::time::Duration;

use anyhow::{Context as _, Result, anyhow, bail};
use k8s_openapi::api::core::v1::Namespace;
use kube::Api;

use super::Environment;
use super::tools::output_text;
use crate::cluster::wait_for;

impl Environment {
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
}
