//! The AdmissionReview wire format under hostile inputs, bounded so that CI runs them on stable
//! (the fuzz target in `fuzz/` explores further on nightly).

use serde_json::Value;

use super::mutate::Decision;
use super::review::*;
use crate::webhook::mutate::SidecarDefaults;
use crate::webhook::sources::{self, MapSources};

const REVIEW: &str = include_str!("../../tests/data/admission/pod-create-confidential.json");
const BINDINGS: &str = include_str!("../../tests/data/admission/bindings.yaml");
const POLICY: &str = include_str!("../../tests/data/admission/orders-policy.rego");

fn sources() -> MapSources {
    let mut s =
        MapSources::default().with_policy("payments", "orders-policy", "policy.rego", POLICY);
    for b in serde_saphyr::from_multiple(BINDINGS).unwrap() {
        s = s.with_binding(b);
    }
    s
}

/// Handles a body and checks the answer is a well-formed AdmissionReview.
fn check(body: &[u8], s: &MapSources) -> Answer {
    let classes = vec!["kata-cc-isolation".to_string()];
    // MapSources answers at once: no runtime needed.
    let a = futures::executor::block_on(handle(body, async |req| {
        sources::admit(s, &SidecarDefaults::default(), &classes, req).await
    }));
    let v: Value = serde_json::from_slice(&a.body.to_vec()).expect("answer is JSON");
    assert_eq!(v["kind"], "AdmissionReview");
    // What the API server acts on must say what the outcome says.
    let admitted = matches!(a.outcome, Outcome::Allowed | Outcome::Patched);
    assert_eq!(v["response"]["allowed"], Value::Bool(admitted), "{v}");
    match a.outcome {
        Outcome::Denied => assert_eq!(v["response"]["status"]["code"], 403, "{v}"),
        Outcome::Invalid => assert_eq!(v["response"]["status"]["code"], 400, "{v}"),
        Outcome::Allowed | Outcome::Patched => {
            assert!(v["response"].get("status").is_none(), "{v}")
        }
    }
    assert_eq!(
        v["response"]["patch"].is_string(),
        a.outcome == Outcome::Patched,
        "{v}"
    );
    a
}

#[test]
fn a_denial_is_encoded_as_not_allowed_with_403_and_the_message() {
    let a = answer(
        "u-1",
        Decision::Deny {
            message: "ckb-operator (bindings a, b): no".into(),
        },
    );
    assert_eq!(a.http_status, 200);
    assert_eq!(a.outcome, Outcome::Denied);
    let v: Value = serde_json::from_slice(&a.body.to_vec()).unwrap();
    assert_eq!(
        v,
        serde_json::json!({
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "response": {
                "uid": "u-1",
                "allowed": false,
                "status": {"code": 403, "message": "ckb-operator (bindings a, b): no",
                           "reason": "Forbidden"}
            }
        })
    );
}

#[test]
fn the_captured_review_is_patched() {
    assert_eq!(
        check(REVIEW.as_bytes(), &sources()).outcome,
        Outcome::Patched
    );
}

#[test]
fn every_truncation_is_refused_cleanly() {
    let s = sources();
    // Without the trailing newline, every proper prefix is incomplete JSON.
    let bytes = REVIEW.trim_end().as_bytes();
    for cut in 0..bytes.len() {
        let a = check(&bytes[..cut], &s);
        assert_eq!(a.outcome, Outcome::Invalid, "cut at {cut}");
        assert_eq!(a.http_status, 400, "cut at {cut}");
    }
}

#[test]
fn deep_nesting_is_refused_without_overflowing_the_stack() {
    let s = sources();
    for depth in [200, 10_000, 1_000_000] {
        let deep = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
        assert_eq!(check(deep.as_bytes(), &s).outcome, Outcome::Invalid);
        // Nested inside the pod object too.
        let inner = format!("{}1{}", "{\"a\":".repeat(depth), "}".repeat(depth));
        let body = REVIEW.replacen("\"status\": {}", &format!("\"status\": {inner}"), 1);
        assert_eq!(check(body.as_bytes(), &s).outcome, Outcome::Invalid);
    }
}

#[test]
fn huge_strings_and_odd_types_do_not_panic() {
    let s = sources();
    let big = "x".repeat(3 << 20);
    let mut v: Value = serde_json::from_str(REVIEW).unwrap();
    v["request"]["uid"] = Value::String(big.clone());
    assert_eq!(
        check(&serde_json::to_vec(&v).unwrap(), &s).outcome,
        Outcome::Patched
    );
    let mut v: Value = serde_json::from_str(REVIEW).unwrap();
    v["request"]["object"]["metadata"]["labels"]["app"] = Value::String(big.clone());
    // No binding selects app=xxx…: nothing to inject.
    assert_eq!(
        check(&serde_json::to_vec(&v).unwrap(), &s).outcome,
        Outcome::Allowed
    );
    let mut v: Value = serde_json::from_str(REVIEW).unwrap();
    v["request"]["object"]["metadata"]["annotations"] =
        serde_json::json!({"io.katacontainers.config.agent.policy": big});
    assert_eq!(
        check(&serde_json::to_vec(&v).unwrap(), &s).outcome,
        Outcome::Denied
    );
    for (pointer, odd, want) in [
        // The review's own fields of the wrong type: unusable, refused.
        ("/request/uid", serde_json::json!(12), Outcome::Invalid),
        ("/request/kind", serde_json::json!("Pod"), Outcome::Invalid),
        (
            "/request/namespace",
            serde_json::json!(["payments"]),
            Outcome::Invalid,
        ),
        // The selected confidential pod with odd fields: still injected.
        (
            "/request/object/spec/containers",
            serde_json::json!({"a": 1}),
            Outcome::Patched,
        ),
        (
            "/request/object/spec/containers/0/env",
            serde_json::json!("x"),
            Outcome::Patched,
        ),
        (
            "/request/object/spec/containers/0/ports",
            serde_json::json!([{"containerPort": "8080"}]),
            Outcome::Patched,
        ),
        // No readable labels: no binding selects it, nothing to inject.
        (
            "/request/object/metadata/labels",
            serde_json::json!([1, 2]),
            Outcome::Allowed,
        ),
        (
            "/request/object/metadata",
            serde_json::json!(null),
            Outcome::Allowed,
        ),
        // No runtime class: not confidential.
        (
            "/request/object/spec",
            serde_json::json!(7),
            Outcome::Allowed,
        ),
    ] {
        let mut v: Value = serde_json::from_str(REVIEW).unwrap();
        *v.pointer_mut(pointer).unwrap() = odd;
        let a = check(&serde_json::to_vec(&v).unwrap(), &s);
        assert_eq!(a.outcome, want, "{pointer}");
    }
}

/// What the API server's contract says about a (flipped) review of the captured pod, written
/// from the rules, not from the parser: unusable → invalid; not a CREATE of the pod itself,
/// not confidential or selected by no binding → allowed; otherwise injected.
fn expected(body: &[u8]) -> Outcome {
    let Ok(v) = serde_json::from_slice::<Value>(body) else {
        return Outcome::Invalid;
    };
    let text = |p: &str| v.pointer(p).and_then(Value::as_str);
    let req = |f: &str| format!("/request/{f}");
    let usable = text("/apiVersion") == Some(ADMISSION_API_VERSION)
        && text("/kind") == Some(ADMISSION_KIND)
        && text(&req("uid")).is_some_and(|u| !u.is_empty())
        && v.pointer("/request/kind/group").is_none_or(|g| g == "")
        && text(&req("kind/version")) == Some("v1")
        && text(&req("kind/kind")) == Some("Pod")
        && text(&req("namespace")).is_some_and(|n| !n.is_empty())
        && v.pointer("/request/object").is_some_and(Value::is_object);
    if !usable {
        return Outcome::Invalid;
    }
    let create = text(&req("operation")) == Some("CREATE")
        && text(&req("subResource")).is_none_or(str::is_empty);
    let confidential = text(&req("object/spec/runtimeClassName")) == Some("kata-cc-isolation");
    // bindings.yaml: orders-key selects app=orders in payments; web-key app=web.
    let selected = text(&req("namespace")) == Some("payments")
        && text(&req("object/metadata/labels/app")) == Some("orders");
    if create && confidential && selected {
        Outcome::Patched
    } else {
        Outcome::Allowed
    }
}

#[test]
fn random_byte_flips_get_the_decision_the_contract_gives() {
    // A small xorshift keeps the run deterministic and bounded (3000 variants of 1-3 bytes
    // replaced by ASCII: the fixture is ASCII, so every variant is UTF-8).
    let s = sources();
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let base = REVIEW.as_bytes();
    let mut seen = std::collections::BTreeMap::<&str, usize>::new();
    for _ in 0..3000 {
        let mut b = base.to_vec();
        for _ in 0..(next() % 3 + 1) {
            let i = (next() as usize) % b.len();
            b[i] = (next() & 0x7f) as u8;
        }
        let want = expected(&b);
        let got = check(&b, &s).outcome;
        assert_eq!(got, want, "{}", String::from_utf8_lossy(&b));
        *seen.entry(want.as_str()).or_default() += 1;
    }
    // The variants reach every outcome but a denial (no single flip makes a conflict).
    for o in ["invalid", "allowed", "patched"] {
        assert!(seen.get(o).is_some_and(|n| *n >= 10), "{seen:?}");
    }
}
