//! Admission metrics: `ckb_admissions_total{result}` and `ckb_admission_duration_seconds`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use super::review::Outcome;

/// Labels of `ckb_admissions_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    /// `allowed`, `patched`, `denied` or `invalid`.
    pub result: String,
}

/// The webhook's metrics. Cheap to clone (shared handles).
#[derive(Clone, Debug)]
pub struct WebhookMetrics {
    /// Admissions by result.
    pub admissions: Family<ResultLabels, Counter>,
    /// Time from the first body byte read to the answer encoded.
    pub duration: Histogram,
}

impl Default for WebhookMetrics {
    fn default() -> Self {
        Self {
            admissions: Family::default(),
            // 100 µs .. ~1.6 s
            duration: Histogram::new(exponential_buckets(0.0001, 2.0, 15)),
        }
    }
}

impl WebhookMetrics {
    /// Registers the metrics in `registry`. The names already carry the `ckb_` prefix, so pass
    /// an unprefixed registry: `ckb_admissions_total{result}`, `ckb_admission_duration_seconds`.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "ckb_admissions",
            "Pod admissions by result (allowed, patched, denied, invalid)",
            self.admissions.clone(),
        );
        registry.register(
            "ckb_admission_duration_seconds",
            "Time to answer one pod admission, in seconds",
            self.duration.clone(),
        );
    }

    /// Records one admission.
    pub fn observe(&self, outcome: Outcome, seconds: f64) {
        self.admissions
            .get_or_create(&ResultLabels {
                result: outcome.as_str().to_string(),
            })
            .inc();
        self.duration.observe(seconds);
    }
}
