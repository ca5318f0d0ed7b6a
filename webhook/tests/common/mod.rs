//! Shared by the integration tests: policies from JSON specs, the fixtures on disk.

#![allow(dead_code)] // each test binary uses a different part

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use arc_swap::ArcSwap;
use portcullis_crds::ContainerPolicySpec;
use portcullis_webhook::policy::{CompiledIntegration, NamespaceLabels, PolicySet, compile};
use portcullis_webhook::scan::ScanService;
use portcullis_webhook::server::{AppState, Readiness};
use proptest::prelude::*;
use proptest::test_runner::{Config, RngSeed};
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

/// Property tests: 512 cases from a fixed seed, unless `PROPTEST_CASES` /
/// `PROPTEST_RNG_SEED` say
/// otherwise.
pub fn config() -> Config {
    let from_env = Config::default();
    Config {
        cases: if std::env::var_os("PROPTEST_CASES").is_some() {
            from_env.cases
        } else {
            512
        },
        rng_seed: if std::env::var_os("PROPTEST_RNG_SEED").is_some() {
            from_env.rng_seed
        } else {
            RngSeed::Fixed(0x0070_6f72_7463_7573)
        },
        failure_persistence: None,
        ..from_env
    }
}

/// Arbitrary JSON, a few levels deep.
pub fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        "[ -~]{0,16}".prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map("[a-zA-Z]{1,8}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Replaces (or, with `None`, removes) the value at a path chosen by `choices`;
/// returns the JSON pointer damaged.
pub fn damage(root: &mut Value, choices: &[usize], value: Option<Value>) -> String {
    let mut pointer = String::new();
    let mut node = root;
    for (depth, choice) in choices.iter().enumerate() {
        let last = depth + 1 == choices.len();
        let key = match &*node {
            Value::Object(map) if !map.is_empty() => {
                let key = map.keys().nth(choice % map.len()).unwrap().clone();
                Some(key)
            }
            Value::Array(items) if !items.is_empty() => Some((choice % items.len()).to_string()),
            _ => None,
        };
        let Some(key) = key else { break };
        pointer.push('/');
        pointer.push_str(&key);
        if last {
            match (node, &value) {
                (Value::Object(map), None) => drop(map.remove(&key)),
                (Value::Object(map), Some(v)) => drop(map.insert(key, v.clone())),
                (Value::Array(items), v) => {
                    let i: usize = key.parse().unwrap();
                    items[i] = v.clone().unwrap_or(Value::Null);
                }
                _ => {}
            }
            return pointer;
        }
        node = match node {
            Value::Object(map) => map.get_mut(&key).unwrap(),
            Value::Array(items) => &mut items[key.parse::<usize>().unwrap()],
            _ => unreachable!(),
        };
    }
    pointer
}

/// The review with `request`'s fields in the order kube-apiserver writes them (Go's
/// field order of `AdmissionRequest`), any others after them.
pub fn in_api_server_order(review: &Value) -> String {
    const ORDER: [&str; 15] = [
        "uid",
        "kind",
        "resource",
        "subResource",
        "requestKind",
        "requestResource",
        "requestSubResource",
        "name",
        "namespace",
        "operation",
        "userInfo",
        "object",
        "oldObject",
        "dryRun",
        "options",
    ];
    let Some(Value::Object(request)) = review.get("request") else {
        return review.to_string();
    };
    let known = ORDER
        .iter()
        .filter_map(|key| Some((*key, request.get(*key)?)));
    let others = request
        .iter()
        .filter(|(key, _)| !ORDER.contains(&key.as_str()))
        .map(|(k, v)| (k.as_str(), v));
    let fields: Vec<String> = known
        .chain(others)
        .map(|(k, v)| format!("{}:{v}", Value::from(k)))
        .collect();
    let mut envelope = review.clone();
    envelope["request"] = Value::Null;
    envelope.to_string().replacen(
        "\"request\":null",
        &format!("\"request\":{{{}}}", fields.join(",")),
        1,
    )
}
