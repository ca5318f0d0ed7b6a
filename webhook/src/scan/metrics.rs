//! Scan metrics: cache hits, misses and stale serves; backend latency and errors, by
//! integration.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::counters::CountersByName;

type Labels = Vec<(&'static str, String)>;

/// The `result` labels of a lookup, in the order [`ScanMetrics::lookup_handles`] keeps them.
const RESULTS: [&str; 3] = ["hit", "stale", "miss"];

/// The counters and histograms; cheap to clone (shared handles).
#[derive(Clone)]
pub struct ScanMetrics {
    lookups: Family<Labels, Counter>,
    /// Each integration's lookup counters (counted on every image of every request).
    lookup_handles: CountersByName<3>,
    backend_seconds: Family<Labels, Histogram>,
    backend_errors: Family<Labels, Counter>,
}

impl Default for ScanMetrics {
    fn default() -> Self {
        ScanMetrics {
            lookups: Family::default(),
            lookup_handles: CountersByName::default(),
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

    /// Counts a lookup: `result` is `hit`, `stale` or `miss`.
    pub(crate) fn lookup(&self, integration: &str, result: &'static str) {
        let Some(index) = RESULTS.iter().position(|r| *r == result) else {
            return;
        };
        self.lookup_handles.inc(integration, index, || {
            RESULTS.map(|r| {
                self.lookups
                    .get_or_create(&vec![
                        ("integration", integration.to_owned()),
                        ("result", r.to_owned()),
                    ])
                    .clone()
            })
        });
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookups_are_counted_by_integration_and_result_through_the_kept_handles() {
        let metrics = ScanMetrics::default();
        for result in ["hit", "hit", "miss", "stale", "hit"] {
            metrics.lookup("harbor", result);
        }
        metrics.lookup("trivy", "miss");
        let mut registry = Registry::with_prefix("portcullis");
        metrics.register(&mut registry);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        for line in [
            r#"portcullis_scan_cache_lookups_total{integration="harbor",result="hit"} 3"#,
            r#"portcullis_scan_cache_lookups_total{integration="harbor",result="stale"} 1"#,
            r#"portcullis_scan_cache_lookups_total{integration="harbor",result="miss"} 1"#,
            r#"portcullis_scan_cache_lookups_total{integration="trivy",result="miss"} 1"#,
        ] {
            assert!(text.contains(line), "{line} missing:\n{text}");
        }
    }
}
