//! Reconcile tests: the real reconcile (finalizer, status apply, events) against a mock API server
//! that records every request, and an in-memory Key Vault that logs every call.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ckb_crds::conditions::{reasons, types};
use ckb_crds::{BoundHashReason, ConfidentialKeyBinding, FINALIZER, labels, tags};
use jiff::Timestamp;
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use kube::runtime::controller::Action;
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::{self, ObjectRef, store::Writer};
use kube::runtime::watcher;
use serde_json::json;

use super::index::INJECTED_LABEL;
use super::plan::{PlanConfig, owner_tags};
use super::plan_tests::cm;
use super::reconcile::{Context, Error, Timing, error_policy, reconcile, retry_delay};
use super::testing::{FakeVault, MockApi, Op};
use crate::caches::PolicySummary;
use crate::keyvault::{KeyVault, KeyVaultError, VaultUrl};
use crate::policy::{ReleasePolicy, hash_rego};
use crate::telemetry::{ControllerMetrics, registry};

pub(super) const CLUSTER: &str = "0f0e0d0c-1111-2222-3333-444455556666";
pub(super) const REGO_A: &str = "package agent_policy\ndefault allow := true\n";
pub(super) const REGO_B: &str = "package agent_policy\ndefault allow := false\n";
const STATUS_PATH: &str =
    "PATCH /apis/ckb.dev/v1alpha1/namespaces/payments/confidentialkeybindings/orders/status";
const EVENT_PATH: &str = "POST /apis/events.k8s.io/v1/namespaces/payments/events";
const BINDING_PATH: &str =
    "PATCH /apis/ckb.dev/v1alpha1/namespaces/payments/confidentialkeybindings/orders";

/// What the policy cache holds of `cm` for the binding's key.
fn summary(cm: &ConfigMap) -> PolicySummary {
    PolicySummary::of(cm, [&"policy.rego".to_string()])
}

pub(super) struct Harness {
    pub(super) api: MockApi,
    fake: Option<FakeVault>,
    pub(super) ctx: Arc<Context>,
    pub(super) config_maps: Writer<PolicySummary>,
    pods: Writer<Pod>,
    /// The ConfidentialKeyGrant cache the controller reads.
    pub(super) grants: Writer<ckb_crds::grant::ConfidentialKeyGrant>,
    /// The namespace cache (labels, for grant selectors).
    pub(super) namespaces:
        Writer<kube::core::PartialObjectMeta<k8s_openapi::api::core::v1::Namespace>>,
    now: Arc<Mutex<Timestamp>>,
}

/// The allow-list: the demo vault, or nothing.
pub(super) fn demo_allowed(allowed: bool) -> std::collections::BTreeSet<VaultUrl> {
    if allowed {
        [VaultUrl::parse("https://demo.vault.azure.net").unwrap()].into()
    } else {
        Default::default()
    }
}

pub(super) fn t0() -> Timestamp {
    "2026-03-01T12:00:00Z".parse().unwrap()
}

impl Harness {
    fn new(allowed: bool, timing: Timing) -> Self {
        let fake = FakeVault::default();
        let mut h = Self::with_vault(demo_allowed(allowed), timing, Arc::new(fake.clone()));
        h.fake = Some(fake);
        h
    }

    /// A harness whose controller talks to `vault` (the in-memory fake, or the real client
    /// pointed at the Key Vault double).
    pub(super) fn with_vault(
        allowed_vaults: std::collections::BTreeSet<VaultUrl>,
        timing: Timing,
        vault: Arc<dyn KeyVault>,
    ) -> Self {
        let api = MockApi::default();
        let client = api.client();
        let (cm_store, config_maps) = reflector::store::<PolicySummary>();
        let (pod_store, pods) = reflector::store::<Pod>();
        let (grant_store, grants) = reflector::store();
        let (namespace_store, namespaces) = reflector::store();
        let now = Arc::new(Mutex::new(t0()));
        let clock_now = now.clone();
        let mut reg = registry();
        let ctx = Context::new(
            client.clone(),
            vault,
            PlanConfig {
                allowed_vaults,
                hash_grace: Duration::from_secs(600),
                cluster_uid: CLUSTER.into(),
                // These tests are about a binding that follows its ConfigMap (explicit opt-in).
                policy_source_default: ckb_crds::PolicySource::ConfigMap,
                ..PlanConfig::default()
            },
            timing,
            cm_store,
            pod_store,
            Recorder::new(
                client,
                Reporter {
                    controller: "ckb-operator".into(),
                    instance: Some("test".into()),
                },
            ),
            ControllerMetrics::register(&mut reg),
            Arc::new(move || *clock_now.lock().unwrap()),
        )
        .with_grants(super::runtime::GrantStores {
            grants: grant_store,
            namespaces: namespace_store,
        });
        let mut h = Self {
            api,
            fake: None,
            ctx: Arc::new(ctx),
            config_maps,
            pods,
            grants,
            namespaces,
            now,
        };
        h.set_policy(REGO_A);
        h
    }

    /// The in-memory vault (for tests built with [`Harness::new`]).
    fn fake(&self) -> &FakeVault {
        self.fake.as_ref().expect("a FakeVault harness")
    }

    pub(super) fn set_policy(&mut self, rego: &str) {
        let cm = cm(Some(rego), true);
        self.config_maps
            .apply_watcher_event(&watcher::Event::Apply(summary(&cm)));
    }

    /// An injected confidential pod of the binding running `rego`, created now, as the cache
    /// holds it (slimmed).
    pub(super) fn set_pod(&mut self, name: &str, rego: &str, present: bool) {
        let mut pod = Pod {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("payments".into()),
                creation_timestamp: Some(Time(*self.now.lock().unwrap())),
                labels: Some(BTreeMap::from([
                    (INJECTED_LABEL.into(), "true".into()),
                    ("app".into(), "orders".into()),
                ])),
                annotations: Some(BTreeMap::from([
                    (labels::BINDINGS.into(), "orders".into()),
                    (
                        labels::POLICY_SHA256.into(),
                        hash_rego(rego.as_bytes()).to_string(),
                    ),
                    (
                        labels::AGENT_POLICY.into(),
                        crate::policy::hash::encode_annotation(rego),
                    ),
                ])),
                ..Default::default()
            },
            spec: Some(k8s_openapi::api::core::v1::PodSpec {
                runtime_class_name: Some("kata-cc-isolation".into()),
                ..Default::default()
            }),
            ..Default::default()
        };
        super::index::slim_pod(&mut pod);
        let ev = if present {
            watcher::Event::Apply(pod)
        } else {
            watcher::Event::Delete(pod)
        };
        self.pods.apply_watcher_event(&ev);
    }

    pub(super) fn advance(&self, secs: i64) {
        let mut n = self.now.lock().unwrap();
        *n += jiff::SignedDuration::from_secs(secs);
    }

    /// Runs one reconcile and, as the API server would, stores the applied status on `b`.
    pub(super) async fn reconcile(&self, b: &mut ConfidentialKeyBinding) -> Result<Action, Error> {
        let path = format!(
            "/namespaces/{}/confidentialkeybindings/{}/status",
            b.metadata.namespace.as_deref().unwrap_or_default(),
            b.metadata.name.as_deref().unwrap_or_default()
        );
        let mine = |api: &MockApi| api.statuses_at(&path);
        let before = mine(&self.api).len();
        let r = reconcile(Arc::new(b.clone()), self.ctx.clone()).await;
        let statuses = mine(&self.api);
        if statuses.len() > before {
            b.status = Some(serde_json::from_value(statuses.last().unwrap().clone()).unwrap());
        }
        r
    }
}

pub(super) fn binding() -> ConfidentialKeyBinding {
    let mut b: ConfidentialKeyBinding = serde_json::from_value(json!({
        "apiVersion": "ckb.dev/v1alpha1",
        "kind": "ConfidentialKeyBinding",
        "metadata": {"name": "orders", "namespace": "payments", "generation": 1,
                     "finalizers": [FINALIZER], "uid": "b-uid"},
        "spec": {
            "podSelector": {"matchLabels": {"app": "orders"}},
            "key": {"vault": "https://demo.vault.azure.net", "name": "orders-key", "type": "RSA-HSM", "size": 3072},
            "attestation": {"authority": "https://sharedeus.eus.attest.azure.net"},
            "policy": {"configMapRef": {"name": "orders-policy", "key": "policy.rego"}}
        }
    }))
    .unwrap();
    b.metadata.resource_version = Some("1".into());
    b
}

pub(super) fn policy_json(b: &ConfidentialKeyBinding, regos: &[&str]) -> String {
    let set = regos.iter().map(|r| hash_rego(r.as_bytes())).collect();
    ReleasePolicy::for_binding(&b.spec, &set).unwrap().to_json()
}

pub(super) fn cond(b: &ConfidentialKeyBinding, t: &str) -> (String, String) {
    let c = b.condition(t).unwrap_or_else(|| panic!("no {t} condition"));
    (c.status.clone(), c.reason.clone())
}

fn untagged_key(b: &ConfidentialKeyBinding) -> crate::keyvault::VaultKey {
    crate::keyvault::VaultKey {
        id: "https://demo.vault.azure.net/keys/orders-key/v0".into(),
        name: "orders-key".into(),
        version: "v0".into(),
        kty: "RSA-HSM".into(),
        size: Some(3072),
        curve: None,
        key_ops: vec!["wrapKey".into()],
        exportable: true,
        enabled: true,
        tags: BTreeMap::from([("team".into(), "payments".into())]),
        release_policy: Some(crate::keyvault::StoredReleasePolicy {
            content_type: None,
            json: policy_json(b, &[REGO_B]),
            immutable: false,
        }),
        managed: false,
    }
}

pub(super) fn quick() -> Timing {
    Timing {
        // Zero: every reconcile reads Key Vault (no verified-cache shortcut), as at each resync.
        resync: Duration::ZERO,
        ..Timing::default()
    }
}

/// One-shot cases: the binding and vault as set up, the exact API requests and Key Vault calls
/// one reconcile makes, and the resulting KeyReady reason.
#[derive(Debug, Clone, Copy)]
enum Scenario {
    /// No key yet: create it, apply status, one KeyCreated event.
    Create,
    /// The binding has no finalizer yet: add it, nothing else.
    AddFinalizer,
    /// The vault is not allowed: no Key Vault call at all.
    VaultNotAllowed,
    /// A key tagged for another binding exists: KeyNotOwned, zero writes.
    ForeignTags,
    /// An untagged key exists and adopt is false: KeyNotOwned, zero writes.
    UntaggedNoAdopt,
    /// An untagged key carrying the owner's consent tag exists and adopt is true: PATCH with our
    /// tags and policy.
    Adopt,
    /// The policy ConfigMap is missing: PolicyResolved=False, no Key Vault call.
    PolicyMissing,
    /// The ConfigMap exists but is not labelled: PolicyResolved=False, no Key Vault call.
    PolicyNotLabelled,
    /// Our key was soft-deleted: recover it, then fix its release policy.
    RecoverOurs,
}

struct Expect {
    api: Vec<&'static str>,
    vault: Vec<Op>,
    key_ready: Option<&'static str>,
    events: Vec<&'static str>,
}

impl Expect {
    /// The binding is refused with `reason` after the Key Vault calls `vault`: its status and
    /// one Warning of the same reason, nothing written.
    fn refused(vault: Vec<Op>, reason: &'static str) -> Self {
        Expect {
            api: vec![STATUS_PATH, EVENT_PATH],
            vault,
            key_ready: Some(reason),
            events: vec![reason],
        }
    }

    /// The key is ready after the Key Vault calls `vault`, announced by the events `events`.
    fn available(vault: Vec<Op>, events: Vec<&'static str>) -> Self {
        Expect {
            api: vec![STATUS_PATH, EVENT_PATH],
            vault,
            key_ready: Some(reasons::KEY_AVAILABLE),
            events,
        }
    }

    /// The policy cache lacks the ConfigMap, the direct read of it finds it wanting (`event`):
    /// no Key Vault call.
    fn waiting_for_policy(event: &'static str) -> Self {
        Expect {
            api: vec![
                "GET /api/v1/namespaces/payments/configmaps/orders-policy",
                STATUS_PATH,
                EVENT_PATH,
            ],
            vault: vec![],
            key_ready: Some(reasons::WAITING_FOR_POLICY),
            events: vec![event],
        }
    }
}

/// Sets up the harness and the binding for `s` and says what one reconcile must then do.
async fn arrange(s: Scenario, h: &mut Harness, b: &mut ConfidentialKeyBinding) -> Expect {
    match s {
        Scenario::Create => Expect::available(
            vec![Op::Get, Op::GetDeleted, Op::Create],
            vec!["KeyCreated"],
        ),
        Scenario::AddFinalizer => {
            b.metadata.finalizers = None;
            Expect {
                api: vec![BINDING_PATH],
                vault: vec![],
                key_ready: None,
                events: vec![],
            }
        }
        Scenario::VaultNotAllowed => Expect::refused(vec![], reasons::VAULT_NOT_ALLOWED),
        Scenario::ForeignTags => {
            let mut k = untagged_key(b);
            k.tags = owner_tags(b, CLUSTER);
            k.tags.insert(tags::BINDING.into(), "other/orders".into());
            h.fake().put(k);
            Expect::refused(vec![Op::Get], reasons::KEY_NOT_OWNED)
        }
        Scenario::UntaggedNoAdopt => {
            h.fake().put(untagged_key(b));
            Expect::refused(vec![Op::Get], reasons::KEY_NOT_OWNED)
        }
        Scenario::Adopt => {
            b.spec.key.adopt = true;
            // With the key owner's consent (set with Key Vault rights).
            let mut k = untagged_key(b);
            k.tags.insert(tags::ADOPT.into(), "payments/orders".into());
            h.fake().put(k);
            Expect::available(vec![Op::Get, Op::Update], vec!["KeyAdopted"])
        }
        Scenario::PolicyMissing => {
            h.config_maps
                .apply_watcher_event(&watcher::Event::Delete(summary(&cm(None, false))));
            Expect::waiting_for_policy(reasons::CONFIG_MAP_NOT_FOUND)
        }
        Scenario::PolicyNotLabelled => {
            let cm = cm(Some(REGO_A), false);
            h.config_maps
                .apply_watcher_event(&watcher::Event::Delete(summary(&cm)));
            h.api.serve_config_map(&cm);
            Expect::waiting_for_policy(reasons::CONFIG_MAP_NOT_LABELLED)
        }
        Scenario::RecoverOurs => {
            let mut k = untagged_key(b);
            k.tags = owner_tags(b, CLUSTER);
            h.fake().put(k);
            let url = VaultUrl::parse("https://demo.vault.azure.net").unwrap();
            crate::keyvault::KeyVault::delete_key(h.fake(), &url, "orders-key")
                .await
                .unwrap();
            h.fake().clear_log();
            Expect {
                api: vec![STATUS_PATH, EVENT_PATH, EVENT_PATH],
                vault: vec![Op::Get, Op::GetDeleted, Op::Recover, Op::Get, Op::Update],
                key_ready: Some(reasons::KEY_AVAILABLE),
                events: vec!["KeyRecovered", "ReleasePolicyUpdated"],
            }
        }
    }
}

/// Checks what the reconcile of `s` did against `expect`.
fn check(s: Scenario, h: &Harness, b: &ConfidentialKeyBinding, expect: Expect) {
    assert_eq!(h.api.lines(), expect.api, "{s:?}: API requests");
    assert_eq!(h.fake().log(), expect.vault, "{s:?}: Key Vault calls");
    let events: Vec<String> = h.api.events().into_iter().map(|(_, r)| r).collect();
    assert_eq!(events, expect.events, "{s:?}: events");
    if let Some(reason) = expect.key_ready {
        assert_eq!(cond(b, types::KEY_READY).1, reason, "{s:?}");
        let ready = reason == reasons::KEY_AVAILABLE;
        assert_eq!(cond(b, types::READY).0 == "True", ready, "{s:?}");
    }
    // The status is applied with our field manager, forced.
    for c in h.api.calls().iter().filter(|c| c.path.ends_with("/status")) {
        assert_eq!(c.body["apiVersion"], "ckb.dev/v1alpha1");
        assert_eq!(c.body["kind"], "ConfidentialKeyBinding");
    }
}

async fn run(s: Scenario) {
    let allowed = !matches!(s, Scenario::VaultNotAllowed);
    let mut h = Harness::new(allowed, quick());
    let mut b = binding();
    let expect = arrange(s, &mut h, &mut b).await;
    let r = h.reconcile(&mut b).await;
    assert!(r.is_ok(), "{s:?}: {r:?}");
    check(s, &h, &b, expect);
}

// One test per scenario, so that a failure names its scenario and the others still run.
macro_rules! scenario_tests {
    ($($test:ident => $scenario:ident,)*) => {
        $(
            #[tokio::test]
            async fn $test() {
                run(Scenario::$scenario).await;
            }
        )*
    };
}

scenario_tests! {
    scenario_create => Create,
    scenario_add_finalizer => AddFinalizer,
    scenario_vault_not_allowed => VaultNotAllowed,
    scenario_foreign_tags => ForeignTags,
    scenario_untagged_no_adopt => UntaggedNoAdopt,
    scenario_adopt => Adopt,
    scenario_policy_missing => PolicyMissing,
    scenario_policy_not_labelled => PolicyNotLabelled,
    scenario_recover_ours => RecoverOurs,
}

#[tokio::test]
async fn created_key_carries_tags_policy_and_status_names_it() {
    let h = Harness::new(true, quick());
    let mut b = binding();
    h.reconcile(&mut b).await.unwrap();
    let k = h.fake().key("orders-key").unwrap();
    assert_eq!(k.tags, owner_tags(&b, CLUSTER));
    assert!(k.exportable);
    assert_eq!(k.release_policy.unwrap().json, policy_json(&b, &[REGO_A]));
    let st = b.status.as_ref().unwrap();
    assert_eq!(st.key.as_ref().unwrap().id, k.id);
    assert_eq!(st.key.as_ref().unwrap().origin.as_deref(), Some("Created"));
    assert_eq!(
        st.policy.as_ref().unwrap().current_hash.as_ref(),
        Some(&hash_rego(REGO_A.as_bytes()))
    );
    assert_eq!(st.observed_generation, Some(1));
}

#[tokio::test]
async fn steady_state_makes_no_write_over_many_resyncs() {
    let h = Harness::new(true, quick());
    let mut b = binding();
    h.reconcile(&mut b).await.unwrap();
    h.fake().clear_log();
    h.api.clear();
    for i in 0..50 {
        h.advance(600);
        let action = h.reconcile(&mut b).await.unwrap();
        assert_ne!(action, Action::await_change(), "resync {i} must requeue");
    }
    assert_eq!(h.fake().writes(), vec![], "no Key Vault write");
    assert_eq!(h.fake().log(), vec![Op::Get; 50], "one GET per resync");
    assert_eq!(
        h.api.lines(),
        Vec::<String>::new(),
        "no status write, no event"
    );
}

#[tokio::test]
async fn watch_triggers_within_a_resync_period_do_not_call_key_vault() {
    let timing = Timing {
        resync: Duration::from_secs(600),
        ..Timing::default()
    };
    let h = Harness::new(true, timing);
    let mut b = binding();
    let action = h.reconcile(&mut b).await.unwrap();
    assert_ne!(action, Action::await_change());
    h.fake().clear_log();
    for _ in 0..20 {
        h.reconcile(&mut b).await.unwrap();
    }
    assert_eq!(h.fake().log(), vec![], "no Key Vault call: nothing changed");
}

#[tokio::test]
async fn out_of_band_edit_is_restored_at_resync() {
    let h = Harness::new(true, quick());
    let mut b = binding();
    h.reconcile(&mut b).await.unwrap();
    h.fake()
        .set_policy("orders-key", &policy_json(&b, &[REGO_A, REGO_B]));
    h.fake().clear_log();
    h.api.clear();
    h.advance(600);
    h.reconcile(&mut b).await.unwrap();
    assert_eq!(h.fake().log(), vec![Op::Get, Op::Update]);
    assert_eq!(
        h.fake()
            .key("orders-key")
            .unwrap()
            .release_policy
            .unwrap()
            .json,
        policy_json(&b, &[REGO_A])
    );
    assert_eq!(
        h.api.events(),
        vec![("Normal".to_string(), "ReleasePolicyUpdated".to_string())]
    );
}

#[tokio::test]
async fn policy_change_patches_old_and_new_then_prunes_old_after_grace_when_pods_are_gone() {
    let mut h = Harness::new(true, quick());
    let mut b = binding();
    h.reconcile(&mut b).await.unwrap();
    h.set_pod("orders-1", REGO_A, true);
    h.set_policy(REGO_B);
    h.fake().clear_log();
    h.reconcile(&mut b).await.unwrap();
    assert_eq!(h.fake().writes(), vec![Op::Update]);
    let json = |h: &Harness| {
        h.fake()
            .key("orders-key")
            .unwrap()
            .release_policy
            .unwrap()
            .json
    };
    assert_eq!(json(&h), policy_json(&b, &[REGO_A, REGO_B]));
    let reasons_now = |b: &ConfidentialKeyBinding| {
        b.status
            .as_ref()
            .unwrap()
            .policy
            .as_ref()
            .unwrap()
            .bound_hashes
            .iter()
            .map(|h| h.reason)
            .collect::<Vec<_>>()
    };
    assert!(reasons_now(&b).contains(&BoundHashReason::Grace));
    assert_eq!(b.status.as_ref().unwrap().injected_pods, Some(1));

    // Grace over, the pod still runs A: A stays, nothing written.
    h.advance(660);
    h.fake().clear_log();
    h.reconcile(&mut b).await.unwrap();
    assert_eq!(h.fake().writes(), vec![]);
    assert!(reasons_now(&b).contains(&BoundHashReason::InUse));

    // The pod is gone: A is pruned.
    h.set_pod("orders-1", REGO_A, false);
    h.reconcile(&mut b).await.unwrap();
    assert_eq!(h.fake().writes(), vec![Op::Update]);
    assert_eq!(json(&h), policy_json(&b, &[REGO_B]));
    assert_eq!(reasons_now(&b), vec![BoundHashReason::Current]);
}

#[tokio::test]
async fn a_throttle_storm_converges_and_status_shows_it() {
    let h = Harness::new(true, quick());
    let mut b = binding();
    h.fake().fail_next(
        None,
        7,
        KeyVaultError::Throttled {
            retry_after: Duration::from_secs(2),
            message: "Too Many Requests".into(),
        },
    );
    let mut saw_throttled_status = false;
    let mut attempts = 0;
    loop {
        attempts += 1;
        assert!(attempts <= 20, "did not converge");
        match h.reconcile(&mut b).await {
            Ok(_) => break,
            Err(e) => {
                assert_eq!(e.kind(), "throttled");
                saw_throttled_status |=
                    cond(&b, types::KEY_READY).1 == reasons::KEY_VAULT_THROTTLED;
                let delay = retry_delay(&b, &e, &h.ctx);
                assert!(
                    delay >= Duration::from_secs(2),
                    "Retry-After honoured: {delay:?}"
                );
            }
        }
    }
    assert!(saw_throttled_status);
    assert_eq!(cond(&b, types::READY).0, "True");
    assert_eq!(h.fake().writes(), vec![Op::Create], "exactly one create");
    // One Warning for the throttling, not one per attempt.
    let throttled_events = h
        .api
        .events()
        .iter()
        .filter(|(_, r)| r == reasons::KEY_VAULT_THROTTLED)
        .count();
    assert_eq!(throttled_events, 1);
}

pub(super) fn deleting(
    mut b: ConfidentialKeyBinding,
    policy: &str,
    at: Timestamp,
) -> ConfidentialKeyBinding {
    b.spec.key.deletion_policy = serde_json::from_value(json!(policy)).unwrap();
    b.metadata.deletion_timestamp = Some(Time(at));
    b
}

#[tokio::test]
async fn delete_policy_soft_deletes_our_key_and_releases_the_finalizer() {
    let h = Harness::new(true, quick());
    let mut b = binding();
    h.reconcile(&mut b).await.unwrap();
    h.fake().clear_log();
    h.api.clear();
    let mut gone = deleting(b, "Delete", t0());
    h.reconcile(&mut gone).await.unwrap();
    assert_eq!(h.fake().log(), vec![Op::Get, Op::Delete]);
    assert!(h.fake().is_deleted("orders-key"));
    assert_eq!(h.api.lines(), vec![EVENT_PATH, BINDING_PATH]);
    let patch = &h.api.calls()[1].body;
    assert_eq!(patch[1]["op"], "remove", "{patch}");
}

#[tokio::test]
async fn retain_policy_leaves_the_key_and_calls_no_vault() {
    let h = Harness::new(true, quick());
    let mut b = binding();
    h.reconcile(&mut b).await.unwrap();
    h.fake().clear_log();
    h.api.clear();
    let mut gone = deleting(b, "Retain", t0());
    h.reconcile(&mut gone).await.unwrap();
    assert_eq!(h.fake().log(), vec![]);
    assert!(h.fake().key("orders-key").is_some());
    assert_eq!(h.api.lines(), vec![EVENT_PATH, BINDING_PATH]);
}

#[tokio::test]
async fn a_binding_whose_key_was_never_created_deletes_without_key_vault() {
    let h = Harness::new(true, quick());
    let mut gone = deleting(binding(), "Delete", t0());
    h.reconcile(&mut gone).await.unwrap();
    assert_eq!(h.fake().log(), vec![]);
    assert_eq!(h.api.lines(), vec![EVENT_PATH, BINDING_PATH]);
}

#[tokio::test]
async fn delete_of_a_key_no_longer_ours_leaves_it() {
    let h = Harness::new(true, quick());
    let mut b = binding();
    h.reconcile(&mut b).await.unwrap();
    let mut k = h.fake().key("orders-key").unwrap();
    k.tags.insert(tags::BINDING.into(), "someone/else".into());
    h.fake().put(k);
    h.fake().clear_log();
    let mut gone = deleting(b, "Delete", t0());
    h.reconcile(&mut gone).await.unwrap();
    assert_eq!(h.fake().writes(), vec![]);
    assert!(h.fake().key("orders-key").is_some());
}

#[tokio::test]
async fn unreachable_vault_keeps_the_finalizer_until_the_cleanup_timeout_then_releases_it() {
    let h = Harness::new(true, quick());
    let mut b = binding();
    h.reconcile(&mut b).await.unwrap();
    h.api.clear();
    let unavailable = KeyVaultError::Transient {
        message: "connection refused".into(),
        outcome_unknown: false,
    };
    h.fake().fail_next(None, 100, unavailable);
    let mut gone = deleting(b, "Delete", t0());
    // Within the timeout: the finalizer stays, the error is retried through the error policy
    // the controller runtime calls, and only the first failure publishes a Warning.
    h.advance(60);
    for attempt in 0..4 {
        let err = h
            .reconcile(&mut gone)
            .await
            .expect_err("the vault is unreachable");
        let action = error_policy(Arc::new(gone.clone()), &err, h.ctx.clone());
        assert_ne!(
            action,
            Action::await_change(),
            "attempt {attempt} is retried"
        );
        assert_eq!(
            h.ctx.backoff.failures(&ObjectRef::from_obj(&gone)),
            attempt + 1
        );
        h.advance(10);
    }
    assert!(!h.api.lines().contains(&BINDING_PATH.to_string()));
    assert_eq!(
        h.api.events(),
        vec![("Warning".to_string(), "KeyDeleteFailed".to_string())],
        "one Warning for the failure, not one per retry"
    );
    // Past it: released, with a Warning, the key left in place.
    h.advance(600);
    h.reconcile(&mut gone).await.unwrap();
    assert!(h.api.lines().contains(&BINDING_PATH.to_string()));
    assert!(
        h.api
            .events()
            .contains(&("Warning".to_string(), "CleanupAbandoned".to_string()))
    );
    assert!(h.fake().key("orders-key").is_some());
}
