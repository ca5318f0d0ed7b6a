//! Audit-log ingest: the detections over a realistic mixed stream — the events a real
//! kube-apiserver v1.19.0 wrote (bootstrap, workloads at Request level with their
//! objects, RBAC writes, denied and anonymous calls, exec) — as the webhook backend
//! sends them (`EventList` batches of 400) and as `audit-scan` reads them (lines, put
//! in time order).
//!
//! `cargo bench -p portcullis-webhook --bench auditlog`

#![allow(clippy::unwrap_used)]

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use portcullis_webhook::auditlog::order::{Reorder, Stamp};
use portcullis_webhook::auditlog::{AuditService, Event, Monitor, Settings};

const CAPTURE: &str = include_str!("../tests/fixtures/audit-kube-1.19.jsonl");
const BATCH: usize = 400;

fn batch() -> String {
    let lines: Vec<&str> = CAPTURE.lines().collect();
    let items: Vec<&str> = lines.iter().cycle().take(BATCH).copied().collect();
    format!(
        r#"{{"kind":"EventList","apiVersion":"audit.k8s.io/v1","metadata":{{}},"items":[{}]}}"#,
        items.join(",")
    )
}

fn ingest(c: &mut Criterion) {
    let mut group = c.benchmark_group("audit");
    let body = batch();
    group.throughput(Throughput::Elements(BATCH as u64));
    let service = AuditService::new(
        Some("a-token-long-enough".into()),
        None,
        Settings::default(),
        None,
    )
    .unwrap();
    group.bench_function("POST /audit EventList of 400, every detection on", |b| {
        b.iter(|| service.ingest(body.as_bytes()).unwrap())
    });
    let lines: Vec<&str> = CAPTURE.lines().collect();
    group.throughput(Throughput::Elements(lines.len() as u64));
    let mut monitor = Monitor::default();
    let mut judge = |line: &str| {
        let event: Event<'_> = serde_json::from_str(line).unwrap();
        monitor.observe(&event).len()
    };
    group.bench_function("audit-scan lines, in time order, every detection on", |b| {
        b.iter(|| {
            let mut reorder = Reorder::default();
            let mut found = 0;
            for line in &lines {
                for ready in reorder.push(Stamp::of_line(line), *line, line.len()) {
                    found += judge(ready);
                }
            }
            found + reorder.finish().into_iter().map(&mut judge).sum::<usize>()
        })
    });
    group.finish();
}

criterion_group!(benches, ingest);
criterion_main!(benches);
