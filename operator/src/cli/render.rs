//! `ckb-operator render`: workloads as the webhook will make their pods, for genpolicy.
//!
//! The Kata agent policy must be generated for the pod exactly as it will run, sidecar and env
//! included; anything added after generation is blocked by the agent ("CreateContainerRequest is
//! blocked by policy"). `render` runs the webhook's own mutation ([`mutate`] in
//! [`Mode::Render`]) on every pod template, without the policy annotation (genpolicy writes it),
//! so the usual flow is:
//!
//! ```text
//! ckb-operator render -f app.yaml --bindings bindings.yaml > app.rendered.yaml
//! az confcom katapolicygen -y app.rendered.yaml     # or genpolicy -y app.rendered.yaml
//! ```
//!
//! Workload identity: a pod template that already carries the Azure Workload Identity webhook's
//! variables and token mount (a rendered copy of an admitted pod, for example) shows them on the
//! `skr` sidecar too, as the webhook will make it; one that does not yet gets a note saying what
//! admission will add to every container, the sidecar included.
//!
//! Reads Pod, Deployment, StatefulSet, DaemonSet, ReplicaSet, ReplicationController, Job, CronJob
//! and List documents; other documents (ConfigMaps, Services, ...) pass through unchanged.

use std::io::{Read as _, Write as _};
use std::sync::Arc;

use serde_json::Value;

use super::NamespaceArg;
use crate::crds::ConfidentialKeyBinding;
use crate::webhook::MutationArgs;
use crate::webhook::identity;
use crate::webhook::mutate::{self, MatchedBinding, Mode, SidecarDefaults};

/// Arguments of `ckb-operator render`.
#[derive(Debug, clap::Args)]
#[command(mut_arg("namespace", |a| a
    .env("CKB_RENDER_NAMESPACE")
    .help("Namespace of workloads (and file bindings) that do not name one")))]
pub struct RenderArgs {
    /// Workload manifests (YAML, one or many documents), or `-` for standard input.
    #[arg(
        short = 'f',
        long = "file",
        default_value = "-",
        env = "CKB_RENDER_FILE"
    )]
    pub file: String,
    /// ConfidentialKeyBinding manifests (YAML) to match the workloads against.
    #[arg(
        long = "bindings",
        env = "CKB_RENDER_BINDINGS",
        conflicts_with = "from_cluster"
    )]
    pub bindings: Option<String>,
    /// Read the bindings from the cluster (current kubeconfig context) instead of a file.
    #[arg(long = "from-cluster", env = "CKB_RENDER_FROM_CLUSTER")]
    pub from_cluster: bool,
    /// Namespace of workloads (and file bindings) that do not name one.
    #[command(flatten)]
    pub namespace: NamespaceArg,
    /// What the mutation injects (must match the operator's settings).
    #[command(flatten)]
    pub mutation: MutationArgs,
}

/// Why rendering failed.
#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    /// A document could not be parsed.
    #[error("cannot parse {what}: {detail}")]
    Parse {
        /// Which input.
        what: String,
        /// Why.
        detail: String,
    },
    /// The webhook would refuse a workload's pods.
    #[error("{workload}: the webhook would refuse its pods: {message}")]
    Refused {
        /// `Kind namespace/name`.
        workload: String,
        /// The denial.
        message: String,
    },
}

/// The result of rendering: documents to print and notes for standard error.
#[derive(Debug, Clone, PartialEq)]
pub struct Rendered {
    /// The documents, in input order.
    pub documents: Vec<Value>,
    /// Warnings and notes, one line each.
    pub notes: Vec<String>,
}

fn str_at<'a>(v: &'a Value, pointer: &str) -> Option<&'a str> {
    v.pointer(pointer).and_then(Value::as_str)
}

/// Where the pod template of a kind lives.
fn template_pointer(kind: &str) -> Option<&'static str> {
    match kind {
        "Pod" => Some(""),
        "Deployment"
        | "StatefulSet"
        | "DaemonSet"
        | "ReplicaSet"
        | "ReplicationController"
        | "Job" => Some("/spec/template"),
        "CronJob" => Some("/spec/jobTemplate/spec/template"),
        _ => None,
    }
}

/// Renders documents against bindings (pure). `default_namespace` applies to documents without
/// `metadata.namespace`.
pub fn render_documents(
    documents: Vec<Value>,
    bindings: &[Arc<ConfidentialKeyBinding>],
    default_namespace: &str,
    defaults: &SidecarDefaults,
    confidential_runtime_classes: &[String],
) -> Result<Rendered, RenderError> {
    let mut notes = Vec::new();
    let mut out = Vec::with_capacity(documents.len());
    for doc in documents {
        out.push(render_one(
            doc,
            bindings,
            default_namespace,
            defaults,
            confidential_runtime_classes,
            &mut notes,
        )?);
    }
    Ok(Rendered {
        documents: out,
        notes,
    })
}

/// The namespace of a workload document (or `default_namespace`) and `Kind namespace/name`, for
/// notes and errors.
fn workload_of(doc: &Value, kind: &str, default_namespace: &str) -> (String, String) {
    let namespace = str_at(doc, "/metadata/namespace")
        .filter(|s| !s.is_empty())
        .unwrap_or(default_namespace)
        .to_string();
    let name = str_at(doc, "/metadata/name")
        .or_else(|| str_at(doc, "/metadata/generateName"))
        .unwrap_or("?");
    let workload = format!("{kind} {namespace}/{name}");
    (namespace, workload)
}

fn render_one(
    mut doc: Value,
    bindings: &[Arc<ConfidentialKeyBinding>],
    default_namespace: &str,
    defaults: &SidecarDefaults,
    classes: &[String],
    notes: &mut Vec<String>,
) -> Result<Value, RenderError> {
    let kind = str_at(&doc, "/kind").unwrap_or("").to_string();
    if kind == "List" || kind.ends_with("List") && doc.get("items").is_some_and(Value::is_array) {
        if let Some(items) = doc.get_mut("items").and_then(Value::as_array_mut) {
            for item in items.iter_mut() {
                *item = render_one(
                    item.take(),
                    bindings,
                    default_namespace,
                    defaults,
                    classes,
                    notes,
                )?;
            }
        }
        return Ok(doc);
    }
    let Some(pointer) = template_pointer(&kind) else {
        return Ok(doc);
    };
    let (namespace, workload) = workload_of(&doc, &kind, default_namespace);
    let Some(template) = doc.pointer(pointer) else {
        notes.push(format!("{workload}: no pod template; left unchanged"));
        return Ok(doc);
    };
    let labels = mutate::pod_labels(template);
    let selected = mutate::select_bindings(&namespace, &labels, bindings);
    let matched: Vec<MatchedBinding> = selected
        .iter()
        .map(|b| MatchedBinding::from_binding(b, None))
        .collect();
    let confidential = mutate::is_confidential(template, classes);
    if !matched.is_empty() && !confidential {
        notes.push(format!(
            "{workload}: selected by {} but its runtimeClassName is not one of {classes:?}; left unchanged",
            matched
                .iter()
                .map(|m| m.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    let m = mutate::mutate(template, &matched, defaults, classes, Mode::Render).map_err(|d| {
        RenderError::Refused {
            workload: workload.clone(),
            message: d.message,
        }
    })?;
    notes.extend(m.warnings.iter().map(|w| format!("{workload}: {w}")));
    if m.changed && identity::opted_in(&m.pod) && !identity::sidecar_has_identity(&m.pod) {
        notes.push(format!(
            "{workload}: opts in to workload identity: at admission the Azure Workload Identity \
             webhook adds {} and its token mount to every container, the skr sidecar included \
             (ckb-operator copies them to skr when that webhook runs first); the generated policy \
             must allow them on skr as on the app containers",
            identity::IDENTITY_ENV[..4].join(", ")
        ));
    }
    if m.changed {
        if let Some(slot) = doc.pointer_mut(pointer) {
            *slot = m.pod;
        }
    } else if confidential && matched.is_empty() {
        notes.push(format!(
            "{workload}: confidential, but no binding of namespace {namespace} selects it; left unchanged"
        ));
    }
    Ok(doc)
}

/// Parses multi-document YAML into JSON values (empty documents dropped).
pub fn parse_yaml_documents(text: &str, what: &str) -> Result<Vec<Value>, RenderError> {
    let docs: Vec<Value> = serde_saphyr::from_multiple(text).map_err(|e| RenderError::Parse {
        what: what.to_string(),
        detail: e.to_string(),
    })?;
    Ok(docs.into_iter().filter(|d| !d.is_null()).collect())
}

/// Parses bindings from YAML documents (`ConfidentialKeyBinding` or `List` of them); bindings
/// without a namespace get `default_namespace`.
pub fn parse_bindings(
    text: &str,
    what: &str,
    default_namespace: &str,
) -> Result<Vec<Arc<ConfidentialKeyBinding>>, RenderError> {
    let mut out = Vec::new();
    let mut docs = parse_yaml_documents(text, what)?;
    while let Some(doc) = docs.pop() {
        match str_at(&doc, "/kind") {
            Some("ConfidentialKeyBinding") => {
                let mut b: ConfidentialKeyBinding =
                    serde_json::from_value(doc).map_err(|e| RenderError::Parse {
                        what: what.to_string(),
                        detail: e.to_string(),
                    })?;
                if b.metadata.namespace.as_deref().unwrap_or("").is_empty() {
                    b.metadata.namespace = Some(default_namespace.to_string());
                }
                out.push(Arc::new(b));
            }
            Some(k) if k.ends_with("List") => {
                if let Some(items) = doc.get("items").and_then(Value::as_array) {
                    docs.extend(items.iter().cloned());
                }
            }
            _ => {}
        }
    }
    Ok(out)
}

/// Prints documents as multi-document YAML.
pub fn to_yaml(documents: &[Value]) -> anyhow::Result<String> {
    let mut out = String::new();
    for (i, d) in documents.iter().enumerate() {
        if i > 0 {
            out.push_str("---\n");
        }
        out.push_str(&serde_saphyr::to_string(d)?);
        if !out.ends_with('\n') {
            out.push('\n');
        }
    }
    Ok(out)
}

fn read_input(path: &str) -> anyhow::Result<String> {
    if path == "-" {
        let mut s = String::new();
        std::io::stdin().read_to_string(&mut s)?;
        Ok(s)
    } else {
        Ok(
            std::fs::read_to_string(path)
                .map_err(|e| anyhow::anyhow!("cannot read {path}: {e}"))?,
        )
    }
}

fn namespaces_of(docs: &[Value], default_namespace: &str, out: &mut Vec<String>) {
    for d in docs {
        if let Some(items) = d.get("items").and_then(Value::as_array) {
            namespaces_of(items, default_namespace, out);
        }
        let ns = str_at(d, "/metadata/namespace")
            .filter(|s| !s.is_empty())
            .unwrap_or(default_namespace)
            .to_string();
        if !out.contains(&ns) {
            out.push(ns);
        }
    }
}

/// Runs the subcommand.
pub async fn run(args: RenderArgs) -> anyhow::Result<()> {
    let input = read_input(&args.file)?;
    let what = if args.file == "-" {
        "standard input".to_string()
    } else {
        args.file.clone()
    };
    let documents = parse_yaml_documents(&input, &what)?;
    let bindings = match (&args.bindings, args.from_cluster) {
        (Some(path), _) => parse_bindings(&read_input(path)?, path, &args.namespace.namespace)?,
        (None, true) => {
            let mut namespaces = Vec::new();
            namespaces_of(&documents, &args.namespace.namespace, &mut namespaces);
            let client = crate::cli::cluster::client().await?;
            crate::cli::cluster::bindings(&client, &namespaces).await?
        }
        (None, false) => {
            anyhow::bail!("say where the bindings come from: --bindings FILE or --from-cluster")
        }
    };
    let rendered = render_documents(
        documents,
        &bindings,
        &args.namespace.namespace,
        &args.mutation.defaults(),
        &args.mutation.runtime.confidential_runtime_classes,
    )?;
    for note in &rendered.notes {
        eprintln!("ckb-operator render: {note}");
    }
    std::io::stdout()
        .lock()
        .write_all(to_yaml(&rendered.documents)?.as_bytes())?;
    Ok(())
}
