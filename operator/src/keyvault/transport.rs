//! The HTTP transport under the SDK: a reqwest client with optional extra trust roots and a
//! name -> address override, so tests and the local demo reach a Key Vault double for real host
//! names (`https://demo.vault.azure.net`) over TLS.

use std::net::SocketAddr;
use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

/// Which host names an override applies to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostPattern {
    /// Exactly this host (`demo.vault.azure.net`).
    Exact(String),
    /// Every host under this suffix (`.vault.azure.net` matches `a.vault.azure.net`).
    Suffix(String),
}

impl HostPattern {
    /// Whether `host` (without port, any case) matches.
    pub fn matches(&self, host: &str) -> bool {
        let host = host.to_ascii_lowercase();
        match self {
            HostPattern::Exact(h) => host == *h,
            HostPattern::Suffix(s) => host.ends_with(s.as_str()) && host.len() > s.len(),
        }
    }
}

/// `--kv-resolve <host or .suffix>=<ip:port>`: connect to `addr` for matching hosts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolveOverride {
    /// Hosts this applies to.
    pub pattern: HostPattern,
    /// Where to connect instead (the port is used unless the URL names one).
    pub addr: SocketAddr,
}

impl FromStr for ResolveOverride {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (name, addr) = s
            .split_once('=')
            .ok_or_else(|| format!("{s:?}: expected <host or .suffix>=<ip:port>"))?;
        let name = name.trim().to_ascii_lowercase();
        if name.is_empty() || name == "." || name.contains(['/', ':', ' ']) {
            return Err(format!("{s:?}: {name:?} is not a host name or .suffix"));
        }
        let addr: SocketAddr = addr
            .trim()
            .parse()
            .map_err(|e| format!("{s:?}: {addr:?} is not an ip:port address ({e})"))?;
        let pattern = if name.starts_with('.') {
            HostPattern::Suffix(name)
        } else {
            HostPattern::Exact(name)
        };
        Ok(Self { pattern, addr })
    }
}

/// The first override matching `host` (host without port).
pub fn find_override<'a>(
    overrides: &'a [ResolveOverride],
    host: &str,
) -> Option<&'a ResolveOverride> {
    overrides.iter().find(|o| o.pattern.matches(host))
}

/// DNS with overrides first, the system resolver otherwise.
#[derive(Debug)]
struct OverridingResolver {
    overrides: Vec<ResolveOverride>,
}

impl reqwest::dns::Resolve for OverridingResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let host = name.as_str().to_owned();
        let fixed = find_override(&self.overrides, &host).map(|o| o.addr);
        Box::pin(async move {
            let addrs: reqwest::dns::Addrs = match fixed {
                Some(addr) => Box::new(std::iter::once(addr)),
                None => {
                    let found: Vec<SocketAddr> =
                        tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
                    Box::new(found.into_iter())
                }
            };
            Ok(addrs)
        })
    }
}

/// Failure to set the transport up.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// The CA file could not be read or holds no certificate.
    #[error("cannot use CA file {path}: {reason}")]
    CaFile {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
    /// reqwest refused the configuration.
    #[error("cannot build the HTTP client: {0}")]
    Build(#[source] reqwest::Error),
}

/// Settings of the transport.
#[derive(Debug, Clone, Default)]
pub struct TransportSettings {
    /// Name -> address overrides.
    pub resolve: Vec<ResolveOverride>,
    /// PEM bundle of the only roots to trust (the double's CA); `None` = the OS store.
    pub ca_pem: Option<Vec<u8>>,
    /// Whole-request timeout (connect + send + answer).
    pub timeout: Option<Duration>,
}

impl TransportSettings {
    /// Reads `ca_file` into `ca_pem`.
    pub fn load_ca(&mut self, ca_file: &Path) -> Result<(), TransportError> {
        let pem = std::fs::read(ca_file).map_err(|e| TransportError::CaFile {
            path: ca_file.display().to_string(),
            reason: e.to_string(),
        })?;
        self.ca_pem = Some(pem);
        Ok(())
    }
}

/// Builds the reqwest client the SDK sends through.
pub fn http_client(settings: &TransportSettings) -> Result<reqwest::Client, TransportError> {
    let mut builder = reqwest::Client::builder()
        // The SDK follows no redirects either; a vault never redirects.
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(Duration::from_secs(10))
        .https_only(true);
    if let Some(timeout) = settings.timeout {
        builder = builder.timeout(timeout);
    }
    if let Some(pem) = &settings.ca_pem {
        let certs =
            reqwest::Certificate::from_pem_bundle(pem).map_err(|e| TransportError::CaFile {
                path: "(PEM)".into(),
                reason: e.to_string(),
            })?;
        if certs.is_empty() {
            return Err(TransportError::CaFile {
                path: "(PEM)".into(),
                reason: "no certificate in the file".into(),
            });
        }
        // NB: only these roots: the file names the one CA the vault (double) is signed by.
        builder = builder.tls_certs_only(certs);
    }
    if !settings.resolve.is_empty() {
        builder = builder.dns_resolver(Arc::new(OverridingResolver {
            overrides: settings.resolve.clone(),
        }));
    }
    builder.build().map_err(TransportError::Build)
}

#[cfg(test)]
#[path = "transport_tests.rs"]
mod transport_tests;
