//! The CRDs against a real API server: installed the way the README says, the samples
//! validate, the printer columns are the ones `kubectl get` shows, and the schema
//! rejects what it can with a message naming the field.

#![allow(clippy::unwrap_used)] // in tests a panic is the failure report

mod support;

use support::{policy, shared_cluster};

#[test]
fn crds_install_as_the_readme_says_and_samples_validate() {
    let Some(cluster) = shared_cluster() else {
        return;
    };
    cluster.install_crds();
    cluster.kubectl_ok(
        &["apply", "--dry-run=server", "-f", "config/samples/"],
        None,
    );
    // The printer columns; what they print with a running Portcullis: status.rs.
    let raw = cluster.kubectl_ok(
        &[
            "get",
            "crd",
            "containerpolicies.portcullis.dev",
            "-o",
            "jsonpath={.spec.versions[0].additionalPrinterColumns[*].name}",
        ],
        None,
    );
    assert_eq!(raw, "Action Ready Violations Reason Age");
    let raw = cluster.kubectl_ok(
        &[
            "get",
            "crd",
            "registryintegrations.portcullis.dev",
            "-o",
            "jsonpath={.spec.versions[0].additionalPrinterColumns[*].name}",
        ],
        None,
    );
    assert_eq!(raw, "Ready Reachable Last Contact Age");
    let raw = cluster.kubectl_ok(
        &[
            "get",
            "crd",
            "auditmonitors.portcullis.dev",
            "-o",
            "jsonpath={.spec.versions[0].additionalPrinterColumns[*].name}",
        ],
        None,
    );
    assert_eq!(raw, "Ready Findings Sink Age");
    // Short names work as the docs use them.
    for short in ["cpol", "regint", "amon"] {
        let out = cluster.kubectl(&["get", short], None);
        assert!(
            out.status.success(),
            "kubectl get {short}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn the_schema_rejects_bad_values_naming_the_field() {
    let Some(cluster) = shared_cluster() else {
        return;
    };
    cluster.install_crds();
    for (spec, wanted) in [
        ("{action: Stop}", "spec.action: Unsupported value: \"Stop\""),
        (
            "{rules: {vulnerabilities: {maxCount: {critical: -1}}}}",
            "spec.rules.vulnerabilities.maxCount.critical in body should be greater than or equal to 0",
        ),
        (
            "{rules: {vulnerabilities: {maxSeverity: Severe}}}",
            "spec.rules.vulnerabilities.maxSeverity: Unsupported value: \"Severe\"",
        ),
        // Patterns generated from the types: durations, capabilities, kinds, globs.
        (
            "{rules: {vulnerabilities: {maxScanAge: 7d}}}",
            "spec.rules.vulnerabilities.maxScanAge in body should match",
        ),
        (
            "{rules: {workload: {forbiddenCapabilities: [SYS_ADMN]}}}",
            "spec.rules.workload.forbiddenCapabilities in body should match",
        ),
        (
            "{match: {kinds: [Service]}}",
            "spec.match.kinds in body should match",
        ),
        (
            "{rules: {registries: {deny: [\"docker.io/nginx@sha256\"]}}}",
            "spec.rules.registries.deny in body should match",
        ),
    ] {
        let out = cluster.kubectl(
            &["apply", "--dry-run=server", "-f", "-"],
            Some(&policy("e2e-schema", spec)),
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "the API server accepted {spec}");
        assert!(stderr.contains(wanted), "{spec}: {stderr}");
    }
    // What the patterns allow: any case and the CAP_ prefix, Go durations.
    cluster.kubectl_ok(
        &["apply", "--dry-run=server", "-f", "-"],
        Some(&policy(
            "e2e-schema",
            "{rules: {workload: {forbiddenCapabilities: [cap_sys_admin, NET_RAW]}, vulnerabilities: {maxScanAge: 1h30m}}}",
        )),
    );
}
