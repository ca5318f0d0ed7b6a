//! ContainerPolicies, RegistryIntegrations and AuditMonitors are checked when applied:
//! the webhook compiles them with the controller's compiler and rejects what would not
//! compile, naming every bad field (the real API server's side: e2e `policy_admission`).

#![allow(clippy::unwrap_used)] // in tests a panic is the failure report

mod common;

use axum::http::Request;
use common::*;
use http_body_util::BodyExt;
use portcullis_webhook::server::router;
use serde_json::{Value, json};
use tower::ServiceExt;

/// An AdmissionReview for a Portcullis object, shaped as the API server sends it.
fn review(kind: &str, resource: &str, operation: &str, dry_run: bool, object: Value) -> Value {
    json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "0d6c3c6b-6f5e-4a8c-9b61-1f0d2c3e4f50",
            "kind": {"group": "portcullis.dev", "version": "v1alpha1", "kind": kind},
            "resource": {"group": "portcullis.dev", "version": "v1alpha1", "resource": resource},
            "requestKind": {"group": "portcullis.dev", "version": "v1alpha1", "kind": kind},
            "name": object["metadata"]["name"],
            "operation": operation,
            "userInfo": {"username": "admin", "groups": ["system:masters"]},
            "object": object,
            "oldObject": null,
            "dryRun": dry_run,
            "options": {"apiVersion": "meta.k8s.io/v1", "kind": "CreateOptions"}
        }
    })
}

fn policy(spec: Value) -> Value {
    json!({"apiVersion": "portcullis.dev/v1alpha1", "kind": "ContainerPolicy",
           "metadata": {"name": "typo", "generation": 1}, "spec": spec})
}

async fn answer(review: &Value) -> Value {
    let request = Request::post("/validate")
        .body(axum::body::Body::from(serde_json::to_vec(review).unwrap()))
        .unwrap();
    let body = router(state(&[]))
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

#[tokio::test]
async fn a_policy_that_would_not_compile_is_rejected_with_every_bad_field() {
    let bad = policy(json!({
        "match": {"images": ["ghcr.io/**x", "nginx:1.25"]},
        "rules": {"vulnerabilities": {"deny": ["CVE-1"], "ignore": ["cve-1"]},
                  "workload": {"forbiddenCapabilities": ["SYS_ADMN"]}}
    }));
    for dry_run in [false, true] {
        for operation in ["CREATE", "UPDATE"] {
            let answer = answer(&review(
                "ContainerPolicy",
                "containerpolicies",
                operation,
                dry_run,
                bad.clone(),
            ))
            .await;
            assert_eq!(answer["allowed"], false, "{answer}");
            assert_eq!(answer["status"]["code"], 422);
            assert_eq!(answer["status"]["reason"], "Invalid");
            let message = answer["status"]["message"].as_str().unwrap();
            assert!(
                message.starts_with("ContainerPolicy \"typo\" is invalid: "),
                "{message}"
            );
            for field in [
                "spec.match.images[0]: pattern \"ghcr.io/**x\": `**` must be a whole segment",
                "spec.match.images[1]: pattern \"nginx:1.25\"",
                "spec.rules.vulnerabilities.ignore: CVE-1 is also in spec.rules.vulnerabilities.deny",
                "spec.rules.workload.forbiddenCapabilities[0]: unknown capability \"SYS_ADMN\"",
            ] {
                assert!(message.contains(field), "{field} missing from {message}");
            }
        }
    }
    let good = policy(json!({"rules": {"registries": {"deny": ["docker.io/**"]}}}));
    let answer = answer(&review(
        "ContainerPolicy",
        "containerpolicies",
        "CREATE",
        false,
        good,
    ))
    .await;
    assert_eq!(answer["allowed"], true, "{answer}");
}

#[tokio::test]
async fn integrations_are_checked_too_and_deletes_pass() {
    let bad = json!({"apiVersion": "portcullis.dev/v1alpha1", "kind": "RegistryIntegration",
        "metadata": {"name": "harbor"},
        "spec": {"registries": ["harbor.acme.com/**"], "scanner": {"harbor": {"url": "http://harbor.acme.com"}}, "timeout": "0s"}});
    let answer_bad = answer(&review(
        "RegistryIntegration",
        "registryintegrations",
        "CREATE",
        false,
        bad.clone(),
    ))
    .await;
    assert_eq!(answer_bad["allowed"], false);
    let message = answer_bad["status"]["message"].as_str().unwrap();
    assert!(
        message.contains("spec.scanner.harbor.url")
            && message.contains("spec.timeout: must be greater than 0"),
        "{message}"
    );
    let deleted = answer(&review(
        "RegistryIntegration",
        "registryintegrations",
        "DELETE",
        false,
        bad,
    ))
    .await;
    assert_eq!(
        deleted["allowed"], true,
        "deleting a broken object is never blocked"
    );
}

#[tokio::test]
async fn audit_monitors_are_checked_too() {
    let bad = json!({"apiVersion": "portcullis.dev/v1alpha1", "kind": "AuditMonitor",
        "metadata": {"name": "strict"},
        "spec": {"detections": {"manual-pods": {"enabled": false}}, "sink": {"url": "http://siem.internal"}}});
    let refused = answer(&review(
        "AuditMonitor",
        "auditmonitors",
        "CREATE",
        false,
        bad,
    ))
    .await;
    assert_eq!(refused["allowed"], false);
    let message = refused["status"]["message"].as_str().unwrap();
    for field in [
        "AuditMonitor \"strict\" is invalid",
        "metadata.name: only the AuditMonitor named \"default\" is used",
        "spec.detections.manual-pods: unknown detection",
        "spec.sink.url: \"http://siem.internal\" must use https",
    ] {
        assert!(message.contains(field), "{field:?} missing from {message}");
    }
    let good = json!({"apiVersion": "portcullis.dev/v1alpha1", "kind": "AuditMonitor",
        "metadata": {"name": "default"},
        "spec": {"detections": {"manual-pod": {"enabled": false}}, "exclude": {"users": ["system:serviceaccount:argocd:*"]}}});
    let allowed = answer(&review(
        "AuditMonitor",
        "auditmonitors",
        "CREATE",
        false,
        good,
    ))
    .await;
    assert_eq!(allowed["allowed"], true, "{allowed}");
}
