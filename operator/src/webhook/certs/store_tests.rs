//! The Secret and webhook-configuration writes against a fake API server with real
//! resourceVersion semantics: two replicas never overwrite each other's material.

use std::sync::{Arc, Mutex};

use http::{Request, Response};
use kube::client::Body;
use serde_json::{Value, json};

use super::*;

#[derive(Default)]
struct Fake {
    secret: Option<Value>,
    rv: u64,
    /// Material another replica writes just before our next write lands.
    race: Option<TlsMaterial>,
    mwc: Option<Value>,
    log: Vec<String>,
}

fn secret_json(m: &TlsMaterial, rv: u64) -> Value {
    let mut s = serde_json::to_value(Secret {
        metadata: kube::api::ObjectMeta {
            name: Some("tls".into()),
            namespace: Some("ckb-system".into()),
            ..Default::default()
        },
        type_: Some("kubernetes.io/tls".into()),
        data: Some(m.to_data()),
        ..Default::default()
    })
    .unwrap();
    s["metadata"]["resourceVersion"] = json!(rv.to_string());
    s
}

fn status(code: u16, reason: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "message": reason, "reason": reason, "code": code})
}

impl Fake {
    fn answer(&mut self, method: &str, path: &str, body: Value) -> (u16, Value) {
        self.log.push(format!("{method} {path}"));
        let secret_write = method == "POST" || method == "PUT";
        if secret_write
            && path.contains("/secrets")
            && let Some(other) = self.race.take()
        {
            self.rv += 1;
            self.secret = Some(secret_json(&other, self.rv));
        }
        match (method, path) {
            ("GET", "/api/v1/namespaces/ckb-system/secrets/tls") => match &self.secret {
                Some(s) => (200, s.clone()),
                None => (404, status(404, "NotFound")),
            },
            ("POST", "/api/v1/namespaces/ckb-system/secrets") => {
                if self.secret.is_some() {
                    return (409, status(409, "AlreadyExists"));
                }
                self.rv += 1;
                let mut s = body;
                s["metadata"]["resourceVersion"] = json!(self.rv.to_string());
                self.secret = Some(s.clone());
                (201, s)
            }
            ("PUT", "/api/v1/namespaces/ckb-system/secrets/tls") => {
                let current = self
                    .secret
                    .as_ref()
                    .map(|s| s["metadata"]["resourceVersion"].clone());
                if current != Some(body["metadata"]["resourceVersion"].clone()) {
                    return (409, status(409, "Conflict"));
                }
                self.rv += 1;
                let mut s = body;
                s["metadata"]["resourceVersion"] = json!(self.rv.to_string());
                self.secret = Some(s.clone());
                (200, s)
            }
            (
                "GET",
                "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/ckb-operator",
            ) => match &self.mwc {
                Some(m) => (200, m.clone()),
                None => (404, status(404, "NotFound")),
            },
            (
                "PATCH",
                "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/ckb-operator",
            ) => {
                // Strategic merge of `webhooks` by name, as the API server does.
                let Some(mwc) = self.mwc.as_mut() else {
                    return (404, status(404, "NotFound"));
                };
                for p in body["webhooks"].as_array().into_iter().flatten() {
                    for w in mwc["webhooks"].as_array_mut().into_iter().flatten() {
                        if w["name"] == p["name"] {
                            w["clientConfig"]["caBundle"] = p["clientConfig"]["caBundle"].clone();
                        }
                    }
                }
                (200, mwc.clone())
            }
            _ => (404, status(404, "NotFound")),
        }
    }
}

fn client(fake: Arc<Mutex<Fake>>) -> kube::Client {
    let (svc, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    tokio::spawn(async move {
        while let Some((req, send)) = handle.next_request().await {
            let method = req.method().to_string();
            let path = req.uri().path().to_string();
            let ctype = req
                .headers()
                .get("content-type")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string();
            let bytes = req.into_body().collect_bytes().await.unwrap_or_default();
            let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            if method == "PATCH" {
                assert_eq!(ctype, "application/strategic-merge-patch+json");
            }
            let (code, answer) = fake.lock().unwrap().answer(&method, &path, body);
            send.send_response(
                Response::builder()
                    .status(code)
                    .header("content-type", "application/json")
                    .body(Body::from(serde_json::to_vec(&answer).unwrap()))
                    .unwrap(),
            );
        }
    });
    kube::Client::new(svc, "default")
}

fn cfg() -> SelfManaged {
    SelfManaged {
        namespace: "ckb-system".into(),
        secret: "tls".into(),
        webhook_config: "ckb-operator".into(),
        hosts: vec!["ckb-operator-webhook.ckb-system.svc".into()],
        timings: CertTimings::default(),
        check_interval: Duration::from_secs(30),
    }
}

fn material() -> TlsMaterial {
    let empty = TlsMaterial::default();
    let now = Timestamp::now();
    let steps = plan(&empty, &cfg().hosts, now, &cfg().timings);
    apply(&empty, &steps, &cfg().hosts, now, &cfg().timings).unwrap()
}

#[tokio::test]
async fn creates_the_secret_once_and_then_leaves_it_alone() {
    let fake = Arc::new(Mutex::new(Fake::default()));
    let c = client(fake.clone());
    let m1 = ensure_secret(&c, &cfg()).await.unwrap();
    let m2 = ensure_secret(&c, &cfg()).await.unwrap();
    assert_eq!(m1, m2);
    let log = fake.lock().unwrap().log.clone();
    assert_eq!(
        log,
        vec![
            "GET /api/v1/namespaces/ckb-system/secrets/tls",
            "POST /api/v1/namespaces/ckb-system/secrets",
            "GET /api/v1/namespaces/ckb-system/secrets/tls",
        ]
    );
}

#[tokio::test]
async fn losing_a_create_race_adopts_the_winner() {
    let winner = material();
    let fake = Arc::new(Mutex::new(Fake {
        race: Some(winner.clone()),
        ..Default::default()
    }));
    let got = ensure_secret(&client(fake.clone()), &cfg()).await.unwrap();
    assert_eq!(got, winner);
    let f = fake.lock().unwrap();
    assert_eq!(
        TlsMaterial::from_secret(&serde_json::from_value(f.secret.clone().unwrap()).unwrap()),
        winner
    );
    assert_eq!(f.log.iter().filter(|l| l.starts_with("POST")).count(), 1);
}

#[tokio::test]
async fn losing_an_update_race_adopts_the_winner() {
    // Stored: material whose names are stale, so we want to re-issue; meanwhile the other
    // replica already did.
    let mut stale_cfg = cfg();
    stale_cfg.hosts = vec!["old.ckb-system.svc".into()];
    let old = {
        let empty = TlsMaterial::default();
        let now = Timestamp::now();
        let steps = plan(&empty, &stale_cfg.hosts, now, &stale_cfg.timings);
        apply(&empty, &steps, &stale_cfg.hosts, now, &stale_cfg.timings).unwrap()
    };
    let winner = {
        let now = Timestamp::now();
        let steps = plan(&old, &cfg().hosts, now, &cfg().timings);
        apply(&old, &steps, &cfg().hosts, now, &cfg().timings).unwrap()
    };
    let fake = Arc::new(Mutex::new(Fake {
        secret: Some(secret_json(&old, 1)),
        rv: 1,
        race: Some(winner.clone()),
        ..Default::default()
    }));
    let got = ensure_secret(&client(fake.clone()), &cfg()).await.unwrap();
    assert_eq!(got, winner);
    let log = fake.lock().unwrap().log.clone();
    assert_eq!(
        log.iter().filter(|l| l.starts_with("PUT")).count(),
        1,
        "{log:?}"
    );
}

#[tokio::test]
async fn two_replicas_at_once_end_with_the_same_material() {
    let fake = Arc::new(Mutex::new(Fake::default()));
    let (a, b) = (client(fake.clone()), client(fake.clone()));
    let cfg = cfg();
    let (ma, mb) = tokio::join!(ensure_secret(&a, &cfg), ensure_secret(&b, &cfg));
    assert_eq!(ma.unwrap(), mb.unwrap());
    let f = fake.lock().unwrap();
    let writes = f
        .log
        .iter()
        .filter(|l| l.starts_with("POST") || l.starts_with("PUT"))
        .count();
    assert!(writes <= 2, "{:?}", f.log);
}

#[tokio::test]
async fn ca_bundle_is_written_into_stale_webhook_entries_only() {
    let m = material();
    let good = STANDARD.encode(m.ca_bundle.as_bytes());
    let fake = Arc::new(Mutex::new(Fake {
        mwc: Some(json!({
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "MutatingWebhookConfiguration",
            "metadata": {"name": "ckb-operator", "resourceVersion": "5"},
            "webhooks": [
                {"name": "pods.ckb.dev", "admissionReviewVersions": ["v1"], "sideEffects": "None",
                 "clientConfig": {"service": {"name": "ckb-operator-webhook", "namespace": "ckb-system", "path": "/mutate"}}},
                {"name": "pods-legacy.ckb.dev", "admissionReviewVersions": ["v1"], "sideEffects": "None",
                 "clientConfig": {"caBundle": good, "service": {"name": "ckb-operator-webhook", "namespace": "ckb-system", "path": "/mutate"}}},
            ]
        })),
        ..Default::default()
    }));
    let c = client(fake.clone());
    assert_eq!(
        ensure_ca_bundle(&c, "ckb-operator", &m.ca_bundle)
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        ensure_ca_bundle(&c, "ckb-operator", &m.ca_bundle)
            .await
            .unwrap(),
        0
    );
    {
        let f = fake.lock().unwrap();
        let mwc = f.mwc.as_ref().unwrap();
        for w in mwc["webhooks"].as_array().unwrap() {
            assert_eq!(w["clientConfig"]["caBundle"], json!(good));
            assert_eq!(w["clientConfig"]["service"]["path"], "/mutate");
        }
        assert_eq!(f.log.iter().filter(|l| l.starts_with("PATCH")).count(), 1);
    }
    // A missing configuration is not an error (the chart may install it later).
    let empty = Arc::new(Mutex::new(Fake::default()));
    assert_eq!(
        ensure_ca_bundle(&client(empty), "ckb-operator", &m.ca_bundle)
            .await
            .unwrap(),
        0
    );
}
