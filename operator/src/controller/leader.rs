//! Leader election through a `coordination.k8s.io/v1` Lease, so that of several replicas only one
//! runs the controller (every replica serves the webhook).
//!
//! The Lease protocol is `kube-lease-manager`'s: the holder renews the Lease `grace` before it
//! expires, every write is a server-side apply or a patch under the replica's own field manager,
//! so two candidates racing cannot both win (the loser gets 409 and backs off), and a candidate
//! takes an expired Lease over. What this module adds is the step-down: the library keeps
//! reporting a leader whose renewals fail as leading, so a renewal that fails makes this replica
//! stop leading at once, `grace` before its Lease expires and anyone else may take over; two
//! leaders then never overlap while clocks agree within `grace`. It then starts over with a fresh
//! manager, which takes its own still-valid Lease back as soon as the API server answers again.

use std::time::Duration;

use kube::Client;
use kube_lease_manager::{LeaseManager, LeaseManagerBuilder};
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
    /// How long a Lease is valid after its last renewal (`leaseDurationSeconds`; whole seconds).
    pub lease_duration: Duration,
    /// The holder renews this long before its Lease expires (whole seconds, < `lease_duration`);
    /// a failed renewal makes it step down then, so this is the margin before another replica
    /// may take over, and the clock skew between replicas that is tolerated.
    pub grace: Duration,
    /// How long to wait after a failed API call before the next attempt.
    pub retry_period: Duration,
}

impl LeaseSettings {
    /// The settings `ckb-operator run` elects with: a 15 s Lease, renewed 10 s after the last
    /// renewal; a leader whose renewal fails steps down then, 5 s before another replica may
    /// take over.
    pub fn operator(namespace: String, name: String, identity: String) -> Self {
        Self {
            namespace,
            name,
            identity,
            lease_duration: Duration::from_secs(15),
            grace: Duration::from_secs(5),
            retry_period: Duration::from_secs(2),
        }
    }

    /// How long after its last renewal a leader that cannot renew steps down.
    pub fn renew_deadline(&self) -> Duration {
        self.lease_duration.saturating_sub(self.grace)
    }

    async fn manager(&self, client: Client) -> kube_lease_manager::Result<LeaseManager> {
        LeaseManagerBuilder::new(client, &self.name)
            .with_namespace(&self.namespace)
            .with_identity(&self.identity)
            .with_duration(self.lease_duration.as_secs())
            .with_grace(self.grace.as_secs())
            .build()
            .await
    }
}

fn publish(leading: &watch::Sender<bool>, now: bool, identity: &str) {
    if *leading.borrow() == now {
        return;
    }
    if now {
        info!(%identity, "leading");
    } else {
        warn!(%identity, "not leading");
    }
    let _ = leading.send(now);
}

/// How [`follow`] ended.
enum Followed {
    /// Shutdown was requested.
    Shutdown,
    /// A renewal failed while leading: this replica stepped down.
    SteppedDown,
}

/// Drives `manager` and publishes whether this replica leads, until shutdown or a failed renewal.
async fn follow(
    manager: &LeaseManager,
    s: &LeaseSettings,
    leading: &watch::Sender<bool>,
    shutdown: &CancellationToken,
) -> Followed {
    loop {
        let Some(changed) = shutdown.run_until_cancelled(manager.changed()).await else {
            return Followed::Shutdown;
        };
        match changed {
            Ok(now) => publish(leading, now, &s.identity),
            Err(e) if *leading.borrow() => {
                warn!(error = %e, lease = %s.name, "cannot renew the leader lease: stepping down");
                publish(leading, false, &s.identity);
                return Followed::SteppedDown;
            }
            Err(e) => {
                warn!(error = %e, lease = %s.name, "leader lease round failed");
                if shutdown
                    .run_until_cancelled(tokio::time::sleep(s.retry_period))
                    .await
                    .is_none()
                {
                    return Followed::Shutdown;
                }
            }
        }
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
    while !shutdown.is_cancelled() {
        let manager = match shutdown
            .run_until_cancelled(settings.manager(client.clone()))
            .await
        {
            None => break,
            Some(Ok(m)) => m,
            Some(Err(e)) => {
                warn!(error = %e, lease = %settings.name, "cannot read the leader lease");
                let _ = shutdown
                    .run_until_cancelled(tokio::time::sleep(settings.retry_period))
                    .await;
                continue;
            }
        };
        if let Followed::Shutdown = follow(&manager, &settings, &leading, &shutdown).await {
            if *leading.borrow() {
                let _ = leading.send(false);
                match manager.release().await {
                    Ok(()) => info!("released the leader lease"),
                    Err(e) => warn!(error = %e, "could not release the leader lease"),
                }
            }
            break;
        }
    }
}

#[cfg(test)]
#[path = "leader_tests.rs"]
mod tests;
