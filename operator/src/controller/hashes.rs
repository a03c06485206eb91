//! Which policy hashes a binding's release policy allows (pure).
//!
//! The rules, in order of precedence for one hash:
//! 1. the hash of the policy in the referenced ConfigMap now: `Current`;
//! 2. a hash listed in `spec.policy.additionalHashes`: `Additional`;
//! 3. a hash this binding bound before (it is in `status.policy.boundHashes`) that stopped being
//!    current less than the grace period ago: `Grace` (its `since` is when it stopped being current);
//! 4. a hash this binding bound before that live pods injected for this binding still carry: `InUse`.
//!
//! Anything else goes. A pod never adds a hash: a hash carried by pods but never bound by this
//! binding is ignored, so a pod (whose annotations anyone allowed to create pods can write) cannot
//! widen who may release the key.

use std::collections::BTreeSet;
use std::time::Duration;

use ckb_crds::{BoundHash, BoundHashReason};
use jiff::Timestamp;

/// The bound hashes after this reconcile, sorted by hash, and when the next one leaves its grace
/// period (so the reconcile can be scheduled then).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allowed {
    /// Every allowed hash with why.
    pub bound: Vec<BoundHash>,
    /// Time until the earliest grace period ends, if any hash is in grace.
    pub next_expiry: Option<Duration>,
}

impl Allowed {
    /// The hash strings.
    pub fn hashes(&self) -> BTreeSet<String> {
        self.bound.iter().map(|b| b.hash.clone()).collect()
    }
}

/// Computes the allowed hashes (see the module docs).
///
/// `previous` is the binding's `status.policy.boundHashes`; `carried` the hashes
/// (`ckb.dev/policy-sha256`) of live pods that name this binding in `ckb.dev/bindings`.
pub fn allowed_hashes(
    current: &str,
    additional: &[String],
    previous: &[BoundHash],
    carried: &BTreeSet<String>,
    now: Timestamp,
    grace: Duration,
) -> Allowed {
    let mut bound: Vec<BoundHash> = Vec::new();
    let mut next_expiry: Option<Duration> = None;
    let prev = |h: &str| previous.iter().find(|b| b.hash == h);
    let keep_since = |h: &str, reason: BoundHashReason| match prev(h) {
        Some(b) if b.reason == reason => b.since.clone(),
        _ => now.to_string(),
    };

    bound.push(BoundHash {
        hash: current.to_string(),
        reason: BoundHashReason::Current,
        since: keep_since(current, BoundHashReason::Current),
    });
    for h in additional {
        if bound.iter().any(|b| &b.hash == h) {
            continue;
        }
        bound.push(BoundHash {
            hash: h.clone(),
            reason: BoundHashReason::Additional,
            since: keep_since(h, BoundHashReason::Additional),
        });
    }
    for p in previous {
        if bound.iter().any(|b| b.hash == p.hash) {
            continue;
        }
        // When did it stop being current? Now if it was current until this reconcile, else the
        // time recorded when it entered grace. A hash that was `Additional` and is no longer
        // listed goes at once: the user removed it on purpose.
        let grace_started = match p.reason {
            BoundHashReason::Current => Some(now),
            BoundHashReason::Grace => Some(p.since.parse::<Timestamp>().unwrap_or(now)),
            BoundHashReason::InUse | BoundHashReason::Additional => None,
        };
        if let Some(started) = grace_started {
            let elapsed = now.duration_since(started);
            let elapsed = Duration::try_from(elapsed).unwrap_or(Duration::ZERO);
            if elapsed < grace {
                let left = grace - elapsed;
                next_expiry = Some(next_expiry.map_or(left, |n| n.min(left)));
                bound.push(BoundHash {
                    hash: p.hash.clone(),
                    reason: BoundHashReason::Grace,
                    since: started.to_string(),
                });
                continue;
            }
        }
        let was_ours = matches!(
            p.reason,
            BoundHashReason::Current | BoundHashReason::Grace | BoundHashReason::InUse
        );
        if was_ours && carried.contains(&p.hash) {
            bound.push(BoundHash {
                hash: p.hash.clone(),
                reason: BoundHashReason::InUse,
                since: keep_since(&p.hash, BoundHashReason::InUse),
            });
        }
    }
    bound.sort_by(|a, b| a.hash.cmp(&b.hash));
    Allowed { bound, next_expiry }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    const B: &str = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";
    const C: &str = "cccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccc";
    const GRACE: Duration = Duration::from_secs(600);

    fn t(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn reasons(a: &Allowed) -> Vec<(String, BoundHashReason)> {
        a.bound
            .iter()
            .map(|b| (b.hash[..1].to_string(), b.reason))
            .collect()
    }

    #[test]
    fn first_bind_is_the_current_hash_only() {
        let a = allowed_hashes(
            A,
            &[],
            &[],
            &BTreeSet::new(),
            t("2026-01-01T00:00:00Z"),
            GRACE,
        );
        assert_eq!(reasons(&a), vec![("a".into(), BoundHashReason::Current)]);
        assert_eq!(a.bound[0].since, "2026-01-01T00:00:00Z");
        assert_eq!(a.next_expiry, None);
    }

    #[test]
    fn a_pod_cannot_add_a_hash() {
        let carried: BTreeSet<String> = [B.to_string()].into();
        let a = allowed_hashes(A, &[], &[], &carried, t("2026-01-01T00:00:00Z"), GRACE);
        assert_eq!(a.hashes(), [A.to_string()].into());
    }

    #[test]
    fn old_hash_stays_for_the_grace_then_while_pods_use_it_then_goes() {
        let t0 = t("2026-01-01T00:00:00Z");
        let first = allowed_hashes(A, &[], &[], &BTreeSet::new(), t0, GRACE);
        // The policy changes to B; pods still run A.
        let carried: BTreeSet<String> = [A.to_string()].into();
        let t1 = t("2026-01-01T01:00:00Z");
        let second = allowed_hashes(B, &[], &first.bound, &carried, t1, GRACE);
        assert_eq!(
            reasons(&second),
            vec![
                ("a".into(), BoundHashReason::Grace),
                ("b".into(), BoundHashReason::Current)
            ]
        );
        assert_eq!(second.next_expiry, Some(GRACE));
        // Five minutes later: still grace, 5 minutes left.
        let t2 = t("2026-01-01T01:05:00Z");
        let third = allowed_hashes(B, &[], &second.bound, &carried, t2, GRACE);
        assert_eq!(third.next_expiry, Some(Duration::from_secs(300)));
        assert_eq!(third.bound[0].reason, BoundHashReason::Grace);
        assert_eq!(third.bound[0].since, "2026-01-01T01:00:00Z");
        // After the grace, pods still use it: InUse.
        let t3 = t("2026-01-01T01:11:00Z");
        let fourth = allowed_hashes(B, &[], &third.bound, &carried, t3, GRACE);
        assert_eq!(fourth.bound[0].reason, BoundHashReason::InUse);
        assert_eq!(fourth.next_expiry, None);
        // Pods gone: dropped.
        let t4 = t("2026-01-01T01:12:00Z");
        let fifth = allowed_hashes(B, &[], &fourth.bound, &BTreeSet::new(), t4, GRACE);
        assert_eq!(fifth.hashes(), [B.to_string()].into());
        // A pod that comes back with A later cannot bring it back.
        let sixth = allowed_hashes(B, &[], &fifth.bound, &carried, t4, GRACE);
        assert_eq!(sixth.hashes(), [B.to_string()].into());
    }

    #[test]
    fn old_hash_without_pods_goes_after_the_grace() {
        let t0 = t("2026-01-01T00:00:00Z");
        let first = allowed_hashes(A, &[], &[], &BTreeSet::new(), t0, GRACE);
        let second = allowed_hashes(B, &[], &first.bound, &BTreeSet::new(), t0, GRACE);
        assert_eq!(second.bound.len(), 2);
        let later = t("2026-01-01T00:10:00Z");
        let third = allowed_hashes(B, &[], &second.bound, &BTreeSet::new(), later, GRACE);
        assert_eq!(third.hashes(), [B.to_string()].into());
    }

    #[test]
    fn additional_hashes_are_bound_and_removed_at_once() {
        let t0 = t("2026-01-01T00:00:00Z");
        let first = allowed_hashes(A, &[C.to_string()], &[], &BTreeSet::new(), t0, GRACE);
        assert_eq!(
            reasons(&first),
            vec![
                ("a".into(), BoundHashReason::Current),
                ("c".into(), BoundHashReason::Additional)
            ]
        );
        let carried: BTreeSet<String> = [C.to_string()].into();
        let second = allowed_hashes(A, &[], &first.bound, &carried, t0, GRACE);
        assert_eq!(second.hashes(), [A.to_string()].into());
    }

    #[test]
    fn current_wins_over_additional_and_since_is_kept() {
        let t0 = t("2026-01-01T00:00:00Z");
        let first = allowed_hashes(A, &[A.to_string()], &[], &BTreeSet::new(), t0, GRACE);
        assert_eq!(
            reasons(&first),
            vec![("a".into(), BoundHashReason::Current)]
        );
        let second = allowed_hashes(
            A,
            &[],
            &first.bound,
            &BTreeSet::new(),
            t("2026-02-01T00:00:00Z"),
            GRACE,
        );
        assert_eq!(second.bound, first.bound);
    }
}
