//! The local demo: the suite's [`Environment`] (control plane, doubles, chart in development
//! mode, operator as the chart's ServiceAccount), the samples of `samples/` applied, and what a
//! user wants to see printed: the binding's status, the key and its release policy, the injected
//! pod, then a release played as the sidecar for that pod (succeeds) and for an altered policy
//! (refused). Left up until Ctrl-C, or closed at once with `--once`; everything it started is
//! stopped and removed on the way out.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use ckb_doubles::sidecar::{ReleaseCall, Trust, release_for_pod};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams};
use sha2::{Digest, Sha256};

use crate::cluster::{ControlPlane, repo_root};
use crate::suite_env::{
    DEMO_AUTHORITY, DEMO_VAULT, EnvOptions, Environment, NAMESPACE, RELEASE_KV_TOKEN,
    SERVICE_ACCOUNT, pod_annotation as annotation, wait_for,
};

/// Host of the samples' vault.
fn vault_host() -> &'static str {
    host_of(DEMO_VAULT)
}

/// Host of the samples' attestation authority.
fn authority_host() -> &'static str {
    host_of(DEMO_AUTHORITY)
}

fn host_of(url: &'static str) -> &'static str {
    url.strip_prefix("https://").unwrap_or(url)
}

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

/// Waits until the binding reports Ready=True; shows it when it does not.
async fn wait_binding_ready(env: &Environment, ns: &str, name: &str) -> Result<()> {
    let res = env.wait_binding_ready(ns, name).await;
    if res.is_err() {
        let _ = kubectl_show(&env.cp, &["get", "ckb", name, "-n", ns, "-o", "yaml"]);
    }
    res.map(drop)
}

/// The first pod of `app=orders` that the webhook injected.
async fn injected_pod(cp: &ControlPlane, ns: &str) -> Result<Pod> {
    let pods: Api<Pod> = Api::namespaced(cp.client(), ns);
    let what = format!("an injected pod of app=orders in {ns}");
    wait_for(Duration::from_secs(90), &what, || {
        let pods = pods.clone();
        async move {
            let list = pods
                .list(&ListParams::default().labels("app=orders"))
                .await?;
            Ok(list.items.into_iter().find(|p| {
                p.metadata
                    .labels
                    .as_ref()
                    .is_some_and(|l| l.get("ckb.dev/injected").is_some_and(|v| v == "true"))
            }))
        }
    })
    .await
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

fn show_pod(pod: &Pod) -> Result<String> {
    let name = pod.metadata.name.clone().unwrap_or_default();
    println!("pod {name}:");
    let spec = pod.spec.as_ref().context("pod without spec")?;
    for c in &spec.containers {
        println!(
            "  container {:<8} image {}",
            c.name,
            c.image.clone().unwrap_or_default()
        );
        for e in c
            .env
            .iter()
            .flatten()
            .filter(|e| e.name.starts_with("SKR_"))
        {
            println!(
                "      env {}={}",
                e.name,
                e.value.clone().unwrap_or_default()
            );
        }
    }
    let hash = annotation(pod, "ckb.dev/policy-sha256").context("no ckb.dev/policy-sha256")?;
    let bindings = annotation(pod, "ckb.dev/bindings").unwrap_or("");
    let policy = annotation(pod, "io.katacontainers.config.agent.policy")
        .context("no agent policy annotation")?;
    let rego = STANDARD
        .decode(policy)
        .context("agent policy annotation is not base64")?;
    println!("  annotation ckb.dev/bindings: {bindings}");
    println!("  annotation ckb.dev/policy-sha256: {hash}");
    println!(
        "  annotation io.katacontainers.config.agent.policy: {} base64 chars, {} bytes of Rego, sha256 {}",
        policy.len(),
        rego.len(),
        sha256_hex(&rego)
    );
    if sha256_hex(&rego) != hash {
        bail!("the pod's policy annotation does not hash to its ckb.dev/policy-sha256");
    }
    println!("  -> the hash of the injected policy is the one bound to the key");
    Ok(hash.to_string())
}

fn show_key(env: &Environment, name: &str) -> Result<()> {
    let dump = env.double.keys();
    let vault = &dump[vault_host()];
    let text = serde_json::to_string(vault)?;
    if !text.contains(name) {
        bail!("key {name} not found in the Key Vault double: {text}");
    }
    println!("Key Vault double, vault {}:", vault_host());
    println!("{}", serde_json::to_string_pretty(vault)?);
    Ok(())
}

async fn play_sidecar(env: &Environment, hostdata: &str, label: &str) -> Result<bool> {
    let client = env.double_client(&[vault_host(), authority_host()]);
    let trust = Trust::from_pem(&env.double.ca_pem())?;
    let vault = env.double_url(vault_host());
    let call = ReleaseCall {
        vault_url: &vault,
        key_name: "orders-key",
        version: None,
        bearer: RELEASE_KV_TOKEN,
        token: "",
        api_version: "7.4",
        enc: None,
    };
    println!("{label}: attest with hostdata {hostdata}, then POST /keys/orders-key/release");
    match release_for_pod(
        &client,
        &call,
        &env.double_url(authority_host()),
        authority_host(),
        hostdata,
        &trust,
    )
    .await
    {
        Ok(key) => {
            println!(
                "  RELEASED: {} key {} ({} bytes unwrapped with the runtime key)",
                key.kty,
                key.kid,
                key.key_bytes.len()
            );
            Ok(true)
        }
        Err(e) => {
            println!("  REFUSED: {e}");
            Ok(false)
        }
    }
}

/// Runs the demo.
pub async fn run(args: DemoArgs) -> Result<()> {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    banner(
        "starting: control plane, Key Vault + Attestation doubles, chart (development mode), operator",
    );
    let started = Instant::now();
    let env = Environment::start(EnvOptions::default()).await?;
    let cp = &env.cp;
    println!(
        "ready in {:.1}s: API server {} (RBAC on); operator running as system:serviceaccount:{NAMESPACE}:{SERVICE_ACCOUNT}; webhook {}",
        started.elapsed().as_secs_f64(),
        cp.server_url(),
        env.webhook_url()
    );
    // The environment stands in for AKS's confidential node pool: it created the RuntimeClass
    // kata-cc-isolation, without which the API server refuses the sample's pods.

    let result = async {
        banner("applying the samples");
        apply_samples(cp, &samples_dir(&args)).await?;

        banner("the binding");
        wait_binding_ready(&env, "payments", "orders-key").await?;
        kubectl_show(cp, &["get", "ckb", "-n", "payments", "-o", "wide"])?;
        kubectl_show(
            cp,
            &[
                "get",
                "ckb",
                "orders-key",
                "-n",
                "payments",
                "-o",
                "jsonpath={.status}",
            ],
        )?;
        println!();

        banner("the key and its release policy (in the Key Vault double)");
        show_key(&env, "orders-key")?;

        banner("the injected pod");
        let pod = injected_pod(cp, "payments").await?;
        let hash = show_pod(&pod)?;

        banner("the sidecar's part: release the key");
        if !play_sidecar(&env, &hash, "pod running the bound policy").await? {
            bail!("the release for the injected pod's policy was refused");
        }
        let altered = sha256_hex(b"package agent_policy\ndefault ExecProcessRequest := true\n");
        if play_sidecar(&env, &altered, "pod whose policy was altered").await? {
            bail!("the release for an altered policy succeeded");
        }
        Ok::<(), anyhow::Error>(())
    }
    .await;
    if let Err(e) = result {
        env.print_logs(30);
        return Err(e);
    }

    banner("environment");
    println!("export KUBECONFIG={}", cp.kubeconfig().display());
    println!("kubectl: {}", cp.bin_dir().join("kubectl").display());
    println!("operator log: {}", env.operator_log().display());
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
