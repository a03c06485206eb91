//! The grants' watch without the grant CRD, and what a grant change re-plans.

use std::io::Write;
use std::pin::pin;
use std::sync::{Arc, Mutex};

use ckb_crds::ConfidentialKeyBinding;
use ckb_crds::grant::ConfidentialKeyGrant;
use futures::{StreamExt, stream};
use kube::core::Status;
use kube::runtime::reflector::{self, ObjectRef};
use kube::runtime::watcher::{self, Event};
use serde_json::json;

use super::grant_watch::{bindings_to_replan, crd_missing, tolerate_missing_crd};

fn not_found() -> watcher::Error {
    watcher::Error::InitialListFailed(kube::Error::Api(
        Status::failure(
            "the server could not find the requested resource",
            "NotFound",
        )
        .with_code(404)
        .boxed(),
    ))
}

fn forbidden() -> watcher::Error {
    watcher::Error::InitialListFailed(kube::Error::Api(
        Status::failure("forbidden", "Forbidden")
            .with_code(403)
            .boxed(),
    ))
}

fn grant(name: &str) -> ConfidentialKeyGrant {
    ConfidentialKeyGrant::new(
        name,
        serde_json::from_value(json!({
            "vault": "https://demo.vault.azure.net",
            "namespaces": {"names": ["payments"]},
            "attestation": {"authorities": ["https://sharedeus.eus.attest.azure.net"]}
        }))
        .unwrap(),
    )
}

fn binding(ns: &str, name: &str, grant: Option<&str>) -> Arc<ConfidentialKeyBinding> {
    let mut spec = json!({
        "podSelector": {},
        "key": {"vault": "https://demo.vault.azure.net", "name": "k"},
        "attestation": {"authority": "https://sharedeus.eus.attest.azure.net"},
        "policy": {"configMapRef": {"name": "p"}}
    });
    if let Some(g) = grant {
        spec["grantRef"] = json!({"name": g});
    }
    let mut b = ConfidentialKeyBinding::new(name, serde_json::from_value(spec).unwrap());
    b.metadata.namespace = Some(ns.into());
    Arc::new(b)
}

/// The log lines written while the returned guard lives (this thread only).
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn install(&self) -> tracing::subscriber::DefaultGuard {
        let w = self.clone();
        let sub = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::INFO)
            .with_ansi(false)
            .with_writer(move || w.clone())
            .finish();
        tracing::subscriber::set_default(sub)
    }
    fn count(&self, needle: &str) -> usize {
        String::from_utf8_lossy(&self.0.lock().unwrap())
            .matches(needle)
            .count()
    }
}

#[test]
fn only_a_404_means_the_crd_is_missing() {
    assert!(crd_missing(&not_found()));
    assert!(!crd_missing(&forbidden()));
    assert!(!crd_missing(&watcher::Error::NoResourceVersion));
}

#[tokio::test]
async fn a_missing_grant_crd_is_no_grants_said_once_and_a_crd_installed_later_is_picked_up() {
    let log = Captured::default();
    let _guard = log.install();
    let (store, writer) = reflector::store::<ConfidentialKeyGrant>();
    // Three failed attempts (the watcher retries with backoff), then the CRD is installed.
    let source = stream::iter(vec![
        Err(not_found()),
        Err(not_found()),
        Err(not_found()),
        Ok(Event::Init),
        Ok(Event::InitApply(grant("payments"))),
        Ok(Event::InitDone),
        // Removed again.
        Err(not_found()),
    ]);
    let mut events = pin!(reflector::reflector(writer, tolerate_missing_crd(source)));

    // The first 404 is an empty listing: the store is ready (nothing waits for ever) and empty.
    assert!(matches!(events.next().await, Some(Ok(Event::Init))));
    assert!(matches!(events.next().await, Some(Ok(Event::InitDone))));
    store.wait_until_ready().await.unwrap();
    assert!(store.state().is_empty());
    // The next two 404s produce nothing; the real listing comes through.
    assert!(matches!(events.next().await, Some(Ok(Event::Init))));
    assert!(matches!(events.next().await, Some(Ok(Event::InitApply(_)))));
    assert!(matches!(events.next().await, Some(Ok(Event::InitDone))));
    assert!(store.get(&ObjectRef::new("payments")).is_some());
    // The CRD goes: no grants again.
    assert!(matches!(events.next().await, Some(Ok(Event::Init))));
    assert!(matches!(events.next().await, Some(Ok(Event::InitDone))));
    assert!(events.next().await.is_none());
    assert!(store.state().is_empty());

    assert_eq!(log.count("ConfidentialKeyGrant CRD is not installed"), 2);
    assert_eq!(log.count("ConfidentialKeyGrant CRD is installed"), 1);
}

#[tokio::test]
async fn other_errors_pass_through_and_do_not_make_the_store_ready() {
    let (store, writer) = reflector::store::<ConfidentialKeyGrant>();
    let source = stream::iter(vec![Err(forbidden())]);
    let out: Vec<_> = reflector::reflector(writer, tolerate_missing_crd(source))
        .collect()
        .await;
    assert!(matches!(out.as_slice(), [Err(e)] if !crd_missing(e)));
    // The writer is gone with the stream: waiting ends, but not with "ready".
    let ready = tokio::time::timeout(
        std::time::Duration::from_millis(50),
        store.wait_until_ready(),
    )
    .await;
    assert!(
        !matches!(ready, Ok(Ok(()))),
        "a 403 is a real failure: the cache must not claim to be synced"
    );
}

#[test]
fn a_grant_change_replans_the_bindings_naming_it_and_a_relisting_all_with_a_grant() {
    let bindings = vec![
        binding("payments", "a", Some("payments")),
        binding("billing", "b", Some("billing")),
        binding("payments", "flags", None),
    ];
    let names = |refs: Vec<ObjectRef<ConfidentialKeyBinding>>| {
        refs.into_iter().map(|r| r.name).collect::<Vec<_>>()
    };
    for ev in [
        Event::Apply(grant("payments")),
        Event::Delete(grant("payments")),
    ] {
        assert_eq!(names(bindings_to_replan(&ev, &bindings)), vec!["a"]);
    }
    assert_eq!(
        names(bindings_to_replan(&Event::InitDone, &bindings)),
        vec!["a", "b"]
    );
    assert!(bindings_to_replan(&Event::Init, &bindings).is_empty());
    assert!(bindings_to_replan(&Event::InitApply(grant("payments")), &bindings).is_empty());
}
