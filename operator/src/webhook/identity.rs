//! Workload identity for the injected SKR sidecar, whatever the order of the mutating webhooks.
//!
//! The sidecar releases the key *as the pod*: it needs the `AZURE_CLIENT_ID`, `AZURE_TENANT_ID`,
//! `AZURE_FEDERATED_TOKEN_FILE` (and `AZURE_AUTHORITY_HOST`) variables and the projected
//! ServiceAccount token mount that the Azure Workload Identity (AWI) webhook adds to every
//! container of a pod labelled `azure.workload.identity/use: "true"`. Without them it falls back
//! to the node's managed identity (IMDS), which has no right to release the key.
//!
//! The API server calls mutating webhook configurations in the order of their names, and calls one
//! again only when its `reinvocationPolicy` is `IfNeeded` and a later webhook changed the pod. So:
//! - **AWI after us** (its configuration's name sorts after ours): it mutates every container, the
//!   `skr` sidecar included; when we are re-invoked we find the sidecar already has the identity and
//!   change nothing.
//! - **AWI before us** (its shipped name, `azure-wi-webhook-mutating-webhook-configuration`, sorts
//!   before `ckb-operator`): the app containers already carry the identity when we add the sidecar.
//!   We copy the same variables and the same token mount from an app container to `skr`, so the
//!   sidecar has them even when AWI is not re-invoked. If it is re-invoked, it finds nothing to add
//!   (it adds only missing variables and replaces its mount by name with an identical one).
//!
//! Nothing is ever duplicated or overwritten: a variable or mount the sidecar already has is kept.
//! Containers named in AWI's `azure.workload.identity/skip-containers` annotation are respected:
//! if it lists `skr`, the sidecar gets nothing (with a warning).

use serde_json::{Map, Value};

use super::mutate::{SIDECAR_NAME, WORKLOAD_IDENTITY_LABEL};

/// AWI's pod annotation listing containers (separated by `;`) it must not mutate.
pub const SKIP_CONTAINERS_ANNOTATION: &str = "azure.workload.identity/skip-containers";
/// The variable naming the projected token file: its presence in an app container means AWI ran.
pub const FEDERATED_TOKEN_FILE_ENV: &str = "AZURE_FEDERATED_TOKEN_FILE";
/// Every variable AWI may add to a container (the last four only for its custom token endpoint).
pub const IDENTITY_ENV: [&str; 8] = [
    "AZURE_CLIENT_ID",
    "AZURE_TENANT_ID",
    FEDERATED_TOKEN_FILE_ENV,
    "AZURE_AUTHORITY_HOST",
    "AZURE_KUBERNETES_TOKEN_PROXY",
    "AZURE_KUBERNETES_SNI_NAME",
    "AZURE_KUBERNETES_CA_FILE",
    "AZURE_KUBERNETES_CA_DATA",
];

/// What [`share_with_sidecar`] found and did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The pod does not carry `azure.workload.identity/use: "true"`.
    NotOptedIn,
    /// No app container carries the identity yet: AWI has not run (it will, after us, and then
    /// mutates the sidecar itself), or it is not installed.
    NotInjectedYet,
    /// The sidecar already had every variable and the mount.
    AlreadyPresent,
    /// Variables and/or the mount were copied from this app container.
    Copied {
        /// The app container the identity was copied from.
        from: String,
    },
    /// The pod asks AWI to skip the sidecar; it gets no identity.
    SkippedByAnnotation,
}

impl Outcome {
    /// A warning for the user, when the outcome deserves one.
    pub fn warning(&self, who: &str) -> Option<String> {
        match self {
            Outcome::SkippedByAnnotation => Some(format!(
                "ckb-operator: {who} lists {SIDECAR_NAME:?} in {SKIP_CONTAINERS_ANNOTATION}, so the SKR sidecar \
                 gets no workload identity; it falls back to the node's managed identity (IMDS), \
                 which cannot release the key"
            )),
            _ => None,
        }
    }
}

/// Whether the pod opts in to workload identity (label value exactly `"true"`, as AWI's object
/// selector requires).
pub fn opted_in(pod: &Value) -> bool {
    pod.pointer("/metadata/labels")
        .and_then(|l| l.get(WORKLOAD_IDENTITY_LABEL))
        .and_then(Value::as_str)
        == Some("true")
}

fn name_of(v: &Value) -> Option<&str> {
    v.get("name").and_then(Value::as_str)
}

fn skipped(pod: &Value) -> bool {
    pod.pointer("/metadata/annotations")
        .and_then(|a| a.get(SKIP_CONTAINERS_ANNOTATION))
        .and_then(Value::as_str)
        .is_some_and(|list| list.split(';').any(|c| c.trim() == SIDECAR_NAME))
}

/// The mount of `container` that holds `file` (the longest mount path that is `file` or a
/// directory above it).
fn mount_holding<'a>(container: &'a Value, file: &str) -> Option<&'a Value> {
    container
        .get("volumeMounts")
        .and_then(Value::as_array)?
        .iter()
        .filter_map(|m| {
            let path = m.get("mountPath").and_then(Value::as_str)?;
            let dir = path.trim_end_matches('/');
            let holds = file == path || file.starts_with(&format!("{dir}/"));
            holds.then_some((dir.len(), m))
        })
        .max_by_key(|(len, _)| *len)
        .map(|(_, m)| m)
}

/// The identity of an app container: its AWI variables (as written, in order) and the mount of
/// its federated token file. `None` unless it has both.
fn identity_of(container: &Value) -> Option<(Vec<Value>, Value)> {
    let env = container.get("env").and_then(Value::as_array)?;
    let file = env
        .iter()
        .find(|e| name_of(e) == Some(FEDERATED_TOKEN_FILE_ENV))?
        .get("value")
        .and_then(Value::as_str)?;
    let mount = mount_holding(container, file)?.clone();
    let vars = env
        .iter()
        .filter(|e| name_of(e).is_some_and(|n| IDENTITY_ENV.contains(&n)))
        .cloned()
        .collect();
    Some((vars, mount))
}

/// Whether the `skr` container of `pod` carries a federated token file variable.
pub fn sidecar_has_identity(pod: &Value) -> bool {
    pod.pointer("/spec/containers")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|c| name_of(c) == Some(SIDECAR_NAME))
        .filter_map(|c| c.get("env").and_then(Value::as_array))
        .flatten()
        .any(|e| name_of(e) == Some(FEDERATED_TOKEN_FILE_ENV))
}

fn array_in<'a>(m: &'a mut Map<String, Value>, key: &str) -> &'a mut Vec<Value> {
    let slot = m
        .entry(key.to_string())
        .or_insert_with(|| Value::Array(Vec::new()));
    if !slot.is_array() {
        *slot = Value::Array(Vec::new());
    }
    slot.as_array_mut().expect("just made an array")
}

/// Gives the `skr` container of `pod` (a pod or pod template, already carrying the sidecar) the
/// workload identity AWI gave the app containers: the same variables and the same token mount,
/// each added only when the sidecar lacks it. See the module documentation.
pub fn share_with_sidecar(pod: &mut Value) -> Outcome {
    if !opted_in(pod) {
        return Outcome::NotOptedIn;
    }
    if skipped(pod) {
        return Outcome::SkippedByAnnotation;
    }
    let Some(containers) = pod
        .pointer_mut("/spec/containers")
        .and_then(Value::as_array_mut)
    else {
        return Outcome::NotInjectedYet;
    };
    let Some((from, (vars, mount))) = containers
        .iter()
        .filter(|c| name_of(c) != Some(SIDECAR_NAME))
        .find_map(|c| identity_of(c).map(|id| (name_of(c).unwrap_or("").to_string(), id)))
    else {
        return Outcome::NotInjectedYet;
    };
    let Some(sidecar) = containers
        .iter_mut()
        .find(|c| name_of(c) == Some(SIDECAR_NAME))
        .and_then(Value::as_object_mut)
    else {
        return Outcome::NotInjectedYet;
    };
    let mut changed = false;
    let env = array_in(sidecar, "env");
    for var in vars {
        let name = name_of(&var);
        if !env.iter().any(|e| name_of(e) == name) {
            env.push(var);
            changed = true;
        }
    }
    let mounts = array_in(sidecar, "volumeMounts");
    let same_mount =
        |m: &Value| name_of(m) == name_of(&mount) || m.get("mountPath") == mount.get("mountPath");
    if !mounts.iter().any(same_mount) {
        mounts.push(mount);
        changed = true;
    }
    if changed {
        Outcome::Copied { from }
    } else {
        Outcome::AlreadyPresent
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    /// A container as AWI v1.6.0 leaves it.
    fn awi_container(name: &str) -> Value {
        json!({
            "name": name,
            "image": "example.com/app:1",
            "env": [
                {"name": "MODE", "value": "prod"},
                {"name": "AZURE_CLIENT_ID", "value": "00000000-0000-4000-8000-000000000001"},
                {"name": "AZURE_TENANT_ID", "value": "00000000-0000-4000-8000-0000000000aa"},
                {"name": "AZURE_FEDERATED_TOKEN_FILE", "value": "/var/run/secrets/azure/wi/token/azure-identity-token"},
                {"name": "AZURE_AUTHORITY_HOST", "value": "https://login.microsoftonline.com/"},
            ],
            "volumeMounts": [
                {"name": "data", "mountPath": "/var/run"},
                {"name": "azure-workload-identity-reserved-abc", "mountPath": "/var/run/secrets/azure/wi", "readOnly": true},
            ],
        })
    }

    fn pod(containers: Vec<Value>) -> Value {
        json!({
            "metadata": {"labels": {"azure.workload.identity/use": "true"}},
            "spec": {"containers": containers},
        })
    }

    fn skr() -> Value {
        json!({"name": "skr", "image": "mcr.microsoft.com/aci/skr:2.12", "env": [{"name": "Port", "value": "8080"}]})
    }

    #[test]
    fn the_longest_mount_holding_the_token_file_is_copied() {
        let mut p = pod(vec![awi_container("app"), skr()]);
        assert_eq!(
            share_with_sidecar(&mut p),
            Outcome::Copied { from: "app".into() }
        );
        let sidecar = &p["spec"]["containers"][1];
        assert_eq!(
            sidecar["volumeMounts"],
            json!([{"name": "azure-workload-identity-reserved-abc", "mountPath": "/var/run/secrets/azure/wi", "readOnly": true}])
        );
        let names: Vec<&str> = sidecar["env"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["name"].as_str().unwrap())
            .collect();
        assert_eq!(
            names,
            [
                "Port",
                "AZURE_CLIENT_ID",
                "AZURE_TENANT_ID",
                "AZURE_FEDERATED_TOKEN_FILE",
                "AZURE_AUTHORITY_HOST"
            ]
        );
    }

    #[test]
    fn a_mount_path_that_is_only_a_name_prefix_does_not_hold_the_file() {
        let c = json!({"volumeMounts": [{"name": "x", "mountPath": "/var/run/secrets/azure/w"}]});
        assert!(mount_holding(&c, "/var/run/secrets/azure/wi/token/t").is_none());
        let root = json!({"volumeMounts": [{"name": "r", "mountPath": "/"}]});
        assert!(mount_holding(&root, "/a/b").is_some());
    }

    #[test]
    fn nothing_happens_without_the_label_or_before_awi() {
        let mut p = pod(vec![awi_container("app"), skr()]);
        p["metadata"]["labels"]["azure.workload.identity/use"] = json!("True");
        let before = p.clone();
        assert_eq!(share_with_sidecar(&mut p), Outcome::NotOptedIn);
        assert_eq!(p, before);

        let mut p = pod(vec![json!({"name": "app", "image": "x"}), skr()]);
        let before = p.clone();
        assert_eq!(share_with_sidecar(&mut p), Outcome::NotInjectedYet);
        assert_eq!(p, before);
    }

    #[test]
    fn the_skip_annotation_is_respected_and_warned_about() {
        let mut p = pod(vec![awi_container("app"), skr()]);
        p["metadata"]["annotations"] = json!({SKIP_CONTAINERS_ANNOTATION: "proxy; skr"});
        let before = p.clone();
        let outcome = share_with_sidecar(&mut p);
        assert_eq!(outcome, Outcome::SkippedByAnnotation);
        assert_eq!(p, before);
        assert!(outcome.warning("pod x").unwrap().contains("IMDS"));
    }
}
