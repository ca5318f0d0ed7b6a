//! The background audit at scale: 10,000 running Pods of 5 realistic containers and 100
//! policies — how long a full re-audit takes on one core (a policy change), and how much
//! memory the projected Pods and their results hold (printed once, as RSS growth).
//!
//! `cargo bench -p portcullis --bench audit`

#![allow(clippy::unwrap_used)]

use criterion::{Criterion, criterion_group, criterion_main};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use portcullis::audit::Ledger;
use portcullis::audit::projection::{Projected, project};
use portcullis_crds::ContainerPolicySpec;
use portcullis_webhook::policy::{CompiledIntegration, PolicySet, compile};
use portcullis_webhook::scan::ScanService;
use portcullis_webhook::workload::WorkloadKind;
use serde_json::{Value, json};

const PODS: usize = 10_000;
const POLICIES: usize = 100;

/// A Pod as a ReplicaSet controller writes it: env, probes, resources, mounts, status.
fn pod(i: usize) -> Value {
    let containers: Vec<Value> = (0..5)
        .map(|c| {
            json!({
                "name": format!("c{c}"), "image": format!("ghcr.io/acme-{}/svc-{c}:1.{}", i % 50, i % 7),
                "env": (0..8).map(|e| json!({"name": format!("VAR_{e}"), "value": "some configuration value"})).collect::<Vec<_>>(),
                "ports": [{"containerPort": 8080, "protocol": "TCP"}],
                "resources": {"limits": {"cpu": "500m", "memory": "256Mi"}, "requests": {"cpu": "100m", "memory": "128Mi"}},
                "livenessProbe": {"httpGet": {"path": "/healthz", "port": 8080}, "periodSeconds": 10},
                "readinessProbe": {"httpGet": {"path": "/readyz", "port": 8080}, "periodSeconds": 5},
                "volumeMounts": [{"name": "config", "mountPath": "/etc/config"}, {"name": "token", "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount", "readOnly": true}],
                "securityContext": {"runAsNonRoot": true, "allowPrivilegeEscalation": false, "capabilities": {"drop": ["ALL"]}},
                "terminationMessagePath": "/dev/termination-log", "imagePullPolicy": "IfNotPresent"
            })
        })
        .collect();
    json!({
        "spec": {"containers": containers, "volumes": [{"name": "config", "configMap": {"name": "cfg"}}, {"name": "token", "projected": {"sources": []}}],
                 "serviceAccountName": "default", "nodeName": "node-1", "restartPolicy": "Always", "dnsPolicy": "ClusterFirst"},
        "status": {"phase": "Running", "containerStatuses": (0..5).map(|c| json!({"name": format!("c{c}"), "imageID": format!("ghcr.io/acme/svc-{c}@sha256:{:064x}", i)})).collect::<Vec<_>>()}
    })
}

fn policies(action: &str) -> PolicySet {
    let compiled: Vec<_> = (0..POLICIES)
        .map(|i| {
            let spec: ContainerPolicySpec = serde_json::from_value(json!({
                "action": action,
                "match": {"namespaces": [format!("team-{}-*", i % 20)], "images": [format!("ghcr.io/acme-{}/**", i % 50)]},
                "rules": {"registries": {"allow": ["ghcr.io/**"]}, "tags": {"denyLatest": true, "requireDigest": i % 2 == 0},
                          "workload": {"denyPrivileged": true, "requireRunAsNonRoot": true, "forbiddenCapabilities": ["SYS_ADMIN"]}}
            }))
            .unwrap();
            compile(&format!("policy-{i:03}"), &spec).unwrap()
        })
        .collect();
    PolicySet::new(
        compiled,
        Vec::<CompiledIntegration>::new(),
        Default::default(),
    )
}

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .unwrap_or(0)
}

fn audit(c: &mut Criterion) {
    let scans = ScanService::in_memory();
    let warn = policies("Warn");
    let block = policies("Block");
    let before = rss_kib();
    let mut ledger = Ledger::default();
    for i in 0..PODS {
        let meta = ObjectMeta {
            name: Some(format!("pod-{i}")),
            namespace: Some(format!("team-{}-prod", i % 40)),
            uid: Some(format!("{i:032x}")),
            ..Default::default()
        };
        let Projected::Live(key, running) =
            project(WorkloadKind::Pod, "v1", &meta, pod(i)).unwrap()
        else {
            unreachable!("running Pods are live")
        };
        ledger.upsert(key, running, &warn, &scans);
    }
    let counts = ledger.violations_by_policy();
    eprintln!(
        "audit: {PODS} Pods, {POLICIES} policies: RSS grew {} MiB holding them and their results; {} policy violations found",
        (rss_kib().saturating_sub(before)) / 1024,
        counts.values().sum::<i64>()
    );
    let keys = ledger.keys();
    let mut flip = false;
    c.bench_function("full re-audit, 10,000 Pods x 100 policies", |b| {
        b.iter(|| {
            flip = !flip;
            let set = if flip { &block } else { &warn };
            for key in &keys {
                ledger.evaluate(key, set, &scans);
            }
        })
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(10);
    targets = audit
}
criterion_main!(benches);
