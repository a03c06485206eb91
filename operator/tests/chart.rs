//! Tests of the Helm chart in `charts/ckb-operator`, through the real `helm` binary.
//!
//! They need `helm` and a Python venv with `kubernetes-validate` (installed by
//! `scripts/install-tools.sh helm venv` under `${XDG_CACHE_HOME:-$HOME/.cache}/ckb-operator/tools`,
//! or named by `HELM` / `KUBERNETES_VALIDATE`). When a tool is missing they fail and say so: a
//! chart test that silently skips would pass on a machine that checked nothing.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use ckb_operator::rbac::{API_ACCESS, Needed, ObjectName, Scope};
use clap::CommandFactory;
use serde_json::{Value, json};

// ---------------------------------------------------------------------------------------------
// Tools and rendering
// ---------------------------------------------------------------------------------------------

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("operator/ has a parent")
        .to_path_buf()
}

fn chart_dir() -> PathBuf {
    repo_root().join("charts/ckb-operator")
}

fn tools_dir() -> PathBuf {
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .expect("neither XDG_CACHE_HOME nor HOME is set");
    cache.join("ckb-operator/tools")
}

/// A tool named by `env_var`, else found in the tools cache, else on PATH; a clear failure otherwise.
fn tool(env_var: &str, cached: &Path, name: &str) -> PathBuf {
    if let Some(p) = std::env::var_os(env_var) {
        let p = PathBuf::from(p);
        assert!(
            p.is_file(),
            "${env_var} names {}, which does not exist",
            p.display()
        );
        return p;
    }
    if cached.is_file() {
        return cached.to_path_buf();
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let candidate = dir.join(name);
            if candidate.is_file() {
                return candidate;
            }
        }
    }
    panic!(
        "`{name}` is required by the chart tests and was not found (not in ${env_var}, not at {}, \
         not on PATH). Install it with `scripts/install-tools.sh helm venv`.",
        cached.display()
    );
}

fn helm() -> PathBuf {
    tool("HELM", &tools_dir().join("bin/helm"), "helm")
}

fn kubernetes_validate() -> PathBuf {
    tool(
        "KUBERNETES_VALIDATE",
        &tools_dir().join("venv/bin/kubernetes-validate"),
        "kubernetes-validate",
    )
}

/// Release name and namespace every rendering uses unless a test says otherwise.
const RELEASE: &str = "ckb-operator";
const NAMESPACE: &str = "ckb-system";

/// A case of the values matrix: `--set` style assignments (`--set-json` when `json` is true).
#[derive(Debug, Clone)]
struct Case {
    name: &'static str,
    set: Vec<(&'static str, String)>,
    /// APIs the cluster serves besides Kubernetes' own (`helm template --api-versions`).
    api_versions: Vec<&'static str>,
}

/// The Prometheus Operator's APIs, as a cluster with its CRDs serves them.
const PROMETHEUS_APIS: &[&str] = &[
    "monitoring.coreos.com/v1/ServiceMonitor",
    "monitoring.coreos.com/v1/PrometheusRule",
];

impl Case {
    fn new(name: &'static str, set: &[(&'static str, &str)]) -> Case {
        Case {
            name,
            set: set.iter().map(|(k, v)| (*k, v.to_string())).collect(),
            api_versions: Vec::new(),
        }
    }

    /// The same case on a cluster that serves `apis` too.
    fn serving(mut self, apis: &[&'static str]) -> Case {
        self.api_versions.extend_from_slice(apis);
        self
    }

    fn args(&self) -> Vec<String> {
        let mut args = Vec::new();
        for api in &self.api_versions {
            args.push("--api-versions".to_owned());
            args.push((*api).to_owned());
        }
        for (k, v) in &self.set {
            args.push("--set-json".to_owned());
            args.push(format!("{k}={v}"));
        }
        args
    }
}

/// The values matrix the chart is rendered, linted and validated over.
// Long by design: one table of named values sets, one per configuration users run.
fn matrix() -> Vec<Case> {
    vec![
        Case::new("defaults", &[]),
        Case::new(
            "configured",
            &[
                (
                    "workloadIdentity.clientId",
                    r#""0b5e3b2c-6d8a-4c3e-9f51-2a6f0c1d7e42""#,
                ),
                (
                    "workloadIdentity.tenantId",
                    r#""72f988bf-86f1-41af-91ab-2d7cd011db47""#,
                ),
                (
                    "keyVault.allowedVaults",
                    r#"["https://contoso.vault.azure.net","https://contoso-hsm.managedhsm.azure.net"]"#,
                ),
                ("sidecar.image", r#""mcr.microsoft.com/aci/skr:2.12""#),
                ("sidecar.port", "8181"),
                ("sidecar.logLevel", r#""debug""#),
                (
                    "image.digest",
                    r#""sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef""#,
                ),
                ("priorityClassName", r#""system-cluster-critical""#),
                ("replicaCount", "3"),
            ],
        ),
        Case::new("cert-manager", &[("certManager.enabled", "true")]),
        Case::new(
            "cert-manager-issuer",
            &[
                ("certManager.enabled", "true"),
                (
                    "certManager.issuerRef",
                    r#"{"name":"corp-ca","kind":"ClusterIssuer","group":"cert-manager.io"}"#,
                ),
            ],
        ),
        Case::new("dev-mode", &[("devMode.enabled", "true")]),
        Case::new(
            "failure-policy-ignore",
            &[("webhook.failurePolicy", r#""Ignore""#)],
        ),
        Case::new(
            "custom-runtime-classes",
            &[(
                "webhook.confidentialRuntimeClasses",
                r#"["kata-cc-isolation","kata-cc"]"#,
            )],
        ),
        Case::new(
            "service-monitor",
            &[("metrics.serviceMonitor.enabled", "true")],
        )
        .serving(PROMETHEUS_APIS),
        Case::new(
            "aks-day-2",
            &[
                ("metrics.serviceMonitor.enabled", "true"),
                ("metrics.prometheusRule.enabled", "true"),
                ("metrics.prometheusRule.ruleLabels", r#"{"team":"platform"}"#),
                ("networkPolicy.enabled", "true"),
                (
                    "networkPolicy.metricsFrom",
                    r#"[{"namespaceSelector":{"matchLabels":{"kubernetes.io/metadata.name":"monitoring"}}}]"#,
                ),
                ("argocd.healthCheck.enabled", "true"),
                ("webhook.configurationAnnotations", r#"{"team":"platform"}"#),
            ],
        )
        .serving(PROMETHEUS_APIS),
        Case::new("single-replica", &[("replicaCount", "1")]),
        Case::new("no-crds", &[("crds.enabled", "false")]),
        Case::new(
            "bounds",
            &[
                (
                    "bounds.allowedAuthorities",
                    r#"["https://maa.example.com:8443"]"#,
                ),
                (
                    "bounds.allowedComplianceStatuses",
                    r#"["azure-compliant-uvm"]"#,
                ),
                ("bounds.requireGrant", "true"),
                ("bounds.namespaceSharePercent", "10"),
                ("userRoles.enabled", "false"),
            ],
        ),
    ]
}

/// Runs `helm template`; `Err` carries helm's stderr.
fn try_render(args: &[String]) -> Result<Vec<Value>, String> {
    let out = Command::new(helm())
        .arg("template")
        .arg(RELEASE)
        .arg(chart_dir())
        .args(["--namespace", NAMESPACE])
        .args(args)
        .output()
        .expect("helm runs");
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    let text = String::from_utf8(out.stdout).expect("helm prints UTF-8");
    let docs: Vec<Value> = serde_saphyr::from_multiple(&text)
        .unwrap_or_else(|e| panic!("helm template printed YAML that does not parse: {e}\n{text}"));
    Ok(docs.into_iter().filter(|d| !d.is_null()).collect())
}

fn render(case: &Case) -> Vec<Value> {
    try_render(&case.args())
        .unwrap_or_else(|e| panic!("helm template failed for case {}: {e}", case.name))
}

fn kinds(docs: &[Value]) -> BTreeSet<String> {
    docs.iter()
        .map(|d| d["kind"].as_str().unwrap_or("<no kind>").to_owned())
        .collect()
}

fn one<'a>(docs: &'a [Value], kind: &str) -> &'a Value {
    let found: Vec<&Value> = docs.iter().filter(|d| d["kind"] == kind).collect();
    assert_eq!(
        found.len(),
        1,
        "expected exactly one {kind}, found {}",
        found.len()
    );
    found[0]
}

fn deployment_env(docs: &[Value]) -> BTreeMap<String, Value> {
    let container = &one(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0];
    container["env"]
        .as_array()
        .expect("the operator container has env")
        .iter()
        .map(|e| (e["name"].as_str().expect("env name").to_owned(), e.clone()))
        .collect()
}

fn env_value(docs: &[Value], name: &str) -> String {
    deployment_env(docs)
        .get(name)
        .and_then(|e| e["value"].as_str())
        .unwrap_or_else(|| panic!("the Deployment sets no literal {name}"))
        .to_owned()
}

fn set(case: &Case, key: &'static str, value: &str) -> Case {
    let mut c = case.clone();
    c.set.push((key, value.to_owned()));
    c
}

// ---------------------------------------------------------------------------------------------
// lint and Kubernetes schemas
// ---------------------------------------------------------------------------------------------

#[test]
fn helm_lint_strict_passes_over_the_values_matrix() {
    // `helm lint` cannot be told which APIs a cluster serves: cases that need the Prometheus
    // Operator's are rendered and validated below instead.
    for case in matrix().into_iter().filter(|c| c.api_versions.is_empty()) {
        let out = Command::new(helm())
            .args(["lint", "--strict", "--namespace", NAMESPACE])
            .arg(chart_dir())
            .args(case.args())
            .output()
            .expect("helm runs");
        assert!(
            out.status.success(),
            "helm lint --strict failed for case {}:\n{}{}",
            case.name,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// Kinds whose schemas are not Kubernetes' own (they come with cert-manager or the Prometheus
/// Operator): kubernetes-validate cannot check them offline, so they are skipped, loudly.
const FOREIGN_KINDS: &[(&str, &str)] = &[
    ("cert-manager.io/v1", "Issuer"),
    ("cert-manager.io/v1", "Certificate"),
    ("monitoring.coreos.com/v1", "ServiceMonitor"),
    ("monitoring.coreos.com/v1", "PrometheusRule"),
];

#[test]
fn every_rendered_object_is_valid_for_kubernetes_1_33_and_1_34() {
    let validator = kubernetes_validate();
    let dir = tempfile::tempdir().expect("temp dir");
    let mut files = Vec::new();
    let mut skipped = BTreeSet::new();
    for case in matrix() {
        for (i, doc) in render(&case).iter().enumerate() {
            let api = doc["apiVersion"].as_str().unwrap_or_default();
            let kind = doc["kind"].as_str().unwrap_or_default();
            if FOREIGN_KINDS.contains(&(api, kind)) {
                skipped.insert(format!("{api} {kind}"));
                continue;
            }
            let path = dir.path().join(format!("{}-{i}-{kind}.json", case.name));
            std::fs::write(&path, serde_json::to_vec_pretty(doc).expect("json")).expect("write");
            files.push(path);
        }
    }
    for kind in &skipped {
        // Straight to stderr, past the test harness's capture: a skip must show in every run.
        use std::io::Write;
        let _ = writeln!(
            std::io::stderr(),
            "NOTE (chart test): {kind} objects are not validated offline (their schema is another \
             project's CRD)"
        );
    }
    assert!(
        files.len() > 20,
        "too few rendered objects to validate: {}",
        files.len()
    );
    for version in ["1.33.0", "1.34.0"] {
        let out = Command::new(&validator)
            .args(["--strict", "--quiet", "-k", version])
            .args(&files)
            .output()
            .expect("kubernetes-validate runs");
        assert!(
            out.status.success(),
            "kubernetes-validate --strict -k {version} refused rendered objects:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

// ---------------------------------------------------------------------------------------------
// What each configuration renders
// ---------------------------------------------------------------------------------------------

fn set_of(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

#[test]
fn defaults_render_the_whole_operator() {
    let docs = render(&Case::new("defaults", &[]));
    assert_eq!(
        kinds(&docs),
        set_of(&[
            "ClusterRole",
            "ClusterRoleBinding",
            "CustomResourceDefinition",
            "Deployment",
            "MutatingWebhookConfiguration",
            "PodDisruptionBudget",
            "Role",
            "RoleBinding",
            "Service",
            "ServiceAccount",
        ])
    );
    for doc in &docs {
        let namespaced = !matches!(
            doc["kind"].as_str(),
            Some(
                "ClusterRole"
                    | "ClusterRoleBinding"
                    | "CustomResourceDefinition"
                    | "MutatingWebhookConfiguration"
            )
        );
        if namespaced {
            assert_eq!(doc["metadata"]["namespace"], NAMESPACE, "{}", doc["kind"]);
        }
    }
}

#[test]
fn deployment_is_hardened_and_highly_available() {
    let docs = render(&Case::new("defaults", &[]));
    let deploy = one(&docs, "Deployment");
    assert_eq!(deploy["spec"]["replicas"], 2);
    let pod = &deploy["spec"]["template"]["spec"];
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(pod["securityContext"]["runAsUser"], 65532);
    assert_eq!(
        pod["securityContext"]["seccompProfile"]["type"],
        "RuntimeDefault"
    );
    let anti =
        &pod["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"][0];
    assert_eq!(
        anti["podAffinityTerm"]["topologyKey"],
        "kubernetes.io/hostname"
    );
    assert_eq!(
        anti["podAffinityTerm"]["labelSelector"]["matchLabels"],
        deploy["spec"]["selector"]["matchLabels"]
    );
    let c = &pod["containers"][0];
    assert_eq!(c["securityContext"]["readOnlyRootFilesystem"], true);
    assert_eq!(c["securityContext"]["allowPrivilegeEscalation"], false);
    assert_eq!(c["securityContext"]["capabilities"]["drop"], json!(["ALL"]));
    assert_eq!(
        c["securityContext"]["seccompProfile"]["type"],
        "RuntimeDefault"
    );
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(c["livenessProbe"]["httpGet"]["port"], "metrics");
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(c["readinessProbe"]["httpGet"]["port"], "metrics");
    for kind in ["requests", "limits"] {
        for res in ["cpu", "memory"] {
            assert!(
                c["resources"][kind][res].is_string(),
                "resources.{kind}.{res} missing"
            );
        }
    }
    let ports: BTreeMap<&str, &Value> = c["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["name"].as_str().unwrap(), &p["containerPort"]))
        .collect();
    assert_eq!(ports["webhook"], &json!(9443));
    assert_eq!(ports["metrics"], &json!(8080));
    assert_eq!(
        deploy["spec"]["template"]["metadata"]["labels"]["azure.workload.identity/use"],
        "true"
    );
    let ns = &deployment_env(&docs)["CKB_POD_NAMESPACE"];
    assert_eq!(
        ns["valueFrom"]["fieldRef"]["fieldPath"],
        "metadata.namespace"
    );

    let pdb = one(&docs, "PodDisruptionBudget");
    assert_eq!(pdb["spec"]["minAvailable"], 1);
    assert_eq!(pdb["spec"]["selector"], deploy["spec"]["selector"]);

    let svc = one(&docs, "Service");
    assert_eq!(
        svc["spec"]["selector"],
        deploy["spec"]["selector"]["matchLabels"]
    );
    let webhook_port = svc["spec"]["ports"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "webhook")
        .expect("a webhook port");
    assert_eq!(webhook_port["port"], 443);
    assert_eq!(webhook_port["targetPort"], "webhook");
}

#[test]
fn service_account_carries_the_workload_identity() {
    let case = Case::new(
        "wi",
        &[(
            "workloadIdentity.clientId",
            r#""0b5e3b2c-6d8a-4c3e-9f51-2a6f0c1d7e42""#,
        )],
    );
    let docs = render(&case);
    let sa = one(&docs, "ServiceAccount");
    assert_eq!(
        sa["metadata"]["annotations"]["azure.workload.identity/client-id"],
        "0b5e3b2c-6d8a-4c3e-9f51-2a6f0c1d7e42"
    );
    let deploy = one(&docs, "Deployment");
    assert_eq!(
        deploy["spec"]["template"]["spec"]["serviceAccountName"],
        sa["metadata"]["name"]
    );

    let off = render(&set(&case, "workloadIdentity.enabled", "false"));
    assert!(one(&off, "ServiceAccount")["metadata"]["annotations"].is_null());
    assert!(
        one(&off, "Deployment")["spec"]["template"]["metadata"]["labels"]["azure.workload.identity/use"]
            .is_null()
    );
}

/// The injecting webhook (`inject.ckb.dev`).
fn webhook(docs: &[Value]) -> &Value {
    webhook_named(docs, "inject.ckb.dev")
}

fn webhook_named<'a>(docs: &'a [Value], name: &str) -> &'a Value {
    let mwc = one(docs, "MutatingWebhookConfiguration");
    let hooks = mwc["webhooks"].as_array().expect("webhooks");
    assert_eq!(
        hooks.iter().map(|h| h["name"].clone()).collect::<Vec<_>>(),
        [json!("inject.ckb.dev"), json!("psa.ckb.dev")]
    );
    hooks
        .iter()
        .find(|h| h["name"] == name)
        .unwrap_or_else(|| panic!("no webhook {name}"))
}

/// The namespaces each webhook receives pods from: the opted-in ones (never kube-system nor the
/// operator's), split by whether their Pod Security level admits the sidecar's hostPath volume.
fn namespace_selector(psa_op: &str) -> Value {
    json!({
        "matchLabels": {"ckb.dev/injection": "enabled"},
        "matchExpressions": [
            {"key": "kubernetes.io/metadata.name", "operator": "NotIn",
             "values": ["kube-system", NAMESPACE]},
            {"key": "pod-security.kubernetes.io/enforce", "operator": psa_op,
             "values": ["baseline", "restricted"]}
        ]
    })
}

#[test]
fn pods_of_namespaces_refusing_the_sidecar_go_to_the_psa_webhook() {
    let docs = render(&Case::new("defaults", &[]));
    let inject = webhook(&docs);
    let psa = webhook_named(&docs, "psa.ckb.dev");
    assert_eq!(inject["namespaceSelector"], namespace_selector("NotIn"));
    assert_eq!(psa["namespaceSelector"], namespace_selector("In"));
    assert_eq!(
        psa["clientConfig"]["service"]["path"],
        "/mutate-psa-refused"
    );
    // Same pods, same service, same behaviour on failure: only the namespaces and path differ.
    for key in [
        "rules",
        "matchConditions",
        "failurePolicy",
        "timeoutSeconds",
        "sideEffects",
    ] {
        assert_eq!(inject[key], psa[key], "{key}");
    }
    assert_eq!(
        inject["clientConfig"]["service"]["name"],
        psa["clientConfig"]["service"]["name"]
    );
    // The operator serves that path.
    let server = std::fs::read_to_string(repo_root().join("operator/src/webhook/psa.rs")).unwrap();
    assert!(server.contains("pub const PATH: &str = \"/mutate-psa-refused\";"));
    let dev = render(&Case::new("dev", &[("devMode.enabled", "true")]));
    assert_eq!(
        webhook_named(&dev, "psa.ckb.dev")["clientConfig"],
        json!({"url": "https://127.0.0.1:9443/mutate-psa-refused"})
    );
}

#[test]
fn webhook_is_scoped_to_opted_in_namespaces_and_confidential_pods() {
    let docs = render(&Case::new("defaults", &[]));
    let mwc = one(&docs, "MutatingWebhookConfiguration");
    assert_eq!(
        mwc["metadata"]["name"],
        env_value(&docs, "CKB_WEBHOOK_CONFIG_NAME")
    );
    let hook = webhook(&docs);
    assert_eq!(
        hook["rules"],
        json!([{"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE"],
                "resources": ["pods"], "scope": "Namespaced"}])
    );
    assert_eq!(hook["namespaceSelector"], namespace_selector("NotIn"));
    assert_eq!(
        hook["matchConditions"],
        json!([{"name": "confidential-runtime-class",
                "expression": "has(object.spec.runtimeClassName) && object.spec.runtimeClassName in [\"kata-cc-isolation\"]"}])
    );
    assert_eq!(hook["sideEffects"], "None");
    assert_eq!(hook["admissionReviewVersions"], json!(["v1"]));
    assert_eq!(hook["timeoutSeconds"], 5);
    assert_eq!(hook["failurePolicy"], "Fail");
    assert_eq!(hook["reinvocationPolicy"], "IfNeeded");
    let svc = one(&docs, "Service");
    assert_eq!(
        hook["clientConfig"],
        json!({"service": {"name": svc["metadata"]["name"], "namespace": NAMESPACE,
                           "path": "/mutate", "port": 443}}),
        "no caBundle in the manifest: the operator fills it and helm upgrade must not reset it"
    );
    assert!(mwc["metadata"]["annotations"]["cert-manager.io/inject-ca-from"].is_null());
    // The operator's serving certificate names `<service>.<namespace>.svc`: the Service it is told
    // must be the one the API server calls.
    assert_eq!(
        env_value(&docs, "CKB_WEBHOOK_SERVICE"),
        svc["metadata"]["name"].as_str().unwrap()
    );
}

#[test]
fn webhook_values_reach_the_configuration() {
    let docs = render(&Case::new(
        "custom",
        &[
            ("webhook.failurePolicy", r#""Ignore""#),
            ("webhook.timeoutSeconds", "10"),
            (
                "webhook.confidentialRuntimeClasses",
                r#"["kata-cc-isolation","kata-cc"]"#,
            ),
            ("webhook.configurationName", r#""ckb-injector""#),
        ],
    ));
    let hook = webhook(&docs);
    assert_eq!(hook["failurePolicy"], "Ignore");
    assert_eq!(hook["timeoutSeconds"], 10);
    assert_eq!(
        hook["matchConditions"][0]["expression"],
        "has(object.spec.runtimeClassName) && object.spec.runtimeClassName in [\"kata-cc-isolation\",\"kata-cc\"]"
    );
    assert_eq!(
        one(&docs, "MutatingWebhookConfiguration")["metadata"]["name"],
        "ckb-injector"
    );
    assert_eq!(env_value(&docs, "CKB_WEBHOOK_CONFIG_NAME"), "ckb-injector");
    assert_eq!(
        env_value(&docs, "CKB_CONFIDENTIAL_RUNTIME_CLASSES"),
        "kata-cc-isolation,kata-cc"
    );
}

#[test]
fn cert_manager_issues_the_certificate_and_injects_the_ca() {
    let docs = render(&Case::new("cm", &[("certManager.enabled", "true")]));
    let cert = one(&docs, "Certificate");
    let issuer = one(&docs, "Issuer");
    assert_eq!(
        cert["spec"]["issuerRef"]["name"],
        issuer["metadata"]["name"]
    );
    assert_eq!(issuer["spec"], json!({"selfSigned": {}}));
    let svc = one(&docs, "Service");
    let svc_name = svc["metadata"]["name"].as_str().unwrap();
    assert!(
        cert["spec"]["dnsNames"]
            .as_array()
            .unwrap()
            .contains(&json!(format!("{svc_name}.{NAMESPACE}.svc")))
    );
    let mwc = one(&docs, "MutatingWebhookConfiguration");
    assert_eq!(
        mwc["metadata"]["annotations"]["cert-manager.io/inject-ca-from"],
        format!("{NAMESPACE}/{}", cert["metadata"]["name"].as_str().unwrap())
    );
    // The operator reads the mounted Secret from the directory it is told.
    let pod = &one(&docs, "Deployment")["spec"]["template"]["spec"];
    let volume = pod["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["secret"]["secretName"] == cert["spec"]["secretName"])
        .expect("the certificate Secret is mounted");
    let mount = pod["containers"][0]["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == volume["name"])
        .expect("and mounted into the operator");
    assert_eq!(mount["readOnly"], true);
    assert_eq!(mount["mountPath"], env_value(&docs, "CKB_WEBHOOK_CERT_DIR"));
    assert!(!deployment_env(&docs).contains_key("CKB_WEBHOOK_SECRET"));

    let own = render(&Case::new(
        "cm-issuer",
        &[
            ("certManager.enabled", "true"),
            (
                "certManager.issuerRef",
                r#"{"name":"corp-ca","kind":"ClusterIssuer"}"#,
            ),
        ],
    ));
    assert!(!kinds(&own).contains("Issuer"));
    assert_eq!(
        one(&own, "Certificate")["spec"]["issuerRef"],
        json!({"name": "corp-ca", "kind": "ClusterIssuer"})
    );
}

#[test]
fn dev_mode_renders_no_workload_and_points_the_webhook_at_the_local_process() {
    let docs = render(&Case::new("dev", &[("devMode.enabled", "true")]));
    assert_eq!(
        kinds(&docs),
        set_of(&[
            "ClusterRole",
            "ClusterRoleBinding",
            "CustomResourceDefinition",
            "MutatingWebhookConfiguration",
            "Role",
            "RoleBinding",
            "ServiceAccount",
        ])
    );
    let hook = webhook(&docs);
    assert_eq!(
        hook["clientConfig"],
        json!({"url": "https://127.0.0.1:9443/mutate"})
    );
    // Same scoping as in the cluster.
    assert_eq!(
        hook["namespaceSelector"],
        webhook(&render(&Case::new("d", &[])))["namespaceSelector"]
    );

    let with_ca = render(&Case::new(
        "dev-ca",
        &[
            ("devMode.enabled", "true"),
            ("devMode.webhookUrl", r#""https://127.0.0.1:40123/mutate""#),
            (
                "devMode.caBundle",
                r#""TFMwdExTMUNSVWRKVGlCRFJWSlVTVVpKUTBGVVJTMHRMUzB0Q2c=""#,
            ),
        ],
    ));
    assert_eq!(
        webhook(&with_ca)["clientConfig"],
        json!({"url": "https://127.0.0.1:40123/mutate",
               "caBundle": "TFMwdExTMUNSVWRKVGlCRFJWSlVTVVpKUTBGVVJTMHRMUzB0Q2c="})
    );
}

/// Paths where two JSON values differ; numbers compare by value (`0` equals `0.0`).
fn json_differences(a: &Value, b: &Value, path: &str) -> Vec<String> {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) if x.as_f64() == y.as_f64() => vec![],
        (Value::Object(x), Value::Object(y)) => {
            let keys: BTreeSet<&String> = x.keys().chain(y.keys()).collect();
            keys.into_iter()
                .flat_map(|k| {
                    json_differences(
                        x.get(k).unwrap_or(&Value::Null),
                        y.get(k).unwrap_or(&Value::Null),
                        &format!("{path}.{k}"),
                    )
                })
                .collect()
        }
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => x
            .iter()
            .zip(y)
            .enumerate()
            .flat_map(|(i, (u, v))| json_differences(u, v, &format!("{path}[{i}]")))
            .collect(),
        _ if a == b => vec![],
        _ => vec![format!("{path}: {a} != {b}")],
    }
}

#[test]
fn crd_is_the_generated_one_and_kept_on_uninstall() {
    let docs = render(&Case::new("defaults", &[]));
    let crd = crd_named(&docs, "confidentialkeybindings.ckb.dev");
    assert_eq!(
        crd["metadata"]["annotations"]["helm.sh/resource-policy"],
        "keep"
    );
    let generated = serde_json::to_value(ckb_operator::crds::crd()).expect("CRD serializes");
    assert_eq!(crd["metadata"]["name"], generated["metadata"]["name"]);
    // helm re-serializes the file: compare by meaning (a YAML `0.0` and `0` are the same bound).
    let differences = json_differences(&crd["spec"], &generated["spec"], "spec");
    assert!(
        differences.is_empty(),
        "the chart's CRD differs from the Rust types at {differences:#?}: regenerate \
         charts/ckb-operator/files/confidentialkeybindings.ckb.dev.yaml with `ckb-operator crd`"
    );

    let not_kept = render(&Case::new("nokeep", &[("crds.keep", "false")]));
    let crd = crd_named(&not_kept, "confidentialkeybindings.ckb.dev");
    assert!(crd["metadata"]["annotations"]["helm.sh/resource-policy"].is_null());

    let none = render(&Case::new("nocrd", &[("crds.enabled", "false")]));
    assert!(!kinds(&none).contains("CustomResourceDefinition"));
}

fn crd_named<'a>(docs: &'a [Value], name: &str) -> &'a Value {
    let found: Vec<&Value> = docs
        .iter()
        .filter(|d| d["kind"] == "CustomResourceDefinition" && d["metadata"]["name"] == name)
        .collect();
    assert_eq!(found.len(), 1, "expected exactly one CRD {name}");
    found[0]
}

#[test]
fn grant_crd_is_the_generated_one_cluster_scoped_and_kept() {
    let docs = render(&Case::new("defaults", &[]));
    let crd = crd_named(&docs, "confidentialkeygrants.ckb.dev");
    assert_eq!(crd["spec"]["scope"], "Cluster");
    assert_eq!(
        crd["metadata"]["annotations"]["helm.sh/resource-policy"],
        "keep"
    );
    let generated = serde_json::to_value(ckb_operator::crds::grant::crd()).expect("CRD serializes");
    let differences = json_differences(&crd["spec"], &generated["spec"], "spec");
    assert!(
        differences.is_empty(),
        "the chart's grant CRD differs from the Rust types at {differences:#?}: regenerate \
         charts/ckb-operator/files/confidentialkeygrants.ckb.dev.yaml with \
         `ckb-operator crd --kind grant`"
    );
    let none = render(&Case::new("nocrd", &[("crds.enabled", "false")]));
    assert!(!kinds(&none).contains("CustomResourceDefinition"));
}

/// (verb, resource) pairs a user role grants on `ckb.dev`.
fn user_role_grants(role: &Value) -> BTreeSet<(String, String)> {
    let mut out = BTreeSet::new();
    for rule in role["rules"].as_array().expect("rules") {
        assert_eq!(rule["apiGroups"], json!(["ckb.dev"]), "{rule}");
        for r in rule["resources"].as_array().unwrap() {
            for v in rule["verbs"].as_array().unwrap() {
                out.insert((
                    v.as_str().unwrap().to_owned(),
                    r.as_str().unwrap().to_owned(),
                ));
            }
        }
    }
    out
}

#[test]
fn user_roles_let_view_read_and_only_admin_write_bindings() {
    let docs = render(&Case::new("defaults", &[]));
    let roles: Vec<&Value> = docs
        .iter()
        .filter(|d| d["kind"] == "ClusterRole" && is_user_role(d))
        .collect();
    assert_eq!(roles.len(), 2, "a view and an admin role");
    let label = |r: &Value, l: &str| r["metadata"]["labels"][l] == "true";
    const VIEW: &str = "rbac.authorization.k8s.io/aggregate-to-view";
    const EDIT: &str = "rbac.authorization.k8s.io/aggregate-to-edit";
    const ADMIN: &str = "rbac.authorization.k8s.io/aggregate-to-admin";
    let view = roles
        .iter()
        .find(|r| label(r, VIEW))
        .expect("a role aggregated to view");
    let admin = roles
        .iter()
        .find(|r| label(r, ADMIN))
        .expect("a role aggregated to admin");
    assert_eq!(view["metadata"]["name"], "ckb-operator-view");
    assert_eq!(admin["metadata"]["name"], "ckb-operator-admin");
    const WRITES: [&str; 5] = ["create", "update", "patch", "delete", "deletecollection"];
    // view reads, never writes.
    for (verb, resource) in user_role_grants(view) {
        assert!(
            ["get", "list", "watch"].contains(&verb.as_str()),
            "view grants {verb} {resource}"
        );
    }
    assert!(user_role_grants(view).contains(&("list".into(), "confidentialkeybindings".into())));
    // admin writes bindings, and reaches neither edit nor view (edit must not write bindings).
    for verb in WRITES {
        assert!(
            user_role_grants(admin).contains(&(verb.into(), "confidentialkeybindings".into())),
            "admin cannot {verb} bindings"
        );
    }
    for role in &roles {
        assert!(
            !label(role, EDIT),
            "{} aggregates to edit",
            role["metadata"]["name"]
        );
        let grants = user_role_grants(role);
        if label(role, VIEW) {
            assert!(grants.iter().all(|(v, _)| !WRITES.contains(&v.as_str())));
        }
        // Grants are for cluster admins only, and status is the operator's.
        assert!(
            grants.iter().all(|(_, r)| r != "confidentialkeygrants"),
            "{grants:?}"
        );
        assert!(
            grants.iter().all(
                |(v, r)| r != "confidentialkeybindings/status" || !WRITES.contains(&v.as_str())
            ),
            "{grants:?}"
        );
    }
    let off = render(&Case::new("noroles", &[("userRoles.enabled", "false")]));
    assert!(!off.iter().any(is_user_role));
}

#[test]
fn bounds_values_reach_the_operators_environment() {
    let docs = render(&Case::new("defaults", &[]));
    assert_eq!(env_value(&docs, "CKB_ALLOW_DEBUGGABLE"), "false");
    assert_eq!(env_value(&docs, "CKB_REQUIRE_GRANT"), "false");
    assert_eq!(env_value(&docs, "CKB_KV_NAMESPACE_SHARE"), "50");
    assert!(!deployment_env(&docs).contains_key("CKB_ALLOWED_AUTHORITIES"));
    let docs = render(&Case::new(
        "bounds",
        &[
            (
                "bounds.allowedAuthorities",
                r#"["https://maa.example.com","https://sharedeus.eus.attest.azure.net"]"#,
            ),
            (
                "bounds.allowedComplianceStatuses",
                r#"["azure-compliant-uvm"]"#,
            ),
            ("bounds.allowDebuggable", "true"),
            ("bounds.requireGrant", "true"),
            ("bounds.namespaceSharePercent", "25"),
        ],
    ));
    assert_eq!(
        env_value(&docs, "CKB_ALLOWED_AUTHORITIES"),
        "https://maa.example.com,https://sharedeus.eus.attest.azure.net"
    );
    assert_eq!(
        env_value(&docs, "CKB_ALLOWED_COMPLIANCE_STATUSES"),
        "azure-compliant-uvm"
    );
    assert_eq!(env_value(&docs, "CKB_ALLOW_DEBUGGABLE"), "true");
    assert_eq!(env_value(&docs, "CKB_REQUIRE_GRANT"), "true");
    assert_eq!(env_value(&docs, "CKB_KV_NAMESPACE_SHARE"), "25");
    let why = refused(&[("bounds.namespaceSharePercent", "0")]);
    assert!(why.contains("namespaceSharePercent"), "{why}");
    let why = refused(&[("bounds.allowedAuthorities", r#"["http://maa.example.com"]"#)]);
    assert!(why.contains("allowedAuthorities"), "{why}");
}

#[test]
fn service_monitor_scrapes_the_metrics_port() {
    let docs = render(
        &Case::new(
            "sm",
            &[
                ("metrics.serviceMonitor.enabled", "true"),
                ("metrics.serviceMonitor.labels", r#"{"release":"prom"}"#),
            ],
        )
        .serving(PROMETHEUS_APIS),
    );
    let sm = one(&docs, "ServiceMonitor");
    assert_eq!(sm["metadata"]["labels"]["release"], "prom");
    assert_eq!(sm["spec"]["endpoints"][0]["port"], "metrics");
    assert_eq!(sm["spec"]["endpoints"][0]["path"], "/metrics");
    assert_eq!(
        sm["spec"]["selector"]["matchLabels"],
        one(&docs, "Service")["spec"]["selector"]
    );
    assert!(!kinds(&render(&Case::new("d", &[]))).contains("ServiceMonitor"));
}

#[test]
fn prometheus_objects_need_their_crds_and_say_so() {
    for (value, kind) in [
        ("metrics.serviceMonitor.enabled", "ServiceMonitor"),
        ("metrics.prometheusRule.enabled", "PrometheusRule"),
    ] {
        let api = format!("monitoring.coreos.com/v1/{kind}");
        let message = refused(&[(value, "true")]);
        for needle in [value, api.as_str(), "CRD", "--api-versions"] {
            assert!(
                message.contains(needle),
                "without the {kind} CRD, helm should say {needle:?}; it said:\n{message}"
            );
        }
        let docs = render(&Case::new("crd-present", &[(value, "true")]).serving(PROMETHEUS_APIS));
        assert!(kinds(&docs).contains(kind), "{kind} with its CRD present");
        // Off (the default) renders neither, whatever the cluster serves.
        let off = render(&Case::new("off", &[]).serving(PROMETHEUS_APIS));
        assert!(!kinds(&off).contains(kind), "{kind} is off by default");
    }
}

#[test]
fn prometheus_rule_alerts_on_bindings_denials_and_throttling() {
    let docs = render(
        &Case::new(
            "rules",
            &[
                ("metrics.prometheusRule.enabled", "true"),
                ("metrics.prometheusRule.bindingNotReadyFor", r#""20m""#),
                (
                    "metrics.prometheusRule.ruleLabels",
                    r#"{"team":"platform"}"#,
                ),
            ],
        )
        .serving(PROMETHEUS_APIS),
    );
    let rule = one(&docs, "PrometheusRule");
    let rules = rule["spec"]["groups"][0]["rules"]
        .as_array()
        .expect("rules");
    let by = |name: &str| {
        rules
            .iter()
            .find(|r| r["alert"] == name)
            .unwrap_or_else(|| panic!("no alert {name}"))
    };
    let not_ready = by("CkbBindingNotReady");
    assert_eq!(not_ready["for"], "20m");
    assert!(
        not_ready["expr"]
            .as_str()
            .unwrap()
            .contains("ckb_binding_ready")
    );
    assert!(
        by("CkbWebhookDenials")["expr"]
            .as_str()
            .unwrap()
            .contains(r#"ckb_admissions_total{result="denied"}"#)
    );
    assert!(
        by("CkbKeyVaultThrottled")["expr"]
            .as_str()
            .unwrap()
            .contains(r#"ckb_keyvault_requests_total{outcome="throttled"}"#)
    );
    for r in rules {
        assert_eq!(r["labels"]["team"], "platform", "{r}");
        assert_eq!(r["labels"]["severity"], "warning", "{r}");
        // The alert templates reach Prometheus unexpanded.
        assert!(
            r["annotations"]["summary"].as_str().unwrap().contains("{{")
                || r["alert"] != "CkbBindingNotReady",
            "{r}"
        );
    }
    // The metric names the rules use are the ones the operator registers.
    let registered = registered_metrics();
    for metric in [
        "ckb_binding_ready",
        "ckb_admissions",
        "ckb_keyvault_requests",
    ] {
        assert!(
            registered.contains(&format!("# TYPE {metric} ")),
            "the operator does not register {metric}:\n{registered}"
        );
    }
}

/// The exposition text of the metrics `ckb-operator run` registers, each with one sample (a
/// family without any is not shown).
fn registered_metrics() -> String {
    use ckb_operator::telemetry::{BindingLabels, BindingState, ControllerMetrics};
    let mut registry = ckb_operator::telemetry::registry();
    let controller = ControllerMetrics::register(&mut registry);
    controller.set_binding_states([BindingState {
        labels: BindingLabels {
            namespace: "ns".into(),
            name: "b".into(),
            reason: "Ready".into(),
        },
        ready: true,
        uninjected_pods: 0,
    }]);
    let webhook = ckb_operator::webhook::WebhookMetrics::default();
    webhook.register(&mut registry);
    webhook.observe(ckb_operator::webhook::review::Outcome::Denied, 0.0);
    let keyvault = ckb_operator::keyvault::KeyVaultMetrics::default();
    keyvault.register(&mut registry);
    keyvault.requests_count("get", "ok");
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).expect("encoding");
    text
}

#[test]
fn webhook_configuration_opts_out_of_the_aks_admissions_enforcer_by_default() {
    let docs = render(&Case::new("d", &[]));
    assert_eq!(
        webhook_configuration(&docs)["metadata"]["annotations"]["admissions.enforcer/disabled"],
        "true"
    );
    // Removable (Helm drops a key set to null), and merged with cert-manager's own annotation.
    let none = render(&Case::new(
        "no-annotations",
        &[(
            "webhook.configurationAnnotations",
            r#"{"admissions.enforcer/disabled":null}"#,
        )],
    ));
    assert!(webhook_configuration(&none)["metadata"]["annotations"].is_null());
    let both = render(&Case::new(
        "cm",
        &[
            ("certManager.enabled", "true"),
            ("webhook.configurationAnnotations", r#"{"a.example/b":"c"}"#),
        ],
    ));
    let ann = &webhook_configuration(&both)["metadata"]["annotations"];
    assert_eq!(ann["a.example/b"], "c");
    assert_eq!(ann["admissions.enforcer/disabled"], "true");
    assert_eq!(
        ann["cert-manager.io/inject-ca-from"],
        format!("{NAMESPACE}/{RELEASE}-webhook")
    );
}

fn webhook_configuration(docs: &[Value]) -> &Value {
    one(docs, "MutatingWebhookConfiguration")
}

#[test]
fn network_policy_admits_only_the_webhook_and_metrics_ports() {
    assert!(!kinds(&render(&Case::new("d", &[]))).contains("NetworkPolicy"));
    let docs = render(&Case::new(
        "np",
        &[
            ("networkPolicy.enabled", "true"),
            (
                "networkPolicy.metricsFrom",
                r#"[{"namespaceSelector":{"matchLabels":{"kubernetes.io/metadata.name":"monitoring"}}}]"#,
            ),
        ],
    ));
    let np = one(&docs, "NetworkPolicy");
    assert_eq!(
        np["spec"]["podSelector"]["matchLabels"],
        one(&docs, "Deployment")["spec"]["selector"]["matchLabels"]
    );
    assert_eq!(np["spec"]["policyTypes"], serde_json::json!(["Ingress"]));
    let rules = np["spec"]["ingress"].as_array().expect("ingress");
    assert_eq!(rules.len(), 2);
    let ports: Vec<&Value> = rules.iter().map(|r| &r["ports"][0]["port"]).collect();
    let container = &one(&docs, "Deployment")["spec"]["template"]["spec"]["containers"][0];
    let port_of = |name: &str| {
        container["ports"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == name)
            .map(|p| p["containerPort"].clone())
            .unwrap()
    };
    assert_eq!(*ports[0], port_of("webhook"));
    assert_eq!(*ports[1], port_of("metrics"));
    // The API server is outside the pod network: the webhook port admits any source.
    assert!(rules[0]["from"].is_null());
    assert_eq!(
        rules[1]["from"][0]["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"],
        "monitoring"
    );
    // Dev mode runs no pods to protect.
    let dev = render(&Case::new(
        "np-dev",
        &[
            ("networkPolicy.enabled", "true"),
            ("devMode.enabled", "true"),
        ],
    ));
    assert!(!kinds(&dev).contains("NetworkPolicy"));
}

#[test]
fn argo_cd_health_check_renders_the_shipped_script() {
    let docs = render(&Case::new(
        "argo",
        &[("argocd.healthCheck.enabled", "true")],
    ));
    let cm = docs
        .iter()
        .find(|d| {
            d["kind"] == "ConfigMap" && d["metadata"]["name"] == format!("{RELEASE}-argocd-health")
        })
        .expect("the Argo CD health ConfigMap");
    let script = cm["data"]["resource.customizations.health.ckb.dev_ConfidentialKeyBinding"]
        .as_str()
        .expect("the argocd-cm key");
    let shipped =
        std::fs::read_to_string(repo_root().join("charts/ckb-operator/files/argocd-health.lua"))
            .unwrap();
    assert_eq!(
        script.trim_end(),
        shipped.trim_end(),
        "the chart renders another script than its files/argocd-health.lua"
    );
    assert!(!kinds(&render(&Case::new("d", &[]))).contains("ConfigMap"));
}

#[test]
fn single_replica_has_no_pod_disruption_budget() {
    // minAvailable 1 of 1 would make every node drain hang.
    let docs = render(&Case::new("one", &[("replicaCount", "1")]));
    assert!(!kinds(&docs).contains("PodDisruptionBudget"));
}

// ---------------------------------------------------------------------------------------------
// Invalid values
// ---------------------------------------------------------------------------------------------

fn refused(set: &[(&'static str, &str)]) -> String {
    let case = Case::new("invalid", set);
    match try_render(&case.args()) {
        Ok(_) => panic!("helm accepted invalid values {set:?}"),
        Err(e) => e,
    }
}

/// Values to set, and what helm's refusal must say.
type Refusal<'a> = (&'a [(&'a str, &'a str)], &'a [&'a str]);

// Long by design: one table of invalid values, each with the words helm's refusal must contain.
#[test]
fn invalid_values_are_refused_with_a_clear_message() {
    let cases: &[Refusal] = &[
        (&[("replicas", "2")], &["additional properties", "replicas"]),
        (
            &[("webhook.failurePolicyy", r#""Fail""#)],
            &["/webhook", "failurePolicyy"],
        ),
        (
            &[("webhook.failurePolicy", r#""Sometimes""#)],
            &["/webhook/failurePolicy", "Fail", "Ignore"],
        ),
        (
            &[("webhook.timeoutSeconds", "60")],
            &["/webhook/timeoutSeconds", "30"],
        ),
        (
            &[("webhook.confidentialRuntimeClasses", "[]")],
            &["/webhook/confidentialRuntimeClasses"],
        ),
        (
            &[(
                "keyVault.allowedVaults",
                r#"["http://contoso.vault.azure.net"]"#,
            )],
            &["/keyVault/allowedVaults/0"],
        ),
        (
            &[("keyVault.credential", r#""password""#)],
            &["/keyVault/credential", "workload-identity"],
        ),
        (
            &[("workloadIdentity.clientId", r#""not-a-guid""#)],
            &["/workloadIdentity/clientId"],
        ),
        (
            &[("logging.level", r#""info; rm -rf""#)],
            &["/logging/level"],
        ),
        (
            &[("logging.format", r#""xml""#)],
            &["/logging/format", "json", "text"],
        ),
        (
            &[("controller.resyncPeriod", r#""ten minutes""#)],
            &["/controller/resyncPeriod"],
        ),
        (&[("replicaCount", "0")], &["/replicaCount"]),
        (
            &[(
                "metrics.prometheusRule.bindingNotReadyFor",
                r#""15 minutes""#,
            )],
            &["/metrics/prometheusRule/bindingNotReadyFor"],
        ),
        (
            &[(
                "networkPolicy.metricsFrom",
                r#"[{"namespace":"monitoring"}]"#,
            )],
            &["/networkPolicy/metricsFrom/0", "namespace"],
        ),
        (
            &[("webhook.configurationAnnotations", r#"{"a":1}"#)],
            &["/webhook/configurationAnnotations/a"],
        ),
        (
            &[("devMode.webhookUrl", r#""http://127.0.0.1:9443/mutate""#)],
            &["/devMode/webhookUrl"],
        ),
        (
            &[("certManager.issuerRef", r#"{"kind":"Issuer"}"#)],
            &["/certManager/issuerRef", "name"],
        ),
        (
            &[("devMode.enabled", "true"), ("certManager.enabled", "true")],
            &["devMode.enabled and certManager.enabled cannot both be true"],
        ),
        (
            &[("podDisruptionBudget.minAvailable", "2")],
            &["podDisruptionBudget.minAvailable (2) must be below replicaCount (2)"],
        ),
    ];
    for (set, expected) in cases {
        let message = refused(set);
        for needle in *expected {
            assert!(
                message.contains(needle),
                "refusing {set:?}, helm should say {needle:?}; it said:\n{message}"
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// RBAC against the operator's API calls (operator/src/rbac.rs)
// ---------------------------------------------------------------------------------------------

/// One grant, flattened: (apiGroup, resource, verb, where, resourceName).
type Grant = (String, String, String, &'static str, Option<String>);

fn rendered_grants(docs: &[Value]) -> BTreeSet<Grant> {
    let mut grants = BTreeSet::new();
    for doc in docs {
        let place = match doc["kind"].as_str() {
            Some("ClusterRole") if is_user_role(doc) => continue,
            Some("ClusterRole") => "cluster",
            Some("Role") => {
                assert_eq!(
                    doc["metadata"]["namespace"], NAMESPACE,
                    "a Role outside the release namespace"
                );
                "own-namespace"
            }
            _ => continue,
        };
        for rule in doc["rules"].as_array().expect("rules") {
            assert!(
                rule.get("nonResourceURLs").is_none(),
                "non-resource URL granted: {rule}"
            );
            let strings = |field: &str| -> Vec<String> {
                rule[field]
                    .as_array()
                    .map(|a| a.iter().map(|v| v.as_str().unwrap().to_owned()).collect())
                    .unwrap_or_default()
            };
            let names: Vec<Option<String>> = match strings("resourceNames") {
                n if n.is_empty() => vec![None],
                n => n.into_iter().map(Some).collect(),
            };
            for group in strings("apiGroups") {
                for resource in strings("resources") {
                    for verb in strings("verbs") {
                        for name in &names {
                            grants.insert((
                                group.clone(),
                                resource.clone(),
                                verb.clone(),
                                place,
                                name.clone(),
                            ));
                        }
                    }
                }
            }
        }
    }
    grants
}

/// Whether a ClusterRole is one of the roles for the cluster's users (aggregated into a built-in
/// role), not the operator's own.
fn is_user_role(doc: &Value) -> bool {
    doc["metadata"]["labels"].as_object().is_some_and(|l| {
        l.keys()
            .any(|k| k.starts_with("rbac.authorization.k8s.io/aggregate-to-"))
    })
}

/// The grants the table in rbac.rs asks for, with configured names taken from `names`.
fn expected_grants(self_managed_tls: bool, names: &dyn Fn(&str) -> String) -> BTreeSet<Grant> {
    let mut grants = BTreeSet::new();
    for row in API_ACCESS {
        if row.needed == Needed::SelfManagedTls && !self_managed_tls {
            continue;
        }
        let resolve = |n: &ObjectName| match n {
            ObjectName::Fixed(s) => s.to_string(),
            ObjectName::FromEnv(var) => names(var),
        };
        let (place, resource_names): (&'static str, Vec<Option<String>>) = match row.scope {
            Scope::AllNamespaces => ("cluster", vec![None]),
            Scope::ClusterNamed(ns) => ("cluster", ns.iter().map(|n| Some(resolve(n))).collect()),
            Scope::OwnNamespace => ("own-namespace", vec![None]),
            Scope::OwnNamespaceNamed(ns) => (
                "own-namespace",
                ns.iter().map(|n| Some(resolve(n))).collect(),
            ),
        };
        for verb in row.verbs {
            for name in &resource_names {
                grants.insert((
                    row.group.to_owned(),
                    row.rbac_resource(),
                    verb.to_string(),
                    place,
                    name.clone(),
                ));
            }
        }
    }
    grants
}

fn assert_same_grants(case: &str, rendered: &BTreeSet<Grant>, expected: &BTreeSet<Grant>) {
    let extra: Vec<&Grant> = rendered.difference(expected).collect();
    let missing: Vec<&Grant> = expected.difference(rendered).collect();
    assert!(
        extra.is_empty() && missing.is_empty(),
        "case {case}: the chart's RBAC differs from operator/src/rbac.rs\n  granted but never used: {extra:#?}\n  \
         used but not granted: {missing:#?}"
    );
}

fn bound_to_the_service_account(docs: &[Value]) {
    let sa_name = match docs.iter().find(|d| d["kind"] == "ServiceAccount") {
        Some(sa) => sa["metadata"]["name"].clone(),
        None => json!(RELEASE),
    };
    for (binding, role) in [
        ("ClusterRoleBinding", "ClusterRole"),
        ("RoleBinding", "Role"),
    ] {
        let b = one(docs, binding);
        assert_eq!(b["roleRef"]["kind"], role);
        // The operator's own role (the users' aggregated roles are bound by cluster admins).
        let own: Vec<Value> = docs.iter().filter(|d| !is_user_role(d)).cloned().collect();
        assert_eq!(b["roleRef"]["name"], one(&own, role)["metadata"]["name"]);
        assert_eq!(
            b["subjects"],
            json!([{"kind": "ServiceAccount", "name": sa_name, "namespace": NAMESPACE}])
        );
    }
}

#[test]
fn rbac_grants_exactly_the_calls_the_operator_makes() {
    // In the cluster, with the operator's own certificates: names come from the Deployment's env,
    // so the rule and the operator's configuration cannot drift apart.
    for case in [
        Case::new("defaults", &[]),
        Case::new(
            "renamed",
            &[
                ("webhook.configurationName", r#""ckb-injector""#),
                ("fullnameOverride", r#""ckb""#),
            ],
        ),
    ] {
        let docs = render(&case);
        let expected = expected_grants(true, &|var| env_value(&docs, var));
        assert_same_grants(case.name, &rendered_grants(&docs), &expected);
        bound_to_the_service_account(&docs);
    }

    // With cert-manager the operator neither keeps a Secret nor patches the webhook configuration.
    let docs = render(&Case::new(
        "cert-manager",
        &[("certManager.enabled", "true")],
    ));
    let expected = expected_grants(false, &|var| env_value(&docs, var));
    assert_same_grants("cert-manager", &rendered_grants(&docs), &expected);
    let rules = rendered_grants(&docs);
    assert!(
        !rules.iter().any(|g| g.1 == "secrets"),
        "no Secret access with cert-manager"
    );

    // Development mode: the local process gets the same RBAC as the in-cluster Deployment.
    let dev = render(&Case::new("dev", &[("devMode.enabled", "true")]));
    let cluster = render(&Case::new("defaults", &[]));
    assert_eq!(rendered_grants(&dev), rendered_grants(&cluster));
    bound_to_the_service_account(&dev);
}

#[test]
fn rbac_test_catches_a_difference() {
    // The comparison itself: a grant too many or too few is reported.
    let docs = render(&Case::new("defaults", &[]));
    let expected = expected_grants(true, &|var| env_value(&docs, var));
    let mut rendered = rendered_grants(&docs);
    rendered.insert(("".into(), "secrets".into(), "list".into(), "cluster", None));
    assert!(std::panic::catch_unwind(|| assert_same_grants("x", &rendered, &expected)).is_err());
    let mut fewer = rendered_grants(&docs);
    let first = fewer.iter().next().cloned().unwrap();
    fewer.remove(&first);
    assert!(std::panic::catch_unwind(|| assert_same_grants("x", &fewer, &expected)).is_err());
}

// ---------------------------------------------------------------------------------------------
// Environment variables against the binary's flags
// ---------------------------------------------------------------------------------------------

/// The `CKB_*` variables `ckb-operator run` reads (each flag's env fallback), from clap itself.
fn run_env_vars() -> BTreeSet<String> {
    let cli = ckb_operator::cli::Cli::command();
    let run = cli.find_subcommand("run").expect("a `run` subcommand");
    run.get_arguments()
        .filter_map(|a| a.get_env())
        .map(|e| e.to_string_lossy().into_owned())
        .collect()
}

#[test]
fn chart_sets_only_env_vars_the_operator_knows() {
    let known = run_env_vars();
    for case in matrix().into_iter().filter(|c| c.name != "dev-mode") {
        let docs = render(&case);
        let unknown: Vec<String> = deployment_env(&docs)
            .into_keys()
            .filter(|name| !known.contains(name))
            .collect();
        assert!(
            unknown.is_empty(),
            "case {}: the chart sets {unknown:?}, which `ckb-operator run` does not read \
             (it reads: {known:?})",
            case.name
        );
    }
    for row in API_ACCESS {
        if let Scope::ClusterNamed(ns) | Scope::OwnNamespaceNamed(ns) = row.scope {
            for n in ns {
                if let ObjectName::FromEnv(var) = n {
                    assert!(
                        known.contains(*var),
                        "rbac.rs names {var}, which `run` does not read"
                    );
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// values.yaml documentation, schema and README
// ---------------------------------------------------------------------------------------------

/// One documented value: its dotted path and the text of its `# --` comment.
#[derive(Debug)]
struct DocRow {
    path: String,
    doc: String,
}

/// Reads the `# -- text` comment (continued by further `#` lines) above each key of values.yaml.
fn documented_values(text: &str) -> Vec<DocRow> {
    let mut rows = Vec::new();
    let mut stack: Vec<(usize, String)> = Vec::new();
    let mut pending: Option<String> = None;
    for line in text.lines() {
        let trimmed = line.trim_start();
        let indent = line.len() - trimmed.len();
        if let Some(rest) = trimmed.strip_prefix("# --") {
            pending = Some(rest.trim().to_owned());
            continue;
        }
        if let Some(rest) = trimmed.strip_prefix('#') {
            if let Some(doc) = pending.as_mut() {
                doc.push(' ');
                doc.push_str(rest.trim());
            }
            continue;
        }
        if trimmed.is_empty() {
            pending = None;
            continue;
        }
        if trimmed.starts_with('-') {
            continue; // a list item of the value above
        }
        let Some((key, _)) = trimmed.split_once(':') else {
            continue;
        };
        while stack.last().is_some_and(|(i, _)| *i >= indent) {
            stack.pop();
        }
        let path: Vec<&str> = stack.iter().map(|(_, k)| k.as_str()).chain([key]).collect();
        let path = path.join(".");
        if let Some(doc) = pending.take() {
            rows.push(DocRow { path, doc });
        }
        stack.push((indent, key.to_owned()));
    }
    rows
}

fn values() -> Value {
    let text = std::fs::read_to_string(chart_dir().join("values.yaml")).expect("values.yaml");
    serde_saphyr::from_str(&text).expect("values.yaml parses")
}

fn at<'a>(v: &'a Value, path: &str) -> &'a Value {
    path.split('.').fold(v, |v, k| &v[k])
}

/// Leaves of the values tree: scalars, lists and empty maps.
fn leaves(v: &Value, prefix: &str, out: &mut Vec<String>) {
    match v {
        Value::Object(m) if !m.is_empty() => {
            for (k, v) in m {
                let p = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                leaves(v, &p, out);
            }
        }
        _ => out.push(prefix.to_owned()),
    }
}

#[test]
fn every_value_is_documented_and_in_the_schema() {
    let text = std::fs::read_to_string(chart_dir().join("values.yaml")).expect("values.yaml");
    let rows = documented_values(&text);
    let documented: BTreeSet<&str> = rows.iter().map(|r| r.path.as_str()).collect();
    let mut all = Vec::new();
    leaves(&values(), "", &mut all);
    for leaf in &all {
        let covered = documented
            .iter()
            .any(|d| leaf == d || leaf.starts_with(&format!("{d}.")));
        assert!(covered, "values.yaml: `{leaf}` has no `# --` comment");
    }
    for row in &rows {
        assert!(
            !row.doc.is_empty(),
            "values.yaml: `{}` has an empty `# --` comment",
            row.path
        );
    }

    // Every key of the schema is a key of values.yaml (the schema refuses keys values.yaml lacks).
    let schema: Value = serde_json::from_str(
        &std::fs::read_to_string(chart_dir().join("values.schema.json")).expect("schema"),
    )
    .expect("schema is JSON");
    fn schema_keys(s: &Value, prefix: &str, out: &mut Vec<String>) {
        if let Some(props) = s["properties"].as_object() {
            assert_eq!(
                s["additionalProperties"], false,
                "values.schema.json: `{prefix}` accepts unknown keys"
            );
            for (k, v) in props {
                let p = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                out.push(p.clone());
                schema_keys(v, &p, out);
            }
        }
    }
    let mut keys = Vec::new();
    schema_keys(&schema, "", &mut keys);
    let values = values();
    for key in keys {
        // `global` is Helm's; resources.{requests,limits} and issuerRef fields are optional maps.
        if key == "global"
            || key.starts_with("resources.")
            || key.starts_with("certManager.issuerRef.")
        {
            continue;
        }
        assert!(
            !at(&values, &key).is_null(),
            "values.schema.json has `{key}`, values.yaml does not"
        );
    }
}

const README_BEGIN: &str =
    "<!-- values:begin (generated from values.yaml by operator/tests/chart.rs) -->";
const README_END: &str = "<!-- values:end -->";

fn values_table() -> String {
    let text = std::fs::read_to_string(chart_dir().join("values.yaml")).expect("values.yaml");
    let values = values();
    let mut out = String::from("| Key | Type | Default | Description |\n|---|---|---|---|\n");
    for row in documented_values(&text) {
        let v = at(&values, &row.path);
        let kind = match v {
            Value::Null => "null",
            Value::Bool(_) => "bool",
            Value::Number(_) => "int",
            Value::String(_) => "string",
            Value::Array(_) => "list",
            Value::Object(_) => "object",
        };
        let default = match v {
            Value::String(s) if s.is_empty() => "`\"\"`".to_owned(),
            Value::String(s) => format!("`{s}`"),
            other => format!("`{}`", serde_json::to_string(other).unwrap()),
        };
        out.push_str(&format!(
            "| `{}` | {kind} | {} | {} |\n",
            row.path,
            default.replace('|', "\\|"),
            row.doc.replace('|', "\\|")
        ));
    }
    out
}

#[test]
fn readme_values_table_matches_values_yaml() {
    let path = chart_dir().join("README.md");
    let readme = std::fs::read_to_string(&path).expect("charts/ckb-operator/README.md");
    let (head, rest) = readme
        .split_once(README_BEGIN)
        .expect("README has the begin marker");
    let (_, tail) = rest
        .split_once(README_END)
        .expect("README has the end marker");
    let fresh = format!("{head}{README_BEGIN}\n{}{README_END}{tail}", values_table());
    if std::env::var_os("CKB_UPDATE_CHART_README").is_some() {
        std::fs::write(&path, &fresh).expect("write README");
        return;
    }
    assert!(
        readme == fresh,
        "charts/ckb-operator/README.md does not match values.yaml; regenerate it with\n  \
         CKB_UPDATE_CHART_README=1 cargo test -p ckb-operator --test chart readme"
    );
}

#[test]
fn schema_credential_kinds_are_ones_the_operator_accepts() {
    let schema: Value = serde_json::from_str(
        &std::fs::read_to_string(chart_dir().join("values.schema.json")).expect("schema"),
    )
    .expect("schema is JSON");
    let cli = ckb_operator::cli::Cli::command();
    let run = cli.find_subcommand("run").expect("a `run` subcommand");
    let arg = run
        .get_arguments()
        .find(|a| a.get_env().is_some_and(|e| e == "CKB_KV_CREDENTIAL"))
        .expect("`run` reads CKB_KV_CREDENTIAL");
    let accepted: BTreeSet<String> = arg
        .get_possible_values()
        .iter()
        .map(|v| v.get_name().to_owned())
        .collect();
    let offered = schema["properties"]["keyVault"]["properties"]["credential"]["enum"]
        .as_array()
        .expect("keyVault.credential is an enum");
    for kind in offered {
        let kind = kind.as_str().unwrap();
        assert!(
            accepted.contains(kind),
            "values.schema.json offers credential {kind:?}; the operator accepts {accepted:?}"
        );
    }
    let default = &values()["keyVault"]["credential"];
    assert!(
        offered.contains(default),
        "the default credential {default} is not in the schema's enum"
    );
}

// ---------------------------------------------------------------------------------------------
// Dockerfile (no Docker engine here: what can be checked without building the image)
// ---------------------------------------------------------------------------------------------

/// The build stage's Rust (`FROM rust:<x.y>-...`) is at least the workspace's rust-version.
fn assert_builder_rust_is_at_least_the_workspace_s(builder: &str) {
    let tag = builder
        .split("rust:")
        .nth(1)
        .and_then(|t| t.split('-').next())
        .unwrap_or_else(|| panic!("the build stage is not a rust image: {builder}"));
    let manifest = std::fs::read_to_string(repo_root().join("Cargo.toml")).expect("Cargo.toml");
    let wanted = manifest
        .lines()
        .find_map(|l| l.strip_prefix("rust-version = \""))
        .and_then(|v| v.strip_suffix('"'))
        .expect("workspace rust-version");
    let minor = |v: &str| -> u32 {
        v.split('.')
            .nth(1)
            .and_then(|m| m.parse().ok())
            .expect("x.y")
    };
    assert!(
        minor(tag) >= minor(wanted),
        "builder rust:{tag} is older than rust-version {wanted}"
    );
}

/// The chart's pod runs as the image's user, and its default image is this image at the chart's
/// appVersion, which is the workspace version.
fn assert_the_chart_runs_this_image_as_its_user() {
    let docs = render(&Case::new("defaults", &[]));
    let pod = &one(&docs, "Deployment")["spec"]["template"]["spec"];
    assert_eq!(pod["securityContext"]["runAsUser"], 65532);
    assert_eq!(pod["securityContext"]["runAsGroup"], 65532);
    // The chart's default image is this image at the chart's appVersion.
    let chart = std::fs::read_to_string(chart_dir().join("Chart.yaml")).expect("Chart.yaml");
    let app_version = chart
        .lines()
        .find_map(|l| l.strip_prefix("appVersion: "))
        .expect("appVersion")
        .trim_matches('"');
    assert_eq!(
        pod["containers"][0]["image"],
        format!("ghcr.io/ckb-dev/ckb-operator:{app_version}")
    );
    let package = std::fs::read_to_string(repo_root().join("Cargo.toml")).expect("Cargo.toml");
    assert!(
        package.contains(&format!("version = \"{app_version}\"")),
        "Chart.yaml appVersion {app_version} is not the workspace version"
    );
}

#[test]
fn dockerfile_builds_the_operator_and_runs_it_unprivileged() {
    let text = std::fs::read_to_string(repo_root().join("Dockerfile")).expect("Dockerfile");
    let instructions: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    let froms: Vec<&&str> = instructions
        .iter()
        .filter(|l| l.starts_with("FROM "))
        .collect();
    assert_eq!(
        froms.len(),
        2,
        "a build stage and a runtime stage: {froms:?}"
    );
    assert_builder_rust_is_at_least_the_workspace_s(froms[0]);
    assert!(
        text.contains("cargo build --release --locked -p ckb-operator --target \"$target\""),
        "the image builds the static release binary from the lock file"
    );
    // The runtime stage: nothing but the static binary, the CA bundle (reqwest and kube trust the
    // OS store), passwd/group for the non-root user, /tmp and the SBOM: one COPY of a root filesystem.
    let runtime = &instructions[instructions.iter().position(|l| l == froms[1]).unwrap()..];
    assert_eq!(
        *froms[1], "FROM scratch",
        "the runtime stage is empty but for the build's files"
    );
    let copies: Vec<&&str> = runtime.iter().filter(|l| l.starts_with("COPY")).collect();
    assert_eq!(copies, [&"COPY --from=build /rootfs/ /"]);
    for needed in [
        "install -D -m 0755 \"target/$target/release/ckb-operator\" /rootfs/ckb-operator",
        "cp /etc/ssl/certs/ca-certificates.crt /rootfs/etc/ssl/certs/",
        "nonroot:x:65532:65532",
    ] {
        assert!(text.contains(needed), "the build stage lacks {needed:?}");
    }
    assert!(runtime.contains(&"USER 65532:65532"));
    assert_eq!(
        runtime.last(),
        Some(&r#"ENTRYPOINT ["/ckb-operator", "run"]"#)
    );
    assert_the_chart_runs_this_image_as_its_user();
}

#[test]
fn values_reach_the_operators_environment() {
    let docs = render(&Case::new(
        "env",
        &[
            (
                "keyVault.allowedVaults",
                r#"["https://contoso.vault.azure.net","https://hsm1.managedhsm.azure.net"]"#,
            ),
            ("keyVault.credential", r#""managed-identity""#),
            ("controller.resyncPeriod", r#""1h""#),
            ("controller.hashGracePeriod", r#""30m""#),
            ("controller.hashRetentionCeiling", r#""48h""#),
            ("controller.policySourceDefault", r#""ConfigMap""#),
            ("controller.cleanupTimeout", r#""5m""#),
            ("sidecar.image", r#""mcr.microsoft.com/aci/skr:2.13""#),
            ("sidecar.port", "8181"),
            ("sidecar.logLevel", r#""debug""#),
            ("logging.level", r#""info,ckb_operator=debug""#),
            ("logging.format", r#""text""#),
            ("metrics.port", "9090"),
            ("webhook.port", "10250"),
        ],
    ));
    for (name, value) in [
        (
            "CKB_ALLOWED_VAULTS",
            "https://contoso.vault.azure.net,https://hsm1.managedhsm.azure.net",
        ),
        ("CKB_KV_CREDENTIAL", "managed-identity"),
        ("CKB_RESYNC_PERIOD", "1h"),
        ("CKB_HASH_GRACE_PERIOD", "30m"),
        ("CKB_HASH_RETENTION_CEILING", "48h"),
        ("CKB_POLICY_SOURCE_DEFAULT", "ConfigMap"),
        ("CKB_CLEANUP_TIMEOUT", "5m"),
        ("CKB_SIDECAR_IMAGE", "mcr.microsoft.com/aci/skr:2.13"),
        ("CKB_SIDECAR_PORT", "8181"),
        ("CKB_SIDECAR_LOG_LEVEL", "debug"),
        ("CKB_LOG_LEVEL", "info,ckb_operator=debug"),
        ("CKB_LOG_FORMAT", "text"),
        ("CKB_METRICS_ADDR", "0.0.0.0:9090"),
        ("CKB_WEBHOOK_ADDR", "0.0.0.0:10250"),
    ] {
        assert_eq!(env_value(&docs, name), value, "{name}");
    }
    let c = &one(&docs, "Deployment")["spec"]["template"]["spec"]["containers"][0];
    let port = |n: &str| {
        c["ports"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == n)
            .unwrap()["containerPort"]
            .clone()
    };
    assert_eq!(port("metrics"), 9090);
    assert_eq!(port("webhook"), 10250);

    // Unset optional values keep the operator's own defaults: the chart sets nothing for them.
    let env = deployment_env(&render(&Case::new("defaults", &[])));
    for name in [
        "CKB_ALLOWED_VAULTS",
        "CKB_SIDECAR_IMAGE",
        "CKB_SIDECAR_PORT",
        "CKB_SIDECAR_LOG_LEVEL",
    ] {
        assert!(
            !env.contains_key(name),
            "{name} set although its value is empty"
        );
    }
}

/// The chart installs the mode in which a ConfigMap edit (the built-in `edit` role) cannot change
/// what a key is released to; following ConfigMaps is an explicit opt-in.
#[test]
fn the_chart_pins_policies_by_default() {
    let docs = render(&Case::new("defaults", &[]));
    assert_eq!(env_value(&docs, "CKB_POLICY_SOURCE_DEFAULT"), "Pinned");
    assert_eq!(env_value(&docs, "CKB_HASH_RETENTION_CEILING"), "24h");
}

/// The default of the `run` flag whose environment variable is `env`.
fn run_flag_default(env: &str) -> Option<String> {
    let cli = ckb_operator::cli::Cli::command();
    let run = cli.find_subcommand("run").expect("a `run` subcommand");
    let arg = run
        .get_arguments()
        .find(|a| a.get_env().is_some_and(|e| e == env))?;
    arg.get_default_values()
        .first()
        .map(|v| v.to_string_lossy().into_owned())
}

#[test]
fn dev_mode_names_are_the_operators_defaults_for_the_release_ckb_operator() {
    // In development mode the operator runs outside the cluster; for the release name
    // `ckb-operator` it then needs no flag to find its Lease, Secret and webhook configuration:
    // the names RBAC grants are the flags' defaults.
    assert_eq!(RELEASE, "ckb-operator");
    let dev = render(&Case::new("dev", &[("devMode.enabled", "true")]));
    let granted = rendered_grants(&dev);
    for row in API_ACCESS {
        let (Scope::ClusterNamed(names) | Scope::OwnNamespaceNamed(names)) = row.scope else {
            continue;
        };
        for name in names {
            let ObjectName::FromEnv(var) = name else {
                continue;
            };
            let default =
                run_flag_default(var).unwrap_or_else(|| panic!("`run` has no default for {var}"));
            assert!(
                granted
                    .iter()
                    .any(|g| g.1 == row.rbac_resource() && g.4.as_deref() == Some(&default)),
                "{var} defaults to {default:?}, but the dev-mode chart grants {} by other names",
                row.rbac_resource()
            );
        }
    }
    let mwc = one(&dev, "MutatingWebhookConfiguration");
    assert_eq!(
        mwc["metadata"]["name"].as_str(),
        run_flag_default("CKB_WEBHOOK_CONFIG_NAME").as_deref()
    );
}
