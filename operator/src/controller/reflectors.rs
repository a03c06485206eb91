//! The reflectors every replica runs (the webhook reads their stores), and the triggers they send.
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
//! reference (writing bindings is a deliberate RBAC grant), and of those never the text: per
//! referenced key its SHA-256, length and presence ([`PolicySummary`], a few hundred bytes
//! whatever the ConfigMap holds; the reconcile decides on that alone). Labelled ConfigMaps are
//! watched by *metadata only* (`PartialObjectMeta`: names and resource versions, never the data),
//! and a referenced one is fetched by a GET when it appears or its resource version changes,
//! summarized, and dropped. The webhook fetches the text of a policy when a pod needs it, into a
//! cache bounded in bytes ([`crate::webhook::sources`]). Grants and namespaces are watched the
//! same way: grants are small and cluster-admin-written, namespaces by metadata only (their
//! labels, for grant selectors).

use std::collections::{BTreeSet, HashMap, HashSet};
use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use ckb_crds::ConfidentialKeyBinding;
use ckb_crds::grant::ConfidentialKeyGrant;
use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod};
use kube::core::PartialObjectMeta;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::watcher::{self, Event};
use kube::runtime::{WatchStreamExt, reflector::store::Writer};
use kube::{Api, Client, Resource};
use tokio::sync::{Notify, broadcast};
use tracing::{debug, warn};

use super::grant_watch::{bindings_to_replan, tolerate_missing_crd};
use super::index::{INJECTED_LABEL, bindings_for_config_map, bindings_for_pod, slim_pod};
use crate::caches::{
    Caches, GrantStores, PolicySummary, Triggers, is_policy_config_map, policy_label_selector,
    referenced_config_maps, store_ready,
};

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
    mut writer: Writer<PolicySummary>,
    tx: Triggers,
) {
    let meta_api = Api::<PartialObjectMeta<ConfigMap>>::all(client.clone());
    let cfg = watcher::Config::default().labels(&policy_label_selector());
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
    /// What the writer holds: resource version and the keys summarized.
    held: HashMap<ObjectRef<PolicySummary>, (String, BTreeSet<String>)>,
    /// What bindings reference.
    wanted: HashMap<ObjectRef<PolicySummary>, BTreeSet<String>>,
    /// Referenced ConfigMaps whose fetch failed.
    pending: HashSet<ObjectRef<PolicySummary>>,
    /// During a (re)listing: the referenced ones listed so far, with their resource versions.
    listing: Option<HashMap<ObjectRef<PolicySummary>, String>>,
    /// Whether the writer has had its first full listing.
    ready: bool,
}

fn meta_ref(m: &PartialObjectMeta<ConfigMap>) -> ObjectRef<PolicySummary> {
    ObjectRef::new(m.metadata.name.as_deref().unwrap_or_default())
        .within(m.metadata.namespace.as_deref().unwrap_or_default())
}

impl PolicyCache {
    fn trigger(&self, r: &ObjectRef<PolicySummary>) {
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

    fn drop_held(&mut self, writer: &mut Writer<PolicySummary>, r: &ObjectRef<PolicySummary>) {
        if self.held.remove(r).is_some() {
            if let Some(cm) = writer.as_reader().get(r) {
                writer.apply_watcher_event(&Event::Delete((*cm).clone()));
            }
            self.trigger(r);
        }
    }

    /// GETs a referenced ConfigMap and holds its summary (or drops it when it is gone or no
    /// longer labelled); `seen_version` skips the GET when that version is held already. The
    /// ConfigMap itself is dropped as soon as it is summarized.
    async fn fetch(
        &mut self,
        writer: &mut Writer<PolicySummary>,
        r: &ObjectRef<PolicySummary>,
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
                if !is_policy_config_map(&cm.metadata) {
                    self.drop_held(writer, r);
                    return;
                }
                let view = PolicySummary::of(&cm, &keys);
                drop(cm);
                self.held
                    .insert(r.clone(), (view.version().to_string(), keys));
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
        writer: &mut Writer<PolicySummary>,
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

    async fn on_bindings(&mut self, writer: &mut Writer<PolicySummary>) {
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

    async fn retry(&mut self, writer: &mut Writer<PolicySummary>) {
        let pending: Vec<_> = self.pending.iter().cloned().collect();
        for r in pending {
            self.fetch(writer, &r, None).await;
        }
    }
}

/// A reflector's event handler that triggers every binding `concerns` the changed object.
fn trigger_bindings_of<K>(
    bindings: Store<ConfidentialKeyBinding>,
    tx: Triggers,
    concerns: impl Fn(&ConfidentialKeyBinding, &K) -> bool,
) -> impl FnMut(&Event<K>) {
    move |ev| {
        for o in objects(ev) {
            for b in bindings.state() {
                if concerns(&b, o) {
                    let _ = tx.send(ObjectRef::from_obj(b.as_ref()));
                }
            }
        }
    }
}

/// The grant and namespace reflectors: the caches the cluster's bounds are read from.
fn grant_reflectors(
    client: Client,
    bindings: Store<ConfidentialKeyBinding>,
    tx: Triggers,
) -> (
    GrantStores,
    impl std::future::Future<Output = ()> + Send + 'static,
) {
    let (grants, grants_w) = reflector::store::<ConfidentialKeyGrant>();
    let (namespaces, namespaces_w) = reflector::store::<PartialObjectMeta<Namespace>>();
    let g_api: Api<ConfidentialKeyGrant> = Api::all(client.clone());
    let ns_api = Api::<PartialObjectMeta<Namespace>>::all(client.clone());
    let g_fut = drive(
        "grants",
        grants_w,
        // The grant CRD is optional: its absence is "no grants" (see `grant_watch`).
        tolerate_missing_crd(watcher::watcher(g_api, watcher::Config::default()).default_backoff())
            .modify(|g: &mut ConfidentialKeyGrant| g.metadata.managed_fields = None),
        {
            let (bindings, tx) = (bindings.clone(), tx.clone());
            move |ev| {
                for r in bindings_to_replan(ev, &bindings.state()) {
                    let _ = tx.send(r);
                }
            }
        },
    );
    let ns_fut = drive(
        "namespaces",
        namespaces_w,
        watcher::watcher(ns_api, watcher::Config::default())
            .default_backoff()
            .modify(|n: &mut PartialObjectMeta<Namespace>| {
                n.metadata.managed_fields = None;
                n.metadata.annotations = None;
            }),
        // A namespace's labels matter to the bindings in it that name a grant.
        trigger_bindings_of(bindings, tx, |b, n: &PartialObjectMeta<Namespace>| {
            b.spec.grant_ref.is_some() && b.metadata.namespace == n.metadata.name
        }),
    );
    let driver = async move {
        futures::join!(g_fut, ns_fut);
    };
    (GrantStores { grants, namespaces }, driver)
}

/// Starts the reflectors (bindings, policy ConfigMaps, injected pods, grants, namespaces); returns
/// their caches, the trigger sender, and the future that drives them (run it on every replica
/// until shutdown).
pub fn reflectors(
    client: Client,
) -> (
    Caches,
    Triggers,
    impl std::future::Future<Output = ()> + Send + 'static,
) {
    let (bindings, bindings_w) = reflector::store::<ConfidentialKeyBinding>();
    let (config_maps, config_maps_w) = reflector::store::<PolicySummary>();
    let (pods, pods_w) = reflector::store::<Pod>();
    let (tx, _) = broadcast::channel(TRIGGER_BUFFER);

    let b_api: Api<ConfidentialKeyBinding> = Api::all(client.clone());
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
        client.clone(),
        bindings.clone(),
        references_changed,
        config_maps_w,
        tx.clone(),
    );
    let (grants, grants_fut) = grant_reflectors(client.clone(), bindings.clone(), tx.clone());
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
        grants,
    };
    let driver = async move {
        futures::join!(b_fut, cm_fut, pod_fut, grants_fut);
    };
    (caches, tx, driver)
}
