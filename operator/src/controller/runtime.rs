//! Caches and triggers: the reflectors every replica runs (the webhook reads their stores), and
//! the controller the leader runs on top of them.
//!
//! Each reflector applies a watch event to its store, then maps it to the bindings it concerns
//! and broadcasts their references. The leader's controller subscribes to that broadcast, so it
//! shares the watches and caches with the webhook instead of opening its own, and every trigger
//! is sent after the store that the reconcile reads already holds the change.

use std::convert::Infallible;
use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use ckb_crds::{ConfidentialKeyBinding, labels};
use futures::{Stream, StreamExt, stream};
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use kube::runtime::controller::{self, applier};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::watcher::{self, Event};
use kube::runtime::{WatchStreamExt, reflector::store::Writer};
use kube::{Api, Client, Resource};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::index::{INJECTED_LABEL, bindings_for_config_map, bindings_for_pod, slim_pod};
use super::reconcile::{Context, count_ready, error_policy, reconcile};

/// The caches shared by the controller and the webhook.
#[derive(Clone)]
pub struct Caches {
    /// Every ConfidentialKeyBinding.
    pub bindings: Store<ConfidentialKeyBinding>,
    /// ConfigMaps labelled `ckb.dev/policy=true`.
    pub config_maps: Store<ConfigMap>,
    /// Pods labelled `ckb.dev/injected=true`, slimmed to what the controller reads.
    pub pods: Store<Pod>,
}

impl Caches {
    /// Waits until every cache has listed its objects once.
    pub async fn wait_until_ready(&self) {
        store_ready(&self.bindings).await;
        store_ready(&self.config_maps).await;
        store_ready(&self.pods).await;
    }
}

/// Waits until `store` has listed its objects once; false if its writer is gone first.
///
/// NB: use this rather than `Store::wait_until_ready` wherever several tasks wait on one store.
/// kube-runtime's readiness signal is a oneshot receiver behind a mutex: it keeps only the waker
/// of the last waiter that polled it, so of several concurrent waiters all but one may never be
/// woken (seen on a real API server: the readiness probe and the controller's first pass hung
/// forever). Polling again on a short timer lets every waiter see the signal.
pub async fn store_ready<K>(store: &Store<K>) -> bool
where
    K: Resource + Clone + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone,
{
    loop {
        if let Ok(r) = tokio::time::timeout(STORE_READY_POLL, store.wait_until_ready()).await {
            return r.is_ok();
        }
    }
}

/// How often [`store_ready`] looks again.
const STORE_READY_POLL: Duration = Duration::from_millis(100);

/// Sender side of the binding triggers.
pub type Triggers = broadcast::Sender<ObjectRef<ConfidentialKeyBinding>>;

const TRIGGER_BUFFER: usize = 8192;

fn objects<K>(event: &Event<K>) -> impl Iterator<Item = &K> {
    match event {
        Event::Apply(o) | Event::InitApply(o) | Event::Delete(o) => Some(o),
        Event::Init | Event::InitDone => None,
    }
    .into_iter()
}

async fn drive<K, S>(
    what: &'static str,
    writer: Writer<K>,
    watch: S,
    mut on_event: impl FnMut(&Event<K>),
) where
    K: Resource + Clone + Send + Sync + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone + Default,
    S: Stream<Item = Result<Event<K>, watcher::Error>> + Send,
{
    let mut events = pin!(reflector::reflector(writer, watch));
    while let Some(ev) = events.next().await {
        match ev {
            Ok(ev) => on_event(&ev),
            Err(e) => warn!(cache = what, error = %e, "watch failed; retrying with backoff"),
        }
    }
}

/// Starts the three reflectors; returns their caches, the trigger sender, and the future that
/// drives them (run it on every replica until shutdown).
pub fn reflectors(
    client: Client,
) -> (
    Caches,
    Triggers,
    impl std::future::Future<Output = ()> + Send + 'static,
) {
    let (bindings, bindings_w) = reflector::store::<ConfidentialKeyBinding>();
    let (config_maps, config_maps_w) = reflector::store::<ConfigMap>();
    let (pods, pods_w) = reflector::store::<Pod>();
    let (tx, _) = broadcast::channel(TRIGGER_BUFFER);

    let b_api: Api<ConfidentialKeyBinding> = Api::all(client.clone());
    let cm_api: Api<ConfigMap> = Api::all(client.clone());
    let pod_api: Api<Pod> = Api::all(client);
    let cm_cfg = watcher::Config::default().labels(&format!("{}=true", labels::POLICY));
    let pod_cfg = watcher::Config::default().labels(&format!("{INJECTED_LABEL}=true"));

    let b_tx = tx.clone();
    let b_fut = drive(
        "bindings",
        bindings_w,
        watcher::watcher(b_api, watcher::Config::default())
            .default_backoff()
            .modify(|b: &mut ConfidentialKeyBinding| b.metadata.managed_fields = None),
        move |ev| {
            for o in objects(ev) {
                let _ = b_tx.send(ObjectRef::from_obj(o));
            }
        },
    );
    let cm_tx = tx.clone();
    let bindings_for_cm = bindings.clone();
    let cm_fut = drive(
        "configmaps",
        config_maps_w,
        watcher::watcher(cm_api, cm_cfg)
            .default_backoff()
            .modify(|c: &mut ConfigMap| c.metadata.managed_fields = None),
        move |ev| {
            let all = bindings_for_cm.state();
            for cm in objects(ev) {
                for r in bindings_for_config_map(all.iter().map(|b| b.as_ref()), cm) {
                    let _ = cm_tx.send(r);
                }
            }
        },
    );
    let pod_tx = tx.clone();
    let pod_fut = drive(
        "pods",
        pods_w,
        watcher::watcher(pod_api, pod_cfg)
            .default_backoff()
            .modify(slim_pod),
        move |ev| {
            for p in objects(ev) {
                for r in bindings_for_pod(p) {
                    let _ = pod_tx.send(r);
                }
            }
        },
    );
    let caches = Caches {
        bindings,
        config_maps,
        pods,
    };
    let driver = async move {
        futures::join!(b_fut, cm_fut, pod_fut);
    };
    (caches, tx, driver)
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

#[cfg(test)]
mod tests {
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

    #[tokio::test]
    async fn a_dropped_writer_is_not_ready() {
        let (store, writer) = reflector::store::<ConfigMap>();
        drop(writer);
        assert!(!store_ready(&store).await);
    }
}
