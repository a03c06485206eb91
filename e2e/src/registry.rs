//! A local OCI registry (the CNCF distribution registry, built from its Go module by
//! `scripts/install-tools.sh registry`) on a free loopback port with its storage in a temporary
//! directory, and the release artifacts pushed to it: the image built by `scripts/image.sh build`
//! (an OCI image layout, pushed with crane) and the chart (`helm package`, `helm push`).
//!
//! The repositories mirror the published ones, so a reference to `ghcr.io/ckb-dev/...` becomes
//! one to this registry by replacing the host: [`LocalRegistry::rewrite`].

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::cluster::{Proc, free_ports};

/// The registry host the project publishes to.
pub const PUBLIC_REGISTRY: &str = "ghcr.io";
/// The image repository, as in the chart's `image.repository` without the host.
pub const IMAGE_REPOSITORY: &str = "ckb-dev/ckb-operator";
/// Where the chart is pushed (`helm push ... oci://<host>/ckb-dev/charts`).
pub const CHART_REPOSITORY: &str = "ckb-dev/charts";

/// The release version (the workspace's, which the chart and the image carry).
pub fn release_version() -> &'static str {
    env!("CARGO_PKG_VERSION")
}

/// `${XDG_CACHE_HOME:-$HOME/.cache}/ckb-operator`: where the scripts cache tools and outputs.
fn cache_root() -> PathBuf {
    std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from(".cache"))
        .join("ckb-operator")
}

/// `tools/bin` of `scripts/install-tools.sh`: `$CKB_TOOLS_DIR/bin`, else under the user cache.
pub fn tools_bin() -> PathBuf {
    std::env::var_os("CKB_TOOLS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| cache_root().join("tools"))
        .join("bin")
}

/// A tool of `scripts/install-tools.sh`; fails naming the install command when it is missing.
pub fn tool(name: &str) -> Result<PathBuf> {
    let p = tools_bin().join(name);
    if p.is_file() {
        Ok(p)
    } else {
        bail!(
            "{} is missing: run `scripts/install-tools.sh {name}`",
            p.display()
        )
    }
}

/// The image built by `scripts/image.sh build`: `$CKB_IMAGE_LAYOUT`, else where the script puts
/// it (`${XDG_CACHE_HOME:-$HOME/.cache}/ckb-operator/image/layout`).
pub fn image_layout() -> Result<PathBuf> {
    let p = std::env::var_os("CKB_IMAGE_LAYOUT")
        .map(PathBuf::from)
        .unwrap_or_else(|| cache_root().join("image/layout"));
    if !p.join("index.json").is_file() {
        bail!(
            "no image at {}: run `scripts/image.sh build` first (scripts/test.sh does)",
            p.display()
        );
    }
    Ok(p)
}

fn checked(out: Output, what: &str) -> Result<String> {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        bail!(
            "{what} failed ({}):\n{stdout}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(stdout)
}

/// A running registry. Dropping it stops the registry and removes its storage.
pub struct LocalRegistry {
    proc: Proc,
    host: String,
    dir: tempfile::TempDir,
}

impl LocalRegistry {
    /// Starts the registry on a free loopback port and waits until `/v2/` answers.
    pub async fn start() -> Result<Self> {
        let registry = tool("registry")?;
        let dir = tempfile::Builder::new().prefix("ckb-registry-").tempdir()?;
        let [port] = free_ports::<1>()?;
        let host = format!("127.0.0.1:{port}");
        let config = dir.path().join("config.yml");
        fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\n\
                 http:\n  addr: {host}\n",
                dir.path().join("storage").display()
            ),
        )?;
        let mut proc = Proc::spawn_with_env(
            "registry",
            &registry,
            &["serve".to_string(), config.display().to_string()],
            &[("OTEL_TRACES_EXPORTER".to_string(), "none".to_string())],
            dir.path().join("registry.log"),
        )?;
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(2))
            .build()?;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            proc.check_alive()?;
            if let Ok(r) = http.get(format!("http://{host}/v2/")).send().await
                && r.status().is_success()
            {
                break;
            }
            if Instant::now() >= deadline {
                bail!("the local registry did not answer on {host} within 30 s");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(Self { proc, host, dir })
    }

    /// `127.0.0.1:<port>`.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// `text` with every `ghcr.io/` reference pointing at this registry instead, and helm's
    /// `oci://` references told to use plain HTTP (it is loopback).
    pub fn rewrite(&self, text: &str) -> String {
        text.replace(
            &format!("oci://{PUBLIC_REGISTRY}/"),
            &format!("--plain-http oci://{}/", self.host),
        )
        .replace(&format!("{PUBLIC_REGISTRY}/"), &format!("{}/", self.host))
    }

    /// Pushes the OCI image layout's one entry (the index, not a new index around it) as `<host>/<repository>:<tag>`; returns the
    /// index digest (`sha256:...`).
    pub fn push_image(&self, layout: &Path, repository: &str, tag: &str) -> Result<String> {
        let reference = format!("{}/{repository}:{tag}", self.host);
        let out = Command::new(tool("crane")?)
            .arg("push")
            .arg(layout)
            .arg(&reference)
            .stdin(Stdio::null())
            .output()
            .context("running crane push")?;
        let pushed = checked(out, &format!("crane push {reference}"))?;
        pushed
            .trim()
            .rsplit_once('@')
            .map(|(_, d)| d.to_string())
            .with_context(|| format!("crane push printed no digest: {pushed}"))
    }

    /// `crane <args>` against this registry; stdout.
    pub fn crane(&self, args: &[&str]) -> Result<Vec<u8>> {
        let out = Command::new(tool("crane")?)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .context("running crane")?;
        if !out.status.success() {
            bail!(
                "crane {} failed ({}): {}",
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(out.stdout)
    }

    /// A helm command whose registry login state and caches live in this registry's directory.
    pub fn helm_command(&self, helm: &Path) -> Command {
        let home = self.dir.path().join("helm");
        let mut cmd = Command::new(helm);
        cmd.env("HELM_CONFIG_HOME", home.join("config"))
            .env("HELM_CACHE_HOME", home.join("cache"))
            .env("HELM_DATA_HOME", home.join("data"))
            .stdin(Stdio::null());
        cmd
    }

    /// `helm package` of `chart_dir`, then `helm push` to `oci://<host>/<repository>`; returns the
    /// chart's digest.
    pub fn push_chart(&self, helm: &Path, chart_dir: &Path, repository: &str) -> Result<String> {
        let pkg_dir = self.dir.path().join("charts");
        fs::create_dir_all(&pkg_dir)?;
        let out = self
            .helm_command(helm)
            .arg("package")
            .arg(chart_dir)
            .arg("--destination")
            .arg(&pkg_dir)
            .output()
            .context("running helm package")?;
        let text = checked(out, "helm package")?;
        let tgz = text
            .trim()
            .rsplit_once(": ")
            .map(|(_, p)| PathBuf::from(p.trim()))
            .filter(|p| p.is_file())
            .with_context(|| format!("helm package wrote no chart: {text}"))?;
        let out = self
            .helm_command(helm)
            .arg("push")
            .arg(&tgz)
            .arg(format!("oci://{}/{repository}", self.host))
            .arg("--plain-http")
            .output()
            .context("running helm push")?;
        // helm prints "Pushed: ..." and "Digest: sha256:..." on stderr.
        let all = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        checked(out, "helm push")?;
        all.lines()
            .find_map(|l| l.trim().strip_prefix("Digest: "))
            .map(str::to_string)
            .with_context(|| format!("helm push printed no digest: {all}"))
    }

    /// The registry's log.
    pub fn log(&self) -> String {
        crate::cluster::log_tail(&self.dir.path().join("registry.log"), 40)
    }
}

impl Drop for LocalRegistry {
    fn drop(&mut self) {
        self.proc.stop(Duration::from_secs(5));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::repo_root;

    #[test]
    fn release_version_is_the_charts() {
        let chart = fs::read_to_string(repo_root().join("charts/ckb-operator/Chart.yaml")).unwrap();
        assert!(
            chart
                .lines()
                .any(|l| l.trim() == format!("appVersion: \"{}\"", release_version())),
            "Chart.yaml appVersion is not {}",
            release_version()
        );
    }
}
