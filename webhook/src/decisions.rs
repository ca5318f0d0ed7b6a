//! What the webhook records of each admission decision: Prometheus counters and a
//! latency histogram, one decision log line (identifiers and outcome — for a refused
//! object, why — never the object), and the denials per namespace and policy the
//! PolicyReports count.

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use portcullis_crds::Action;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::admission::{Request, Verdict};
use crate::counters::{CountersBy, CountersByName};
use crate::workload::WorkloadKind;

/// Which requests get a decision log line (`--decision-log`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DecisionLog {
    /// Every request evaluated or refused.
    All,
    /// Requests denied, warned or with an Audit violation (the default).
    #[default]
    Violations,
    /// None.
    None,
}

impl FromStr for DecisionLog {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "all" => Ok(DecisionLog::All),
            "violations" => Ok(DecisionLog::Violations),
            "none" => Ok(DecisionLog::None),
            other => Err(format!(
                "unknown decision log level {other:?}: expected all, violations or none"
            )),
        }
    }
}

/// Where a violation was found (the `source` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// An admission request.
    Admission,
    /// The background audit of what runs.
    Audit,
}

impl Source {
    fn label(self) -> &'static str {
        match self {
            Source::Admission => "admission",
            Source::Audit => "audit",
        }
    }
}

/// The actions and sources of a policy's violation counters, in the order
/// [`Decisions::violation_handles`] keeps them ([`violation_index`]).
const VIOLATION_LABELS: [(Action, Source); 6] = [
    (Action::Block, Source::Admission),
    (Action::Block, Source::Audit),
    (Action::Warn, Source::Admission),
    (Action::Warn, Source::Audit),
    (Action::Audit, Source::Admission),
    (Action::Audit, Source::Audit),
];

/// Where `(action, source)` is in [`VIOLATION_LABELS`]; exhaustive, so a new action or
/// source cannot go uncounted.
fn violation_index(action: Action, source: Source) -> usize {
    let action = match action {
        Action::Block => 0,
        Action::Warn => 1,
        Action::Audit => 2,
    };
    let source = match source {
        Source::Admission => 0,
        Source::Audit => 1,
    };
    action * 2 + source
}

type RequestLabels = [(&'static str, &'static str); 3];
type ViolationLabels = [(&'static str, String); 3];

/// Most (namespace, policy) pairs whose denials are counted; beyond it new pairs are
/// counted only in the metrics (a bound on what any stream of requests can make us keep).
const MAX_DENIAL_KEYS: usize = 50_000;

/// The recorder the handlers share; cheap to clone.
#[derive(Clone)]
pub struct Decisions {
    requests: Family<RequestLabels, Counter>,
    /// The request counters by their labels (counted on every request).
    request_handles: CountersBy<RequestLabels, 1>,
    duration: Histogram,
    violations: Family<ViolationLabels, Counter>,
    /// Each policy's violation counters (counted on every violating request).
    violation_handles: CountersByName<6>,
    log: DecisionLog,
    denials: Arc<Mutex<HashMap<(String, String), Denials>>>,
}

impl Default for Decisions {
    fn default() -> Self {
        Decisions::new(DecisionLog::default())
    }
}

/// Admission requests one policy denied in one namespace, since this process started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denials {
    /// How many.
    pub count: u64,
    /// The latest one's message.
    pub last_message: String,
    /// When the latest one was denied.
    pub last_time: SystemTime,
}

impl Decisions {
    /// A recorder logging at `log`.
    pub fn new(log: DecisionLog) -> Self {
        Decisions {
            requests: Family::default(),
            request_handles: CountersBy::default(),
            // 50 µs to ~3.3 s.
            duration: Histogram::new(exponential_buckets(0.00005, 2.0, 17)),
            violations: Family::default(),
            violation_handles: CountersByName::default(),
            log,
            denials: Arc::default(),
        }
    }

    /// Registers the metrics (under the registry's prefix).
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "admission_requests",
            "Admission requests answered, by kind, operation and verdict (allow, warn, deny, skip)",
            self.requests.clone(),
        );
        registry.register(
            "admission_duration_seconds",
            "Time from a review's arrival to its answer",
            self.duration.clone(),
        );
        registry.register(
            "policy_violations",
            "Violations found, by policy, action and source (admission or audit)",
            self.violations.clone(),
        );
    }

    /// Records one answered review: counters, histogram, the decision log line and —
    /// unless a dry run — the denials.
    pub fn record(&self, request: &Request<'_>, name: &str, verdict: &Verdict, took: Duration) {
        let labels = [
            ("kind", kind_label(request)),
            ("operation", operation_label(&request.operation)),
            ("verdict", verdict.label()),
        ];
        self.request_handles.inc(&labels, 0, || {
            [self.requests.get_or_create(&labels).clone()]
        });
        self.duration.observe(took.as_secs_f64());
        let dry_run = request.dry_run == Some(true);
        if let Verdict::Decided(decision) = verdict
            && !decision.violations.is_empty()
        {
            let mut seen: Vec<(&str, Action)> = Vec::new();
            for v in &decision.violations {
                if seen.contains(&(&*v.policy, v.action)) {
                    continue;
                }
                seen.push((&*v.policy, v.action));
                if !dry_run {
                    self.violation(&v.policy, v.action, Source::Admission);
                }
            }
            if !dry_run && !decision.allowed() {
                let blocking = seen.iter().filter(|(_, action)| *action == Action::Block);
                self.denied(request, decision, blocking.map(|(policy, _)| *policy));
            }
        }
        self.log_line(request, name, verdict, took);
    }

    /// Counts one object found violating `policy` (by the audit, or at admission).
    pub fn violation(&self, policy: &str, action: Action, source: Source) {
        let index = violation_index(action, source);
        self.violation_handles.inc(policy, index, || {
            VIOLATION_LABELS.map(|(action, source)| {
                self.violations
                    .get_or_create(&[
                        ("policy", policy.to_owned()),
                        ("action", action_label(action).to_owned()),
                        ("source", source.label().to_owned()),
                    ])
                    .clone()
            })
        });
    }

    /// Counts one denied request against each of the `policies` that blocked it.
    fn denied<'d>(
        &self,
        request: &Request<'_>,
        decision: &crate::engine::Decision,
        policies: impl Iterator<Item = &'d str>,
    ) {
        let namespace = request.namespace.as_deref().unwrap_or_default();
        let message = decision.deny_message().unwrap_or_default();
        let now = SystemTime::now();
        let mut denials = self.denials.lock().unwrap_or_else(|e| e.into_inner());
        for policy in policies {
            let key = (namespace.to_owned(), policy.to_owned());
            if let Some(entry) = denials.get_mut(&key) {
                entry.count += 1;
                entry.last_message.clone_from(&message);
                entry.last_time = now;
            } else if denials.len() < MAX_DENIAL_KEYS {
                denials.insert(
                    key,
                    Denials {
                        count: 1,
                        last_message: message.clone(),
                        last_time: now,
                    },
                );
            }
        }
    }

    /// The denials counted so far, by (namespace, policy).
    pub fn denials(&self) -> HashMap<(String, String), Denials> {
        self.denials
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn log_line(&self, request: &Request<'_>, name: &str, verdict: &Verdict, took: Duration) {
        let policies = match verdict {
            Verdict::Decided(d) => {
                let mut names: Vec<&str> = d.violations.iter().map(|v| &*v.policy).collect();
                names.dedup();
                names.join(",")
            }
            _ => String::new(),
        };
        // Why an object was refused without an evaluation (names the field, not the object).
        let reason = match verdict {
            Verdict::Unreadable(message) | Verdict::Invalid(message) => message.as_str(),
            _ => "",
        };
        let wanted = match self.log {
            DecisionLog::None => false,
            DecisionLog::All => !matches!(verdict, Verdict::Skipped(_)),
            DecisionLog::Violations => {
                !policies.is_empty()
                    || matches!(verdict, Verdict::Unreadable(_) | Verdict::Invalid(_))
            }
        };
        if !wanted {
            return;
        }
        tracing::info!(
            target: "portcullis::decision",
            uid = %request.uid,
            user = %request.user_info.username,
            namespace = request.namespace.as_deref().unwrap_or_default(),
            kind = %request.kind.kind,
            operation = %request.operation,
            name,
            verdict = verdict.label(),
            policies,
            reason,
            dry_run = request.dry_run == Some(true),
            micros = took.as_micros() as u64,
            "decision"
        );
    }
}

/// The kind as a bounded label: a supported kind, a Portcullis kind, or `other`.
fn kind_label(request: &Request<'_>) -> &'static str {
    let (group, kind) = (request.kind.group.as_ref(), request.kind.kind.as_ref());
    if let Some(kind) = WorkloadKind::from_group_kind(group, kind) {
        return kind.as_str();
    }
    match (group, kind) {
        (portcullis_crds::GROUP, "ContainerPolicy") => "ContainerPolicy",
        (portcullis_crds::GROUP, "RegistryIntegration") => "RegistryIntegration",
        (portcullis_crds::GROUP, "AuditMonitor") => "AuditMonitor",
        ("", "EphemeralContainers") => "EphemeralContainers",
        _ => "other",
    }
}

fn operation_label(operation: &str) -> &'static str {
    match operation {
        "CREATE" => "CREATE",
        "UPDATE" => "UPDATE",
        "DELETE" => "DELETE",
        "CONNECT" => "CONNECT",
        _ => "other",
    }
}

/// `Block`, `Warn` or `Audit`.
pub fn action_label(action: Action) -> &'static str {
    match action {
        Action::Block => "Block",
        Action::Warn => "Warn",
        Action::Audit => "Audit",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::encoding::text::encode;

    #[test]
    fn each_action_and_source_has_its_own_violation_counter() {
        for (index, (action, source)) in VIOLATION_LABELS.into_iter().enumerate() {
            assert_eq!(
                violation_index(action, source),
                index,
                "{action:?} {source:?}"
            );
        }
    }

    fn review(namespace: &str, dry_run: bool) -> String {
        serde_json::json!({
            "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
            "request": {"uid": "u-1", "kind": {"group": "", "version": "v1", "kind": "Pod"},
                "resource": {"group": "", "version": "v1", "resource": "pods"},
                "namespace": namespace, "operation": "CREATE", "dryRun": dry_run,
                "userInfo": {"username": "alice"}, "object": {}}
        })
        .to_string()
    }

    /// A Pod denied by `policy`, which two of its containers violate.
    fn denied(policy: &str) -> Verdict {
        let violation = |container: &str| crate::engine::Violation {
            policy: policy.into(),
            action: Action::Block,
            rule: "tags.denyLatest",
            target: format!("container {container:?} image nginx").into(),
            detail: "uses the latest tag".into(),
        };
        Verdict::Decided(crate::engine::Decision {
            object: "Pod team-a/p".into(),
            violations: vec![violation("c"), violation("d")],
        })
    }

    fn rendered(decisions: &Decisions) -> String {
        let mut registry = Registry::with_prefix("portcullis");
        decisions.register(&mut registry);
        let mut text = String::new();
        encode(&mut text, &registry).unwrap();
        text
    }

    #[test]
    fn a_denial_is_counted_by_kind_verdict_and_policy_and_remembered_for_reports() {
        let decisions = Decisions::default();
        let body = review("team-a", false);
        let request = crate::admission::parse(body.as_bytes()).unwrap();
        decisions.record(
            &request,
            "p",
            &denied("no-latest"),
            Duration::from_micros(80),
        );
        decisions.record(
            &request,
            "p",
            &denied("no-latest"),
            Duration::from_micros(80),
        );
        decisions.violation("no-latest", Action::Warn, Source::Audit);
        let text = rendered(&decisions);
        assert!(
            text.contains(r#"portcullis_admission_requests_total{kind="Pod",operation="CREATE",verdict="deny"} 2"#),
            "{text}"
        );
        assert!(
            text.contains(r#"portcullis_policy_violations_total{policy="no-latest",action="Block",source="admission"} 2"#),
            "{text}"
        );
        assert!(
            text.contains(r#"portcullis_policy_violations_total{policy="no-latest",action="Warn",source="audit"} 1"#),
            "{text}"
        );
        assert!(
            text.contains("portcullis_admission_duration_seconds_count 2"),
            "{text}"
        );
        let denials = decisions.denials();
        let entry = &denials[&("team-a".to_owned(), "no-latest".to_owned())];
        assert_eq!(entry.count, 2, "two requests, each denied once");
        assert!(
            entry.last_message.contains("uses the latest tag"),
            "{entry:?}"
        );
    }

    #[test]
    fn a_dry_run_is_counted_as_a_request_but_causes_no_violation_or_denial() {
        let decisions = Decisions::default();
        let body = review("team-a", true);
        let request = crate::admission::parse(body.as_bytes()).unwrap();
        decisions.record(
            &request,
            "p",
            &denied("no-latest"),
            Duration::from_micros(80),
        );
        let text = rendered(&decisions);
        assert!(text.contains(r#"verdict="deny"} 1"#), "{text}");
        assert!(!text.contains("source=\"admission\""), "{text}");
        assert!(decisions.denials().is_empty());
    }

    /// Collects every event's fields as `name=value` text.
    struct Capture(std::sync::Arc<Mutex<Vec<String>>>);

    struct Fields(String);

    impl tracing::field::Visit for Fields {
        fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
            use std::fmt::Write as _;
            let _ = write!(self.0, "{}={:?} ", field.name(), value);
        }
    }

    impl tracing::Subscriber for Capture {
        fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
            true
        }
        fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
            tracing::span::Id::from_u64(1)
        }
        fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
        fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
        fn event(&self, event: &tracing::Event<'_>) {
            let mut fields = Fields(format!("{} ", event.metadata().target()));
            event.record(&mut fields);
            self.0.lock().unwrap().push(fields.0);
        }
        fn enter(&self, _: &tracing::span::Id) {}
        fn exit(&self, _: &tracing::span::Id) {}
    }

    fn logged(log: DecisionLog, body: &str, verdict: &Verdict) -> Vec<String> {
        let lines = std::sync::Arc::new(Mutex::new(Vec::new()));
        let request = crate::admission::parse(body.as_bytes()).unwrap();
        tracing::subscriber::with_default(Capture(lines.clone()), || {
            Decisions::new(log).record(&request, "p", verdict, Duration::from_micros(80));
        });
        lines.lock().unwrap().clone()
    }

    /// One line per decision with who and what, never the object (here: an env value).
    #[test]
    fn the_decision_line_names_who_and_what_and_never_the_object() {
        let body = serde_json::json!({
            "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
            "request": {"uid": "u-7", "kind": {"group": "", "version": "v1", "kind": "Pod"},
                "resource": {"group": "", "version": "v1", "resource": "pods"},
                "namespace": "team-a", "operation": "CREATE", "userInfo": {"username": "alice"},
                "object": {"spec": {"containers": [{"name": "app", "image": "nginx",
                    "env": [{"name": "TOKEN", "value": "s3cr3t-value"}]}]}}}
        })
        .to_string();
        let lines = logged(DecisionLog::Violations, &body, &denied("no-latest"));
        assert_eq!(lines.len(), 1, "{lines:?}");
        let line = &lines[0];
        for part in [
            "portcullis::decision",
            "uid=u-7",
            "user=alice",
            "namespace=\"team-a\"",
            "kind=Pod",
            "name=\"p\"",
            "verdict=\"deny\"",
            "policies=\"no-latest\"",
        ] {
            assert!(line.contains(part), "{part} missing: {line}");
        }
        assert!(!line.contains("s3cr3t"), "the object leaked: {line}");
        assert!(
            logged(
                DecisionLog::Violations,
                &body,
                &Verdict::Decided(crate::engine::Decision {
                    object: "Pod team-a/p".into(),
                    violations: vec![]
                })
            )
            .is_empty()
        );
        assert_eq!(
            logged(
                DecisionLog::All,
                &body,
                &Verdict::Decided(crate::engine::Decision {
                    object: "Pod team-a/p".into(),
                    violations: vec![]
                })
            )
            .len(),
            1
        );
        assert!(logged(DecisionLog::None, &body, &denied("no-latest")).is_empty());
        let unreadable = logged(
            DecisionLog::Violations,
            &body,
            &Verdict::Unreadable(
                "Pod object cannot be read as Pod: spec.containers: invalid type".into(),
            ),
        );
        assert!(
            unreadable[0].contains("reason=\"Pod object cannot be read as Pod: spec.containers"),
            "{unreadable:?}"
        );
    }

    #[test]
    fn decision_log_levels_parse_and_unknown_ones_are_named() {
        assert_eq!("all".parse(), Ok(DecisionLog::All));
        assert_eq!("none".parse(), Ok(DecisionLog::None));
        let error = "some".parse::<DecisionLog>().unwrap_err();
        assert!(error.contains("\"some\""), "{error}");
    }
}
