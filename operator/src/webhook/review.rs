//! The AdmissionReview wire format: parse a request body, encode the answer. Pure.
//!
//! The request's object is kept as raw JSON (never decoded into `Pod`), so the decision sees every
//! field, including ones newer than our `k8s-openapi`, and the patch is computed against exactly
//! what the API server sent.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::mutate::Decision;

/// `apiVersion` of the only AdmissionReview version served.
pub const ADMISSION_API_VERSION: &str = "admission.k8s.io/v1";
/// `kind` of an AdmissionReview.
pub const ADMISSION_KIND: &str = "AdmissionReview";

/// The parts of an AdmissionReview request the webhook reads.
#[derive(Debug, Clone, PartialEq)]
pub struct PodRequest {
    /// Request uid, echoed in the answer.
    pub uid: String,
    /// Namespace of the pod (from the request: pods made by controllers have no
    /// `metadata.namespace` yet).
    pub namespace: String,
    /// `CREATE`, `UPDATE`, ...
    pub operation: String,
    /// Sub-resource, if any (`ephemeralcontainers`, ...).
    pub sub_resource: Option<String>,
    /// The pod, raw.
    pub object: Value,
}

/// Why a body is not a usable pod AdmissionReview.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReviewError {
    /// Not JSON, or not the AdmissionReview shape.
    #[error("the body is not an AdmissionReview: {0}")]
    Malformed(String),
    /// Another kind or version than `admission.k8s.io/v1` `AdmissionReview`.
    #[error("expected apiVersion {ADMISSION_API_VERSION} kind {ADMISSION_KIND}, got {0}")]
    WrongReview(String),
    /// No `request`.
    #[error("the AdmissionReview has no request")]
    NoRequest,
    /// The request is not about a v1 Pod.
    #[error("this webhook admits core/v1 Pods only, got {0}")]
    WrongKind(String),
    /// A CREATE without object.
    #[error("the request has no object")]
    MissingObject,
    /// No namespace.
    #[error("the request has no namespace")]
    MissingNamespace,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireReview {
    #[serde(default)]
    api_version: Option<String>,
    #[serde(default)]
    kind: Option<String>,
    #[serde(default)]
    request: Option<WireRequest>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireRequest {
    #[serde(default)]
    uid: Option<String>,
    #[serde(default)]
    kind: Option<WireGvk>,
    #[serde(default)]
    namespace: Option<String>,
    #[serde(default)]
    operation: Option<String>,
    #[serde(default)]
    sub_resource: Option<String>,
    #[serde(default)]
    object: Option<Value>,
}

#[derive(Deserialize)]
struct WireGvk {
    #[serde(default)]
    group: String,
    #[serde(default)]
    version: String,
    #[serde(default)]
    kind: String,
}

/// Parses a request body. On error, the uid is returned too when it could be read, so the answer
/// can still be correlated by the API server.
pub fn parse(body: &[u8]) -> Result<PodRequest, (Option<String>, ReviewError)> {
    let review: WireReview =
        serde_json::from_slice(body).map_err(|e| (None, ReviewError::Malformed(e.to_string())))?;
    let api_version = review.api_version.unwrap_or_default();
    let kind = review.kind.unwrap_or_default();
    let uid = review
        .request
        .as_ref()
        .and_then(|r| r.uid.clone())
        .filter(|u| !u.is_empty());
    if api_version != ADMISSION_API_VERSION || kind != ADMISSION_KIND {
        return Err((
            uid,
            ReviewError::WrongReview(format!("{api_version:?} {kind:?}")),
        ));
    }
    let Some(req) = review.request else {
        return Err((None, ReviewError::NoRequest));
    };
    let Some(uid) = uid else {
        return Err((
            None,
            ReviewError::Malformed("the request has no uid".to_string()),
        ));
    };
    match &req.kind {
        Some(g) if g.group.is_empty() && g.version == "v1" && g.kind == "Pod" => {}
        Some(g) => {
            return Err((
                Some(uid),
                ReviewError::WrongKind(format!("{}/{} {}", g.group, g.version, g.kind)),
            ));
        }
        None => return Err((Some(uid), ReviewError::WrongKind("nothing".to_string()))),
    }
    let namespace = match req.namespace {
        Some(ns) if !ns.is_empty() => ns,
        _ => return Err((Some(uid), ReviewError::MissingNamespace)),
    };
    let object = match req.object {
        Some(o) if o.is_object() => o,
        _ => return Err((Some(uid), ReviewError::MissingObject)),
    };
    Ok(PodRequest {
        uid,
        namespace,
        operation: req.operation.unwrap_or_default(),
        sub_resource: req.sub_resource.filter(|s| !s.is_empty()),
        object,
    })
}

/// The `status` of a refused answer.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WireStatus {
    /// HTTP-like code (400 invalid request, 403 denied).
    pub code: u16,
    /// Human-readable reason, shown to the user by kubectl.
    pub message: String,
    /// Machine reason (`BadRequest`, `Forbidden`).
    pub reason: String,
}

/// The `response` of an answer.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct WireResponse {
    /// The request's uid (empty when it could not be read).
    pub uid: String,
    /// Admitted or not.
    pub allowed: bool,
    /// Why not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<WireStatus>,
    /// `JSONPatch` when a patch is present.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub patch_type: Option<String>,
    /// Standard base64 of the JSON patch.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub patch: Option<String>,
    /// Warnings for the client.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

/// A whole answer.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct WireAnswer {
    /// Always [`ADMISSION_API_VERSION`].
    pub api_version: &'static str,
    /// Always [`ADMISSION_KIND`].
    pub kind: &'static str,
    /// The response.
    pub response: WireResponse,
}

/// How an admission ended, for metrics and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// Admitted unchanged.
    Allowed,
    /// Admitted with a patch.
    Patched,
    /// Refused by the decision.
    Denied,
    /// The request could not be used.
    Invalid,
}

impl Outcome {
    /// Label value of `ckb_admissions_total{result}`.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Allowed => "allowed",
            Outcome::Patched => "patched",
            Outcome::Denied => "denied",
            Outcome::Invalid => "invalid",
        }
    }
}

/// An encoded answer: HTTP status, JSON body, outcome.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    /// HTTP status: 200 whenever a uid could be read (the API server then reads `allowed`), 400
    /// (or 413 for an oversized body) otherwise.
    pub http_status: u16,
    /// The AdmissionReview JSON.
    pub body: Vec<u8>,
    /// How it ended.
    pub outcome: Outcome,
}

fn encode(response: WireResponse) -> Vec<u8> {
    let answer = WireAnswer {
        api_version: ADMISSION_API_VERSION,
        kind: ADMISSION_KIND,
        response,
    };
    // NB: serialising these plain structs cannot fail (string keys, no maps with non-string keys).
    serde_json::to_vec(&answer).unwrap_or_default()
}

/// The answer to a request that could not be used.
pub fn invalid(uid: Option<String>, message: &str, http_status_without_uid: u16) -> Answer {
    let http_status = if uid.is_some() {
        200
    } else {
        http_status_without_uid
    };
    Answer {
        http_status,
        body: encode(WireResponse {
            uid: uid.unwrap_or_default(),
            allowed: false,
            status: Some(WireStatus {
                code: 400,
                message: format!("ckb-operator: {message}"),
                reason: "BadRequest".to_string(),
            }),
            patch_type: None,
            patch: None,
            warnings: Vec::new(),
        }),
        outcome: Outcome::Invalid,
    }
}

/// The answer for a decision.
pub fn answer(uid: &str, decision: Decision) -> Answer {
    let (response, outcome) = match decision {
        Decision::Allow { warnings } => (
            WireResponse {
                uid: uid.to_string(),
                allowed: true,
                status: None,
                patch_type: None,
                patch: None,
                warnings,
            },
            Outcome::Allowed,
        ),
        Decision::Patch { patch, warnings } => (
            WireResponse {
                uid: uid.to_string(),
                allowed: true,
                status: None,
                patch_type: Some("JSONPatch".to_string()),
                patch: Some(STANDARD.encode(serde_json::to_vec(&patch).unwrap_or_default())),
                warnings,
            },
            Outcome::Patched,
        ),
        Decision::Deny { message } => (
            WireResponse {
                uid: uid.to_string(),
                allowed: false,
                status: Some(WireStatus {
                    code: 403,
                    message,
                    reason: "Forbidden".to_string(),
                }),
                patch_type: None,
                patch: None,
                warnings: Vec::new(),
            },
            Outcome::Denied,
        ),
    };
    Answer {
        http_status: 200,
        body: encode(response),
        outcome,
    }
}

/// Parses a body and answers it with `decide` (called only for a usable pod CREATE). The whole
/// admission path minus transport and caches: this is what the fuzz target drives.
pub fn handle(body: &[u8], decide: impl FnOnce(&PodRequest) -> Decision) -> Answer {
    match parse(body) {
        Err((uid, e)) => invalid(uid, &e.to_string(), 400),
        Ok(req) => {
            // Only CREATE of the pod itself is ours (design: CREATE only); anything else that a
            // misconfigured registration sends us passes unchanged.
            if req.operation != "CREATE" || req.sub_resource.is_some() {
                return answer(&req.uid, Decision::Allow { warnings: vec![] });
            }
            let decision = decide(&req);
            answer(&req.uid, decision)
        }
    }
}

#[cfg(test)]
mod tests {
    //! Hostile inputs, bounded so that CI runs them on stable (the fuzz target in `fuzz/` explores
    //! further on nightly).

    use super::*;
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
        let a = handle(body, |req| {
            sources::admit(s, &SidecarDefaults::default(), &classes, req)
        });
        let v: Value = serde_json::from_slice(&a.body).expect("answer is JSON");
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
        let v: Value = serde_json::from_slice(&a.body).unwrap();
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

    #[test]
    fn random_byte_flips_never_panic() {
        // A small xorshift keeps the run deterministic and bounded (2000 variants).
        let s = sources();
        let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let base = REVIEW.as_bytes();
        for _ in 0..2000 {
            let mut b = base.to_vec();
            for _ in 0..(next() % 8 + 1) {
                let i = (next() as usize) % b.len();
                b[i] = (next() & 0xff) as u8;
            }
            check(&b, &s);
        }
    }
}
