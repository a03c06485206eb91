//! The certificates, keys and tokens of one control-plane run.

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

use super::error::{ClusterError, Result};

/// The `kubernetes` Service's address (the first of the service CIDR), named in the API server's
/// serving certificate.
pub(super) const SERVICE_IP: &str = "10.96.0.1";

/// A random token (hex of 32 random bytes).
pub(super) fn random_token() -> String {
    hex::encode(rand::random::<[u8; 32]>())
}

/// Certificates and keys of one run, as PEM.
pub(super) struct Pki {
    pub(super) ca_cert: String,
    pub(super) serving_cert: String,
    pub(super) serving_key: String,
    pub(super) sa_key: String,
    pub(super) sa_pub: String,
}

pub(super) fn generate_pki() -> Result<Pki> {
    let cert_err = |what| move |source| ClusterError::Cert { what, source };
    let ca_key = KeyPair::generate().map_err(cert_err("the CA key"))?;
    let mut ca = CertificateParams::new(Vec::<String>::new()).map_err(cert_err("the CA"))?;
    ca.distinguished_name
        .push(DnType::CommonName, "ckb-e2e local cluster CA");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_cert = ca.self_signed(&ca_key).map_err(cert_err("the CA"))?;
    let issuer = Issuer::new(ca, ca_key);

    // The API server's serving certificate: loopback for us, the in-cluster names for completeness.
    let serving_key = KeyPair::generate().map_err(cert_err("the serving key"))?;
    let mut serving = CertificateParams::new(vec![
        "127.0.0.1".to_string(),
        "localhost".to_string(),
        SERVICE_IP.to_string(),
        "kubernetes".to_string(),
        "kubernetes.default".to_string(),
        "kubernetes.default.svc".to_string(),
        "kubernetes.default.svc.cluster.local".to_string(),
    ])
    .map_err(cert_err("the serving certificate"))?;
    serving
        .distinguished_name
        .push(DnType::CommonName, "kube-apiserver");
    serving.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let serving_cert = serving
        .signed_by(&serving_key, &issuer)
        .map_err(cert_err("the serving certificate"))?;

    // ServiceAccount tokens are signed with this key (ES256) and verified with its public half.
    let sa_key = KeyPair::generate().map_err(cert_err("the service-account key"))?;
    Ok(Pki {
        ca_cert: ca_cert.pem(),
        serving_cert: serving_cert.pem(),
        serving_key: serving_key.serialize_pem(),
        sa_pub: sa_key.public_key_pem(),
        sa_key: sa_key.serialize_pem(),
    })
}
