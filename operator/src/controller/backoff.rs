//! Per-binding exponential backoff with jitter for failed reconciles.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use ckb_crds::ConfidentialKeyBinding;
use kube::runtime::reflector::ObjectRef;

/// The delay before retry number `failures` (1 = first failure): `base * 2^(failures-1)`, capped,
/// then scaled by `jitter` (a number in `[0, 1)`) into `[delay/2, delay)` so that bindings that
/// failed together do not retry together.
pub fn backoff_delay(failures: u32, base: Duration, cap: Duration, jitter: f64) -> Duration {
    let exp = failures.saturating_sub(1).min(30);
    let raw = base.saturating_mul(1u32 << exp).min(cap);
    let factor = 0.5 + 0.5 * jitter.clamp(0.0, 1.0);
    raw.mul_f64(factor)
}

/// `period` scaled by a factor in `[1 - spread, 1 + spread]` chosen by `jitter` in `[0, 1)`.
pub fn jittered(period: Duration, spread: f64, jitter: f64) -> Duration {
    period.mul_f64(1.0 - spread + 2.0 * spread * jitter.clamp(0.0, 1.0))
}

/// Failure counts by binding, reset on success.
#[derive(Debug)]
pub struct ErrorBackoff {
    base: Duration,
    cap: Duration,
    failures: Mutex<HashMap<ObjectRef<ConfidentialKeyBinding>, u32>>,
}

impl ErrorBackoff {
    /// Backoff starting at `base`, never longer than `cap`.
    pub fn new(base: Duration, cap: Duration) -> Self {
        Self {
            base,
            cap,
            failures: Mutex::default(),
        }
    }

    /// Records a failure and returns how long to wait; at least `floor` (a `Retry-After`).
    pub fn failed(
        &self,
        obj: &ObjectRef<ConfidentialKeyBinding>,
        floor: Option<Duration>,
    ) -> Duration {
        let n = {
            let mut map = self.failures.lock().unwrap_or_else(|e| e.into_inner());
            let n = map.entry(obj.clone()).or_insert(0);
            *n = n.saturating_add(1);
            *n
        };
        let delay = backoff_delay(n, self.base, self.cap, rand::random::<f64>());
        match floor {
            // Retry-After is the service's own answer: wait that long (plus a little jitter so
            // that all bindings throttled together do not come back in the same instant).
            Some(f) => delay.min(f / 4).saturating_add(f),
            None => delay,
        }
    }

    /// Forgets the failures of a binding (after a success, or when it is gone).
    pub fn reset(&self, obj: &ObjectRef<ConfidentialKeyBinding>) {
        self.failures
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(obj);
    }

    /// Current failure count of a binding.
    pub fn failures(&self, obj: &ObjectRef<ConfidentialKeyBinding>) -> u32 {
        self.failures
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(obj)
            .copied()
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: Duration = Duration::from_secs(1);
    const CAP: Duration = Duration::from_secs(300);

    #[test]
    fn delay_doubles_up_to_the_cap_and_jitter_stays_in_half_to_full() {
        assert_eq!(backoff_delay(1, BASE, CAP, 0.999_999).as_millis(), 999);
        assert_eq!(backoff_delay(1, BASE, CAP, 0.0), Duration::from_millis(500));
        assert_eq!(backoff_delay(4, BASE, CAP, 0.0), Duration::from_secs(4));
        assert_eq!(backoff_delay(40, BASE, CAP, 0.0), Duration::from_secs(150));
        for f in 1..50 {
            let d = backoff_delay(f, BASE, CAP, 0.7);
            assert!(d <= CAP && d >= Duration::from_millis(500), "{f}: {d:?}");
        }
    }

    #[test]
    fn failures_grow_per_object_and_reset_on_success() {
        let b = ErrorBackoff::new(BASE, CAP);
        let a = ObjectRef::new("a").within("ns");
        let other = ObjectRef::new("b").within("ns");
        let first = b.failed(&a, None);
        for _ in 0..5 {
            b.failed(&a, None);
        }
        let later = b.failed(&a, None);
        assert!(first < Duration::from_secs(1));
        assert!(later >= Duration::from_secs(32), "{later:?}");
        assert_eq!(b.failures(&other), 0);
        b.reset(&a);
        assert_eq!(b.failures(&a), 0);
    }

    #[test]
    fn retry_after_is_honoured() {
        let b = ErrorBackoff::new(BASE, CAP);
        let a = ObjectRef::new("a").within("ns");
        let d = b.failed(&a, Some(Duration::from_secs(20)));
        assert!(
            d >= Duration::from_secs(20) && d <= Duration::from_secs(25),
            "{d:?}"
        );
    }

    #[test]
    fn resync_jitter_is_within_ten_percent() {
        let p = Duration::from_secs(600);
        assert_eq!(jittered(p, 0.1, 0.0), Duration::from_secs(540));
        assert!(jittered(p, 0.1, 0.999) < Duration::from_secs(661));
        assert_eq!(jittered(p, 0.1, 0.5), p);
    }
}
