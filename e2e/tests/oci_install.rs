//! Installing what a release publishes, from an OCI registry, as a user does.
//!
//! The image built by `scripts/image.sh build` (both platforms) and the packaged chart are pushed
//! to a local CNCF distribution registry; `helm install oci://127.0.0.1:<port>/...` installs the
//! chart on the local control plane; the test checks what was installed, pulls the image the
//! Deployment names back from the registry, unpacks it and runs its entrypoint as a local process
//! (there is no kubelet) with the Deployment's environment, and the demo binding becomes Ready
//! against the Key Vault double.
//!
//! Also here: the version-bump check (`scripts/check-version.py`) refuses disagreeing versions.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use ckb_crds::ConfidentialKeyBinding;
use ckb_doubles::{Config as DoubleConfig, KeyVaultDouble};
use ckb_e2e::cluster::{ControlPlane, free_ports, log_tail, repo_root};
use ckb_e2e::registry::{
    CHART_REPOSITORY, IMAGE_REPOSITORY, LocalRegistry, image_layout, release_version,
};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::Api;
use serde_json::Value;

const NAMESPACE: &str = "ckb-system";
const RELEASE: &str = "ckb-operator";
const DEMO_VAULT: &str = "https://demo.vault.azure.net";
/// The name the local process has as "pod" (the Deployment's `metadata.name` fieldRef).
const POD_NAME: &str = "ckb-operator-from-oci";

fn run(cmd: &mut Command, what: &str) -> Result<String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {what}"))?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if !out.status.success() {
        bail!("{what} failed ({}):\n{text}", out.status);
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The Deployment's container environment as the kubelet would give it to the process: literal
/// values, and the two fieldRefs the chart uses. Anything else fails the test (the local process
/// could not be started the way the manifest says).
fn container_env(deploy: &Deployment) -> Result<BTreeMap<String, String>> {
    let spec = deploy
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .context("the Deployment has no pod spec")?;
    ensure!(
        spec.containers.len() == 1,
        "expected one container, found {}",
        spec.containers.len()
    );
    let c = &spec.containers[0];
    ensure!(
        c.command.is_none() && c.args.is_none(),
        "the chart overrides the image's entrypoint ({:?} {:?}); the image's entrypoint is what runs",
        c.command,
        c.args
    );
    let mut env = BTreeMap::new();
    for e in c.env.iter().flatten() {
        let value = match (&e.value, &e.value_from) {
            (Some(v), None) => v.clone(),
            (None, Some(from)) => match from.field_ref.as_ref().map(|f| f.field_path.as_str()) {
                Some("metadata.namespace") => NAMESPACE.to_string(),
                Some("metadata.name") => POD_NAME.to_string(),
                other => bail!("{}: unsupported valueFrom {other:?}", e.name),
            },
            (None, None) => String::new(),
            (Some(_), Some(_)) => bail!("{}: both value and valueFrom", e.name),
        };
        env.insert(e.name.clone(), value);
    }
    Ok(env)
}

/// A process started from the unpacked image, killed (with its group) on drop.
struct LocalOperator {
    child: std::process::Child,
    log: PathBuf,
}

impl Drop for LocalOperator {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.child.id())])
            .stderr(Stdio::null())
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What the registry holds after publishing: the image index's digest and the image repository.
struct Published {
    digest: String,
    image_repo: String,
    chart_digest: String,
}

/// Step 1: pushes the built image and the packaged chart to the local registry, as the release
/// workflow does to ghcr.io, and checks it holds the built image for both platforms.
fn publish(
    registry: &LocalRegistry,
    layout: &Path,
    helm: &Path,
    version: &str,
) -> Result<Published> {
    let digest = registry.push_image(layout, IMAGE_REPOSITORY, version)?;
    let built =
        std::fs::read_to_string(layout.parent().context("layout dir")?.join("index-digest"))
            .context("the build's index-digest")?;
    assert_eq!(
        built.trim().rsplit('@').next(),
        Some(digest.as_str()),
        "the registry holds another image than the one scripts/image.sh built"
    );
    let chart_digest = registry.push_chart(
        helm,
        &repo_root().join("charts/ckb-operator"),
        CHART_REPOSITORY,
    )?;
    let image_repo = format!("{}/{IMAGE_REPOSITORY}", registry.host());
    // The index answers for both platforms.
    for arch in ["amd64", "arm64"] {
        let cfg: Value = serde_json::from_slice(&registry.crane(&[
            "config",
            "--platform",
            &format!("linux/{arch}"),
            &format!("{image_repo}@{digest}"),
        ])?)?;
        assert_eq!(cfg["architecture"], arch, "platform linux/{arch}: {cfg}");
    }
    Ok(Published {
        digest,
        image_repo,
        chart_digest,
    })
}

/// What the helm steps work with: the registry, helm, the control plane, the chart's `oci://`
/// reference and the release version.
struct Release<'a> {
    registry: &'a LocalRegistry,
    helm: &'a Path,
    cp: &'a ControlPlane,
    chart_ref: &'a str,
    version: &'a str,
}

impl Release<'_> {
    /// helm, logged in to the local registry, talking to the control plane.
    fn helm_on_the_cluster(&self) -> Command {
        let mut cmd = self.registry.helm_command(self.helm);
        cmd.env("KUBECONFIG", self.cp.kubeconfig());
        cmd
    }
}

/// Step 2: `helm install oci://...` of the pushed chart, pointed at the pushed image by digest.
fn helm_install(r: &Release, published: &Published) -> Result<()> {
    let install = run(
        r.helm_on_the_cluster()
            .args([
                "install",
                RELEASE,
                r.chart_ref,
                "--plain-http",
                "--version",
                r.version,
            ])
            .args(["--namespace", NAMESPACE, "--create-namespace"])
            .args([
                "--set",
                &format!("image.repository={}", published.image_repo),
            ])
            .args(["--set", &format!("image.digest={}", published.digest)])
            .args([
                "--set",
                "workloadIdentity.clientId=11111111-2222-3333-4444-555555555555",
            ])
            .args(["--set", &format!("keyVault.allowedVaults={{{DEMO_VAULT}}}")]),
        "helm install oci://",
    )?;
    println!("{install}");
    Ok(())
}

/// Step 3, from helm's side: the release is this version's chart, deployed, with its objects,
/// and the chart helm pulls from the registry is the pushed one.
fn check_helm_release(r: &Release, published: &Published) -> Result<()> {
    let list: Value = serde_json::from_str(&run(
        r.helm_on_the_cluster()
            .args(["list", "-n", NAMESPACE, "-o", "json"]),
        "helm list",
    )?)?;
    assert_eq!(list[0]["name"], RELEASE, "{list}");
    assert_eq!(
        list[0]["chart"],
        format!("ckb-operator-{}", r.version),
        "{list}"
    );
    assert_eq!(list[0]["app_version"], r.version, "{list}");
    assert_eq!(list[0]["status"], "deployed", "{list}");
    let manifest = run(
        r.helm_on_the_cluster()
            .args(["get", "manifest", RELEASE, "-n", NAMESPACE]),
        "helm get manifest",
    )?;
    for kind in [
        "kind: Deployment",
        "kind: ServiceAccount",
        "kind: ClusterRole",
        "kind: MutatingWebhookConfiguration",
        "kind: Service",
    ] {
        assert!(
            manifest.contains(kind),
            "the release has no {kind}:\n{manifest}"
        );
    }
    // helm pulled the chart from the registry: the pulled chart's digest is the pushed one.
    let show = run(
        r.registry.helm_command(r.helm).args([
            "show",
            "chart",
            r.chart_ref,
            "--plain-http",
            "--version",
            r.version,
        ]),
        "helm show chart",
    )?;
    assert!(
        show.contains(&format!("appVersion: {}", r.version)),
        "{show}"
    );
    assert!(!published.chart_digest.is_empty());
    Ok(())
}

/// Step 3, from the cluster's side: the CRD is installed and the Deployment runs the pushed image
/// by digest. Returns the Deployment, its image and the pod's `runAsUser` if it sets one.
async fn installed_deployment(
    cp: &ControlPlane,
    published: &Published,
) -> Result<(Deployment, String, Option<i64>)> {
    let crds: Api<CustomResourceDefinition> = Api::all(cp.client());
    let crd = crds
        .get("confidentialkeybindings.ckb.dev")
        .await
        .context("the chart's CRD is not installed")?;
    assert_eq!(crd.spec.group, "ckb.dev");
    let deploys: Api<Deployment> = Api::namespaced(cp.client(), NAMESPACE);
    let deploy = deploys.get(RELEASE).await.context("the Deployment")?;
    let pod = deploy
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .context("pod spec")?;
    let image = pod.containers[0].image.clone().unwrap_or_default();
    assert_eq!(
        image,
        format!("{}@{}", published.image_repo, published.digest),
        "the Deployment does not run the pushed image by digest"
    );
    let run_as = pod
        .security_context
        .as_ref()
        .and_then(|s| s.run_as_user)
        .or_else(|| {
            pod.containers[0]
                .security_context
                .as_ref()
                .and_then(|s| s.run_as_user)
        });
    Ok((deploy, image, run_as))
}

/// The unpacked image: its root filesystem, the binary its entrypoint names and the entrypoint.
struct Unpacked {
    root: PathBuf,
    binary: PathBuf,
    entrypoint: Vec<String>,
}

/// Step 4: pulls `image` back as a node would (linux/amd64), unpacks it under `work` and checks
/// its user (the chart's `runAsUser` if set) and that its binary is this version.
fn pull_and_unpack(
    registry: &LocalRegistry,
    image: &str,
    work: &Path,
    run_as: Option<i64>,
    version: &str,
) -> Result<Unpacked> {
    let root = work.join("rootfs");
    std::fs::create_dir_all(&root)?;
    let fs_tar = work.join("fs.tar");
    registry.crane(&[
        "export",
        "--platform",
        "linux/amd64",
        image,
        &fs_tar.display().to_string(),
    ])?;
    run(
        Command::new("tar")
            .arg("-xf")
            .arg(&fs_tar)
            .arg("-C")
            .arg(&root),
        "unpacking the image",
    )?;
    let config: Value = serde_json::from_slice(&registry.crane(&[
        "config",
        "--platform",
        "linux/amd64",
        image,
    ])?)?;
    let user = config["config"]["User"].as_str().unwrap_or_default();
    assert_eq!(user, "65532:65532", "image user");
    if let Some(uid) = run_as {
        assert_eq!(
            user.split(':').next(),
            Some(uid.to_string().as_str()),
            "the chart's runAsUser differs from the image's user"
        );
    }
    let entrypoint: Vec<String> = config["config"]["Entrypoint"]
        .as_array()
        .context("the image has no entrypoint")?
        .iter()
        .filter_map(|v| v.as_str().map(str::to_string))
        .collect();
    ensure!(!entrypoint.is_empty(), "empty entrypoint");
    let binary = root.join(entrypoint[0].trim_start_matches('/'));
    let out = run(
        Command::new(&binary).arg("--version"),
        "the image's binary --version",
    )?;
    assert_eq!(out.trim(), format!("ckb-operator {version}"));
    Ok(Unpacked {
        root,
        binary,
        entrypoint,
    })
}

/// Step 5: runs the image's entrypoint as the Deployment says (no kubelet), with the container's
/// environment. Only what a pod gets from its node is replaced: the ServiceAccount token (a
/// kubeconfig instead of the in-cluster mount), free loopback ports for the two listeners (the
/// manifest's 0.0.0.0:8080/9443 may be taken on a shared machine), and Key Vault is the double
/// (static token, its CA, vault hosts resolved to it) instead of Azure with workload identity.
/// Returns the process and its metrics port.
async fn start_as_the_deployment_says(
    cp: &ControlPlane,
    deploy: &Deployment,
    double: &KeyVaultDouble,
    work: &Path,
    image: &Unpacked,
) -> Result<(LocalOperator, u16)> {
    let ca_file = work.join("doubles-ca.pem");
    std::fs::write(&ca_file, double.ca_pem())?;
    let token_file = work.join("kv-token");
    std::fs::write(&token_file, "operator-token")?;
    let token = cp
        .token_for_service_account(NAMESPACE, RELEASE, Duration::from_secs(3600))
        .await
        .context("token of the chart's ServiceAccount")?;
    let kubeconfig = cp.kubeconfig_for_token(
        &format!("system:serviceaccount:{NAMESPACE}:{RELEASE}"),
        &token,
    )?;
    let mut env = container_env(deploy)?;
    assert_eq!(
        env.get("CKB_ALLOWED_VAULTS").map(String::as_str),
        Some(DEMO_VAULT),
        "the install's allowed vaults"
    );
    let [metrics_port, webhook_port] = free_ports::<2>()?;
    let addr = double.addr();
    for (k, v) in [
        ("KUBECONFIG", kubeconfig.display().to_string()),
        ("CKB_METRICS_ADDR", format!("127.0.0.1:{metrics_port}")),
        ("CKB_WEBHOOK_ADDR", format!("127.0.0.1:{webhook_port}")),
        ("CKB_KV_CREDENTIAL", "static-token".to_string()),
        ("CKB_KV_STATIC_TOKEN_FILE", token_file.display().to_string()),
        ("CKB_KV_CA_FILE", ca_file.display().to_string()),
        (
            "CKB_KV_RESOLVE",
            format!(
                ".vault.azure.net={addr},.managedhsm.azure.net={addr},.attest.azure.net={addr}"
            ),
        ),
    ] {
        env.insert(k.to_string(), v);
    }
    let log = work.join("operator.log");
    let logf = std::fs::File::create(&log)?;
    let child = {
        use std::os::unix::process::CommandExt as _;
        Command::new(&image.binary)
            .args(&image.entrypoint[1..])
            .env_clear()
            .envs(&env)
            .current_dir(&image.root)
            .stdin(Stdio::null())
            .stdout(logf.try_clone()?)
            .stderr(logf)
            .process_group(0)
            .spawn()
            .with_context(|| format!("starting {}", image.binary.display()))?
    };
    Ok((LocalOperator { child, log }, metrics_port))
}

/// Waits until the operator's `/readyz` answers 200, failing with its log if it exits or takes
/// over 120 s.
async fn wait_until_ready(operator: &mut LocalOperator, metrics_port: u16) -> Result<()> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()?;
    let url = format!("http://127.0.0.1:{metrics_port}/readyz");
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if let Ok(Some(status)) = operator.child.try_wait() {
            bail!(
                "the operator from the image exited ({status}):\n{}",
                log_tail(&operator.log, 60)
            );
        }
        if let Ok(r) = http.get(&url).send().await
            && r.status().is_success()
        {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!(
                "the operator from the image was not ready after 120 s:\n{}",
                log_tail(&operator.log, 60)
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Step 6: applies the samples (namespace, policy ConfigMap, binding) and waits until the demo
/// binding is Ready for its current generation, failing with the operator's log after 90 s.
async fn apply_demo_binding_and_wait_ready(
    cp: &ControlPlane,
    operator: &LocalOperator,
) -> Result<()> {
    for f in [
        "00-namespace.yaml",
        "10-policy-configmap.yaml",
        "20-binding.yaml",
    ] {
        let out = cp.kubectl(["apply", "-f", &sample(f).display().to_string()])?;
        ensure!(
            out.status.success(),
            "kubectl apply {f}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let bindings: Api<ConfidentialKeyBinding> = Api::namespaced(cp.client(), "payments");
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut last = String::new();
    loop {
        if let Some(b) = bindings.get_opt("orders-key").await? {
            let ready = b
                .status
                .as_ref()
                .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Ready"));
            if let Some(c) = ready {
                if c.status == "True"
                    && b.status.as_ref().and_then(|s| s.observed_generation)
                        == b.metadata.generation
                {
                    return Ok(());
                }
                last = format!("Ready={} {}: {}", c.status, c.reason, c.message);
            }
        }
        if Instant::now() >= deadline {
            bail!(
                "the demo binding was not Ready after 90 s ({last}); operator log:\n{}",
                log_tail(&operator.log, 60)
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn helm_install_from_oci_and_the_image_binary_reaches_ready_with_the_demo_binding()
-> Result<()> {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let version = release_version();
    let layout = image_layout()?;
    let helm = ckb_e2e::suite_env::helm_binary();

    let registry = LocalRegistry::start().await?;
    let published = publish(&registry, &layout, &helm, version)?;
    let cp = ControlPlane::start().await?;
    let chart_ref = format!("oci://{}/{CHART_REPOSITORY}/ckb-operator", registry.host());
    let release = Release {
        registry: &registry,
        helm: &helm,
        cp: &cp,
        chart_ref: &chart_ref,
        version,
    };
    helm_install(&release, &published)?;
    check_helm_release(&release, &published)?;
    let (deploy, image, run_as) = installed_deployment(&cp, &published).await?;

    let work = tempfile::tempdir()?;
    let unpacked = pull_and_unpack(&registry, &image, work.path(), run_as, version)?;
    let double = KeyVaultDouble::start(DoubleConfig::default())
        .await
        .context("Key Vault and Attestation doubles")?;
    let (mut operator, metrics_port) =
        start_as_the_deployment_says(&cp, &deploy, &double, work.path(), &unpacked).await?;
    wait_until_ready(&mut operator, metrics_port).await?;

    apply_demo_binding_and_wait_ready(&cp, &operator).await?;
    // The demo binding's key exists in the (double's) vault.
    let keys = double.keys();
    assert!(
        keys.pointer("/demo.vault.azure.net/keys/orders-key")
            .and_then(Value::as_array)
            .is_some_and(|v| !v.is_empty()),
        "the key is not in the vault: {keys}"
    );
    drop(operator);
    cp.stop();
    Ok(())
}

fn sample(name: &str) -> PathBuf {
    repo_root().join("samples").join(name)
}

/// Copies what scripts/check-version.py reads into a scratch root.
fn version_files(root: &Path) -> Result<()> {
    let files = [
        "Cargo.toml",
        "Cargo.lock",
        "crds/Cargo.toml",
        "operator/Cargo.toml",
        "e2e/Cargo.toml",
        "e2e/doubles/Cargo.toml",
        "charts/ckb-operator/Chart.yaml",
        "charts/ckb-operator/values.yaml",
        "charts/ckb-operator/README.md",
        "CHANGELOG.md",
        "README.md",
        ".github/workflows/release.yml",
    ];
    for f in files {
        let dest = root.join(f);
        std::fs::create_dir_all(dest.parent().context("parent")?)?;
        std::fs::copy(repo_root().join(f), &dest).with_context(|| format!("copying {f}"))?;
    }
    Ok(())
}

fn check_version(root: &Path, extra: &[&str]) -> Result<(bool, String)> {
    let out = Command::new("python3")
        .arg(repo_root().join("scripts/check-version.py"))
        .args(extra)
        .arg(root)
        .output()
        .context("running scripts/check-version.py")?;
    Ok((
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    ))
}

fn edit(root: &Path, file: &str, from: &str, to: &str) -> Result<()> {
    let p = root.join(file);
    let text = std::fs::read_to_string(&p)?;
    ensure!(text.contains(from), "{file} has no {from:?}");
    std::fs::write(&p, text.replacen(from, to, 1))?;
    Ok(())
}

#[test]
fn version_check_passes_on_the_repository_and_refuses_each_disagreement() -> Result<()> {
    let v = release_version();
    let (ok, out) = check_version(&repo_root(), &["--tag", &format!("v{v}")])?;
    assert!(ok, "the repository's versions disagree:\n{out}");

    let bumped = "9.9.9";
    let cases: [(&str, &str, String, String, &str); 6] = [
        (
            "Chart.yaml version",
            "charts/ckb-operator/Chart.yaml",
            format!("version: {v}"),
            format!("version: {bumped}"),
            "Chart.yaml: version",
        ),
        (
            "Chart.yaml appVersion",
            "charts/ckb-operator/Chart.yaml",
            format!("appVersion: \"{v}\""),
            format!("appVersion: \"{bumped}\""),
            "Chart.yaml: appVersion",
        ),
        (
            "values.yaml image tag",
            "charts/ckb-operator/values.yaml",
            "tag: \"\"".to_string(),
            format!("tag: \"{bumped}\""),
            "image.tag",
        ),
        (
            "crate version",
            "Cargo.toml",
            format!("version = \"{v}\""),
            format!("version = \"{bumped}\""),
            "Chart.yaml",
        ),
        (
            "README install version",
            "README.md",
            format!("--version {v}"),
            format!("--version {bumped}"),
            "README.md",
        ),
        (
            "CHANGELOG section",
            "CHANGELOG.md",
            format!("## [{v}]"),
            format!("## [{bumped}]"),
            "CHANGELOG.md",
        ),
    ];
    for (what, file, from, to, named) in cases {
        let dir = tempfile::tempdir()?;
        version_files(dir.path())?;
        edit(dir.path(), file, &from, &to)?;
        let (ok, out) = check_version(dir.path(), &[])?;
        assert!(!ok, "a different {what} passed the version check:\n{out}");
        assert!(
            out.contains(named),
            "{what}: the failure does not name {named}:\n{out}"
        );
    }
    // A tag that is not v<version>.
    let (ok, out) = check_version(&repo_root(), &["--tag", &format!("v{bumped}")])?;
    assert!(!ok && out.contains("git tag"), "{out}");
    Ok(())
}
