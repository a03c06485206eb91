//! Refusals of the token endpoint, in Entra's error shape.

use serde_json::{Value, json};

use super::{AUTHORITY_HOST, random_uuid};

/// A refusal of the token endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntraError {
    /// HTTP status.
    pub status: u16,
    /// OAuth 2.0 error code.
    pub error: &'static str,
    /// AADSTS code.
    pub code: u32,
    /// What went wrong (without the `AADSTS<n>: ` prefix).
    pub description: String,
}

impl EntraError {
    pub(super) fn new(
        status: u16,
        error: &'static str,
        code: u32,
        description: impl Into<String>,
    ) -> Self {
        Self {
            status,
            error,
            code,
            description: description.into(),
        }
    }

    pub(super) fn invalid_client(code: u32, description: impl Into<String>) -> Self {
        Self::new(401, "invalid_client", code, description)
    }

    /// The JSON body Entra sends with a refusal.
    pub fn body(&self, now: i64) -> Value {
        let trace_id = random_uuid();
        let correlation_id = random_uuid();
        let timestamp = jiff::Timestamp::from_second(now)
            .map(|t| t.strftime("%Y-%m-%d %H:%M:%SZ").to_string())
            .unwrap_or_default();
        json!({
            "error": self.error,
            "error_description": format!(
                "AADSTS{}: {}\r\nTrace ID: {trace_id}\r\nCorrelation ID: {correlation_id}\r\nTimestamp: {timestamp}",
                self.code, self.description
            ),
            "error_codes": [self.code],
            "timestamp": timestamp,
            "trace_id": trace_id,
            "correlation_id": correlation_id,
            "error_uri": format!("https://{AUTHORITY_HOST}/error?code={}", self.code),
        })
    }
}
