//! Mapping of Key Vault answers and transport failures to [`KeyVaultError`]: pure functions over the
//! status, headers and body, so every case is tested without a server.

use std::time::{Duration, SystemTime};

use super::KeyVaultError;

/// How long to wait after a 429 that names no delay: one full counting window of the service.
pub const DEFAULT_RETRY_AFTER: Duration = Duration::from_secs(10);

/// A failed HTTP answer, reduced to what the mapping needs.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HttpFailure {
    /// HTTP status.
    pub status: u16,
    /// `error.code` of the body (`KeyNotFound`, `Conflict`, `Forbidden`, `BadParameter`, ...).
    pub code: Option<String>,
    /// Innermost `error.innererror.code` (`ObjectIsDeletedButRecoverable`, `ForbiddenByRbac`, ...).
    pub inner_code: Option<String>,
    /// `error.message`, or the body text when it is not the service's JSON error.
    pub message: String,
    /// Delay asked for by `x-ms-retry-after-ms`, `retry-after-ms` or `Retry-After`.
    pub retry_after: Option<Duration>,
}

impl HttpFailure {
    /// Reads the service's error body (`{"error":{"code","message","innererror":{"code"}}}`).
    pub fn from_parts(status: u16, body: &[u8], retry_after: Option<Duration>) -> Self {
        let mut failure = HttpFailure {
            status,
            retry_after,
            ..Default::default()
        };
        let parsed: Option<serde_json::Value> = serde_json::from_slice(body).ok();
        match parsed.as_ref().and_then(|v| v.get("error")) {
            Some(error) => {
                failure.code = error
                    .get("code")
                    .and_then(|c| c.as_str())
                    .map(str::to_owned);
                failure.message = error
                    .get("message")
                    .and_then(|m| m.as_str())
                    .unwrap_or_default()
                    .to_owned();
                let mut inner = error.get("innererror");
                while let Some(i) = inner {
                    if let Some(code) = i.get("code").and_then(|c| c.as_str()) {
                        failure.inner_code = Some(code.to_owned());
                    }
                    inner = i.get("innererror");
                }
            }
            None => {
                failure.message = String::from_utf8_lossy(body)
                    .trim()
                    .chars()
                    .take(500)
                    .collect();
            }
        }
        if failure.message.is_empty() {
            failure.message = format!("HTTP {status} with no message");
        }
        failure
    }

    fn described(&self) -> String {
        match (&self.code, &self.inner_code) {
            (Some(c), Some(i)) => format!("{} ({c}/{i})", self.message),
            (Some(c), None) => format!("{} ({c})", self.message),
            _ => self.message.clone(),
        }
    }
}

/// What kind of call failed: decides whether a lost answer leaves a write's outcome unknown and
/// whether a refusal can be about an immutable release policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallKind {
    /// GET: never changes anything.
    Read,
    /// POST create, DELETE, recover.
    Write,
    /// PATCH of a key (release policy / tags).
    Update,
}

/// Maps a failed answer of the service.
pub fn classify_http(failure: &HttpFailure, kind: CallKind) -> KeyVaultError {
    let message = failure.described();
    let mentions = |needle: &str| failure.message.to_ascii_lowercase().contains(needle);
    // NB: Key Vault reports a refused change of an immutable policy (a PATCH, or a new version of a
    // key whose policy is immutable) as a 4xx whose message names the immutability; the status
    // differs between vault kinds, so the message decides.
    if kind != CallKind::Read && (400..500).contains(&failure.status) && mentions("immutable") {
        return KeyVaultError::ImmutablePolicy { message };
    }
    match failure.status {
        404 => KeyVaultError::NotFound { message },
        409 if failure.inner_code.as_deref() == Some("ObjectIsDeletedButRecoverable")
            || mentions("deleted but recoverable") =>
        {
            KeyVaultError::DeletedRecoverable { message }
        }
        409 => KeyVaultError::Conflict { message },
        401 | 403 => KeyVaultError::Forbidden {
            status: failure.status,
            message,
        },
        429 => KeyVaultError::Throttled {
            retry_after: failure.retry_after.unwrap_or(DEFAULT_RETRY_AFTER),
            message,
        },
        // 408: the service gave up waiting for our request; nothing was applied.
        408 => KeyVaultError::Transient {
            message,
            outcome_unknown: false,
        },
        // A 5xx on a write may come after the change was applied (gateway timeout, lost backend
        // answer): the caller must read before writing again.
        500..=599 => KeyVaultError::Transient {
            message,
            outcome_unknown: kind != CallKind::Read,
        },
        _ => KeyVaultError::InvalidRequest { message },
    }
}

/// How a request failed without an HTTP answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransportFailure {
    /// The connection could not be made: the request was never sent.
    Connect,
    /// Timeout, reset or broken stream after the request may have been sent.
    AfterSend,
}

/// Maps a failure without an answer.
pub fn classify_transport(
    failure: TransportFailure,
    kind: CallKind,
    message: String,
) -> KeyVaultError {
    KeyVaultError::Transient {
        message,
        outcome_unknown: failure == TransportFailure::AfterSend && kind != CallKind::Read,
    }
}

/// Reads the delay of a throttled answer from its headers, in the order Azure documents them:
/// `x-ms-retry-after-ms` and `retry-after-ms` (milliseconds), then `Retry-After` (seconds or an
/// HTTP date). `header` looks a header up by lowercase name.
pub fn retry_after<'a>(
    header: impl Fn(&str) -> Option<&'a str>,
    now: SystemTime,
) -> Option<Duration> {
    for name in ["x-ms-retry-after-ms", "retry-after-ms"] {
        if let Some(ms) = header(name).and_then(|v| v.trim().parse::<u64>().ok()) {
            return Some(Duration::from_millis(ms));
        }
    }
    let value = header("retry-after")?.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let date = azure_core::time::parse_rfc7231(value).ok()?;
    let at =
        SystemTime::UNIX_EPOCH + Duration::from_secs(u64::try_from(date.unix_timestamp()).ok()?);
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

#[cfg(test)]
#[path = "errors_tests.rs"]
mod errors_tests;
