//! Key material on the sidecar's side: its ephemeral RSA runtime key (the public JWK it sends,
//! the unwrap of what the vault wrapped for it) and the released key as a private JWK.

use aes_kw::KwpAes256;
use aws_lc_rs::encoding::AsDer as _;
use rsa::pkcs8::DecodePrivateKey as _;
use rsa::traits::{PrivateKeyParts as _, PublicKeyParts as _};
use serde_json::{Value, json};

use super::SidecarError;
use crate::jose::b64url;

/// The sidecar's ephemeral RSA-2048 wrapping key.
pub struct RuntimeKey {
    private: rsa::PrivateKey,
    kid: String,
}

impl std::fmt::Debug for RuntimeKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RuntimeKey")
            .field("kid", &self.kid)
            .finish()
    }
}

impl RuntimeKey {
    /// A fresh key (generated with aws-lc-rs for speed, used through the `rsa` crate).
    pub fn generate() -> Result<Self, SidecarError> {
        let kp = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048)
            .map_err(|e| SidecarError::Crypto(e.to_string()))?;
        let der = kp
            .as_der()
            .map_err(|e| SidecarError::Crypto(e.to_string()))?;
        let private = rsa::PrivateKey::from_pkcs8_der(der.as_ref())
            .map_err(|e| SidecarError::Crypto(e.to_string()))?;
        let mut id = [0u8; 8];
        aws_lc_rs::rand::fill(&mut id).map_err(|e| SidecarError::Crypto(e.to_string()))?;
        Ok(Self {
            private,
            kid: hex::encode(id),
        })
    }

    /// The public JWK the sidecar puts in its runtime data.
    pub fn public_jwk(&self) -> Value {
        json!({
            "kty": "RSA",
            "kid": self.kid,
            "key_ops": ["encrypt"],
            "n": b64url(&self.private.n_bytes()),
            "e": b64url(&self.private.e_bytes()),
        })
    }

    /// The runtime data: `{"keys": [jwk]}`.
    pub fn jwks(&self) -> Value {
        json!({ "keys": [self.public_jwk()] })
    }

    /// `RSA-OAEP(kek) || AES-KWP(kek, key)` -> key bytes, with the OAEP hash `enc` names.
    pub fn unwrap(&self, enc: &str, ciphertext: &[u8]) -> Result<Vec<u8>, SidecarError> {
        let size = self.private.size();
        if ciphertext.len() <= size {
            return Err(SidecarError::Invalid(format!(
                "ciphertext of {} bytes is not longer than the {size}-byte RSA block",
                ciphertext.len()
            )));
        }
        let (encrypted_kek, wrapped) = ciphertext.split_at(size);
        let kek = match enc {
            "CKM_RSA_AES_KEY_WRAP" => self
                .private
                .decrypt(rsa::Oaep::<sha1::Sha1>::new(), encrypted_kek),
            "RSA_AES_KEY_WRAP_256" => self
                .private
                .decrypt(rsa::Oaep::<sha2::Sha256>::new(), encrypted_kek),
            "RSA_AES_KEY_WRAP_384" => self
                .private
                .decrypt(rsa::Oaep::<sha2::Sha384>::new(), encrypted_kek),
            other => return Err(SidecarError::Invalid(format!("unsupported enc {other:?}"))),
        }
        .map_err(|e| SidecarError::Crypto(format!("RSA-OAEP: {e}")))?;
        let kwp = <KwpAes256 as aes_kw::cipher::KeyInit>::new_from_slice(&kek)
            .map_err(|_| SidecarError::Crypto(format!("AES key of {} bytes", kek.len())))?;
        let mut out = vec![0u8; wrapped.len()];
        let len = kwp
            .unwrap_key(wrapped, &mut out)
            .map_err(|e| SidecarError::Crypto(format!("AES-KWP: {e}")))?
            .len();
        out.truncate(len);
        Ok(out)
    }
}

/// A released key.
#[derive(Debug, Clone)]
pub struct ReleasedKey {
    /// `kid` of the released version.
    pub kid: String,
    /// Key type as the vault reports it (`RSA-HSM`, `EC-HSM`, `oct-HSM`).
    pub kty: String,
    /// Permitted operations.
    pub key_ops: Vec<String>,
    /// The algorithm the vault wrapped with.
    pub enc: String,
    /// Key bytes: PKCS#8 DER for RSA and EC, raw for oct.
    pub key_bytes: Vec<u8>,
    /// The verified JWS payload.
    pub payload: Value,
}

impl ReleasedKey {
    /// The key as a private JWK, like the sidecar's `/key/release` answer (RSA: n, e, d, p, q;
    /// oct: k; EC: crv, x, y, d).
    pub fn private_jwk(&self) -> Result<Value, SidecarError> {
        let ops = &self.key_ops;
        if self.kty.starts_with("RSA") {
            let k = rsa::PrivateKey::from_pkcs8_der(&self.key_bytes)
                .map_err(|e| SidecarError::Invalid(format!("released RSA key: {e}")))?;
            let mut jwk = json!({
                "kty": "RSA", "key_ops": ops,
                "n": b64url(&k.n_bytes()), "e": b64url(&k.e_bytes()),
                "d": b64url(&k.d().to_be_bytes_trimmed_vartime()),
            });
            if let [p, q, ..] = k.primes() {
                jwk["p"] = b64url(&p.to_be_bytes_trimmed_vartime()).into();
                jwk["q"] = b64url(&q.to_be_bytes_trimmed_vartime()).into();
            }
            Ok(jwk)
        } else if self.kty.starts_with("EC") {
            let (crv, d, point) = parse_ec_pkcs8(&self.key_bytes)?;
            let coord = (point.len() - 1) / 2;
            Ok(json!({
                "kty": "EC", "key_ops": ops, "crv": crv,
                "x": b64url(&point[1..1 + coord]), "y": b64url(&point[1 + coord..]),
                "d": b64url(&d),
            }))
        } else {
            Ok(json!({"kty": "oct", "key_ops": ops, "k": b64url(&self.key_bytes)}))
        }
    }
}

/// Reads curve, private scalar and public point from an EC PKCS#8 document (RFC 5208 wrapping
/// RFC 5915): enough DER to get them, through aws-lc-rs for the point.
fn parse_ec_pkcs8(der: &[u8]) -> Result<(&'static str, Vec<u8>, Vec<u8>), SidecarError> {
    use aws_lc_rs::encoding::AsBigEndian as _;
    use aws_lc_rs::signature::{self, KeyPair as _};
    let algs: [(&str, &'static signature::EcdsaSigningAlgorithm); 4] = [
        ("P-256", &signature::ECDSA_P256_SHA256_ASN1_SIGNING),
        ("P-384", &signature::ECDSA_P384_SHA384_ASN1_SIGNING),
        ("P-521", &signature::ECDSA_P521_SHA512_ASN1_SIGNING),
        ("P-256K", &signature::ECDSA_P256K1_SHA256_ASN1_SIGNING),
    ];
    for (crv, alg) in algs {
        if let Ok(kp) = signature::EcdsaKeyPair::from_pkcs8(alg, der) {
            let point = kp.public_key().as_ref().to_vec();
            let d = kp
                .private_key()
                .as_be_bytes()
                .map_err(|e| SidecarError::Crypto(e.to_string()))?
                .as_ref()
                .to_vec();
            return Ok((crv, d, point));
        }
    }
    Err(SidecarError::Invalid(
        "released EC key is not PKCS#8 on a known curve".into(),
    ))
}
