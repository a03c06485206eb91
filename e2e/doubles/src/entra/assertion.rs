//! Client assertions: their claims, read before the signature is checked (to find the issuer's
//! key), the signature check against a trusted issuer's key, and a signer for tests.

use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{Value, json};

use super::{TOKEN_EXCHANGE_AUDIENCE, TrustedIssuer, random_uuid};
use crate::jose::{CompactJws, JoseError};

/// The claims of an assertion, read before its signature is checked (to find the issuer's key).
#[derive(Debug, Default)]
pub(super) struct AssertionClaims {
    pub(super) iss: Option<String>,
    pub(super) sub: Option<String>,
    pub(super) aud: Vec<String>,
    pub(super) iat: Option<i64>,
    pub(super) nbf: Option<i64>,
    pub(super) exp: Option<i64>,
}

pub(super) fn read_claims(assertion: &str) -> Result<AssertionClaims, JoseError> {
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

pub(super) fn verify_signature(assertion: &str, public_key_pem: &str) -> Result<(), String> {
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
