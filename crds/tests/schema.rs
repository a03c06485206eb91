//! The generated CRD: every validation rule, default, printer column and name is in it, the schema is
//! structural (what a real kube-apiserver accepts), every field is documented, and a table of valid
//! and invalid bindings is checked against its openAPIV3Schema with `check-jsonschema`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{Value, json};

fn crd() -> Value {
    serde_json::to_value(ckb_crds::crd()).unwrap()
}

fn schema() -> Value {
    crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"].clone()
}

fn at<'a>(schema: &'a Value, path: &str) -> &'a Value {
    let mut v = schema;
    for part in path.split('.') {
        v = if part == "[]" {
            &v["items"]
        } else {
            &v["properties"][part]
        };
        assert!(!v.is_null(), "no {part} in schema path {path}");
    }
    v
}

fn rules(v: &Value) -> Vec<(String, String)> {
    v["x-kubernetes-validations"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|r| {
                    (
                        r["rule"].as_str().unwrap().to_owned(),
                        r["message"].as_str().unwrap_or_default().to_owned(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn names_scope_and_subresources() {
    let c = crd();
    assert_eq!(c["metadata"]["name"], "confidentialkeybindings.ckb.dev");
    let spec = &c["spec"];
    assert_eq!(spec["group"], "ckb.dev");
    assert_eq!(spec["scope"], "Namespaced");
    assert_eq!(spec["names"]["kind"], "ConfidentialKeyBinding");
    assert_eq!(spec["names"]["plural"], "confidentialkeybindings");
    assert_eq!(spec["names"]["singular"], "confidentialkeybinding");
    assert_eq!(spec["names"]["shortNames"], json!(["ckb"]));
    assert_eq!(spec["names"]["categories"], json!(["confidential"]));
    let v = &spec["versions"][0];
    assert_eq!(v["name"], "v1alpha1");
    assert_eq!(v["served"], true);
    assert_eq!(v["storage"], true);
    assert_eq!(v["subresources"]["status"], json!({}));
}

#[test]
fn printer_columns() {
    let cols = crd()["spec"]["versions"][0]["additionalPrinterColumns"].clone();
    let got: Vec<(String, String, String)> = cols
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["name"].as_str().unwrap().into(),
                c["type"].as_str().unwrap().into(),
                c["jsonPath"].as_str().unwrap().into(),
            )
        })
        .collect();
    let want = [
        ("Vault", "string", ".spec.key.vault"),
        ("Key", "string", ".spec.key.name"),
        ("Policy", "string", ".status.policy.shortHash"),
        (
            "Ready",
            "string",
            r#".status.conditions[?(@.type=="Ready")].status"#,
        ),
        (
            "Reason",
            "string",
            r#".status.conditions[?(@.type=="Ready")].reason"#,
        ),
        ("Age", "date", ".metadata.creationTimestamp"),
    ];
    assert_eq!(
        got,
        want.map(|(a, b, c)| (a.to_owned(), b.to_owned(), c.to_owned()))
    );
    // The Policy column points at a field the status really has.
    at(&schema(), "status.policy.shortHash");
}

#[test]
fn key_patterns_enums_lengths_and_defaults() {
    let s = schema();
    let key = at(&s, "spec.key");
    assert_eq!(
        key["required"],
        json!(["name", "vault"]),
        "vault and name are required"
    );
    assert_eq!(at(&s, "spec.key.name")["pattern"], "^[0-9a-zA-Z-]{1,127}$");
    assert_eq!(at(&s, "spec.key.name")["maxLength"], 127);
    assert_eq!(
        at(&s, "spec.key.vault")["pattern"],
        r"^https://[0-9a-zA-Z-]{3,24}\.(vault|managedhsm)\.azure\.net/?$"
    );
    assert!(at(&s, "spec.key.vault")["maxLength"].is_number());
    assert_eq!(
        at(&s, "spec.key.type")["enum"],
        json!(["RSA-HSM", "EC-HSM", "oct-HSM"])
    );
    assert_eq!(at(&s, "spec.key.type")["default"], "RSA-HSM");
    assert_eq!(
        at(&s, "spec.key.curve")["enum"],
        json!(["P-256", "P-384", "P-521"])
    );
    assert_eq!(
        at(&s, "spec.key.operations.[]")["enum"],
        json!([
            "encrypt",
            "decrypt",
            "sign",
            "verify",
            "wrapKey",
            "unwrapKey"
        ])
    );
    assert_eq!(
        at(&s, "spec.key.operations")["x-kubernetes-list-type"],
        "set"
    );
    assert_eq!(at(&s, "spec.key.size")["type"], "integer");
    assert_eq!(at(&s, "spec.key.adopt")["default"], false);
    assert_eq!(
        at(&s, "spec.key.deletionPolicy")["enum"],
        json!(["Retain", "Delete"])
    );
    assert_eq!(at(&s, "spec.key.deletionPolicy")["default"], "Retain");
}

#[test]
fn attestation_policy_sidecar_and_status_patterns_enums_and_defaults() {
    let s = schema();
    let authority = at(&s, "spec.attestation.authority")["pattern"]
        .as_str()
        .unwrap();
    assert!(authority.starts_with("^https://"), "{authority}");
    assert_eq!(
        at(&s, "spec.attestation.complianceStatus")["default"],
        "azure-signed-katacc-uvm"
    );
    assert_eq!(at(&s, "spec.attestation.allowDebuggable")["default"], false);
    let extra = at(&s, "spec.attestation.extraClaims");
    assert_eq!(extra["x-kubernetes-list-type"], "map");
    assert_eq!(extra["x-kubernetes-list-map-keys"], json!(["claim"]));
    assert_eq!(
        at(&s, "spec.policy.additionalHashes.[]")["pattern"],
        "^[0-9a-f]{64}$"
    );
    assert_eq!(
        at(&s, "spec.policy.additionalHashes")["x-kubernetes-list-type"],
        "set"
    );
    assert_eq!(
        at(&s, "spec.policy.configMapRef.key")["default"],
        "policy.rego"
    );
    assert_eq!(
        at(&s, "spec.sidecar.logLevel")["enum"],
        json!([
            "trace", "debug", "info", "warning", "error", "fatal", "panic"
        ])
    );
    assert_eq!(at(&s, "spec.sidecar.port")["maximum"], 65535.0);
    assert_eq!(
        at(&s, "status.conditions")["x-kubernetes-list-map-keys"],
        json!(["type"])
    );
    assert_eq!(
        at(&s, "status.policy.boundHashes")["x-kubernetes-list-map-keys"],
        json!(["hash"])
    );
    assert_eq!(
        at(&s, "status.policy.boundHashes.[].reason")["enum"],
        json!(["Current", "InUse", "Grace", "Additional", "Pinned"])
    );
}

#[test]
fn pinned_hashes_and_the_policy_source_are_optional_and_checked() {
    let s = schema();
    let policy = at(&s, "spec.policy");
    assert_eq!(
        policy["required"],
        json!(["configMapRef"]),
        "v1alpha1 bindings stay valid"
    );
    assert_eq!(at(&s, "spec.policy.sha256.[]")["pattern"], "^[0-9a-f]{64}$");
    assert_eq!(
        at(&s, "spec.policy.sha256")["x-kubernetes-list-type"],
        "set"
    );
    assert_eq!(at(&s, "spec.policy.sha256")["maxItems"], 16);
    // One type for every hash field, spec and status alike: the API server refuses a status
    // patch that writes anything but a hash there.
    for path in [
        "spec.policy.sha256.[]",
        "spec.policy.additionalHashes.[]",
        "status.policy.currentHash",
        "status.policy.boundHashes.[].hash",
    ] {
        assert_eq!(at(&s, path)["pattern"], "^[0-9a-f]{64}$", "{path}");
        assert_eq!(at(&s, path)["type"], "string", "{path}");
    }
    assert_eq!(
        at(&s, "spec.policy.source")["enum"],
        json!(["Pinned", "ConfigMap"])
    );
    assert!(at(&s, "spec.policy.source").get("default").is_none());
}

#[test]
fn every_cel_rule_is_there_with_a_message() {
    let s = schema();
    let key = rules(at(&s, "spec.key"));
    let expected_key_rules = [
        (
            "self.type != 'EC-HSM' || has(self.curve)",
            "key.curve is required",
        ),
        (
            "!has(self.curve) || self.type == 'EC-HSM'",
            "key.curve may only be set",
        ),
        (
            "self.size in [2048, 3072, 4096]",
            "RSA-HSM key must be 2048, 3072 or 4096",
        ),
        (
            "self.size in [128, 192, 256]",
            "oct-HSM key must be 128, 192 or 256",
        ),
        (
            "!has(self.size) || self.type != 'EC-HSM'",
            "not used with EC-HSM",
        ),
        ("managedhsm[.]azure[.]net", "oct-HSM needs a Managed HSM"),
        (
            "o == 'sign' || o == 'verify'",
            "EC-HSM key may only be sign and verify",
        ),
        (
            "o != 'sign' && o != 'verify'",
            "oct-HSM key may not include sign or verify",
        ),
        ("oldSelf.vault", "key.vault is immutable"),
        ("self.name == oldSelf.name", "key.name is immutable"),
    ];
    assert_eq!(key.len(), expected_key_rules.len(), "{key:#?}");
    for (rule, message) in expected_key_rules {
        assert!(
            key.iter()
                .any(|(r, m)| r.contains(rule) && m.contains(message)),
            "no rule {rule:?} with message {message:?} in {key:#?}"
        );
    }
    let extra = rules(at(&s, "spec.attestation.extraClaims"));
    assert_eq!(extra.len(), 1);
    for pinned in ckb_crds::schema::PINNED_CLAIMS {
        assert!(
            extra[0].0.contains(&format!("'{pinned}'")),
            "{pinned} not refused"
        );
    }
}

/// Walks every schema node with its path.
fn walk<'a>(v: &'a Value, path: String, f: &mut dyn FnMut(&str, &'a Value)) {
    f(&path, v);
    if let Some(props) = v["properties"].as_object() {
        for (k, p) in props {
            walk(p, format!("{path}.{k}"), f);
        }
    }
    if v["items"].is_object() {
        walk(&v["items"], format!("{path}[]"), f);
    }
    if v["additionalProperties"].is_object() {
        walk(&v["additionalProperties"], format!("{path}{{}}"), f);
    }
}

#[test]
fn schema_is_structural_as_the_api_server_requires() {
    let s = schema();
    const ALLOWED_REASONS: [&str; 4] = [
        "FieldValueInvalid",
        "FieldValueForbidden",
        "FieldValueRequired",
        "FieldValueDuplicate",
    ];
    let mut problems = Vec::new();
    walk(&s, "$".into(), &mut |path, node| {
        for forbidden in [
            "anyOf",
            "oneOf",
            "allOf",
            "not",
            "$ref",
            "nullable",
            "definitions",
        ] {
            if node.get(forbidden).is_some() {
                problems.push(format!("{path}: has {forbidden}"));
            }
        }
        // Every node says its type, unless it is an int-or-string (Quantity).
        if node.get("type").is_none() && node.get("x-kubernetes-int-or-string").is_none() {
            problems.push(format!("{path}: no type"));
        }
        if let Some(t) = node.get("type")
            && !t.is_string()
        {
            problems.push(format!("{path}: type {t} is not a single type"));
        }
        if let Some(f) = node.get("format").and_then(Value::as_str)
            && f.starts_with("uint")
        {
            problems.push(format!("{path}: format {f} is not a Kubernetes format"));
        }
        for r in node["x-kubernetes-validations"]
            .as_array()
            .into_iter()
            .flatten()
        {
            if let Some(reason) = r.get("reason").and_then(Value::as_str)
                && !ALLOWED_REASONS.contains(&reason)
            {
                problems.push(format!(
                    "{path}: reason {reason} is not accepted by the API server"
                ));
            }
            let message = r["message"].as_str().unwrap_or_default();
            if message.is_empty() || message.contains('\n') {
                problems.push(format!("{path}: rule without a one-line message"));
            }
        }
        // A list-map's keys must be required in its items.
        if let Some(keys) = node["x-kubernetes-list-map-keys"].as_array() {
            let required: BTreeSet<&str> = node["items"]["required"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .collect();
            for k in keys {
                if !required.contains(k.as_str().unwrap()) {
                    problems.push(format!("{path}: list-map key {k} is not required"));
                }
            }
        }
    });
    assert!(problems.is_empty(), "{problems:#?}");
}

#[test]
fn every_field_is_documented_for_kubectl_explain() {
    let s = schema();
    let mut undocumented = Vec::new();
    walk(&s, "$".into(), &mut |path, node| {
        // Items of simple lists and maps are explained by their parent field.
        let is_item = path.ends_with("[]") || path.ends_with("{}");
        let d = node["description"].as_str().unwrap_or_default().trim();
        if !is_item && d.is_empty() {
            undocumented.push(path.to_owned());
        }
    });
    assert!(undocumented.is_empty(), "no description: {undocumented:#?}");
    // Optional enums keep their field's description, not their type's.
    assert!(
        at(&s, "spec.key.curve")["description"]
            .as_str()
            .unwrap()
            .contains("required with EC-HSM")
    );
    assert!(
        at(&s, "spec.sidecar.logLevel")["description"]
            .as_str()
            .unwrap()
            .contains("default warning")
    );
}

// ---- the table of bindings, checked with check-jsonschema -----------------------------------

fn data_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/bindings")
}

fn yaml_files(dir: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(data_dir().join(dir))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    v.sort();
    assert!(!v.is_empty(), "no bindings in {dir}");
    v
}

/// Finds `check-jsonschema`: `$CKB_CHECK_JSONSCHEMA`, then the project's tool cache
/// (`$CKB_TOOLS_DIR`, default `${XDG_CACHE_HOME:-~/.cache}/ckb-operator/tools`), then `PATH`.
fn check_jsonschema() -> PathBuf {
    if let Some(p) = std::env::var_os("CKB_CHECK_JSONSCHEMA") {
        return p.into();
    }
    let tools = std::env::var_os("CKB_TOOLS_DIR")
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("XDG_CACHE_HOME")
                .map(PathBuf::from)
                .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
                .map(|c| c.join("ckb-operator/tools"))
        });
    let mut candidates: Vec<PathBuf> = tools
        .into_iter()
        .flat_map(|t| {
            [
                t.join("bin/check-jsonschema"),
                t.join("venv/bin/check-jsonschema"),
            ]
        })
        .collect();
    if let Some(path) = std::env::var_os("PATH") {
        candidates.extend(std::env::split_paths(&path).map(|d| d.join("check-jsonschema")));
    }
    candidates
        .into_iter()
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "check-jsonschema not found (looked in $CKB_CHECK_JSONSCHEMA, $CKB_TOOLS_DIR/bin, \
             $CKB_TOOLS_DIR/venv/bin, ~/.cache/ckb-operator/tools and PATH): \
             run `scripts/install-tools.sh venv`"
            )
        })
}

/// The openAPIV3Schema as a JSON Schema that also does what the API server does beyond it:
/// refuse unknown fields (kubectl's default strict field validation) and duplicate set items.
fn instance_schema() -> Value {
    fn tighten(v: &mut Value) {
        let Some(obj) = v.as_object_mut() else { return };
        if obj.get("x-kubernetes-list-type") == Some(&json!("set")) {
            obj.insert("uniqueItems".into(), json!(true));
        }
        if obj.contains_key("properties")
            && !obj.contains_key("additionalProperties")
            && !obj.contains_key("x-kubernetes-preserve-unknown-fields")
        {
            obj.insert("additionalProperties".into(), json!(false));
        }
        for key in ["items", "additionalProperties"] {
            if let Some(child) = obj.get_mut(key) {
                tighten(child);
            }
        }
        if let Some(props) = obj.get_mut("properties").and_then(Value::as_object_mut) {
            props.values_mut().for_each(tighten);
        }
    }
    let mut s = schema();
    // The API server validates these itself; the CRD schema does not describe them.
    let props = s["properties"].as_object_mut().unwrap();
    props.insert("apiVersion".into(), json!({"const": "ckb.dev/v1alpha1"}));
    props.insert("kind".into(), json!({"const": "ConfidentialKeyBinding"}));
    props.insert("metadata".into(), json!({"type": "object"}));
    tighten(&mut s);
    s
}

/// Runs check-jsonschema over `files` against `schema_file`: its exit status and JSON report.
fn run_check_jsonschema(
    tool: &Path,
    schema_file: &Path,
    files: &[&PathBuf],
) -> (std::process::ExitStatus, Value) {
    let out = Command::new(tool)
        .arg("--schemafile")
        .arg(schema_file)
        .args(["--output-format", "json"])
        .args(files)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", tool.display()));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "check-jsonschema output is not JSON ({e}): {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status, report)
}

/// The (path, message) pairs of the report's `errors` for file `f`.
fn errors_in(errors: &[Value], f: &Path) -> Vec<(String, String)> {
    errors
        .iter()
        .filter(|e| Path::new(e["filename"].as_str().unwrap()) == f)
        .map(|e| {
            (
                e["path"].as_str().unwrap().to_owned(),
                e["message"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

/// The failure, if any, of invalid binding `f` whose errors are `errs`: it must fail at the path
/// and with the message its `# expect: <path> | <message>` line names.
fn misjudged_invalid(f: &Path, errs: &[(String, String)]) -> Option<String> {
    let text = std::fs::read_to_string(f).unwrap();
    let expect = text
        .lines()
        .find_map(|l| l.strip_prefix("# expect: "))
        .unwrap_or_else(|| panic!("{} has no `# expect: <path> | <message>` line", f.display()));
    let (path, message) = expect.split_once(" | ").unwrap();
    let refused_as_expected = errs.iter().any(|(p, m)| p == path && m.contains(message));
    (!refused_as_expected).then(|| {
        format!(
            "{} should fail at {path} with {message:?}, got {errs:?}",
            f.display()
        )
    })
}

#[test]
fn table_of_bindings_against_the_schema_with_check_jsonschema() {
    let tool = check_jsonschema();
    let dir = tempfile::tempdir().unwrap();
    let schema_file = dir.path().join("confidentialkeybinding.schema.json");
    std::fs::write(
        &schema_file,
        serde_json::to_vec_pretty(&instance_schema()).unwrap(),
    )
    .unwrap();

    let valid = yaml_files("valid");
    let invalid = yaml_files("invalid");
    // CEL-only cases must pass the structural check: they show which refusals need the API server.
    let cel_only = yaml_files("cel-invalid");
    let all: Vec<&PathBuf> = valid.iter().chain(&invalid).chain(&cel_only).collect();
    let (status, report) = run_check_jsonschema(&tool, &schema_file, &all);
    assert_eq!(report["parse_errors"], json!([]), "{report:#}");
    let errors = report["errors"].as_array().cloned().unwrap_or_default();
    let errors_of = |f: &Path| errors_in(&errors, f);

    let mut failures = Vec::new();
    for f in valid.iter().chain(&cel_only) {
        let errs = errors_of(f);
        if !errs.is_empty() {
            failures.push(format!("{} should pass: {errs:?}", f.display()));
        }
        // And the Rust types read every valid binding too (what the operator will see).
        if f.starts_with(data_dir().join("valid")) {
            let text = std::fs::read_to_string(f).unwrap();
            if let Err(e) = serde_saphyr::from_str::<ckb_crds::ConfidentialKeyBinding>(&text) {
                failures.push(format!("{}: the Rust types refuse it: {e}", f.display()));
            }
        }
    }
    for f in &invalid {
        failures.extend(misjudged_invalid(f, &errors_of(f)));
    }
    assert!(
        failures.is_empty(),
        "{} of {} bindings misjudged:\n{}",
        failures.len(),
        all.len(),
        failures.join("\n")
    );
    assert!(
        !status.success(),
        "check-jsonschema must fail on the invalid bindings"
    );
}
