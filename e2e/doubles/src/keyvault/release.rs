//! Secure key release: the steps between "a release request arrived" and "a signed, wrapped key
//! answered", as functions over values. The HTTP layer adds the one I/O step (fetching the
//! authority's signing keys).
//!
//! Verification: the target is an RS256 JWT from an authority the key's release policy names; its
//! signing keys come from the authority's OpenID metadata (`/.well-known/openid-configuration` ->
//! `jwks_uri`, which for MAA is `/certs`): Managed HSM's SKR tests describe that requirement of the
//! service. Then `exp`/`nbf`, then the policy. The wrapping key is the first key of
//! `x-ms-runtime.keys` whose `key_ops` contain `encrypt` or whose `use` is `enc` (the grammar
//! document names it the runtime key with encryption use).

use serde_json::{Value, json};

use super::ServiceError;
use super::material::{WrapAlg, wrap_for_rsa};
use super::vault::{KeyVersion, Vault};
use crate::jose::{CompactJws, RsaSigner, b64std, b64url, b64url_decode};
use crate::pki::sha2_256;
use crate::policy::{Evaluation, ReleasePolicy};

/// A parsed `KeyReleaseParameters` body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReleaseRequest {
    /// The attestation token.
    pub target: String,
    /// Requested wrapping algorithm; the service default is `CKM_RSA_AES_KEY_WRAP`.
    pub enc: WrapAlg,
    /// Client nonce, echoed nowhere (the spec says it is for freshness).
    pub nonce: Option<String>,
}

/// Parses the release body.
pub fn parse_request(body: &Value) -> Result<ReleaseRequest, ServiceError> {
    let target = body
        .get("target")
        .and_then(Value::as_str)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| ServiceError::bad_parameter("The parameter target is required"))?;
    let enc = match body.get("enc") {
        None | Some(Value::Null) => WrapAlg::CkmRsaAesKeyWrap,
        Some(Value::String(s)) => WrapAlg::parse(s).ok_or_else(|| {
            ServiceError::bad_parameter(format!(
                "Invalid enc '{s}'. Valid values: CKM_RSA_AES_KEY_WRAP, RSA_AES_KEY_WRAP_256, RSA_AES_KEY_WRAP_384"
            ))
        })?,
        Some(_) => return Err(ServiceError::bad_parameter("enc must be a string")),
    };
    let nonce = body.get("nonce").and_then(Value::as_str).map(str::to_owned);
    Ok(ReleaseRequest {
        target: target.to_owned(),
        enc,
        nonce,
    })
}

/// 403 for a token that fails verification or policy.
pub fn attestation_refused(detail: &str) -> ServiceError {
    ServiceError::new(
        403,
        "Forbidden",
        format!("Target environment attestation statement cannot be verified. {detail}"),
    )
    .with_inner("AccessDenied")
}

/// The key must be enabled, exportable and carry a policy; answers the parsed policy.
pub fn check_releasable(k: &KeyVersion) -> Result<ReleasePolicy, ServiceError> {
    if !k.enabled {
        return Err(ServiceError::new(
            403,
            "Forbidden",
            "Operation release is not allowed on a disabled key.",
        )
        .with_inner("KeyDisabled"));
    }
    if !k.exportable {
        return Err(ServiceError::new(
            403,
            "Forbidden",
            "Key release is not allowed: the key is not exportable (attributes.exportable is false).",
        )
        .with_inner("KeyNotExportable"));
    }
    let stored = k.release_policy.as_ref().ok_or_else(|| {
        ServiceError::new(
            403,
            "Forbidden",
            "Key release is not allowed: the key has no release policy.",
        )
    })?;
    ReleasePolicy::parse(&stored.data)
        .map_err(|e| ServiceError::new(500, "InternalServerError", format!("stored policy: {e}")))
}

/// A target token split and decoded, with its issuer, before any verification.
#[derive(Debug, Clone)]
pub struct Target {
    /// The JWS.
    pub jws: CompactJws,
    /// Its claims.
    pub claims: Value,
    /// `iss`.
    pub issuer: String,
}

/// Decodes the target (structure only).
pub fn inspect_target(token: &str) -> Result<Target, ServiceError> {
    let jws = CompactJws::parse(token)
        .map_err(|e| attestation_refused(&format!("The target is not a JWT: {e}.")))?;
    jws.require_rs256()
        .map_err(|e| attestation_refused(&format!("{e}.")))?;
    let claims = jws
        .claims()
        .map_err(|e| attestation_refused(&format!("{e}.")))?;
    let issuer = claims
        .get("iss")
        .and_then(Value::as_str)
        .ok_or_else(|| attestation_refused("The token has no iss claim."))?
        .to_owned();
    Ok(Target {
        jws,
        claims,
        issuer,
    })
}

/// Checks the signature against the authority's JWKS, and the token's lifetime at `now`.
pub fn verify_target(t: &Target, jwks: &Value, now: i64) -> Result<(), ServiceError> {
    let keys = jwks
        .get("keys")
        .and_then(Value::as_array)
        .ok_or_else(|| attestation_refused("The authority published no signing keys."))?;
    let kid = t.jws.header.get("kid").and_then(Value::as_str);
    let candidates: Vec<&Value> = keys
        .iter()
        .filter(|k| kid.is_none() || k.get("kid").and_then(Value::as_str) == kid)
        .collect();
    if candidates.is_empty() {
        return Err(attestation_refused(
            "The token's signing key is not published by its authority.",
        ));
    }
    if !candidates.iter().any(|k| t.jws.verify_with_jwk(k).is_ok()) {
        return Err(attestation_refused("The token signature is not valid."));
    }
    let exp = t.claims.get("exp").and_then(Value::as_i64);
    let nbf = t.claims.get("nbf").and_then(Value::as_i64);
    match exp {
        None => return Err(attestation_refused("The token has no exp claim.")),
        Some(exp) if exp <= now => return Err(attestation_refused("The token has expired.")),
        Some(_) => {}
    }
    if nbf.is_some_and(|nbf| nbf > now) {
        return Err(attestation_refused("The token is not valid yet (nbf)."));
    }
    Ok(())
}

/// Evaluates the key's policy for a verified token.
pub fn evaluate(policy: &ReleasePolicy, t: &Target) -> Result<(), ServiceError> {
    match policy.evaluate(&t.issuer, &t.claims) {
        Evaluation::Satisfied => Ok(()),
        Evaluation::UnknownAuthority => Err(attestation_refused(&format!(
            "The token's issuer {} is not an authority of the key release policy.",
            t.issuer
        ))),
        Evaluation::Unsatisfied(claims) => Err(attestation_refused(&format!(
            "The key release policy is not satisfied (claims not matching: {}).",
            claims.join(", ")
        ))),
    }
}

/// The public part of the runtime encryption key a token carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuntimeKey {
    /// Modulus.
    pub n: Vec<u8>,
    /// Public exponent.
    pub e: Vec<u8>,
    /// `kid`, if the JWK has one.
    pub kid: Option<String>,
}

/// The runtime encryption key of a token.
pub fn runtime_key(claims: &Value) -> Result<RuntimeKey, ServiceError> {
    let keys = claims
        .get("x-ms-runtime")
        .and_then(|r| r.get("keys"))
        .and_then(Value::as_array)
        .ok_or_else(|| attestation_refused("The token carries no x-ms-runtime.keys."))?;
    let key = keys
        .iter()
        .find(|k| {
            k.get("key_ops")
                .and_then(Value::as_array)
                .is_some_and(|ops| ops.iter().any(|o| o == "encrypt"))
                || k.get("use").and_then(Value::as_str) == Some("enc")
        })
        .ok_or_else(|| {
            attestation_refused("No key in x-ms-runtime.keys is usable for encryption.")
        })?;
    if key.get("kty").and_then(Value::as_str) != Some("RSA") {
        return Err(attestation_refused(
            "The runtime encryption key is not an RSA key.",
        ));
    }
    let n = key.get("n").and_then(Value::as_str).and_then(b64url_decode);
    let e = key.get("e").and_then(Value::as_str).and_then(b64url_decode);
    match (n, e) {
        (Some(n), Some(e)) if n.len() >= 256 => Ok(RuntimeKey {
            n,
            e,
            kid: key.get("kid").and_then(Value::as_str).map(str::to_owned),
        }),
        (Some(_), Some(_)) => Err(attestation_refused(
            "The runtime encryption key is shorter than 2048 bits.",
        )),
        _ => Err(attestation_refused(
            "The runtime encryption key lacks n or e.",
        )),
    }
}

/// Builds the release answer `{"value": <JWS>}` for a key version wrapped for the runtime key.
///
/// Payload shape (the spec's release example and what the SKR sidecar reads):
/// `{"request": {"api-version", "enc", "kid"}, "response": {"key": {"attributes",
/// "key": {"key_hsm", "kid", "kty", "key_ops"}, "release_policy": {"contentType", "data"}}}}`,
/// `key_hsm` = base64url(JSON `{"schema_version", "header", "ciphertext"}`).
#[allow(clippy::too_many_arguments)]
pub fn build_answer(
    signer: &RsaSigner,
    base: &str,
    name: &str,
    k: &KeyVersion,
    enc: WrapAlg,
    api_version: &str,
    runtime: &RuntimeKey,
) -> Result<Value, ServiceError> {
    let ciphertext = wrap_for_rsa(enc, &runtime.n, &runtime.e, k.material.release_bytes())
        .map_err(|err| ServiceError::new(500, "InternalServerError", err.to_string()))?;
    // NB: the `header` member of key_hsm is not documented; the sidecar ignores it. It names
    // the wrapping key and algorithm here.
    let key_hsm = json!({
        "schema_version": "1.0",
        "header": {"kid": runtime.kid, "alg": "dir", "enc": enc.as_str()},
        "ciphertext": b64url(&ciphertext),
    });
    let kid = format!("{base}/keys/{name}/{}", k.version);
    let policy = k
        .release_policy
        .as_ref()
        .map(|p| json!({"contentType": p.content_type, "data": b64url(&p.data)}))
        .unwrap_or(Value::Null);
    let payload = json!({
        "request": {"api-version": api_version, "enc": enc.as_str(), "kid": kid},
        "response": {"key": {
            "attributes": Vault::attributes(k),
            "key": {
                "key_hsm": b64url(key_hsm.to_string().as_bytes()),
                "kid": kid,
                "kty": k.kty.as_str(),
                "key_ops": k.key_ops,
            },
            "release_policy": policy,
        }},
    });
    let leaf = signer
        .chain
        .first()
        .ok_or_else(|| ServiceError::new(500, "InternalServerError", "no signing certificate"))?;
    let header = json!({
        "kid": signer.kid,
        "x5c": signer.chain.iter().map(|c| b64std(c)).collect::<Vec<_>>(),
        "x5t#S256": b64url(&sha2_256(leaf)),
    });
    let jws = signer
        .sign_compact(header, payload.to_string().as_bytes())
        .map_err(|err| ServiceError::new(500, "InternalServerError", err.to_string()))?;
    Ok(json!({ "value": jws }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rsa_jwk(ops: Option<&[&str]>, use_: Option<&str>, n_len: usize) -> Value {
        let mut k = json!({"kty": "RSA", "n": b64url(&vec![0xc1; n_len]), "e": "AQAB", "kid": format!("k{n_len}")});
        if let Some(ops) = ops {
            k["key_ops"] = json!(ops);
        }
        if let Some(u) = use_ {
            k["use"] = u.into();
        }
        k
    }

    #[test]
    fn the_first_encryption_key_of_the_runtime_keys_is_used() {
        let claims = json!({"x-ms-runtime": {"keys": [
            rsa_jwk(Some(&["verify"]), None, 256),
            rsa_jwk(None, Some("enc"), 384),
            rsa_jwk(Some(&["encrypt"]), None, 512),
        ]}});
        let k = runtime_key(&claims).unwrap();
        assert_eq!((k.n.len(), k.kid.as_deref()), (384, Some("k384")));
        let claims =
            json!({"x-ms-runtime": {"keys": [rsa_jwk(Some(&["sign"]), Some("sig"), 256)]}});
        assert_eq!(runtime_key(&claims).unwrap_err().status, 403);
        let claims = json!({"x-ms-runtime": {"keys": [rsa_jwk(Some(&["encrypt"]), None, 128)]}});
        assert!(runtime_key(&claims).unwrap_err().message.contains("2048"));
        assert_eq!(runtime_key(&json!({})).unwrap_err().status, 403);
    }

    #[test]
    fn release_body_validation() {
        let r = parse_request(&json!({"target": "t"})).unwrap();
        assert_eq!(r.enc, WrapAlg::CkmRsaAesKeyWrap);
        let r = parse_request(&json!({"target": "t", "enc": "RSA_AES_KEY_WRAP_384", "nonce": "n"}))
            .unwrap();
        assert_eq!(
            (r.enc, r.nonce.as_deref()),
            (WrapAlg::RsaAesKeyWrap384, Some("n"))
        );
        assert_eq!(
            parse_request(&json!({"target": ""})).unwrap_err().status,
            400
        );
        assert_eq!(parse_request(&json!({})).unwrap_err().status, 400);
        assert_eq!(
            parse_request(&json!({"target": "t", "enc": "RSA-OAEP"}))
                .unwrap_err()
                .status,
            400
        );
    }

    #[test]
    fn tokens_that_are_not_rs256_jwts_are_refused_before_any_fetch() {
        assert_eq!(inspect_target("a.b").unwrap_err().status, 403);
        let none_alg = format!(
            "{}.{}.",
            b64url(br#"{"alg":"none"}"#),
            b64url(br#"{"iss":"https://a"}"#)
        );
        assert!(
            inspect_target(&none_alg)
                .unwrap_err()
                .message
                .contains("RS256")
        );
        let no_iss = format!("{}.{}.c2ln", b64url(br#"{"alg":"RS256"}"#), b64url(b"{}"));
        assert!(inspect_target(&no_iss).unwrap_err().message.contains("iss"));
    }
}
