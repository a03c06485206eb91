//! The programs the environment runs: the operator binary (built when needed) and helm.

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

use anyhow::{Context as _, Result, bail};

use crate::cluster::repo_root;

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

pub(super) fn output_text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}
