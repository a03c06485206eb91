//! Who a key belongs to, judged by its tags (and, for adopt, its owner's consent tag). Pure.

use std::collections::BTreeMap;

use ckb_crds::{ConfidentialKeyBinding, tags};

use crate::keyvault::VaultKey;

/// The tags a key of this binding carries.
pub fn owner_tags(binding: &ConfidentialKeyBinding, cluster_uid: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (
            tags::MANAGED_BY.to_string(),
            tags::MANAGED_BY_VALUE.to_string(),
        ),
        (tags::BINDING.to_string(), binding.key_ref()),
        (tags::CLUSTER.to_string(), cluster_uid.to_string()),
        (tags::BINDING_UID.to_string(), binding.uid_str().to_string()),
    ])
}

/// Who a key belongs to, judged by its tags.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ownership {
    /// Tagged for this binding (namespace, name and UID) in this cluster.
    Ours,
    /// Tagged for this binding's namespace and name in this cluster by an operator version that
    /// did not write `ckb-binding-uid`.
    OursWithoutUid,
    /// Tagged for an earlier binding of the same namespace and name (another UID) in this cluster.
    EarlierBinding(String),
    /// No ckb tag at all.
    Untagged,
    /// Tagged for another binding or cluster (or partly tagged): never touched.
    Foreign(String),
}

/// Judges a key's tags.
pub fn ownership(
    key_tags: &BTreeMap<String, String>,
    binding: &ConfidentialKeyBinding,
    cluster_uid: &str,
) -> Ownership {
    let ckb_tags = [tags::MANAGED_BY, tags::BINDING, tags::CLUSTER];
    let present = ckb_tags
        .iter()
        .chain([&tags::BINDING_UID])
        .any(|t| key_tags.contains_key(*t));
    if !present {
        return Ownership::Untagged;
    }
    let want = owner_tags(binding, cluster_uid);
    if ckb_tags.iter().all(|k| key_tags.get(*k) == want.get(*k)) {
        return match key_tags.get(tags::BINDING_UID) {
            Some(uid) if uid == binding.uid_str() => Ownership::Ours,
            Some(uid) => Ownership::EarlierBinding(uid.clone()),
            None => Ownership::OursWithoutUid,
        };
    }
    let shown = ckb_tags
        .iter()
        .map(|t| format!("{t}={}", key_tags.get(*t).map_or("<unset>", |v| v.as_str())))
        .collect::<Vec<_>>()
        .join(", ");
    Ownership::Foreign(shown)
}

/// The key identifier without its version.
pub(super) fn key_base(id: &str) -> Option<&str> {
    id.rsplit_once('/').map(|x| x.0)
}

/// Whether a key tagged without `ckb-binding-uid` ([`Ownership::OursWithoutUid`]) is the one this
/// very binding had: its status names that key. A binding re-created under the same name has no
/// such status, so it cannot inherit the key this way (it needs the owner's `ckb-adopt` tag).
pub fn had_this_key(binding: &ConfidentialKeyBinding, key_id: &str) -> bool {
    binding
        .status
        .as_ref()
        .and_then(|s| s.key.as_ref())
        .is_some_and(|k| key_base(&k.id).is_some() && key_base(&k.id) == key_base(key_id))
}

/// Whether the key carries the owner's consent for this binding to take it over: a `ckb-adopt`
/// tag naming `<namespace>/<name>` or the binding's UID.
pub fn adopt_consent(
    key_tags: &BTreeMap<String, String>,
    binding: &ConfidentialKeyBinding,
) -> bool {
    key_tags.get(tags::ADOPT).is_some_and(|v| {
        let v = v.trim();
        v == binding.key_ref() || (!binding.uid_str().is_empty() && v == binding.uid_str())
    })
}

/// Whether this binding may delete the key on deletion or recover it from soft-delete.
pub fn owns(binding: &ConfidentialKeyBinding, key: &VaultKey, cluster_uid: &str) -> bool {
    match ownership(&key.tags, binding, cluster_uid) {
        Ownership::Ours => true,
        Ownership::OursWithoutUid => had_this_key(binding, &key.id),
        _ => false,
    }
}
