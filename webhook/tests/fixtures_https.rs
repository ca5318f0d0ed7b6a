//! Every captured AdmissionReview, over real HTTPS, against policies that allow, warn
//! and deny it.

#![allow(clippy::unwrap_used)] // in tests a panic is the failure report

mod common;

use common::*;
use portcullis_webhook::testing::TestServer;
use serde_json::Value;

/// What each fixture holds (read off the captured objects): kind, name, first image
/// slot, its name and image as written, its normalized repository; and whether it is
/// evaluated (a label-only UPDATE is not).
#[derive(Clone, Copy)]
struct Expected(
    &'static str,
    &'static str,
    &'static str,
    &'static str,
    &'static str,
    &'static str,
    &'static str,
    bool,
);

const EXPECTED: &[Expected] = &[
    Expected(
        "mutate-create-pod-2.json",
        "Pod",
        "web",
        "init container",
        "init",
        "busybox:1.36",
        "docker.io/library/busybox",
        true,
    ),
    Expected(
        "mutate-create-pod-dryrun.json",
        "Pod",
        "dry",
        "container",
        "dry",
        "nginx:1.25",
        "docker.io/library/nginx",
        true,
    ),
    Expected(
        "mutate-create-pod.json",
        "Pod",
        "web",
        "init container",
        "init",
        "busybox:1.36",
        "docker.io/library/busybox",
        true,
    ),
    Expected(
        "validate-create-cronjob.json",
        "CronJob",
        "nightly",
        "container",
        "report",
        "docker.io/library/alpine:3.19",
        "docker.io/library/alpine",
        true,
    ),
    Expected(
        "validate-create-daemonset.json",
        "DaemonSet",
        "agent",
        "container",
        "agent",
        "quay.io/acme/agent:2.0",
        "quay.io/acme/agent",
        true,
    ),
    Expected(
        "validate-create-deployment.json",
        "Deployment",
        "api",
        "container",
        "api",
        "registry.example.com:5000/acme/api:v1.2.3",
        "registry.example.com:5000/acme/api",
        true,
    ),
    Expected(
        "validate-create-job.json",
        "Job",
        "migrate",
        "container",
        "migrate",
        "ghcr.io/acme/migrate:latest",
        "ghcr.io/acme/migrate",
        true,
    ),
    Expected(
        "validate-create-pod-dryrun.json",
        "Pod",
        "dry",
        "container",
        "dry",
        "nginx:1.25",
        "docker.io/library/nginx",
        true,
    ),
    Expected(
        "validate-create-pod.json",
        "Pod",
        "web",
        "init container",
        "init",
        "busybox:1.36",
        "docker.io/library/busybox",
        true,
    ),
    Expected(
        "validate-create-replicaset.json",
        "ReplicaSet",
        "rs",
        "container",
        "c",
        "localhost:5000/rs:1",
        "localhost:5000/rs",
        true,
    ),
    Expected(
        "validate-create-replicationcontroller.json",
        "ReplicationController",
        "rc",
        "container",
        "c",
        "gcr.io/google-containers/pause:3.2",
        "gcr.io/google-containers/pause",
        true,
    ),
    Expected(
        "validate-create-statefulset.json",
        "StatefulSet",
        "db",
        "container",
        "db",
        "postgres",
        "docker.io/library/postgres",
        true,
    ),
    Expected(
        "validate-update-deployment-2.json",
        "Deployment",
        "api",
        "container",
        "api",
        "registry.example.com:5000/acme/api:v1.2.3",
        "registry.example.com:5000/acme/api",
        true,
    ),
    Expected(
        "validate-update-deployment.json",
        "Deployment",
        "api",
        "container",
        "api",
        "registry.example.com:5000/acme/api:v1.2.4",
        "registry.example.com:5000/acme/api",
        true,
    ),
    Expected(
        "validate-update-pod-2.json",
        "Pod",
        "web",
        "init container",
        "init",
        "busybox:1.36",
        "docker.io/library/busybox",
        false,
    ),
    Expected(
        "validate-update-pod.json",
        "Pod",
        "web",
        "init container",
        "init",
        "busybox:1.36",
        "docker.io/library/busybox",
        true,
    ),
];

fn uid(body: &[u8]) -> String {
    let review: Value = serde_json::from_slice(body).unwrap();
    review["request"]["uid"].as_str().unwrap().to_owned()
}

async fn answer(server: &TestServer, body: &[u8]) -> Value {
    let reply = server
        .client()
        .unwrap()
        .post("/validate", body.to_vec())
        .await
        .unwrap();
    assert_eq!(
        reply.status,
        200,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    let response = response(&reply.body);
    assert_eq!(
        response["uid"].as_str().unwrap(),
        uid(body),
        "the answer echoes request.uid"
    );
    response
}

#[tokio::test]
async fn every_fixture_allowed_warned_and_denied() {
    let fixtures = fixtures();
    assert_eq!(
        fixtures.len(),
        EXPECTED.len(),
        "a fixture was added: describe it in EXPECTED"
    );
    let allow = TestServer::start(state(&[(
        "trusted",
        r#"{"rules":{"registries":{"allow":["**"]}}}"#,
    )]))
    .await
    .unwrap();
    let warn = TestServer::start(state(&[(
        "deny-all",
        r#"{"action":"Warn","rules":{"registries":{"deny":["**"]}}}"#,
    )]))
    .await
    .unwrap();
    let deny = TestServer::start(state(&[(
        "deny-all",
        r#"{"rules":{"registries":{"deny":["**"]}}}"#,
    )]))
    .await
    .unwrap();

    for ((file, body), expected) in fixtures.iter().zip(EXPECTED) {
        let Expected(name, kind, object, slot, container, image, repository, evaluated) = *expected;
        assert_eq!(file, name);
        let violation = format!(
            "{kind} team-a/{object}: {slot} \"{container}\" image {image} violates ContainerPolicy \"deny-all\": \
             repository {repository} matches rules.registries.deny \"**\""
        );

        let allowed = answer(&allow, body).await;
        assert_eq!(allowed["allowed"], true, "{file}");
        assert!(allowed.get("warnings").is_none(), "{file}: {allowed}");

        let warned = answer(&warn, body).await;
        assert_eq!(warned["allowed"], true, "{file}");
        if evaluated {
            assert_eq!(warned["warnings"][0], violation.as_str(), "{file}");
        } else {
            assert!(
                warned.get("warnings").is_none(),
                "{file}: an UPDATE without pod-spec change is not evaluated"
            );
        }

        let denied = answer(&deny, body).await;
        if evaluated {
            assert_eq!(denied["allowed"], false, "{file}");
            assert_eq!(denied["status"]["code"], 403, "{file}");
            let message = denied["status"]["message"].as_str().unwrap();
            assert!(
                message.starts_with(&violation),
                "{file}:\n{message}\nshould start with\n{violation}"
            );
        } else {
            assert_eq!(denied["allowed"], true, "{file}: label-only UPDATE");
        }
    }
}

#[tokio::test]
async fn privileged_pod_is_denied_for_each_setting() {
    let server = TestServer::start(state(&[(
        "restricted",
        r#"{"rules":{"workload":{"denyPrivileged":true,"denyHostNamespaces":true,"denyHostPath":true,"requireRunAsNonRoot":true}}}"#,
    )]))
    .await.unwrap();
    let denied = answer(&server, &fixture("validate-create-pod.json")).await;
    assert_eq!(denied["allowed"], false);
    let message = denied["status"]["message"].as_str().unwrap();
    for part in [
        "Pod team-a/web: init container \"init\" image busybox:1.36 violates ContainerPolicy \"restricted\": may run as root",
        "container \"app\" image nginx:1.25 violates ContainerPolicy \"restricted\": runs privileged (rules.workload.denyPrivileged)",
        "container \"app\" image nginx:1.25 violates ContainerPolicy \"restricted\": runs as root: runAsUser is 0",
        "pod spec violates ContainerPolicy \"restricted\": uses host namespaces: hostNetwork (rules.workload.denyHostNamespaces)",
        "pod spec violates ContainerPolicy \"restricted\": mounts hostPath volumes \"host\" (rules.workload.denyHostPath)",
    ] {
        assert!(message.contains(part), "missing {part:?} in\n{message}");
    }
    assert!(
        !message.contains("runs privileged (rules.workload.denyPrivileged); container \"sidecar\""),
        "only app is privileged"
    );
}

#[tokio::test]
async fn namespace_selector_kinds_and_update_rule() {
    let by_label = TestServer::start(state(&[
        ("prod-only", r#"{"match":{"namespaceSelector":{"matchLabels":{"env":"prod"}},"kinds":["Deployment"]},"rules":{"tags":{"requireDigest":true}}}"#),
        ("staging-only", r#"{"match":{"namespaceSelector":{"matchLabels":{"env":"staging"}}},"rules":{"registries":{"deny":["**"]}}}"#),
    ]))
    .await.unwrap();
    let deployment = answer(&by_label, &fixture("validate-create-deployment.json")).await;
    assert_eq!(deployment["allowed"], false);
    assert!(
        deployment["status"]["message"]
            .as_str()
            .unwrap()
            .contains("ContainerPolicy \"prod-only\": image is not pinned by digest")
    );
    let pod = answer(&by_label, &fixture("validate-create-pod.json")).await;
    assert_eq!(
        pod["allowed"], true,
        "kinds: [Deployment] does not match a Pod: {pod}"
    );

    // The image change on UPDATE is evaluated against the new image only.
    let pinned = TestServer::start(state(&[("no-v124", r#"{"rules":{"registries":{"deny":["registry.example.com:5000/**"]},"tags":{"denyLatest":true}}}"#)])).await.unwrap();
    let update = answer(&pinned, &fixture("validate-update-deployment.json")).await;
    let message = update["status"]["message"].as_str().unwrap();
    assert!(
        message.contains("image registry.example.com:5000/acme/api:v1.2.4 violates"),
        "{message}"
    );
    assert!(!message.contains("v1.2.3"), "{message}");
}
