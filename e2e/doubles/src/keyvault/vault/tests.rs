//! Tests of the vault operations.

use super::*;
use crate::jose::b64url;

const BASE: &str = "https://demo.vault.azure.net";

fn policy_b64() -> String {
    b64url(br#"{"version":"1.0.0","anyOf":[{"authority":"https://a","allOf":[{"claim":"c","equals":"1"}]}]}"#)
}

#[test]
fn names_follow_the_spec_pattern() {
    assert!(valid_key_name("Key-1"));
    assert!(!valid_key_name("key_1"));
    assert!(!valid_key_name(""));
    assert!(!valid_key_name(&"a".repeat(128)));
    assert!(valid_key_name(&"a".repeat(127)));
}

#[test]
fn create_get_new_version_delete_recover() {
    let mut v = Vault::new(VaultKind::Premium);
    let a = v
        .create(BASE, "k1", &json!({"kty": "EC-HSM", "crv": "P-384"}), 1)
        .unwrap();
    assert!(a.wrote);
    assert_eq!(a.body["key"]["crv"], "P-384");
    let b = v.create(BASE, "k1", &json!({"kty": "EC-HSM"}), 2).unwrap();
    assert_ne!(a.body["key"]["kid"], b.body["key"]["kid"]);
    assert_eq!(v.get(BASE, "k1", None).unwrap().body, b.body);
    let first_version = a.body["key"]["kid"]
        .as_str()
        .unwrap()
        .rsplit('/')
        .next()
        .unwrap();
    assert_eq!(v.get(BASE, "k1", Some(first_version)).unwrap().body, a.body);
    let d = v.delete(BASE, "k1", 3).unwrap();
    assert_eq!(d.body["recoveryId"], format!("{BASE}/deletedkeys/k1"));
    assert_eq!(v.get(BASE, "k1", None).unwrap_err().status, 404);
    let err = v
        .create(BASE, "k1", &json!({"kty": "EC-HSM"}), 4)
        .unwrap_err();
    assert_eq!(
        (err.status, err.inner.as_deref()),
        (409, Some("ObjectIsDeletedButRecoverable"))
    );
    v.recover(BASE, "k1").unwrap();
    assert_eq!(v.keys["k1"].versions.len(), 2);
}

#[test]
fn exportable_rules() {
    let mut v = Vault::new(VaultKind::Premium);
    let e = v
        .create(
            BASE,
            "k",
            &json!({"kty": "RSA-HSM", "attributes": {"exportable": true}}),
            1,
        )
        .unwrap_err();
    assert!(e.message.contains("Release policy must be provided"), "{e}");
    let e = v
        .create(
            BASE,
            "k",
            &json!({"kty": "RSA", "attributes": {"exportable": true},
            "release_policy": {"data": policy_b64()}}),
            1,
        )
        .unwrap_err();
    assert_eq!(e.status, 400);
    let ok = v
        .create(
            BASE,
            "k",
            &json!({"kty": "RSA-HSM", "attributes": {"exportable": true},
            "release_policy": {"data": policy_b64()}}),
            1,
        )
        .unwrap();
    assert_eq!(ok.body["attributes"]["exportable"], true);
    assert_eq!(
        ok.body["release_policy"]["contentType"],
        DEFAULT_POLICY_CONTENT_TYPE
    );
    // A later version may omit the policy.
    let later = v
        .create(
            BASE,
            "k",
            &json!({"kty": "RSA-HSM", "attributes": {"exportable": true}}),
            2,
        )
        .unwrap();
    assert_eq!(later.body["release_policy"], ok.body["release_policy"]);
}

#[test]
fn kty_per_vault_kind() {
    let mut premium = Vault::new(VaultKind::Premium);
    assert_eq!(
        premium
            .create(BASE, "k", &json!({"kty": "oct-HSM"}), 1)
            .unwrap_err()
            .status,
        400
    );
    let mut hsm = Vault::new(VaultKind::ManagedHsm);
    assert_eq!(
        hsm.create(BASE, "k", &json!({"kty": "RSA"}), 1)
            .unwrap_err()
            .status,
        400
    );
    assert_eq!(
        hsm.create(BASE, "k", &json!({"kty": "EC"}), 1)
            .unwrap_err()
            .status,
        400
    );
    let oct = hsm
        .create(BASE, "k", &json!({"kty": "oct-HSM", "key_size": 256}), 1)
        .unwrap();
    assert!(
        oct.body["key"].get("k").is_none(),
        "symmetric material is never shown"
    );
}
