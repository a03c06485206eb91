//! The small part of JOSE both doubles speak: base64url, compact RS256 JWS, RSA JWKs.
//!
//! Written against RFC 7515 (JWS) and RFC 7517/7518 (JWK, RS256) rather than with a JWT library,
//! because the doubles must produce exact shapes (header fields, `x5c` in standard base64) and
//! must be able to sign deliberately bad tokens.

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{self, KeyPair as _, RsaKeyPair};
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE, URL_SAFE_NO_PAD};
use serde_json::Value;

/// Errors of JOSE encoding, decoding and verification.
#[derive(Debug, thiserror::Error)]
pub enum JoseError {
    /// The compact serialization does not have three dot-separated parts.
    #[error("a compact JWS has three dot-separated parts, this one has {0}")]
    Parts(usize),
    /// A part is not base64url.
    #[error("{0} is not base64url")]
    Base64(&'static str),
    /// A part is not the JSON it should be.
    #[error("{0} is not a JSON object")]
    Json(&'static str),
    /// The header names an algorithm other than RS256.
    #[error("unsupported JWS algorithm {0:?} (only RS256)")]
    Algorithm(String),
    /// The signature does not verify.
    #[error("the signature does not verify")]
    Signature,
    /// A key could not be used.
    #[error("unusable key: {0}")]
    Key(String),
}

/// Base64url without padding (the JOSE encoding).
pub fn b64url(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// Decodes base64url with or without padding (Key Vault and MAA both emit unpadded; Go's
/// `base64.URLEncoding`, used by the sidecar for its attest request, pads).
pub fn b64url_decode(text: &str) -> Option<Vec<u8>> {
    URL_SAFE_NO_PAD
        .decode(text.trim_end_matches('='))
        .ok()
        .or_else(|| URL_SAFE.decode(text).ok())
}

/// Standard base64 with padding (the encoding of `x5c` entries, RFC 7517 §4.7).
pub fn b64std(bytes: &[u8]) -> String {
    STANDARD.encode(bytes)
}

/// Decodes standard base64 with padding.
pub fn b64std_decode(text: &str) -> Option<Vec<u8>> {
    STANDARD.decode(text).ok()
}

/// An RSA signing key with its certificate chain, used to sign RS256 JWS.
pub struct RsaSigner {
    key: RsaKeyPair,
    /// DER certificates, leaf first (may be empty for a key without certificate).
    pub chain: Vec<Vec<u8>>,
    /// The `kid` put in headers and JWKS.
    pub kid: String,
}

impl std::fmt::Debug for RsaSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RsaSigner").field("kid", &self.kid).finish()
    }
}

impl RsaSigner {
    /// Wraps a PKCS#8 RSA private key and its chain.
    pub fn from_pkcs8(pkcs8: &[u8], chain: Vec<Vec<u8>>, kid: String) -> Result<Self, JoseError> {
        let key = RsaKeyPair::from_pkcs8(pkcs8).map_err(|e| JoseError::Key(e.to_string()))?;
        Ok(Self { key, chain, kid })
    }

    /// A fresh RSA-2048 key without certificate.
    pub fn generate(kid: String) -> Result<Self, JoseError> {
        let key = RsaKeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048)
            .map_err(|e| JoseError::Key(e.to_string()))?;
        Ok(Self {
            key,
            chain: Vec::new(),
            kid,
        })
    }

    /// The public modulus, big-endian without leading zero.
    pub fn modulus(&self) -> Vec<u8> {
        self.key
            .public_key()
            .modulus()
            .big_endian_without_leading_zero()
            .to_vec()
    }

    /// The public exponent, big-endian without leading zero.
    pub fn exponent(&self) -> Vec<u8> {
        self.key
            .public_key()
            .exponent()
            .big_endian_without_leading_zero()
            .to_vec()
    }

    /// The public JWK (`kty`, `kid`, `n`, `e`, and `x5c` when a chain exists).
    pub fn public_jwk(&self) -> Value {
        let mut jwk = serde_json::json!({
            "kty": "RSA",
            "kid": self.kid,
            "use": "sig",
            "alg": "RS256",
            "n": b64url(&self.modulus()),
            "e": b64url(&self.exponent()),
        });
        if !self.chain.is_empty() {
            jwk["x5c"] = self.chain.iter().map(|c| b64std(c)).collect();
        }
        jwk
    }

    /// Signs `payload` as a compact RS256 JWS with the given header (`alg` is forced to RS256).
    pub fn sign_compact(&self, mut header: Value, payload: &[u8]) -> Result<String, JoseError> {
        header["alg"] = Value::from("RS256");
        let header = serde_json::to_vec(&header).map_err(|_| JoseError::Json("header"))?;
        let signing_input = format!("{}.{}", b64url(&header), b64url(payload));
        let mut sig = vec![0; self.key.public_modulus_len()];
        self.key
            .sign(
                &signature::RSA_PKCS1_SHA256,
                &SystemRandom::new(),
                signing_input.as_bytes(),
                &mut sig,
            )
            .map_err(|_| JoseError::Signature)?;
        Ok(format!("{signing_input}.{}", b64url(&sig)))
    }
}

/// A compact JWS split into its decoded parts, not yet verified.
#[derive(Debug, Clone)]
pub struct CompactJws {
    /// Decoded header.
    pub header: Value,
    /// Decoded payload bytes.
    pub payload: Vec<u8>,
    /// `<header>.<payload>` as received: what the signature covers.
    pub signing_input: String,
    /// Decoded signature.
    pub signature: Vec<u8>,
}

impl CompactJws {
    /// Splits and decodes (no verification).
    pub fn parse(token: &str) -> Result<Self, JoseError> {
        let parts: Vec<&str> = token.trim().split('.').collect();
        if parts.len() != 3 {
            return Err(JoseError::Parts(parts.len()));
        }
        let header = b64url_decode(parts[0]).ok_or(JoseError::Base64("header"))?;
        let header: Value =
            serde_json::from_slice(&header).map_err(|_| JoseError::Json("header"))?;
        if !header.is_object() {
            return Err(JoseError::Json("header"));
        }
        let payload = b64url_decode(parts[1]).ok_or(JoseError::Base64("payload"))?;
        let signature = b64url_decode(parts[2]).ok_or(JoseError::Base64("signature"))?;
        Ok(Self {
            header,
            payload,
            signing_input: format!("{}.{}", parts[0], parts[1]),
            signature,
        })
    }

    /// The payload as a JSON object.
    pub fn claims(&self) -> Result<Value, JoseError> {
        let v: Value =
            serde_json::from_slice(&self.payload).map_err(|_| JoseError::Json("payload"))?;
        if v.is_object() {
            Ok(v)
        } else {
            Err(JoseError::Json("payload"))
        }
    }

    /// The header's `alg` must be RS256.
    pub fn require_rs256(&self) -> Result<(), JoseError> {
        match self.header.get("alg").and_then(Value::as_str) {
            Some("RS256") => Ok(()),
            other => Err(JoseError::Algorithm(other.unwrap_or("").to_owned())),
        }
    }

    /// Verifies the RS256 signature with an RSA JWK: with `x5c[0]`'s key when the JWK carries a
    /// chain (MAA's `/certs` does), else with `n`/`e`.
    pub fn verify_with_jwk(&self, jwk: &Value) -> Result<(), JoseError> {
        self.require_rs256()?;
        if let Some(leaf) = jwk
            .get("x5c")
            .and_then(Value::as_array)
            .and_then(|a| a.first())
            .and_then(Value::as_str)
        {
            let der = b64std_decode(leaf).ok_or(JoseError::Base64("x5c[0]"))?;
            return self.verify_with_certificate(&der);
        }
        let n = jwk
            .get("n")
            .and_then(Value::as_str)
            .and_then(b64url_decode)
            .ok_or_else(|| JoseError::Key("JWK without n".into()))?;
        let e = jwk
            .get("e")
            .and_then(Value::as_str)
            .and_then(b64url_decode)
            .ok_or_else(|| JoseError::Key("JWK without e".into()))?;
        signature::RsaPublicKeyComponents { n: &n, e: &e }
            .verify(
                &signature::RSA_PKCS1_2048_8192_SHA256,
                self.signing_input.as_bytes(),
                &self.signature,
            )
            .map_err(|_| JoseError::Signature)
    }

    /// Verifies the RS256 signature with the RSA key of a DER certificate.
    pub fn verify_with_certificate(&self, der: &[u8]) -> Result<(), JoseError> {
        self.require_rs256()?;
        let (_, cert) = x509_parser::parse_x509_certificate(der)
            .map_err(|e| JoseError::Key(format!("certificate: {e}")))?;
        let spk = cert.public_key().subject_public_key.data.to_vec();
        signature::UnparsedPublicKey::new(&signature::RSA_PKCS1_2048_8192_SHA256, spk)
            .verify(self.signing_input.as_bytes(), &self.signature)
            .map_err(|_| JoseError::Signature)
    }
}

/// DER encoding of an RSA SubjectPublicKeyInfo from its modulus and exponent (RFC 8017 A.1.1 in
/// RFC 5280's SPKI), which is what aws-lc-rs takes to build an OAEP encrypting key.
pub fn rsa_spki_der(n: &[u8], e: &[u8]) -> Vec<u8> {
    fn len(out: &mut Vec<u8>, n: usize) {
        if n < 0x80 {
            out.push(n as u8);
        } else {
            let bytes: Vec<u8> = n
                .to_be_bytes()
                .iter()
                .copied()
                .skip_while(|b| *b == 0)
                .collect();
            out.push(0x80 | bytes.len() as u8);
            out.extend(bytes);
        }
    }
    fn tlv(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut out = vec![tag];
        len(&mut out, body.len());
        out.extend_from_slice(body);
        out
    }
    fn uint(bytes: &[u8]) -> Vec<u8> {
        let trimmed: Vec<u8> = bytes.iter().copied().skip_while(|b| *b == 0).collect();
        let mut body = Vec::with_capacity(trimmed.len() + 1);
        if trimmed.first().is_none_or(|b| b & 0x80 != 0) {
            body.push(0);
        }
        body.extend(trimmed);
        tlv(0x02, &body)
    }
    let rsa_public_key = tlv(0x30, &[uint(n), uint(e)].concat());
    // AlgorithmIdentifier { rsaEncryption (1.2.840.113549.1.1.1), NULL }
    let alg = [
        0x30, 0x0d, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01, 0x05, 0x00,
    ];
    let mut bit_string = vec![0u8];
    bit_string.extend(rsa_public_key);
    tlv(0x30, &[alg.to_vec(), tlv(0x03, &bit_string)].concat())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_then_verify_with_jwk_and_reject_tampering() {
        let signer = RsaSigner::generate("k1".into()).unwrap();
        let token = signer
            .sign_compact(serde_json::json!({"kid": "k1"}), br#"{"a":1}"#)
            .unwrap();
        let jws = CompactJws::parse(&token).unwrap();
        assert_eq!(jws.claims().unwrap()["a"], 1);
        jws.verify_with_jwk(&signer.public_jwk()).unwrap();

        let other = RsaSigner::generate("k1".into()).unwrap();
        assert!(matches!(
            jws.verify_with_jwk(&other.public_jwk()),
            Err(JoseError::Signature)
        ));
        let mut parts: Vec<String> = token.split('.').map(str::to_owned).collect();
        parts[1] = b64url(br#"{"a":2}"#);
        let tampered = CompactJws::parse(&parts.join(".")).unwrap();
        assert!(tampered.verify_with_jwk(&signer.public_jwk()).is_err());
    }

    #[test]
    fn spki_built_from_components_is_accepted_for_oaep() {
        let signer = RsaSigner::generate("k".into()).unwrap();
        let der = rsa_spki_der(&signer.modulus(), &signer.exponent());
        let key = aws_lc_rs::rsa::PublicEncryptingKey::from_der(&der).unwrap();
        assert_eq!(key.key_size_bits(), 2048);
    }

    #[test]
    fn base64url_accepts_padded_and_unpadded() {
        assert_eq!(b64url_decode("YQ").unwrap(), b"a");
        assert_eq!(b64url_decode("YQ==").unwrap(), b"a");
        assert_eq!(b64url(b"\xfb\xff"), "-_8");
    }
}
