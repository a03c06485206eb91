//! The `ConfidentialKeyGrant` API (`ckb.dev/v1alpha1`, cluster-scoped).
//!
//! A grant is how a cluster administrator bounds what bindings may ask for: it lets the namespaces
//! it selects bind keys in one vault, and only within the limits it sets (attestation authorities,
//! compliance values, debuggable VMs, key names and types, adopt, `deletionPolicy: Delete`, and a
//! share of the operator's rate budget on that vault). A binding uses a grant by naming it in
//! `spec.grantRef`. It is the shape of cert-manager's `ClusterIssuer` and External Secrets'
//! `ClusterSecretStore`: cluster-scoped, so only whoever may write cluster-scoped `ckb.dev`
//! objects (by default cluster admins) can widen what a namespace may do.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::KeyType;
use crate::schema;

/// The placeholder of [`ConfidentialKeyGrantSpec::key_name_prefix`] replaced by the binding's
/// namespace.
pub const NAMESPACE_PLACEHOLDER: &str = "{namespace}";

/// The compliance status of confidential containers on AKS, the default of
/// `spec.attestation.complianceStatuses`.
pub const AKS_COMPLIANCE_STATUS: &str = "azure-signed-katacc-uvm";

/// Lets the selected namespaces bind keys in one vault, within the bounds it sets. Written by
/// cluster administrators; bindings name it in `spec.grantRef`.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "ckb.dev",
    version = "v1alpha1",
    kind = "ConfidentialKeyGrant",
    plural = "confidentialkeygrants",
    singular = "confidentialkeygrant",
    shortname = "ckg",
    category = "confidential",
    doc = "Lets the namespaces it selects bind Azure Key Vault keys in one vault, within the bounds it sets (attestation authorities, compliance values, debuggable VMs, key names and types, adopt, deletion, rate share). Cluster-scoped: written by cluster administrators; a ConfidentialKeyBinding uses it by naming it in spec.grantRef.",
    printcolumn = r#"{"name":"Vault","type":"string","jsonPath":".spec.vault"}"#,
    printcolumn = r#"{"name":"Namespaces","type":"string","jsonPath":".spec.namespaces.names"}"#,
    printcolumn = r#"{"name":"Key prefix","type":"string","jsonPath":".spec.keyNamePrefix"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
#[schemars(transform = schema::no_null_members)]
pub struct ConfidentialKeyGrantSpec {
    /// The vault this grant lets bindings use: `https://<name>.vault.azure.net` (Premium vault) or
    /// `https://<name>.managedhsm.azure.net` (Managed HSM). A binding naming this grant must name
    /// this vault in `spec.key.vault`.
    #[schemars(
        regex(pattern = r"^https://[0-9a-zA-Z-]{3,24}\.(vault|managedhsm)\.azure\.net/?$"),
        length(max = schema::VAULT_MAX_LENGTH)
    )]
    pub vault: String,

    /// The namespaces whose bindings may use this grant: those listed by name, and those whose
    /// labels match the selector. At least one of the two must be set; an empty selector (`{}`)
    /// matches every namespace.
    pub namespaces: GrantNamespaces,

    /// Key names bindings may use must start with this prefix. `{namespace}` in it is replaced by
    /// the binding's namespace, so `{namespace}-` gives each namespace its own part of the vault.
    /// Unset allows any key name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        regex(pattern = r"^([0-9a-zA-Z-]|\{namespace\})+$"),
        length(min = 1, max = 127)
    )]
    pub key_name_prefix: Option<String>,

    /// Key types bindings may create or adopt (`RSA-HSM`, `EC-HSM`, `oct-HSM`). Unset or empty
    /// allows every type.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 3), extend("x-kubernetes-list-type" = "set"))]
    pub key_types: Vec<KeyType>,

    /// What a binding's `spec.attestation` may ask for.
    pub attestation: AttestationBounds,

    /// Allow bindings to set `spec.key.adopt: true` (take over an existing key of the vault that
    /// carries no ckb-operator tags). Off by default.
    #[serde(default)]
    pub allow_adopt: bool,

    /// Allow bindings to set `spec.key.deletionPolicy: Delete` (the operator soft-deletes the key
    /// when the binding goes). Off by default: keys are retained.
    #[serde(default)]
    pub allow_delete: bool,

    /// The share, in percent, of the operator's per-vault rate budget (`--kv-create-limit`,
    /// `--kv-other-limit`) that the bindings of any one namespace using this grant are sure of:
    /// beyond it, their calls wait while another namespace within its own share wants the vault,
    /// so that one namespace cannot starve the others on a shared vault (alone on a vault, a
    /// namespace may use the whole budget). Unset uses the operator's `--kv-namespace-share`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "schema::percent_schema")]
    pub rate_limit_percent: Option<u32>,
}

/// Which namespaces a grant applies to.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(
    extend("x-kubernetes-validations" = schema::namespaces_rules()),
    transform = schema::no_null_members
)]
pub struct GrantNamespaces {
    /// Namespaces by name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(
        length(max = 256),
        extend("items" = schema::namespace_name_schema(), "x-kubernetes-list-type" = "set")
    )]
    pub names: Vec<String>,

    /// Namespaces by label (`matchLabels`, `matchExpressions`). `{}` matches every namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<LabelSelector>,
}

/// The attestation settings bindings under a grant may use.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AttestationBounds {
    /// Attestation authorities (`https://<host>`) a binding's `spec.attestation.authority` may
    /// name, for example `https://sharedeus.eus.attest.azure.net`. Compared without a trailing
    /// slash and case-insensitively.
    #[schemars(
        length(min = 1, max = 32),
        extend("items" = schema::authority_item_schema(), "x-kubernetes-list-type" = "set")
    )]
    pub authorities: Vec<String>,

    /// Values a binding's `spec.attestation.complianceStatus` may take (default:
    /// `azure-signed-katacc-uvm`, the value of confidential containers on AKS).
    #[serde(default = "default_compliance_statuses")]
    #[schemars(
        length(min = 1, max = 16),
        extend("items" = schema::compliance_item_schema(), "x-kubernetes-list-type" = "set")
    )]
    pub compliance_statuses: Vec<String>,

    /// Allow bindings to set `spec.attestation.allowDebuggable: true` (release to a debuggable
    /// VM, whose memory the host can read). Off by default.
    #[serde(default)]
    pub allow_debuggable: bool,
}

fn default_compliance_statuses() -> Vec<String> {
    vec![AKS_COMPLIANCE_STATUS.to_string()]
}

/// The CustomResourceDefinition of [`ConfidentialKeyGrant`], as `ckb-operator crd --kind grant`
/// prints it and the chart installs it (see [`schema::crd_without_nullable`]).
pub fn crd() -> CustomResourceDefinition {
    schema::crd_without_nullable::<ConfidentialKeyGrant>()
}

impl ConfidentialKeyGrantSpec {
    /// The key-name prefix for bindings of `namespace` (`{namespace}` replaced), if one is set.
    pub fn prefix_for(&self, namespace: &str) -> Option<String> {
        self.key_name_prefix
            .as_ref()
            .map(|p| p.replace(NAMESPACE_PLACEHOLDER, namespace))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    #[test]
    fn the_crd_is_cluster_scoped_and_every_field_is_documented() {
        let crd = crd();
        assert_eq!(crd.spec.scope, "Cluster");
        assert_eq!(
            crd.metadata.name.as_deref(),
            Some("confidentialkeygrants.ckb.dev")
        );
        let schema = serde_json::to_value(&crd.spec.versions[0].schema).unwrap();
        fn walk(v: &Value, path: &str, missing: &mut Vec<String>) {
            if let Some(props) = v.get("properties").and_then(Value::as_object) {
                for (k, p) in props {
                    let here = format!("{path}.{k}");
                    if p.get("description").is_none() && !path.ends_with("selector") {
                        missing.push(here.clone());
                    }
                    walk(p, &here, missing);
                }
            }
        }
        let mut missing = Vec::new();
        walk(
            &schema["openAPIV3Schema"]["properties"]["spec"],
            "spec",
            &mut missing,
        );
        assert!(missing.is_empty(), "undocumented fields: {missing:?}");
        let text = schema.to_string();
        assert!(!text.contains("nullable"), "{text}");
    }

    #[test]
    fn the_prefix_template_names_the_namespace() {
        let spec: ConfidentialKeyGrantSpec = serde_json::from_value(serde_json::json!({
            "vault": "https://demo.vault.azure.net",
            "namespaces": {"names": ["payments"]},
            "keyNamePrefix": "{namespace}-",
            "attestation": {"authorities": ["https://sharedeus.eus.attest.azure.net"]}
        }))
        .unwrap();
        assert_eq!(spec.prefix_for("payments").as_deref(), Some("payments-"));
        assert_eq!(
            spec.attestation.compliance_statuses,
            vec![AKS_COMPLIANCE_STATUS]
        );
        assert!(!spec.allow_adopt && !spec.allow_delete && !spec.attestation.allow_debuggable);
    }
}
