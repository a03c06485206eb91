//! Cluster-level bounds and bounded resources, end to end on a real control plane (issue 10):
//!
//! - who may write bindings is an RBAC grant: a user bound to `edit` in a namespace cannot create
//!   or patch bindings (nor grants), one bound to `admin` can;
//! - a binding, even one a namespace admin applied, never reaches a vault, an attestation
//!   authority, a debuggable VM, a compliance value, a key name, adopt or Delete that the cluster
//!   admin did not allow (the operator's flags, or a ConfidentialKeyGrant): each is refused with
//!   its condition reason and an Event, and the Key Vault double's request log shows the vault
//!   was never contacted for it; a granted binding still becomes Ready;
//! - narrowing a grant (an authority, a namespace) refuses the bindings it no longer covers, with
//!   no request to the vault for them;
//! - the grant CRD is optional: without it the caches sync ("no grants"), and a CRD installed
//!   later is picked up;
//! - the policy cache holds only what bindings reference: a 0.9 MB labelled ConfigMap nobody
//!   references is not in memory.
//!
//! Run one at a time: `cargo test -p ckb-e2e --test security_bounds_e2e -- --test-threads=1`.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use ckb_crds::ConfidentialKeyBinding;
use ckb_crds::conditions::{reasons, types};
use ckb_crds::grant::ConfidentialKeyGrant;
use ckb_doubles::LogEntry;
use ckb_e2e::cluster::ControlPlane;
use ckb_e2e::suite_env::{DEMO_AUTHORITY, EnvOptions, Environment, crd_established, wait_for};
use ckb_operator::caches::{PolicyKey, PolicySummary};
use ckb_operator::controller::runtime::{reflectors, store_ready};
use ckb_operator::policy::hash_rego;
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use serde_json::{Value, json};

const VAULT: &str = "https://demo.vault.azure.net";
const VAULT_HOST: &str = "demo.vault.azure.net";
const ATTACKER: &str = "https://attacker.example.com:8443";
const WAIT: Duration = Duration::from_secs(90);

fn binding(ns: &str, name: &str, key: &str, patch: Value) -> ConfidentialKeyBinding {
    let mut spec = json!({
        "podSelector": {"matchLabels": {"app": name}},
        "key": {"vault": VAULT, "name": key, "type": "RSA-HSM", "size": 2048},
        "attestation": {"authority": DEMO_AUTHORITY, "complianceStatus": "azure-signed-katacc-uvm"},
        // These bindings are about the cluster's bounds, not about pinning: they follow the
        // ConfigMap explicitly (the operator's default is Pinned).
        "policy": {"configMapRef": {"name": "policy", "key": "policy.rego"}, "source": "ConfigMap"}
    });
    merge(&mut spec, patch);
    let mut b = ConfidentialKeyBinding::new(name, serde_json::from_value(spec).expect("spec"));
    b.metadata.namespace = Some(ns.into());
    b
}

fn merge(into: &mut Value, patch: Value) {
    match (into, patch) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in b {
                merge(a.entry(k).or_insert(Value::Null), v);
            }
        }
        (slot, v) => *slot = v,
    }
}

fn policy_config_map(ns: &str, name: &str, data: BTreeMap<String, String>) -> ConfigMap {
    serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": ns, "labels": {"ckb.dev/policy": "true"}},
        "data": data
    }))
    .expect("ConfigMap")
}

fn rego(variant: &str) -> String {
    format!("package agent_policy\n\n# {variant}\ndefault CreateContainerRequest := true\n")
}

/// Requests to the double naming key `name` (any method).
fn requests_for_key<'a>(log: &'a [LogEntry], name: &str) -> Vec<&'a LogEntry> {
    let prefix = format!("/keys/{name}");
    log.iter()
        .filter(|e| e.path == prefix || e.path.starts_with(&format!("{prefix}/")))
        .collect()
}

fn is_forbidden(r: &kube::Result<impl std::fmt::Debug>) -> bool {
    matches!(r, Err(kube::Error::Api(ae)) if ae.code == 403)
}

/// Waits until the binding is refused with `reason` and an Event with that reason names it.
async fn expect_refused(env: &Environment, ns: &str, name: &str, reason: &str) -> Result<()> {
    let b = env
        .wait_binding_condition(ns, name, types::KEY_READY, "False", Some(reason), WAIT)
        .await?;
    let (_, _, message) = Environment::condition(&b, types::KEY_READY).context("KeyReady")?;
    assert!(message.contains("not contacted"), "{name}: {message}");
    let ready = Environment::condition(&b, types::READY).context("Ready")?;
    assert_eq!(ready.0, "False", "{name}");
    let events: Api<Event> = Api::namespaced(env.cp.client(), ns);
    wait_for(WAIT, &format!("a {reason} event on {ns}/{name}"), || {
        let events = events.clone();
        async move {
            let found = events
                .list(&Default::default())
                .await?
                .items
                .into_iter()
                .any(|e| {
                    e.reason.as_deref() == Some(reason)
                        && e.type_.as_deref() == Some("Warning")
                        && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name)
                });
            Ok(found.then_some(()))
        }
    })
    .await
}

/// A refused binding: its name, its key's name, its spec patch and the reason it is refused with.
type RefusedCase = (&'static str, &'static str, Value, &'static str);

/// The grant the cluster admin makes for team-a.
fn team_a_grant(ns: &str) -> ConfidentialKeyGrant {
    let spec = json!({
        "vault": VAULT,
        "namespaces": {"names": [ns]},
        "keyNamePrefix": "{namespace}-",
        "attestation": {"authorities": [DEMO_AUTHORITY]},
        "rateLimitPercent": 20
    });
    ConfidentialKeyGrant::new("team-a", serde_json::from_value(spec).expect("grant spec"))
}

/// A binding spec patch naming the team-a grant, with `patch` on top.
fn granted(patch: Value) -> Value {
    let mut p = json!({"grantRef": {"name": "team-a"}});
    merge(&mut p, patch);
    p
}

/// Simple mode (no grantRef): what the operator's flags refuse (authorities, compliance values,
/// debuggable VMs, vaults).
fn refused_by_the_flags() -> [RefusedCase; 4] {
    [
        (
            "attacker",
            "attacker-key",
            json!({"attestation": {"authority": ATTACKER}}),
            reasons::AUTHORITY_NOT_ALLOWED,
        ),
        (
            "debug",
            "debug-key",
            json!({"attestation": {"allowDebuggable": true}}),
            reasons::DEBUGGABLE_NOT_ALLOWED,
        ),
        (
            "aci",
            "aci-key",
            json!({"attestation": {"complianceStatus": "azure-compliant-uvm"}}),
            reasons::COMPLIANCE_STATUS_NOT_ALLOWED,
        ),
        (
            "elsewhere",
            "elsewhere-key",
            json!({"key": {"vault": "https://elsewhere.vault.azure.net"}}),
            reasons::VAULT_NOT_ALLOWED,
        ),
    ]
}

/// Grant mode: what the team-a grant refuses, and a grant nobody made.
fn refused_by_the_grant() -> [RefusedCase; 8] {
    [
        (
            "g-attacker",
            "team-a-attacker",
            granted(json!({"attestation": {"authority": ATTACKER}})),
            reasons::AUTHORITY_NOT_ALLOWED,
        ),
        (
            "g-debug",
            "team-a-debug",
            granted(json!({"attestation": {"allowDebuggable": true}})),
            reasons::DEBUGGABLE_NOT_ALLOWED,
        ),
        (
            "g-aci",
            "team-a-aci",
            granted(json!({"attestation": {"complianceStatus": "azure-compliant-uvm"}})),
            reasons::COMPLIANCE_STATUS_NOT_ALLOWED,
        ),
        (
            "g-vault",
            "team-a-vault",
            granted(json!({"key": {"vault": "https://other.vault.azure.net"}})),
            reasons::VAULT_NOT_ALLOWED,
        ),
        (
            "g-scope",
            "orders",
            granted(json!({})),
            reasons::KEY_NAME_NOT_ALLOWED,
        ),
        (
            "g-adopt",
            "team-a-adopt",
            granted(json!({"key": {"adopt": true}})),
            reasons::ADOPT_NOT_ALLOWED,
        ),
        (
            "g-delete",
            "team-a-delete",
            granted(json!({"key": {"deletionPolicy": "Delete"}})),
            reasons::DELETION_NOT_ALLOWED,
        ),
        (
            "g-missing",
            "team-a-missing",
            json!({"grantRef": {"name": "nobody-made-this"}}),
            reasons::GRANT_NOT_FOUND,
        ),
    ]
}

/// Creates both namespaces, each with its policy ConfigMap.
async fn namespaces_with_policies(env: &Environment, namespaces: [&str; 2]) -> Result<()> {
    for n in namespaces {
        env.create_namespace(n, true)?;
    }
    for n in namespaces {
        let cms: Api<ConfigMap> = Api::namespaced(env.cp.client(), n);
        cms.create(
            &PostParams::default(),
            &policy_config_map(n, "policy", [("policy.rego".into(), rego(n))].into()),
        )
        .await?;
    }
    Ok(())
}

/// RBAC: the chart's roles are aggregated into admin (write) and view (read) only. The owner
/// creates the `simple` binding; the editor can read bindings but cannot create, patch or delete
/// one; neither may write grants (cluster-scoped, cluster admins only).
async fn only_admin_writes_bindings_and_nobody_in_the_namespace_writes_grants(
    ns: &str,
    editor: &Client,
    owner: &Client,
) -> Result<()> {
    let as_editor: Api<ConfidentialKeyBinding> = Api::namespaced(editor.clone(), ns);
    let as_owner: Api<ConfidentialKeyBinding> = Api::namespaced(owner.clone(), ns);
    let simple = binding(ns, "simple", "simple-key", json!({}));
    wait_for(WAIT, "admin to be allowed to create bindings", || {
        let (api, b) = (as_owner.clone(), simple.clone());
        async move {
            match api.create(&PostParams::default(), &b).await {
                Ok(_) => Ok(Some(())),
                Err(kube::Error::Api(ae)) if ae.code == 403 => bail!("not yet: {}", ae.message),
                Err(e) => Err(e.into()),
            }
        }
    })
    .await?;
    wait_for(WAIT, "edit to be allowed to read bindings", || {
        let api = as_editor.clone();
        async move { Ok(api.list(&Default::default()).await.ok().map(|_| ())) }
    })
    .await?;
    let created = as_editor
        .create(
            &PostParams::default(),
            &binding(ns, "sneaky", "sneaky-key", json!({})),
        )
        .await;
    assert!(
        is_forbidden(&created),
        "edit created a binding: {created:?}"
    );
    let patched = as_editor
        .patch(
            "simple",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"attestation": {"authority": ATTACKER}}})),
        )
        .await;
    assert!(
        is_forbidden(&patched),
        "edit patched a binding: {patched:?}"
    );
    let deleted = as_editor.delete("simple", &DeleteParams::default()).await;
    assert!(
        is_forbidden(&deleted),
        "edit deleted a binding: {deleted:?}"
    );
    let grant = team_a_grant(ns);
    for (who, client) in [("edit", editor), ("admin", owner)] {
        let r = Api::<ConfidentialKeyGrant>::all(client.clone())
            .create(&PostParams::default(), &grant)
            .await;
        assert!(is_forbidden(&r), "{who} created a grant: {r:?}");
    }
    Ok(())
}

/// The double's request log: not one request for any refused binding's key (nor for the binding
/// borrowing team-a's grant from team-b), nor to a vault that was not granted; the granted and
/// simple ones were created.
fn assert_only_allowed_keys_reached_the_vault(env: &Environment, refused: &[RefusedCase]) {
    let log = env.double.log();
    for (name, key, _, _) in refused {
        let seen = requests_for_key(&log, key);
        assert!(
            seen.is_empty(),
            "{name}: the vault was contacted for {key}: {seen:?}"
        );
    }
    assert!(requests_for_key(&log, "team-a-borrowed").is_empty());
    let other_hosts: Vec<_> = log.iter().filter(|e| e.host != VAULT_HOST).collect();
    assert!(other_hosts.is_empty(), "{other_hosts:?}");
    assert!(env.key(VAULT_HOST, "team-a-orders").is_some());
    assert!(env.key(VAULT_HOST, "simple-key").is_some());
}

/// The cluster admin narrows the grant: the authority the binding names is no longer allowed,
/// then (authority back) the namespace is no longer granted. Each time the binding is refused
/// and its vault is not contacted for it. Widened back, the binding is Ready again, its key as
/// it was.
async fn narrowing_the_grant_refuses_its_binding(
    env: &Environment,
    ns: &str,
    other_ns: &str,
) -> Result<()> {
    let grants: Api<ConfidentialKeyGrant> = Api::all(env.cp.client());
    let before = requests_for_key(&env.double.log(), "team-a-orders").len();
    let other_authority = "https://sharedwus.wus.attest.azure.net";
    grants
        .patch(
            "team-a",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"attestation": {"authorities": [other_authority]}}})),
        )
        .await?;
    expect_refused(env, ns, "granted", reasons::AUTHORITY_NOT_ALLOWED).await?;
    grants
        .patch(
            "team-a",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {
                "attestation": {"authorities": [DEMO_AUTHORITY]},
                "namespaces": {"names": [other_ns]}
            }})),
        )
        .await?;
    expect_refused(env, ns, "granted", reasons::NAMESPACE_NOT_GRANTED).await?;
    assert_eq!(
        requests_for_key(&env.double.log(), "team-a-orders").len(),
        before,
        "the vault was contacted for a binding the narrowed grant no longer covers"
    );
    grants
        .patch(
            "team-a",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"namespaces": {"names": [ns]}}})),
        )
        .await?;
    env.wait_binding_ready(ns, "granted").await?;
    Ok(())
}

/// The grant goes: its binding stops at GrantNotFound, and nothing more is sent for its key.
async fn deleting_the_grant_stops_its_binding(env: &Environment, ns: &str) -> Result<()> {
    let before = requests_for_key(&env.double.log(), "team-a-orders").len();
    Api::<ConfidentialKeyGrant>::all(env.cp.client())
        .delete("team-a", &DeleteParams::default())
        .await?;
    expect_refused(env, ns, "granted", reasons::GRANT_NOT_FOUND).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        requests_for_key(&env.double.log(), "team-a-orders").len(),
        before,
        "the vault was contacted after the grant was deleted"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_admin_writes_bindings_and_no_binding_reaches_what_the_cluster_admin_did_not_allow()
-> Result<()> {
    let t0 = Instant::now();
    let env = Environment::start(EnvOptions::default()).await?;
    let (ns, other_ns) = ("team-a", "team-b");
    namespaces_with_policies(&env, [ns, other_ns]).await?;
    let admin = env.cp.client();
    let editor = env.cp.user_bound_to(ns, "editor", "edit").await?;
    let owner = env.cp.user_bound_to(ns, "owner", "admin").await?;
    let as_owner: Api<ConfidentialKeyBinding> = Api::namespaced(owner.clone(), ns);

    only_admin_writes_bindings_and_nobody_in_the_namespace_writes_grants(ns, &editor, &owner)
        .await?;
    env.wait_binding_ready(ns, "simple").await?;

    // The cluster admin's grant for team-a; the owner applies every refused binding.
    Api::<ConfidentialKeyGrant>::all(admin.clone())
        .create(&PostParams::default(), &team_a_grant(ns))
        .await?;
    let refused: Vec<RefusedCase> = refused_by_the_flags()
        .into_iter()
        .chain(refused_by_the_grant())
        .collect();
    for (name, key, patch, _) in &refused {
        as_owner
            .create(
                &PostParams::default(),
                &binding(ns, name, key, patch.clone()),
            )
            .await
            .with_context(|| format!("admin creates {name}"))?;
    }
    // A grant for team-a is no grant for team-b, whoever applies there.
    let team_b: Api<ConfidentialKeyBinding> = Api::namespaced(admin.clone(), other_ns);
    team_b
        .create(
            &PostParams::default(),
            &binding(other_ns, "borrowed", "team-a-borrowed", granted(json!({}))),
        )
        .await?;
    // The granted binding.
    as_owner
        .create(
            &PostParams::default(),
            &binding(ns, "granted", "team-a-orders", granted(json!({}))),
        )
        .await?;

    for (name, _, _, reason) in &refused {
        expect_refused(&env, ns, name, reason).await?;
    }
    expect_refused(&env, other_ns, "borrowed", reasons::NAMESPACE_NOT_GRANTED).await?;
    env.wait_binding_ready(ns, "granted").await?;
    assert_only_allowed_keys_reached_the_vault(&env, &refused);

    narrowing_the_grant_refuses_its_binding(&env, ns, other_ns).await?;
    deleting_the_grant_stops_its_binding(&env, ns).await?;
    eprintln!("test done in {:?}", t0.elapsed());
    Ok(())
}

async fn install_crds(client: &Client) -> Result<()> {
    install(
        client,
        [ckb_operator::crds::crd(), ckb_operator::crds::grant::crd()],
    )
    .await
}

async fn install(
    client: &Client,
    crds_: impl IntoIterator<Item = CustomResourceDefinition>,
) -> Result<()> {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    for crd in crds_ {
        let name = crd.metadata.name.clone().unwrap_or_default();
        crds.create(&PostParams::default(), &crd).await?;
        crd_established(client, &name, WAIT).await?;
    }
    Ok(())
}

/// The largest entry of the policy cache, in bytes of JSON.
fn largest_cached(store: &kube::runtime::reflector::Store<PolicySummary>) -> usize {
    store
        .state()
        .iter()
        .map(|c| serde_json::to_vec(c.as_ref()).map_or(0, |v| v.len()))
        .max()
        .unwrap_or(0)
}

/// The keys an entry of the policy cache was summarized for.
fn cached_keys(store: &kube::runtime::reflector::Store<PolicySummary>, name: &str) -> Vec<String> {
    store
        .state()
        .iter()
        .find(|c| c.metadata.name.as_deref() == Some(name))
        .map(|c| c.keys.keys().cloned().collect())
        .unwrap_or_default()
}

fn cached_names(store: &kube::runtime::reflector::Store<PolicySummary>) -> Vec<String> {
    let mut names: Vec<String> = store
        .state()
        .iter()
        .map(|c| c.metadata.name.clone().unwrap_or_default())
        .collect();
    names.sort();
    names
}

/// What any user with `edit` can write, as that user: a labelled 0.9 MB ConfigMap nobody
/// references (`junk`); a referenced one with a small policy and 0.9 MB under another key
/// (`orders-policy`); a referenced one whose policy itself is 0.9 MB, over the annotation limit
/// (`huge-policy`).
async fn write_policy_config_maps(
    cms: &Api<ConfigMap>,
    ns: &str,
    small: &str,
    big: &str,
) -> Result<()> {
    // What any user with `edit` can write: a labelled 0.9 MB ConfigMap nobody references.
    cms.create(
        &PostParams::default(),
        &policy_config_map(ns, "junk", [("policy.rego".into(), big.to_string())].into()),
    )
    .await?;
    // A referenced ConfigMap with a small policy and 0.9 MB under another key.
    cms.create(
        &PostParams::default(),
        &policy_config_map(
            ns,
            "orders-policy",
            [
                ("policy.rego".into(), small.to_string()),
                ("padding".into(), big.to_string()),
            ]
            .into(),
        ),
    )
    .await?;
    // A referenced ConfigMap whose policy itself is 0.9 MB (over the annotation limit).
    cms.create(
        &PostParams::default(),
        &policy_config_map(
            ns,
            "huge-policy",
            [("policy.rego".into(), big.to_string())].into(),
        ),
    )
    .await?;
    Ok(())
}

/// The size and hash the policy cache holds for `policy.rego` of ConfigMap `name`, if it holds
/// its text's summary.
fn cached_policy(
    store: &kube::runtime::reflector::Store<PolicySummary>,
    name: &str,
) -> Option<(usize, ckb_operator::policy::PolicyHash)> {
    store
        .state()
        .iter()
        .find(|c| c.metadata.name.as_deref() == Some(name))
        .and_then(|c| match c.keys.get("policy.rego") {
            Some(PolicyKey::Text { bytes, hash, .. }) => Some((*bytes, hash.clone())),
            _ => None,
        })
}

/// A binding that starts referencing a ConfigMap (`junk`, key `other`) brings it (its referenced
/// key only) into the cache; when the binding goes, so does the ConfigMap.
async fn a_late_reference_brings_a_config_map_in_and_out(
    cms: &Api<ConfigMap>,
    bindings: &Api<ConfidentialKeyBinding>,
    store: &kube::runtime::reflector::Store<PolicySummary>,
    ns: &str,
    small: &str,
) -> Result<()> {
    let mut late = binding(ns, "late", "late", json!({}));
    late.spec.policy.config_map_ref.name = "junk".into();
    late.spec.policy.config_map_ref.key = "other".into();
    cms.patch(
        "junk",
        &PatchParams::default(),
        &Patch::Merge(json!({"data": {"other": small}})),
    )
    .await?;
    bindings.create(&PostParams::default(), &late).await?;
    wait_for(WAIT, "junk cached with only its referenced key", || {
        let keys = cached_keys(store, "junk");
        async move { Ok((keys == vec!["other".to_string()]).then_some(())) }
    })
    .await?;
    bindings.delete("late", &DeleteParams::default()).await?;
    wait_for(WAIT, "junk out of the cache", || {
        let store = store.clone();
        async move { Ok((!cached_names(&store).contains(&"junk".to_string())).then_some(())) }
    })
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_policy_cache_holds_only_what_bindings_reference_and_never_the_text() -> Result<()> {
    let cp = ControlPlane::start().await.context("control plane")?;
    let client = cp.client();
    install_crds(&client).await?;
    let ns = "mem";
    cp.kubectl(["create", "namespace", ns])?;
    // The ConfigMaps are written by a user bound to the built-in `edit` role in the namespace,
    // as an attacker with only that role would.
    let editor = cp.user_bound_to(ns, "editor", "edit").await?;
    let cms: Api<ConfigMap> = Api::namespaced(editor, ns);
    let big = "x".repeat(900 * 1024);
    let small = rego("small");
    write_policy_config_maps(&cms, ns, &small, &big).await?;
    let bindings: Api<ConfidentialKeyBinding> = Api::namespaced(client.clone(), ns);
    let mut orders = binding(ns, "orders", "orders", json!({}));
    orders.spec.policy.config_map_ref.name = "orders-policy".into();
    bindings.create(&PostParams::default(), &orders).await?;
    let mut huge = binding(ns, "huge", "huge", json!({}));
    huge.spec.policy.config_map_ref.name = "huge-policy".into();
    bindings.create(&PostParams::default(), &huge).await?;

    let (caches, _triggers, driver) = reflectors(client.clone());
    let task = tokio::spawn(driver);
    tokio::time::timeout(WAIT, store_ready(&caches.config_maps))
        .await
        .context("the policy cache did not sync")?;
    let store = caches.config_maps.clone();
    assert_eq!(cached_names(&store), vec!["huge-policy", "orders-policy"]);
    // Per referenced key a hash and a size, never the text: 2.7 MB written, under 1 KiB held each.
    let held = largest_cached(&store);
    assert!(held < 1024, "a cache entry holds {held} bytes");
    assert_eq!(cached_keys(&store, "orders-policy"), vec!["policy.rego"]);
    let hash_of = |name: &str| cached_policy(&store, name);
    assert_eq!(
        hash_of("orders-policy"),
        Some((small.len(), hash_rego(small.as_bytes())))
    );
    // The policy over the annotation limit: its size is known (PolicyTooLarge), its text not held.
    assert_eq!(hash_of("huge-policy").map(|(n, _)| n), Some(big.len()));

    // A change of a referenced policy reaches the cache.
    let newer = rego("newer");
    cms.patch(
        "orders-policy",
        &PatchParams::default(),
        &Patch::Merge(json!({"data": {"policy.rego": newer}})),
    )
    .await?;
    let newer_hash = hash_rego(newer.as_bytes());
    wait_for(WAIT, "the changed policy in the cache", || {
        let found = hash_of("orders-policy").is_some_and(|(_, h)| h == newer_hash);
        async move { Ok(found.then_some(())) }
    })
    .await?;
    a_late_reference_brings_a_config_map_in_and_out(&cms, &bindings, &store, ns, &small).await?;
    assert!(largest_cached(&store) < 1024);
    task.abort();
    Ok(())
}

/// A cluster that never installed the grant CRD (simple mode only): the caches sync, so the
/// readiness probe and the controller do not wait for ever; a CRD installed later is picked up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_grant_crd_the_caches_sync_with_no_grants_and_pick_it_up_later() -> Result<()> {
    let cp = ControlPlane::start().await.context("control plane")?;
    let client = cp.client();
    install(&client, [ckb_operator::crds::crd()]).await?;
    let (caches, _triggers, driver) = reflectors(client.clone());
    let task = tokio::spawn(driver);
    tokio::time::timeout(WAIT, caches.wait_until_ready())
        .await
        .context("the caches did not sync without the grant CRD")?;
    assert!(caches.grants.grants.state().is_empty());

    install(&client, [ckb_operator::crds::grant::crd()]).await?;
    let grant: ConfidentialKeyGrant = ConfidentialKeyGrant::new(
        "later",
        serde_json::from_value(json!({
            "vault": VAULT,
            "namespaces": {"names": ["team-a"]},
            "attestation": {"authorities": [DEMO_AUTHORITY]}
        }))?,
    );
    Api::<ConfidentialKeyGrant>::all(client.clone())
        .create(&PostParams::default(), &grant)
        .await?;
    let store = caches.grants.grants.clone();
    wait_for(WAIT, "the grant in the cache", || {
        let store = store.clone();
        async move { Ok((!store.state().is_empty()).then_some(())) }
    })
    .await?;
    task.abort();
    Ok(())
}
