//! The caches' readiness and what the policy cache keeps of a ConfigMap.

use kube::runtime::watcher::Event;

use super::*;
use crate::policy::hash_rego;

/// Several tasks waiting on one store all see it become ready (the webhook's sources, the
/// readiness probe and the controller's first pass do this in `run`).
#[tokio::test]
async fn every_concurrent_waiter_sees_the_store_ready() {
    let (store, mut writer) = reflector::store::<ConfigMap>();
    let waiters: Vec<_> = (0..4)
        .map(|_| {
            let s = store.clone();
            tokio::spawn(async move { store_ready(&s).await })
        })
        .collect();
    // Let every waiter poll (and register its waker) before the store becomes ready.
    tokio::task::yield_now().await;
    writer.apply_watcher_event(&Event::Init);
    writer.apply_watcher_event(&Event::InitDone);
    for w in waiters {
        let ready = tokio::time::timeout(Duration::from_secs(5), w)
            .await
            .expect("a waiter hung")
            .unwrap();
        assert!(ready);
    }
}

fn cm(data: &[(&str, &str)], binary: &[&str]) -> ConfigMap {
    ConfigMap {
        metadata: kube::api::ObjectMeta {
            name: Some("p".into()),
            namespace: Some("ns".into()),
            uid: Some("u-1".into()),
            resource_version: Some("42".into()),
            labels: Some([(labels::POLICY.to_string(), "true".to_string())].into()),
            annotations: Some([("big".to_string(), "x".repeat(1000))].into()),
            managed_fields: Some(vec![Default::default()]),
            ..Default::default()
        },
        data: Some(
            data.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        ),
        binary_data: Some(
            binary
                .iter()
                .map(|k| (k.to_string(), k8s_openapi::ByteString(vec![0; 4096])))
                .collect(),
        ),
        immutable: None,
    }
}

#[test]
fn the_summary_keeps_per_referenced_key_its_hash_and_size_never_the_text() {
    let padding = "x".repeat(900 * 1024);
    let huge = "y".repeat(POLICY_CACHE_LIMIT + 1);
    let c = cm(
        &[
            ("policy.rego", "package a\n"),
            ("padding", &padding),
            ("blank", " \n"),
            ("huge", &huge),
        ],
        &["bin", "other"],
    );
    let keys: BTreeSet<String> = ["policy.rego", "bin", "blank", "huge", "gone"]
        .map(String::from)
        .into();
    let s = PolicySummary::of(&c, &keys);
    assert_eq!(
        s.keys,
        BTreeMap::from([
            (
                "policy.rego".to_string(),
                PolicyKey::Text {
                    bytes: 10,
                    blank: false,
                    hash: hash_rego(b"package a\n"),
                }
            ),
            ("bin".to_string(), PolicyKey::Binary),
            (
                "blank".to_string(),
                PolicyKey::Text {
                    bytes: 2,
                    blank: true,
                    hash: hash_rego(b" \n"),
                }
            ),
            // Over the limit: its size is known (PolicyTooLarge) without keeping it.
            (
                "huge".to_string(),
                PolicyKey::Text {
                    bytes: POLICY_CACHE_LIMIT + 1,
                    blank: false,
                    hash: hash_rego(huge.as_bytes()),
                }
            ),
            ("gone".to_string(), PolicyKey::Absent),
        ])
    );
    assert!(s.labelled);
    assert_eq!(s.version(), "42");
    // Only what identifies the version: no labels, annotations or managed fields.
    assert_eq!(
        s.metadata,
        kube::api::ObjectMeta {
            name: Some("p".into()),
            namespace: Some("ns".into()),
            uid: Some("u-1".into()),
            resource_version: Some("42".into()),
            ..Default::default()
        }
    );
    // Whatever the ConfigMap holds, the summary is small.
    let held = serde_json::to_vec(&s).unwrap().len();
    assert!(held < 1024, "{held} bytes");

    let mut unlabelled = c.clone();
    unlabelled.metadata.labels = None;
    assert!(!PolicySummary::of(&unlabelled, &keys).labelled);
}

#[test]
fn one_test_of_the_policy_label_for_the_watch_and_the_objects() {
    let selector = policy_label_selector();
    assert_eq!(selector, "ckb.dev/policy=true");
    let meta = |v: Option<&str>| kube::api::ObjectMeta {
        labels: v.map(|v| [(labels::POLICY.to_string(), v.to_string())].into()),
        ..Default::default()
    };
    assert!(is_policy_config_map(&meta(Some("true"))));
    assert!(!is_policy_config_map(&meta(Some("false"))));
    assert!(!is_policy_config_map(&meta(None)));
}

#[test]
fn referenced_config_maps_are_per_namespace_with_their_keys() {
    let b = |ns: &str, name: &str, cm: &str, key: &str| {
        let mut b = ConfidentialKeyBinding::new(
            name,
            serde_json::from_value(serde_json::json!({
                "podSelector": {},
                "key": {"vault": "https://demo.vault.azure.net", "name": "k"},
                "attestation": {"authority": "https://sharedeus.eus.attest.azure.net"},
                "policy": {"configMapRef": {"name": cm, "key": key}}
            }))
            .unwrap(),
        );
        b.metadata.namespace = Some(ns.into());
        b
    };
    let bindings = [
        b("a", "x", "p", "policy.rego"),
        b("a", "y", "p", "other"),
        b("b", "z", "p", "policy.rego"),
    ];
    let refs = referenced_config_maps(bindings.iter());
    assert_eq!(refs.len(), 2);
    assert_eq!(
        refs[&ObjectRef::new("p").within("a")],
        ["other".to_string(), "policy.rego".to_string()].into()
    );
    assert_eq!(
        refs[&ObjectRef::new("p").within("b")],
        ["policy.rego".to_string()].into()
    );
}

#[tokio::test]
async fn a_dropped_writer_is_not_ready() {
    let (store, writer) = reflector::store::<ConfigMap>();
    drop(writer);
    assert!(!store_ready(&store).await);
}
