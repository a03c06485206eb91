//! What the figures are computed from: percentiles of samples, the operator's resident set size
//! from `/proc`, and the JSON size of objects.

use std::time::{Duration, Instant};

use anyhow::Result;

/// The `p`-th percentile (nearest rank) of `sorted`; NaN when there is no sample.
pub fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 * p / 100.0).ceil() as usize).clamp(1, sorted.len());
    sorted[i - 1]
}

/// KiB as MiB.
pub fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// The resident set size of process `pid` and its peak (VmRSS, VmHWM), KiB; 0 for a field
/// `/proc` does not give.
pub fn rss_kib(pid: u32) -> Result<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    Ok((field("VmRSS:"), field("VmHWM:")))
}

/// Waits until the operator's RSS has not moved by more than 1 MiB for 5 s (its caches caught up),
/// at most `max`; returns the RSS in KiB.
pub async fn settled_rss(pid: u32, max: Duration) -> Result<u64> {
    let deadline = Instant::now() + max;
    let mut last = rss_kib(pid)?.0;
    let mut stable_since = Instant::now();
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let now = rss_kib(pid)?.0;
        if now.abs_diff(last) > 1024 {
            stable_since = Instant::now();
            last = now;
        }
        if stable_since.elapsed() >= Duration::from_secs(5) || Instant::now() >= deadline {
            return Ok(now);
        }
    }
}

/// The bytes of `items` serialized as JSON, one by one (an item that does not serialize counts 0).
pub fn json_bytes<T: serde::Serialize>(items: &[T]) -> usize {
    items
        .iter()
        .map(|o| serde_json::to_vec(o).map_or(0, |v| v.len()))
        .sum()
}
