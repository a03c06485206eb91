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
mod tests {
    use super::*;

    fn failure(status: u16, body: &str) -> HttpFailure {
        HttpFailure::from_parts(status, body.as_bytes(), None)
    }

    #[test]
    fn reads_the_service_error_body() {
        let f = failure(
            409,
            r#"{"error":{"code":"Conflict","message":"Key k1 is currently in a deleted but recoverable state, and its name cannot be reused; in this state, the key can be recovered or purged.","innererror":{"code":"ObjectIsDeletedButRecoverable"}}}"#,
        );
        assert_eq!(f.code.as_deref(), Some("Conflict"));
        assert_eq!(
            f.inner_code.as_deref(),
            Some("ObjectIsDeletedButRecoverable")
        );
        assert!(f.message.starts_with("Key k1 is currently"));
    }

    #[test]
    fn not_found_deleted_conflict_forbidden_invalid() {
        let nf = classify_http(
            &failure(
                404,
                r#"{"error":{"code":"KeyNotFound","message":"A key with (name/id) k1 was not found in this key vault."}}"#,
            ),
            CallKind::Read,
        );
        assert_eq!(
            nf,
            KeyVaultError::NotFound {
                message: "A key with (name/id) k1 was not found in this key vault. (KeyNotFound)"
                    .into()
            }
        );
        let deleted = classify_http(
            &failure(
                409,
                r#"{"error":{"code":"Conflict","message":"x","innererror":{"code":"ObjectIsDeletedButRecoverable"}}}"#,
            ),
            CallKind::Write,
        );
        assert!(
            matches!(deleted, KeyVaultError::DeletedRecoverable { .. }),
            "{deleted:?}"
        );
        let conflict = classify_http(
            &failure(
                409,
                r#"{"error":{"code":"Conflict","message":"There was a conflict."}}"#,
            ),
            CallKind::Write,
        );
        assert!(
            matches!(conflict, KeyVaultError::Conflict { .. }),
            "{conflict:?}"
        );
        for status in [401, 403] {
            let f = classify_http(
                &failure(
                    status,
                    r#"{"error":{"code":"Forbidden","message":"Caller is not authorized.","innererror":{"code":"ForbiddenByRbac"}}}"#,
                ),
                CallKind::Read,
            );
            assert_eq!(
                f,
                KeyVaultError::Forbidden {
                    status,
                    message: "Caller is not authorized. (Forbidden/ForbiddenByRbac)".into()
                }
            );
        }
        let bad = classify_http(
            &failure(
                400,
                r#"{"error":{"code":"BadParameter","message":"Invalid key size."}}"#,
            ),
            CallKind::Write,
        );
        assert!(
            matches!(bad, KeyVaultError::InvalidRequest { ref message } if message.contains("Invalid key size"))
        );
    }

    #[test]
    fn an_immutable_policy_refusal_is_recognised_on_writes() {
        let body = r#"{"error":{"code":"BadParameter","message":"The release policy of this key is immutable and cannot be changed."}}"#;
        for status in [400, 403, 409] {
            assert!(matches!(
                classify_http(&failure(status, body), CallKind::Update),
                KeyVaultError::ImmutablePolicy { .. }
            ));
        }
        assert!(matches!(
            classify_http(&failure(400, body), CallKind::Write),
            KeyVaultError::ImmutablePolicy { .. }
        ));
        assert!(matches!(
            classify_http(&failure(400, body), CallKind::Read),
            KeyVaultError::InvalidRequest { .. }
        ));
    }

    #[test]
    fn throttled_carries_the_delay_or_one_window() {
        let f = HttpFailure::from_parts(429, b"", Some(Duration::from_millis(2500)));
        assert_eq!(
            classify_http(&f, CallKind::Read),
            KeyVaultError::Throttled {
                retry_after: Duration::from_millis(2500),
                message: "HTTP 429 with no message".into()
            }
        );
        let f = HttpFailure::from_parts(429, b"", None);
        assert!(matches!(
            classify_http(&f, CallKind::Read),
            KeyVaultError::Throttled { retry_after, .. } if retry_after == DEFAULT_RETRY_AFTER
        ));
    }

    #[test]
    fn server_errors_leave_writes_unknown_and_reads_known() {
        let f = failure(503, "upstream unavailable");
        assert_eq!(
            classify_http(&f, CallKind::Read),
            KeyVaultError::Transient {
                message: "upstream unavailable".into(),
                outcome_unknown: false
            }
        );
        assert!(matches!(
            classify_http(&f, CallKind::Write),
            KeyVaultError::Transient {
                outcome_unknown: true,
                ..
            }
        ));
        assert!(matches!(
            classify_http(&failure(408, ""), CallKind::Write),
            KeyVaultError::Transient {
                outcome_unknown: false,
                ..
            }
        ));
    }

    #[test]
    fn transport_failures() {
        let m = || "reset".to_string();
        assert_eq!(
            classify_transport(TransportFailure::Connect, CallKind::Write, m()),
            KeyVaultError::Transient {
                message: m(),
                outcome_unknown: false
            }
        );
        assert_eq!(
            classify_transport(TransportFailure::AfterSend, CallKind::Write, m()),
            KeyVaultError::Transient {
                message: m(),
                outcome_unknown: true
            }
        );
        assert_eq!(
            classify_transport(TransportFailure::AfterSend, CallKind::Read, m()),
            KeyVaultError::Transient {
                message: m(),
                outcome_unknown: false
            }
        );
    }

    #[test]
    fn retry_after_headers_in_order_of_precedence() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_609_459_200); // 2021-01-01T00:00:00Z
        let h = |pairs: &'static [(&'static str, &'static str)]| {
            move |name: &str| pairs.iter().find(|(k, _)| *k == name).map(|(_, v)| *v)
        };
        assert_eq!(
            retry_after(
                h(&[("x-ms-retry-after-ms", "1500"), ("retry-after", "9")]),
                now
            ),
            Some(Duration::from_millis(1500))
        );
        assert_eq!(
            retry_after(h(&[("retry-after-ms", "250"), ("retry-after", "9")]), now),
            Some(Duration::from_millis(250))
        );
        assert_eq!(
            retry_after(h(&[("retry-after", "9")]), now),
            Some(Duration::from_secs(9))
        );
        assert_eq!(
            retry_after(h(&[("retry-after", "Fri, 01 Jan 2021 00:00:12 GMT")]), now),
            Some(Duration::from_secs(12))
        );
        assert_eq!(
            retry_after(h(&[("retry-after", "Thu, 31 Dec 2020 23:59:00 GMT")]), now),
            Some(Duration::ZERO)
        );
        assert_eq!(retry_after(h(&[("retry-after", "soon")]), now), None);
        assert_eq!(retry_after(h(&[]), now), None);
    }
}
