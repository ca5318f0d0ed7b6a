//! `body`: a realistic Pod-create AdmissionReview of N containers, as the API server
//! sends it for a Pod a Deployment's ReplicaSet creates — env, probes, resources,
//! volume mounts, the defaults the API server fills in, and the controller's
//! managedFields. Container `i` runs `ghcr.io/acme/svc-i:1.i.0`, whose digest and scan
//! result `fill` caches.

use std::path::PathBuf;

use anyhow::Context;
use serde::Serialize;
use serde_json::{Value, json};

#[derive(clap::Args)]
pub struct BodyArgs {
    /// Containers in the Pod.
    #[arg(long, default_value_t = 5)]
    containers: usize,
    /// Where the review is written.
    #[arg(long)]
    out: PathBuf,
}

/// Writes the review and says how large it is.
pub fn write(args: &BodyArgs) -> anyhow::Result<()> {
    let review = serde_json::to_vec(&review(args.containers))?;
    std::fs::write(&args.out, &review).context("writing the body")?;
    println!(
        "wrote a {}-container Pod review of {} bytes to {}",
        args.containers,
        review.len(),
        args.out.display()
    );
    Ok(())
}

/// The image of container `i` (cached by `fill`).
pub fn image(i: usize) -> String {
    format!("ghcr.io/acme/svc-{i}:1.{i}.0")
}

/// `request`'s fields in the order kube-apiserver writes them (Go's field order of
/// `AdmissionRequest`, checked against v1.19): `kind` and `operation` before `object`,
/// which lets the webhook read the object while parsing.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Request {
    uid: &'static str,
    kind: Value,
    resource: Value,
    request_kind: Value,
    request_resource: Value,
    namespace: &'static str,
    operation: &'static str,
    user_info: Value,
    object: Value,
    old_object: Option<Value>,
    dry_run: bool,
    options: Value,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Review {
    kind: &'static str,
    api_version: &'static str,
    request: Request,
}

fn review(containers: usize) -> Review {
    let kind = json!({"group": "", "version": "v1", "kind": "Pod"});
    let resource = json!({"group": "", "version": "v1", "resource": "pods"});
    let request = Request {
        uid: "0f6c3c2e-8a51-4a4e-9d55-3f1c9b1e7a10",
        kind: kind.clone(),
        resource: resource.clone(),
        request_kind: kind,
        request_resource: resource,
        namespace: "team-a",
        operation: "CREATE",
        user_info: json!({"username": "system:serviceaccount:kube-system:replicaset-controller",
                          "uid": "5d1f0a53-0d0e-4c0f-a3a4-1f4b8a7e2c11",
                          "groups": ["system:serviceaccounts", "system:serviceaccounts:kube-system", "system:authenticated"]}),
        object: pod(containers),
        old_object: None,
        dry_run: false,
        options: json!({"kind": "CreateOptions", "apiVersion": "meta.k8s.io/v1"}),
    };
    Review {
        kind: "AdmissionReview",
        api_version: "admission.k8s.io/v1",
        request,
    }
}

fn pod(containers: usize) -> Value {
    let list: Vec<Value> = (0..containers).map(container).collect();
    let managed: serde_json::Map<String, Value> = (0..containers)
        .map(|i| (format!("k:{{\"name\":\"svc-{i}\"}}"), managed_container()))
        .collect();
    json!({
        "kind": "Pod", "apiVersion": "v1",
        "metadata": {
            "generateName": "shop-web-7d9c6b5f4-", "namespace": "team-a",
            "labels": {"app.kubernetes.io/name": "shop-web", "app.kubernetes.io/part-of": "shop",
                       "pod-template-hash": "7d9c6b5f4", "team": "a"},
            "annotations": {"kubectl.kubernetes.io/restartedAt": "2026-11-30T09:12:44Z",
                            "prometheus.io/scrape": "true", "prometheus.io/port": "9090"},
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "shop-web-7d9c6b5f4",
                                 "uid": "a3c6f0d2-6f7b-4b8e-9a51-0c2d4e6f8a10", "controller": true,
                                 "blockOwnerDeletion": true}],
            "managedFields": [{
                "manager": "kube-controller-manager", "operation": "Update", "apiVersion": "v1",
                "time": "2026-11-30T09:12:45Z", "fieldsType": "FieldsV1",
                "fieldsV1": {
                    "f:metadata": {"f:generateName": {}, "f:labels": {".": {}, "f:app.kubernetes.io/name": {},
                                   "f:pod-template-hash": {}, "f:team": {}},
                                   "f:ownerReferences": {".": {}, "k:{\"uid\":\"a3c6f0d2-6f7b-4b8e-9a51-0c2d4e6f8a10\"}": {}}},
                    "f:spec": {"f:containers": managed, "f:dnsPolicy": {}, "f:enableServiceLinks": {},
                               "f:restartPolicy": {}, "f:schedulerName": {}, "f:securityContext": {},
                               "f:terminationGracePeriodSeconds": {}, "f:volumes": {}}
                }
            }]
        },
        "spec": {
            "volumes": [
                {"name": "config", "configMap": {"name": "shop-web-config", "defaultMode": 420}},
                {"name": "kube-api-access-x7k2p", "projected": {"defaultMode": 420, "sources": [
                    {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
                    {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
                    {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}}]}}
                ]}}
            ],
            "containers": list,
            "restartPolicy": "Always", "terminationGracePeriodSeconds": 30, "dnsPolicy": "ClusterFirst",
            "serviceAccountName": "shop-web", "serviceAccount": "shop-web",
            "securityContext": {"runAsNonRoot": true, "fsGroup": 2000, "seccompProfile": {"type": "RuntimeDefault"}},
            "schedulerName": "default-scheduler",
            "tolerations": [
                {"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300},
                {"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300}
            ],
            "priority": 0, "enableServiceLinks": true, "preemptionPolicy": "PreemptLowerPriority"
        },
        "status": {}
    })
}

fn container(i: usize) -> Value {
    let env = json!([
        {"name": "LOG_LEVEL", "value": "info"},
        {"name": "OTEL_EXPORTER_OTLP_ENDPOINT", "value": "http://otel-collector.observability:4317"},
        {"name": "DB_PASSWORD", "valueFrom": {"secretKeyRef": {"name": "shop-db", "key": "password"}}}
    ]);
    let probe = |path: &str| {
        json!({"httpGet": {"path": path, "port": 8080, "scheme": "HTTP"}, "timeoutSeconds": 1,
               "periodSeconds": 10, "successThreshold": 1, "failureThreshold": 3})
    };
    json!({
        "name": format!("svc-{i}"), "image": image(i),
        "ports": [{"name": "http", "containerPort": 8080, "protocol": "TCP"}],
        "env": env,
        "resources": {"limits": {"cpu": "1", "memory": "512Mi"}, "requests": {"cpu": "250m", "memory": "256Mi"}},
        "volumeMounts": [
            {"name": "config", "readOnly": true, "mountPath": "/etc/app"},
            {"name": "kube-api-access-x7k2p", "readOnly": true, "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount"}
        ],
        "livenessProbe": probe("/healthz"),
        "readinessProbe": probe("/readyz"),
        "terminationMessagePath": "/dev/termination-log", "terminationMessagePolicy": "File",
        "imagePullPolicy": "IfNotPresent",
        "securityContext": {"allowPrivilegeEscalation": false, "readOnlyRootFilesystem": true,
                            "capabilities": {"drop": ["ALL"]}}
    })
}

fn managed_container() -> Value {
    json!({".": {}, "f:env": {}, "f:image": {}, "f:livenessProbe": {}, "f:name": {},
           "f:ports": {".": {}, "k:{\"containerPort\":8080,\"protocol\":\"TCP\"}": {}},
           "f:readinessProbe": {}, "f:resources": {}, "f:securityContext": {}, "f:volumeMounts": {}})
}
