//! The `ConfidentialKeyBinding` API (`ckb.dev/v1alpha1`).
//!
//! A binding says: "this Azure Key Vault key may be released only to pods of mine that run this Kata
//! agent policy". This crate holds the types only: the spec and status, their OpenAPI schema (with the
//! validation `kubectl apply` enforces), and the closed vocabulary of status conditions. It does no
//! I/O; the operator crate depends on it, never the other way round.

use k8s_openapi::api::core::v1::ResourceRequirements;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub mod conditions;
pub mod grant;
mod hash;
mod key;
pub mod schema;
mod status;

pub use hash::{HASH_HEX_LEN, InvalidPolicyHash, PolicyHash};
pub use key::{Curve, DeletionPolicy, KeyOperation, KeyType};
pub use status::{
    BoundHash, BoundHashReason, ConfidentialKeyBindingStatus, KeyStatus, PolicyStatus,
};

/// API group of every kind in this crate.
pub const GROUP: &str = "ckb.dev";
/// API version of this crate's kinds.
pub const VERSION: &str = "v1alpha1";
/// Finalizer the operator puts on bindings so the key's fate is decided before the binding goes.
pub const FINALIZER: &str = "confidentialkeybindings.ckb.dev/cleanup";
/// Field manager of every server-side apply the operator makes.
pub const FIELD_MANAGER: &str = "ckb-operator";

/// Label and annotation keys the operator owns (all under `ckb.dev/`).
pub mod labels {
    /// Namespace label that opts a namespace into sidecar injection (value `enabled`).
    pub const INJECTION: &str = "ckb.dev/injection";
    /// Value of [`INJECTION`] that opts a namespace in.
    pub const INJECTION_ENABLED: &str = "enabled";
    /// ConfigMap label that marks a ConfigMap as holding an agent policy (value `"true"`).
    pub const POLICY: &str = "ckb.dev/policy";
    /// Pod annotation: SHA-256 (lowercase hex) of the agent policy the webhook injected.
    pub const POLICY_SHA256: &str = "ckb.dev/policy-sha256";
    /// Pod annotation: comma-separated names of the bindings that matched the pod.
    pub const BINDINGS: &str = "ckb.dev/bindings";
    /// Kata agent policy annotation (base64 of the Rego text), read by the Kata shim.
    pub const AGENT_POLICY: &str = "io.katacontainers.config.agent.policy";
}

/// Tags the operator puts on the Key Vault keys it manages.
pub mod tags {
    /// Tag naming the manager of the key; value [`MANAGED_BY_VALUE`].
    pub const MANAGED_BY: &str = "managed-by";
    /// Value of [`MANAGED_BY`].
    pub const MANAGED_BY_VALUE: &str = "ckb-operator";
    /// Tag naming the binding that owns the key, as `<namespace>/<name>`.
    pub const BINDING: &str = "ckb-binding";
    /// Tag naming the cluster that owns the key: the UID of its `kube-system` namespace.
    pub const CLUSTER: &str = "ckb-cluster";
    /// Tag carrying the `metadata.uid` of the binding that owns the key: a later binding with the
    /// same namespace and name (a re-created namespace or binding) is another owner.
    pub const BINDING_UID: &str = "ckb-binding-uid";
    /// Consent tag, set on a key by someone with Key Vault rights (never by the operator): its
    /// value, `<namespace>/<name>` or a binding's UID, names the one binding allowed to take the
    /// key over (`spec.key.adopt: true`). The operator removes it once the key is taken over.
    pub const ADOPT: &str = "ckb-adopt";
    /// Tag the operator keeps on its keys: when each hash still in the release policy stopped
    /// being current or pinned, as `<first 16 hex digits>=<Unix seconds>` entries separated by
    /// commas. Key Vault is the memory of retirements that survives an operator restart (the
    /// binding's status can be rewritten by anyone with status rights).
    pub const RETIRED: &str = "ckb-retired";
}

/// Declares that a Key Vault key may be released only to this namespace's confidential pods that run
/// one agent policy, and asks the operator to keep the key, its release policy and the pods in step.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "ckb.dev",
    version = "v1alpha1",
    kind = "ConfidentialKeyBinding",
    plural = "confidentialkeybindings",
    singular = "confidentialkeybinding",
    shortname = "ckb",
    category = "confidential",
    namespaced,
    status = "ConfidentialKeyBindingStatus",
    doc = "Binds an Azure Key Vault key to the confidential pods of a namespace that run one Kata agent policy: the key is released only to an attested pod whose policy hash is bound.",
    printcolumn = r#"{"name":"Vault","type":"string","jsonPath":".spec.key.vault"}"#,
    printcolumn = r#"{"name":"Key","type":"string","jsonPath":".spec.key.name"}"#,
    printcolumn = r#"{"name":"Policy","type":"string","description":"First 12 hex digits of the current agent policy hash","jsonPath":".status.policy.shortHash"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Reason","type":"string","priority":1,"jsonPath":".status.conditions[?(@.type==\"Ready\")].reason"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
#[schemars(transform = schema::no_null_members)]
pub struct ConfidentialKeyBindingSpec {
    /// Selects the pods of this binding's namespace that get the key. Only confidential pods (a
    /// runtime class in the operator's confidential set, by default `kata-cc-isolation`) are ever
    /// changed. An empty selector matches every confidential pod of the namespace.
    pub pod_selector: LabelSelector,

    /// The Key Vault key: where it lives, what it is, and what happens to it when the binding goes.
    pub key: KeySpec,

    /// The attestation authority and the claims a token must carry for the key to be released.
    pub attestation: AttestationSpec,

    /// Where the Kata agent policy of the selected pods comes from, and other policy hashes that may
    /// also release the key.
    pub policy: PolicySpec,

    /// Overrides of the operator's defaults for the SKR sidecar injected into selected pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sidecar: Option<SidecarSpec>,

    /// The cluster-scoped ConfidentialKeyGrant that lets this namespace use the vault, and bounds
    /// what this binding may ask for (authorities, compliance values, debuggable VMs, key names
    /// and types, adopt, deletion). Unset: the operator's own bounds apply (`--allowed-vault`,
    /// `--allowed-authority`, `--allowed-compliance-status`, ...), unless it requires grants.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grant_ref: Option<GrantRef>,
}

/// A reference to a cluster-scoped ConfidentialKeyGrant.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GrantRef {
    /// Name of the ConfidentialKeyGrant.
    #[schemars(
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"),
        length(min = 1, max = 253)
    )]
    pub name: String,
}

/// An exportable HSM-backed key in an Azure Key Vault (Premium) or Managed HSM.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(
    extend("x-kubernetes-validations" = schema::key_rules()),
    transform = schema::no_null_members
)]
pub struct KeySpec {
    /// Vault URL: `https://<name>.vault.azure.net` (Premium vault) or
    /// `https://<name>.managedhsm.azure.net` (Managed HSM). Immutable.
    #[schemars(
        regex(pattern = r"^https://[0-9a-zA-Z-]{3,24}\.(vault|managedhsm)\.azure\.net/?$"),
        length(max = schema::VAULT_MAX_LENGTH)
    )]
    pub vault: String,

    /// Key name in the vault: 1 to 127 letters, digits and dashes. Immutable.
    #[schemars(regex(pattern = r"^[0-9a-zA-Z-]{1,127}$"), length(min = 1, max = 127))]
    pub name: String,

    /// Key type: `RSA-HSM` or `EC-HSM` (Premium vault or Managed HSM), `oct-HSM` (Managed HSM only).
    #[serde(default, rename = "type")]
    pub key_type: KeyType,

    /// Key size in bits: RSA-HSM 2048, 3072 or 4096 (3072 when unset); oct-HSM 128, 192 or 256
    /// (256 when unset). Not used with EC-HSM, which takes `curve`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "schema::key_size_schema")]
    pub size: Option<u32>,

    /// Elliptic curve, required with EC-HSM and only allowed there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub curve: Option<Curve>,

    /// Operations the key allows. When unset: wrapKey, unwrapKey, encrypt, decrypt for RSA-HSM and
    /// oct-HSM; sign, verify for EC-HSM.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 6),
        extend("x-kubernetes-list-type" = "set")
    )]
    pub operations: Option<Vec<KeyOperation>>,

    /// Take over an existing key this binding did not create: one without ckb-operator tags, or
    /// one left by an earlier binding of the same namespace and name (another UID). It also needs
    /// the key owner's consent: the tag `ckb-adopt` on the key, set by someone with Key Vault
    /// rights, naming this binding as `<namespace>/<name>` (or its UID). The operator then writes
    /// its tags (removing `ckb-adopt`) and rewrites the release policy. A key tagged for another
    /// binding name or cluster is never taken.
    #[serde(default)]
    pub adopt: bool,

    /// What happens to the key when the binding is deleted: `Retain` leaves it (with its tags; a
    /// re-created binding of the same name takes it back with `adopt: true` and the key owner's
    /// `ckb-adopt` tag); `Delete` soft-deletes it (recoverable for the vault's retention period).
    #[serde(default)]
    pub deletion_policy: DeletionPolicy,
}

/// The attestation authority and the claims its token must carry.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AttestationSpec {
    /// Microsoft Azure Attestation endpoint that must have issued the token, with `https://`
    /// (for example `https://sharedeus.eus.attest.azure.net`). It is the release policy's
    /// `authority` and is compared with the token's issuer.
    #[schemars(
        regex(
            pattern = r"^https://[0-9a-zA-Z]([0-9a-zA-Z-]*[0-9a-zA-Z])?(\.[0-9a-zA-Z]([0-9a-zA-Z-]*[0-9a-zA-Z])?)*(:[0-9]{1,5})?/?$"
        ),
        length(max = 253)
    )]
    pub authority: String,

    /// Required value of the `x-ms-compliance-status` claim: `azure-signed-katacc-uvm` for
    /// confidential containers on AKS, `azure-compliant-uvm` on ACI.
    #[serde(default = "default_compliance_status")]
    #[schemars(length(min = 1, max = 128))]
    pub compliance_status: String,

    /// Allow release to a debuggable VM. When false (the default) the release policy requires
    /// `x-ms-sevsnpvm-is-debuggable` to equal "false".
    #[serde(default)]
    pub allow_debuggable: bool,

    /// Further claims that must be present with the given value (for example
    /// `x-ms-sevsnpvm-vmpl` = "0"). Claims the operator pins itself cannot be set here.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(
        length(max = 16),
        extend(
            "x-kubernetes-validations" = schema::extra_claims_rules(),
            "x-kubernetes-list-type" = "map",
            "x-kubernetes-list-map-keys" = ["claim"]
        )
    )]
    pub extra_claims: Vec<ClaimCondition>,
}

fn default_compliance_status() -> String {
    "azure-signed-katacc-uvm".to_string()
}

/// A claim that must equal a value.
#[derive(
    Deserialize, Serialize, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, JsonSchema,
)]
#[serde(rename_all = "camelCase")]
pub struct ClaimCondition {
    /// Claim name; dots address nested claims (`x-ms-isolation-tee.x-ms-attestation-type`).
    #[schemars(
        regex(pattern = r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$"),
        length(min = 1, max = 128)
    )]
    pub claim: String,
    /// The value the claim must equal, as a string (Microsoft's policies compare `"0"`, `"false"`).
    #[schemars(length(max = 256))]
    pub equals: String,
}

/// Where the agent policy comes from.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(transform = schema::no_null_members)]
pub struct PolicySpec {
    /// ConfigMap of this namespace holding the Kata agent policy as Rego text. The ConfigMap must be
    /// labelled `ckb.dev/policy: "true"` (the operator watches only those).
    pub config_map_ref: ConfigMapKeyRef,

    /// Other agent policy hashes (SHA-256 of the Rego text, 64 lowercase hex digits) that may also
    /// release the key, for example pods whose policy is managed elsewhere.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(
        length(max = 16),
        extend("x-kubernetes-list-type" = "set")
    )]
    pub additional_hashes: Vec<PolicyHash>,

    /// The agent policy hashes (SHA-256 of the Rego text, 64 lowercase hex digits) this binding
    /// approves, reviewed with the binding (e.g. in Git). When set, every listed hash is bound in
    /// the key's release policy, and the ConfigMap only says which of them pods get: a ConfigMap
    /// whose policy hashes to anything else changes nothing in Key Vault (`PolicyResolved=False
    /// reason=PolicyHashNotPinned`) and the webhook refuses the pods. To roll out a new policy,
    /// list both hashes, change the ConfigMap, then remove the old hash.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(
        length(max = 16),
        extend("x-kubernetes-list-type" = "set")
    )]
    pub sha256: Vec<PolicyHash>,

    /// What a binding without `sha256` follows. `Pinned`: nothing; the key is left as it is and
    /// the binding reports `PolicyResolved=False reason=PolicyNotPinned` naming the hash to pin.
    /// `ConfigMap`: the ConfigMap's hash is bound as it changes; anyone who may write the
    /// ConfigMap (the built-in `edit` role) then decides what the key is released to. Unset: the
    /// operator's `--policy-source-default` (`Pinned` unless changed). Ignored when `sha256` is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<PolicySource>,
}

/// What decides the bound policy hash of a binding that pins none.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum PolicySource {
    /// Only `spec.policy.sha256` (the safe default): a ConfigMap edit cannot change the key.
    #[default]
    Pinned,
    /// The ConfigMap's current hash (whoever writes the ConfigMap decides what the key releases to).
    ConfigMap,
}

impl PolicySource {
    /// The name as written in the spec and the operator's flag.
    pub fn as_str(self) -> &'static str {
        match self {
            PolicySource::Pinned => "Pinned",
            PolicySource::ConfigMap => "ConfigMap",
        }
    }
}

impl std::str::FromStr for PolicySource {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "Pinned" | "pinned" => Ok(PolicySource::Pinned),
            "ConfigMap" | "configmap" | "configMap" => Ok(PolicySource::ConfigMap),
            _ => Err(format!("{s:?}: expected Pinned or ConfigMap")),
        }
    }
}

/// A key of a ConfigMap.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ConfigMapKeyRef {
    /// ConfigMap name.
    #[schemars(
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"),
        length(min = 1, max = 253)
    )]
    pub name: String,
    /// Key in the ConfigMap's `data` whose value is the Rego text.
    #[serde(default = "default_policy_key")]
    #[schemars(regex(pattern = r"^[-._a-zA-Z0-9]+$"), length(min = 1, max = 253))]
    pub key: String,
}

fn default_policy_key() -> String {
    "policy.rego".to_string()
}

/// Per-binding overrides of the SKR sidecar defaults.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(transform = schema::no_null_members)]
pub struct SidecarSpec {
    /// Sidecar image; by default the operator's (a pinned `mcr.microsoft.com/aci/skr` tag).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 512))]
    pub image: Option<String>,
    /// Port the sidecar listens on, on the pod's loopback (default 8080).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "schema::port_schema")]
    pub port: Option<u16>,
    /// Sidecar log level (default warning).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_level: Option<SidecarLogLevel>,
    /// Resource requests and limits of the sidecar container (confidential pods should set limits).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
}

/// Log levels the SKR sidecar understands.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum SidecarLogLevel {
    /// trace
    Trace,
    /// debug
    Debug,
    /// info
    Info,
    /// warning
    Warning,
    /// error
    Error,
    /// fatal
    Fatal,
    /// panic
    Panic,
}

impl SidecarLogLevel {
    /// The value the sidecar's `LogLevel` variable takes.
    pub fn as_str(self) -> &'static str {
        match self {
            SidecarLogLevel::Trace => "trace",
            SidecarLogLevel::Debug => "debug",
            SidecarLogLevel::Info => "info",
            SidecarLogLevel::Warning => "warning",
            SidecarLogLevel::Error => "error",
            SidecarLogLevel::Fatal => "fatal",
            SidecarLogLevel::Panic => "panic",
        }
    }
}

/// The CustomResourceDefinition of [`ConfidentialKeyBinding`], as `ckb-operator crd` prints it and
/// the chart installs it (see [`schema::crd_without_nullable`]).
pub fn crd() -> CustomResourceDefinition {
    schema::crd_without_nullable::<ConfidentialKeyBinding>()
}

impl ConfidentialKeyBinding {
    /// `<namespace>/<name>`, as used in the `ckb-binding` key tag and in messages.
    pub fn key_ref(&self) -> String {
        format!(
            "{}/{}",
            self.metadata.namespace.as_deref().unwrap_or_default(),
            self.metadata.name.as_deref().unwrap_or_default()
        )
    }

    /// The binding's `metadata.uid` (empty if unset), as in the `ckb-binding-uid` key tag.
    pub fn uid_str(&self) -> &str {
        self.metadata.uid.as_deref().unwrap_or_default()
    }

    /// The condition of the given type, if the status has one.
    pub fn condition(&self, type_: &str) -> Option<&Condition> {
        self.status
            .as_ref()?
            .conditions
            .iter()
            .find(|c| c.type_ == type_)
    }
}

impl KeySpec {
    /// The key size the operator uses: the declared one, or 3072 (RSA) / 256 (oct); none for EC.
    pub fn effective_size(&self) -> Option<u32> {
        match self.key_type {
            KeyType::RsaHsm => Some(self.size.unwrap_or(3072)),
            KeyType::OctHsm => Some(self.size.unwrap_or(256)),
            KeyType::EcHsm => None,
        }
    }

    /// The operations the key gets: the declared ones, or the type's defaults.
    pub fn effective_operations(&self) -> Vec<KeyOperation> {
        if let Some(ops) = &self.operations {
            let mut ops = ops.clone();
            ops.sort();
            ops.dedup();
            return ops;
        }
        match self.key_type {
            KeyType::EcHsm => vec![KeyOperation::Sign, KeyOperation::Verify],
            KeyType::RsaHsm | KeyType::OctHsm => vec![
                KeyOperation::Encrypt,
                KeyOperation::Decrypt,
                KeyOperation::WrapKey,
                KeyOperation::UnwrapKey,
            ],
        }
    }

    /// The vault URL without a trailing slash.
    pub fn vault_url(&self) -> &str {
        self.vault.trim_end_matches('/')
    }

    /// Whether the vault is a Managed HSM (`*.managedhsm.azure.net`).
    pub fn is_managed_hsm(&self) -> bool {
        self.vault_url().ends_with(".managedhsm.azure.net")
    }
}

impl AttestationSpec {
    /// The authority as the release policy carries it: with `https://`, without a trailing slash.
    pub fn authority_url(&self) -> &str {
        self.authority.trim_end_matches('/')
    }
}
