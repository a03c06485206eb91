//! Prometheus metrics of the Key Vault client. The client records into them; the process registers
//! them once with [`KeyVaultMetrics::register`].

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

/// Labels of a Key Vault call.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CallLabels {
    /// `get`, `create`, `update`, `delete`, `get_deleted`, `recover`.
    pub operation: String,
    /// `ok` or the error kind (`not_found`, `throttled`, `transient`, ...).
    pub outcome: String,
}

/// Labels naming a vault (its host).
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VaultLabels {
    /// Vault host, `contoso.vault.azure.net`.
    pub vault: String,
}

/// Labels naming an operation.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OperationLabels {
    /// `get`, `create`, ...
    pub operation: String,
}

fn duration_histogram() -> Histogram {
    // 5 ms .. ~20 s: Key Vault answers in tens of milliseconds; HSM creates take seconds.
    Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
        0.005, 2.0, 13,
    ))
}

/// The client's metrics. Clones share the same series.
#[derive(Debug, Clone)]
pub struct KeyVaultMetrics {
    /// `ckb_keyvault_requests_total{operation,outcome}`: calls made to Key Vault (one per HTTP
    /// exchange the client starts, retries included).
    pub requests: Family<CallLabels, Counter>,
    /// `ckb_keyvault_throttled_total{vault}`: 429 answers and calls refused by the local limiter.
    pub throttled: Family<VaultLabels, Counter>,
    /// `ckb_keyvault_request_duration_seconds{operation}`: time of each call, from send to answer.
    pub duration: Family<OperationLabels, Histogram, fn() -> Histogram>,
    /// `ckb_keyvault_rate_limit_wait_seconds{operation}`: time spent waiting for a local rate-limit slot.
    pub limiter_wait: Family<OperationLabels, Histogram, fn() -> Histogram>,
}

impl Default for KeyVaultMetrics {
    fn default() -> Self {
        Self {
            requests: Family::default(),
            throttled: Family::default(),
            duration: Family::new_with_constructor(duration_histogram),
            limiter_wait: Family::new_with_constructor(duration_histogram),
        }
    }
}

impl KeyVaultMetrics {
    /// Registers the metrics under their full `ckb_keyvault_*` names, so `registry` must not add a
    /// prefix of its own (use `Registry::default()`, not `Registry::with_prefix("ckb")`).
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "ckb_keyvault_requests",
            "Key Vault calls by operation and outcome",
            self.requests.clone(),
        );
        registry.register(
            "ckb_keyvault_throttled",
            "Key Vault calls throttled (HTTP 429 or the local per-vault limiter), by vault",
            self.throttled.clone(),
        );
        registry.register_with_unit(
            "ckb_keyvault_request_duration",
            "Duration of Key Vault calls",
            Unit::Seconds,
            self.duration.clone(),
        );
        registry.register_with_unit(
            "ckb_keyvault_rate_limit_wait",
            "Time spent waiting for a per-vault rate-limit slot",
            Unit::Seconds,
            self.limiter_wait.clone(),
        );
    }

    /// Count of calls with this operation and outcome so far.
    pub fn requests_count(&self, operation: &str, outcome: &str) -> u64 {
        self.requests
            .get_or_create(&CallLabels {
                operation: operation.into(),
                outcome: outcome.into(),
            })
            .get()
    }

    /// Count of throttled calls to `vault` so far.
    pub fn throttled_count(&self, vault: &str) -> u64 {
        self.throttled
            .get_or_create(&VaultLabels {
                vault: vault.into(),
            })
            .get()
    }
}

#[cfg(test)]
#[path = "metrics_tests.rs"]
mod metrics_tests;
