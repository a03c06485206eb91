//! The trust model (`docs/security.md`) tried as an attacker would, on a real control plane with
//! the real operator and the Key Vault double. Each attack is run by a user with exactly the
//! rights it names: a ServiceAccount bound to the built-in `edit` ClusterRole in one namespace
//! (pods and ConfigMaps, no `ckb.dev` rights), one bound to `admin` where writing a binding is
//! the point (the chart aggregates binding writes into `admin`, not status writes), or a cluster
//! admin where the point is that even what such a user writes (a binding's status) is not
//! trusted. Each is shown to change nothing in Key Vault, from the double's request log and key
//! state; the legitimate flows next to them (a policy change by the binding's author with a
//! rollout, a binding of an earlier version told what to pin, a re-created binding claiming its
//! key with the owner's consent) still work.
//!
//! Run one at a time: `cargo test -p ckb-e2e --test security_e2e -- --test-threads=1`.

use std::collections::BTreeSet;
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use ckb_crds::conditions::{reasons, types};
use ckb_crds::{ConfidentialKeyBinding, labels, tags};
use ckb_doubles::LogEntry;
use ckb_e2e::suite_env::{
    BindingManifest, DEMO_AUTHORITY, EnvOptions, Environment, VAULT_ADMIN_KV_TOKEN,
    pod_annotation as annotation, policy_config_map_yaml, wait_for,
};
use ckb_operator::policy::hash::{encode_annotation, hash_rego};
use ckb_operator::policy::release::ReleasePolicy;
use k8s_openapi::api::core::v1::{ConfigMap, Event, Pod};
use kube::Api;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};

const VAULT_HOST: &str = "demo.vault.azure.net";
const WAIT: Duration = Duration::from_secs(90);

fn policy_rego(variant: &str) -> String {
    format!(
        "package agent_policy\n\n# security e2e policy {variant}\ndefault CreateContainerRequest := true\n\
         default ExecProcessRequest := false\n"
    )
}

/// The policy an attacker wants: exec into the confidential containers.
fn evil_rego() -> String {
    "package agent_policy\n\ndefault CreateContainerRequest := true\ndefault ExecProcessRequest := true\n"
        .to_string()
}

fn h(rego: &str) -> String {
    hash_rego(rego.as_bytes()).to_string()
}

/// Applies a binding (YAML) as `client`, a user bound to `admin` in its namespace: waits until
/// the chart's aggregated role gives `admin` the right to write bindings.
async fn apply_binding_as(client: &kube::Client, yaml: &str) -> Result<()> {
    let b: ConfidentialKeyBinding = serde_saphyr::from_str(yaml).context("binding YAML")?;
    let ns = b.metadata.namespace.clone().context("namespace")?;
    let api: Api<ConfidentialKeyBinding> = Api::namespaced(client.clone(), &ns);
    wait_for(
        WAIT,
        "the namespace admin to be allowed to write bindings",
        || {
            let (api, b) = (api.clone(), b.clone());
            async move {
                match api.create(&PostParams::default(), &b).await {
                    Ok(_) => Ok(Some(())),
                    Err(kube::Error::Api(e)) if e.code == 403 => bail!("not yet: {}", e.message),
                    Err(e) => Err(e.into()),
                }
            }
        },
    )
    .await
}

/// A ServiceAccount `mallory` of `ns` bound to the built-in `edit` ClusterRole there, and a client
/// authenticated as it.
async fn edit_user(env: &Environment, ns: &str) -> Result<kube::Client> {
    let client = env.cp.user_bound_to(ns, "mallory", "edit").await?;
    // What `edit` is: ConfigMaps and pods yes, writing bindings no.
    let bindings: Api<ConfidentialKeyBinding> = Api::namespaced(client.clone(), ns);
    let mine: ConfidentialKeyBinding = serde_json::from_value(json!({
        "apiVersion": "ckb.dev/v1alpha1", "kind": "ConfidentialKeyBinding",
        "metadata": {"name": "mallorys", "namespace": ns},
        "spec": {
            "podSelector": {},
            "key": {"vault": format!("https://{VAULT_HOST}"), "name": "mallorys-key", "adopt": true},
            "attestation": {"authority": DEMO_AUTHORITY},
            "policy": {"configMapRef": {"name": "orders-policy"}, "source": "ConfigMap"}
        }
    }))?;
    match bindings.create(&PostParams::default(), &mine).await {
        Err(kube::Error::Api(e)) if e.code == 403 => {}
        other => bail!("the edit user should not create bindings: {other:?}"),
    }
    Ok(client)
}

fn hashes_in_key(env: &Environment, key: &str) -> Result<BTreeSet<String>> {
    let k = env
        .key(VAULT_HOST, key)
        .with_context(|| format!("key {key} is not in the double"))?;
    let json = k
        .get("release_policy_json")
        .with_context(|| format!("key {key} has no release policy: {k}"))?;
    Ok(ReleasePolicy::from_value(json)?.hostdata_hashes())
}

fn writes_to(log: &[LogEntry], key: &str) -> Vec<LogEntry> {
    log.iter()
        .filter(|e| e.host == VAULT_HOST && e.write && e.path.starts_with(&format!("/keys/{key}")))
        .cloned()
        .collect()
}

fn set(items: &[&String]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

async fn wait_key_hashes(env: &Environment, key: &str, want: BTreeSet<String>) -> Result<()> {
    wait_for(WAIT, &format!("key {key} bound to {want:?}"), || {
        let want = want.clone();
        async move {
            let have = hashes_in_key(env, key)?;
            if have == want {
                Ok(Some(()))
            } else {
                bail!("bound: {have:?}")
            }
        }
    })
    .await
}

/// A Warning event with `reason` on the binding.
async fn wait_warning(env: &Environment, ns: &str, binding: &str, reason: &str) -> Result<Event> {
    let events: Api<Event> = Api::namespaced(env.cp.client(), ns);
    wait_for(
        WAIT,
        &format!("a Warning event {reason} on {binding}"),
        || {
            let events = events.clone();
            async move {
                Ok(events
                    .list(&ListParams::default())
                    .await?
                    .items
                    .into_iter()
                    .find(|e| {
                        e.type_.as_deref() == Some("Warning")
                            && e.reason.as_deref() == Some(reason)
                            && e.involved_object.name.as_deref() == Some(binding)
                    }))
            }
        },
    )
    .await
}

fn confidential_pod(ns: &str, name: &str) -> Pod {
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": ns, "labels": {"app": "orders"}},
        "spec": {"runtimeClassName": "kata-cc-isolation",
                 "containers": [{"name": "app", "image": "registry.example/app:1.0"}]}
    }))
    .expect("pod")
}

async fn patch_binding(env: &Environment, ns: &str, name: &str, patch: Value) -> Result<()> {
    Api::<ConfidentialKeyBinding>::namespaced(env.cp.client(), ns)
        .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    Ok(())
}

/// Waits until the binding's condition `type_` is False with `reason`; returns its message.
async fn wait_false_with(
    env: &Environment,
    ns: &str,
    name: &str,
    type_: &str,
    reason: &str,
) -> Result<String> {
    let b = env
        .wait_binding_condition(ns, name, type_, "False", Some(reason), WAIT)
        .await?;
    let (_, _, msg) = Environment::condition(&b, type_).with_context(|| type_.to_string())?;
    Ok(msg)
}

/// Migration: a binding as written for earlier versions (no spec.policy.sha256, no source) under
/// the chart's default (Pinned): Key Vault is not contacted for its key, and the condition gives
/// the exact line to add; with that line added it is Ready.
async fn an_unpinned_binding_is_told_the_line_to_add(
    env: &Environment,
    ns: &str,
    h1: &str,
) -> Result<()> {
    let legacy: ConfidentialKeyBinding = serde_json::from_value(json!({
        "apiVersion": "ckb.dev/v1alpha1", "kind": "ConfidentialKeyBinding",
        "metadata": {"name": "legacy", "namespace": ns},
        "spec": {
            "podSelector": {"matchLabels": {"app": "legacy"}},
            "key": {"vault": format!("https://{VAULT_HOST}"), "name": "legacy-key",
                    "type": "RSA-HSM", "size": 2048},
            "attestation": {"authority": DEMO_AUTHORITY},
            "policy": {"configMapRef": {"name": "orders-policy", "key": "policy.rego"}}
        }
    }))?;
    let bindings: Api<ConfidentialKeyBinding> = Api::namespaced(env.cp.client(), ns);
    bindings.create(&PostParams::default(), &legacy).await?;
    let msg = wait_false_with(
        env,
        ns,
        "legacy",
        types::POLICY_RESOLVED,
        reasons::POLICY_NOT_PINNED,
    )
    .await?;
    let line = format!("`spec.policy.sha256: [\"{h1}\"]`");
    assert!(msg.contains(&format!("add {line} to the binding")), "{msg}");
    wait_warning(env, ns, "legacy", reasons::POLICY_NOT_PINNED).await?;
    assert!(
        env.double
            .log()
            .iter()
            .all(|e| !e.path.starts_with("/keys/legacy-key")),
        "Key Vault was contacted for an unpinned binding"
    );
    patch_binding(
        env,
        ns,
        "legacy",
        json!({"spec": {"policy": {"sha256": [h1]}}}),
    )
    .await?;
    env.wait_binding_ready(ns, "legacy").await?;
    assert_eq!(hashes_in_key(env, "legacy-key")?, set(&[&h1.to_string()]));
    Ok(())
}

/// Attack 1: the edit user rewrites the policy ConfigMap to an exec-allowing policy. The binding
/// says the hash is not pinned, the webhook refuses new pods naming the expected hash, and
/// nothing is written: the key still releases to v1 only.
async fn a_rewritten_configmap_changes_nothing_in_key_vault(
    env: &Environment,
    ns: &str,
    mallory: &kube::Client,
    evil: &str,
    h1: &str,
) -> Result<()> {
    let he = h(evil);
    env.double.clear_log();
    let cms: Api<ConfigMap> = Api::namespaced(mallory.clone(), ns);
    cms.patch(
        "orders-policy",
        &PatchParams::default(),
        &Patch::Merge(json!({"data": {"policy.rego": evil}})),
    )
    .await?;
    let msg = wait_false_with(
        env,
        ns,
        "orders",
        types::POLICY_RESOLVED,
        reasons::POLICY_HASH_NOT_PINNED,
    )
    .await?;
    assert!(msg.contains(&he) && msg.contains(h1), "{msg}");
    wait_warning(env, ns, "orders", reasons::POLICY_HASH_NOT_PINNED).await?;
    // The webhook refuses new pods, saying which hash the binding expects.
    let pods: Api<Pod> = Api::namespaced(mallory.clone(), ns);
    match pods
        .create(&PostParams::default(), &confidential_pod(ns, "evil"))
        .await
    {
        Err(kube::Error::Api(e)) => {
            assert!(
                e.message.contains(&format!("expects {h1}")),
                "{}",
                e.message
            );
            assert!(e.message.contains(&he), "{}", e.message);
        }
        other => bail!("a pod with the unpinned policy was admitted: {other:?}"),
    }
    // Give the operator a resync's worth of events, then: nothing was written, the key still
    // releases to v1 only.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(writes_to(&env.double.log(), "orders-key"), Vec::new());
    assert_eq!(hashes_in_key(env, "orders-key")?, set(&[&h1.to_string()]));
    Ok(())
}

/// Attack 2: a forged "in use" pod for v1: not confidential (the webhook never sees it), for ever
/// Pending, carrying the injected label, the binding annotation, the v1 hash and even the v1
/// policy annotation.
async fn forge_an_in_use_pod(pods: &Api<Pod>, ns: &str, v1: &str) -> Result<()> {
    let forged: Pod = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "forged", "namespace": ns,
            "labels": {"app": "orders", "ckb.dev/injected": "true"},
            "annotations": {
                labels::BINDINGS: "orders",
                labels::POLICY_SHA256: h(v1),
                labels::AGENT_POLICY: encode_annotation(v1),
            }},
        "spec": {"nodeSelector": {"nowhere": "true"},
                 "containers": [{"name": "app", "image": "registry.example/app:1.0"}]}
    }))?;
    pods.create(&PostParams::default(), &forged).await?;
    Ok(())
}

/// Waits until the binding's status says `hash` is bound because a pod uses it.
async fn wait_in_use(env: &Environment, ns: &str, hash: &str) -> Result<()> {
    wait_for(WAIT, "v1 in use by the old pod", || async {
        let b: ConfidentialKeyBinding = Api::namespaced(env.cp.client(), ns).get("orders").await?;
        let in_use = b
            .status
            .as_ref()
            .and_then(|s| s.policy.as_ref())
            .is_some_and(|p| {
                p.bound_hashes
                    .iter()
                    .any(|x| x.hash == hash && x.reason == ckb_crds::BoundHashReason::InUse)
            });
        Ok(in_use.then_some(()))
    })
    .await
}

/// Attack 6: mark v1 and the evil policy as in grace until 2099. The edit user has no status
/// rights at all; a cluster admin (status rights) does it. When the old pod goes, v1 is pruned
/// although the status says 2099, the forged pod is still there, and the evil hash never reaches
/// the key.
async fn a_status_in_grace_until_2099_keeps_nothing(
    env: &Environment,
    ns: &str,
    mallory: &kube::Client,
    [h1, h2, he]: [&str; 3],
) -> Result<()> {
    let status = json!({"status": {"policy": {"boundHashes": [
        {"hash": h1, "reason": "Grace", "since": "2099-01-01T00:00:00Z"},
        {"hash": h2, "reason": "Current", "since": "2026-01-01T00:00:00Z"},
        {"hash": he, "reason": "Grace", "since": "2099-01-01T00:00:00Z"},
    ]}}});
    match Api::<ConfidentialKeyBinding>::namespaced(mallory.clone(), ns)
        .patch_status("orders", &PatchParams::default(), &Patch::Merge(&status))
        .await
    {
        Err(kube::Error::Api(e)) if e.code == 403 => {}
        other => bail!("the edit user should not patch the binding's status: {other:?}"),
    }
    Api::<ConfidentialKeyBinding>::namespaced(env.cp.client(), ns)
        .patch_status("orders", &PatchParams::default(), &Patch::Merge(&status))
        .await?;
    Api::<Pod>::namespaced(env.cp.client(), ns)
        .delete("old", &DeleteParams::default().grace_period(0))
        .await?;
    wait_key_hashes(env, "orders-key", set(&[&h2.to_string()])).await?;
    let log = env.double.log();
    for w in writes_to(&log, "orders-key") {
        assert_eq!(w.method, "PATCH", "{w:?}");
    }
    assert!(!hashes_in_key(env, "orders-key")?.contains(he));
    // NB: the status may still show the entries the admin patched in: server-side apply keeps
    // list-map entries owned by another field manager. They are never used (see above); Key Vault
    // is the truth.
    Ok(())
}

/// Attacks 1 (ConfigMap rewrite) and 2 (forged "in use" pod) by an `edit` user, 6 (status patch
/// with a `since` in 2099) by a cluster admin; and the binding author's pinned rollout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edit_cannot_change_what_a_key_releases_to_and_status_is_not_trusted() -> Result<()> {
    let env = Environment::start(EnvOptions::default()).await?;
    let ns = "sec-policy";
    let (v1, v2, evil) = (policy_rego("v1"), policy_rego("v2"), evil_rego());
    let (h1, h2, he) = (h(&v1), h(&v2), h(&evil));
    env.create_namespace(ns, true)?;
    env.apply_yaml(&policy_config_map_yaml(ns, "orders-policy", &v1))?;
    env.apply_yaml(
        &BindingManifest::new(ns, "orders", "orders-key")
            .app("orders")
            .pinned(std::slice::from_ref(&h1))
            .adopt(false)
            .deletion("Delete")
            .yaml(),
    )?;
    env.wait_binding_ready(ns, "orders").await?;
    assert_eq!(hashes_in_key(&env, "orders-key")?, set(&[&h1]));

    an_unpinned_binding_is_told_the_line_to_add(&env, ns, &h1).await?;

    let mallory = edit_user(&env, ns).await?;
    let pods: Api<Pod> = Api::namespaced(mallory.clone(), ns);
    // A legitimate pod, injected with v1 (created by the edit user, as workloads are).
    let old = pods
        .create(&PostParams::default(), &confidential_pod(ns, "old"))
        .await?;
    assert_eq!(annotation(&old, labels::POLICY_SHA256), Some(h1.as_str()));

    a_rewritten_configmap_changes_nothing_in_key_vault(&env, ns, &mallory, &evil, &h1).await?;

    // --- Legitimate: the binding's author approves v2 (pins both), the ConfigMap gets v2, a new
    // pod runs v2 next to the old v1 pod.
    patch_binding(
        &env,
        ns,
        "orders",
        json!({"spec": {"policy": {"sha256": [h1, h2]}}}),
    )
    .await?;
    env.apply_yaml(&policy_config_map_yaml(ns, "orders-policy", &v2))?;
    env.wait_binding_ready(ns, "orders").await?;
    wait_key_hashes(&env, "orders-key", set(&[&h1, &h2])).await?;
    let new = pods
        .create(&PostParams::default(), &confidential_pod(ns, "new"))
        .await?;
    assert_eq!(annotation(&new, labels::POLICY_SHA256), Some(h2.as_str()));

    forge_an_in_use_pod(&pods, ns, &v1).await?;
    // The author retires v1. The legitimate old pod (confidential, selected, created before)
    // keeps v1 bound past the grace period (5s)...
    patch_binding(
        &env,
        ns,
        "orders",
        json!({"spec": {"policy": {"sha256": [h2]}}}),
    )
    .await?;
    wait_in_use(&env, ns, &h1).await?;
    assert_eq!(hashes_in_key(&env, "orders-key")?, set(&[&h1, &h2]));

    a_status_in_grace_until_2099_keeps_nothing(&env, ns, &mallory, [&h1, &h2, &he]).await?;
    // The released key follows: the new pod gets it, the old policy does not.
    let new = Api::<Pod>::namespaced(env.cp.client(), ns)
        .get("new")
        .await?;
    env.release_for_pod(&new, |_| {})
        .await?
        .map_err(|e| anyhow::anyhow!("release for the v2 pod: {e}"))?;
    Ok(())
}

/// Sets the key's tags as someone with Key Vault rights would (all tags: Key Vault replaces them).
async fn set_tags_as_owner(env: &Environment, name: &str, key_tags: Value) -> Result<()> {
    let url = format!("{}/keys/{name}?api-version=7.4", env.double_url(VAULT_HOST));
    let resp = env
        .double_client(&[VAULT_HOST])
        .patch(url)
        .bearer_auth(VAULT_ADMIN_KV_TOKEN)
        .json(&json!({"tags": key_tags}))
        .send()
        .await?;
    if !resp.status().is_success() {
        bail!("tagging {name}: {} {}", resp.status(), resp.text().await?);
    }
    Ok(())
}

fn key_tags(env: &Environment, name: &str) -> Result<Value> {
    Ok(env.key(VAULT_HOST, name).context("key")?["tags"].clone())
}

/// Attack 3: the admin of a namespace that is not even opted in writes a binding with
/// `adopt: true` and `deletionPolicy: Delete`, on another team's untagged key: refused for want
/// of the owner's consent; deleting the binding leaves the key as its owner made it.
async fn adopt_across_namespaces_without_consent_is_refused(
    env: &Environment,
    v1: &str,
    their: &str,
) -> Result<()> {
    let ns = "sec-thief";
    env.create_namespace(ns, false)?;
    let thief = env.cp.user_bound_to(ns, "thief", "admin").await?;
    // Created directly in the double, as its owner (another team) would.
    env.create_key_as_vault_admin(VAULT_HOST, "team-a-key", json!({"team": "a"}), their)
        .await?;
    env.double.clear_log();
    env.apply_yaml(&policy_config_map_yaml(ns, "thief-policy", v1))?;
    apply_binding_as(
        &thief,
        &BindingManifest::new(ns, "thief", "team-a-key")
            .app("orders")
            .pinned(&[h(v1)])
            .adopt(true)
            .deletion("Delete")
            .yaml(),
    )
    .await?;
    let msg = wait_false_with(
        env,
        ns,
        "thief",
        types::KEY_READY,
        reasons::ADOPT_CONSENT_MISSING,
    )
    .await?;
    assert!(msg.contains("ckb-adopt=sec-thief/thief"), "{msg}");
    wait_warning(env, ns, "thief", reasons::ADOPT_CONSENT_MISSING).await?;
    Api::<ConfidentialKeyBinding>::namespaced(thief.clone(), ns)
        .delete("thief", &DeleteParams::default())
        .await?;
    wait_for(WAIT, "the thief binding gone", || async {
        let left = Api::<ConfidentialKeyBinding>::namespaced(env.cp.client(), ns)
            .get_opt("thief")
            .await?;
        Ok(left.is_none().then_some(()))
    })
    .await?;
    assert_eq!(writes_to(&env.double.log(), "team-a-key"), Vec::new());
    assert_eq!(
        hashes_in_key(env, "team-a-key")?,
        set(&[&their.to_string()])
    );
    assert_eq!(key_tags(env, "team-a-key")?, json!({"team": "a"}));
    Ok(())
}

/// A binding with a Retained key in `ns`, then the namespace deleted: the key stays, tagged with
/// the first binding's UID, which is returned.
async fn retain_a_key_and_delete_its_namespace(
    env: &Environment,
    ns: &str,
    v1: &str,
) -> Result<String> {
    env.create_namespace(ns, true)?;
    env.apply_yaml(&policy_config_map_yaml(ns, "orders-policy", v1))?;
    env.apply_yaml(
        &BindingManifest::new(ns, "orders", "team-key")
            .app("orders")
            .pinned(&[h(v1)])
            .adopt(false)
            .deletion("Retain")
            .yaml(),
    )?;
    let first = env.wait_binding_ready(ns, "orders").await?;
    let first_uid = first.metadata.uid.clone().context("uid")?;
    assert_eq!(
        key_tags(env, "team-key")?[tags::BINDING_UID],
        json!(first_uid)
    );
    env.kubectl(&["delete", "namespace", ns, "--wait=false"])?;
    env.wait_namespace_gone(ns, Duration::from_secs(120))
        .await?;
    assert!(
        env.key(VAULT_HOST, "team-key").is_some(),
        "Retain keeps the key"
    );
    Ok(first_uid)
}

/// The namespace admin writes bindings but not their status (the chart's role has no status): a
/// forged status naming the key is refused.
async fn a_namespace_admin_cannot_write_status(newcomer: &kube::Client, ns: &str) -> Result<()> {
    let forged = json!({"status": {"key": {"id": "https://x/keys/team-key/v0", "version": "v0",
                                           "keyType": "RSA-HSM"}}});
    match Api::<ConfidentialKeyBinding>::namespaced(newcomer.clone(), ns)
        .patch_status("orders", &PatchParams::default(), &Patch::Merge(&forged))
        .await
    {
        Err(kube::Error::Api(e)) if e.code == 403 => Ok(()),
        other => bail!("a namespace admin patched a binding's status: {other:?}"),
    }
}

/// Legitimate: the documented claim. The binding's author (the namespace admin) asks
/// (adopt: true) and the key's owner, with Key Vault rights, consents with the tag; the key is
/// then this binding's, with its policy and no new version.
async fn the_owner_s_consent_hands_the_key_over(
    env: &Environment,
    ns: &str,
    newcomer: &kube::Client,
    h2: &str,
) -> Result<()> {
    Api::<ConfidentialKeyBinding>::namespaced(newcomer.clone(), ns)
        .patch(
            "orders",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"key": {"adopt": true}}})),
        )
        .await?;
    env.wait_binding_condition(
        ns,
        "orders",
        types::KEY_READY,
        "False",
        Some(reasons::ADOPT_CONSENT_MISSING),
        WAIT,
    )
    .await?;
    assert_eq!(writes_to(&env.double.log(), "team-key"), Vec::new());
    let mut consent = key_tags(env, "team-key")?;
    consent[tags::ADOPT] = json!("sec-team/orders");
    set_tags_as_owner(env, "team-key", consent).await?;
    // Key Vault sends no events: the operator sees the tag at its next resync, or at once when
    // the binding is touched, as here.
    Api::<ConfidentialKeyBinding>::namespaced(env.cp.client(), ns)
        .patch(
            "orders",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {"example.com/claimed": "yes"}}})),
        )
        .await?;
    let b = env.wait_binding_ready(ns, "orders").await?;
    let t = key_tags(env, "team-key")?;
    assert_eq!(t[tags::BINDING_UID], json!(b.metadata.uid.clone().unwrap()));
    assert!(t.get(tags::ADOPT).is_none(), "{t}");
    assert_eq!(hashes_in_key(env, "team-key")?, set(&[&h2.to_string()]));
    assert_eq!(env.key_versions(VAULT_HOST, "team-key"), 1);
    Ok(())
}

/// Attacks 3 (adopt across namespaces without the owner's consent) and 4 (a namespace deleted
/// and re-created with the same name inheriting a Retained key), each by the admin of the
/// attacking namespace (writing bindings is `admin`'s, not `edit`'s); and the documented claim.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_are_owned_by_identity_and_adopt_needs_the_owner_s_consent() -> Result<()> {
    let env = Environment::start(EnvOptions::default()).await?;
    let v1 = policy_rego("v1");
    let h1 = h(&v1);
    let their = "ab".repeat(32);
    adopt_across_namespaces_without_consent_is_refused(&env, &v1, &their).await?;

    // --- Attack 4: a namespace with a Retained key is deleted and re-created with the same name.
    let ns = "sec-team";
    let first_uid = retain_a_key_and_delete_its_namespace(&env, ns, &v1).await?;
    // The new namespace's admin (another team, the same namespace name) writes a binding of the
    // same name for the same key.
    let v2 = policy_rego("someone else's");
    let h2 = h(&v2);
    env.double.clear_log();
    env.create_namespace(ns, true)?;
    let newcomer = env.cp.user_bound_to(ns, "newcomer", "admin").await?;
    env.apply_yaml(&policy_config_map_yaml(ns, "orders-policy", &v2))?;
    a_namespace_admin_cannot_write_status(&newcomer, ns).await?;
    apply_binding_as(
        &newcomer,
        &BindingManifest::new(ns, "orders", "team-key")
            .app("orders")
            .pinned(std::slice::from_ref(&h2))
            .adopt(false)
            .deletion("Delete")
            .yaml(),
    )
    .await?;
    let msg = wait_false_with(&env, ns, "orders", types::KEY_READY, reasons::KEY_NOT_OWNED).await?;
    assert!(
        msg.contains(&first_uid) && msg.contains("ckb-adopt=sec-team/orders"),
        "{msg}"
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(writes_to(&env.double.log(), "team-key"), Vec::new());
    assert_eq!(hashes_in_key(&env, "team-key")?, set(&[&h1]));

    the_owner_s_consent_hands_the_key_over(&env, ns, &newcomer, &h2).await?;
    Ok(())
}
