//! A real local control plane for the end-to-end tests and the demo: etcd, kube-apiserver and
//! kube-controller-manager started as local processes on loopback.
//!
//! The binaries come from `e2e/scripts/build-control-plane.sh` (Kubernetes built from Go modules,
//! cached outside the checkout). Every run gets its own temporary directory with freshly generated
//! certificates, service-account keys and a token file; the API server runs with RBAC authorization,
//! so a client authenticated with a ServiceAccount token really has only what RBAC grants it.
//!
//! Processes are started in their own process groups and killed, and the directory removed, when the
//! [`ControlPlane`] is dropped, also when a test panics (then the tail of each process log is
//! printed first). Set `CKB_E2E_KEEP=1` to keep the directory for a post-mortem.

use std::fs;
use std::io::{Read, Seek, SeekFrom};
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::ServiceAccount;
use kube::api::{Api, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

/// Errors of the control-plane harness.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// The binaries are not built (or not where the build script says).
    #[error(
        "the local control plane is not built ({0}); run `e2e/scripts/build-control-plane.sh` \
         (15-25 min the first time) or `scripts/test.sh`, which builds it"
    )]
    NotBuilt(String),
    /// A file or process operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// Certificate or key generation failed.
    #[error("generating {what}: {source}")]
    Cert {
        /// Which certificate or key.
        what: &'static str,
        /// The underlying error.
        #[source]
        source: rcgen::Error,
    },
    /// A process exited while it should be serving.
    #[error("{name} exited early ({status}); last lines of its log:\n{log_tail}")]
    Exited {
        /// Process name.
        name: String,
        /// Exit status.
        status: String,
        /// Tail of its log.
        log_tail: String,
    },
    /// A condition was not met in time.
    #[error("timed out after {0:?} waiting for {1}")]
    Timeout(Duration, String),
    /// The Kubernetes client failed.
    #[error("kubernetes client: {0}")]
    Kube(#[from] kube::Error),
    /// The kubeconfig could not be loaded.
    #[error("kubeconfig: {0}")]
    Kubeconfig(String),
}

/// Result of the harness.
pub type Result<T, E = ClusterError> = std::result::Result<T, E>;

fn io_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> ClusterError {
    let what = what.into();
    move |source| ClusterError::Io { what, source }
}

/// How long the API server may take to become ready (a loaded 2-core machine is slow).
const READY_TIMEOUT: Duration = Duration::from_secs(180);
/// Service CIDR of the local cluster; its first address is the `kubernetes` Service's.
const SERVICE_CIDR: &str = "10.96.0.0/24";
const SERVICE_IP: &str = "10.96.0.1";
/// Issuer of the ServiceAccount tokens, as in a default cluster.
const SA_ISSUER: &str = "https://kubernetes.default.svc.cluster.local";
/// Controllers the tests rely on: Deployments make ReplicaSets make Pods, namespaces are deleted,
/// ServiceAccounts exist, owner references are garbage collected, the root CA is published, and
/// the built-in `view`/`edit`/`admin` ClusterRoles get their aggregated rules (the security suite
/// acts as users bound to them).
const CONTROLLERS: &str = "deployment-controller,replicaset-controller,namespace-controller,\
garbage-collector-controller,serviceaccount-controller,serviceaccount-token-controller,\
root-ca-certificate-publisher-controller,clusterrole-aggregation-controller";

/// Where the control-plane binaries are: `$CKB_CONTROL_PLANE_BIN`, else what the build script
/// reports (without building).
pub fn binaries_dir() -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os("CKB_CONTROL_PLANE_BIN") {
        let dir = PathBuf::from(dir);
        return check_binaries(&dir).map(|()| dir);
    }
    let script = repo_root().join("e2e/scripts/build-control-plane.sh");
    let out = Command::new("bash")
        .arg(&script)
        .arg("--where")
        .stderr(Stdio::inherit())
        .output()
        .map_err(io_err(format!("running {}", script.display())))?;
    let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    if !out.status.success() {
        return Err(ClusterError::NotBuilt(format!(
            "no complete build in {}",
            dir.display()
        )));
    }
    check_binaries(&dir).map(|()| dir)
}

fn check_binaries(dir: &Path) -> Result<()> {
    for b in [
        "etcd",
        "kube-apiserver",
        "kube-controller-manager",
        "kubectl",
    ] {
        if !dir.join(b).is_file() {
            return Err(ClusterError::NotBuilt(format!(
                "{} is missing",
                dir.join(b).display()
            )));
        }
    }
    Ok(())
}

/// Polls `check` every 250 ms until it returns `Some`, failing after `timeout` with `what` and
/// the last error seen. An error is not final: the check is tried again until the timeout (a
/// condition not met yet may say why as an error, and the last reason is what the failure shows).
pub async fn wait_for<T>(
    timeout: Duration,
    what: &str,
    mut check: impl AsyncFnMut() -> anyhow::Result<Option<T>>,
) -> anyhow::Result<T> {
    let deadline = Instant::now() + timeout;
    let mut last = String::from("condition not met");
    loop {
        match check().await {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => {}
            Err(e) => last = format!("{e:#}"),
        }
        if Instant::now() >= deadline {
            anyhow::bail!("timed out after {timeout:?} waiting for {what} (last: {last})");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The repository root (this crate lives in `<root>/e2e`).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// Reserves `N` distinct free loopback ports. The listeners are held together so the ports differ,
/// then released for the processes to bind.
pub fn free_ports<const N: usize>() -> Result<[u16; N]> {
    let listeners = (0..N)
        .map(|_| TcpListener::bind("127.0.0.1:0").map_err(io_err("binding a free port")))
        .collect::<Result<Vec<_>>>()?;
    let mut ports = [0u16; N];
    for (p, l) in ports.iter_mut().zip(&listeners) {
        *p = l.local_addr().map_err(io_err("reading a port"))?.port();
    }
    Ok(ports)
}

/// A random token (hex of 32 random bytes).
fn random_token() -> String {
    hex::encode(rand::random::<[u8; 32]>())
}

/// Certificates and keys of one run, as PEM.
struct Pki {
    ca_cert: String,
    serving_cert: String,
    serving_key: String,
    sa_key: String,
    sa_pub: String,
}

fn generate_pki() -> Result<Pki> {
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

/// A process of the control plane, in its own process group, logging to a file.
pub(crate) struct Proc {
    name: &'static str,
    child: Child,
    pub(crate) log: PathBuf,
}

impl Proc {
    pub(crate) fn spawn(
        name: &'static str,
        program: &Path,
        args: &[String],
        log: PathBuf,
    ) -> Result<Self> {
        Self::spawn_with_env(name, program, args, &[], log)
    }

    pub(crate) fn spawn_with_env(
        name: &'static str,
        program: &Path,
        args: &[String],
        env: &[(String, String)],
        log: PathBuf,
    ) -> Result<Self> {
        Self::start(name, program, args, env, false, log)
    }

    /// Like [`Self::spawn_with_env`]; when `isolated`, the process inherits nothing from this one
    /// but `PATH` (no `CKB_*` or `AZURE_*` of the caller reaches the operator).
    pub(crate) fn start(
        name: &'static str,
        program: &Path,
        args: &[String],
        env: &[(String, String)],
        isolated: bool,
        log: PathBuf,
    ) -> Result<Self> {
        let file = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .map_err(io_err(format!("opening {}", log.display())))?;
        let err_file = file
            .try_clone()
            .map_err(io_err(format!("opening {}", log.display())))?;
        // NB: when util-linux's setpriv is there, the process also dies with the thread that
        // started it (PR_SET_PDEATHSIG), so a test runner killed outright leaves nothing behind.
        // Start control planes from a long-lived thread (the test's or main's), not a blocking
        // pool thread that may exit while the cluster is in use.
        let mut cmd = match which_setpriv() {
            Some(setpriv) => {
                let mut c = Command::new(setpriv);
                c.args(["--pdeathsig", "KILL", "--"]).arg(program);
                c
            }
            None => Command::new(program),
        };
        if isolated {
            cmd.env_clear()
                .env("PATH", std::env::var_os("PATH").unwrap_or_default());
        }
        let child = cmd
            .args(args)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(file)
            .stderr(err_file)
            // NB: a group of its own, so the whole group can be signalled and a Ctrl-C meant for the
            // test runner does not race our orderly shutdown.
            .process_group(0)
            .spawn()
            .map_err(io_err(format!("starting {}", program.display())))?;
        Ok(Self { name, child, log })
    }

    /// The process id (of the process group's leader).
    pub(crate) fn id(&self) -> u32 {
        self.child.id()
    }

    /// Whether the process still runs.
    pub(crate) fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Fails if the process has exited.
    pub(crate) fn check_alive(&mut self) -> Result<()> {
        match self.child.try_wait() {
            Ok(Some(status)) => Err(ClusterError::Exited {
                name: self.name.to_string(),
                status: status.to_string(),
                log_tail: log_tail(&self.log, 40),
            }),
            Ok(None) => Ok(()),
            Err(e) => Err(io_err(format!("checking {}", self.name))(e)),
        }
    }

    /// Signals the process group, waits up to `grace` for the exit, then kills it.
    pub(crate) fn stop(&mut self, grace: Duration) {
        if matches!(self.child.try_wait(), Ok(Some(_))) {
            return;
        }
        let group = format!("-{}", self.child.id());
        if !grace.is_zero() {
            let _ = Command::new("kill")
                .args(["-TERM", "--", &group])
                .stderr(Stdio::null())
                .status();
            let deadline = Instant::now() + grace;
            while Instant::now() < deadline {
                if matches!(self.child.try_wait(), Ok(Some(_))) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        let _ = Command::new("kill")
            .args(["-KILL", "--", &group])
            .stderr(Stdio::null())
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn which_setpriv() -> Option<PathBuf> {
    ["/usr/bin/setpriv", "/bin/setpriv"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
}

/// The last `lines` lines of a log file (at most its last 64 KiB are read).
pub fn log_tail(path: &Path, lines: usize) -> String {
    let Ok(mut f) = fs::File::open(path) else {
        return format!("(no log at {})", path.display());
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = f.seek(SeekFrom::Start(len.saturating_sub(64 * 1024)));
    let mut buf = Vec::new();
    let _ = f.read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf);
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// A running local control plane. Dropping it stops every process and removes its directory.
pub struct ControlPlane {
    dir: Option<tempfile::TempDir>,
    root: PathBuf,
    bin: PathBuf,
    apiserver_port: u16,
    apiserver_args: Vec<String>,
    admin_token: String,
    kubeconfig: PathBuf,
    client: kube::Client,
    etcd: Proc,
    apiserver: Proc,
    controller_manager: Option<Proc>,
}

impl ControlPlane {
    /// Starts etcd, kube-apiserver and kube-controller-manager on free loopback ports, waits until
    /// the API server is ready (`/readyz`) and the controller manager works (the `default`
    /// ServiceAccount exists), and returns a handle with an admin client.
    pub async fn start() -> Result<Self> {
        // NB: one rustls provider for the process (kube and the Azure SDK both use aws-lc-rs).
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let bin = binaries_dir()?;
        let dir = tempfile::Builder::new()
            .prefix("ckb-e2e-")
            .tempdir()
            .map_err(io_err("creating the run directory"))?;
        let root = dir.path().to_path_buf();
        let started = Instant::now();

        let pki = generate_pki()?;
        let write = |name: &str, body: &str| -> Result<PathBuf> {
            let p = root.join(name);
            fs::write(&p, body).map_err(io_err(format!("writing {}", p.display())))?;
            Ok(p)
        };
        let ca = write("ca.crt", &pki.ca_cert)?;
        let serving_cert = write("apiserver.crt", &pki.serving_cert)?;
        let serving_key = write("apiserver.key", &pki.serving_key)?;
        let sa_key = write("sa.key", &pki.sa_key)?;
        let sa_pub = write("sa.pub", &pki.sa_pub)?;
        let admin_token = random_token();
        let kcm_token = random_token();
        let tokens = write(
            "tokens.csv",
            &format!(
                "{admin_token},admin,admin,\"system:masters\"\n\
                 {kcm_token},system:kube-controller-manager,kcm,\"system:masters\"\n"
            ),
        )?;

        let [etcd_client, etcd_peer, apiserver_port] = free_ports::<3>()?;
        let etcd_client_url = format!("http://127.0.0.1:{etcd_client}");
        let etcd_peer_url = format!("http://127.0.0.1:{etcd_peer}");
        let p = |p: &Path| p.display().to_string();
        let etcd_args = vec![
            "--name=default".to_string(),
            format!("--data-dir={}", p(&root.join("etcd"))),
            format!("--listen-client-urls={etcd_client_url}"),
            format!("--advertise-client-urls={etcd_client_url}"),
            format!("--listen-peer-urls={etcd_peer_url}"),
            format!("--initial-advertise-peer-urls={etcd_peer_url}"),
            format!("--initial-cluster=default={etcd_peer_url}"),
            // Test data is thrown away after the run: durability is not worth the fsync cost.
            "--unsafe-no-fsync".to_string(),
            "--log-level=warn".to_string(),
        ];
        let etcd = Proc::spawn("etcd", &bin.join("etcd"), &etcd_args, root.join("etcd.log"))?;

        let apiserver_args = vec![
            format!("--etcd-servers={etcd_client_url}"),
            "--bind-address=127.0.0.1".to_string(),
            "--advertise-address=127.0.0.1".to_string(),
            format!("--secure-port={apiserver_port}"),
            format!("--cert-dir={}", p(&root.join("apiserver-certs"))),
            format!("--tls-cert-file={}", p(&serving_cert)),
            format!("--tls-private-key-file={}", p(&serving_key)),
            format!("--client-ca-file={}", p(&ca)),
            format!("--token-auth-file={}", p(&tokens)),
            "--authorization-mode=Node,RBAC".to_string(),
            format!("--service-account-issuer={SA_ISSUER}"),
            format!("--service-account-key-file={}", p(&sa_pub)),
            format!("--service-account-signing-key-file={}", p(&sa_key)),
            format!("--service-cluster-ip-range={SERVICE_CIDR}"),
            // Fewer moving parts at startup; nothing here depends on flow control.
            "--enable-priority-and-fairness=false".to_string(),
            "--profiling=false".to_string(),
        ];
        let apiserver = Proc::spawn(
            "kube-apiserver",
            &bin.join("kube-apiserver"),
            &apiserver_args,
            root.join("kube-apiserver.log"),
        )?;

        let server = format!("https://127.0.0.1:{apiserver_port}");
        let kubeconfig = root.join("admin.kubeconfig");
        write_kubeconfig(&kubeconfig, &server, &pki.ca_cert, "admin", &admin_token)?;
        let kcm_kubeconfig = root.join("kube-controller-manager.kubeconfig");
        write_kubeconfig(
            &kcm_kubeconfig,
            &server,
            &pki.ca_cert,
            "kube-controller-manager",
            &kcm_token,
        )?;
        let client = client_from_kubeconfig(&kubeconfig).await?;

        let controller_manager_args = vec![
            format!("--kubeconfig={}", p(&kcm_kubeconfig)),
            "--leader-elect=false".to_string(),
            format!("--service-account-private-key-file={}", p(&sa_key)),
            format!("--root-ca-file={}", p(&ca)),
            format!("--controllers={CONTROLLERS}"),
            // No HTTPS endpoint: its default port 10257 would clash between parallel runs.
            "--secure-port=0".to_string(),
        ];
        let mut cp = Self {
            dir: Some(dir),
            root,
            bin,
            apiserver_port,
            apiserver_args,
            admin_token,
            kubeconfig,
            client,
            etcd,
            apiserver,
            controller_manager: None,
        };
        cp.wait_ready(READY_TIMEOUT).await?;
        // NB: started once the API server is ready: it gives up (exit 1) when /healthz is not ok
        // within 10 s, which a loaded machine can exceed.
        cp.controller_manager = Some(Proc::spawn(
            "kube-controller-manager",
            &cp.bin.join("kube-controller-manager"),
            &controller_manager_args,
            cp.root.join("kube-controller-manager.log"),
        )?);

        cp.wait_controller_manager(READY_TIMEOUT).await?;
        tracing::info!(
            dir = %cp.root.display(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "local control plane ready"
        );
        Ok(cp)
    }

    /// Polls `/readyz` until the API server answers `ok`, failing early if a process exited.
    async fn wait_ready(&mut self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            self.etcd.check_alive()?;
            self.apiserver.check_alive()?;
            let req = http::Request::get("/readyz")
                .body(Vec::new())
                .map_err(|e| ClusterError::Kubeconfig(e.to_string()))?;
            let last = match self.client.request_text(req).await {
                Ok(body) if body.trim() == "ok" => return Ok(()),
                Ok(body) => body,
                Err(e) => e.to_string(),
            };
            if Instant::now() >= deadline {
                return Err(ClusterError::Timeout(
                    timeout,
                    format!(
                        "kube-apiserver /readyz (last answer: {last}); log tail:\n{}",
                        log_tail(&self.apiserver.log, 30)
                    ),
                ));
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Waits until the controller manager has made the `default` ServiceAccount of `default`.
    async fn wait_controller_manager(&mut self, timeout: Duration) -> Result<()> {
        let api: Api<ServiceAccount> = Api::namespaced(self.client.clone(), "default");
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(kcm) = self.controller_manager.as_mut() {
                kcm.check_alive()?;
            }
            if api.get_opt("default").await?.is_some() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(ClusterError::Timeout(
                    timeout,
                    format!(
                        "kube-controller-manager to create default/default ServiceAccount; log tail:\n{}",
                        log_tail(&self.root.join("kube-controller-manager.log"), 30)
                    ),
                ));
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// An admin client (`system:masters`).
    pub fn client(&self) -> kube::Client {
        self.client.clone()
    }

    /// Path of the admin kubeconfig.
    pub fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }

    /// The run's directory (certificates, kubeconfigs, process logs).
    pub fn dir(&self) -> &Path {
        &self.root
    }

    /// The API server URL (`https://127.0.0.1:<port>`).
    pub fn server_url(&self) -> String {
        format!("https://127.0.0.1:{}", self.apiserver_port)
    }

    /// PEM of the CA that signed the API server's certificate (and verifies client certificates).
    pub fn ca_pem(&self) -> Result<String> {
        let p = self.root.join("ca.crt");
        fs::read_to_string(&p).map_err(io_err(format!("reading {}", p.display())))
    }

    /// The admin bearer token.
    pub fn admin_token(&self) -> &str {
        &self.admin_token
    }

    /// Directory of the control-plane binaries (kubectl among them).
    pub fn bin_dir(&self) -> &Path {
        &self.bin
    }

    /// A token for a ServiceAccount, made by the TokenRequest API (valid for `ttl`).
    pub async fn token_for_service_account(
        &self,
        namespace: &str,
        name: &str,
        ttl: Duration,
    ) -> Result<String> {
        let api: Api<ServiceAccount> = Api::namespaced(self.client.clone(), namespace);
        let request = TokenRequest {
            spec: TokenRequestSpec {
                audiences: Vec::new(),
                expiration_seconds: Some(ttl.as_secs().max(600) as i64),
                ..Default::default()
            },
            ..Default::default()
        };
        let answer: TokenRequest = api
            .create_subresource("token", name, &PostParams::default(), &request)
            .await?;
        answer
            .status
            .map(|s| s.token)
            .ok_or_else(|| ClusterError::Kubeconfig("TokenRequest answered without a token".into()))
    }

    /// Writes a kubeconfig for a bearer token (in the run directory) and returns its path.
    pub fn kubeconfig_for_token(&self, user: &str, token: &str) -> Result<PathBuf> {
        let safe: String = user
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
            .collect();
        let path = self.root.join(format!("{safe}.kubeconfig"));
        write_kubeconfig(&path, &self.server_url(), &self.ca_pem()?, user, token)?;
        Ok(path)
    }

    /// A client authenticated with a bearer token (for example a ServiceAccount's).
    pub async fn client_for_token(&self, user: &str, token: &str) -> Result<kube::Client> {
        let path = self.kubeconfig_for_token(user, token)?;
        client_from_kubeconfig(&path).await
    }

    /// Runs the control plane's kubectl with the admin kubeconfig.
    pub fn kubectl<I, S>(&self, args: I) -> Result<Output>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        self.kubectl_command()
            .args(args)
            .output()
            .map_err(io_err("running kubectl"))
    }

    /// A kubectl command with the admin kubeconfig set, to add arguments and stdin to.
    pub fn kubectl_command(&self) -> Command {
        let mut cmd = Command::new(self.bin.join("kubectl"));
        cmd.env("KUBECONFIG", &self.kubeconfig)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        cmd
    }

    /// Stops the API server (SIGTERM, then SIGKILL after 20 s), starts it again on the same port
    /// and waits until it is ready. Clients keep working: they reconnect to the same address.
    pub async fn restart_apiserver(&mut self) -> Result<()> {
        self.apiserver.stop(Duration::from_secs(20));
        self.apiserver = Proc::spawn(
            "kube-apiserver",
            &self.bin.join("kube-apiserver"),
            &self.apiserver_args,
            self.root.join("kube-apiserver.log"),
        )?;
        self.wait_ready(READY_TIMEOUT).await
    }

    /// Paths of the process logs, by process name.
    pub fn logs(&self) -> Vec<(&'static str, PathBuf)> {
        [
            Some(&self.etcd),
            Some(&self.apiserver),
            self.controller_manager.as_ref(),
        ]
        .into_iter()
        .flatten()
        .map(|p| (p.name, p.log.clone()))
        .collect()
    }

    /// Prints the tail of every process log to stderr.
    pub fn print_logs(&self, lines: usize) {
        for (name, log) in self.logs() {
            eprintln!(
                "----- {name} ({}) last {lines} lines -----\n{}",
                log.display(),
                log_tail(&log, lines)
            );
        }
    }

    /// Stops every process and removes the run directory.
    pub fn stop(self) {
        drop(self);
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.print_logs(60);
        }
        if let Some(kcm) = self.controller_manager.as_mut() {
            kcm.stop(Duration::ZERO);
        }
        self.apiserver.stop(Duration::ZERO);
        self.etcd.stop(Duration::ZERO);
        if let Some(dir) = self.dir.take() {
            if std::env::var_os("CKB_E2E_KEEP").is_some() {
                let kept = dir.keep();
                eprintln!("kept control-plane directory {}", kept.display());
            } else if let Err(e) = dir.close() {
                eprintln!("could not remove {}: {e}", self.root.display());
            }
        }
    }
}

/// Writes a kubeconfig with one cluster, one bearer-token user and one current context.
pub fn write_kubeconfig(
    path: &Path,
    server: &str,
    ca_pem: &str,
    user: &str,
    token: &str,
) -> Result<()> {
    let ca = STANDARD.encode(ca_pem);
    let body = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: ckb-local\n  cluster:\n    server: {server}\n    \
         certificate-authority-data: {ca}\nusers:\n- name: {user:?}\n  user:\n    token: {token:?}\n\
         contexts:\n- name: ckb-local\n  context:\n    cluster: ckb-local\n    user: {user:?}\n\
         current-context: ckb-local\n"
    );
    fs::write(path, body).map_err(io_err(format!("writing {}", path.display())))?;
    // NB: it holds a credential; keep it private like kubectl does.
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(path, fs::Permissions::from_mode(0o600))
        .map_err(io_err(format!("chmod {}", path.display())))
}

/// A kube client from a kubeconfig file.
pub async fn client_from_kubeconfig(path: &Path) -> Result<kube::Client> {
    let kc = Kubeconfig::read_from(path).map_err(|e| ClusterError::Kubeconfig(e.to_string()))?;
    let config = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .map_err(|e| ClusterError::Kubeconfig(e.to_string()))?;
    Ok(kube::Client::try_from(config)?)
}
