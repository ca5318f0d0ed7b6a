//! The API server goes away and comes back (an API server of the test's own, stopped
//! and started again on the same port and etcd): Portcullis keeps deciding from its
//! last snapshot meanwhile, stays ready, then resumes its watches and status writes.

#![allow(clippy::unwrap_used)] // in tests a panic is the failure report

mod support;

use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use portcullis::controller::lookup::ApiReads;
use portcullis_webhook::cluster::ClusterReads;
use portcullis_webhook::testing::TestClient;
use support::cluster::PrivateCluster;
use support::replica::Installation;
use support::{eventually, free_port, policy, repo};

/// A real Pod review (images nginx:1.25 and a pinned sidecar), in `namespace`.
fn review(namespace: &str) -> Vec<u8> {
    let captured =
        std::fs::read(repo().join("../shared/fixtures/admission/validate-create-pod.json"))
            .expect("../shared/fixtures/admission beside the repository");
    let mut review: serde_json::Value = serde_json::from_slice(&captured).unwrap();
    review["request"]["namespace"] = namespace.into();
    review["request"]["object"]["metadata"]["namespace"] = namespace.into();
    serde_json::to_vec(&review).unwrap()
}

async fn decide(client: &TestClient) -> serde_json::Value {
    decide_in(client, "team-a").await
}

async fn decide_in(client: &TestClient, namespace: &str) -> serde_json::Value {
    let reply = client
        .post("/validate", review(namespace))
        .await
        .expect("the webhook answers");
    assert_eq!(reply.status, 200);
    let review: serde_json::Value = serde_json::from_slice(&reply.body).unwrap();
    review["response"].clone()
}

#[tokio::test(flavor = "multi_thread")]
async fn decisions_continue_while_the_api_server_is_down_and_status_catches_up() {
    let Some(private) = PrivateCluster::start() else {
        return;
    };
    let cluster = &private.cluster;
    cluster.install_crds();
    cluster.kubectl_ok(&["create", "namespace", "portcullis-system"], None);
    cluster
        .apply("apiVersion: v1\nkind: Namespace\nmetadata: {name: team-a, labels: {tier: dev}}\n");
    cluster.apply(&policy(
        "no-docker-hub",
        "{match: {namespaces: [team-a]}, rules: {registries: {deny: [\"docker.io/**\"]}}}",
    ));
    // Selects namespaces by label: a namespace the watch has not delivered is read.
    cluster.apply(&policy(
        "prod-no-hub",
        "{match: {namespaceSelector: {matchLabels: {tier: prod}}}, rules: {registries: {deny: [\"docker.io/**\"]}}}",
    ));
    // The caBundle has no configuration to go to here; the certificate still comes
    // from the Secret the leader keeps.
    let installation = Installation {
        cluster: cluster.clone(),
        namespace: "portcullis-system".into(),
        webhook_configuration: "portcullis".into(),
        // The test client checks the name `localhost`.
        flags: vec!["--self-signed-name".into(), "localhost".into()],
    };
    let replica = installation.start("replica-0", free_port());
    replica.wait_ready(Duration::from_secs(60)).await;
    eventually("the policy Ready", Duration::from_secs(30), || {
        cluster.policy_ready("no-docker-hub", "status") == "True"
    });
    let secrets: Api<Secret> = Api::namespaced(cluster.client().await, "portcullis-system");
    let secret = secrets.get("portcullis-tls").await.unwrap();
    let ca = String::from_utf8(secret.data.unwrap()["ca.crt"].0.clone()).unwrap();
    let client = TestClient::new(
        replica.webhook,
        &ca,
        &[&rustls::version::TLS13, &rustls::version::TLS12],
    )
    .unwrap();
    let before = decide(&client).await;
    assert_eq!(before["allowed"], false, "{before}");
    let labels_unknown = "the namespace's labels could not be read, so its match.namespaceSelector counts as matching";
    assert!(
        !before.to_string().contains("prod-no-hub"),
        "team-a is tier=dev, from the watch: {before}"
    );

    // The request path's reads, against the real API server: labels of a namespace,
    // none for one that does not exist, an error within the deadline when it is down.
    let reads = ApiReads::new(cluster.client().await, std::sync::Arc::default());
    let labels = reads.namespace_labels("team-a").await.unwrap().unwrap();
    assert_eq!(labels["tier"], "dev");
    assert_eq!(reads.namespace_labels("nowhere").await, Ok(None));
    // A namespace no watch delivered (it does not exist): selector Block policies apply.
    let unseen = decide_in(&client, "unseen").await;
    assert!(
        unseen["allowed"] == false && unseen.to_string().contains(labels_unknown),
        "{unseen}"
    );

    private.stop_api_server();
    // A fresh client: the first one's keep-alive connection may still reach the API
    // server while it drains, after its port has closed.
    let reads = ApiReads::new(cluster.client().await, std::sync::Arc::default());
    let started = std::time::Instant::now();
    assert!(reads.namespace_labels("down").await.is_err());
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "the read has a deadline"
    );
    let unseen = decide_in(&client, "unseen-while-down").await;
    assert!(
        unseen["allowed"] == false && unseen.to_string().contains(labels_unknown),
        "fail closed while the API server is down: {unseen}"
    );
    for _ in 0..10 {
        let during = decide(&client).await;
        assert_eq!(during, before, "the same decision from the last snapshot");
        assert!(
            replica.ready().await,
            "still ready: the last snapshot keeps enforcing"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    private.start_api_server();
    // Deleted and created again as Warn right after the restart: the same name and
    // generation 1, another uid. The watches see both events, or re-list (their
    // resource version is older than the restarted API server's cache) and see only
    // the new object: either way it must replace the old one.
    cluster.kubectl_ok(&["delete", "containerpolicy", "no-docker-hub"], None);
    cluster.apply(&policy(
        "no-docker-hub",
        "{action: Warn, match: {namespaces: [team-a]}, rules: {registries: {deny: [\"docker.io/**\"]}}}",
    ));
    cluster.apply(&policy(
        "warn-digest",
        "{action: Warn, match: {namespaces: [team-a]}, rules: {tags: {requireDigest: true}}}",
    ));
    for name in ["warn-digest", "no-docker-hub"] {
        eventually(
            "the policies' status written (watches and status resumed)",
            Duration::from_secs(90),
            || cluster.policy_ready(name, "status") == "True",
        );
    }
    // Ready=True says enforced: both are, at once.
    let after = decide(&client).await;
    let warnings = after["warnings"].to_string();
    assert!(
        warnings.contains("warn-digest")
            && warnings.contains("no-docker-hub")
            && after["allowed"] == true,
        "the new policy and the created-again one are enforced: {after}"
    );
}
