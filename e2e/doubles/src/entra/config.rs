//! The tenant the double serves: the issuers it trusts and the applications' federated identity
//! credentials.

use std::time::Duration;

use super::TOKEN_EXCHANGE_AUDIENCE;

/// An external issuer whose tokens Entra can verify (for Kubernetes: the API server's
/// `--service-account-issuer` and the public half of `--service-account-signing-key-file`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrustedIssuer {
    /// The `iss` of its tokens.
    pub issuer: String,
    /// Its public key, PEM (`PUBLIC KEY`, EC P-256/P-384 or RSA).
    pub public_key_pem: String,
}

/// A federated identity credential of an application (or user-assigned managed identity).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FederatedCredential {
    /// The application's client id.
    pub client_id: String,
    /// Issuer the assertion must come from.
    pub issuer: String,
    /// Subject the assertion must name (`system:serviceaccount:<ns>:<sa>`).
    pub subject: String,
    /// Audience the assertion must carry.
    pub audience: String,
}

impl FederatedCredential {
    /// A Kubernetes ServiceAccount credential with the token-exchange audience.
    pub fn service_account(client_id: &str, issuer: &str, namespace: &str, name: &str) -> Self {
        Self {
            client_id: client_id.to_owned(),
            issuer: issuer.to_owned(),
            subject: format!("system:serviceaccount:{namespace}:{name}"),
            audience: TOKEN_EXCHANGE_AUDIENCE.to_owned(),
        }
    }
}

/// Configuration of the Entra double.
#[derive(Debug, Clone)]
pub struct EntraConfig {
    /// The tenant id served (`/{tenant}/oauth2/v2.0/token`).
    pub tenant: String,
    /// Issuers whose assertions can be verified.
    pub issuers: Vec<TrustedIssuer>,
    /// Federated identity credentials, per application.
    pub credentials: Vec<FederatedCredential>,
    /// Lifetime of the access tokens issued.
    pub token_lifetime: Duration,
    /// Clock skew tolerated on the assertion's validity window.
    pub clock_skew: Duration,
}

impl EntraConfig {
    /// A tenant with no issuer and no application yet; tokens live an hour, as Entra's do.
    pub fn new(tenant: &str) -> Self {
        Self {
            tenant: tenant.to_owned(),
            issuers: Vec::new(),
            credentials: Vec::new(),
            token_lifetime: Duration::from_secs(3600),
            clock_skew: Duration::from_secs(60),
        }
    }
}
