//! `ckb-operator render` agrees with the webhook: the policy generated for the rendered template is
//! the policy of the pod the webhook admits.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::Request;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use ckb_operator::cli::render::{parse_bindings, parse_yaml_documents, render_documents, to_yaml};
use ckb_operator::webhook::mutate::SidecarDefaults;
use ckb_operator::webhook::server::{self, Admission};
use ckb_operator::webhook::{MapSources, WebhookMetrics, WebhookState};
use http_body_util::BodyExt as _;
use pretty_assertions::assert_eq;
use serde_json::{Value, json};
use tower::ServiceExt as _;

fn read(name: &str) -> String {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/admission")
        .join(name);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn classes() -> Vec<String> {
    vec!["kata-cc-isolation".to_string()]
}

fn rendered() -> (Vec<Value>, Vec<String>) {
    let docs = parse_yaml_documents(&read("workloads.yaml"), "workloads.yaml").unwrap();
    let bindings = parse_bindings(&read("bindings.yaml"), "bindings.yaml", "default").unwrap();
    let r = render_documents(
        docs,
        &bindings,
        "default",
        &SidecarDefaults::default(),
        &classes(),
    )
    .unwrap();
    (r.documents, r.notes)
}

fn sources() -> MapSources {
    let bindings = parse_bindings(&read("bindings.yaml"), "bindings.yaml", "default").unwrap();
    let mut s = MapSources::default().with_policy(
        "payments",
        "orders-policy",
        "policy.rego",
        &read("orders-policy.rego"),
    );
    for b in bindings {
        s.bindings.push(b);
    }
    s
}

/// The webhook's answer for `pod`, applied.
async fn admit(pod: &Value) -> (Value, Value) {
    let router = server::router(Arc::new(Admission {
        sources: Arc::new(sources()),
        defaults: SidecarDefaults::default(),
        confidential_runtime_classes: classes(),
        metrics: WebhookMetrics::default(),
        state: WebhookState::new(),
        max_body_bytes: 4 << 20,
        body_timeout: Duration::from_secs(5),
    }));
    let review = json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "11111111-2222-4333-8444-555555555555",
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": "payments",
            "operation": "CREATE",
            "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller"},
            "object": pod,
        }
    });
    let resp = router
        .oneshot(
            Request::post("/mutate")
                .body(Body::from(serde_json::to_vec(&review).unwrap()))
                .unwrap(),
        )
        .await
        .unwrap();
    let answer: Value =
        serde_json::from_slice(&resp.into_body().collect().await.unwrap().to_bytes()).unwrap();
    assert_eq!(answer["response"]["allowed"], true, "{answer}");
    let mut out = pod.clone();
    if let Some(p) = answer["response"]["patch"].as_str() {
        let patch: json_patch::Patch =
            serde_json::from_slice(&STANDARD.decode(p).unwrap()).unwrap();
        json_patch::patch(&mut out, &patch.0).unwrap();
    }
    (out, answer)
}

/// A pod as the ReplicaSet controller and the API server's defaulting make it from a template.
fn pod_from_template(template: &Value) -> Value {
    let mut meta = template["metadata"].clone();
    meta["generateName"] = json!("orders-6d8f7c9b5-");
    meta["namespace"] = json!("payments");
    meta["labels"]["pod-template-hash"] = json!("6d8f7c9b5");
    meta["ownerReferences"] = json!([{"apiVersion": "apps/v1", "kind": "ReplicaSet",
        "name": "orders-6d8f7c9b5", "uid": "9f8e7d6c-5b4a-4392-8170-6f5e4d3c2b1a", "controller": true}]);
    let mut spec = template["spec"].clone();
    for c in spec["containers"].as_array_mut().unwrap() {
        c["terminationMessagePath"] = json!("/dev/termination-log");
        c["terminationMessagePolicy"] = json!("File");
        c["imagePullPolicy"] = json!("IfNotPresent");
        if c.get("resources").is_none() {
            c["resources"] = json!({});
        }
    }
    if let Some(vols) = spec["volumes"].as_array_mut() {
        for v in vols {
            if let Some(hp) = v.get_mut("hostPath") {
                hp["type"] = json!("");
            }
        }
    }
    spec["restartPolicy"] = json!("Always");
    spec["dnsPolicy"] = json!("ClusterFirst");
    spec["schedulerName"] = json!("default-scheduler");
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": spec})
}

fn by_name(list: &Value) -> Vec<(String, Value)> {
    let mut v: Vec<(String, Value)> = list
        .as_array()
        .into_iter()
        .flatten()
        .map(|x| (x["name"].as_str().unwrap_or("").to_string(), x.clone()))
        .collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

/// The parts of a container genpolicy puts in the policy and we inject.
fn container_core(c: &Value) -> Value {
    json!({"image": c["image"], "command": c["command"], "env": c["env"], "volumeMounts": c["volumeMounts"], "ports": c["ports"]})
}

fn annotations_without_policy(pod: &Value) -> Value {
    let mut a = pod["metadata"]["annotations"].clone();
    if let Some(m) = a.as_object_mut() {
        m.remove("io.katacontainers.config.agent.policy");
        m.remove("ckb.dev/policy-sha256");
    }
    a
}

#[test]
fn render_changes_pod_templates_only_and_leaves_the_policy_to_genpolicy() {
    let (docs, notes) = rendered();
    assert_eq!(docs.len(), 4);
    let original = parse_yaml_documents(&read("workloads.yaml"), "w").unwrap();
    assert_eq!(docs[0], original[0], "the ConfigMap passes through");
    let deploy = &docs[1]["spec"]["template"];
    assert!(
        by_name(&deploy["spec"]["containers"])
            .iter()
            .any(|(n, _)| n == "skr")
    );
    assert_eq!(
        deploy["metadata"]["annotations"]["ckb.dev/bindings"],
        "orders-key"
    );
    assert!(
        deploy["metadata"]["annotations"]
            .get("io.katacontainers.config.agent.policy")
            .is_none()
    );
    assert!(
        deploy["metadata"]["annotations"]
            .get("ckb.dev/policy-sha256")
            .is_none()
    );
    // The CronJob's template is selected too, and lacks the workload identity label: a note.
    let cron = &docs[2]["spec"]["jobTemplate"]["spec"]["template"];
    assert!(
        by_name(&cron["spec"]["containers"])
            .iter()
            .any(|(n, _)| n == "skr")
    );
    assert!(
        notes
            .iter()
            .any(|n| n.contains("CronJob payments/orders-report")
                && n.contains("azure.workload.identity/use")),
        "{notes:?}"
    );
    // The runc pod in the List is selected by web-key but not confidential: unchanged, noted.
    assert_eq!(docs[3], original[3]);
    assert!(
        notes
            .iter()
            .any(|n| n.contains("Pod payments/web-0") && n.contains("web-key")),
        "{notes:?}"
    );
    // The YAML printed parses back to the same documents.
    let text = to_yaml(&docs).unwrap();
    assert_eq!(parse_yaml_documents(&text, "out").unwrap(), docs);
}

#[tokio::test]
async fn render_and_webhook_agree_on_containers_env_volumes_and_annotations() {
    let original = parse_yaml_documents(&read("workloads.yaml"), "w").unwrap();
    let (docs, _) = rendered();
    let template = &docs[1]["spec"]["template"];
    // The webhook, on a pod made from the ORIGINAL template (the user applied the workload
    // without rendering) ...
    let (admitted, _) = admit(&pod_from_template(&original[1]["spec"]["template"])).await;
    let (want, got) = (&template["spec"], &admitted["spec"]);
    let rc = by_name(&want["containers"]);
    let ac = by_name(&got["containers"]);
    assert_eq!(
        rc.iter()
            .map(|(n, c)| (n.clone(), container_core(c)))
            .collect::<Vec<_>>(),
        ac.iter()
            .map(|(n, c)| (n.clone(), container_core(c)))
            .collect::<Vec<_>>()
    );
    let strip_type = |v: &Value| {
        let mut v = v.clone();
        for (_, vol) in v.as_object_mut().into_iter().flat_map(|m| m.iter_mut()) {
            if let Some(hp) = vol.get_mut("hostPath").and_then(Value::as_object_mut) {
                hp.remove("type");
            }
        }
        v
    };
    assert_eq!(
        by_name(&want["volumes"])
            .into_iter()
            .map(|(n, v)| (n, strip_type(&json!({"v": v}))))
            .collect::<Vec<_>>(),
        by_name(&got["volumes"])
            .into_iter()
            .map(|(n, v)| (n, strip_type(&json!({"v": v}))))
            .collect::<Vec<_>>()
    );
    assert_eq!(
        annotations_without_policy(template),
        annotations_without_policy(&admitted)
    );
    assert_eq!(
        template["metadata"]["labels"]["ckb.dev/injected"],
        admitted["metadata"]["labels"]["ckb.dev/injected"]
    );
}

#[tokio::test]
async fn webhook_only_adds_the_hash_to_a_rendered_pod_with_its_generated_policy() {
    let (docs, _) = rendered();
    let mut template = docs[1]["spec"]["template"].clone();
    // What genpolicy adds: the policy annotation (here, the binding's ConfigMap policy).
    template["metadata"]["annotations"]["io.katacontainers.config.agent.policy"] =
        json!(STANDARD.encode(read("orders-policy.rego")));
    let pod = pod_from_template(&template);
    let (admitted, answer) = admit(&pod).await;
    let patch: Value = serde_json::from_slice(
        &STANDARD
            .decode(answer["response"]["patch"].as_str().unwrap())
            .unwrap(),
    )
    .unwrap();
    use sha2::Digest as _;
    let hash = hex::encode(sha2::Sha256::digest(read("orders-policy.rego").as_bytes()));
    assert_eq!(
        patch,
        json!([{"op": "add", "path": "/metadata/annotations/ckb.dev~1policy-sha256", "value": hash}])
    );
    assert_eq!(admitted["spec"], pod["spec"]);
}

#[test]
fn render_notes_what_workload_identity_adds_to_the_sidecar_at_admission() {
    let (_, notes) = rendered();
    // The Deployment opts in to workload identity; the CronJob does not.
    let wi: Vec<&String> = notes
        .iter()
        .filter(|n| n.contains("opts in to workload identity"))
        .collect();
    assert_eq!(wi.len(), 1, "{notes:?}");
    assert!(wi[0].starts_with("Deployment payments/"), "{}", wi[0]);
    assert!(wi[0].contains("skr"), "{}", wi[0]);
}
