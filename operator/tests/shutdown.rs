//! `portcullis run` on SIGTERM: unready at once, still answering for the grace period,
//! then a clean exit. The API is simulated (see `support/fake_api.rs`).

#![allow(clippy::unwrap_used)] // in tests a panic is the failure report

mod support;

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::time::{Duration, Instant};

use portcullis_webhook::testing::TestClient;
use portcullis_webhook::testing::process::{self, Spawned};
use portcullis_webhook::tls::generate;
use support::fake_api::FakeApi;

const LEASES: &str = "/apis/coordination.k8s.io/v1/namespaces/portcullis-system/leases";

#[tokio::test]
async fn sigterm_turns_unready_then_drains() {
    let api = FakeApi::start().await;
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters: [{{name: fake, cluster: {{server: \"http://{}\"}}}}]\n\
             contexts: [{{name: fake, context: {{cluster: fake, user: fake}}}}]\ncurrent-context: fake\nusers: [{{name: fake, user: {{}}}}]\n",
            api.addr
        ),
    )
    .unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let certs = generate(&["localhost".into()]).unwrap();
    std::fs::write(dir.path().join("tls.crt"), &certs.cert_pem).unwrap();
    std::fs::write(dir.path().join("tls.key"), &certs.key_pem).unwrap();
    let mut child = Spawned::spawn(
        process::command(env!("CARGO_BIN_EXE_portcullis"))
            .args([
                "run",
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--metrics-listen",
                "127.0.0.1:0",
                "--shutdown-grace",
                "2s",
            ])
            .arg("--tls-cert-file")
            .arg(dir.path().join("tls.crt"))
            .arg("--tls-key-file")
            .arg(dir.path().join("tls.key"))
            .arg("--namespace")
            .arg("portcullis-system")
            .env("KUBECONFIG", &kubeconfig)
            .stderr(Stdio::piped()),
    )
    .unwrap();
    let stderr = child.child_mut().stderr.take();
    std::thread::spawn(move || stderr.map(|e| BufReader::new(e).lines().for_each(drop)));
    let ca = certs.ca_pem;
    let client = TestClient::new(
        format!("127.0.0.1:{port}").parse().unwrap(),
        &ca,
        &[&rustls::version::TLS13],
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while client.get("/readyz").await.map(|r| r.status).unwrap_or(0) != 200 {
        assert!(Instant::now() < deadline, "never became ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let holder = || api.object(LEASES, "portcullis-leader")["spec"]["holderIdentity"].clone();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !holder().is_string() {
        assert!(Instant::now() < deadline, "never became the leader");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    child.terminate().unwrap();
    let signalled = Instant::now();
    let deadline = signalled + Duration::from_secs(1);
    while client.get("/readyz").await.unwrap().status != 503 {
        assert!(Instant::now() < deadline, "still ready 1 s after SIGTERM");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let fixture = std::fs::read(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../shared/fixtures/admission/validate-create-pod.json"),
    )
    .unwrap();
    let during = client.post("/validate", fixture).await.unwrap();
    assert_eq!(
        during.status, 200,
        "admission requests are still answered during the grace period"
    );
    assert!(signalled.elapsed() < Duration::from_secs(2));

    // Polled without blocking: the simulated API server runs on this thread.
    let deadline = Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(status) = child.child_mut().try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "did not exit after grace and drain"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(status.success(), "{status}");
    assert!(
        holder().is_null(),
        "the lease is released on shutdown, not left to expire: {}",
        holder()
    );
    assert!(
        signalled.elapsed() >= Duration::from_secs(2),
        "exited before the grace period ended"
    );
}
