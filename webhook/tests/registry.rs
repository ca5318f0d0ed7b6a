//! Tag → digest against a real registry (Debian's docker-registry on 127.0.0.1, TLS and
//! htpasswd auth, images pushed by the test), and the whole lookup — credentials from a
//! dockerconfigjson Secret, rotated while serving — through the webhook.

#![allow(clippy::unwrap_used)] // in tests a panic is the failure report

mod common;

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use common::registry::{self, Registry};
use portcullis_crds::RegistryIntegrationSpec;
use portcullis_webhook::policy::{PolicySet, compile, compile_integration};
use portcullis_webhook::scan::ScanService;
use portcullis_webhook::scan::backend::BackendError;
use portcullis_webhook::scan::credentials::{DockerConfig, Login};
use portcullis_webhook::scan::registry::{RegistryClient, Resolved};
use portcullis_webhook::server::{AppState, Readiness};
use portcullis_webhook::testing::TestServer;
use portcullis_webhook::testing::scanners::{self, Scan, Sim};
use serde_json::json;

const TIMEOUT: Duration = Duration::from_secs(5);

fn login(user: &str, pass: &str) -> Login {
    Login {
        username: user.into(),
        password: pass.into(),
    }
}

#[tokio::test]
async fn resolves_tags_with_credentials_and_refuses_missing_or_wrong_ones() {
    if !registry::available() {
        return;
    }
    let registry = Registry::start(Some(("ci", "s3cret")));
    let digest = registry.push("acme/api", "v1");
    let ca = Some(registry.ca_pem.as_str());
    let right = RegistryClient::new(Some(&login("ci", "s3cret")), ca, false, TIMEOUT);
    assert_eq!(
        right.resolve(&registry.host, "acme/api", "v1").await,
        Ok(Resolved::Digest(digest))
    );
    assert_eq!(
        right.resolve(&registry.host, "acme/api", "v2").await,
        Ok(Resolved::NotFound),
        "a tag the registry does not have"
    );
    let anonymous = RegistryClient::new(None, ca, false, TIMEOUT);
    assert!(matches!(
        anonymous.resolve(&registry.host, "acme/api", "v1").await,
        Err(BackendError::Denied(_))
    ));
    let wrong = RegistryClient::new(Some(&login("ci", "wrong")), ca, false, TIMEOUT);
    assert!(matches!(
        wrong.resolve(&registry.host, "acme/api", "v1").await,
        Err(BackendError::Denied(_))
    ));
    // https by default: without the registry's CA the certificate is refused.
    let untrusting = RegistryClient::new(Some(&login("ci", "s3cret")), None, false, TIMEOUT);
    assert!(matches!(
        untrusting.resolve(&registry.host, "acme/api", "v1").await,
        Err(BackendError::Unreachable(_))
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
    let client = RegistryClient::new(None, Some(&registry.ca_pem), false, TIMEOUT);
    assert_eq!(
        client.resolve(&registry.host, "library/app", "1.0").await,
        Ok(Resolved::Digest(digest))
    );
}

#[tokio::test]
async fn plain_http_is_used_only_when_asked_for() {
    if !registry::available() {
        return;
    }
    let registry = Registry::start_plain_http();
    let digest = registry.push("dev/app", "latest");
    let plain = RegistryClient::new(None, None, true, TIMEOUT);
    assert_eq!(
        plain.resolve(&registry.host, "dev/app", "latest").await,
        Ok(Resolved::Digest(digest))
    );
    let https = RegistryClient::new(None, None, false, TIMEOUT);
    assert!(matches!(
        https.resolve(&registry.host, "dev/app", "latest").await,
        Err(BackendError::Unreachable(_))
    ));
}

fn docker_config(registry: &Registry, user: &str, pass: &str) -> DockerConfig {
    let json = json!({"auths": {registry.host.clone(): {"username": user, "password": pass}}});
    DockerConfig::parse(json.to_string().as_bytes()).unwrap()
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
    let policy = serde_json::from_value(json!({
        "match": {"images": ["127.0.0.1:*/**"]},
        "rules": {"vulnerabilities": {"maxSeverity": "Medium", "unscanned": "Block"}}
    }))
    .unwrap();
    let integration: RegistryIntegrationSpec = serde_json::from_value(json!({
        "registries": ["127.0.0.1:*/**"],
        "credentials": {"secretRef": {"name": "pull"}},
        "caBundle": registry.ca_pem,
        "scanner": {"http": {"url": format!("https://localhost:{}/reports", scanner.addr.port()), "caBundle": scanner.certs.ca_pem}},
        "timeout": "5s"
    }))
    .unwrap();
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
    let image = format!("{}/acme/api:v1", registry.host);
    let body = String::from_utf8(common::fixture("validate-create-pod.json"))
        .unwrap()
        .replace("nginx:1.25", &image)
        .into_bytes();
    let decide = || async {
        let answer = server
            .client()
            .unwrap()
            .post("/validate", body.clone())
            .await
            .unwrap();
        let response = common::response(&answer.body);
        response["status"]["message"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    };

    // No Secret yet, then a Secret with an old password: the registry is not usable.
    let unreachable = "the scanner or registry of RegistryIntegration \"local\" is unreachable";
    assert!(decide().await.contains(unreachable));
    scans
        .credentials()
        .set("pull", Some(docker_config(&registry, "ci", "old")));
    assert!(decide().await.contains(unreachable));
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
    let message = decide().await;
    assert!(
        message.contains(&format!("image {image} violates ContainerPolicy \"prod\": 1 high vulnerability (CVE-2024-9) exceeds maxSeverity Medium")),
        "{message}"
    );
    assert_eq!(sim.hits(), 1);
    assert_eq!(scans.health("local").unwrap().reachable, Some(true));
}
