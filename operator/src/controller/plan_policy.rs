//! The policy's part of the decision: the referenced ConfigMap's summary (hash and size of the
//! referenced key, see [`PolicySummary`]) judged ([`resolve_policy`]), and which hash the binding
//! may bind now ([`policy_condition`]). Pure.

use super::status::Wanted;
use crate::caches::{PolicyKey, PolicySummary};
use crate::policy::PolicyHash;
use ckb_crds::conditions::{reasons, types};
use ckb_crds::{ConfidentialKeyBinding, PolicySource, labels};

/// Total size Kubernetes allows for all annotations of one object (key + value bytes).
pub const ANNOTATION_BUDGET: usize = 256 * 1024;

/// The policy of the referenced ConfigMap, read and hashed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedPolicy {
    /// SHA-256 of the Rego bytes.
    pub hash: PolicyHash,
}

/// Why the policy could not be resolved: a reason from the condition vocabulary and a message
/// naming the ConfigMap and key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyProblem {
    /// A `PolicyResolved` reason.
    pub reason: &'static str,
    /// What is wrong, naming the ConfigMap and key.
    pub message: String,
}

/// What the reconcile found for the policy ConfigMap.
#[derive(Debug, Clone, Copy)]
pub enum PolicyConfigMap<'a> {
    /// No ConfigMap of that name in the binding's namespace.
    Missing,
    /// It exists, and is or is not labelled `ckb.dev/policy: "true"`; summarized for (at least)
    /// the key the binding references.
    Found(&'a PolicySummary),
}

/// The hash of the policy the binding references, or why it cannot be bound.
pub fn resolve_policy(
    binding: &ConfidentialKeyBinding,
    cm: PolicyConfigMap<'_>,
) -> Result<ResolvedPolicy, PolicyProblem> {
    let r = &binding.spec.policy.config_map_ref;
    let ns = binding.metadata.namespace.as_deref().unwrap_or_default();
    let at = format!("ConfigMap {ns}/{} key {:?}", r.name, r.key);
    let problem = |reason, what: String| PolicyProblem {
        reason,
        message: format!("{at}: {what}"),
    };
    let cm = match cm {
        PolicyConfigMap::Missing => {
            return Err(problem(reasons::CONFIG_MAP_NOT_FOUND, "not found".into()));
        }
        PolicyConfigMap::Found(cm) => cm,
    };
    if !cm.labelled {
        return Err(problem(
            reasons::CONFIG_MAP_NOT_LABELLED,
            format!(
                "the ConfigMap is not labelled {}: \"true\" (only labelled ConfigMaps are watched)",
                labels::POLICY
            ),
        ));
    }
    let (bytes, hash) = match cm.keys.get(&r.key).unwrap_or(&PolicyKey::Absent) {
        PolicyKey::Text { blank: true, .. } => {
            return Err(problem(reasons::POLICY_EMPTY, "the policy is empty".into()));
        }
        PolicyKey::Text { bytes, hash, .. } => (*bytes, hash),
        PolicyKey::Binary => {
            return Err(problem(
                reasons::POLICY_NOT_UTF8,
                "the policy is in binaryData; put the Rego text in data".into(),
            ));
        }
        PolicyKey::Absent => {
            return Err(problem(
                reasons::POLICY_KEY_NOT_FOUND,
                "no such key in data".into(),
            ));
        }
    };
    // The annotation carries base64 (4 bytes per 3) of the text, under its key, next to the
    // other annotations the webhook adds; all of a pod's annotations share 256 KiB.
    let encoded = bytes.div_ceil(3) * 4;
    let ours = labels::AGENT_POLICY.len()
        + encoded
        + labels::POLICY_SHA256.len()
        + 64
        + labels::BINDINGS.len()
        + binding.metadata.name.as_deref().unwrap_or_default().len();
    if ours > ANNOTATION_BUDGET {
        return Err(problem(
            reasons::POLICY_TOO_LARGE,
            format!(
                "the policy is {} bytes, {} once base64-encoded: with the other annotations the \
                 webhook adds that is {ours} bytes, over the {ANNOTATION_BUDGET}-byte limit of a \
                 pod's annotations",
                bytes, encoded
            ),
        ));
    }
    Ok(ResolvedPolicy { hash: hash.clone() })
}

/// The `PolicyResolved` condition, and the ConfigMap's hash if the binding may bind it now: it
/// follows its ConfigMap (`spec.policy.source: ConfigMap`, or the operator's default, and no
/// pins), or the hash is pinned. Otherwise the pins alone are bound (or nothing at all).
pub fn policy_condition<'a>(
    binding: &ConfidentialKeyBinding,
    policy: &'a Result<ResolvedPolicy, PolicyProblem>,
    source_default: PolicySource,
) -> (Wanted, Option<&'a PolicyHash>) {
    let spec = &binding.spec;
    let ns = binding.metadata.namespace.as_deref().unwrap_or_default();
    let cm_at = format!(
        "ConfigMap {ns}/{} key {:?}",
        spec.policy.config_map_ref.name, spec.policy.config_map_ref.key
    );
    let pins = &spec.policy.sha256;
    let source = spec.policy.source.unwrap_or(source_default);
    let p = match policy {
        Err(problem) => {
            let mut message = problem.message.clone();
            if !pins.is_empty() {
                message.push_str(&format!(
                    "; the pinned hashes stay bound ({})",
                    PolicyHash::join(pins, ", ")
                ));
            }
            return (
                Wanted::no(types::POLICY_RESOLVED, problem.reason, message),
                None,
            );
        }
        Ok(p) => p,
    };
    if !pins.is_empty() && !pins.contains(&p.hash) {
        let message = format!(
            "{cm_at} hashes to {}, which is not in spec.policy.sha256 ({}): the key's release \
             policy is not changed for it and the webhook refuses pods with it; if this policy is \
             intended, add its hash to spec.policy.sha256",
            p.hash,
            PolicyHash::join(pins, ", ")
        );
        let refused = Wanted::no(
            types::POLICY_RESOLVED,
            reasons::POLICY_HASH_NOT_PINNED,
            message,
        );
        return (refused, None);
    }
    if pins.is_empty() && source == PolicySource::Pinned {
        let message = format!(
            "{cm_at} hashes to {h}, but the binding pins no hash and its policy source is Pinned, \
             so the key is not changed: add `spec.policy.sha256: [\"{h}\"]` to the binding (or \
             set spec.policy.source: ConfigMap to let whoever writes the ConfigMap decide what the \
             key is released to)",
            h = p.hash
        );
        let refused = Wanted::no(types::POLICY_RESOLVED, reasons::POLICY_NOT_PINNED, message);
        return (refused, None);
    }
    let how = if pins.is_empty() {
        "followed (spec.policy.source ConfigMap)"
    } else {
        "pinned"
    };
    let resolved = Wanted::yes(
        types::POLICY_RESOLVED,
        reasons::POLICY_RESOLVED,
        format!("{cm_at} hashes to {}, {how}", p.hash),
    );
    (resolved, Some(&p.hash))
}
