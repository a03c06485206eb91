//! The chart's RBAC, checked against what the operator really does: the API server records every
//! request of the chart's ServiceAccount in its audit log while the real operator runs a normal
//! scenario (a binding created, its key made, a pod injected, the policy changed, the binding
//! deleted through its finalizer, the operator stopped). Then:
//!
//! - every (verb, resource) the chart's ClusterRole and Role grant the operator, by resource name
//!   where the rule names some, was used at least once, or is in [`RARE`] with the reason it is
//!   needed only on a path this scenario does not take;
//! - no request of the operator was refused (the chart grants what the code uses here);
//! - every entry of [`RARE`] is still granted (the list does not outlive the grant).
//!
//! The evidence is the audit log, not the operator's source: a grant no code uses fails here.
//!
//! Run it alone (`cargo test -p ckb-e2e --test rbac_audit_e2e -- --test-threads=1`); it starts
//! a control plane. Needs the local control plane; fails, never skips, without it.

use std::collections::BTreeSet;
use std::fmt;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, ensure};
use ckb_e2e::suite_env::{
    BindingManifest, EnvOptions, Environment, NAMESPACE, RELEASE, SERVICE_ACCOUNT,
    policy_config_map_yaml, wait_for,
};
use ckb_operator::policy::release::ReleasePolicy;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::rbac::v1::{ClusterRole, PolicyRule, Role};
use kube::Api;
use kube::api::DeleteParams;
use serde::Deserialize;

const WAIT: Duration = Duration::from_secs(90);
const VAULT_HOST: &str = "demo.vault.azure.net";

/// Grants a normal scenario does not use, each with the path that needs it:
/// (API group, resource, verb, why).
const RARE: &[(&str, &str, &str, &str)] = &[
    (
        "events.k8s.io",
        "events",
        "patch",
        "the same Event again within minutes is patched into a series of the first (kube's \
         Recorder); this scenario publishes each Event once",
    ),
    (
        "",
        "secrets",
        "update",
        "the self-managed CA and serving certificate are renewed in their Secret near expiry; a \
         new install creates the Secret",
    ),
];

/// One permission: a verb on a resource (`resource/subresource`) of an API group, limited to
/// `names` when the rule lists resource names.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Grant {
    group: String,
    resource: String,
    verb: String,
    names: BTreeSet<String>,
}

impl fmt::Display for Grant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let group = if self.group.is_empty() {
            "core"
        } else {
            &self.group
        };
        write!(f, "{} {}.{}", self.verb, self.resource, group)?;
        if !self.names.is_empty() {
            write!(f, " {:?}", self.names)?;
        }
        Ok(())
    }
}

/// The grants of RBAC rules, one per (group, resource, verb).
fn grants(rules: &[PolicyRule]) -> Vec<Grant> {
    let mut out = Vec::new();
    for rule in rules {
        let names: BTreeSet<String> = rule.resource_names.iter().flatten().cloned().collect();
        for group in rule.api_groups.iter().flatten() {
            for resource in rule.resources.iter().flatten() {
                for verb in &rule.verbs {
                    out.push(Grant {
                        group: group.clone(),
                        resource: resource.clone(),
                        verb: verb.clone(),
                        names: names.clone(),
                    });
                }
            }
        }
    }
    out
}

/// What the audit log says of one request (the fields this test reads).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct AuditEvent {
    verb: String,
    user: AuditUser,
    #[serde(default)]
    object_ref: Option<ObjectRef>,
    #[serde(default)]
    annotations: std::collections::BTreeMap<String, String>,
    #[serde(default)]
    request_uri: String,
}

#[derive(Debug, Deserialize)]
struct AuditUser {
    username: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ObjectRef {
    #[serde(default)]
    resource: String,
    #[serde(default)]
    subresource: Option<String>,
    #[serde(default)]
    api_group: String,
    #[serde(default)]
    name: Option<String>,
}

impl AuditEvent {
    fn allowed(&self) -> bool {
        self.annotations
            .get("authorization.k8s.io/decision")
            .is_some_and(|d| d == "allow")
    }

    /// `resource` or `resource/subresource`, as RBAC rules name it.
    fn resource(&self) -> Option<String> {
        let o = self.object_ref.as_ref()?;
        Some(match &o.subresource {
            Some(sub) => format!("{}/{sub}", o.resource),
            None => o.resource.clone(),
        })
    }

    fn uses(&self, g: &Grant) -> bool {
        let Some(o) = self.object_ref.as_ref() else {
            return false;
        };
        self.allowed()
            && self.verb == g.verb
            && o.api_group == g.group
            && self.resource().as_deref() == Some(g.resource.as_str())
            && (g.names.is_empty() || o.name.as_ref().is_some_and(|n| g.names.contains(n)))
    }
}

fn read_audit_log(env: &Environment, user: &str) -> Result<Vec<AuditEvent>> {
    let path = env.cp.audit_log().context("the audit log is on")?;
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut events = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let e: AuditEvent =
            serde_json::from_str(line).with_context(|| format!("audit line {line}"))?;
        if e.user.username == user {
            events.push(e);
        }
    }
    Ok(events)
}

fn rego(variant: &str) -> String {
    format!(
        "package agent_policy\n\n# rbac audit {variant}\ndefault CreateContainerRequest := true\n"
    )
}

/// The normal life of a binding, as a user goes through it.
async fn normal_scenario(env: &mut Environment) -> Result<()> {
    let ns = "rbac-audit";
    env.create_namespace(ns, true)?;
    env.apply_yaml(&policy_config_map_yaml(ns, "orders-policy", &rego("v1")))?;
    env.apply_yaml(
        &BindingManifest::new(ns, "orders", "audit-key")
            .deletion("Delete")
            .yaml(),
    )?;
    env.wait_binding_ready(ns, "orders").await?;
    env.apply_yaml(&format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: orders-1\n  namespace: {ns}\n  labels:\n    \
         app: orders\nspec:\n  runtimeClassName: kata-cc-isolation\n  containers:\n    - name: app\n      \
         image: registry.example/app:1.0\n"
    ))?;
    env.wait_pods(ns, "app=orders", 1, WAIT, |p: &Pod| {
        p.spec
            .as_ref()
            .is_some_and(|s| s.containers.iter().any(|c| c.name == "skr"))
    })
    .await
    .context("the pod was injected")?;
    // A new policy: the key is re-bound to its hash.
    env.apply_yaml(&policy_config_map_yaml(ns, "orders-policy", &rego("v2")))?;
    let v2 = sha256_of(&rego("v2"));
    wait_for(WAIT, "the key to be bound to the new policy", || async {
        let Some(policy) = env
            .key(VAULT_HOST, "audit-key")
            .and_then(|k| k.get("release_policy_json").cloned())
        else {
            return Ok(None);
        };
        Ok(ReleasePolicy::from_value(&policy)?
            .hostdata_hashes()
            .contains(&v2)
            .then_some(()))
    })
    .await?;
    env.wait_binding_ready(ns, "orders").await?;
    // Deleted: the finalizer deletes the key (deletionPolicy Delete), then lets the binding go.
    let bindings: Api<ckb_crds::ConfidentialKeyBinding> = Api::namespaced(env.cp.client(), ns);
    bindings.delete("orders", &DeleteParams::default()).await?;
    wait_for(WAIT, "the binding to be gone", || {
        let bindings = bindings.clone();
        async move { Ok(bindings.get_opt("orders").await?.is_none().then_some(())) }
    })
    .await?;
    ensure!(
        env.key_soft_deleted(VAULT_HOST, "audit-key"),
        "the key was deleted through the finalizer"
    );
    // A graceful stop: the leader steps down (its Lease released).
    env.stop_operator();
    Ok(())
}

fn sha256_of(rego: &str) -> String {
    use sha2::Digest as _;
    hex::encode(sha2::Sha256::digest(rego.as_bytes()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_grant_of_the_chart_is_used_by_the_operator_or_has_a_reason() -> Result<()> {
    let t0 = Instant::now();
    let mut env = Environment::start(EnvOptions {
        audit_operator: true,
        ..EnvOptions::default()
    })
    .await?;
    normal_scenario(&mut env).await?;

    let client = env.cp.client();
    let cluster_role = Api::<ClusterRole>::all(client.clone()).get(RELEASE).await?;
    let role = Api::<Role>::namespaced(client, NAMESPACE)
        .get(RELEASE)
        .await?;
    let mut granted = grants(cluster_role.rules.as_deref().unwrap_or_default());
    granted.extend(grants(role.rules.as_deref().unwrap_or_default()));
    ensure!(!granted.is_empty(), "the chart grants the operator nothing");

    let user = format!("system:serviceaccount:{NAMESPACE}:{SERVICE_ACCOUNT}");
    let events = read_audit_log(&env, &user)?;
    ensure!(!events.is_empty(), "no request of {user} in the audit log");

    let refused: BTreeSet<String> = events
        .iter()
        .filter(|e| !e.allowed())
        .map(|e| format!("{} {}", e.verb, e.request_uri))
        .collect();
    assert!(
        refused.is_empty(),
        "the chart refused requests of the operator: {refused:#?}"
    );

    let rare = |g: &Grant| {
        RARE.iter().any(|(group, resource, verb, _)| {
            *group == g.group && *resource == g.resource && *verb == g.verb
        })
    };
    let unused: Vec<String> = granted
        .iter()
        .filter(|g| !rare(g) && !events.iter().any(|e| e.uses(g)))
        .map(Grant::to_string)
        .collect();
    let used: BTreeSet<String> = events
        .iter()
        .filter_map(|e| {
            let o = e.object_ref.as_ref()?;
            Some(format!("{} {} {}", e.verb, e.resource()?, o.api_group))
        })
        .collect();
    assert!(
        unused.is_empty(),
        "granted but not used in a normal scenario, and not listed with a reason: {unused:#?}\n\
         what the operator did use: {used:#?}"
    );
    for (group, resource, verb, why) in RARE {
        assert!(
            granted
                .iter()
                .any(|g| g.group == *group && g.resource == *resource && g.verb == *verb),
            "{verb} {resource}.{group} is listed as needed ({why}) but the chart no longer grants it"
        );
    }
    eprintln!(
        "{} grants checked against {} audited requests in {:?}",
        granted.len(),
        events.len(),
        t0.elapsed()
    );
    Ok(())
}
