//! Azure workload identity in the local environment.
//!
//! - [`OperatorIdentity`]: the operator authenticates to Key Vault as AKS makes it: a projected
//!   ServiceAccount token of the chart's ServiceAccount (here from the real API server's
//!   TokenRequest API, audience `api://AzureADTokenExchange`) in `AZURE_FEDERATED_TOKEN_FILE`,
//!   refreshed before it expires (as the kubelet does at 80 % of its lifetime), exchanged by the
//!   operator's workload identity credential at the Entra ID double (`AZURE_AUTHORITY_HOST`) for
//!   an access token the Key Vault double accepts. The Entra double trusts the API server's
//!   ServiceAccount issuer and key, with a federated identity credential for that ServiceAccount.
//! - [`AwiWebhook`]: the real Azure Workload Identity mutating webhook (built from its Go module
//!   by `e2e/scripts/build-awi.sh`) as a local process, registered with the API server under a
//!   configuration name of the test's choosing.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use base64::Engine as _;
use ckb_doubles::entra::{AUTHORITY_HOST, FederatedCredential, TOKEN_EXCHANGE_AUDIENCE};
use ckb_doubles::{KeyVaultDouble, TrustedIssuer};
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::ServiceAccount;
use kube::api::{Api, PostParams};
use serde_json::Value;

use crate::cluster::{ControlPlane, Proc, free_ports, log_tail, repo_root};

/// Client id of the operator's (user-assigned managed) identity in the Entra double.
pub const OPERATOR_CLIENT_ID: &str = "6f1a2b3c-0000-4000-8000-00000000c0de";
/// `AZURE_AUTHORITY_HOST` (what AWI injects for the public cloud).
pub const AUTHORITY_HOST_URL: &str = "https://login.microsoftonline.com/";

/// A ServiceAccount token from the API server's TokenRequest API for `audience`.
pub async fn service_account_token(
    cp: &ControlPlane,
    namespace: &str,
    name: &str,
    audience: &str,
    ttl: Duration,
) -> Result<String> {
    let api: Api<ServiceAccount> = Api::namespaced(cp.client(), namespace);
    let request = TokenRequest {
        spec: TokenRequestSpec {
            audiences: vec![audience.to_string()],
            expiration_seconds: Some(ttl.as_secs() as i64),
            ..Default::default()
        },
        ..Default::default()
    };
    let answer: TokenRequest = api
        .create_subresource("token", name, &PostParams::default(), &request)
        .await
        .with_context(|| format!("TokenRequest for ServiceAccount {namespace}/{name}"))?;
    answer
        .status
        .map(|s| s.token)
        .context("TokenRequest answered without a token")
}

/// The claims of a JWT, read without checking anything.
pub fn jwt_claims(token: &str) -> Result<Value> {
    let payload = token.split('.').nth(1).context("not a JWT")?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .context("JWT payload is not base64url")?;
    Ok(serde_json::from_slice(&bytes)?)
}

fn write_atomically(path: &Path, contents: &str) -> Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, contents).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))?;
    Ok(())
}

/// How the operator's federated token is made.
#[derive(Debug, Clone)]
pub struct IdentityOptions {
    /// Lifetime asked of the TokenRequest API (at least 10 minutes: the API server's minimum).
    pub token_ttl: Duration,
    /// When to replace the token; `None`: at 80 % of its lifetime, as the kubelet does.
    pub refresh_every: Option<Duration>,
}

impl Default for IdentityOptions {
    fn default() -> Self {
        Self {
            token_ttl: Duration::from_secs(3600),
            refresh_every: None,
        }
    }
}

/// The operator's workload identity: the federation in the Entra double and the token file.
pub struct OperatorIdentity {
    /// `AZURE_FEDERATED_TOKEN_FILE`.
    pub token_file: PathBuf,
    /// `AZURE_TENANT_ID`.
    pub tenant_id: String,
    /// The `iss` of the API server's ServiceAccount tokens.
    pub issuer: String,
    refreshes: Arc<AtomicU64>,
    refresher: tokio::task::JoinHandle<()>,
}

impl OperatorIdentity {
    /// Federates the ServiceAccount `namespace/name` with [`OPERATOR_CLIENT_ID`] in the Entra
    /// double (trusting the API server's ServiceAccount issuer and key), writes its first token
    /// and starts refreshing it.
    pub async fn start(
        cp: &ControlPlane,
        double: &KeyVaultDouble,
        namespace: &str,
        name: &str,
        opts: IdentityOptions,
    ) -> Result<Self> {
        let ttl = opts.token_ttl.max(Duration::from_secs(600));
        let first =
            service_account_token(cp, namespace, name, TOKEN_EXCHANGE_AUDIENCE, ttl).await?;
        let issuer = jwt_claims(&first)?["iss"]
            .as_str()
            .context("ServiceAccount token without iss")?
            .to_string();
        let public_key_pem = std::fs::read_to_string(cp.dir().join("sa.pub"))
            .context("the API server's ServiceAccount public key")?;
        let entra = double.entra();
        entra.trust_issuer(TrustedIssuer {
            issuer: issuer.clone(),
            public_key_pem,
        });
        entra.set_credentials(vec![FederatedCredential::service_account(
            OPERATOR_CLIENT_ID,
            &issuer,
            namespace,
            name,
        )]);
        let token_file = cp.dir().join("azure-identity-token");
        write_atomically(&token_file, &first)?;

        let every = opts.refresh_every.unwrap_or(ttl.mul_f64(0.8));
        let refreshes = Arc::new(AtomicU64::new(0));
        let (client, file, count) = (cp.client(), token_file.clone(), refreshes.clone());
        let (ns, sa) = (namespace.to_string(), name.to_string());
        let refresher = tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let api: Api<ServiceAccount> = Api::namespaced(client.clone(), &ns);
                let request = TokenRequest {
                    spec: TokenRequestSpec {
                        audiences: vec![TOKEN_EXCHANGE_AUDIENCE.to_string()],
                        expiration_seconds: Some(ttl.as_secs() as i64),
                        ..Default::default()
                    },
                    ..Default::default()
                };
                let answer: kube::Result<TokenRequest> = api
                    .create_subresource("token", &sa, &PostParams::default(), &request)
                    .await;
                match answer {
                    Ok(TokenRequest {
                        status: Some(s), ..
                    }) => match write_atomically(&file, &s.token) {
                        Ok(()) => {
                            count.fetch_add(1, Ordering::SeqCst);
                        }
                        Err(e) => tracing::warn!("refreshing the federated token: {e:#}"),
                    },
                    Ok(_) => tracing::warn!("TokenRequest answered without a token"),
                    Err(e) => tracing::warn!("refreshing the federated token: {e}"),
                }
            }
        });
        Ok(Self {
            token_file,
            tenant_id: entra.tenant(),
            issuer,
            refreshes,
            refresher,
        })
    }

    /// How many times the token file was replaced.
    pub fn refreshes(&self) -> u64 {
        self.refreshes.load(Ordering::SeqCst)
    }

    /// The environment the AKS workload identity webhook gives the operator's pod.
    pub fn operator_env(&self) -> Vec<(String, String)> {
        vec![
            ("AZURE_CLIENT_ID".into(), OPERATOR_CLIENT_ID.into()),
            ("AZURE_TENANT_ID".into(), self.tenant_id.clone()),
            (
                "AZURE_FEDERATED_TOKEN_FILE".into(),
                self.token_file.display().to_string(),
            ),
            ("AZURE_AUTHORITY_HOST".into(), AUTHORITY_HOST_URL.into()),
        ]
    }

    /// The operator's Key Vault credential flags: workload identity, as the chart sets it.
    pub fn operator_args() -> Vec<String> {
        vec![
            "--kv-credential=workload-identity".to_string(),
            format!("--kv-authority-host={AUTHORITY_HOST_URL}"),
        ]
    }

    /// The `--kv-resolve` entry that sends the authority host to the doubles.
    pub fn resolve_entry(double: &KeyVaultDouble) -> String {
        format!("{AUTHORITY_HOST}={}", double.addr())
    }
}

impl Drop for OperatorIdentity {
    fn drop(&mut self) {
        self.refresher.abort();
    }
}

/// The Azure Workload Identity webhook binary: `$CKB_AWI_BIN`, else the one
/// `e2e/scripts/build-awi.sh` built (never built here: the test command builds it first).
pub fn awi_binary() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("CKB_AWI_BIN") {
        return Ok(PathBuf::from(p));
    }
    let script = repo_root().join("e2e/scripts/build-awi.sh");
    let out = std::process::Command::new("bash")
        .arg(&script)
        .arg("--where")
        .output()
        .context("running e2e/scripts/build-awi.sh --where")?;
    let path = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    if !out.status.success() || !path.is_file() {
        bail!(
            "the Azure Workload Identity webhook is not built: run `bash e2e/scripts/build-awi.sh` \
             (scripts/test.sh does) or set CKB_AWI_BIN"
        );
    }
    Ok(path)
}

/// The real Azure Workload Identity webhook, running as a local process.
pub struct AwiWebhook {
    proc: Proc,
    ca_pem: String,
    /// Port of its webhook server (controller-runtime's fixed 9443).
    pub port: u16,
}

/// controller-runtime's webhook server port; AWI's command line does not expose it.
const AWI_WEBHOOK_PORT: u16 = 9443;
/// The tenant the webhook injects as `AZURE_TENANT_ID` when a ServiceAccount names none.
pub const AWI_TENANT_ID: &str = ckb_doubles::server::DEFAULT_TENANT;

impl AwiWebhook {
    /// Starts it with a serving certificate for 127.0.0.1 in its cert directory (its own cert
    /// rotation off), the admin kubeconfig, and the environment its configuration needs; waits
    /// until `/readyz` answers.
    pub async fn start(cp: &ControlPlane) -> Result<Self> {
        let bin = awi_binary()?;
        let dir = cp.dir().join("awi");
        let certs = dir.join("certs");
        std::fs::create_dir_all(&certs)?;
        let ca = rcgen::KeyPair::generate()?;
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new())?;
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "azure-workload-identity-ca");
        let ca_cert = ca_params.self_signed(&ca)?;
        let key = rcgen::KeyPair::generate()?;
        let mut params = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()])?;
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "azure-wi-webhook");
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        let issuer = rcgen::Issuer::new(ca_params, ca);
        let cert = params.signed_by(&key, &issuer)?;
        std::fs::write(certs.join("tls.crt"), cert.pem())?;
        std::fs::write(certs.join("tls.key"), key.serialize_pem())?;
        let [health, metrics] = free_ports::<2>()?;
        let args = vec![
            format!("--webhook-cert-dir={}", certs.display()),
            "--disable-cert-rotation".to_string(),
            format!("--health-addr=127.0.0.1:{health}"),
            format!("--metrics-addr=127.0.0.1:{metrics}"),
            "--log-level=info".to_string(),
        ];
        let env = vec![
            (
                "KUBECONFIG".to_string(),
                cp.kubeconfig().display().to_string(),
            ),
            ("AZURE_TENANT_ID".to_string(), AWI_TENANT_ID.to_string()),
            (
                "AZURE_ENVIRONMENT".to_string(),
                "AzurePublicCloud".to_string(),
            ),
            (
                "POD_NAMESPACE".to_string(),
                "azure-workload-identity-system".to_string(),
            ),
        ];
        let mut proc = Proc::spawn_with_env(
            "azure-wi-webhook",
            &bin,
            &args,
            &env,
            dir.join("azure-wi-webhook.log"),
        )?;
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(2))
            .build()?;
        let url = format!("http://127.0.0.1:{health}/readyz");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            proc.check_alive()?;
            match http.get(&url).send().await {
                Ok(r) if r.status().is_success() => break,
                _ if Instant::now() >= deadline => bail!(
                    "the AWI webhook was not ready after 60 s; log tail:\n{}",
                    log_tail(&proc.log, 40)
                ),
                _ => tokio::time::sleep(Duration::from_millis(250)).await,
            }
        }
        Ok(Self {
            proc,
            ca_pem: ca_cert.pem(),
            port: AWI_WEBHOOK_PORT,
        })
    }

    /// Its log so far (last lines).
    pub fn log_tail(&self, lines: usize) -> String {
        log_tail(&self.proc.log, lines)
    }

    /// The webhook configuration AWI ships (v1.6.0 `deploy/azure-wi-webhook.yaml`), under `name`
    /// and with `reinvocation_policy`, reaching this process by URL.
    pub fn configuration_yaml(&self, name: &str, reinvocation_policy: &str) -> String {
        let ca = base64::engine::general_purpose::STANDARD.encode(&self.ca_pem);
        format!(
            r#"apiVersion: admissionregistration.k8s.io/v1
kind: MutatingWebhookConfiguration
metadata:
  name: {name}
  labels:
    azure-workload-identity.io/system: "true"
webhooks:
  - name: mutation.azure-workload-identity.io
    admissionReviewVersions: ["v1", "v1beta1"]
    clientConfig:
      url: https://127.0.0.1:{port}/mutate-v1-pod
      caBundle: {ca}
    failurePolicy: Fail
    matchPolicy: Equivalent
    objectSelector:
      matchLabels:
        azure.workload.identity/use: "true"
    reinvocationPolicy: {reinvocation_policy}
    rules:
      - apiGroups: [""]
        apiVersions: ["v1"]
        operations: ["CREATE"]
        resources: ["pods"]
    sideEffects: None
"#,
            port = self.port
        )
    }
}

impl Drop for AwiWebhook {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "----- azure-wi-webhook last 40 lines -----\n{}",
                self.log_tail(40)
            );
        }
        self.proc.stop(Duration::from_secs(5));
    }
}
