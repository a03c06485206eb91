//! The one parser of every duration flag: jiff's friendly format (`500ms`, `90s`, `10m`,
//! `1h30m`, `2 hours`) or ISO 8601 (`PT10M`), and a bare number as seconds.

use std::time::Duration;

/// Parses a non-negative duration (see the module docs for the forms).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if let Ok(seconds) = text.parse::<u64>() {
        return Ok(Duration::from_secs(seconds));
    }
    let d: jiff::SignedDuration = text
        .parse()
        .map_err(|e| format!("{text:?} is not a duration (e.g. 500ms, 90s, 10m, 1h): {e}"))?;
    Duration::try_from(d).map_err(|_| format!("{text:?} must not be negative"))
}

#[cfg(test)]
#[path = "duration_tests.rs"]
mod tests;
