//! The caches' readiness and what the policy cache keeps of a ConfigMap.

use kube::runtime::watcher::Event;

use super::*;

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

fn cm(data: &[(&str, usize)], binary: &[&str]) -> ConfigMap {
    ConfigMap {
        metadata: kube::api::ObjectMeta {
            name: Some("p".into()),
            namespace: Some("ns".into()),
            annotations: Some([("big".to_string(), "x".repeat(1000))].into()),
            managed_fields: Some(vec![Default::default()]),
            ..Default::default()
        },
        data: Some(
            data.iter()
                .map(|(k, n)| (k.to_string(), "x".repeat(*n)))
                .collect(),
        ),
        binary_data: Some(
            binary
                .iter()
                .map(|k| (k.to_string(), ByteString(vec![0; 4096])))
                .collect(),
        ),
        immutable: None,
    }
}

#[test]
fn the_policy_view_keeps_only_referenced_keys_up_to_the_limit() {
    let keys: BTreeSet<String> = ["policy.rego".to_string(), "bin".to_string()].into();
    let view = policy_view(
        cm(
            &[("policy.rego", 100), ("padding", 900 * 1024)],
            &["bin", "other"],
        ),
        &keys,
    );
    let data = view.data.as_ref().unwrap();
    assert_eq!(data.keys().collect::<Vec<_>>(), vec!["policy.rego"]);
    assert_eq!(data["policy.rego"].len(), 100);
    // binaryData: presence only, so "the policy is in binaryData" can still be reported.
    let bin = view.binary_data.as_ref().unwrap();
    assert_eq!(bin.keys().collect::<Vec<_>>(), vec!["bin"]);
    assert!(bin["bin"].0.is_empty());
    assert!(view.metadata.managed_fields.is_none());
    assert!(view.metadata.annotations.is_none());
    assert!(!omitted(&view, "policy.rego"));

    // A referenced policy over the limit is left out and named.
    let view = policy_view(cm(&[("policy.rego", POLICY_CACHE_LIMIT + 1)], &[]), &keys);
    assert!(view.data.as_ref().unwrap().is_empty());
    assert!(omitted(&view, "policy.rego"));
    assert!(!omitted(&view, "bin"));
    // At the limit it is kept: such a policy still fits a pod's annotations.
    let view = policy_view(cm(&[("policy.rego", POLICY_CACHE_LIMIT)], &[]), &keys);
    assert_eq!(
        view.data.as_ref().unwrap()["policy.rego"].len(),
        POLICY_CACHE_LIMIT
    );
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
