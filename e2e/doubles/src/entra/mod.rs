//! A double of the Microsoft Entra ID token endpoint, for workload identity federation.
//!
//! `POST /{tenant}/oauth2/v2.0/token` on the authority host (`AZURE_AUTHORITY_HOST`, by default
//! `https://login.microsoftonline.com/`) with the OAuth 2.0 client-credentials grant and a federated
//! client assertion (RFC 7521/7523, as Microsoft's identity platform documents it):
//!
//! ```text
//! grant_type=client_credentials&client_id=<app>&scope=https://vault.azure.net/.default
//! &client_assertion_type=urn:ietf:params:oauth:client-assertion-type:jwt-bearer
//! &client_assertion=<a Kubernetes projected ServiceAccount token>
//! ```
//!
//! The assertion is checked as Entra checks it against the application's federated identity
//! credentials (issuer, subject, audience; exact, case-sensitive matches): its signature against
//! the issuer's public key (here: the API server's ServiceAccount key, configured), its validity
//! window, its audience (`api://AzureADTokenExchange`) and its subject
//! (`system:serviceaccount:<namespace>:<name>`). On success the answer is
//! `{"token_type":"Bearer","expires_in":..,"ext_expires_in":..,"access_token":..}` with an RS256 JWT
//! that the Key Vault double accepts. Refusals use Entra's error shape: `error` (an OAuth 2.0 error
//! code), `error_description` starting with an `AADSTS<n>:` code and ending with the trace id,
//! correlation id and timestamp lines, `error_codes`, `timestamp`, `trace_id`, `correlation_id`
//! and `error_uri`.
//!
//! | Refusal | HTTP | `error` | AADSTS |
//! |---|---|---|---|
//! | unknown tenant | 400 | `invalid_request` | 90002 |
//! | grant other than client credentials | 400 | `unsupported_grant_type` | 70003 |
//! | missing `client_id` / `scope` | 400 | `invalid_request` | 900144 |
//! | scope without `/.default` | 400 | `invalid_scope` | 70011 |
//! | no client assertion of the JWT-bearer type | 401 | `invalid_client` | 7000218 |
//! | unknown application | 400 | `unauthorized_client` | 700016 |
//! | assertion not a JWT / bad signature | 401 | `invalid_client` | 50013 |
//! | issuer with no federated credential | 401 | `invalid_client` | 700211 |
//! | audience with no federated credential | 401 | `invalid_client` | 700212 |
//! | subject with no federated credential | 401 | `invalid_client` | 700213 |
//! | assertion expired or not yet valid | 401 | `invalid_client` | 700024 |
//!
//! `config` holds the tenant, trusted issuers and federated credentials; `exchange` checks a
//! token request and issues the access token; `assertion` reads and verifies assertions and
//! signs them for tests; `errors` is Entra's refusal shape.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use serde::Serialize;
use serde_json::{Value, json};

use crate::jose::{CompactJws, JoseError, RsaSigner};

mod assertion;
mod config;
mod errors;
mod exchange;

pub use assertion::AssertionSigner;
use assertion::read_claims;
pub use config::{EntraConfig, FederatedCredential, TrustedIssuer};
pub use errors::EntraError;

/// The public cloud's authority host: what the AWI webhook injects as `AZURE_AUTHORITY_HOST`.
pub const AUTHORITY_HOST: &str = "login.microsoftonline.com";
/// `client_assertion_type` of a federated (JWT bearer) client assertion.
pub const ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
/// The audience Entra accepts in a federated assertion.
pub const TOKEN_EXCHANGE_AUDIENCE: &str = "api://AzureADTokenExchange";
/// Key id of the double's token signing key.
pub(super) const SIGNING_KID: &str = "entra-double-1";

/// One token request as the double saw it (for tests: which identity exchanged what, and when).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Exchange {
    /// Sequence number from 1.
    pub seq: u64,
    /// Unix time of the request.
    pub at: i64,
    /// `client_id` of the request.
    pub client_id: Option<String>,
    /// The assertion's claims that identify it: issuer, subject, issued-at and expiry.
    pub assertion_issuer: Option<String>,
    /// The assertion's `sub`.
    pub assertion_subject: Option<String>,
    /// The assertion's `iat`.
    pub assertion_iat: Option<i64>,
    /// The assertion's `exp`.
    pub assertion_exp: Option<i64>,
    /// HTTP status answered.
    pub status: u16,
    /// The AADSTS code of a refusal.
    pub aadsts: Option<u32>,
    /// The `uti` (unique token id) of the access token issued.
    pub token_id: Option<String>,
}

/// What the Key Vault double learns from a valid access token of this double.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessTokenInfo {
    /// `iss`.
    pub issuer: String,
    /// `appid`: the client id the token was issued to.
    pub client_id: String,
    /// `aud`.
    pub audience: String,
    /// `exp`.
    pub expires: i64,
    /// `uti`.
    pub token_id: String,
}

pub(super) fn random_uuid() -> String {
    let b: [u8; 16] = rand::random();
    let h = hex::encode(b);
    format!(
        "{}-{}-4{}-8{}-{}",
        &h[0..8],
        &h[8..12],
        &h[13..16],
        &h[17..20],
        &h[20..32]
    )
}

pub(super) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The Entra token endpoint double.
pub struct Entra {
    config: Mutex<EntraConfig>,
    signer: RsaSigner,
    log: Mutex<Vec<Exchange>>,
}

impl std::fmt::Debug for Entra {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Entra")
            .field("tenant", &lock(&self.config).tenant)
            .finish_non_exhaustive()
    }
}

impl Entra {
    /// A double with a fresh RS256 signing key.
    pub fn new(config: EntraConfig) -> Result<Self, JoseError> {
        Ok(Self {
            config: Mutex::new(config),
            signer: RsaSigner::generate(SIGNING_KID.to_owned())?,
            log: Mutex::new(Vec::new()),
        })
    }

    /// The `iss` of the access tokens this double issues.
    pub fn issuer(&self) -> String {
        format!(
            "https://{AUTHORITY_HOST}/{}/v2.0",
            lock(&self.config).tenant
        )
    }

    /// The tenant served.
    pub fn tenant(&self) -> String {
        lock(&self.config).tenant.clone()
    }

    /// Replaces the federated identity credentials (a test re-points the federation).
    pub fn set_credentials(&self, credentials: Vec<FederatedCredential>) {
        lock(&self.config).credentials = credentials;
    }

    /// Adds a trusted issuer.
    pub fn trust_issuer(&self, issuer: TrustedIssuer) {
        lock(&self.config).issuers.push(issuer);
    }

    /// Sets the lifetime of the access tokens issued from now on.
    pub fn set_token_lifetime(&self, lifetime: Duration) {
        lock(&self.config).token_lifetime = lifetime;
    }

    /// Every token request so far.
    pub fn exchanges(&self) -> Vec<Exchange> {
        lock(&self.log).clone()
    }

    /// The signing keys (as a JWKS would publish them).
    pub fn jwks(&self) -> Value {
        json!({"keys": [self.signer.public_jwk()]})
    }

    /// Serves `POST /{tenant}/oauth2/v2.0/token` (form body): status and JSON body.
    pub fn token(&self, tenant: &str, form: &[u8], now: i64) -> (u16, Value) {
        let params: BTreeMap<String, String> = form_urlencoded::parse(form).into_owned().collect();
        let mut entry = Exchange {
            seq: 0,
            at: now,
            client_id: params.get("client_id").cloned(),
            assertion_issuer: None,
            assertion_subject: None,
            assertion_iat: None,
            assertion_exp: None,
            status: 200,
            aadsts: None,
            token_id: None,
        };
        if let Some(claims) = params
            .get("client_assertion")
            .and_then(|a| read_claims(a).ok())
        {
            entry.assertion_issuer = claims.iss;
            entry.assertion_subject = claims.sub;
            entry.assertion_iat = claims.iat;
            entry.assertion_exp = claims.exp;
        }
        let (status, body) = match self.exchange(tenant, &params, now) {
            Ok((token_id, body)) => {
                entry.token_id = Some(token_id);
                (200, body)
            }
            Err(e) => {
                entry.status = e.status;
                entry.aadsts = Some(e.code);
                (e.status, e.body(now))
            }
        };
        let mut log = lock(&self.log);
        entry.seq = log.len() as u64 + 1;
        log.push(entry);
        (status, body)
    }

    /// Checks an access token presented to a resource: this double's signature, its issuer, not
    /// expired, and (when given) its audience.
    pub fn verify_access_token(
        &self,
        token: &str,
        audience: Option<&str>,
        now: i64,
    ) -> Result<AccessTokenInfo, String> {
        let jws = CompactJws::parse(token).map_err(|e| e.to_string())?;
        jws.verify_with_jwk(&self.signer.public_jwk())
            .map_err(|e| format!("not signed by the Entra double: {e}"))?;
        let claims = jws.claims().map_err(|e| e.to_string())?;
        let s = |k: &str| {
            claims
                .get(k)
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned()
        };
        let issuer = s("iss");
        if issuer != self.issuer() {
            return Err(format!("issuer {issuer} is not {}", self.issuer()));
        }
        let expires = claims.get("exp").and_then(Value::as_i64).unwrap_or(0);
        if now >= expires {
            return Err(format!("the token expired at {expires} (now {now})"));
        }
        let aud = s("aud");
        if let Some(want) = audience
            && aud.trim_end_matches('/') != want.trim_end_matches('/')
        {
            return Err(format!("audience {aud} is not {want}"));
        }
        Ok(AccessTokenInfo {
            issuer,
            client_id: s("appid"),
            audience: aud,
            expires,
            token_id: s("uti"),
        })
    }
}

#[cfg(test)]
mod tests;
