//! Kubeconfig files for bearer-token users, and clients made from them.

use std::fs;
use std::path::Path;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use kube::config::{KubeConfigOptions, Kubeconfig};

use super::error::{ClusterError, Result, io_err};

/// Writes a kubeconfig with one cluster, one bearer-token user and one current context.
pub fn write_kubeconfig(
    path: &Path,
    server: &str,
    ca_pem: &str,
    user: &str,
    token: &str,
) -> Result<()> {
    let ca = STANDARD.encode(ca_pem);
    let body = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: ckb-local\n  cluster:\n    server: {server}\n    \
         certificate-authority-data: {ca}\nusers:\n- name: {user:?}\n  user:\n    token: {token:?}\n\
         contexts:\n- name: ckb-local\n  context:\n    cluster: ckb-local\n    user: {user:?}\n\
         current-context: ckb-local\n"
    );
    fs::write(path, body).map_err(io_err(format!("writing {}", path.display())))?;
    // NB: it holds a credential; keep it private like kubectl does.
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(path, fs::Permissions::from_mode(0o600))
        .map_err(io_err(format!("chmod {}", path.display())))
}

/// A kube client from a kubeconfig file.
pub async fn client_from_kubeconfig(path: &Path) -> Result<kube::Client> {
    let kc = Kubeconfig::read_from(path).map_err(|e| ClusterError::Kubeconfig(e.to_string()))?;
    let config = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .map_err(|e| ClusterError::Kubeconfig(e.to_string()))?;
    Ok(kube::Client::try_from(config)?)
}
