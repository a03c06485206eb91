//! The prepared policy: the spliced patch encoding means the same patch as the plain one, the
//! answer sent in parts is the answer, and the webhook and `ckb-operator hash --annotation` agree
//! on wrapped base64. (The cache of prepared policies is tested in `sources_tests`.)

use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Value, json};

use super::mutate::{
    AdmissionPatch, Decision, MatchedBinding, Mode, SidecarDefaults, decide, mutate,
};
use super::policy::{PreparedPolicy, annotation_policy_hash, encode_plain};
use super::review;
use crate::policy::hash_rego;

const REVIEW: &str = include_str!("../../tests/data/admission/pod-create-confidential.json");

fn pod() -> Value {
    serde_json::from_str::<Value>(REVIEW).unwrap()["request"]["object"].clone()
}

fn binding(policy: &Arc<PreparedPolicy>) -> MatchedBinding {
    MatchedBinding {
        name: "orders-key".into(),
        vault: "https://contoso.vault.azure.net".into(),
        key_name: "orders-key".into(),
        authority: "https://sharedeus.eus.attest.azure.net".into(),
        sidecar: Default::default(),
        policy: Some(policy.clone()),
        policy_ref: "ConfigMap orders-policy key policy.rego".into(),
        pinned: vec![],
    }
}

fn classes() -> Vec<String> {
    vec!["kata-cc-isolation".to_string()]
}

/// The patch JSON an encoded patch decodes to (the decoder is the base64 crate's, strict).
fn decoded(encoded: &str) -> Value {
    let bytes = STANDARD.decode(encoded).expect("standard base64");
    serde_json::from_slice(&bytes).expect("the decoded patch is JSON")
}

fn patch_of(pod: &Value, policy: &Arc<PreparedPolicy>) -> AdmissionPatch {
    patch_with(pod, binding(policy))
}

fn patch_named(pod: &Value, policy: &Arc<PreparedPolicy>, binding_name: &str) -> AdmissionPatch {
    let mut b = binding(policy);
    b.name = binding_name.to_string();
    patch_with(pod, b)
}

fn patch_with(pod: &Value, b: MatchedBinding) -> AdmissionPatch {
    match decide(pod, &[b], &SidecarDefaults::default(), &classes()) {
        Decision::Patch { patch, .. } => patch,
        other => panic!("not a patch: {other:?}"),
    }
}

/// The pod after the patch as the API server applies it, from the patch's encoding.
fn applied(pod: &Value, encoded: &str) -> Value {
    let mut out = pod.clone();
    let ops: json_patch::Patch = serde_json::from_value(decoded(encoded)).unwrap();
    json_patch::patch(&mut out, &ops).unwrap();
    out
}

#[test]
fn the_spliced_encoding_is_the_same_patch_for_every_alignment_and_pod_shape() {
    let mut padded = 0;
    // Every length mod 3 of the policy's token (4 base64 characters per 3 bytes, 2 quotes) and of
    // the text before it (the bindings annotation precedes the policy's), and both patch shapes:
    // annotations added as one object (the pod has none) or key by key (it has some).
    for policy_len in [1, 4, 7, 120 * 1024, 120 * 1024 + 3, 120 * 1024 + 6] {
        let rego: String = "p".repeat(policy_len);
        let policy = Arc::new(PreparedPolicy::new(&rego));
        for binding_name in ["k", "kk", "kkk"] {
            for with_annotations in [false, true] {
                let mut pod = pod();
                if with_annotations {
                    pod["metadata"]["annotations"] = json!({"team": "payments"});
                }
                let patch = patch_named(&pod, &policy, binding_name);
                let encoded = patch.encode();
                assert!(encoded.shared.is_some(), "the policy's encoding is shared");
                let spliced = encoded.to_text();
                let plain = encode_plain(&patch.to_patch());
                let what = format!("{policy_len} {binding_name} {with_annotations}");
                assert_eq!(decoded(&spliced), decoded(&plain), "{what}");
                // And applied, it gives the pod the policy's annotation.
                assert_eq!(
                    applied(&pod, &spliced)["metadata"]["annotations"]["io.katacontainers.config.agent.policy"],
                    Value::String(policy.annotation().to_string()),
                    "{what}"
                );
                // Where the parts were not multiples of 3 bytes, the splice padded them.
                if STANDARD.decode(&spliced).unwrap() != STANDARD.decode(&plain).unwrap() {
                    padded += 1;
                }
            }
        }
    }
    assert!(padded >= 20, "the padded splice was used: {padded} of 36");
}

#[test]
fn the_answer_sent_in_parts_is_the_answer_with_the_plain_patch_for_every_alignment() {
    // Same alignments and patch shapes as above, through the whole answer: the parts the server
    // sends, concatenated, are one JSON AdmissionReview, whose patch decodes to the plain one,
    // and whose middle part is the prepared policy's own buffer.
    for policy_len in [1, 4, 7, 120 * 1024, 120 * 1024 + 3, 120 * 1024 + 6] {
        let policy = Arc::new(PreparedPolicy::new(&"p".repeat(policy_len)));
        for binding_name in ["k", "kk", "kkk"] {
            for with_annotations in [false, true] {
                let what = format!("{policy_len} {binding_name} {with_annotations}");
                let mut pod = pod();
                if with_annotations {
                    pod["metadata"]["annotations"] = json!({"team": "payments"});
                }
                let patch = patch_named(&pod, &policy, binding_name);
                let plain = patch.to_patch();
                let shared = patch.encode().shared.unwrap();
                let decision = Decision::Patch {
                    patch,
                    warnings: vec!["w".into()],
                };
                let answer = review::answer("u-1", decision);
                let chunks = answer.body.chunks();
                assert_eq!(chunks.len(), 3, "{what}");
                assert_eq!(chunks[1], shared, "{what}");
                assert_eq!(
                    chunks[1].as_ptr(),
                    shared.as_ptr(),
                    "the policy's encoding is not copied: {what}"
                );
                let body = answer.body.to_vec();
                assert_eq!(answer.body.len(), body.len(), "{what}");
                let v: Value = serde_json::from_slice(&body).expect("one JSON document");
                let patch_text = v["response"]["patch"].as_str().unwrap();
                assert_eq!(
                    decoded(patch_text),
                    decoded(&encode_plain(&plain)),
                    "{what}"
                );
                let mut without_patch = v.clone();
                without_patch["response"]
                    .as_object_mut()
                    .unwrap()
                    .remove("patch");
                assert_eq!(
                    without_patch,
                    json!({
                        "apiVersion": "admission.k8s.io/v1",
                        "kind": "AdmissionReview",
                        "response": {"uid": "u-1", "allowed": true, "patchType": "JSONPatch",
                                     "warnings": ["w"]}
                    }),
                    "{what}"
                );
            }
        }
    }
}

#[test]
fn a_pod_or_binding_that_carries_the_placeholder_text_still_gets_its_exact_patch() {
    let policy = Arc::new(PreparedPolicy::new("package agent_policy\n"));
    let placeholder = "\u{0}ckb-agent-policy\u{0}";
    let mut hostile_binding = binding(&policy);
    hostile_binding.key_name = placeholder.to_string();
    // As a value the patch carries, as a key, as a value of the pod the patch does not touch,
    // and as a value the binding puts into the pod.
    for (where_, pod, b) in [
        (
            "value",
            {
                let mut p = pod();
                p["spec"]["containers"][0]["env"][0]["value"] = Value::String(placeholder.into());
                p
            },
            binding(&policy),
        ),
        (
            "key",
            {
                let mut p = pod();
                p["metadata"]["annotations"] = json!({ placeholder: "x" });
                p
            },
            binding(&policy),
        ),
        (
            "untouched value",
            {
                let mut p = pod();
                p["metadata"]["labels"]["note"] = Value::String(placeholder.into());
                p
            },
            binding(&policy),
        ),
        ("binding", pod(), hostile_binding),
    ] {
        let want = mutate(
            &pod,
            std::slice::from_ref(&b),
            &SidecarDefaults::default(),
            &classes(),
            Mode::Admission,
        )
        .unwrap()
        .pod;
        let patch = patch_with(&pod, b);
        let encoded = patch.encode().to_text();
        assert_eq!(
            decoded(&encoded),
            decoded(&encode_plain(&patch.to_patch())),
            "{where_}"
        );
        // Applied, the patch gives the mutated pod: the policy in its annotation, the pod's and
        // the binding's own text where they put it.
        let after = applied(&pod, &encoded);
        assert_eq!(
            after["metadata"]["annotations"]["io.katacontainers.config.agent.policy"],
            Value::String(policy.annotation().to_string()),
            "{where_}"
        );
        assert_eq!(after, want, "{where_}");
    }
}

#[test]
fn a_patch_without_the_policy_is_encoded_plainly() {
    let policy = Arc::new(PreparedPolicy::new("package agent_policy\n"));
    let mut pod = pod();
    pod["metadata"]["annotations"] =
        json!({"io.katacontainers.config.agent.policy": policy.annotation()});
    let patch = patch_of(&pod, &policy);
    let encoded = patch.encode();
    assert!(encoded.shared.is_none());
    assert_eq!(encoded.to_text(), encode_plain(&patch.to_patch()));
    let answer = review::answer(
        "u-1",
        Decision::Patch {
            patch,
            warnings: vec![],
        },
    );
    assert_eq!(answer.body.chunks().len(), 1, "one buffer");
}

#[test]
fn webhook_and_hash_cli_agree_on_a_wrapped_annotation() {
    let rego = "package agent_policy\n\ndefault CreateContainerRequest := true\n".repeat(40);
    let flat = STANDARD.encode(&rego);
    // As `base64` (coreutils) and genpolicy's YAML output wrap it: 76 columns, LF or CRLF.
    for eol in ["\n", "\r\n"] {
        let wrapped = flat
            .as_bytes()
            .chunks(76)
            .map(|c| std::str::from_utf8(c).unwrap())
            .collect::<Vec<_>>()
            .join(eol);
        let want = hash_rego(rego.as_bytes());
        assert_eq!(annotation_policy_hash(&wrapped), Ok(want.clone()));
        let cli = crate::cli::hash::hash_of(format!("{wrapped}\n").as_bytes(), true, "stdin");
        assert_eq!(cli.unwrap(), want.to_string(), "the CLI accepts it too");
        // The webhook takes the wrapped annotation as the binding's own policy.
        let policy = Arc::new(PreparedPolicy::new(&rego));
        let mut pod = pod();
        pod["metadata"]["annotations"] = json!({"io.katacontainers.config.agent.policy": wrapped});
        let d = decide(
            &pod,
            &[binding(&policy)],
            &SidecarDefaults::default(),
            &classes(),
        );
        assert!(matches!(d, Decision::Patch { .. }), "{d:?}");
    }
    // Anything else than line breaks is still refused, by both.
    let spaced = format!("{} {}", &flat[..8], &flat[8..]);
    assert!(annotation_policy_hash(&spaced).is_err());
    assert!(crate::cli::hash::hash_of(spaced.as_bytes(), true, "stdin").is_err());
}
