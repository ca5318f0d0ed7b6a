//! The serving certificate over real TLS: protocol versions, and rotation of the files
//! (as a Secret volume rotates them: a symlink swap) without a restart.

#![allow(clippy::unwrap_used)] // in tests a panic is the failure report

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::state;
use portcullis_webhook::server;
use portcullis_webhook::testing::{TestClient, TestServer};
use portcullis_webhook::tls::{CertStore, FileCert, GeneratedCerts, generate, server_config};
use rustls::version::{TLS12, TLS13};

#[tokio::test]
async fn serves_tls12_and_tls13() {
    let server = TestServer::start(state(&[])).await.unwrap();
    for version in [&TLS12, &TLS13] {
        let client = TestClient::new(server.addr, &server.certs.ca_pem, &[version]).unwrap();
        let reply = client
            .get("/healthz")
            .await
            .unwrap_or_else(|e| panic!("{version:?}: {e}"));
        assert_eq!(
            (reply.status, reply.body.as_slice()),
            (200, b"ok".as_slice())
        );
    }
    // A client that trusts another CA is refused.
    let other = generate(&["localhost".into()]).unwrap();
    assert!(
        TestClient::new(server.addr, &other.ca_pem, &[&TLS13, &TLS12])
            .unwrap()
            .get("/healthz")
            .await
            .is_err()
    );
}

/// Writes certificates the way the kubelet updates a Secret volume: a new timestamped
/// directory, then an atomic rename of the `..data` symlink the files point through.
fn publish(dir: &Path, generation: u32, certs: &GeneratedCerts) {
    let versioned = dir.join(format!("..v{generation}"));
    std::fs::create_dir(&versioned).unwrap();
    std::fs::write(versioned.join("tls.crt"), &certs.cert_pem).unwrap();
    std::fs::write(versioned.join("tls.key"), &certs.key_pem).unwrap();
    let tmp = dir.join("..data_tmp");
    std::os::unix::fs::symlink(versioned.file_name().unwrap(), &tmp).unwrap();
    std::fs::rename(&tmp, dir.join("..data")).unwrap();
    for file in ["tls.crt", "tls.key"] {
        let link = dir.join(file);
        if !link.exists() {
            std::os::unix::fs::symlink(Path::new("..data").join(file), link).unwrap();
        }
    }
}

async fn until_trusted(client: &TestClient) -> Vec<u8> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match client.get("/healthz").await {
            Ok(reply) => return reply.server_cert,
            Err(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(25)).await
            }
            Err(e) => panic!("the rotated certificate was not served within 10 s: {e}"),
        }
    }
}

#[tokio::test]
async fn rotated_certificate_files_are_served_without_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (first, second) = (
        generate(&["localhost".into()]).unwrap(),
        generate(&["localhost".into()]).unwrap(),
    );
    publish(dir.path(), 1, &first);

    let (files, key) =
        FileCert::load(&dir.path().join("tls.crt"), &dir.path().join("tls.key")).unwrap();
    let store = CertStore::new(key);
    tokio::spawn(files.watch(store.clone(), Duration::from_millis(50)));
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(server::serve(
        listener,
        server_config(store).unwrap(),
        server::router(state(&[])),
        async {
            let _ = stopped.await;
        },
    ));

    let old_client = TestClient::new(addr, &first.ca_pem, &[&TLS13]).unwrap();
    let new_client = TestClient::new(addr, &second.ca_pem, &[&TLS13]).unwrap();
    let served_first = until_trusted(&old_client).await;
    assert!(new_client.get("/healthz").await.is_err(), "not rotated yet");

    publish(dir.path(), 2, &second);
    let served_second = until_trusted(&new_client).await;
    assert_ne!(served_first, served_second);
    assert!(
        old_client.get("/healthz").await.is_err(),
        "the old certificate is no longer served"
    );

    // A broken update is refused; the current certificate keeps serving.
    std::fs::write(dir.path().join("..v2/tls.crt"), "not a certificate").unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(new_client.get("/healthz").await.unwrap().status, 200);
    drop(stop);
}

#[test]
fn mismatched_or_missing_files_fail_before_serving() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (
        generate(&["localhost".into()]).unwrap(),
        generate(&["localhost".into()]).unwrap(),
    );
    std::fs::write(dir.path().join("a.crt"), &a.cert_pem).unwrap();
    std::fs::write(dir.path().join("b.key"), &b.key_pem).unwrap();
    std::fs::write(dir.path().join("empty"), "").unwrap();
    let load = |cert: &str, key: &str| {
        FileCert::load(&dir.path().join(cert), &dir.path().join(key))
            .err()
            .map(|e| e.to_string())
    };
    assert!(
        load("a.crt", "b.key").is_some(),
        "a key that does not match the certificate"
    );
    assert!(load("empty", "b.key").unwrap().contains("no CERTIFICATE"));
    assert!(
        load("a.crt", "missing.key")
            .unwrap()
            .contains("missing.key")
    );
}
