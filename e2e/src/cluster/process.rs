//! The processes of the control plane (and of the operator and registry the tests start): each in
//! its own process group, logging to a file, stopped gracefully or killed.

use std::fs;
use std::io::{Read, Seek, SeekFrom};
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::error::{ClusterError, Result, io_err};

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

/// A process of the control plane, in its own process group, logging to a file.
pub(crate) struct Proc {
    pub(crate) name: &'static str,
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
