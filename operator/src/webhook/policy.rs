//! The agent policy as the webhook injects it: its hash, its annotation value, and the encoded form
//! of that value in an admission patch, computed once per policy rather than once per admission.
//!
//! A realistic policy is 90-150 KiB of Rego. Before this module every admission of a confidential
//! pod hashed it (SHA-256), encoded it (base64), then serialised the patch holding that encoding,
//! encoded the patch (base64 again) and serialised the answer holding it: about 1.1 MB of byte-wise
//! work per admission, which an instruction profile of the handler showed to be most of its cost
//! (docs/benchmarks.md). [`PreparedPolicy`] does the per-policy part once; [`encode_patch`] reuses
//! it so that the per-admission part is a copy.

use std::borrow::Cow;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;

use crate::policy::hash::{HashError, PolicyHash, encode_annotation, hash_annotation, hash_rego};

/// An agent policy ready to be injected: hash, annotation value, and the annotation value as it
/// appears, base64-encoded, inside an encoded admission patch.
#[derive(Clone, PartialEq, Eq)]
pub struct PreparedPolicy {
    hash: PolicyHash,
    annotation: String,
    /// Standard base64 of the JSON string token of `annotation` (quotes included), followed by
    /// spaces up to a multiple of 3 bytes, so that it can be concatenated with other base64 text
    /// (see [`encode_patch`]).
    encoded_value: String,
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
            encoded_value: STANDARD.encode(&token),
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

/// Placeholder put in place of the policy's annotation value while the (small) rest of the patch
/// is serialised; NUL characters keep it apart from anything a pod spec carries.
const PLACEHOLDER: &str = "\u{0}ckb-agent-policy\u{0}";

/// Standard base64 of the JSON text of `patch`, as an admission answer carries it.
///
/// When `policy` is given and its annotation value is a string of the patch, that string is not
/// serialised and encoded again: the rest of the patch is, around a placeholder, and the policy's
/// pre-encoded value is spliced in. Base64 maps every 3 input bytes to 4 output characters
/// independently, so the encoding of a concatenation whose parts are multiples of 3 bytes is the
/// concatenation of their encodings; the parts are padded with JSON whitespace (before and after
/// the value token) to get there. The decoded patch is the same JSON value as the plain encoding.
// NB: hand-written on purpose: no JSON or base64 crate can reuse an encoded substring, and this
// is the difference between ~1 MB and ~0.2 MB of byte-wise work per admission (docs/benchmarks.md).
pub fn encode_patch(mut patch: json_patch::Patch, policy: Option<&PreparedPolicy>) -> String {
    let Some(policy) = policy else {
        return encode_plain(&patch);
    };
    // A pod that carries the placeholder itself (as a value) gets the plain encoding.
    if value_slot(&mut patch, PLACEHOLDER).is_some() {
        return encode_plain(&patch);
    }
    let Some(slot) = value_slot(&mut patch, &policy.annotation) else {
        return encode_plain(&patch);
    };
    let original = std::mem::replace(slot, serde_json::Value::String(PLACEHOLDER.to_string()));
    let text = serde_json::to_vec(&patch).unwrap_or_default();
    let token = serde_json::to_vec(PLACEHOLDER).unwrap_or_default();
    let Some(at) = find_once(&text, &token) else {
        // The placeholder's text also occurs as a key of the pod: put the value back.
        if let Some(slot) = value_slot(&mut patch, PLACEHOLDER) {
            *slot = original;
        }
        return encode_plain(&patch);
    };
    let mut head = text[..at].to_vec();
    pad_to_multiple_of_3(&mut head);
    let tail = &text[at + token.len()..];
    let mut out = String::with_capacity(
        policy.encoded_value.len() + (head.len() + tail.len()).div_ceil(3) * 4 + 4,
    );
    STANDARD.encode_string(&head, &mut out);
    out.push_str(&policy.encoded_value);
    STANDARD.encode_string(tail, &mut out);
    out
}

/// Standard base64 of the JSON text of `patch`, without reuse.
pub fn encode_plain(patch: &json_patch::Patch) -> String {
    // NB: serialising a patch (string keys, JSON values) cannot fail.
    STANDARD.encode(serde_json::to_vec(patch).unwrap_or_default())
}

/// The value of an operation of `patch` that is, or holds, the string `want`.
fn value_slot<'a>(
    patch: &'a mut json_patch::Patch,
    want: &str,
) -> Option<&'a mut serde_json::Value> {
    patch
        .0
        .iter_mut()
        .find_map(|op| find_string(op_value_mut(op)?, want))
}

fn op_value_mut(op: &mut json_patch::PatchOperation) -> Option<&mut serde_json::Value> {
    match op {
        json_patch::PatchOperation::Add(o) => Some(&mut o.value),
        json_patch::PatchOperation::Replace(o) => Some(&mut o.value),
        _ => None,
    }
}

/// The string equal to `want` in `value` (the value itself, or one nested in it).
fn find_string<'a>(
    value: &'a mut serde_json::Value,
    want: &str,
) -> Option<&'a mut serde_json::Value> {
    if value.as_str() == Some(want) {
        return Some(value);
    }
    match value {
        serde_json::Value::Object(m) => m.values_mut().find_map(|v| find_string(v, want)),
        serde_json::Value::Array(a) => a.iter_mut().find_map(|v| find_string(v, want)),
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
