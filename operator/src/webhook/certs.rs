//! Webhook TLS with no manual step.
//!
//! Self-managed (default): the operator keeps a CA and a serving certificate in a Secret of its
//! namespace (`--webhook-secret`, default `ckb-operator-webhook-tls`, type `kubernetes.io/tls`):
//!
//! | key | content |
//! |---|---|
//! | `tls.crt`, `tls.key` | serving certificate (SANs from `--webhook-cert-hosts`) and key |
//! | `ca.crt`, `ca.key` | the CA that signs the serving certificate |
//! | `ca-next.crt`, `ca-next.key` | during a CA rotation: the next CA, already trusted, not yet signing |
//! | `ca-bundle.crt` | every CA to trust (current, next, older until they expire): the `caBundle` |
//!
//! It writes `ca-bundle.crt` into `clientConfig.caBundle` of every webhook of the
//! MutatingWebhookConfiguration `--webhook-config-name` (default `ckb-operator`), and reloads the
//! serving certificate without restart. Rotation:
//! - the serving certificate is re-issued when it nears expiry, its SANs differ from the wanted
//!   hosts, or its issuer is not the current CA;
//! - the CA is rotated in two phases so that no API server ever sees a certificate signed by a CA it
//!   does not trust yet: first the next CA joins the bundle; after `ca_promote_after` it becomes the
//!   signing CA (new serving certificate); the old CA stays in the bundle until it expires.
//!
//! Two replicas may run this at once: every write is an optimistic create or a replace carrying the
//! `resourceVersion` that was read; the loser of a race gets 409, re-reads and adopts the winner's
//! material. The decision of what to change ([`plan`]) is a pure function of the Secret and a clock.
//!
//! With `--webhook-cert-dir` (cert-manager), `tls.crt` and `tls.key` are read from that directory and
//! reloaded whenever they change; nothing is written to the cluster.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use axum_server::tls_rustls::RustlsConfig;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use jiff::Timestamp;
use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, Patch, PatchParams, PostParams};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};

use super::server::WebhookState;

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

/// Errors of certificate management.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    /// Generating or signing a certificate failed.
    #[error("cannot generate a certificate: {0}")]
    Generate(#[from] rcgen::Error),
    /// A stored PEM could not be parsed.
    #[error("cannot parse {what}: {detail}")]
    Parse {
        /// Which item.
        what: String,
        /// Why.
        detail: String,
    },
    /// A Kubernetes API call failed.
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// Too many write conflicts in a row.
    #[error("the Secret kept changing under us ({0} conflicts)")]
    Conflicts(usize),
    /// Reading mounted certificates or loading them into rustls failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

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

fn pem_certs(pem: &str) -> Vec<Vec<u8>> {
    let mut reader = std::io::BufReader::new(pem.as_bytes());
    rustls_pemfile::certs(&mut reader)
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
    let b64 = STANDARD.encode(der);
    let mut s = String::from("-----BEGIN CERTIFICATE-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        s.push_str(std::str::from_utf8(chunk).unwrap_or_default());
        s.push('\n');
    }
    s.push_str("-----END CERTIFICATE-----\n");
    s
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

/// Where the self-managed certificates live and what they must name.
#[derive(Debug, Clone)]
pub struct SelfManaged {
    /// Namespace of the Secret (the operator's).
    pub namespace: String,
    /// Secret name.
    pub secret: String,
    /// MutatingWebhookConfiguration whose `caBundle` to keep.
    pub webhook_config: String,
    /// SANs of the serving certificate.
    pub hosts: Vec<String>,
    /// Lifetimes.
    pub timings: CertTimings,
    /// How often to re-check the Secret and the webhook configuration.
    pub check_interval: Duration,
}

/// Reads the Secret, applies [`plan`] and writes the result with optimistic concurrency; returns
/// the material now stored (ours, or a concurrent writer's).
pub async fn ensure_secret(
    client: &kube::Client,
    cfg: &SelfManaged,
) -> Result<TlsMaterial, CertError> {
    let api: Api<Secret> = Api::namespaced(client.clone(), &cfg.namespace);
    const ATTEMPTS: usize = 5;
    for _ in 0..ATTEMPTS {
        let existing = api.get_opt(&cfg.secret).await?;
        let material = existing
            .as_ref()
            .map(TlsMaterial::from_secret)
            .unwrap_or_default();
        let now = Timestamp::now();
        let steps = plan(&material, &cfg.hosts, now, &cfg.timings);
        if steps.is_empty() {
            return Ok(material);
        }
        tracing::info!(secret = %cfg.secret, ?steps, "updating webhook certificates");
        let next = apply(&material, &steps, &cfg.hosts, now, &cfg.timings)?;
        let pp = PostParams {
            field_manager: Some(crate::crds::FIELD_MANAGER.to_string()),
            ..PostParams::default()
        };
        let result = match existing {
            Some(mut s) => {
                // The resourceVersion read above rides along: a concurrent write makes this 409.
                s.data = Some(next.to_data());
                s.string_data = None;
                api.replace(&cfg.secret, &pp, &s).await
            }
            None => {
                let s = Secret {
                    metadata: kube::api::ObjectMeta {
                        name: Some(cfg.secret.clone()),
                        namespace: Some(cfg.namespace.clone()),
                        labels: Some(BTreeMap::from([(
                            "app.kubernetes.io/managed-by".to_string(),
                            crate::crds::FIELD_MANAGER.to_string(),
                        )])),
                        ..Default::default()
                    },
                    type_: Some("kubernetes.io/tls".to_string()),
                    data: Some(next.to_data()),
                    ..Default::default()
                };
                api.create(&pp, &s).await
            }
        };
        match result {
            Ok(_) => return Ok(next),
            Err(kube::Error::Api(e)) if e.code == 409 => {
                tracing::debug!("webhook Secret changed concurrently; re-reading");
                continue;
            }
            Err(e) => return Err(e.into()),
        }
    }
    Err(CertError::Conflicts(ATTEMPTS))
}

/// Makes every webhook of the named MutatingWebhookConfiguration trust `bundle_pem`. Returns how
/// many entries were patched (0 when all were right or the configuration does not exist yet).
pub async fn ensure_ca_bundle(
    client: &kube::Client,
    name: &str,
    bundle_pem: &str,
) -> Result<usize, CertError> {
    let api: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    let Some(mwc) = api.get_opt(name).await? else {
        tracing::warn!(
            name,
            "MutatingWebhookConfiguration not found; caBundle not written"
        );
        return Ok(0);
    };
    let want = ByteString(bundle_pem.as_bytes().to_vec());
    let stale: Vec<String> = mwc
        .webhooks
        .iter()
        .flatten()
        .filter(|w| w.client_config.ca_bundle.as_ref() != Some(&want))
        .map(|w| w.name.clone())
        .collect();
    if stale.is_empty() {
        return Ok(0);
    }
    // Strategic merge keyed by webhook name: touches caBundle only, whatever else the chart set.
    let patch = serde_json::json!({
        "webhooks": stale.iter().map(|n| serde_json::json!({
            "name": n,
            "clientConfig": {"caBundle": STANDARD.encode(bundle_pem.as_bytes())},
        })).collect::<Vec<_>>()
    });
    api.patch(name, &PatchParams::default(), &Patch::Strategic(patch))
        .await?;
    tracing::info!(name, webhooks = ?stale, "caBundle updated");
    Ok(stale.len())
}

/// Gets a first certificate, retrying with backoff (not ready meanwhile).
pub async fn initial_self_managed(client: &kube::Client, cfg: &SelfManaged) -> TlsMaterial {
    let mut delay = Duration::from_millis(500);
    loop {
        match ensure_secret(client, cfg).await {
            Ok(m) => {
                if let Err(e) = ensure_ca_bundle(client, &cfg.webhook_config, &m.ca_bundle).await {
                    tracing::warn!(error = %e, "cannot write the caBundle yet");
                }
                return m;
            }
            Err(e) => tracing::warn!(error = %e, "cannot obtain webhook certificates yet"),
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(30));
    }
}

/// Keeps the certificates fresh forever: re-checks every `check_interval`, reloads `tls` when the
/// stored serving certificate changed (rotation by us or by the other replica).
pub async fn run_self_managed(
    client: kube::Client,
    cfg: SelfManaged,
    tls: RustlsConfig,
    state: WebhookState,
    mut loaded_crt: String,
) {
    loop {
        tokio::time::sleep(cfg.check_interval).await;
        match ensure_secret(&client, &cfg).await {
            Ok(m) => {
                if let Err(e) = ensure_ca_bundle(&client, &cfg.webhook_config, &m.ca_bundle).await {
                    tracing::warn!(error = %e, "cannot write the caBundle");
                }
                if m.tls_crt != loaded_crt {
                    match tls
                        .reload_from_pem(
                            m.tls_crt.clone().into_bytes(),
                            m.tls_key.clone().into_bytes(),
                        )
                        .await
                    {
                        Ok(()) => {
                            tracing::info!("serving certificate reloaded");
                            loaded_crt = m.tls_crt;
                            state.set_tls_loaded();
                        }
                        Err(e) => {
                            tracing::error!(error = %e, "cannot load the new serving certificate")
                        }
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "certificate check failed; will retry"),
        }
    }
}

/// Reads `tls.crt` and `tls.key` of a mounted directory (cert-manager).
pub fn read_cert_dir(dir: &Path) -> Result<(Vec<u8>, Vec<u8>), CertError> {
    let crt = std::fs::read(dir.join(KEY_TLS_CRT))?;
    let key = std::fs::read(dir.join(KEY_TLS_KEY))?;
    Ok((crt, key))
}

/// Reloads `tls` whenever the mounted files change (polled every `interval`; kubelet updates
/// Secret volumes by swapping a symlink, which inotify on the files would miss).
pub async fn watch_cert_dir(dir: PathBuf, tls: RustlsConfig, interval: Duration) {
    let mut last = read_cert_dir(&dir).ok();
    loop {
        tokio::time::sleep(interval).await;
        match read_cert_dir(&dir) {
            Ok(now) if Some(&now) != last.as_ref() => {
                match tls.reload_from_pem(now.0.clone(), now.1.clone()).await {
                    Ok(()) => {
                        tracing::info!(dir = %dir.display(), "mounted certificate reloaded");
                        last = Some(now);
                    }
                    // A half-written pair (certificate updated, key not yet) fails here and is
                    // retried at the next tick.
                    Err(e) => tracing::warn!(error = %e, "mounted certificate not loadable yet"),
                }
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "cannot read the mounted certificate"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hosts() -> Vec<String> {
        vec![
            "ckb-operator-webhook.ckb-system.svc".into(),
            "127.0.0.1".into(),
        ]
    }

    fn fresh(now: Timestamp, t: &CertTimings) -> TlsMaterial {
        let empty = TlsMaterial::default();
        let steps = plan(&empty, &hosts(), now, t);
        assert_eq!(steps[0], Step::NewCa);
        apply(&empty, &steps, &hosts(), now, t).unwrap()
    }

    fn days(n: i64) -> jiff::SignedDuration {
        jiff::SignedDuration::from_hours(24 * n)
    }

    #[test]
    fn fresh_material_is_complete_and_then_stable() {
        let t = CertTimings::default();
        let now = Timestamp::now();
        let m = fresh(now, &t);
        let ca = cert_info(&m.ca_crt).unwrap();
        let leaf = cert_info(&m.tls_crt).unwrap();
        assert_eq!(leaf.issuer_cn, ca.subject_cn);
        let mut sans = leaf.sans.clone();
        sans.sort();
        assert_eq!(
            sans,
            vec![
                "127.0.0.1".to_string(),
                "ckb-operator-webhook.ckb-system.svc".into()
            ]
        );
        assert_eq!(pem_certs(&m.ca_bundle), pem_certs(&m.ca_crt));
        assert!(plan(&m, &hosts(), now, &t).is_empty());
        // A day later, nothing to do either.
        assert!(plan(&m, &hosts(), now + days(1), &t).is_empty());
        // The Secret round trip keeps everything.
        let s = Secret {
            data: Some(m.to_data()),
            ..Default::default()
        };
        assert_eq!(TlsMaterial::from_secret(&s), m);
    }

    #[test]
    fn serving_certificate_is_renewed_before_expiry_and_on_new_names() {
        let t = CertTimings::default();
        let now = Timestamp::now();
        let m = fresh(now, &t);
        let later = now + days(61);
        let steps = plan(&m, &hosts(), later, &t);
        assert!(
            matches!(steps.as_slice(), [Step::IssueServing(_)]),
            "{steps:?}"
        );
        let mut other = hosts();
        other.push("extra.example".into());
        let steps = plan(&m, &other, now, &t);
        assert!(
            matches!(steps.as_slice(), [Step::IssueServing(r)] if r.contains("names")),
            "{steps:?}"
        );
        let renewed = apply(&m, &steps, &other, now, &t).unwrap();
        assert!(plan(&renewed, &other, now, &t).is_empty());
        assert_eq!(renewed.ca_crt, m.ca_crt, "the CA is kept");
    }

    #[test]
    fn ca_rotates_in_two_phases_and_the_old_ca_stays_trusted_until_it_expires() {
        let t = CertTimings::default();
        let start = Timestamp::now();
        let m = fresh(start, &t);
        let old_ca = pem_certs(&m.ca_crt)[0].clone();
        // 4.2 years later (less than a year left): the next CA joins the bundle.
        let t1 = start + days(1533);
        let steps = plan(&m, &hosts(), t1, &t);
        assert!(steps.contains(&Step::IntroduceNextCa), "{steps:?}");
        let m1 = apply(&m, &steps, &hosts(), t1, &t).unwrap();
        assert_eq!(m1.ca_crt, m.ca_crt, "the old CA still signs");
        assert_eq!(pem_certs(&m1.ca_bundle).len(), 2);
        // Half an hour later: not yet promoted.
        let t2 = t1 + jiff::SignedDuration::from_mins(30);
        assert!(!plan(&m1, &hosts(), t2, &t).contains(&Step::PromoteNextCa));
        // Over an hour later: promoted, new serving certificate from the new CA, both trusted.
        let t3 = t1 + jiff::SignedDuration::from_mins(61);
        let steps = plan(&m1, &hosts(), t3, &t);
        assert!(steps.contains(&Step::PromoteNextCa), "{steps:?}");
        let m2 = apply(&m1, &steps, &hosts(), t3, &t).unwrap();
        assert_eq!(m2.ca_crt, m1.ca_next_crt);
        assert!(m2.ca_next_crt.is_empty());
        assert_eq!(
            cert_info(&m2.tls_crt).unwrap().issuer_cn,
            cert_info(&m2.ca_crt).unwrap().subject_cn
        );
        let bundle = pem_certs(&m2.ca_bundle);
        assert_eq!(bundle.len(), 2);
        assert!(bundle.contains(&old_ca));
        assert!(plan(&m2, &hosts(), t3, &t).is_empty());
        // After the old CA expired, it leaves the bundle.
        let t4 = start + days(5 * 365 + 1);
        let steps = plan(&m2, &hosts(), t4, &t);
        assert!(steps.contains(&Step::RebuildBundle), "{steps:?}");
        let m3 = apply(&m2, &steps, &hosts(), t4, &t).unwrap();
        assert!(!pem_certs(&m3.ca_bundle).contains(&old_ca));
    }

    #[test]
    fn unreadable_or_expired_material_starts_over() {
        let t = CertTimings::default();
        let now = Timestamp::now();
        let garbage = TlsMaterial {
            ca_crt: "not a cert".into(),
            ca_key: "nope".into(),
            tls_crt: "x".into(),
            ..Default::default()
        };
        assert_eq!(plan(&garbage, &hosts(), now, &t)[0], Step::NewCa);
        let m = fresh(now, &t);
        assert_eq!(plan(&m, &hosts(), now + days(6 * 365), &t)[0], Step::NewCa);
        // A serving key that does not parse is re-issued.
        let mut bad_key = m.clone();
        bad_key.tls_key = "garbage".into();
        assert!(matches!(
            plan(&bad_key, &hosts(), now, &t).as_slice(),
            [Step::IssueServing(_)]
        ));
    }
}

#[cfg(test)]
mod api_tests {
    //! The Secret and webhook-configuration writes against a fake API server with real
    //! resourceVersion semantics: two replicas never overwrite each other's material.

    use std::sync::{Arc, Mutex};

    use http::{Request, Response};
    use kube::client::Body;
    use serde_json::{Value, json};

    use super::*;

    #[derive(Default)]
    struct Fake {
        secret: Option<Value>,
        rv: u64,
        /// Material another replica writes just before our next write lands.
        race: Option<TlsMaterial>,
        mwc: Option<Value>,
        log: Vec<String>,
    }

    fn secret_json(m: &TlsMaterial, rv: u64) -> Value {
        let mut s = serde_json::to_value(Secret {
            metadata: kube::api::ObjectMeta {
                name: Some("tls".into()),
                namespace: Some("ckb-system".into()),
                ..Default::default()
            },
            type_: Some("kubernetes.io/tls".into()),
            data: Some(m.to_data()),
            ..Default::default()
        })
        .unwrap();
        s["metadata"]["resourceVersion"] = json!(rv.to_string());
        s
    }

    fn status(code: u16, reason: &str) -> Value {
        json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "message": reason, "reason": reason, "code": code})
    }

    impl Fake {
        fn answer(&mut self, method: &str, path: &str, body: Value) -> (u16, Value) {
            self.log.push(format!("{method} {path}"));
            let secret_write = method == "POST" || method == "PUT";
            if secret_write
                && path.contains("/secrets")
                && let Some(other) = self.race.take()
            {
                self.rv += 1;
                self.secret = Some(secret_json(&other, self.rv));
            }
            match (method, path) {
                ("GET", "/api/v1/namespaces/ckb-system/secrets/tls") => match &self.secret {
                    Some(s) => (200, s.clone()),
                    None => (404, status(404, "NotFound")),
                },
                ("POST", "/api/v1/namespaces/ckb-system/secrets") => {
                    if self.secret.is_some() {
                        return (409, status(409, "AlreadyExists"));
                    }
                    self.rv += 1;
                    let mut s = body;
                    s["metadata"]["resourceVersion"] = json!(self.rv.to_string());
                    self.secret = Some(s.clone());
                    (201, s)
                }
                ("PUT", "/api/v1/namespaces/ckb-system/secrets/tls") => {
                    let current = self
                        .secret
                        .as_ref()
                        .map(|s| s["metadata"]["resourceVersion"].clone());
                    if current != Some(body["metadata"]["resourceVersion"].clone()) {
                        return (409, status(409, "Conflict"));
                    }
                    self.rv += 1;
                    let mut s = body;
                    s["metadata"]["resourceVersion"] = json!(self.rv.to_string());
                    self.secret = Some(s.clone());
                    (200, s)
                }
                (
                    "GET",
                    "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/ckb-operator",
                ) => match &self.mwc {
                    Some(m) => (200, m.clone()),
                    None => (404, status(404, "NotFound")),
                },
                (
                    "PATCH",
                    "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/ckb-operator",
                ) => {
                    // Strategic merge of `webhooks` by name, as the API server does.
                    let Some(mwc) = self.mwc.as_mut() else {
                        return (404, status(404, "NotFound"));
                    };
                    for p in body["webhooks"].as_array().into_iter().flatten() {
                        for w in mwc["webhooks"].as_array_mut().into_iter().flatten() {
                            if w["name"] == p["name"] {
                                w["clientConfig"]["caBundle"] =
                                    p["clientConfig"]["caBundle"].clone();
                            }
                        }
                    }
                    (200, mwc.clone())
                }
                _ => (404, status(404, "NotFound")),
            }
        }
    }

    fn client(fake: Arc<Mutex<Fake>>) -> kube::Client {
        let (svc, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        tokio::spawn(async move {
            while let Some((req, send)) = handle.next_request().await {
                let method = req.method().to_string();
                let path = req.uri().path().to_string();
                let ctype = req
                    .headers()
                    .get("content-type")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_string();
                let bytes = req.into_body().collect_bytes().await.unwrap_or_default();
                let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
                if method == "PATCH" {
                    assert_eq!(ctype, "application/strategic-merge-patch+json");
                }
                let (code, answer) = fake.lock().unwrap().answer(&method, &path, body);
                send.send_response(
                    Response::builder()
                        .status(code)
                        .header("content-type", "application/json")
                        .body(Body::from(serde_json::to_vec(&answer).unwrap()))
                        .unwrap(),
                );
            }
        });
        kube::Client::new(svc, "default")
    }

    fn cfg() -> SelfManaged {
        SelfManaged {
            namespace: "ckb-system".into(),
            secret: "tls".into(),
            webhook_config: "ckb-operator".into(),
            hosts: vec!["ckb-operator-webhook.ckb-system.svc".into()],
            timings: CertTimings::default(),
            check_interval: Duration::from_secs(30),
        }
    }

    fn material() -> TlsMaterial {
        let empty = TlsMaterial::default();
        let now = Timestamp::now();
        let steps = plan(&empty, &cfg().hosts, now, &cfg().timings);
        apply(&empty, &steps, &cfg().hosts, now, &cfg().timings).unwrap()
    }

    #[tokio::test]
    async fn creates_the_secret_once_and_then_leaves_it_alone() {
        let fake = Arc::new(Mutex::new(Fake::default()));
        let c = client(fake.clone());
        let m1 = ensure_secret(&c, &cfg()).await.unwrap();
        let m2 = ensure_secret(&c, &cfg()).await.unwrap();
        assert_eq!(m1, m2);
        let log = fake.lock().unwrap().log.clone();
        assert_eq!(
            log,
            vec![
                "GET /api/v1/namespaces/ckb-system/secrets/tls",
                "POST /api/v1/namespaces/ckb-system/secrets",
                "GET /api/v1/namespaces/ckb-system/secrets/tls",
            ]
        );
    }

    #[tokio::test]
    async fn losing_a_create_race_adopts_the_winner() {
        let winner = material();
        let fake = Arc::new(Mutex::new(Fake {
            race: Some(winner.clone()),
            ..Default::default()
        }));
        let got = ensure_secret(&client(fake.clone()), &cfg()).await.unwrap();
        assert_eq!(got, winner);
        let f = fake.lock().unwrap();
        assert_eq!(
            TlsMaterial::from_secret(&serde_json::from_value(f.secret.clone().unwrap()).unwrap()),
            winner
        );
        assert_eq!(f.log.iter().filter(|l| l.starts_with("POST")).count(), 1);
    }

    #[tokio::test]
    async fn losing_an_update_race_adopts_the_winner() {
        // Stored: material whose names are stale, so we want to re-issue; meanwhile the other
        // replica already did.
        let mut stale_cfg = cfg();
        stale_cfg.hosts = vec!["old.ckb-system.svc".into()];
        let old = {
            let empty = TlsMaterial::default();
            let now = Timestamp::now();
            let steps = plan(&empty, &stale_cfg.hosts, now, &stale_cfg.timings);
            apply(&empty, &steps, &stale_cfg.hosts, now, &stale_cfg.timings).unwrap()
        };
        let winner = {
            let now = Timestamp::now();
            let steps = plan(&old, &cfg().hosts, now, &cfg().timings);
            apply(&old, &steps, &cfg().hosts, now, &cfg().timings).unwrap()
        };
        let fake = Arc::new(Mutex::new(Fake {
            secret: Some(secret_json(&old, 1)),
            rv: 1,
            race: Some(winner.clone()),
            ..Default::default()
        }));
        let got = ensure_secret(&client(fake.clone()), &cfg()).await.unwrap();
        assert_eq!(got, winner);
        let log = fake.lock().unwrap().log.clone();
        assert_eq!(
            log.iter().filter(|l| l.starts_with("PUT")).count(),
            1,
            "{log:?}"
        );
    }

    #[tokio::test]
    async fn two_replicas_at_once_end_with_the_same_material() {
        let fake = Arc::new(Mutex::new(Fake::default()));
        let (a, b) = (client(fake.clone()), client(fake.clone()));
        let cfg = cfg();
        let (ma, mb) = tokio::join!(ensure_secret(&a, &cfg), ensure_secret(&b, &cfg));
        assert_eq!(ma.unwrap(), mb.unwrap());
        let f = fake.lock().unwrap();
        let writes = f
            .log
            .iter()
            .filter(|l| l.starts_with("POST") || l.starts_with("PUT"))
            .count();
        assert!(writes <= 2, "{:?}", f.log);
    }

    #[tokio::test]
    async fn ca_bundle_is_written_into_stale_webhook_entries_only() {
        let m = material();
        let good = STANDARD.encode(m.ca_bundle.as_bytes());
        let fake = Arc::new(Mutex::new(Fake {
            mwc: Some(json!({
                "apiVersion": "admissionregistration.k8s.io/v1",
                "kind": "MutatingWebhookConfiguration",
                "metadata": {"name": "ckb-operator", "resourceVersion": "5"},
                "webhooks": [
                    {"name": "pods.ckb.dev", "admissionReviewVersions": ["v1"], "sideEffects": "None",
                     "clientConfig": {"service": {"name": "ckb-operator-webhook", "namespace": "ckb-system", "path": "/mutate"}}},
                    {"name": "pods-legacy.ckb.dev", "admissionReviewVersions": ["v1"], "sideEffects": "None",
                     "clientConfig": {"caBundle": good, "service": {"name": "ckb-operator-webhook", "namespace": "ckb-system", "path": "/mutate"}}},
                ]
            })),
            ..Default::default()
        }));
        let c = client(fake.clone());
        assert_eq!(
            ensure_ca_bundle(&c, "ckb-operator", &m.ca_bundle)
                .await
                .unwrap(),
            1
        );
        assert_eq!(
            ensure_ca_bundle(&c, "ckb-operator", &m.ca_bundle)
                .await
                .unwrap(),
            0
        );
        {
            let f = fake.lock().unwrap();
            let mwc = f.mwc.as_ref().unwrap();
            for w in mwc["webhooks"].as_array().unwrap() {
                assert_eq!(w["clientConfig"]["caBundle"], json!(good));
                assert_eq!(w["clientConfig"]["service"]["path"], "/mutate");
            }
            assert_eq!(f.log.iter().filter(|l| l.starts_with("PATCH")).count(), 1);
        }
        // A missing configuration is not an error (the chart may install it later).
        let empty = Arc::new(Mutex::new(Fake::default()));
        assert_eq!(
            ensure_ca_bundle(&client(empty), "ckb-operator", &m.ca_bundle)
                .await
                .unwrap(),
            0
        );
    }
}
