//! The README's shell snippets, run as a user would run them.
//!
//! Every ```sh block of README.md belongs to exactly one of these groups, and each group is run:
//! - the two top-level commands (`scripts/demo.sh --once`, `scripts/test.sh`): `scripts/test.sh` is
//!   what CI runs (`.ci/run`), and it runs the demo command itself as one of its steps; the test
//!   below checks both facts, so the README cannot drift from what is run;
//! - "Install on AKS": the `helm install oci://ghcr.io/...`, run on a fresh local control plane
//!   with ghcr.io replaced by a local registry holding the same chart (`helm package`, `helm push`);
//! - "Walk-through": every block in order, in a scratch directory, against the full local
//!   environment (control plane, doubles, chart, operator). genpolicy needs registry access and an
//!   AKS node image, so the test stands in for it by writing the sample policy to `policy.rego`,
//!   the file the README tells the user genpolicy produces.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use ckb_e2e::cluster::{ControlPlane, repo_root};
use ckb_e2e::registry::{
    CHART_REPOSITORY, IMAGE_REPOSITORY, LocalRegistry, PUBLIC_REGISTRY, release_version,
};
use ckb_e2e::suite_env::{DEMO_VAULT, EnvOptions, Environment, helm_binary, operator_binary};
use sha2::{Digest, Sha256};

/// A fenced ```sh block and the `##` section it is in.
#[derive(Debug, Clone)]
struct Snippet {
    section: String,
    code: String,
}

fn readme_snippets() -> Vec<Snippet> {
    let text = std::fs::read_to_string(repo_root().join("README.md")).expect("README.md");
    let mut out = Vec::new();
    let mut section = String::new();
    let mut current: Option<String> = None;
    for line in text.lines() {
        if let Some(code) = current.as_mut() {
            if line.trim_start().starts_with("```") {
                out.push(Snippet {
                    section: section.clone(),
                    code: current.take().unwrap_or_default(),
                });
            } else {
                code.push_str(line);
                code.push('\n');
            }
        } else if let Some(h) = line.strip_prefix("## ") {
            section = h.trim().to_string();
        } else if line.trim_start().starts_with("```") {
            let lang = line.trim_start().trim_start_matches('`').trim();
            assert!(
                lang == "sh",
                "README code blocks must be ```sh (run by this test); found ```{lang} in {section:?}"
            );
            current = Some(String::new());
        }
    }
    assert!(current.is_none(), "README has an unclosed code block");
    out
}

fn group(snippets: &[Snippet], section: &str) -> Vec<String> {
    snippets
        .iter()
        .filter(|s| s.section == section)
        .map(|s| s.code.clone())
        .collect()
}

const TRY_IT: &str = "Try it, test it";
const INSTALL: &str = "Install on AKS";
const WALK_THROUGH: &str = "Walk-through: from a binding to a released key";

#[test]
fn every_readme_snippet_is_in_a_group_that_is_run() {
    let snippets = readme_snippets();
    assert!(!snippets.is_empty(), "README has no ```sh blocks");
    for s in &snippets {
        assert!(
            [TRY_IT, INSTALL, WALK_THROUGH].contains(&s.section.as_str()),
            "README snippet in section {:?} is run by no test:\n{}",
            s.section,
            s.code
        );
    }
    let top = group(&snippets, TRY_IT);
    assert_eq!(
        top,
        vec![
            "scripts/demo.sh --once\n".to_string(),
            "scripts/test.sh\n".to_string()
        ],
        "the README's two commands changed: update .ci/run, scripts/test.sh and this test"
    );
    let ci = std::fs::read_to_string(repo_root().join(".ci/run")).expect(".ci/run");
    assert!(
        ci.lines().any(|l| l.trim() == "exec bash scripts/test.sh"),
        ".ci/run must run the README's test command (scripts/test.sh)"
    );
    let test_sh = std::fs::read_to_string(repo_root().join("scripts/test.sh")).expect("test.sh");
    assert!(
        test_sh
            .lines()
            .any(|l| l.trim() == "bash scripts/demo.sh --once"),
        "scripts/test.sh must run the README's demo command (scripts/demo.sh --once)"
    );
    assert!(!group(&snippets, INSTALL).is_empty());
    assert!(group(&snippets, WALK_THROUGH).len() >= 5);
}

/// PATH with the tools the README assumes: kubectl, helm, ckb-operator.
fn tool_path(cp: &ControlPlane) -> Result<String> {
    let operator = operator_binary()?;
    let mut dirs: Vec<PathBuf> = vec![
        operator.parent().context("operator dir")?.to_path_buf(),
        cp.bin_dir().to_path_buf(),
        helm_binary()
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default(),
    ];
    dirs.retain(|d| !d.as_os_str().is_empty());
    let mut path = std::env::join_paths(dirs)?
        .into_string()
        .map_err(|_| anyhow::anyhow!("path"))?;
    if let Ok(rest) = std::env::var("PATH") {
        path = format!("{path}:{rest}");
    }
    Ok(path)
}

/// Runs one snippet with bash (`set -euo pipefail`), returning its stdout.
fn run_snippet(code: &str, dir: &Path, env: &BTreeMap<&str, String>) -> Result<String> {
    let out = Command::new("bash")
        .arg("-c")
        .arg(format!("set -euo pipefail\n{code}"))
        .current_dir(dir)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .output()
        .context("running bash")?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("$ {}{stdout}{stderr}", code.trim_end());
    if !out.status.success() {
        bail!(
            "README snippet failed ({}):\n{code}\nstdout:\n{stdout}\nstderr:\n{stderr}",
            out.status
        );
    }
    Ok(stdout)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readme_install_on_aks_helm_install_succeeds() -> Result<()> {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let snippets = readme_snippets();
    // The README installs the chart the release publishes on ghcr.io: the same chart, pushed to a
    // local registry; the snippets are run with ghcr.io replaced by it. (Nothing pulls the image:
    // there is no kubelet. e2e/tests/oci_install.rs pushes the image and runs it.)
    let version = release_version();
    let registry = LocalRegistry::start().await?;
    registry.push_chart(
        &helm_binary(),
        &repo_root().join("charts/ckb-operator"),
        CHART_REPOSITORY,
    )?;
    let cp = ControlPlane::start().await?;
    let vault = "https://contoso.vault.azure.net";
    let env = BTreeMap::from([
        ("KUBECONFIG", cp.kubeconfig().display().to_string()),
        ("PATH", tool_path(&cp)?),
        (
            "OPERATOR_CLIENT_ID",
            "11111111-2222-3333-4444-555555555555".to_string(),
        ),
        ("VAULT_URL", vault.to_string()),
    ]);
    let work = tempfile::tempdir()?;
    for code in group(&snippets, INSTALL) {
        let code = registry.rewrite(&code);
        tokio::task::block_in_place(|| run_snippet(&code, work.path(), &env))?;
    }
    // The chart came from the registry, at the README's version.
    let list = std::process::Command::new(helm_binary())
        .env("KUBECONFIG", cp.kubeconfig())
        .args(["list", "-n", "ckb-system", "-o", "json"])
        .output()?;
    let list = String::from_utf8_lossy(&list.stdout);
    assert!(
        list.contains(&format!("\"chart\":\"ckb-operator-{version}\"")),
        "the README's install did not install chart {version}: {list}"
    );
    // The chart's default image is the one the release publishes.
    let image = cp.kubectl([
        "get",
        "deployment",
        "-n",
        "ckb-system",
        "-o",
        "jsonpath={.items[0].spec.template.spec.containers[0].image}",
    ])?;
    assert_eq!(
        String::from_utf8_lossy(&image.stdout),
        format!("{PUBLIC_REGISTRY}/{IMAGE_REPOSITORY}:{version}"),
        "the chart's default image"
    );
    // What the install must have produced: the operator told which vault it may use, as the
    // workload identity named.
    let out = cp.kubectl([
        "get",
        "deployment",
        "-n",
        "ckb-system",
        "-o",
        "jsonpath={.items[0].spec.template.spec.containers[0].env}",
    ])?;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(vault),
        "CKB_ALLOWED_VAULTS not set from the README's install: {text}"
    );
    let sa = cp.kubectl(["get", "serviceaccount", "-n", "ckb-system", "-o", "yaml"])?;
    assert!(
        String::from_utf8_lossy(&sa.stdout).contains("11111111-2222-3333-4444-555555555555"),
        "the operator's ServiceAccount does not carry the workload identity client id"
    );
    cp.stop();
    Ok(())
}

// NB: multi-threaded, and every snippet runs in `block_in_place`: the Key Vault and Attestation
// doubles are served by this test's own runtime while the snippets block on child processes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readme_walk_through_runs_against_the_local_environment() -> Result<()> {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let snippets = group(&readme_snippets(), WALK_THROUGH);
    let env = Environment::start(EnvOptions::default()).await?;
    let work = tempfile::tempdir()?;
    std::os::unix::fs::symlink(repo_root().join("samples"), work.path().join("samples"))?;
    // Stand-in for genpolicy (see the module docs): the sample's policy text.
    let policy = sample_policy()?;
    std::fs::write(work.path().join("policy.rego"), &policy)?;
    let expected_hash = hex::encode(Sha256::digest(policy.as_bytes()));

    // The environment stands in for AKS's confidential node pool (the RuntimeClass
    // kata-cc-isolation, without which the API server refuses the workload's pods).

    // The README's `VAULT_URL`: the vault the environment's operator may use.
    let vars = BTreeMap::from([
        ("KUBECONFIG", env.cp.kubeconfig().display().to_string()),
        ("PATH", tool_path(&env.cp)?),
        ("VAULT_URL", DEMO_VAULT.to_string()),
    ]);
    let mut outputs = Vec::new();
    for code in &snippets {
        match tokio::task::block_in_place(|| run_snippet(code, work.path(), &vars)) {
            Ok(out) => outputs.push(out),
            Err(e) => {
                env.print_logs(80);
                return Err(e);
            }
        }
    }
    let all = outputs.join("");
    assert!(
        all.contains(&expected_hash),
        "the walk-through never printed the policy hash {expected_hash}:\n{all}"
    );
    // The rendered workload (for genpolicy) has the sidecar and no policy annotation yet.
    let rendered = std::fs::read_to_string(work.path().join("orders.rendered.yaml"))?;
    assert!(
        rendered.contains("name: skr"),
        "render did not add the sidecar:\n{rendered}"
    );
    assert!(!rendered.contains("io.katacontainers.config.agent.policy"));
    // The pod's injected hash (last snippet) is the bound one.
    let last = outputs.last().cloned().unwrap_or_default();
    assert_eq!(
        last.lines().last().map(str::trim),
        Some(expected_hash.as_str()),
        "the pod does not carry the bound policy hash"
    );
    Ok(())
}

/// The Rego text of samples/10-policy-configmap.yaml.
fn sample_policy() -> Result<String> {
    let text = std::fs::read_to_string(repo_root().join("samples/10-policy-configmap.yaml"))?;
    let cm: k8s_openapi::api::core::v1::ConfigMap =
        serde_json::from_value(serde_json::to_value(serde_saphyr_value(&text)?)?)?;
    cm.data
        .and_then(|d| d.get("policy.rego").cloned())
        .context("samples/10-policy-configmap.yaml has no policy.rego")
}

fn serde_saphyr_value(text: &str) -> Result<serde_json::Value> {
    serde_saphyr::from_str(text).context("parsing the sample ConfigMap")
}
