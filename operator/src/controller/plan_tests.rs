//! Tests of the pure reconcile decision.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use ckb_crds::conditions::{reasons, types};
use ckb_crds::{
    BoundHashReason, ConfidentialKeyBinding, ConfidentialKeyBindingSpec,
    ConfidentialKeyBindingStatus, DeletionPolicy, KeyType, labels, tags,
};
use jiff::Timestamp;
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use pretty_assertions::assert_eq;

use super::plan::*;
use crate::keyvault::{DeletedVaultKey, KeyVaultError, StoredReleasePolicy, VaultKey, VaultUrl};
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
    b
}

fn config() -> PlanConfig {
    PlanConfig {
        allowed_vaults: [VaultUrl::parse("https://demo.vault.azure.net").unwrap()].into(),
        hash_grace: Duration::from_secs(600),
        cluster_uid: CLUSTER.into(),
    }
}

fn cm(data: Option<&str>, labelled: bool) -> ConfigMap {
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
        pod_hashes: BTreeSet::new(),
        injected_pods: 0,
        now: now(),
    }
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
        let p = resolve_policy(&b, PolicyConfigMap::Found(c)).unwrap_err();
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
    assert!(resolve_policy(&b, PolicyConfigMap::Found(&ok)).is_ok());
    let over = cm(Some(&"x".repeat(fits + 1)), true);
    assert_eq!(
        resolve_policy(&b, PolicyConfigMap::Found(&over))
            .unwrap_err()
            .reason,
        reasons::POLICY_TOO_LARGE
    );
}

#[test]
fn resolved_policy_hashes_the_rego_bytes() {
    let b = binding();
    let c = cm(Some(REGO_A), true);
    let r = resolve_policy(&b, PolicyConfigMap::Found(&c)).unwrap();
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
    let p = plan(
        &b,
        &observed(resolved(REGO_A), KeyObservation::Absent),
        &config(),
    );
    assert!(p.contact_vault);
}

// ---- create

#[test]
fn absent_key_is_created_exportable_with_policy_and_tags() {
    let b = binding();
    let p = plan(
        &b,
        &observed(resolved(REGO_A), KeyObservation::Absent),
        &config(),
    );
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
    let p = plan(
        &b,
        &observed(resolved(REGO_A), KeyObservation::Absent),
        &config(),
    );
    let KeyAction::Create(new) = &p.action else {
        panic!()
    };
    assert_eq!(new.kty, "EC-HSM");
    assert_eq!(new.size, None);
    assert_eq!(new.curve.as_deref(), Some("P-384"));
    assert_eq!(new.key_ops, vec!["sign".to_string(), "verify".into()]);
}

#[test]
fn failed_create_reports_the_reason_and_binds_nothing() {
    let b = binding();
    let p = plan(
        &b,
        &observed(resolved(REGO_A), KeyObservation::Absent),
        &config(),
    );
    let err = KeyVaultError::Throttled {
        retry_after: Duration::from_secs(3),
        message: "Too many requests".into(),
    };
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
    let p2 = plan(
        &again,
        &observed(resolved(REGO_A), KeyObservation::Absent),
        &config(),
    );
    let err = KeyVaultError::Throttled {
        retry_after: Duration::from_secs(3),
        message: "Too many requests".into(),
    };
    let (_, events2) = settle(&again, &p2, Some(&Err(err)), now());
    assert!(events2.is_empty(), "{events2:?}");
}

// ---- steady state, drift, policy change

#[test]
fn steady_state_writes_nothing_and_status_is_stable() {
    let b = binding();
    let existing = key(our_tags(), Some(&policy_json(&b, &[REGO_A])));
    let p1 = plan(
        &b,
        &observed(resolved(REGO_A), KeyObservation::Present(existing.clone())),
        &config(),
    );
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
    let p = plan(
        &b,
        &observed(resolved(REGO_A), KeyObservation::Present(existing)),
        &config(),
    );
    assert_eq!(p.action, KeyAction::None);
}

#[test]
fn out_of_band_edit_is_patched_back() {
    let b = binding();
    let tampered = policy_json(&b, &[REGO_A, REGO_B]);
    let existing = key(our_tags(), Some(&tampered));
    let p = plan(
        &b,
        &observed(resolved(REGO_A), KeyObservation::Present(existing.clone())),
        &config(),
    );
    assert_eq!(
        p.action,
        KeyAction::UpdatePolicy {
            version: "v1".into(),
            policy_json: policy_json(&b, &[REGO_A])
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
    let p1 = plan(
        &b,
        &observed(resolved(REGO_A), KeyObservation::Present(with_a.clone())),
        &config(),
    );
    let b = with_status(b, p1.status);
    // The ConfigMap now holds B; a pod still runs A.
    let mut o = observed(resolved(REGO_B), KeyObservation::Present(with_a.clone()));
    o.pod_hashes = [hash_rego(REGO_A.as_bytes()).to_string()].into();
    o.injected_pods = 1;
    let p2 = plan(&b, &o, &config());
    let both = policy_json(&b, &[REGO_A, REGO_B]);
    assert_eq!(
        p2.action,
        KeyAction::UpdatePolicy {
            version: "v1".into(),
            policy_json: both.clone()
        }
    );
    assert_eq!(p2.requeue_after, Some(Duration::from_secs(600)));
    let (s2, _) = settle(&b, &p2, Some(&Ok(with_a.clone())), now());
    assert_eq!(s2.injected_pods, Some(1));
    let b = with_status(b, s2);
    let with_both = key(our_tags(), Some(&both));
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
    o4.pod_hashes.clear();
    o4.injected_pods = 0;
    let p4 = plan(&b, &o4, &config());
    assert_eq!(
        p4.action,
        KeyAction::UpdatePolicy {
            version: "v1".into(),
            policy_json: policy_json(&b, &[REGO_B])
        }
    );
    assert_eq!(reasons_of(&p4.status), vec![BoundHashReason::Current]);
}

#[test]
fn additional_hashes_are_in_the_release_policy() {
    let mut b = binding();
    let extra = hash_rego(REGO_B.as_bytes()).to_string();
    b.spec.policy.additional_hashes = vec![extra];
    let p = plan(
        &b,
        &observed(resolved(REGO_A), KeyObservation::Absent),
        &config(),
    );
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
    let p = plan(
        &b,
        &observed(resolved(REGO_A), KeyObservation::Present(existing)),
        &config(),
    );
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
        let p = plan(
            &b,
            &observed(
                resolved(REGO_A),
                KeyObservation::Present(key(foreign, None)),
            ),
            &config(),
        );
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
        let p = plan(
            &b,
            &observed(
                resolved(REGO_A),
                KeyObservation::Present(key(other_cluster, None)),
            ),
            &config(),
        );
        assert_eq!(p.action, KeyAction::None);
        assert_eq!(cond(&p.status, types::KEY_READY).1, reasons::KEY_NOT_OWNED);
    }
}

#[test]
fn untagged_key_is_not_owned_unless_adopt() {
    let b = binding();
    let untagged = key(BTreeMap::from([("team".into(), "payments".into())]), None);
    let p = plan(
        &b,
        &observed(resolved(REGO_A), KeyObservation::Present(untagged.clone())),
        &config(),
    );
    assert_eq!(p.action, KeyAction::None);
    assert_eq!(cond(&p.status, types::KEY_READY).1, reasons::KEY_NOT_OWNED);

    let mut b = binding();
    b.spec.key.adopt = true;
    let p = plan(
        &b,
        &observed(resolved(REGO_A), KeyObservation::Present(untagged.clone())),
        &config(),
    );
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
    let p = plan(
        &b,
        &observed(resolved(REGO_A), KeyObservation::Present(k)),
        &config(),
    );
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
    let p = plan(
        &b,
        &observed(resolved(REGO_A), KeyObservation::Present(k)),
        &config(),
    );
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
    let p = plan(
        &b,
        &observed(resolved(REGO_A), KeyObservation::Absent),
        &config(),
    );
    assert!(matches!(p.action, KeyAction::Create(_)));
}
