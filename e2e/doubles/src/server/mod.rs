//! The HTTPS listener: one port serving every vault host (Premium or Managed HSM by host name),
//! the attestation hosts, the Entra ID token endpoint, and the test-only admin API under
//! `/_double/`.
//!
//! [`KeyVaultDouble`] starts and owns it; `listen` accepts connections, `dispatch` logs each
//! request, applies faults and routes it by host to `vault_api`, `authorities` (attestation and
//! Entra ID) or `admin`; `http` holds the request and answer helpers they share.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::Router;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use serde_json::Value;
use tokio::sync::oneshot;

use crate::attestation::{Attestation, AttestationError, TokenRequest};
use crate::entra::Entra;
use crate::faults::{Fault, FaultError, Faults, LogEntry};
use crate::keyvault::vault::Vault;
use crate::pki::{Pki, PkiError};

mod admin;
mod authorities;
mod config;
mod dispatch;
mod http;
mod listen;
mod vault_api;

pub use config::{Config, DEFAULT_TENANT};

/// Errors starting the doubles.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Certificates.
    #[error(transparent)]
    Pki(#[from] PkiError),
    /// Attestation keys.
    #[error(transparent)]
    Attestation(#[from] AttestationError),
    /// Entra token signing key.
    #[error("Entra double key: {0}")]
    Entra(#[from] crate::jose::JoseError),
    /// TLS configuration.
    #[error("TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
    /// Binding the listener.
    #[error("listening on {0}: {1}")]
    Bind(SocketAddr, #[source] std::io::Error),
}

struct Shared {
    config: Config,
    addr: SocketAddr,
    pki: Pki,
    attestation: Attestation,
    entra: Entra,
    vaults: Mutex<BTreeMap<String, Vault>>,
    faults: Mutex<Faults>,
    log: Mutex<Vec<LogEntry>>,
    resolve: Vec<(String, SocketAddr)>,
    clients: Mutex<HashMap<String, reqwest::Client>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding a lock must not take the whole double down for other tests.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A running Key Vault + Attestation double. Dropping it stops the listener and its connections.
pub struct KeyVaultDouble {
    shared: Arc<Shared>,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl std::fmt::Debug for KeyVaultDouble {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyVaultDouble")
            .field("addr", &self.shared.addr)
            .finish()
    }
}

impl KeyVaultDouble {
    /// Generates the CA and keys, binds, and serves in the background.
    pub async fn start(config: Config) -> Result<Self, StartError> {
        // Harmless when a provider is already installed; needed by reqwest otherwise.
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let pki = Pki::generate(&config.sans)?;
        let attestation = Attestation::new(&pki)?;
        let entra = Entra::new(config.entra.clone())?;
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .map_err(|e| StartError::Bind(config.listen, e))?;
        let addr = listener
            .local_addr()
            .map_err(|e| StartError::Bind(config.listen, e))?;

        let mut tls = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(
            vec![
                CertificateDer::from(pki.server_cert_der.clone()),
                CertificateDer::from(pki.ca_der().to_vec()),
            ],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(pki.server_key_der.clone())),
        )?;
        tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));

        let resolve = if config.authority_resolve.is_empty() {
            vec![(".attest.azure.net".to_owned(), addr)]
        } else {
            config.authority_resolve.clone()
        };
        let shared = Arc::new(Shared {
            config,
            addr,
            pki,
            attestation,
            entra,
            vaults: Mutex::new(BTreeMap::new()),
            faults: Mutex::new(Faults::default()),
            log: Mutex::new(Vec::new()),
            resolve,
            clients: Mutex::new(HashMap::new()),
        });
        let router = Router::new()
            .fallback(dispatch::dispatch)
            .with_state(shared.clone());
        let (tx, rx) = oneshot::channel();
        let task = tokio::spawn(listen::accept_loop(listener, acceptor, router, rx));
        Ok(Self {
            shared,
            shutdown: Some(tx),
            task: Some(task),
        })
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.shared.addr
    }

    /// The CA certificate (PEM) that clients must trust.
    pub fn ca_pem(&self) -> String {
        self.shared.pki.ca_pem().to_owned()
    }

    /// The CA certificate (DER).
    pub fn ca_der(&self) -> Vec<u8> {
        self.shared.pki.ca_der().to_vec()
    }

    /// The request log so far.
    pub fn log(&self) -> Vec<LogEntry> {
        lock(&self.shared.log).clone()
    }

    /// Clears the request log.
    pub fn clear_log(&self) {
        lock(&self.shared.log).clear();
    }

    /// Arms a fault; returns its id.
    pub fn inject(&self, fault: Fault) -> Result<u64, FaultError> {
        lock(&self.shared.faults).add(fault)
    }

    /// Disarms every fault.
    pub fn clear_faults(&self) {
        lock(&self.shared.faults).clear();
    }

    /// State dump of every vault (no private material).
    pub fn keys(&self) -> Value {
        admin::dump(&self.shared)
    }

    /// Forgets every vault, fault and log entry.
    pub fn reset(&self) {
        lock(&self.shared.vaults).clear();
        lock(&self.shared.faults).clear();
        lock(&self.shared.log).clear();
    }

    /// Mints an attestation token.
    pub fn mint_token(&self, req: &TokenRequest) -> Result<String, AttestationError> {
        self.shared.attestation.mint(req, http::now_secs())
    }

    /// The Entra ID token endpoint double (federated credentials, token exchanges).
    pub fn entra(&self) -> &Entra {
        &self.shared.entra
    }

    /// The attestation JWKS (as served at `/certs`).
    pub fn attestation_jwks(&self) -> Value {
        self.shared.attestation.jwks()
    }

    /// An HTTPS client that trusts the CA and reaches `hosts` at this double.
    pub fn client_for(&self, hosts: &[&str]) -> reqwest::Client {
        let mut b = reqwest::Client::builder()
            .tls_certs_only([
                reqwest::Certificate::from_der(self.shared.pki.ca_der()).expect("own CA parses")
            ]);
        for h in hosts {
            b = b.resolve(h, self.shared.addr);
        }
        b.timeout(Duration::from_secs(30))
            .build()
            .expect("client builds")
    }

    /// Stops the listener and waits for it.
    pub async fn shutdown(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for KeyVaultDouble {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}
