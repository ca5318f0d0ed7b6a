//! Tag → digest against a real registry (Debian's docker-registry on 127.0.0.1, TLS and
//! htpasswd auth, images pushed by the test), and the whole lookup — credentials from a
//! dockerconfigjson Secret, rotated while serving — through the webhook.

#![allow(clippy::unwrap_used)] // in tests a panic is the failure report

mod common;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use portcullis_crds::RegistryIntegrationSpec;
use portcullis_webhook::policy::{PolicySet, compile, compile_integration};
use portcullis_webhook::scan::ScanService;
use portcullis_webhook::scan::backend::BackendError;
use portcullis_webhook::scan::credentials::{DockerConfig, Login};
use portcullis_webhook::scan::registry::{RegistryClient, RegistrySettings, Resolved};
use portcullis_webhook::server::{AppState, Readiness};
use portcullis_webhook::testing::TestServer;
use portcullis_webhook::testing::registry::{self, Registry};
use portcullis_webhook::testing::scanners::{self, Scan, Sim};
use serde_json::json;

const TIMEOUT: Duration = Duration::from_secs(5);

fn login(user: &str, pass: &str) -> Login {
    Login {
        username: user.into(),
        password: pass.into(),
    }
}

/// A client for the test registries on 127.0.0.1 (named explicitly, as an integration
/// for them would), trusting `ca`.
fn client(ca: Option<&str>, plain_http: bool) -> RegistryClient {
    RegistryClient::new(RegistrySettings {
        ca_bundle: ca.map(str::to_owned),
        plain_http,
        timeout: TIMEOUT,
        explicit_hosts: HashSet::from(["127.0.0.1".to_owned()]),
    })
    .unwrap()
}

#[tokio::test]
async fn resolves_tags_with_credentials_and_refuses_missing_or_wrong_ones() {
    if !registry::available() {
        return;
    }
    let registry = Registry::start(Some(("ci", "s3cret")));
    let digest = registry.push("acme/api", "v1");
    let trusting = client(Some(&registry.ca_pem), false);
    let right = login("ci", "s3cret");
    assert_eq!(
        trusting
            .resolve(&registry.host, "acme/api", "v1", Some(&right))
            .await,
        Ok(Resolved::Digest(digest.into()))
    );
    assert_eq!(
        trusting
            .resolve(&registry.host, "acme/api", "v2", Some(&right))
            .await,
        Ok(Resolved::NotFound),
        "a tag the registry does not have"
    );
    assert!(matches!(
        trusting
            .resolve(&registry.host, "acme/api", "v1", None)
            .await,
        Err(BackendError::Denied(_))
    ));
    assert!(matches!(
        trusting
            .resolve(
                &registry.host,
                "acme/api",
                "v1",
                Some(&login("ci", "wrong"))
            )
            .await,
        Err(BackendError::Denied(_))
    ));
    // https by default: without the registry's CA the certificate is refused, and the
    // error says why (the cause chain, not just "error sending request").
    let untrusting = client(None, false);
    match untrusting
        .resolve(&registry.host, "acme/api", "v1", Some(&right))
        .await
    {
        Err(BackendError::Unreachable(why)) => {
            assert!(why.contains("certificate"), "{why}")
        }
        other => panic!("{other:?}"),
    }
    // A loopback registry no integration names explicitly is never called.
    let guarded = RegistryClient::new(RegistrySettings {
        ca_bundle: Some(registry.ca_pem.clone()),
        timeout: TIMEOUT,
        ..RegistrySettings::default()
    })
    .unwrap();
    assert!(matches!(
        guarded
            .resolve(&registry.host, "acme/api", "v1", Some(&right))
            .await,
        Err(BackendError::Refused(_))
    ));
}

/// The server a test starts ends with the test: nothing listens on its port after the
/// helper is dropped, and no `docker-registry` process is left with its configuration.
#[test]
fn a_dropped_registry_leaves_no_process_behind() {
    if !registry::available() {
        return;
    }
    let registry = Registry::start(None);
    let config = registry.config_path();
    assert!(std::net::TcpStream::connect(&registry.host).is_ok());
    let host = registry.host.clone();
    drop(registry);
    assert!(
        std::net::TcpStream::connect(&host).is_err(),
        "a registry still listens on {host} after its test helper was dropped"
    );
    let left: Vec<String> = std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|entry| std::fs::read(entry.ok()?.path().join("cmdline")).ok())
        .map(|cmdline| String::from_utf8_lossy(&cmdline).replace('\0', " "))
        .filter(|cmdline| cmdline.contains(&config))
        .collect();
    assert!(left.is_empty(), "processes left running: {left:?}");
}

#[tokio::test]
async fn an_open_registry_resolves_anonymously() {
    if !registry::available() {
        return;
    }
    let registry = Registry::start(None);
    let digest = registry.push("library/app", "1.0");
    assert_eq!(
        client(Some(&registry.ca_pem), false)
            .resolve(&registry.host, "library/app", "1.0", None)
            .await,
        Ok(Resolved::Digest(digest.into()))
    );
}

#[tokio::test]
async fn plain_http_is_used_only_when_asked_for() {
    if !registry::available() {
        return;
    }
    let registry = Registry::start_plain_http();
    let digest = registry.push("dev/app", "latest");
    assert_eq!(
        client(None, true)
            .resolve(&registry.host, "dev/app", "latest", None)
            .await,
        Ok(Resolved::Digest(digest.into()))
    );
    assert!(matches!(
        client(None, false)
            .resolve(&registry.host, "dev/app", "latest", None)
            .await,
        Err(BackendError::Unreachable(_))
    ));
}

fn docker_config(registry: &Registry, user: &str, pass: &str) -> DockerConfig {
    let json = json!({"auths": {registry.host.clone(): {"username": user, "password": pass}}});
    DockerConfig::parse(json.to_string().as_bytes()).unwrap()
}

/// The webhook with one policy (`maxSeverity: Medium`, unscanned blocks) on images of
/// `registry`, covered by an integration — with `settings` added to its spec — whose
/// scanner is `scanner`.
async fn webhook_over(
    registry: &Registry,
    scanner: &TestServer,
    settings: serde_json::Value,
) -> (TestServer, Arc<ScanService>) {
    let policy = json!({
        "match": {"images": ["127.0.0.1:*/**"]},
        "rules": {"vulnerabilities": {"maxSeverity": "Medium", "unscanned": "Block"}}
    });
    webhook_with(registry, scanner, policy, settings).await
}

/// The webhook with `policy` on images of `registry`, covered by an integration — with
/// `settings` added to its spec — whose scanner is `scanner`.
async fn webhook_with(
    registry: &Registry,
    scanner: &TestServer,
    policy: serde_json::Value,
    settings: serde_json::Value,
) -> (TestServer, Arc<ScanService>) {
    let policy = serde_json::from_value(policy).unwrap();
    let mut integration = json!({
        "registries": ["127.0.0.1:*/**"],
        "caBundle": registry.ca_pem,
        "scanner": {"http": {"url": format!("https://localhost:{}/reports", scanner.addr.port()), "caBundle": scanner.certs.ca_pem}},
        "timeout": "5s"
    });
    for (key, value) in settings.as_object().unwrap() {
        integration[key] = value.clone();
    }
    let integration: RegistryIntegrationSpec = serde_json::from_value(integration).unwrap();
    let set = PolicySet::new(
        [compile("prod", &policy).unwrap()],
        [compile_integration("local", &integration).unwrap()],
        Arc::default(),
    );
    let scans = ScanService::in_memory();
    let server = TestServer::start(AppState::new(
        Arc::new(ArcSwap::from_pointee(set)),
        scans.clone(),
        Readiness::ready_now(),
    ))
    .await
    .unwrap();
    (server, scans)
}

/// The deny message (empty when allowed) for the captured Pod running `image`.
async fn message_for(server: &TestServer, image: &str) -> String {
    let body = String::from_utf8(common::fixture("validate-create-pod.json"))
        .unwrap()
        .replace("nginx:1.25", image)
        .into_bytes();
    let answer = server
        .client()
        .unwrap()
        .post("/validate", body)
        .await
        .unwrap();
    let response = common::response(&answer.body);
    response["status"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

#[tokio::test]
async fn a_tagged_image_is_resolved_then_scanned_and_rotated_credentials_apply_without_restart() {
    if !registry::available() {
        return;
    }
    let registry = Registry::start(Some(("ci", "s3cret")));
    let digest = registry.push("acme/api", "v1");
    let sim = Sim::with(&[(&digest, Scan::Done(vec![("CVE-2024-9", "High", "2.0")]))]);
    let scanner = scanners::serve(scanners::trivy_json(sim.clone()))
        .await
        .unwrap();
    let (server, scans) = webhook_over(
        &registry,
        &scanner,
        json!({"credentials": {"secretRef": {"name": "pull"}}}),
    )
    .await;
    let image = format!("{}/acme/api:v1", registry.host);

    // No Secret yet, then a Secret with an old password: the registry is not usable,
    // and the message says which way.
    let missing = "the credentials Secret of RegistryIntegration \"local\" is missing or unusable";
    let message = message_for(&server, &image).await;
    assert!(message.contains(missing), "{message}");
    scans
        .credentials()
        .set("pull", Some(docker_config(&registry, "ci", "old")));
    let refused = "the registry or scanner of RegistryIntegration \"local\" refused access";
    let message = message_for(&server, &image).await;
    assert!(message.contains(refused), "{message}");
    assert_eq!(sim.hits(), 0, "no digest, no scan lookup");
    assert!(
        scans
            .health("local")
            .unwrap()
            .last_error
            .unwrap()
            .contains("resolve")
    );

    // The Secret is rotated: the next request uses the new password.
    scans
        .credentials()
        .set("pull", Some(docker_config(&registry, "ci", "s3cret")));
    let message = message_for(&server, &image).await;
    assert!(
        message.contains(&format!("image {image} violates ContainerPolicy \"prod\": 1 high vulnerability (CVE-2024-9) exceeds maxSeverity Medium")),
        "{message}"
    );
    assert_eq!(sim.hits(), 1);
    assert_eq!(scans.health("local").unwrap().reachable, Some(true));
}

/// A tag's digest, once the registry cannot be reached, serves only `maxTagAge` past
/// `cacheTTL`: the tag may have moved to another (vulnerable) digest meanwhile.
#[tokio::test]
async fn a_tags_digest_is_trusted_only_max_tag_age_past_cache_ttl() {
    if !registry::available() {
        return;
    }
    let registry = Registry::start(None);
    let digest = registry.push("acme/api", "v1");
    let sim = Sim::with(&[(&digest, Scan::Done(vec![("CVE-2024-9", "High", "2.0")]))]);
    let scanner = scanners::serve(scanners::trivy_json(sim.clone()))
        .await
        .unwrap();
    let (server, _) = webhook_over(
        &registry,
        &scanner,
        json!({"cacheTTL": "1s", "maxTagAge": "2s", "timeout": "1s"}),
    )
    .await;
    let image = format!("{}/acme/api:v1", registry.host);
    let found = "1 high vulnerability (CVE-2024-9) exceeds maxSeverity Medium";
    assert!(message_for(&server, &image).await.contains(found));

    drop(registry);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let message = message_for(&server, &image).await;
    assert!(
        message.contains(found),
        "within maxTagAge the digest serves: {message}"
    );
    tokio::time::sleep(Duration::from_millis(2000)).await;
    let message = message_for(&server, &image).await;
    assert!(
        message.contains("more than maxTagAge past cacheTTL")
            && message.contains("rules.vulnerabilities.unscanned is Block"),
        "{message}"
    );
}

/// The captured mutating review of Pod `web`, its `nginx:1.25` replaced by `image`.
fn mutate_review(fixture: &str, image: &str) -> Vec<u8> {
    String::from_utf8(common::fixture(fixture))
        .unwrap()
        .replace("nginx:1.25", image)
        .into_bytes()
}

/// The Pod of `review` with the patch of `answer` (an AdmissionReview answer) applied.
fn patched(review: &[u8], answer: &serde_json::Value) -> serde_json::Value {
    use base64::Engine as _;
    let review: serde_json::Value = serde_json::from_slice(review).unwrap();
    let mut pod = review["request"]["object"].clone();
    if let Some(patch) = answer["patch"].as_str() {
        let patch = base64::engine::general_purpose::STANDARD
            .decode(patch)
            .unwrap();
        let patch: json_patch::Patch = serde_json::from_slice(&patch).unwrap();
        json_patch::patch(&mut pod, &patch).unwrap();
    }
    pod
}

/// `/mutate` pins a tag to the digest the real registry resolves, from the cache once
/// the registry is gone; a tag it cannot resolve stays as written with the annotation,
/// and `requireDigest` then denies it. The scanner is never asked.
#[tokio::test]
async fn mutate_pins_tags_to_the_registry_digest_and_says_what_it_could_not_pin() {
    if !registry::available() {
        return;
    }
    let registry = Registry::start(None);
    let digest = registry.push("acme/api", "v1");
    let sim = Sim::with(&[]);
    let scanner = scanners::serve(scanners::trivy_json(sim.clone()))
        .await
        .unwrap();
    let policy = json!({
        "match": {"images": ["127.0.0.1:*/**"]},
        "mutate": {"pinDigests": true},
        "rules": {"tags": {"requireDigest": true}}
    });
    let (server, _) = webhook_with(&registry, &scanner, policy, json!({"timeout": "1s"})).await;
    let client = server.client().unwrap();
    let image = format!("{}/acme/api:v1", registry.host);

    for fixture in ["mutate-create-pod.json", "mutate-create-pod-dryrun.json"] {
        let review = mutate_review(fixture, &image);
        let answer = common::response(&client.post("/mutate", review.clone()).await.unwrap().body);
        assert_eq!(answer["allowed"], true);
        let pod = patched(&review, &answer);
        let pinned = format!("{image}@{digest}");
        let containers = pod["spec"]["containers"].as_array().unwrap();
        assert!(
            containers.iter().any(|c| c["image"] == pinned.as_str()),
            "{fixture}: {containers:?}"
        );
    }
    assert_eq!(sim.hits(), 0, "pinning never asks the scanner");

    // The pinned Pod passes requireDigest; the Pod as written does not.
    let review = mutate_review("mutate-create-pod.json", &image);
    let answer = common::response(&client.post("/mutate", review.clone()).await.unwrap().body);
    let pod = patched(&review, &answer);
    let validate = |object: &serde_json::Value| {
        let mut review: serde_json::Value =
            serde_json::from_slice(&common::fixture("validate-create-pod.json")).unwrap();
        review["request"]["object"] = object.clone();
        serde_json::to_vec(&review).unwrap()
    };
    let verdict = common::response(&client.post("/validate", validate(&pod)).await.unwrap().body);
    let message = verdict["status"]["message"].as_str().unwrap_or_default();
    assert!(
        !message.contains(&image),
        "pinned, {image} passes: {message}"
    );

    // The registry goes away: v1 pins from the cache; v2 was never resolved.
    drop(registry);
    let answer = common::response(&client.post("/mutate", review.clone()).await.unwrap().body);
    assert!(answer["patch"].is_string(), "{answer}");
    let unresolved = image.replace(":v1", ":v2");
    let review = mutate_review("mutate-create-pod.json", &unresolved);
    let answer = common::response(&client.post("/mutate", review.clone()).await.unwrap().body);
    let pod = patched(&review, &answer);
    let containers = pod["spec"]["containers"].as_array().unwrap();
    assert!(containers.iter().any(|c| c["image"] == unresolved.as_str()));
    let note = pod["metadata"]["annotations"]["portcullis.dev/unpinned"]
        .as_str()
        .unwrap();
    assert!(note.starts_with(&format!("{unresolved}: ")), "{note}");
    let warnings = answer["warnings"].to_string();
    assert!(warnings.contains("is not pinned to a digest"), "{warnings}");
    let verdict = common::response(&client.post("/validate", validate(&pod)).await.unwrap().body);
    let message = verdict["status"]["message"].as_str().unwrap_or_default();
    assert!(
        verdict["allowed"] == false && message.contains(&unresolved),
        "requireDigest fails closed: {verdict}"
    );
}
