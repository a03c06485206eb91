//! The webhook's policies: fetched once per ConfigMap version and checked against the cache's
//! summary, refused (never guessed) when they cannot be read, and kept within a byte bound.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ckb_crds::labels;
use http::{Request, Response};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::client::Body;
use kube::runtime::reflector::{self, store::Writer};
use kube::runtime::watcher::Event;
use serde_json::json;

use super::*;
use crate::policy::hash_rego;

/// A mock API server that serves ConfigMaps by name, counts the GETs, and can be made slow.
#[derive(Clone, Default)]
struct Api {
    config_maps: Arc<Mutex<BTreeMap<String, ConfigMap>>>,
    gets: Arc<Mutex<usize>>,
    delay: Arc<Mutex<Duration>>,
}

impl Api {
    fn client(&self) -> Client {
        let (svc, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let me = self.clone();
        tokio::spawn(async move {
            while let Some((req, send)) = handle.next_request().await {
                let me = me.clone();
                tokio::spawn(async move {
                    *me.gets.lock().unwrap() += 1;
                    let delay = *me.delay.lock().unwrap();
                    tokio::time::sleep(delay).await;
                    let name = req.uri().path().rsplit('/').next().unwrap().to_string();
                    let found = me.config_maps.lock().unwrap().get(&name).cloned();
                    let (status, body) = match found {
                        Some(cm) => (200, serde_json::to_vec(&cm).unwrap()),
                        None => (
                            404,
                            serde_json::to_vec(&json!({
                                "kind": "Status", "apiVersion": "v1", "status": "Failure",
                                "reason": "NotFound", "code": 404, "message": "not found"
                            }))
                            .unwrap(),
                        ),
                    };
                    send.send_response(
                        Response::builder()
                            .status(status)
                            .header("content-type", "application/json")
                            .body(Body::from(body))
                            .unwrap(),
                    );
                });
            }
        });
        Client::new(svc, "default")
    }

    fn serve(&self, cm: &ConfigMap) {
        let name = cm.metadata.name.clone().unwrap();
        self.config_maps.lock().unwrap().insert(name, cm.clone());
    }

    fn gets(&self) -> usize {
        *self.gets.lock().unwrap()
    }
}

fn policy_config_map(name: &str, version: &str, rego: &str) -> ConfigMap {
    serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": "payments", "resourceVersion": version,
                     "labels": {labels::POLICY: "true"}},
        "data": {"policy.rego": rego}
    }))
    .unwrap()
}

/// Sources over a mock API; the summaries are what the reflector would hold.
fn sources(api: &Api) -> (StoreSources, Writer<PolicySummary>) {
    let (bindings, _) = reflector::store();
    let (summaries, writer) = reflector::store::<PolicySummary>();
    (StoreSources::new(bindings, summaries, api.client()), writer)
}

/// What the reflector holds after fetching `cm` (and the API serves it too).
fn publish(api: &Api, writer: &mut Writer<PolicySummary>, cm: &ConfigMap) {
    api.serve(cm);
    let summary = PolicySummary::of(cm, [&"policy.rego".to_string()]);
    writer.apply_watcher_event(&Event::Apply(summary));
}

async fn lookup(s: &StoreSources, name: &str) -> Option<Arc<PreparedPolicy>> {
    s.policy("payments", name, "policy.rego").await
}

#[tokio::test]
async fn a_policy_is_fetched_once_per_configmap_version() {
    let api = Api::default();
    let (s, mut writer) = sources(&api);
    assert!(
        lookup(&s, "orders-policy").await.is_none(),
        "nothing cached"
    );
    assert_eq!(api.gets(), 0, "no summary: nothing to fetch");

    publish(
        &api,
        &mut writer,
        &policy_config_map("orders-policy", "10", "package a\n"),
    );
    let first = lookup(&s, "orders-policy").await.expect("fetched");
    assert_eq!(first.hash(), &hash_rego(b"package a\n"));
    let again = lookup(&s, "orders-policy").await.unwrap();
    assert!(Arc::ptr_eq(&first, &again), "prepared once");
    assert_eq!(api.gets(), 1, "one GET for the version");

    // A new version: the new policy, fetched once more.
    publish(
        &api,
        &mut writer,
        &policy_config_map("orders-policy", "11", "package b\n"),
    );
    let second = lookup(&s, "orders-policy").await.expect("fetched");
    assert_eq!(second.hash(), &hash_rego(b"package b\n"));
    assert_eq!(api.gets(), 2);

    writer.apply_watcher_event(&Event::Delete(PolicySummary::of(
        &policy_config_map("orders-policy", "11", ""),
        [],
    )));
    assert!(
        lookup(&s, "orders-policy").await.is_none(),
        "a ConfigMap no longer cached has no policy, even if a prepared one is still held"
    );
}

#[tokio::test]
async fn concurrent_admissions_of_an_uncached_policy_make_one_get() {
    let api = Api::default();
    *api.delay.lock().unwrap() = Duration::from_millis(200);
    let (s, mut writer) = sources(&api);
    publish(
        &api,
        &mut writer,
        &policy_config_map("orders-policy", "10", "package a\n"),
    );
    let all = futures::future::join_all((0..8).map(|_| lookup(&s, "orders-policy"))).await;
    assert!(all.iter().all(|p| p.is_some()));
    assert_eq!(api.gets(), 1);
}

#[tokio::test]
async fn a_policy_that_cannot_be_read_or_trusted_is_refused() {
    let api = Api::default();
    let (s, mut writer) = sources(&api);
    // Summarized, but gone from the API server by the time a pod comes.
    writer.apply_watcher_event(&Event::Apply(PolicySummary::of(
        &policy_config_map("gone", "5", "package a\n"),
        [&"policy.rego".to_string()],
    )));
    assert!(lookup(&s, "gone").await.is_none());

    // No longer labelled: not a policy any more.
    let mut unlabelled = policy_config_map("unlabelled", "6", "package a\n");
    publish(&api, &mut writer, &unlabelled);
    unlabelled.metadata.labels = None;
    api.serve(&unlabelled);
    assert!(lookup(&s, "unlabelled").await.is_none());

    // The same version with another text than the summary's hash: refused.
    publish(
        &api,
        &mut writer,
        &policy_config_map("tampered", "7", "package a\n"),
    );
    api.serve(&policy_config_map("tampered", "7", "package evil\n"));
    assert!(lookup(&s, "tampered").await.is_none());

    // Over the annotation limit: refused without reading it.
    let before = api.gets();
    let huge = "x".repeat(POLICY_CACHE_LIMIT + 1);
    publish(&api, &mut writer, &policy_config_map("huge", "8", &huge));
    assert!(lookup(&s, "huge").await.is_none());
    assert_eq!(api.gets(), before);
    assert_eq!(s.prepared_bytes_held(), 0, "nothing refused is kept");
}

#[tokio::test]
async fn a_newer_version_than_the_summary_is_served_but_not_kept() {
    let api = Api::default();
    let (s, mut writer) = sources(&api);
    publish(
        &api,
        &mut writer,
        &policy_config_map("orders-policy", "10", "package a\n"),
    );
    // The ConfigMap changed; the reflector has not summarized the change yet.
    api.serve(&policy_config_map("orders-policy", "12", "package b\n"));
    let p = lookup(&s, "orders-policy").await.expect("served");
    assert_eq!(p.hash(), &hash_rego(b"package b\n"));
    lookup(&s, "orders-policy").await.expect("served");
    assert_eq!(api.gets(), 2, "not kept under the summary's version");
}

#[tokio::test(start_paused = true)]
async fn an_api_server_too_slow_for_the_webhook_yields_a_refusal_in_time() {
    let api = Api::default();
    *api.delay.lock().unwrap() = Duration::from_secs(60);
    let (s, mut writer) = sources(&api);
    publish(
        &api,
        &mut writer,
        &policy_config_map("orders-policy", "10", "package a\n"),
    );
    let start = tokio::time::Instant::now();
    assert!(lookup(&s, "orders-policy").await.is_none());
    let waited = start.elapsed();
    assert!(
        waited >= POLICY_FETCH_TIMEOUT && waited < POLICY_FETCH_TIMEOUT + Duration::from_secs(1),
        "{waited:?}"
    );
}

#[tokio::test]
async fn the_prepared_policies_stay_within_their_byte_bound() {
    let api = Api::default();
    let (s, mut writer) = sources(&api);
    // 60 distinct policies of 120 KiB: about 22 MiB once prepared, over the bound.
    let base = "# rule\n".repeat(120 * 1024 / 7);
    let mut held_max = 0;
    for i in 0..60 {
        let name = format!("p{i}");
        publish(
            &api,
            &mut writer,
            &policy_config_map(&name, "1", &format!("# {i}\n{base}")),
        );
        let p = lookup(&s, &name).await.expect("fetched");
        assert!(prepared_bytes(&p) > 120 * 1024 * 3);
        held_max = held_max.max(s.prepared_bytes_held());
    }
    assert!(
        held_max <= PREPARED_POLICY_BYTES,
        "{held_max} bytes held, bound {PREPARED_POLICY_BYTES}"
    );
    assert!(
        held_max > PREPARED_POLICY_BYTES / 2,
        "the bound is used: {held_max}"
    );
}
