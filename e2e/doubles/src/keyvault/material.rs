//! Real key material (so that a release returns a key that really matches the public part the
//! vault shows), and the release wrapping: RSA-OAEP of an ephemeral AES-256 key followed by AES
//! key wrap with padding (RFC 5649) of the key bytes, as the SKR sidecar unwraps it.
//!
//! The double uses aws-lc-rs here; the sidecar side of this crate unwraps with the `rsa` and
//! `aes-kw` crates, so the two directions are independent implementations of the same spec.

use aws_lc_rs::encoding::AsDer as _;
use aws_lc_rs::key_wrap::{AES_256, KeyEncryptionKey, KeyWrapPadded as _};
use aws_lc_rs::rsa::{
    KeyPair as RsaKeyPair, KeySize, OAEP_SHA1_MGF1SHA1, OAEP_SHA256_MGF1SHA256,
    OAEP_SHA384_MGF1SHA384, OaepPublicEncryptingKey, PublicEncryptingKey,
};
use aws_lc_rs::signature::{self, EcdsaKeyPair, KeyPair as _};
use serde_json::{Map, Value};

use crate::jose::{b64url, rsa_spki_der};

/// Key types of the Key Vault API (`JsonWebKeyType`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum Kty {
    /// Software RSA.
    #[serde(rename = "RSA")]
    Rsa,
    /// HSM RSA.
    #[serde(rename = "RSA-HSM")]
    RsaHsm,
    /// Software EC.
    #[serde(rename = "EC")]
    Ec,
    /// HSM EC.
    #[serde(rename = "EC-HSM")]
    EcHsm,
    /// Software symmetric (not creatable in vaults or Managed HSM).
    #[serde(rename = "oct")]
    Oct,
    /// HSM symmetric (Managed HSM only).
    #[serde(rename = "oct-HSM")]
    OctHsm,
}

impl Kty {
    /// Parses the wire name.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "RSA" => Self::Rsa,
            "RSA-HSM" => Self::RsaHsm,
            "EC" => Self::Ec,
            "EC-HSM" => Self::EcHsm,
            "oct" => Self::Oct,
            "oct-HSM" => Self::OctHsm,
            _ => return None,
        })
    }

    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Rsa => "RSA",
            Self::RsaHsm => "RSA-HSM",
            Self::Ec => "EC",
            Self::EcHsm => "EC-HSM",
            Self::Oct => "oct",
            Self::OctHsm => "oct-HSM",
        }
    }

    /// Whether the key is HSM-protected (only those can be exportable).
    pub fn is_hsm(self) -> bool {
        matches!(self, Self::RsaHsm | Self::EcHsm | Self::OctHsm)
    }
}

/// EC curves of the Key Vault API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Curve {
    /// NIST P-256.
    P256,
    /// NIST P-384.
    P384,
    /// NIST P-521.
    P521,
    /// secp256k1.
    P256K,
}

impl Curve {
    /// Parses the wire name.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "P-256" => Self::P256,
            "P-384" => Self::P384,
            "P-521" => Self::P521,
            "P-256K" => Self::P256K,
            _ => return None,
        })
    }

    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::P256 => "P-256",
            Self::P384 => "P-384",
            Self::P521 => "P-521",
            Self::P256K => "P-256K",
        }
    }

    fn alg(self) -> &'static signature::EcdsaSigningAlgorithm {
        match self {
            Self::P256 => &signature::ECDSA_P256_SHA256_ASN1_SIGNING,
            Self::P384 => &signature::ECDSA_P384_SHA384_ASN1_SIGNING,
            Self::P521 => &signature::ECDSA_P521_SHA512_ASN1_SIGNING,
            Self::P256K => &signature::ECDSA_P256K1_SHA256_ASN1_SIGNING,
        }
    }
}

/// Generated key material.
#[derive(Clone)]
pub enum Material {
    /// RSA: private key as PKCS#8 DER, public modulus and exponent.
    Rsa {
        /// PKCS#8 DER of the private key (what a release wraps).
        pkcs8: Vec<u8>,
        /// Modulus, big-endian.
        n: Vec<u8>,
        /// Public exponent, big-endian.
        e: Vec<u8>,
    },
    /// EC: private key as PKCS#8 DER, public point coordinates.
    Ec {
        /// Curve.
        crv: Curve,
        /// PKCS#8 DER of the private key.
        pkcs8: Vec<u8>,
        /// X coordinate.
        x: Vec<u8>,
        /// Y coordinate.
        y: Vec<u8>,
    },
    /// Symmetric: raw bytes.
    Oct {
        /// Raw key bytes.
        k: Vec<u8>,
    },
}

impl std::fmt::Debug for Material {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print key bytes.
        match self {
            Self::Rsa { n, .. } => write!(f, "Rsa({} bits)", n.len() * 8),
            Self::Ec { crv, .. } => write!(f, "Ec({})", crv.as_str()),
            Self::Oct { k } => write!(f, "Oct({} bits)", k.len() * 8),
        }
    }
}

/// Errors from the crypto library.
#[derive(Debug, thiserror::Error)]
#[error("crypto failure: {0}")]
pub struct CryptoError(pub String);

impl Material {
    /// A fresh RSA key of `bits` (2048, 3072 or 4096) with exponent 65537.
    pub fn generate_rsa(bits: u32) -> Result<Self, CryptoError> {
        let size = match bits {
            2048 => KeySize::Rsa2048,
            3072 => KeySize::Rsa3072,
            4096 => KeySize::Rsa4096,
            other => return Err(CryptoError(format!("unsupported RSA size {other}"))),
        };
        let kp = RsaKeyPair::generate(size).map_err(|e| CryptoError(e.to_string()))?;
        let pkcs8 = kp
            .as_der()
            .map_err(|e| CryptoError(e.to_string()))?
            .as_ref()
            .to_vec();
        let public = kp.public_key();
        Ok(Self::Rsa {
            pkcs8,
            n: public.modulus().big_endian_without_leading_zero().to_vec(),
            e: public.exponent().big_endian_without_leading_zero().to_vec(),
        })
    }

    /// A fresh EC key on `crv`.
    pub fn generate_ec(crv: Curve) -> Result<Self, CryptoError> {
        let kp = EcdsaKeyPair::generate(crv.alg()).map_err(|e| CryptoError(e.to_string()))?;
        let pkcs8 = kp
            .to_pkcs8v1()
            .map_err(|e| CryptoError(e.to_string()))?
            .as_ref()
            .to_vec();
        // Uncompressed point: 0x04 || X || Y.
        let point = kp.public_key().as_ref();
        let coord = (point.len() - 1) / 2;
        Ok(Self::Ec {
            crv,
            pkcs8,
            x: point[1..1 + coord].to_vec(),
            y: point[1 + coord..].to_vec(),
        })
    }

    /// A fresh symmetric key of `bits`.
    pub fn generate_oct(bits: u32) -> Result<Self, CryptoError> {
        let mut k = vec![0u8; (bits / 8) as usize];
        aws_lc_rs::rand::fill(&mut k).map_err(|e| CryptoError(e.to_string()))?;
        Ok(Self::Oct { k })
    }

    /// The bytes a release wraps: PKCS#8 DER for RSA and EC, raw bytes for oct.
    pub fn release_bytes(&self) -> &[u8] {
        match self {
            Self::Rsa { pkcs8, .. } | Self::Ec { pkcs8, .. } => pkcs8,
            Self::Oct { k } => k,
        }
    }

    /// Adds the public members to a JWK object (`n`/`e`, or `crv`/`x`/`y`; nothing for oct,
    /// whose material Key Vault never shows).
    pub fn add_public_members(&self, jwk: &mut Map<String, Value>) {
        match self {
            Self::Rsa { n, e, .. } => {
                jwk.insert("n".into(), b64url(n).into());
                jwk.insert("e".into(), b64url(e).into());
            }
            Self::Ec { crv, x, y, .. } => {
                jwk.insert("crv".into(), crv.as_str().into());
                jwk.insert("x".into(), b64url(x).into());
                jwk.insert("y".into(), b64url(y).into());
            }
            Self::Oct { .. } => {}
        }
    }

    /// SHA-256 of the release bytes, hex: lets tests compare a released symmetric key with the
    /// one the vault holds without the dump ever showing key bytes.
    pub fn fingerprint(&self) -> String {
        hex::encode(crate::pki::sha2_256(self.release_bytes()))
    }
}

/// The key-wrapping algorithms of a release (`KeyReleaseParameters.enc`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WrapAlg {
    /// RSA-OAEP with SHA-1, then AES-KWP. The service's default.
    CkmRsaAesKeyWrap,
    /// RSA-OAEP with SHA-256, then AES-KWP.
    RsaAesKeyWrap256,
    /// RSA-OAEP with SHA-384, then AES-KWP.
    RsaAesKeyWrap384,
}

impl WrapAlg {
    /// Parses the wire name.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "CKM_RSA_AES_KEY_WRAP" => Self::CkmRsaAesKeyWrap,
            "RSA_AES_KEY_WRAP_256" => Self::RsaAesKeyWrap256,
            "RSA_AES_KEY_WRAP_384" => Self::RsaAesKeyWrap384,
            _ => return None,
        })
    }

    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::CkmRsaAesKeyWrap => "CKM_RSA_AES_KEY_WRAP",
            Self::RsaAesKeyWrap256 => "RSA_AES_KEY_WRAP_256",
            Self::RsaAesKeyWrap384 => "RSA_AES_KEY_WRAP_384",
        }
    }
}

/// Wraps `key_bytes` for the RSA public key (`n`, `e`): `OAEP(kek) || KWP(kek, key_bytes)`.
pub fn wrap_for_rsa(
    alg: WrapAlg,
    n: &[u8],
    e: &[u8],
    key_bytes: &[u8],
) -> Result<Vec<u8>, CryptoError> {
    let public = PublicEncryptingKey::from_der(&rsa_spki_der(n, e))
        .map_err(|e| CryptoError(format!("runtime key: {e}")))?;
    let oaep = OaepPublicEncryptingKey::new(public).map_err(|e| CryptoError(e.to_string()))?;
    let mut kek = [0u8; 32];
    aws_lc_rs::rand::fill(&mut kek).map_err(|e| CryptoError(e.to_string()))?;
    let hash = match alg {
        WrapAlg::CkmRsaAesKeyWrap => &OAEP_SHA1_MGF1SHA1,
        WrapAlg::RsaAesKeyWrap256 => &OAEP_SHA256_MGF1SHA256,
        WrapAlg::RsaAesKeyWrap384 => &OAEP_SHA384_MGF1SHA384,
    };
    let mut out = vec![0u8; oaep.ciphertext_size()];
    let len = oaep
        .encrypt(hash, &kek, &mut out, None)
        .map_err(|e| CryptoError(e.to_string()))?
        .len();
    out.truncate(len);
    let kwp = KeyEncryptionKey::new(&AES_256, &kek).map_err(|e| CryptoError(e.to_string()))?;
    let mut wrapped = vec![0u8; key_bytes.len() + 16];
    let wlen = kwp
        .wrap_with_padding(key_bytes, &mut wrapped)
        .map_err(|e| CryptoError(e.to_string()))?
        .len();
    wrapped.truncate(wlen);
    out.extend(wrapped);
    Ok(out)
}
