//! Conditions: set one keeping its transition time unless its status flips; derive `Ready`, and
//! the kstatus pair `Reconciling` / `Stalled` from the failing conditions' reasons (see
//! [`ckb_crds::conditions::severity`]).

use ckb_crds::conditions::{Severity, reasons, severity, types};
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

/// The kstatus pair for these failing conditions: `(reconciling, stalled)`.
///
/// - none failing: both false, reason `Reconciled`;
/// - any failing reason that needs a human: `Stalled=True` with that reason (the first one, in
///   condition order), `Reconciling=False`;
/// - otherwise: `Reconciling=True` with the first transient reason (or the first derived one),
///   `Stalled=False`.
///
/// Never both true: kstatus reads whichever true one comes first.
pub fn kstatus_pair(failing: &[&Wanted]) -> (Wanted, Wanted) {
    if failing.is_empty() {
        return (
            Wanted::no(
                types::RECONCILING,
                reasons::RECONCILED,
                "nothing left to do",
            ),
            Wanted::no(types::STALLED, reasons::RECONCILED, "nothing left to do"),
        );
    }
    if let Some(w) = failing
        .iter()
        .find(|w| severity(w.reason) == Severity::Stalled)
    {
        return (
            Wanted::no(
                types::RECONCILING,
                reasons::STALLED,
                "retrying alone will not help: see Stalled",
            ),
            Wanted::yes(
                types::STALLED,
                w.reason,
                format!("{} needs a human: {}", w.type_, w.message),
            ),
        );
    }
    let cause = failing
        .iter()
        .find(|w| severity(w.reason) == Severity::Transient)
        .unwrap_or(&failing[0]);
    (
        Wanted::yes(
            types::RECONCILING,
            cause.reason,
            format!("{}: {}", cause.type_, cause.message),
        ),
        Wanted::no(
            types::STALLED,
            reasons::PROGRESSING,
            "the operator is retrying or waiting on its own",
        ),
    )
}

/// Builds the condition list from the wanted `KeyReady`, `PolicyResolved` and
/// `ReleasePolicySynced`, adds `Ready` (true only when all three are) and `Reconciling` /
/// `Stalled` ([`kstatus_pair`]), every one with `observedGeneration`, and keeps each previous
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
    let (reconciling, stalled) = kstatus_pair(&failing);
    let mut all = vec![ready, reconciling, stalled];
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
/// reason. Only the parts of `Ready` count (`Ready`, `Reconciling` and `Stalled` summarise
/// them), and the "waiting for ..." reasons are left out (they only follow from another
/// failure, which is reported itself). One Warning event each, so a failure that persists across
/// loops is reported once.
pub fn new_failures<'a>(previous: &[Condition], current: &'a [Condition]) -> Vec<&'a Condition> {
    current
        .iter()
        .filter(|c| types::PARTS.contains(&c.type_.as_str()) && c.status == "False")
        .filter(|c| c.reason != reasons::WAITING_FOR_KEY && c.reason != reasons::WAITING_FOR_POLICY)
        .filter(|c| {
            !previous
                .iter()
                .any(|p| p.type_ == c.type_ && p.status == "False" && p.reason == c.reason)
        })
        .collect()
}

/// The cause a binding's status shows: `Ready` when ready, else the `Stalled` or `Reconciling`
/// reason (whichever is true), else `Ready`'s own reason, else `Unknown` (no status yet). This
/// is the `reason` label of `ckb_binding_ready` and what `doctor` prints first.
pub fn cause(binding: &ckb_crds::ConfidentialKeyBinding) -> (bool, String) {
    let is_true = |t: &str| binding.condition(t).is_some_and(|c| c.status == "True");
    if is_true(types::READY) {
        return (true, reasons::READY.to_string());
    }
    let reason = [types::STALLED, types::RECONCILING]
        .iter()
        .find(|t| is_true(t))
        .or(Some(&types::READY))
        .and_then(|t| binding.condition(t))
        .map_or_else(|| "Unknown".to_string(), |c| c.reason.clone());
    (false, reason)
}

/// The per-binding metric state of a binding.
pub fn metric_state(binding: &ckb_crds::ConfidentialKeyBinding) -> crate::telemetry::BindingState {
    let (ready, reason) = cause(binding);
    crate::telemetry::BindingState {
        labels: crate::telemetry::BindingLabels {
            namespace: binding.metadata.namespace.clone().unwrap_or_default(),
            name: binding.metadata.name.clone().unwrap_or_default(),
            reason,
        },
        ready,
        uninjected_pods: binding
            .status
            .as_ref()
            .and_then(|s| s.uninjected_pods)
            .map_or(0, i64::from),
    }
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
            Wanted::no(
                types::POLICY_RESOLVED,
                reasons::CONFIG_MAP_NOT_LABELLED,
                "x",
            ),
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

    fn by<'a>(c: &'a [Condition], ty: &str) -> &'a Condition {
        c.iter().find(|c| c.type_ == ty).unwrap()
    }

    #[test]
    fn kstatus_pair_follows_the_reasons() {
        let now = t("2026-01-01T00:00:00Z");
        let ok = [
            Wanted::yes(types::KEY_READY, reasons::KEY_AVAILABLE, "ok"),
            Wanted::yes(types::POLICY_RESOLVED, reasons::POLICY_RESOLVED, "ok"),
            Wanted::yes(types::RELEASE_POLICY_SYNCED, reasons::SYNCED, "ok"),
        ];
        let c = conditions(&[], &ok, Some(3), now);
        assert_eq!(c.len(), types::ALL.len());
        assert!(c.iter().all(|c| c.observed_generation == Some(3)));
        assert_eq!(by(&c, types::READY).status, "True");
        assert_eq!(by(&c, types::RECONCILING).status, "False");
        assert_eq!(by(&c, types::STALLED).status, "False");

        // A transient cause behind a derived one: Reconciling with the transient reason.
        let throttled = [
            Wanted::no(types::KEY_READY, reasons::KEY_VAULT_THROTTLED, "429"),
            Wanted::yes(types::POLICY_RESOLVED, reasons::POLICY_RESOLVED, "ok"),
            Wanted::no(
                types::RELEASE_POLICY_SYNCED,
                reasons::WAITING_FOR_KEY,
                "waiting",
            ),
        ];
        let c = conditions(&[], &throttled, Some(3), now);
        assert_eq!(by(&c, types::RECONCILING).status, "True");
        assert_eq!(
            by(&c, types::RECONCILING).reason,
            reasons::KEY_VAULT_THROTTLED
        );
        assert_eq!(by(&c, types::STALLED).status, "False");

        // A stalled cause wins over a transient one, and names itself.
        let stalled = [
            Wanted::no(types::KEY_READY, reasons::WAITING_FOR_POLICY, "waiting"),
            Wanted::no(
                types::POLICY_RESOLVED,
                reasons::CONFIG_MAP_NOT_LABELLED,
                "label it",
            ),
            Wanted::no(types::RELEASE_POLICY_SYNCED, reasons::SYNC_FAILED, "x"),
        ];
        let c = conditions(&[], &stalled, Some(3), now);
        assert_eq!(by(&c, types::RECONCILING).status, "False");
        assert_eq!(by(&c, types::STALLED).status, "True");
        assert_eq!(
            by(&c, types::STALLED).reason,
            reasons::CONFIG_MAP_NOT_LABELLED
        );
        assert!(by(&c, types::STALLED).message.contains("label it"));
        // Only derived reasons: still Reconciling (never Current while Ready is false).
        let derived = [Wanted::no(
            types::RELEASE_POLICY_SYNCED,
            reasons::WAITING_FOR_KEY,
            "waiting",
        )];
        let c = conditions(&[], &derived, Some(3), now);
        assert_eq!(by(&c, types::RECONCILING).status, "True");
        // The pair is not reported as a failure of its own.
        assert!(
            new_failures(&[], &c).is_empty(),
            "{:?}",
            new_failures(&[], &c)
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
