//! Prometheus metrics (`--metrics-listen`, `GET /metrics`).

use std::sync::Mutex;
use std::time::Duration;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::controller::index::Counts;

type Labels = Vec<(&'static str, String)>;

/// The process's metrics, registered under `portcullis_`.
pub struct Metrics {
    registry: Mutex<Registry>,
    objects: Family<Labels, Gauge>,
    snapshot_generation: Gauge,
    swap_seconds: Histogram,
    watch_errors: Family<Labels, Counter>,
    reconcile_errors: Family<Labels, Counter>,
    namespace_lookups: Family<Labels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("portcullis");
        let objects = Family::<Labels, Gauge>::default();
        registry.register(
            "objects",
            "Policies and integrations by kind and state (enforced or invalid)",
            objects.clone(),
        );
        let snapshot_generation = Gauge::default();
        registry.register(
            "snapshot_generation",
            "Policy snapshots published since start",
            snapshot_generation.clone(),
        );
        let swap_seconds = Histogram::new(exponential_buckets(0.0001, 4.0, 10));
        registry.register(
            "snapshot_swap_seconds",
            "Time from a watch event to the new snapshot being served",
            swap_seconds.clone(),
        );
        let watch_errors = Family::<Labels, Counter>::default();
        registry.register(
            "watch_errors",
            "Watch failures by kind (each retried with backoff)",
            watch_errors.clone(),
        );
        let reconcile_errors = Family::<Labels, Counter>::default();
        registry.register(
            "reconcile_errors",
            "Status reconcile failures by kind and error",
            reconcile_errors.clone(),
        );
        let namespace_lookups = Family::<Labels, Counter>::default();
        registry.register(
            "namespace_lookups",
            "Reads of namespaces the watch had not delivered, by result (found, missing, failed, cached)",
            namespace_lookups.clone(),
        );
        Metrics {
            registry: Mutex::new(registry),
            objects,
            snapshot_generation,
            swap_seconds,
            watch_errors,
            reconcile_errors,
            namespace_lookups,
        }
    }
}

impl Metrics {
    /// Records a published snapshot.
    pub fn published(&self, generation: u64, counts: Counts, took: Duration) {
        self.snapshot_generation
            .set(i64::try_from(generation).unwrap_or(i64::MAX));
        self.swap_seconds.observe(took.as_secs_f64());
        let gauge = |kind: &str, state: &str| {
            self.objects
                .get_or_create(&vec![
                    ("kind", kind.to_owned()),
                    ("state", state.to_owned()),
                ])
                .clone()
        };
        let set = |g: Gauge, n: usize| g.set(i64::try_from(n).unwrap_or(i64::MAX));
        set(gauge("ContainerPolicy", "enforced"), counts.policies);
        set(gauge("ContainerPolicy", "invalid"), counts.invalid_policies);
        set(
            gauge("RegistryIntegration", "enforced"),
            counts.integrations,
        );
        set(
            gauge("RegistryIntegration", "invalid"),
            counts.invalid_integrations,
        );
        set(gauge("Namespace", "known"), counts.namespaces);
    }

    /// Counts a watch failure.
    pub fn watch_error(&self, kind: &str) {
        self.watch_errors
            .get_or_create(&vec![("kind", kind.to_owned())])
            .inc();
    }

    /// Counts a reconcile failure.
    pub fn reconcile_error(&self, kind: &str, error: &str) {
        self.reconcile_errors
            .get_or_create(&vec![
                ("kind", kind.to_owned()),
                ("error", error.to_owned()),
            ])
            .inc();
    }

    /// Counts a read of a namespace the watch had not delivered.
    pub fn namespace_lookup(&self, result: &str) {
        self.namespace_lookups
            .get_or_create(&vec![("result", result.to_owned())])
            .inc();
    }

    /// Adds metrics kept elsewhere (the scan service's, the mutating webhook's) to the
    /// registry.
    pub fn register_with(&self, add: impl FnOnce(&mut Registry)) {
        let mut registry = self.registry.lock().unwrap_or_else(|e| e.into_inner());
        add(&mut registry);
    }

    /// The OpenMetrics text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let registry = self
            .registry
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Err(error) = encode(&mut out, &registry) {
            tracing::error!(%error, "encoding metrics");
        }
        out
    }
}
