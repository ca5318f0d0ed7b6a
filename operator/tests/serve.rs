//! `portcullis serve` as a user runs it: the binary, a policy directory, real HTTPS.

#![allow(clippy::unwrap_used)] // in tests a panic is the failure report

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use portcullis_webhook::testing::TestClient;
use portcullis_webhook::testing::process::{self, Spawned};
use serde_json::Value;

/// Starts `portcullis serve` on an ephemeral port and returns it with its address.
fn start(policies: &Path, certs: &Path) -> (Spawned, SocketAddr) {
    start_with(policies, certs, &[])
}

/// [`start`] with more flags.
fn start_with(policies: &Path, certs: &Path, extra: &[&str]) -> (Spawned, SocketAddr) {
    let mut server = Spawned::spawn(
        process::command(env!("CARGO_BIN_EXE_portcullis"))
            .args([
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--reload-interval",
                "100ms",
            ])
            .arg("--policies")
            .arg(policies)
            .arg("--self-signed-dir")
            .arg(certs)
            .args(extra)
            .stderr(Stdio::piped()),
    )
    .expect("spawn portcullis");
    let stderr = BufReader::new(server.child_mut().stderr.take().unwrap());
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in stderr.lines().map_while(Result::ok) {
            if let Some(addr) = line
                .strip_prefix("portcullis: serving https://")
                .and_then(|rest| rest.strip_suffix("/validate"))
            {
                let _ = tx.send(addr.to_owned());
            }
        }
    });
    let addr = rx
        .recv_timeout(Duration::from_secs(20))
        .expect("portcullis did not report its address within 20 s");
    (server, addr.parse().unwrap())
}

fn copy_dir(from: &Path, to: &Path) {
    for entry in std::fs::read_dir(from).unwrap() {
        let path = entry.unwrap().path();
        let target = to.join(path.file_name().unwrap());
        if path.is_dir() {
            std::fs::create_dir(&target).unwrap();
            copy_dir(&path, &target);
        } else {
            std::fs::copy(&path, target).unwrap();
        }
    }
}

fn fixture(name: &str) -> Vec<u8> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/fixtures/admission")
        .join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

async fn allowed(client: &TestClient, body: &[u8]) -> (bool, Value) {
    let reply = client.post("/validate", body.to_vec()).await.unwrap();
    assert_eq!(reply.status, 200);
    let review: Value = serde_json::from_slice(&reply.body).unwrap();
    (
        review["response"]["allowed"].as_bool().unwrap(),
        review["response"].clone(),
    )
}

#[tokio::test]
async fn serves_the_samples_and_reloads_edits_without_restart() {
    let policies = tempfile::tempdir().unwrap();
    let certs = tempfile::tempdir().unwrap();
    let samples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/samples");
    copy_dir(&samples, policies.path());
    let (_server, addr) = start(policies.path(), certs.path());
    let ca = std::fs::read_to_string(certs.path().join("ca.crt")).unwrap();
    let client = TestClient::new(
        addr,
        &ca,
        &[&rustls::version::TLS13, &rustls::version::TLS12],
    )
    .unwrap();
    assert_eq!(client.get("/readyz").await.unwrap().status, 200);

    // The samples: a Deployment from an untrusted registry is denied in env=prod.
    let deployment = fixture("validate-create-deployment.json");
    let (ok, response) = allowed(&client, &deployment).await;
    assert!(!ok, "{response}");
    assert!(
        response["status"]["message"]
            .as_str()
            .unwrap()
            .contains("ContainerPolicy \"trusted-registries\"")
    );

    // Trust that registry: the next answer allows it, without a restart.
    let trusted = policies.path().join("trusted-registries.yaml");
    let edited = std::fs::read_to_string(&trusted).unwrap().replace(
        "\"registry.k8s.io/**\"",
        "\"registry.example.com:5000/acme/**\"",
    );
    std::fs::write(&trusted, edited).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (ok, response) = allowed(&client, &deployment).await;
        if ok {
            assert!(
                response["warnings"]
                    .as_array()
                    .is_some_and(|w| !w.is_empty()),
                "still warned as unscanned: {response}"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the edited policy was not enforced within 10 s: {response}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[test]
fn bad_flags_and_paths_fail_with_a_message() {
    let out = Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args([
            "serve",
            "--policies",
            "/nonexistent/policies",
            "--listen",
            "127.0.0.1:0",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("/nonexistent/policies"), "{stderr}");

    let out = Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(["serve", "--policies", ".", "--tls-cert-file", "x.crt"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--tls-key-file"));
}

#[test]
fn crds_prints_the_committed_definitions() {
    let out = Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .arg("crds")
        .output()
        .unwrap();
    assert!(out.status.success());
    let printed = String::from_utf8(out.stdout).unwrap();
    for file in [
        "portcullis.dev_containerpolicies.yaml",
        "portcullis.dev_registryintegrations.yaml",
        "portcullis.dev_auditmonitors.yaml",
    ] {
        let committed = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../crds")
                .join(file),
        )
        .unwrap();
        assert!(
            printed.contains(&committed),
            "{file} is not what `portcullis crds` prints"
        );
    }
}

#[tokio::test]
async fn a_second_instance_on_a_taken_port_leaves_the_first_untouched() {
    let policies = tempfile::tempdir().unwrap();
    let certs = tempfile::tempdir().unwrap();
    let (_first, addr) = start(policies.path(), certs.path());
    let ca_before = std::fs::read_to_string(certs.path().join("ca.crt")).unwrap();

    let second = Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(["serve", "--listen", &addr.to_string()])
        .arg("--policies")
        .arg(policies.path())
        .arg("--self-signed-dir")
        .arg(certs.path())
        .output()
        .unwrap();
    assert!(!second.status.success());
    assert!(String::from_utf8_lossy(&second.stderr).contains("is another instance serving there?"));
    assert_eq!(
        std::fs::read_to_string(certs.path().join("ca.crt")).unwrap(),
        ca_before,
        "the CA in use was overwritten"
    );
    let client = TestClient::new(addr, &ca_before, &[&rustls::version::TLS13]).unwrap();
    assert_eq!(client.get("/healthz").await.unwrap().status, 200);
}

/// A digest-pinned image covered by a RegistryIntegration whose Trivy-JSON backend (a
/// simulated one, `portcullis_webhook::testing::scanners`) is up for the first process
/// and gone for the second: the second decides from the disk cache.
#[tokio::test]
async fn scan_results_survive_a_restart_with_the_scanner_down() {
    use portcullis_webhook::testing::scanners::{self, Scan, Sim};
    const DIGEST: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";
    let sim = Sim::with(&[(DIGEST, Scan::Done(vec![("CVE-2024-1", "Critical", "")]))]);
    let scanner = scanners::serve(scanners::trivy_json(sim.clone()))
        .await
        .unwrap();
    let policies = tempfile::tempdir().unwrap();
    let certs = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    let ca_bundle = serde_json::to_string(&scanner.certs.ca_pem).unwrap();
    std::fs::write(
        policies.path().join("scans.yaml"),
        format!(
            "apiVersion: portcullis.dev/v1alpha1\nkind: ContainerPolicy\nmetadata: {{name: no-criticals}}\n\
             spec: {{match: {{images: [\"registry.acme.test/**\"]}}, rules: {{vulnerabilities: {{maxCount: {{critical: 0}}, unscanned: Block}}}}}}\n---\n\
             apiVersion: portcullis.dev/v1alpha1\nkind: RegistryIntegration\nmetadata: {{name: scans}}\n\
             spec: {{registries: [\"registry.acme.test/**\"], timeout: 1s, scanner: {{http: {{url: \"https://localhost:{}/reports\", caBundle: {ca_bundle}}}}}}}\n",
            scanner.addr.port()
        ),
    )
    .unwrap();
    let body = String::from_utf8(fixture("validate-create-pod.json"))
        .unwrap()
        .replace(
            "nginx:1.25",
            &format!("registry.acme.test/prod/api@{DIGEST}"),
        )
        .into_bytes();
    let cache_dir = cache.path().to_str().unwrap();
    let decide = |addr| {
        let ca = std::fs::read_to_string(certs.path().join("ca.crt")).unwrap();
        let body = body.clone();
        async move {
            let client = TestClient::new(addr, &ca, &[&rustls::version::TLS13]).unwrap();
            let (ok, response) = allowed(&client, &body).await;
            (
                ok,
                response["status"]["message"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
            )
        }
    };

    let (mut first, addr) = start_with(policies.path(), certs.path(), &["--cache-dir", cache_dir]);
    let (ok, message) = decide(addr).await;
    assert!(
        !ok && message
            .contains("1 critical vulnerability (CVE-2024-1) exceeds maxCount.critical 0"),
        "{message}"
    );
    // SIGTERM: the process drains, flushes the cache and exits.
    first.terminate().unwrap();
    let status = first.wait_timeout(Duration::from_secs(30)).unwrap();
    assert!(
        status.is_some_and(|s| s.success()),
        "a clean exit on SIGTERM: {status:?}"
    );
    drop(scanner);

    let (_second, addr) = start_with(policies.path(), certs.path(), &["--cache-dir", cache_dir]);
    let (ok, again) = decide(addr).await;
    assert!(!ok && again == message, "{again}");
    assert_eq!(sim.hits(), 1);
}
