//! Workload identity end to end, on a real control plane:
//!
//! - the real Azure Workload Identity (AWI) webhook (built from its Go module by
//!   `e2e/scripts/build-awi.sh`) registered beside ours, under its shipped configuration name
//!   (which the API server calls before ours), and under a name that sorts after ours: either way
//!   the injected `skr` sidecar of the pod the API server stores carries the pod's `AZURE_*`
//!   variables and token mount exactly once; a pod without the opt-in label gets our warning and
//!   no identity in `skr`;
//! - the operator authenticates to Key Vault with the workload identity the chart configures: a
//!   ServiceAccount token from the API server's TokenRequest API, refreshed before it expires,
//!   exchanged at the Entra ID double, and access tokens renewed before they expire; the Key Vault
//!   double sees tokens of the Entra double only, never an expired one;
//! - a federation for another subject is a `KeyVaultForbidden` condition naming the identity: from
//!   the start (no exchange ever succeeds; fixing the federation makes the binding Ready without a
//!   restart), and when it changes under a running operator, as soon as the access token it holds
//!   is refreshed (that token stays valid, as a real one would, but is in its refresh window).
//!
//! Run one at a time: `cargo test -p ckb-e2e --test workload_identity_e2e -- --test-threads=1`.

use std::collections::BTreeSet;
use std::time::Duration;

use anyhow::{Context as _, Result, bail, ensure};
use ckb_crds::conditions::{reasons, types};
use ckb_e2e::suite_env::{
    BindingManifest, EnvOptions, Environment, NAMESPACE, policy_config_map_yaml, wait_for,
};
use ckb_e2e::workload_identity::{
    AUTHORITY_HOST_URL, AWI_TENANT_ID, AwiWebhook, IdentityOptions, OPERATOR_CLIENT_ID,
};
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use serde_json::{Value, json};

/// AWI's configuration name as its chart and manifests ship it.
const AWI_SHIPPED_NAME: &str = "azure-wi-webhook-mutating-webhook-configuration";
/// A name that sorts after ours (`ckb-operator`).
const AWI_LATER_NAME: &str = "zz-azure-wi-webhook-mutating-webhook-configuration";
/// Our configuration's name (the chart's full name for release `ckb-operator`).
const OUR_CONFIGURATION: &str = "ckb-operator";
/// The client id on the apps' ServiceAccount (`azure.workload.identity/client-id`).
const APP_CLIENT_ID: &str = "0d3a5e7c-0000-4000-8000-0000000000a1";
const APPS: &str = "wi-apps";
const IDENTITY_VARS: [&str; 4] = [
    "AZURE_CLIENT_ID",
    "AZURE_TENANT_ID",
    "AZURE_FEDERATED_TOKEN_FILE",
    "AZURE_AUTHORITY_HOST",
];

fn policy_rego() -> String {
    "package agent_policy\n\n# workload identity e2e\ndefault CreateContainerRequest := true\n"
        .into()
}

/// The apps' ServiceAccount (federated in Entra), the policy ConfigMap and a binding of key
/// `key` to the pods `app=<app>`.
fn apps_yaml(binding: &str, app: &str, key: &str) -> String {
    format!(
        "apiVersion: v1\nkind: ServiceAccount\nmetadata:\n  name: {app}\n  namespace: {APPS}\n  \
         annotations:\n    azure.workload.identity/client-id: {APP_CLIENT_ID}\n---\n{}---\n{}",
        policy_config_map_yaml(APPS, &format!("{binding}-policy"), &policy_rego()),
        BindingManifest::new(APPS, binding, key).app(app).yaml()
    )
}

/// A confidential pod `app=<app>` running as ServiceAccount `<app>`, opted in to workload identity
/// when `wi`.
fn pod_json(name: &str, app: &str, wi: bool) -> Value {
    let mut labels = json!({"app": app});
    if wi {
        labels["azure.workload.identity/use"] = json!("true");
    }
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": APPS, "labels": labels},
        "spec": {
            "runtimeClassName": "kata-cc-isolation",
            "serviceAccountName": app,
            "containers": [{"name": "app", "image": "registry.example/app:1.0"}],
        },
    })
}

fn container<'a>(pod: &'a Value, name: &str) -> Result<&'a Value> {
    pod["spec"]["containers"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["name"] == name)
        .with_context(|| format!("no container {name} in {pod}"))
}

/// The AZURE_* variables of a container: name -> every value it has (to see duplicates).
fn azure_env(c: &Value) -> Vec<(String, String)> {
    c["env"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| {
            let n = e["name"].as_str()?;
            n.starts_with("AZURE_")
                .then(|| (n.to_string(), e["value"].as_str().unwrap_or("").to_string()))
        })
        .collect()
}

/// Checks that the stored pod's `skr` carries the app container's identity, each variable and the
/// token mount exactly once; returns the token file path.
fn assert_sidecar_identity(pod: &Value, case: &str) -> Result<String> {
    let app = container(pod, "app")?;
    let skr = container(pod, "skr")?;
    let app_env = azure_env(app);
    let skr_env = azure_env(skr);
    for var in IDENTITY_VARS {
        let in_skr: Vec<&(String, String)> = skr_env.iter().filter(|(n, _)| n == var).collect();
        ensure!(
            in_skr.len() == 1,
            "{case}: skr has {var} {} times: {skr_env:?}",
            in_skr.len()
        );
        let in_app: Vec<&(String, String)> = app_env.iter().filter(|(n, _)| n == var).collect();
        ensure!(
            in_app.len() == 1 && in_app[0].1 == in_skr[0].1,
            "{case}: {var} differs between app ({in_app:?}) and skr ({in_skr:?})"
        );
    }
    let get = |var: &str| {
        skr_env
            .iter()
            .find(|(n, _)| n == var)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    };
    ensure!(
        get("AZURE_CLIENT_ID") == APP_CLIENT_ID,
        "{case}: {skr_env:?}"
    );
    ensure!(
        get("AZURE_TENANT_ID") == AWI_TENANT_ID,
        "{case}: {skr_env:?}"
    );
    ensure!(
        get("AZURE_AUTHORITY_HOST") == AUTHORITY_HOST_URL,
        "{case}: {skr_env:?}"
    );
    let file = get("AZURE_FEDERATED_TOKEN_FILE");
    // The token mount: the one volume AWI added, mounted once in skr where app has it.
    let volumes: Vec<&Value> = pod["spec"]["volumes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|v| {
            v.pointer("/projected/sources/0/serviceAccountToken/audience")
                == Some(&json!("api://AzureADTokenExchange"))
        })
        .collect();
    ensure!(volumes.len() == 1, "{case}: token volumes {volumes:?}");
    let volume = volumes[0]["name"].as_str().unwrap_or_default();
    let mounts_of = |c: &Value| -> Vec<Value> {
        c["volumeMounts"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|m| m["name"] == volume)
            .cloned()
            .collect()
    };
    let (skr_mounts, app_mounts) = (mounts_of(skr), mounts_of(app));
    ensure!(
        skr_mounts.len() == 1 && skr_mounts == app_mounts,
        "{case}: token mount in skr {skr_mounts:?}, in app {app_mounts:?}"
    );
    let dir = skr_mounts[0]["mountPath"].as_str().unwrap_or_default();
    ensure!(
        file.starts_with(&format!("{}/", dir.trim_end_matches('/'))),
        "{case}: {file} is not under the token mount {dir}"
    );
    ensure!(skr_mounts[0]["readOnly"] == json!(true), "{case}");
    Ok(file)
}

/// Creates a pod with kubectl (so the API server's warnings come back) and returns the pod the
/// API server stored, with kubectl's stderr.
async fn create_pod(env: &Environment, pod: &Value) -> Result<(Value, String)> {
    let out = env.kubectl_stdin_output(&["create", "-f", "-"], &pod.to_string())?;
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    if !out.status.success() {
        bail!("kubectl create failed: {stderr}");
    }
    let api: Api<Pod> = Api::namespaced(env.cp.client(), APPS);
    let name = pod["metadata"]["name"].as_str().unwrap_or_default();
    let stored = api.get(name).await?;
    Ok((serde_json::to_value(stored)?, stderr))
}

/// Whether AWI mutates a pod right now (a server-side dry run through the whole admission chain).
async fn awi_active(env: &Environment) -> Result<bool> {
    let probe = pod_json("probe", "orders", true);
    let out = env.kubectl_stdin_output(
        &["create", "--dry-run=server", "-o", "json", "-f", "-"],
        &probe.to_string(),
    )?;
    if !out.status.success() {
        bail!("dry run: {}", String::from_utf8_lossy(&out.stderr));
    }
    let pod: Value = serde_json::from_slice(&out.stdout)?;
    Ok(!azure_env(container(&pod, "app")?).is_empty())
}

async fn wait_awi(env: &Environment, active: bool) -> Result<()> {
    wait_for(
        Duration::from_secs(30),
        &format!("AWI admission active={active}"),
        || async move { Ok((awi_active(env).await? == active).then_some(())) },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_real_awi_webhook_gives_the_sidecar_the_pods_identity_in_either_order() -> Result<()> {
    let env = Environment::start(EnvOptions::default()).await?;
    let awi = AwiWebhook::start(&env.cp).await?;
    env.create_namespace(APPS, true)?;
    env.apply_yaml(&apps_yaml("orders-key", "orders", "orders"))?;
    env.wait_binding_ready(APPS, "orders-key").await?;
    assert!(AWI_SHIPPED_NAME < OUR_CONFIGURATION && OUR_CONFIGURATION < AWI_LATER_NAME);

    // (name, reinvocationPolicy): as shipped (before ours; the API server re-invokes it after our
    // change), before ours without re-invocation (then only our copy gives skr the identity), and
    // after ours (it mutates skr itself; our re-invocation must add nothing).
    let cases = [
        (AWI_SHIPPED_NAME, "IfNeeded"),
        (AWI_SHIPPED_NAME, "Never"),
        (AWI_LATER_NAME, "IfNeeded"),
    ];
    for (i, (name, reinvocation)) in cases.into_iter().enumerate() {
        let case = format!("AWI as {name} (reinvocationPolicy {reinvocation})");
        env.apply_yaml(&awi.configuration_yaml(name, reinvocation))?;
        wait_awi(&env, true).await.context(case.clone())?;
        let (pod, stderr) = create_pod(&env, &pod_json(&format!("orders-{i}"), "orders", true))
            .await
            .context(case.clone())?;
        assert_sidecar_identity(&pod, &case)?;
        assert!(
            !stderr.contains("azure.workload.identity/use"),
            "{case}: unexpected warning {stderr}"
        );
        env.kubectl(&["delete", "mutatingwebhookconfiguration", name])?;
        wait_awi(&env, false).await.context(case)?;
    }

    // Without the label AWI leaves the pod alone (its object selector), and we warn.
    env.apply_yaml(&awi.configuration_yaml(AWI_SHIPPED_NAME, "IfNeeded"))?;
    wait_awi(&env, true).await?;
    let (pod, stderr) = create_pod(&env, &pod_json("orders-nolabel", "orders", false)).await?;
    assert!(
        stderr.contains("Warning:")
            && stderr.contains("azure.workload.identity/use")
            && stderr.contains("IMDS"),
        "kubectl stderr: {stderr}"
    );
    let skr = container(&pod, "skr")?;
    assert_eq!(azure_env(skr), Vec::<(String, String)>::new(), "{skr}");
    assert!(
        skr["volumeMounts"]
            .as_array()
            .into_iter()
            .flatten()
            .all(|m| !m["mountPath"]
                .as_str()
                .unwrap_or("")
                .starts_with("/var/run/secrets/azure")),
        "{skr}"
    );
    drop(awi);
    Ok(())
}

/// Options of the operator-identity tests: the kubelet's refresh of the projected token (at 80 %
/// of its lifetime) every 3 s, and access tokens of 303 s, which the SDK renews in their last 5
/// minutes: a new exchange every few seconds, each while the previous token is still valid.
fn short_lived_identity() -> EnvOptions {
    EnvOptions {
        identity: IdentityOptions {
            token_ttl: Duration::from_secs(600),
            refresh_every: Some(Duration::from_secs(3)),
        },
        entra_token_lifetime: Duration::from_secs(303),
        resync_period: Duration::from_secs(3),
        ..EnvOptions::default()
    }
}

/// A federated credential of the operator's client id for another ServiceAccount.
fn wrong_federation(issuer: &str) -> Vec<ckb_doubles::FederatedCredential> {
    vec![ckb_doubles::FederatedCredential::service_account(
        OPERATOR_CLIENT_ID,
        issuer,
        NAMESPACE,
        "not-the-operator",
    )]
}

/// Waits until the binding's KeyReady is `KeyVaultForbidden` and checks that its message names the
/// identity (client id, ServiceAccount subject) and Entra's refusal.
async fn assert_forbidden_naming_the_identity(env: &Environment, binding: &str) -> Result<()> {
    let b = env
        .wait_binding_condition(
            APPS,
            binding,
            types::KEY_READY,
            "False",
            Some(reasons::KEY_VAULT_FORBIDDEN),
            Duration::from_secs(90),
        )
        .await?;
    let (_, _, message) = Environment::condition(&b, types::KEY_READY).context("KeyReady")?;
    let subject = format!("system:serviceaccount:{NAMESPACE}:ckb-operator");
    for needle in [OPERATOR_CLIENT_ID, subject.as_str(), "AADSTS700213"] {
        ensure!(message.contains(needle), "{needle:?} not in {message:?}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_federated_for_another_subject_from_the_start_says_so_and_recovers_when_fixed()
-> Result<()> {
    let env = Environment::start(short_lived_identity()).await?;
    let entra = env.double.entra();
    let identity = env.identity.as_ref().context("identity")?;
    // Before the first binding, so no exchange of the operator ever succeeds.
    entra.set_credentials(wrong_federation(&identity.issuer));
    env.create_namespace(APPS, true)?;
    env.apply_yaml(&apps_yaml("orders-key", "orders", "orders"))?;
    assert_forbidden_naming_the_identity(&env, "orders-key").await?;
    let exchanges = entra.exchanges();
    assert!(!exchanges.is_empty(), "no exchange was tried");
    assert!(
        exchanges
            .iter()
            .all(|e| e.status != 200 && e.aadsts == Some(700213)),
        "{exchanges:?}"
    );
    // The vault was never called with a token.
    let authenticated: Vec<_> = env
        .double
        .log()
        .into_iter()
        .filter(|e| e.host.ends_with(".vault.azure.net") && e.authenticated)
        .collect();
    assert!(authenticated.is_empty(), "{authenticated:?}");

    // The federation fixed: the binding becomes Ready without a restart.
    entra.set_credentials(vec![ckb_doubles::FederatedCredential::service_account(
        OPERATOR_CLIENT_ID,
        &identity.issuer,
        NAMESPACE,
        "ckb-operator",
    )]);
    env.wait_binding_ready(APPS, "orders-key").await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operator_refreshes_its_workload_identity_before_expiry_and_a_federation_change_shows_at_the_next_refresh()
-> Result<()> {
    let env = Environment::start(short_lived_identity()).await?;
    env.create_namespace(APPS, true)?;
    env.apply_yaml(&apps_yaml("orders-key", "orders", "orders"))?;
    env.wait_binding_ready(APPS, "orders-key").await?;
    let entra = env.double.entra();
    let identity = env.identity.as_ref().context("identity")?;
    let operator_subject = format!("system:serviceaccount:{NAMESPACE}:ckb-operator");

    // Several exchanges, with at least two different (refreshed) ServiceAccount tokens, well
    // within one access token's lifetime (303 s): tokens are renewed before they expire.
    wait_for(
        Duration::from_secs(60),
        "exchanges with a refreshed federated token",
        || async {
            let iats: BTreeSet<i64> = entra
                .exchanges()
                .iter()
                .filter_map(|e| e.assertion_iat)
                .collect();
            Ok((iats.len() >= 3 && identity.refreshes() >= 2).then_some(()))
        },
    )
    .await?;
    let exchanges = entra.exchanges();
    for e in &exchanges {
        assert_eq!(e.status, 200, "{e:?}");
        assert_eq!(e.client_id.as_deref(), Some(OPERATOR_CLIENT_ID), "{e:?}");
        assert_eq!(
            e.assertion_issuer.as_deref(),
            Some(identity.issuer.as_str())
        );
        assert_eq!(
            e.assertion_subject.as_deref(),
            Some(operator_subject.as_str())
        );
        // Never an expired ServiceAccount token.
        assert!(e.assertion_exp.is_some_and(|exp| exp > e.at), "{e:?}");
    }
    env.wait_binding_ready(APPS, "orders-key").await?;

    // The vault saw tokens of the Entra double only, issued to the operator's identity, and never
    // an expired one (the double answers 401 to those).
    let calls: Vec<_> = env
        .double
        .log()
        .into_iter()
        .filter(|e| e.host.ends_with(".vault.azure.net") && e.authenticated)
        .collect();
    assert!(calls.len() >= 2, "{calls:?}");
    for c in &calls {
        assert_eq!(c.token_issuer, Some(entra.issuer()), "{c:?}");
        assert_eq!(
            c.token_client_id.as_deref(),
            Some(OPERATOR_CLIENT_ID),
            "{c:?}"
        );
        // Accepted (a 404 is the read before the key is created), never refused for its token.
        assert!(
            c.status.is_some_and(|s| s != 401 && s != 403 && s < 500),
            "{c:?}"
        );
    }

    // The federated credential now names another ServiceAccount. The access token the operator
    // holds stays valid for minutes (as a real one would), but it is in its refresh window: the
    // next refresh is refused, and from then on the bindings say so, naming the identity: the one
    // already Ready at its next resync, and a new one.
    entra.set_credentials(wrong_federation(&identity.issuer));
    assert_forbidden_naming_the_identity(&env, "orders-key").await?;
    env.apply_yaml(&apps_yaml("audit-key", "audit", "audit"))?;
    assert_forbidden_naming_the_identity(&env, "audit-key").await?;
    Ok(())
}
