//! The decision on a table of pods.

use std::collections::BTreeMap;
use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use pretty_assertions::assert_eq;
use serde_json::{Value, json};

use super::mutate::*;
use crate::crds::ConfidentialKeyBinding;

const POLICY_A: &str = "package agent_policy\ndefault AllowRequestsFailingPolicy := false\n# A\n";
const POLICY_B: &str = "package agent_policy\ndefault AllowRequestsFailingPolicy := true\n# B\n";

fn sha(s: &str) -> String {
    use sha2::Digest as _;
    hex::encode(sha2::Sha256::digest(s.as_bytes()))
}

fn classes() -> Vec<String> {
    vec![DEFAULT_CONFIDENTIAL_RUNTIME_CLASS.to_string()]
}

fn binding(name: &str, key: &str, policy: Option<&str>) -> MatchedBinding {
    MatchedBinding {
        name: name.to_string(),
        vault: "https://demo.vault.azure.net".to_string(),
        key_name: key.to_string(),
        authority: "https://sharedeus.eus.attest.azure.net/".to_string(),
        sidecar: Default::default(),
        policy: policy.map(|p| Arc::new(PreparedPolicy::new(p))),
        policy_ref: format!("ConfigMap {name}-policy key policy.rego"),
        pinned: vec![],
    }
}

fn pod() -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "generateName": "orders-7d9f-",
            "labels": {"app": "orders", "azure.workload.identity/use": "true"},
        },
        "spec": {
            "runtimeClassName": "kata-cc-isolation",
            "serviceAccountName": "orders",
            "containers": [
                {"name": "app", "image": "example.com/orders:1.0", "ports": [{"containerPort": 8443}],
                 "env": [{"name": "MODE", "value": "prod"}], "futureField": {"x": 1}},
                {"name": "metrics", "image": "example.com/exporter:2"},
            ],
            "someFutureSpecField": true,
        },
    })
}

fn apply(pod: &Value, d: &Decision) -> Value {
    let mut out = pod.clone();
    if let Decision::Patch { patch, .. } = d {
        json_patch::patch(&mut out, &patch.to_patch().0).expect("patch applies");
    }
    out
}

fn env_of(pod: &Value, container: &str) -> Vec<(String, String)> {
    pod["spec"]["containers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == container)
        .and_then(|c| c["env"].as_array())
        .map(|e| {
            e.iter()
                .map(|v| {
                    (
                        v["name"].as_str().unwrap().to_string(),
                        v["value"].as_str().unwrap_or("").to_string(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

fn deny_message(d: Decision) -> String {
    match d {
        Decision::Deny { message } => message,
        other => panic!("expected a denial, got {other:?}"),
    }
}

#[test]
fn non_confidential_pods_are_never_changed() {
    for rc in [None, Some("runc"), Some("kata-mshv-vm-isolation")] {
        let mut p = pod();
        match rc {
            None => {
                p["spec"]
                    .as_object_mut()
                    .unwrap()
                    .remove("runtimeClassName");
            }
            Some(rc) => p["spec"]["runtimeClassName"] = json!(rc),
        }
        let d = decide(
            &p,
            &[binding("orders-key", "orders", Some(POLICY_A))],
            &SidecarDefaults::default(),
            &classes(),
        );
        assert_eq!(
            d,
            Decision::Allow { warnings: vec![] },
            "runtime class {rc:?}"
        );
    }
}

#[test]
fn confidential_pod_without_binding_is_unchanged() {
    let d = decide(&pod(), &[], &SidecarDefaults::default(), &classes());
    assert_eq!(d, Decision::Allow { warnings: vec![] });
}

#[test]
fn one_binding_gives_the_exact_expected_pod() {
    let p = pod();
    let d = decide(
        &p,
        &[binding("orders-key", "orders", Some(POLICY_A))],
        &SidecarDefaults::default(),
        &classes(),
    );
    let Decision::Patch { warnings, .. } = &d else {
        panic!("expected a patch, got {d:?}");
    };
    assert!(warnings.is_empty(), "pod has the WI label: {warnings:?}");
    let got = apply(&p, &d);
    let skr_args = STANDARD.encode(
        r#"{"certcache":{"endpoint_type":"LocalTHIM","endpoint":"169.254.169.254/metadata/THIM/amd/certification"}}"#,
    );
    let app_env = |extra: Vec<Value>| {
        let mut v = extra;
        v.extend([
            json!({"name": "SKR_ENDPOINT", "value": "http://localhost:8080"}),
            json!({"name": "SKR_MAA_ENDPOINT", "value": "sharedeus.eus.attest.azure.net"}),
            json!({"name": "SKR_AKV_ENDPOINT", "value": "demo.vault.azure.net"}),
            json!({"name": "SKR_KEY_NAME", "value": "orders"}),
        ]);
        Value::Array(v)
    };
    let expected = json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "generateName": "orders-7d9f-",
            "labels": {"app": "orders", "azure.workload.identity/use": "true", "ckb.dev/injected": "true"},
            "annotations": {
                "io.katacontainers.config.agent.policy": STANDARD.encode(POLICY_A),
                "ckb.dev/policy-sha256": sha(POLICY_A),
                "ckb.dev/bindings": "orders-key",
            },
        },
        "spec": {
            "runtimeClassName": "kata-cc-isolation",
            "serviceAccountName": "orders",
            "containers": [
                {"name": "app", "image": "example.com/orders:1.0", "ports": [{"containerPort": 8443}],
                 "env": app_env(vec![json!({"name": "MODE", "value": "prod"})]), "futureField": {"x": 1}},
                {"name": "metrics", "image": "example.com/exporter:2", "env": app_env(vec![])},
                {"name": "skr", "image": "mcr.microsoft.com/aci/skr:2.12", "command": ["/skr.sh"],
                 "env": [
                    {"name": "SkrSideCarArgs", "value": skr_args},
                    {"name": "Port", "value": "8080"},
                    {"name": "LogLevel", "value": "warning"},
                 ],
                 "volumeMounts": [{"name": "ckb-skr-reference-info",
                    "mountPath": "/opt/confidential-containers/share/kata-containers/reference-info-base64",
                    "readOnly": true}]},
            ],
            "volumes": [{"name": "ckb-skr-reference-info",
                "hostPath": {"path": "/opt/confidential-containers/share/kata-containers/reference-info-base64"}}],
            "someFutureSpecField": true,
        },
    });
    assert_eq!(got, expected);
    // The base64 of SkrSideCarArgs decodes to the LocalTHIM cert-cache configuration.
    let decoded: Value = serde_json::from_slice(&STANDARD.decode(&skr_args).unwrap()).unwrap();
    assert_eq!(decoded["certcache"]["endpoint_type"], "LocalTHIM");
}

#[test]
fn output_fed_back_passes_unchanged() {
    let bindings = [
        binding("orders-key", "orders", Some(POLICY_A)),
        binding("audit-key", "audit", Some(POLICY_A)),
    ];
    for bs in [&bindings[..1], &bindings[..]] {
        let p = pod();
        let once = apply(&p, &decide(&p, bs, &SidecarDefaults::default(), &classes()));
        assert_ne!(once, p);
        let again = decide(&once, bs, &SidecarDefaults::default(), &classes());
        assert_eq!(again, Decision::Allow { warnings: vec![] });
    }
}

#[test]
fn output_after_api_server_defaulting_passes_unchanged() {
    // The API server re-sends our output with defaults filled in (reinvocation).
    let p = pod();
    let bs = [binding("orders-key", "orders", Some(POLICY_A))];
    let mut once = apply(
        &p,
        &decide(&p, &bs, &SidecarDefaults::default(), &classes()),
    );
    for c in once["spec"]["containers"].as_array_mut().unwrap() {
        c["terminationMessagePath"] = json!("/dev/termination-log");
        c["imagePullPolicy"] = json!("IfNotPresent");
        c["resources"] = json!({});
    }
    once["spec"]["volumes"][0]["hostPath"]["type"] = json!("");
    let again = decide(&once, &bs, &SidecarDefaults::default(), &classes());
    assert_eq!(again, Decision::Allow { warnings: vec![] });
}

#[test]
fn two_bindings_get_one_sidecar_and_a_suffixed_env_set_each() {
    let p = pod();
    let d = decide(
        &p,
        &[
            binding("orders-key", "orders", Some(POLICY_A)),
            binding("audit.v2", "audit", Some(POLICY_A)),
        ],
        &SidecarDefaults::default(),
        &classes(),
    );
    let got = apply(&p, &d);
    let sidecars = got["spec"]["containers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["name"] == "skr")
        .count();
    assert_eq!(sidecars, 1);
    assert_eq!(
        got["metadata"]["annotations"]["ckb.dev/bindings"],
        "audit.v2,orders-key"
    );
    let env: BTreeMap<_, _> = env_of(&got, "metrics").into_iter().collect();
    let expected: BTreeMap<String, String> = [
        ("SKR_ENDPOINT", "http://localhost:8080"),
        ("SKR_ENDPOINT_AUDIT_V2", "http://localhost:8080"),
        (
            "SKR_MAA_ENDPOINT_AUDIT_V2",
            "sharedeus.eus.attest.azure.net",
        ),
        ("SKR_AKV_ENDPOINT_AUDIT_V2", "demo.vault.azure.net"),
        ("SKR_KEY_NAME_AUDIT_V2", "audit"),
        ("SKR_ENDPOINT_ORDERS_KEY", "http://localhost:8080"),
        (
            "SKR_MAA_ENDPOINT_ORDERS_KEY",
            "sharedeus.eus.attest.azure.net",
        ),
        ("SKR_AKV_ENDPOINT_ORDERS_KEY", "demo.vault.azure.net"),
        ("SKR_KEY_NAME_ORDERS_KEY", "orders"),
    ]
    .into_iter()
    .map(|(a, b)| (a.to_string(), b.to_string()))
    .collect();
    assert_eq!(env, expected);
}

#[test]
fn output_does_not_depend_on_binding_order() {
    let p = pod();
    let a = binding("orders-key", "orders", Some(POLICY_A));
    let b = binding("audit-key", "audit", Some(POLICY_A));
    let d1 = decide(
        &p,
        &[a.clone(), b.clone()],
        &SidecarDefaults::default(),
        &classes(),
    );
    let d2 = decide(&p, &[b, a], &SidecarDefaults::default(), &classes());
    assert_eq!(apply(&p, &d1), apply(&p, &d2));
}

/// The refusal of the typical confidential pod under the bindings `bs`.
fn denial_of_pod(bs: &[MatchedBinding]) -> String {
    deny_message(decide(&pod(), bs, &SidecarDefaults::default(), &classes()))
}

#[test]
fn env_suffix_collision_is_refused() {
    let m = denial_of_pod(&[
        binding("a-b", "k1", Some(POLICY_A)),
        binding("a.b", "k2", Some(POLICY_A)),
    ]);
    assert!(m.contains("_A_B"), "{m}");
}

#[test]
fn bindings_with_different_policies_are_refused_by_name() {
    let m = denial_of_pod(&[
        binding("orders-key", "orders", Some(POLICY_A)),
        binding("audit-key", "audit", Some(POLICY_B)),
    ]);
    assert!(m.contains("different agent policies"), "{m}");
    assert!(m.contains("orders-key") && m.contains("audit-key"), "{m}");
    assert!(
        m.contains(&sha(POLICY_A)[..12]) && m.contains(&sha(POLICY_B)[..12]),
        "{m}"
    );
}

#[test]
fn missing_policy_is_refused_naming_the_configmap() {
    let m = denial_of_pod(&[binding("orders-key", "orders", None)]);
    assert!(m.contains("orders-key-policy"), "{m}");
}

#[test]
fn pod_with_another_policy_is_refused_and_the_same_policy_is_kept() {
    let bs = [binding("orders-key", "orders", Some(POLICY_A))];
    let mut other = pod();
    other["metadata"]["annotations"] =
        json!({"io.katacontainers.config.agent.policy": STANDARD.encode(POLICY_B)});
    let m = deny_message(decide(&other, &bs, &SidecarDefaults::default(), &classes()));
    assert!(m.contains("already carries an agent policy"), "{m}");
    assert!(m.contains(&sha(POLICY_B)[..12]), "{m}");

    let mut garbage = pod();
    garbage["metadata"]["annotations"] = json!({"io.katacontainers.config.agent.policy": "%%%"});
    let m = deny_message(decide(
        &garbage,
        &bs,
        &SidecarDefaults::default(),
        &classes(),
    ));
    assert!(m.contains("not base64"), "{m}");

    // Same Rego, base64 wrapped at 76 columns (as `base64` without -w0 prints it): kept as is.
    let wrapped: String = STANDARD
        .encode(POLICY_A)
        .as_bytes()
        .chunks(20)
        .map(|c| format!("{}\n", std::str::from_utf8(c).unwrap()))
        .collect();
    let mut same = pod();
    same["metadata"]["annotations"] = json!({"io.katacontainers.config.agent.policy": wrapped});
    let got = apply(
        &same,
        &decide(&same, &bs, &SidecarDefaults::default(), &classes()),
    );
    assert_eq!(
        got["metadata"]["annotations"]["io.katacontainers.config.agent.policy"],
        json!(wrapped)
    );
    assert_eq!(
        got["metadata"]["annotations"]["ckb.dev/policy-sha256"],
        json!(sha(POLICY_A))
    );
}

#[test]
fn pre_existing_sidecar_is_kept_when_it_matches_and_refused_otherwise() {
    let bs = [binding("orders-key", "orders", Some(POLICY_A))];
    let p = pod();
    let injected = apply(
        &p,
        &decide(&p, &bs, &SidecarDefaults::default(), &classes()),
    );
    // A matching skr container (e.g. from `render`) plus user extras: not duplicated.
    let mut with_extra = injected.clone();
    let skr = with_extra["spec"]["containers"]
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .find(|c| c["name"] == "skr")
        .unwrap();
    skr["env"]
        .as_array_mut()
        .unwrap()
        .push(json!({"name": "UVM_SECURITY_CONTEXT_DIR", "value": "/x"}));
    assert_eq!(
        decide(&with_extra, &bs, &SidecarDefaults::default(), &classes()),
        Decision::Allow { warnings: vec![] }
    );
    // A different image: refused.
    let mut other = pod();
    other["spec"]["containers"].as_array_mut().unwrap().push(
        json!({"name": "skr", "image": "mcr.microsoft.com/aci/skr:2.7", "command": ["/bin/skr"]}),
    );
    let m = deny_message(decide(&other, &bs, &SidecarDefaults::default(), &classes()));
    assert!(m.contains("already has a container named \"skr\""), "{m}");
    // An init container named skr: refused.
    let mut init = pod();
    init["spec"]["initContainers"] = json!([{"name": "skr", "image": "busybox"}]);
    let m = deny_message(decide(&init, &bs, &SidecarDefaults::default(), &classes()));
    assert!(m.contains("init container named \"skr\""), "{m}");
}

#[test]
fn existing_env_with_our_value_is_kept_and_another_value_refused() {
    let bs = [binding("orders-key", "orders", Some(POLICY_A))];
    let mut same = pod();
    same["spec"]["containers"][0]["env"] = json!([{"name": "SKR_KEY_NAME", "value": "orders"}]);
    let got = apply(
        &same,
        &decide(&same, &bs, &SidecarDefaults::default(), &classes()),
    );
    let names: Vec<_> = env_of(&got, "app").into_iter().map(|(n, _)| n).collect();
    assert_eq!(
        names.iter().filter(|n| *n == "SKR_KEY_NAME").count(),
        1,
        "{names:?}"
    );

    let mut other = pod();
    other["spec"]["containers"][0]["env"] = json!([{"name": "SKR_KEY_NAME", "value": "mine"}]);
    let m = deny_message(decide(&other, &bs, &SidecarDefaults::default(), &classes()));
    assert!(
        m.contains("\"app\"") && m.contains("SKR_KEY_NAME") && m.contains("\"mine\""),
        "{m}"
    );

    let mut from = pod();
    from["spec"]["containers"][1]["env"] = json!([{"name": "SKR_AKV_ENDPOINT", "valueFrom": {"configMapKeyRef": {"name": "x", "key": "y"}}}]);
    let m = deny_message(decide(&from, &bs, &SidecarDefaults::default(), &classes()));
    assert!(m.contains("\"metrics\"") && m.contains("valueFrom"), "{m}");
}

#[test]
fn init_containers_and_native_sidecars_get_no_env() {
    let bs = [binding("orders-key", "orders", Some(POLICY_A))];
    let mut p = pod();
    p["spec"]["initContainers"] = json!([
        {"name": "migrate", "image": "example.com/migrate:1"},
        {"name": "proxy", "image": "example.com/proxy:1", "restartPolicy": "Always", "ports": [{"containerPort": 15001}]},
    ]);
    let got = apply(
        &p,
        &decide(&p, &bs, &SidecarDefaults::default(), &classes()),
    );
    assert_eq!(got["spec"]["initContainers"], p["spec"]["initContainers"]);
    assert!(!env_of(&got, "app").is_empty());
}

#[test]
fn port_clash_with_app_or_native_sidecar_is_refused() {
    let bs = [binding("orders-key", "orders", Some(POLICY_A))];
    let mut app = pod();
    app["spec"]["containers"][1]["ports"] = json!([{"containerPort": 8080}]);
    let m = deny_message(decide(&app, &bs, &SidecarDefaults::default(), &classes()));
    assert!(m.contains("\"metrics\"") && m.contains("8080"), "{m}");

    let mut native = pod();
    native["spec"]["initContainers"] =
        json!([{"name": "proxy", "restartPolicy": "Always", "ports": [{"containerPort": 8080}]}]);
    let m = deny_message(decide(
        &native,
        &bs,
        &SidecarDefaults::default(),
        &classes(),
    ));
    assert!(m.contains("\"proxy\""), "{m}");

    // A plain init container finishes before the sidecar starts: no clash.
    let mut init = pod();
    init["spec"]["initContainers"] = json!([{"name": "setup", "ports": [{"containerPort": 8080}]}]);
    assert!(matches!(
        decide(&init, &bs, &SidecarDefaults::default(), &classes()),
        Decision::Patch { .. }
    ));

    // Moving the sidecar with the binding's override resolves it.
    let mut moved = binding("orders-key", "orders", Some(POLICY_A));
    moved.sidecar.port = Some(9000);
    let got = apply(
        &app,
        &decide(&app, &[moved], &SidecarDefaults::default(), &classes()),
    );
    assert!(env_of(&got, "app").contains(&("SKR_ENDPOINT".into(), "http://localhost:9000".into())));
    assert!(env_of(&got, "skr").contains(&("Port".into(), "9000".into())));
}

#[test]
fn sidecar_overrides_apply_and_conflicting_overrides_are_refused() {
    let mut a = binding("orders-key", "orders", Some(POLICY_A));
    a.sidecar.image = Some("registry.example/skr@sha256:abc".into());
    a.sidecar.log_level = Some(crate::crds::SidecarLogLevel::Debug);
    let mut b = binding("audit-key", "audit", Some(POLICY_A));
    b.sidecar.image = Some("registry.example/skr@sha256:abc".into());
    let p = pod();
    let got = apply(
        &p,
        &decide(
            &p,
            &[a.clone(), b.clone()],
            &SidecarDefaults::default(),
            &classes(),
        ),
    );
    let skr = got["spec"]["containers"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()
        .clone();
    assert_eq!(skr["image"], "registry.example/skr@sha256:abc");
    assert!(env_of(&got, "skr").contains(&("LogLevel".into(), "debug".into())));

    b.sidecar.image = Some("registry.example/skr:other".into());
    let m = deny_message(decide(&p, &[a, b], &SidecarDefaults::default(), &classes()));
    assert!(m.contains("disagree on sidecar image"), "{m}");
}

#[test]
fn missing_workload_identity_label_warns_without_changing_labels() {
    let mut p = pod();
    p["metadata"]["labels"] = json!({"app": "orders"});
    let d = decide(
        &p,
        &[binding("orders-key", "orders", Some(POLICY_A))],
        &SidecarDefaults::default(),
        &classes(),
    );
    let Decision::Patch { warnings, .. } = &d else {
        panic!("{d:?}")
    };
    assert_eq!(warnings.len(), 1);
    assert!(warnings[0].contains("azure.workload.identity/use"));
    let got = apply(&p, &d);
    assert_eq!(
        got["metadata"]["labels"],
        json!({"app": "orders", "ckb.dev/injected": "true"})
    );
}

#[test]
fn annotations_over_256_kib_are_refused_and_a_realistic_policy_fits() {
    let bs = |rego: &str| [binding("orders-key", "orders", Some(rego))];
    // 120 KiB of Rego → 160 KiB of base64: fits.
    let realistic = format!(
        "package agent_policy\n{}",
        "# rule line of policy text\n".repeat(120 * 1024 / 27)
    );
    assert!(matches!(
        decide(
            &pod(),
            &bs(&realistic),
            &SidecarDefaults::default(),
            &classes()
        ),
        Decision::Patch { .. }
    ));
    // 200 KiB of Rego → 267 KiB of base64: over.
    let huge = "x".repeat(200 * 1024);
    let m = deny_message(decide(
        &pod(),
        &bs(&huge),
        &SidecarDefaults::default(),
        &classes(),
    ));
    assert!(m.contains("262144"), "{m}");
    // The limit counts key + value bytes of every annotation: exactly at it passes, one over not.
    let ours: usize = [
        (
            "io.katacontainers.config.agent.policy",
            STANDARD.encode(POLICY_A),
        ),
        ("ckb.dev/policy-sha256", sha(POLICY_A)),
        ("ckb.dev/bindings", "orders-key".to_string()),
    ]
    .iter()
    .map(|(k, v)| k.len() + v.len())
    .sum();
    let with_big = |n: usize| {
        let mut p = pod();
        p["metadata"]["annotations"] = json!({"big": "y".repeat(n)});
        decide(&p, &bs(POLICY_A), &SidecarDefaults::default(), &classes())
    };
    assert!(matches!(
        with_big(262_144 - 3 - ours),
        Decision::Patch { .. }
    ));
    let m = deny_message(with_big(262_144 - 3 - ours + 1));
    assert!(m.contains("262145 bytes"), "{m}");
}

#[test]
fn render_mode_leaves_the_policy_alone() {
    let p = pod();
    let m = mutate(
        &p,
        &[binding("orders-key", "orders", None)],
        &SidecarDefaults::default(),
        &classes(),
        Mode::Render,
    )
    .unwrap();
    let ann = &m.pod["metadata"]["annotations"];
    assert!(ann.get("io.katacontainers.config.agent.policy").is_none());
    assert!(ann.get("ckb.dev/policy-sha256").is_none());
    assert_eq!(ann["ckb.dev/bindings"], "orders-key");
}

/// What a hostile or malformed input must get.
enum Want {
    /// Refused, the message containing this.
    Deny(&'static str),
    /// Admitted unchanged (not confidential: the webhook has no say).
    Allow,
    /// Admitted only with the sidecar and the bindings' policy injected.
    Injected,
}

/// Case `i`: the patch `d` of pod `p` adds one sidecar and the bindings' policy, annotations and
/// label, and its output is a fixed point (sent again, it passes unchanged).
fn assert_injected_and_stable(i: usize, p: &Value, d: &Decision, bs: &[MatchedBinding]) {
    let out = apply(p, d);
    let containers = out["spec"]["containers"].as_array().unwrap();
    assert_eq!(
        containers.iter().filter(|c| c["name"] == "skr").count(),
        1,
        "case {i} {p}: {out}"
    );
    let ann = &out["metadata"]["annotations"];
    assert_eq!(
        ann["io.katacontainers.config.agent.policy"],
        json!(STANDARD.encode(POLICY_A)),
        "case {i} {p}"
    );
    assert_eq!(
        ann["ckb.dev/policy-sha256"],
        json!(sha(POLICY_A)),
        "case {i}"
    );
    assert_eq!(ann["ckb.dev/bindings"], "orders-key", "case {i}");
    assert_eq!(
        out["metadata"]["labels"]["ckb.dev/injected"], "true",
        "case {i}"
    );
    // The output is a fixed point: sent again, it passes unchanged.
    assert!(
        matches!(
            decide(&out, bs, &SidecarDefaults::default(), &classes()),
            Decision::Allow { .. }
        ),
        "case {i}: the injected output is not stable"
    );
}

#[test]
fn garbage_shapes_get_a_definite_decision() {
    // A confidential pod selected by a binding is never admitted as it came: it is either
    // injected with the bindings' policy or refused, whatever shape its fields have.
    let bs = [binding("orders-key", "orders", Some(POLICY_A))];
    let cases = [
        (json!(null), Want::Deny("not a JSON object")),
        (json!([]), Want::Deny("not a JSON object")),
        (json!("pod"), Want::Deny("not a JSON object")),
        (json!(42), Want::Deny("not a JSON object")),
        (
            json!({"spec": {"runtimeClassName": "kata-cc-isolation"}}),
            Want::Injected,
        ),
        (
            json!({"spec": {"runtimeClassName": "kata-cc-isolation", "containers": "x", "volumes": 3}}),
            Want::Injected,
        ),
        (
            json!({"metadata": [], "spec": {"runtimeClassName": "kata-cc-isolation", "containers": [1, null, {"name": 5, "env": "x", "ports": [{"containerPort": "8080"}]}]}}),
            Want::Injected,
        ),
        (
            json!({"metadata": {"labels": 3, "annotations": []}, "spec": {"runtimeClassName": "kata-cc-isolation", "initContainers": {}}}),
            Want::Injected,
        ),
        // A policy annotation that is not a string, or not base64: refused, never replaced.
        (
            json!({"metadata": {"annotations": {"io.katacontainers.config.agent.policy": 7}}, "spec": {"runtimeClassName": "kata-cc-isolation"}}),
            Want::Deny("not base64 Rego"),
        ),
        (
            json!({"metadata": {"annotations": {"io.katacontainers.config.agent.policy": "%%%"}}, "spec": {"runtimeClassName": "kata-cc-isolation"}}),
            Want::Deny("not base64 Rego"),
        ),
        // A container on the sidecar's port, among garbage containers: still found.
        (
            json!({"spec": {"runtimeClassName": "kata-cc-isolation", "containers": [null, {"name": "app", "ports": [7, {"containerPort": 8080}]}]}}),
            Want::Deny("port 8080"),
        ),
        // Not confidential however it is spelled: the webhook has no say.
        (json!({"spec": 7}), Want::Allow),
        (json!({"spec": {"runtimeClassName": 5}}), Want::Allow),
        (
            json!({"spec": {"runtimeClassName": "KATA-CC-ISOLATION"}}),
            Want::Allow,
        ),
        (
            json!({"spec": {"runtimeClassName": ["kata-cc-isolation"]}}),
            Want::Allow,
        ),
        // A spec that is not an object has no runtime class: not confidential.
        (
            json!({"spec": [{"runtimeClassName": "kata-cc-isolation"}]}),
            Want::Allow,
        ),
    ];
    for (i, (p, want)) in cases.into_iter().enumerate() {
        let d = decide(&p, &bs, &SidecarDefaults::default(), &classes());
        match (want, &d) {
            (Want::Deny(words), Decision::Deny { message }) => {
                assert!(message.contains(words), "case {i} {p}: {message}");
            }
            (Want::Allow, Decision::Allow { .. }) => {}
            (Want::Injected, Decision::Patch { .. }) => assert_injected_and_stable(i, &p, &d, &bs),
            (_, other) => panic!("case {i} {p}: unexpected decision {other:?}"),
        }
    }
}

fn ckb(ns: &str, name: &str, selector: Value) -> Arc<ConfidentialKeyBinding> {
    Arc::new(
        serde_json::from_value(json!({
            "apiVersion": "ckb.dev/v1alpha1",
            "kind": "ConfidentialKeyBinding",
            "metadata": {"name": name, "namespace": ns},
            "spec": {
                "podSelector": selector,
                "key": {"vault": "https://demo.vault.azure.net", "name": name},
                "attestation": {"authority": "https://sharedeus.eus.attest.azure.net"},
                "policy": {"configMapRef": {"name": "p"}},
            }
        }))
        .unwrap(),
    )
}

// Long by design: one table of bindings, each named for the selector case it covers, and one
// assertion of which of them select the pod.
#[test]
fn selection_by_namespace_and_pod_selector() {
    let labels: BTreeMap<String, String> = [("app", "orders"), ("tier", "be")]
        .into_iter()
        .map(|(a, b)| (a.into(), b.into()))
        .collect();
    let mut deleting = (*ckb("pay", "deleting", json!({}))).clone();
    deleting.metadata.deletion_timestamp = Some(
        k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(jiff::Timestamp::UNIX_EPOCH),
    );
    let all = vec![
        ckb("pay", "z-all", json!({})),
        ckb("pay", "labels", json!({"matchLabels": {"app": "orders"}})),
        ckb("pay", "labels-miss", json!({"matchLabels": {"app": "web"}})),
        ckb("other", "other-ns", json!({})),
        ckb(
            "pay",
            "in",
            json!({"matchExpressions": [{"key": "tier", "operator": "In", "values": ["be", "fe"]}]}),
        ),
        ckb(
            "pay",
            "notin-miss",
            json!({"matchExpressions": [{"key": "tier", "operator": "NotIn", "values": ["be"]}]}),
        ),
        ckb(
            "pay",
            "notin-absent",
            json!({"matchExpressions": [{"key": "zone", "operator": "NotIn", "values": ["a"]}]}),
        ),
        ckb(
            "pay",
            "exists",
            json!({"matchExpressions": [{"key": "app", "operator": "Exists"}]}),
        ),
        ckb(
            "pay",
            "dne-miss",
            json!({"matchExpressions": [{"key": "app", "operator": "DoesNotExist"}]}),
        ),
        ckb(
            "pay",
            "in-empty",
            json!({"matchExpressions": [{"key": "tier", "operator": "In", "values": []}]}),
        ),
        // Malformed (the API server refuses them): they select nothing, though a lenient reading
        // would take NotIn of nothing, or Exists with values, as matching.
        ckb(
            "pay",
            "notin-empty",
            json!({"matchExpressions": [{"key": "zone", "operator": "NotIn", "values": []}]}),
        ),
        ckb(
            "pay",
            "notin-no-values",
            json!({"matchExpressions": [{"key": "zone", "operator": "NotIn"}]}),
        ),
        ckb(
            "pay",
            "exists-with-values",
            json!({"matchExpressions": [{"key": "app", "operator": "Exists", "values": ["orders"]}]}),
        ),
        ckb(
            "pay",
            "dne-with-values",
            json!({"matchExpressions": [{"key": "zone", "operator": "DoesNotExist", "values": ["a"]}]}),
        ),
        ckb(
            "pay",
            "bogus-op",
            json!({"matchExpressions": [{"key": "tier", "operator": "Gt", "values": ["1"]}]}),
        ),
        ckb(
            "pay",
            "both-miss",
            json!({"matchLabels": {"app": "orders"}, "matchExpressions": [{"key": "tier", "operator": "In", "values": ["fe"]}]}),
        ),
        Arc::new(deleting),
    ];
    let got: Vec<String> = select_bindings("pay", &labels, &all)
        .iter()
        .map(|b| b.metadata.name.clone().unwrap())
        .collect();
    assert_eq!(got, vec!["exists", "in", "labels", "notin-absent", "z-all"]);
}

#[test]
fn env_suffix_and_host_rules() {
    assert_eq!(env_suffix("orders-key"), "ORDERS_KEY");
    assert_eq!(env_suffix("keys.v2"), "KEYS_V2");
    assert_eq!(
        host_of("https://demo.vault.azure.net/"),
        "demo.vault.azure.net"
    );
    assert_eq!(host_of("https://maa.example:8443"), "maa.example:8443");
}

#[test]
fn a_policy_the_binding_does_not_pin_is_refused_naming_the_expected_hash() {
    // The ConfigMap was rewritten to B; the binding pins A only.
    let mut b = binding("orders", "orders-key", Some(POLICY_B));
    b.pinned = vec![sha(POLICY_A).parse().unwrap()];
    let msg = denial_of_pod(&[b.clone()]);
    assert!(msg.contains(&sha(POLICY_B)), "{msg}");
    assert!(msg.contains(&format!("expects {}", sha(POLICY_A))), "{msg}");
    assert!(msg.contains("binding orders"), "{msg}");
    // The pinned policy itself passes, among several pins.
    b.policy = Some(Arc::new(PreparedPolicy::new(POLICY_A)));
    b.pinned = vec![
        sha(POLICY_B).parse().unwrap(),
        sha(POLICY_A).parse().unwrap(),
    ];
    let d = decide(&pod(), &[b], &SidecarDefaults::default(), &classes());
    assert!(matches!(d, Decision::Patch { .. }), "{d:?}");
}

// --- Workload identity for the sidecar, whatever the webhook order (identity.rs) ---

const WI_VOLUME: &str = "azure-workload-identity-reserved-0123456789abcdef";
const WI_TOKEN_FILE: &str = "/var/run/secrets/azure/wi/token/azure-identity-token";

/// What the Azure Workload Identity webhook (v1.6.0, pkg/webhook) does to a pod: every container
/// gets the four variables it lacks and the token mount (replaced by name), and the pod the
/// projected volume (replaced by name). A model for the unit tests; the e2e suite runs the real one.
fn awi_mutates(pod: &mut Value) {
    let env = [
        ("AZURE_CLIENT_ID", "00000000-0000-4000-8000-000000000001"),
        ("AZURE_TENANT_ID", "00000000-0000-4000-8000-0000000000aa"),
        ("AZURE_FEDERATED_TOKEN_FILE", WI_TOKEN_FILE),
        ("AZURE_AUTHORITY_HOST", "https://login.microsoftonline.com/"),
    ];
    let mount =
        json!({"name": WI_VOLUME, "mountPath": "/var/run/secrets/azure/wi", "readOnly": true});
    let spec = pod["spec"].as_object_mut().unwrap();
    for list in ["initContainers", "containers"] {
        for c in spec
            .get_mut(list)
            .and_then(Value::as_array_mut)
            .into_iter()
            .flatten()
        {
            let c = c.as_object_mut().unwrap();
            let e = c.entry("env").or_insert_with(|| json!([]));
            for (name, value) in env {
                if !e.as_array().unwrap().iter().any(|v| v["name"] == name) {
                    e.as_array_mut()
                        .unwrap()
                        .push(json!({"name": name, "value": value}));
                }
            }
            let m = c.entry("volumeMounts").or_insert_with(|| json!([]));
            let m = m.as_array_mut().unwrap();
            match m.iter_mut().find(|v| v["name"] == WI_VOLUME) {
                Some(existing) => *existing = mount.clone(),
                None => m.push(mount.clone()),
            }
        }
    }
    let volume = json!({"name": WI_VOLUME, "projected": {"sources": [{"serviceAccountToken": {
        "path": "token/azure-identity-token", "expirationSeconds": 3600, "audience": "api://AzureADTokenExchange"}}]}});
    let vols = spec.entry("volumes").or_insert_with(|| json!([]));
    let vols = vols.as_array_mut().unwrap();
    match vols.iter_mut().find(|v| v["name"] == WI_VOLUME) {
        Some(existing) => *existing = volume,
        None => vols.push(volume),
    }
}

fn container<'a>(pod: &'a Value, name: &str) -> &'a Value {
    pod["spec"]["containers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no container {name}"))
}

/// How many times each AZURE_* variable and the token mount appear in a container.
fn identity_counts(c: &Value) -> (BTreeMap<String, usize>, usize) {
    let mut env = BTreeMap::new();
    for e in c["env"].as_array().into_iter().flatten() {
        let n = e["name"].as_str().unwrap();
        if n.starts_with("AZURE_") {
            *env.entry(n.to_string()).or_insert(0) += 1;
        }
    }
    let mounts = c["volumeMounts"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|m| m["name"] == WI_VOLUME)
        .count();
    (env, mounts)
}

fn full_identity() -> (BTreeMap<String, usize>, usize) {
    let env = [
        "AZURE_AUTHORITY_HOST",
        "AZURE_CLIENT_ID",
        "AZURE_FEDERATED_TOKEN_FILE",
        "AZURE_TENANT_ID",
    ]
    .into_iter()
    .map(|n| (n.to_string(), 1))
    .collect();
    (env, 1)
}

#[test]
fn awi_before_us_the_sidecar_gets_the_same_identity_once() {
    let bs = [binding("orders-key", "orders", Some(POLICY_A))];
    let mut p = pod();
    awi_mutates(&mut p);
    let once = apply(
        &p,
        &decide(&p, &bs, &SidecarDefaults::default(), &classes()),
    );
    let skr = container(&once, "skr");
    assert_eq!(identity_counts(skr), full_identity());
    // The same values and the same mount as the app container.
    let app = container(&once, "app");
    for name in [
        "AZURE_CLIENT_ID",
        "AZURE_TENANT_ID",
        "AZURE_FEDERATED_TOKEN_FILE",
    ] {
        let get = |c: &Value| {
            c["env"]
                .as_array()
                .unwrap()
                .iter()
                .find(|e| e["name"] == name)
                .cloned()
        };
        assert_eq!(get(skr), get(app), "{name}");
    }
    assert!(skr["volumeMounts"].as_array().unwrap().contains(
        &json!({"name": WI_VOLUME, "mountPath": "/var/run/secrets/azure/wi", "readOnly": true})
    ));
    // Our re-invocation changes nothing; AWI's re-invocation (IfNeeded upstream) neither.
    assert_eq!(
        decide(&once, &bs, &SidecarDefaults::default(), &classes()),
        Decision::Allow { warnings: vec![] }
    );
    let mut again = once.clone();
    awi_mutates(&mut again);
    assert_eq!(again, once);
}

#[test]
fn awi_after_us_mutates_the_sidecar_and_our_reinvocation_adds_nothing() {
    let bs = [binding("orders-key", "orders", Some(POLICY_A))];
    let p = pod();
    let ours = apply(
        &p,
        &decide(&p, &bs, &SidecarDefaults::default(), &classes()),
    );
    // AWI has not run yet: the sidecar has no identity of its own making.
    assert_eq!(identity_counts(container(&ours, "skr")).1, 0);
    let mut after_awi = ours.clone();
    awi_mutates(&mut after_awi);
    assert_eq!(
        identity_counts(container(&after_awi, "skr")),
        full_identity()
    );
    assert_eq!(
        decide(&after_awi, &bs, &SidecarDefaults::default(), &classes()),
        Decision::Allow { warnings: vec![] }
    );
}

#[test]
fn pod_without_the_label_gets_no_identity_and_a_warning_naming_the_fallback() {
    let bs = [binding("orders-key", "orders", Some(POLICY_A))];
    let mut p = pod();
    awi_mutates(&mut p);
    p["metadata"]["labels"] = json!({"app": "orders"});
    let d = decide(&p, &bs, &SidecarDefaults::default(), &classes());
    let Decision::Patch { warnings, .. } = &d else {
        panic!("{d:?}")
    };
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(warnings[0].contains("IMDS"), "{}", warnings[0]);
    assert!(warnings[0].contains("managed identity"), "{}", warnings[0]);
    let got = apply(&p, &d);
    assert_eq!(
        identity_counts(container(&got, "skr")),
        (BTreeMap::new(), 0)
    );
}

#[test]
fn render_shows_the_sidecar_with_the_identity_genpolicy_must_see() {
    let mut p = pod();
    awi_mutates(&mut p);
    let m = mutate(
        &p,
        &[binding("orders-key", "orders", None)],
        &SidecarDefaults::default(),
        &classes(),
        Mode::Render,
    )
    .unwrap();
    assert_eq!(identity_counts(container(&m.pod, "skr")), full_identity());
}
