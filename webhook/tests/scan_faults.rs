//! Scan faults end to end through the webhook over HTTPS: a real captured Pod review
//! whose image is covered by a RegistryIntegration with a simulated Trivy-JSON or Harbor
//! backend (shapes in `portcullis_webhook::testing::scanners`).

#![allow(clippy::unwrap_used)] // in tests a panic is the failure report

mod common;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use portcullis_crds::RegistryIntegrationSpec;
use portcullis_webhook::image::ImageRef;
use portcullis_webhook::policy::{PolicySet, compile, compile_integration};
use portcullis_webhook::scan::{ScanResults, ScanService, ScanSettings, ScanStatus};
use portcullis_webhook::server::{AppState, Readiness};
use portcullis_webhook::testing::TestServer;
use portcullis_webhook::testing::scanners::{self, Mode, Scan, Sim};
use serde_json::{Value, json};

const DIGEST: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";
const IMAGE: &str = "registry.acme.test/prod/api@sha256:1111111111111111111111111111111111111111111111111111111111111111";
const VIOLATION: &str = "1 critical vulnerability (CVE-2024-1) exceeds maxCount.critical 0";
const TIMEOUT: Duration = Duration::from_secs(1);

fn critical() -> Arc<Sim> {
    Sim::with(&[(DIGEST, Scan::Done(vec![("CVE-2024-1", "Critical", "")]))])
}

/// One policy on registry.acme.test and one integration pointing at `scanner`.
fn policies(scanner: Value, cache_ttl: &str) -> PolicySet {
    let policy = serde_json::from_value(json!({
        "match": {"images": ["registry.acme.test/**"]},
        "rules": {"vulnerabilities": {"maxCount": {"critical": 0}, "unscanned": "Block"}}
    }))
    .unwrap();
    let integration: RegistryIntegrationSpec = serde_json::from_value(json!({
        "registries": ["registry.acme.test/**"],
        "scanner": scanner,
        "cacheTTL": cache_ttl,
        "timeout": "1s"
    }))
    .unwrap();
    PolicySet::new(
        [compile("prod-images", &policy).unwrap()],
        [compile_integration("scans", &integration).unwrap()],
        Arc::default(),
    )
}

fn trivy_json(server: &TestServer) -> Value {
    json!({"http": {"url": format!("https://localhost:{}/reports", server.addr.port()), "caBundle": server.certs.ca_pem}})
}

async fn webhook(set: PolicySet, scans: Arc<ScanService>) -> TestServer {
    TestServer::start(AppState::new(
        Arc::new(ArcSwap::from_pointee(set)),
        scans,
        Readiness::ready_now(),
    ))
    .await
    .unwrap()
}

/// The captured Pod review (or its dry-run twin) with its first container's image replaced.
fn review(fixture: &str, image: &str) -> Vec<u8> {
    String::from_utf8(common::fixture(fixture))
        .unwrap()
        .replace("nginx:1.25", image)
        .into_bytes()
}

/// Posts and returns (allowed, message, elapsed).
async fn decide(server: &TestServer, body: Vec<u8>) -> (bool, String, Duration) {
    let started = Instant::now();
    let answer = server
        .client()
        .unwrap()
        .post("/validate", body)
        .await
        .unwrap();
    let elapsed = started.elapsed();
    assert_eq!(answer.status, 200);
    let response = common::response(&answer.body);
    let message = response["status"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    (response["allowed"] == true, message, elapsed)
}

#[tokio::test]
async fn a_warm_cache_keeps_deciding_while_the_backend_hangs_then_dies() {
    let sim = critical();
    let scanner = scanners::serve(scanners::trivy_json(sim.clone()))
        .await
        .unwrap();
    let set = policies(trivy_json(&scanner), "1s");
    let server = webhook(set, ScanService::in_memory()).await;
    let body = review("validate-create-pod.json", IMAGE);
    let (allowed, message, _) = decide(&server, body.clone()).await;
    assert!(!allowed && message.contains(VIOLATION), "{message}");
    assert_eq!(sim.hits(), 1);

    // Past cacheTTL the result is stale; the backend now hangs longer than any deadline.
    sim.set_mode(Mode::Slow(Duration::from_secs(30)));
    tokio::time::sleep(Duration::from_millis(1100)).await;
    for _ in 0..5 {
        let (allowed, again, elapsed) = decide(&server, body.clone()).await;
        assert!(!allowed && again == message, "{again}");
        assert!(
            elapsed < TIMEOUT,
            "a stale result is served without waiting ({elapsed:?})"
        );
    }
    drop(scanner);
    for _ in 0..5 {
        let (allowed, again, elapsed) = decide(&server, body.clone()).await;
        assert!(!allowed && again == message, "{again}");
        assert!(elapsed < TIMEOUT, "{elapsed:?}");
    }
}

#[tokio::test]
async fn a_cold_cache_with_the_backend_down_takes_the_unscanned_action_inside_the_deadline() {
    let sim = critical();
    let scanner = scanners::serve(scanners::trivy_json(sim.clone()))
        .await
        .unwrap();
    sim.set_mode(Mode::Slow(Duration::from_secs(30)));
    let set = policies(trivy_json(&scanner), "24h");
    let server = webhook(set, ScanService::in_memory()).await;
    let unreachable = "no usable scan result (the scanner or registry of RegistryIntegration \"scans\" is unreachable); rules.vulnerabilities.unscanned is Block";
    // Hanging: each request waits at most the integration's timeout, until the breaker
    // opens; then it is not waited on at all.
    let deadline = ScanSettings::default().deadline;
    for _ in 0..3 {
        let (allowed, message, elapsed) =
            decide(&server, review("validate-create-pod.json", IMAGE)).await;
        assert!(!allowed && message.contains(unreachable), "{message}");
        assert!(elapsed >= TIMEOUT && elapsed < deadline, "{elapsed:?}");
    }
    let hits = sim.hits();
    let (allowed, message, elapsed) =
        decide(&server, review("validate-create-pod.json", IMAGE)).await;
    assert!(!allowed && message.contains(unreachable), "{message}");
    assert!(
        elapsed < TIMEOUT / 2,
        "the open breaker answers at once ({elapsed:?})"
    );
    assert_eq!(sim.hits(), hits, "no call while the breaker is open");

    // Down (connection refused) with a fresh service: answered fast, same reason.
    drop(scanner);
    let server = webhook(policies(trivy_json_at(1), "24h"), ScanService::in_memory()).await;
    let (allowed, message, elapsed) =
        decide(&server, review("validate-create-pod.json", IMAGE)).await;
    assert!(!allowed && message.contains(unreachable), "{message}");
    assert!(elapsed < TIMEOUT, "{elapsed:?}");
}

/// An https URL where nothing listens.
fn trivy_json_at(port: u16) -> Value {
    json!({"http": {"url": format!("https://127.0.0.1:{port}/reports")}})
}

#[tokio::test]
async fn after_a_restart_with_the_backend_down_verdicts_come_from_the_disk_cache() {
    let cache_dir = tempfile::tempdir().unwrap();
    let settings = ScanSettings {
        cache_dir: Some(cache_dir.path().to_owned()),
        ..ScanSettings::default()
    };
    let sim = critical();
    let scanner = scanners::serve(scanners::trivy_json(sim.clone()))
        .await
        .unwrap();
    let scanner_spec = trivy_json(&scanner);
    let first = ScanService::new(&settings).unwrap();
    let server = webhook(policies(scanner_spec.clone(), "24h"), first.clone()).await;
    let (allowed, message, _) = decide(&server, review("validate-create-pod.json", IMAGE)).await;
    assert!(!allowed && message.contains(VIOLATION), "{message}");
    // A stop closes the store: it reopens at once, without a repair.
    first.cache().close();
    drop((server, first, scanner));
    let server = webhook(
        policies(scanner_spec, "24h"),
        ScanService::new(&settings).expect("the closed store reopens"),
    )
    .await;
    let (allowed, again, _) = decide(&server, review("validate-create-pod.json", IMAGE)).await;
    assert!(!allowed && again == message, "{again}");
    assert_eq!(sim.hits(), 1, "the backend was not asked again");
}

#[tokio::test]
async fn a_hundred_concurrent_requests_for_a_new_image_make_one_backend_call() {
    let sim = critical();
    sim.set_mode(Mode::Slow(Duration::from_millis(300)));
    let scanner = scanners::serve(scanners::trivy_json(sim.clone()))
        .await
        .unwrap();
    let server = Arc::new(
        webhook(
            policies(trivy_json(&scanner), "24h"),
            ScanService::in_memory(),
        )
        .await,
    );
    let requests = (0..100).map(|_| {
        let server = server.clone();
        tokio::spawn(
            async move { decide(&server, review("validate-create-pod.json", IMAGE)).await },
        )
    });
    for answer in futures::future::join_all(requests).await {
        let (allowed, message, _) = answer.unwrap();
        assert!(!allowed && message.contains(VIOLATION), "{message}");
    }
    assert_eq!(sim.hits(), 1);
}

#[tokio::test]
async fn dry_run_requests_never_trigger_a_scan() {
    let sim = Sim::with(&[(DIGEST, Scan::NotScanned)]);
    let harbor = scanners::serve(scanners::harbor(sim.clone()))
        .await
        .unwrap();
    let spec = json!({"harbor": {"url": format!("https://localhost:{}", harbor.addr.port()), "caBundle": harbor.certs.ca_pem}});
    let server = webhook(policies(spec, "24h"), ScanService::in_memory()).await;
    let (allowed, message, _) =
        decide(&server, review("validate-create-pod-dryrun.json", IMAGE)).await;
    assert!(
        !allowed && message.contains("has no result for"),
        "{message}"
    );
    assert_eq!(sim.scan_requests.load(Ordering::SeqCst), 0);

    // The dry run's "no result" did not stand in for asking: the real request asks.
    let (allowed, message, _) = decide(&server, review("validate-create-pod.json", IMAGE)).await;
    assert!(!allowed && message.contains("is pending"), "{message}");
    assert_eq!(sim.scan_requests.load(Ordering::SeqCst), 1);
}

/// A Trivy-JSON answer spelling severities `Critical` (Harbor's way) counts them as
/// critical: `maxSeverity: High` denies it. A severity that is none of the five makes
/// the answer unusable (the image is unscanned), never Unknown.
#[tokio::test]
async fn severities_count_in_any_case_and_unknown_names_are_refused() {
    let sim = critical();
    let scanner = scanners::serve(scanners::trivy_json(sim.clone()))
        .await
        .unwrap();
    let policy = serde_json::from_value(json!({
        "match": {"images": ["registry.acme.test/**"]},
        "rules": {"vulnerabilities": {"maxSeverity": "High", "unscanned": "Block"}}
    }))
    .unwrap();
    let integration: RegistryIntegrationSpec = serde_json::from_value(json!({
        "registries": ["registry.acme.test/**"], "scanner": trivy_json(&scanner), "timeout": "1s"
    }))
    .unwrap();
    let set = PolicySet::new(
        [compile("no-critical", &policy).unwrap()],
        [compile_integration("scans", &integration).unwrap()],
        Arc::default(),
    );
    let server = webhook(set, ScanService::in_memory()).await;
    let (allowed, message, _) = decide(&server, review("validate-create-pod.json", IMAGE)).await;
    assert!(
        !allowed
            && message.contains("1 critical vulnerability (CVE-2024-1) exceeds maxSeverity High"),
        "{message}"
    );

    let severe = "sha256:5555555555555555555555555555555555555555555555555555555555555555";
    sim.scans.lock().unwrap().insert(
        severe.into(),
        Scan::Done(vec![("CVE-2024-5", "Severe", "")]),
    );
    let image = format!("registry.acme.test/prod/api@{severe}");
    let (allowed, message, _) = decide(&server, review("validate-create-pod.json", &image)).await;
    assert!(
        !allowed
            && message.contains("gave an answer that cannot be used")
            && message.contains("rules.vulnerabilities.unscanned is Block"),
        "{message}"
    );
}

/// Answers about single images — an HTML error page, a report for another digest — say
/// nothing about whether the scanner is up: however many there are, the next image is
/// looked up (and found) as usual. Only signs the host is down open its breaker.
#[tokio::test]
async fn bad_answers_about_other_images_never_open_the_breaker() {
    let sim = critical();
    let scanner = scanners::serve(scanners::trivy_json(sim.clone()))
        .await
        .unwrap();
    let server = webhook(
        policies(trivy_json(&scanner), "1h"),
        ScanService::in_memory(),
    )
    .await;
    let bogus = |n: u8| {
        format!(
            "registry.acme.test/prod/api@sha256:{}",
            format!("{n}").repeat(64)
        )
    };
    for (mode, n) in [
        (Mode::Garbage, 2),
        (Mode::Garbage, 3),
        (Mode::WrongDigest, 4),
        (Mode::Garbage, 6),
    ] {
        sim.set_mode(mode);
        sim.scans.lock().unwrap().insert(
            format!("sha256:{}", format!("{n}").repeat(64)),
            Scan::Done(vec![]),
        );
        let (allowed, message, _) =
            decide(&server, review("validate-create-pod.json", &bogus(n))).await;
        assert!(
            !allowed && message.contains("gave an answer that cannot be used"),
            "{message}"
        );
    }
    sim.set_mode(Mode::Normal);
    let (allowed, message, _) = decide(&server, review("validate-create-pod.json", IMAGE)).await;
    assert!(
        !allowed && message.contains(VIOLATION),
        "the scanner is still asked: {message}"
    );
}

/// The captured Pod review with `n` containers, each its own image in the covered
/// registry (digests `sha256:000…1`, `…2`, …).
fn review_with_images(n: usize) -> Vec<u8> {
    let mut review: Value =
        serde_json::from_slice(&common::fixture("validate-create-pod.json")).unwrap();
    let containers: Vec<Value> = (1..=n)
        .map(|i| json!({"name": format!("c{i}"), "image": format!("registry.acme.test/prod/api@sha256:{i:064x}")}))
        .collect();
    review["request"]["object"]["spec"]["containers"] = Value::Array(containers);
    review["request"]["object"]["spec"]["initContainers"] = json!([]);
    serde_json::to_vec(&review).unwrap()
}

/// One request cannot make the scan service call without bound, nor make the engine
/// work without bound: at most 200 distinct images are looked up (the rest are
/// unscanned, saying why), and an object with more than 1,000 images is not evaluated
/// image by image.
#[tokio::test]
async fn a_request_with_many_images_is_bounded() {
    let sim = critical();
    let scanner = scanners::serve(scanners::trivy_json(sim.clone()))
        .await
        .unwrap();
    let set = policies(trivy_json(&scanner), "1h");
    let scans = ScanService::in_memory();
    let server = webhook(set.clone(), scans.clone()).await;

    let (allowed, message, _) = decide(&server, review_with_images(300)).await;
    assert!(!allowed, "{message}");
    assert!(
        sim.hits() <= 200,
        "{} backend calls for one request",
        sim.hits()
    );
    // What the 201st image and after are told (the deny message is capped before them).
    let images: Vec<ImageRef> = (1..=300)
        .map(|i| ImageRef::parse(&format!("registry.acme.test/prod/api@sha256:{i:064x}")).unwrap())
        .collect();
    let answers = scans
        .results(
            &set,
            &images.iter().collect::<Vec<_>>(),
            Instant::now(),
            true,
        )
        .await;
    match answers.lookup(&images[250]) {
        ScanStatus::Unavailable(reason) => {
            assert!(
                reason.contains("only the first 200 are looked up"),
                "{reason}"
            )
        }
        ScanStatus::Found(_) => panic!("looked up beyond the bound"),
    }

    let before = sim.hits();
    let (allowed, message, _) = decide(&server, review_with_images(1500)).await;
    assert!(
        !allowed
            && message
                .contains("the object has 1500 images, more than the 1000 evaluated in one object"),
        "{message}"
    );
    assert_eq!(
        sim.hits(),
        before,
        "nothing looked up for an object that is not evaluated"
    );
}
