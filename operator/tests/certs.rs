//! Self-managed TLS against a simulated API (see `support/fake_api.rs`): issuing,
//! renewal at two thirds of the lifetime with both CAs trusted during the overlap,
//! replicas picking up the rotated Secret, and clients that never see a failed
//! handshake across the rotation.

#![allow(clippy::unwrap_used)] // in tests a panic is the failure report

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use base64::Engine;
use portcullis::certs::{CertSettings, Outcome, reconcile, serve_from_secret};
use portcullis_webhook::server::{self, Readiness};
use portcullis_webhook::testing::TestClient;
use portcullis_webhook::tls::{CertStore, certified_key, generate, server_config};
use serde_json::json;
use support::fake_api::FakeApi;

const WEBHOOKS: &str = "/apis/admissionregistration.k8s.io/v1/validatingwebhookconfigurations";
const SECRETS: &str = "/api/v1/namespaces/portcullis-system/secrets";
const DAY: Duration = Duration::from_secs(86400);

async fn setup(lifetime: Duration) -> (Arc<FakeApi>, kube::Client, CertSettings) {
    let api = FakeApi::start().await;
    api.apply(
        WEBHOOKS,
        json!({"apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingWebhookConfiguration", "metadata": {"name": "portcullis"},
               "webhooks": [{"name": "validate.portcullis.dev", "admissionReviewVersions": ["v1"], "sideEffects": "NoneOnDryRun",
                             "clientConfig": {"service": {"name": "portcullis", "namespace": "portcullis-system", "path": "/validate"}}}]}),
    );
    let client = kube::Client::try_from(kube::Config::new(
        format!("http://{}", api.addr).parse().unwrap(),
    ))
    .unwrap();
    let settings = CertSettings {
        namespace: "portcullis-system".into(),
        secret: "portcullis-tls".into(),
        webhook: "portcullis".into(),
        service: "portcullis".into(),
        extra_names: vec!["localhost".into()],
        lifetime,
    };
    (api, client, settings)
}

/// A base64 field of an API object, decoded (empty when absent).
fn decoded(field: &serde_json::Value) -> String {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(field.as_str().unwrap_or_default())
        .unwrap();
    String::from_utf8(bytes).unwrap()
}

fn ca_bundle(api: &FakeApi) -> String {
    decoded(&api.object(WEBHOOKS, "portcullis")["webhooks"][0]["clientConfig"]["caBundle"])
}

fn secret_field(api: &FakeApi, key: &str) -> String {
    decoded(&api.object(SECRETS, "portcullis-tls")["data"][key])
}

fn certificates(pem: &str) -> usize {
    pem.matches("-----BEGIN CERTIFICATE-----").count()
}

#[tokio::test]
async fn issues_renews_with_overlap_and_drops_the_old_ca() {
    let (api, client, settings) = setup(90 * DAY).await;
    let start = SystemTime::now();

    assert_eq!(
        reconcile(&client, &settings, start).await.unwrap().outcome,
        Outcome::Created
    );
    let first_ca = secret_field(&api, "ca.crt");
    assert_eq!(ca_bundle(&api), first_ca, "the webhook trusts the new CA");
    assert_eq!(
        api.object(SECRETS, "portcullis-tls")["type"],
        "kubernetes.io/tls"
    );
    let (cert, key) = (secret_field(&api, "tls.crt"), secret_field(&api, "tls.key"));
    certified_key(cert.as_bytes(), key.as_bytes()).unwrap();

    assert_eq!(
        reconcile(&client, &settings, start + 59 * DAY)
            .await
            .unwrap()
            .outcome,
        Outcome::Unchanged,
        "before two thirds of the life"
    );

    // Someone re-applies config/default and wipes the caBundle: the leader restores it.
    let mut config = api.object(WEBHOOKS, "portcullis");
    config["webhooks"][0]["clientConfig"]
        .as_object_mut()
        .unwrap()
        .remove("caBundle");
    api.apply(WEBHOOKS, config);
    assert_eq!(
        reconcile(&client, &settings, start + 59 * DAY)
            .await
            .unwrap()
            .outcome,
        Outcome::BundleUpdated
    );
    assert_eq!(ca_bundle(&api), first_ca);

    // At two thirds: a new CA and certificate; both CAs trusted while the old one is valid.
    assert_eq!(
        reconcile(&client, &settings, start + 61 * DAY)
            .await
            .unwrap()
            .outcome,
        Outcome::Renewed
    );
    let second_ca = secret_field(&api, "ca.crt");
    assert_ne!(first_ca, second_ca);
    assert_ne!(secret_field(&api, "tls.crt"), cert);
    let bundle = ca_bundle(&api);
    assert_eq!(certificates(&bundle), 2);
    assert!(
        bundle.contains(&first_ca) && bundle.contains(&second_ca),
        "overlap: old and new CA trusted"
    );

    assert_eq!(
        reconcile(&client, &settings, start + 80 * DAY)
            .await
            .unwrap()
            .outcome,
        Outcome::Unchanged
    );
    // Once the old certificate has expired, only the new CA stays trusted.
    assert_eq!(
        reconcile(&client, &settings, start + 91 * DAY)
            .await
            .unwrap()
            .outcome,
        Outcome::BundleUpdated
    );
    assert_eq!(ca_bundle(&api), second_ca);
    assert_eq!(secret_field(&api, "ca-bundle.crt"), second_ca);
}

#[tokio::test]
async fn replicas_serve_the_rotated_secret_and_clients_never_fail() {
    let (api, client, settings) = setup(Duration::from_secs(9)).await;

    // A replica starts before any certificate exists: a throwaway one, unready.
    let placeholder = generate(&["localhost".into()]).unwrap();
    let store = CertStore::new(
        certified_key(
            placeholder.cert_pem.as_bytes(),
            placeholder.key_pem.as_bytes(),
        )
        .unwrap(),
    );
    let ready = Readiness::default();
    tokio::spawn(serve_from_secret(
        client.clone(),
        settings.clone(),
        store.clone(),
        ready.clone(),
    ));
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let state = server::AppState::new(
        Arc::new(arc_swap::ArcSwap::from_pointee(Default::default())),
        portcullis_webhook::scan::ScanService::in_memory(),
        ready.clone(),
    );
    tokio::spawn(server::serve(
        listener,
        server_config(store).unwrap(),
        server::router(state),
        std::future::pending(),
    ));

    assert_eq!(
        reconcile(&client, &settings, SystemTime::now())
            .await
            .unwrap()
            .outcome,
        Outcome::Created
    );
    ready.policies_synced();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !ready.is_ready() {
        assert!(
            Instant::now() < deadline,
            "the replica never loaded the Secret's certificate"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Like the API server: trust whatever the webhook's caBundle says, handshake again
    // and again while the leader rotates. No request may fail.
    let first_served = TestClient::new(addr, &ca_bundle(&api), &[&rustls::version::TLS13])
        .unwrap()
        .get("/healthz")
        .await
        .unwrap()
        .server_cert;
    let mut renewed = false;
    let mut requests = 0;
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut last_served = first_served.clone();
    while Instant::now() < deadline && (!renewed || last_served == first_served) {
        let client_now =
            TestClient::new(addr, &ca_bundle(&api), &[&rustls::version::TLS13]).unwrap();
        let reply = client_now
            .get("/healthz")
            .await
            .unwrap_or_else(|e| panic!("handshake {requests} failed during rotation: {e}"));
        assert_eq!(reply.status, 200);
        last_served = reply.server_cert;
        requests += 1;
        if !renewed {
            renewed = reconcile(&client, &settings, SystemTime::now())
                .await
                .unwrap()
                .outcome
                == Outcome::Renewed;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        renewed,
        "the certificate was not renewed at two thirds of its 9 s life"
    );
    assert_ne!(
        last_served, first_served,
        "the replica serves the renewed certificate without a restart"
    );
    assert!(
        requests > 20,
        "only {requests} handshakes across the rotation"
    );
}
