//! The objects the benchmark creates (policy text, policy ConfigMaps, bindings, pods) and the
//! bulk create of namespaced objects.

use std::fmt::Debug;
use std::time::{Duration, Instant};

use anyhow::Result;
use ckb_crds::{ConfidentialKeyBinding, labels};
use ckb_e2e::suite_env::DEMO_AUTHORITY;
use futures::{StreamExt as _, TryStreamExt as _};
use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use kube::api::PostParams;
use kube::{Api, Client, Resource};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::json;

/// The confidential runtime class the webhook injects pods of.
pub const CONFIDENTIAL_CLASS: &str = "kata-cc-isolation";

/// Rego-like policy text of about `kib` KiB, distinct for each `seed`.
pub fn policy(kib: usize, seed: usize) -> String {
    let mut s = format!("package agent_policy\n\n# {seed}\n");
    let mut i = 0;
    while s.len() < kib * 1024 {
        s.push_str(&format!(
            "    {{\"name\": \"rule_{i}\", \"allowed\": [\"/bin/sh\", \"-c\"], \"layer\": \"{i:064x}\"}},\n"
        ));
        i += 1;
    }
    s
}

/// A policy ConfigMap (labelled for the operator's policy cache) holding `rego` as `policy.rego`.
pub fn config_map(ns: &str, name: &str, rego: &str) -> Result<ConfigMap> {
    Ok(serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": ns, "labels": {labels::POLICY: "true"}},
        "data": {"policy.rego": rego}
    }))?)
}

/// A binding that pins the hash of `rego`, its ConfigMap's policy (bindings pin by default).
pub fn binding(ns: &str, name: &str, vault: &str, rego: &str) -> Result<ConfidentialKeyBinding> {
    let sha256 = ckb_operator::policy::hash::hash_rego(rego.as_bytes()).to_string();
    Ok(serde_json::from_value(json!({
        "apiVersion": "ckb.dev/v1alpha1",
        "kind": "ConfidentialKeyBinding",
        "metadata": {"name": name, "namespace": ns},
        "spec": {
            "podSelector": {"matchLabels": {"app": name}},
            "key": {"vault": vault, "name": name, "type": "EC-HSM", "curve": "P-256"},
            "attestation": {"authority": DEMO_AUTHORITY},
            "policy": {"configMapRef": {"name": format!("{name}-policy"), "key": "policy.rego"},
                       "sha256": [sha256]}
        }
    }))?)
}

/// A pod of two app containers (what `operator/tests/data/admission` captures), confidential when
/// `runtime_class` is given.
pub fn pod(ns: &str, name: &str, app: &str, runtime_class: Option<&str>) -> Result<Pod> {
    let mut spec = json!({
        "containers": [
            {"name": "app", "image": "registry.example/orders:1.4.2",
             "ports": [{"containerPort": 8443}],
             "env": [{"name": "LOG_LEVEL", "value": "info"}],
             "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}}},
            {"name": "metrics", "image": "registry.example/exporter:0.9",
             "ports": [{"containerPort": 9100}]}
        ]
    });
    if let Some(rc) = runtime_class {
        spec["runtimeClassName"] = rc.into();
    }
    Ok(serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": ns,
                     "labels": {"app": app, "azure.workload.identity/use": "true"}},
        "spec": spec
    }))?)
}

/// Creates `objects`, each in the namespace its metadata names, eight at a time; returns how long
/// that took.
pub async fn create_all<K>(client: &Client, objects: Vec<K>) -> Result<Duration>
where
    K: Resource<Scope = NamespaceResourceScope> + Clone + Serialize + DeserializeOwned + Debug,
    K::DynamicType: Default,
{
    let started = Instant::now();
    futures::stream::iter(objects)
        .map(|o| {
            let ns = o.meta().namespace.as_deref().unwrap_or_default();
            let api: Api<K> = Api::namespaced(client.clone(), ns);
            async move { api.create(&PostParams::default(), &o).await.map(|_| ()) }
        })
        .buffer_unordered(8)
        .try_collect::<Vec<()>>()
        .await?;
    Ok(started.elapsed())
}
