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
//! - within the operator's limits, each namespace (a reconcile runs inside [`with_namespace_share`])
//!   has a share (a percentage, from its ConfidentialKeyGrant or `--kv-namespace-share`, 50 by
//!   default) of each window. A call beyond its namespace's share *yields*: it takes a slot only
//!   when no caller of another namespace still within its own share is waiting for one. So a
//!   namespace with many bindings, or one whose bindings churn, leaves the others their shares
//!   whenever they want them, and a namespace alone on a vault is not held to a part of a budget
//!   nobody else uses (a share that capped it would leave the rest of every window idle: one
//!   namespace creating 1,000 keys would get half the vault's create limit).
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

mod share;
mod window;

use share::{NamespaceShare, current_share};
pub use share::{share_of, with_namespace_share};
use window::{Entry, Slot, Window, Windows};

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

#[derive(Debug, Default)]
struct VaultState {
    windows: Windows,
    /// The calls of each namespace (by [`with_namespace_share`]), for its share of the windows.
    namespaces: HashMap<String, Windows>,
    /// Set from a 429's Retry-After: no call to this vault starts before it.
    backoff_until: Option<Instant>,
    /// Callers waiting for a slot, by class and namespace (`None`: outside any namespace), with
    /// the namespace's share: whom a call beyond its share yields to.
    waiting: HashMap<(CallClass, Option<String>), Waiting>,
    /// Woken when a call to this vault completes or a caller stops waiting.
    changed: Arc<Notify>,
}

#[derive(Debug, Clone, Copy)]
struct Waiting {
    callers: usize,
    percent: u32,
}

impl VaultState {
    fn window(&mut self, class: CallClass) -> &mut Window {
        self.windows.window(class)
    }

    /// Whether a caller of a namespace other than `mine` waits for a `class` slot while within
    /// its share of `limit` (a caller outside any namespace counts as within).
    fn other_within_share_waits(
        &self,
        class: CallClass,
        mine: &str,
        limit: u32,
        span: Duration,
        now: Instant,
    ) -> bool {
        self.waiting.iter().any(|((c, ns), w)| {
            *c == class
                && w.callers > 0
                && match ns {
                    None => true,
                    Some(ns) if ns == mine => false,
                    Some(ns) => self.namespaces.get(ns).is_none_or(|windows| {
                        windows
                            .get(class)
                            .next_slot(now, share_of(limit, w.percent), span)
                            == Slot::Now
                    }),
                }
        })
    }
}

#[derive(Debug, Default)]
struct Shared {
    vaults: Mutex<HashMap<String, VaultState>>,
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
            state.changed.notify_waiters();
        }
    }
}

/// A caller counted in [`VaultState::waiting`] while it waits; dropping it (slot taken, refused,
/// or the call cancelled) counts it out and wakes the vault's other waiters, since one that
/// yielded to it may now take the slot.
struct WaitRegistration<'a> {
    limiter: &'a RateLimiter,
    host: &'a str,
    key: Option<(CallClass, Option<String>)>,
}

impl WaitRegistration<'_> {
    fn register(&mut self, state: &mut VaultState, key: (CallClass, Option<String>), percent: u32) {
        if self.key.is_none() {
            let w = state.waiting.entry(key.clone()).or_insert(Waiting {
                callers: 0,
                percent,
            });
            w.callers += 1;
            w.percent = percent;
            self.key = Some(key);
        }
    }
}

impl Drop for WaitRegistration<'_> {
    fn drop(&mut self) {
        let Some(key) = self.key.take() else { return };
        let mut vaults = self.limiter.lock();
        if let Some(state) = vaults.get_mut(self.host) {
            if let Some(w) = state.waiting.get_mut(&key) {
                w.callers -= 1;
                if w.callers == 0 {
                    state.waiting.remove(&key);
                }
            }
            state.changed.notify_waiters();
        }
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
    /// permit for the duration of the call. Inside [`with_namespace_share`], a call beyond that
    /// namespace's share of the window yields to the waiting callers of namespaces within theirs.
    ///
    /// Refuses with [`KeyVaultError::Throttled`], taking no slot, when the wait would exceed
    /// `max_wait`.
    pub async fn acquire(&self, host: &str, class: CallClass) -> Result<Permit, KeyVaultError> {
        let start = Instant::now();
        let deadline = start + self.limits.max_wait;
        let span = self.limits.window + self.limits.margin;
        let share = current_share();
        let changed = self
            .lock()
            .entry(host.to_owned())
            .or_default()
            .changed
            .clone();
        let mut registration = WaitRegistration {
            limiter: self,
            host,
            key: None,
        };
        loop {
            // Registered before the state is read, so a change in between is not missed.
            let change = changed.notified();
            let now = Instant::now();
            match self.try_take(host, class, share.as_ref(), now, &mut registration) {
                Ok(id) => {
                    return Ok(Permit {
                        limiter: self.clone(),
                        host: host.to_owned(),
                        class,
                        id,
                        namespace: share.as_ref().map(|s| s.namespace.clone()),
                        waited: now - start,
                    });
                }
                Err(Some(at)) => {
                    if at > deadline {
                        return Err(throttled_locally(host, at - now));
                    }
                    tokio::select! {
                        _ = tokio::time::sleep_until(at) => {}
                        _ = change => {}
                    }
                }
                Err(None) => {
                    // Only a change (a completion, a caller taking its slot or giving up) can
                    // open the slot; it must come before the deadline.
                    tokio::select! {
                        _ = tokio::time::sleep_until(deadline) => {
                            return Err(throttled_locally(host, span));
                        }
                        _ = change => {}
                    }
                }
            }
        }
    }

    /// Takes a slot at `now` when no back-off is in force, the vault's window has one, and the
    /// namespace's share has one or no caller it yields to is waiting (the entry's id); otherwise
    /// counts the caller as waiting and says until when to wait (`None`: until the vault's state
    /// changes).
    fn try_take(
        &self,
        host: &str,
        class: CallClass,
        share: Option<&NamespaceShare>,
        now: Instant,
        registration: &mut WaitRegistration<'_>,
    ) -> Result<u64, Option<Instant>> {
        let span = self.limits.window + self.limits.margin;
        let limit = match class {
            CallClass::Create => self.limits.creates,
            CallClass::Other => self.limits.other,
        };
        let mut vaults = self.lock();
        let state = vaults.entry(host.to_owned()).or_default();
        let backoff = state.backoff_until.filter(|&b| b > now);
        state.namespaces.retain(|_, w| {
            w.prune(now, span);
            !w.is_empty()
        });
        let window = state.window(class);
        window.prune(now, span);
        let mut slot = window.next_slot(now, limit, span);
        if let (Some(share), Slot::Now) = (share, slot) {
            let within_share = state.namespaces.get_mut(&share.namespace).is_none_or(|w| {
                w.window(class)
                    .next_slot(now, share_of(limit, share.percent), span)
                    == Slot::Now
            });
            if !within_share
                && state.other_within_share_waits(class, &share.namespace, limit, span, now)
            {
                slot = Slot::AfterChange;
            }
        }
        let wait = match (backoff, slot) {
            (None, Slot::Now) => None,
            (Some(b), Slot::Now) => Some(Some(b)),
            (b, Slot::At(at)) => Some(Some(b.map_or(at, |b| b.max(at)))),
            (b, Slot::AfterChange) => Some(b),
        };
        if let Some(wait) = wait {
            let key = (class, share.map(|s| s.namespace.clone()));
            registration.register(state, key, share.map_or(100, |s| s.percent));
            return Err(wait);
        }
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
        if let Some(share) = share {
            state
                .namespaces
                .entry(share.namespace.clone())
                .or_default()
                .window(class)
                .entries
                .push(entry);
        }
        Ok(id)
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
#[path = "limiter_tests.rs"]
mod limiter_tests;
