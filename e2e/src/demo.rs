//! The local demo: a real control plane on loopback with the binding API installed and the samples
//! of `samples/` applied, printed the way a user looks at them, then left up until Ctrl-C (or
//! closed at once with `--once`). Everything it started is stopped and removed on the way out.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use ckb_crds::ConfidentialKeyBinding;
use kube::CustomResourceExt;

use crate::cluster::{ControlPlane, repo_root};

/// Options of the demo.
#[derive(Debug, clap::Parser)]
#[command(
    name = "ckb-demo",
    about = "Runs the ckb-operator demo on a local control plane"
)]
pub struct DemoArgs {
    /// Exit (and clean up) right after showing the results instead of waiting for Ctrl-C.
    #[arg(long, env = "CKB_DEMO_ONCE")]
    pub once: bool,
    /// Directory of the sample manifests to apply.
    #[arg(long, env = "CKB_DEMO_SAMPLES")]
    pub samples: Option<PathBuf>,
}

fn banner(text: &str) {
    println!("\n=== {text}");
}

fn show_command(args: &[&str]) {
    println!("$ kubectl {}", args.join(" "));
}

fn output_text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Runs kubectl as the admin, printing the command and what it printed; fails on a non-zero exit.
fn kubectl_show(cp: &ControlPlane, args: &[&str]) -> Result<String> {
    show_command(args);
    let out = cp.kubectl(args)?;
    let text = output_text(&out);
    print!("{text}");
    if !out.status.success() {
        bail!("kubectl {} failed", args.join(" "));
    }
    Ok(text)
}

/// Installs the CRD generated from the Rust types and waits until kubectl can use the kind.
async fn install_crd(cp: &ControlPlane) -> Result<()> {
    let path = cp.dir().join("crd.json");
    std::fs::write(
        &path,
        serde_json::to_vec_pretty(&ConfidentialKeyBinding::crd())?,
    )?;
    kubectl_show(cp, &["apply", "-f", &path.display().to_string()])?;
    kubectl_show(
        cp,
        &[
            "wait",
            "--for=condition=Established",
            "--timeout=60s",
            "crd/confidentialkeybindings.ckb.dev",
        ],
    )?;
    wait_until(Duration::from_secs(60), "the ckb kind in discovery", || {
        Ok(cp.kubectl(["get", "ckb", "-A"])?.status.success())
    })
    .await
}

/// Polls `check` every 250 ms until it holds or `timeout` passes.
async fn wait_until(
    timeout: Duration,
    what: &str,
    mut check: impl FnMut() -> Result<bool>,
) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        if check()? {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn samples_dir(args: &DemoArgs) -> PathBuf {
    args.samples
        .clone()
        .unwrap_or_else(|| repo_root().join("samples"))
}

async fn apply_samples(cp: &ControlPlane, dir: &Path) -> Result<()> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    if files.is_empty() {
        bail!("no sample manifests in {}", dir.display());
    }
    for f in files {
        kubectl_show(cp, &["apply", "-f", &f.display().to_string()])?;
    }
    Ok(())
}

/// Waits for SIGINT or SIGTERM.
async fn wait_for_interrupt() -> Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r?,
        _ = term.recv() => {}
    }
    Ok(())
}

/// Runs the demo.
pub async fn run(args: DemoArgs) -> Result<()> {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    banner("starting a local control plane (etcd, kube-apiserver, kube-controller-manager)");
    let started = Instant::now();
    let cp = ControlPlane::start().await?;
    println!(
        "ready in {:.1}s: {} (RBAC on), files in {}",
        started.elapsed().as_secs_f64(),
        cp.server_url(),
        cp.dir().display()
    );

    let result = async {
        banner("installing the ConfidentialKeyBinding API (ckb.dev/v1alpha1)");
        install_crd(&cp).await?;

        banner("applying the samples");
        apply_samples(&cp, &samples_dir(&args)).await?;

        banner("what a user sees");
        kubectl_show(&cp, &["get", "ckb", "-n", "payments", "-o", "wide"])?;
        kubectl_show(&cp, &["get", "deploy,pods", "-n", "payments"])?;
        Ok::<(), anyhow::Error>(())
    }
    .await;
    if let Err(e) = result {
        cp.print_logs(30);
        return Err(e);
    }

    banner("environment");
    println!("export KUBECONFIG={}", cp.kubeconfig().display());
    println!("kubectl: {}", cp.bin_dir().join("kubectl").display());
    if args.once {
        println!("\n--once: cleaning up");
        return Ok(());
    }
    println!("\nthe environment stays up until Ctrl-C");
    wait_for_interrupt().await?;
    println!(
        "\ninterrupted: stopping everything and removing {}",
        cp.dir().display()
    );
    Ok(())
}
