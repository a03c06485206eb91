//! The cluster's bounds on what a binding may ask for, as a pure decision.
//!
//! A binding reaches a vault only when a cluster administrator allowed it, in one of two modes:
//!
//! - **Grant mode**: the binding names a cluster-scoped `ConfidentialKeyGrant` in
//!   `spec.grantRef`. The grant must exist, select the binding's namespace (by name or label),
//!   name the binding's vault, and allow its authority, compliance value, debuggable setting, key
//!   name (prefix), key type, `adopt` and `deletionPolicy: Delete`.
//! - **Simple mode** (no `grantRef`, unless `--require-grant`): the vault must be in
//!   `--allowed-vault`, the authority in `--allowed-authority` (default: Microsoft's shared MAA
//!   authorities of the regions with confidential containers on AKS), the compliance value in
//!   `--allowed-compliance-status` (default `azure-signed-katacc-uvm`), and `allowDebuggable:
//!   true` needs `--allow-debuggable` (off by default).
//!
//! [`admit`] answers [`Admitted`] (with the namespace's share of the vault's rate budget) or a
//! [`Refusal`] whose reason is a `KeyReady` condition reason; the controller then writes that
//! condition, publishes a Warning event with the same reason, and sends nothing to Key Vault.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use ckb_crds::conditions::reasons;
use ckb_crds::grant::ConfidentialKeyGrant;
use ckb_crds::{ConfidentialKeyBinding, DeletionPolicy};

use crate::keyvault::VaultUrl;
use crate::webhook::mutate::selector_matches;

/// Microsoft's shared attestation authorities of the regions where confidential containers on AKS
/// are available (East US, West US, North Europe, West Europe), and East US 2: the default of
/// `--allowed-authority`.
pub const PUBLIC_SHARED_AUTHORITIES: [&str; 5] = [
    "https://sharedeus.eus.attest.azure.net",
    "https://sharedwus.wus.attest.azure.net",
    "https://sharedneu.neu.attest.azure.net",
    "https://sharedweu.weu.attest.azure.net",
    "https://sharedeus2.eus2.attest.azure.net",
];

/// The default of `--allowed-compliance-status`: confidential containers on AKS.
pub const DEFAULT_COMPLIANCE_STATUS: &str = ckb_crds::grant::AKS_COMPLIANCE_STATUS;

/// The default of `--kv-namespace-share`: the percentage of the operator's per-vault rate budget
/// one namespace is sure of.
pub const DEFAULT_NAMESPACE_SHARE_PERCENT: u32 = 50;

/// The operator-wide bounds: simple mode's limits, and the defaults grant mode falls back on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterBounds {
    /// Authorities a binding without a grant may name (normalised by [`normalise_authority`]).
    pub authorities: BTreeSet<String>,
    /// Compliance values a binding without a grant may ask for.
    pub compliance_statuses: BTreeSet<String>,
    /// Whether a binding without a grant may set `allowDebuggable: true`.
    pub allow_debuggable: bool,
    /// Whether a binding without a grant may set `adopt: true`.
    pub allow_adopt: bool,
    /// Whether a binding without a grant may set `deletionPolicy: Delete`.
    pub allow_delete: bool,
    /// Refuse every binding that names no grant.
    pub require_grant: bool,
    /// Share (percent) of a vault's rate budget one namespace is sure of, unless its grant says.
    pub namespace_share_percent: u32,
}

impl Default for ClusterBounds {
    fn default() -> Self {
        Self {
            authorities: PUBLIC_SHARED_AUTHORITIES
                .iter()
                .map(|a| normalise_authority(a))
                .collect(),
            compliance_statuses: [DEFAULT_COMPLIANCE_STATUS.to_string()].into(),
            allow_debuggable: false,
            allow_adopt: true,
            allow_delete: true,
            require_grant: false,
            namespace_share_percent: DEFAULT_NAMESPACE_SHARE_PERCENT,
        }
    }
}

/// The flags of `ckb-operator run` that bound what bindings without a grant may ask for.
#[derive(Debug, Clone, clap::Args)]
pub struct BoundsArgs {
    /// Attestation authority a binding without a grant may name in `spec.attestation.authority`
    /// (`https://<host>`); repeat, or comma-separate in the variable. Default: Microsoft's shared
    /// authorities of the regions with confidential containers on AKS.
    #[arg(
        long = "allowed-authority",
        env = "CKB_ALLOWED_AUTHORITIES",
        value_delimiter = ',',
        default_values_t = PUBLIC_SHARED_AUTHORITIES.map(String::from)
    )]
    pub allowed_authorities: Vec<String>,

    /// Compliance value (`x-ms-compliance-status`) a binding without a grant may ask for; repeat,
    /// or comma-separate in the variable.
    #[arg(
        long = "allowed-compliance-status",
        env = "CKB_ALLOWED_COMPLIANCE_STATUSES",
        value_delimiter = ',',
        default_value = DEFAULT_COMPLIANCE_STATUS
    )]
    pub allowed_compliance_statuses: Vec<String>,

    /// Let bindings without a grant set `allowDebuggable: true` (release to debuggable VMs).
    #[arg(long = "allow-debuggable", env = "CKB_ALLOW_DEBUGGABLE", default_value_t = false, action = clap::ArgAction::Set)]
    pub allow_debuggable: bool,

    /// Let bindings without a grant set `adopt: true`.
    #[arg(long = "allow-adopt", env = "CKB_ALLOW_ADOPT", default_value_t = true, action = clap::ArgAction::Set)]
    pub allow_adopt: bool,

    /// Let bindings without a grant set `deletionPolicy: Delete`.
    #[arg(long = "allow-delete", env = "CKB_ALLOW_DELETE", default_value_t = true, action = clap::ArgAction::Set)]
    pub allow_delete: bool,

    /// Refuse every binding that names no ConfidentialKeyGrant (turns the simple mode off).
    #[arg(long = "require-grant", env = "CKB_REQUIRE_GRANT", default_value_t = false, action = clap::ArgAction::Set)]
    pub require_grant: bool,

    /// Percentage of the operator's per-vault rate limits that the bindings of one namespace are
    /// sure of; beyond it they yield to other namespaces that want the vault (a grant's
    /// `rateLimitPercent` overrides it for its namespaces).
    #[arg(
        long = "kv-namespace-share",
        env = "CKB_KV_NAMESPACE_SHARE",
        default_value_t = DEFAULT_NAMESPACE_SHARE_PERCENT,
        value_parser = clap::value_parser!(u32).range(1..=100)
    )]
    pub namespace_share_percent: u32,
}

impl BoundsArgs {
    /// The bounds, normalised; an authority that is not an https URL is an error.
    pub fn bounds(&self) -> Result<ClusterBounds, String> {
        let authorities = self
            .allowed_authorities
            .iter()
            .filter(|a| !a.trim().is_empty())
            .map(|a| {
                let n = normalise_authority(a);
                match n.strip_prefix("https://") {
                    Some(host) if !host.is_empty() && !host.contains('/') => Ok(n),
                    _ => Err(format!(
                        "--allowed-authority {a:?}: must be https://<host>[:port]"
                    )),
                }
            })
            .collect::<Result<_, _>>()?;
        Ok(ClusterBounds {
            authorities,
            compliance_statuses: self
                .allowed_compliance_statuses
                .iter()
                .map(|c| c.trim().to_string())
                .filter(|c| !c.is_empty())
                .collect(),
            allow_debuggable: self.allow_debuggable,
            allow_adopt: self.allow_adopt,
            allow_delete: self.allow_delete,
            require_grant: self.require_grant,
            namespace_share_percent: self.namespace_share_percent,
        })
    }
}

/// An authority as compared: lowercase, without a trailing slash.
pub fn normalise_authority(a: &str) -> String {
    a.trim().trim_end_matches('/').to_ascii_lowercase()
}

/// What the reconcile looked up for the binding's grant.
#[derive(Debug, Clone, Default)]
pub struct GrantLookup {
    /// The grant `spec.grantRef` names, if it exists.
    pub grant: Option<Arc<ConfidentialKeyGrant>>,
    /// Labels of the binding's namespace; `None` when the namespace is not known.
    pub namespace_labels: Option<BTreeMap<String, String>>,
}

/// The binding is within the cluster's bounds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Admitted {
    /// Share (percent, 1-100) of the vault's rate budget this binding's namespace is sure of.
    pub rate_share_percent: u32,
    /// The grant that allowed it (`None`: simple mode).
    pub grant: Option<String>,
}

/// The binding asks for something the cluster's bounds do not allow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// A `KeyReady` reason from the condition vocabulary.
    pub reason: &'static str,
    /// What was refused, what is allowed, and what to change.
    pub message: String,
}

fn refusal(reason: &'static str, message: String) -> Refusal {
    Refusal {
        reason,
        message: format!("{message}; the vault was not contacted"),
    }
}

fn refuse(reason: &'static str, message: String) -> Result<Admitted, Refusal> {
    Err(refusal(reason, message))
}

fn list(items: impl IntoIterator<Item = impl AsRef<str>>) -> String {
    let v: Vec<String> = items.into_iter().map(|s| s.as_ref().to_string()).collect();
    if v.is_empty() {
        "none".into()
    } else {
        v.join(", ")
    }
}

/// Whether the grant selects `namespace` (by name, or by its labels).
pub fn selects_namespace(
    grant: &ConfidentialKeyGrant,
    namespace: &str,
    labels: Option<&BTreeMap<String, String>>,
) -> bool {
    let ns = &grant.spec.namespaces;
    if ns.names.iter().any(|n| n == namespace) {
        return true;
    }
    match (&ns.selector, labels) {
        (Some(sel), Some(labels)) => selector_matches(sel, labels),
        _ => false,
    }
}

/// Decides whether the binding is within the cluster's bounds. Pure.
pub fn admit(
    binding: &ConfidentialKeyBinding,
    lookup: &GrantLookup,
    allowed_vaults: &BTreeSet<VaultUrl>,
    bounds: &ClusterBounds,
) -> Result<Admitted, Refusal> {
    match &binding.spec.grant_ref {
        Some(r) => admit_by_grant(binding, &r.name, lookup),
        None => admit_simple(binding, allowed_vaults, bounds),
    }
}

fn admit_simple(
    binding: &ConfidentialKeyBinding,
    allowed_vaults: &BTreeSet<VaultUrl>,
    bounds: &ClusterBounds,
) -> Result<Admitted, Refusal> {
    let spec = &binding.spec;
    if bounds.require_grant {
        return refuse(
            reasons::GRANT_REQUIRED,
            "the operator requires every binding to name a ConfidentialKeyGrant (--require-grant): \
             set spec.grantRef.name to a grant your cluster administrator made for this namespace"
                .into(),
        );
    }
    let vault_ok = VaultUrl::parse(&spec.key.vault).is_ok_and(|v| allowed_vaults.contains(&v));
    if !vault_ok {
        return refuse(
            reasons::VAULT_NOT_ALLOWED,
            format!(
                "vault {} is not in the operator's allow-list (--allowed-vault: {})",
                spec.key.vault_url(),
                list(allowed_vaults.iter().map(VaultUrl::as_str))
            ),
        );
    }
    let bounds_of = Bounds {
        source: "the operator's",
        authorities: &bounds.authorities,
        authorities_flag: " (--allowed-authority)",
        compliance: &bounds.compliance_statuses,
        compliance_flag: " (--allowed-compliance-status)",
        allow_debuggable: bounds.allow_debuggable,
        debuggable_flag: " (--allow-debuggable)",
        allow_adopt: bounds.allow_adopt,
        adopt_flag: " (--allow-adopt)",
        allow_delete: bounds.allow_delete,
        delete_flag: " (--allow-delete)",
        prefix: None,
        key_types: &[],
    };
    bounds_of.check(binding)?;
    Ok(Admitted {
        rate_share_percent: bounds.namespace_share_percent.clamp(1, 100),
        grant: None,
    })
}

fn admit_by_grant(
    binding: &ConfidentialKeyBinding,
    name: &str,
    lookup: &GrantLookup,
) -> Result<Admitted, Refusal> {
    let ns = binding.metadata.namespace.as_deref().unwrap_or_default();
    let Some(grant) = lookup
        .grant
        .as_ref()
        .filter(|g| g.metadata.name.as_deref() == Some(name))
    else {
        return refuse(
            reasons::GRANT_NOT_FOUND,
            format!("spec.grantRef names ConfidentialKeyGrant {name:?}, which does not exist"),
        );
    };
    grant_covers(binding, grant, lookup)?;
    let authorities: BTreeSet<String> = grant
        .spec
        .attestation
        .authorities
        .iter()
        .map(|a| normalise_authority(a))
        .collect();
    let compliance: BTreeSet<String> = grant
        .spec
        .attestation
        .compliance_statuses
        .iter()
        .cloned()
        .collect();
    let source = format!("ConfidentialKeyGrant {name}'s");
    let prefix = grant.spec.prefix_for(ns);
    let bounds_of = Bounds {
        source: &source,
        authorities: &authorities,
        authorities_flag: "",
        compliance: &compliance,
        compliance_flag: "",
        allow_debuggable: grant.spec.attestation.allow_debuggable,
        debuggable_flag: " (spec.attestation.allowDebuggable)",
        allow_adopt: grant.spec.allow_adopt,
        adopt_flag: " (spec.allowAdopt)",
        allow_delete: grant.spec.allow_delete,
        delete_flag: " (spec.allowDelete)",
        prefix: prefix.as_deref(),
        key_types: &grant.spec.key_types,
    };
    bounds_of.check(binding)?;
    Ok(Admitted {
        rate_share_percent: grant
            .spec
            .rate_limit_percent
            .unwrap_or(DEFAULT_NAMESPACE_SHARE_PERCENT)
            .clamp(1, 100),
        grant: Some(name.to_string()),
    })
}

/// Whether the grant selects the binding's namespace and names its vault.
fn grant_covers(
    binding: &ConfidentialKeyBinding,
    grant: &ConfidentialKeyGrant,
    lookup: &GrantLookup,
) -> Result<(), Refusal> {
    let ns = binding.metadata.namespace.as_deref().unwrap_or_default();
    let name = grant.metadata.name.as_deref().unwrap_or_default();
    if !selects_namespace(grant, ns, lookup.namespace_labels.as_ref()) {
        return Err(refusal(
            reasons::NAMESPACE_NOT_GRANTED,
            format!(
                "ConfidentialKeyGrant {name} does not grant namespace {ns} (by name: {}; by \
                 selector: {})",
                list(&grant.spec.namespaces.names),
                if grant.spec.namespaces.selector.is_some() {
                    "the namespace's labels do not match"
                } else {
                    "none"
                }
            ),
        ));
    }
    let spec = &binding.spec;
    let same_vault = match (
        VaultUrl::parse(&spec.key.vault),
        VaultUrl::parse(&grant.spec.vault),
    ) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    };
    if !same_vault {
        return Err(refusal(
            reasons::VAULT_NOT_ALLOWED,
            format!(
                "vault {} is not the vault of ConfidentialKeyGrant {name} ({})",
                spec.key.vault_url(),
                grant.spec.vault.trim_end_matches('/')
            ),
        ));
    }
    Ok(())
}

/// One set of bounds, with the words that say where it comes from.
struct Bounds<'a> {
    source: &'a str,
    authorities: &'a BTreeSet<String>,
    authorities_flag: &'a str,
    compliance: &'a BTreeSet<String>,
    compliance_flag: &'a str,
    allow_debuggable: bool,
    debuggable_flag: &'a str,
    allow_adopt: bool,
    adopt_flag: &'a str,
    allow_delete: bool,
    delete_flag: &'a str,
    prefix: Option<&'a str>,
    key_types: &'a [ckb_crds::KeyType],
}

impl Bounds<'_> {
    fn check(&self, binding: &ConfidentialKeyBinding) -> Result<(), Refusal> {
        let spec = &binding.spec;
        let src = self.source;
        let authority = normalise_authority(&spec.attestation.authority);
        if !self.authorities.contains(&authority) {
            refuse(
                reasons::AUTHORITY_NOT_ALLOWED,
                format!(
                    "attestation authority {} is not allowed by {src} bounds{}: allowed are {}",
                    spec.attestation.authority_url(),
                    self.authorities_flag,
                    list(self.authorities)
                ),
            )?;
        }
        if !self
            .compliance
            .contains(&spec.attestation.compliance_status)
        {
            refuse(
                reasons::COMPLIANCE_STATUS_NOT_ALLOWED,
                format!(
                    "complianceStatus {:?} is not allowed by {src} bounds{}: allowed are {}",
                    spec.attestation.compliance_status,
                    self.compliance_flag,
                    list(self.compliance)
                ),
            )?;
        }
        if spec.attestation.allow_debuggable && !self.allow_debuggable {
            refuse(
                reasons::DEBUGGABLE_NOT_ALLOWED,
                format!(
                    "allowDebuggable: true (release to a VM whose memory the host can read) is \
                     not allowed by {src} bounds{}",
                    self.debuggable_flag
                ),
            )?;
        }
        if let Some(prefix) = self.prefix
            && !spec.key.name.starts_with(prefix)
        {
            refuse(
                reasons::KEY_NAME_NOT_ALLOWED,
                format!(
                    "key name {} is outside {src} key-name scope: it must start with {prefix:?}",
                    spec.key.name
                ),
            )?;
        }
        if !self.key_types.is_empty() && !self.key_types.contains(&spec.key.key_type) {
            refuse(
                reasons::KEY_TYPE_NOT_ALLOWED,
                format!(
                    "key type {} is not allowed by {src} bounds: allowed are {}",
                    spec.key.key_type,
                    list(self.key_types.iter().map(|t| t.as_str()))
                ),
            )?;
        }
        if spec.key.adopt && !self.allow_adopt {
            refuse(
                reasons::ADOPT_NOT_ALLOWED,
                format!(
                    "adopt: true (taking over an existing key) is not allowed by {src} bounds{}",
                    self.adopt_flag
                ),
            )?;
        }
        if spec.key.deletion_policy == DeletionPolicy::Delete && !self.allow_delete {
            refuse(
                reasons::DELETION_NOT_ALLOWED,
                format!(
                    "deletionPolicy: Delete is not allowed by {src} bounds{}: use Retain",
                    self.delete_flag
                ),
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
#[path = "grant_tests.rs"]
mod tests;
