//! Tests of the pure reconcile decision.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use ckb_crds::conditions::{reasons, types};
use ckb_crds::{
    BoundHash, BoundHashReason, ConfidentialKeyBinding, ConfidentialKeyBindingSpec,
    ConfidentialKeyBindingStatus, DeletionPolicy, KeyType, PolicySource, labels, tags,
};
use jiff::Timestamp;
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use pretty_assertions::assert_eq;

use super::plan::*;
use crate::caches::PolicySummary;
use crate::keyvault::{DeletedVaultKey, KeyVaultError, StoredReleasePolicy, VaultKey, VaultUrl};
use crate::policy::PolicyHash;
use crate::policy::{ReleasePolicy, hash_rego};

const CLUSTER: &str = "0f0e0d0c-1111-2222-3333-444455556666";
const REGO_A: &str = "package agent_policy\ndefault allow := true\n";
const REGO_B: &str = "package agent_policy\ndefault allow := false\n";

fn now() -> Timestamp {
    "2026-03-01T12:00:00Z".parse().unwrap()
}

fn binding() -> ConfidentialKeyBinding {
    let spec: ConfidentialKeyBindingSpec = serde_json::from_value(serde_json::json!({
        "podSelector": {"matchLabels": {"app": "orders"}},
        "key": {"vault": "https://demo.vault.azure.net", "name": "orders-key", "type": "RSA-HSM", "size": 3072},
        "attestation": {"authority": "https://sharedeus.eus.attest.azure.net"},
        "policy": {"configMapRef": {"name": "orders-policy", "key": "policy.rego"}}
    }))
    .unwrap();
    let mut b = ConfidentialKeyBinding::new("orders", spec);
    b.metadata.namespace = Some("payments".into());
    b.metadata.generation = Some(3);
    b.metadata.uid = Some(UID.into());
    b
}

const UID: &str = "9a1b2c3d-0000-4000-8000-000000000001";

/// The operator's configuration for tests about a binding that follows its ConfigMap (opted in
/// with `--policy-source-default ConfigMap`).
fn config() -> PlanConfig {
    PlanConfig {
        allowed_vaults: [VaultUrl::parse("https://demo.vault.azure.net").unwrap()].into(),
        hash_grace: Duration::from_secs(600),
        cluster_uid: CLUSTER.into(),
        policy_source_default: PolicySource::ConfigMap,
        ..PlanConfig::default()
    }
}

/// The default configuration: policies are pinned.
fn pinned_config() -> PlanConfig {
    PlanConfig {
        policy_source_default: PolicySource::Pinned,
        ..config()
    }
}

/// What the policy cache holds of a ConfigMap `cm` builds: its summary for the binding's key.
fn found(cm: &ConfigMap) -> PolicySummary {
    PolicySummary::of(cm, [&"policy.rego".to_string()])
}

/// The binding's policy ConfigMap `payments/orders-policy`, with `data` under `policy.rego` if
/// given, and the policy label or without.
pub(super) fn cm(data: Option<&str>, labelled: bool) -> ConfigMap {
    ConfigMap {
        metadata: ObjectMeta {
            name: Some("orders-policy".into()),
            namespace: Some("payments".into()),
            labels: labelled.then(|| BTreeMap::from([(labels::POLICY.into(), "true".into())])),
            ..Default::default()
        },
        data: data.map(|d| BTreeMap::from([("policy.rego".into(), d.into())])),
        ..Default::default()
    }
}

fn resolved(rego: &str) -> Result<ResolvedPolicy, PolicyProblem> {
    Ok(ResolvedPolicy {
        hash: hash_rego(rego.as_bytes()),
    })
}

fn observed(policy: Result<ResolvedPolicy, PolicyProblem>, key: KeyObservation) -> Observed {
    Observed {
        policy,
        key,
        pod_policies: BTreeMap::new(),
        seen_retired: BTreeMap::new(),
        injected_pods: 0,
        now: now(),
        grant: Default::default(),
    }
}

/// The plan for `b` while its policy resolves to A and Key Vault holds `k`.
fn plan_with_key(b: &ConfidentialKeyBinding, k: VaultKey) -> Plan {
    plan(
        b,
        &observed(resolved(REGO_A), KeyObservation::Present(k)),
        &config(),
    )
}

/// The plan for `b` while its policy resolves to A and Key Vault has no such key.
fn plan_without_key(b: &ConfidentialKeyBinding) -> Plan {
    plan(
        b,
        &observed(resolved(REGO_A), KeyObservation::Absent),
        &config(),
    )
}

fn policy_json(b: &ConfidentialKeyBinding, regos: &[&str]) -> String {
    let set = regos.iter().map(|r| hash_rego(r.as_bytes())).collect();
    ReleasePolicy::for_binding(&b.spec, &set).unwrap().to_json()
}

fn key(tags_: BTreeMap<String, String>, policy: Option<&str>) -> VaultKey {
    VaultKey {
        id: "https://demo.vault.azure.net/keys/orders-key/v1".into(),
        name: "orders-key".into(),
        version: "v1".into(),
        kty: "RSA-HSM".into(),
        size: Some(3072),
        curve: None,
        key_ops: vec!["wrapKey".into()],
        exportable: true,
        enabled: true,
        tags: tags_,
        release_policy: policy.map(|p| StoredReleasePolicy {
            content_type: Some("application/json; charset=utf-8".into()),
            json: p.into(),
            immutable: false,
        }),
        managed: false,
    }
}

fn our_tags() -> BTreeMap<String, String> {
    owner_tags(&binding(), CLUSTER)
}

/// The key after the plan's write, as Key Vault then holds it.
fn written(k: &VaultKey, action: &KeyAction) -> VaultKey {
    let mut k = k.clone();
    match action {
        KeyAction::UpdatePolicy {
            policy_json, tags, ..
        } => {
            k.release_policy = Some(StoredReleasePolicy {
                content_type: None,
                json: policy_json.clone(),
                immutable: false,
            });
            if let Some(t) = tags {
                k.tags = t.clone();
            }
        }
        KeyAction::RecordRetired { tags, .. } => k.tags = tags.clone(),
        KeyAction::None => {}
        other => panic!("unexpected action {other:?}"),
    }
    k
}

/// Our tags with this `ckb-retired` record.
fn tags_retired(record: &str) -> BTreeMap<String, String> {
    let mut t = our_tags();
    t.insert(tags::RETIRED.into(), record.into());
    t
}

/// The `ckb-retired` entry of a hash retired at `at`.
fn record(rego: &str, at: &str) -> String {
    format!(
        "{}={}",
        &hash_rego(rego.as_bytes()).to_string()[..16],
        at.parse::<Timestamp>().unwrap().as_second()
    )
}

fn message<'a>(s: &'a ConfidentialKeyBindingStatus, t: &str) -> &'a str {
    &s.conditions.iter().find(|c| c.type_ == t).unwrap().message
}

fn cond<'a>(s: &'a ConfidentialKeyBindingStatus, t: &str) -> (&'a str, &'a str) {
    let c = s.conditions.iter().find(|c| c.type_ == t).unwrap();
    (c.status.as_str(), c.reason.as_str())
}

/// Applies a plan's status to the binding, as the status write would.
fn with_status(
    mut b: ConfidentialKeyBinding,
    s: ConfidentialKeyBindingStatus,
) -> ConfidentialKeyBinding {
    b.status = Some(s);
    b
}

// ---- policy resolution

#[test]
fn policy_problems_name_the_configmap_and_key_and_have_their_reason() {
    let b = binding();
    let missing = resolve_policy(&b, PolicyConfigMap::Missing).unwrap_err();
    assert_eq!(missing.reason, reasons::CONFIG_MAP_NOT_FOUND);
    let unlabelled = cm(Some(REGO_A), false);
    let no_key = cm(None, true);
    let empty = cm(Some("  \n"), true);
    let mut binary = cm(None, true);
    binary.binary_data = Some(BTreeMap::from([(
        "policy.rego".into(),
        k8s_openapi::ByteString(vec![0xff, 0xfe]),
    )]));
    let big = "x".repeat(200 * 1024);
    let too_large = cm(Some(&big), true);
    for (c, reason) in [
        (&unlabelled, reasons::CONFIG_MAP_NOT_LABELLED),
        (&no_key, reasons::POLICY_KEY_NOT_FOUND),
        (&empty, reasons::POLICY_EMPTY),
        (&binary, reasons::POLICY_NOT_UTF8),
        (&too_large, reasons::POLICY_TOO_LARGE),
    ] {
        let p = resolve_policy(&b, PolicyConfigMap::Found(&found(c))).unwrap_err();
        assert_eq!(p.reason, reason);
        assert!(
            p.message.contains("payments/orders-policy") && p.message.contains("policy.rego"),
            "{}",
            p.message
        );
    }
    assert!(missing.message.contains("payments/orders-policy"));
}

#[test]
fn policy_at_the_annotation_limit_resolves_and_one_byte_more_does_not() {
    let b = binding();
    let overhead = labels::AGENT_POLICY.len()
        + labels::POLICY_SHA256.len()
        + 64
        + labels::BINDINGS.len()
        + "orders".len();
    // Largest text length whose base64 fits: 3 bytes per 4 characters.
    let fits = (ANNOTATION_BUDGET - overhead) / 4 * 3;
    let ok = cm(Some(&"x".repeat(fits)), true);
    assert!(resolve_policy(&b, PolicyConfigMap::Found(&found(&ok))).is_ok());
    let over = cm(Some(&"x".repeat(fits + 1)), true);
    assert_eq!(
        resolve_policy(&b, PolicyConfigMap::Found(&found(&over)))
            .unwrap_err()
            .reason,
        reasons::POLICY_TOO_LARGE
    );
}

#[test]
fn resolved_policy_hashes_the_rego_bytes() {
    let b = binding();
    let c = cm(Some(REGO_A), true);
    let r = resolve_policy(&b, PolicyConfigMap::Found(&found(&c))).unwrap();
    assert_eq!(r.hash, hash_rego(REGO_A.as_bytes()));
}

#[test]
fn unresolved_policy_makes_no_key_vault_call() {
    let b = binding();
    let p = plan(
        &b,
        &observed(
            resolve_policy(&b, PolicyConfigMap::Missing),
            KeyObservation::NotChecked,
        ),
        &config(),
    );
    assert!(!p.contact_vault);
    assert_eq!(p.action, KeyAction::None);
    assert_eq!(
        cond(&p.status, types::POLICY_RESOLVED),
        ("False", reasons::CONFIG_MAP_NOT_FOUND)
    );
    assert_eq!(
        cond(&p.status, types::KEY_READY),
        ("False", reasons::WAITING_FOR_POLICY)
    );
    assert_eq!(cond(&p.status, types::READY).0, "False");
    assert_eq!(p.events.len(), 1, "{:?}", p.events);
    assert!(p.events[0].warning);
    assert_eq!(p.events[0].reason, reasons::CONFIG_MAP_NOT_FOUND);
}

// ---- vault allow-list

#[test]
fn vault_not_allowed_is_never_contacted() {
    let b = binding();
    let mut cfg = config();
    cfg.allowed_vaults = BTreeSet::new();
    let p = plan(
        &b,
        &observed(resolved(REGO_A), KeyObservation::NotChecked),
        &cfg,
    );
    assert!(!p.contact_vault);
    assert_eq!(p.action, KeyAction::None);
    assert_eq!(
        cond(&p.status, types::KEY_READY),
        ("False", reasons::VAULT_NOT_ALLOWED)
    );
    let other = VaultUrl::parse("https://other.vault.azure.net").unwrap();
    cfg.allowed_vaults = [other].into();
    let p = plan(
        &b,
        &observed(resolved(REGO_A), KeyObservation::NotChecked),
        &cfg,
    );
    assert!(!p.contact_vault);
    assert_eq!(
        cond(&p.status, types::KEY_READY).1,
        reasons::VAULT_NOT_ALLOWED
    );
}

#[test]
fn allow_list_matches_normalised_urls() {
    let mut b = binding();
    b.spec.key.vault = "https://DEMO.vault.azure.net/".into();
    let p = plan_without_key(&b);
    assert!(p.contact_vault);
}

// ---- create

#[test]
fn absent_key_is_created_exportable_with_policy_and_tags() {
    let b = binding();
    let p = plan_without_key(&b);
    assert!(p.contact_vault);
    let KeyAction::Create(new) = &p.action else {
        panic!("expected create, got {:?}", p.action)
    };
    assert_eq!(new.name, "orders-key");
    assert_eq!(new.kty, "RSA-HSM");
    assert_eq!(new.size, Some(3072));
    assert!(new.exportable);
    assert_eq!(
        new.release_policy_json.as_deref(),
        Some(policy_json(&b, &[REGO_A]).as_str())
    );
    assert_eq!(
        new.tags.get(tags::MANAGED_BY).map(String::as_str),
        Some("ckb-operator")
    );
    assert_eq!(
        new.tags.get(tags::BINDING).map(String::as_str),
        Some("payments/orders")
    );
    assert_eq!(
        new.tags.get(tags::CLUSTER).map(String::as_str),
        Some(CLUSTER)
    );
    let bound = &p.status.policy.as_ref().unwrap().bound_hashes;
    assert_eq!(bound.len(), 1);
    assert_eq!(bound[0].reason, BoundHashReason::Current);

    let created = key(our_tags(), Some(&policy_json(&b, &[REGO_A])));
    let (status, events) = settle(&b, &p, Some(&Ok(created.clone())), now());
    assert_eq!(cond(&status, types::READY), ("True", reasons::READY));
    assert_eq!(status.key.as_ref().unwrap().id, created.id);
    assert_eq!(
        status.key.as_ref().unwrap().origin.as_deref(),
        Some("Created")
    );
    assert_eq!(status.observed_generation, Some(3));
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].reason, "KeyCreated");
    assert!(!events[0].warning);
}

#[test]
fn ec_key_is_created_with_its_curve_and_no_size() {
    let mut b = binding();
    b.spec.key.key_type = KeyType::EcHsm;
    b.spec.key.size = None;
    b.spec.key.curve = Some(ckb_crds::Curve::P384);
    let p = plan_without_key(&b);
    let KeyAction::Create(new) = &p.action else {
        panic!()
    };
    assert_eq!(new.kty, "EC-HSM");
    assert_eq!(new.size, None);
    assert_eq!(new.curve.as_deref(), Some("P-384"));
    assert_eq!(new.key_ops, vec!["sign".to_string(), "verify".into()]);
}

/// Key Vault's answer to a create over its limit.
fn throttled() -> KeyVaultError {
    KeyVaultError::Throttled {
        retry_after: Duration::from_secs(3),
        message: "Too many requests".into(),
    }
}

#[test]
fn failed_create_reports_the_reason_and_binds_nothing() {
    let b = binding();
    let p = plan_without_key(&b);
    let err = throttled();
    let (status, events) = settle(&b, &p, Some(&Err(err)), now());
    assert_eq!(
        cond(&status, types::KEY_READY),
        ("False", reasons::KEY_VAULT_THROTTLED)
    );
    assert_eq!(
        cond(&status, types::RELEASE_POLICY_SYNCED),
        ("False", reasons::WAITING_FOR_KEY)
    );
    assert!(status.policy.as_ref().unwrap().bound_hashes.is_empty());
    assert!(status.key.is_none());
    assert!(
        events
            .iter()
            .any(|e| e.warning && e.reason == reasons::KEY_VAULT_THROTTLED)
    );
    // The same failure on the next loop is not a new event.
    let again = with_status(b.clone(), status.clone());
    let p2 = plan_without_key(&again);
    let err = throttled();
    let (_, events2) = settle(&again, &p2, Some(&Err(err)), now());
    assert!(events2.is_empty(), "{events2:?}");
}

// ---- steady state, drift, policy change

#[test]
fn steady_state_writes_nothing_and_status_is_stable() {
    let b = binding();
    let existing = key(our_tags(), Some(&policy_json(&b, &[REGO_A])));
    let p1 = plan_with_key(&b, existing.clone());
    assert_eq!(p1.action, KeyAction::None);
    assert_eq!(cond(&p1.status, types::READY).0, "True");
    let b2 = with_status(b, p1.status.clone());
    let mut later = observed(resolved(REGO_A), KeyObservation::Present(existing));
    later.now = "2026-03-02T12:00:00Z".parse().unwrap();
    let p2 = plan(&b2, &later, &config());
    assert_eq!(p2.action, KeyAction::None);
    assert_eq!(p2.status, p1.status, "status must not churn");
    assert!(p2.events.is_empty());
}

#[test]
fn policy_compared_by_meaning_not_bytes() {
    let b = binding();
    // Same policy, members reordered and whitespace added.
    let json: serde_json::Value = serde_json::from_str(&policy_json(&b, &[REGO_A])).unwrap();
    let mut reordered = json.clone();
    reordered["anyOf"][0]["allOf"]
        .as_array_mut()
        .unwrap()
        .reverse();
    let text = serde_json::to_string_pretty(&reordered).unwrap();
    let existing = key(our_tags(), Some(&text));
    let p = plan_with_key(&b, existing);
    assert_eq!(p.action, KeyAction::None);
}

#[test]
fn out_of_band_edit_is_patched_back() {
    let b = binding();
    let tampered = policy_json(&b, &[REGO_A, REGO_B]);
    let existing = key(our_tags(), Some(&tampered));
    let p = plan_with_key(&b, existing.clone());
    assert_eq!(
        p.action,
        KeyAction::UpdatePolicy {
            version: "v1".into(),
            policy_json: policy_json(&b, &[REGO_A]),
            tags: None,
        }
    );
    let (status, events) = settle(&b, &p, Some(&Ok(existing)), now());
    assert_eq!(cond(&status, types::READY).0, "True");
    assert_eq!(events[0].reason, "ReleasePolicyUpdated");
}

#[test]
fn policy_change_binds_old_and_new_then_prunes_old_after_grace_when_pods_are_gone() {
    let b = binding();
    let with_a = key(our_tags(), Some(&policy_json(&b, &[REGO_A])));
    let p1 = plan_with_key(&b, with_a.clone());
    let b = with_status(b, p1.status);
    // The ConfigMap now holds B; a pod still runs A.
    let mut o = observed(resolved(REGO_B), KeyObservation::Present(with_a.clone()));
    o.pod_policies = [(
        hash_rego(REGO_A.as_bytes()).to_string(),
        "2026-03-01T11:00:00Z".parse().unwrap(),
    )]
    .into();
    o.injected_pods = 1;
    let p2 = plan(&b, &o, &config());
    let both = policy_json(&b, &[REGO_A, REGO_B]);
    assert_eq!(
        p2.action,
        KeyAction::UpdatePolicy {
            version: "v1".into(),
            policy_json: both.clone(),
            // A's retirement is recorded on the key in the same write.
            tags: Some(tags_retired(&record(REGO_A, "2026-03-01T12:00:00Z"))),
        }
    );
    assert_eq!(p2.requeue_after, Some(Duration::from_secs(600)));
    let with_both = written(&with_a, &p2.action);
    let (s2, _) = settle(&b, &p2, Some(&Ok(with_both.clone())), now());
    assert_eq!(s2.injected_pods, Some(1));
    let b = with_status(b, s2);
    // After the grace, the pod is still there: A stays (InUse), nothing to write.
    let mut o3 = o.clone();
    o3.key = KeyObservation::Present(with_both.clone());
    o3.now = "2026-03-01T12:11:00Z".parse().unwrap();
    let p3 = plan(&b, &o3, &config());
    assert_eq!(p3.action, KeyAction::None);
    let reasons_of = |s: &ConfidentialKeyBindingStatus| {
        s.policy
            .as_ref()
            .unwrap()
            .bound_hashes
            .iter()
            .map(|h| h.reason)
            .collect::<Vec<_>>()
    };
    assert!(reasons_of(&p3.status).contains(&BoundHashReason::InUse));
    let b = with_status(b, p3.status);
    // The pod is gone: A is pruned.
    let mut o4 = o3.clone();
    o4.pod_policies.clear();
    o4.injected_pods = 0;
    let p4 = plan(&b, &o4, &config());
    assert_eq!(
        p4.action,
        KeyAction::UpdatePolicy {
            version: "v1".into(),
            policy_json: policy_json(&b, &[REGO_B]),
            tags: Some(our_tags()),
        }
    );
    assert_eq!(reasons_of(&p4.status), vec![BoundHashReason::Current]);
}

#[test]
fn additional_hashes_are_in_the_release_policy() {
    let mut b = binding();
    let extra = hash_rego(REGO_B.as_bytes());
    b.spec.policy.additional_hashes = vec![extra];
    let p = plan_without_key(&b);
    let KeyAction::Create(new) = &p.action else {
        panic!()
    };
    assert_eq!(
        new.release_policy_json.as_deref(),
        Some(policy_json(&b, &[REGO_A, REGO_B]).as_str())
    );
}

#[test]
fn immutable_differing_policy_is_a_condition_not_a_write() {
    let b = binding();
    let mut existing = key(our_tags(), Some(&policy_json(&b, &[REGO_B])));
    existing.release_policy.as_mut().unwrap().immutable = true;
    let p = plan_with_key(&b, existing);
    assert_eq!(p.action, KeyAction::None);
    assert_eq!(
        cond(&p.status, types::RELEASE_POLICY_SYNCED),
        ("False", reasons::POLICY_IMMUTABLE)
    );
    assert_eq!(cond(&p.status, types::KEY_READY).0, "True");
    // The hashes Key Vault does not hold are not recorded as bound.
    assert!(p.status.policy.as_ref().unwrap().bound_hashes.is_empty());
}

// ---- ownership, adoption, mismatch

#[test]
fn foreign_tags_are_never_touched_even_with_adopt() {
    for adopt in [false, true] {
        let mut b = binding();
        b.spec.key.adopt = adopt;
        let mut foreign = our_tags();
        foreign.insert(tags::BINDING.into(), "other/binding".into());
        let p = plan_with_key(&b, key(foreign, None));
        assert_eq!(p.action, KeyAction::None);
        assert_eq!(
            cond(&p.status, types::KEY_READY),
            ("False", reasons::KEY_NOT_OWNED)
        );
        let msg = &p
            .status
            .conditions
            .iter()
            .find(|c| c.type_ == types::KEY_READY)
            .unwrap()
            .message;
        assert!(msg.contains("other/binding"), "{msg}");
        // Another cluster.
        let mut other_cluster = our_tags();
        other_cluster.insert(tags::CLUSTER.into(), "another-uid".into());
        let p = plan_with_key(&b, key(other_cluster, None));
        assert_eq!(p.action, KeyAction::None);
        assert_eq!(cond(&p.status, types::KEY_READY).1, reasons::KEY_NOT_OWNED);
    }
}

#[test]
fn untagged_key_is_taken_only_with_adopt_and_the_owner_s_consent_tag() {
    let b = binding();
    let untagged = key(BTreeMap::from([("team".into(), "payments".into())]), None);
    let p = plan_with_key(&b, untagged.clone());
    assert_eq!(p.action, KeyAction::None);
    assert_eq!(cond(&p.status, types::KEY_READY).1, reasons::KEY_NOT_OWNED);
    assert!(message(&p.status, types::KEY_READY).contains("ckb-adopt=payments/orders"));

    let mut b = binding();
    b.spec.key.adopt = true;
    // adopt alone is not enough: the key's owner has not consented.
    let p = plan_with_key(&b, untagged.clone());
    assert_eq!(p.action, KeyAction::None);
    assert_eq!(
        cond(&p.status, types::KEY_READY),
        ("False", reasons::ADOPT_CONSENT_MISSING)
    );
    let msg = message(&p.status, types::KEY_READY);
    assert!(
        msg.contains("add the tag ckb-adopt=payments/orders"),
        "{msg}"
    );
    assert!(
        p.events
            .iter()
            .any(|e| e.warning && e.reason == reasons::ADOPT_CONSENT_MISSING)
    );
    // Consent naming another binding (another team's key) is no consent for this one.
    let mut elsewhere = untagged.clone();
    elsewhere
        .tags
        .insert(tags::ADOPT.into(), "other-team/orders".into());
    let p = plan_with_key(&b, elsewhere);
    assert_eq!(
        cond(&p.status, types::KEY_READY).1,
        reasons::ADOPT_CONSENT_MISSING
    );

    let mut untagged = untagged;
    untagged
        .tags
        .insert(tags::ADOPT.into(), "payments/orders".into());
    let p = plan_with_key(&b, untagged.clone());
    let KeyAction::Adopt {
        version,
        policy_json: pj,
        tags: t,
    } = &p.action
    else {
        panic!("{:?}", p.action)
    };
    assert_eq!(version, "v1");
    assert_eq!(pj, &policy_json(&b, &[REGO_A]));
    assert_eq!(
        t.get("team").map(String::as_str),
        Some("payments"),
        "existing tags kept"
    );
    assert_eq!(
        t.get(tags::BINDING).map(String::as_str),
        Some("payments/orders")
    );
    assert_eq!(t.get(tags::BINDING_UID).map(String::as_str), Some(UID));
    assert!(!t.contains_key(tags::ADOPT), "the consent is used once");
    let (status, events) = settle(&b, &p, Some(&Ok(untagged)), now());
    assert_eq!(status.key.unwrap().origin.as_deref(), Some("Adopted"));
    assert_eq!(events[0].reason, "KeyAdopted");
}

#[test]
fn mismatched_key_says_what_differs_and_is_not_written() {
    let b = binding();
    let mut k = key(our_tags(), None);
    k.kty = "EC-HSM".into();
    k.size = None;
    k.curve = Some("P-256".into());
    k.exportable = false;
    let p = plan_with_key(&b, k);
    assert_eq!(p.action, KeyAction::None);
    assert_eq!(cond(&p.status, types::KEY_READY).1, reasons::KEY_MISMATCH);
    let msg = &p
        .status
        .conditions
        .iter()
        .find(|c| c.type_ == types::KEY_READY)
        .unwrap()
        .message;
    assert!(
        msg.contains("type is EC-HSM (spec: RSA-HSM)") && msg.contains("not exportable"),
        "{msg}"
    );
    let mut k = key(our_tags(), None);
    k.size = Some(2048);
    let p = plan_with_key(&b, k);
    let msg = &p
        .status
        .conditions
        .iter()
        .find(|c| c.type_ == types::KEY_READY)
        .unwrap()
        .message;
    assert!(msg.contains("size is 2048 (spec: 3072)"), "{msg}");
}

// ---- soft-deleted keys

#[test]
fn our_soft_deleted_key_is_recovered_a_foreign_one_is_not() {
    let b = binding();
    let deleted = |t| {
        KeyObservation::Deleted(DeletedVaultKey {
            key: key(t, None),
            recovery_id: Some("https://demo.vault.azure.net/deletedkeys/orders-key".into()),
            deleted_date: Some(1),
            scheduled_purge_date: Some(2),
        })
    };
    let p = plan(
        &b,
        &observed(resolved(REGO_A), deleted(our_tags())),
        &config(),
    );
    assert_eq!(p.action, KeyAction::Recover);
    let p = plan(
        &b,
        &observed(resolved(REGO_A), deleted(BTreeMap::new())),
        &config(),
    );
    assert_eq!(p.action, KeyAction::None);
    assert_eq!(cond(&p.status, types::KEY_READY).1, reasons::KEY_DELETED);
}

#[test]
fn read_failure_is_reported_with_its_reason() {
    let b = binding();
    let err = KeyVaultError::Forbidden {
        status: 403,
        message: "no access".into(),
    };
    let p = plan(
        &b,
        &observed(resolved(REGO_A), KeyObservation::Failed(err)),
        &config(),
    );
    assert_eq!(p.action, KeyAction::None);
    assert_eq!(
        cond(&p.status, types::KEY_READY),
        ("False", reasons::KEY_VAULT_FORBIDDEN)
    );
}

#[test]
fn deletion_policy_does_not_change_the_plan() {
    let mut b = binding();
    b.spec.key.deletion_policy = DeletionPolicy::Delete;
    let p = plan_without_key(&b);
    assert!(matches!(p.action, KeyAction::Create(_)));
}

// ---- pinned hashes (the default policy source)

fn h(rego: &str) -> PolicyHash {
    hash_rego(rego.as_bytes())
}

fn pinned(regos: &[&str]) -> ConfidentialKeyBinding {
    let mut b = binding();
    b.spec.policy.sha256 = regos.iter().map(|r| h(r)).collect();
    b
}

#[test]
fn an_unpinned_binding_in_pinned_mode_changes_nothing_and_says_what_to_add() {
    let b = binding();
    let existing = key(our_tags(), Some(&policy_json(&b, &[REGO_A])));
    for k in [
        KeyObservation::NotChecked,
        KeyObservation::Present(existing),
    ] {
        let p = plan(&b, &observed(resolved(REGO_B), k), &pinned_config());
        assert!(!p.contact_vault);
        assert_eq!(p.action, KeyAction::None);
        assert_eq!(
            cond(&p.status, types::POLICY_RESOLVED),
            ("False", reasons::POLICY_NOT_PINNED)
        );
        let msg = message(&p.status, types::POLICY_RESOLVED);
        assert!(
            msg.contains(&format!("spec.policy.sha256: [\"{}\"]", h(REGO_B))),
            "{msg}"
        );
        assert!(
            p.events
                .iter()
                .any(|e| e.warning && e.reason == reasons::POLICY_NOT_PINNED)
        );
    }
    // The binding opts in to following its ConfigMap: it does.
    let mut follows = binding();
    follows.spec.policy.source = Some(PolicySource::ConfigMap);
    let p = plan(
        &follows,
        &observed(resolved(REGO_B), KeyObservation::Absent),
        &pinned_config(),
    );
    assert!(matches!(p.action, KeyAction::Create(_)));
    // And a binding that says Pinned under a ConfigMap default does not follow.
    let mut strict = binding();
    strict.spec.policy.source = Some(PolicySource::Pinned);
    let p = plan(
        &strict,
        &observed(resolved(REGO_B), KeyObservation::Absent),
        &config(),
    );
    assert_eq!(p.action, KeyAction::None);
    assert_eq!(
        cond(&p.status, types::POLICY_RESOLVED).1,
        reasons::POLICY_NOT_PINNED
    );
}

#[test]
fn a_pinned_policy_creates_the_key_with_every_pinned_hash() {
    let b = pinned(&[REGO_A, REGO_B]);
    let p = plan(
        &b,
        &observed(resolved(REGO_A), KeyObservation::Absent),
        &pinned_config(),
    );
    let KeyAction::Create(new) = &p.action else {
        panic!("{:?}", p.action)
    };
    assert_eq!(
        new.release_policy_json.as_deref(),
        Some(policy_json(&b, &[REGO_A, REGO_B]).as_str())
    );
    assert_eq!(
        cond(&p.status, types::POLICY_RESOLVED),
        ("True", reasons::POLICY_RESOLVED)
    );
    let bound = &p.status.policy.as_ref().unwrap().bound_hashes;
    let of = |r: &str| bound.iter().find(|b| b.hash == h(r)).unwrap().reason;
    assert_eq!(of(REGO_A), BoundHashReason::Current);
    assert_eq!(of(REGO_B), BoundHashReason::Pinned);
}

#[test]
fn a_configmap_rewritten_to_an_unpinned_policy_changes_nothing_in_key_vault() {
    let b = pinned(&[REGO_A]);
    let with_a = key(our_tags(), Some(&policy_json(&b, &[REGO_A])));
    let p1 = plan(
        &b,
        &observed(resolved(REGO_A), KeyObservation::Present(with_a.clone())),
        &pinned_config(),
    );
    assert_eq!(p1.action, KeyAction::None);
    let b = with_status(b, p1.status);
    // Someone with `edit` rewrites the ConfigMap (policy B), or deletes it.
    for policy in [
        resolved(REGO_B),
        resolve_policy(&b, PolicyConfigMap::Missing),
    ] {
        let p = plan(
            &b,
            &observed(policy, KeyObservation::Present(with_a.clone())),
            &pinned_config(),
        );
        assert_eq!(p.action, KeyAction::None, "nothing is written to Key Vault");
        assert_eq!(cond(&p.status, types::READY).0, "False");
        assert!(p.events.iter().any(|e| e.warning));
        assert_eq!(
            p.status.policy.as_ref().unwrap().bound_hashes.len(),
            1,
            "the pinned hash stays bound"
        );
    }
    let p = plan(
        &b,
        &observed(resolved(REGO_B), KeyObservation::Present(with_a)),
        &pinned_config(),
    );
    assert_eq!(
        cond(&p.status, types::POLICY_RESOLVED),
        ("False", reasons::POLICY_HASH_NOT_PINNED)
    );
    let msg = message(&p.status, types::POLICY_RESOLVED);
    assert!(
        msg.contains(h(REGO_A).as_str()) && msg.contains(h(REGO_B).as_str()),
        "{msg}"
    );
}

#[test]
fn rollout_by_the_binding_author_pin_both_then_prune() {
    let b = pinned(&[REGO_A]);
    let with_a = key(our_tags(), Some(&policy_json(&b, &[REGO_A])));
    let p1 = plan(
        &b,
        &observed(resolved(REGO_A), KeyObservation::Present(with_a.clone())),
        &pinned_config(),
    );
    // The author pins both, then switches the ConfigMap to B.
    let mut b2 = with_status(b, p1.status);
    b2.spec.policy.sha256 = vec![h(REGO_A), h(REGO_B)];
    let p2 = plan(
        &b2,
        &observed(resolved(REGO_B), KeyObservation::Present(with_a)),
        &pinned_config(),
    );
    let both = policy_json(&b2, &[REGO_A, REGO_B]);
    assert_eq!(
        p2.action,
        KeyAction::UpdatePolicy {
            version: "v1".into(),
            policy_json: both.clone(),
            tags: None,
        }
    );
    // Pods rolled; the author removes A from the pin: A gets its grace, then goes.
    let mut b3 = with_status(b2, p2.status);
    b3.spec.policy.sha256 = vec![h(REGO_B)];
    let with_both = key(our_tags(), Some(&both));
    let p3 = plan(
        &b3,
        &observed(resolved(REGO_B), KeyObservation::Present(with_both.clone())),
        &pinned_config(),
    );
    // A is in its grace period: the policy stays; when A retired is recorded on the key.
    assert_eq!(
        p3.action,
        KeyAction::RecordRetired {
            version: "v1".into(),
            tags: tags_retired(&record(REGO_A, "2026-03-01T12:00:00Z")),
        }
    );
    let (s3, events) = settle(&b3, &p3, Some(&Ok(written(&with_both, &p3.action))), now());
    assert_eq!(cond(&s3, types::READY).0, "True");
    assert_eq!(events[0].reason, "RetirementRecorded");
    let with_both = written(&with_both, &p3.action);
    let b4 = with_status(b3, s3);
    let mut later = observed(resolved(REGO_B), KeyObservation::Present(with_both));
    later.now = "2026-03-01T12:10:00Z".parse().unwrap();
    let p4 = plan(&b4, &later, &pinned_config());
    assert_eq!(
        p4.action,
        KeyAction::UpdatePolicy {
            version: "v1".into(),
            policy_json: policy_json(&b4, &[REGO_B]),
            tags: Some(our_tags()),
        }
    );
}

// ---- status is a hint

#[test]
fn a_status_patch_cannot_add_a_hash_or_keep_one_forever() {
    let b = binding();
    let with_a = key(our_tags(), Some(&policy_json(&b, &[REGO_A])));
    let p1 = plan_with_key(&b, with_a.clone());
    // A status patch adds B as Grace until 2099: Key Vault does not hold B, so it stays out.
    let mut s = p1.status.clone();
    s.policy.as_mut().unwrap().bound_hashes.push(BoundHash {
        hash: h(REGO_B),
        reason: BoundHashReason::Grace,
        since: "2099-01-01T00:00:00Z".into(),
    });
    let b2 = with_status(b.clone(), s);
    let p2 = plan_with_key(&b2, with_a);
    assert_eq!(p2.action, KeyAction::None);
    assert_eq!(p2.status.policy.as_ref().unwrap().bound_hashes.len(), 1);
    // A hash Key Vault does hold (retired B) with a `since` in 2099 counts from now: it is gone
    // after the grace period, and its recorded `since` is never in the future.
    let with_both = key(our_tags(), Some(&policy_json(&b, &[REGO_A, REGO_B])));
    let p3 = plan_with_key(&b2, with_both.clone());
    let since = &p3.status.policy.as_ref().unwrap().bound_hashes;
    assert!(
        since
            .iter()
            .all(|x| x.since.parse::<Timestamp>().unwrap() <= now())
    );
    let b3 = with_status(b2, p3.status);
    let mut later = observed(resolved(REGO_A), KeyObservation::Present(with_both));
    later.now = "2026-03-01T12:10:00Z".parse().unwrap();
    let p4 = plan(&b3, &later, &config());
    assert_eq!(
        p4.action,
        KeyAction::UpdatePolicy {
            version: "v1".into(),
            policy_json: policy_json(&b3, &[REGO_A]),
            tags: None,
        }
    );
}

// ---- ownership by identity

fn earlier_binding_tags() -> BTreeMap<String, String> {
    let mut t = our_tags();
    t.insert(
        tags::BINDING_UID.into(),
        "uid-of-the-deleted-binding".into(),
    );
    t
}

#[test]
fn a_re_created_binding_of_the_same_name_does_not_inherit_the_key() {
    let b = binding();
    let left = key(earlier_binding_tags(), Some(&policy_json(&b, &[REGO_B])));
    let p = plan_with_key(&b, left.clone());
    assert_eq!(p.action, KeyAction::None);
    assert_eq!(
        cond(&p.status, types::KEY_READY),
        ("False", reasons::KEY_NOT_OWNED)
    );
    let msg = message(&p.status, types::KEY_READY);
    assert!(
        msg.contains("uid-of-the-deleted-binding") && msg.contains("ckb-adopt=payments/orders"),
        "{msg}"
    );
    // Nor can it recover or (see reconcile) delete it.
    assert!(!owns(&b, &left, CLUSTER));
    // The documented claim: adopt: true and the owner's tag.
    let mut claiming = binding();
    claiming.spec.key.adopt = true;
    let p = plan_with_key(&claiming, left.clone());
    assert_eq!(
        cond(&p.status, types::KEY_READY).1,
        reasons::ADOPT_CONSENT_MISSING
    );
    let mut consented = left;
    consented.tags.insert(tags::ADOPT.into(), UID.into());
    let p = plan_with_key(&claiming, consented);
    let KeyAction::Adopt { tags: t, .. } = &p.action else {
        panic!("{:?}", p.action)
    };
    assert_eq!(t.get(tags::BINDING_UID).map(String::as_str), Some(UID));
    assert!(!t.contains_key(tags::ADOPT));
}

#[test]
fn a_key_tagged_by_the_previous_version_is_migrated_only_by_the_binding_that_had_it() {
    let b = binding();
    let mut legacy_tags = our_tags();
    legacy_tags.remove(tags::BINDING_UID);
    let legacy = key(legacy_tags, Some(&policy_json(&b, &[REGO_A])));
    // The binding that had it (its status names the key): the UID tag is added, nothing else.
    let mut had = b.clone();
    had.status = Some(ConfidentialKeyBindingStatus {
        key: Some(ckb_crds::KeyStatus {
            id: "https://demo.vault.azure.net/keys/orders-key/v0".into(),
            version: "v0".into(),
            key_type: "RSA-HSM".into(),
            origin: Some("Created".into()),
        }),
        ..Default::default()
    });
    assert!(owns(&had, &legacy, CLUSTER));
    let p = plan_with_key(&had, legacy.clone());
    let KeyAction::Retag {
        tags: t,
        policy_json: pj,
        ..
    } = &p.action
    else {
        panic!("{:?}", p.action)
    };
    assert_eq!(t.get(tags::BINDING_UID).map(String::as_str), Some(UID));
    assert_eq!(pj, &policy_json(&b, &[REGO_A]));
    let (_, events) = settle(&had, &p, Some(&Ok(legacy.clone())), now());
    assert_eq!(events[0].reason, "KeyTagsMigrated");
    // A binding without that history (re-created) does not get it.
    let p = plan_with_key(&b, legacy.clone());
    assert_eq!(p.action, KeyAction::None);
    assert_eq!(cond(&p.status, types::KEY_READY).1, reasons::KEY_NOT_OWNED);
    assert!(!owns(&b, &legacy, CLUSTER));
}

// ---- property: whatever pods, ConfigMaps, bindings and status patches do, the key only ever
// holds approved hashes and retired hashes within their limits

mod property {
    use super::*;
    use crate::controller::hashes::remember_retired;
    use crate::controller::index::{INJECTED_LABEL, pod_policies, slim_pod};
    use crate::policy::hash::encode_annotation;
    use k8s_openapi::api::core::v1::{Pod, PodSpec, PodStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use proptest::prelude::*;

    const REGOS: [&str; 4] = [
        "package agent_policy\n# zero\n",
        "package agent_policy\n# one\n",
        "package agent_policy\n# two\n",
        "package agent_policy\n# three\n",
    ];
    const GRACE: Duration = Duration::from_secs(600);
    const CEILING: Duration = Duration::from_secs(4 * 3600);

    #[derive(Debug, Clone)]
    enum Ev {
        /// The ConfigMap holds policy i (None: deleted).
        ConfigMap(Option<usize>),
        /// The binding author pins this subset of policies (bit i = policy i).
        Pins(u8),
        /// The binding follows its ConfigMap (or not).
        Follow(bool),
        /// `additionalHashes` is this subset.
        Additional(u8),
        /// A pod running policy i, created now; may be non-confidential or not selected, and may
        /// claim any hash in `ckb.dev/policy-sha256`.
        Pod {
            runs: usize,
            claims: usize,
            confidential: bool,
            selected: bool,
        },
        /// The i-th pod (modulo) goes.
        PodGone(usize),
        /// Someone with status rights adds or rewrites a bound hash, `since` offset from now.
        StatusPatch {
            hash: usize,
            reason: u8,
            offset_secs: i64,
        },
        /// Time passes.
        Advance(u32),
        /// The operator restarts (or another replica takes the lead): its memory is gone.
        Restart,
        /// The operator reconciles.
        Reconcile,
    }

    fn ev() -> impl Strategy<Value = Ev> {
        prop_oneof![
            proptest::option::of(0..4usize).prop_map(Ev::ConfigMap),
            (0u8..16).prop_map(Ev::Pins),
            any::<bool>().prop_map(Ev::Follow),
            (0u8..16).prop_map(Ev::Additional),
            (0..4usize, 0..4usize, any::<bool>(), any::<bool>()).prop_map(
                |(runs, claims, confidential, selected)| Ev::Pod {
                    runs,
                    claims,
                    confidential,
                    selected
                }
            ),
            (0..8usize).prop_map(Ev::PodGone),
            (0..4usize, 0u8..5, -7200i64..3_000_000_000i64).prop_map(
                |(hash, reason, offset_secs)| Ev::StatusPatch {
                    hash,
                    reason,
                    offset_secs
                }
            ),
            (0u32..3 * 3600).prop_map(Ev::Advance),
            Just(Ev::Restart),
            Just(Ev::Reconcile),
            Just(Ev::Reconcile),
            Just(Ev::Reconcile),
        ]
    }

    struct FakePod {
        pod: Pod,
        runs: String,
        qualifies: bool,
        created: Timestamp,
    }

    fn subset(bits: u8) -> Vec<PolicyHash> {
        (0..4)
            .filter(|i| bits & (1 << i) != 0)
            .map(|i| h(REGOS[i]))
            .collect()
    }

    fn make_pod(n: usize, e: &Ev, now: Timestamp) -> FakePod {
        let Ev::Pod {
            runs,
            claims,
            confidential,
            selected,
        } = *e
        else {
            unreachable!()
        };
        let mut p = Pod::default();
        p.metadata.name = Some(format!("p{n}"));
        p.metadata.namespace = Some("payments".into());
        p.metadata.creation_timestamp = Some(Time(now));
        p.metadata.labels = Some(BTreeMap::from([
            (INJECTED_LABEL.into(), "true".into()),
            (
                "app".into(),
                if selected { "orders" } else { "other" }.into(),
            ),
        ]));
        p.metadata.annotations = Some(BTreeMap::from([
            (labels::BINDINGS.into(), "orders".into()),
            (labels::POLICY_SHA256.into(), h(REGOS[claims]).to_string()),
            (labels::AGENT_POLICY.into(), encode_annotation(REGOS[runs])),
        ]));
        p.spec = Some(PodSpec {
            runtime_class_name: Some(
                if confidential {
                    "kata-cc-isolation"
                } else {
                    "runc"
                }
                .into(),
            ),
            ..Default::default()
        });
        p.status = Some(PodStatus {
            phase: Some("Pending".into()),
            ..Default::default()
        });
        slim_pod(&mut p);
        FakePod {
            pod: p,
            runs: h(REGOS[runs]).to_string(),
            qualifies: confidential && selected,
            created: now,
        }
    }

    fn vault_key(
        b: &ConfidentialKeyBinding,
        hashes: &BTreeSet<String>,
        tags_: &BTreeMap<String, String>,
    ) -> VaultKey {
        let set = hashes.iter().map(|x| x.parse().unwrap()).collect();
        let json = ReleasePolicy::for_binding(&b.spec, &set).unwrap().to_json();
        key(tags_.clone(), Some(&json))
    }

    fn hashes_of(json: &str) -> BTreeSet<String> {
        ReleasePolicy::parse_json(json).unwrap().hostdata_hashes()
    }

    /// What one generated history drives: the binding, its ConfigMap, the pods, what Key Vault
    /// holds and what the operator remembers, plus the truth the oracle keeps beside them.
    struct World {
        cfg: PlanConfig,
        b: ConfidentialKeyBinding,
        cm: Option<usize>,
        pods: Vec<FakePod>,
        now: Timestamp,
        vault: Option<BTreeSet<String>>,
        vault_tags: BTreeMap<String, String>,
        seen: BTreeMap<String, Timestamp>,
        /// The truth the operator must respect: when each hash held by Key Vault stopped being
        /// approved (observed at a reconcile).
        retired_at: BTreeMap<String, Timestamp>,
    }

    impl World {
        fn new() -> Self {
            Self {
                cfg: PlanConfig {
                    hash_grace: GRACE,
                    retention_ceiling: CEILING,
                    ..pinned_config()
                },
                b: binding(),
                cm: Some(0),
                pods: Vec::new(),
                now: now(),
                vault: None,
                vault_tags: BTreeMap::new(),
                seen: BTreeMap::new(),
                retired_at: BTreeMap::new(),
            }
        }

        /// Applies the `n`-th event of the history.
        fn apply(&mut self, n: usize, e: &Ev) -> Result<(), TestCaseError> {
            match e {
                Ev::ConfigMap(c) => self.cm = *c,
                Ev::Pins(bits) => self.b.spec.policy.sha256 = subset(*bits),
                Ev::Follow(f) => {
                    self.b.spec.policy.source = Some(if *f {
                        PolicySource::ConfigMap
                    } else {
                        PolicySource::Pinned
                    })
                }
                Ev::Additional(bits) => self.b.spec.policy.additional_hashes = subset(*bits),
                Ev::Pod { .. } => self.pods.push(make_pod(n, e, self.now)),
                Ev::PodGone(i) => {
                    if !self.pods.is_empty() {
                        let i = i % self.pods.len();
                        self.pods.remove(i);
                    }
                }
                Ev::StatusPatch {
                    hash,
                    reason,
                    offset_secs,
                } => self.patch_status(*hash, *reason, *offset_secs),
                Ev::Advance(secs) => self.now += jiff::SignedDuration::from_secs(i64::from(*secs)),
                Ev::Restart => self.seen.clear(),
                Ev::Reconcile => self.reconcile()?,
            }
            Ok(())
        }

        /// Someone with status rights writes a bound hash of their choosing.
        fn patch_status(&mut self, hash: usize, reason: u8, offset_secs: i64) {
            let reason = [
                BoundHashReason::Current,
                BoundHashReason::Pinned,
                BoundHashReason::Additional,
                BoundHashReason::Grace,
                BoundHashReason::InUse,
            ][reason as usize];
            let since = self
                .now
                .checked_add(jiff::SignedDuration::from_secs(offset_secs))
                .unwrap_or(self.now);
            let mut s = self.b.status.clone().unwrap_or_default();
            let p = s.policy.get_or_insert_with(Default::default);
            p.bound_hashes.retain(|x| x.hash != h(REGOS[hash]));
            p.bound_hashes.push(BoundHash {
                hash: h(REGOS[hash]),
                reason,
                since: since.to_string(),
            });
            self.b.status = Some(s);
        }

        /// What the operator sees at a reconcile.
        fn observe(&self) -> Observed {
            let policy = match self.cm {
                Some(i) => resolved(REGOS[i]),
                None => resolve_policy(&self.b, PolicyConfigMap::Missing),
            };
            let live: Vec<&Pod> = self.pods.iter().map(|p| &p.pod).collect();
            let found = pod_policies(live, &self.b, &self.cfg.confidential_runtime_classes);
            Observed {
                policy,
                key: match &self.vault {
                    None => KeyObservation::Absent,
                    Some(set) => KeyObservation::Present(vault_key(&self.b, set, &self.vault_tags)),
                },
                pod_policies: found.earliest,
                seen_retired: self.seen.clone(),
                injected_pods: found.count,
                now: self.now,
                grant: Default::default(),
            }
        }

        /// Plans, applies the write to Key Vault and the status to the binding, then checks the
        /// key against the oracle.
        fn reconcile(&mut self) -> Result<(), TestCaseError> {
            let p = plan(&self.b, &self.observe(), &self.cfg);
            // Without a hash to bind (no pin, not following) the key is left alone.
            let contacted = p.contact_vault;
            self.write_to_vault(&p.action)?;
            let bound = p
                .status
                .policy
                .as_ref()
                .map(|x| x.bound_hashes.clone())
                .unwrap_or_default();
            self.seen = remember_retired(&self.seen, &bound, self.now);
            self.b.status = Some(p.status);
            if !contacted {
                prop_assert_eq!(&p.action, &KeyAction::None);
                return Ok(());
            }
            self.check_held_hashes()
        }

        /// Key Vault after the write.
        fn write_to_vault(&mut self, action: &KeyAction) -> Result<(), TestCaseError> {
            match action {
                KeyAction::Create(new) => {
                    self.vault = Some(hashes_of(new.release_policy_json.as_deref().unwrap()));
                    self.vault_tags = new.tags.clone();
                }
                KeyAction::UpdatePolicy {
                    policy_json, tags, ..
                } => {
                    self.vault = Some(hashes_of(policy_json));
                    if let Some(t) = tags {
                        self.vault_tags = t.clone();
                    }
                }
                KeyAction::RecordRetired { tags, .. } => self.vault_tags = tags.clone(),
                KeyAction::None => {}
                other => prop_assert!(false, "unexpected action {other:?}"),
            }
            Ok(())
        }

        /// The oracle, from the spec, the ConfigMap and the pods only.
        fn approved(&self) -> BTreeSet<String> {
            let policy = &self.b.spec.policy;
            let follows =
                policy.source == Some(PolicySource::ConfigMap) && policy.sha256.is_empty();
            let mut approved: BTreeSet<String> =
                policy.sha256.iter().map(|x| x.to_string()).collect();
            approved.extend(policy.additional_hashes.iter().map(|x| x.to_string()));
            if let Some(i) = self.cm
                && (follows || policy.sha256.contains(&h(REGOS[i])))
            {
                approved.insert(h(REGOS[i]).to_string());
            }
            approved
        }

        /// Every hash Key Vault holds is approved, or retired for less than the ceiling and
        /// either within its grace or kept by a qualifying pod that ran it before it retired.
        fn check_held_hashes(&mut self) -> Result<(), TestCaseError> {
            let approved = self.approved();
            let held = self.vault.clone().unwrap_or_default();
            self.retired_at
                .retain(|x, _| held.contains(x) && !approved.contains(x));
            for x in &held {
                if !approved.contains(x) {
                    self.retired_at.entry(x.clone()).or_insert(self.now);
                }
            }
            for x in &held {
                if approved.contains(x) {
                    continue;
                }
                let r = self.retired_at[x];
                let age = Duration::try_from(self.now.duration_since(r)).unwrap();
                let pod_keeps = self
                    .pods
                    .iter()
                    .any(|p| p.qualifies && &p.runs == x && p.created <= r);
                prop_assert!(
                    age < CEILING,
                    "{x} bound {age:?} after its retirement (ceiling {CEILING:?})"
                );
                prop_assert!(
                    age < GRACE || pod_keeps,
                    "{x} bound {age:?} after its retirement without a qualifying pod"
                );
            }
            Ok(())
        }
    }

    fn run(events: Vec<Ev>) -> Result<(), TestCaseError> {
        let mut world = World::new();
        for (n, e) in events.iter().enumerate() {
            world.apply(n, e)?;
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]
        #[test]
        fn the_key_holds_only_approved_hashes_and_retired_ones_within_their_limits(
            events in proptest::collection::vec(ev(), 1..60)
        ) {
            run(events)?;
        }
    }
}
