//! Engine tables: every rule family, matching, actions, messages.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use portcullis_crds::{ContainerPolicySpec, Severity};

use super::*;
use crate::policy::{CompiledIntegration, CompiledPolicy, compile};
use crate::policy::{NamespaceLabels, NamespaceView};
use crate::scan::{Finding, ScanReport, ScanStatus, VulnId};
use crate::workload::PodSpec;

const DIGEST: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

fn now() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000)
}

fn policy(name: &str, spec: &str) -> CompiledPolicy {
    let spec: ContainerPolicySpec =
        serde_json::from_str(spec).unwrap_or_else(|e| panic!("{spec}: {e}"));
    compile(name, &spec).unwrap_or_else(|e| panic!("{name}: {e:?}"))
}

fn set(policies: Vec<CompiledPolicy>) -> PolicySet {
    let namespaces = HashMap::from([
        (
            "team-a".to_owned(),
            NamespaceLabels::from([("env".to_owned(), "prod".to_owned())]),
        ),
        (
            "dev".to_owned(),
            NamespaceLabels::from([("env".to_owned(), "dev".to_owned())]),
        ),
    ]);
    PolicySet::new(
        policies,
        Vec::<CompiledIntegration>::new(),
        Arc::new(namespaces),
    )
}

/// Scan results keyed by the image as normalized (`docker.io/library/nginx:1.25`).
#[derive(Default)]
struct Scans(HashMap<String, ScanReport>);

impl Scans {
    fn with(mut self, image: &str, age: Duration, findings: &[(&str, Severity, bool)]) -> Self {
        let findings = findings.iter().map(|(id, severity, fixable)| Finding {
            id: VulnId::new(id),
            severity: *severity,
            fixable: *fixable,
        });
        self.0.insert(
            image.to_owned(),
            ScanReport::new(Some(now() - age), findings),
        );
        self
    }
}

impl ScanResults for Scans {
    fn lookup(&self, image: &ImageRef) -> ScanStatus {
        match self.0.get(&image.to_string()) {
            Some(report) => ScanStatus::Found(report.clone()),
            None => ScanStatus::Unavailable("the scanner has no result for this digest".into()),
        }
    }
}

fn decide_in(
    set: &PolicySet,
    kind: WorkloadKind,
    namespace: &str,
    pod: &str,
    scans: &Scans,
) -> Decision {
    let spec: PodSpec<'_> = serde_json::from_str(pod).unwrap_or_else(|e| panic!("{pod}: {e}"));
    decide(
        set,
        &Subject {
            kind,
            namespace,
            labels: NamespaceView::Snapshot,
            name: "web",
            spec: &spec,
        },
        scans,
        now(),
    )
}

/// The images whose scans a Pod in `team-a` needs, as its review lists them.
fn scans_needed_in(set: &PolicySet, pod: &str) -> Vec<String> {
    let spec: PodSpec<'_> = serde_json::from_str(pod).unwrap_or_else(|e| panic!("{pod}: {e}"));
    let review = Review::new(Subject {
        kind: WorkloadKind::Pod,
        namespace: "team-a",
        labels: NamespaceView::Snapshot,
        name: "web",
        spec: &spec,
    });
    review
        .scans_needed(set)
        .iter()
        .map(ToString::to_string)
        .collect()
}

fn rules(decision: &Decision) -> Vec<String> {
    decision
        .violations
        .iter()
        .map(|v| format!("{}:{}:{:?}", v.policy, v.rule, v.action))
        .collect()
}

fn container(image: &str) -> String {
    format!(r#"{{"containers":[{{"name":"app","image":"{image}"}}]}}"#)
}

#[test]
fn each_rule_family() {
    // (policy spec, pod spec, namespace, expected "policy:rule:Action" list)
    let cases: &[(&str, &str, &str, &[&str])] = &[
        (
            r#"{"rules":{"registries":{"allow":["ghcr.io/acme/**"]}}}"#,
            &container("ghcr.io/acme/api:v1"),
            "team-a",
            &[],
        ),
        (
            r#"{"rules":{"registries":{"allow":["ghcr.io/acme/**"]}}}"#,
            &container("ghcr.io/acmeevil/api:v1"),
            "team-a",
            &["p:registries.allow:Block"],
        ),
        (
            r#"{"rules":{"registries":{"allow":["myreg.io/**"]}}}"#,
            &container("myreg.io.evil.com/x:1"),
            "team-a",
            &["p:registries.allow:Block"],
        ),
        (
            r#"{"rules":{"registries":{"deny":["docker.io/**"]}}}"#,
            &container("nginx:1.25"),
            "team-a",
            &["p:registries.deny:Block"],
        ),
        (
            r#"{"rules":{"registries":{"deny":["docker.io/**"]}}}"#,
            &container("index.docker.io/library/nginx:1.25"),
            "team-a",
            &["p:registries.deny:Block"],
        ),
        (
            r#"{"rules":{"registries":{"deny":["docker.io/**"]}}}"#,
            &container("quay.io/x:1"),
            "team-a",
            &[],
        ),
        (
            r#"{"rules":{"namespaces":{"allow":["payments"]}}}"#,
            &container("nginx:1"),
            "team-a",
            &["p:namespaces.allow:Block"],
        ),
        (
            r#"{"rules":{"namespaces":{"allow":["payments","team-*"]}}}"#,
            &container("nginx:1"),
            "team-a",
            &[],
        ),
        (
            r#"{"rules":{"tags":{"denyLatest":true}}}"#,
            &container("nginx"),
            "team-a",
            &["p:tags.denyLatest:Block"],
        ),
        (
            r#"{"rules":{"tags":{"denyLatest":true}}}"#,
            &container("nginx:latest"),
            "team-a",
            &["p:tags.denyLatest:Block"],
        ),
        (
            r#"{"rules":{"tags":{"denyLatest":true}}}"#,
            &container(&format!("nginx@{DIGEST}")),
            "team-a",
            &[],
        ),
        (
            r#"{"rules":{"tags":{"denyLatest":true}}}"#,
            &container("nginx:1.25"),
            "team-a",
            &[],
        ),
        (
            r#"{"rules":{"tags":{"requireDigest":true}}}"#,
            &container("nginx:1.25"),
            "team-a",
            &["p:tags.requireDigest:Block"],
        ),
        (
            r#"{"rules":{"tags":{"requireDigest":true}}}"#,
            &container(&format!("nginx:1.25@{DIGEST}")),
            "team-a",
            &[],
        ),
        (
            r#"{"rules":{"workload":{"denyPrivileged":true}}}"#,
            r#"{"containers":[{"name":"a","image":"x.io/a","securityContext":{"privileged":true}}]}"#,
            "team-a",
            &["p:workload.denyPrivileged:Block"],
        ),
        (
            r#"{"rules":{"workload":{"denyPrivileged":true}}}"#,
            r#"{"containers":[{"name":"a","image":"x.io/a","securityContext":{"privileged":false}}]}"#,
            "team-a",
            &[],
        ),
        (
            r#"{"rules":{"workload":{"denyPrivilegeEscalation":true}}}"#,
            r#"{"containers":[{"name":"a","image":"x.io/a"}]}"#,
            "team-a",
            &["p:workload.denyPrivilegeEscalation:Block"],
        ),
        (
            r#"{"rules":{"workload":{"denyPrivilegeEscalation":true}}}"#,
            r#"{"containers":[{"name":"a","image":"x.io/a","securityContext":{"allowPrivilegeEscalation":false}}]}"#,
            "team-a",
            &[],
        ),
        (
            r#"{"rules":{"workload":{"requireRunAsNonRoot":true}}}"#,
            r#"{"containers":[{"name":"a","image":"x.io/a"}]}"#,
            "team-a",
            &["p:workload.requireRunAsNonRoot:Block"],
        ),
        (
            r#"{"rules":{"workload":{"requireRunAsNonRoot":true}}}"#,
            r#"{"securityContext":{"runAsNonRoot":true},"containers":[{"name":"a","image":"x.io/a"}]}"#,
            "team-a",
            &[],
        ),
        (
            r#"{"rules":{"workload":{"requireRunAsNonRoot":true}}}"#,
            r#"{"securityContext":{"runAsUser":1000},"containers":[{"name":"a","image":"x.io/a"}]}"#,
            "team-a",
            &[],
        ),
        (
            r#"{"rules":{"workload":{"requireRunAsNonRoot":true}}}"#,
            r#"{"securityContext":{"runAsNonRoot":true},"containers":[{"name":"a","image":"x.io/a","securityContext":{"runAsNonRoot":false}}]}"#,
            "team-a",
            &["p:workload.requireRunAsNonRoot:Block"],
        ),
        (
            r#"{"rules":{"workload":{"requireRunAsNonRoot":true}}}"#,
            r#"{"securityContext":{"runAsNonRoot":true},"containers":[{"name":"a","image":"x.io/a","securityContext":{"runAsUser":0}}]}"#,
            "team-a",
            &["p:workload.requireRunAsNonRoot:Block"],
        ),
        (
            r#"{"rules":{"workload":{"denyHostNamespaces":true}}}"#,
            r#"{"hostPID":true,"containers":[{"name":"a","image":"x.io/a"}]}"#,
            "team-a",
            &["p:workload.denyHostNamespaces:Block"],
        ),
        (
            r#"{"rules":{"workload":{"denyHostNamespaces":true}}}"#,
            r#"{"hostNetwork":false,"containers":[{"name":"a","image":"x.io/a"}]}"#,
            "team-a",
            &[],
        ),
        (
            r#"{"rules":{"workload":{"denyHostPath":true}}}"#,
            r#"{"volumes":[{"name":"h","hostPath":{"path":"/"}}],"containers":[{"name":"a","image":"x.io/a"}]}"#,
            "team-a",
            &["p:workload.denyHostPath:Block"],
        ),
        (
            r#"{"rules":{"workload":{"denyHostPath":true}}}"#,
            r#"{"volumes":[{"name":"e","emptyDir":{}}],"containers":[{"name":"a","image":"x.io/a"}]}"#,
            "team-a",
            &[],
        ),
        (
            r#"{"rules":{"workload":{"forbiddenCapabilities":["SYS_ADMIN"]}}}"#,
            r#"{"containers":[{"name":"a","image":"x.io/a","securityContext":{"capabilities":{"add":["CAP_SYS_ADMIN"]}}}]}"#,
            "team-a",
            &["p:workload.forbiddenCapabilities:Block"],
        ),
        (
            r#"{"rules":{"workload":{"forbiddenCapabilities":["SYS_ADMIN"]}}}"#,
            r#"{"containers":[{"name":"a","image":"x.io/a","securityContext":{"capabilities":{"add":["ALL"]}}}]}"#,
            "team-a",
            &["p:workload.forbiddenCapabilities:Block"],
        ),
        (
            r#"{"rules":{"workload":{"forbiddenCapabilities":["SYS_ADMIN"]}}}"#,
            r#"{"containers":[{"name":"a","image":"x.io/a","securityContext":{"capabilities":{"add":["NET_BIND_SERVICE"]}}}]}"#,
            "team-a",
            &[],
        ),
        (
            r#"{"rules":{"workload":{"requireReadOnlyRootFilesystem":true}}}"#,
            r#"{"containers":[{"name":"a","image":"x.io/a","securityContext":{"readOnlyRootFilesystem":true}}]}"#,
            "team-a",
            &[],
        ),
        (
            r#"{"rules":{"workload":{"requireReadOnlyRootFilesystem":true}}}"#,
            r#"{"containers":[{"name":"a","image":"x.io/a"}]}"#,
            "team-a",
            &["p:workload.requireReadOnlyRootFilesystem:Block"],
        ),
        // every image slot is checked: init, ephemeral, image volumes
        (
            r#"{"rules":{"registries":{"deny":["evil.io/**"]}}}"#,
            r#"{"initContainers":[{"name":"i","image":"evil.io/i"}],"ephemeralContainers":[{"name":"e","image":"evil.io/e"}],"volumes":[{"name":"v","image":{"reference":"evil.io/v:1"}}],"containers":[{"name":"a","image":"ok.io/a"}]}"#,
            "team-a",
            &[
                "p:registries.deny:Block",
                "p:registries.deny:Block",
                "p:registries.deny:Block",
            ],
        ),
        // matching: images, excludes, namespaces, selector
        (
            r#"{"match":{"images":["ghcr.io/acme/**"]},"rules":{"tags":{"requireDigest":true}}}"#,
            &container("nginx:1"),
            "team-a",
            &[],
        ),
        (
            r#"{"match":{"excludeImages":["nginx"]},"rules":{"tags":{"requireDigest":true}}}"#,
            &container("nginx:1"),
            "team-a",
            &[],
        ),
        (
            r#"{"match":{"namespaces":["prod-*"]},"rules":{"tags":{"requireDigest":true}}}"#,
            &container("nginx:1"),
            "team-a",
            &[],
        ),
        (
            r#"{"match":{"excludeNamespaces":["team-*"]},"rules":{"tags":{"requireDigest":true}}}"#,
            &container("nginx:1"),
            "team-a",
            &[],
        ),
        (
            r#"{"match":{"namespaceSelector":{"matchLabels":{"env":"prod"}}},"rules":{"tags":{"requireDigest":true}}}"#,
            &container("nginx:1"),
            "team-a",
            &["p:tags.requireDigest:Block"],
        ),
        (
            r#"{"match":{"namespaceSelector":{"matchLabels":{"env":"prod"}}},"rules":{"tags":{"requireDigest":true}}}"#,
            &container("nginx:1"),
            "dev",
            &[],
        ),
        (
            r#"{"match":{"namespaceSelector":{"matchLabels":{"kubernetes.io/metadata.name":"unknown-ns"}}},"rules":{"tags":{"requireDigest":true}}}"#,
            &container("nginx:1"),
            "unknown-ns",
            &["p:tags.requireDigest:Block"],
        ),
        (
            r#"{"match":{"kinds":["Deployment"]},"rules":{"tags":{"requireDigest":true}}}"#,
            &container("nginx:1"),
            "team-a",
            &[],
        ),
        // pod-level rules need at least one matched image when images are filtered
        (
            r#"{"match":{"images":["ghcr.io/**"]},"rules":{"workload":{"denyHostNamespaces":true}}}"#,
            r#"{"hostNetwork":true,"containers":[{"name":"a","image":"nginx"}]}"#,
            "team-a",
            &[],
        ),
        // a reference that does not parse violates every policy matching the namespace
        (
            r#"{"match":{"images":["ghcr.io/**"]}}"#,
            &container("NGINX"),
            "team-a",
            &["p:image:Block"],
        ),
        (
            r#"{"action":"Warn"}"#,
            &container(""),
            "team-a",
            &["p:image:Warn"],
        ),
        (
            r#"{"match":{"namespaces":["other"]}}"#,
            &container("NGINX"),
            "team-a",
            &[],
        ),
        // actions
        (
            r#"{"action":"Warn","rules":{"tags":{"denyLatest":true}}}"#,
            &container("nginx"),
            "team-a",
            &["p:tags.denyLatest:Warn"],
        ),
        (
            r#"{"action":"Audit","rules":{"tags":{"denyLatest":true}}}"#,
            &container("nginx"),
            "team-a",
            &["p:tags.denyLatest:Audit"],
        ),
    ];
    for (spec, pod, namespace, want) in cases {
        let set = set(vec![policy("p", spec)]);
        let got = rules(&decide_in(
            &set,
            WorkloadKind::Pod,
            namespace,
            pod,
            &Scans::default(),
        ));
        assert_eq!(
            got, *want,
            "policy {spec}\npod {pod}\nnamespace {namespace}"
        );
    }
}

#[test]
fn vulnerability_rules() {
    use Severity::*;
    let findings: &[(&str, Severity, bool)] = &[
        ("CVE-2024-1", Critical, true),
        ("CVE-2024-2", Critical, false),
        ("CVE-2024-3", High, true),
        ("CVE-2021-44228", Low, false),
        ("cve-2024-1", Medium, false), // the same ID again: counts once, at its highest severity
    ];
    let scans = Scans::default().with("ghcr.io/acme/api:v1", Duration::from_secs(3600), findings);
    let pod = container("ghcr.io/acme/api:v1");
    let cases: &[(&str, &[&str])] = &[
        (
            r#"{"maxCount":{"critical":0}}"#,
            &["2 critical vulnerabilities (CVE-2024-1, CVE-2024-2) exceed maxCount.critical 0"],
        ),
        (r#"{"maxCount":{"critical":2,"high":1}}"#, &[]),
        (
            r#"{"maxCount":{"critical":0},"fixableOnly":true}"#,
            &["1 critical fixable vulnerability (CVE-2024-1) exceeds maxCount.critical 0"],
        ),
        (
            r#"{"maxCount":{"critical":0},"ignore":["CVE-2024-2","CVE-2024-1"]}"#,
            &[],
        ),
        (
            r#"{"maxSeverity":"Medium"}"#,
            &[
                "2 critical vulnerabilities (CVE-2024-1, CVE-2024-2) exceed maxSeverity Critical",
                "1 high vulnerability (CVE-2024-3) exceeds maxSeverity Medium",
            ],
        ),
        (r#"{"maxSeverity":"Critical"}"#, &[]),
        (
            r#"{"deny":["CVE-2021-44228"]}"#,
            &["denied vulnerability present: CVE-2021-44228"],
        ),
        (
            r#"{"deny":["CVE-2021-44228"],"fixableOnly":true}"#,
            &["denied vulnerability present: CVE-2021-44228"],
        ),
        (
            r#"{"maxScanAge":"30m"}"#,
            &[
                "no usable scan result (the scan result is 1h old, older than maxScanAge 30m); rules.vulnerabilities.unscanned is Block",
            ],
        ),
        (
            r#"{"maxScanAge":"2h","maxCount":{"high":0}}"#,
            &["1 high vulnerability (CVE-2024-3) exceeds maxCount.high 0"],
        ),
    ];
    let spec = |rule: &str| format!(r#"{{"rules":{{"vulnerabilities":{rule}}}}}"#);
    let details = |decision: &Decision, policy: &str| -> Vec<String> {
        let of_policy = decision.violations.iter().filter(|v| &*v.policy == policy);
        of_policy.map(|v| v.detail.to_string()).collect()
    };
    for (rule, want) in cases {
        let set = set(vec![policy("p", &spec(rule))]);
        let decision = decide_in(&set, WorkloadKind::Pod, "team-a", &pod, &scans);
        let want: Vec<String> = want
            .iter()
            .map(|w| w.replace("exceed maxSeverity Critical", "exceed maxSeverity Medium"))
            .collect();
        assert_eq!(details(&decision, "p"), want, "{rule}");
    }
    // Evaluated together, the policies share the image's scan result and counts: each
    // still finds what it finds alone (fixableOnly, ignore and deny included), whichever
    // policy is evaluated first (policies go by name).
    for first in 0..cases.len() {
        let named = |i: usize| format!("p{:02}", if i == first { 0 } else { i + 1 });
        let all = set(cases
            .iter()
            .enumerate()
            .map(|(i, (rule, _))| policy(&named(i), &spec(rule)))
            .collect());
        let together = decide_in(&all, WorkloadKind::Pod, "team-a", &pod, &scans);
        for (i, (rule, _)) in cases.iter().enumerate() {
            let alone = set(vec![policy(&named(i), &spec(rule))]);
            let alone = decide_in(&alone, WorkloadKind::Pod, "team-a", &pod, &scans);
            let name = named(i);
            assert_eq!(details(&together, &name), details(&alone, &name), "{rule}");
        }
    }
}

#[test]
fn unscanned_images_take_the_unscanned_action() {
    let pod = container("ghcr.io/acme/new:v1");
    let cases: &[(&str, &[&str])] = &[
        (
            r#"{"rules":{"vulnerabilities":{"maxCount":{"critical":0}}}}"#,
            &["p:vulnerabilities.unscanned:Block"],
        ),
        (
            r#"{"action":"Audit","rules":{"vulnerabilities":{}}}"#,
            &["p:vulnerabilities.unscanned:Audit"],
        ),
        (
            r#"{"rules":{"vulnerabilities":{"unscanned":"Warn"}}}"#,
            &["p:vulnerabilities.unscanned:Warn"],
        ),
        (
            r#"{"rules":{"vulnerabilities":{"unscanned":"Allow"}}}"#,
            &[],
        ),
    ];
    for (spec, want) in cases {
        let decision = decide_in(
            &set(vec![policy("p", spec)]),
            WorkloadKind::Pod,
            "team-a",
            &pod,
            &Scans::default(),
        );
        assert_eq!(rules(&decision), *want, "{spec}");
        if let Some(v) = decision.violations.first() {
            assert!(
                v.detail
                    .contains("the scanner has no result for this digest"),
                "{}",
                v.detail
            );
        }
    }
}

#[test]
fn deny_message_has_the_documented_format() {
    let set = set(vec![policy(
        "prod-images",
        r#"{"rules":{"vulnerabilities":{"maxCount":{"critical":0}}}}"#,
    )]);
    let scans = Scans::default().with(
        "registry.example.com:5000/acme/api:v1.2.3",
        Duration::ZERO,
        &[
            ("CVE-2024-1", Severity::Critical, false),
            ("CVE-2024-2", Severity::Critical, false),
        ],
    );
    let spec: PodSpec<'_> = serde_json::from_str(
        r#"{"containers":[{"name":"api","image":"registry.example.com:5000/acme/api:v1.2.3"}]}"#,
    )
    .unwrap();
    let subject = Subject {
        kind: WorkloadKind::Deployment,
        namespace: "team-a",
        labels: NamespaceView::Snapshot,
        name: "api",
        spec: &spec,
    };
    let decision = decide(&set, &subject, &scans, now());
    assert!(!decision.allowed());
    assert_eq!(
        decision.deny_message().unwrap(),
        "Deployment team-a/api: container \"api\" image registry.example.com:5000/acme/api:v1.2.3 violates \
         ContainerPolicy \"prod-images\": 2 critical vulnerabilities (CVE-2024-1, CVE-2024-2) exceed maxCount.critical 0"
    );
}

#[test]
fn policies_combine_block_warn_audit_in_a_fixed_order() {
    let set = set(vec![
        policy(
            "z-audit",
            r#"{"action":"Audit","rules":{"tags":{"denyLatest":true}}}"#,
        ),
        policy(
            "a-warn",
            r#"{"action":"Warn","rules":{"tags":{"requireDigest":true}}}"#,
        ),
        policy(
            "m-block",
            r#"{"rules":{"registries":{"deny":["docker.io/**"]}}}"#,
        ),
    ]);
    let pod = r#"{"initContainers":[{"name":"init","image":"busybox"}],"containers":[{"name":"app","image":"nginx"}]}"#;
    let decision = decide_in(&set, WorkloadKind::Pod, "team-a", pod, &Scans::default());
    assert_eq!(
        rules(&decision),
        [
            "a-warn:tags.requireDigest:Warn",
            "a-warn:tags.requireDigest:Warn",
            "m-block:registries.deny:Block",
            "m-block:registries.deny:Block",
            "z-audit:tags.denyLatest:Audit",
            "z-audit:tags.denyLatest:Audit"
        ]
    );
    assert!(!decision.allowed());
    let message = decision.deny_message().unwrap();
    assert!(message.starts_with("Pod team-a/web: init container \"init\" image busybox violates ContainerPolicy \"m-block\""), "{message}");
    assert!(
        message.contains("; container \"app\" image nginx violates ContainerPolicy \"m-block\""),
        "{message}"
    );
    assert_eq!(decision.warnings().len(), 2);
    assert_eq!(decision.audits().len(), 2);

    let only_warn = decide_in(
        &set,
        WorkloadKind::Pod,
        "team-a",
        r#"{"containers":[{"name":"a","image":"ghcr.io/a:1"}]}"#,
        &Scans::default(),
    );
    assert!(only_warn.allowed());
    assert_eq!(only_warn.deny_message(), None);
    assert_eq!(
        only_warn.warnings(),
        [
            "Pod team-a/web: container \"a\" image ghcr.io/a:1 violates ContainerPolicy \"a-warn\": image is not pinned by digest (rules.tags.requireDigest)"
        ]
    );
}

/// The answer is sized by `warnings_len` up front; it must cover the warnings as the
/// answer writes them (JSON strings, their quotes escaped), or the answer grows.
#[test]
fn warnings_len_covers_the_warnings_as_json() {
    let set = set(vec![
        policy(
            "warn-digest",
            r#"{"action":"Warn","rules":{"tags":{"requireDigest":true}}}"#,
        ),
        policy(
            "warn-latest",
            r#"{"action":"Warn","rules":{"tags":{"denyLatest":true}}}"#,
        ),
    ]);
    let containers: Vec<String> = (0..4)
        .map(|i| format!(r#"{{"name":"c{i}","image":"ghcr.io/acme/app-{i}"}}"#))
        .collect();
    let pod = format!(r#"{{"containers":[{}]}}"#, containers.join(","));
    let decision = decide_in(&set, WorkloadKind::Pod, "team-a", &pod, &Scans::default());
    let warnings = decision.warnings();
    assert_eq!(warnings.len(), 8);
    // `[` and `]` are the answer's own; each line's quotes, comma and escapes are its.
    let json = serde_json::to_string(&warnings).unwrap();
    assert!(
        json.len() <= decision.warnings_len() + 2,
        "{} > {} + 2",
        json.len(),
        decision.warnings_len()
    );
}

#[test]
fn messages_are_capped_and_images_escaped() {
    let set = set(vec![policy(
        "p",
        r#"{"rules":{"tags":{"requireDigest":true}}}"#,
    )]);
    let containers: Vec<String> = (0..200)
        .map(|i| format!(r#"{{"name":"c{i}","image":"ghcr.io/acme/image-number-{i}:v1"}}"#))
        .collect();
    let pod = format!(r#"{{"containers":[{}]}}"#, containers.join(","));
    let message = decide_in(&set, WorkloadKind::Pod, "team-a", &pod, &Scans::default())
        .deny_message()
        .unwrap();
    assert!(message.len() <= 4096, "{}", message.len());
    assert!(message.ends_with("more violations"), "{message}");

    let long = format!("ghcr.io/{}", "a".repeat(4096));
    let nasty = [long.as_str(), "nginx\u{1b}[31m", "evil\"quote"];
    for image in nasty {
        let pod = serde_json::json!({"containers":[{"name":"a","image":image}]}).to_string();
        let decision = decide_in(&set, WorkloadKind::Pod, "team-a", &pod, &Scans::default());
        let message = decision.deny_message().unwrap();
        assert!(message.contains("does not parse"), "{message}");
        assert!(message.len() < 600, "{}", message.len());
        assert!(!message.contains('\u{1b}'), "{message}");
    }
}

#[test]
fn bad_references_each_say_why() {
    let set = set(vec![policy("p", "{}")]);
    let cases = [
        ("NGINX", "repository name must be lowercase"),
        (
            "registry.example.com:5000/Acme/api",
            "repository name must be lowercase",
        ),
        ("nginx@sha256:1234", "invalid digest"),
        ("nginx:1.25@sha256:0123", "invalid digest"),
        ("", "is empty"),
        ("nginx\t1", "control character"),
        ("host:port/x", "invalid registry host"),
    ];
    for (image, why) in cases {
        let pod = serde_json::json!({"containers":[{"name":"a","image":image}]}).to_string();
        let decision = decide_in(&set, WorkloadKind::Pod, "team-a", &pod, &Scans::default());
        let message = decision.deny_message().unwrap_or_default();
        assert!(message.contains(why), "{image:?}: {message}");
    }
    let ok = decide_in(
        &set,
        WorkloadKind::Pod,
        "team-a",
        &container(&format!("nginx:1.25@{DIGEST}")),
        &Scans::default(),
    );
    assert!(ok.allowed() && ok.violations.is_empty());
}

#[test]
fn scans_needed_lists_each_read_image_once_in_pod_spec_order() {
    let set = set(vec![
        policy(
            "scanned",
            r#"{"match":{"images":["ghcr.io/acme/**"]},"rules":{"vulnerabilities":{"maxSeverity":"High"}}}"#,
        ),
        policy("tags", r#"{"rules":{"tags":{"denyLatest":true}}}"#),
    ]);
    // Few images (compared one by one) and many (hashed): duplicates, an image no
    // vulnerability rule reads and one that does not parse, in both.
    for copies in [1, 8] {
        let mut images = Vec::new();
        for round in 0..copies {
            images.push(format!("ghcr.io/acme/api:v{round}"));
            images.push("ghcr.io/acme/db:1".to_owned());
            images.push("docker.io/library/nginx:1.25".to_owned());
            images.push("Bad Image".to_owned());
            images.push("ghcr.io/acme/api:v0".to_owned());
        }
        let containers: Vec<String> = images
            .iter()
            .enumerate()
            .map(|(i, image)| format!(r#"{{"name":"c{i}","image":"{image}"}}"#))
            .collect();
        let pod = format!(r#"{{"containers":[{}]}}"#, containers.join(","));
        let needed = scans_needed_in(&set, &pod);
        let mut expected = vec![
            "ghcr.io/acme/api:v0".to_owned(),
            "ghcr.io/acme/db:1".to_owned(),
        ];
        expected.extend((1..copies).map(|round| format!("ghcr.io/acme/api:v{round}")));
        assert_eq!(needed, expected, "{} images", images.len());
    }
}

#[test]
fn policies_sharing_an_image_scope_or_not_each_match_their_own_images() {
    // Two policies with one scope, two whose scopes differ only in excludeImages, and
    // more distinct scopes than a review keeps (the rest are worked out per policy).
    let latest = r#""rules":{"tags":{"denyLatest":true}}"#;
    let teams = KEPT_SCOPES + 4;
    let mut policies = vec![
        policy(
            "b-1",
            &format!(r#"{{"match":{{"images":["reg.io/**"]}},{latest}}}"#),
        ),
        policy(
            "b-2",
            &format!(
                r#"{{"match":{{"images":["reg.io/**"],"excludeImages":["reg.io/team-3/**"]}},{latest}}}"#
            ),
        ),
    ];
    for name in ["c-1", "c-2"] {
        policies.push(policy(
            name,
            &format!(
                r#"{{"match":{{"images":["reg.io/team-1/**","reg.io/team-2/**"]}},{latest}}}"#
            ),
        ));
    }
    for team in 0..teams {
        policies.push(policy(
            &format!("z-{team:02}"),
            &format!(r#"{{"match":{{"images":["reg.io/team-{team}/**"]}},{latest}}}"#),
        ));
    }
    policies.push(policy(
        "z-vulnerabilities",
        r#"{"match":{"images":["reg.io/team-5/**"]},"rules":{"vulnerabilities":{"maxSeverity":"High"}}}"#,
    ));
    let set = set(policies);
    let containers: Vec<String> = (0..teams)
        .map(|team| format!(r#"{{"name":"c{team}","image":"reg.io/team-{team}/app:latest"}}"#))
        .collect();
    let pod = format!(r#"{{"containers":[{}]}}"#, containers.join(","));

    let decision = decide_in(&set, WorkloadKind::Pod, "team-a", &pod, &Scans::default());
    let mut images_by_policy: HashMap<&str, Vec<&str>> = HashMap::new();
    for v in decision
        .violations
        .iter()
        .filter(|v| v.rule == "tags.denyLatest")
    {
        let image = v.target.rsplit(' ').next().unwrap_or_default();
        images_by_policy.entry(&v.policy).or_default().push(image);
    }
    let team = |team: usize| format!("reg.io/team-{team}/app:latest");
    let all: Vec<String> = (0..teams).map(team).collect();
    assert_eq!(images_by_policy["b-1"], all);
    let without_3: Vec<&String> = all.iter().filter(|i| !i.contains("team-3/")).collect();
    assert_eq!(images_by_policy["b-2"], without_3);
    for name in ["c-1", "c-2"] {
        assert_eq!(images_by_policy[name], [team(1), team(2)], "{name}");
    }
    for t in 0..teams {
        assert_eq!(images_by_policy[format!("z-{t:02}").as_str()], [team(t)]);
    }
    assert_eq!(images_by_policy.len(), 4 + teams);

    assert_eq!(scans_needed_in(&set, &pod), [team(5)]);
}

#[test]
fn a_message_lists_the_first_five_ids_then_how_many_more() {
    let set = set(vec![policy(
        "p",
        r#"{"rules":{"vulnerabilities":{"maxCount":{"critical":0}}}}"#,
    )]);
    for (count, ids) in [
        (1, "CVE-2024-1"),
        (
            5,
            "CVE-2024-1, CVE-2024-2, CVE-2024-3, CVE-2024-4, CVE-2024-5",
        ),
        (
            7,
            "CVE-2024-1, CVE-2024-2, CVE-2024-3, CVE-2024-4, CVE-2024-5 and 2 more",
        ),
    ] {
        let names: Vec<String> = (1..=count).map(|i| format!("CVE-2024-{i}")).collect();
        let findings: Vec<(&str, Severity, bool)> = names
            .iter()
            .map(|id| (id.as_str(), Severity::Critical, false))
            .collect();
        let scans = Scans::default().with("ghcr.io/acme/api:v1", Duration::ZERO, &findings);
        let decision = decide_in(
            &set,
            WorkloadKind::Pod,
            "team-a",
            &container("ghcr.io/acme/api:v1"),
            &scans,
        );
        let detail = &decision.violations[0].detail;
        assert!(detail.contains(&format!("({ids})")), "{count}: {detail}");
    }
}
