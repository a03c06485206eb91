//! The controller the leader runs on top of the shared caches ([`crate::caches`], filled by
//! [`reflectors`]), and the election around it.

use std::convert::Infallible;
use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use ckb_crds::ConfidentialKeyBinding;
use futures::{Stream, StreamExt, stream};
use kube::runtime::controller::{self, applier};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Api, Client};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

// The caches moved to `crate::caches`; their old paths stay valid.
use super::reconcile::{Context, count_ready, error_policy, reconcile};
pub use super::reflectors::reflectors;
pub use crate::caches::{
    Caches, GrantStores, POLICY_CACHE_LIMIT, PolicySummary, Triggers, referenced_config_maps,
    store_ready,
};

impl GrantStores {
    /// The grant a binding names and its namespace's labels.
    pub fn lookup(&self, binding: &ConfidentialKeyBinding) -> super::grant::GrantLookup {
        let grant = binding
            .spec
            .grant_ref
            .as_ref()
            .and_then(|r| self.grants.get(&ObjectRef::new(&r.name)));
        let namespace_labels = binding
            .metadata
            .namespace
            .as_deref()
            .and_then(|ns| self.namespaces.get(&ObjectRef::new(ns)))
            .map(|n| n.metadata.labels.clone().unwrap_or_default());
        super::grant::GrantLookup {
            grant,
            namespace_labels,
        }
    }
}

/// The stream of bindings to reconcile: every binding once (the leader may have just taken
/// over), then every trigger; if the broadcast overflowed, every binding again.
fn queue(
    bindings: Store<ConfidentialKeyBinding>,
    rx: broadcast::Receiver<ObjectRef<ConfidentialKeyBinding>>,
) -> impl Stream<Item = Result<ObjectRef<ConfidentialKeyBinding>, Infallible>> + Send {
    let all = |s: &Store<ConfidentialKeyBinding>| {
        s.state()
            .iter()
            .map(|b| ObjectRef::from_obj(b.as_ref()))
            .collect::<Vec<_>>()
    };
    let initial_store = bindings.clone();
    let initial = stream::once(async move {
        store_ready(&initial_store).await;
        all(&initial_store)
    });
    let live = stream::unfold((rx, bindings), move |(mut rx, store)| async move {
        match rx.recv().await {
            Ok(r) => Some((vec![r], (rx, store))),
            Err(broadcast::error::RecvError::Lagged(n)) => {
                warn!(
                    missed = n,
                    "trigger queue overflowed; reconciling every binding"
                );
                let refs = all(&store);
                Some((refs, (rx, store)))
            }
            Err(broadcast::error::RecvError::Closed) => None,
        }
    });
    initial
        .chain(live)
        .flat_map(stream::iter)
        .map(Ok::<_, Infallible>)
}

/// Runs the controller until `stop` is cancelled (then lets in-flight reconciles finish).
pub async fn run_controller(
    ctx: Arc<Context>,
    caches: Caches,
    triggers: &Triggers,
    concurrency: u16,
    stop: CancellationToken,
) {
    info!("controller starting");
    // The applier waits on the bindings store with Store::wait_until_ready, which may never wake
    // when other tasks wait too (see store_ready); once readiness has been seen it answers at once.
    tokio::select! {
        _ = caches.wait_until_ready() => {}
        _ = stop.cancelled() => return,
    }
    let q = queue(caches.bindings.clone(), triggers.subscribe())
        .take_until(stop.clone().cancelled_owned());
    let config = controller::Config::default()
        .debounce(Duration::from_millis(200))
        .concurrency(concurrency);
    let metrics_store = caches.bindings.clone();
    let metrics = ctx.metrics.clone();
    let ctx_metrics = ctx.metrics.clone();
    let scanner = {
        let tx = triggers.clone();
        super::uninjected::scan(
            ctx.client.clone(),
            caches.bindings.clone(),
            ctx.uninjected.clone(),
            super::uninjected::SCAN_INTERVAL,
            move |obj| {
                let _ = tx.send(obj);
            },
        )
    };
    let counter = async move {
        loop {
            count_ready(&metrics_store, &metrics);
            tokio::time::sleep(Duration::from_secs(10)).await;
        }
    };
    let run = applier(
        |b, c| Box::pin(reconcile(b, c)),
        error_policy,
        ctx,
        caches.bindings,
        q,
        config,
    )
    .for_each(|r| async move {
        match r {
            Ok((obj, _)) => debug!(binding = %obj, "reconciled"),
            Err(controller::Error::ObjectNotFound(obj)) => {
                debug!(binding = %obj, "binding is gone")
            }
            Err(e) => debug!(error = %e, "reconcile error (see the reconcile log)"),
        }
    });
    let series = ctx_metrics.clone();
    tokio::select! {
        _ = run => {}
        _ = counter => {}
        _ = scanner => {}
    }
    // A replica that stops leading must not keep showing per-binding series it no longer updates.
    series.set_binding_states([]);
    info!("controller stopped");
}

/// Reads the UID of the `kube-system` namespace (the `ckb-cluster` tag), unless overridden.
pub async fn cluster_uid(client: &Client, override_: Option<&str>) -> Result<String, kube::Error> {
    if let Some(id) = override_.filter(|s| !s.trim().is_empty()) {
        return Ok(id.trim().to_string());
    }
    let api: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
    let ns = api.get("kube-system").await?;
    Ok(ns.metadata.uid.unwrap_or_default())
}

/// What [`run_elected`] runs.
pub struct Elected {
    /// Client for the Lease.
    pub client: Client,
    /// Reconcile context.
    pub ctx: Arc<Context>,
    /// Shared caches.
    pub caches: Caches,
    /// Binding triggers from the reflectors.
    pub triggers: Triggers,
    /// Lease settings; `None` runs the controller without an election.
    pub election: Option<super::leader::LeaseSettings>,
    /// Bindings reconciled at once.
    pub concurrency: u16,
    /// How long in-flight reconciles get to finish on shutdown.
    pub drain: Duration,
}

/// Runs the controller while this replica leads (or always, without an election), until
/// `shutdown`. Losing the lease stops the controller at once (in-flight reconciles are dropped:
/// every reconcile re-reads before it writes, so another leader picks up cleanly); on shutdown
/// the controller stops taking work, gets `drain` to finish what it does, then the lease is given
/// up.
pub async fn run_elected(parts: Elected, shutdown: CancellationToken) {
    let Elected {
        client,
        ctx,
        caches,
        triggers,
        election,
        concurrency,
        drain,
    } = parts;
    let Some(settings) = election else {
        let stop = shutdown.child_token();
        run_controller(ctx, caches, &triggers, concurrency, stop).await;
        return;
    };
    let (leading_tx, mut leading) = tokio::sync::watch::channel(false);
    let election_stop = CancellationToken::new();
    let election = tokio::spawn(super::leader::run(
        client,
        settings,
        leading_tx,
        election_stop.clone(),
    ));
    loop {
        // Wait to lead (or to stop).
        tokio::select! {
            _ = shutdown.cancelled() => break,
            changed = leading.wait_for(|l| *l) => if changed.is_err() { break },
        }
        let stop = CancellationToken::new();
        let mut run = pin!(run_controller(
            ctx.clone(),
            caches.clone(),
            &triggers,
            concurrency,
            stop.clone(),
        ));
        tokio::select! {
            _ = &mut run => {}
            _ = leading.wait_for(|l| !*l) => {
                warn!("lost the leader lease: controller stopped");
                continue;
            }
            _ = shutdown.cancelled() => {
                stop.cancel();
                if tokio::time::timeout(drain, &mut run).await.is_err() {
                    warn!("in-flight reconciles did not finish in time");
                }
                break;
            }
        }
    }
    election_stop.cancel();
    let _ = election.await;
}
