//! The check report: what `--output json` prints (schema `portcullis.dev/check/v1`),
//! and its readable text form.

use std::fmt::Write as _;

use portcullis_crds::Action;
use portcullis_webhook::admission::Verdict;
use portcullis_webhook::workload::WorkloadKind;
use serde::Serialize;

/// The whole report.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CheckReport {
    /// Always `portcullis.dev/check/v1`.
    pub api_version: &'static str,
    /// Counts.
    pub summary: Summary,
    /// Every workload object, in input order.
    pub objects: Vec<ObjectResult>,
    /// Objects that were not evaluated, and why.
    pub skipped: Vec<Skipped>,
}

impl Default for CheckReport {
    fn default() -> Self {
        CheckReport {
            api_version: "portcullis.dev/check/v1",
            summary: Summary::default(),
            objects: vec![],
            skipped: vec![],
        }
    }
}

/// How many objects got each verdict.
#[derive(Debug, Default, Serialize)]
pub struct Summary {
    /// Workload objects evaluated.
    pub objects: usize,
    /// Would be denied.
    pub denied: usize,
    /// Would be admitted with warnings.
    pub warned: usize,
    /// Would be admitted without warnings.
    pub passed: usize,
    /// Not evaluated.
    pub skipped: usize,
}

/// One evaluated object.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ObjectResult {
    /// `file#document` (`-#1` for standard input).
    pub source: String,
    /// The workload kind.
    pub kind: &'static str,
    /// Its namespace (from the manifest, else `--namespace`).
    pub namespace: String,
    /// Its name.
    pub name: String,
    /// `deny`, `warn` or `pass`.
    pub verdict: &'static str,
    /// The webhook's deny message, when denied.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Every violation, Block, Warn and Audit alike.
    pub violations: Vec<ViolationOut>,
    /// What the mutating webhook would change (Pods; the verdict is on the changed Pod).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub mutations: Vec<String>,
}

/// One violation.
#[derive(Debug, Serialize)]
pub struct ViolationOut {
    /// The ContainerPolicy.
    pub policy: String,
    /// The rule under `spec.rules` (`vulnerabilities.maxCount`), or `image`.
    pub rule: &'static str,
    /// `Block`, `Warn` or `Audit`.
    pub action: Action,
    /// What broke it: `container "api" image …` or `pod spec`.
    pub target: String,
    /// The rule with the numbers that broke it.
    pub detail: String,
}

/// An object that was not evaluated.
#[derive(Debug, Serialize)]
pub struct Skipped {
    /// `file#document`.
    pub source: String,
    /// Its kind, when it has one.
    pub kind: String,
    /// Its name, when it has one.
    pub name: String,
    /// Why it was not evaluated.
    pub reason: String,
}

impl CheckReport {
    pub(super) fn skip(&mut self, source: &str, kind: &str, name: Option<&str>, reason: &str) {
        self.summary.skipped += 1;
        self.skipped.push(Skipped {
            source: source.to_owned(),
            kind: kind.to_owned(),
            name: name.unwrap_or_default().to_owned(),
            reason: reason.to_owned(),
        });
    }

    pub(super) fn add(
        &mut self,
        source: &str,
        kind: WorkloadKind,
        namespace: &str,
        name: &str,
        verdict: &Verdict,
        mutations: Vec<String>,
    ) {
        let (verdict_label, message, violations) = match verdict {
            Verdict::Skipped(reason) => {
                return self.skip(source, kind.as_str(), Some(name), reason);
            }
            Verdict::Unreadable(message) | Verdict::Invalid(message) => {
                ("deny", Some(message.clone()), vec![])
            }
            Verdict::Decided(decision) => {
                let violations = decision
                    .violations
                    .iter()
                    .map(|v| ViolationOut {
                        policy: v.policy.to_string(),
                        rule: v.rule,
                        action: v.action,
                        target: v.target.to_string(),
                        detail: v.detail.to_string(),
                    })
                    .collect();
                let label = match verdict.label() {
                    "allow" => "pass",
                    other => other,
                };
                (label, decision.deny_message(), violations)
            }
        };
        self.summary.objects += 1;
        match verdict_label {
            "deny" => self.summary.denied += 1,
            "warn" => self.summary.warned += 1,
            _ => self.summary.passed += 1,
        }
        self.objects.push(ObjectResult {
            source: source.to_owned(),
            kind: kind.as_str(),
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            verdict: verdict_label,
            message,
            violations,
            mutations,
        });
    }

    /// The readable report: one block per object, then skipped objects, then counts.
    pub fn text(&self) -> String {
        let mut out = String::new();
        for o in &self.objects {
            let _ = writeln!(
                out,
                "{:<5} {} {}/{}  ({})",
                o.verdict.to_uppercase(),
                o.kind,
                o.namespace,
                o.name,
                o.source
            );
            if o.violations.is_empty()
                && let Some(message) = &o.message
            {
                let _ = writeln!(out, "      {message}");
            }
            for change in &o.mutations {
                let _ = writeln!(out, "      Mutate {change}");
            }
            for v in &o.violations {
                let action = format!("{:?}", v.action);
                let _ = writeln!(
                    out,
                    "      {action:<5}  {} violates ContainerPolicy {:?}: {}",
                    v.target, v.policy, v.detail
                );
            }
        }
        for s in &self.skipped {
            let what = if s.kind.is_empty() {
                String::new()
            } else {
                format!(" {} {}", s.kind, s.name)
            };
            let _ = writeln!(out, "SKIP {what}  ({}): {}", s.source, s.reason);
        }
        let s = &self.summary;
        let _ = writeln!(
            out,
            "{} objects checked: {} denied, {} warned, {} passed; {} skipped",
            s.objects, s.denied, s.warned, s.passed, s.skipped
        );
        out
    }
}
