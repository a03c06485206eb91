//! Leader election through a `coordination.k8s.io/v1` Lease, so that of several replicas only one
//! runs the controller (every replica serves the webhook).
//!
//! kube 5 has no elector, so this is the usual protocol by hand: the holder renews `renewTime`
//! every `retry_period`; a candidate takes the Lease over once `renewTime + leaseDurationSeconds`
//! has passed; every write is a `replace` carrying the `resourceVersion` it read, so two
//! candidates racing cannot both win (the loser gets 409). A leader that cannot renew for
//! `renew_deadline` (shorter than the lease duration) steps down before anyone else may take
//! over, so two leaders never overlap while clocks agree within `lease_duration - renew_deadline`.

use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{ObjectMeta, PostParams};
use kube::{Api, Client};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// Lease settings.
#[derive(Debug, Clone)]
pub struct LeaseSettings {
    /// Namespace of the Lease (the operator's own).
    pub namespace: String,
    /// Lease name.
    pub name: String,
    /// This replica's identity (pod name).
    pub identity: String,
    /// How long a lease is valid after its last renewal.
    pub lease_duration: Duration,
    /// A leader that could not renew for this long steps down (< `lease_duration`).
    pub renew_deadline: Duration,
    /// How often to renew or try to acquire.
    pub retry_period: Duration,
}

impl LeaseSettings {
    /// The settings `ckb-operator run` elects with: a 15 s Lease, renewed every 2 s, given up
    /// by a leader that could not renew for 10 s, so it steps down (at the latest one retry
    /// period after that, 12 s) before another replica may take over (15 s).
    pub fn operator(namespace: String, name: String, identity: String) -> Self {
        Self {
            namespace,
            name,
            identity,
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        }
    }
}

/// What a candidate should do, given the Lease as read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseDecision {
    /// No Lease yet: create it, holding it.
    Create,
    /// We hold it: renew.
    Renew,
    /// Nobody holds it validly: take it over.
    TakeOver,
    /// Someone else holds it until then.
    Follow {
        /// The holder.
        holder: String,
    },
}

/// Decides from the Lease spec (pure).
pub fn decide(lease: Option<&LeaseSpec>, identity: &str, now: Timestamp) -> LeaseDecision {
    let Some(spec) = lease else {
        return LeaseDecision::Create;
    };
    let holder = spec.holder_identity.as_deref().unwrap_or_default();
    if holder == identity {
        return LeaseDecision::Renew;
    }
    if holder.is_empty() {
        return LeaseDecision::TakeOver;
    }
    let expires = spec.renew_time.as_ref().map(|t| {
        t.0 + jiff::SignedDuration::from_secs(i64::from(spec.lease_duration_seconds.unwrap_or(0)))
    });
    match expires {
        Some(e) if e > now => LeaseDecision::Follow {
            holder: holder.to_string(),
        },
        _ => LeaseDecision::TakeOver,
    }
}

/// The Lease spec after `decision` (pure); `None` for [`LeaseDecision::Follow`].
pub fn next_spec(
    current: Option<&LeaseSpec>,
    decision: &LeaseDecision,
    settings: &LeaseSettings,
    now: Timestamp,
) -> Option<LeaseSpec> {
    let duration = i32::try_from(settings.lease_duration.as_secs()).unwrap_or(i32::MAX);
    let transitions = current.and_then(|c| c.lease_transitions).unwrap_or(0);
    match decision {
        LeaseDecision::Follow { .. } => None,
        LeaseDecision::Renew => {
            let mut spec = current.cloned().unwrap_or_default();
            spec.renew_time = Some(MicroTime(now));
            spec.lease_duration_seconds = Some(duration);
            Some(spec)
        }
        LeaseDecision::Create | LeaseDecision::TakeOver => Some(LeaseSpec {
            holder_identity: Some(settings.identity.clone()),
            acquire_time: Some(MicroTime(now)),
            renew_time: Some(MicroTime(now)),
            lease_duration_seconds: Some(duration),
            lease_transitions: Some(if matches!(decision, LeaseDecision::Create) {
                0
            } else {
                transitions + 1
            }),
            ..Default::default()
        }),
    }
}

/// One round: read the Lease, decide, write. Returns whether we hold the Lease now.
async fn round(api: &Api<Lease>, s: &LeaseSettings) -> Result<bool, kube::Error> {
    let now = Timestamp::now();
    let lease = api.get_opt(&s.name).await?;
    let decision = decide(
        lease.as_ref().and_then(|l| l.spec.as_ref()),
        &s.identity,
        now,
    );
    let Some(spec) = next_spec(
        lease.as_ref().and_then(|l| l.spec.as_ref()),
        &decision,
        s,
        now,
    ) else {
        return Ok(false);
    };
    let result = match lease {
        None => {
            let new = Lease {
                metadata: ObjectMeta {
                    name: Some(s.name.clone()),
                    namespace: Some(s.namespace.clone()),
                    ..Default::default()
                },
                spec: Some(spec),
            };
            api.create(&PostParams::default(), &new).await
        }
        Some(mut l) => {
            // resourceVersion is kept from the read: a concurrent writer makes this fail (409).
            l.spec = Some(spec);
            api.replace(&s.name, &PostParams::default(), &l).await
        }
    };
    match result {
        Ok(_) => {
            if decision != LeaseDecision::Renew {
                info!(identity = %s.identity, lease = %s.name, "acquired the leader lease");
            }
            Ok(true)
        }
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
        Err(e) => Err(e),
    }
}

/// Runs the election until `shutdown`; publishes whether this replica leads. On shutdown a
/// leader gives the Lease up so that another replica takes over at once.
pub async fn run(
    client: Client,
    settings: LeaseSettings,
    leading: watch::Sender<bool>,
    shutdown: CancellationToken,
) {
    let api: Api<Lease> = Api::namespaced(client, &settings.namespace);
    let mut last_renewed: Option<tokio::time::Instant> = None;
    loop {
        let is_leader = match round(&api, &settings).await {
            Ok(true) => {
                last_renewed = Some(tokio::time::Instant::now());
                true
            }
            Ok(false) => {
                last_renewed = None;
                false
            }
            Err(e) => {
                warn!(error = %e, "leader lease round failed");
                // Keep leading only while the last renewal is recent enough.
                last_renewed.is_some_and(|t| t.elapsed() < settings.renew_deadline)
            }
        };
        if *leading.borrow() != is_leader {
            if is_leader {
                info!(identity = %settings.identity, "leading");
            } else {
                warn!(identity = %settings.identity, "not leading");
            }
            let _ = leading.send(is_leader);
        }
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep(settings.retry_period) => {}
        }
    }
    if *leading.borrow() {
        let _ = leading.send(false);
        release(&api, &settings).await;
    }
}

async fn release(api: &Api<Lease>, s: &LeaseSettings) {
    let Ok(Some(mut lease)) = api.get_opt(&s.name).await else {
        return;
    };
    let ours = lease
        .spec
        .as_ref()
        .and_then(|sp| sp.holder_identity.as_deref())
        == Some(s.identity.as_str());
    if !ours {
        return;
    }
    if let Some(spec) = lease.spec.as_mut() {
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
    }
    match api.replace(&s.name, &PostParams::default(), &lease).await {
        Ok(_) => info!("released the leader lease"),
        Err(e) => warn!(error = %e, "could not release the leader lease"),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    fn settings() -> LeaseSettings {
        LeaseSettings {
            namespace: "ckb-system".into(),
            name: "ckb-operator".into(),
            identity: "pod-a".into(),
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        }
    }

    fn t(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn held_by(holder: &str, renewed: &str) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(holder.into()),
            renew_time: Some(MicroTime(t(renewed))),
            lease_duration_seconds: Some(15),
            lease_transitions: Some(3),
            ..Default::default()
        }
    }

    #[test]
    fn no_lease_is_created() {
        assert_eq!(
            decide(None, "pod-a", t("2026-01-01T00:00:00Z")),
            LeaseDecision::Create
        );
        let spec = next_spec(
            None,
            &LeaseDecision::Create,
            &settings(),
            t("2026-01-01T00:00:00Z"),
        )
        .unwrap();
        assert_eq!(spec.holder_identity.as_deref(), Some("pod-a"));
        assert_eq!(spec.lease_duration_seconds, Some(15));
        assert_eq!(spec.lease_transitions, Some(0));
    }

    #[test]
    fn a_valid_lease_of_another_is_followed_until_it_expires() {
        let other = held_by("pod-b", "2026-01-01T00:00:00Z");
        assert_eq!(
            decide(Some(&other), "pod-a", t("2026-01-01T00:00:14Z")),
            LeaseDecision::Follow {
                holder: "pod-b".into()
            }
        );
        assert_eq!(
            decide(Some(&other), "pod-a", t("2026-01-01T00:00:15Z")),
            LeaseDecision::TakeOver
        );
        let spec = next_spec(
            Some(&other),
            &LeaseDecision::TakeOver,
            &settings(),
            t("2026-01-01T00:00:15Z"),
        )
        .unwrap();
        assert_eq!(spec.holder_identity.as_deref(), Some("pod-a"));
        assert_eq!(spec.lease_transitions, Some(4));
    }

    #[test]
    fn own_lease_is_renewed_and_a_released_one_taken() {
        let mine = held_by("pod-a", "2026-01-01T00:00:00Z");
        assert_eq!(
            decide(Some(&mine), "pod-a", t("2026-01-01T01:00:00Z")),
            LeaseDecision::Renew
        );
        let spec = next_spec(
            Some(&mine),
            &LeaseDecision::Renew,
            &settings(),
            t("2026-01-01T00:00:05Z"),
        )
        .unwrap();
        assert_eq!(spec.renew_time.unwrap().0, t("2026-01-01T00:00:05Z"));
        assert_eq!(spec.lease_transitions, Some(3));
        let mut released = held_by("pod-b", "2026-01-01T00:00:00Z");
        released.holder_identity = None;
        assert_eq!(
            decide(Some(&released), "pod-a", t("2026-01-01T00:00:01Z")),
            LeaseDecision::TakeOver
        );
    }

    fn operator_settings() -> LeaseSettings {
        LeaseSettings::operator("ckb-system".into(), "ckb-operator".into(), "pod-a".into())
    }

    #[test]
    fn the_operators_timings_step_down_before_another_may_take_over() {
        let s = operator_settings();
        // A leader that fails notices at its first round past the renew deadline, which comes
        // at most one retry period later; the Lease must still be valid then.
        assert!(
            s.renew_deadline + s.retry_period < s.lease_duration,
            "{s:?}"
        );
        // Several renewal attempts fit before the deadline (one failed round is not a step-down).
        assert!(s.retry_period * 3 <= s.renew_deadline, "{s:?}");
        // Whole seconds: the Lease stores leaseDurationSeconds.
        assert_eq!(s.lease_duration.subsec_nanos(), 0);
    }

    /// A Lease API served from memory; `healthy` off makes every call fail with 500. Records the
    /// (paused) time of every successful write.
    #[derive(Clone, Default)]
    struct LeaseApi {
        lease: Arc<Mutex<Option<serde_json::Value>>>,
        unhealthy: Arc<std::sync::atomic::AtomicBool>,
        writes: Arc<Mutex<Vec<tokio::time::Instant>>>,
    }

    impl LeaseApi {
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

        fn answer(&self, method: &str, body: &[u8]) -> (u16, serde_json::Value) {
            let status = |code: u16, reason: &str| {
                serde_json::json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                                   "reason": reason, "message": reason, "code": code})
            };
            if self.unhealthy.load(std::sync::atomic::Ordering::SeqCst) {
                return (500, status(500, "InternalError"));
            }
            let mut lease = self.lease.lock().unwrap();
            match method {
                "GET" => match lease.as_ref() {
                    Some(l) => (200, l.clone()),
                    None => (404, status(404, "NotFound")),
                },
                "POST" | "PUT" => {
                    let mut l: serde_json::Value = serde_json::from_slice(body).unwrap();
                    let rv = lease
                        .as_ref()
                        .and_then(|l| l["metadata"]["resourceVersion"].as_str())
                        .and_then(|v| v.parse::<u64>().ok())
                        .unwrap_or(0);
                    l["metadata"]["resourceVersion"] = (rv + 1).to_string().into();
                    *lease = Some(l.clone());
                    self.writes
                        .lock()
                        .unwrap()
                        .push(tokio::time::Instant::now());
                    (if method == "POST" { 201 } else { 200 }, l)
                }
                _ => (405, status(405, "MethodNotAllowed")),
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn with_the_operators_timings_a_leader_cut_off_from_the_api_steps_down_before_its_lease_expires()
     {
        let s = operator_settings();
        let api = LeaseApi::default();
        let (tx, mut rx) = watch::channel(false);
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(run(api.client(), s.clone(), tx, shutdown.clone()));
        rx.wait_for(|l| *l).await.unwrap();

        // Healthy: renewed every retry period.
        tokio::time::sleep(Duration::from_secs(30)).await;
        let writes = api.writes.lock().unwrap().clone();
        assert!(writes.len() >= 14, "{} writes in 30 s", writes.len());
        for w in writes.windows(2) {
            assert!(w[1] - w[0] <= s.retry_period + Duration::from_millis(100));
        }

        // Cut off: it keeps leading for a while, but stops before the Lease it last wrote
        // expires, that is before any other replica may take over.
        api.unhealthy
            .store(true, std::sync::atomic::Ordering::SeqCst);
        let last_write = *api.writes.lock().unwrap().last().unwrap();
        rx.wait_for(|l| !*l).await.unwrap();
        let stepped_down_after = last_write.elapsed();
        assert!(
            stepped_down_after >= s.renew_deadline,
            "stepped down after {stepped_down_after:?}, before the renew deadline"
        );
        let lease: Lease =
            serde_json::from_value(api.lease.lock().unwrap().clone().unwrap()).unwrap();
        let spec = lease.spec.unwrap();
        let renewed = spec.renew_time.as_ref().unwrap().0;
        let at_step_down = renewed + jiff::SignedDuration::try_from(stepped_down_after).unwrap();
        assert_eq!(
            decide(Some(&spec), "pod-b", at_step_down),
            LeaseDecision::Follow {
                holder: "pod-a".into()
            },
            "another replica could take over {stepped_down_after:?} after the last renewal, \
             while this one still led"
        );
        assert!(stepped_down_after < s.lease_duration);
        shutdown.cancel();
        task.await.unwrap();
    }
}
