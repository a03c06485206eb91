//! The CRD on a real API server: `kubectl apply` refuses every invalid binding with the message of
//! the schema rule it breaks (each CEL rule of `ckb_crds::schema`, and the patterns, enums, ranges
//! and list rules), accepts valid ones, and `kubectl explain` shows the field docs.
//!
//! Needs the local control plane (`e2e/scripts/build-control-plane.sh`); fails, never skips,
//! without it.

use std::collections::BTreeSet;
use std::io::Write;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use ckb_crds::ConfidentialKeyBinding;
use ckb_e2e::cluster::ControlPlane;
use kube::CustomResourceExt;
use serde_json::{Value, json};

const NS: &str = "default";

/// Runs kubectl with `body` as stdin; returns (success, stdout + stderr).
fn kubectl_stdin(cp: &ControlPlane, args: &[&str], body: &Value) -> Result<(bool, String)> {
    let mut child = cp
        .kubectl_command()
        .args(args)
        .stdin(Stdio::piped())
        .spawn()
        .context("starting kubectl")?;
    child
        .stdin
        .take()
        .context("kubectl stdin")?
        .write_all(serde_json::to_string(body)?.as_bytes())?;
    let out = child.wait_with_output()?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok((out.status.success(), text))
}

fn apply(cp: &ControlPlane, body: &Value) -> Result<(bool, String)> {
    kubectl_stdin(cp, &["apply", "-f", "-"], body)
}

/// Installs the CRD generated from the Rust types (what `ckb-operator crd` prints) and waits until
/// the API server serves it.
async fn install_crd(cp: &ControlPlane) -> Result<()> {
    let crd = serde_json::to_value(ConfidentialKeyBinding::crd())?;
    let (ok, out) = apply(cp, &crd)?;
    ensure!(
        ok,
        "the generated CRD was refused by the API server:\n{out}"
    );
    let out = cp.kubectl([
        "wait",
        "--for=condition=Established",
        "--timeout=60s",
        "crd/confidentialkeybindings.ckb.dev",
    ])?;
    ensure!(
        out.status.success(),
        "CRD not established: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Established means stored; discovery (what kubectl uses to map the kind) may lag a moment.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let out = cp.kubectl(["get", "ckb", "-n", NS])?;
        if out.status.success() {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "kind not served after 60 s: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A valid binding; cases below change one thing in it.
fn binding(name: &str) -> Value {
    json!({
        "apiVersion": "ckb.dev/v1alpha1",
        "kind": "ConfidentialKeyBinding",
        "metadata": {"name": name, "namespace": NS},
        "spec": {
            "podSelector": {"matchLabels": {"app": "orders"}},
            "key": {"vault": "https://contoso.vault.azure.net", "name": "orders-key"},
            "attestation": {"authority": "https://sharedeus.eus.attest.azure.net"},
            "policy": {"configMapRef": {"name": "orders-policy"}}
        }
    })
}

/// Sets `value` at the `/`-separated `path` under the object, creating objects on the way.
fn with(mut v: Value, path: &str, value: Value) -> Value {
    let mut cur = &mut v;
    let parts: Vec<&str> = path.split('/').collect();
    for p in &parts[..parts.len() - 1] {
        cur = cur
            .as_object_mut()
            .expect("path goes through objects")
            .entry(p.to_string())
            .or_insert_with(|| json!({}));
    }
    cur.as_object_mut()
        .expect("parent is an object")
        .insert(parts[parts.len() - 1].to_string(), value);
    v
}

fn without(mut v: Value, path: &str) -> Value {
    let parts: Vec<&str> = path.split('/').collect();
    let mut cur = &mut v;
    for p in &parts[..parts.len() - 1] {
        cur = cur.get_mut(*p).expect("path exists");
    }
    cur.as_object_mut()
        .expect("parent is an object")
        .remove(parts[parts.len() - 1]);
    v
}

/// Every CEL rule message in the CRD's schema (`x-kubernetes-validations` anywhere).
fn all_rule_messages() -> BTreeSet<String> {
    fn walk(v: &Value, out: &mut BTreeSet<String>) {
        match v {
            Value::Object(m) => {
                if let Some(Value::Array(rules)) = m.get("x-kubernetes-validations") {
                    for r in rules {
                        if let Some(msg) = r.get("message").and_then(Value::as_str) {
                            out.insert(msg.to_string());
                        }
                    }
                }
                m.values().for_each(|x| walk(x, out));
            }
            Value::Array(a) => a.iter().for_each(|x| walk(x, out)),
            _ => {}
        }
    }
    let crd = serde_json::to_value(ConfidentialKeyBinding::crd()).expect("CRD serializes");
    let mut out = BTreeSet::new();
    walk(&crd, &mut out);
    out
}

/// The full message of the CEL rule whose message starts with `prefix`.
fn rule(prefix: &str) -> String {
    let all = all_rule_messages();
    let found: Vec<_> = all.iter().filter(|m| m.starts_with(prefix)).collect();
    assert_eq!(
        found.len(),
        1,
        "expected exactly one CEL rule message starting with {prefix:?} in the CRD, found {found:?}; all: {all:#?}"
    );
    found[0].clone()
}

struct Case {
    what: &'static str,
    body: Value,
    /// Substrings the refusal must contain (field path and message).
    expect: Vec<String>,
}

fn case(what: &'static str, body: Value, expect: &[&str]) -> Case {
    Case {
        what,
        body,
        expect: expect.iter().map(|s| s.to_string()).collect(),
    }
}

const HSM: &str = "https://contoso.managedhsm.azure.net";

/// Invalid bindings on create: one per CEL rule that applies on create, and per pattern, enum,
/// range, required field and list rule.
// Long by design: one table of invalid bindings, each with the words its refusal must contain.
fn create_cases() -> Vec<Case> {
    let b = || binding("bad");
    vec![
        // CEL rules of spec.key
        case(
            "EC-HSM without curve",
            with(b(), "spec/key/type", json!("EC-HSM")),
            &["spec.key.curve", &rule("key.curve is required")],
        ),
        case(
            "curve on an RSA-HSM key",
            with(b(), "spec/key/curve", json!("P-256")),
            &["spec.key.curve", &rule("key.curve may only be set")],
        ),
        case(
            "RSA size 1024",
            with(b(), "spec/key/size", json!(1024)),
            &["spec.key.size", &rule("key.size of an RSA-HSM key")],
        ),
        case(
            "oct-HSM size 512",
            with(
                with(
                    with(b(), "spec/key/type", json!("oct-HSM")),
                    "spec/key/vault",
                    json!(HSM),
                ),
                "spec/key/size",
                json!(512),
            ),
            &["spec.key.size", &rule("key.size of an oct-HSM key")],
        ),
        case(
            "size on an EC-HSM key",
            with(
                with(
                    with(b(), "spec/key/type", json!("EC-HSM")),
                    "spec/key/curve",
                    json!("P-256"),
                ),
                "spec/key/size",
                json!(256),
            ),
            &["spec.key.size", &rule("key.size is not used with EC-HSM")],
        ),
        case(
            "oct-HSM in a Premium vault",
            with(b(), "spec/key/type", json!("oct-HSM")),
            &[
                "spec.key.type",
                &rule("key.type oct-HSM needs a Managed HSM"),
            ],
        ),
        case(
            "EC-HSM key that wraps",
            with(
                with(
                    with(b(), "spec/key/type", json!("EC-HSM")),
                    "spec/key/curve",
                    json!("P-384"),
                ),
                "spec/key/operations",
                json!(["sign", "wrapKey"]),
            ),
            &[
                "spec.key.operations",
                &rule("key.operations of an EC-HSM key"),
            ],
        ),
        case(
            "oct-HSM key that signs",
            with(
                with(
                    with(b(), "spec/key/type", json!("oct-HSM")),
                    "spec/key/vault",
                    json!(HSM),
                ),
                "spec/key/operations",
                json!(["wrapKey", "sign"]),
            ),
            &[
                "spec.key.operations",
                &rule("key.operations of an oct-HSM key"),
            ],
        ),
        // CEL rule of spec.attestation.extraClaims
        case(
            "extraClaims pins hostdata",
            with(
                b(),
                "spec/attestation/extraClaims",
                json!([{"claim": "x-ms-sevsnpvm-hostdata", "equals": "00"}]),
            ),
            &[
                "spec.attestation.extraClaims",
                &rule("attestation.extraClaims may not name"),
            ],
        ),
        // Patterns
        case(
            "vault over http",
            with(
                b(),
                "spec/key/vault",
                json!("http://contoso.vault.azure.net"),
            ),
            &["spec.key.vault", "should match"],
        ),
        case(
            "vault outside Azure",
            with(b(), "spec/key/vault", json!("https://contoso.example.com")),
            &["spec.key.vault", "should match"],
        ),
        case(
            "key name with underscore",
            with(b(), "spec/key/name", json!("orders_key")),
            &["spec.key.name", "should match"],
        ),
        case(
            "authority over http",
            with(
                b(),
                "spec/attestation/authority",
                json!("http://sharedeus.eus.attest.azure.net"),
            ),
            &["spec.attestation.authority", "should match"],
        ),
        case(
            "claim name with a space",
            with(
                b(),
                "spec/attestation/extraClaims",
                json!([{"claim": "x ms", "equals": "0"}]),
            ),
            &["spec.attestation.extraClaims[0].claim", "should match"],
        ),
        case(
            "ConfigMap name not a DNS name",
            with(b(), "spec/policy/configMapRef/name", json!("Orders_Policy")),
            &["spec.policy.configMapRef.name", "should match"],
        ),
        case(
            "additional hash in upper case",
            with(b(), "spec/policy/additionalHashes", json!(["A".repeat(64)])),
            &["spec.policy.additionalHashes[0]", "should match"],
        ),
        case(
            "additional hash too short",
            with(b(), "spec/policy/additionalHashes", json!(["abc"])),
            &["spec.policy.additionalHashes[0]", "should match"],
        ),
        // Enums
        case(
            "unknown key type",
            with(b(), "spec/key/type", json!("RSA")),
            &["spec.key.type", "Unsupported value", "\"RSA-HSM\""],
        ),
        case(
            "unknown curve",
            with(
                with(b(), "spec/key/type", json!("EC-HSM")),
                "spec/key/curve",
                json!("P-999"),
            ),
            &["spec.key.curve", "Unsupported value", "\"P-384\""],
        ),
        case(
            "unknown operation",
            with(b(), "spec/key/operations", json!(["fly"])),
            &["spec.key.operations[0]", "Unsupported value"],
        ),
        case(
            "unknown deletion policy",
            with(b(), "spec/key/deletionPolicy", json!("Forget")),
            &["spec.key.deletionPolicy", "Unsupported value", "\"Retain\""],
        ),
        case(
            "unknown sidecar log level",
            with(b(), "spec/sidecar/logLevel", json!("loud")),
            &["spec.sidecar.logLevel", "Unsupported value"],
        ),
        // Ranges and required fields
        case(
            "sidecar port 0",
            with(b(), "spec/sidecar/port", json!(0)),
            &["spec.sidecar.port", "greater than or equal to 1"],
        ),
        case(
            "sidecar port 70000",
            with(b(), "spec/sidecar/port", json!(70000)),
            &["spec.sidecar.port", "less than or equal to 65535"],
        ),
        case(
            "no key",
            without(b(), "spec/key"),
            &["spec.key", "Required value"],
        ),
        case(
            "no authority",
            without(b(), "spec/attestation/authority"),
            &["spec.attestation.authority", "Required value"],
        ),
        // List rules
        case(
            "the same claim twice",
            with(
                b(),
                "spec/attestation/extraClaims",
                json!([{"claim": "x-ms-sevsnpvm-vmpl", "equals": "0"},
                       {"claim": "x-ms-sevsnpvm-vmpl", "equals": "1"}]),
            ),
            &["spec.attestation.extraClaims[1]", "Duplicate value"],
        ),
        case(
            "the same additional hash twice",
            with(
                b(),
                "spec/policy/additionalHashes",
                json!(["a".repeat(64), "a".repeat(64)]),
            ),
            &["spec.policy.additionalHashes[1]", "Duplicate value"],
        ),
    ]
}

/// Valid bindings: each must be stored.
fn valid_cases() -> Vec<(&'static str, Value)> {
    vec![
        ("rsa-defaults", binding("rsa-defaults")),
        (
            "rsa-4096-full",
            with(
                with(
                    with(
                        with(binding("rsa-4096-full"), "spec/key/size", json!(4096)),
                        "spec/key/deletionPolicy",
                        json!("Delete"),
                    ),
                    "spec/attestation/extraClaims",
                    json!([{"claim": "x-ms-sevsnpvm-vmpl", "equals": "0"}]),
                ),
                "spec/policy/additionalHashes",
                json!(["0123456789abcdef".repeat(4)]),
            ),
        ),
        (
            "ec-p384",
            with(
                with(
                    with(binding("ec-p384"), "spec/key/type", json!("EC-HSM")),
                    "spec/key/curve",
                    json!("P-384"),
                ),
                "spec/key/operations",
                json!(["sign", "verify"]),
            ),
        ),
        (
            "oct-256",
            with(
                with(
                    with(binding("oct-256"), "spec/key/type", json!("oct-HSM")),
                    "spec/key/vault",
                    json!(HSM),
                ),
                "spec/key/size",
                json!(256),
            ),
        ),
        (
            "sidecar-overrides",
            with(
                binding("sidecar-overrides"),
                "spec/sidecar",
                json!({"port": 9000, "logLevel": "debug",
                       "resources": {"limits": {"cpu": "100m", "memory": "64Mi"}}}),
            ),
        ),
    ]
}

/// Applies each case: it must be refused, the refusal containing every expected substring.
/// Records what each refusal was expected to name in `covered`, and what went wrong in
/// `failures`.
fn expect_refusals(
    cp: &ControlPlane,
    cases: impl IntoIterator<Item = Case>,
    covered: &mut BTreeSet<String>,
    failures: &mut Vec<String>,
) -> Result<()> {
    for c in cases {
        let (ok, out) = apply(cp, &c.body)?;
        if ok {
            failures.push(format!("{}: accepted, expected a refusal:\n{out}", c.what));
            continue;
        }
        for e in &c.expect {
            if !out.contains(e.as_str()) {
                failures.push(format!("{}: refusal lacks {e:?}:\n{out}", c.what));
            }
        }
        covered.extend(c.expect.iter().cloned());
    }
    Ok(())
}

/// Transition rules (immutable vault and key name): updates of the stored binding `stored`.
fn update_cases(stored: &Value) -> [Case; 2] {
    [
        case(
            "vault changed",
            with(
                stored.clone(),
                "spec/key/vault",
                json!("https://fabrikam.vault.azure.net"),
            ),
            &["spec.key.vault", &rule("key.vault is immutable")],
        ),
        case(
            "key name changed",
            with(stored.clone(), "spec/key/name", json!("other-key")),
            &["spec.key.name", &rule("key.name is immutable")],
        ),
    ]
}

/// Merge-patches the status of the stored binding `immutable` with `hash` in both hash fields, as
/// the cluster admin: whether it was stored, and what kubectl printed.
fn patch_status_hashes(cp: &ControlPlane, hash: &str) -> Result<(bool, String)> {
    let body = json!({"status": {"policy": {
        "currentHash": hash,
        "boundHashes": [{"hash": hash, "reason": "Current", "since": "2026-01-01T00:00:00Z"}]
    }}});
    let out = cp.kubectl([
        "patch",
        "ckb",
        "immutable",
        "-n",
        NS,
        "--subresource=status",
        "--type=merge",
        "-p",
        &body.to_string(),
    ])?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok((out.status.success(), text))
}

/// Status hash fields have the spec's hash schema: even a writer with status rights (here the
/// cluster admin) cannot store anything else there; a real hash is stored.
fn status_hash_fields_take_only_hashes(
    cp: &ControlPlane,
    failures: &mut Vec<String>,
) -> Result<()> {
    for bad in ["not-a-hash", &"A".repeat(64), &"a".repeat(63)] {
        let (ok, out) = patch_status_hashes(cp, bad)?;
        if ok || !out.contains("status.policy.currentHash") || !out.contains("boundHashes") {
            failures.push(format!(
                "status hash {bad:?}: expected a refusal naming both fields:\n{out}"
            ));
        }
    }
    let (ok, out) = patch_status_hashes(cp, &"a".repeat(64))?;
    if !ok {
        failures.push(format!("a valid status hash refused:\n{out}"));
    }
    Ok(())
}

/// Every valid binding is applied and then listed as stored.
fn valid_bindings_are_stored(cp: &ControlPlane, failures: &mut Vec<String>) -> Result<()> {
    for (name, body) in valid_cases() {
        let (ok, out) = apply(cp, &body)?;
        if !ok {
            failures.push(format!("valid binding {name} refused:\n{out}"));
        }
    }
    let out = cp.kubectl(["get", "ckb", "-n", NS, "-o", "name"])?;
    let listed = String::from_utf8_lossy(&out.stdout);
    for (name, _) in valid_cases() {
        if !listed.contains(&format!("confidentialkeybinding.ckb.dev/{name}")) {
            failures.push(format!(
                "valid binding {name} not stored; listed:\n{listed}"
            ));
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_apply_enforces_the_binding_schema() -> Result<()> {
    let cp = ControlPlane::start().await?;
    install_crd(&cp).await?;

    let mut covered = BTreeSet::new();
    let mut failures = Vec::new();
    expect_refusals(&cp, create_cases(), &mut covered, &mut failures)?;

    // Transition rules (immutable vault and key name) apply on update of a stored binding.
    let stored = binding("immutable");
    let (ok, out) = apply(&cp, &stored)?;
    ensure!(ok, "valid binding refused:\n{out}");
    expect_refusals(&cp, update_cases(&stored), &mut covered, &mut failures)?;
    status_hash_fields_take_only_hashes(&cp, &mut failures)?;

    // A trailing slash or case change of the same vault is not a change.
    let same_vault = with(
        stored.clone(),
        "spec/key/vault",
        json!("https://CONTOSO.vault.azure.net/"),
    );
    let (ok, out) = apply(&cp, &same_vault)?;
    if !ok {
        failures.push(format!("same vault spelled differently refused:\n{out}"));
    }

    let uncovered: Vec<_> = all_rule_messages()
        .into_iter()
        .filter(|m| !covered.contains(m))
        .collect();
    if !uncovered.is_empty() {
        failures.push(format!(
            "CEL rules without a refusal case here: {uncovered:#?}"
        ));
    }
    valid_bindings_are_stored(&cp, &mut failures)?;

    if !failures.is_empty() {
        cp.print_logs(20);
        bail!(
            "{} schema expectation(s) failed:\n\n{}",
            failures.len(),
            failures.join("\n\n")
        );
    }
    Ok(())
}

/// Collapses whitespace so text wrapped by `kubectl explain` compares with the schema text.
fn squash(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_explain_shows_the_field_docs() -> Result<()> {
    let cp = ControlPlane::start().await?;
    install_crd(&cp).await?;

    let crd = serde_json::to_value(ConfidentialKeyBinding::crd())?;
    let spec = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"];
    let key = &spec["properties"]["key"];

    // Discovery of a new CRD's OpenAPI may lag its establishment: poll until explain has it.
    let deadline = Instant::now() + Duration::from_secs(60);
    let text = loop {
        let out = cp.kubectl(["explain", "confidentialkeybinding.spec.key"])?;
        let text = squash(&String::from_utf8_lossy(&out.stdout));
        if out.status.success() && text.contains("vault") {
            break text;
        }
        if Instant::now() > deadline {
            bail!(
                "kubectl explain failed: {}{}",
                text,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };

    let mut expected = vec![
        key["description"]
            .as_str()
            .context("spec.key has a description")?,
    ];
    for field in [
        "vault",
        "name",
        "type",
        "size",
        "curve",
        "operations",
        "adopt",
        "deletionPolicy",
    ] {
        expected.push(
            key["properties"][field]["description"]
                .as_str()
                .with_context(|| format!("spec.key.{field} has a description"))?,
        );
    }
    for doc in expected {
        // explain prints each description in full; compare its first sentence-sized piece.
        let head: String = squash(doc).chars().take(60).collect();
        ensure!(
            text.contains(&head),
            "kubectl explain confidentialkeybinding.spec.key does not show {head:?}:\n{text}"
        );
    }
    Ok(())
}
