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

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Serialize;
use serde_json::{Value, json};

use crate::jose::{CompactJws, JoseError, RsaSigner, b64url};

/// The public cloud's authority host: what the AWI webhook injects as `AZURE_AUTHORITY_HOST`.
pub const AUTHORITY_HOST: &str = "login.microsoftonline.com";
/// `client_assertion_type` of a federated (JWT bearer) client assertion.
pub const ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
/// The audience Entra accepts in a federated assertion.
pub const TOKEN_EXCHANGE_AUDIENCE: &str = "api://AzureADTokenExchange";
/// Key id of the double's token signing key.
const SIGNING_KID: &str = "entra-double-1";

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

/// A refusal of the token endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntraError {
    /// HTTP status.
    pub status: u16,
    /// OAuth 2.0 error code.
    pub error: &'static str,
    /// AADSTS code.
    pub code: u32,
    /// What went wrong (without the `AADSTS<n>: ` prefix).
    pub description: String,
}

impl EntraError {
    fn new(status: u16, error: &'static str, code: u32, description: impl Into<String>) -> Self {
        Self {
            status,
            error,
            code,
            description: description.into(),
        }
    }

    fn invalid_client(code: u32, description: impl Into<String>) -> Self {
        Self::new(401, "invalid_client", code, description)
    }

    /// The JSON body Entra sends with a refusal.
    pub fn body(&self, now: i64) -> Value {
        let trace_id = random_uuid();
        let correlation_id = random_uuid();
        let timestamp = jiff::Timestamp::from_second(now)
            .map(|t| t.strftime("%Y-%m-%d %H:%M:%SZ").to_string())
            .unwrap_or_default();
        json!({
            "error": self.error,
            "error_description": format!(
                "AADSTS{}: {}\r\nTrace ID: {trace_id}\r\nCorrelation ID: {correlation_id}\r\nTimestamp: {timestamp}",
                self.code, self.description
            ),
            "error_codes": [self.code],
            "timestamp": timestamp,
            "trace_id": trace_id,
            "correlation_id": correlation_id,
            "error_uri": format!("https://{AUTHORITY_HOST}/error?code={}", self.code),
        })
    }
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

fn random_uuid() -> String {
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

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
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

/// The claims of an assertion, read before its signature is checked (to find the issuer's key).
#[derive(Debug, Default)]
struct AssertionClaims {
    iss: Option<String>,
    sub: Option<String>,
    aud: Vec<String>,
    iat: Option<i64>,
    nbf: Option<i64>,
    exp: Option<i64>,
}

fn read_claims(assertion: &str) -> Result<AssertionClaims, JoseError> {
    let claims = CompactJws::parse(assertion)?.claims()?;
    let s = |k: &str| claims.get(k).and_then(Value::as_str).map(str::to_owned);
    let n = |k: &str| claims.get(k).and_then(Value::as_i64);
    let aud = match claims.get("aud") {
        Some(Value::String(a)) => vec![a.clone()],
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_owned)
            .collect(),
        _ => Vec::new(),
    };
    Ok(AssertionClaims {
        iss: s("iss"),
        sub: s("sub"),
        aud,
        iat: n("iat"),
        nbf: n("nbf"),
        exp: n("exp"),
    })
}

fn verify_signature(assertion: &str, public_key_pem: &str) -> Result<(), String> {
    let header = jsonwebtoken::decode_header(assertion).map_err(|e| e.to_string())?;
    let key = match header.alg {
        Algorithm::ES256 | Algorithm::ES384 => DecodingKey::from_ec_pem(public_key_pem.as_bytes()),
        Algorithm::RS256 | Algorithm::RS384 | Algorithm::RS512 | Algorithm::PS256 => {
            DecodingKey::from_rsa_pem(public_key_pem.as_bytes())
        }
        other => return Err(format!("unsupported algorithm {other:?}")),
    }
    .map_err(|e| e.to_string())?;
    // Only the signature here: the claims are checked one by one, each with its own AADSTS code.
    let mut v = Validation::new(header.alg);
    v.validate_exp = false;
    v.validate_nbf = false;
    v.validate_aud = false;
    v.required_spec_claims.clear();
    jsonwebtoken::decode::<Value>(assertion, &key, &v)
        .map(|_| ())
        .map_err(|e| e.to_string())
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

    fn exchange(
        &self,
        tenant: &str,
        params: &BTreeMap<String, String>,
        now: i64,
    ) -> Result<(String, Value), EntraError> {
        let config = lock(&self.config).clone();
        if tenant != config.tenant {
            return Err(EntraError::new(
                400,
                "invalid_request",
                90002,
                format!(
                    "Tenant '{tenant}' not found. Check to make sure you have the correct tenant ID."
                ),
            ));
        }
        let param = |name: &str| {
            params
                .get(name)
                .map(String::as_str)
                .filter(|v| !v.is_empty())
        };
        let missing = |name: &str| {
            EntraError::new(
                400,
                "invalid_request",
                900144,
                format!("The request body must contain the following parameter: '{name}'."),
            )
        };
        match param("grant_type") {
            Some("client_credentials") => {}
            None => return Err(missing("grant_type")),
            Some(other) => {
                return Err(EntraError::new(
                    400,
                    "unsupported_grant_type",
                    70003,
                    format!("The app requested an unsupported grant type '{other}'."),
                ));
            }
        }
        let client_id = param("client_id").ok_or_else(|| missing("client_id"))?;
        let scope = param("scope").ok_or_else(|| missing("scope"))?;
        let Some(resource) = scope.strip_suffix("/.default").filter(|r| !r.is_empty()) else {
            return Err(EntraError::new(
                400,
                "invalid_scope",
                70011,
                format!(
                    "The provided value for the input parameter 'scope' is not valid. The scope {scope} is not valid: a client-credentials request asks for '<resource>/.default'."
                ),
            ));
        };
        let assertion = match (param("client_assertion_type"), param("client_assertion")) {
            (Some(ASSERTION_TYPE), Some(a)) => a,
            _ => {
                return Err(EntraError::invalid_client(
                    7000218,
                    format!(
                        "The request body must contain the following parameter: 'client_assertion' with client_assertion_type '{ASSERTION_TYPE}'."
                    ),
                ));
            }
        };
        let creds: Vec<&FederatedCredential> = config
            .credentials
            .iter()
            .filter(|c| c.client_id == client_id)
            .collect();
        if creds.is_empty() {
            return Err(EntraError::new(
                400,
                "unauthorized_client",
                700016,
                format!(
                    "Application with identifier '{client_id}' was not found in the directory '{}'.",
                    config.tenant
                ),
            ));
        }
        let claims = read_claims(assertion).map_err(|e| {
            EntraError::invalid_client(50013, format!("Assertion is not a valid JWT: {e}."))
        })?;
        let iss = claims.iss.clone().unwrap_or_default();
        let creds: Vec<&FederatedCredential> =
            creds.into_iter().filter(|c| c.issuer == iss).collect();
        let trusted = config.issuers.iter().find(|i| i.issuer == iss);
        let (Some(trusted), false) = (trusted, creds.is_empty()) else {
            return Err(EntraError::invalid_client(
                700211,
                format!(
                    "No matching federated identity record found for presented assertion issuer '{iss}'."
                ),
            ));
        };
        verify_signature(assertion, &trusted.public_key_pem).map_err(|e| {
            EntraError::invalid_client(
                50013,
                format!("Assertion failed signature validation: {e}."),
            )
        })?;
        let skew = config.clock_skew.as_secs() as i64;
        let exp = claims.exp.unwrap_or(i64::MIN);
        let nbf = claims.nbf.or(claims.iat).unwrap_or(i64::MIN);
        if now > exp + skew || now + skew < nbf {
            return Err(EntraError::invalid_client(
                700024,
                format!(
                    "Client assertion is not within its valid time range. Current time: {now}, assertion valid from {nbf}, expiry time of assertion {exp}."
                ),
            ));
        }
        let creds: Vec<&FederatedCredential> = creds
            .into_iter()
            .filter(|c| claims.aud.contains(&c.audience))
            .collect();
        if creds.is_empty() {
            return Err(EntraError::invalid_client(
                700212,
                format!(
                    "No matching federated identity record found for presented assertion audience '{}'.",
                    claims.aud.join(",")
                ),
            ));
        }
        let sub = claims.sub.clone().unwrap_or_default();
        if !creds.iter().any(|c| c.subject == sub) {
            return Err(EntraError::invalid_client(
                700213,
                format!(
                    "No matching federated identity record found for presented assertion subject '{sub}'. Matching is exact and case-sensitive."
                ),
            ));
        }
        let lifetime = config.token_lifetime.as_secs() as i64;
        let token_id = b64url(&rand::random::<[u8; 16]>());
        let object_id = random_uuid();
        let payload = json!({
            "aud": resource,
            "iss": format!("https://{AUTHORITY_HOST}/{}/v2.0", config.tenant),
            "iat": now,
            "nbf": now,
            "exp": now + lifetime,
            "appid": client_id,
            "azp": client_id,
            "oid": object_id,
            "sub": object_id,
            "tid": config.tenant,
            "uti": token_id,
            "ver": "2.0",
        });
        let token = self
            .signer
            .sign_compact(
                json!({"typ": "JWT", "kid": SIGNING_KID}),
                payload.to_string().as_bytes(),
            )
            .map_err(|e| EntraError::new(500, "server_error", 50000, e.to_string()))?;
        Ok((
            token_id,
            json!({
                "token_type": "Bearer",
                "expires_in": lifetime,
                "ext_expires_in": lifetime,
                "access_token": token,
            }),
        ))
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

/// An external issuer for tests: an ES256 key (as the API server's ServiceAccount signing key
/// made by `rcgen`) that signs assertions.
pub struct AssertionSigner {
    key: rcgen::KeyPair,
}

impl std::fmt::Debug for AssertionSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AssertionSigner").finish_non_exhaustive()
    }
}

impl AssertionSigner {
    /// A fresh P-256 key.
    pub fn generate() -> Self {
        Self {
            key: rcgen::KeyPair::generate().expect("a P-256 key can always be generated"),
        }
    }

    /// The issuer `issuer` with this key, to trust.
    pub fn trusted(&self, issuer: &str) -> TrustedIssuer {
        TrustedIssuer {
            issuer: issuer.to_owned(),
            public_key_pem: self.key.public_key_pem(),
        }
    }

    /// Signs `claims` (ES256).
    pub fn sign(&self, claims: &Value) -> String {
        let key = jsonwebtoken::EncodingKey::from_ec_pem(self.key.serialize_pem().as_bytes())
            .expect("rcgen writes PKCS#8 PEM");
        jsonwebtoken::encode(&jsonwebtoken::Header::new(Algorithm::ES256), claims, &key)
            .expect("signing cannot fail with a valid key")
    }

    /// A ServiceAccount token as the API server's TokenRequest makes it for the token-exchange
    /// audience.
    pub fn service_account_token(
        &self,
        issuer: &str,
        namespace: &str,
        name: &str,
        now: i64,
        lifetime: i64,
    ) -> String {
        self.sign(&json!({
            "iss": issuer,
            "aud": [TOKEN_EXCHANGE_AUDIENCE],
            "sub": format!("system:serviceaccount:{namespace}:{name}"),
            "iat": now,
            "nbf": now,
            "exp": now + lifetime,
            "jti": random_uuid(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TENANT: &str = "72f988bf-0000-4000-8000-00000000c4b0";
    const CLIENT: &str = "00000000-0000-4000-8000-0000000000c1";
    const K8S: &str = "https://kubernetes.default.svc.cluster.local";

    type Issuer = AssertionSigner;

    fn sa_claims(now: i64) -> Value {
        json!({
            "iss": K8S, "aud": [TOKEN_EXCHANGE_AUDIENCE],
            "sub": "system:serviceaccount:ckb-system:ckb-operator",
            "iat": now, "nbf": now, "exp": now + 600,
        })
    }

    fn double(issuer: &Issuer) -> Entra {
        let mut c = EntraConfig::new(TENANT);
        c.issuers.push(issuer.trusted(K8S));
        c.credentials.push(FederatedCredential::service_account(
            CLIENT,
            K8S,
            "ckb-system",
            "ckb-operator",
        ));
        Entra::new(c).unwrap()
    }

    fn form(assertion: &str) -> String {
        form_urlencoded::Serializer::new(String::new())
            .append_pair("grant_type", "client_credentials")
            .append_pair("client_id", CLIENT)
            .append_pair("scope", "https://vault.azure.net/.default")
            .append_pair("client_assertion_type", ASSERTION_TYPE)
            .append_pair("client_assertion", assertion)
            .finish()
    }

    fn refusal(entra: &Entra, body: &str, now: i64) -> (u16, u32, Value) {
        let (status, answer) = entra.token(TENANT, body.as_bytes(), now);
        assert_ne!(status, 200, "{answer}");
        let code = answer["error_codes"][0].as_u64().unwrap() as u32;
        (status, code, answer)
    }

    const NOW: i64 = 1_790_000_000;

    #[test]
    fn a_matching_assertion_gets_a_token_the_resource_accepts() {
        let k8s = Issuer::generate();
        let entra = double(&k8s);
        let (status, answer) =
            entra.token(TENANT, form(&k8s.sign(&sa_claims(NOW))).as_bytes(), NOW);
        assert_eq!(status, 200, "{answer}");
        assert_eq!(answer["token_type"], "Bearer");
        assert_eq!(answer["expires_in"], 3600);
        let token = answer["access_token"].as_str().unwrap();
        let info = entra
            .verify_access_token(token, Some("https://vault.azure.net"), NOW + 10)
            .unwrap();
        assert_eq!(info.client_id, CLIENT);
        assert_eq!(
            info.issuer,
            format!("https://login.microsoftonline.com/{TENANT}/v2.0")
        );
        // Expired, tampered, or for another resource: refused.
        assert!(entra.verify_access_token(token, None, NOW + 3600).is_err());
        assert!(
            entra
                .verify_access_token(token, Some("https://managedhsm.azure.net"), NOW)
                .is_err()
        );
        let mut parts: Vec<&str> = token.split('.').collect();
        let forged = b64url(
            json!({"iss": entra.issuer(), "appid": "someone-else", "exp": NOW + 99, "aud": "https://vault.azure.net"})
                .to_string()
                .as_bytes(),
        );
        parts[1] = &forged;
        assert!(
            entra
                .verify_access_token(&parts.join("."), None, NOW)
                .is_err()
        );
        // Another Entra double's token (another signing key) is refused too.
        let other = double(&k8s);
        let (_, a) = other.token(TENANT, form(&k8s.sign(&sa_claims(NOW))).as_bytes(), NOW);
        assert!(
            entra
                .verify_access_token(a["access_token"].as_str().unwrap(), None, NOW)
                .is_err()
        );
        let log = entra.exchanges();
        assert_eq!(log.len(), 1);
        assert_eq!(
            log[0].assertion_subject.as_deref(),
            Some("system:serviceaccount:ckb-system:ckb-operator")
        );
    }

    #[test]
    fn wrong_issuer_audience_subject_or_time_are_refused_with_their_aadsts_codes() {
        let k8s = Issuer::generate();
        let entra = double(&k8s);
        let with = |k: &str, v: Value| {
            let mut c = sa_claims(NOW);
            c[k] = v;
            form(&k8s.sign(&c))
        };
        let cases = [
            (with("iss", json!("https://evil.example")), 700211),
            (with("aud", json!(["api://other"])), 700212),
            (
                with("sub", json!("system:serviceaccount:ckb-system:other")),
                700213,
            ),
            (
                with(
                    "sub",
                    json!("system:serviceaccount:ckb-system:CKB-operator"),
                ),
                700213,
            ),
            (with("exp", json!(NOW - 3600)), 700024),
            (with("nbf", json!(NOW + 3600)), 700024),
        ];
        for (body, want) in cases {
            let (status, code, answer) = refusal(&entra, &body, NOW);
            assert_eq!((status, code), (401, want), "{answer}");
            assert_eq!(answer["error"], "invalid_client");
            let d = answer["error_description"].as_str().unwrap();
            assert!(d.starts_with(&format!("AADSTS{want}: ")), "{d}");
            assert!(
                d.contains("\r\nTrace ID: ") && d.contains("\r\nCorrelation ID: "),
                "{d}"
            );
            for k in ["timestamp", "trace_id", "correlation_id"] {
                assert!(
                    answer[k].as_str().is_some_and(|s| !s.is_empty()),
                    "{k}: {answer}"
                );
            }
        }
        // Signed by another key than the issuer's.
        let impostor = Issuer::generate();
        let (status, code, _) = refusal(&entra, &form(&impostor.sign(&sa_claims(NOW))), NOW);
        assert_eq!((status, code), (401, 50013));
        // Within the tolerated skew: accepted.
        let (status, _) = entra.token(TENANT, with("exp", json!(NOW - 30)).as_bytes(), NOW);
        assert_eq!(status, 200);
        let log = entra.exchanges();
        assert_eq!(log.iter().filter(|e| e.status == 200).count(), 1);
        assert_eq!(log.iter().filter(|e| e.aadsts == Some(700213)).count(), 2);
    }

    #[test]
    fn protocol_errors_are_refused_before_the_assertion_is_read() {
        let k8s = Issuer::generate();
        let entra = double(&k8s);
        let good = k8s.sign(&sa_claims(NOW));
        let body = |pairs: &[(&str, &str)]| {
            let mut s = form_urlencoded::Serializer::new(String::new());
            for (k, v) in pairs {
                s.append_pair(k, v);
            }
            s.finish()
        };
        let base = [
            ("grant_type", "client_credentials"),
            ("client_id", CLIENT),
            ("scope", "https://vault.azure.net/.default"),
            ("client_assertion_type", ASSERTION_TYPE),
            ("client_assertion", good.as_str()),
        ];
        let replace = |k: &str, v: &str| {
            let mut b = base.to_vec();
            b.retain(|(n, _)| *n != k);
            if !v.is_empty() {
                b.push((k, v));
            }
            body(&b)
        };
        let cases = [
            (replace("grant_type", "password"), 400, 70003),
            (replace("client_id", ""), 400, 900144),
            (replace("scope", "https://vault.azure.net"), 400, 70011),
            (replace("client_assertion_type", "urn:x"), 401, 7000218),
            (
                replace("client_id", "00000000-0000-4000-8000-0000000000ff"),
                400,
                700016,
            ),
            (replace("client_assertion", "not-a-jwt"), 401, 50013),
        ];
        for (b, status, code) in cases {
            let (s, c, answer) = refusal(&entra, &b, NOW);
            assert_eq!((s, c), (status, code), "{answer}");
        }
        let (status, answer) = entra.token("other-tenant", body(&base).as_bytes(), NOW);
        assert_eq!(
            (status, answer["error_codes"][0].as_u64()),
            (400, Some(90002))
        );
    }
}
