//! The agent policy as the webhook injects it: its hash, its annotation value, and the encoded form
//! of that value in an admission patch, computed once per policy rather than once per admission.
//!
//! A realistic policy is 90-150 KiB of Rego. Before this module every admission of a confidential
//! pod hashed it (SHA-256), encoded it (base64), then serialised the patch holding that encoding,
//! encoded the patch (base64 again) and serialised the answer holding it: about 1.1 MB of byte-wise
//! work per admission, which an instruction profile of the handler showed to be most of its cost
//! (docs/benchmarks.md). [`PreparedPolicy`] does the per-policy part once; an [`AdmissionPatch`]
//! refers to it instead of holding the annotation value, and its encoding shares the policy's
//! pre-encoded value, so that the per-admission part is neither work nor a copy proportional to
//! the policy.

use std::borrow::Cow;
use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use serde_json::Value;

use crate::crds::labels::AGENT_POLICY;
use crate::policy::hash::{HashError, PolicyHash, encode_annotation, hash_annotation, hash_rego};

/// An agent policy ready to be injected: hash, annotation value, and the annotation value as it
/// appears, base64-encoded, inside an encoded admission patch.
#[derive(Clone, PartialEq, Eq)]
pub struct PreparedPolicy {
    hash: PolicyHash,
    annotation: String,
    /// Standard base64 of the JSON string token of `annotation` (quotes included), followed by
    /// spaces up to a multiple of 3 bytes, so that it can be concatenated with other base64 text
    /// (see [`AdmissionPatch::encode`]); shared by every answer that carries it.
    encoded_value: Bytes,
}

impl std::fmt::Debug for PreparedPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PreparedPolicy")
            .field("hash", &self.hash)
            .field("annotation_bytes", &self.annotation.len())
            .finish()
    }
}

impl PreparedPolicy {
    /// Prepares a policy given as Rego text.
    pub fn new(rego: &str) -> Self {
        let annotation = encode_annotation(rego);
        // NB: a base64 alphabet string needs no JSON escaping, so its JSON token is the text in
        // quotes; JSON whitespace after a value is insignificant.
        let mut token = Vec::with_capacity(annotation.len() + 4);
        token.push(b'"');
        token.extend_from_slice(annotation.as_bytes());
        token.push(b'"');
        pad_to_multiple_of_3(&mut token);
        Self {
            hash: hash_rego(rego.as_bytes()),
            encoded_value: Bytes::from(STANDARD.encode(&token)),
            annotation,
        }
    }

    /// SHA-256 of the Rego text: the pod's `x-ms-sevsnpvm-hostdata`.
    pub fn hash(&self) -> &PolicyHash {
        &self.hash
    }

    /// The `io.katacontainers.config.agent.policy` annotation value (standard base64 of the Rego).
    pub fn annotation(&self) -> &str {
        &self.annotation
    }
}

/// An agent-policy annotation value as the Kata shim reads it: line breaks dropped (its Go decoder,
/// `base64.StdEncoding`, ignores `\r` and `\n` anywhere, so a wrapped value runs and means the
/// decoded bytes). The one normalisation both the webhook and `ckb-operator hash --annotation` use.
pub fn normalize_annotation(value: &str) -> Cow<'_, str> {
    if value.contains(['\r', '\n']) {
        Cow::Owned(
            value
                .chars()
                .filter(|c| !matches!(c, '\r' | '\n'))
                .collect(),
        )
    } else {
        Cow::Borrowed(value)
    }
}

/// The hash of the policy an annotation value carries, after [`normalize_annotation`].
pub fn annotation_policy_hash(value: &str) -> Result<PolicyHash, HashError> {
    hash_annotation(&normalize_annotation(value))
}

fn pad_to_multiple_of_3(bytes: &mut Vec<u8>) {
    while !bytes.len().is_multiple_of(3) {
        bytes.push(b' ');
    }
}

/// Stands for the policy's annotation value in the operations of an [`AdmissionPatch`], so that
/// the 160 KB value is never copied into the mutated pod nor into the patch; NUL characters keep
/// it apart from anything a pod spec carries (and a pod that carries it anyway gets the value
/// itself, see [`admission_patch`]).
pub(crate) const PLACEHOLDER: &str = "\u{0}ckb-agent-policy\u{0}";

/// An admission patch (RFC 6902). When it sets the agent-policy annotation, the value stays in
/// the prepared policy: the operations hold [`PLACEHOLDER`] in its place, [`Self::to_patch`] puts
/// it back, and [`Self::encode`] splices in the policy's pre-encoded value.
#[derive(Debug, Clone, PartialEq)]
pub struct AdmissionPatch {
    ops: json_patch::Patch,
    /// The policy whose annotation value the one [`PLACEHOLDER`] string of `ops` stands for.
    policy: Option<Arc<PreparedPolicy>>,
}

impl From<json_patch::Patch> for AdmissionPatch {
    /// A patch that holds every value itself.
    fn from(ops: json_patch::Patch) -> Self {
        Self { ops, policy: None }
    }
}

impl AdmissionPatch {
    /// The patch as the API server applies it (with the policy's annotation value).
    pub fn to_patch(&self) -> json_patch::Patch {
        let mut ops = self.ops.clone();
        if let Some(policy) = &self.policy
            && let Some(slot) = value_slot(&mut ops, PLACEHOLDER)
        {
            *slot = Value::String(policy.annotation.clone());
        }
        ops
    }

    /// Standard base64 of the JSON text of the patch ([`Self::to_patch`]), as an admission answer
    /// carries it.
    ///
    /// When the patch sets the policy's annotation, only the rest of the patch is serialised and
    /// encoded (a few KB), around the placeholder; the policy's pre-encoded value goes in between.
    /// Base64 maps every 3 input bytes to 4 output characters independently, so the encoding of a
    /// concatenation whose parts are multiples of 3 bytes is the concatenation of their encodings;
    /// the parts are padded with JSON whitespace (before and after the value token) to get there.
    /// The decoded patch is the same JSON value as the plain encoding ([`encode_plain`]).
    // NB: hand-written on purpose: no JSON or base64 crate can reuse an encoded substring, and this
    // is the difference between ~1 MB and a few KB of byte-wise work per admission
    // (docs/benchmarks.md).
    pub fn encode(&self) -> EncodedPatch {
        let Some(policy) = &self.policy else {
            return EncodedPatch::plain(&self.ops);
        };
        // NB: serialising a patch (string keys, JSON values) cannot fail.
        let text = serde_json::to_vec(&self.ops).unwrap_or_default();
        let token = serde_json::to_vec(PLACEHOLDER).unwrap_or_default();
        let Some(at) = find_once(&text, &token) else {
            // Cannot happen (admission_patch checks the placeholder occurs once); stay correct.
            return EncodedPatch::plain(&self.to_patch());
        };
        let mut head = text[..at].to_vec();
        pad_to_multiple_of_3(&mut head);
        EncodedPatch {
            head: STANDARD.encode(&head),
            shared: Some(policy.encoded_value.clone()),
            tail: STANDARD.encode(&text[at + token.len()..]),
        }
    }
}

/// The admission patch from `pod` to `mutated` (the pod after the mutation wrote `policy`'s
/// annotation value as [`PLACEHOLDER`], if it wrote it). When the placeholder is not the only
/// string of `mutated` equal to it (the pod or a binding carried that text), the value is put in
/// and the patch holds it.
pub(crate) fn admission_patch(
    pod: &Value,
    mut mutated: Value,
    policy: Option<Arc<PreparedPolicy>>,
) -> AdmissionPatch {
    let pointer = format!("/metadata/annotations/{AGENT_POLICY}");
    if let Some(policy) = policy
        && mutated.pointer(&pointer).and_then(Value::as_str) == Some(PLACEHOLDER)
    {
        if count_placeholders(&mutated) == 1 {
            return AdmissionPatch {
                ops: json_patch::diff(pod, &mutated),
                policy: Some(policy),
            };
        }
        if let Some(slot) = mutated.pointer_mut(&pointer) {
            *slot = Value::String(policy.annotation.clone());
        }
    }
    AdmissionPatch::from(json_patch::diff(pod, &mutated))
}

/// How many strings of `value` (object keys included) equal [`PLACEHOLDER`].
fn count_placeholders(value: &Value) -> usize {
    match value {
        Value::String(s) => usize::from(s == PLACEHOLDER),
        Value::Array(a) => a.iter().map(count_placeholders).sum(),
        Value::Object(m) => m
            .iter()
            .map(|(k, v)| usize::from(k == PLACEHOLDER) + count_placeholders(v))
            .sum(),
        _ => 0,
    }
}

/// The standard base64 of a patch in three parts, whose concatenation is the encoding: the
/// policy's pre-encoded value (`shared`: the prepared policy's buffer, not a copy) between the
/// encodings of the text before and after it. Without a policy, all of it is in `head`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncodedPatch {
    /// Base64 of the patch text before the policy's value (all of it when `shared` is `None`).
    pub head: String,
    /// Base64 of the policy's value token, shared with the prepared policy.
    pub shared: Option<Bytes>,
    /// Base64 of the patch text after the policy's value.
    pub tail: String,
}

impl EncodedPatch {
    fn plain(ops: &json_patch::Patch) -> Self {
        Self {
            head: encode_plain(ops),
            shared: None,
            tail: String::new(),
        }
    }

    /// Length of the encoding.
    pub fn len(&self) -> usize {
        self.head.len() + self.shared.as_ref().map_or(0, Bytes::len) + self.tail.len()
    }

    /// Whether the encoding is empty (never, for a JSON patch).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The encoding in one string (a copy; the answer is sent in parts instead).
    pub fn to_text(&self) -> String {
        let mut out = String::with_capacity(self.len());
        out.push_str(&self.head);
        // NB: base64 text is ASCII.
        out.push_str(&String::from_utf8_lossy(
            self.shared.as_deref().unwrap_or_default(),
        ));
        out.push_str(&self.tail);
        out
    }
}

/// Standard base64 of the JSON text of `patch`, without reuse.
pub fn encode_plain(patch: &json_patch::Patch) -> String {
    // NB: serialising a patch (string keys, JSON values) cannot fail.
    STANDARD.encode(serde_json::to_vec(patch).unwrap_or_default())
}

/// The value of an operation of `patch` that is, or holds, the string `want`.
fn value_slot<'a>(patch: &'a mut json_patch::Patch, want: &str) -> Option<&'a mut Value> {
    patch
        .0
        .iter_mut()
        .find_map(|op| find_string(op_value_mut(op)?, want))
}

fn op_value_mut(op: &mut json_patch::PatchOperation) -> Option<&mut Value> {
    match op {
        json_patch::PatchOperation::Add(o) => Some(&mut o.value),
        json_patch::PatchOperation::Replace(o) => Some(&mut o.value),
        _ => None,
    }
}

/// The string equal to `want` in `value` (the value itself, or one nested in it).
fn find_string<'a>(value: &'a mut Value, want: &str) -> Option<&'a mut Value> {
    if value.as_str() == Some(want) {
        return Some(value);
    }
    match value {
        Value::Object(m) => m.values_mut().find_map(|v| find_string(v, want)),
        Value::Array(a) => a.iter_mut().find_map(|v| find_string(v, want)),
        _ => None,
    }
}

/// The position of the only occurrence of `needle` in `haystack`, if it occurs exactly once.
fn find_once(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    let mut found = haystack
        .windows(needle.len())
        .enumerate()
        .filter(|(_, w)| *w == needle)
        .map(|(i, _)| i);
    let first = found.next()?;
    found.next().is_none().then_some(first)
}
