//! A certificate mounted from a directory (cert-manager): read, and reloaded when it changes.

use std::path::{Path, PathBuf};
use std::time::Duration;

use axum_server::tls_rustls::RustlsConfig;
use tokio_util::sync::CancellationToken;

use super::CertError;
use super::pki::{KEY_TLS_CRT, KEY_TLS_KEY};

/// Reads `tls.crt` and `tls.key` of a mounted directory (cert-manager).
pub fn read_cert_dir(dir: &Path) -> Result<(Vec<u8>, Vec<u8>), CertError> {
    let crt = std::fs::read(dir.join(KEY_TLS_CRT))?;
    let key = std::fs::read(dir.join(KEY_TLS_KEY))?;
    Ok((crt, key))
}

/// Reloads `tls` whenever the mounted files change, until `shutdown` (polled every `interval`;
/// kubelet updates Secret volumes by swapping a symlink, which inotify on the files would miss).
pub async fn watch_cert_dir(
    dir: PathBuf,
    tls: RustlsConfig,
    interval: Duration,
    shutdown: CancellationToken,
) {
    let mut last = read_cert_dir(&dir).ok();
    while shutdown
        .run_until_cancelled(tokio::time::sleep(interval))
        .await
        .is_some()
    {
        match read_cert_dir(&dir) {
            Ok(now) if Some(&now) != last.as_ref() => {
                match tls.reload_from_pem(now.0.clone(), now.1.clone()).await {
                    Ok(()) => {
                        tracing::info!(dir = %dir.display(), "mounted certificate reloaded");
                        last = Some(now);
                    }
                    // A half-written pair (certificate updated, key not yet) fails here and is
                    // retried at the next tick.
                    Err(e) => tracing::warn!(error = %e, "mounted certificate not loadable yet"),
                }
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "cannot read the mounted certificate"),
        }
    }
}

#[cfg(test)]
#[path = "dir_tests.rs"]
mod tests;
