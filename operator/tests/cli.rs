//! The `ckb-operator` binary: `crd`, `hash` and `release-policy`, run for real.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use ckb_operator::policy::release::ReleasePolicy;

const CRD_FILE: &str = "charts/ckb-operator/files/confidentialkeybindings.ckb.dev.yaml";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .into()
}

/// Runs the binary with `args`, `stdin` as input and a clean `CKB_*` environment plus `env`.
fn run(args: &[&str], stdin: &[u8], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ckb-operator"));
    for (k, _) in std::env::vars() {
        if k.starts_with("CKB_") {
            cmd.env_remove(k);
        }
    }
    let mut child = cmd
        .args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    let data = stdin.to_vec();
    let writer = std::thread::spawn(move || input.write_all(&data));
    let out = child.wait_with_output().unwrap();
    let _ = writer.join();
    out
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).unwrap()
}

fn fails(out: &Output) -> String {
    assert!(
        !out.status.success(),
        "should fail, printed {:?}",
        out.stdout
    );
    assert!(out.stdout.is_empty(), "nothing on stdout on failure");
    String::from_utf8(out.stderr.clone()).unwrap()
}

fn sha256sum(path: &Path) -> String {
    let out = Command::new("sha256sum").arg(path).output().unwrap();
    String::from_utf8(out.stdout).unwrap()[..64].to_owned()
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

#[test]
fn committed_crd_is_what_crd_prints() {
    let printed = ok(&run(&["crd"], b"", &[]));
    let committed = std::fs::read_to_string(repo().join(CRD_FILE)).unwrap_or_default();
    assert!(
        printed == committed,
        "{CRD_FILE} differs from the types: run `cargo run -p ckb-operator -- crd > {CRD_FILE}`"
    );
    // --json prints the same object.
    let json: serde_json::Value =
        serde_json::from_str(&ok(&run(&["crd", "--json"], b"", &[]))).unwrap();
    let yaml: serde_json::Value = serde_saphyr::from_str(&printed).unwrap();
    assert_eq!(json, yaml);
}

#[test]
fn hash_of_a_file_and_of_stdin_is_sha256sum() {
    let dir = tempfile::tempdir().unwrap();
    let rego = b"package agent_policy\r\n\r\ndefault CreateContainerRequest := true\r\n";
    let f = write(dir.path(), "policy.rego", rego);
    let expected = sha256sum(&f);
    assert_eq!(
        ok(&run(&["hash", f.to_str().unwrap()], b"", &[])),
        format!("{expected}\n")
    );
    assert_eq!(ok(&run(&["hash"], rego, &[])), format!("{expected}\n"));
    assert_eq!(ok(&run(&["hash", "-"], rego, &[])), format!("{expected}\n"));
    // The file can come from the environment.
    assert_eq!(
        ok(&run(
            &["hash"],
            b"",
            &[("CKB_HASH_FILE", f.to_str().unwrap())]
        )),
        format!("{expected}\n")
    );
}

#[test]
fn hash_of_an_annotation_value_is_of_the_decoded_rego() {
    let dir = tempfile::tempdir().unwrap();
    let rego = "package agent_policy\n# ünïcode\n";
    let f = write(dir.path(), "policy.rego", rego.as_bytes());
    let expected = sha256sum(&f);
    let b64 = ckb_operator::policy::hash::encode_annotation(rego);
    // With a trailing newline, as `echo` or a file would give it.
    let input = format!("{b64}\n");
    assert_eq!(
        ok(&run(&["hash", "--annotation"], input.as_bytes(), &[])),
        format!("{expected}\n")
    );
    assert_eq!(
        ok(&run(
            &["hash"],
            input.as_bytes(),
            &[("CKB_HASH_ANNOTATION", "true")]
        )),
        format!("{expected}\n")
    );
}

#[test]
fn hash_errors_name_the_input() {
    let dir = tempfile::tempdir().unwrap();
    let empty = write(dir.path(), "empty.rego", b"");
    let e = fails(&run(&["hash", empty.to_str().unwrap()], b"", &[]));
    assert!(e.contains("empty.rego is empty"), "{e}");
    let e = fails(&run(&["hash"], b"", &[]));
    assert!(e.contains("standard input is empty"), "{e}");
    let e = fails(&run(&["hash", "/nonexistent/p.rego"], b"", &[]));
    assert!(e.contains("cannot read /nonexistent/p.rego"), "{e}");
    let bad = write(dir.path(), "bad.b64", b"not base64!\n");
    let e = fails(&run(
        &["hash", "--annotation", bad.to_str().unwrap()],
        b"",
        &[],
    ));
    assert!(
        e.contains("bad.b64") && e.contains("not standard base64"),
        "{e}"
    );
    let e = fails(&run(&["hash", "--annotation"], b"\n", &[]));
    assert!(e.contains("standard input") && e.contains("empty"), "{e}");
}

const BINDING: &str = r#"
apiVersion: v1
kind: ConfigMap
metadata: {name: orders-policy, namespace: payments}
data: {policy.rego: "package agent_policy"}
---
apiVersion: ckb.dev/v1alpha1
kind: ConfidentialKeyBinding
metadata: {name: orders-key, namespace: payments}
spec:
  podSelector: {matchLabels: {app: orders}}
  key: {vault: https://contoso.vault.azure.net, name: orders-key}
  attestation:
    authority: https://sharedeus.eus.attest.azure.net
    extraClaims: [{claim: x-ms-sevsnpvm-vmpl, equals: "0"}]
  policy:
    configMapRef: {name: orders-policy}
    additionalHashes: [773957b552a1f1aab248f1e2d45e0321361b36c46cbbd52effeed85bbc17b2f9]
"#;

/// The release policy in Microsoft's form for the sample binding: one authority entry per hash,
/// in this order, each with the binding's extra claim.
fn microsofts_form(hashes: &[&str]) -> String {
    let entry = |h: &str| {
        format!(
            r#"{{"authority":"https://sharedeus.eus.attest.azure.net","allOf":[
            {{"claim":"x-ms-attestation-type","equals":"sevsnpvm"}},
            {{"claim":"x-ms-sevsnpvm-hostdata","equals":"{h}"}},
            {{"claim":"x-ms-compliance-status","equals":"azure-signed-katacc-uvm"}},
            {{"claim":"x-ms-sevsnpvm-is-debuggable","equals":"false"}},
            {{"claim":"x-ms-sevsnpvm-vmpl","equals":"0"}}]}}"#
        )
    };
    let entries: Vec<String> = hashes.iter().map(|h| entry(h)).collect();
    format!(r#"{{"version":"1.0.0","anyOf":[{}]}}"#, entries.join(","))
}

/// The error of `release-policy -f <path> --hash <a valid hash>`: what is wrong with the file.
fn refusal_of_binding_file(path: &std::path::Path) -> String {
    fails(&run(
        &[
            "release-policy",
            "-f",
            path.to_str().unwrap(),
            "--hash",
            &"a".repeat(64),
        ],
        b"",
        &[],
    ))
}

#[test]
fn release_policy_of_a_binding_with_hashes_and_a_policy_file() {
    let dir = tempfile::tempdir().unwrap();
    let binding = write(dir.path(), "binding.yaml", BINDING.as_bytes());
    let rego = write(dir.path(), "policy.rego", b"package agent_policy\n");
    let h_policy = sha256sum(&rego);
    let h_flag = "0bb24b3ac02a72f8f7a11cbeab9831d802393860479ef283d8e480d10dee6a19";
    let additional = "773957b552a1f1aab248f1e2d45e0321361b36c46cbbd52effeed85bbc17b2f9";
    let b = binding.to_str().unwrap();
    let out = ok(&run(
        &[
            "release-policy",
            "-f",
            b,
            "--hash",
            h_flag,
            "--policy",
            rego.to_str().unwrap(),
        ],
        b"",
        &[],
    ));
    let p = ReleasePolicy::parse_json(out.trim()).unwrap();
    p.validate().unwrap();
    assert_eq!(
        p.hostdata_hashes(),
        [h_flag, &h_policy, additional].map(String::from).into()
    );
    // Microsoft's form, one entry per hash, plus the binding's extra claim.
    let expected = microsofts_form(&[additional, &h_policy, h_flag]);
    assert!(p.same_meaning(&ReleasePolicy::parse_json(&expected).unwrap()));

    // --encoded is the base64url of the same JSON; stdin and env work the same way.
    let enc = ok(&run(
        &["release-policy", "-f", "-", "--encoded", "--hash", h_flag],
        BINDING.as_bytes(),
        &[],
    ));
    let from_env = ok(&run(
        &["release-policy"],
        b"",
        &[
            ("CKB_RELEASE_POLICY_FILE", b),
            ("CKB_RELEASE_POLICY_HASH", h_flag),
            ("CKB_RELEASE_POLICY_ENCODED", "true"),
        ],
    ));
    assert_eq!(enc, from_env);
    assert!(!enc.trim().contains(['=', '+', '/']));
    let decoded = ReleasePolicy::decode_data(enc.trim()).unwrap();
    let plain = ok(&run(
        &["release-policy", "-f", b, "--hash", h_flag],
        b"",
        &[],
    ));
    assert_eq!(decoded.to_json(), plain.trim());
    // Several hashes from one env var, comma-separated.
    let two = ok(&run(
        &["release-policy", "-f", b],
        b"",
        &[("CKB_RELEASE_POLICY_HASH", &format!("{h_flag},{h_policy}"))],
    ));
    assert_eq!(
        ReleasePolicy::parse_json(two.trim()).unwrap().any_of.len(),
        3
    );
}

#[test]
fn release_policy_errors_say_what_and_which_input() {
    let dir = tempfile::tempdir().unwrap();
    let binding = write(dir.path(), "binding.yaml", BINDING.as_bytes());
    let b = binding.to_str().unwrap();
    let e = fails(&run(&["release-policy", "-f", b], b"", &[]));
    assert!(e.contains("pass --hash") && e.contains("--policy"), "{e}");
    let e = fails(&run(
        &["release-policy", "-f", b, "--hash", "ABC"],
        b"",
        &[],
    ));
    assert!(
        e.contains("--hash \"ABC\"") && e.contains("64 lowercase hex"),
        "{e}"
    );
    let empty = write(dir.path(), "empty.rego", b"");
    let e = fails(&run(
        &[
            "release-policy",
            "-f",
            b,
            "--policy",
            empty.to_str().unwrap(),
        ],
        b"",
        &[],
    ));
    assert!(e.contains("empty.rego") && e.contains("empty"), "{e}");
    let e = refusal_of_binding_file(std::path::Path::new("/nonexistent.yaml"));
    assert!(e.contains("cannot read /nonexistent.yaml"), "{e}");
    let cm_only = write(
        dir.path(),
        "cm.yaml",
        BINDING.split("---").next().unwrap().as_bytes(),
    );
    let e = refusal_of_binding_file(&cm_only);
    assert!(e.contains("cm.yaml has no ConfidentialKeyBinding"), "{e}");
    let pinned = BINDING.replace("x-ms-sevsnpvm-vmpl", "x-ms-sevsnpvm-hostdata");
    let pinned = write(dir.path(), "pinned.yaml", pinned.as_bytes());
    let e = refusal_of_binding_file(&pinned);
    assert!(
        e.contains("pinned.yaml") && e.contains("may not set x-ms-sevsnpvm-hostdata"),
        "{e}"
    );
    let http = BINDING.replace("https://sharedeus", "http://sharedeus");
    let http = write(dir.path(), "http.yaml", http.as_bytes());
    let e = refusal_of_binding_file(&http);
    assert!(
        e.contains("http.yaml") && e.contains("must be https://"),
        "{e}"
    );
    let typo = BINDING.replace(
        "kind: ConfidentialKeyBinding\nmetadata",
        "kind: ConfidentialKeyBinding\nspecc: {}\nmetadata",
    );
    let broken = typo.replace("  key: {vault", "  kee: {vault");
    let broken = write(dir.path(), "broken.yaml", broken.as_bytes());
    let e = refusal_of_binding_file(&broken);
    assert!(
        e.contains("broken.yaml is not a valid ConfidentialKeyBinding"),
        "{e}"
    );
}
