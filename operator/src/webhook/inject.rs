//! The steps of [`super::mutate::mutate`], each a small function over the raw JSON pod: the checks
//! that refuse a pod, then the insertions. Every step checks before it inserts (a re-invocation adds
//! nothing) and refuses with a [`Denial`] naming the bindings and the cause. What is inserted is
//! built in [`super::injected`]; the JSON plumbing is [`super::pod_json`].

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::{Map, Value, json};

use super::injected::{reference_info_volume, sidecar_container};
use super::mutate::*;
use super::pod_json::{
    array_mut, container_name, contains, is_native_sidecar, object_mut, ports_of,
};
use super::policy::{PLACEHOLDER, PreparedPolicy, annotation_policy_hash};
use crate::crds::labels::{AGENT_POLICY, BINDINGS, POLICY_SHA256};
use crate::policy::PolicyHash;

/// The first 12 hex digits of a hash, as messages show it.
pub(super) fn short(hash: &str) -> &str {
    &hash[..hash.len().min(12)]
}

/// How messages name the pod: `pod <name>`, `pod <generateName>*`, or `pod`.
pub(super) fn pod_label(pod: &Value) -> String {
    let meta = pod.get("metadata");
    let name = meta.and_then(|m| m.get("name")).and_then(Value::as_str);
    let generate = meta
        .and_then(|m| m.get("generateName"))
        .and_then(Value::as_str);
    match (name, generate) {
        (Some(n), _) if !n.is_empty() => format!("pod {n}"),
        (_, Some(g)) if !g.is_empty() => format!("pod {g}*"),
        _ => "pod".to_string(),
    }
}

fn names(bindings: &[&MatchedBinding]) -> String {
    bindings
        .iter()
        .map(|b| b.name.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// A refusal naming the bindings and what is wrong.
pub(super) fn deny(bindings: &[&MatchedBinding], what: impl std::fmt::Display) -> Denial {
    let label = if bindings.len() == 1 {
        "binding"
    } else {
        "bindings"
    };
    Denial {
        message: format!("ckb-operator ({label} {}): {what}", names(bindings)),
    }
}

/// Step 1 (admission only): the one agent policy every binding resolves to. Refused when a
/// binding's policy is not cached, is not one the binding pins, or differs from another's.
pub(super) fn one_policy(
    bs: &[&MatchedBinding],
    who: &str,
) -> Result<Option<Arc<PreparedPolicy>>, Denial> {
    let mut by_hash: BTreeMap<&str, (Vec<&MatchedBinding>, &Arc<PreparedPolicy>)> = BTreeMap::new();
    for b in bs {
        let Some(policy) = b.policy.as_ref() else {
            return Err(deny(
                &[*b],
                format!(
                    "the agent policy ({}) is not available; create it (labelled ckb.dev/policy=true) before the pods, or check the binding's status",
                    b.policy_ref
                ),
            ));
        };
        let h = policy.hash().as_str();
        if !b.pinned.is_empty() && !b.pinned.iter().any(|p| p == h) {
            return Err(deny(
                &[*b],
                format!(
                    "the agent policy in {} hashes to {h}, which the binding does not pin: spec.policy.sha256 expects {}; the ConfigMap may have been changed without the binding's review (restore it, or add the new hash to spec.policy.sha256)",
                    b.policy_ref,
                    PolicyHash::join(&b.pinned, " or ")
                ),
            ));
        }
        by_hash
            .entry(h)
            .or_insert_with(|| (Vec::new(), policy))
            .0
            .push(*b);
    }
    if by_hash.len() > 1 {
        let detail = by_hash
            .iter()
            .map(|(h, (group, _))| format!("{} → {}", names(group), short(h)))
            .collect::<Vec<_>>()
            .join("; ");
        return Err(deny(
            bs,
            format!(
                "{who} is selected by bindings with different agent policies ({detail}); a pod runs exactly one policy, so narrow the podSelectors or use one policy ConfigMap"
            ),
        ));
    }
    Ok(by_hash.into_values().next().map(|(_, p)| p.clone()))
}

/// Step 2: with several bindings, their env suffixes must differ.
pub(super) fn check_env_suffixes(bs: &[&MatchedBinding]) -> Result<(), Denial> {
    if bs.len() < 2 {
        return Ok(());
    }
    let mut seen: BTreeMap<String, &str> = BTreeMap::new();
    for b in bs {
        if let Some(other) = seen.insert(env_suffix(&b.name), &b.name) {
            return Err(deny(
                bs,
                format!(
                    "bindings {other} and {} map to the same env suffix _{}; rename one",
                    b.name,
                    env_suffix(&b.name)
                ),
            ));
        }
    }
    Ok(())
}

/// Step 3: no init container named like the sidecar, and the sidecar's port free in the pod's
/// network namespace (app containers and native sidecars share it).
pub(super) fn check_ports(
    spec: &Map<String, Value>,
    bs: &[&MatchedBinding],
    who: &str,
    port: u16,
) -> Result<(), Denial> {
    let port = i64::from(port);
    let list = |key: &str| {
        spec.get(key)
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
    };
    if list("initContainers").any(|c| container_name(c) == SIDECAR_NAME) {
        return Err(deny(
            bs,
            format!(
                "{who} has an init container named {SIDECAR_NAME:?}, the name of the SKR sidecar; rename it"
            ),
        ));
    }
    for c in list("containers")
        .filter(|c| container_name(c) != SIDECAR_NAME)
        .chain(list("initContainers").filter(|c| is_native_sidecar(c)))
    {
        if ports_of(c).any(|p| p == port) {
            return Err(deny(
                bs,
                format!(
                    "container {:?} of {who} uses port {port}, where the SKR sidecar listens; set spec.sidecar.port on the binding(s) or the operator's --sidecar-port",
                    container_name(c)
                ),
            ));
        }
    }
    Ok(())
}

/// Step 4: the sidecar, once; an existing container of that name must already be it.
pub(super) fn add_sidecar(
    spec: &mut Map<String, Value>,
    bs: &[&MatchedBinding],
    who: &str,
    sidecar: &SidecarDefaults,
) -> Result<(), Denial> {
    let want = sidecar_container(sidecar);
    let containers = array_mut(spec, "containers");
    let Some(existing) = containers
        .iter()
        .find(|c| container_name(c) == SIDECAR_NAME)
    else {
        containers.push(want);
        return Ok(());
    };
    let mut core = want;
    // NB: resources are not compared: the API server rewrites quantities to canonical form
    // ("0.5" → "500m"), which would make a re-invocation refuse its own output.
    if let Some(m) = core.as_object_mut() {
        m.remove("resources");
    }
    if contains(existing, &core) {
        return Ok(());
    }
    Err(deny(
        bs,
        format!(
            "{who} already has a container named {SIDECAR_NAME:?} that differs from the SKR sidecar the operator injects (image {}, command {SIDECAR_COMMAND}, Port {}); remove it and let the operator add it, or re-run `ckb-operator render`",
            sidecar.image, sidecar.port
        ),
    ))
}

/// Step 5: the reference-info volume, once.
pub(super) fn add_reference_info_volume(
    spec: &mut Map<String, Value>,
    bs: &[&MatchedBinding],
    who: &str,
) -> Result<(), Denial> {
    let volume = reference_info_volume();
    let volumes = array_mut(spec, "volumes");
    match volumes
        .iter()
        .find(|v| v.get("name").and_then(Value::as_str) == Some(REFERENCE_INFO_VOLUME))
    {
        Some(existing) if contains(existing, &volume) => Ok(()),
        Some(_) => Err(deny(
            bs,
            format!(
                "{who} has a volume named {REFERENCE_INFO_VOLUME:?} that is not the hostPath {REFERENCE_INFO_PATH}; rename it"
            ),
        )),
        None => {
            volumes.push(volume);
            Ok(())
        }
    }
}

/// Step 6: the env of every app container; a user's variable is never overwritten.
pub(super) fn add_app_env(
    spec: &mut Map<String, Value>,
    bs: &[&MatchedBinding],
    who: &str,
    env: &[(String, String)],
) -> Result<(), Denial> {
    for c in array_mut(spec, "containers").iter_mut() {
        if container_name(c) == SIDECAR_NAME {
            continue;
        }
        let cname = container_name(c).to_string();
        let Some(cmap) = c.as_object_mut() else {
            continue;
        };
        let list = array_mut(cmap, "env");
        for (name, value) in env {
            let existing = list
                .iter()
                .find(|e| e.get("name").and_then(Value::as_str) == Some(name.as_str()));
            let conflict = match existing {
                None => {
                    list.push(json!({"name": name, "value": value}));
                    continue;
                }
                Some(e) if e.get("valueFrom").is_some() => EnvConflict::ValueFrom,
                Some(e) => match e.get("value").and_then(Value::as_str) {
                    Some(v) if v == value => continue,
                    v => EnvConflict::OtherValue(v.unwrap_or("").to_string()),
                },
            };
            let how = match conflict {
                EnvConflict::ValueFrom => "from valueFrom".to_string(),
                EnvConflict::OtherValue(v) => format!("to {v:?}"),
            };
            return Err(deny(
                bs,
                format!(
                    "container {cname:?} of {who} already sets {name} {how}, the operator would set {value:?}; the operator never overwrites a variable, so remove or rename it"
                ),
            ));
        }
    }
    Ok(())
}

/// Step 7: the policy annotation and its hash (admission only; a pod that carries another policy
/// is refused), the bindings annotation, all within the API server's size limit.
pub(super) fn annotate(
    metadata: &mut Map<String, Value>,
    bs: &[&MatchedBinding],
    who: &str,
    policy: Option<&PreparedPolicy>,
    policy_value: PolicyValue,
) -> Result<(), Denial> {
    let annotations = object_mut(metadata, "annotations");
    // The length of the policy's value when the placeholder stands for it.
    let mut placeholder_for = None;
    if let Some(policy) = policy {
        let hash = policy.hash().as_str();
        match annotations.get(AGENT_POLICY) {
            Some(existing) => {
                let existing_hash = existing
                    .as_str()
                    .and_then(|v| annotation_policy_hash(v).ok());
                if existing_hash.as_ref().map(PolicyHash::as_str) != Some(hash) {
                    let found = existing_hash
                        .map(|h| format!("policy {}", h.short(12)))
                        .unwrap_or_else(|| "a value that is not base64 Rego".to_string());
                    return Err(deny(
                        bs,
                        format!(
                            "{who} already carries an agent policy annotation ({found}) that differs from the bindings' policy {}; remove the annotation or put that policy in the binding's ConfigMap",
                            short(hash)
                        ),
                    ));
                }
            }
            None => {
                let value = match policy_value {
                    PolicyValue::Text => policy.annotation().to_string(),
                    PolicyValue::Placeholder => {
                        placeholder_for = Some(policy.annotation().len());
                        PLACEHOLDER.to_string()
                    }
                };
                annotations.insert(AGENT_POLICY.to_string(), Value::String(value));
            }
        }
        annotations.insert(POLICY_SHA256.to_string(), Value::String(hash.to_string()));
    }
    let list = bs
        .iter()
        .map(|b| b.name.as_str())
        .collect::<Vec<_>>()
        .join(",");
    annotations.insert(BINDINGS.to_string(), Value::String(list));
    let total: usize = annotations
        .iter()
        .map(|(k, v)| {
            let value = match placeholder_for {
                Some(len) if k == AGENT_POLICY => len,
                _ => v.as_str().map_or(0, str::len),
            };
            k.len() + value
        })
        .sum();
    if total > ANNOTATIONS_SIZE_LIMIT {
        return Err(deny(
            bs,
            format!(
                "{who}'s annotations would take {total} bytes with the agent policy, over the API server's limit of {ANNOTATIONS_SIZE_LIMIT}; shrink the policy (fewer containers, genpolicy settings) or other annotations"
            ),
        ));
    }
    Ok(())
}

/// Step 8: the injected label; a warning when the pod has not opted in to workload identity.
pub(super) fn label(
    metadata: &mut Map<String, Value>,
    bs: &[&MatchedBinding],
    who: &str,
) -> Vec<String> {
    let labels = object_mut(metadata, "labels");
    labels.insert(INJECTED_LABEL.to_string(), Value::String("true".into()));
    if labels.get(WORKLOAD_IDENTITY_LABEL).and_then(Value::as_str) == Some("true") {
        return Vec::new();
    }
    vec![format!(
        "ckb-operator: {who} has no label {WORKLOAD_IDENTITY_LABEL}: \"true\"; the SKR sidecar authenticates to Key Vault through Azure workload identity, and without it gets no AZURE_CLIENT_ID/AZURE_TENANT_ID/AZURE_FEDERATED_TOKEN_FILE and falls back to the node's managed identity (IMDS), which cannot release the key (bindings {})",
        names(bs)
    )]
}
