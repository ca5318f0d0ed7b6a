//! Mutation metrics: images pinned, images left unpinned by cause, defaults applied by
//! field, Pods not mutated by reason.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

use crate::engine::mutation::Plan;

type Labels = Vec<(&'static str, &'static str)>;

/// The counters; cheap to clone (shared handles).
#[derive(Clone, Default)]
pub struct MutationMetrics {
    pinned: Counter,
    unpinned: Family<Labels, Counter>,
    defaults: Family<Labels, Counter>,
    not_mutated: Family<Labels, Counter>,
}

impl MutationMetrics {
    /// Registers the metrics (under the registry's prefix).
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "mutation_pinned_images",
            "Images pinned to the digest resolved at admission",
            self.pinned.clone(),
        );
        registry.register(
            "mutation_unpinned_images",
            "Images a policy asks to pin that stay as written, by cause",
            self.unpinned.clone(),
        );
        registry.register(
            "mutation_defaults",
            "Security defaults filled in, by field",
            self.defaults.clone(),
        );
        registry.register(
            "mutation_skipped_pods",
            "Pods a plan was made for but not mutated, by reason",
            self.not_mutated.clone(),
        );
    }

    /// Counts what a plan that was sent changes.
    pub fn applied(&self, plan: &Plan) {
        self.pinned.inc_by(plan.pins.len() as u64);
        for u in &plan.unpinned {
            self.unpinned
                .get_or_create(&vec![("cause", u.why.cause.as_str())])
                .inc();
        }
        let field = |name: &'static str, times: usize| {
            if times > 0 {
                self.defaults
                    .get_or_create(&vec![("field", name)])
                    .inc_by(times as u64);
            }
        };
        field("runAsNonRoot", usize::from(plan.pod.run_as_non_root));
        field(
            "seccompProfile",
            usize::from(plan.pod.seccomp_runtime_default),
        );
        let count = |f: fn(&crate::engine::mutation::ContainerDefaults) -> bool| {
            plan.containers.iter().filter(|c| f(c)).count()
        };
        field(
            "allowPrivilegeEscalation",
            count(|c| c.no_privilege_escalation),
        );
        field("capabilities.drop", count(|c| c.drop_all));
    }

    /// Counts a plan that was not sent.
    pub fn not_mutated(&self, reason: &'static str) {
        self.not_mutated
            .get_or_create(&vec![("reason", reason)])
            .inc();
    }
}
