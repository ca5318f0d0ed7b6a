//! Certificate rotation under load, against a real API server: a certificate lifetime
//! short enough for two renewals while Pods are created through the API server at
//! 20/s. The leader trusts each new CA before any replica serves it; not one TLS
//! handshake or admission may fail.

#![allow(clippy::unwrap_used)] // in tests a panic is the failure report

mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use support::installed::Installed;
use support::load::create_pods;
use support::shared_cluster;

#[tokio::test(flavor = "multi_thread")]
async fn certificates_rotate_twice_under_load_without_an_error() {
    let Some(cluster) = shared_cluster() else {
        return;
    };
    // Renewed at two thirds of the lifetime: about every 16 s.
    let installed = Installed::start(
        &cluster,
        "pc-rotation",
        2,
        &["--cert-lifetime", "24s", "--shutdown-grace", "1s"],
    )
    .await;
    let client = cluster.client().await;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &installed.namespace);
    let watch_certs = tokio::spawn(async move {
        let mut seen = BTreeSet::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(44);
        while tokio::time::Instant::now() < deadline {
            if let Ok(secret) = secrets.get("portcullis-tls").await
                && let Some(issued) = secret
                    .metadata
                    .annotations
                    .as_ref()
                    .and_then(|a| a.get("portcullis.dev/not-before"))
            {
                seen.insert(issued.clone());
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        seen
    });
    let report = create_pods(
        client,
        &installed.namespace,
        "load",
        &installed.policy,
        20,
        Duration::from_secs(45),
    )
    .await;
    let certificates = watch_certs.await.unwrap();
    println!(
        "certificate rotation under load: {report}; certificates served: {}",
        certificates.len()
    );
    assert!(
        certificates.len() >= 3,
        "expected the first certificate and two renewals, saw {certificates:?}"
    );
    report.assert_no_failures();
    assert_eq!(report.admitted + report.denied, report.sent);
}
