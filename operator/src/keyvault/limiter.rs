//! Per-vault rate limits, shared by every caller in the process.
//!
//! Key Vault counts transactions per vault per 10 seconds (domain.md §4.7: HSM key creates 10, other
//! HSM transactions 500 for RSA-3072) and answers 429 beyond that. Each vault host gets two windows
//! (creates, everything else) and a shared back-off deadline set when the service still says 429.
//!
//! Each window is a sliding log of calls: a call may start only when fewer than `limit` calls are
//! in the log within `window + margin`. A sliding log is stricter than a token bucket (which lets a
//! full bucket plus its refill through in the first window) and matches how the service counts.
//! NB: the service counts a request when it *arrives*, which is somewhere between when we start it
//! and when its answer comes back; so a call is logged at its start while in flight and moved to
//! its completion when it ends ([`Permit`] drop). A later call is spaced from that completion, so it
//! cannot arrive inside the service's window of the earlier one, however the network delays
//! either. A call whose slot depends on one still in flight waits for that one to finish.
//!
//! **Fairness.** Two shares keep one user of a vault from starving the others:
//! - the operator's limits are a *part* of the vault's budget (the default `--kv-other-limit` is
//!   100 of the 500 RSA-3072 HSM transactions per 10 s, domain.md §4.7), because the pods' own
//!   release calls draw on the same per-vault budget and must not be throttled by the operator;
//! - within the operator's limits, the calls made for one namespace (a reconcile runs inside
//!   [`with_namespace_share`]) may use only that namespace's share (a percentage, from its
//!   ConfidentialKeyGrant or `--kv-namespace-share`, 50 by default) of each window, so a namespace
//!   with many bindings, or one whose bindings churn, leaves the rest of the window to the others.
//!
//! Waiting is asynchronous and bounded: a caller sleeps until the instant its slot opens (or an
//! in-flight call completes), never polls, and a wait longer than `max_wait` is not taken: the
//! caller gets [`KeyVaultError::Throttled`] with the delay, so a controller worker requeues instead
//! of blocking.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;
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
    /// Added to the window, for clock and counting differences with the service.
    pub margin: Duration,
    /// The longest a call waits locally for a slot before it is reported as throttled.
    pub max_wait: Duration,
}

impl Default for RateLimits {
    fn default() -> Self {
        Self {
            creates: 10,
            other: 500,
            window: Duration::from_secs(10),
            margin: Duration::from_millis(200),
            max_wait: Duration::from_secs(30),
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    id: u64,
    /// Start while in flight, completion once done.
    at: Instant,
    in_flight: bool,
}

/// When the next call may start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Slot {
    Now,
    At(Instant),
    /// The call that decides is still in flight.
    AfterCompletion,
}

#[derive(Debug, Default)]
struct Window {
    entries: Vec<Entry>,
}

impl Window {
    fn prune(&mut self, now: Instant, span: Duration) {
        self.entries.retain(|e| e.in_flight || e.at + span > now);
    }

    fn next_slot(&self, now: Instant, limit: u32, span: Duration) -> Slot {
        let limit = limit.max(1) as usize;
        if self.entries.len() < limit {
            return Slot::Now;
        }
        // The `limit`-th most recent call (in-flight ones count as the most recent) must have left
        // the window.
        let mut done: Vec<Instant> = self
            .entries
            .iter()
            .filter(|e| !e.in_flight)
            .map(|e| e.at)
            .collect();
        let in_flight = self.entries.len() - done.len();
        if in_flight >= limit {
            return Slot::AfterCompletion;
        }
        done.sort();
        let blocking = done[done.len() - (limit - in_flight)];
        let at = blocking + span;
        if at <= now { Slot::Now } else { Slot::At(at) }
    }
}

#[derive(Debug, Default)]
struct Windows {
    creates: Window,
    other: Window,
}

impl Windows {
    fn window(&mut self, class: CallClass) -> &mut Window {
        match class {
            CallClass::Create => &mut self.creates,
            CallClass::Other => &mut self.other,
        }
    }

    fn is_empty(&self) -> bool {
        self.creates.entries.is_empty() && self.other.entries.is_empty()
    }
}

#[derive(Debug, Default)]
struct VaultState {
    windows: Windows,
    /// The calls of each namespace (by [`with_namespace_share`]), for its share of the windows.
    namespaces: HashMap<String, Windows>,
    /// Set from a 429's Retry-After: no call to this vault starts before it.
    backoff_until: Option<Instant>,
}

impl VaultState {
    fn window(&mut self, class: CallClass) -> &mut Window {
        self.windows.window(class)
    }
}

/// The namespace a call is made for, and its share (percent) of the operator's limits.
#[derive(Debug, Clone, PartialEq, Eq)]
struct NamespaceShare {
    namespace: String,
    percent: u32,
}

tokio::task_local! {
    static NAMESPACE_SHARE: NamespaceShare;
}

/// Runs `fut` with its Key Vault calls counted against `namespace`'s share (`percent` of the
/// operator's per-vault limits, at least one call per window).
///
/// NB: a task-local rather than a parameter of every [`super::KeyVault`] method: the share is a
/// property of who the reconcile works for, not of the call, and the client stays unaware of it.
pub async fn with_namespace_share<F: std::future::Future>(
    namespace: &str,
    percent: u32,
    fut: F,
) -> F::Output {
    NAMESPACE_SHARE
        .scope(
            NamespaceShare {
                namespace: namespace.to_owned(),
                percent: percent.clamp(1, 100),
            },
            fut,
        )
        .await
}

fn current_share() -> Option<NamespaceShare> {
    NAMESPACE_SHARE.try_with(Clone::clone).ok()
}

/// A namespace's part of `limit`: `percent` of it, at least 1.
pub fn share_of(limit: u32, percent: u32) -> u32 {
    ((u64::from(limit) * u64::from(percent.min(100))) / 100).max(1) as u32
}

/// The later of two slots (a call must wait for both).
fn later(a: Slot, b: Slot) -> Slot {
    match (a, b) {
        (Slot::AfterCompletion, _) | (_, Slot::AfterCompletion) => Slot::AfterCompletion,
        (Slot::Now, s) | (s, Slot::Now) => s,
        (Slot::At(x), Slot::At(y)) => Slot::At(x.max(y)),
    }
}

#[derive(Debug, Default)]
struct Shared {
    vaults: Mutex<HashMap<String, VaultState>>,
    /// Woken when an in-flight call completes.
    completed: Notify,
    next_id: std::sync::atomic::AtomicU64,
}

/// Rate limiter keyed by vault host. Cheap to clone; clones share state.
#[derive(Debug, Clone)]
pub struct RateLimiter {
    limits: RateLimits,
    shared: Arc<Shared>,
}

/// A started call. Dropping it records the call's completion (also when the call is cancelled).
#[derive(Debug)]
pub struct Permit {
    limiter: RateLimiter,
    host: String,
    class: CallClass,
    id: u64,
    namespace: Option<String>,
    waited: Duration,
}

impl Permit {
    /// How long the caller waited for its slot.
    pub fn waited(&self) -> Duration {
        self.waited
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        let now = Instant::now();
        {
            let mut vaults = self.limiter.lock();
            if let Some(state) = vaults.get_mut(&self.host) {
                let mut windows = vec![state.windows.window(self.class)];
                if let Some(ns) = self
                    .namespace
                    .as_ref()
                    .and_then(|n| state.namespaces.get_mut(n))
                {
                    windows.push(ns.window(self.class));
                }
                for window in windows {
                    if let Some(e) = window.entries.iter_mut().find(|e| e.id == self.id) {
                        e.at = now;
                        e.in_flight = false;
                    }
                }
            }
        }
        self.limiter.shared.completed.notify_waiters();
    }
}

impl RateLimiter {
    /// A limiter with these limits for every vault.
    pub fn new(limits: RateLimits) -> Self {
        Self {
            limits,
            shared: Arc::default(),
        }
    }

    /// The limits in force.
    pub fn limits(&self) -> RateLimits {
        self.limits
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, VaultState>> {
        self.shared.vaults.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits (asynchronously) for a slot on `host` for a call of `class`, and takes it. Keep the
    /// permit for the duration of the call. Inside [`with_namespace_share`], the call also needs
    /// a slot in that namespace's share of the window.
    ///
    /// Refuses with [`KeyVaultError::Throttled`], taking no slot, when the wait would exceed
    /// `max_wait`.
    pub async fn acquire(&self, host: &str, class: CallClass) -> Result<Permit, KeyVaultError> {
        let start = Instant::now();
        let deadline = start + self.limits.max_wait;
        let span = self.limits.window + self.limits.margin;
        let limit = match class {
            CallClass::Create => self.limits.creates,
            CallClass::Other => self.limits.other,
        };
        let share = current_share();
        loop {
            // Registered before the state is read, so a completion in between is not missed.
            let completed = self.shared.completed.notified();
            let now = Instant::now();
            let wait_until = {
                let mut vaults = self.lock();
                let state = vaults.entry(host.to_owned()).or_default();
                let backoff = state.backoff_until.filter(|&b| b > now);
                state.namespaces.retain(|_, w| {
                    w.creates.prune(now, span);
                    w.other.prune(now, span);
                    !w.is_empty()
                });
                let window = state.window(class);
                window.prune(now, span);
                let mut slot = window.next_slot(now, limit, span);
                if let Some(share) = &share {
                    let ns_limit = share_of(limit, share.percent);
                    let ns_slot = state
                        .namespaces
                        .get_mut(&share.namespace)
                        .map_or(Slot::Now, |w| {
                            w.window(class).next_slot(now, ns_limit, span)
                        });
                    slot = later(slot, ns_slot);
                }
                match (backoff, slot) {
                    (None, Slot::Now) => {
                        let id = self
                            .shared
                            .next_id
                            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let entry = Entry {
                            id,
                            at: now,
                            in_flight: true,
                        };
                        state.window(class).entries.push(entry);
                        if let Some(share) = &share {
                            state
                                .namespaces
                                .entry(share.namespace.clone())
                                .or_default()
                                .window(class)
                                .entries
                                .push(entry);
                        }
                        return Ok(Permit {
                            limiter: self.clone(),
                            host: host.to_owned(),
                            class,
                            id,
                            namespace: share.as_ref().map(|s| s.namespace.clone()),
                            waited: now - start,
                        });
                    }
                    (Some(b), Slot::Now) => Some(b),
                    (b, Slot::At(at)) => Some(b.map_or(at, |b| b.max(at))),
                    (b, Slot::AfterCompletion) => b,
                }
            };
            match wait_until {
                Some(at) => {
                    if at > deadline {
                        return Err(throttled_locally(host, at - now));
                    }
                    tokio::select! {
                        _ = tokio::time::sleep_until(at) => {}
                        _ = completed => {}
                    }
                }
                None => {
                    // Only a completion can open the slot; it must come before the deadline.
                    tokio::select! {
                        _ = tokio::time::sleep_until(deadline) => {
                            return Err(throttled_locally(host, span));
                        }
                        _ = completed => {}
                    }
                }
            }
        }
    }

    /// Records that `host` answered 429: no call to it starts for `retry_after`.
    pub fn back_off(&self, host: &str, retry_after: Duration) {
        let until = Instant::now() + retry_after;
        let mut vaults = self.lock();
        let state = vaults.entry(host.to_owned()).or_default();
        state.backoff_until = Some(state.backoff_until.map_or(until, |u| u.max(until)));
    }

    /// The back-off deadline of `host`, if one is set.
    pub fn backoff_deadline(&self, host: &str) -> Option<Instant> {
        self.lock().get(host).and_then(|s| s.backoff_until)
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
            margin: Duration::ZERO,
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
    async fn the_margin_widens_the_window() {
        let limiter = RateLimiter::new(RateLimits {
            creates: 1,
            margin: Duration::from_millis(500),
            ..RateLimits::default()
        });
        limiter.acquire("a", CallClass::Create).await.expect("slot");
        let waited = limiter
            .acquire("a", CallClass::Create)
            .await
            .expect("slot")
            .waited();
        assert_eq!(waited, Duration::from_millis(10_500));
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
        let waited = limiter
            .acquire("a", CallClass::Create)
            .await
            .expect("slot")
            .waited();
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
        let waited = limiter
            .acquire("a", CallClass::Create)
            .await
            .expect("slot")
            .waited();
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
        assert_eq!(a.expect("slot").waited(), Duration::from_secs(7));
        assert_eq!(b.expect("slot").waited(), Duration::ZERO);
        assert_eq!(Instant::now() - t0, Duration::from_secs(7));
        // A shorter Retry-After never shortens a longer back-off.
        limiter.back_off("a", Duration::from_secs(20));
        limiter.back_off("a", Duration::from_secs(1));
        let waited = limiter
            .acquire("a", CallClass::Other)
            .await
            .expect("slot")
            .waited();
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
        let waited = waiter.await.expect("task").expect("slot").waited();
        assert_eq!(waited, Duration::from_secs(31));
    }

    #[tokio::test(start_paused = true)]
    async fn the_window_runs_from_completion_and_waits_for_calls_in_flight() {
        let limiter = limiter(1, 1, 60);
        let first = limiter.acquire("a", CallClass::Create).await.expect("slot");
        let second = {
            let limiter = limiter.clone();
            tokio::spawn(async move { limiter.acquire("a", CallClass::Create).await })
        };
        // The first call takes 4 s (a slow answer): the service may have counted it as late as
        // its completion, so the next one starts a window after that, not after its start.
        tokio::time::sleep(Duration::from_secs(4)).await;
        assert!(!second.is_finished());
        drop(first);
        let waited = second.await.expect("task").expect("slot").waited();
        assert_eq!(waited, Duration::from_secs(14));
    }

    #[tokio::test(start_paused = true)]
    async fn a_call_in_flight_past_max_wait_refuses_the_next() {
        let limiter = limiter(1, 1, 5);
        let _stuck = limiter.acquire("a", CallClass::Create).await.expect("slot");
        let err = limiter
            .acquire("a", CallClass::Create)
            .await
            .expect_err("refused");
        assert!(matches!(err, KeyVaultError::Throttled { .. }), "{err:?}");
    }

    /// Starts of `n` calls made at once for `namespace` (share `percent`), each taking `hold`.
    fn flood(
        limiter: &RateLimiter,
        namespace: &'static str,
        percent: u32,
        n: usize,
    ) -> Vec<tokio::task::JoinHandle<Instant>> {
        (0..n)
            .map(|_| {
                let limiter = limiter.clone();
                tokio::spawn(with_namespace_share(namespace, percent, async move {
                    limiter.acquire("a", CallClass::Other).await.expect("slot");
                    Instant::now()
                }))
            })
            .collect()
    }

    async fn starts(tasks: Vec<tokio::task::JoinHandle<Instant>>) -> Vec<Instant> {
        let mut out = Vec::new();
        for t in tasks {
            out.push(t.await.expect("task"));
        }
        out
    }

    #[tokio::test(start_paused = true)]
    async fn one_namespace_cannot_starve_another_on_a_shared_vault() {
        let limiter = limiter(10, 10, 600);
        let t0 = Instant::now();
        // A namespace with many bindings asks for 60 calls at once, then another asks for 5.
        let noisy = flood(&limiter, "noisy", 50, 60);
        tokio::task::yield_now().await;
        let quiet = flood(&limiter, "quiet", 50, 5);
        let noisy = starts(noisy).await;
        let quiet = starts(quiet).await;
        let window = Duration::from_secs(10);
        // The quiet namespace is served in the first window, not after the noisy one's 60 calls.
        assert!(
            quiet.iter().all(|&t| t - t0 < window),
            "{:?}",
            quiet.iter().map(|t| *t - t0).collect::<Vec<_>>()
        );
        // Neither namespace exceeds its half of any window, and the vault its limit.
        assert_eq!(max_in_any_window(&noisy, window), 5);
        assert!(max_in_any_window(&quiet, window) <= 5);
        let all: Vec<Instant> = noisy.iter().chain(&quiet).copied().collect();
        assert_eq!(max_in_any_window(&all, window), 10);
    }

    #[tokio::test(start_paused = true)]
    async fn without_shares_the_first_namespace_takes_every_slot() {
        // The same load with every namespace allowed the whole budget (share 100): the quiet
        // namespace waits behind the noisy one; the test above would fail like this.
        let limiter = limiter(10, 10, 600);
        let t0 = Instant::now();
        let noisy = flood(&limiter, "noisy", 100, 60);
        tokio::task::yield_now().await;
        let quiet = flood(&limiter, "quiet", 100, 5);
        let _ = starts(noisy).await;
        let quiet = starts(quiet).await;
        assert!(quiet.iter().all(|&t| t - t0 >= Duration::from_secs(10)));
    }

    #[test]
    fn a_share_is_a_percentage_of_the_limit_and_at_least_one() {
        assert_eq!(share_of(500, 50), 250);
        assert_eq!(share_of(10, 50), 5);
        assert_eq!(share_of(10, 1), 1);
        assert_eq!(share_of(10, 100), 10);
        assert_eq!(share_of(10, 250), 10);
    }

    #[tokio::test(start_paused = true)]
    async fn calls_outside_a_namespace_use_the_vault_budget_only() {
        let limiter = limiter(10, 4, 600);
        let t0 = Instant::now();
        for _ in 0..4 {
            limiter.acquire("a", CallClass::Other).await.expect("slot");
        }
        assert_eq!(Instant::now(), t0);
        // And the namespace windows are forgotten once empty.
        with_namespace_share("x", 50, async {
            let _p = limiter.acquire("b", CallClass::Other).await.expect("slot");
        })
        .await;
        tokio::time::advance(Duration::from_secs(11)).await;
        limiter.acquire("b", CallClass::Other).await.expect("slot");
        let vaults = limiter.lock();
        assert!(vaults["b"].namespaces.is_empty());
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
