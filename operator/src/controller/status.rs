//! Conditions: set one keeping its transition time unless its status flips; derive `Ready`.

use ckb_crds::conditions::{reasons, types};
use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

/// One condition as the plan wants it, before transition bookkeeping.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wanted {
    /// Condition type (from [`types`]).
    pub type_: &'static str,
    /// True or False.
    pub ok: bool,
    /// Reason (from [`reasons`]).
    pub reason: &'static str,
    /// Human-readable message.
    pub message: String,
}

impl Wanted {
    /// A true condition.
    pub fn yes(type_: &'static str, reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            type_,
            ok: true,
            reason,
            message: message.into(),
        }
    }

    /// A false condition.
    pub fn no(type_: &'static str, reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            type_,
            ok: false,
            reason,
            message: message.into(),
        }
    }
}

fn status_str(ok: bool) -> &'static str {
    if ok { "True" } else { "False" }
}

/// Builds the condition list from the wanted `KeyReady`, `PolicyResolved` and
/// `ReleasePolicySynced`, adds `Ready` (true only when all three are), and keeps each previous
/// `lastTransitionTime` when the status did not flip, so a status that does not change produces
/// byte-identical conditions (no churn).
pub fn conditions(
    previous: &[Condition],
    wanted: &[Wanted],
    generation: Option<i64>,
    now: Timestamp,
) -> Vec<Condition> {
    let failing: Vec<&Wanted> = wanted.iter().filter(|w| !w.ok).collect();
    let ready = if failing.is_empty() {
        Wanted::yes(
            types::READY,
            reasons::READY,
            "the key exists and its release policy allows exactly the bound hashes",
        )
    } else {
        let why = failing
            .iter()
            .map(|w| format!("{}={} ({})", w.type_, status_str(w.ok), w.reason))
            .collect::<Vec<_>>()
            .join(", ");
        Wanted::no(types::READY, reasons::NOT_READY, why)
    };
    let mut all = vec![ready];
    all.extend(wanted.iter().cloned());
    types::ALL
        .iter()
        .filter_map(|t| all.iter().find(|w| w.type_ == *t))
        .map(|w| {
            let prev = previous.iter().find(|c| c.type_ == w.type_);
            let transition = match prev {
                Some(p) if p.status == status_str(w.ok) => p.last_transition_time.clone(),
                _ => Time(now),
            };
            Condition {
                type_: w.type_.to_string(),
                status: status_str(w.ok).to_string(),
                reason: w.reason.to_string(),
                message: w.message.clone(),
                observed_generation: generation,
                last_transition_time: transition,
            }
        })
        .collect()
}

/// The conditions that newly failed: false now, and either true before or false for another
/// reason. `Ready` and the "waiting for ..." reasons are left out (they only follow from another
/// failure, which is reported itself). One Warning event each, so a failure that persists across
/// loops is reported once.
pub fn new_failures<'a>(previous: &[Condition], current: &'a [Condition]) -> Vec<&'a Condition> {
    current
        .iter()
        .filter(|c| c.type_ != types::READY && c.status == "False")
        .filter(|c| c.reason != reasons::WAITING_FOR_KEY && c.reason != reasons::WAITING_FOR_POLICY)
        .filter(|c| {
            !previous
                .iter()
                .any(|p| p.type_ == c.type_ && p.status == "False" && p.reason == c.reason)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn transition_time_changes_only_when_status_flips() {
        let wanted = vec![
            Wanted::yes(types::KEY_READY, reasons::KEY_AVAILABLE, "ok"),
            Wanted::no(types::POLICY_RESOLVED, reasons::CONFIG_MAP_NOT_FOUND, "x"),
        ];
        let first = conditions(&[], &wanted, Some(1), t("2026-01-01T00:00:00Z"));
        // Same status, other reason and message: time kept.
        let wanted2 = vec![
            Wanted::yes(types::KEY_READY, reasons::KEY_AVAILABLE, "still ok"),
            Wanted::no(types::POLICY_RESOLVED, reasons::POLICY_EMPTY, "y"),
        ];
        let second = conditions(&first, &wanted2, Some(2), t("2026-01-01T01:00:00Z"));
        for c in &second {
            assert_eq!(
                c.last_transition_time.0,
                t("2026-01-01T00:00:00Z"),
                "{}",
                c.type_
            );
        }
        // Flip: PolicyResolved and Ready change time, KeyReady keeps its own.
        let wanted3 = vec![
            Wanted::yes(types::KEY_READY, reasons::KEY_AVAILABLE, "ok"),
            Wanted::yes(types::POLICY_RESOLVED, reasons::POLICY_RESOLVED, "ok"),
        ];
        let third = conditions(&second, &wanted3, Some(2), t("2026-01-01T02:00:00Z"));
        let by = |ty: &str| third.iter().find(|c| c.type_ == ty).unwrap();
        assert_eq!(by(types::READY).status, "True");
        assert_eq!(
            by(types::READY).last_transition_time.0,
            t("2026-01-01T02:00:00Z")
        );
        assert_eq!(
            by(types::POLICY_RESOLVED).last_transition_time.0,
            t("2026-01-01T02:00:00Z")
        );
        assert_eq!(
            by(types::KEY_READY).last_transition_time.0,
            t("2026-01-01T00:00:00Z")
        );
    }

    #[test]
    fn ready_is_false_while_any_condition_is_false_and_names_it() {
        let wanted = vec![
            Wanted::yes(types::KEY_READY, reasons::KEY_AVAILABLE, "ok"),
            Wanted::no(
                types::RELEASE_POLICY_SYNCED,
                reasons::POLICY_IMMUTABLE,
                "immutable",
            ),
        ];
        let c = conditions(&[], &wanted, None, t("2026-01-01T00:00:00Z"));
        assert_eq!(c[0].type_, types::READY);
        assert_eq!(c[0].status, "False");
        assert!(
            c[0].message.contains("ReleasePolicyImmutable"),
            "{}",
            c[0].message
        );
    }

    #[test]
    fn a_failure_is_new_once() {
        let now = t("2026-01-01T00:00:00Z");
        let failing = vec![Wanted::no(
            types::KEY_READY,
            reasons::KEY_NOT_OWNED,
            "foreign",
        )];
        let first = conditions(&[], &failing, None, now);
        let news = new_failures(&[], &first);
        assert_eq!(news.len(), 1);
        assert_eq!(news[0].reason, reasons::KEY_NOT_OWNED);
        let second = conditions(&first, &failing, None, now);
        assert!(new_failures(&first, &second).is_empty());
        let other = vec![Wanted::no(
            types::KEY_READY,
            reasons::KEY_VAULT_THROTTLED,
            "429",
        )];
        let third = conditions(&second, &other, None, now);
        assert_eq!(new_failures(&second, &third).len(), 1);
    }
}
