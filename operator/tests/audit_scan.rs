//! `portcullis audit-scan` over the audit log a real kube-apiserver v1.19.0 wrote
//! (`webhook/tests/fixtures/audit-kube-1.19.jsonl`, see `webhook/tests/auditlog.rs`):
//! the same findings from a file, its gzip, a directory of its rotated halves, and
//! stdin; exit codes by `--fail-on`; lines that are not events named and counted.

#![allow(clippy::unwrap_used)] // in tests a panic is the failure report

use std::io::Write;
use std::process::{Command, Output, Stdio};

const CAPTURE: &str = include_str!("../../webhook/tests/fixtures/audit-kube-1.19.jsonl");

fn audit_scan(args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .arg("audit-scan")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    // A command line clap refuses exits before reading: the pipe may be closed.
    let _ = input.write_all(stdin.unwrap_or_default().as_bytes());
    drop(input);
    child.wait_with_output().unwrap()
}

fn detections(output: &Output) -> Vec<String> {
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|line| {
            let finding: serde_json::Value = serde_json::from_str(line).unwrap();
            format!(
                "{} {}",
                finding["detection"].as_str().unwrap(),
                finding["auditID"].as_str().unwrap()
            )
        })
        .collect()
}

#[test]
fn a_file_its_gzip_its_rotated_halves_and_stdin_give_the_same_findings() {
    let dir = tempfile::tempdir().unwrap();
    let plain = dir.path().join("audit.log");
    std::fs::write(&plain, CAPTURE).unwrap();
    let from_file = audit_scan(&["-o", "json", plain.to_str().unwrap()], None);
    assert_eq!(
        from_file.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&from_file.stderr)
    );
    let expected = detections(&from_file);
    assert_eq!(expected.len(), 15, "{expected:#?}");
    assert!(
        String::from_utf8_lossy(&from_file.stderr)
            .contains("213 events, 15 findings (6 at or above High)")
    );

    let gz = dir.path().join("audit.log.gz");
    let mut encoder = flate2::write::GzEncoder::new(
        std::fs::File::create(&gz).unwrap(),
        flate2::Compression::fast(),
    );
    encoder.write_all(CAPTURE.as_bytes()).unwrap();
    encoder.finish().unwrap();
    assert_eq!(
        detections(&audit_scan(&["-o", "json", gz.to_str().unwrap()], None)),
        expected
    );

    let rotated = dir.path().join("rotated");
    std::fs::create_dir(&rotated).unwrap();
    let lines: Vec<&str> = CAPTURE.lines().collect();
    let (older, newer) = lines.split_at(200);
    std::fs::write(
        rotated.join("audit-2026-11-30T18-04-40.log"),
        older.join("\n"),
    )
    .unwrap();
    std::fs::write(rotated.join("audit.log"), newer.join("\n")).unwrap();
    assert_eq!(
        detections(&audit_scan(
            &["-o", "json", rotated.to_str().unwrap()],
            None
        )),
        expected
    );

    assert_eq!(
        detections(&audit_scan(&["-o", "json", "-"], Some(CAPTURE))),
        expected
    );
}

#[test]
fn fail_on_sets_the_exit_code_and_text_lines_name_severity_and_detection() {
    let clean = audit_scan(
        &["--fail-on", "critical", "-"],
        Some(&CAPTURE.replace("cluster-admin", "view")),
    );
    assert_eq!(
        clean.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&clean.stderr)
    );
    let text = String::from_utf8_lossy(&clean.stdout);
    assert!(
        text.lines()
            .any(|l| l.starts_with("High     wildcard-role")),
        "{text}"
    );
    let bad = audit_scan(&["--fail-on", "severe", "-"], Some(CAPTURE));
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("unknown severity \"severe\""));
}

#[test]
fn lines_that_are_not_events_are_named_and_the_rest_still_scanned() {
    let input = format!("{{not json\n{CAPTURE}");
    let out = audit_scan(&["--fail-on", "critical", "-o", "json", "-"], Some(&input));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("audit-scan: -:1: not an audit event"),
        "{stderr}"
    );
    assert_eq!(detections(&out).len(), 15);
    assert_eq!(
        out.status.code(),
        Some(1),
        "a Critical finding outranks bad lines"
    );
    let only_bad = audit_scan(&["-"], Some("{not json\n"));
    assert_eq!(only_bad.status.code(), Some(2));
    let missing = audit_scan(&["/nonexistent/audit.log"], None);
    assert_eq!(missing.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("/nonexistent/audit.log"));
}

#[test]
fn interleaved_lines_are_judged_in_time_order() {
    // The capture's `kubectl exec`: two requests, the second a repeat. Written in the
    // other order (the log backend interleaves concurrent requests), the finding still
    // names the first.
    let exec: Vec<&str> = CAPTURE
        .lines()
        .filter(|l| l.contains(r#""subresource":"exec""#) && l.contains("ResponseComplete"))
        .collect();
    assert_eq!(exec.len(), 2, "the capture's exec pair");
    let in_order = audit_scan(
        &["-o", "json", "-"],
        Some(&format!("{}\n{}\n", exec[0], exec[1])),
    );
    let swapped = audit_scan(
        &["-o", "json", "-"],
        Some(&format!("{}\n{}\n", exec[1], exec[0])),
    );
    let first: serde_json::Value = serde_json::from_str(exec[0]).unwrap();
    let expected = format!("exec-into-container {}", first["auditID"].as_str().unwrap());
    assert_eq!(detections(&in_order), detections(&swapped));
    assert_eq!(detections(&swapped), [expected]);
}
