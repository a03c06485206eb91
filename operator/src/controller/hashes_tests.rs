//! Tests of which hashes a release policy allows.

use super::*;

const A: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
const B: &str = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";
const C: &str = "cccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccc";
const GRACE: Duration = Duration::from_secs(600);
const CEILING: Duration = Duration::from_secs(24 * 3600);

fn ph(s: &str) -> PolicyHash {
    s.parse().unwrap()
}

fn t(s: &str) -> Timestamp {
    s.parse().unwrap()
}

/// One reconcile's inputs, with the key holding exactly what the previous one bound.
struct Step {
    current: Option<PolicyHash>,
    pinned: Vec<PolicyHash>,
    additional: Vec<PolicyHash>,
    pods: BTreeMap<String, Timestamp>,
    seen: BTreeMap<String, Timestamp>,
    recorded: BTreeMap<String, Timestamp>,
    in_vault: Option<BTreeSet<String>>,
}

fn step(current: &str) -> Step {
    Step {
        current: Some(ph(current)),
        pinned: vec![],
        additional: vec![],
        pods: BTreeMap::new(),
        seen: BTreeMap::new(),
        recorded: BTreeMap::new(),
        in_vault: None,
    }
}

impl Step {
    fn pod(mut self, hash: &str, created: &str) -> Self {
        self.pods.insert(hash.into(), t(created));
        self
    }
    fn run(&self, previous: &[BoundHash], now: &str) -> Allowed {
        let vault: BTreeSet<String> = previous.iter().map(|b| b.hash.to_string()).collect();
        allowed_hashes(HashInputs {
            current: self.current.as_ref(),
            pinned: &self.pinned,
            additional: &self.additional,
            previous,
            in_vault: Some(self.in_vault.as_ref().unwrap_or(&vault)),
            pods: &self.pods,
            seen_retired: &self.seen,
            recorded: &self.recorded,
            now: t(now),
            grace: GRACE,
            ceiling: CEILING,
        })
    }
}

fn reasons(a: &Allowed) -> Vec<(String, BoundHashReason)> {
    a.bound
        .iter()
        .map(|b| (b.hash.short(1).to_string(), b.reason))
        .collect()
}

const T0: &str = "2026-01-01T00:00:00Z";
const T1: &str = "2026-01-01T01:00:00Z";

#[test]
fn first_bind_is_the_current_hash_only() {
    let a = step(A).run(&[], T0);
    assert_eq!(reasons(&a), vec![("a".into(), BoundHashReason::Current)]);
    assert_eq!(a.bound[0].since, T0);
    assert_eq!(a.next_expiry, None);
}

#[test]
fn a_pod_cannot_add_a_hash() {
    let a = step(A).pod(B, T0).run(&[], T0);
    assert_eq!(a.hashes(), [A.to_string()].into());
}

#[test]
fn old_hash_stays_for_the_grace_then_while_older_pods_use_it_then_goes() {
    let first = step(A).run(&[], T0);
    // The policy changes to B at T1; a pod created before still runs A.
    let s = step(B).pod(A, "2026-01-01T00:30:00Z");
    let second = s.run(&first.bound, T1);
    assert_eq!(
        reasons(&second),
        vec![
            ("a".into(), BoundHashReason::Grace),
            ("b".into(), BoundHashReason::Current)
        ]
    );
    assert_eq!(second.next_expiry, Some(GRACE));
    let third = s.run(&second.bound, "2026-01-01T01:05:00Z");
    assert_eq!(third.next_expiry, Some(Duration::from_secs(300)));
    assert_eq!(third.bound[0].since, T1);
    // After the grace, the pod still runs A: InUse, until the ceiling at the latest.
    let fourth = s.run(&third.bound, "2026-01-01T01:11:00Z");
    assert_eq!(fourth.bound[0].reason, BoundHashReason::InUse);
    assert_eq!(fourth.bound[0].since, T1, "since stays the retirement time");
    assert_eq!(fourth.next_expiry, Some(CEILING - Duration::from_secs(660)));
    // Pods gone: dropped; a pod that comes back cannot bring it back.
    let fifth = step(B).run(&fourth.bound, "2026-01-01T01:12:00Z");
    assert_eq!(fifth.hashes(), [B.to_string()].into());
    let sixth = s.run(&fifth.bound, "2026-01-01T01:13:00Z");
    assert_eq!(sixth.hashes(), [B.to_string()].into());
}

#[test]
fn a_pod_created_after_the_retirement_keeps_nothing_past_the_grace() {
    let first = step(A).run(&[], T0);
    let s = step(B).pod(A, "2026-01-01T01:00:01Z");
    let second = s.run(&first.bound, T1);
    assert_eq!(second.bound[0].reason, BoundHashReason::Grace);
    let later = s.run(&second.bound, "2026-01-01T01:10:00Z");
    assert_eq!(later.hashes(), [B.to_string()].into());
}

#[test]
fn the_retention_ceiling_ends_in_use() {
    let first = step(A).run(&[], T0);
    let s = step(B).pod(A, T0);
    let second = s.run(&first.bound, T1);
    let in_use = s.run(&second.bound, "2026-01-01T12:00:00Z");
    assert_eq!(in_use.bound[0].reason, BoundHashReason::InUse);
    let after = s.run(&in_use.bound, "2026-01-02T01:00:00Z");
    assert_eq!(after.hashes(), [B.to_string()].into());
}

#[test]
fn a_future_since_in_status_counts_as_now() {
    let first = step(A).run(&[], T0);
    let second = step(B).run(&first.bound, T1);
    // Someone with status rights moves A's retirement to 2099.
    let mut patched = second.bound.clone();
    patched[0].since = "2099-01-01T00:00:00Z".into();
    let third = step(B).run(&patched, "2026-01-01T01:05:00Z");
    assert_eq!(third.bound[0].since, "2026-01-01T01:05:00Z");
    assert!(third.next_expiry.unwrap() <= GRACE);
    let fourth = step(B).run(&third.bound, "2026-01-01T01:15:00Z");
    assert_eq!(fourth.hashes(), [B.to_string()].into());
}

#[test]
fn a_retirement_seen_by_the_operator_wins_over_a_later_one_in_status() {
    let first = step(A).run(&[], T0);
    let second = step(B).run(&first.bound, T1);
    let mut patched = second.bound.clone();
    patched[0].since = "2026-01-01T01:09:00Z".into();
    let mut s = step(B);
    s.seen = second.retired();
    let third = s.run(&patched, "2026-01-01T01:10:30Z");
    assert_eq!(third.hashes(), [B.to_string()].into());
}

#[test]
fn status_cannot_add_a_hash_key_vault_does_not_hold() {
    let first = step(A).run(&[], T0);
    let mut patched = first.bound.clone();
    patched.push(BoundHash {
        hash: ph(C),
        reason: BoundHashReason::Grace,
        since: T1.into(),
    });
    let mut s = step(A);
    s.in_vault = Some([A.to_string()].into());
    s.pods.insert(C.into(), t(T0));
    let second = s.run(&patched, T1);
    assert_eq!(second.hashes(), [A.to_string()].into());
}

#[test]
fn pinned_hashes_are_all_bound_and_the_configmap_one_is_current() {
    let mut s = step(B);
    s.pinned = vec![ph(A), ph(B)];
    let a = s.run(&[], T0);
    assert_eq!(
        reasons(&a),
        vec![
            ("a".into(), BoundHashReason::Pinned),
            ("b".into(), BoundHashReason::Current)
        ]
    );
    // Unpinning A retires it (grace, then pods, as for a current hash).
    let mut s2 = step(B);
    s2.pinned = vec![ph(B)];
    let b = s2.run(&a.bound, T1);
    assert_eq!(b.bound[0].reason, BoundHashReason::Grace);
    // Without a current hash, the pins alone are bound.
    let mut s3 = step(A);
    s3.current = None;
    s3.pinned = vec![ph(B)];
    assert_eq!(
        s3.run(&b.bound, T1).hashes(),
        [A.to_string(), B.to_string()].into()
    );
}

#[test]
fn additional_hashes_are_bound_and_removed_at_once() {
    let mut s = step(A);
    s.additional = vec![ph(C)];
    let first = s.run(&[], T0);
    assert_eq!(
        reasons(&first),
        vec![
            ("a".into(), BoundHashReason::Current),
            ("c".into(), BoundHashReason::Additional)
        ]
    );
    let second = step(A).pod(C, T0).run(&first.bound, T0);
    assert_eq!(second.hashes(), [A.to_string()].into());
}

#[test]
fn current_wins_over_additional_and_since_is_kept() {
    let mut s = step(A);
    s.additional = vec![ph(A)];
    let first = s.run(&[], T0);
    assert_eq!(
        reasons(&first),
        vec![("a".into(), BoundHashReason::Current)]
    );
    let second = step(A).run(&first.bound, "2026-02-01T00:00:00Z");
    assert_eq!(second.bound, first.bound);
}

#[test]
fn the_retirement_recorded_on_the_key_survives_a_restart_and_a_status_patch() {
    let first = step(A).run(&[], T0);
    let second = step(B).run(&first.bound, T1);
    // What the operator writes to the key's ckb-retired tag, read back after a restart.
    let tag = encode_retired(&second.retired()).unwrap();
    assert_eq!(tag, format!("{}={}", &A[..16], t(T1).as_second()));
    let recorded = decode_retired(&tag);
    // Status rewritten to retire A later (before now: the clamp alone cannot tell); the new
    // process has no memory of its own.
    let mut patched = second.bound.clone();
    patched[0].since = "2026-01-01T01:09:00Z".into();
    let mut s = step(B);
    s.recorded = recorded.clone();
    let after = s.run(&patched, "2026-01-01T01:10:30Z");
    assert_eq!(
        after.hashes(),
        [B.to_string()].into(),
        "grace ended at 01:10"
    );
    // Not lost either: within its grace the hash stays, counted from the recorded time.
    let within = s.run(&patched, "2026-01-01T01:05:00Z");
    assert_eq!(within.bound[0].since, T1);
    assert_eq!(within.next_expiry, Some(Duration::from_secs(300)));
    // Without the record (a key of an earlier version), the status is all there is.
    let unrecorded = step(B).run(&patched, "2026-01-01T01:10:30Z");
    assert_eq!(unrecorded.bound[0].reason, BoundHashReason::Grace);
}

#[test]
fn the_retired_tag_fits_a_key_vault_tag_value_keeping_the_earliest() {
    assert_eq!(encode_retired(&BTreeMap::new()), None);
    let many: BTreeMap<String, Timestamp> = (0..20u8)
        .map(|i| {
            let hash = format!("{:02x}", i).repeat(32);
            let at = t(T0) + jiff::SignedDuration::from_secs(i64::from(20 - i));
            (hash, at)
        })
        .collect();
    let tag = encode_retired(&many).unwrap();
    assert!(tag.len() <= 256, "{}", tag.len());
    let back = decode_retired(&tag);
    assert!(back.len() >= 8, "{back:?}");
    // The earliest retirements are the ones kept (they expire first and matter most).
    let latest_kept = back.values().max().unwrap();
    for (h, at) in &many {
        if !back.contains_key(&h[..16]) {
            assert!(at > latest_kept);
        }
    }
    assert!(decode_retired("junk,,x=y,abc=12").len() == 1);
}
