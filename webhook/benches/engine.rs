//! The decision engine: a Pod with 1, 5 and 20 containers against 10, 100 and 1,000
//! compiled policies, with every image's scan result cached; and reference parsing.
//!
//! `cargo bench -p portcullis-webhook --bench engine`

#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use portcullis_crds::{ContainerPolicySpec, Severity};
use portcullis_webhook::engine::{Subject, decide};
use portcullis_webhook::image::ImageRef;
use portcullis_webhook::policy::{
    CompiledIntegration, NamespaceLabels, NamespaceView, PolicySet, compile,
};
use portcullis_webhook::scan::{Finding, ScanReport, ScanResults, ScanStatus, VulnId};
use portcullis_webhook::workload::{PodSpec, WorkloadKind};
use serde_json::json;

/// Policies of the kinds a platform team writes: most scoped to a team's namespaces,
/// a few cluster-wide, every rule family present somewhere.
fn policies(n: usize) -> PolicySet {
    let compiled = (0..n).map(|i| {
        let spec = match i % 4 {
            0 => json!({"match": {"namespaces": [format!("team-{i}-*")]}, "rules": {"registries": {"allow": ["ghcr.io/acme/**"]}}}),
            1 => json!({"action": "Warn", "match": {"images": [format!("ghcr.io/acme/svc-{i}/**")]}, "rules": {"tags": {"denyLatest": true, "requireDigest": true}}}),
            2 => json!({"match": {"namespaceSelector": {"matchLabels": {"tier": format!("t{i}")}}}, "rules": {"vulnerabilities": {"maxCount": {"critical": 0}, "maxScanAge": "168h"}}}),
            _ => json!({"action": "Audit", "match": {"namespaces": [format!("app-{i}")]}, "rules": {"workload": {"denyPrivileged": true, "forbiddenCapabilities": ["SYS_ADMIN"]}}}),
        };
        let mut spec: ContainerPolicySpec = serde_json::from_value(spec).unwrap();
        if i < 3 {
            // A few cluster-wide policies that apply to every pod.
            spec.selector = Default::default();
        }
        compile(&format!("policy-{i:04}"), &spec).unwrap()
    });
    let namespaces = HashMap::from([(
        "shop".to_owned(),
        NamespaceLabels::from([("env".to_owned(), "prod".to_owned())]),
    )]);
    PolicySet::new(
        compiled,
        Vec::<CompiledIntegration>::new(),
        Arc::new(namespaces),
    )
}

/// Every image has a cached result with a handful of findings.
struct Cached(HashMap<String, Arc<ScanReport>>);

impl ScanResults for Cached {
    fn lookup(&self, image: &ImageRef) -> ScanStatus {
        match self.0.get(image.repository()) {
            Some(r) => ScanStatus::Found(r.clone()),
            None => ScanStatus::Unavailable("not cached".into()),
        }
    }
}

fn pod(containers: usize) -> (String, Cached) {
    let images: Vec<String> = (0..containers)
        .map(|i| format!("ghcr.io/acme/svc-{i}:1.{i}.0"))
        .collect();
    let list: Vec<_> = images.iter().enumerate().map(|(i, image)| json!({"name": format!("c{i}"), "image": image, "securityContext": {"runAsNonRoot": true}})).collect();
    let now = SystemTime::now();
    let findings = |i: usize| {
        (0..5).map(move |j| Finding {
            id: VulnId::new(&format!("CVE-2024-{i}{j}")),
            severity: Severity::Medium,
            fixable: j % 2 == 0,
        })
    };
    let cached = images
        .iter()
        .enumerate()
        .map(|(i, image)| {
            let repo = ImageRef::parse(image).unwrap().repository().to_owned();
            (
                repo,
                Arc::new(ScanReport::new(
                    None,
                    Some(now - Duration::from_secs(3600)),
                    findings(i),
                )),
            )
        })
        .collect();
    (json!({"containers": list}).to_string(), Cached(cached))
}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("decide");
    for policies_n in [10, 100, 1000] {
        let set = policies(policies_n);
        for containers in [1, 5, 20] {
            let (json, scans) = pod(containers);
            let spec: PodSpec<'_> = serde_json::from_str(&json).unwrap();
            let subject = Subject {
                kind: WorkloadKind::Pod,
                namespace: "shop",
                labels: NamespaceView::Snapshot,
                name: "web",
                spec: &spec,
            };
            let now = SystemTime::now();
            group.bench_with_input(
                BenchmarkId::new(
                    format!("{policies_n}_policies"),
                    format!("{containers}_containers"),
                ),
                &subject,
                |b, subject| b.iter(|| decide(black_box(&set), black_box(subject), &scans, now)),
            );
        }
    }
    group.finish();

    let mut parse = c.benchmark_group("image_ref");
    for image in [
        "nginx",
        "ghcr.io/acme/api:v1.2.3",
        "registry.example.com:5000/team/app/api:v1@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
    ] {
        parse.bench_with_input(
            BenchmarkId::from_parameter(image.len()),
            image,
            |b, image| b.iter(|| ImageRef::parse(black_box(image))),
        );
    }
    parse.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
