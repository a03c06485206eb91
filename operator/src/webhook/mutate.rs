//! The pure pod mutation: what a confidential pod must become for the bindings that select it.
//!
//! Everything here works on raw JSON (`serde_json::Value`) so that fields this crate's types do not
//! know survive untouched, and the admission patch is the diff between the request's object and
//! the mutated copy. No I/O: the caller resolves the bindings and their policies first.
//!
//! Rules, in the order they are checked:
//! - only pods whose `spec.runtimeClassName` is in the confidential set are ever changed;
//! - no binding → unchanged;
//! - a binding that pins hashes (`spec.policy.sha256`) refuses a policy hashing to anything else;
//! - every binding must resolve to the same agent policy (compared by SHA-256 of the Rego text);
//!   a pod that already carries a different policy annotation is refused;
//! - bindings that override the same sidecar field with different values are refused;
//! - the sidecar port must not clash with a port of an app container or a native sidecar;
//! - a container already named `skr` must be (a superset of) the sidecar we would add;
//! - an app container's existing env var with one of our names must already hold our value
//!   (we never overwrite a user's variable; a different value is refused, see [`EnvConflict`]);
//! - the annotations after mutation must fit the API server's 256 KiB limit.
//!
//! Design choices (documented here because users see them):
//! - **Env names.** One binding: `SKR_ENDPOINT`, `SKR_MAA_ENDPOINT`, `SKR_AKV_ENDPOINT`,
//!   `SKR_KEY_NAME`. Several bindings: one sidecar serves them all, so `SKR_ENDPOINT` stays, and
//!   every binding gets the four names suffixed with `_` + [`env_suffix`] of its name (upper case,
//!   every character other than A-Z and 0-9 turned into `_`): binding `orders-key` →
//!   `SKR_KEY_NAME_ORDERS_KEY`. Two bindings whose suffixes collide are refused.
//! - **Init containers** never get the env: they finish before the `skr` sidecar (a regular
//!   container) starts, so they could not reach it. **Native sidecars** (init containers with
//!   `restartPolicy: Always`) start before it too and are usually infrastructure (proxies, log
//!   shippers): they get no env either, but their ports count for the port-clash check because
//!   they share the pod's network namespace.
//! - **Existing env var** with one of our names and a different value (or a `valueFrom`): refused,
//!   naming the container and variable. Keeping the user's value silently would send the app to
//!   another key or vault than the binding it matched, and failures would surface only at release.
//! - **Workload identity** label missing: a warning, never a change (the user owns the identity).
//!   With the label, the sidecar gets the app containers' workload identity ([`super::identity`]).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use k8s_openapi::api::core::v1::ResourceRequirements;
use serde_json::{Map, Value, json};

use crate::crds::labels::{AGENT_POLICY, BINDINGS, POLICY_SHA256};
use crate::crds::{ConfidentialKeyBinding, SidecarLogLevel, SidecarSpec};

/// Name of the injected sidecar container.
pub const SIDECAR_NAME: &str = "skr";
/// Default sidecar image: the newest `mcr.microsoft.com/aci/skr` tag used by Microsoft's own AKS
/// and ACI examples (confidential-sidecar-containers, Dec 2025). Pin a digest with `--sidecar-image`.
pub const DEFAULT_SIDECAR_IMAGE: &str = "mcr.microsoft.com/aci/skr:2.12";
/// Default port the sidecar listens on (loopback only; the sidecar hard-codes `localhost`).
pub const DEFAULT_SIDECAR_PORT: u16 = 8080;
/// The sidecar's entrypoint: `/skr.sh` is what reads `SkrSideCarArgs`, `Port` and `LogLevel`
/// (`/bin/skr` itself ignores those variables).
pub const SIDECAR_COMMAND: &str = "/skr.sh";
/// The sidecar configuration every AKS example uses: fetch AMD certificates from the local THIM
/// endpoint (AKS nodes have no `host-amd-cert-base64` file). Its standard base64 goes in
/// `SkrSideCarArgs`.
pub const SKR_SIDECAR_ARGS_JSON: &str = r#"{"certcache":{"endpoint_type":"LocalTHIM","endpoint":"169.254.169.254/metadata/THIM/amd/certification"}}"#;
/// The UVM reference info (COSE_Sign1 endorsement) the sidecar forwards to MAA; mounted from the
/// host at the same path.
pub const REFERENCE_INFO_PATH: &str =
    "/opt/confidential-containers/share/kata-containers/reference-info-base64";
/// Name of the hostPath volume holding [`REFERENCE_INFO_PATH`].
pub const REFERENCE_INFO_VOLUME: &str = "ckb-skr-reference-info";
/// Pod label the webhook sets on every pod it injected (value `"true"`); the controller watches it.
pub const INJECTED_LABEL: &str = "ckb.dev/injected";
/// Workload identity opt-in label the sidecar's Key Vault authentication depends on.
pub const WORKLOAD_IDENTITY_LABEL: &str = "azure.workload.identity/use";
/// The default confidential runtime class on AKS.
pub const DEFAULT_CONFIDENTIAL_RUNTIME_CLASS: &str = "kata-cc-isolation";
/// The API server's limit on all annotations of one object: key + value bytes.
pub const ANNOTATIONS_SIZE_LIMIT: usize = 256 * 1024;

/// Env var: URL of the sidecar, `http://localhost:<port>`.
pub const ENV_ENDPOINT: &str = "SKR_ENDPOINT";
/// Env var: attestation authority host, without scheme (the sidecar's `maa_endpoint`).
pub const ENV_MAA_ENDPOINT: &str = "SKR_MAA_ENDPOINT";
/// Env var: vault host, without scheme (the sidecar's `akv_endpoint`).
pub const ENV_AKV_ENDPOINT: &str = "SKR_AKV_ENDPOINT";
/// Env var: key name (the sidecar's `kid`).
pub const ENV_KEY_NAME: &str = "SKR_KEY_NAME";

/// The operator's sidecar settings, before per-binding overrides.
#[derive(Debug, Clone, PartialEq)]
pub struct SidecarDefaults {
    /// Sidecar image.
    pub image: String,
    /// Loopback port the sidecar listens on.
    pub port: u16,
    /// Sidecar log level.
    pub log_level: SidecarLogLevel,
    /// Sidecar resources, if any.
    pub resources: Option<ResourceRequirements>,
}

impl Default for SidecarDefaults {
    fn default() -> Self {
        Self {
            image: DEFAULT_SIDECAR_IMAGE.to_string(),
            port: DEFAULT_SIDECAR_PORT,
            log_level: SidecarLogLevel::Warning,
            resources: None,
        }
    }
}

/// A binding that selects the pod, reduced to what the mutation needs.
#[derive(Debug, Clone, PartialEq)]
pub struct MatchedBinding {
    /// Binding name (unique within the namespace).
    pub name: String,
    /// Vault URL as in the spec (`https://<name>.vault.azure.net`).
    pub vault: String,
    /// Key name in the vault.
    pub key_name: String,
    /// Attestation authority URL as in the spec (`https://<host>`).
    pub authority: String,
    /// Sidecar overrides of the binding.
    pub sidecar: SidecarSpec,
    /// The agent policy (Rego text) from the binding's ConfigMap, if the cache has it.
    pub policy: Option<Arc<str>>,
    /// Where the policy comes from (`ConfigMap <name> key <key>`), for messages.
    pub policy_ref: String,
    /// The hashes the binding pins (`spec.policy.sha256`); when not empty, a policy hashing to
    /// anything else is refused.
    pub pinned: Vec<String>,
}

impl MatchedBinding {
    /// Reduces a binding (and its resolved policy) to what the mutation needs.
    pub fn from_binding(binding: &ConfidentialKeyBinding, policy: Option<Arc<str>>) -> Self {
        let spec = &binding.spec;
        Self {
            name: binding.metadata.name.clone().unwrap_or_default(),
            vault: spec.key.vault.clone(),
            key_name: spec.key.name.clone(),
            authority: spec.attestation.authority.clone(),
            sidecar: spec.sidecar.clone().unwrap_or_default(),
            policy,
            policy_ref: format!(
                "ConfigMap {} key {}",
                spec.policy.config_map_ref.name, spec.policy.config_map_ref.key
            ),
            pinned: spec.policy.sha256.clone(),
        }
    }
}

/// What the mutation is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Admission: the policy must be known and is written into the pod.
    Admission,
    /// `ckb-operator render`: the policy does not exist yet (genpolicy makes it from the output),
    /// so the policy annotation and its hash are left alone.
    Render,
}

/// The admission decision for one pod.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Admit unchanged.
    Allow {
        /// Warnings for the client (kubectl prints them).
        warnings: Vec<String>,
    },
    /// Admit with this JSON patch (RFC 6902) applied.
    Patch {
        /// The patch, computed as the diff of the request's object and the mutated copy.
        patch: json_patch::Patch,
        /// Warnings for the client.
        warnings: Vec<String>,
    },
    /// Refuse the pod.
    Deny {
        /// Why, naming the cause and the bindings involved.
        message: String,
    },
}

/// Why a pod is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct Denial {
    /// Why, naming the cause and the bindings involved.
    pub message: String,
}

/// Kinds of env conflict, named in the denial message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EnvConflict {
    /// The container sets the variable to another literal value.
    OtherValue(String),
    /// The container takes the variable from `valueFrom`.
    ValueFrom,
}

/// The mutated pod.
#[derive(Debug, Clone, PartialEq)]
pub struct Mutated {
    /// The pod (or pod template) after mutation; equal to the input when nothing was needed.
    pub pod: Value,
    /// Whether anything changed.
    pub changed: bool,
    /// Warnings for the user.
    pub warnings: Vec<String>,
}

/// The admission decision: [`mutate`] in [`Mode::Admission`], as a patch against the raw request.
pub fn decide(
    pod: &Value,
    bindings: &[MatchedBinding],
    defaults: &SidecarDefaults,
    confidential_runtime_classes: &[String],
) -> Decision {
    match mutate(
        pod,
        bindings,
        defaults,
        confidential_runtime_classes,
        Mode::Admission,
    ) {
        Err(denial) => Decision::Deny {
            message: denial.message,
        },
        Ok(m) if !m.changed => Decision::Allow {
            warnings: m.warnings,
        },
        Ok(m) => Decision::Patch {
            patch: json_patch::diff(pod, &m.pod),
            warnings: m.warnings,
        },
    }
}

/// Whether the pod runs in one of the confidential runtime classes.
pub fn is_confidential(pod: &Value, confidential_runtime_classes: &[String]) -> bool {
    pod.pointer("/spec/runtimeClassName")
        .and_then(Value::as_str)
        .is_some_and(|rc| confidential_runtime_classes.iter().any(|c| c == rc))
}

/// The env-name suffix of a binding when several bindings match: upper case, every character other
/// than `A-Z` and `0-9` replaced by `_` (`orders-key` → `ORDERS_KEY`, `keys.v2` → `KEYS_V2`).
pub fn env_suffix(binding_name: &str) -> String {
    binding_name
        .chars()
        .map(|c| {
            let c = c.to_ascii_uppercase();
            if c.is_ascii_uppercase() || c.is_ascii_digit() {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// A URL's host (and port), without scheme and trailing slash: what the sidecar expects for
/// `maa_endpoint` and `akv_endpoint`.
pub fn host_of(url: &str) -> &str {
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))
        .unwrap_or(url);
    rest.split('/').next().unwrap_or(rest)
}

/// SHA-256 (lowercase hex) of the Rego text: the pod's `x-ms-sevsnpvm-hostdata`.
fn policy_hash(rego: &str) -> String {
    crate::policy::hash::hash_rego(rego.as_bytes()).to_string()
}

/// SHA-256 of the Rego text an annotation value (standard base64) decodes to.
// NB: line breaks are dropped first, as the Kata shim's Go decoder (`base64.StdEncoding`) ignores
// them: a wrapped value runs, and its hash is that of the decoded bytes.
fn annotation_hash(value: &str) -> Option<String> {
    let compact: String = value.chars().filter(|c| *c != '\n' && *c != '\r').collect();
    crate::policy::hash::hash_annotation(&compact)
        .ok()
        .map(|h| h.to_string())
}

/// The annotation value of a policy: standard base64 with padding of the Rego text.
pub fn encode_policy_annotation(rego: &str) -> String {
    crate::policy::hash::encode_annotation(rego)
}

fn short(hash: &str) -> &str {
    &hash[..hash.len().min(12)]
}

fn pod_label(pod: &Value) -> String {
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

fn deny(bindings: &[&MatchedBinding], what: impl std::fmt::Display) -> Denial {
    let label = if bindings.len() == 1 {
        "binding"
    } else {
        "bindings"
    };
    Denial {
        message: format!("ckb-operator ({label} {}): {what}", names(bindings)),
    }
}

/// The effective sidecar settings: defaults, overridden by the bindings; two bindings that set the
/// same field differently are refused.
fn effective_sidecar(
    bindings: &[&MatchedBinding],
    defaults: &SidecarDefaults,
) -> Result<SidecarDefaults, Denial> {
    fn pick<T: PartialEq + Clone + std::fmt::Debug>(
        bindings: &[&MatchedBinding],
        field: &str,
        get: impl Fn(&SidecarSpec) -> Option<T>,
        default: T,
    ) -> Result<T, Denial> {
        let set: Vec<(&MatchedBinding, T)> = bindings
            .iter()
            .filter_map(|b| get(&b.sidecar).map(|v| (*b, v)))
            .collect();
        match set.first() {
            None => Ok(default),
            Some((_, first)) => {
                if set.iter().all(|(_, v)| v == first) {
                    Ok(first.clone())
                } else {
                    let detail = set
                        .iter()
                        .map(|(b, v)| format!("{} sets {v:?}", b.name))
                        .collect::<Vec<_>>()
                        .join(", ");
                    Err(deny(
                        bindings,
                        format!(
                            "the bindings disagree on sidecar {field} ({detail}); one sidecar serves them all"
                        ),
                    ))
                }
            }
        }
    }
    Ok(SidecarDefaults {
        image: pick(
            bindings,
            "image",
            |s| s.image.clone(),
            defaults.image.clone(),
        )?,
        port: pick(bindings, "port", |s| s.port, defaults.port)?,
        log_level: pick(bindings, "logLevel", |s| s.log_level, defaults.log_level)?,
        resources: pick(
            bindings,
            "resources",
            |s| s.resources.clone().map(Some),
            defaults.resources.clone(),
        )?,
    })
}

/// The sidecar container as JSON.
pub fn sidecar_container(sidecar: &SidecarDefaults) -> Value {
    let mut c = json!({
        "name": SIDECAR_NAME,
        "image": sidecar.image,
        "command": [SIDECAR_COMMAND],
        "env": [
            {"name": "SkrSideCarArgs", "value": STANDARD.encode(SKR_SIDECAR_ARGS_JSON)},
            {"name": "Port", "value": sidecar.port.to_string()},
            {"name": "LogLevel", "value": sidecar.log_level.as_str()},
        ],
        "volumeMounts": [
            {"name": REFERENCE_INFO_VOLUME, "mountPath": REFERENCE_INFO_PATH, "readOnly": true},
        ],
    });
    if let Some(r) = &sidecar.resources
        && let Ok(v) = serde_json::to_value(r)
    {
        c["resources"] = v;
    }
    c
}

/// The hostPath volume of the reference info.
pub fn reference_info_volume() -> Value {
    json!({"name": REFERENCE_INFO_VOLUME, "hostPath": {"path": REFERENCE_INFO_PATH}})
}

/// The env the app containers get, in order.
pub fn app_env(bindings: &[&MatchedBinding], port: u16) -> Vec<(String, String)> {
    let endpoint = format!("http://localhost:{port}");
    let mut env = vec![(ENV_ENDPOINT.to_string(), endpoint.clone())];
    let one = bindings.len() == 1;
    for b in bindings {
        let sfx = if one {
            String::new()
        } else {
            format!("_{}", env_suffix(&b.name))
        };
        if !one {
            env.push((format!("{ENV_ENDPOINT}{sfx}"), endpoint.clone()));
        }
        env.push((
            format!("{ENV_MAA_ENDPOINT}{sfx}"),
            host_of(&b.authority).to_string(),
        ));
        env.push((
            format!("{ENV_AKV_ENDPOINT}{sfx}"),
            host_of(&b.vault).to_string(),
        ));
        env.push((format!("{ENV_KEY_NAME}{sfx}"), b.key_name.clone()));
    }
    env
}

/// Whether `have` contains everything `want` says: objects by key (extra keys allowed, e.g. fields
/// the API server defaulted), arrays of objects element-wise in any order, everything else equal.
fn contains(have: &Value, want: &Value) -> bool {
    match (have, want) {
        (Value::Object(h), Value::Object(w)) => w
            .iter()
            .all(|(k, wv)| h.get(k).is_some_and(|hv| contains(hv, wv))),
        (Value::Array(h), Value::Array(w)) if w.iter().all(Value::is_object) => {
            w.iter().all(|wv| h.iter().any(|hv| contains(hv, wv)))
        }
        _ => have == want,
    }
}

fn object_mut<'a>(parent: &'a mut Map<String, Value>, key: &str) -> &'a mut Map<String, Value> {
    let slot = parent
        .entry(key.to_string())
        .or_insert_with(|| Value::Object(Map::new()));
    if !slot.is_object() {
        *slot = Value::Object(Map::new());
    }
    match slot {
        Value::Object(m) => m,
        _ => unreachable!("just made an object"),
    }
}

fn array_mut<'a>(parent: &'a mut Map<String, Value>, key: &str) -> &'a mut Vec<Value> {
    let slot = parent
        .entry(key.to_string())
        .or_insert_with(|| Value::Array(Vec::new()));
    if !slot.is_array() {
        *slot = Value::Array(Vec::new());
    }
    match slot {
        Value::Array(a) => a,
        _ => unreachable!("just made an array"),
    }
}

fn container_name(c: &Value) -> &str {
    c.get("name").and_then(Value::as_str).unwrap_or("")
}

fn is_native_sidecar(c: &Value) -> bool {
    c.get("restartPolicy").and_then(Value::as_str) == Some("Always")
}

fn ports_of(c: &Value) -> impl Iterator<Item = i64> + '_ {
    c.get("ports")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|p| p.get("containerPort").and_then(Value::as_i64))
}

/// Mutates a pod (or a pod template: anything with `metadata` and `spec`) for the bindings that
/// select it. See the module documentation for the rules.
pub fn mutate(
    pod: &Value,
    bindings: &[MatchedBinding],
    defaults: &SidecarDefaults,
    confidential_runtime_classes: &[String],
    mode: Mode,
) -> Result<Mutated, Denial> {
    let unchanged = |warnings| Mutated {
        pod: pod.clone(),
        changed: false,
        warnings,
    };
    if !pod.is_object() {
        return Err(Denial {
            message: "ckb-operator: the object is not a JSON object".to_string(),
        });
    }
    if !is_confidential(pod, confidential_runtime_classes) || bindings.is_empty() {
        return Ok(unchanged(Vec::new()));
    }
    if pod.get("spec").is_some_and(|s| !s.is_object()) {
        return Err(Denial {
            message: "ckb-operator: the pod's spec is not an object".to_string(),
        });
    }

    // Sorted and de-duplicated by name: the output must not depend on cache order.
    let mut sorted: Vec<&MatchedBinding> = bindings.iter().collect();
    sorted.sort_by(|a, b| a.name.cmp(&b.name));
    sorted.dedup_by(|a, b| a.name == b.name);
    let bs = sorted.as_slice();
    let who = pod_label(pod);

    // 1. One policy for all bindings.
    let mut policy: Option<(String, &str)> = None; // (hash, rego)
    if mode == Mode::Admission {
        let mut by_hash: BTreeMap<String, Vec<&MatchedBinding>> = BTreeMap::new();
        let mut rego_of: BTreeMap<String, &str> = BTreeMap::new();
        for b in bs {
            let Some(rego) = b.policy.as_deref() else {
                return Err(deny(
                    &[*b],
                    format!(
                        "the agent policy ({}) is not available; create it (labelled ckb.dev/policy=true) before the pods, or check the binding's status",
                        b.policy_ref
                    ),
                ));
            };
            let h = policy_hash(rego);
            if !b.pinned.is_empty() && !b.pinned.contains(&h) {
                return Err(deny(
                    &[*b],
                    format!(
                        "the agent policy in {} hashes to {h}, which the binding does not pin: spec.policy.sha256 expects {}; the ConfigMap may have been changed without the binding's review (restore it, or add the new hash to spec.policy.sha256)",
                        b.policy_ref,
                        b.pinned.join(" or ")
                    ),
                ));
            }
            rego_of.entry(h.clone()).or_insert(rego);
            by_hash.entry(h).or_default().push(b);
        }
        if by_hash.len() > 1 {
            let detail = by_hash
                .iter()
                .map(|(h, group)| format!("{} → {}", names(group), short(h)))
                .collect::<Vec<_>>()
                .join("; ");
            return Err(deny(
                bs,
                format!(
                    "{who} is selected by bindings with different agent policies ({detail}); a pod runs exactly one policy, so narrow the podSelectors or use one policy ConfigMap"
                ),
            ));
        }
        if let Some((h, rego)) = rego_of.into_iter().next() {
            policy = Some((h, rego));
        }
    }

    // 2. Sidecar settings and env names.
    let sidecar = effective_sidecar(bs, defaults)?;
    if bs.len() > 1 {
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
    }
    let env = app_env(bs, sidecar.port);

    let mut out = pod.clone();
    let root = out.as_object_mut().expect("checked above");
    let spec = object_mut(root, "spec");

    // 3. Port clash with app containers and native sidecars (they share the network namespace).
    let port = i64::from(sidecar.port);
    let empty = Vec::new();
    let containers = spec
        .get("containers")
        .and_then(Value::as_array)
        .unwrap_or(&empty);
    let inits = spec
        .get("initContainers")
        .and_then(Value::as_array)
        .unwrap_or(&empty);
    if inits.iter().any(|c| container_name(c) == SIDECAR_NAME) {
        return Err(deny(
            bs,
            format!(
                "{who} has an init container named {SIDECAR_NAME:?}, the name of the SKR sidecar; rename it"
            ),
        ));
    }
    for c in containers
        .iter()
        .filter(|c| container_name(c) != SIDECAR_NAME)
        .chain(inits.iter().filter(|c| is_native_sidecar(c)))
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

    // 4. The sidecar, once.
    let want = sidecar_container(&sidecar);
    match containers
        .iter()
        .find(|c| container_name(c) == SIDECAR_NAME)
    {
        Some(existing) => {
            let mut core = want.clone();
            // NB: resources are not compared: the API server rewrites quantities to canonical
            // form ("0.5" → "500m"), which would make a re-invocation refuse its own output.
            if let Some(m) = core.as_object_mut() {
                m.remove("resources");
            }
            if !contains(existing, &core) {
                return Err(deny(
                    bs,
                    format!(
                        "{who} already has a container named {SIDECAR_NAME:?} that differs from the SKR sidecar the operator injects (image {}, command {SIDECAR_COMMAND}, Port {}); remove it and let the operator add it, or re-run `ckb-operator render`",
                        sidecar.image, sidecar.port
                    ),
                ));
            }
        }
        None => array_mut(spec, "containers").push(want),
    }

    // 5. The reference-info volume, once.
    let volume = reference_info_volume();
    let volumes = array_mut(spec, "volumes");
    match volumes
        .iter()
        .find(|v| v.get("name").and_then(Value::as_str) == Some(REFERENCE_INFO_VOLUME))
    {
        Some(existing) if contains(existing, &volume) => {}
        Some(_) => {
            return Err(deny(
                bs,
                format!(
                    "{who} has a volume named {REFERENCE_INFO_VOLUME:?} that is not the hostPath {REFERENCE_INFO_PATH}; rename it"
                ),
            ));
        }
        None => volumes.push(volume),
    }

    // 6. Env of every app container; a user's variable is never overwritten.
    for c in array_mut(spec, "containers").iter_mut() {
        if container_name(c) == SIDECAR_NAME {
            continue;
        }
        let cname = container_name(c).to_string();
        let Some(cmap) = c.as_object_mut() else {
            continue;
        };
        let list = array_mut(cmap, "env");
        for (name, value) in &env {
            let existing = list
                .iter()
                .find(|e| e.get("name").and_then(Value::as_str) == Some(name.as_str()));
            let conflict = match existing {
                None => None,
                Some(e) if e.get("valueFrom").is_some() => Some(EnvConflict::ValueFrom),
                Some(e) => match e.get("value").and_then(Value::as_str) {
                    Some(v) if v == value => continue,
                    v => Some(EnvConflict::OtherValue(v.unwrap_or("").to_string())),
                },
            };
            match conflict {
                None => list.push(json!({"name": name, "value": value})),
                Some(why) => {
                    let how = match why {
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
        }
    }

    // 7. Annotations and label.
    let metadata = object_mut(root, "metadata");
    let annotations = object_mut(metadata, "annotations");
    if let Some((hash, rego)) = &policy {
        match annotations.get(AGENT_POLICY) {
            Some(existing) => {
                let existing_hash = existing.as_str().and_then(annotation_hash);
                if existing_hash.as_deref() != Some(hash.as_str()) {
                    let found = existing_hash
                        .as_deref()
                        .map(|h| format!("policy {}", short(h)))
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
                annotations.insert(
                    AGENT_POLICY.to_string(),
                    Value::String(encode_policy_annotation(rego)),
                );
            }
        }
        annotations.insert(POLICY_SHA256.to_string(), Value::String(hash.clone()));
    }
    let binding_names = bs.iter().map(|b| b.name.as_str()).collect::<Vec<_>>();
    annotations.insert(BINDINGS.to_string(), Value::String(binding_names.join(",")));
    let total: usize = annotations
        .iter()
        .map(|(k, v)| k.len() + v.as_str().map_or(0, str::len))
        .sum();
    if total > ANNOTATIONS_SIZE_LIMIT {
        return Err(deny(
            bs,
            format!(
                "{who}'s annotations would take {total} bytes with the agent policy, over the API server's limit of {ANNOTATIONS_SIZE_LIMIT}; shrink the policy (fewer containers, genpolicy settings) or other annotations"
            ),
        ));
    }
    let labels = object_mut(metadata, "labels");
    labels.insert(INJECTED_LABEL.to_string(), Value::String("true".into()));
    let has_wi = labels.get(WORKLOAD_IDENTITY_LABEL).and_then(Value::as_str) == Some("true");

    let mut warnings = Vec::new();
    if !has_wi {
        warnings.push(format!(
            "ckb-operator: {who} has no label {WORKLOAD_IDENTITY_LABEL}: \"true\"; the SKR sidecar authenticates to Key Vault through Azure workload identity, and without it gets no AZURE_CLIENT_ID/AZURE_TENANT_ID/AZURE_FEDERATED_TOKEN_FILE and falls back to the node's managed identity (IMDS), which cannot release the key (bindings {})",
            binding_names.join(", ")
        ));
    }
    // 8. The pod's workload identity for the sidecar, whatever the webhook order (see identity.rs).
    warnings.extend(super::identity::share_with_sidecar(&mut out).warning(&who));
    let changed = &out != pod;
    Ok(Mutated {
        pod: out,
        changed,
        warnings,
    })
}

/// Bindings (of any namespace) that select a pod of `namespace` with these labels: same namespace,
/// not being deleted, and `spec.podSelector` matches. Sorted by name.
pub fn select_bindings(
    namespace: &str,
    pod_labels: &BTreeMap<String, String>,
    bindings: &[Arc<ConfidentialKeyBinding>],
) -> Vec<Arc<ConfidentialKeyBinding>> {
    let mut out: Vec<_> = bindings
        .iter()
        .filter(|b| b.metadata.namespace.as_deref() == Some(namespace))
        .filter(|b| b.metadata.deletion_timestamp.is_none())
        .filter(|b| selector_matches(&b.spec.pod_selector, pod_labels))
        .cloned()
        .collect();
    out.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    out
}

/// The labels of a pod as raw JSON (string values only; others cannot be labels).
pub fn pod_labels(pod: &Value) -> BTreeMap<String, String> {
    pod.pointer("/metadata/labels")
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| v.as_str().map(|v| (k.clone(), v.to_string())))
                .collect()
        })
        .unwrap_or_default()
}

/// Kubernetes label-selector semantics: every `matchLabels` pair and every `matchExpressions`
/// requirement must hold; an empty selector matches everything. A malformed requirement (unknown
/// operator, `In`/`NotIn` without values, `Exists` with values) matches nothing, as the API server
/// would have refused it.
pub fn selector_matches(
    selector: &k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector,
    labels: &BTreeMap<String, String>,
) -> bool {
    let labels_ok = selector
        .match_labels
        .iter()
        .flatten()
        .all(|(k, v)| labels.get(k) == Some(v));
    let exprs_ok = selector.match_expressions.iter().flatten().all(|e| {
        let values: BTreeSet<&str> = e.values.iter().flatten().map(String::as_str).collect();
        let have = labels.get(&e.key).map(String::as_str);
        match e.operator.as_str() {
            "In" => !values.is_empty() && have.is_some_and(|v| values.contains(v)),
            "NotIn" => !values.is_empty() && have.is_none_or(|v| !values.contains(v)),
            "Exists" => values.is_empty() && have.is_some(),
            "DoesNotExist" => values.is_empty() && have.is_none(),
            _ => false,
        }
    });
    labels_ok && exprs_ok
}
