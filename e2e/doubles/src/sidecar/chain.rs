//! Trust in the release JWS's signer: the roots, and the checks of its `x5c` chain and of the
//! host name its leaf certificate names.

use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;
use x509_parser::parse_x509_certificate;

use super::SidecarError;
use crate::jose::b64std_decode;

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

/// The chain must lead to a trusted root, each certificate signed by the next (or by a root),
/// and the leaf must name the vault host (exactly or by a one-label wildcard).
pub(super) fn verify_chain(
    x5c: &[Vec<u8>],
    vault_host: &str,
    trust: &Trust,
) -> Result<(), SidecarError> {
    let certs: Vec<X509Certificate<'_>> = x5c.iter().map(|d| parse(d)).collect::<Result<_, _>>()?;
    let roots: Vec<X509Certificate<'_>> = trust
        .roots
        .iter()
        .map(|d| parse(d))
        .collect::<Result<_, _>>()?;
    check_leaf_names_host(&certs[0], vault_host)?;
    check_chain_reaches_root(&certs, &roots)
}

fn parse(der: &[u8]) -> Result<X509Certificate<'_>, SidecarError> {
    parse_x509_certificate(der)
        .map(|(_, c)| c)
        .map_err(|e| SidecarError::Invalid(format!("certificate: {e}")))
}

/// The leaf's DNS names must include the vault host, exactly or by a one-label wildcard.
fn check_leaf_names_host(leaf: &X509Certificate<'_>, vault_host: &str) -> Result<(), SidecarError> {
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
    Ok(())
}

/// From the leaf on, each certificate must be valid now and be a root, be signed by a root, or
/// be signed by the next certificate of the chain.
fn check_chain_reaches_root(
    certs: &[X509Certificate<'_>],
    roots: &[X509Certificate<'_>],
) -> Result<(), SidecarError> {
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

/// Whether `issuer` names and signed `cert` (ECDSA P-256/P-384 or RSA PKCS#1 SHA-256).
fn signed_by(cert: &X509Certificate<'_>, issuer: &X509Certificate<'_>) -> bool {
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
