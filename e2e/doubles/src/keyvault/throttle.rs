//! Per-vault throttling at Key Vault's published limits ("Azure Key Vault service limits"):
//! per vault and per 10 seconds, HSM key creates 10, software key creates 20, and "all other
//! transactions" on HSM keys 500 for RSA-3072 (2000 for RSA-2048, 250 for RSA-4096). Requests
//! over the limit get 429 with `Retry-After`, and a 429 does not count toward the limit.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// The limits of one vault.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct ThrottleLimits {
    /// Window length, milliseconds (10 000 in Azure).
    pub window_ms: u64,
    /// HSM key creates per window.
    pub hsm_creates: u32,
    /// Software key creates per window.
    pub software_creates: u32,
    /// Every other key transaction per window.
    pub other: u32,
}

impl Default for ThrottleLimits {
    fn default() -> Self {
        Self {
            window_ms: 10_000,
            hsm_creates: 10,
            software_creates: 20,
            other: 500,
        }
    }
}

/// Which budget a request draws from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// Create of an `*-HSM` key.
    HsmCreate,
    /// Create of a software key.
    SoftwareCreate,
    /// Anything else.
    Other,
}

/// Sliding-window counters of one vault.
#[derive(Debug, Default)]
pub struct Throttle {
    hsm_creates: VecDeque<Instant>,
    software_creates: VecDeque<Instant>,
    other: VecDeque<Instant>,
}

impl Throttle {
    /// Admits a request at `now`, or says how long to wait (the time until the oldest counted
    /// request leaves the window). A refused request is not counted.
    pub fn admit(
        &mut self,
        class: Class,
        limits: &ThrottleLimits,
        now: Instant,
    ) -> Result<(), Duration> {
        let window = Duration::from_millis(limits.window_ms);
        let (queue, limit) = match class {
            Class::HsmCreate => (&mut self.hsm_creates, limits.hsm_creates),
            Class::SoftwareCreate => (&mut self.software_creates, limits.software_creates),
            Class::Other => (&mut self.other, limits.other),
        };
        while queue
            .front()
            .is_some_and(|t| now.saturating_duration_since(*t) >= window)
        {
            queue.pop_front();
        }
        if queue.len() >= limit as usize {
            let oldest = queue.front().copied().unwrap_or(now);
            return Err(window.saturating_sub(now.saturating_duration_since(oldest)));
        }
        queue.push_back(now);
        Ok(())
    }
}

/// The `Retry-After` value (whole seconds, at least 1) for a wait.
pub fn retry_after_secs(wait: Duration) -> u64 {
    wait.as_millis().div_ceil(1000).max(1) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ten_hsm_creates_per_ten_seconds_then_429_until_the_oldest_expires() {
        let limits = ThrottleLimits::default();
        let mut t = Throttle::default();
        let t0 = Instant::now();
        for i in 0..10 {
            assert!(
                t.admit(
                    Class::HsmCreate,
                    &limits,
                    t0 + Duration::from_millis(i * 100)
                )
                .is_ok()
            );
        }
        let wait = t
            .admit(Class::HsmCreate, &limits, t0 + Duration::from_millis(1000))
            .unwrap_err();
        assert_eq!(wait, Duration::from_millis(9000));
        assert_eq!(retry_after_secs(wait), 9);
        // Refusals did not count: once the first create leaves the window, one more fits.
        for _ in 0..5 {
            assert!(
                t.admit(Class::HsmCreate, &limits, t0 + Duration::from_millis(2000))
                    .is_err()
            );
        }
        assert!(
            t.admit(
                Class::HsmCreate,
                &limits,
                t0 + Duration::from_millis(10_000)
            )
            .is_ok()
        );
        assert!(
            t.admit(
                Class::HsmCreate,
                &limits,
                t0 + Duration::from_millis(10_050)
            )
            .is_err()
        );
        // Other budgets are separate.
        assert!(t.admit(Class::Other, &limits, t0).is_ok());
        assert!(t.admit(Class::SoftwareCreate, &limits, t0).is_ok());
    }

    #[test]
    fn retry_after_rounds_up_to_whole_seconds() {
        assert_eq!(retry_after_secs(Duration::from_millis(1)), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(1001)), 2);
        assert_eq!(retry_after_secs(Duration::ZERO), 1);
    }
}
