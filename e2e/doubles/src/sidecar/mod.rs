//! Plays the SKR sidecar's part of a key release, so tests and the demo can prove a binding end
//! to end: a fresh RSA-2048 runtime key, an attestation token that carries it (and the pod's
//! policy hash as hostdata), `POST /keys/{name}/release`, then the checks and the unwrap the real
//! sidecar does (confidential-sidecar-containers `pkg/common/akv.go`, `pkg/skr/skr.go`):
//! the JWS signature with `x5c[0]`, the chain to a trusted root with the vault's host name, then
//! RSA-OAEP (hash by `request.enc`) of the AES key and AES-KWP (RFC 5649) of the key bytes.
//!
//! The unwrap uses the `rsa` and `aes-kw` crates, not the aws-lc-rs code the Key Vault double
//! wraps with, so the two sides check each other.

use aes_kw::KwpAes256;
use aws_lc_rs::encoding::AsDer as _;
use rsa::pkcs8::DecodePrivateKey as _;
use rsa::traits::{PrivateKeyParts as _, PublicKeyParts as _};
use serde_json::{Value, json};

use crate::attestation::TokenRequest;
use crate::jose::{CompactJws, b64std_decode, b64url, b64url_decode};

/// Why a release failed, from the sidecar's point of view.
#[derive(Debug, thiserror::Error)]
pub enum SidecarError {
    /// The vault (or the attestation double) refused, with its status and body.
    #[error("{status} from {url}: {body}")]
    Refused {
        /// URL called.
        url: String,
        /// HTTP status.
        status: u16,
        /// Response body.
        body: String,
    },
    /// Transport failure.
    #[error("calling {0}: {1}")]
    Http(String, #[source] reqwest::Error),
    /// The answer is not what the sidecar accepts.
    #[error("invalid release answer: {0}")]
    Invalid(String),
    /// Crypto failure (key generation, unwrap).
    #[error("crypto: {0}")]
    Crypto(String),
}

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

/// Trust for the release JWS's certificate chain (the sidecar uses the system roots).
#[derive(Debug, Clone)]
pub struct Trust {
    /// Root certificates, DER.
    pub roots: Vec<Vec<u8>>,
}

impl Trust {
    /// Roots from PEM text (one or more `CERTIFICATE` blocks), e.g. the file the `ckb-doubles`
    /// binary writes with `--ca-out`.
    pub fn from_pem(pem: &str) -> Result<Self, SidecarError> {
        let mut roots = Vec::new();
        let mut current: Option<String> = None;
        for line in pem.lines().map(str::trim) {
            match line {
                "-----BEGIN CERTIFICATE-----" => current = Some(String::new()),
                "-----END CERTIFICATE-----" => {
                    let b64 = current.take().unwrap_or_default();
                    roots.push(b64std_decode(&b64).ok_or_else(|| {
                        SidecarError::Invalid("a PEM certificate is not base64".into())
                    })?);
                }
                other => {
                    if let Some(c) = current.as_mut() {
                        c.push_str(other);
                    }
                }
            }
        }
        if roots.is_empty() {
            return Err(SidecarError::Invalid(
                "no certificate in the PEM text".into(),
            ));
        }
        Ok(Self { roots })
    }
}

/// One release call.
#[derive(Debug, Clone)]
pub struct ReleaseCall<'a> {
    /// `https://<vault host>[:port]` (the port only when not reached through a resolver).
    pub vault_url: &'a str,
    /// Key name (the sidecar's `kid`).
    pub key_name: &'a str,
    /// Version (the sidecar sends none).
    pub version: Option<&'a str>,
    /// Bearer token for Key Vault.
    pub bearer: &'a str,
    /// The attestation token.
    pub token: &'a str,
    /// API version (the sidecar uses 7.4).
    pub api_version: &'a str,
    /// Requested `enc` (the sidecar sends none).
    pub enc: Option<&'a str>,
}

/// Calls release and does what the sidecar does with the answer.
pub async fn release_key(
    client: &reqwest::Client,
    call: &ReleaseCall<'_>,
    runtime: &RuntimeKey,
    trust: &Trust,
) -> Result<ReleasedKey, SidecarError> {
    let base = call.vault_url.trim_end_matches('/');
    let url = match call.version {
        Some(v) => format!(
            "{base}/keys/{}/{v}/release?api-version={}",
            call.key_name, call.api_version
        ),
        None => format!(
            "{base}/keys/{}/release?api-version={}",
            call.key_name, call.api_version
        ),
    };
    let mut body = json!({ "target": call.token });
    if let Some(enc) = call.enc {
        body["enc"] = enc.into();
    }
    let resp = client
        .post(&url)
        .bearer_auth(call.bearer)
        .json(&body)
        .send()
        .await
        .map_err(|e| SidecarError::Http(url.clone(), e))?;
    let status = resp.status().as_u16();
    let text = resp
        .text()
        .await
        .map_err(|e| SidecarError::Http(url.clone(), e))?;
    if status != 200 {
        return Err(SidecarError::Refused {
            url,
            status,
            body: text,
        });
    }
    let answer: Value = serde_json::from_str(&text)
        .map_err(|e| SidecarError::Invalid(format!("body is not JSON: {e}")))?;
    let value = answer
        .get("value")
        .and_then(Value::as_str)
        .ok_or_else(|| SidecarError::Invalid("no \"value\"".into()))?;
    let vault_host = reqwest::Url::parse(base)
        .ok()
        .and_then(|u| u.host_str().map(str::to_owned))
        .ok_or_else(|| SidecarError::Invalid(format!("vault URL {base}")))?;
    open_release(value, &vault_host, runtime, trust)
}

/// Verifies a release JWS as the sidecar does and unwraps the key.
pub fn open_release(
    jws_text: &str,
    vault_host: &str,
    runtime: &RuntimeKey,
    trust: &Trust,
) -> Result<ReleasedKey, SidecarError> {
    let jws = CompactJws::parse(jws_text).map_err(|e| SidecarError::Invalid(e.to_string()))?;
    let x5c: Vec<Vec<u8>> = jws
        .header
        .get("x5c")
        .and_then(Value::as_array)
        .ok_or_else(|| SidecarError::Invalid("header without x5c".into()))?
        .iter()
        .map(|c| c.as_str().and_then(b64std_decode))
        .collect::<Option<_>>()
        .ok_or_else(|| SidecarError::Invalid("x5c entries must be standard base64".into()))?;
    let leaf = x5c
        .first()
        .ok_or_else(|| SidecarError::Invalid("empty x5c".into()))?;
    jws.verify_with_certificate(leaf)
        .map_err(|e| SidecarError::Invalid(format!("JWS signature: {e}")))?;
    verify_chain(&x5c, vault_host, trust)?;

    let payload: Value = serde_json::from_slice(&jws.payload)
        .map_err(|e| SidecarError::Invalid(format!("payload: {e}")))?;
    let enc = payload
        .pointer("/request/enc")
        .and_then(Value::as_str)
        .ok_or_else(|| SidecarError::Invalid("payload without request.enc".into()))?
        .to_owned();
    let key = payload
        .pointer("/response/key/key")
        .ok_or_else(|| SidecarError::Invalid("payload without response.key.key".into()))?;
    let key_hsm = key
        .get("key_hsm")
        .and_then(Value::as_str)
        .and_then(b64url_decode)
        .ok_or_else(|| SidecarError::Invalid("key_hsm is not base64url".into()))?;
    let key_hsm: Value = serde_json::from_slice(&key_hsm)
        .map_err(|e| SidecarError::Invalid(format!("key_hsm: {e}")))?;
    let ciphertext = key_hsm
        .get("ciphertext")
        .and_then(Value::as_str)
        .and_then(b64url_decode)
        .ok_or_else(|| SidecarError::Invalid("key_hsm.ciphertext is not base64url".into()))?;
    let key_bytes = runtime.unwrap(&enc, &ciphertext)?;
    let str_field = |f: &str| {
        key.get(f)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned()
    };
    Ok(ReleasedKey {
        kid: str_field("kid"),
        kty: str_field("kty"),
        key_ops: key
            .get("key_ops")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|o| o.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default(),
        enc,
        key_bytes,
        payload,
    })
}

/// The chain must lead to a trusted root, each certificate signed by the next (or by a root),
/// and the leaf must name the vault host (exactly or by a one-label wildcard).
fn verify_chain(x5c: &[Vec<u8>], vault_host: &str, trust: &Trust) -> Result<(), SidecarError> {
    use x509_parser::prelude::*;
    fn parse(der: &[u8]) -> Result<X509Certificate<'_>, SidecarError> {
        parse_x509_certificate(der)
            .map(|(_, c)| c)
            .map_err(|e| SidecarError::Invalid(format!("certificate: {e}")))
    }
    let certs: Vec<X509Certificate<'_>> = x5c.iter().map(|d| parse(d)).collect::<Result<_, _>>()?;
    let roots: Vec<X509Certificate<'_>> = trust
        .roots
        .iter()
        .map(|d| parse(d))
        .collect::<Result<_, _>>()?;
    let leaf = &certs[0];
    let names: Vec<String> = leaf
        .subject_alternative_name()
        .ok()
        .flatten()
        .map(|san| {
            san.value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    GeneralName::DNSName(d) => Some(d.to_ascii_lowercase()),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    let host = vault_host.to_ascii_lowercase();
    let matches = names.iter().any(|n| {
        *n == host
            || n.strip_prefix("*.")
                .is_some_and(|suffix| host.split_once('.').is_some_and(|(_, rest)| rest == suffix))
    });
    if !matches {
        return Err(SidecarError::Invalid(format!(
            "the signing certificate names {names:?}, not {host}"
        )));
    }
    let now = x509_parser::time::ASN1Time::now();
    for (i, cert) in certs.iter().enumerate() {
        if !cert.validity().is_valid_at(now) {
            return Err(SidecarError::Invalid(format!(
                "x5c[{i}] is outside its validity"
            )));
        }
        if roots.iter().any(|r| {
            r.tbs_certificate.as_ref() == cert.tbs_certificate.as_ref() || signed_by(cert, r)
        }) {
            return Ok(());
        }
        match certs.get(i + 1) {
            Some(next) if signed_by(cert, next) => {}
            _ => {
                return Err(SidecarError::Invalid(format!(
                    "x5c[{i}] is not signed by the next certificate or a trusted root"
                )));
            }
        }
    }
    Err(SidecarError::Invalid(
        "the chain does not reach a trusted root".into(),
    ))
}

fn signed_by(
    cert: &x509_parser::certificate::X509Certificate<'_>,
    issuer: &x509_parser::certificate::X509Certificate<'_>,
) -> bool {
    use aws_lc_rs::signature;
    use x509_parser::oid_registry::{
        OID_PKCS1_SHA256WITHRSA, OID_SIG_ECDSA_WITH_SHA256, OID_SIG_ECDSA_WITH_SHA384,
    };
    if cert.issuer() != issuer.subject() {
        return false;
    }
    let alg = &cert.signature_algorithm.algorithm;
    let verifier: &'static dyn signature::VerificationAlgorithm =
        if *alg == OID_SIG_ECDSA_WITH_SHA256 {
            &signature::ECDSA_P256_SHA256_ASN1
        } else if *alg == OID_SIG_ECDSA_WITH_SHA384 {
            &signature::ECDSA_P384_SHA384_ASN1
        } else if *alg == OID_PKCS1_SHA256WITHRSA {
            &signature::RSA_PKCS1_2048_8192_SHA256
        } else {
            return false;
        };
    signature::UnparsedPublicKey::new(
        verifier,
        issuer.public_key().subject_public_key.data.as_ref(),
    )
    .verify(
        cert.tbs_certificate.as_ref(),
        cert.signature_value.data.as_ref(),
    )
    .is_ok()
}

/// Gets a token from the attestation double's test endpoint (`POST /_double/token`) on
/// `maa_url` (`https://<maa host>[:port]`), for `req` with the runtime key's JWKS filled in.
pub async fn attest(
    client: &reqwest::Client,
    maa_url: &str,
    runtime: &RuntimeKey,
    mut req: TokenRequest,
) -> Result<String, SidecarError> {
    req.runtime = runtime.jwks();
    let url = format!("{}/_double/token", maa_url.trim_end_matches('/'));
    let resp = client
        .post(&url)
        .json(&req)
        .send()
        .await
        .map_err(|e| SidecarError::Http(url.clone(), e))?;
    let status = resp.status().as_u16();
    let body: Value = resp
        .json()
        .await
        .map_err(|e| SidecarError::Http(url.clone(), e))?;
    if status != 200 {
        return Err(SidecarError::Refused {
            url,
            status,
            body: body.to_string(),
        });
    }
    body.get("token")
        .and_then(Value::as_str)
        .map(str::to_owned)
        .ok_or_else(|| SidecarError::Invalid("attestation answer without token".into()))
}

/// The whole sidecar flow for a pod whose policy hashes to `hostdata`: runtime key, token from
/// the attestation double at `maa_url` (issuer `https://<maa_host>`), release from the vault.
/// `call.token` is ignored: the token is the one just obtained.
pub async fn release_for_pod(
    client: &reqwest::Client,
    call: &ReleaseCall<'_>,
    maa_url: &str,
    maa_host: &str,
    hostdata: &str,
    trust: &Trust,
) -> Result<ReleasedKey, SidecarError> {
    let runtime = RuntimeKey::generate()?;
    let req = TokenRequest {
        issuer_host: maa_host.to_owned(),
        hostdata: hostdata.to_owned(),
        ..TokenRequest::default()
    };
    let token = attest(client, maa_url, &runtime, req).await?;
    release_key(
        client,
        &ReleaseCall {
            token: &token,
            ..call.clone()
        },
        &runtime,
        trust,
    )
    .await
}
