//! `portcullis check` as CI runs it: golden reports, the JSON schema, exit codes, bad
//! input, and agreement with the webhook on the captured AdmissionReviews.

#![allow(clippy::unwrap_used)] // in tests a panic is the failure report

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::SystemTime;

use portcullis::check::check;
use portcullis::cli::{CheckArgs, OutputFormat};
use portcullis_webhook::admission;
use portcullis_webhook::scan::NoScanResults;
use serde_json::Value;

fn testdata() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/check")
}

/// Runs the binary in `tests/check` (so the paths it prints are stable).
fn portcullis(args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .arg("check")
        .args(args)
        .current_dir(testdata())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut pipe = child.stdin.take().unwrap();
    pipe.write_all(stdin.unwrap_or_default().as_bytes())
        .unwrap();
    drop(pipe);
    child.wait_with_output().unwrap()
}

/// Compares with `tests/check/<name>`; `PORTCULLIS_BLESS=1` rewrites it (review the diff).
fn golden(name: &str, actual: &str) {
    let path = testdata().join(name);
    if std::env::var_os("PORTCULLIS_BLESS").is_some() {
        std::fs::write(&path, actual).unwrap();
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        expected == actual,
        "{name} differs; expected:\n{expected}\nactual:\n{actual}"
    );
}

const ARGS: &[&str] = &["-p", "policies", "--scan-results", "scans", "manifests"];

#[test]
fn golden_text_report_and_exit_code() {
    let out = portcullis(ARGS, None);
    assert_eq!(
        out.status.code(),
        Some(1),
        "something is blocked: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    golden("expected.txt", &String::from_utf8(out.stdout).unwrap());
}

#[test]
fn golden_json_report_follows_its_schema() {
    let out = portcullis(&[ARGS, &["-o", "json"]].concat(), None);
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8(out.stdout).unwrap();
    golden("expected.json", &text);

    let report: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(report["apiVersion"], "portcullis.dev/check/v1");
    let summary = &report["summary"];
    for key in ["objects", "denied", "warned", "passed", "skipped"] {
        assert!(summary[key].is_u64(), "summary.{key}");
    }
    let objects = report["objects"].as_array().unwrap();
    assert_eq!(objects.len() as u64, summary["objects"].as_u64().unwrap());
    for o in objects {
        for key in ["source", "kind", "namespace", "name", "verdict"] {
            assert!(o[key].is_string(), "objects[].{key} in {o}");
        }
        assert!(["deny", "warn", "pass"].contains(&o["verdict"].as_str().unwrap()));
        assert_eq!(
            o["verdict"] == "deny",
            o["message"].is_string(),
            "message exactly when denied: {o}"
        );
        for v in o["violations"].as_array().unwrap() {
            for key in ["policy", "rule", "action", "target", "detail"] {
                assert!(v[key].is_string(), "violations[].{key} in {v}");
            }
            assert!(["Block", "Warn", "Audit"].contains(&v["action"].as_str().unwrap()));
        }
    }
    for s in report["skipped"].as_array().unwrap() {
        for key in ["source", "kind", "name", "reason"] {
            assert!(s[key].is_string(), "skipped[].{key}");
        }
    }
}

#[test]
fn reads_standard_input_and_passes_clean_manifests() {
    let manifest = "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web}\nspec:\n  template:\n    spec:\n      containers: [{name: web, image: ghcr.io/acme/worker@sha256:1111111111111111111111111111111111111111111111111111111111111111}]\n";
    let out = portcullis(
        &[
            "-p",
            "policies",
            "--scan-results",
            "scans",
            "-n",
            "shop",
            "-",
        ],
        Some(manifest),
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(
        stdout.starts_with("PASS  Deployment shop/web  (-#1)"),
        "{stdout}"
    );

    // Without the scan results the same image is unscanned: Block, said plainly.
    let out = portcullis(&["-p", "policies", "-n", "shop", "-"], Some(manifest));
    assert_eq!(out.status.code(), Some(1));
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(
        stdout.contains("no usable scan result (no --scan-results report matches this image)"),
        "{stdout}"
    );
}

#[test]
fn bad_input_exits_2_and_says_what_is_wrong() {
    let tmp = tempfile::tempdir().unwrap();
    let bad_policy = tmp.path().join("bad-policy.yaml");
    std::fs::write(
        &bad_policy,
        "apiVersion: portcullis.dev/v1alpha1\nkind: ContainerPolicy\nmetadata: {name: bad}\nspec: {rules: {vulnerabilities: {maxCount: {critical: -1}}}}\n",
    )
    .unwrap();
    let broken_yaml = tmp.path().join("broken.yaml");
    std::fs::write(
        &broken_yaml,
        "apiVersion: v1\nkind: Pod\nmetadata: {name: x\n",
    )
    .unwrap();
    let bad_scan = tmp.path().join("scan.json");
    std::fs::write(&bad_scan, r#"{"SchemaVersion": 1}"#).unwrap();
    let path = |p: &Path| p.to_str().unwrap().to_owned();

    let cases: Vec<(Vec<String>, Option<&str>, &str)> = vec![
        (
            vec!["-p".into(), path(&bad_policy), "manifests".into()],
            None,
            "spec.rules.vulnerabilities.maxCount.critical: must be >= 0",
        ),
        (
            vec!["-p".into(), "policies".into(), path(&broken_yaml)],
            None,
            "broken.yaml: invalid YAML",
        ),
        (
            vec!["-p".into(), "policies".into(), "no-such-dir".into()],
            None,
            "no-such-dir: No such file or directory",
        ),
        (
            vec![
                "-p".into(),
                "policies".into(),
                "--scan-results".into(),
                path(&bad_scan),
                "manifests".into(),
            ],
            None,
            "SchemaVersion 1 is not supported",
        ),
        (
            vec!["-p".into(), "policies".into(), "-".into()],
            Some(""),
            "the manifests hold no objects",
        ),
        (
            vec!["-p".into(), "policies".into()],
            None,
            "no manifests given",
        ),
    ];
    for (args, stdin, want) in cases {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = portcullis(&args, stdin);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(
            stderr.contains(want),
            "{args:?}: {stderr:?} should contain {want:?}"
        );
        assert!(out.stdout.is_empty(), "no verdicts on bad input");
    }

    // Invalid YAML is located by line.
    let out = portcullis(&["-p", "policies", broken_yaml.to_str().unwrap()], None);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("line"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Unknown kinds are listed as skipped, not errors.
    let out = portcullis(
        &["-p", "policies", "-"],
        Some("apiVersion: example.com/v1\nkind: Widget\nmetadata: {name: w}\n"),
    );
    assert_eq!(out.status.code(), Some(0));
    assert!(
        String::from_utf8(out.stdout)
            .unwrap()
            .contains("SKIP  Widget w  (-#1): kind Widget is not evaluated")
    );
}

/// The same objects, through the webhook (the captured AdmissionReviews) and through
/// `check` (their `request.object` as manifests), give the same violations.
#[test]
fn verdicts_agree_with_the_webhook_on_the_fixtures() {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/fixtures/admission");
    let manifests = tempfile::tempdir().unwrap();
    let policies = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/samples");
    let loaded = portcullis::manifests::build_set(
        portcullis::manifests::find_files(&policies)
            .unwrap()
            .iter()
            .flat_map(|f| portcullis::manifests::read_file(f).unwrap())
            .collect::<Vec<_>>()
            .iter(),
        None,
    );
    assert!(loaded.problems.is_empty(), "{:?}", loaded.problems);
    let now = SystemTime::now();

    let mut compared = 0;
    for entry in std::fs::read_dir(&fixtures).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "json") {
            continue;
        }
        let body = std::fs::read(&path).unwrap();
        let request = admission::parse(&body).unwrap();
        let webhook = admission::evaluate(&request, &loaded.set, &NoScanResults, now);
        let admission::Verdict::Decided(webhook) = webhook else {
            continue;
        };

        let review: Value = serde_json::from_slice(&body).unwrap();
        let manifest = manifests.path().join(path.file_name().unwrap());
        std::fs::write(&manifest, review["request"]["object"].to_string()).unwrap();
        let args = CheckArgs {
            policies: vec![policies.clone()],
            inputs: vec![manifest],
            // Some objects carry no namespace; the API server gives it in the request.
            namespace: review["request"]["namespace"].as_str().unwrap().to_owned(),
            scan_results: vec![],
            output: OutputFormat::Json,
        };
        let report = check(&args, now).unwrap();
        let ours = &report.objects[0];
        // The reason an image is unscanned names each side's scan source; all else must match.
        let describe = |policy: &str, rule: &str, target: &str, detail: &str| {
            let detail = match detail.split_once("no usable scan result (") {
                Some((_, rest)) => format!(
                    "no usable scan result ({}",
                    rest.split_once(')').map_or("", |(_, after)| after)
                ),
                None => detail.to_owned(),
            };
            format!("{policy}/{rule}: {target}: {detail}")
        };
        let from_check: Vec<String> = ours
            .violations
            .iter()
            .map(|v| describe(&v.policy, v.rule, &v.target, &v.detail))
            .collect();
        let from_webhook: Vec<String> = webhook
            .violations
            .iter()
            .map(|v| describe(&v.policy, v.rule, &v.target, &v.detail))
            .collect();
        assert_eq!(from_check, from_webhook, "{}", path.display());
        assert_eq!(
            ours.verdict == "deny",
            !webhook.allowed(),
            "{}",
            path.display()
        );
        let first_line = |m: Option<String>| {
            m.map(|m| m.split(" violates ").next().unwrap_or_default().to_owned())
        };
        assert_eq!(
            first_line(ours.message.clone()),
            first_line(webhook.deny_message()),
            "{}",
            path.display()
        );
        compared += 1;
    }
    assert!(compared >= 15, "only {compared} fixtures compared");
}

/// A Pod is checked as the mutating webhook would leave it (pinned from the digest a
/// report names, defaults filled), and the report says what changed; a Deployment's
/// template is never mutated.
#[test]
fn pods_are_checked_as_mutated_and_the_changes_are_reported() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("pin.yaml"),
        "apiVersion: portcullis.dev/v1alpha1\nkind: ContainerPolicy\nmetadata: {name: pin}\nspec:\n  match: {images: [\"ghcr.io/acme/**\"]}\n  mutate: {pinDigests: true, securityDefaults: {allowPrivilegeEscalation: false}}\n  rules:\n    tags: {requireDigest: true}\n    workload: {denyPrivilegeEscalation: true}\n",
    )
    .unwrap();
    let policies = dir.path().to_str().unwrap();
    let pod = "apiVersion: v1\nkind: Pod\nmetadata: {name: api}\nspec:\n  containers: [{name: api, image: ghcr.io/acme/api:1.4.0}]\n";
    let with_scans = ["-p", policies, "--scan-results", "scans", "-n", "shop", "-"];

    let out = portcullis(&with_scans, Some(pod));
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    let digest = "sha256:2222222222222222222222222222222222222222222222222222222222222222";
    assert!(
        stdout.contains(&format!("      Mutate container \"api\" image ghcr.io/acme/api:1.4.0 pinned to ghcr.io/acme/api:1.4.0@{digest}\n"))
            && stdout.contains("      Mutate container \"api\" securityContext.allowPrivilegeEscalation set to false\n"),
        "{stdout}"
    );
    let out = portcullis(
        &[&with_scans[..6], &["-o", "json", "-"]].concat(),
        Some(pod),
    );
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        report["objects"][0]["mutations"].as_array().unwrap().len(),
        2
    );

    // Without a report naming the tag's digest: left as written, said so, and
    // requireDigest denies the Pod as the cluster would.
    let out = portcullis(&["-p", policies, "-n", "shop", "-"], Some(pod));
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains("Mutate image ghcr.io/acme/api:1.4.0 stays unpinned: no --scan-results report names this tag's digest"),
        "{stdout}"
    );
    assert!(
        stdout.contains("rules.tags.requireDigest") || stdout.contains("digest"),
        "{stdout}"
    );

    // The same container in a Deployment: templates stay as written.
    let deployment = "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: api}\nspec:\n  template:\n    spec:\n      containers: [{name: api, image: ghcr.io/acme/api:1.4.0}]\n";
    let out = portcullis(&with_scans, Some(deployment));
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(!stdout.contains("Mutate"), "{stdout}");
}
