//! Caches and triggers: the reflectors every replica runs (the webhook reads their stores), and
//! the controller the leader runs on top of them.
//!
//! Each reflector applies a watch event to its store, then maps it to the bindings it concerns
//! and broadcasts their references. The leader's controller subscribes to that broadcast, so it
//! shares the watches and caches with the webhook instead of opening its own, and every trigger
//! is sent after the store that the reconcile reads already holds the change.
//!
//! # Bounded memory
//!
//! Anyone who may write ConfigMaps in any namespace may label them `ckb.dev/policy=true`, so the
//! policy cache must not grow with what they write. It holds only the ConfigMaps that bindings
//! reference (writing bindings is a deliberate RBAC grant), and of those only the referenced keys,
//! each only up to [`POLICY_CACHE_LIMIT`] (a policy that cannot fit a pod's annotations is never
//! useful; the reconcile then reads it once, directly, to say how large it is). Labelled
//! ConfigMaps are watched by *metadata only* (`PartialObjectMeta`: names and resource versions,
//! never the data), and a referenced one is fetched by a GET when it appears or its resource
//! version changes. Grants and namespaces are watched the same way: grants are small and
//! cluster-admin-written, namespaces by metadata only (their labels, for grant selectors).

use std::convert::Infallible;
use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use std::collections::{BTreeSet, HashMap, HashSet};

use ckb_crds::grant::ConfidentialKeyGrant;
use ckb_crds::{ConfidentialKeyBinding, labels};
use futures::{Stream, StreamExt, stream};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod};
use kube::core::PartialObjectMeta;
use kube::runtime::controller::{self, applier};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::watcher::{self, Event};
use kube::runtime::{WatchStreamExt, reflector::store::Writer};
use kube::{Api, Client, Resource};
use tokio::sync::{Notify, broadcast};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::grant_watch::{bindings_to_replan, tolerate_missing_crd};
use super::index::{INJECTED_LABEL, bindings_for_config_map, bindings_for_pod, slim_pod};
use super::reconcile::{Context, count_ready, error_policy, reconcile};

/// The caches shared by the controller and the webhook.
#[derive(Clone)]
pub struct Caches {
    /// Every ConfidentialKeyBinding.
    pub bindings: Store<ConfidentialKeyBinding>,
    /// ConfigMaps labelled `ckb.dev/policy=true` that bindings reference, with only the referenced
    /// keys, each up to [`POLICY_CACHE_LIMIT`] (see [`policy_view`]).
    pub config_maps: Store<ConfigMap>,
    /// Pods labelled `ckb.dev/injected=true`, slimmed to what the controller reads.
    pub pods: Store<Pod>,
    /// ConfidentialKeyGrants and namespace labels.
    pub grants: GrantStores,
}

impl Caches {
    /// Waits until every cache has listed its objects once.
    pub async fn wait_until_ready(&self) {
        store_ready(&self.bindings).await;
        store_ready(&self.config_maps).await;
        store_ready(&self.pods).await;
        store_ready(&self.grants.grants).await;
        store_ready(&self.grants.namespaces).await;
    }
}

/// The caches the cluster's bounds are read from.
#[derive(Clone)]
pub struct GrantStores {
    /// Every ConfidentialKeyGrant.
    pub grants: Store<ConfidentialKeyGrant>,
    /// Every namespace, metadata only (labels, for grants' namespace selectors).
    pub namespaces: Store<PartialObjectMeta<Namespace>>,
}

impl Default for GrantStores {
    /// Empty stores (no grant, no namespace known).
    fn default() -> Self {
        Self {
            grants: reflector::store::<ConfidentialKeyGrant>().0,
            namespaces: reflector::store::<PartialObjectMeta<Namespace>>().0,
        }
    }
}

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

/// The longest policy text the cache holds: the most Rego whose base64 fits a pod's 256 KiB of
/// annotations. Anything longer is refused anyway (`PolicyTooLarge`); it is not held in memory.
pub const POLICY_CACHE_LIMIT: usize = super::plan::ANNOTATION_BUDGET / 4 * 3;

/// Annotation on a *cached copy* of a ConfigMap (never written to the cluster) listing the
/// referenced keys left out because their value is over [`POLICY_CACHE_LIMIT`].
pub const OMITTED_ANNOTATION: &str = "ckb.dev/cache-omitted-keys";

/// What the cache keeps of a referenced policy ConfigMap: its metadata (without managed fields),
/// and of `data` and `binaryData` only the `keys` bindings reference; a `data` value over
/// [`POLICY_CACHE_LIMIT`] is left out and named in [`OMITTED_ANNOTATION`]; `binaryData` values
/// are emptied (only their presence is reported).
pub fn policy_view(cm: ConfigMap, keys: &BTreeSet<String>) -> ConfigMap {
    let mut omitted = Vec::new();
    let data = cm.data.map(|d| {
        d.into_iter()
            .filter(|(k, v)| {
                if !keys.contains(k) {
                    return false;
                }
                if v.len() > POLICY_CACHE_LIMIT {
                    omitted.push(k.clone());
                    return false;
                }
                true
            })
            .collect()
    });
    let binary_data = cm.binary_data.map(|d| {
        d.into_keys()
            .filter(|k| keys.contains(k))
            .map(|k| (k, ByteString(Vec::new())))
            .collect()
    });
    let mut metadata = cm.metadata;
    metadata.managed_fields = None;
    metadata.annotations = None;
    if !omitted.is_empty() {
        metadata.annotations = Some([(OMITTED_ANNOTATION.to_string(), omitted.join(","))].into());
    }
    ConfigMap {
        metadata,
        data,
        binary_data,
        immutable: cm.immutable,
    }
}

/// Whether a cached copy left out `key` for its size (the reconcile then reads the ConfigMap
/// directly, to report how large it is).
pub fn omitted(cm: &ConfigMap, key: &str) -> bool {
    cm.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(OMITTED_ANNOTATION))
        .is_some_and(|v| v.split(',').any(|k| k == key))
}

/// The ConfigMaps bindings reference, with the keys they read.
pub fn referenced_config_maps<'a>(
    bindings: impl IntoIterator<Item = &'a ConfidentialKeyBinding>,
) -> HashMap<ObjectRef<ConfigMap>, BTreeSet<String>> {
    let mut out: HashMap<ObjectRef<ConfigMap>, BTreeSet<String>> = HashMap::new();
    for b in bindings {
        let Some(ns) = b.metadata.namespace.as_deref() else {
            continue;
        };
        let r = &b.spec.policy.config_map_ref;
        out.entry(ObjectRef::new(&r.name).within(ns))
            .or_default()
            .insert(r.key.clone());
    }
    out
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

/// How often a referenced ConfigMap whose fetch failed is fetched again.
const POLICY_FETCH_RETRY: Duration = Duration::from_secs(5);

/// Keeps `writer` holding exactly the referenced policy ConfigMaps (see the module docs): a
/// metadata-only watch of the labelled ones, a GET of a referenced one when it appears or
/// changes, and a look at the bindings whenever `references_changed` is notified.
async fn policy_cache(
    client: Client,
    bindings: Store<ConfidentialKeyBinding>,
    references_changed: Arc<Notify>,
    mut writer: Writer<ConfigMap>,
    tx: Triggers,
) {
    let meta_api = Api::<PartialObjectMeta<ConfigMap>>::all(client.clone());
    let cfg = watcher::Config::default().labels(&format!("{}=true", labels::POLICY));
    let mut meta = pin!(watcher::watcher(meta_api, cfg).default_backoff());
    if !store_ready(&bindings).await {
        return;
    }
    let mut cache = PolicyCache {
        client,
        bindings,
        tx,
        held: HashMap::new(),
        wanted: HashMap::new(),
        pending: HashSet::new(),
        listing: None,
        ready: false,
    };
    cache.wanted = referenced_config_maps(cache.bindings.state().iter().map(|b| b.as_ref()));
    let mut retry = tokio::time::interval(POLICY_FETCH_RETRY);
    retry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            ev = meta.next() => match ev {
                None => return,
                Some(Err(e)) => warn!(cache = "configmaps", error = %e, "watch failed; retrying with backoff"),
                Some(Ok(ev)) => cache.on_meta(&mut writer, ev).await,
            },
            _ = references_changed.notified() => cache.on_bindings(&mut writer).await,
            _ = retry.tick(), if !cache.pending.is_empty() => cache.retry(&mut writer).await,
        }
    }
}

struct PolicyCache {
    client: Client,
    bindings: Store<ConfidentialKeyBinding>,
    tx: Triggers,
    /// What the writer holds: resource version and the keys kept.
    held: HashMap<ObjectRef<ConfigMap>, (String, BTreeSet<String>)>,
    /// What bindings reference.
    wanted: HashMap<ObjectRef<ConfigMap>, BTreeSet<String>>,
    /// Referenced ConfigMaps whose fetch failed.
    pending: HashSet<ObjectRef<ConfigMap>>,
    /// During a (re)listing: the referenced ones listed so far, with their resource versions.
    listing: Option<HashMap<ObjectRef<ConfigMap>, String>>,
    /// Whether the writer has had its first full listing.
    ready: bool,
}

fn meta_ref(m: &PartialObjectMeta<ConfigMap>) -> ObjectRef<ConfigMap> {
    ObjectRef::new(m.metadata.name.as_deref().unwrap_or_default())
        .within(m.metadata.namespace.as_deref().unwrap_or_default())
}

impl PolicyCache {
    fn trigger(&self, r: &ObjectRef<ConfigMap>) {
        let probe = ConfigMap {
            metadata: kube::api::ObjectMeta {
                name: Some(r.name.clone()),
                namespace: r.namespace.clone(),
                ..Default::default()
            },
            ..Default::default()
        };
        let all = self.bindings.state();
        for b in bindings_for_config_map(all.iter().map(|b| b.as_ref()), &probe) {
            let _ = self.tx.send(b);
        }
    }

    fn drop_held(&mut self, writer: &mut Writer<ConfigMap>, r: &ObjectRef<ConfigMap>) {
        if self.held.remove(r).is_some() {
            if let Some(cm) = writer.as_reader().get(r) {
                writer.apply_watcher_event(&Event::Delete((*cm).clone()));
            }
            self.trigger(r);
        }
    }

    /// GETs a referenced ConfigMap and holds its policy view (or drops it when it is gone or no
    /// longer labelled); `seen_version` skips the GET when that version is held already.
    async fn fetch(
        &mut self,
        writer: &mut Writer<ConfigMap>,
        r: &ObjectRef<ConfigMap>,
        seen_version: Option<&str>,
    ) {
        let Some(keys) = self.wanted.get(r).cloned() else {
            return;
        };
        if let (Some(v), Some((held_v, held_keys))) = (seen_version, self.held.get(r))
            && v == held_v
            && *held_keys == keys
        {
            return;
        }
        let ns = r.namespace.as_deref().unwrap_or_default();
        let api: Api<ConfigMap> = Api::namespaced(self.client.clone(), ns);
        match api.get_opt(&r.name).await {
            Ok(Some(cm)) => {
                self.pending.remove(r);
                let labelled = cm
                    .metadata
                    .labels
                    .as_ref()
                    .and_then(|l| l.get(labels::POLICY))
                    .is_some_and(|v| v == "true");
                if !labelled {
                    self.drop_held(writer, r);
                    return;
                }
                let version = cm.metadata.resource_version.clone().unwrap_or_default();
                let view = policy_view(cm, &keys);
                self.held.insert(r.clone(), (version, keys));
                if self.ready {
                    writer.apply_watcher_event(&Event::Apply(view));
                    self.trigger(r);
                } else {
                    writer.apply_watcher_event(&Event::InitApply(view));
                }
            }
            Ok(None) => {
                self.pending.remove(r);
                self.drop_held(writer, r);
            }
            Err(e) => {
                warn!(configmap = %r, error = %e, "cannot read a referenced policy ConfigMap; retrying");
                self.pending.insert(r.clone());
            }
        }
    }

    async fn on_meta(
        &mut self,
        writer: &mut Writer<ConfigMap>,
        ev: Event<PartialObjectMeta<ConfigMap>>,
    ) {
        match ev {
            Event::Init => self.listing = Some(HashMap::new()),
            Event::InitApply(m) => {
                let r = meta_ref(&m);
                if let Some(l) = self.listing.as_mut()
                    && self.wanted.contains_key(&r)
                {
                    l.insert(r, m.metadata.resource_version.unwrap_or_default());
                }
            }
            Event::InitDone => {
                let listed = self.listing.take().unwrap_or_default();
                if !self.ready {
                    writer.apply_watcher_event(&Event::Init);
                }
                let gone: Vec<_> = self
                    .held
                    .keys()
                    .filter(|r| !listed.contains_key(*r))
                    .cloned()
                    .collect();
                for r in gone {
                    self.drop_held(writer, &r);
                }
                let first = !self.ready;
                if first {
                    // Bindings may have changed while the first listing ran: look at all of them.
                    self.wanted =
                        referenced_config_maps(self.bindings.state().iter().map(|b| b.as_ref()));
                }
                let wanted: Vec<_> = self.wanted.keys().cloned().collect();
                for r in wanted {
                    match listed.get(&r) {
                        Some(version) => self.fetch(writer, &r, Some(version)).await,
                        // Not listed: absent or unlabelled (a later event brings it), unless a
                        // binding came during the first listing: then ask.
                        None if first => self.fetch(writer, &r, None).await,
                        None => {}
                    }
                }
                if first {
                    writer.apply_watcher_event(&Event::InitDone);
                    self.ready = true;
                    debug!(held = self.held.len(), "policy ConfigMap cache synced");
                }
            }
            Event::Apply(m) => {
                let r = meta_ref(&m);
                if self.wanted.contains_key(&r) {
                    let version = m.metadata.resource_version.unwrap_or_default();
                    self.fetch(writer, &r, Some(&version)).await;
                }
            }
            Event::Delete(m) => {
                let r = meta_ref(&m);
                self.drop_held(writer, &r);
            }
        }
    }

    async fn on_bindings(&mut self, writer: &mut Writer<ConfigMap>) {
        self.wanted = referenced_config_maps(self.bindings.state().iter().map(|b| b.as_ref()));
        let unwanted: Vec<_> = self
            .held
            .keys()
            .filter(|r| !self.wanted.contains_key(*r))
            .cloned()
            .collect();
        for r in unwanted {
            self.drop_held(writer, &r);
        }
        let wanted = &self.wanted;
        self.pending.retain(|r| wanted.contains_key(r));
        if !self.ready {
            // The first listing fetches what is referenced then.
            return;
        }
        let missing: Vec<_> = self
            .wanted
            .iter()
            .filter(|(r, keys)| self.held.get(*r).is_none_or(|(_, held)| held != *keys))
            .map(|(r, _)| r.clone())
            .collect();
        for r in missing {
            self.fetch(writer, &r, None).await;
        }
    }

    async fn retry(&mut self, writer: &mut Writer<ConfigMap>) {
        let pending: Vec<_> = self.pending.iter().cloned().collect();
        for r in pending {
            self.fetch(writer, &r, None).await;
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

    let (grants, grants_w) = reflector::store::<ConfidentialKeyGrant>();
    let (namespaces, namespaces_w) = reflector::store::<PartialObjectMeta<Namespace>>();
    let b_api: Api<ConfidentialKeyBinding> = Api::all(client.clone());
    let g_api: Api<ConfidentialKeyGrant> = Api::all(client.clone());
    let ns_api = Api::<PartialObjectMeta<Namespace>>::all(client.clone());
    let pod_api: Api<Pod> = Api::all(client.clone());
    let pod_cfg = watcher::Config::default().labels(&format!("{INJECTED_LABEL}=true"));
    let references_changed = Arc::new(Notify::new());

    let b_tx = tx.clone();
    let b_changed = references_changed.clone();
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
            b_changed.notify_one();
        },
    );
    let cm_fut = policy_cache(
        client,
        bindings.clone(),
        references_changed,
        config_maps_w,
        tx.clone(),
    );
    let g_tx = tx.clone();
    let bindings_for_grant = bindings.clone();
    let g_fut = drive(
        "grants",
        grants_w,
        // The grant CRD is optional: its absence is "no grants" (see `grant_watch`).
        tolerate_missing_crd(watcher::watcher(g_api, watcher::Config::default()).default_backoff())
            .modify(|g: &mut ConfidentialKeyGrant| g.metadata.managed_fields = None),
        move |ev| {
            for r in bindings_to_replan(ev, &bindings_for_grant.state()) {
                let _ = g_tx.send(r);
            }
        },
    );
    let ns_tx = tx.clone();
    let bindings_for_ns = bindings.clone();
    let ns_fut = drive(
        "namespaces",
        namespaces_w,
        watcher::watcher(ns_api, watcher::Config::default())
            .default_backoff()
            .modify(|n: &mut PartialObjectMeta<Namespace>| {
                n.metadata.managed_fields = None;
                n.metadata.annotations = None;
            }),
        move |ev| {
            for n in objects(ev) {
                let name = n.metadata.name.as_deref();
                for b in bindings_for_ns.state() {
                    if b.spec.grant_ref.is_some() && b.metadata.namespace.as_deref() == name {
                        let _ = ns_tx.send(ObjectRef::from_obj(b.as_ref()));
                    }
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
        grants: GrantStores { grants, namespaces },
    };
    let driver = async move {
        futures::join!(b_fut, cm_fut, pod_fut, g_fut, ns_fut);
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
}
