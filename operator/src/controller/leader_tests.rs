//! The election against a Lease API served from memory, with the timings `ckb-operator run` uses.
//! Time is paused (tokio advances it when every task waits), so a wait that never ends fails at
//! its timeout instead of hanging.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use jiff::Timestamp;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::ObjectMeta;
use serde_json::{Value, json};

use super::*;

fn operator_settings(identity: &str) -> LeaseSettings {
    LeaseSettings::operator("ckb-system".into(), "ckb-operator".into(), identity.into())
}

/// RFC 7386 merge: what a strategic merge patch or an apply patch does to the Lease's plain fields.
fn merge(target: &mut Value, patch: &Value) {
    match (target.as_object_mut(), patch.as_object()) {
        (Some(t), Some(p)) => {
            for (k, v) in p {
                if v.is_null() {
                    t.remove(k);
                } else {
                    merge(t.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        _ => *target = patch.clone(),
    }
}

/// A Lease API served from memory; `unhealthy` makes every call fail with 500. Records the
/// (paused) time of every successful write.
#[derive(Clone, Default)]
struct LeaseApi {
    lease: Arc<Mutex<Option<Value>>>,
    unhealthy: Arc<AtomicBool>,
    writes: Arc<Mutex<Vec<tokio::time::Instant>>>,
}

impl LeaseApi {
    fn holding(holder: &str, renewed: Timestamp, seconds: i32) -> Self {
        let lease = Lease {
            metadata: ObjectMeta {
                name: Some("ckb-operator".into()),
                namespace: Some("ckb-system".into()),
                resource_version: Some("1".into()),
                ..Default::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(holder.into()),
                acquire_time: Some(MicroTime(renewed)),
                renew_time: Some(MicroTime(renewed)),
                lease_duration_seconds: Some(seconds),
                lease_transitions: Some(3),
                ..Default::default()
            }),
        };
        let api = Self::default();
        *api.lease.lock().unwrap() = Some(serde_json::to_value(lease).unwrap());
        api
    }

    fn spec(&self) -> LeaseSpec {
        let lease: Lease =
            serde_json::from_value(self.lease.lock().unwrap().clone().unwrap()).unwrap();
        lease.spec.unwrap_or_default()
    }

    fn last_write(&self) -> tokio::time::Instant {
        *self.writes.lock().unwrap().last().unwrap()
    }

    fn client(&self) -> Client {
        use http::{Request, Response};
        use kube::client::Body;
        let (svc, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let me = self.clone();
        tokio::spawn(async move {
            while let Some((req, send)) = handle.next_request().await {
                let method = req.method().to_string();
                let bytes = req.into_body().collect_bytes().await.unwrap_or_default();
                let (status, body) = me.answer(&method, &bytes);
                send.send_response(
                    Response::builder()
                        .status(status)
                        .header("content-type", "application/json")
                        .body(Body::from(serde_json::to_vec(&body).unwrap()))
                        .unwrap(),
                );
            }
        });
        Client::new(svc, "default")
    }

    fn answer(&self, method: &str, body: &[u8]) -> (u16, Value) {
        let status = |code: u16, reason: &str| {
            json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                   "reason": reason, "message": reason, "code": code})
        };
        if self.unhealthy.load(Ordering::SeqCst) {
            return (500, status(500, "InternalError"));
        }
        let mut lease = self.lease.lock().unwrap();
        let written = match (method, lease.as_mut()) {
            ("GET", Some(l)) => return (200, l.clone()),
            ("GET", None) | ("PATCH", None) => return (404, status(404, "NotFound")),
            ("POST", None) => lease.insert(serde_json::from_slice(body).unwrap()),
            ("POST", Some(_)) => return (409, status(409, "AlreadyExists")),
            ("PATCH", Some(l)) => {
                merge(l, &serde_json::from_slice(body).unwrap());
                l
            }
            _ => return (405, status(405, "MethodNotAllowed")),
        };
        let rv = written["metadata"]["resourceVersion"]
            .as_str()
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
        written["metadata"]["resourceVersion"] = (rv + 1).to_string().into();
        let answer = written.clone();
        self.writes
            .lock()
            .unwrap()
            .push(tokio::time::Instant::now());
        (if method == "POST" { 201 } else { 200 }, answer)
    }
}

/// Awaits `fut` for at most `limit` (paused time advances on its own), failing the test with what
/// it waited for instead of hanging.
async fn within<F: std::future::Future>(limit: Duration, what: &str, fut: F) -> F::Output {
    tokio::time::timeout(limit, fut)
        .await
        .unwrap_or_else(|_| panic!("waited {limit:?} {what}"))
}

struct Candidate {
    rx: watch::Receiver<bool>,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

fn candidate(api: &LeaseApi, s: &LeaseSettings) -> Candidate {
    let (tx, rx) = watch::channel(false);
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(run(api.client(), s.clone(), tx, shutdown.clone()));
    Candidate { rx, shutdown, task }
}

#[test]
fn the_operators_timings_step_down_before_another_may_take_over() {
    let s = operator_settings("pod-a");
    // A leader that cannot renew steps down `grace` before its Lease expires.
    assert!(s.renew_deadline() < s.lease_duration, "{s:?}");
    assert!(s.grace >= Duration::from_secs(2), "{s:?}");
    // Whole seconds: the Lease stores leaseDurationSeconds, the manager takes seconds.
    assert_eq!(s.lease_duration.subsec_nanos(), 0);
    assert_eq!(s.grace.subsec_nanos(), 0);
}

#[tokio::test(start_paused = true)]
async fn with_the_operators_timings_a_leader_cut_off_from_the_api_steps_down_before_its_lease_expires()
 {
    let s = operator_settings("pod-a");
    let api = LeaseApi::default();
    let mut c = candidate(&api, &s);
    within(s.retry_period, "to lead", c.rx.wait_for(|l| *l))
        .await
        .unwrap();
    assert_eq!(api.spec().holder_identity.as_deref(), Some("pod-a"));
    assert_eq!(api.spec().lease_duration_seconds, Some(15));

    // Healthy: renewed before every expiry.
    let since = tokio::time::Instant::now();
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert!(*c.rx.borrow(), "stopped leading while the API was healthy");
    let writes: Vec<_> = api
        .writes
        .lock()
        .unwrap()
        .iter()
        .copied()
        .filter(|w| *w >= since)
        .collect();
    assert!(writes.len() >= 5, "{} renewals in 60 s", writes.len());
    for w in writes.windows(2) {
        assert!(w[1] - w[0] <= s.renew_deadline(), "{:?}", w[1] - w[0]);
    }

    // Cut off: it steps down at its next renewal, before the Lease it last wrote expires, that is
    // before any other replica may take over.
    api.unhealthy.store(true, Ordering::SeqCst);
    let last_write = api.last_write();
    // A leader that never steps down fails here (in paused time the wait would never end).
    within(s.lease_duration, "to step down", c.rx.wait_for(|l| !*l))
        .await
        .unwrap();
    let stepped_down_after = last_write.elapsed();
    let lease_seconds = u64::try_from(api.spec().lease_duration_seconds.unwrap()).unwrap();
    assert!(
        stepped_down_after + s.grace
            <= Duration::from_secs(lease_seconds) + Duration::from_millis(500),
        "stepped down {stepped_down_after:?} after the last renewal of a {lease_seconds} s Lease: \
         less than {:?} before another replica may take over",
        s.grace
    );

    // The API answers again: its own Lease, still valid, is taken back at once.
    api.unhealthy.store(false, Ordering::SeqCst);
    within(s.retry_period * 2, "to lead again", c.rx.wait_for(|l| *l))
        .await
        .unwrap();

    // Shutdown gives the Lease up, so another replica takes over at once.
    c.shutdown.cancel();
    within(s.retry_period, "to stop after shutdown", c.task)
        .await
        .unwrap();
    assert_eq!(api.spec().holder_identity, None);
}

#[tokio::test(start_paused = true)]
async fn a_valid_lease_of_another_replica_is_followed() {
    let s = operator_settings("pod-a");
    let api = LeaseApi::holding("pod-b", Timestamp::now(), 3600);
    let mut c = candidate(&api, &s);
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert!(!*c.rx.borrow(), "took over a valid Lease of pod-b");
    assert_eq!(api.spec().holder_identity.as_deref(), Some("pod-b"));
    c.shutdown.cancel();
    within(s.retry_period, "to stop after shutdown", &mut c.task)
        .await
        .unwrap();
    // A follower does not touch the holder's Lease on the way out.
    assert_eq!(api.spec().holder_identity.as_deref(), Some("pod-b"));
}

#[tokio::test(start_paused = true)]
async fn an_expired_lease_of_another_replica_is_taken_over() {
    let s = operator_settings("pod-a");
    let expired = Timestamp::now() - jiff::SignedDuration::from_secs(3600);
    let api = LeaseApi::holding("pod-b", expired, 15);
    let mut c = candidate(&api, &s);
    within(s.lease_duration, "to take over", c.rx.wait_for(|l| *l))
        .await
        .unwrap();
    let spec = api.spec();
    assert_eq!(spec.holder_identity.as_deref(), Some("pod-a"));
    assert_eq!(spec.lease_transitions, Some(4));
    c.shutdown.cancel();
    within(s.retry_period, "to stop after shutdown", c.task)
        .await
        .unwrap();
}
