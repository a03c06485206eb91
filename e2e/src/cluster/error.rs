//! Errors of the control-plane harness.

use std::time::Duration;

/// Errors of the control-plane harness.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// The binaries are not built (or not where the build script says).
    #[error(
        "the local control plane is not built ({0}); run `e2e/scripts/build-control-plane.sh` \
         (15-25 min the first time) or `scripts/test.sh`, which builds it"
    )]
    NotBuilt(String),
    /// A file or process operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// Certificate or key generation failed.
    #[error("generating {what}: {source}")]
    Cert {
        /// Which certificate or key.
        what: &'static str,
        /// The underlying error.
        #[source]
        source: rcgen::Error,
    },
    /// A process exited while it should be serving.
    #[error("{name} exited early ({status}); last lines of its log:\n{log_tail}")]
    Exited {
        /// Process name.
        name: String,
        /// Exit status.
        status: String,
        /// Tail of its log.
        log_tail: String,
    },
    /// A condition was not met in time.
    #[error("timed out after {0:?} waiting for {1}")]
    Timeout(Duration, String),
    /// The Kubernetes client failed.
    #[error("kubernetes client: {0}")]
    Kube(#[from] kube::Error),
    /// The kubeconfig could not be loaded.
    #[error("kubeconfig: {0}")]
    Kubeconfig(String),
}

/// Result of the harness.
pub type Result<T, E = ClusterError> = std::result::Result<T, E>;

pub(crate) fn io_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> ClusterError {
    let what = what.into();
    move |source| ClusterError::Io { what, source }
}
