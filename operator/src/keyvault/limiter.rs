//! Per-vault rate limits, shared by every caller in the process.
//!
//! Key Vault counts transactions per vault per 10 seconds (domain.md §4.7: HSM key creates 10, other
//! HSM transactions 500 for RSA-3072) and answers 429 beyond that. Each vault host gets two windows
//! (creates, everything else) and a shared back-off deadline set when the service still says 429.
//!
//! The window is a sliding log of reserved start instants: a call may start only when fewer than
//! `limit` calls started in the `window` before it. This is stricter than a token bucket (which lets a
//! full bucket plus its refill through in the first window) and matches how the service counts.
//! A caller reserves its slot under the lock and then sleeps until that instant: no polling, no hot
//! loop, and waiters are served in order. A wait longer than `max_wait` is not taken: the caller gets
//! [`KeyVaultError::Throttled`] with the delay, so a controller worker requeues instead of blocking.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use super::KeyVaultError;

/// Which limit a call counts against.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CallClass {
    /// `POST /keys/{name}/create`.
    Create,
    /// Every other transaction (get, update, delete, recover, ...).
    Other,
}

/// Limits applied to every vault.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimits {
    /// Creates allowed per window and vault (Key Vault: 10 HSM key creates per 10 s).
    pub creates: u32,
    /// Other transactions allowed per window and vault (Key Vault: 500 per 10 s for RSA-3072 HSM keys).
    pub other: u32,
    /// The window Key Vault counts over (10 s).
    pub window: Duration,
    /// The longest a call waits locally for a slot before it is reported as throttled.
    pub max_wait: Duration,
}

impl Default for RateLimits {
    fn default() -> Self {
        Self {
            creates: 10,
            other: 500,
            window: Duration::from_secs(10),
            max_wait: Duration::from_secs(30),
        }
    }
}

/// A sliding window of reserved start instants (sorted, oldest first).
#[derive(Debug, Default)]
struct Window {
    starts: VecDeque<Instant>,
}

impl Window {
    /// The earliest instant at or after `not_before` at which one more start keeps at most `limit`
    /// starts in any `window`.
    fn next_slot(
        &mut self,
        now: Instant,
        not_before: Instant,
        limit: u32,
        window: Duration,
    ) -> Instant {
        while self.starts.front().is_some_and(|&t| t + window <= now) {
            self.starts.pop_front();
        }
        let limit = limit.max(1) as usize;
        let mut slot = not_before.max(now);
        if self.starts.len() >= limit {
            // The start `limit` places back must have left the window before this one begins.
            let blocking = self.starts[self.starts.len() - limit];
            slot = slot.max(blocking + window);
        }
        slot
    }

    fn reserve(&mut self, slot: Instant) {
        // Slots are handed out in non-decreasing order (each is at least the latest window edge), but
        // a back-off can move `not_before` for a later caller only forward, so insertion stays sorted;
        // keep the log sorted even if that ever changed.
        let at = self.starts.partition_point(|&t| t <= slot);
        self.starts.insert(at, slot);
    }
}

#[derive(Debug, Default)]
struct VaultState {
    creates: Window,
    other: Window,
    /// Set from a 429's Retry-After: no call to this vault starts before it.
    backoff_until: Option<Instant>,
}

/// Rate limiter keyed by vault host. Cheap to clone; clones share state.
#[derive(Debug, Clone)]
pub struct RateLimiter {
    limits: RateLimits,
    vaults: Arc<Mutex<HashMap<String, VaultState>>>,
}

impl RateLimiter {
    /// A limiter with these limits for every vault.
    pub fn new(limits: RateLimits) -> Self {
        Self {
            limits,
            vaults: Arc::default(),
        }
    }

    /// The limits in force.
    pub fn limits(&self) -> RateLimits {
        self.limits
    }

    /// Waits (asynchronously) for a slot on `host` for a call of `class`, and takes it.
    ///
    /// Returns the time waited, or [`KeyVaultError::Throttled`] without taking a slot when the wait
    /// would exceed `max_wait`.
    pub async fn acquire(&self, host: &str, class: CallClass) -> Result<Duration, KeyVaultError> {
        let start = Instant::now();
        loop {
            let slot = self.reserve(host, class)?;
            tokio::time::sleep_until(slot).await;
            // A 429 seen by another caller while this one slept moves the vault's deadline: honour it
            // (the slot taken stays counted, which only makes the limiter more conservative).
            match self.backoff_deadline(host) {
                Some(until) if until > Instant::now() => {
                    if until - Instant::now() > self.limits.max_wait {
                        return Err(throttled_locally(host, until - Instant::now()));
                    }
                    tokio::time::sleep_until(until).await;
                    // Take a fresh slot after the back-off: the old one was before the deadline.
                    continue;
                }
                _ => return Ok(start.elapsed()),
            }
        }
    }

    /// Reserves the next slot or refuses when it is too far away.
    fn reserve(&self, host: &str, class: CallClass) -> Result<Instant, KeyVaultError> {
        let now = Instant::now();
        let mut vaults = self.vaults.lock().unwrap_or_else(|e| e.into_inner());
        let state = vaults.entry(host.to_owned()).or_default();
        let not_before = state.backoff_until.unwrap_or(now);
        let (window, limit) = match class {
            CallClass::Create => (&mut state.creates, self.limits.creates),
            CallClass::Other => (&mut state.other, self.limits.other),
        };
        let slot = window.next_slot(now, not_before, limit, self.limits.window);
        let wait = slot.saturating_duration_since(now);
        if wait > self.limits.max_wait {
            return Err(throttled_locally(host, wait));
        }
        window.reserve(slot);
        Ok(slot)
    }

    /// Records that `host` answered 429: no call to it starts for `retry_after`.
    pub fn back_off(&self, host: &str, retry_after: Duration) {
        let until = Instant::now() + retry_after;
        let mut vaults = self.vaults.lock().unwrap_or_else(|e| e.into_inner());
        let state = vaults.entry(host.to_owned()).or_default();
        state.backoff_until = Some(state.backoff_until.map_or(until, |u| u.max(until)));
    }

    /// The back-off deadline of `host`, if one is set.
    pub fn backoff_deadline(&self, host: &str) -> Option<Instant> {
        let vaults = self.vaults.lock().unwrap_or_else(|e| e.into_inner());
        vaults.get(host).and_then(|s| s.backoff_until)
    }
}

fn throttled_locally(host: &str, wait: Duration) -> KeyVaultError {
    KeyVaultError::Throttled {
        retry_after: wait,
        message: format!(
            "client-side rate limit for {host}: next slot in {:.1}s (longer than the configured wait)",
            wait.as_secs_f64()
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter(creates: u32, other: u32, max_wait_s: u64) -> RateLimiter {
        RateLimiter::new(RateLimits {
            creates,
            other,
            window: Duration::from_secs(10),
            max_wait: Duration::from_secs(max_wait_s),
        })
    }

    /// At most `limit` of `starts` fall in any half-open window of length `window`.
    fn max_in_any_window(starts: &[Instant], window: Duration) -> usize {
        starts
            .iter()
            .map(|&s| starts.iter().filter(|&&t| t >= s && t < s + window).count())
            .max()
            .unwrap_or(0)
    }

    #[tokio::test(start_paused = true)]
    async fn creates_never_exceed_ten_per_ten_seconds_per_vault() {
        let limiter = limiter(10, 500, 600);
        let mut tasks = Vec::new();
        for _ in 0..35 {
            let limiter = limiter.clone();
            tasks.push(tokio::spawn(async move {
                limiter
                    .acquire("a.vault.azure.net", CallClass::Create)
                    .await
                    .expect("slot");
                Instant::now()
            }));
        }
        let mut starts = Vec::new();
        for t in tasks {
            starts.push(t.await.expect("task"));
        }
        assert_eq!(max_in_any_window(&starts, Duration::from_secs(10)), 10);
        // 35 creates need 4 windows: the last starts 30 s after the first.
        let first = *starts.iter().min().expect("some");
        let last = *starts.iter().max().expect("some");
        assert_eq!(last - first, Duration::from_secs(30));
    }

    #[tokio::test(start_paused = true)]
    async fn vaults_and_classes_have_separate_windows() {
        let limiter = limiter(2, 3, 600);
        let t0 = Instant::now();
        for _ in 0..2 {
            limiter.acquire("a", CallClass::Create).await.expect("slot");
            limiter.acquire("b", CallClass::Create).await.expect("slot");
        }
        for _ in 0..3 {
            limiter.acquire("a", CallClass::Other).await.expect("slot");
        }
        // Nothing above had to wait.
        assert_eq!(Instant::now(), t0);
        // The third create on "a" waits for the window.
        let waited = limiter.acquire("a", CallClass::Create).await.expect("slot");
        assert_eq!(waited, Duration::from_secs(10));
    }

    #[tokio::test(start_paused = true)]
    async fn a_wait_beyond_max_wait_is_refused_as_throttled_without_taking_a_slot() {
        let limiter = limiter(1, 1, 5);
        limiter.acquire("a", CallClass::Create).await.expect("slot");
        let err = limiter
            .acquire("a", CallClass::Create)
            .await
            .expect_err("too long");
        match err {
            KeyVaultError::Throttled { retry_after, .. } => {
                assert_eq!(retry_after, Duration::from_secs(10))
            }
            other => panic!("expected Throttled, got {other:?}"),
        }
        // The refused call took no slot: after the window the next call starts at once.
        tokio::time::advance(Duration::from_secs(10)).await;
        let waited = limiter.acquire("a", CallClass::Create).await.expect("slot");
        assert_eq!(waited, Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn a_429_backs_off_every_caller_of_that_vault_only() {
        let limiter = limiter(10, 500, 60);
        limiter.back_off("a", Duration::from_secs(7));
        let t0 = Instant::now();
        let (a, b) = tokio::join!(
            limiter.acquire("a", CallClass::Other),
            limiter.acquire("b", CallClass::Other)
        );
        assert_eq!(a.expect("slot"), Duration::from_secs(7));
        assert_eq!(b.expect("slot"), Duration::ZERO);
        assert_eq!(Instant::now() - t0, Duration::from_secs(7));
        // A shorter Retry-After never shortens a longer back-off.
        limiter.back_off("a", Duration::from_secs(20));
        limiter.back_off("a", Duration::from_secs(1));
        let waited = limiter.acquire("a", CallClass::Other).await.expect("slot");
        assert_eq!(waited, Duration::from_secs(20));
    }

    #[tokio::test(start_paused = true)]
    async fn a_back_off_set_while_waiting_is_honoured() {
        let limiter = limiter(1, 1, 60);
        limiter.acquire("a", CallClass::Other).await.expect("slot");
        let waiter = {
            let limiter = limiter.clone();
            tokio::spawn(async move { limiter.acquire("a", CallClass::Other).await })
        };
        // The waiter has a slot at t=10; a 429 at t=1 says "retry after 30 s".
        tokio::time::sleep(Duration::from_secs(1)).await;
        limiter.back_off("a", Duration::from_secs(30));
        let waited = waiter.await.expect("task").expect("slot");
        assert_eq!(waited, Duration::from_secs(31));
    }

    #[tokio::test(start_paused = true)]
    async fn a_back_off_longer_than_max_wait_is_refused() {
        let limiter = limiter(10, 10, 5);
        limiter.back_off("a", Duration::from_secs(8));
        let err = limiter
            .acquire("a", CallClass::Other)
            .await
            .expect_err("too long");
        assert!(
            matches!(err, KeyVaultError::Throttled { retry_after, .. } if retry_after == Duration::from_secs(8)),
            "{err:?}"
        );
    }
}
