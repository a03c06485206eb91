//! The prepared policy: the spliced patch encoding means the same patch as the plain one, the
//! prepared cache follows the ConfigMap's version, and the webhook and `ckb-operator hash
//! --annotation` agree on wrapped base64.

use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::runtime::reflector;
use kube::runtime::watcher::Event;
use serde_json::{Value, json};

use super::mutate::{Decision, MatchedBinding, SidecarDefaults, decide};
use super::policy::{PreparedPolicy, annotation_policy_hash, encode_patch, encode_plain};
use super::sources::{Sources, StoreSources};
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

fn patch_of(pod: &Value, policy: &Arc<PreparedPolicy>) -> json_patch::Patch {
    patch_named(pod, policy, "orders-key")
}

fn patch_named(pod: &Value, policy: &Arc<PreparedPolicy>, binding_name: &str) -> json_patch::Patch {
    let mut b = binding(policy);
    b.name = binding_name.to_string();
    match decide(pod, &[b], &SidecarDefaults::default(), &classes()) {
        Decision::Patch { patch, policy, .. } => {
            assert!(policy.is_some(), "the decision names the injected policy");
            patch
        }
        other => panic!("not a patch: {other:?}"),
    }
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
                let plain = encode_plain(&patch);
                let spliced = encode_patch(patch.clone(), Some(&policy));
                let what = format!("{policy_len} {binding_name} {with_annotations}");
                assert_eq!(decoded(&spliced), decoded(&plain), "{what}");
                // And applied, it gives the pod the policy's annotation.
                let mut applied = pod.clone();
                let ops: json_patch::Patch = serde_json::from_value(decoded(&spliced)).unwrap();
                json_patch::patch(&mut applied, &ops).unwrap();
                assert_eq!(
                    applied["metadata"]["annotations"]["io.katacontainers.config.agent.policy"],
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
fn a_pod_that_carries_the_placeholder_text_still_gets_its_exact_patch() {
    let policy = Arc::new(PreparedPolicy::new("package agent_policy\n"));
    let placeholder = "\u{0}ckb-agent-policy\u{0}";
    // As a value the patch carries, and as a key.
    for (where_, pod) in [
        ("value", {
            let mut p = pod();
            p["spec"]["containers"][0]["env"][0]["value"] = Value::String(placeholder.into());
            p
        }),
        ("key", {
            let mut p = pod();
            p["metadata"]["annotations"] = json!({ placeholder: "x" });
            p
        }),
    ] {
        let patch = patch_of(&pod, &policy);
        let spliced = encode_patch(patch.clone(), Some(&policy));
        assert_eq!(
            decoded(&spliced),
            decoded(&encode_plain(&patch)),
            "{where_}"
        );
    }
}

#[test]
fn a_patch_without_the_policy_is_encoded_plainly() {
    let policy = Arc::new(PreparedPolicy::new("package agent_policy\n"));
    let mut pod = pod();
    pod["metadata"]["annotations"] =
        json!({"io.katacontainers.config.agent.policy": policy.annotation()});
    let patch = patch_of(&pod, &policy);
    assert_eq!(
        encode_patch(patch.clone(), Some(&policy)),
        encode_plain(&patch)
    );
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

fn policy_config_map(version: &str, rego: &str) -> ConfigMap {
    serde_json::from_value(json!({
        "metadata": {"name": "orders-policy", "namespace": "payments", "resourceVersion": version},
        "data": {"policy.rego": rego}
    }))
    .unwrap()
}

#[tokio::test]
async fn the_store_sources_prepare_a_policy_once_per_configmap_version() {
    let (bindings, _bindings_writer) = reflector::store();
    let (config_maps, mut writer) = reflector::store::<ConfigMap>();
    let sources = StoreSources::new(bindings, config_maps);
    let lookup = || sources.policy("payments", "orders-policy", "policy.rego");
    assert!(lookup().is_none(), "nothing cached yet");

    writer.apply_watcher_event(&Event::Apply(policy_config_map("10", "package a\n")));
    let first = lookup().expect("cached");
    assert_eq!(first.hash(), &hash_rego(b"package a\n"));
    assert!(
        Arc::ptr_eq(&first, &lookup().unwrap()),
        "the same version is prepared once"
    );

    // A new version of the ConfigMap: the new policy, not the prepared old one.
    writer.apply_watcher_event(&Event::Apply(policy_config_map("11", "package b\n")));
    let second = lookup().expect("cached");
    assert_eq!(second.hash(), &hash_rego(b"package b\n"));
    assert_eq!(second.annotation(), STANDARD.encode("package b\n"));

    writer.apply_watcher_event(&Event::Delete(policy_config_map("11", "package b\n")));
    assert!(lookup().is_none(), "a deleted ConfigMap has no policy");
}
