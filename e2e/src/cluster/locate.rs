//! Where the control plane's binaries and the repository are.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::error::{ClusterError, Result, io_err};

/// Where the control-plane binaries are: `$CKB_CONTROL_PLANE_BIN`, else what the build script
/// reports (without building).
pub fn binaries_dir() -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os("CKB_CONTROL_PLANE_BIN") {
        let dir = PathBuf::from(dir);
        return check_binaries(&dir).map(|()| dir);
    }
    let script = repo_root().join("e2e/scripts/build-control-plane.sh");
    let out = Command::new("bash")
        .arg(&script)
        .arg("--where")
        .stderr(Stdio::inherit())
        .output()
        .map_err(io_err(format!("running {}", script.display())))?;
    let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    if !out.status.success() {
        return Err(ClusterError::NotBuilt(format!(
            "no complete build in {}",
            dir.display()
        )));
    }
    check_binaries(&dir).map(|()| dir)
}

fn check_binaries(dir: &Path) -> Result<()> {
    for b in [
        "etcd",
        "kube-apiserver",
        "kube-controller-manager",
        "kubectl",
    ] {
        if !dir.join(b).is_file() {
            return Err(ClusterError::NotBuilt(format!(
                "{} is missing",
                dir.join(b).display()
            )));
        }
    }
    Ok(())
}

/// The repository root (this crate lives in `<root>/e2e`).
///
/// NB: `cargo test` and `cargo run` set `CARGO_MANIFEST_DIR` at run time, and that one wins over
/// the compile-time value: the build directory is shared between checkouts, and cargo reuses this
/// crate's artifact from another clone when the sources are the same, so the path compiled in can
/// name a clone that is gone.
pub fn repo_root() -> PathBuf {
    let manifest_dir = std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")));
    manifest_dir
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}
