//! The load of the memory figure: namespaces, policy ConfigMaps, bindings and injected pods
//! spread over them, and pods admitted through the webhook with policies of their own.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use ckb_crds::{ConfidentialKeyBinding, labels};
use ckb_e2e::suite_env::Environment;
use ckb_operator::controller::index::INJECTED_LABEL;
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use kube::Api;
use kube::api::PostParams;

use crate::objects::{CONFIDENTIAL_CLASS, binding, config_map, pod};

/// Namespaces the ConfigMaps, bindings and pods are spread over.
const SCALE_NAMESPACES: usize = 10;

/// A vault outside the operator's allow-list: the controller reconciles each binding on it (one
/// status write, VaultNotAllowed) and calls no Key Vault, so 1,000 keys are not created at the
/// service's 1 create/s; the caches hold the same objects either way.
const OUTSIDE_VAULT: &str = "https://bench-scale.vault.azure.net";

/// Pods admitted through the webhook with distinct 120 KiB policies in the memory figure: more
/// than its prepared-policy cache keeps (about 43 of them), so that the cache ends full.
pub const ADMITTED_POLICIES: usize = 60;

/// The namespace of the `i`-th object of a kind.
fn scale_ns(i: usize) -> String {
    format!("scale-{}", i % SCALE_NAMESPACES)
}

/// The namespaces the load is spread over.
pub fn create_scale_namespaces(env: &Environment) -> Result<()> {
    for n in 0..SCALE_NAMESPACES {
        // Not opted in to injection: the pods below are created as the webhook leaves them,
        // without the API server calling it for each.
        env.create_namespace(&scale_ns(n), false)?;
    }
    Ok(())
}

/// `count` policy ConfigMaps, each with its own policy text (`base` with a distinct first line).
pub fn policy_config_maps(count: usize, base: &str) -> Result<Vec<ConfigMap>> {
    (0..count)
        .map(|i| {
            config_map(
                &scale_ns(i),
                &format!("b{i}-policy"),
                &format!("# {i}\n{base}"),
            )
        })
        .collect()
}

/// `count` bindings on a vault outside the allow-list, each pinning its ConfigMap's policy.
pub fn bindings(count: usize, base: &str) -> Result<Vec<ConfidentialKeyBinding>> {
    (0..count)
        .map(|i| {
            binding(
                &scale_ns(i),
                &format!("b{i}"),
                OUTSIDE_VAULT,
                &format!("# {i}\n{base}"),
            )
        })
        .collect()
}

/// `count` injected pods spread over the `bindings` bindings, as the webhook leaves them (its
/// label and annotations, naming a binding of their namespace; the policy annotation is left out
/// to keep etcd small, the operator drops it when caching anyway).
pub fn injected_pods(count: usize, bindings: usize, base: &str) -> Result<Vec<Pod>> {
    let hash = ckb_operator::policy::hash::hash_rego(base.as_bytes());
    (0..count)
        .map(|i| {
            let b = i % bindings;
            let name = format!("b{b}");
            let mut p = pod(
                &scale_ns(b),
                &format!("p{i}"),
                &name,
                Some(CONFIDENTIAL_CLASS),
            )?;
            p.metadata
                .labels
                .get_or_insert_with(BTreeMap::new)
                .insert(INJECTED_LABEL.into(), "true".into());
            p.metadata.annotations = Some(BTreeMap::from([
                (labels::BINDINGS.to_string(), name),
                (labels::POLICY_SHA256.to_string(), hash.to_string()),
            ]));
            Ok(p)
        })
        .collect()
}

/// Pods admitted through the webhook, each with a policy of its own, more of them than the
/// webhook keeps prepared: its cache of prepared policies ends full (at its byte bound).
pub async fn admit_distinct_policies(env: &Environment, base: &str) -> Result<()> {
    let hook_ns = "scale-hook";
    env.create_namespace(hook_ns, true)?;
    let client = env.cp.client();
    let pp = PostParams::default();
    let cm_api: Api<ConfigMap> = Api::namespaced(client.clone(), hook_ns);
    let b_api: Api<ConfidentialKeyBinding> = Api::namespaced(client.clone(), hook_ns);
    for i in 0..ADMITTED_POLICIES {
        let name = format!("h{i}");
        let rego = format!("# hook {i}\n{base}");
        cm_api
            .create(&pp, &config_map(hook_ns, &format!("{name}-policy"), &rego)?)
            .await?;
        b_api
            .create(&pp, &binding(hook_ns, &name, OUTSIDE_VAULT, &rego)?)
            .await?;
    }
    // The policy cache fetches the new ConfigMaps; the webhook needs their summaries.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let pod_api: Api<Pod> = Api::namespaced(client, hook_ns);
    let started = Instant::now();
    for i in 0..ADMITTED_POLICIES {
        let name = format!("h{i}");
        let p = pod(
            hook_ns,
            &format!("{name}-0"),
            &name,
            Some(CONFIDENTIAL_CLASS),
        )?;
        let created = pod_api.create(&pp, &p).await?;
        let injected = created
            .metadata
            .annotations
            .as_ref()
            .is_some_and(|a| a.contains_key(labels::AGENT_POLICY));
        if !injected {
            bail!("pod {hook_ns}/{name}-0 was not injected");
        }
    }
    eprintln!(
        "  {ADMITTED_POLICIES} pods admitted with distinct policies in {:?}",
        started.elapsed()
    );
    Ok(())
}
