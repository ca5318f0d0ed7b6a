//! The decision engine: a Pod with 1, 5 and 20 containers against 10, 100 and 1,000
//! compiled policies, with every image's scan result cached; the mutating webhook's
//! answer for a 5-container Pod with every digest cached; and reference parsing.
//!
//! `cargo bench -p portcullis-webhook --bench engine`

#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use portcullis_crds::{ContainerPolicySpec, Severity};
use portcullis_webhook::admission;
use portcullis_webhook::engine::mutation::{DigestResults, Unresolved};
use portcullis_webhook::engine::{Review, Subject, decide};
use portcullis_webhook::image::ImageRef;
use portcullis_webhook::mutate;
use portcullis_webhook::policy::{
    CompiledIntegration, CompiledPolicy, NamespaceLabels, NamespaceView, PolicySet, compile,
};
use portcullis_webhook::scan::{Finding, ScanReport, ScanResults, ScanStatus, VulnId};
use portcullis_webhook::workload::{PodSpec, WorkloadKind};
use serde_json::json;

/// Policies of the kinds a platform team writes: most scoped to a team's namespaces,
/// a few cluster-wide, every rule family present somewhere.
fn policies(n: usize) -> PolicySet {
    policy_set(compiled(n))
}

fn compiled(n: usize) -> Vec<CompiledPolicy> {
    (0..n).map(|i| {
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
    })
    .collect()
}

fn policy_set(compiled: Vec<CompiledPolicy>) -> PolicySet {
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
struct Cached(HashMap<String, ScanReport>);

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
                ScanReport::new(Some(now - Duration::from_secs(3600)), findings(i)),
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

    mutation(c);

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

/// Every tag's digest is cached.
struct Digests;

impl DigestResults for Digests {
    fn digest(&self, _image: &ImageRef) -> Result<String, Unresolved> {
        Ok(format!("sha256:{}", "ab".repeat(32)))
    }
}

/// The mutating webhook's whole answer for a 5-container Pod review (parse, read, plan,
/// patch, JSON) against 100 policies and one that pins and fills every default; what
/// mutation adds to reading the review; and beside them the validating answer for the
/// same review, parsed and answered the same way.
fn mutation(c: &mut Criterion) {
    let mut all = compiled(100);
    let pin = json!({"mutate": {"pinDigests": true, "securityDefaults": {"runAsNonRoot": true,
        "allowPrivilegeEscalation": false, "dropAllCapabilities": true, "seccompProfile": "RuntimeDefault"}}});
    all.push(compile("pin", &serde_json::from_value(pin).unwrap()).unwrap());
    let set = policy_set(all);
    let (spec, scans) = pod(5);
    let object = json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "web", "namespace": "shop", "annotations": {"team": "shop"}},
        "spec": serde_json::from_str::<serde_json::Value>(&spec).unwrap()});
    // The request's fields in kube-apiserver's order (`operation` before `object`), so
    // the Pod is read while the review is parsed, as `/mutate` reads it.
    let review = format!(
        r#"{{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{{"uid":"u","kind":{{"group":"","version":"v1","kind":"Pod"}},"resource":{{"group":"","version":"v1","resource":"pods"}},"namespace":"shop","operation":"CREATE","object":{object}}}}}"#
    );
    assert!(
        admission::parse(review.as_bytes())
            .unwrap()
            .object_json()
            .is_none()
    );
    let now = SystemTime::now();
    let mut group = c.benchmark_group("answer");
    group.bench_function("mutate/5_containers", |b| {
        b.iter(|| {
            let request = admission::parse(black_box(review.as_bytes())).unwrap();
            let target = mutate::read(&request, review.len()).unwrap();
            let review = Review::new(target.evaluable.subject("shop", NamespaceView::Snapshot));
            let _ = review.digests_to_pin(&set, target.scope());
            let plan = review.mutation(&set, target.scope(), &Digests);
            let answer = mutate::answer(&target, &plan, "Pod shop/web");
            mutate::respond(&request.uid, &answer).unwrap()
        })
    });
    // What mutation adds once the review is read (as validation reads it too): the
    // digests asked for, the plan, the patch and the answer.
    let request = admission::parse(review.as_bytes()).unwrap();
    let target = mutate::read(&request, review.len()).unwrap();
    let read = Review::new(target.evaluable.subject("shop", NamespaceView::Snapshot));
    group.bench_function("mutation_only/5_containers", |b| {
        b.iter(|| {
            let _ = read.digests_to_pin(&set, target.scope());
            let plan = read.mutation(black_box(&set), target.scope(), &Digests);
            let answer = mutate::answer(&target, &plan, "Pod shop/web");
            mutate::respond(&request.uid, &answer).unwrap()
        })
    });
    group.bench_function("validate/5_containers", |b| {
        b.iter(|| {
            let request = admission::parse(black_box(review.as_bytes())).unwrap();
            let evaluable = admission::read(&request).unwrap();
            let review = Review::new(evaluable.subject("shop", NamespaceView::Snapshot));
            let _ = review.scans_needed(&set);
            let verdict = admission::Verdict::Decided(review.decide(&set, &scans, now));
            admission::respond(&request.uid, &verdict)
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
