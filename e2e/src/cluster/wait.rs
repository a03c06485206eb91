//! The one poll-until-true wait of the e2e support code.

use std::time::{Duration, Instant};

/// Polls `check` every 250 ms until it returns `Some`, failing after `timeout` with `what` and
/// the last error seen. An error is not final: the check is tried again until the timeout (a
/// condition not met yet may say why as an error, and the last reason is what the failure shows).
pub async fn wait_for<T>(
    timeout: Duration,
    what: &str,
    mut check: impl AsyncFnMut() -> anyhow::Result<Option<T>>,
) -> anyhow::Result<T> {
    let deadline = Instant::now() + timeout;
    let mut last = String::from("condition not met");
    loop {
        match check().await {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => {}
            Err(e) => last = format!("{e:#}"),
        }
        if Instant::now() >= deadline {
            anyhow::bail!("timed out after {timeout:?} waiting for {what} (last: {last})");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
