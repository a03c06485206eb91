//! Injectable faults and the request log.
//!
//! A fault matches requests by method, path regex and vault host, and applies a limited number of
//! times. It can delay, answer a status, drop the TCP connection with a reset, and do so either
//! instead of the operation or after the operation committed ("apply then fail": the outcome is
//! unknown to the client although the write happened).

use regex::Regex;
use serde::{Deserialize, Serialize};

/// What to match and what to do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Fault {
    /// HTTP method to match (any when absent).
    pub method: Option<String>,
    /// Regex on the path (any when absent), e.g. `^/keys/[^/]+/create$`.
    pub path: Option<String>,
    /// Host to match (any when absent), without port, e.g. `demo.vault.azure.net`.
    pub vault: Option<String>,
    /// HTTP status to answer instead of (or, with `after_apply`, after) the operation.
    pub status: Option<u16>,
    /// Delay before answering, milliseconds.
    pub delay_ms: u64,
    /// Drop the TCP connection (RST) instead of answering.
    pub reset: bool,
    /// Run the operation (committing it) first, then fail as configured; when neither `status`
    /// nor `reset` is set the failure is a 500.
    pub after_apply: bool,
    /// How many matching requests it applies to (`None`: every one until cleared).
    pub count: Option<u32>,
    /// `Retry-After` seconds to send with a 429 or 503 (default 1).
    pub retry_after_secs: Option<u64>,
}

impl Default for Fault {
    fn default() -> Self {
        Self {
            method: None,
            path: None,
            vault: None,
            status: None,
            delay_ms: 0,
            reset: false,
            after_apply: false,
            count: Some(1),
            retry_after_secs: None,
        }
    }
}

impl Fault {
    /// A fault answering `status` on `method` requests whose path matches `path`.
    pub fn status(method: &str, path: &str, status: u16) -> Self {
        Self {
            method: Some(method.to_owned()),
            path: Some(path.to_owned()),
            status: Some(status),
            ..Self::default()
        }
    }

    /// A fault resetting the connection of `method` requests whose path matches `path`.
    pub fn reset(method: &str, path: &str) -> Self {
        Self {
            method: Some(method.to_owned()),
            path: Some(path.to_owned()),
            reset: true,
            ..Self::default()
        }
    }

    /// Applies to `n` requests.
    pub fn times(mut self, n: u32) -> Self {
        self.count = Some(n);
        self
    }

    /// Only on this vault host.
    pub fn on_vault(mut self, host: &str) -> Self {
        self.vault = Some(host.to_owned());
        self
    }

    /// Runs the operation first.
    pub fn after_apply(mut self) -> Self {
        self.after_apply = true;
        self
    }

    /// Waits this long first.
    pub fn delayed(mut self, ms: u64) -> Self {
        self.delay_ms = ms;
        self
    }

    fn describe(&self) -> String {
        let what = if self.reset {
            "reset".to_owned()
        } else if let Some(s) = self.status {
            s.to_string()
        } else if self.after_apply {
            "500".to_owned()
        } else {
            "delay".to_owned()
        };
        if self.after_apply {
            format!("{what} after apply")
        } else {
            what
        }
    }
}

/// Why a fault was refused.
#[derive(Debug, thiserror::Error)]
pub enum FaultError {
    /// The path regex does not compile.
    #[error("invalid path regex: {0}")]
    Regex(#[from] regex::Error),
}

#[derive(Debug)]
struct Armed {
    id: u64,
    fault: Fault,
    path: Option<Regex>,
    remaining: Option<u32>,
}

/// The armed faults.
#[derive(Debug, Default)]
pub struct Faults {
    next_id: u64,
    armed: Vec<Armed>,
}

/// A fault that fired on a request.
#[derive(Debug, Clone)]
pub struct Fired {
    /// The fault.
    pub fault: Fault,
    /// A short description for the log.
    pub description: String,
}

impl Faults {
    /// Arms a fault; returns its id.
    pub fn add(&mut self, fault: Fault) -> Result<u64, FaultError> {
        let path = fault.path.as_deref().map(Regex::new).transpose()?;
        self.next_id += 1;
        self.armed.push(Armed {
            id: self.next_id,
            remaining: fault.count,
            fault,
            path,
        });
        Ok(self.next_id)
    }

    /// Disarms everything.
    pub fn clear(&mut self) {
        self.armed.clear();
    }

    /// The armed faults with their remaining counts.
    pub fn list(&self) -> Vec<(u64, Fault, Option<u32>)> {
        self.armed
            .iter()
            .map(|a| (a.id, a.fault.clone(), a.remaining))
            .collect()
    }

    /// The first armed fault matching the request, consuming one use of it.
    pub fn take(&mut self, method: &str, path: &str, host: &str) -> Option<Fired> {
        let idx = self.armed.iter().position(|a| {
            a.fault
                .method
                .as_deref()
                .is_none_or(|m| m.eq_ignore_ascii_case(method))
                && a.path.as_ref().is_none_or(|r| r.is_match(path))
                && a.fault.vault.as_deref().is_none_or(|v| v == host)
        })?;
        let armed = &mut self.armed[idx];
        let fired = Fired {
            fault: armed.fault.clone(),
            description: armed.fault.describe(),
        };
        if let Some(r) = armed.remaining.as_mut() {
            *r -= 1;
            if *r == 0 {
                self.armed.remove(idx);
            }
        }
        Some(fired)
    }
}

/// One logged request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogEntry {
    /// Sequence number from 1.
    pub seq: u64,
    /// HTTP method.
    pub method: String,
    /// Host without port.
    pub host: String,
    /// Path without query.
    pub path: String,
    /// The `api-version` query parameter.
    pub api_version: Option<String>,
    /// Whether the request carried a bearer token.
    pub authenticated: bool,
    /// Status answered; `None` when the connection was reset.
    pub status: Option<u16>,
    /// Whether the operation committed a change.
    pub write: bool,
    /// The fault that fired, if any.
    pub fault: Option<String>,
    /// When the request arrived, in milliseconds since the Unix epoch: the gaps between a
    /// client's attempts (does it wait for `Retry-After`?) are read from it.
    #[serde(default)]
    pub received_ms: u64,
    /// Issuer of the bearer token when it is a valid access token of the Entra double (`None`
    /// for the opaque test tokens and for no token).
    #[serde(default)]
    pub token_issuer: Option<String>,
    /// The application (client id) that Entra access token was issued to.
    #[serde(default)]
    pub token_client_id: Option<String>,
}

/// Milliseconds since the Unix epoch, as [`LogEntry::received_ms`] counts them.
pub fn unix_millis() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn faults_match_and_are_count_limited() {
        let mut f = Faults::default();
        f.add(
            Fault::status("POST", "^/keys/[^/]+/create$", 503)
                .times(2)
                .on_vault("a.vault.azure.net"),
        )
        .unwrap();
        assert!(
            f.take("GET", "/keys/k/create", "a.vault.azure.net")
                .is_none()
        );
        assert!(
            f.take("POST", "/keys/k/create", "b.vault.azure.net")
                .is_none()
        );
        assert_eq!(
            f.take("post", "/keys/k/create", "a.vault.azure.net")
                .unwrap()
                .fault
                .status,
            Some(503)
        );
        assert!(
            f.take("POST", "/keys/k/create", "a.vault.azure.net")
                .is_some()
        );
        assert!(
            f.take("POST", "/keys/k/create", "a.vault.azure.net")
                .is_none()
        );
        assert!(f.add(Fault::status("GET", "(", 500)).is_err());
    }
}
