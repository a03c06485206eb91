//! End to end on a real control plane: the chart installed in development mode, the real
//! `ckb-operator` binary running with the chart ServiceAccount's RBAC, the Key Vault and
//! Attestation doubles, and the real kube-controller-manager making the Deployments' pods.
//!
//! Each test starts its own [`Environment`] and works in its own namespaces. Run them one at a
//! time (`cargo test -p ckb-e2e --test operator_e2e -- --test-threads=1`): each starts a control
//! plane, and the machine is small. Every wait polls a condition with a timeout.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use ckb_crds::conditions::{reasons, types};
use ckb_crds::{ConfidentialKeyBinding, FINALIZER, labels, tags};
use ckb_doubles::LogEntry;
use ckb_doubles::sidecar::SidecarError;
use ckb_e2e::suite_env::{
    BindingManifest, EnvOptions, Environment, pod_annotation as annotation, policy_config_map_yaml,
    wait_for,
};
use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::Api;
use kube::api::{DeleteParams, ListParams};
use serde_json::{Value, json};

const VAULT_HOST: &str = "demo.vault.azure.net";
const MAA_HOST: &str = "sharedeus.eus.attest.azure.net";
const WAIT: Duration = Duration::from_secs(90);

// The oracles below are written from the documented formats, not taken from the operator: the
// hash is `sha2` over the Rego bytes, the annotation standard base64, and the release policies
// are spelled out as JSON from the grammar, so a wrong definition shared by the webhook and the
// controller fails here.

/// `x-ms-sevsnpvm-hostdata` of a policy: lowercase hex SHA-256 of the Rego bytes.
fn sha256_hex(rego: &str) -> String {
    use sha2::Digest as _;
    hex::encode(sha2::Sha256::digest(rego.as_bytes()))
}

/// The agent-policy annotation of a policy: standard base64 (with padding) of the Rego bytes.
fn annotation_of(rego: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(rego.as_bytes())
}

/// A release policy in a canonical order (authority entries by their conditions, conditions by
/// claim), so that two policies that mean the same compare equal; nothing else is changed.
fn canonical(policy: &Value) -> Value {
    let mut p = policy.clone();
    if let Some(any_of) = p.get_mut("anyOf").and_then(Value::as_array_mut) {
        for entry in any_of.iter_mut() {
            if let Some(all_of) = entry.get_mut("allOf").and_then(Value::as_array_mut) {
                all_of.sort_by_key(|c| c["claim"].as_str().unwrap_or_default().to_string());
            }
        }
        any_of.sort_by_key(|e| e.to_string());
    }
    p
}

/// The release policy of the key in the double, as JSON.
fn key_policy(env: &Environment, key: &str) -> Result<Value> {
    let k = env
        .key(VAULT_HOST, key)
        .with_context(|| format!("key {key} is not in the double"))?;
    k.get("release_policy_json")
        .filter(|p| !p.is_null())
        .cloned()
        .with_context(|| format!("key {key} has no release policy: {k}"))
}

/// The hostdata values the key's release policy allows, read straight from its JSON.
fn key_hostdata(env: &Environment, key: &str) -> Result<BTreeSet<String>> {
    let p = key_policy(env, key)?;
    Ok(p["anyOf"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|e| e["allOf"].as_array().cloned().unwrap_or_default())
        .filter(|c| c["claim"] == "x-ms-sevsnpvm-hostdata")
        .filter_map(|c| c["equals"].as_str().map(str::to_string))
        .collect())
}

/// The binding `b` also requiring the claims of an AKS confidential pod (compliance status and
/// VMPL 0), as YAML.
fn strict(b: BindingManifest) -> String {
    b.compliance_status("azure-signed-katacc-uvm")
        .extra_claim("x-ms-sevsnpvm-vmpl", "0")
        .yaml()
}

fn policy_rego(variant: &str) -> String {
    format!(
        "package agent_policy\n\n# e2e policy {variant}\ndefault CreateContainerRequest := true\n\
         default ExecProcessRequest := false\n"
    )
}

/// A confidential Deployment (`runtimeClassName: kata-cc-isolation`) of `replicas` pods `app=<app>`.
fn deployment_yaml(ns: &str, app: &str, replicas: u32) -> String {
    format!(
        r#"apiVersion: apps/v1
kind: Deployment
metadata:
  name: {app}
  namespace: {ns}
spec:
  replicas: {replicas}
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
      containers:
        - name: app
          image: registry.example/app:1.0
"#
    )
}

/// A bare pod `name` with label `app=<app>`, confidential when `runtime_class` is given.
fn pod_yaml(ns: &str, name: &str, app: &str, runtime_class: Option<&str>) -> String {
    let rc = runtime_class
        .map(|r| format!("  runtimeClassName: {r}\n"))
        .unwrap_or_default();
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: {ns}\n  labels:\n    app: {app}\n\
         spec:\n{rc}  containers:\n    - name: app\n      image: registry.example/app:1.0\n"
    )
}

fn has_sidecar(pod: &Pod) -> bool {
    pod.spec
        .as_ref()
        .is_some_and(|s| s.containers.iter().any(|c| c.name == "skr"))
}

/// Whether the webhook injected `pod` for binding `binding` with the policy `rego`.
fn injected_with(pod: &Pod, binding: &str, rego: &str) -> bool {
    let hash = sha256_hex(rego);
    has_sidecar(pod)
        && annotation(pod, labels::AGENT_POLICY) == Some(annotation_of(rego).as_str())
        && annotation(pod, labels::POLICY_SHA256) == Some(hash.as_str())
        && annotation(pod, labels::BINDINGS) == Some(binding)
        && pod
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get("ckb.dev/injected"))
            .is_some_and(|v| v == "true")
}

/// Whether `pod` is exactly as its owner wrote it: no sidecar, no ckb annotations or label.
fn untouched(pod: &Pod) -> bool {
    !has_sidecar(pod)
        && annotation(pod, labels::AGENT_POLICY).is_none()
        && annotation(pod, labels::POLICY_SHA256).is_none()
        && annotation(pod, labels::BINDINGS).is_none()
        && pod
            .metadata
            .labels
            .as_ref()
            .is_none_or(|l| !l.contains_key("ckb.dev/injected"))
        && ckb_e2e::suite_env::app_env(pod)
            .keys()
            .all(|k| !k.starts_with("SKR_"))
}

async fn get_pod(env: &Environment, ns: &str, name: &str) -> Result<Pod> {
    Ok(Api::<Pod>::namespaced(env.cp.client(), ns)
        .get(name)
        .await?)
}

async fn binding(env: &Environment, ns: &str, name: &str) -> Result<ConfidentialKeyBinding> {
    Ok(
        Api::<ConfidentialKeyBinding>::namespaced(env.cp.client(), ns)
            .get(name)
            .await?,
    )
}

fn bound_hashes(b: &ConfidentialKeyBinding) -> BTreeSet<String> {
    b.status
        .as_ref()
        .and_then(|s| s.policy.as_ref())
        .map(|p| p.bound_hashes.iter().map(|h| h.hash.to_string()).collect())
        .unwrap_or_default()
}

fn writes_to(log: &[LogEntry], host: &str, key: &str) -> Vec<LogEntry> {
    log.iter()
        .filter(|e| e.host == host && e.write && e.path.starts_with(&format!("/keys/{key}")))
        .cloned()
        .collect()
}

fn assert_refused(result: Result<ckb_doubles::sidecar::ReleasedKey, SidecarError>, why: &str) {
    match result {
        Err(SidecarError::Refused { status: 403, .. }) => {}
        Err(e) => panic!("{why}: expected a 403 refusal, got {e}"),
        Ok(k) => panic!("{why}: the key {} was released", k.kid),
    }
}

/// The same binding and ConfigMap in `ns` and in two places where the webhook must not act: a
/// namespace not opted in, and kube-system (opted in by label, excluded by the chart).
fn bind_in_three_namespaces(env: &Environment, ns: &str, rego: &str) -> Result<()> {
    env.create_namespace(ns, true)?;
    env.create_namespace("e2e-not-opted-in", false)?;
    env.kubectl(&[
        "label",
        "namespace",
        "kube-system",
        "ckb.dev/injection=enabled",
    ])?;
    for (n, key) in [
        (ns, "inject-key"),
        ("e2e-not-opted-in", "other-ns-key"),
        ("kube-system", "kube-system-key"),
    ] {
        env.apply_yaml(&policy_config_map_yaml(n, "orders-policy", rego))?;
        env.apply_yaml(&strict(
            BindingManifest::new(n, "orders", key).deletion("Delete"),
        ))?;
    }
    Ok(())
}

/// The Ready binding's key in the double: exportable RSA-HSM, tagged for the binding and the
/// cluster, named in the status, bound to exactly `hash`, and guarded as the grammar says (one
/// authority entry, every pinned claim compared with `equals` as a string, the extra claim
/// added). Returns the key id from the status.
async fn check_the_key_the_binding_made(
    env: &Environment,
    ns: &str,
    b: &ConfidentialKeyBinding,
    hash: &str,
) -> Result<String> {
    let status = b.status.clone().unwrap_or_default();
    let policy_status = status.policy.clone().context("status.policy")?;
    assert_eq!(
        policy_status.current_hash.as_ref().map(|h| h.as_str()),
        Some(hash)
    );
    assert_eq!(bound_hashes(b), BTreeSet::from([hash.to_string()]));
    let key = env.key(VAULT_HOST, "inject-key").context("key created")?;
    assert_eq!(key["attributes"]["exportable"], json!(true), "{key}");
    assert_eq!(key["key"]["kty"], json!("RSA-HSM"), "{key}");
    let kube_system_uid = Api::<Namespace>::all(env.cp.client())
        .get("kube-system")
        .await?
        .metadata
        .uid
        .context("kube-system uid")?;
    assert_eq!(key["tags"][tags::MANAGED_BY], json!(tags::MANAGED_BY_VALUE));
    assert_eq!(key["tags"][tags::BINDING], json!(format!("{ns}/orders")));
    assert_eq!(key["tags"][tags::CLUSTER], json!(kube_system_uid));
    let status_key = status.key.clone().context("status.key")?;
    assert_eq!(Some(status_key.id.as_str()), key["key"]["kid"].as_str());
    let expected = strict_release_policy(&[hash]);
    let actual = key_policy(env, "inject-key")?;
    assert_eq!(
        canonical(&actual),
        canonical(&expected),
        "release policy in the vault:\n{actual:#}"
    );
    Ok(status_key.id)
}

/// A confidential Deployment's pods (made by the real controller manager) are injected, with the
/// sidecar's environment naming the vault, authority and key; a non-confidential pod matching the
/// same selector is not. Returns the injected pods.
async fn only_confidential_pods_are_injected(
    env: &Environment,
    ns: &str,
    rego: &str,
) -> Result<Vec<Pod>> {
    env.apply_yaml(&deployment_yaml(ns, "orders", 2))?;
    env.apply_yaml(&pod_yaml(ns, "plain", "orders", None))?;
    let pods = env.wait_pods(ns, "app=orders", 3, WAIT, |_| true).await?;
    let (injected, plain): (Vec<Pod>, Vec<Pod>) = pods
        .into_iter()
        .partition(|p| p.metadata.name.as_deref() != Some("plain"));
    assert_eq!(injected.len(), 2);
    for p in &injected {
        assert!(
            injected_with(p, "orders", rego),
            "pod {:?} not injected as expected: {}",
            p.metadata.name,
            serde_json::to_string_pretty(p)?
        );
        let app_env = ckb_e2e::suite_env::app_env(p);
        assert_eq!(
            app_env.get("SKR_AKV_ENDPOINT").map(String::as_str),
            Some(VAULT_HOST)
        );
        assert_eq!(
            app_env.get("SKR_MAA_ENDPOINT").map(String::as_str),
            Some(MAA_HOST)
        );
        assert_eq!(
            app_env.get("SKR_KEY_NAME").map(String::as_str),
            Some("inject-key")
        );
        assert!(app_env.contains_key("SKR_ENDPOINT"), "{app_env:?}");
    }
    assert!(
        untouched(&plain[0]),
        "{}",
        serde_json::to_string_pretty(&plain[0])?
    );
    Ok(injected)
}

/// Release, playing the injected pod's sidecar (the hash comes from the pod's own annotation):
/// the key `key_id` is released; with any other policy, a debuggable VM, another authority,
/// another VMPL, compliance status or attestation type it is refused.
async fn released_to_the_pod_and_to_nothing_else(
    env: &Environment,
    pod: &Pod,
    key_id: &str,
) -> Result<()> {
    let released = env
        .release_for_pod(pod, |_| {})
        .await?
        .map_err(|e| anyhow::anyhow!("release for the injected pod: {e}"))?;
    // The double names the key by the host it was called at, here with the loopback port.
    let port = format!(":{}", env.double.addr().port());
    assert_eq!(released.kid.replace(&port, ""), key_id);
    assert!(!released.key_bytes.is_empty());

    let other = sha256_hex(&policy_rego("tampered"));
    assert_refused(
        env.release_for_pod(pod, |r| r.hostdata = other.clone())
            .await?,
        "another policy",
    );
    assert_refused(
        env.release_for_pod(pod, |r| r.debuggable = true).await?,
        "a debuggable VM",
    );
    assert_refused(
        env.release_for_pod(pod, |r| {
            r.issuer_host = "sharedwus.wus.attest.azure.net".into()
        })
        .await?,
        "another authority",
    );
    assert_refused(
        env.release_for_pod(pod, |r| r.vmpl = 1).await?,
        "VMPL 1 (extra claim)",
    );
    // The ACI compliance status (another UVM than AKS's signed Kata UVM), and a token of
    // another TEE type: refused although every other claim matches.
    assert_refused(
        env.release_for_pod(pod, |r| r.compliance_status = "azure-compliant-uvm".into())
            .await?,
        "another compliance status",
    );
    assert_refused(
        env.release_for_pod(pod, |r| r.attestation_type = "sgx".into())
            .await?,
        "another attestation type",
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binding_creates_the_key_injects_confidential_pods_and_releases_only_to_them() -> Result<()>
{
    let t0 = Instant::now();
    let env = Environment::start(EnvOptions::default()).await?;
    eprintln!("environment up in {:?}", t0.elapsed());
    let ns = "e2e-inject";
    let rego = policy_rego("v1");
    let hash = sha256_hex(&rego);
    bind_in_three_namespaces(&env, ns, &rego)?;

    // Ready, with the key created in the double, bound to exactly this policy's hash.
    let b = env.wait_binding_ready(ns, "orders").await?;
    let key_id = check_the_key_the_binding_made(&env, ns, &b, &hash).await?;

    let injected = only_confidential_pods_are_injected(&env, ns, &rego).await?;
    // The same confidential pod in a namespace not opted in and in kube-system: untouched, even
    // though a binding there selects it.
    for n in ["e2e-not-opted-in", "kube-system"] {
        env.apply_yaml(&pod_yaml(
            n,
            "confidential",
            "orders",
            Some("kata-cc-isolation"),
        ))?;
        let p = get_pod(&env, n, "confidential").await?;
        assert!(untouched(&p), "{n}: {}", serde_json::to_string_pretty(&p)?);
    }

    // The binding counts the injected pods.
    wait_for(WAIT, "status.injectedPods = 2", || async {
        let b = binding(&env, ns, "orders").await?;
        Ok((b.status.and_then(|s| s.injected_pods) == Some(2)).then_some(()))
    })
    .await?;

    released_to_the_pod_and_to_nothing_else(&env, &injected[0], &key_id).await?;
    eprintln!("test done in {:?}", t0.elapsed());
    Ok(())
}

/// The old pods go (their ReplicaSet deleted); after the grace period the old hash is pruned
/// from the key, and the old pod's policy no longer releases it while the new pod's (`v2`) does.
async fn old_hash_is_pruned_when_the_old_pods_go(
    env: &Environment,
    ns: &str,
    old_pod: &Pod,
    new_pod: &Pod,
    v2: &str,
) -> Result<()> {
    let h2 = sha256_hex(v2);
    let old_rs = old_pod
        .metadata
        .owner_references
        .as_ref()
        .and_then(|o| o.first())
        .map(|o| o.name.clone())
        .context("old pod's ReplicaSet")?;
    let gone_at = Instant::now();
    Api::<ReplicaSet>::namespaced(env.cp.client(), ns)
        .delete(&old_rs, &DeleteParams::background())
        .await?;
    env.wait_pods(ns, "app=orders", 1, WAIT, |p| {
        injected_with(p, "orders", v2)
    })
    .await?;
    wait_for(WAIT, "only v2 in the key's release policy", || async {
        Ok((key_hostdata(env, "rollout-key")? == BTreeSet::from([h2.clone()])).then_some(()))
    })
    .await?;
    eprintln!(
        "old hash pruned {:?} after the old pods went",
        gone_at.elapsed()
    );
    wait_for(WAIT, "status bound hashes = v2", || async {
        let b = binding(env, ns, "orders").await?;
        Ok((bound_hashes(&b) == BTreeSet::from([h2.to_string()])).then_some(()))
    })
    .await?;
    assert_refused(
        env.release_for_pod(old_pod, |_| {}).await?,
        "the old policy",
    );
    env.release_for_pod(new_pod, |_| {})
        .await?
        .map_err(|e| anyhow::anyhow!("release for the new pod after pruning: {e}"))?;
    Ok(())
}

/// The release policy a strict binding makes for `hashes`: one authority entry per hash, each
/// pinning every claim of an AKS confidential pod.
fn strict_release_policy(hashes: &[&str]) -> Value {
    let entry = |h: &str| {
        json!({
            "authority": "https://sharedeus.eus.attest.azure.net",
            "allOf": [
                {"claim": "x-ms-attestation-type", "equals": "sevsnpvm"},
                {"claim": "x-ms-sevsnpvm-hostdata", "equals": h},
                {"claim": "x-ms-compliance-status", "equals": "azure-signed-katacc-uvm"},
                {"claim": "x-ms-sevsnpvm-is-debuggable", "equals": "false"},
                {"claim": "x-ms-sevsnpvm-vmpl", "equals": "0"}
            ]
        })
    };
    json!({"version": "1.0.0", "anyOf": hashes.iter().map(|h| entry(h)).collect::<Vec<_>>()})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_change_and_rollout_bind_both_hashes_then_prune_the_old_one() -> Result<()> {
    let t0 = Instant::now();
    let env = Environment::start(EnvOptions::default()).await?;
    let ns = "e2e-rollout";
    let (v1, v2) = (policy_rego("v1"), policy_rego("v2"));
    let (h1, h2) = (sha256_hex(&v1), sha256_hex(&v2));
    env.create_namespace(ns, true)?;
    env.apply_yaml(&policy_config_map_yaml(ns, "orders-policy", &v1))?;
    env.apply_yaml(&strict(
        BindingManifest::new(ns, "orders", "rollout-key").deletion("Delete"),
    ))?;
    env.wait_binding_ready(ns, "orders").await?;
    env.apply_yaml(&deployment_yaml(ns, "orders", 1))?;
    let old_pods = env
        .wait_pods(ns, "app=orders", 1, WAIT, |p| {
            injected_with(p, "orders", &v1)
        })
        .await?;

    // New policy: the binding moves to it, and keeps the old hash while a pod still carries it.
    env.apply_yaml(&policy_config_map_yaml(ns, "orders-policy", &v2))?;
    wait_for(WAIT, "current hash v2 with v1 still bound", || async {
        let b = binding(&env, ns, "orders").await?;
        let current = b
            .status
            .as_ref()
            .and_then(|s| s.policy.as_ref())
            .and_then(|p| p.current_hash.clone());
        Ok((current.as_ref().map(|h| h.as_str()) == Some(h2.as_str())
            && bound_hashes(&b) == BTreeSet::from([h1.to_string(), h2.to_string()]))
        .then_some(()))
    })
    .await?;

    // Rollout: the new pod gets v2; the old one (never Ready without a kubelet) stays, so both
    // hashes stay bound in the key and both pods can release it.
    env.kubectl(&["rollout", "restart", "-n", ns, "deployment/orders"])?;
    let pods = env
        .wait_pods(ns, "app=orders", 2, WAIT, |p| {
            injected_with(p, "orders", &v1) || injected_with(p, "orders", &v2)
        })
        .await?;
    let new_pod = pods
        .iter()
        .find(|p| injected_with(p, "orders", &v2))
        .context("a pod with v2")?
        .clone();
    let old_pod = old_pods[0].clone();
    wait_for(WAIT, "both hashes in the key's release policy", || async {
        Ok(
            (key_hostdata(&env, "rollout-key")? == BTreeSet::from([h1.clone(), h2.clone()]))
                .then_some(()),
        )
    })
    .await?;
    // Both hashes, one authority entry each (the grammar has no "any of these values").
    let expected = strict_release_policy(&[&h1, &h2]);
    let actual = key_policy(&env, "rollout-key")?;
    assert_eq!(
        canonical(&actual),
        canonical(&expected),
        "release policy in the vault:\n{actual:#}"
    );
    for (p, what) in [(&old_pod, "old pod"), (&new_pod, "new pod")] {
        env.release_for_pod(p, |_| {})
            .await?
            .map_err(|e| anyhow::anyhow!("release for the {what}: {e}"))?;
    }

    old_hash_is_pruned_when_the_old_pods_go(&env, ns, &old_pod, &new_pod, &v2).await?;
    // One key, one version: policy changes are updates of the release policy, not new keys.
    assert_eq!(env.key_versions(VAULT_HOST, "rollout-key"), 1);
    eprintln!("test done in {:?}", t0.elapsed());
    Ok(())
}

/// A key tagged for another binding and cluster, created directly in the double (as another
/// owner would): its binding is refused with KeyNotOwned and not Ready. A binding naming a vault
/// outside the allow-list is refused with VaultNotAllowed. Returns the foreign key as it was.
async fn foreign_key_and_unlisted_vault_are_refused(env: &Environment, ns: &str) -> Result<Value> {
    // A key tagged for another binding and cluster: left alone, with zero writes.
    // Created directly in the double (as another owner would), tagged for another binding.
    let tags = json!({"managed-by": "ckb-operator", "ckb-binding": "someone/else",
        "ckb-cluster": "another-cluster"});
    let before = env
        .create_key_as_vault_admin(VAULT_HOST, "foreign-key", tags, &"0".repeat(64))
        .await?;
    env.double.clear_log();
    env.apply_yaml(&strict(
        BindingManifest::new(ns, "foreign", "foreign-key").deletion("Delete"),
    ))?;
    let b = env
        .wait_binding_condition(
            ns,
            "foreign",
            types::KEY_READY,
            "False",
            Some(reasons::KEY_NOT_OWNED),
            WAIT,
        )
        .await?;
    let ready = Environment::condition(&b, types::READY).context("Ready")?;
    assert_eq!(ready.0, "False");

    // A vault outside the allow-list: refused, never contacted.
    env.apply_yaml(&strict(
        BindingManifest::new(ns, "elsewhere", "elsewhere-key")
            .vault("https://elsewhere.vault.azure.net")
            .deletion("Delete"),
    ))?;
    env.wait_binding_condition(
        ns,
        "elsewhere",
        types::KEY_READY,
        "False",
        Some(reasons::VAULT_NOT_ALLOWED),
        WAIT,
    )
    .await?;

    Ok(before)
}

/// After every binding went: the retained key is kept, enabled and still tagged for its binding;
/// the deleted one is soft-deleted; the foreign key is unchanged and was never written, not even
/// on deletion; and the vault outside the allow-list got not one request.
fn check_the_keys_after_deletion(env: &Environment, ns: &str, before: &Value) -> Result<()> {
    let retained = env.key(VAULT_HOST, "retain-key").context("retained key")?;
    assert_eq!(
        retained["tags"][tags::BINDING],
        json!(format!("{ns}/retain")),
        "{retained}"
    );
    assert_eq!(retained["attributes"]["enabled"], json!(true), "{retained}");
    assert!(!env.key_soft_deleted(VAULT_HOST, "retain-key"));
    assert!(env.key(VAULT_HOST, "delete-key").is_none());
    assert!(env.key_soft_deleted(VAULT_HOST, "delete-key"));

    // The foreign key: unchanged, and nothing was ever written to it, not even on deletion.
    let log = env.double.log();
    assert_eq!(writes_to(&log, VAULT_HOST, "foreign-key"), Vec::new());
    let after = env.key(VAULT_HOST, "foreign-key").context("foreign key")?;
    assert_eq!(after["tags"], before["tags"]);
    assert_eq!(
        after["release_policy"]["data"],
        before["release_policy"]["data"]
    );
    // The vault outside the allow-list: not one request.
    let elsewhere: Vec<_> = log
        .iter()
        .filter(|e| e.host.starts_with("elsewhere"))
        .collect();
    assert!(elsewhere.is_empty(), "{elsewhere:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ownership_allow_list_and_deletion_policies() -> Result<()> {
    let t0 = Instant::now();
    let env = Environment::start(EnvOptions::default()).await?;
    let ns = "e2e-keys";
    let rego = policy_rego("v1");
    env.create_namespace(ns, true)?;
    for name in ["foreign", "elsewhere", "retain", "delete"] {
        env.apply_yaml(&policy_config_map_yaml(
            ns,
            &format!("{name}-policy"),
            &rego,
        ))?;
    }

    let before = foreign_key_and_unlisted_vault_are_refused(&env, ns).await?;

    // Retain and Delete.
    for (name, policy) in [("retain", "Retain"), ("delete", "Delete")] {
        env.apply_yaml(&strict(
            BindingManifest::new(ns, name, &format!("{name}-key")).deletion(policy),
        ))?;
    }
    for name in ["retain", "delete"] {
        let b = env.wait_binding_ready(ns, name).await?;
        assert!(
            b.metadata
                .finalizers
                .as_ref()
                .is_some_and(|f| f.iter().any(|f| f == FINALIZER)),
            "{name} has the cleanup finalizer"
        );
    }
    let bindings: Api<ConfidentialKeyBinding> = Api::namespaced(env.cp.client(), ns);
    for name in ["retain", "delete", "foreign", "elsewhere"] {
        bindings.delete(name, &DeleteParams::default()).await?;
    }
    // Every binding goes: the finalizer is removed in each case.
    wait_for(WAIT, "every binding deleted", || async {
        let left = bindings.list(&ListParams::default()).await?.items.len();
        Ok((left == 0).then_some(()))
    })
    .await?;
    check_the_keys_after_deletion(&env, ns, &before)?;
    eprintln!("test done in {:?}", t0.elapsed());
    Ok(())
}

/// `kubectl apply` of `yaml`: whether it succeeded, and what kubectl printed (stdout, stderr).
fn kubectl_apply(env: &Environment, yaml: &str) -> Result<(bool, String)> {
    let out = env.kubectl_stdin_output(&["apply", "-f", "-"], yaml)?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok((out.status.success(), text))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_down_refuses_confidential_pods_and_recovers_after_restart() -> Result<()> {
    let t0 = Instant::now();
    let mut env = Environment::start(EnvOptions::default()).await?;
    let ns = "e2e-webhook";
    let rego = policy_rego("v1");
    env.create_namespace(ns, true)?;
    env.apply_yaml(&policy_config_map_yaml(ns, "orders-policy", &rego))?;
    env.apply_yaml(&strict(
        BindingManifest::new(ns, "orders", "webhook-key").deletion("Delete"),
    ))?;
    env.wait_binding_ready(ns, "orders").await?;

    // Two bindings selecting the same pods with different policies: `kubectl apply` of such a
    // pod fails with the webhook's answer, naming both bindings, and no pod is created.
    for side in ["left", "right"] {
        env.apply_yaml(&policy_config_map_yaml(
            ns,
            &format!("{side}-policy"),
            &policy_rego(side),
        ))?;
        env.apply_yaml(&strict(
            BindingManifest::new(ns, side, &format!("{side}-key"))
                .app("clash")
                .deletion("Delete"),
        ))?;
    }
    for side in ["left", "right"] {
        env.wait_binding_ready(ns, side).await?;
    }
    let (admitted, text) = kubectl_apply(
        &env,
        &pod_yaml(ns, "clash", "clash", Some("kata-cc-isolation")),
    )?;
    assert!(!admitted, "the pod was admitted: {text}");
    assert!(
        text.contains("admission webhook \"inject.ckb.dev\" denied the request"),
        "not the webhook's denial: {text}"
    );
    assert!(
        text.contains("bindings left, right") && text.contains("different agent policies"),
        "the denial does not name the bindings and the cause: {text}"
    );
    assert!(
        Api::<Pod>::namespaced(env.cp.client(), ns)
            .get_opt("clash")
            .await?
            .is_none(),
        "a denied pod exists"
    );

    env.stop_operator();
    let (admitted, text) = kubectl_apply(
        &env,
        &pod_yaml(ns, "while-down", "orders", Some("kata-cc-isolation")),
    )?;
    assert!(!admitted, "the pod was admitted: {text}");
    assert!(
        text.contains("failed calling webhook") && text.contains("inject.ckb.dev"),
        "unclear refusal: {text}"
    );
    // Pods that are not confidential never reach the webhook: still admitted.
    env.apply_yaml(&pod_yaml(ns, "plain-while-down", "orders", None))?;
    assert!(untouched(&get_pod(&env, ns, "plain-while-down").await?));

    env.start_operator().await?;
    env.apply_yaml(&pod_yaml(ns, "after", "orders", Some("kata-cc-isolation")))?;
    let p = get_pod(&env, ns, "after").await?;
    assert!(
        injected_with(&p, "orders", &rego),
        "{}",
        serde_json::to_string_pretty(&p)?
    );
    eprintln!("test done in {:?}", t0.elapsed());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_server_restart_under_the_operator_watches_resume() -> Result<()> {
    let t0 = Instant::now();
    let mut env = Environment::start(EnvOptions::default()).await?;
    let ns = "e2e-restart";
    let (v1, v2) = (policy_rego("v1"), policy_rego("v2"));
    env.create_namespace(ns, true)?;
    env.apply_yaml(&policy_config_map_yaml(ns, "first-policy", &v1))?;
    env.apply_yaml(&strict(
        BindingManifest::new(ns, "first", "first-key").deletion("Delete"),
    ))?;
    env.wait_binding_ready(ns, "first").await?;

    env.cp.restart_apiserver().await?;

    // A binding created after the restart becomes Ready (the binding watch resumed) ...
    env.apply_yaml(&policy_config_map_yaml(ns, "second-policy", &v1))?;
    env.apply_yaml(&strict(
        BindingManifest::new(ns, "second", "second-key").deletion("Delete"),
    ))?;
    env.wait_binding_ready(ns, "second").await?;
    // ... a ConfigMap changed after the restart is seen (the ConfigMap watch resumed) ...
    env.apply_yaml(&policy_config_map_yaml(ns, "first-policy", &v2))?;
    let h2 = sha256_hex(&v2);
    wait_for(WAIT, "first binding on v2, in the key too", || async {
        let b = binding(&env, ns, "first").await?;
        let current = b
            .status
            .as_ref()
            .and_then(|s| s.policy.as_ref())
            .and_then(|p| p.current_hash.clone());
        let in_key = key_hostdata(&env, "first-key")?.contains(&h2);
        Ok((current.as_ref().map(|h| h.as_str()) == Some(h2.as_str()) && in_key).then_some(()))
    })
    .await?;
    // ... and the webhook's caches follow: a new pod gets the new policy.
    env.apply_yaml(&pod_yaml(
        ns,
        "after-restart",
        "first",
        Some("kata-cc-isolation"),
    ))?;
    let p = get_pod(&env, ns, "after-restart").await?;
    assert!(
        injected_with(&p, "first", &v2),
        "{}",
        serde_json::to_string_pretty(&p)?
    );
    eprintln!("test done in {:?}", t0.elapsed());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn helm_upgrade_keeps_admission_and_uninstall_keeps_crd_and_bindings() -> Result<()> {
    let t0 = Instant::now();
    let env = Environment::start(EnvOptions::default()).await?;
    let ns = "e2e-helm";
    let rego = policy_rego("v1");
    env.create_namespace(ns, true)?;
    env.apply_yaml(&policy_config_map_yaml(ns, "orders-policy", &rego))?;
    env.apply_yaml(&strict(
        BindingManifest::new(ns, "orders", "helm-key").deletion("Retain"),
    ))?;
    env.wait_binding_ready(ns, "orders").await?;

    let chart = ckb_e2e::cluster::repo_root().join("charts/ckb-operator");
    let chart = chart.display().to_string();
    let mut args = vec![
        "upgrade",
        ckb_e2e::suite_env::RELEASE,
        &chart,
        "--namespace",
        ckb_e2e::suite_env::NAMESPACE,
    ];
    let mut values = env.helm_values();
    values.push("webhook.timeoutSeconds=7".into());
    for v in &values {
        args.extend(["--set", v]);
    }
    env.helm(&args)?;
    let cfg =
        Api::<k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration>::all(
            env.cp.client(),
        )
        .get(ckb_e2e::suite_env::RELEASE)
        .await?;
    let hook = &cfg.webhooks.unwrap_or_default()[0];
    assert_eq!(hook.timeout_seconds, Some(7), "the upgrade applied");
    // Admission keeps working through the upgrade (the caBundle the operator wrote survives).
    env.apply_yaml(&pod_yaml(
        ns,
        "after-upgrade",
        "orders",
        Some("kata-cc-isolation"),
    ))?;
    let p = get_pod(&env, ns, "after-upgrade").await?;
    assert!(injected_with(&p, "orders", &rego));

    env.helm(&[
        "uninstall",
        ckb_e2e::suite_env::RELEASE,
        "--namespace",
        ckb_e2e::suite_env::NAMESPACE,
    ])?;
    // The release's objects are gone ...
    let gone =
        Api::<k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration>::all(
            env.cp.client(),
        )
        .get_opt(ckb_e2e::suite_env::RELEASE)
        .await?;
    assert!(gone.is_none(), "webhook configuration removed");
    // ... but the CRD and the bindings stay (deleting the CRD would delete every binding).
    let crd = Api::<
        k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
    >::all(env.cp.client())
    .get_opt(ckb_e2e::suite_env::CRD_NAME)
    .await?;
    assert!(crd.is_some(), "CRD kept");
    let b = binding(&env, ns, "orders").await?;
    assert!(b.metadata.deletion_timestamp.is_none());
    assert!(env.key(VAULT_HOST, "helm-key").is_some());
    eprintln!("test done in {:?}", t0.elapsed());
    Ok(())
}
