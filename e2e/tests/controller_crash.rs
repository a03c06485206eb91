//! The operator process (the real binary, `ckb-operator run`) killed with SIGKILL inside a key
//! create, and restarted, while it reconciles a batch of bindings against a real API server and
//! the Key Vault double: in the end exactly one key per binding, exactly one version each, every
//! binding Ready.
//!
//! Each kill is placed, not random: the double is told (fault injection) to commit the creates of
//! the keys that do not exist yet and then hold their answers back; the test waits until one has
//! committed while its answer is still pending, and only then SIGKILLs the operator. So every
//! kill loses the outcome of a create that did happen, the case that could make a second version.
//!
//! Needs the local control plane (`e2e/scripts/build-control-plane.sh`); fails, never skips,
//! without it.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use ckb_crds::{ConfidentialKeyBinding, labels};
use ckb_doubles::{Config, Fault, KeyVaultDouble};
use ckb_e2e::cluster::{ControlPlane, log_tail, wait_for};
use ckb_e2e::suite_env::operator_binary;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;
use kube::api::{Api, ListParams, ObjectMeta, PostParams};
use serde_json::json;
use tokio::process::{Child, Command};

const NS: &str = "crash";
const BINDINGS: usize = 12;
/// At most this many kills (fewer when every key exists before the last round).
const KILLS: usize = 4;
/// How long the double holds back the answer of a create it committed: far longer than the test
/// needs to see the commit and kill the operator, and than the operator's Key Vault timeout (30 s).
const HELD_ANSWER: Duration = Duration::from_secs(90);
const HOST: &str = "demo.vault.azure.net";

async fn install_crd(client: &kube::Client) -> Result<()> {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    crds.create(&PostParams::default(), &ConfidentialKeyBinding::crd())
        .await
        .context("creating the CRD")?;
    // The chart installs the grant CRD beside it; the operator waits for both.
    crds.create(&PostParams::default(), &ckb_operator::crds::grant::crd())
        .await
        .context("creating the grant CRD")?;
    let bindings: Api<ConfidentialKeyBinding> = Api::all(client.clone());
    wait_for(
        Duration::from_secs(60),
        "the CRD to be served",
        async || Ok(bindings.list(&ListParams::default()).await.ok().map(|_| ())),
    )
    .await
}

struct Operator {
    child: Child,
}

struct Files {
    dir: tempfile::TempDir,
}

impl Files {
    fn new(double: &KeyVaultDouble) -> Result<Self> {
        let dir = tempfile::tempdir()?;
        std::fs::write(dir.path().join("kv-ca.pem"), double.ca_pem())?;
        std::fs::write(dir.path().join("kv-token"), "operator-token")?;
        // The webhook serves a certificate from a directory (cert-manager mode), so the test
        // needs no webhook configuration object.
        let cert = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()])?;
        std::fs::write(dir.path().join("tls.crt"), cert.cert.pem())?;
        std::fs::write(dir.path().join("tls.key"), cert.signing_key.serialize_pem())?;
        Ok(Self { dir })
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

fn start_operator(
    bin: &Path,
    kubeconfig: &Path,
    files: &Files,
    kv: std::net::SocketAddr,
    round: usize,
) -> Result<Operator> {
    let log = std::fs::File::create(files.path(&format!("operator-{round}.log")))?;
    let child = Command::new(bin)
        .arg("run")
        .env("KUBECONFIG", kubeconfig)
        .env("CKB_ALLOWED_VAULTS", "https://demo.vault.azure.net")
        .env("CKB_KV_CREDENTIAL", "static-token")
        .env("CKB_KV_STATIC_TOKEN_FILE", files.path("kv-token"))
        .env("CKB_KV_RESOLVE", format!(".vault.azure.net={kv}"))
        .env("CKB_KV_CA_FILE", files.path("kv-ca.pem"))
        .env("CKB_POD_NAMESPACE", NS)
        // Same identity across restarts, as a container restarting in its pod.
        .env("CKB_POD_NAME", "ckb-operator-0")
        .env("CKB_WEBHOOK_CERT_DIR", files.dir.path())
        .env("CKB_WEBHOOK_ADDR", "127.0.0.1:0")
        .env("CKB_METRICS_ADDR", "127.0.0.1:0")
        .env("CKB_LOG_FORMAT", "text")
        .env("CKB_LOG_LEVEL", "info,ckb_operator=debug")
        .env_remove("AZURE_FEDERATED_TOKEN_FILE")
        .stdout(Stdio::from(log.try_clone()?))
        .stderr(Stdio::from(log))
        .kill_on_drop(true)
        .spawn()
        .context("starting the operator")?;
    Ok(Operator { child })
}

fn binding(i: usize) -> ConfidentialKeyBinding {
    serde_json::from_value(json!({
        "apiVersion": "ckb.dev/v1alpha1",
        "kind": "ConfidentialKeyBinding",
        "metadata": {"name": format!("b{i}"), "namespace": NS},
        "spec": {
            "podSelector": {"matchLabels": {"app": format!("app{i}")}},
            "key": {"vault": "https://demo.vault.azure.net", "name": format!("key-{i}"),
                    "type": "RSA-HSM", "size": 2048},
            "attestation": {"authority": "https://sharedeus.eus.attest.azure.net"},
            // Follows the ConfigMap (explicit opt-in): this test is about crashes, not pins.
            "policy": {"configMapRef": {"name": "policy"}, "source": "ConfigMap"}
        }
    }))
    .expect("binding")
}

fn ready(b: &ConfidentialKeyBinding) -> bool {
    b.condition(ckb_crds::conditions::types::READY)
        .is_some_and(|c| c.status == "True")
}

/// Creates the namespace, its policy ConfigMap and the bindings.
async fn namespace_policy_and_bindings(
    client: &kube::Client,
) -> Result<Api<ConfidentialKeyBinding>> {
    Api::<Namespace>::all(client.clone())
        .create(
            &PostParams::default(),
            &Namespace {
                metadata: ObjectMeta {
                    name: Some(NS.into()),
                    ..Default::default()
                },
                ..Default::default()
            },
        )
        .await?;
    let cm = ConfigMap {
        metadata: ObjectMeta {
            name: Some("policy".into()),
            namespace: Some(NS.into()),
            labels: Some([(labels::POLICY.to_string(), "true".to_string())].into()),
            ..Default::default()
        },
        data: Some(
            [(
                "policy.rego".to_string(),
                "package agent_policy\ndefault allow := true\n".to_string(),
            )]
            .into(),
        ),
        ..Default::default()
    };
    Api::<ConfigMap>::namespaced(client.clone(), NS)
        .create(&PostParams::default(), &cm)
        .await?;
    let bindings: Api<ConfidentialKeyBinding> = Api::namespaced(client.clone(), NS);
    for i in 0..BINDINGS {
        bindings.create(&PostParams::default(), &binding(i)).await?;
    }
    Ok(bindings)
}

/// The bindings' keys the vault holds.
fn created(double: &KeyVaultDouble) -> Vec<String> {
    (0..BINDINGS)
        .map(|i| format!("key-{i}"))
        .filter(|k| double.keys()[HOST]["keys"][k].is_array())
        .collect()
}

/// Whether a create of `key` committed and was answered (the held ones are logged only when
/// answered).
fn answered(double: &KeyVaultDouble, key: &str) -> bool {
    let path = format!("/keys/{key}/create");
    double
        .log()
        .iter()
        .any(|e| e.path == path && e.write && e.fault.is_none())
}

/// Makes the next create of each key in `absent` commit and then hold its answer back.
fn hold_the_answers_of_creates(double: &KeyVaultDouble, absent: &[String]) -> Result<()> {
    for key in absent {
        let mut fault = Fault {
            method: Some("POST".into()),
            path: Some(format!("^/keys/{key}/create$")),
            vault: Some(HOST.into()),
            ..Fault::default()
        }
        .after_apply()
        .delayed(u64::try_from(HELD_ANSWER.as_millis())?);
        fault.count = Some(1);
        double.inject(fault)?;
    }
    Ok(())
}

/// How one round of killing ended.
enum Round {
    /// Every key already existed: nothing to interrupt.
    NothingAbsent,
    /// Every remaining key was created with an answer: nothing left to interrupt.
    AllAnswered,
    /// The operator was killed inside these creates: they committed, their answers are lost.
    Lost(Vec<String>),
}

/// One round: every key not yet in the vault gets a create that commits and then holds its answer
/// back; the operator is started and killed as soon as one of them has committed.
async fn kill_inside_a_held_create(
    bin: &Path,
    cp: &ControlPlane,
    files: &Files,
    double: &KeyVaultDouble,
    round: usize,
) -> Result<Round> {
    double.clear_faults();
    let before = created(double);
    let absent: Vec<String> = (0..BINDINGS)
        .map(|i| format!("key-{i}"))
        .filter(|k| !before.contains(k))
        .collect();
    if absent.is_empty() {
        return Ok(Round::NothingAbsent);
    }
    hold_the_answers_of_creates(double, &absent)?;
    let mut op = start_operator(bin, cp.kubeconfig(), files, double.addr(), round)?;
    let log_path = files.path(&format!("operator-{round}.log"));
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut all_answered = false;
    loop {
        if let Some(status) = op.child.try_wait()? {
            bail!(
                "the operator exited by itself ({status}):\n{}",
                log_tail(&log_path, 40)
            );
        }
        let held = created(double)
            .into_iter()
            .any(|k| !before.contains(&k) && !answered(double, &k));
        if held {
            break;
        }
        // Every remaining key was created with an answer (its held create was used up by an
        // attempt the double throttled): nothing left to interrupt.
        let now = created(double);
        if absent
            .iter()
            .all(|k| now.contains(k) && answered(double, k))
        {
            all_answered = true;
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "round {round}: the operator created no key:\n{}",
            log_tail(&log_path, 40)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    op.child.start_kill()?;
    op.child.wait().await?;
    if all_answered {
        return Ok(Round::AllAnswered);
    }
    // The creates that committed this round through a held answer: their outcome is lost.
    // (A key whose held create was used up by an attempt the double throttled may have
    // been created by a later, answered attempt: that one is not lost.)
    let now = created(double);
    let lost_now: Vec<String> = now
        .into_iter()
        .filter(|k| !before.contains(k) && !answered(double, k))
        .collect();
    ensure!(
        !lost_now.is_empty(),
        "round {round}: the kill interrupted no create"
    );
    Ok(Round::Lost(lost_now))
}

/// Waits until every binding is Ready under `op`, failing with the logs if it exits or takes over
/// 180 s.
async fn wait_all_ready(
    op: &mut Operator,
    bindings: &Api<ConfidentialKeyBinding>,
    cp: &ControlPlane,
    last_log: &Path,
) -> Result<kube::core::ObjectList<ConfidentialKeyBinding>> {
    let result = wait_for(
        Duration::from_secs(180),
        "every binding Ready",
        async || {
            if let Some(status) = op.child.try_wait()? {
                bail!(
                    "the operator exited ({status}):\n{}",
                    log_tail(last_log, 40)
                );
            }
            let list = bindings.list(&ListParams::default()).await?;
            Ok((list.items.len() == BINDINGS && list.items.iter().all(ready)).then_some(list))
        },
    )
    .await;
    match result {
        Ok(l) => Ok(l),
        Err(e) => {
            cp.print_logs(20);
            bail!("{e}\noperator log:\n{}", log_tail(last_log, 40));
        }
    }
}

/// Exactly one key per binding, one version each, named in its binding's status; the creates
/// whose answers were lost were the only creates of their keys; every other key was created
/// exactly once, with an answer.
fn check_one_key_version_per_binding(
    double: &KeyVaultDouble,
    list: &kube::core::ObjectList<ConfidentialKeyBinding>,
    lost: &[String],
) -> Result<()> {
    let keys = double.keys();
    let vault = &keys[HOST]["keys"];
    let names: Vec<&String> = vault
        .as_object()
        .map(|m| m.keys().collect())
        .unwrap_or_default();
    ensure!(
        names.len() == BINDINGS,
        "{} keys in the vault: {names:?}",
        names.len()
    );
    for b in &list.items {
        let name = &b.spec.key.name;
        let versions = vault[name].as_array().map_or(0, |v| v.len());
        ensure!(versions == 1, "key {name} has {versions} versions");
        let status_key = b
            .status
            .as_ref()
            .and_then(|s| s.key.as_ref())
            .context("status.key")?;
        ensure!(
            status_key.id.contains(&format!("/keys/{name}/")),
            "{status_key:?}"
        );
    }
    let log = double.log();
    for key in names {
        let path = format!("/keys/{key}/create");
        let answered: Vec<_> = log
            .iter()
            .filter(|e| e.write && e.method == "POST" && e.path == path && e.fault.is_none())
            .collect();
        let want = usize::from(!lost.contains(key));
        ensure!(
            answered.len() == want,
            "key {key}: {} answered creates committed, expected {want}: {answered:?}",
            answered.len()
        );
    }
    Ok(())
}

/// Graceful stop on SIGTERM. The bindings may all be Ready before the last restarted operator
/// has even installed its handler (they were made Ready by an earlier one): waits for its first
/// log line, which it writes only after the handler is installed.
async fn stops_cleanly_on_sigterm(op: &mut Operator, last_log: &Path) -> Result<()> {
    wait_for(
        Duration::from_secs(30),
        "the last operator to start (its first log line)",
        async || {
            let len = std::fs::metadata(last_log).map(|m| m.len()).unwrap_or(0);
            Ok((len > 0).then_some(()))
        },
    )
    .await?;
    let pid = op.child.id().context("pid")?;
    std::process::Command::new("kill")
        .arg("-TERM")
        .arg(pid.to_string())
        .status()?;
    let status = tokio::time::timeout(Duration::from_secs(30), op.child.wait()).await??;
    ensure!(
        status.success(),
        "the operator did not stop cleanly: {status}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_inside_creates_whose_answer_is_lost_and_restarted_makes_one_key_per_binding_all_ready()
-> Result<()> {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let bin = operator_binary()?;
    let cp = ControlPlane::start().await?;
    let client = cp.client();
    install_crd(&client).await?;
    let double = KeyVaultDouble::start(Config::default()).await?;
    let files = Files::new(&double)?;
    let bindings = namespace_policy_and_bindings(&client).await?;

    // Kill the operator inside creates whose answers are lost, round after round.
    let mut lost: Vec<String> = Vec::new();
    let mut kills = 0;
    for round in 0..KILLS {
        match kill_inside_a_held_create(&bin, &cp, &files, &double, round).await? {
            Round::NothingAbsent | Round::AllAnswered => break,
            Round::Lost(lost_now) => {
                eprintln!("round {round}: killed inside the create(s) of {lost_now:?}");
                kills += 1;
                lost.extend(lost_now);
            }
        }
    }
    double.clear_faults();
    ensure!(kills >= 2, "only {kills} kill(s) inside a create");

    // The last start runs to the end.
    let mut op = start_operator(&bin, cp.kubeconfig(), &files, double.addr(), KILLS)?;
    let last_log = files.path(&format!("operator-{KILLS}.log"));
    let list = wait_all_ready(&mut op, &bindings, &cp, &last_log).await?;
    check_one_key_version_per_binding(&double, &list, &lost)?;
    stops_cleanly_on_sigterm(&mut op, &last_log).await?;
    cp.stop();
    Ok(())
}
