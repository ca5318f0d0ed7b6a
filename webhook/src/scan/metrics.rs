//! Scan metrics: cache hits, misses and stale serves; backend latency and errors, by
//! integration.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

type Labels = Vec<(&'static str, String)>;

/// The counters and histograms; cheap to clone (shared handles).
#[derive(Clone)]
pub struct ScanMetrics {
    lookups: Family<Labels, Counter>,
    backend_seconds: Family<Labels, Histogram>,
    backend_errors: Family<Labels, Counter>,
}

impl Default for ScanMetrics {
    fn default() -> Self {
        ScanMetrics {
            lookups: Family::default(),
            backend_seconds: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.001, 2.0, 14))
            }),
            backend_errors: Family::default(),
        }
    }
}

impl ScanMetrics {
    /// Registers the metrics (under the registry's prefix).
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "scan_cache_lookups",
            "Scan-result lookups on the request path by integration and result (hit, stale, miss)",
            self.lookups.clone(),
        );
        registry.register(
            "scan_backend_seconds",
            "Scanner and registry call latency by integration and call (scan, resolve)",
            self.backend_seconds.clone(),
        );
        registry.register(
            "scan_backend_errors",
            "Failed scanner and registry calls by integration, call and error",
            self.backend_errors.clone(),
        );
    }

    pub(crate) fn lookup(&self, integration: &str, result: &'static str) {
        self.lookups
            .get_or_create(&vec![
                ("integration", integration.to_owned()),
                ("result", result.to_owned()),
            ])
            .inc();
    }

    pub(crate) fn call(&self, integration: &str, call: &'static str, seconds: f64) {
        self.backend_seconds
            .get_or_create(&vec![
                ("integration", integration.to_owned()),
                ("call", call.to_owned()),
            ])
            .observe(seconds);
    }

    pub(crate) fn error(&self, integration: &str, call: &'static str, error: &'static str) {
        self.backend_errors
            .get_or_create(&vec![
                ("integration", integration.to_owned()),
                ("call", call.to_owned()),
                ("error", error.to_owned()),
            ])
            .inc();
    }
}
