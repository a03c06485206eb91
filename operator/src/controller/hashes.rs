//! Which policy hashes a binding's release policy allows (pure).
//!
//! The rules, in order of precedence for one hash:
//! 1. the ConfigMap's hash, when the binding may bind it (it follows the ConfigMap, or the hash is
//!    pinned): `Current`;
//! 2. a hash listed in `spec.policy.sha256`: `Pinned`;
//! 3. a hash listed in `spec.policy.additionalHashes`: `Additional`;
//! 4. a hash this binding bound before that stopped being current or pinned (it is *retired*):
//!    - less than the grace period ago: `Grace`;
//!    - otherwise while a *qualifying* pod carries it (see `index::pod_policies`: confidential,
//!      selected by the binding, the hash recomputed from its agent-policy annotation, created no
//!      later than the retirement): `InUse`;
//!    - never once the retention ceiling has passed since the retirement.
//!
//! Anything else goes. A pod never adds a hash. What the status says is a hint, never the truth:
//! a previous hash that Key Vault's release policy does not hold is not "bound before" (a status
//! patch cannot add one), a retirement time in the future counts as now, and the earliest of the
//! status's time, the one this process saw and the one recorded on the key in Key Vault (tag
//! `ckb-retired`, see [`encode_retired`]) wins: a status patch cannot lengthen a hash's life,
//! neither while the process runs nor across a restart or a change of leader.
//! A hash that was `Additional` and is no longer listed goes at once: the user removed it on
//! purpose.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use ckb_crds::{BoundHash, BoundHashReason, PolicyHash};
use jiff::Timestamp;

/// The bound hashes after this reconcile, sorted by hash, and when the next one must be looked
/// at again (end of a grace period or of the retention ceiling).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allowed {
    /// Every allowed hash with why.
    pub bound: Vec<BoundHash>,
    /// Time until the earliest grace period or retention ceiling ends, if any hash is retired.
    pub next_expiry: Option<Duration>,
}

impl Allowed {
    /// The hash strings.
    pub fn hashes(&self) -> BTreeSet<String> {
        self.bound.iter().map(|b| b.hash.to_string()).collect()
    }

    /// The retired hashes (`Grace`, `InUse`) and since when they are retired.
    pub fn retired(&self) -> BTreeMap<String, Timestamp> {
        self.bound
            .iter()
            .filter(|b| matches!(b.reason, BoundHashReason::Grace | BoundHashReason::InUse))
            .filter_map(|b| Some((b.hash.to_string(), b.since.parse().ok()?)))
            .collect()
    }
}

/// Everything [`allowed_hashes`] decides on.
#[derive(Debug, Clone, Copy)]
pub struct HashInputs<'a> {
    /// The ConfigMap's hash, when the binding may bind it (followed, or pinned); else `None`.
    pub current: Option<&'a PolicyHash>,
    /// `spec.policy.sha256`.
    pub pinned: &'a [PolicyHash],
    /// `spec.policy.additionalHashes`.
    pub additional: &'a [PolicyHash],
    /// `status.policy.boundHashes`: a hint (see the module docs).
    pub previous: &'a [BoundHash],
    /// The hashes the key's release policy holds now, as Key Vault reported them; `None` when the
    /// key was not read (nothing is written then).
    pub in_vault: Option<&'a BTreeSet<String>>,
    /// For each hash carried by qualifying pods, the creation time of the earliest such pod.
    pub pods: &'a BTreeMap<String, Timestamp>,
    /// When this process first saw each hash of the binding retired.
    pub seen_retired: &'a BTreeMap<String, Timestamp>,
    /// The retirements recorded on the key (its `ckb-retired` tag, see [`decode_retired`]),
    /// by hash prefix.
    pub recorded: &'a BTreeMap<String, Timestamp>,
    /// The time of this reconcile.
    pub now: Timestamp,
    /// How long a retired hash stays bound without qualifying pods.
    pub grace: Duration,
    /// How long a retired hash stays bound at most, pods or not.
    pub ceiling: Duration,
}

fn elapsed(from: Timestamp, to: Timestamp) -> Duration {
    Duration::try_from(to.duration_since(from)).unwrap_or(Duration::ZERO)
}

/// When a previously bound hash retired: the earliest of the status's time (a future one counts
/// as now; a hash that was current or pinned until now retires now), the time this process saw,
/// and the time recorded on the key. `None`: an `Additional` hash, which goes at once.
fn retirement(p: &BoundHash, i: &HashInputs<'_>) -> Option<Timestamp> {
    let now = i.now;
    let from_status = match p.reason {
        // It was current or pinned until this reconcile: retired now.
        BoundHashReason::Current | BoundHashReason::Pinned => now,
        BoundHashReason::Grace | BoundHashReason::InUse => {
            p.since.parse::<Timestamp>().unwrap_or(now).min(now)
        }
        BoundHashReason::Additional => return None,
    };
    let retired = [
        i.seen_retired.get(p.hash.as_str()),
        i.recorded.get(record_prefix(p.hash.as_str())),
    ]
    .into_iter()
    .flatten()
    .fold(from_status, |t, other| t.min(*other));
    Some(retired)
}

/// Computes the allowed hashes (see the module docs).
pub fn allowed_hashes(i: HashInputs<'_>) -> Allowed {
    let now = i.now;
    let mut bound: Vec<BoundHash> = Vec::new();
    let mut next_expiry: Option<Duration> = None;
    let mut expire_in = |left: Duration| {
        next_expiry = Some(next_expiry.map_or(left, |n: Duration| n.min(left)));
    };
    let prev = |h: &PolicyHash| i.previous.iter().find(|b| b.hash == *h);
    // A kept `since` is informational only (it decides nothing for these reasons); still, a
    // future one is not repeated.
    let keep_since = |h: &PolicyHash, reason: BoundHashReason| match prev(h) {
        Some(b) if b.reason == reason => match b.since.parse::<Timestamp>() {
            Ok(t) if t <= now => b.since.clone(),
            _ => now.to_string(),
        },
        _ => now.to_string(),
    };
    let push = |bound: &mut Vec<BoundHash>, h: &PolicyHash, reason: BoundHashReason| {
        if !bound.iter().any(|b| b.hash == *h) {
            bound.push(BoundHash {
                hash: h.clone(),
                reason,
                since: keep_since(h, reason),
            });
        }
    };
    if let Some(c) = i.current {
        push(&mut bound, c, BoundHashReason::Current);
    }
    for h in i.pinned {
        push(&mut bound, h, BoundHashReason::Pinned);
    }
    for h in i.additional {
        push(&mut bound, h, BoundHashReason::Additional);
    }
    let approved: BTreeSet<PolicyHash> = bound.iter().map(|b| b.hash.clone()).collect();
    for p in i.previous {
        if approved.contains(&p.hash) {
            continue;
        }
        if i.in_vault.is_some_and(|v| !v.contains(p.hash.as_str())) {
            // Key Vault never held it (or no longer does): the status cannot add a hash.
            continue;
        }
        let Some(retired) = retirement(p, &i) else {
            continue;
        };
        let age = elapsed(retired, now);
        if age >= i.ceiling {
            continue;
        }
        let reason = if age < i.grace {
            expire_in(i.grace - age);
            BoundHashReason::Grace
        } else if i
            .pods
            .get(p.hash.as_str())
            .is_some_and(|created| *created <= retired)
        {
            expire_in(i.ceiling - age);
            BoundHashReason::InUse
        } else {
            continue;
        };
        bound.push(BoundHash {
            hash: p.hash.clone(),
            reason,
            since: retired.to_string(),
        });
    }
    bound.sort_by(|a, b| a.hash.cmp(&b.hash));
    Allowed { bound, next_expiry }
}

/// What the operator remembers of a binding's retirements after a reconcile: the retired hashes
/// (`Grace`, `InUse`) of the status it writes, each with the earliest retirement time seen (never
/// later than `now`). Hashes no longer retired are forgotten.
pub fn remember_retired(
    seen: &BTreeMap<String, Timestamp>,
    bound: &[BoundHash],
    now: Timestamp,
) -> BTreeMap<String, Timestamp> {
    bound
        .iter()
        .filter(|b| matches!(b.reason, BoundHashReason::Grace | BoundHashReason::InUse))
        .filter_map(|b| {
            let t = b.since.parse::<Timestamp>().ok()?.min(now);
            Some((
                b.hash.to_string(),
                seen.get(b.hash.as_str()).map_or(t, |s| t.min(*s)),
            ))
        })
        .collect()
}

/// Hex digits of a hash that name it in the `ckb-retired` tag (64 bits: the hash must also be in
/// the release policy to count, so a prefix is enough to tell the few retired ones apart).
const RECORD_PREFIX: usize = 16;

/// The longest value of a Key Vault tag.
const TAG_VALUE_LIMIT: usize = 256;

fn record_prefix(hash: &str) -> &str {
    hash.get(..RECORD_PREFIX).unwrap_or(hash)
}

/// The `ckb-retired` tag value for these retirements (`None`: no retired hash, no tag): the
/// earliest first, as many as fit a tag value (about nine; a hash left out is still bounded by
/// the status and this process's memory).
pub fn encode_retired(retired: &BTreeMap<String, Timestamp>) -> Option<String> {
    let mut by_time: Vec<_> = retired.iter().collect();
    by_time.sort_by_key(|(h, t)| (**t, (*h).clone()));
    let mut out = String::new();
    for (hash, t) in by_time {
        let entry = format!("{}={}", record_prefix(hash), t.as_second());
        let sep = usize::from(!out.is_empty());
        if out.len() + sep + entry.len() > TAG_VALUE_LIMIT {
            break;
        }
        if sep == 1 {
            out.push(',');
        }
        out.push_str(&entry);
    }
    (!out.is_empty()).then_some(out)
}

/// The retirements a `ckb-retired` tag value records, by hash prefix; malformed entries are
/// ignored (the tag is the operator's; nothing else writes it).
pub fn decode_retired(value: &str) -> BTreeMap<String, Timestamp> {
    value
        .split(',')
        .filter_map(|entry| {
            let (prefix, secs) = entry.trim().split_once('=')?;
            let t = Timestamp::from_second(secs.parse().ok()?).ok()?;
            Some((prefix.to_string(), t))
        })
        .collect()
}

#[cfg(test)]
#[path = "hashes_tests.rs"]
mod tests;
