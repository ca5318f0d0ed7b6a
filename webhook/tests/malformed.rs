//! Bodies that are not a usable AdmissionReview: the right status, never a panic, and
//! never "allowed" for an object the policies would deny.

#![allow(clippy::unwrap_used)] // in tests a panic is the failure report

mod common;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use common::*;
use http_body_util::BodyExt;
use portcullis_webhook::server::{MAX_BODY, router};
use serde_json::{Value, json};
use tower::ServiceExt;

const DENY_ALL: &[(&str, &str)] = &[("deny-all", r#"{"rules":{"registries":{"deny":["**"]}}}"#)];

async fn post(body: impl Into<Body>) -> (StatusCode, Vec<u8>) {
    let app = router(state(DENY_ALL));
    let request = Request::post("/validate")
        .header("content-type", "application/json")
        .body(body.into())
        .unwrap();
    let response = app.oneshot(request).await.unwrap();
    let status = response.status();
    (
        status,
        response
            .into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes()
            .to_vec(),
    )
}

fn pod_review() -> Value {
    serde_json::from_slice(&fixture("validate-create-pod.json")).unwrap()
}

#[tokio::test]
async fn envelope_errors_are_400_with_a_reason() {
    let mut v1beta1 = pod_review();
    v1beta1["apiVersion"] = json!("admission.k8s.io/v1beta1");
    let mut no_uid = pod_review();
    no_uid["request"].as_object_mut().unwrap().remove("uid");
    let mut uid_number = pod_review();
    uid_number["request"]["uid"] = json!(42);
    let without = |field: &str| {
        let mut review = pod_review();
        review["request"].as_object_mut().unwrap().remove(field);
        serde_json::to_vec(&review).unwrap()
    };
    let mut empty_kind = pod_review();
    empty_kind["request"]["kind"] = json!({});
    let full = fixture("validate-create-pod.json");
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("not JSON", b"not json".to_vec(), "invalid JSON"),
        ("empty body", Vec::new(), "invalid JSON"),
        ("truncated", full[..full.len() / 2].to_vec(), "invalid JSON"),
        ("not UTF-8", vec![0xff, 0xfe, b'{'], "not UTF-8"),
        (
            "a JSON array",
            b"[1,2]".to_vec(),
            "malformed AdmissionReview",
        ),
        (
            "no apiVersion",
            br#"{"kind":"AdmissionReview"}"#.to_vec(),
            "unsupported AdmissionReview apiVersion \"\"",
        ),
        (
            "v1beta1",
            serde_json::to_vec(&v1beta1).unwrap(),
            "admission.k8s.io/v1beta1",
        ),
        (
            "no request",
            br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}"#.to_vec(),
            "has no request",
        ),
        ("no uid", serde_json::to_vec(&no_uid).unwrap(), "has no uid"),
        (
            "uid not a string",
            serde_json::to_vec(&uid_number).unwrap(),
            "request.uid",
        ),
        // Without these nothing can be decided; never "allowed".
        ("no operation", without("operation"), "has no operation"),
        ("no kind", without("kind"), "has no kind"),
        (
            "an empty kind",
            serde_json::to_vec(&empty_kind).unwrap(),
            "has no kind",
        ),
        ("no resource", without("resource"), "has no resource"),
    ];
    for (what, body, reason) in cases {
        let (status, answer) = post(body).await;
        let answer = String::from_utf8_lossy(&answer);
        assert_eq!(status, StatusCode::BAD_REQUEST, "{what}: {answer}");
        assert!(
            answer.contains(reason),
            "{what}: {answer:?} should say {reason:?}"
        );
    }
}

#[tokio::test]
async fn oversized_bodies_are_413_and_large_ones_are_served() {
    let (status, _) = post(vec![b' '; MAX_BODY + 1]).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);

    // A review just under the limit (padding in an annotation) is decided as usual.
    let mut review = pod_review();
    let padding = "x".repeat(MAX_BODY - 64 * 1024);
    review["request"]["object"]["metadata"]["annotations"]["padding"] = json!(padding);
    let (status, answer) = post(serde_json::to_vec(&review).unwrap()).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(response(&answer)["allowed"], false);
}

#[tokio::test]
async fn unreadable_objects_are_denied_naming_the_field() {
    let cases: Vec<(&str, Value, &str)> = vec![
        (
            "containers not a list",
            json!({"containers": "nginx"}),
            "Pod object cannot be read as Pod: spec.containers: invalid type: string",
        ),
        (
            "image a number",
            json!({"containers": [{"name": "a", "image": 5}]}),
            "spec.containers[0].image: invalid type: integer `5`",
        ),
        (
            "privileged a string",
            json!({"containers": [{"name": "a", "image": "nginx", "securityContext": {"privileged": "yes"}}]}),
            "spec.containers[0].securityContext.privileged",
        ),
        ("spec a list", json!([]), "Pod object cannot be read as Pod"),
    ];
    for (what, spec, want) in cases {
        let mut review = pod_review();
        review["request"]["object"]["spec"] = spec;
        let (status, answer) = post(serde_json::to_vec(&review).unwrap()).await;
        assert_eq!(status, StatusCode::OK, "{what}");
        let response = response(&answer);
        assert_eq!(response["allowed"], false, "{what}");
        let message = response["status"]["message"].as_str().unwrap();
        assert!(message.contains(want), "{what}: {message}");
    }

    let mut no_object = pod_review();
    no_object["request"]["object"] = Value::Null;
    let (_, answer) = post(serde_json::to_vec(&no_object).unwrap()).await;
    assert_eq!(
        response(&answer)["status"]["message"],
        "request.object is missing"
    );

    let mut deployment: Value =
        serde_json::from_slice(&fixture("validate-create-deployment.json")).unwrap();
    deployment["request"]["object"]["spec"]["template"] = json!("oops");
    let (_, answer) = post(serde_json::to_vec(&deployment).unwrap()).await;
    let message = response(&answer)["status"]["message"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        message.starts_with(
            "Deployment object cannot be read as Deployment: spec.template: invalid type"
        ),
        "{message}"
    );
}

#[tokio::test]
async fn untouched_requests_are_allowed() {
    let mut delete = pod_review();
    delete["request"]["operation"] = json!("DELETE");
    let mut service = pod_review();
    service["request"]["kind"] = json!({"group": "", "version": "v1", "kind": "Service"});
    let mut status_update = pod_review();
    status_update["request"]["subResource"] = json!("status");
    let mut wrong_group = pod_review();
    wrong_group["request"]["kind"]["group"] = json!("example.com");
    for (what, review) in [
        ("DELETE", delete),
        ("Service", service),
        ("pods/status", status_update),
        ("example.com Pod", wrong_group),
    ] {
        let (status, answer) = post(serde_json::to_vec(&review).unwrap()).await;
        assert_eq!(status, StatusCode::OK, "{what}");
        assert_eq!(response(&answer)["allowed"], true, "{what}");
    }
}

/// The deny message the webhook answers `review` with.
async fn deny_message(review: &Value) -> String {
    let (_, answer) = post(serde_json::to_vec(review).unwrap()).await;
    response(&answer)["status"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

#[tokio::test]
async fn ephemeral_containers_are_evaluated_in_both_shapes() {
    let debug = "Pod team-a/web: ephemeral container \"debug\" image busybox:1.36 violates";

    // v1.22+: the subresource carries the whole Pod; only the ephemeral containers are new.
    let mut pod = pod_review();
    pod["request"]["subResource"] = json!("ephemeralcontainers");
    pod["request"]["operation"] = json!("UPDATE");
    pod["request"]["oldObject"] = pod["request"]["object"].clone();
    pod["request"]["object"]["spec"]["ephemeralContainers"] =
        json!([{"name": "debug", "image": "busybox:1.36"}]);
    let message = deny_message(&pod).await;
    assert!(message.starts_with(debug), "{message}");
    assert!(
        !message.contains("container \"app\""),
        "only the ephemeral containers are evaluated: {message}"
    );

    // v1.16–v1.21: an EphemeralContainers object.
    let mut legacy = pod_review();
    legacy["request"]["subResource"] = json!("ephemeralcontainers");
    legacy["request"]["kind"] =
        json!({"group": "", "version": "v1", "kind": "EphemeralContainers"});
    legacy["request"]["object"] = json!({
        "apiVersion": "v1", "kind": "EphemeralContainers", "metadata": {"name": "web", "namespace": "team-a"},
        "ephemeralContainers": [{"name": "debug", "image": "busybox:1.36"}]
    });
    let message = deny_message(&legacy).await;
    assert!(message.starts_with(debug), "{message}");
}

#[tokio::test]
async fn health_and_readiness() {
    let state = state(&[]);
    let ready = state.ready.clone();
    let app = router(state);
    let get = |path: &str| Request::get(path).body(Body::empty()).unwrap();
    assert_eq!(
        app.clone().oneshot(get("/healthz")).await.unwrap().status(),
        StatusCode::OK
    );
    assert_eq!(
        app.clone().oneshot(get("/readyz")).await.unwrap().status(),
        StatusCode::OK
    );
    let review = || {
        Request::post("/validate")
            .body(Body::from(fixture("validate-create-pod.json")))
            .unwrap()
    };
    let answer = app.clone().oneshot(review()).await.unwrap();
    assert!(
        answer.headers().get("connection").is_none(),
        "kept alive while serving"
    );
    ready.stopping();
    // During the grace period answers still come, each closing its connection, so the
    // client moves to a replica that stays before this one stops.
    let answer = app.clone().oneshot(review()).await.unwrap();
    assert_eq!(answer.status(), StatusCode::OK);
    assert_eq!(answer.headers().get("connection").unwrap(), "close");
    let response = app.clone().oneshot(get("/readyz")).await.unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body.as_ref(), b"shutting down", "the 503 says why");

    // A replica whose certificate is not loaded yet says so.
    let waiting = portcullis_webhook::server::Readiness::default();
    waiting.policies_synced();
    let app_waiting = router(portcullis_webhook::server::AppState {
        ready: waiting,
        ..common::state(&[])
    });
    let body = app_waiting
        .oneshot(get("/readyz"))
        .await
        .unwrap()
        .into_body()
        .collect()
        .await
        .unwrap()
        .to_bytes();
    assert_eq!(body.as_ref(), b"serving certificate not loaded yet");
    assert_eq!(
        app.oneshot(get("/validate")).await.unwrap().status(),
        StatusCode::METHOD_NOT_ALLOWED
    );
}
