//! What the request path reads from the cluster, through the router with a simulated
//! reader (the real one, over the API server, is tested in e2e): a namespace the watch
//! has not delivered yet is read once — and when that fails, selector-scoped Block
//! policies count as matching — and a pre-1.22 ephemeral-containers request is judged
//! with the Pod it joins.

#![allow(clippy::unwrap_used)] // in tests a panic is the failure report

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::http::Request;
use common::*;
use futures::FutureExt;
use futures::future::BoxFuture;
use http_body_util::BodyExt;
use portcullis_webhook::cluster::ClusterReads;
use portcullis_webhook::policy::NamespaceLabels;
use portcullis_webhook::server::{AppState, router};
use serde_json::{Value, json};
use tower::ServiceExt;

/// A simulated cluster: namespaces by name (`None`: the read fails), one Pod.
struct Simulated {
    namespace: Option<NamespaceLabels>,
    pod: Option<Value>,
    reads: AtomicUsize,
}

impl ClusterReads for Simulated {
    fn namespace_labels<'a>(
        &'a self,
        _name: &'a str,
    ) -> BoxFuture<'a, Result<Option<NamespaceLabels>, String>> {
        self.reads.fetch_add(1, Ordering::Relaxed);
        let answer = self
            .namespace
            .clone()
            .map(Some)
            .ok_or_else(|| "connection refused".to_owned());
        async move { answer }.boxed()
    }

    fn pod<'a>(
        &'a self,
        _namespace: &'a str,
        _name: &'a str,
    ) -> BoxFuture<'a, Result<Option<String>, String>> {
        let pod = self.pod.as_ref().map(Value::to_string);
        async move { Ok(pod) }.boxed()
    }
}

fn simulated(namespace: Option<&[(&str, &str)]>, pod: Option<Value>) -> Arc<Simulated> {
    Arc::new(Simulated {
        namespace: namespace.map(|labels| {
            labels
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect()
        }),
        pod,
        reads: AtomicUsize::new(0),
    })
}

async fn answer(
    policies: &[(&str, &str)],
    cluster: Option<Arc<Simulated>>,
    review: &Value,
) -> Value {
    let state = AppState {
        cluster: cluster.map(|c| c as Arc<dyn ClusterReads>),
        ..state(policies)
    };
    let request = Request::post("/validate")
        .body(axum::body::Body::from(serde_json::to_vec(review).unwrap()))
        .unwrap();
    let body = router(state)
        .oneshot(request)
        .await
        .unwrap()
        .into_body()
        .collect()
        .await
        .unwrap()
        .to_bytes();
    response(&body)
}

/// The captured Pod review, moved to a namespace the snapshot has not seen.
fn in_new_namespace() -> Value {
    let mut review: Value = serde_json::from_slice(&fixture("validate-create-pod.json")).unwrap();
    review["request"]["namespace"] = json!("fresh");
    review["request"]["object"]["metadata"]["namespace"] = json!("fresh");
    review
}

const PROD_ONLY: &[(&str, &str)] = &[(
    "prod-no-hub",
    r#"{"match":{"namespaceSelector":{"matchLabels":{"env":"prod"}}},"rules":{"registries":{"deny":["docker.io/**"]}}}"#,
)];

#[tokio::test]
async fn a_namespace_the_watch_has_not_delivered_is_read_once() {
    let review = in_new_namespace();
    // Read from the API server: the labels decide.
    let prod = simulated(Some(&[("env", "prod")]), None);
    let denied = answer(PROD_ONLY, Some(prod.clone()), &review).await;
    assert_eq!(denied["allowed"], false, "{denied}");
    let message = denied["status"]["message"].as_str().unwrap();
    assert!(
        message.contains("ContainerPolicy \"prod-no-hub\""),
        "{message}"
    );
    assert!(!message.contains("could not be read"), "{message}");
    assert_eq!(prod.reads.load(Ordering::Relaxed), 1);

    let dev = simulated(Some(&[("env", "dev")]), None);
    assert_eq!(answer(PROD_ONLY, Some(dev), &review).await["allowed"], true);

    // The read fails: the selector-scoped Block policy counts as matching, and says so.
    let down = simulated(None, None);
    let denied = answer(PROD_ONLY, Some(down), &review).await;
    assert_eq!(denied["allowed"], false, "fail closed: {denied}");
    let message = denied["status"]["message"].as_str().unwrap();
    assert!(
        message.contains("the namespace's labels could not be read, so its match.namespaceSelector counts as matching"),
        "{message}"
    );

    // Warn and Audit policies are not assumed to match.
    let warn = &[(
        "prod-warn",
        r#"{"action":"Warn","match":{"namespaceSelector":{"matchLabels":{"env":"prod"}}},"rules":{"registries":{"deny":["docker.io/**"]}}}"#,
    )];
    let allowed = answer(warn, Some(simulated(None, None)), &review).await;
    assert_eq!(allowed["allowed"], true);
    assert!(allowed["warnings"].is_null(), "{allowed}");

    // A namespace the snapshot knows is never read.
    let known: Value = serde_json::from_slice(&fixture("validate-create-pod.json")).unwrap();
    let counting = simulated(Some(&[("env", "dev")]), None);
    let denied = answer(PROD_ONLY, Some(counting.clone()), &known).await;
    assert_eq!(
        denied["allowed"], false,
        "team-a is env=prod in the snapshot"
    );
    assert_eq!(counting.reads.load(Ordering::Relaxed), 0);
}

const NON_ROOT: &[(&str, &str)] = &[(
    "non-root",
    r#"{"rules":{"workload":{"requireRunAsNonRoot":true}}}"#,
)];

/// A debug container added to a Pod whose pod-level securityContext runs as non-root.
fn debug_review(legacy: bool) -> Value {
    let mut review: Value = serde_json::from_slice(&fixture("validate-create-pod.json")).unwrap();
    review["request"]["subResource"] = json!("ephemeralcontainers");
    review["request"]["operation"] = json!("UPDATE");
    let mut pod = review["request"]["object"].clone();
    pod["spec"]["securityContext"] = json!({"runAsNonRoot": true});
    for container in pod["spec"]["containers"].as_array_mut().unwrap() {
        container["securityContext"] = json!({"runAsNonRoot": true});
    }
    pod["spec"]["initContainers"] = json!([]);
    let debug = json!([{"name": "debug", "image": "busybox:1.36"}]);
    if legacy {
        review["request"]["kind"] =
            json!({"group": "", "version": "v1", "kind": "EphemeralContainers"});
        review["request"]["object"] = json!({"apiVersion": "v1", "kind": "EphemeralContainers",
            "metadata": {"name": "web", "namespace": "team-a"}, "ephemeralContainers": debug});
        review["request"]["oldObject"] = json!({"apiVersion": "v1", "kind": "EphemeralContainers",
            "metadata": {"name": "web", "namespace": "team-a"}, "ephemeralContainers": []});
    } else {
        review["request"]["oldObject"] = pod.clone();
        pod["spec"]["ephemeralContainers"] = debug;
        review["request"]["object"] = pod;
    }
    review
}

fn pod_running_as_non_root() -> Value {
    let review = debug_review(false);
    let mut pod = review["request"]["oldObject"].clone();
    pod["kind"] = json!("Pod");
    pod
}

#[tokio::test]
async fn ephemeral_containers_run_with_the_pods_own_settings() {
    // v1.22+: the Pod comes with the request.
    let allowed = answer(NON_ROOT, None, &debug_review(false)).await;
    assert_eq!(allowed["allowed"], true, "{allowed}");

    // v1.16–v1.21: the Pod is read from the cluster.
    let cluster = simulated(Some(&[]), Some(pod_running_as_non_root()));
    let allowed = answer(NON_ROOT, Some(cluster), &debug_review(true)).await;
    assert_eq!(allowed["allowed"], true, "{allowed}");

    // Unreadable Pod: the container is judged by its own settings (fails closed here).
    let denied = answer(NON_ROOT, None, &debug_review(true)).await;
    let message = denied["status"]["message"].as_str().unwrap();
    assert!(
        message.contains("ephemeral container \"debug\"") && message.contains("may run as root"),
        "{message}"
    );
}
