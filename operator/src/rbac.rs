//! Every Kubernetes API call the operator makes, as a table: the source of the chart's RBAC.
//!
//! **Controller and webhook engineers: when you add a call to the Kubernetes API (a new resource,
//! a new verb, a subresource), add it to [`API_ACCESS`] in the same change.** The chart test
//! (`operator/tests/chart.rs`) renders `charts/ckb-operator/templates/rbac.yaml` with helm and
//! compares the granted rules with this table both ways: a call missing from the chart fails the
//! test, and so does a grant the table does not justify. The end-to-end suite then runs the
//! operator with exactly the chart's RBAC, so a call missing here fails there, and
//! `e2e/tests/rbac_audit_e2e.rs` reads the API server's audit log of a real run: a grant the
//! operator never uses fails there (unless that test names the rare path that needs it).
//!
//! Verbs are the authorizer's verbs, not HTTP methods: a watch is `list` + `watch`, server-side
//! apply is `patch`, a GET by name is `get`. `create` cannot be limited by `resourceNames` (the
//! authorizer sees no name before the object exists), so a by-name grant that also needs `create`
//! is two rows.

/// Where a grant applies, which decides between the chart's ClusterRole and its Role.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Namespaced objects in every namespace (bindings, pods, ...), or every object of a
    /// cluster-scoped kind (grants, namespaces): a ClusterRole rule.
    AllNamespaces,
    /// Cluster-scoped objects, only those named: a ClusterRole rule with `resourceNames`.
    ClusterNamed(&'static [ObjectName]),
    /// Objects of the operator's own namespace (`CKB_POD_NAMESPACE`), any name: a Role rule.
    OwnNamespace,
    /// Objects of the operator's own namespace, only those named: a Role rule with `resourceNames`.
    OwnNamespaceNamed(&'static [ObjectName]),
}

/// The name of an object a grant is limited to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ObjectName {
    /// A name fixed by Kubernetes (e.g. the `kube-system` namespace).
    Fixed(&'static str),
    /// A name the operator is given by configuration: the `CKB_*` environment variable (the flag's
    /// fallback) that carries it. The chart sets that variable and the rule from one template helper.
    FromEnv(&'static str),
}

/// When the operator makes a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Needed {
    /// In every configuration.
    Always,
    /// Only when the operator manages the webhook's CA and serving certificate itself (not when
    /// cert-manager issues them into a mounted directory, `--webhook-cert-dir`).
    SelfManagedTls,
}

/// One kind of API call the operator makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ApiAccess {
    /// API group; `""` is the core group.
    pub group: &'static str,
    /// Resource (plural, lowercase).
    pub resource: &'static str,
    /// Subresource (`status`, ...), if the call is on one.
    pub subresource: Option<&'static str>,
    /// Authorizer verbs.
    pub verbs: &'static [&'static str],
    /// Where it applies.
    pub scope: Scope,
    /// In which configurations.
    pub needed: Needed,
    /// Why the operator makes this call (shown when the chart test finds a difference).
    pub why: &'static str,
}

impl ApiAccess {
    /// The resource as RBAC rules spell it: `resource` or `resource/subresource`.
    pub fn rbac_resource(&self) -> String {
        match self.subresource {
            Some(sub) => format!("{}/{sub}", self.resource),
            None => self.resource.to_owned(),
        }
    }
}

/// The environment variable that names the MutatingWebhookConfiguration the operator patches.
pub const ENV_WEBHOOK_CONFIG_NAME: &str = "CKB_WEBHOOK_CONFIG_NAME";
/// The environment variable that names the Secret holding the operator's CA and certificate.
pub const ENV_WEBHOOK_SECRET_NAME: &str = "CKB_WEBHOOK_SECRET";
/// The environment variable that names the controller's leader-election Lease.
pub const ENV_LEASE_NAME: &str = "CKB_LEADER_ELECTION_LEASE";

/// Every Kubernetes API call the operator makes. Keep it exact: the chart grants this and nothing else.
pub const API_ACCESS: &[ApiAccess] = &[
    ApiAccess {
        group: "ckb.dev",
        resource: "confidentialkeybindings",
        subresource: None,
        verbs: &["list", "watch", "patch"],
        scope: Scope::AllNamespaces,
        needed: Needed::Always,
        why: "the controller and the webhook's cache watch bindings (never read by name); the \
              finalizer is added and removed by JSON patch",
    },
    ApiAccess {
        group: "ckb.dev",
        resource: "confidentialkeybindings",
        subresource: Some("status"),
        verbs: &["patch"],
        scope: Scope::AllNamespaces,
        needed: Needed::Always,
        why: "status is written by server-side apply with field manager ckb-operator",
    },
    ApiAccess {
        group: "ckb.dev",
        resource: "confidentialkeygrants",
        subresource: None,
        verbs: &["list", "watch"],
        scope: Scope::AllNamespaces,
        needed: Needed::Always,
        why: "cluster-scoped grants bound what bindings may ask for; read only (only cluster \
              admins write them)",
    },
    ApiAccess {
        group: "",
        resource: "namespaces",
        subresource: None,
        verbs: &["list", "watch"],
        scope: Scope::AllNamespaces,
        needed: Needed::Always,
        why: "namespace labels (metadata-only watch) decide which namespaces a grant's selector \
              matches",
    },
    ApiAccess {
        group: "",
        resource: "configmaps",
        subresource: None,
        verbs: &["get", "list", "watch"],
        scope: Scope::AllNamespaces,
        needed: Needed::Always,
        why: "policy ConfigMaps are watched by metadata only with the label selector \
              ckb.dev/policy=true (RBAC cannot restrict by label), and those bindings reference \
              are read by name",
    },
    ApiAccess {
        group: "",
        resource: "pods",
        subresource: None,
        verbs: &["list", "watch"],
        scope: Scope::AllNamespaces,
        needed: Needed::Always,
        why: "injected pods (label ckb.dev/injected) are watched to count them and to keep the \
              policy hashes they carry bound",
    },
    ApiAccess {
        group: "events.k8s.io",
        resource: "events",
        subresource: None,
        verbs: &["create", "patch"],
        scope: Scope::AllNamespaces,
        needed: Needed::Always,
        why: "events on bindings (Key Vault writes and failures); repeats are patched into a series",
    },
    ApiAccess {
        group: "",
        resource: "namespaces",
        subresource: None,
        verbs: &["get"],
        scope: Scope::ClusterNamed(&[ObjectName::Fixed("kube-system")]),
        needed: Needed::Always,
        why: "the kube-system namespace's UID identifies the cluster in the ckb-cluster key tag",
    },
    ApiAccess {
        group: "coordination.k8s.io",
        resource: "leases",
        subresource: None,
        verbs: &["get", "patch"],
        scope: Scope::OwnNamespaceNamed(&[ObjectName::FromEnv(ENV_LEASE_NAME)]),
        needed: Needed::Always,
        why: "leader election: only the Lease holder runs the controller (kube-lease-manager \
              reads the Lease and writes it by server-side apply and strategic merge patch)",
    },
    ApiAccess {
        group: "coordination.k8s.io",
        resource: "leases",
        subresource: None,
        verbs: &["create"],
        scope: Scope::OwnNamespace,
        needed: Needed::Always,
        why: "the first replica creates the Lease (create cannot be limited by name)",
    },
    ApiAccess {
        group: "",
        resource: "secrets",
        subresource: None,
        verbs: &["get", "update"],
        scope: Scope::OwnNamespaceNamed(&[ObjectName::FromEnv(ENV_WEBHOOK_SECRET_NAME)]),
        needed: Needed::SelfManagedTls,
        why: "the operator keeps its webhook CA and serving certificate in this Secret and rotates \
              them (read, then replace)",
    },
    ApiAccess {
        group: "",
        resource: "secrets",
        subresource: None,
        verbs: &["create"],
        scope: Scope::OwnNamespace,
        needed: Needed::SelfManagedTls,
        why: "the first replica creates the certificate Secret (create cannot be limited by name)",
    },
    ApiAccess {
        group: "admissionregistration.k8s.io",
        resource: "mutatingwebhookconfigurations",
        subresource: None,
        verbs: &["get", "patch"],
        scope: Scope::ClusterNamed(&[ObjectName::FromEnv(ENV_WEBHOOK_CONFIG_NAME)]),
        needed: Needed::SelfManagedTls,
        why: "the operator writes its CA into the caBundle of its own webhook configuration \
              (strategic merge patch)",
    },
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_row_is_empty_or_grants_a_wildcard() {
        for row in API_ACCESS {
            assert!(!row.verbs.is_empty(), "{row:?} grants no verb");
            assert!(!row.verbs.contains(&"*"), "{row:?} grants every verb");
            assert!(
                row.resource != "*" && row.group != "*",
                "{row:?} is a wildcard"
            );
            assert!(!row.why.is_empty(), "{row:?} does not say why");
        }
    }

    #[test]
    fn create_is_never_limited_by_name() {
        // The authorizer ignores resourceNames for create: such a row would grant nothing.
        for row in API_ACCESS {
            if matches!(
                row.scope,
                Scope::ClusterNamed(_) | Scope::OwnNamespaceNamed(_)
            ) {
                assert!(!row.verbs.contains(&"create"), "{row:?}");
            }
        }
    }

    #[test]
    fn secrets_only_in_the_operators_own_namespace() {
        for row in API_ACCESS
            .iter()
            .filter(|r| r.group.is_empty() && r.resource == "secrets")
        {
            assert!(
                matches!(row.scope, Scope::OwnNamespace | Scope::OwnNamespaceNamed(_)),
                "{row:?} reaches Secrets outside the operator's namespace"
            );
        }
    }
}
