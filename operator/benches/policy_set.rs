//! Rebuilding the policy set: what a watch event costs before the webhook enforces it
//! (issue: a change is enforced within 100 ms with 1,000 policies).
//!
//! `cargo bench -p portcullis --bench policy_set`

#![allow(clippy::unwrap_used)]

use criterion::{Criterion, criterion_group, criterion_main};
use portcullis::controller::index::{Change, ClusterIndex, WatchedKind};
use portcullis_crds::ContainerPolicy;
use serde_json::json;

/// A realistic policy: matching, registry, tag, vulnerability and workload rules.
fn policy(i: usize, generation: i64) -> Box<ContainerPolicy> {
    let spec = json!({
        "action": if i.is_multiple_of(3) { "Warn" } else { "Block" },
        "match": {"namespaces": [format!("team-{i}-*")], "excludeNamespaces": ["kube-system"], "images": [format!("ghcr.io/acme-{i}/**")]},
        "rules": {
            "registries": {"allow": ["ghcr.io/acme/**", "registry.k8s.io/**"], "deny": ["docker.io/**"]},
            "tags": {"denyLatest": true},
            "vulnerabilities": {"maxSeverity": "High", "maxCount": {"critical": 0, "high": 5}, "deny": ["CVE-2021-44228"], "maxScanAge": "168h"},
            "workload": {"denyPrivileged": true, "forbiddenCapabilities": ["SYS_ADMIN", "NET_RAW"]}
        }
    });
    let mut p = ContainerPolicy::new(
        &format!("policy-{i:04}"),
        serde_json::from_value(spec).unwrap(),
    );
    p.metadata.generation = Some(generation);
    Box::new(p)
}

fn synced_index(n: usize) -> ClusterIndex {
    let mut index = ClusterIndex::default();
    for i in 0..n {
        index.apply(Change::Policy(policy(i, 1)));
    }
    for kind in [
        WatchedKind::Policy,
        WatchedKind::Integration,
        WatchedKind::Namespace,
    ] {
        index.apply(Change::RelistDone(kind));
    }
    index
}

fn bench(c: &mut Criterion) {
    for size in [1000, 10_000] {
        let mut group = c.benchmark_group(format!("policy_set_{size}"));
        let mut index = synced_index(size);
        let mut generation = 1;
        group.bench_function("one_change_then_snapshot", |b| {
            b.iter(|| {
                generation += 1;
                index.apply(Change::Policy(policy(size / 2, generation)));
                index.snapshot()
            })
        });
        group.bench_function("full_relist_then_snapshot", |b| {
            b.iter(|| synced_index(size).snapshot())
        });
        group.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
