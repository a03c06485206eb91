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
//!
//! The parts: [`args`] (command lines and run files), [`pki`] (certificates), [`process`]
//! (processes and their logs), [`kubeconfig`], [`users`] (tokens and users bound to roles),
//! [`locate`] (binaries and the repository), [`wait`] (the one poll), [`error`].

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::ServiceAccount;
use kube::api::Api;

mod args;
mod error;
mod kubeconfig;
mod locate;
mod pki;
mod process;
mod users;
mod wait;

pub(crate) use error::io_err;
pub use error::{ClusterError, Result};
pub use kubeconfig::{client_from_kubeconfig, write_kubeconfig};
pub use locate::{binaries_dir, repo_root};
pub(crate) use process::Proc;
pub use process::{free_ports, log_tail};
pub use wait::wait_for;

use args::RunFiles;
use pki::{generate_pki, random_token};

/// How long the API server may take to become ready (a loaded 2-core machine is slow).
const READY_TIMEOUT: Duration = Duration::from_secs(180);

/// Settings of a [`ControlPlane`].
#[derive(Debug, Clone, Default)]
pub struct ClusterOptions {
    /// Users (e.g. `system:serviceaccount:<ns>:<name>`) whose requests the API server records in
    /// its audit log ([`ControlPlane::audit_log`]: JSON lines, Metadata level); none by default,
    /// and then there is no audit log.
    pub audited_users: Vec<String>,
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
    audit_log: Option<PathBuf>,
}

impl ControlPlane {
    /// Starts etcd, kube-apiserver and kube-controller-manager on free loopback ports, waits until
    /// the API server is ready (`/readyz`) and the controller manager works (the `default`
    /// ServiceAccount exists), and returns a handle with an admin client.
    pub async fn start() -> Result<Self> {
        Self::start_with(ClusterOptions::default()).await
    }

    /// [`Self::start`] with settings.
    pub async fn start_with(opts: ClusterOptions) -> Result<Self> {
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
        let admin_token = random_token();
        let kcm_token = random_token();
        let files = RunFiles::write(&root, &pki, &admin_token, &kcm_token, &opts.audited_users)?;

        let [etcd_client, etcd_peer, apiserver_port] = free_ports::<3>()?;
        let etcd_url = format!("http://127.0.0.1:{etcd_client}");
        let etcd_args = args::etcd(&root, &etcd_url, &format!("http://127.0.0.1:{etcd_peer}"));
        let etcd = Proc::spawn("etcd", &bin.join("etcd"), &etcd_args, root.join("etcd.log"))?;
        let apiserver_args = args::apiserver(&root, &files, &etcd_url, apiserver_port);
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
            audit_log: files.audit.as_ref().map(|(_, log)| log.clone()),
        };
        cp.wait_ready(READY_TIMEOUT).await?;
        // NB: started once the API server is ready: it gives up (exit 1) when /healthz is not ok
        // within 10 s, which a loaded machine can exceed.
        cp.controller_manager = Some(Proc::spawn(
            "kube-controller-manager",
            &cp.bin.join("kube-controller-manager"),
            &args::controller_manager(&kcm_kubeconfig, &files),
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

    /// The API server's audit log (JSON lines), when the control plane was started with
    /// [`ClusterOptions::audited_users`].
    pub fn audit_log(&self) -> Option<&Path> {
        self.audit_log.as_deref()
    }

    /// Directory of the control-plane binaries (kubectl among them).
    pub fn bin_dir(&self) -> &Path {
        &self.bin
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
