//! The AdmissionReview wire format: parse a request body, encode the answer. Pure.
//!
//! The request's object is kept as raw JSON (never decoded into `Pod`), so the decision sees every
//! field, including ones newer than our `k8s-openapi`, and the patch is computed against exactly
//! what the API server sent.
//!
//! NB: these are not `kube::core::admission`'s types, on purpose. Its `AdmissionRequest<T>` needs a
//! typed `T: Resource`: `DynamicObject` decodes `metadata` as `ObjectMeta`, which drops metadata
//! fields newer than our `k8s-openapi` and turns one malformed metadata field into an unreadable
//! review (no uid to answer with) instead of a decision on the rest. Its `AdmissionResponse`
//! serialises the patch (`Option<Vec<u8>>` without a base64 adapter) as a JSON array of numbers,
//! 2.5-3 times the bytes of the base64 string the API server also accepts: for a 221 KB patch,
//! a ~0.8 MB answer instead of ~300 KB on every admission. The wire shapes here are the
//! `admission.k8s.io/v1` fields this webhook reads and writes, nothing more.

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::mutate::Decision;
use super::policy::EncodedPatch;

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
    pub body: AnswerBody,
    /// How it ended.
    pub outcome: Outcome,
}

/// The AdmissionReview JSON of an answer, in parts whose concatenation is the JSON text: one part,
/// or three for a patch that injects a policy, whose middle part is the policy's pre-encoded value
/// shared with the prepared policy (refcounted, not copied), as the server sends them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnswerBody(Vec<Bytes>);

impl AnswerBody {
    /// The parts, in order.
    pub fn chunks(&self) -> &[Bytes] {
        &self.0
    }

    /// The parts, in order.
    pub fn into_chunks(self) -> Vec<Bytes> {
        self.0
    }

    /// Length of the JSON text.
    pub fn len(&self) -> usize {
        self.0.iter().map(Bytes::len).sum()
    }

    /// Whether the body is empty (never, for an answer).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The JSON text in one buffer (a copy).
    pub fn to_vec(&self) -> Vec<u8> {
        self.0.concat()
    }
}

impl From<Vec<u8>> for AnswerBody {
    fn from(body: Vec<u8>) -> Self {
        Self(vec![Bytes::from(body)])
    }
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

/// The answer with `patch` (standard base64) as `response.patch`.
///
/// The patch is written into the serialised answer, not serialised with it: it is the largest
/// string of the answer (~300 KB for a 120 KiB policy) and base64 needs no JSON escaping, so
/// serde's byte-by-byte escaping pass over it would be wasted work on every admission. The
/// policy's part of it is not even copied: it is the body's middle part (see [`AnswerBody`]).
fn encode_with_patch(mut response: WireResponse, patch: EncodedPatch) -> AnswerBody {
    response.patch = None;
    let rest = encode(response.clone());
    let head = format!(
        "{{\"apiVersion\":\"{ADMISSION_API_VERSION}\",\"kind\":\"{ADMISSION_KIND}\",\"response\":{{"
    );
    let Some(tail) = rest.strip_prefix(head.as_bytes()) else {
        // Cannot happen (the field order is this module's); stay correct anyway.
        response.patch = Some(patch.to_text());
        return encode(response).into();
    };
    let mut first = Vec::with_capacity(head.len() + patch.head.len() + 10);
    first.extend_from_slice(head.as_bytes());
    first.extend_from_slice(b"\"patch\":\"");
    first.extend_from_slice(patch.head.as_bytes());
    let mut last = Vec::with_capacity(patch.tail.len() + tail.len() + 2);
    last.extend_from_slice(patch.tail.as_bytes());
    last.extend_from_slice(b"\",");
    last.extend_from_slice(tail);
    match patch.shared {
        Some(shared) => AnswerBody(vec![first.into(), shared, last.into()]),
        None => {
            first.extend_from_slice(&last);
            first.into()
        }
    }
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
        })
        .into(),
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
        Decision::Patch { patch, warnings } => {
            let response = WireResponse {
                uid: uid.to_string(),
                allowed: true,
                status: None,
                patch_type: Some("JSONPatch".to_string()),
                patch: None,
                warnings,
            };
            let patch = patch.encode();
            return Answer {
                http_status: 200,
                body: encode_with_patch(response, patch),
                outcome: Outcome::Patched,
            };
        }
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
        body: encode(response).into(),
        outcome,
    }
}

/// Parses a body and answers it with `decide` (called only for a usable pod CREATE). The whole
/// admission path minus transport and caches: this is what the fuzz target drives.
pub async fn handle(body: &[u8], decide: impl AsyncFnOnce(&PodRequest) -> Decision) -> Answer {
    match parse(body) {
        Err((uid, e)) => invalid(uid, &e.to_string(), 400),
        Ok(req) => {
            // Only CREATE of the pod itself is ours (design: CREATE only); anything else that a
            // misconfigured registration sends us passes unchanged.
            if req.operation != "CREATE" || req.sub_resource.is_some() {
                return answer(&req.uid, Decision::Allow { warnings: vec![] });
            }
            let decision = decide(&req).await;
            answer(&req.uid, decision)
        }
    }
}
