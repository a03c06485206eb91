//! The doubles' own certificate authority: the TLS serving certificate, the attestation signing
//! certificate, and one release-signing certificate per vault host (the sidecar checks that the
//! leaf of the release JWS's `x5c` carries the vault's host name).

use std::collections::HashMap;
use std::sync::Mutex;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PKCS_RSA_SHA256, RsaKeySize,
};

use crate::jose::{JoseError, RsaSigner, b64url};

/// Errors while making keys and certificates.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// rcgen refused.
    #[error("certificate generation failed: {0}")]
    Rcgen(#[from] rcgen::Error),
    /// The generated key could not be used for signing.
    #[error(transparent)]
    Jose(#[from] JoseError),
}

/// Subject alternative names of the serving certificate by default: every host a client may be
/// pointed at the double under. Regional MAA hosts have two labels before `attest.azure.net`
/// (`sharedeus.eus.attest.azure.net`), which a single wildcard does not cover, so the regions the
/// AKS examples use are listed too.
pub const DEFAULT_SANS: &[&str] = &[
    "*.vault.azure.net",
    "*.managedhsm.azure.net",
    "*.attest.azure.net",
    "*.eus.attest.azure.net",
    "*.eus2.attest.azure.net",
    "*.wus.attest.azure.net",
    "*.neu.attest.azure.net",
    "*.weu.attest.azure.net",
    // The Entra ID authority host (the token endpoint double).
    "login.microsoftonline.com",
    "localhost",
    "127.0.0.1",
];

/// A CA made at start, and what it signs.
pub struct Pki {
    ca_pem: String,
    ca_der: Vec<u8>,
    issuer: Issuer<'static, KeyPair>,
    /// DER of the TLS serving certificate.
    pub server_cert_der: Vec<u8>,
    /// PKCS#8 DER of the TLS serving key.
    pub server_key_der: Vec<u8>,
    release_signers: Mutex<HashMap<String, std::sync::Arc<RsaSigner>>>,
}

impl std::fmt::Debug for Pki {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pki").finish_non_exhaustive()
    }
}

impl Pki {
    /// A new CA and a serving certificate for `sans`.
    pub fn generate(sans: &[String]) -> Result<Self, PkiError> {
        let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "ckb-doubles test CA");
        dn.push(DnType::OrganizationName, "ckb-operator tests");
        ca_params.distinguished_name = dn;
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_key = KeyPair::generate()?;
        let ca_cert = ca_params.self_signed(&ca_key)?;
        let issuer = Issuer::new(ca_params, ca_key);

        let mut params = CertificateParams::new(sans.to_vec())?;
        params
            .distinguished_name
            .push(DnType::CommonName, "ckb-doubles");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &issuer)?;

        Ok(Self {
            ca_pem: ca_cert.pem(),
            ca_der: ca_cert.der().to_vec(),
            issuer,
            server_cert_der: cert.der().to_vec(),
            server_key_der: key.serialize_der(),
            release_signers: Mutex::new(HashMap::new()),
        })
    }

    /// The CA certificate, PEM.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// The CA certificate, DER.
    pub fn ca_der(&self) -> &[u8] {
        &self.ca_der
    }

    /// An RSA-2048 signer whose certificate (signed by the CA) names `dns_name`; chain = leaf, CA.
    pub fn rsa_signer(&self, dns_name: &str, common_name: &str) -> Result<RsaSigner, PkiError> {
        let mut params = CertificateParams::new(vec![dns_name.to_owned()])?;
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let key = KeyPair::generate_rsa_for(&PKCS_RSA_SHA256, RsaKeySize::_2048)?;
        let cert = params.signed_by(&key, &self.issuer)?;
        let leaf = cert.der().to_vec();
        let kid = b64url(&sha2_256(&leaf));
        Ok(RsaSigner::from_pkcs8(
            &key.serialize_der(),
            vec![leaf, self.ca_der.clone()],
            kid,
        )?)
    }

    /// The release-signing identity of a vault host, made on first use and kept.
    pub fn release_signer(&self, host: &str) -> Result<std::sync::Arc<RsaSigner>, PkiError> {
        let mut signers = self
            .release_signers
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(s) = signers.get(host) {
            return Ok(s.clone());
        }
        let signer = std::sync::Arc::new(self.rsa_signer(host, host)?);
        signers.insert(host.to_owned(), signer.clone());
        Ok(signer)
    }
}

/// SHA-256 of `data`.
pub(crate) fn sha2_256(data: &[u8]) -> Vec<u8> {
    use sha2::Digest as _;
    sha2::Sha256::digest(data).to_vec()
}
