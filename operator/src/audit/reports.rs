//! PolicyReports (`wgpolicyk8s.io/v1alpha2`), as Kyverno and Policy Reporter read them:
//! one `PolicyReport` per namespace with a result per object × violated policy, and one
//! `ClusterPolicyReport` with a result per ContainerPolicy (its live violations). Denied
//! admission requests are results too (`rule: admission`), so they count in the summary.

use std::collections::HashMap;
use std::time::SystemTime;

use portcullis_crds::Action;
use portcullis_webhook::decisions::{Denials, action_label};
use portcullis_webhook::engine::truncate;
use serde_json::{Value, json};

use super::ledger::Ledger;

/// The name of every report Portcullis writes.
pub const REPORT_NAME: &str = "portcullis";
/// The group/version of the reports.
pub const API_VERSION: &str = "wgpolicyk8s.io/v1alpha2";
/// Most results listed in one report, and the longest message each carries: together
/// they keep a report well under the API server's 1.5 MiB object limit (800 × ~1.5 KiB).
/// The summary counts every result.
const MAX_RESULTS: usize = 800;
/// Longest message in a result (the admission message, cut with `…`).
const MAX_MESSAGE: usize = 1024;
/// `source` of every result.
const SOURCE: &str = "portcullis";
/// `category` of every result.
const CATEGORY: &str = "Container images";

/// `fail` for Block (it would be denied), `warn` for Warn and Audit.
fn result_of(action: Action) -> &'static str {
    match action {
        Action::Block => "fail",
        Action::Warn | Action::Audit => "warn",
    }
}

fn severity_of(action: Action) -> &'static str {
    match action {
        Action::Block => "high",
        Action::Warn => "medium",
        Action::Audit => "low",
    }
}

fn timestamp(at: SystemTime) -> Value {
    let seconds = at
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default();
    json!({"seconds": seconds, "nanos": 0})
}

#[derive(Default)]
struct Summary {
    pass: usize,
    fail: usize,
    warn: usize,
}

impl Summary {
    fn count(&mut self, result: &str) {
        match result {
            "fail" => self.fail += 1,
            _ => self.warn += 1,
        }
    }

    fn json(&self) -> Value {
        json!({"pass": self.pass, "fail": self.fail, "warn": self.warn, "error": 0, "skip": 0})
    }
}

/// The PolicyReport of `namespace`: its objects' results and the denials counted there
/// (`(policy, denials)`), as of `at`. `None` when there is nothing to report.
pub fn namespace_report(
    ledger: &Ledger,
    namespace: &str,
    denials: &[(&str, &Denials)],
    at: SystemTime,
) -> Option<Value> {
    let mut summary = Summary::default();
    let mut results = Vec::new();
    let mut objects = 0;
    for (key, entry) in ledger.in_namespace(namespace) {
        objects += 1;
        summary.pass += entry.applying.saturating_sub(entry.results.len());
        for r in &entry.results {
            let outcome = result_of(r.action);
            summary.count(outcome);
            if results.len() >= MAX_RESULTS {
                continue;
            }
            results.push(json!({
                "source": SOURCE,
                "policy": r.policy,
                "rule": r.rules.join(","),
                "category": CATEGORY,
                "severity": severity_of(r.action),
                "result": outcome,
                "scored": true,
                "timestamp": timestamp(at),
                "message": truncate(r.message.clone(), MAX_MESSAGE),
                "resources": [{
                    "apiVersion": entry.running.api_version,
                    "kind": key.kind.as_str(),
                    "namespace": key.namespace,
                    "name": key.name,
                    "uid": entry.running.uid,
                }],
                "properties": {"action": action_label(r.action)},
            }));
        }
    }
    for (policy, denied) in denials {
        summary.fail += 1;
        results.push(json!({
            "source": SOURCE,
            "policy": policy,
            "rule": "admission",
            "category": CATEGORY,
            "severity": "high",
            "result": "fail",
            "scored": true,
            "timestamp": timestamp(denied.last_time),
            "message": truncate(format!("{} admission requests denied; the latest: {}", denied.count, denied.last_message), MAX_MESSAGE),
            "properties": {"action": "Block", "deniedRequests": denied.count.to_string()},
        }));
    }
    if objects == 0 && denials.is_empty() {
        return None;
    }
    Some(json!({
        "apiVersion": API_VERSION,
        "kind": "PolicyReport",
        "metadata": {
            "name": REPORT_NAME,
            "namespace": namespace,
            "labels": {"app.kubernetes.io/managed-by": "portcullis"},
        },
        "scope": {"apiVersion": "v1", "kind": "Namespace", "name": namespace},
        "summary": summary.json(),
        "results": results,
    }))
}

/// The ClusterPolicyReport: per ContainerPolicy (`(name, action)`), how many live objects
/// violate it and how many requests it denied.
pub fn cluster_report(
    policies: &[(String, Action)],
    violations: &HashMap<String, i64>,
    denied: &HashMap<String, u64>,
    at: SystemTime,
) -> Value {
    let mut summary = Summary::default();
    let mut results = Vec::new();
    for (policy, action) in policies {
        let count = violations.get(policy).copied().unwrap_or_default();
        let denied = denied.get(policy).copied().unwrap_or_default();
        let outcome = if count == 0 {
            "pass"
        } else {
            result_of(*action)
        };
        match outcome {
            "pass" => summary.pass += 1,
            other => summary.count(other),
        }
        results.push(json!({
            "source": SOURCE,
            "policy": policy,
            "rule": "violations",
            "category": CATEGORY,
            "severity": severity_of(*action),
            "result": outcome,
            "scored": true,
            "timestamp": timestamp(at),
            "message": format!("{count} live objects violate ContainerPolicy {policy:?} ({}); {denied} admission requests denied", action_label(*action)),
            "resources": [{"apiVersion": "portcullis.dev/v1alpha1", "kind": "ContainerPolicy", "name": policy}],
            "properties": {"action": action_label(*action), "violations": count.to_string(), "deniedRequests": denied.to_string()},
        }));
    }
    json!({
        "apiVersion": API_VERSION,
        "kind": "ClusterPolicyReport",
        "metadata": {"name": REPORT_NAME, "labels": {"app.kubernetes.io/managed-by": "portcullis"}},
        "summary": summary.json(),
        "results": results,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::ledger::tests::{no_latest, pod, set};
    use portcullis_webhook::scan::ScanService;

    /// The published CRD's schema for `kind` (`config/reports/`).
    fn schema(file: &str) -> Value {
        let path = format!("{}/../config/reports/{file}", env!("CARGO_MANIFEST_DIR"));
        let crd: Value = serde_saphyr::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"].clone()
    }

    /// Checks `value` against an OpenAPI v3 schema as the API server would for these
    /// CRDs: types, enums, required fields, and no field the schema lacks (which the
    /// server would silently prune).
    fn check(schema: &Value, value: &Value, path: &str, errors: &mut Vec<String>) {
        if let Some(allowed) = schema.get("enum").and_then(Value::as_array)
            && !allowed.contains(value)
        {
            errors.push(format!("{path}: {value} not in {allowed:?}"));
        }
        let ok = match schema.get("type").and_then(Value::as_str) {
            Some("object") => value.is_object(),
            Some("array") => value.is_array(),
            Some("string") => value.is_string(),
            Some("integer") => value.is_i64() || value.is_u64(),
            Some("boolean") => value.is_boolean(),
            _ => true,
        };
        if !ok {
            errors.push(format!("{path}: {value} is not {}", schema["type"]));
            return;
        }
        if let Some(object) = value.as_object() {
            for required in schema
                .get("required")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                if !object.contains_key(required.as_str().unwrap_or_default()) {
                    errors.push(format!("{path}: {required} missing"));
                }
            }
            for (field, item) in object {
                let sub = schema
                    .get("properties")
                    .and_then(|p| p.get(field))
                    .or_else(|| schema.get("additionalProperties"));
                match sub {
                    Some(sub) => check(sub, item, &format!("{path}.{field}"), errors),
                    None if path == "metadata" || path.ends_with(".metadata") => {}
                    None => errors.push(format!("{path}.{field}: not in the schema")),
                }
            }
        }
        if let (Some(items), Some(list)) = (schema.get("items"), value.as_array()) {
            for (i, item) in list.iter().enumerate() {
                check(items, item, &format!("{path}[{i}]"), errors);
            }
        }
    }

    fn denial() -> Denials {
        Denials {
            count: 3,
            last_message: "Pod a/x: container \"app\" image nginx violates ContainerPolicy \"no-latest\": uses the latest tag".into(),
            last_time: SystemTime::now(),
        }
    }

    #[test]
    fn a_namespace_report_fits_the_published_schema_and_counts_results_and_denials() {
        let scans = ScanService::in_memory();
        let policies = set(&[
            ("no-latest", no_latest("Block")),
            ("other", no_latest("Warn")),
        ]);
        let mut ledger = Ledger::default();
        for (name, image) in [("bad", "nginx"), ("good", "nginx:1.25")] {
            let (key, running) = pod("a", name, image);
            ledger.upsert(key, running, &policies, &scans);
        }
        let denied = denial();
        let report =
            namespace_report(&ledger, "a", &[("no-latest", &denied)], SystemTime::now()).unwrap();
        let mut errors = Vec::new();
        check(
            &schema("wgpolicyk8s.io_policyreports.yaml"),
            &report,
            "",
            &mut errors,
        );
        assert!(errors.is_empty(), "{errors:#?}\n{report:#}");
        // bad: fails no-latest (Block) and warns other (Warn); good passes both; one denial row.
        assert_eq!(
            report["summary"],
            json!({"pass": 2, "fail": 2, "warn": 1, "error": 0, "skip": 0})
        );
        let results = report["results"].as_array().unwrap();
        assert_eq!(results.len(), 3);
        assert_eq!(results[0]["resources"][0]["name"], "bad");
        assert_eq!(results[0]["source"], "portcullis");
        assert_eq!(results[0]["result"], "fail");
        assert_eq!(results[1]["result"], "warn");
        assert_eq!(results[2]["rule"], "admission");
        assert_eq!(results[2]["properties"]["deniedRequests"], "3");
        assert!(namespace_report(&ledger, "elsewhere", &[], SystemTime::now()).is_none());
    }

    /// A namespace with more violating objects than a report lists: every one counted,
    /// the listed ones bounded, long messages cut — the object stays far below 1.5 MiB.
    #[test]
    fn a_large_namespace_report_stays_within_the_object_size_limit() {
        let scans = ScanService::in_memory();
        let policies = set(&[("no-latest", no_latest("Warn"))]);
        let mut ledger = Ledger::default();
        let long = format!("registry.example.com/{}/app", "x".repeat(180));
        for i in 0..(MAX_RESULTS + 50) {
            let (key, running) = pod("big", &format!("p{i}"), &long);
            ledger.upsert(key, running, &policies, &scans);
        }
        let report = namespace_report(&ledger, "big", &[], SystemTime::now()).unwrap();
        assert_eq!(report["summary"]["warn"], MAX_RESULTS + 50);
        assert_eq!(report["results"].as_array().unwrap().len(), MAX_RESULTS);
        let size = serde_json::to_vec(&report).unwrap().len();
        assert!(size < 1024 * 1024, "{size} bytes");
        let message = "é".repeat(MAX_MESSAGE);
        let cut_message = truncate(message, MAX_MESSAGE);
        assert!(cut_message.len() <= MAX_MESSAGE && cut_message.ends_with('…'));
    }

    #[test]
    fn the_cluster_report_fits_the_published_schema() {
        let policies = vec![
            ("no-latest".to_owned(), Action::Warn),
            ("clean".to_owned(), Action::Block),
        ];
        let report = cluster_report(
            &policies,
            &HashMap::from([("no-latest".to_owned(), 4)]),
            &HashMap::from([("clean".to_owned(), 2)]),
            SystemTime::now(),
        );
        let mut errors = Vec::new();
        check(
            &schema("wgpolicyk8s.io_clusterpolicyreports.yaml"),
            &report,
            "",
            &mut errors,
        );
        assert!(errors.is_empty(), "{errors:#?}\n{report:#}");
        assert_eq!(report["summary"]["warn"], 1);
        assert_eq!(report["summary"]["pass"], 1);
        assert_eq!(report["results"][0]["properties"]["violations"], "4");
        assert_eq!(report["results"][1]["properties"]["deniedRequests"], "2");
    }
}
