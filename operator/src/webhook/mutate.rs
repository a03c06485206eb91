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

use std::sync::Arc;

use k8s_openapi::api::core::v1::ResourceRequirements;
use serde_json::Value;

use super::inject;
pub use super::injected::{app_env, reference_info_volume, sidecar_container};
use super::pod_json::object_mut;
pub use super::policy::{AdmissionPatch, PreparedPolicy};
pub use super::select::{pod_labels, select_bindings, selector_matches};
use crate::crds::{ConfidentialKeyBinding, SidecarLogLevel, SidecarSpec};
use crate::policy::PolicyHash;

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
    /// The agent policy from the binding's ConfigMap (prepared once per ConfigMap version), if the
    /// cache has it.
    pub policy: Option<Arc<PreparedPolicy>>,
    /// Where the policy comes from (`ConfigMap <name> key <key>`), for messages.
    pub policy_ref: String,
    /// The hashes the binding pins (`spec.policy.sha256`); when not empty, a policy hashing to
    /// anything else is refused.
    pub pinned: Vec<PolicyHash>,
}

impl MatchedBinding {
    /// Reduces a binding (and its resolved policy) to what the mutation needs.
    pub fn from_binding(
        binding: &ConfidentialKeyBinding,
        policy: Option<Arc<PreparedPolicy>>,
    ) -> Self {
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
        /// The patch, computed as the diff of the request's object and the mutated copy; the
        /// injected policy's annotation value stays in the prepared policy (see
        /// [`AdmissionPatch`]).
        patch: AdmissionPatch,
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
    /// The agent policy written into the pod ([`Mode::Admission`] only).
    pub policy: Option<Arc<PreparedPolicy>>,
}

/// The admission decision: [`mutate`] in [`Mode::Admission`], as a patch against the raw request.
pub fn decide(
    pod: &Value,
    bindings: &[MatchedBinding],
    defaults: &SidecarDefaults,
    confidential_runtime_classes: &[String],
) -> Decision {
    // The policy's annotation value is written as a placeholder: the patch refers to the
    // prepared policy instead of copying its value twice (into the mutated pod, then by the diff).
    match mutate_with(
        pod,
        bindings,
        defaults,
        confidential_runtime_classes,
        Mode::Admission,
        PolicyValue::Placeholder,
    ) {
        Err(denial) => Decision::Deny {
            message: denial.message,
        },
        Ok(m) if !m.changed => Decision::Allow {
            warnings: m.warnings,
        },
        Ok(m) => Decision::Patch {
            patch: super::policy::admission_patch(pod, m.pod, m.policy),
            warnings: m.warnings,
        },
    }
}

/// How the mutation writes the agent policy's annotation value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum PolicyValue {
    /// The value itself.
    Text,
    /// [`super::policy::PLACEHOLDER`], for [`super::policy::admission_patch`] (the annotation
    /// size limit is still checked with the value's length).
    Placeholder,
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

/// The annotation value of a policy: standard base64 with padding of the Rego text.
pub fn encode_policy_annotation(rego: &str) -> String {
    crate::policy::hash::encode_annotation(rego)
}

/// Mutates a pod (or a pod template: anything with `metadata` and `spec`) for the bindings that
/// select it. See the module documentation for the rules; each step is a function of the
/// `inject` module, run in the order the rules are listed.
pub fn mutate(
    pod: &Value,
    bindings: &[MatchedBinding],
    defaults: &SidecarDefaults,
    confidential_runtime_classes: &[String],
    mode: Mode,
) -> Result<Mutated, Denial> {
    mutate_with(
        pod,
        bindings,
        defaults,
        confidential_runtime_classes,
        mode,
        PolicyValue::Text,
    )
}

fn mutate_with(
    pod: &Value,
    bindings: &[MatchedBinding],
    defaults: &SidecarDefaults,
    confidential_runtime_classes: &[String],
    mode: Mode,
    policy_value: PolicyValue,
) -> Result<Mutated, Denial> {
    let Some(root) = pod.as_object() else {
        return Err(Denial {
            message: "ckb-operator: the object is not a JSON object".to_string(),
        });
    };
    if !is_confidential(pod, confidential_runtime_classes) || bindings.is_empty() {
        return Ok(Mutated {
            pod: pod.clone(),
            changed: false,
            warnings: Vec::new(),
            policy: None,
        });
    }
    if root.get("spec").is_some_and(|s| !s.is_object()) {
        return Err(Denial {
            message: "ckb-operator: the pod's spec is not an object".to_string(),
        });
    }
    // Sorted and de-duplicated by name: the output must not depend on cache order.
    let mut bs: Vec<&MatchedBinding> = bindings.iter().collect();
    bs.sort_by(|a, b| a.name.cmp(&b.name));
    bs.dedup_by(|a, b| a.name == b.name);
    let bs = bs.as_slice();
    let who = inject::pod_label(pod);

    let policy = match mode {
        Mode::Admission => inject::one_policy(bs, &who)?,
        Mode::Render => None,
    };
    let sidecar = super::injected::effective_sidecar(bs, defaults)?;
    inject::check_env_suffixes(bs)?;
    let env = app_env(bs, sidecar.port);

    let mut out = pod.clone();
    let root = out.as_object_mut().expect("checked above");
    let spec = object_mut(root, "spec");
    inject::check_ports(spec, bs, &who, sidecar.port)?;
    inject::add_sidecar(spec, bs, &who, &sidecar)?;
    inject::add_reference_info_volume(spec, bs, &who)?;
    inject::add_app_env(spec, bs, &who, &env)?;
    let metadata = object_mut(root, "metadata");
    inject::annotate(metadata, bs, &who, policy.as_deref(), policy_value)?;
    let mut warnings = inject::label(metadata, bs, &who);
    // The pod's workload identity for the sidecar, whatever the webhook order (see identity.rs).
    warnings.extend(super::identity::share_with_sidecar(&mut out).warning(&who));
    let changed = &out != pod;
    Ok(Mutated {
        pod: out,
        changed,
        warnings,
        policy,
    })
}
