//! Webhook TLS with no manual step.
//!
//! Self-managed (default): the operator keeps a CA and a serving certificate in a Secret of its
//! namespace (`--webhook-secret`, default `ckb-operator-webhook-tls`, type `kubernetes.io/tls`):
//!
//! | key | content |
//! |---|---|
//! | `tls.crt`, `tls.key` | serving certificate (SANs from `--webhook-cert-hosts`) and key |
//! | `ca.crt`, `ca.key` | the CA that signs the serving certificate |
//! | `ca-next.crt`, `ca-next.key` | during a CA rotation: the next CA, already trusted, not yet signing |
//! | `ca-bundle.crt` | every CA to trust (current, next, older until they expire): the `caBundle` |
//!
//! It writes `ca-bundle.crt` into `clientConfig.caBundle` of every webhook of the
//! MutatingWebhookConfiguration `--webhook-config-name` (default `ckb-operator`), and reloads the
//! serving certificate without restart. Rotation:
//! - the serving certificate is re-issued when it nears expiry, its SANs differ from the wanted
//!   hosts, or its issuer is not the current CA;
//! - the CA is rotated in two phases so that no API server ever sees a certificate signed by a CA it
//!   does not trust yet: first the next CA joins the bundle; after `ca_promote_after` it becomes the
//!   signing CA (new serving certificate); the old CA stays in the bundle until it expires.
//!
//! Two replicas may run this at once: every write is an optimistic create or a replace carrying the
//! `resourceVersion` that was read; the loser of a race gets 409, re-reads and adopts the winner's
//! material. The decision of what to change ([`plan`]) is a pure function of the Secret and a clock.
//!
//! With `--webhook-cert-dir` (cert-manager), `tls.crt` and `tls.key` are read from that directory and
//! reloaded whenever they change; nothing is written to the cluster.
//!
//! The parts: [`pki`] decides and generates (pure, no I/O), [`store`] keeps the Secret and the
//! caBundle with the API server, [`dir`] serves a mounted certificate directory.

mod dir;
mod pki;
mod store;

pub use dir::{read_cert_dir, watch_cert_dir};
pub use pki::{
    CertInfo, CertTimings, KEY_CA_BUNDLE, KEY_CA_CRT, KEY_CA_KEY, KEY_CA_NEXT_CRT, KEY_CA_NEXT_KEY,
    KEY_TLS_CRT, KEY_TLS_KEY, Step, TlsMaterial, apply, cert_info, plan, wanted_bundle,
};
pub use store::{
    SelfManaged, ensure_ca_bundle, ensure_secret, initial_self_managed, run_self_managed,
};

/// Errors of certificate management.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    /// Generating or signing a certificate failed.
    #[error("cannot generate a certificate: {0}")]
    Generate(#[from] rcgen::Error),
    /// A stored PEM could not be parsed.
    #[error("cannot parse {what}: {detail}")]
    Parse {
        /// Which item.
        what: String,
        /// Why.
        detail: String,
    },
    /// A Kubernetes API call failed.
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// Too many write conflicts in a row.
    #[error("the Secret kept changing under us ({0} conflicts)")]
    Conflicts(usize),
    /// Reading mounted certificates or loading them into rustls failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
}
