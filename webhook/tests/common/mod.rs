//! Shared by the integration tests: policies from JSON specs, the fixtures on disk.

#![allow(dead_code)] // each test binary uses a different part

pub mod registry;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use arc_swap::ArcSwap;
use portcullis_crds::ContainerPolicySpec;
use portcullis_webhook::policy::{CompiledIntegration, NamespaceLabels, PolicySet, compile};
use portcullis_webhook::scan::ScanService;
use portcullis_webhook::server::{AppState, Readiness};
use serde_json::Value;

/// The real AdmissionReviews captured from a kube-apiserver (`../shared/fixtures/admission`).
pub fn fixtures_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/fixtures/admission")
}

/// Every fixture: file name and bytes.
pub fn fixtures() -> Vec<(String, Vec<u8>)> {
    let mut all: Vec<(String, Vec<u8>)> = std::fs::read_dir(fixtures_dir())
        .expect("../shared/fixtures/admission beside the repository")
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .map(|p| {
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                std::fs::read(&p).unwrap(),
            )
        })
        .collect();
    all.sort();
    assert!(
        all.len() >= 16,
        "expected the 16 captured AdmissionReviews, found {}",
        all.len()
    );
    all
}

pub fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(fixtures_dir().join(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// A policy set from `(name, spec JSON)` pairs; namespace team-a is labelled env=prod,
/// as in the cluster the fixtures were captured from.
pub fn policy_set(policies: &[(&str, &str)]) -> PolicySet {
    let compiled = policies.iter().map(|(name, spec)| {
        let spec: ContainerPolicySpec = serde_json::from_str(spec).unwrap();
        compile(name, &spec).unwrap()
    });
    let namespaces = HashMap::from([(
        "team-a".to_owned(),
        NamespaceLabels::from([("env".to_owned(), "prod".to_owned())]),
    )]);
    PolicySet::new(
        compiled,
        Vec::<CompiledIntegration>::new(),
        Arc::new(namespaces),
    )
}

pub fn state(policies: &[(&str, &str)]) -> AppState {
    AppState::new(
        Arc::new(ArcSwap::from_pointee(policy_set(policies))),
        ScanService::in_memory(),
        Readiness::ready_now(),
    )
}

/// The `response` of an AdmissionReview answer.
pub fn response(body: &[u8]) -> Value {
    let review: Value = serde_json::from_slice(body)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(body)));
    assert_eq!(review["apiVersion"], "admission.k8s.io/v1");
    assert_eq!(review["kind"], "AdmissionReview");
    review["response"].clone()
}
