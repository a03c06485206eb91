//! The certificates themselves, with no I/O: what the stored material should become at a given
//! time ([`plan`]) and the keys and certificates that makes it ([`apply`]).

use std::collections::BTreeMap;
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject as _;

use super::CertError;

/// Secret key: serving certificate (PEM).
pub const KEY_TLS_CRT: &str = "tls.crt";
/// Secret key: serving key (PEM).
pub const KEY_TLS_KEY: &str = "tls.key";
/// Secret key: signing CA certificate (PEM).
pub const KEY_CA_CRT: &str = "ca.crt";
/// Secret key: signing CA key (PEM).
pub const KEY_CA_KEY: &str = "ca.key";
/// Secret key: next CA certificate during a rotation (PEM).
pub const KEY_CA_NEXT_CRT: &str = "ca-next.crt";
/// Secret key: next CA key during a rotation (PEM).
pub const KEY_CA_NEXT_KEY: &str = "ca-next.key";
/// Secret key: every trusted CA (PEM bundle), the webhook configuration's `caBundle`.
pub const KEY_CA_BUNDLE: &str = "ca-bundle.crt";

/// Lifetimes and margins. Defaults: CA 5 years, rotated when 1 year is left, promoted 1 hour after
/// it joined the bundle; serving certificate 90 days, renewed when 30 days are left.
#[derive(Debug, Clone, PartialEq)]
pub struct CertTimings {
    /// Validity of a new CA.
    pub ca_validity: Duration,
    /// Start a CA rotation when the CA has less than this left.
    pub ca_renew_before: Duration,
    /// Time the next CA spends in the bundle before it signs (lets every API server see it).
    pub ca_promote_after: Duration,
    /// Validity of a serving certificate.
    pub serving_validity: Duration,
    /// Renew the serving certificate when it has less than this left.
    pub serving_renew_before: Duration,
}

impl Default for CertTimings {
    fn default() -> Self {
        const DAY: u64 = 86_400;
        Self {
            ca_validity: Duration::from_secs(5 * 365 * DAY),
            ca_renew_before: Duration::from_secs(365 * DAY),
            ca_promote_after: Duration::from_secs(3600),
            serving_validity: Duration::from_secs(90 * DAY),
            serving_renew_before: Duration::from_secs(30 * DAY),
        }
    }
}

/// The TLS material as stored in the Secret (PEM text; empty when absent).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsMaterial {
    /// Signing CA certificate.
    pub ca_crt: String,
    /// Signing CA key.
    pub ca_key: String,
    /// Next CA certificate (rotation in progress).
    pub ca_next_crt: String,
    /// Next CA key.
    pub ca_next_key: String,
    /// Every trusted CA.
    pub ca_bundle: String,
    /// Serving certificate.
    pub tls_crt: String,
    /// Serving key.
    pub tls_key: String,
}

impl TlsMaterial {
    /// Reads the material from a Secret's data.
    pub fn from_secret(secret: &Secret) -> Self {
        let data = secret.data.clone().unwrap_or_default();
        let get = |k: &str| {
            data.get(k)
                .map(|b| String::from_utf8_lossy(&b.0).into_owned())
                .unwrap_or_default()
        };
        Self {
            ca_crt: get(KEY_CA_CRT),
            ca_key: get(KEY_CA_KEY),
            ca_next_crt: get(KEY_CA_NEXT_CRT),
            ca_next_key: get(KEY_CA_NEXT_KEY),
            ca_bundle: get(KEY_CA_BUNDLE),
            tls_crt: get(KEY_TLS_CRT),
            tls_key: get(KEY_TLS_KEY),
        }
    }

    /// The Secret data.
    pub fn to_data(&self) -> BTreeMap<String, ByteString> {
        let mut d = BTreeMap::new();
        for (k, v) in [
            (KEY_CA_CRT, &self.ca_crt),
            (KEY_CA_KEY, &self.ca_key),
            (KEY_CA_NEXT_CRT, &self.ca_next_crt),
            (KEY_CA_NEXT_KEY, &self.ca_next_key),
            (KEY_CA_BUNDLE, &self.ca_bundle),
            (KEY_TLS_CRT, &self.tls_crt),
            (KEY_TLS_KEY, &self.tls_key),
        ] {
            // tls.crt/tls.key must exist for the kubernetes.io/tls type; the others only when set.
            if !v.is_empty() || k == KEY_TLS_CRT || k == KEY_TLS_KEY {
                d.insert(k.to_string(), ByteString(v.as_bytes().to_vec()));
            }
        }
        d
    }
}

/// What a certificate says about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    /// Subject common name.
    pub subject_cn: String,
    /// Issuer common name.
    pub issuer_cn: String,
    /// Start of validity.
    pub not_before: Timestamp,
    /// End of validity.
    pub not_after: Timestamp,
    /// DNS names and IP addresses (as text) of the subjectAltName extension.
    pub sans: Vec<String>,
    /// DER bytes.
    pub der: Vec<u8>,
}

/// The DER of every certificate in a PEM text (other sections and unreadable ones skipped).
fn pem_certs(pem: &str) -> Vec<Vec<u8>> {
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .filter_map(Result::ok)
        .map(|c| c.as_ref().to_vec())
        .collect()
}

fn cert_info_der(der: &[u8]) -> Option<CertInfo> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let cn = |name: &x509_parser::x509::X509Name<'_>| {
        name.iter_common_name()
            .next()
            .and_then(|a| a.as_str().ok())
            .unwrap_or("")
            .to_string()
    };
    let mut sans = Vec::new();
    if let Ok(Some(ext)) = cert.subject_alternative_name() {
        for n in &ext.value.general_names {
            match n {
                x509_parser::extensions::GeneralName::DNSName(d) => sans.push(d.to_string()),
                x509_parser::extensions::GeneralName::IPAddress(b) => match b.len() {
                    4 => sans.push(std::net::Ipv4Addr::new(b[0], b[1], b[2], b[3]).to_string()),
                    16 => {
                        let a: [u8; 16] = (*b).try_into().ok()?;
                        sans.push(std::net::Ipv6Addr::from(a).to_string())
                    }
                    _ => {}
                },
                _ => {}
            }
        }
    }
    let v = cert.validity();
    Some(CertInfo {
        subject_cn: cn(cert.subject()),
        issuer_cn: cn(cert.issuer()),
        not_before: Timestamp::from_second(v.not_before.timestamp()).ok()?,
        not_after: Timestamp::from_second(v.not_after.timestamp()).ok()?,
        sans,
        der: der.to_vec(),
    })
}

/// Parses the first certificate of a PEM text.
pub fn cert_info(pem: &str) -> Option<CertInfo> {
    pem_certs(pem).first().and_then(|d| cert_info_der(d))
}

/// One change to the stored material.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Start over with a new CA (none stored, unreadable, or expired).
    NewCa,
    /// Put a next CA into the bundle (the current one nears expiry).
    IntroduceNextCa,
    /// The next CA becomes the signing CA.
    PromoteNextCa,
    /// Issue a new serving certificate, for the reason given.
    IssueServing(String),
    /// Rewrite the bundle (add missing CAs, drop expired ones).
    RebuildBundle,
}

fn add(t: Timestamp, d: Duration) -> Timestamp {
    t.checked_add(jiff::SignedDuration::try_from(d).unwrap_or(jiff::SignedDuration::MAX))
        .unwrap_or(Timestamp::MAX)
}

fn sub(t: Timestamp, d: Duration) -> Timestamp {
    t.checked_sub(jiff::SignedDuration::try_from(d).unwrap_or(jiff::SignedDuration::MAX))
        .unwrap_or(Timestamp::MIN)
}

fn key_ok(pem: &str) -> bool {
    KeyPair::from_pem(pem).is_ok()
}

/// The bundle the material should carry: current CA, next CA, and older CAs of the stored bundle
/// that have not expired, without duplicates.
pub fn wanted_bundle(m: &TlsMaterial, now: Timestamp) -> Vec<Vec<u8>> {
    let mut out: Vec<Vec<u8>> = Vec::new();
    for der in pem_certs(&m.ca_crt)
        .into_iter()
        .take(1)
        .chain(pem_certs(&m.ca_next_crt).into_iter().take(1))
        .chain(pem_certs(&m.ca_bundle))
    {
        let live = cert_info_der(&der).is_some_and(|i| i.not_after > now);
        if live && !out.contains(&der) {
            out.push(der);
        }
    }
    out
}

/// What must change in the stored material at `now`. Empty: nothing.
pub fn plan(m: &TlsMaterial, hosts: &[String], now: Timestamp, t: &CertTimings) -> Vec<Step> {
    let ca = cert_info(&m.ca_crt).filter(|ca| key_ok(&m.ca_key) && ca.not_after > now);
    let Some(ca) = ca else {
        return vec![
            Step::NewCa,
            Step::IssueServing("new CA".into()),
            Step::RebuildBundle,
        ];
    };
    let mut steps = Vec::new();
    let next = cert_info(&m.ca_next_crt).filter(|n| key_ok(&m.ca_next_key) && n.not_after > now);
    let mut signing_cn = ca.subject_cn.clone();
    match next {
        Some(next) if now >= add(next.not_before, t.ca_promote_after) => {
            steps.push(Step::PromoteNextCa);
            steps.push(Step::IssueServing("CA rotated".into()));
            signing_cn = next.subject_cn;
        }
        Some(_) => {}
        None if ca.not_after < add(now, t.ca_renew_before) => steps.push(Step::IntroduceNextCa),
        None => {}
    }
    if !steps.contains(&Step::PromoteNextCa) {
        let serving = cert_info(&m.tls_crt).filter(|_| key_ok(&m.tls_key));
        let reason = match serving {
            None => Some("no readable serving certificate".to_string()),
            Some(s) if s.issuer_cn != signing_cn => {
                Some(format!("issued by {:?}, not the current CA", s.issuer_cn))
            }
            Some(s) if s.not_after < add(now, t.serving_renew_before) => {
                Some(format!("expires at {}", s.not_after))
            }
            Some(s) => {
                let mut have = s.sans.clone();
                have.sort();
                let mut want = hosts.to_vec();
                want.sort();
                want.dedup();
                (have != want).then(|| format!("names {have:?} instead of {want:?}"))
            }
        };
        if let Some(r) = reason {
            steps.push(Step::IssueServing(r));
        }
    }
    let bundle_now = pem_certs(&m.ca_bundle);
    let mut simulated = m.clone();
    if steps.contains(&Step::IntroduceNextCa) {
        // The next CA will be added; the rebuild happens in apply() anyway.
        simulated.ca_bundle.clear();
    }
    if steps.contains(&Step::IntroduceNextCa) || wanted_bundle(&simulated, now) != bundle_now {
        steps.push(Step::RebuildBundle);
    }
    steps
}

fn to_offset(t: Timestamp) -> time::OffsetDateTime {
    time::OffsetDateTime::from_unix_timestamp(t.as_second())
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
}

fn new_ca(now: Timestamp, t: &CertTimings) -> Result<(String, String), CertError> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::default();
    params.distinguished_name = ca_dn(&format!(
        "ckb-operator-webhook-ca-{}-{:08x}",
        now.as_second(),
        rand::random::<u32>()
    ));
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.not_before = to_offset(sub(now, Duration::from_secs(300)));
    params.not_after = to_offset(add(now, t.ca_validity));
    let cert = params.self_signed(&key)?;
    Ok((cert.pem(), key.serialize_pem()))
}

fn ca_dn(cn: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    dn
}

fn issue_serving(
    ca_crt: &str,
    ca_key: &str,
    hosts: &[String],
    now: Timestamp,
    t: &CertTimings,
) -> Result<(String, String), CertError> {
    let ca = cert_info(ca_crt).ok_or_else(|| CertError::Parse {
        what: "CA certificate".into(),
        detail: "not a PEM certificate".into(),
    })?;
    let ca_key = KeyPair::from_pem(ca_key)?;
    // NB: the issuer is rebuilt from the stored CA's name and key: the leaf's issuer name and
    // authority key id then match the stored CA certificate exactly.
    let mut ca_params = CertificateParams::default();
    ca_params.distinguished_name = ca_dn(&ca.subject_cn);
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let issuer = Issuer::new(ca_params, ca_key);
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(hosts.to_vec())?;
    params.distinguished_name = ca_dn(hosts.first().map_or("ckb-operator-webhook", |h| h));
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.use_authority_key_identifier_extension = true;
    params.not_before = to_offset(sub(now, Duration::from_secs(300)));
    params.not_after = to_offset(add(now, t.serving_validity).min(ca.not_after));
    let cert = params.signed_by(&key, &issuer)?;
    Ok((cert.pem(), key.serialize_pem()))
}

fn der_to_pem(der: &[u8]) -> String {
    let config = pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF);
    pem::encode_config(&pem::Pem::new("CERTIFICATE", der), config)
}

/// Applies the steps of [`plan`]: generates keys and certificates as needed.
pub fn apply(
    m: &TlsMaterial,
    steps: &[Step],
    hosts: &[String],
    now: Timestamp,
    t: &CertTimings,
) -> Result<TlsMaterial, CertError> {
    let mut out = m.clone();
    for step in steps {
        match step {
            Step::NewCa => {
                let (crt, key) = new_ca(now, t)?;
                out.ca_crt = crt;
                out.ca_key = key;
                out.ca_next_crt.clear();
                out.ca_next_key.clear();
            }
            Step::IntroduceNextCa => {
                let (crt, key) = new_ca(now, t)?;
                out.ca_next_crt = crt;
                out.ca_next_key = key;
            }
            Step::PromoteNextCa => {
                out.ca_crt = std::mem::take(&mut out.ca_next_crt);
                out.ca_key = std::mem::take(&mut out.ca_next_key);
            }
            Step::IssueServing(_) => {
                let (crt, key) = issue_serving(&out.ca_crt, &out.ca_key, hosts, now, t)?;
                out.tls_crt = crt;
                out.tls_key = key;
            }
            Step::RebuildBundle => {}
        }
    }
    // The old signing CA stays trusted after a promotion until it expires.
    let mut bundle_src = out.clone();
    if steps.contains(&Step::PromoteNextCa) {
        bundle_src.ca_bundle = format!("{}{}", m.ca_crt, m.ca_bundle);
    }
    out.ca_bundle = wanted_bundle(&bundle_src, now)
        .iter()
        .map(|d| der_to_pem(d))
        .collect();
    Ok(out)
}

#[cfg(test)]
#[path = "pki_tests.rs"]
mod tests;
