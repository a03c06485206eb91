//! The status of a `ConfidentialKeyBinding`: what the operator last observed and did.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::PolicyHash;
use crate::schema;

/// What the operator last observed and did.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(transform = schema::no_null_members)]
pub struct ConfidentialKeyBindingStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// `Ready`, `Reconciling`, `Stalled`, `KeyReady`, `PolicyResolved`, `ReleasePolicySynced`
    /// (see the reasons in the docs). `Reconciling` (the operator is still working) and `Stalled`
    /// (it needs a human) follow the kstatus convention that Flux and Argo CD health checks read.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,

    /// The key as found or created in the vault.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<KeyStatus>,

    /// The policy hashes the key's release policy allows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<PolicyStatus>,

    /// Number of live pods the webhook injected for this binding.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub injected_pods: Option<i32>,

    /// Number of live confidential pods that match `podSelector` but run without the sidecar
    /// (admitted before the binding existed, or while the webhook was down). Restart their
    /// workload (`kubectl rollout restart`) to inject them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uninjected_pods: Option<i32>,
}

/// The key as the vault reports it.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(transform = schema::no_null_members)]
pub struct KeyStatus {
    /// Full key identifier, `https://<vault>/keys/<name>/<version>`.
    pub id: String,
    /// Current version of the key.
    pub version: String,
    /// Key type as the vault reports it.
    #[serde(rename = "type")]
    pub key_type: String,
    /// Whether the operator created the key (`Created`), adopted it (`Adopted`) or found its own
    /// key already there (`Existing`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<String>,
}

/// The hashes bound into the key's release policy.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(transform = schema::no_null_members)]
pub struct PolicyStatus {
    /// SHA-256 (lowercase hex) of the policy in the referenced ConfigMap.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_hash: Option<PolicyHash>,
    /// The first 12 hex digits of `currentHash`, for `kubectl get`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub short_hash: Option<String>,
    /// The attestation authority the release policy trusts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authority: Option<String>,
    /// Every hash the release policy allows, with why.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["hash"]))]
    pub bound_hashes: Vec<BoundHash>,
}

/// A hash the release policy allows.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BoundHash {
    /// SHA-256 (lowercase hex) of an agent policy.
    pub hash: PolicyHash,
    /// Why it is bound.
    pub reason: BoundHashReason,
    /// Since when the hash is bound for this reason (RFC 3339). For `Grace` and `InUse`, when it
    /// stopped being current or pinned: the grace period and the retention ceiling run from then.
    /// The operator reads it back only as a hint: a time in the future counts as now, and it can
    /// never make a hash stay longer than the operator itself saw it retired.
    pub since: String,
}

/// Why a hash is bound.
#[derive(
    Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, JsonSchema,
)]
pub enum BoundHashReason {
    /// The policy in the referenced ConfigMap now.
    Current,
    /// An earlier policy of this binding that live pods still run.
    InUse,
    /// An earlier policy of this binding, kept for the grace period after it stopped being current.
    Grace,
    /// Listed in `spec.policy.additionalHashes`.
    Additional,
    /// Listed in `spec.policy.sha256` (and not the ConfigMap's hash now).
    Pinned,
}
