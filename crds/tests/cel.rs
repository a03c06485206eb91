//! The CRD's CEL rules, evaluated client-side with kube-cel (Kubernetes' CEL libraries for Rust):
//! every rule compiles, stays within cost bounds, accepts the valid bindings and refuses each
//! CEL-only invalid binding with its own message, and the transition rules keep the key's vault and
//! name immutable. The API server's own evaluation is exercised by the end-to-end suite.

use std::path::{Path, PathBuf};

use kube_cel::{Validator, compile_schema};
use serde_json::Value;

fn schema() -> Value {
    serde_json::to_value(ckb_crds::crd()).unwrap()["spec"]["versions"][0]["schema"]
        ["openAPIV3Schema"]
        .clone()
}

fn files(dir: &str) -> Vec<PathBuf> {
    let d = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/bindings")
        .join(dir);
    let mut v: Vec<PathBuf> = std::fs::read_dir(d)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    v.sort();
    assert!(!v.is_empty());
    v
}

fn load(p: &Path) -> Value {
    serde_saphyr::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

fn messages(r: Result<(), kube_cel::ValidationErrors>) -> Vec<String> {
    match r {
        Ok(()) => vec![],
        Err(errs) => errs.iter().map(|e| e.to_string()).collect(),
    }
}

#[test]
fn every_rule_compiles_and_is_bounded() {
    let s = schema();
    let compiled = compile_schema(&s);
    let errors: Vec<String> = compiled
        .compilation_errors()
        .iter()
        .map(|e| format!("{e:?}"))
        .collect();
    assert!(errors.is_empty(), "{errors:#?}");
    let mut rules = Vec::new();
    fn collect(v: &Value, out: &mut Vec<String>) {
        for r in v["x-kubernetes-validations"]
            .as_array()
            .into_iter()
            .flatten()
        {
            out.push(r["rule"].as_str().unwrap().to_owned());
        }
        for p in v["properties"]
            .as_object()
            .into_iter()
            .flat_map(|m| m.values())
        {
            collect(p, out);
        }
        if v["items"].is_object() {
            collect(&v["items"], out);
        }
    }
    collect(&s, &mut rules);
    assert_eq!(rules.len(), 11, "{rules:#?}");
    for rule in &rules {
        let warnings = kube_cel::estimate_rule_cost(rule, &compiled);
        assert!(warnings.is_empty(), "{rule}: {warnings:?}");
    }
}

#[test]
fn valid_bindings_pass_and_cel_invalid_ones_fail_with_their_message() {
    let s = schema();
    let v = Validator::new();
    for f in files("valid") {
        let m = messages(v.validate(&s, &load(&f), None));
        assert!(m.is_empty(), "{}: {m:?}", f.display());
    }
    for f in files("cel-invalid") {
        let text = std::fs::read_to_string(&f).unwrap();
        let expected = text
            .lines()
            .find_map(|l| l.strip_prefix("# expect-cel: "))
            .unwrap();
        let m = messages(v.validate(&s, &load(&f), None));
        assert!(
            m.len() == 1 && m[0].contains(expected),
            "{}: expected one error containing {expected:?}, got {m:?}",
            f.display()
        );
    }
}

#[test]
fn key_vault_and_name_are_immutable() {
    let s = schema();
    let v = Validator::new();
    let old = load(&files("valid")[0].with_file_name("typical.yaml"));
    let with = |f: &dyn Fn(&mut Value)| {
        let mut new = old.clone();
        f(&mut new);
        messages(v.validate(&s, &new, Some(&old)))
    };
    assert!(with(&|_| {}).is_empty());
    // Changing what the key is allowed to do, or the policy, is fine.
    assert!(with(&|n| n["spec"]["key"]["deletionPolicy"] = "Delete".into()).is_empty());
    assert!(with(&|n| n["spec"]["policy"]["configMapRef"]["name"] = "other".into()).is_empty());
    // The same vault spelled with a trailing slash or in capitals is the same vault.
    assert!(
        with(&|n| n["spec"]["key"]["vault"] = "https://Contoso.vault.azure.net/".into()).is_empty()
    );
    let m = with(&|n| n["spec"]["key"]["vault"] = "https://other.vault.azure.net".into());
    assert!(
        m.len() == 1 && m[0].contains("key.vault is immutable"),
        "{m:?}"
    );
    let m = with(&|n| n["spec"]["key"]["name"] = "other-key".into());
    assert!(
        m.len() == 1 && m[0].contains("key.name is immutable"),
        "{m:?}"
    );
}
