//! GitOps and day-2 operations end to end, on a real control plane:
//!
//! - what Flux and Argo CD show for live bindings: the kstatus library (`sigs.k8s.io/cli-utils`,
//!   what Flux's health checks use) and the Argo CD health script run in gopher-lua (the
//!   interpreter Argo CD embeds), both built from their Go modules into `ckb-gitops-check` by
//!   `e2e/scripts/build-gitops-check.sh`, on bindings read from the API server: Ready, still
//!   reconciling, not yet observed, and stalled on a vault outside the allow-list. The script is
//!   run twice: as the repository's file (`charts/ckb-operator/files/argocd-health.lua`) and as
//!   the chart renders it into its ConfigMap;
//! - a Deployment applied before its binding: the binding counts its pods without the sidecar,
//!   says so in a Warning event naming them, and the count returns to 0 after a rollout restart;
//! - `ckb-operator doctor` on one broken case per check it is known for (wrong hash, missing
//!   workload-identity label, not injected, Pod Security baseline, binding not Ready) and on a
//!   healthy pod.
//!
//! Run one at a time: `cargo test -p ckb-e2e --test gitops_e2e -- --test-threads=1`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context as _, Result, bail, ensure};
use ckb_crds::ConfidentialKeyBinding;
use ckb_crds::conditions::{reasons, types};
use ckb_e2e::cluster::repo_root;
use ckb_e2e::suite_env::{
    BindingManifest, EnvOptions, Environment, NAMESPACE, RELEASE, operator_binary,
    policy_config_map_yaml, wait_for,
};
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use k8s_openapi::api::events::v1::Event;
use kube::Api;
use kube::api::ListParams;
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(90);
/// The operator scans for pods that missed injection every 30 s: two scans and a reconcile.
const SCAN_WAIT: Duration = Duration::from_secs(100);
/// The argocd-cm key of the health check.
const ARGOCD_KEY: &str = "resource.customizations.health.ckb.dev_ConfidentialKeyBinding";
/// The client id on the apps' ServiceAccount (`azure.workload.identity/client-id`).
const APP_CLIENT_ID: &str = "0d3a5e7c-0000-4000-8000-0000000000b2";

fn policy_rego(variant: &str) -> String {
    format!(
        "package agent_policy\n\n# gitops e2e {variant}\ndefault CreateContainerRequest := true\n"
    )
}

/// The apps' ServiceAccount, federated for workload identity.
fn service_account_yaml(ns: &str) -> String {
    format!(
        "apiVersion: v1\nkind: ServiceAccount\nmetadata:\n  name: apps\n  namespace: {ns}\n  \
         annotations:\n    azure.workload.identity/client-id: {APP_CLIENT_ID}\n"
    )
}

/// A confidential Deployment of `replicas` pods `app=<app>` (opted in to workload identity), that
/// replaces its pods all at once on a restart: without a kubelet no pod ever becomes Ready, so a
/// rolling update would keep the old ones.
fn deployment_yaml(ns: &str, app: &str, replicas: u32) -> String {
    format!(
        r#"apiVersion: apps/v1
kind: Deployment
metadata:
  name: {app}
  namespace: {ns}
spec:
  replicas: {replicas}
  strategy:
    type: Recreate
  selector:
    matchLabels:
      app: {app}
  template:
    metadata:
      labels:
        app: {app}
        azure.workload.identity/use: "true"
    spec:
      runtimeClassName: kata-cc-isolation
      serviceAccountName: apps
      containers:
        - name: app
          image: registry.example/app:1.0
"#
    )
}

/// A confidential pod `app=<app>` running as ServiceAccount `apps`. With `wi`, it is labelled for
/// workload identity and its app container carries what the Azure Workload Identity webhook writes
/// (variables, projected token volume and mount): the shape the webhook's own suite
/// (`workload_identity_e2e`) produces with the real AWI, which needs a fixed port this suite must
/// not take.
fn pod_json(ns: &str, name: &str, app: &str, wi: bool) -> Value {
    let mut pod = json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": ns, "labels": {"app": app}},
        "spec": {
            "runtimeClassName": "kata-cc-isolation",
            "serviceAccountName": "apps",
            "containers": [{"name": "app", "image": "registry.example/app:1.0"}],
        },
    });
    if wi {
        pod["metadata"]["labels"]["azure.workload.identity/use"] = json!("true");
        pod["spec"]["containers"][0]["env"] = json!([
            {"name": "AZURE_CLIENT_ID", "value": APP_CLIENT_ID},
            {"name": "AZURE_TENANT_ID", "value": "72f988bf-86f1-41af-91ab-2d7cd011db47"},
            {"name": "AZURE_FEDERATED_TOKEN_FILE",
             "value": "/var/run/secrets/azure/tokens/azure-identity-token"},
            {"name": "AZURE_AUTHORITY_HOST", "value": "https://login.microsoftonline.com/"},
        ]);
        pod["spec"]["containers"][0]["volumeMounts"] = json!([{
            "name": "azure-identity-token",
            "mountPath": "/var/run/secrets/azure/tokens",
            "readOnly": true,
        }]);
        pod["spec"]["volumes"] = json!([{
            "name": "azure-identity-token",
            "projected": {"sources": [{"serviceAccountToken": {
                "audience": "api://AzureADTokenExchange",
                "expirationSeconds": 3600,
                "path": "azure-identity-token",
            }}]},
        }]);
    }
    pod
}

fn injected(pod: &Pod) -> bool {
    let labelled = pod
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get("ckb.dev/injected"))
        .is_some_and(|v| v == "true");
    let sidecar = pod
        .spec
        .as_ref()
        .is_some_and(|s| s.containers.iter().any(|c| c.name == "skr"));
    labelled && sidecar
}

// ---------------------------------------------------------------------------------------------
// The health checks GitOps tools run

/// `ckb-gitops-check`: `$CKB_GITOPS_CHECK_BIN`, else the one `e2e/scripts/build-gitops-check.sh`
/// built (the test command builds it first; never built here).
fn gitops_check_binary() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("CKB_GITOPS_CHECK_BIN") {
        return Ok(PathBuf::from(p));
    }
    let out = Command::new("bash")
        .arg(repo_root().join("e2e/scripts/build-gitops-check.sh"))
        .arg("--where")
        .output()
        .context("running e2e/scripts/build-gitops-check.sh --where")?;
    let path = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    if !out.status.success() || !path.is_file() {
        bail!(
            "ckb-gitops-check is not built: run `bash e2e/scripts/build-gitops-check.sh` \
             (scripts/test.sh does) or set CKB_GITOPS_CHECK_BIN"
        );
    }
    Ok(path)
}

/// A verdict: `(status, message)`.
type Verdict = (String, String);

/// Runs `ckb-gitops-check <args>` on `object`.
fn check(bin: &Path, args: &[&str], object: &Value) -> Result<Verdict> {
    use std::io::Write as _;
    let mut child = Command::new(bin)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("running {}", bin.display()))?;
    child
        .stdin
        .take()
        .context("stdin")?
        .write_all(object.to_string().as_bytes())?;
    let out = child.wait_with_output()?;
    ensure!(
        out.status.success(),
        "ckb-gitops-check {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout)?;
    Ok((
        v["status"].as_str().unwrap_or_default().to_string(),
        v["message"].as_str().unwrap_or_default().to_string(),
    ))
}

/// The three tools' verdicts on one live object.
struct Verdicts {
    kstatus: Verdict,
    argo_source: Verdict,
    argo_chart: Verdict,
}

struct Checker {
    bin: PathBuf,
    source_script: PathBuf,
    chart_script: PathBuf,
}

impl Checker {
    /// The binding as a GitOps tool reads it (`kubectl get -o json`).
    fn live(env: &Environment, ns: &str, name: &str) -> Result<Value> {
        let out = env.cp.kubectl([
            "get",
            "confidentialkeybinding",
            name,
            "-n",
            ns,
            "-o",
            "json",
        ])?;
        ensure!(
            out.status.success(),
            "kubectl get: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(serde_json::from_slice(&out.stdout)?)
    }

    fn verdicts(&self, object: &Value) -> Result<Verdicts> {
        let source = self.source_script.display().to_string();
        let chart = self.chart_script.display().to_string();
        Ok(Verdicts {
            kstatus: check(&self.bin, &["kstatus"], object)?,
            argo_source: check(&self.bin, &["lua", &source], object)?,
            argo_chart: check(&self.bin, &["lua", &chart], object)?,
        })
    }

    /// Waits until the live binding reads `kstatus` and `argo` (status strings), then checks that
    /// the rendered script and the repository's file say the same; returns the verdicts.
    async fn expect(
        &self,
        env: &Environment,
        ns: &str,
        name: &str,
        kstatus: &str,
        argo: &str,
    ) -> Result<Verdicts> {
        let what = format!("{ns}/{name}: kstatus {kstatus}, Argo CD {argo}");
        let v = wait_for(WAIT, &what, || async {
            let object = Self::live(env, ns, name)?;
            let v = self.verdicts(&object)?;
            if v.kstatus.0 == kstatus && v.argo_source.0 == argo {
                Ok(Some(v))
            } else {
                bail!(
                    "kstatus {:?}, Argo CD {:?} on {}",
                    v.kstatus,
                    v.argo_source,
                    object["status"]
                )
            }
        })
        .await?;
        ensure!(
            v.argo_chart == v.argo_source,
            "{what}: the chart's rendered script says {:?}, its files/argocd-health.lua {:?}",
            v.argo_chart,
            v.argo_source
        );
        Ok(v)
    }
}

/// Runs the one ```sh block of docs/gitops.md (the `kubectl get configmap` of the chart's health
/// check) as the admin; returns its standard output.
fn run_docs_snippet(env: &Environment) -> Result<String> {
    let doc = std::fs::read_to_string(repo_root().join("docs/gitops.md"))?;
    let blocks: Vec<&str> = doc
        .split("```sh\n")
        .skip(1)
        .filter_map(|b| b.split("```").next())
        .collect();
    ensure!(
        blocks.len() == 1,
        "docs/gitops.md has {} sh blocks",
        blocks.len()
    );
    let kubectl_dir = env.cp.kubectl_command().get_program().to_owned();
    let path = std::env::join_paths(
        Path::new(&kubectl_dir)
            .parent()
            .into_iter()
            .map(Path::to_path_buf)
            .chain(std::env::split_paths(
                &std::env::var_os("PATH").unwrap_or_default(),
            )),
    )?;
    let out = Command::new("bash")
        .args(["-euo", "pipefail", "-c", blocks[0]])
        .env("KUBECONFIG", env.cp.kubeconfig())
        .env("PATH", path)
        .stdin(Stdio::null())
        .output()?;
    ensure!(
        out.status.success(),
        "the docs/gitops.md snippet failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8(out.stdout)?)
}

/// The Argo CD health script the chart rendered, as a user extracts it for argocd-cm: the same
/// as the chart's files/argocd-health.lua and as what the docs/gitops.md command prints. Returns a checker
/// running kstatus and both scripts.
async fn checker_of_the_chart_s_script(env: &Environment, bin: PathBuf) -> Result<Checker> {
    // The snippet the chart rendered, as a user extracts it for argocd-cm.
    let cm = Api::<ConfigMap>::namespaced(env.cp.client(), NAMESPACE)
        .get(&format!("{RELEASE}-argocd-health"))
        .await
        .context("the chart's Argo CD health ConfigMap")?;
    let rendered = cm
        .data
        .and_then(|d| d.get(ARGOCD_KEY).cloned())
        .context("the argocd-cm key in the chart's ConfigMap")?;
    let source_script = repo_root().join("charts/ckb-operator/files/argocd-health.lua");
    assert_eq!(
        rendered,
        std::fs::read_to_string(&source_script)?,
        "the chart renders another script than its files/argocd-health.lua"
    );
    // The command docs/gitops.md gives to extract it prints the same script.
    let extracted = run_docs_snippet(env)?;
    assert_eq!(
        extracted.trim_end(),
        rendered.trim_end(),
        "the docs/gitops.md command prints another script"
    );
    let chart_script = env.cp.dir().join("argocd-health-from-chart.lua");
    std::fs::write(&chart_script, &rendered)?;
    Ok(Checker {
        bin,
        source_script,
        chart_script,
    })
}

/// Applies binding `name` (key `key`, policy ConfigMap `config_map`) naming a vault outside the
/// allow-list, and waits until it is Stalled with VaultNotAllowed.
async fn apply_binding_to_an_unlisted_vault(
    env: &Environment,
    ns: &str,
    name: &str,
    key: &str,
    config_map: &str,
) -> Result<()> {
    env.apply_yaml(
        &BindingManifest::new(ns, name, key)
            .vault("https://not-allowed.vault.azure.net")
            .config_map(config_map)
            .yaml(),
    )?;
    env.wait_binding_condition(
        ns,
        name,
        types::STALLED,
        "True",
        Some(reasons::VAULT_NOT_ALLOWED),
        WAIT,
    )
    .await?;
    Ok(())
}

/// A spec change the operator has not observed (it is stopped): InProgress / Progressing, then
/// Current / Healthy once it is back and has reconciled the new generation.
async fn an_unobserved_spec_change_is_in_progress_until_reconciled(
    env: &mut Environment,
    checker: &Checker,
    ns: &str,
) -> Result<()> {
    env.stop_operator();
    env.kubectl(&[
        "patch",
        "confidentialkeybinding",
        "ready",
        "-n",
        ns,
        "--type=merge",
        "-p",
        r#"{"spec":{"podSelector":{"matchLabels":{"tier":"backend"}}}}"#,
    ])?;
    let v = checker
        .expect(env, ns, "ready", "InProgress", "Progressing")
        .await?;
    assert!(
        v.argo_source.1.contains("generation"),
        "{:?}",
        v.argo_source
    );
    env.start_operator().await?;
    checker
        .expect(env, ns, "ready", "Current", "Healthy")
        .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kstatus_and_the_argo_cd_health_check_read_live_bindings_in_every_state() -> Result<()> {
    let bin = gitops_check_binary()?;
    let opts = EnvOptions {
        helm_set: vec!["argocd.healthCheck.enabled=true".to_string()],
        ..EnvOptions::default()
    };
    let mut env = Environment::start(opts).await?;

    let checker = checker_of_the_chart_s_script(&env, bin).await?;

    let ns = "gitops-health";
    env.create_namespace(ns, true)?;
    env.apply_yaml(&policy_config_map_yaml(
        ns,
        "ready-policy",
        &policy_rego("ready"),
    ))?;

    // Ready: Current / Healthy.
    env.apply_yaml(
        &BindingManifest::new(ns, "ready", "gitops-ready")
            .config_map("ready-policy")
            .yaml(),
    )?;
    env.wait_binding_ready(ns, "ready").await?;
    let v = checker
        .expect(&env, ns, "ready", "Current", "Healthy")
        .await?;
    assert_eq!(v.argo_source.1, "key ready", "{:?}", v.argo_source);

    // The policy ConfigMap is not there yet: the operator waits for it on its own, so
    // InProgress / Progressing (never Failed: it will be applied); then Current / Healthy.
    env.apply_yaml(
        &BindingManifest::new(ns, "waiting", "gitops-waiting")
            .config_map("waiting-policy")
            .yaml(),
    )?;
    env.wait_binding_condition(ns, "waiting", types::RECONCILING, "True", None, WAIT)
        .await?;
    let v = checker
        .expect(&env, ns, "waiting", "InProgress", "Progressing")
        .await?;
    assert!(
        v.argo_source.1.contains(reasons::CONFIG_MAP_NOT_FOUND),
        "{:?}",
        v.argo_source
    );
    env.apply_yaml(&policy_config_map_yaml(
        ns,
        "waiting-policy",
        &policy_rego("waiting"),
    ))?;
    checker
        .expect(&env, ns, "waiting", "Current", "Healthy")
        .await?;

    // A vault outside the allow-list can never work: Failed / Degraded at once, with the reason.
    apply_binding_to_an_unlisted_vault(&env, ns, "elsewhere", "gitops-elsewhere", "ready-policy")
        .await?;
    let v = checker
        .expect(&env, ns, "elsewhere", "Failed", "Degraded")
        .await?;
    for (tool, (_, message)) in [("kstatus", &v.kstatus), ("Argo CD", &v.argo_source)] {
        assert!(
            message.contains("not-allowed.vault.azure.net")
                || message.contains(reasons::VAULT_NOT_ALLOWED),
            "{tool} does not say why: {message:?}"
        );
    }

    an_unobserved_spec_change_is_in_progress_until_reconciled(&mut env, &checker, ns).await?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Pods that missed injection

async fn binding(env: &Environment, ns: &str, name: &str) -> Result<ConfidentialKeyBinding> {
    Ok(
        Api::<ConfidentialKeyBinding>::namespaced(env.cp.client(), ns)
            .get(name)
            .await?,
    )
}

/// The notes of the Warning events `reason` about binding `name`.
async fn warnings(env: &Environment, ns: &str, name: &str, reason: &str) -> Result<Vec<String>> {
    let api: Api<Event> = Api::namespaced(env.cp.client(), ns);
    Ok(api
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .filter(|e| {
            e.regarding.as_ref().is_some_and(|r| {
                r.name.as_deref() == Some(name)
                    && r.kind.as_deref() == Some("ConfidentialKeyBinding")
            }) && e.type_.as_deref() == Some("Warning")
                && e.reason.as_deref() == Some(reason)
        })
        .filter_map(|e| e.note)
        .collect())
}

/// `ckb_binding_uninjected_pods{namespace=ns,name=name}` from the operator's metrics.
async fn uninjected_metric(env: &Environment, ns: &str, name: &str) -> Result<Option<f64>> {
    let body = reqwest::get(env.metrics_url()).await?.text().await?;
    let series = format!(r#"ckb_binding_uninjected_pods{{namespace="{ns}",name="{name}"}} "#);
    Ok(body
        .lines()
        .find_map(|l| l.strip_prefix(&series))
        .and_then(|v| v.trim().parse().ok()))
}

async fn wait_uninjected(env: &Environment, ns: &str, name: &str, count: i32) -> Result<()> {
    wait_for(
        SCAN_WAIT,
        &format!("uninjectedPods={count} on {ns}/{name}"),
        || async {
            let b = binding(env, ns, name).await?;
            let status = b.status.as_ref().and_then(|s| s.uninjected_pods);
            let metric = uninjected_metric(env, ns, name).await?;
            if status == Some(count) && metric == Some(f64::from(count)) {
                Ok(Some(()))
            } else {
                bail!("status.uninjectedPods {status:?}, metric {metric:?}")
            }
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deployment_applied_before_its_binding_is_reported_until_restarted() -> Result<()> {
    let env = Environment::start(EnvOptions::default()).await?;
    let ns = "gitops-order";
    env.create_namespace(ns, true)?;
    env.apply_yaml(&service_account_yaml(ns))?;
    env.apply_yaml(&policy_config_map_yaml(
        ns,
        "orders-policy",
        &policy_rego("orders"),
    ))?;

    // What a GitOps tool does by default: the workload first, the custom resource last.
    env.apply_yaml(&deployment_yaml(ns, "orders", 2))?;
    let early = env
        .wait_pods(ns, "app=orders", 2, WAIT, |p| !injected(p))
        .await?;
    let early: BTreeSet<String> = early
        .iter()
        .filter_map(|p| p.metadata.name.clone())
        .collect();
    env.apply_yaml(
        &BindingManifest::new(ns, "orders", "gitops-orders")
            .config_map("orders-policy")
            .yaml(),
    )?;
    env.wait_binding_ready(ns, "orders").await?;

    wait_uninjected(&env, ns, "orders", 2).await?;
    let notes = wait_for(WAIT, "a PodsNotInjected warning", || async {
        let notes = warnings(&env, ns, "orders", "PodsNotInjected").await?;
        Ok((!notes.is_empty()).then_some(notes))
    })
    .await?;
    let note = &notes[0];
    for pod in &early {
        assert!(note.contains(pod.as_str()), "{pod} not named in {note:?}");
    }
    assert!(note.contains("rollout restart"), "no fix given: {note:?}");
    // Missed injection is not a key problem: the binding stays Ready.
    env.wait_binding_ready(ns, "orders").await?;

    // The fix the event gives: new pods, injected; the count goes back to 0.
    env.kubectl(&["rollout", "restart", "-n", ns, "deployment/orders"])?;
    let new = env.wait_pods(ns, "app=orders", 2, WAIT, injected).await?;
    assert!(
        new.iter()
            .all(|p| !early.contains(p.metadata.name.as_deref().unwrap_or_default())),
        "old pods remain"
    );
    wait_uninjected(&env, ns, "orders", 0).await?;
    assert_eq!(
        warnings(&env, ns, "orders", "PodsNotInjected").await?.len(),
        notes.len(),
        "a new warning with no pod to name"
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// ckb-operator doctor

/// What `doctor` said: exit success, stdout, and the checks it reported as problems.
struct Diagnosis {
    success: bool,
    stdout: String,
    stderr: String,
    problems: BTreeSet<String>,
}

impl std::fmt::Debug for Diagnosis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit success={}\n{}{}",
            self.success, self.stdout, self.stderr
        )
    }
}

impl Diagnosis {
    /// The message of the problem found by `check` (the first one).
    fn problem(&self, check: &str) -> &str {
        let prefix = format!("PROBLEM [{check}] ");
        self.stdout
            .lines()
            .find_map(|l| l.trim_start().strip_prefix(prefix.as_str()))
            .unwrap_or_default()
    }
}

/// Runs `ckb-operator doctor -n <ns> <target>` as the admin.
fn doctor(env: &Environment, bin: &Path, ns: &str, target: &str) -> Result<Diagnosis> {
    let out = Command::new(bin)
        .args(["doctor", "-n", ns, target])
        .env("KUBECONFIG", env.cp.kubeconfig())
        .env_remove("CKB_DOCTOR_SKIP")
        .stdin(Stdio::null())
        .output()
        .context("running ckb-operator doctor")?;
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let problems = stdout
        .lines()
        .filter_map(|l| l.trim_start().strip_prefix("PROBLEM ["))
        .filter_map(|l| l.split(']').next())
        .map(str::to_string)
        .collect();
    Ok(Diagnosis {
        success: out.status.success(),
        stdout,
        stderr: String::from_utf8_lossy(&out.stderr).to_string(),
        problems,
    })
}

fn checks(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|s| s.to_string()).collect()
}

async fn create_pod(env: &Environment, pod: &Value) -> Result<Pod> {
    let ns = pod["metadata"]["namespace"].as_str().unwrap_or_default();
    let api: Api<Pod> = Api::namespaced(env.cp.client(), ns);
    let pod: Pod = serde_json::from_value(pod.clone())?;
    Ok(api.create(&Default::default(), &pod).await?)
}

/// Healthy: selected by a Ready binding, injected, its hash bound, workload identity complete.
async fn doctor_passes_a_healthy_pod(env: &Environment, bin: &Path, ns: &str) -> Result<()> {
    env.apply_yaml(
        &BindingManifest::new(ns, "orders", "doctor-orders")
            .config_map("v1")
            .yaml(),
    )?;
    env.wait_binding_ready(ns, "orders").await?;
    let healthy = create_pod(env, &pod_json(ns, "healthy", "orders", true)).await?;
    ensure!(injected(&healthy), "the healthy pod was not injected");
    let d = doctor(env, bin, ns, "healthy")?;
    assert!(d.success && d.problems.is_empty(), "{d:?}");
    assert!(d.stdout.contains("Nothing is wrong"), "{d:?}");
    let d = doctor(env, bin, ns, "pod/healthy")?;
    assert!(d.success, "{d:?}");
    Ok(())
}

/// Missing workload-identity label: the label is named, and its consequence (no AZURE_* in skr).
/// The pod is selected by `orders`, the binding the healthy step made Ready.
async fn doctor_names_a_missing_workload_identity_label(
    env: &Environment,
    bin: &Path,
    ns: &str,
) -> Result<()> {
    create_pod(env, &pod_json(ns, "no-wi-label", "orders", false)).await?;
    let d = doctor(env, bin, ns, "no-wi-label")?;
    assert!(!d.success, "{d:?}");
    assert_eq!(
        d.problems,
        checks(&["workload-identity-env", "workload-identity-label"]),
        "{d:?}"
    );
    assert!(
        d.problem("workload-identity-label")
            .contains("azure.workload.identity/use"),
        "{d:?}"
    );
    Ok(())
}

/// Not injected: a pod created before its binding existed.
async fn doctor_names_a_pod_created_before_its_binding(
    env: &Environment,
    bin: &Path,
    ns: &str,
) -> Result<()> {
    create_pod(env, &pod_json(ns, "early", "late", true)).await?;
    env.apply_yaml(
        &BindingManifest::new(ns, "late", "doctor-late")
            .config_map("v1")
            .yaml(),
    )?;
    env.wait_binding_ready(ns, "late").await?;
    let d = doctor(env, bin, ns, "early")?;
    assert!(!d.success, "{d:?}");
    assert_eq!(d.problems, checks(&["injection"]), "{d:?}");
    assert!(d.problem("injection").contains("rollout restart"), "{d:?}");
    Ok(())
}

/// Wrong hash: the pod was injected under binding `rehash` with policy v1; the binding was then
/// deleted and created again on policy v2, so its key allows v2 only.
async fn doctor_names_a_policy_hash_the_key_no_longer_allows(
    env: &Environment,
    bin: &Path,
    ns: &str,
) -> Result<()> {
    env.apply_yaml(
        &BindingManifest::new(ns, "rehash", "doctor-rehash-1")
            .config_map("v1")
            .yaml(),
    )?;
    env.wait_binding_ready(ns, "rehash").await?;
    create_pod(env, &pod_json(ns, "stale", "rehash", true)).await?;
    env.kubectl(&[
        "delete",
        "confidentialkeybinding",
        "rehash",
        "-n",
        ns,
        "--wait=true",
    ])?;
    env.apply_yaml(
        &BindingManifest::new(ns, "rehash", "doctor-rehash-2")
            .config_map("v2")
            .yaml(),
    )?;
    env.wait_binding_ready(ns, "rehash").await?;
    let d = doctor(env, bin, ns, "stale")?;
    assert!(!d.success, "{d:?}");
    assert_eq!(d.problems, checks(&["policy-hash"]), "{d:?}");
    let v1_hash = ckb_e2e::suite_env::hostdata_of_annotation(&base64_of(&policy_rego("v1")))?;
    assert!(d.problem("policy-hash").contains(&v1_hash), "{d:?}");
    Ok(())
}

/// Binding not Ready: its vault is outside the allow-list (it needs a human).
async fn doctor_names_a_binding_that_is_not_ready(
    env: &Environment,
    bin: &Path,
    ns: &str,
) -> Result<()> {
    apply_binding_to_an_unlisted_vault(env, ns, "elsewhere", "doctor-elsewhere", "v1").await?;
    create_pod(env, &pod_json(ns, "stuck", "elsewhere", true)).await?;
    let d = doctor(env, bin, ns, "stuck")?;
    assert!(!d.success, "{d:?}");
    assert!(d.problems.contains("binding-ready"), "{d:?}");
    // The key was never created, so no hash is bound to it either; nothing else is wrong.
    assert!(
        d.problems
            .is_subset(&checks(&["binding-ready", "policy-hash"])),
        "{d:?}"
    );
    let msg = d.problem("binding-ready");
    assert!(
        msg.contains(reasons::VAULT_NOT_ALLOWED) && msg.contains("needs a change from you"),
        "{d:?}"
    );
    Ok(())
}

/// Pod Security baseline: the namespace refuses the sidecar's hostPath volume, so the
/// Deployment makes no pod; doctor says why, from the namespace and the ReplicaSet.
async fn doctor_names_pod_security_refusing_the_sidecar(
    env: &Environment,
    bin: &Path,
) -> Result<()> {
    let psa = "gitops-doctor-psa";
    env.apply_yaml(&format!(
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {psa}\n  labels:\n    \
         ckb.dev/injection: enabled\n    pod-security.kubernetes.io/enforce: baseline\n"
    ))?;
    env.apply_yaml(&service_account_yaml(psa))?;
    env.apply_yaml(&policy_config_map_yaml(psa, "v1", &policy_rego("v1")))?;
    env.apply_yaml(
        &BindingManifest::new(psa, "orders", "doctor-psa")
            .config_map("v1")
            .yaml(),
    )?;
    env.wait_binding_ready(psa, "orders").await?;
    env.apply_yaml(&deployment_yaml(psa, "orders", 1))?;
    let d = wait_for(WAIT, "doctor to see the ReplicaSet's failure", || async {
        let d = doctor(env, bin, psa, "deployment/orders")?;
        Ok(d.stdout
            .contains("the ReplicaSet cannot create pods")
            .then_some(d))
    })
    .await?;
    assert!(!d.success, "{d:?}");
    assert_eq!(d.problems, checks(&["pod-security"]), "{d:?}");
    assert!(d.problem("pod-security").contains("baseline"), "{d:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctor_names_each_broken_case_and_passes_a_healthy_pod() -> Result<()> {
    let env = Environment::start(EnvOptions::default()).await?;
    // The binary the environment runs (already built).
    let bin = operator_binary()?;
    let ns = "gitops-doctor";
    env.create_namespace(ns, true)?;
    env.apply_yaml(&service_account_yaml(ns))?;
    env.apply_yaml(&policy_config_map_yaml(ns, "v1", &policy_rego("v1")))?;
    env.apply_yaml(&policy_config_map_yaml(ns, "v2", &policy_rego("v2")))?;

    // One namespace, each step leaving its bindings and pods for the next.
    doctor_passes_a_healthy_pod(&env, &bin, ns).await?;
    doctor_names_a_missing_workload_identity_label(&env, &bin, ns).await?;
    doctor_names_a_pod_created_before_its_binding(&env, &bin, ns).await?;
    doctor_names_a_policy_hash_the_key_no_longer_allows(&env, &bin, ns).await?;
    doctor_names_a_binding_that_is_not_ready(&env, &bin, ns).await?;
    doctor_names_pod_security_refusing_the_sidecar(&env, &bin).await?;
    Ok(())
}

/// The agent-policy annotation of `rego` (standard base64), computed here, not by the operator.
fn base64_of(rego: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(rego)
}
