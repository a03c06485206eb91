//! Manifests the tests apply.

use super::{DEMO_AUTHORITY, DEMO_VAULT};

/// A policy ConfigMap (labelled so the operator watches it) named `name` holding `rego`, as YAML.
pub fn policy_config_map_yaml(ns: &str, name: &str, rego: &str) -> String {
    let body: String = rego.lines().map(|l| format!("    {l}\n")).collect();
    format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {name}\n  namespace: {ns}\n  labels:\n    \
         ckb.dev/policy: \"true\"\ndata:\n  policy.rego: |\n{body}"
    )
}

/// A ConfidentialKeyBinding manifest. [`BindingManifest::new`] gives a binding `name` of an
/// RSA-HSM 2048 key in [`DEMO_VAULT`] to the pods `app=<name>`, attested by [`DEMO_AUTHORITY`],
/// following the policy in ConfigMap `<name>-policy` (key `policy.rego`, `source: ConfigMap`);
/// the other methods change one part each, and [`BindingManifest::yaml`] writes it.
#[derive(Debug, Clone)]
pub struct BindingManifest {
    ns: String,
    name: String,
    key: String,
    app: String,
    vault: String,
    key_shape: &'static str,
    adopt: Option<bool>,
    deletion: Option<String>,
    compliance_status: Option<String>,
    extra_claims: Vec<(String, String)>,
    config_map: String,
    pins: Option<Vec<String>>,
}

impl BindingManifest {
    /// The binding `ns/name` of key `key`, with the defaults above.
    pub fn new(ns: &str, name: &str, key: &str) -> Self {
        Self {
            ns: ns.to_string(),
            name: name.to_string(),
            key: key.to_string(),
            app: name.to_string(),
            vault: DEMO_VAULT.to_string(),
            key_shape: "type: RSA-HSM\n    size: 2048",
            adopt: None,
            deletion: None,
            compliance_status: None,
            extra_claims: Vec::new(),
            config_map: format!("{name}-policy"),
            pins: None,
        }
    }

    /// Selects the pods `app=<app>`.
    pub fn app(mut self, app: &str) -> Self {
        self.app = app.to_string();
        self
    }

    /// The key's vault URL.
    pub fn vault(mut self, vault: &str) -> Self {
        self.vault = vault.to_string();
        self
    }

    /// An EC-HSM P-256 key instead of RSA-HSM 2048.
    pub fn ec_p256(mut self) -> Self {
        self.key_shape = "type: EC-HSM\n    curve: P-256";
        self
    }

    /// `spec.key.adopt`.
    pub fn adopt(mut self, adopt: bool) -> Self {
        self.adopt = Some(adopt);
        self
    }

    /// `spec.key.deletionPolicy` (`Delete` or `Retain`).
    pub fn deletion(mut self, policy: &str) -> Self {
        self.deletion = Some(policy.to_string());
        self
    }

    /// `spec.attestation.complianceStatus`.
    pub fn compliance_status(mut self, status: &str) -> Self {
        self.compliance_status = Some(status.to_string());
        self
    }

    /// One more `spec.attestation.extraClaims` entry: `claim` must equal `equals`.
    pub fn extra_claim(mut self, claim: &str, equals: &str) -> Self {
        self.extra_claims
            .push((claim.to_string(), equals.to_string()));
        self
    }

    /// The policy ConfigMap's name.
    pub fn config_map(mut self, name: &str) -> Self {
        self.config_map = name.to_string();
        self
    }

    /// Pins the policy to `hashes` (`spec.policy.sha256`, the default source) instead of following
    /// the ConfigMap.
    pub fn pinned(mut self, hashes: &[String]) -> Self {
        self.pins = Some(hashes.to_vec());
        self
    }

    /// The manifest as YAML.
    pub fn yaml(&self) -> String {
        let Self {
            ns,
            name,
            app,
            vault,
            key,
            key_shape,
            config_map,
            ..
        } = self;
        let mut key_extra = String::new();
        if let Some(adopt) = self.adopt {
            key_extra.push_str(&format!("    adopt: {adopt}\n"));
        }
        if let Some(deletion) = &self.deletion {
            key_extra.push_str(&format!("    deletionPolicy: {deletion}\n"));
        }
        let mut attestation = String::new();
        if let Some(status) = &self.compliance_status {
            attestation.push_str(&format!("    complianceStatus: {status}\n"));
        }
        if !self.extra_claims.is_empty() {
            attestation.push_str("    extraClaims:\n");
            for (claim, equals) in &self.extra_claims {
                attestation.push_str(&format!(
                    "      - claim: {claim}\n        equals: {equals:?}\n"
                ));
            }
        }
        let source = match &self.pins {
            None => "    source: ConfigMap\n".to_string(),
            Some(pins) => {
                let pins: String = pins.iter().map(|p| format!("      - {p}\n")).collect();
                format!("    sha256:\n{pins}")
            }
        };
        format!(
            "apiVersion: ckb.dev/v1alpha1\nkind: ConfidentialKeyBinding\nmetadata:\n  name: {name}\n  \
             namespace: {ns}\nspec:\n  podSelector:\n    matchLabels:\n      app: {app}\n  key:\n    \
             vault: {vault}\n    name: {key}\n    {key_shape}\n{key_extra}  attestation:\n    \
             authority: {DEMO_AUTHORITY}\n{attestation}  policy:\n    configMapRef:\n      \
             name: {config_map}\n      key: policy.rego\n{source}"
        )
    }
}

#[cfg(test)]
mod tests {
    use ckb_crds::{ConfidentialKeyBinding, PolicySource};

    use super::*;

    fn parse(yaml: &str) -> ConfidentialKeyBinding {
        serde_saphyr::from_str(yaml).unwrap_or_else(|e| panic!("{e}\n{yaml}"))
    }

    #[test]
    fn a_default_binding_follows_its_config_map_for_the_pods_named_like_it() {
        let b = parse(&BindingManifest::new("payments", "orders", "orders-key").yaml());
        assert_eq!(b.metadata.name.as_deref(), Some("orders"));
        assert_eq!(b.metadata.namespace.as_deref(), Some("payments"));
        let labels = b.spec.pod_selector.match_labels.clone().unwrap_or_default();
        assert_eq!(labels.get("app").map(String::as_str), Some("orders"));
        assert_eq!(b.spec.key.vault, DEMO_VAULT);
        assert_eq!(b.spec.key.name, "orders-key");
        assert_eq!(b.spec.key.size, Some(2048));
        assert_eq!(b.spec.attestation.authority, DEMO_AUTHORITY);
        assert_eq!(b.spec.policy.config_map_ref.name, "orders-policy");
        assert_eq!(b.spec.policy.config_map_ref.key, "policy.rego");
        assert_eq!(b.spec.policy.source, Some(PolicySource::ConfigMap));
        assert!(b.spec.policy.sha256.is_empty());
    }

    #[test]
    fn every_option_reaches_the_manifest() {
        let pin = "a".repeat(64);
        let b = parse(
            &BindingManifest::new("payments", "orders", "k")
                .app("shop")
                .vault("https://other.vault.azure.net")
                .ec_p256()
                .adopt(true)
                .deletion("Delete")
                .compliance_status("azure-signed-katacc-uvm")
                .extra_claim("x-ms-sevsnpvm-vmpl", "0")
                .config_map("shared")
                .pinned(std::slice::from_ref(&pin))
                .yaml(),
        );
        let labels = b.spec.pod_selector.match_labels.clone().unwrap_or_default();
        assert_eq!(labels.get("app").map(String::as_str), Some("shop"));
        assert_eq!(b.spec.key.vault, "https://other.vault.azure.net");
        assert_eq!(b.spec.key.size, None);
        assert!(b.spec.key.curve.is_some());
        assert!(b.spec.key.adopt);
        assert_eq!(
            serde_json::to_value(b.spec.key.deletion_policy).unwrap(),
            "Delete"
        );
        assert_eq!(
            b.spec.attestation.compliance_status,
            "azure-signed-katacc-uvm"
        );
        assert_eq!(b.spec.attestation.extra_claims.len(), 1);
        assert_eq!(
            b.spec.attestation.extra_claims[0].claim,
            "x-ms-sevsnpvm-vmpl"
        );
        assert_eq!(b.spec.attestation.extra_claims[0].equals, "0");
        assert_eq!(b.spec.policy.config_map_ref.name, "shared");
        let pins: Vec<&str> = b.spec.policy.sha256.iter().map(|h| h.as_str()).collect();
        assert_eq!(pins, [pin.as_str()]);
        assert_eq!(b.spec.policy.source, None);
    }
}
