//! The sliding log of calls the limiter counts against (see the parent module for why a log and
//! why a call moves from its start to its completion).

use std::time::Duration;

use tokio::time::Instant;

use super::CallClass;

/// One call in a window's log.
#[derive(Debug, Clone, Copy)]
pub(super) struct Entry {
    pub(super) id: u64,
    /// Start while in flight, completion once done.
    pub(super) at: Instant,
    pub(super) in_flight: bool,
}

/// When the next call may start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Slot {
    Now,
    At(Instant),
    /// The call that decides is still in flight (or, for a call beyond its namespace's share, a
    /// caller it yields to has still to take its slot): wait for the vault's state to change.
    AfterChange,
}

/// The sliding log of one class of calls.
#[derive(Debug, Default)]
pub(super) struct Window {
    pub(super) entries: Vec<Entry>,
}

impl Window {
    /// Drops completed calls that have left `span`.
    pub(super) fn prune(&mut self, now: Instant, span: Duration) {
        self.entries.retain(|e| e.in_flight || e.at + span > now);
    }

    /// When a call may start under `limit` calls per `span`.
    pub(super) fn next_slot(&self, now: Instant, limit: u32, span: Duration) -> Slot {
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
            return Slot::AfterChange;
        }
        done.sort();
        let blocking = done[done.len() - (limit - in_flight)];
        let at = blocking + span;
        if at <= now { Slot::Now } else { Slot::At(at) }
    }
}

/// The two windows (creates, everything else) of a vault, or of one namespace on it.
#[derive(Debug, Default)]
pub(super) struct Windows {
    creates: Window,
    other: Window,
}

impl Windows {
    /// The window of `class`.
    pub(super) fn get(&self, class: CallClass) -> &Window {
        match class {
            CallClass::Create => &self.creates,
            CallClass::Other => &self.other,
        }
    }

    /// The window of `class`, to log a call in.
    pub(super) fn window(&mut self, class: CallClass) -> &mut Window {
        match class {
            CallClass::Create => &mut self.creates,
            CallClass::Other => &mut self.other,
        }
    }

    /// Drops, in both windows, completed calls that have left `span`.
    pub(super) fn prune(&mut self, now: Instant, span: Duration) {
        self.creates.prune(now, span);
        self.other.prune(now, span);
    }

    /// Whether no call is logged in either window.
    pub(super) fn is_empty(&self) -> bool {
        self.creates.entries.is_empty() && self.other.entries.is_empty()
    }
}
