//! What `doctor` reads from the live cluster ([`gather`]); the decision is in [`super::checks`].

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use ckb_crds::ConfidentialKeyBinding;
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::{Namespace, Pod, PodSpec, ServiceAccount};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::node::v1::RuntimeClass;
use kube::api::ListParams;
use kube::{Api, Client};

use super::DoctorArgs;
use crate::cli::cluster;
use crate::webhook::mutate::selector_matches;

/// The webhook as the cluster shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WebhookState {
    /// No MutatingWebhookConfiguration of that name.
    Missing(String),
    /// It exists, but something is wrong (no CA bundle, no ready endpoint, URL not answering).
    Broken(String),
    /// It exists and can be reached, as far as can be seen from here.
    Reachable(String),
}

/// What `doctor` read from the cluster.
#[derive(Debug, Clone)]
pub struct Facts {
    /// `pod ns/name` or `deployment ns/name`, for messages.
    pub target: String,
    /// The target's namespace.
    pub namespace: String,
    /// The namespace's labels.
    pub namespace_labels: BTreeMap<String, String>,
    /// Labels of the pods the target makes (the Deployment's template, or the pod's own).
    pub template_labels: BTreeMap<String, String>,
    /// Their spec (the Deployment's template, or the pod's own).
    pub template_spec: PodSpec,
    /// The live pods: the pod itself, or the Deployment's.
    pub pods: Vec<Pod>,
    /// Every binding of the namespace.
    pub bindings: Vec<Arc<ConfidentialKeyBinding>>,
    /// The pods' ServiceAccount, if it exists.
    pub service_account: Option<ServiceAccount>,
    /// Whether the RuntimeClass the pods ask for exists (`None`: they ask for none).
    pub runtime_class_exists: Option<bool>,
    /// The webhook.
    pub webhook: WebhookState,
    /// Runtime classes of confidential pods.
    pub confidential_runtime_classes: Vec<String>,
    /// Why the Deployment's ReplicaSets cannot create pods (their `ReplicaFailure` messages).
    pub create_failures: Vec<String>,
}

/// The target's pods as a workload describes them.
struct Target {
    what: String,
    labels: BTreeMap<String, String>,
    spec: PodSpec,
    pods: Vec<Pod>,
    create_failures: Vec<String>,
}

/// Reads the facts about `args.target` from the cluster.
pub async fn gather(client: &Client, args: &DoctorArgs) -> anyhow::Result<Facts> {
    let ns = args.namespace.namespace.as_str();
    let (kind, name) = match args.target.split_once('/') {
        Some((k, n)) => (k.to_ascii_lowercase(), n.to_string()),
        None => ("pod".to_string(), args.target.clone()),
    };
    let target = match kind.as_str() {
        "pod" | "pods" | "po" => pod_target(client, ns, &name).await?,
        "deployment" | "deployments" | "deploy" => deployment_target(client, ns, &name).await?,
        other => bail!("cannot examine a {other:?}: give <pod>, pod/<name> or deployment/<name>"),
    };
    let namespace = Api::<Namespace>::all(client.clone())
        .get_opt(ns)
        .await?
        .with_context(|| format!("namespace {ns} not found"))?;
    let bindings = cluster::bindings(client, &[ns.to_string()]).await?;
    let sa_name = target
        .spec
        .service_account_name
        .clone()
        .unwrap_or_else(|| "default".into());
    let service_account = Api::<ServiceAccount>::namespaced(client.clone(), ns)
        .get_opt(&sa_name)
        .await?;
    let runtime_class_exists = match target.spec.runtime_class_name.as_deref() {
        Some(rc) => Some(
            Api::<RuntimeClass>::all(client.clone())
                .get_opt(rc)
                .await?
                .is_some(),
        ),
        None => None,
    };
    let webhook = webhook_state(client, &args.webhook_configuration).await?;
    Ok(Facts {
        target: target.what,
        namespace: ns.to_string(),
        namespace_labels: namespace.metadata.labels.unwrap_or_default(),
        template_labels: target.labels,
        template_spec: target.spec,
        pods: target.pods,
        bindings,
        service_account,
        runtime_class_exists,
        webhook,
        confidential_runtime_classes: args.runtime.confidential_runtime_classes.clone(),
        create_failures: target.create_failures,
    })
}

async fn pod_target(client: &Client, ns: &str, name: &str) -> anyhow::Result<Target> {
    let pod = Api::<Pod>::namespaced(client.clone(), ns)
        .get_opt(name)
        .await?
        .with_context(|| format!("pod {ns}/{name} not found"))?;
    Ok(Target {
        what: format!("pod {ns}/{name}"),
        labels: pod.metadata.labels.clone().unwrap_or_default(),
        spec: pod.spec.clone().unwrap_or_default(),
        pods: vec![pod],
        create_failures: vec![],
    })
}

async fn deployment_target(client: &Client, ns: &str, name: &str) -> anyhow::Result<Target> {
    let d = Api::<Deployment>::namespaced(client.clone(), ns)
        .get_opt(name)
        .await?
        .with_context(|| format!("deployment {ns}/{name} not found"))?;
    let spec = d.spec.clone().unwrap_or_default();
    let template = spec.template.clone();
    let pods = Api::<Pod>::namespaced(client.clone(), ns)
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .filter(|p| {
            selector_matches(
                &spec.selector,
                &p.metadata.labels.clone().unwrap_or_default(),
            )
        })
        .collect();
    let uid = d.metadata.uid.clone().unwrap_or_default();
    let create_failures = Api::<ReplicaSet>::namespaced(client.clone(), ns)
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .filter(|rs| {
            rs.metadata
                .owner_references
                .iter()
                .flatten()
                .any(|o| o.uid == uid)
        })
        .flat_map(|rs| rs.status.and_then(|s| s.conditions).unwrap_or_default())
        .filter(|c| c.type_ == "ReplicaFailure" && c.status == "True")
        .filter_map(|c| c.message)
        .collect();
    Ok(Target {
        what: format!("deployment {ns}/{name}"),
        labels: template
            .metadata
            .as_ref()
            .and_then(|m| m.labels.clone())
            .unwrap_or_default(),
        spec: template.spec.unwrap_or_default(),
        pods,
        create_failures,
    })
}

async fn webhook_state(client: &Client, name: &str) -> anyhow::Result<WebhookState> {
    let Some(cfg) = Api::<MutatingWebhookConfiguration>::all(client.clone())
        .get_opt(name)
        .await?
    else {
        return Ok(WebhookState::Missing(format!(
            "no MutatingWebhookConfiguration {name}: is ckb-operator installed (or is its name \
             another; see --webhook-configuration)?"
        )));
    };
    let Some(hook) = cfg.webhooks.iter().flatten().next() else {
        return Ok(WebhookState::Broken(format!(
            "MutatingWebhookConfiguration {name} has no webhook"
        )));
    };
    let cc = &hook.client_config;
    if cc.ca_bundle.as_ref().is_none_or(|b| b.0.is_empty()) {
        return Ok(WebhookState::Broken(format!(
            "MutatingWebhookConfiguration {name} has no caBundle yet: the API server cannot \
             trust the webhook (the operator, or cert-manager, writes it once running)"
        )));
    }
    if let Some(svc) = &cc.service {
        return service_state(client, &svc.namespace, &svc.name).await;
    }
    if let Some(url) = &cc.url {
        return Ok(url_state(url).await);
    }
    Ok(WebhookState::Broken(format!(
        "MutatingWebhookConfiguration {name} names neither a Service nor a URL"
    )))
}

/// Whether the webhook's Service has a ready endpoint.
async fn service_state(client: &Client, ns: &str, name: &str) -> anyhow::Result<WebhookState> {
    let slices = Api::<EndpointSlice>::namespaced(client.clone(), ns)
        .list(&ListParams::default().labels(&format!("kubernetes.io/service-name={name}")))
        .await?;
    let ready = slices
        .items
        .iter()
        .flat_map(|s| s.endpoints.iter())
        .filter(|e| e.conditions.as_ref().and_then(|c| c.ready) != Some(false))
        .count();
    Ok(if ready == 0 {
        WebhookState::Broken(format!(
            "the webhook's Service {ns}/{name} has no ready endpoint: no operator replica is \
             serving, so confidential pods are refused (failurePolicy Fail) or admitted without \
             the sidecar (Ignore)"
        ))
    } else {
        WebhookState::Reachable(format!(
            "the webhook's Service {ns}/{name} has {ready} ready endpoint(s)"
        ))
    })
}

/// Whether the webhook's URL accepts TCP connections within 3 s.
async fn url_state(url: &str) -> WebhookState {
    let addr = match url::Url::parse(url) {
        Ok(u) => match (u.host_str(), u.port_or_known_default()) {
            (Some(host), Some(port)) => format!("{host}:{port}"),
            _ => return WebhookState::Broken(format!("the webhook URL {url} names no host")),
        },
        Err(e) => return WebhookState::Broken(format!("the webhook URL {url} is invalid: {e}")),
    };
    let reached = tokio::time::timeout(
        Duration::from_secs(3),
        tokio::net::TcpStream::connect(addr.as_str()),
    )
    .await;
    match reached {
        Ok(Ok(_)) => WebhookState::Reachable(format!("the webhook at {url} accepts connections")),
        Ok(Err(e)) => WebhookState::Broken(format!("the webhook at {url} cannot be reached: {e}")),
        Err(_) => WebhookState::Broken(format!("the webhook at {url} does not answer within 3 s")),
    }
}
