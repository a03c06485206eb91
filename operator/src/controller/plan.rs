//! The reconcile decision, as a pure function of what was observed.
//!
//! [`resolve_policy`] turns the referenced ConfigMap into a hash or a reason; [`plan`] turns the
//! binding, that result, the key as Key Vault reported it and the pods into one [`KeyAction`], the
//! status to write and the events to publish; [`settle`] folds the outcome of the action back into
//! the status. The I/O around them (`reconcile.rs`) only reads, calls and writes.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use ckb_crds::conditions::{reasons, types};
use ckb_crds::{
    ConfidentialKeyBinding, ConfidentialKeyBindingStatus, KeyStatus, PolicySource, labels, tags,
};
use jiff::Timestamp;
use k8s_openapi::api::core::v1::ConfigMap;

use super::hashes::{Allowed, HashInputs, allowed_hashes, decode_retired, encode_retired};
use super::status::{Wanted, conditions, new_failures};
use crate::keyvault::{DeletedVaultKey, KeyVaultError, NewKey, VaultKey, VaultUrl};
use crate::policy::{PolicyHash, ReleasePolicy, hash_rego};

/// Total size Kubernetes allows for all annotations of one object (key + value bytes).
pub const ANNOTATION_BUDGET: usize = 256 * 1024;

/// What the decision needs to know about the operator's configuration.
#[derive(Debug, Clone)]
pub struct PlanConfig {
    /// Vaults the operator may contact. Empty means none.
    pub allowed_vaults: BTreeSet<VaultUrl>,
    /// How long a hash that stopped being current stays bound.
    pub hash_grace: Duration,
    /// UID of the cluster's `kube-system` namespace (the `ckb-cluster` tag).
    pub cluster_uid: String,
    /// What a binding without `spec.policy.sha256` and `spec.policy.source` follows
    /// (`--policy-source-default`).
    pub policy_source_default: PolicySource,
    /// The longest a retired hash stays bound, pods or not (`--hash-retention-ceiling`).
    pub retention_ceiling: Duration,
    /// Runtime classes of confidential pods: only such pods keep a retired hash bound.
    pub confidential_runtime_classes: Vec<String>,
    /// The operator-wide bounds on what bindings may ask for (see [`super::grant`]).
    pub bounds: super::grant::ClusterBounds,
}

impl Default for PlanConfig {
    /// No vault, the flags' defaults (pinned policies, 10m grace, 24h ceiling), no cluster UID.
    fn default() -> Self {
        Self {
            allowed_vaults: BTreeSet::new(),
            hash_grace: Duration::from_secs(600),
            cluster_uid: String::new(),
            policy_source_default: PolicySource::Pinned,
            retention_ceiling: Duration::from_secs(24 * 3600),
            confidential_runtime_classes: vec![
                crate::webhook::mutate::DEFAULT_CONFIDENTIAL_RUNTIME_CLASS.to_string(),
            ],
            bounds: super::grant::ClusterBounds::default(),
        }
    }
}

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
    /// It exists, and is or is not labelled `ckb.dev/policy: "true"`.
    Found(&'a ConfigMap),
}

/// Reads and hashes the policy the binding references, or says why it cannot.
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
    let labelled = cm
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(labels::POLICY))
        .is_some_and(|v| v == "true");
    if !labelled {
        return Err(problem(
            reasons::CONFIG_MAP_NOT_LABELLED,
            format!(
                "the ConfigMap is not labelled {}: \"true\" (only labelled ConfigMaps are watched)",
                labels::POLICY
            ),
        ));
    }
    let text = cm.data.as_ref().and_then(|d| d.get(&r.key));
    let Some(text) = text else {
        let in_binary = cm
            .binary_data
            .as_ref()
            .is_some_and(|b| b.contains_key(&r.key));
        return Err(if in_binary {
            problem(
                reasons::POLICY_NOT_UTF8,
                "the policy is in binaryData; put the Rego text in data".into(),
            )
        } else {
            problem(reasons::POLICY_KEY_NOT_FOUND, "no such key in data".into())
        });
    };
    if text.trim().is_empty() {
        return Err(problem(reasons::POLICY_EMPTY, "the policy is empty".into()));
    }
    // The annotation carries base64 (4 bytes per 3) of the text, under its key, next to the
    // other annotations the webhook adds; all of a pod's annotations share 256 KiB.
    let encoded = text.len().div_ceil(3) * 4;
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
                text.len(),
                encoded
            ),
        ));
    }
    Ok(ResolvedPolicy {
        hash: hash_rego(text.as_bytes()),
    })
}

/// The key as Key Vault reported it.
#[derive(Debug, Clone, PartialEq)]
pub enum KeyObservation {
    /// Key Vault was not asked (vault not allowed, policy unresolved).
    NotChecked,
    /// No key and no deleted key of that name.
    Absent,
    /// The key (its current version).
    Present(VaultKey),
    /// No key, but a soft-deleted one of that name.
    Deleted(DeletedVaultKey),
    /// Asking failed.
    Failed(KeyVaultError),
}

/// Everything [`plan`] looks at besides the binding and the configuration.
#[derive(Debug, Clone)]
pub struct Observed {
    /// The policy, or why there is none.
    pub policy: Result<ResolvedPolicy, PolicyProblem>,
    /// The key.
    pub key: KeyObservation,
    /// For each policy hash run by qualifying pods of this binding (`index::pod_policies`), the
    /// creation time of the earliest such pod.
    pub pod_policies: BTreeMap<String, Timestamp>,
    /// When this operator process first saw each hash of this binding retired.
    pub seen_retired: BTreeMap<String, Timestamp>,
    /// How many live qualifying pods this binding has.
    pub injected_pods: i32,
    /// The time of this reconcile.
    pub now: Timestamp,
    /// The grant the binding names and its namespace's labels (see [`super::grant::admit`]).
    pub grant: super::grant::GrantLookup,
}

/// The one Key Vault write a reconcile makes, if any.
#[derive(Debug, Clone, PartialEq)]
pub enum KeyAction {
    /// Nothing to write.
    None,
    /// Create the key.
    Create(NewKey),
    /// Replace the release policy of the current version (and the tags, when the retired hashes
    /// recorded on the key change with it).
    UpdatePolicy {
        /// Version to patch.
        version: String,
        /// The new release policy.
        policy_json: String,
        /// The key's tags with the new `ckb-retired` record, if it changes.
        tags: Option<BTreeMap<String, String>>,
    },
    /// Record on the key when its retired hashes retired (the `ckb-retired` tag, see
    /// [`super::hashes::encode_retired`]); the release policy is already right.
    RecordRetired {
        /// Version to patch.
        version: String,
        /// The key's tags with the new `ckb-retired` record.
        tags: BTreeMap<String, String>,
    },
    /// Take over an untagged key: add our tags and set the release policy.
    Adopt {
        /// Version to patch.
        version: String,
        /// The new release policy.
        policy_json: String,
        /// The key's tags plus ours.
        tags: BTreeMap<String, String>,
    },
    /// Add the `ckb-binding-uid` tag to a key this binding's earlier operator version created
    /// (and set the release policy).
    Retag {
        /// Version to patch.
        version: String,
        /// The new release policy.
        policy_json: String,
        /// The key's tags plus ours.
        tags: BTreeMap<String, String>,
    },
    /// Recover our soft-deleted key (the next pass checks its release policy).
    Recover,
}

/// An event to publish on the binding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedEvent {
    /// Warning rather than Normal.
    pub warning: bool,
    /// CamelCase reason.
    pub reason: String,
    /// Message.
    pub note: String,
}

/// The decision of one reconcile.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// The Key Vault write to make.
    pub action: KeyAction,
    /// Whether Key Vault must be asked about the key first (`false`: vault not allowed or
    /// policy unresolved; nothing is sent to Key Vault at all).
    pub contact_vault: bool,
    /// The status to write if the action succeeds (or when there is none).
    pub status: ConfidentialKeyBindingStatus,
    /// Events to publish (new failures; writes are reported by [`settle`]).
    pub events: Vec<PlannedEvent>,
    /// When the binding must be looked at again regardless of watches (end of a grace period).
    pub requeue_after: Option<Duration>,
    /// The conditions before transition bookkeeping (what [`settle`] amends on failure).
    pub wanted: Vec<Wanted>,
}

/// The tags a key of this binding carries.
pub fn owner_tags(binding: &ConfidentialKeyBinding, cluster_uid: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (
            tags::MANAGED_BY.to_string(),
            tags::MANAGED_BY_VALUE.to_string(),
        ),
        (tags::BINDING.to_string(), binding.key_ref()),
        (tags::CLUSTER.to_string(), cluster_uid.to_string()),
        (tags::BINDING_UID.to_string(), binding.uid_str().to_string()),
    ])
}

/// Who a key belongs to, judged by its tags.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ownership {
    /// Tagged for this binding (namespace, name and UID) in this cluster.
    Ours,
    /// Tagged for this binding's namespace and name in this cluster by an operator version that
    /// did not write `ckb-binding-uid`.
    OursWithoutUid,
    /// Tagged for an earlier binding of the same namespace and name (another UID) in this cluster.
    EarlierBinding(String),
    /// No ckb tag at all.
    Untagged,
    /// Tagged for another binding or cluster (or partly tagged): never touched.
    Foreign(String),
}

/// Judges a key's tags.
pub fn ownership(
    key_tags: &BTreeMap<String, String>,
    binding: &ConfidentialKeyBinding,
    cluster_uid: &str,
) -> Ownership {
    let ckb_tags = [tags::MANAGED_BY, tags::BINDING, tags::CLUSTER];
    let present = ckb_tags
        .iter()
        .chain([&tags::BINDING_UID])
        .any(|t| key_tags.contains_key(*t));
    if !present {
        return Ownership::Untagged;
    }
    let want = owner_tags(binding, cluster_uid);
    if ckb_tags.iter().all(|k| key_tags.get(*k) == want.get(*k)) {
        return match key_tags.get(tags::BINDING_UID) {
            Some(uid) if uid == binding.uid_str() => Ownership::Ours,
            Some(uid) => Ownership::EarlierBinding(uid.clone()),
            None => Ownership::OursWithoutUid,
        };
    }
    let shown = ckb_tags
        .iter()
        .map(|t| format!("{t}={}", key_tags.get(*t).map_or("<unset>", |v| v.as_str())))
        .collect::<Vec<_>>()
        .join(", ");
    Ownership::Foreign(shown)
}

/// Whether a key tagged without `ckb-binding-uid` ([`Ownership::OursWithoutUid`]) is the one this
/// very binding had: its status names that key. A binding re-created under the same name has no
/// such status, so it cannot inherit the key this way (it needs the owner's `ckb-adopt` tag).
pub fn had_this_key(binding: &ConfidentialKeyBinding, key_id: &str) -> bool {
    let base = |id: &str| id.rsplit_once('/').map(|x| x.0.to_string());
    binding
        .status
        .as_ref()
        .and_then(|s| s.key.as_ref())
        .is_some_and(|k| base(&k.id).is_some() && base(&k.id) == base(key_id))
}

/// Whether the key carries the owner's consent for this binding to take it over: a `ckb-adopt`
/// tag naming `<namespace>/<name>` or the binding's UID.
pub fn adopt_consent(
    key_tags: &BTreeMap<String, String>,
    binding: &ConfidentialKeyBinding,
) -> bool {
    key_tags.get(tags::ADOPT).is_some_and(|v| {
        let v = v.trim();
        v == binding.key_ref() || (!binding.uid_str().is_empty() && v == binding.uid_str())
    })
}

/// Whether this binding may delete the key on deletion or recover it from soft-delete.
pub fn owns(binding: &ConfidentialKeyBinding, key: &VaultKey, cluster_uid: &str) -> bool {
    match ownership(&key.tags, binding, cluster_uid) {
        Ownership::Ours => true,
        Ownership::OursWithoutUid => had_this_key(binding, &key.id),
        _ => false,
    }
}

/// How the key differs from the spec (type, size, curve, exportable); empty when it matches.
pub fn key_differences(binding: &ConfidentialKeyBinding, key: &VaultKey) -> Vec<String> {
    let spec = &binding.spec.key;
    let mut diffs = Vec::new();
    if key.kty != spec.key_type.as_str() {
        diffs.push(format!("type is {} (spec: {})", key.kty, spec.key_type));
    }
    if let (Some(want), Some(have)) = (spec.effective_size(), key.size)
        && want != have
    {
        diffs.push(format!("size is {have} (spec: {want})"));
    }
    if let Some(curve) = spec.curve {
        match &key.curve {
            Some(c) if c == curve.as_str() => {}
            Some(c) => diffs.push(format!("curve is {c} (spec: {})", curve.as_str())),
            None => diffs.push(format!("curve is unset (spec: {})", curve.as_str())),
        }
    }
    if !key.exportable {
        diffs.push("the key is not exportable (it can never be released)".into());
    }
    if key.managed {
        diffs.push("the key is managed by another Azure service".into());
    }
    diffs
}

/// The key to create for this binding.
pub fn new_key(binding: &ConfidentialKeyBinding, policy_json: &str, cluster_uid: &str) -> NewKey {
    let spec = &binding.spec.key;
    NewKey {
        name: spec.name.clone(),
        kty: spec.key_type.as_str().to_string(),
        size: spec.effective_size(),
        curve: spec.curve.map(|c| c.as_str().to_string()),
        key_ops: spec
            .effective_operations()
            .iter()
            .map(|o| o.as_str().to_string())
            .collect(),
        exportable: true,
        release_policy_json: Some(policy_json.to_string()),
        tags: owner_tags(binding, cluster_uid),
    }
}

fn key_status(key: &VaultKey, origin: &str) -> KeyStatus {
    KeyStatus {
        id: key.id.clone(),
        version: key.version.clone(),
        key_type: key.kty.clone(),
        origin: Some(origin.to_string()),
    }
}

/// Condition reason and message for a Key Vault failure.
pub fn failure_reason(e: &KeyVaultError) -> &'static str {
    match e {
        KeyVaultError::Forbidden { .. } => reasons::KEY_VAULT_FORBIDDEN,
        KeyVaultError::Throttled { .. } => reasons::KEY_VAULT_THROTTLED,
        KeyVaultError::Transient { .. } => reasons::KEY_VAULT_UNAVAILABLE,
        KeyVaultError::ImmutablePolicy { .. } => reasons::POLICY_IMMUTABLE,
        KeyVaultError::DeletedRecoverable { .. } => reasons::KEY_DELETED,
        KeyVaultError::NotFound { .. }
        | KeyVaultError::Conflict { .. }
        | KeyVaultError::InvalidRequest { .. } => reasons::KEY_VAULT_REJECTED,
    }
}

/// Decides what one reconcile does. Pure: same inputs, same plan.
pub fn plan(binding: &ConfidentialKeyBinding, observed: &Observed, config: &PlanConfig) -> Plan {
    let previous = binding.status.clone().unwrap_or_default();
    let generation = binding.metadata.generation;
    let spec = &binding.spec;
    let vault = VaultUrl::parse(&spec.key.vault);
    // The cluster's bounds (a grant, or the operator's flags): a refusal contacts no vault.
    let admission = super::grant::admit(
        binding,
        &observed.grant,
        &config.allowed_vaults,
        &config.bounds,
    );
    let vault_allowed = vault.is_ok() && admission.is_ok();

    let mut status = ConfidentialKeyBindingStatus {
        observed_generation: generation,
        conditions: Vec::new(),
        key: previous.key.clone(),
        policy: previous.policy.clone(),
        injected_pods: Some(observed.injected_pods),
        // Set by the reconcile from the last scan for missed injection (`uninjected.rs`).
        uninjected_pods: previous.uninjected_pods,
    };
    let mut wanted: Vec<Wanted> = Vec::new();
    let mut action = KeyAction::None;
    let mut requeue_after = None;

    // 1. Policy: which of the ConfigMap's hash and the pins may be bound.
    let ns = binding.metadata.namespace.as_deref().unwrap_or_default();
    let cm_at = format!(
        "ConfigMap {ns}/{} key {:?}",
        spec.policy.config_map_ref.name, spec.policy.config_map_ref.key
    );
    let pins = &spec.policy.sha256;
    let source = spec.policy.source.unwrap_or(config.policy_source_default);
    let cm_hash: Option<String> = observed.policy.as_ref().ok().map(|p| p.hash.to_string());
    let mut current_bindable: Option<&str> = None;
    match (&observed.policy, pins.is_empty(), source) {
        (Err(problem), _, _) => {
            let mut message = problem.message.clone();
            if !pins.is_empty() {
                message.push_str(&format!(
                    "; the pinned hashes stay bound ({})",
                    pins.join(", ")
                ));
            }
            wanted.push(Wanted::no(types::POLICY_RESOLVED, problem.reason, message));
        }
        (Ok(p), false, _) if !pins.iter().any(|h| h == p.hash.as_str()) => {
            wanted.push(Wanted::no(
                types::POLICY_RESOLVED,
                reasons::POLICY_HASH_NOT_PINNED,
                format!(
                    "{cm_at} hashes to {}, which is not in spec.policy.sha256 ({}): the key's \
                     release policy is not changed for it and the webhook refuses pods with it; \
                     if this policy is intended, add its hash to spec.policy.sha256",
                    p.hash,
                    pins.join(", ")
                ),
            ));
        }
        (Ok(p), true, PolicySource::Pinned) => {
            wanted.push(Wanted::no(
                types::POLICY_RESOLVED,
                reasons::POLICY_NOT_PINNED,
                format!(
                    "{cm_at} hashes to {h}, but the binding pins no hash and its policy source is \
                     Pinned, so the key is not changed: add `spec.policy.sha256: [\"{h}\"]` to the \
                     binding (or set spec.policy.source: ConfigMap to let whoever writes the \
                     ConfigMap decide what the key is released to)",
                    h = p.hash
                ),
            ));
        }
        (Ok(p), _, _) => {
            let how = if pins.is_empty() {
                "followed (spec.policy.source ConfigMap)"
            } else {
                "pinned"
            };
            wanted.push(Wanted::yes(
                types::POLICY_RESOLVED,
                reasons::POLICY_RESOLVED,
                format!("{cm_at} hashes to {}, {how}", p.hash),
            ));
            current_bindable = Some(p.hash.as_str());
        }
    }

    // 2. Allowed hashes and the release policy they make (nothing to bind: no policy at all).
    let recorded = match &observed.key {
        KeyObservation::Present(k) => k
            .tags
            .get(tags::RETIRED)
            .map(|v| decode_retired(v))
            .unwrap_or_default(),
        _ => BTreeMap::new(),
    };
    let in_vault: Option<BTreeSet<String>> = match &observed.key {
        KeyObservation::Present(k) => Some(
            k.release_policy
                .as_ref()
                .and_then(|p| ReleasePolicy::parse_json(&p.json).ok())
                .map(|p| p.hostdata_hashes())
                .unwrap_or_default(),
        ),
        KeyObservation::Absent | KeyObservation::Deleted(_) => Some(BTreeSet::new()),
        KeyObservation::NotChecked | KeyObservation::Failed(_) => None,
    };
    let desired = (current_bindable.is_some() || !pins.is_empty()).then(|| {
        let previous_bound = previous
            .policy
            .as_ref()
            .map(|p| p.bound_hashes.clone())
            .unwrap_or_default();
        let allowed: Allowed = allowed_hashes(HashInputs {
            current: current_bindable,
            pinned: pins,
            additional: &spec.policy.additional_hashes,
            previous: &previous_bound,
            in_vault: in_vault.as_ref(),
            pods: &observed.pod_policies,
            seen_retired: &observed.seen_retired,
            recorded: &recorded,
            now: observed.now,
            grace: config.hash_grace,
            ceiling: config.retention_ceiling,
        });
        requeue_after = allowed.next_expiry;
        let set: BTreeSet<PolicyHash> = allowed
            .hashes()
            .iter()
            .filter_map(|h| h.parse().ok())
            .collect();
        let release = ReleasePolicy::for_binding(spec, &set).map_err(|e| e.to_string());
        (allowed, release)
    });
    let current = cm_hash.clone();
    let short = cm_hash.as_ref().map(|h| h[..12].to_string());

    let contact_vault = vault_allowed && matches!(desired, Some((_, Ok(_))));

    // 3. The key.
    if let Err(e) = &vault {
        wanted.push(Wanted::no(
            types::KEY_READY,
            reasons::KEY_VAULT_REJECTED,
            format!("vault URL is invalid: {e}"),
        ));
    } else if let Err(refusal) = &admission {
        wanted.push(Wanted::no(
            types::KEY_READY,
            refusal.reason,
            refusal.message.clone(),
        ));
    }
    let mut synced: Option<Wanted> = None;
    match (&desired, vault_allowed) {
        (None, true) => wanted.push(Wanted::no(
            types::KEY_READY,
            reasons::WAITING_FOR_POLICY,
            "the key is not created or changed until the binding has a policy hash to bind \
             (see PolicyResolved)",
        )),
        (Some((_, Err(e))), _) => {
            synced = Some(Wanted::no(
                types::RELEASE_POLICY_SYNCED,
                reasons::SYNC_FAILED,
                format!("cannot build the release policy: {e}"),
            ));
            if vault_allowed {
                wanted.push(Wanted::no(
                    types::KEY_READY,
                    reasons::WAITING_FOR_POLICY,
                    "the key is created once a release policy can be built",
                ));
            }
        }
        (Some((allowed, Ok(release))), true) => {
            let policy_json = release.to_json();
            let retired_tag = encode_retired(&allowed.retired());
            let (key_cond, sync_cond, act, key_st) = decide_key(
                binding,
                &observed.key,
                Desired {
                    release,
                    policy_json: &policy_json,
                    retired_tag: retired_tag.as_deref(),
                },
                config,
                previous.key.as_ref(),
            );
            wanted.push(key_cond);
            synced = Some(sync_cond);
            action = act;
            status.key = key_st.or(status.key);
            // Record the hashes as bound only when Key Vault holds them (or is about to): a
            // hash recorded but never written would later count as "ours" for InUse.
            let bound_now = matches!(
                &action,
                KeyAction::Create(_)
                    | KeyAction::UpdatePolicy { .. }
                    | KeyAction::Adopt { .. }
                    | KeyAction::Retag { .. }
                    | KeyAction::RecordRetired { .. }
            ) || synced.as_ref().is_some_and(|s| s.ok);
            let mut p = status.policy.clone().unwrap_or_default();
            if current.is_some() {
                p.current_hash = current.clone();
                p.short_hash = short.clone();
            }
            p.authority = Some(spec.attestation.authority_url().to_string());
            if bound_now {
                p.bound_hashes = allowed.bound.clone();
            }
            status.policy = Some(p);
        }
        (_, false) => {}
    }
    wanted.push(synced.unwrap_or_else(|| {
        Wanted::no(
            types::RELEASE_POLICY_SYNCED,
            reasons::WAITING_FOR_KEY,
            "waiting for the key",
        )
    }));

    status.conditions = conditions(&previous.conditions, &wanted, generation, observed.now);
    let events = failure_events(&previous.conditions, &status.conditions);
    Plan {
        action,
        contact_vault,
        status,
        events,
        requeue_after,
        wanted,
    }
}

fn failure_events(
    previous: &[k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition],
    current: &[k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition],
) -> Vec<PlannedEvent> {
    new_failures(previous, current)
        .into_iter()
        .map(|c| PlannedEvent {
            warning: true,
            reason: c.reason.clone(),
            note: c.message.clone(),
        })
        .collect()
}

type KeyDecision = (Wanted, Wanted, KeyAction, Option<KeyStatus>);

/// What the key should hold.
struct Desired<'a> {
    release: &'a ReleasePolicy,
    policy_json: &'a str,
    /// The `ckb-retired` tag value (`None`: no tag).
    retired_tag: Option<&'a str>,
}

fn decide_key(
    binding: &ConfidentialKeyBinding,
    key: &KeyObservation,
    want: Desired<'_>,
    config: &PlanConfig,
    previous_key: Option<&KeyStatus>,
) -> KeyDecision {
    let Desired {
        release: desired,
        policy_json,
        retired_tag,
    } = want;
    let with_retired = |mut t: BTreeMap<String, String>| {
        match retired_tag {
            Some(v) => t.insert(tags::RETIRED.to_string(), v.to_string()),
            None => t.remove(tags::RETIRED),
        };
        t
    };
    let key_name = &binding.spec.key.name;
    let vault = binding.spec.key.vault_url();
    let waiting = || {
        Wanted::no(
            types::RELEASE_POLICY_SYNCED,
            reasons::WAITING_FOR_KEY,
            "waiting for the key",
        )
    };
    let synced = || {
        Wanted::yes(
            types::RELEASE_POLICY_SYNCED,
            reasons::SYNCED,
            "the release policy allows exactly the bound hashes",
        )
    };
    // NB: one message whatever was done to get there (created, adopted, patched): the status
    // then stays byte-identical from the write to every later resync; the action is in events.
    let available = |_how: &str| {
        Wanted::yes(
            types::KEY_READY,
            reasons::KEY_AVAILABLE,
            format!("key {key_name} in {vault} belongs to this binding and matches the spec"),
        )
    };
    match key {
        KeyObservation::NotChecked => (
            Wanted::no(
                types::KEY_READY,
                reasons::KEY_VAULT_UNAVAILABLE,
                "not checked",
            ),
            waiting(),
            KeyAction::None,
            None,
        ),
        KeyObservation::Failed(e) => (
            Wanted::no(
                types::KEY_READY,
                failure_reason(e),
                format!("reading key {key_name} in {vault} failed: {e}"),
            ),
            waiting(),
            KeyAction::None,
            None,
        ),
        KeyObservation::Absent => (
            available("is being created"),
            synced(),
            KeyAction::Create(new_key(binding, policy_json, &config.cluster_uid)),
            None,
        ),
        KeyObservation::Deleted(deleted) => {
            match owns(binding, &deleted.key, &config.cluster_uid) {
                true => (
                    available("is being recovered from soft-delete"),
                    waiting(),
                    KeyAction::Recover,
                    None,
                ),
                false => (
                    Wanted::no(
                        types::KEY_READY,
                        reasons::KEY_DELETED,
                        format!(
                            "key {key_name} in {vault} is soft-deleted and is not this binding's: \
                             purge or recover it, or name another key"
                        ),
                    ),
                    waiting(),
                    KeyAction::None,
                    None,
                ),
            }
        }
        KeyObservation::Present(k) => {
            let owner = ownership(&k.tags, binding, &config.cluster_uid);
            let not_owned = |reason: &'static str, message: String| {
                (
                    Wanted::no(types::KEY_READY, reason, message),
                    waiting(),
                    KeyAction::None,
                    None,
                )
            };
            let consent_tag = format!("{}={}", tags::ADOPT, binding.key_ref());
            let whose = match &owner {
                Ownership::Ours => None,
                Ownership::OursWithoutUid if had_this_key(binding, &k.id) => None,
                Ownership::OursWithoutUid => Some(format!(
                    "was created for a binding named {} before this one (it has no {} tag and \
                     this binding never had it)",
                    binding.key_ref(),
                    tags::BINDING_UID
                )),
                Ownership::EarlierBinding(uid) => Some(format!(
                    "belongs to an earlier binding named {} (UID {uid}; a deleted and re-created \
                     binding or namespace)",
                    binding.key_ref()
                )),
                Ownership::Untagged => Some("exists without ckb-operator tags".to_string()),
                Ownership::Foreign(shown) => {
                    return not_owned(
                        reasons::KEY_NOT_OWNED,
                        format!(
                            "key {key_name} in {vault} belongs to another binding or cluster \
                             ({shown}); it is never modified"
                        ),
                    );
                }
            };
            let adopting = match whose {
                None => false,
                Some(whose) if !binding.spec.key.adopt => {
                    return not_owned(
                        reasons::KEY_NOT_OWNED,
                        format!(
                            "key {key_name} in {vault} {whose}; to take it over, set \
                             spec.key.adopt: true and have someone with Key Vault rights add the \
                             tag {consent_tag} to the key (keeping its other tags)"
                        ),
                    );
                }
                Some(whose) if !adopt_consent(&k.tags, binding) => {
                    return not_owned(
                        reasons::ADOPT_CONSENT_MISSING,
                        format!(
                            "key {key_name} in {vault} {whose}; adopt needs the key owner's \
                             consent: someone with Key Vault rights must add the tag \
                             {consent_tag} to the key (keeping its other tags); the operator never \
                             sets it itself"
                        ),
                    );
                }
                Some(_) => true,
            };
            let migrate_tags = owner == Ownership::OursWithoutUid && !adopting;
            let diffs = key_differences(binding, k);
            if !diffs.is_empty() {
                return (
                    Wanted::no(
                        types::KEY_READY,
                        reasons::KEY_MISMATCH,
                        format!("key {key_name} in {vault}: {}", diffs.join("; ")),
                    ),
                    waiting(),
                    KeyAction::None,
                    None,
                );
            }
            let same = k
                .release_policy
                .as_ref()
                .and_then(|p| ReleasePolicy::parse_json(&p.json).ok())
                .is_some_and(|p| p.same_meaning(desired));
            let immutable = k.release_policy.as_ref().is_some_and(|p| p.immutable);
            let origin = match previous_key {
                Some(p)
                    if p.id.rsplit_once('/').map(|x| x.0) == k.id.rsplit_once('/').map(|x| x.0) =>
                {
                    p.origin.clone().unwrap_or_else(|| "Existing".into())
                }
                _ => "Existing".into(),
            };
            if adopting {
                if immutable && !same {
                    return (
                        Wanted::no(
                            types::KEY_READY,
                            reasons::KEY_NOT_OWNED,
                            format!(
                                "key {key_name} in {vault} has an immutable release policy that \
                                 differs; it cannot be adopted"
                            ),
                        ),
                        Wanted::no(
                            types::RELEASE_POLICY_SYNCED,
                            reasons::POLICY_IMMUTABLE,
                            "the key's release policy is immutable and differs",
                        ),
                        KeyAction::None,
                        None,
                    );
                }
                let mut tags = with_retired(k.tags.clone());
                tags.remove(ckb_crds::tags::ADOPT);
                tags.extend(owner_tags(binding, &config.cluster_uid));
                return (
                    available("is being adopted"),
                    synced(),
                    KeyAction::Adopt {
                        version: k.version.clone(),
                        policy_json: policy_json.to_string(),
                        tags,
                    },
                    Some(key_status(k, "Adopted")),
                );
            }
            if migrate_tags && !immutable {
                let mut tags = with_retired(k.tags.clone());
                tags.extend(owner_tags(binding, &config.cluster_uid));
                return (
                    available("is ours and matches the spec"),
                    synced(),
                    KeyAction::Retag {
                        version: k.version.clone(),
                        policy_json: policy_json.to_string(),
                        tags,
                    },
                    Some(key_status(k, &origin)),
                );
            }
            let tags_same = k.tags.get(tags::RETIRED).map(String::as_str) == retired_tag;
            if same {
                let action = match tags_same {
                    true => KeyAction::None,
                    false => KeyAction::RecordRetired {
                        version: k.version.clone(),
                        tags: with_retired(k.tags.clone()),
                    },
                };
                return (
                    available("is ours and matches the spec"),
                    synced(),
                    action,
                    Some(key_status(k, &origin)),
                );
            }
            if immutable {
                return (
                    available("is ours and matches the spec"),
                    Wanted::no(
                        types::RELEASE_POLICY_SYNCED,
                        reasons::POLICY_IMMUTABLE,
                        "the key's release policy is immutable and differs from the bound \
                         hashes: it can never change; create a binding for a new key",
                    ),
                    KeyAction::None,
                    Some(key_status(k, &origin)),
                );
            }
            (
                available("is ours and matches the spec"),
                synced(),
                KeyAction::UpdatePolicy {
                    version: k.version.clone(),
                    policy_json: policy_json.to_string(),
                    tags: (!tags_same).then(|| with_retired(k.tags.clone())),
                },
                Some(key_status(k, &origin)),
            )
        }
    }
}

/// Folds the outcome of the plan's action into its status: the key as returned on success, a
/// false condition with the error's reason on failure. Returns the status and the events to
/// publish (one Normal event per successful write, one Warning per new failure).
pub fn settle(
    binding: &ConfidentialKeyBinding,
    plan: &Plan,
    outcome: Option<&Result<VaultKey, KeyVaultError>>,
    now: Timestamp,
) -> (ConfidentialKeyBindingStatus, Vec<PlannedEvent>) {
    let previous = binding.status.clone().unwrap_or_default();
    let mut status = plan.status.clone();
    let Some(outcome) = outcome else {
        return (status, plan.events.clone());
    };
    let vault = binding.spec.key.vault_url();
    let name = &binding.spec.key.name;
    let mut events = Vec::new();
    match outcome {
        Ok(key) => {
            let (reason, note, origin) = match &plan.action {
                KeyAction::Create(_) => (
                    "KeyCreated",
                    format!("created key {} in {vault} with the release policy", key.id),
                    "Created",
                ),
                KeyAction::UpdatePolicy { .. } => (
                    "ReleasePolicyUpdated",
                    format!("updated the release policy of {}", key.id),
                    "",
                ),
                KeyAction::Adopt { .. } => (
                    "KeyAdopted",
                    format!(
                        "adopted key {}: added ckb tags, set the release policy",
                        key.id
                    ),
                    "Adopted",
                ),
                KeyAction::Retag { .. } => (
                    "KeyTagsMigrated",
                    format!(
                        "added the {} tag to {} (a key tagged by an earlier operator version)",
                        ckb_crds::tags::BINDING_UID,
                        key.id
                    ),
                    "",
                ),
                KeyAction::Recover => (
                    "KeyRecovered",
                    format!("recovered soft-deleted key {name} in {vault}"),
                    "",
                ),
                KeyAction::RecordRetired { tags, .. } => (
                    "RetirementRecorded",
                    format!(
                        "recorded on key {} when its retired hashes stopped being current or                          pinned ({}={}): their grace period and retention ceiling count from then,                          across operator restarts",
                        key.id,
                        ckb_crds::tags::RETIRED,
                        tags.get(ckb_crds::tags::RETIRED)
                            .map_or("<none>", |v| v.as_str())
                    ),
                    "",
                ),
                KeyAction::None => return (status, plan.events.clone()),
            };
            let origin = if origin.is_empty() {
                status
                    .key
                    .as_ref()
                    .and_then(|k| k.origin.clone())
                    .unwrap_or_else(|| "Existing".into())
            } else {
                origin.to_string()
            };
            status.key = Some(key_status(key, &origin));
            events.push(PlannedEvent {
                warning: false,
                reason: reason.into(),
                note,
            });
            events.extend(failure_events(&previous.conditions, &status.conditions));
        }
        Err(e) => {
            let (type_, reason, what) = match &plan.action {
                KeyAction::UpdatePolicy { .. } => (
                    types::RELEASE_POLICY_SYNCED,
                    if matches!(e, KeyVaultError::ImmutablePolicy { .. }) {
                        reasons::POLICY_IMMUTABLE
                    } else {
                        reasons::SYNC_FAILED
                    },
                    "updating the release policy",
                ),
                KeyAction::Create(_) => (types::KEY_READY, failure_reason(e), "creating the key"),
                KeyAction::Adopt { .. } => {
                    (types::KEY_READY, failure_reason(e), "adopting the key")
                }
                KeyAction::Retag { .. } => (
                    types::KEY_READY,
                    failure_reason(e),
                    "adding the binding UID tag to the key",
                ),
                KeyAction::Recover => (types::KEY_READY, failure_reason(e), "recovering the key"),
                KeyAction::RecordRetired { .. } => (
                    types::RELEASE_POLICY_SYNCED,
                    reasons::SYNC_FAILED,
                    "recording the retired hashes on the key",
                ),
                KeyAction::None => return (status, plan.events.clone()),
            };
            let mut wanted = plan.wanted.clone();
            for w in &mut wanted {
                if w.type_ == type_ {
                    *w = Wanted::no(
                        type_,
                        reason,
                        format!("{what} {name} in {vault} failed: {e}"),
                    );
                } else if type_ == types::KEY_READY && w.type_ == types::RELEASE_POLICY_SYNCED {
                    *w = Wanted::no(
                        types::RELEASE_POLICY_SYNCED,
                        reasons::WAITING_FOR_KEY,
                        "waiting for the key",
                    );
                }
            }
            // The hashes were not written: keep what Key Vault holds as bound.
            status.policy = match (previous.policy.clone(), status.policy.clone()) {
                (Some(mut prev), Some(now_p)) => {
                    prev.current_hash = now_p.current_hash;
                    prev.short_hash = now_p.short_hash;
                    prev.authority = now_p.authority;
                    Some(prev)
                }
                (None, Some(mut now_p)) => {
                    now_p.bound_hashes.clear();
                    Some(now_p)
                }
                (p, None) => p,
            };
            status.conditions = conditions(
                &previous.conditions,
                &wanted,
                binding.metadata.generation,
                now,
            );
            events.extend(failure_events(&previous.conditions, &status.conditions));
        }
    }
    (status, events)
}
