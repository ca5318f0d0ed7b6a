//! Each scanner backend against a simulated server over HTTPS (see
//! `portcullis_webhook::testing::scanners` for the documented shapes they follow): found, not found,
//! pending, garbage, slow, down, huge, wrong digest.

#![allow(clippy::unwrap_used)] // in tests a panic is the failure report

mod common;

use std::time::Duration;

use portcullis_crds::Severity;
use portcullis_webhook::scan::backend::harbor::Harbor;
use portcullis_webhook::scan::backend::http::HttpScanner;
use portcullis_webhook::scan::backend::{Backend, BackendError, MAX_RESPONSE, Outcome, Target};
use portcullis_webhook::testing::scanners::{self, Mode, Scan, Sim};

const FOUND: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";
const PENDING: &str = "sha256:2222222222222222222222222222222222222222222222222222222222222222";
const UNSCANNED: &str = "sha256:3333333333333333333333333333333333333333333333333333333333333333";
const MISSING: &str = "sha256:4444444444444444444444444444444444444444444444444444444444444444";
const TIMEOUT: Duration = Duration::from_millis(500);

fn target(digest: &str) -> Target {
    Target {
        registry: "harbor.acme.test".into(),
        path: "prod/team/api".into(),
        digest: digest.into(),
    }
}

fn sim() -> std::sync::Arc<Sim> {
    Sim::with(&[
        (
            FOUND,
            Scan::Done(vec![
                ("CVE-2024-1", "Critical", ""),
                ("CVE-2024-2", "Low", "1.2.3"),
            ]),
        ),
        (PENDING, Scan::Pending),
        (UNSCANNED, Scan::NotScanned),
    ])
}

/// The answers every backend must give the same way.
async fn common_cases(backend: &dyn Backend, sim: &Sim) {
    let Outcome::Report(report) = backend.fetch(&target(FOUND), false).await.unwrap() else {
        panic!("a finished scan is a report");
    };
    let findings: Vec<_> = report
        .findings()
        .iter()
        .map(|f| (f.id.to_string(), f.severity, f.fixable))
        .collect();
    assert_eq!(
        findings,
        [
            ("CVE-2024-1".to_owned(), Severity::Critical, false),
            ("CVE-2024-2".to_owned(), Severity::Low, true)
        ]
    );
    let scanned: jiff::Timestamp = "2026-11-20T10:00:00Z".parse().unwrap();
    assert_eq!(
        report.scanned_at,
        Some(std::time::SystemTime::from(scanned))
    );

    assert!(matches!(
        backend.fetch(&target(MISSING), false).await,
        Ok(Outcome::NotFound)
    ));
    assert!(matches!(
        backend.fetch(&target(PENDING), false).await,
        Ok(Outcome::Pending)
    ));

    sim.set_mode(Mode::Garbage);
    assert!(matches!(
        backend.fetch(&target(FOUND), false).await,
        Err(BackendError::Malformed(_))
    ));
    sim.set_mode(Mode::Huge);
    assert_eq!(
        backend.fetch(&target(FOUND), false).await.unwrap_err(),
        BackendError::TooLarge(MAX_RESPONSE)
    );
    sim.set_mode(Mode::WrongDigest);
    assert!(matches!(
        backend.fetch(&target(FOUND), false).await,
        Err(BackendError::WrongDigest { asked, got }) if asked == FOUND && got == scanners::OTHER_DIGEST
    ));
    sim.set_mode(Mode::Slow(TIMEOUT * 4));
    let started = std::time::Instant::now();
    assert_eq!(
        backend.fetch(&target(FOUND), false).await.unwrap_err(),
        BackendError::Timeout(TIMEOUT)
    );
    assert!(
        started.elapsed() < TIMEOUT * 3,
        "the call's own deadline ends it"
    );
    sim.set_mode(Mode::Normal);
}

#[tokio::test]
async fn harbor_v2_answers_found_not_found_pending_and_refuses_bad_answers() {
    let sim = sim();
    let server = scanners::serve(scanners::harbor(sim.clone()))
        .await
        .unwrap();
    let url = format!("https://127.0.0.1:{}", server.addr.port());
    let harbor = Harbor::new(&url, Some(&server.certs.ca_pem), None, TIMEOUT).unwrap();
    common_cases(&harbor, &sim).await;

    // Never scanned: NotFound, unless asked to scan on demand (then Harbor queues it).
    assert!(matches!(
        harbor.fetch(&target(UNSCANNED), false).await,
        Ok(Outcome::NotFound)
    ));
    assert_eq!(
        sim.scan_requests.load(std::sync::atomic::Ordering::SeqCst),
        0
    );
    assert!(matches!(
        harbor.fetch(&target(UNSCANNED), true).await,
        Ok(Outcome::Pending)
    ));
    assert_eq!(
        sim.scan_requests.load(std::sync::atomic::Ordering::SeqCst),
        1
    );
    assert!(
        matches!(
            harbor.fetch(&target(UNSCANNED), true).await,
            Ok(Outcome::Pending)
        ),
        "now running"
    );
    assert_eq!(
        sim.scan_requests.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "a running scan is not asked for again"
    );

    drop(server);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(matches!(
        harbor.fetch(&target(FOUND), false).await,
        Err(BackendError::Unreachable(_) | BackendError::Timeout(_))
    ));
}

#[tokio::test]
async fn trivy_json_endpoint_answers_found_not_found_pending_and_refuses_bad_answers() {
    let sim = sim();
    let server = scanners::serve(scanners::trivy_json(sim.clone()))
        .await
        .unwrap();
    let url = format!("https://localhost:{}/reports/", server.addr.port());
    let http = HttpScanner::new(&url, Some(&server.certs.ca_pem), TIMEOUT).unwrap();
    common_cases(&http, &sim).await;
    drop(server);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(matches!(
        http.fetch(&target(FOUND), false).await,
        Err(BackendError::Unreachable(_) | BackendError::Timeout(_))
    ));
}

#[tokio::test]
async fn backends_trust_only_what_they_are_told_and_never_follow_redirects() {
    let sim = sim();
    let server = scanners::serve(scanners::trivy_json(sim.clone()))
        .await
        .unwrap();
    let url = format!("https://localhost:{}/reports", server.addr.port());
    // Without the private CA the certificate is not trusted, and the error carries the
    // cause (what `BackendReachable` and the log show), not just "error sending request".
    let untrusting = HttpScanner::new(&url, None, TIMEOUT).unwrap();
    match untrusting.fetch(&target(FOUND), false).await {
        Err(BackendError::Unreachable(why)) => assert!(
            why.contains("invalid peer certificate") || why.contains("UnknownIssuer"),
            "{why}"
        ),
        other => panic!("{other:?}"),
    }
    assert_eq!(sim.hits(), 0);
    // A redirect is reported, not followed.
    let redirector = scanners::serve(axum::Router::new().fallback(|| async {
        axum::response::Redirect::temporary("https://elsewhere.example/reports")
    }))
    .await
    .unwrap();
    let redirecting = HttpScanner::new(
        &format!("https://localhost:{}/reports", redirector.addr.port()),
        Some(&redirector.certs.ca_pem),
        TIMEOUT,
    )
    .unwrap();
    assert_eq!(
        redirecting.fetch(&target(FOUND), false).await.unwrap_err(),
        BackendError::Redirect(307)
    );
    assert!(HttpScanner::new(&url, Some("not a PEM"), TIMEOUT).is_err());
}
