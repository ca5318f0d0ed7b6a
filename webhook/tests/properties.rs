//! Properties over reference parsing, pattern normalization and matching, and
//! AdmissionReview handling: nothing panics on any input, normalizing twice changes
//! nothing, and a reference always matches the pattern made from itself.
//!
//! CI runs them with a fixed seed and a bounded number of cases. Before a release, run
//! them longer: `PROPTEST_CASES=200000 cargo nextest run -p portcullis-webhook --test
//! properties` (add `PROPTEST_RNG_SEED=<n>` for another fixed seed).

#![allow(clippy::unwrap_used)] // in tests a panic is the failure report

mod common;

use std::time::SystemTime;

use common::*;
use portcullis_webhook::admission::{self, Verdict};
use portcullis_webhook::glob::Glob;
use portcullis_webhook::image::ImageRef;
use portcullis_webhook::scan::NoScanResults;
use proptest::prelude::*;
use serde_json::Value;

/// References as people (and attackers) write them: registries with ports, aliases
/// and odd case, nested paths, tags, digests.
fn written_reference() -> impl Strategy<Value = String> {
    let host = prop::option::of(prop_oneof![
        "[a-zA-Z0-9]{1,8}(\\.[a-zA-Z0-9]([a-zA-Z0-9-]{0,4}[a-zA-Z0-9])?){1,2}(:[0-9]{1,5})?",
        "localhost(:[0-9]{1,5})?",
        "(index\\.|registry-1\\.)?[Dd]ocker\\.io(:443)?",
        "\\[::1\\](:[0-9]{1,5})?",
    ]);
    // A first component with '.' would be a registry: the runtime's rule.
    let path =
        "[a-z0-9]{1,6}([_-][a-z0-9]{1,6}){0,2}(/[a-z0-9]{1,6}([._-][a-z0-9]{1,6}){0,2}){0,3}";
    let tag = prop::option::of(":[a-zA-Z0-9_][a-zA-Z0-9_.-]{0,12}");
    let digest = prop::option::of("@sha256:[0-9a-f]{64}");
    (host, path, tag, digest).prop_map(|(host, path, tag, digest)| {
        let mut reference = host.map(|h| format!("{h}/")).unwrap_or_default();
        reference.push_str(&path);
        reference.push_str(&tag.unwrap_or_default());
        reference.push_str(&digest.unwrap_or_default());
        reference
    })
}

/// Anything: well-formed references, printable noise, any text.
fn any_reference() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => written_reference(),
        2 => "[ -~]{0,48}",
        1 => any::<String>(),
    ]
}

/// Pattern-like strings: the characters patterns use, and some they must refuse.
fn any_pattern() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => "[a-z0-9.*:/_-]{1,32}",
        2 => written_reference().prop_map(|r| r.split(['@', ':']).next().unwrap_or_default().to_owned()),
        1 => "[ -~]{0,32}",
    ]
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn parsing_a_reference_never_panics_and_normalizes_once(input in any_reference()) {
        if let Ok(image) = ImageRef::parse(&input) {
            let again = ImageRef::parse(&image.to_string());
            prop_assert_eq!(again.as_ref(), Ok(&image), "normalizing twice changes nothing");
            prop_assert_eq!(image.registry().to_ascii_lowercase(), image.registry());
        }
    }

    #[test]
    fn a_reference_matches_the_pattern_made_from_itself(input in written_reference()) {
        let image = ImageRef::parse(&input).unwrap();
        let exact = Glob::repository(image.repository()).unwrap();
        prop_assert!(exact.matches(image.repository()));
        // The name as written (any alias, port or case) is the same repository.
        let written = input.split('@').next().unwrap();
        let last_slash = written.rfind('/').map_or(0, |i| i + 1);
        let name = match written[last_slash..].find(':') {
            Some(i) => &written[..last_slash + i],
            None => written,
        };
        if let Ok(pattern) = Glob::repository(&name.to_ascii_lowercase()) {
            prop_assert!(pattern.matches(image.repository()), "{} ~ {}", name, image.repository());
        }
        let registry = Glob::repository(&format!("{}/**", image.registry())).unwrap();
        prop_assert!(registry.matches(image.repository()));
    }

    #[test]
    fn normalizing_a_pattern_twice_changes_nothing(pattern in any_pattern()) {
        if let Ok(glob) = Glob::repository(&pattern) {
            let normalized = glob.normalized();
            let again = Glob::repository(&normalized);
            prop_assert!(again.is_ok(), "{} normalized to {} which does not compile: {:?}", pattern, normalized, again);
            prop_assert_eq!(again.unwrap().normalized(), normalized);
        }
    }

    #[test]
    fn matching_never_panics(pattern in any_pattern(), input in any_reference()) {
        if let (Ok(glob), Ok(image)) = (Glob::repository(&pattern), ImageRef::parse(&input)) {
            let _ = glob.matches(image.repository());
        }
    }

    #[test]
    fn any_body_is_answered_without_a_panic(body in prop_oneof![any::<Vec<u8>>(), json_value().prop_map(|v| v.to_string().into_bytes())]) {
        if let Ok(request) = admission::parse(&body) {
            let _ = admission::evaluate(&request, &policy_set(DENY_HUB), &NoScanResults, SystemTime::now());
        }
    }

    /// A real review with one field replaced by anything: answered, never a panic,
    /// and a Pod that would be denied is never allowed because a field went missing.
    #[test]
    fn damaged_reviews_never_slip_through(path in prop::collection::vec(0usize..32, 1..5), value in prop::option::of(json_value())) {
        let mut review: Value = serde_json::from_slice(&fixture("validate-create-pod.json")).unwrap();
        let damaged = damage(&mut review, &path, value);
        let body = serde_json::to_vec(&review).unwrap();
        if let Ok(request) = admission::parse(&body) {
            let verdict = admission::evaluate(&request, &policy_set(DENY_HUB), &NoScanResults, SystemTime::now());
            let still_a_pod_create = request.operation == "CREATE" && request.kind.kind == "Pod"
                && request.kind.group.is_empty() && request.sub_resource.is_none();
            if still_a_pod_create && !damaged.starts_with("/request/object/spec/containers/0/image")
                && !damaged.starts_with("/request/object/spec/containers/0/name") {
                prop_assert!(!matches!(verdict, Verdict::Skipped(_)), "{} damaged: a Pod create was skipped", damaged);
            }
        }
    }

    /// Reading the object while the review is parsed (one pass) gives exactly what
    /// reading it afterwards from the raw object gives: same kind, name and pod spec,
    /// or the same verdict — for every captured review damaged anywhere, with the
    /// request's fields in kube-apiserver's order or in any other.
    #[test]
    fn one_pass_reading_matches_reading_the_raw_object(
        index in 0usize..64,
        path in prop::collection::vec(0usize..32, 0..6),
        value in prop::option::of(json_value()),
        api_server_order in any::<bool>(),
    ) {
        let all = fixtures();
        let (name, bytes) = &all[index % all.len()];
        let mut review: Value = serde_json::from_slice(bytes).unwrap();
        let damaged = if path.is_empty() { String::new() } else { damage(&mut review, &path, value) };
        let body = if api_server_order { in_api_server_order(&review) } else { review.to_string() };
        let one_pass = admission::parse(body.as_bytes());
        let raw = admission::parse_raw(body.as_bytes());
        prop_assert_eq!(one_pass.is_ok(), raw.is_ok(), "{} {}", name, damaged);
        if let (Ok(one_pass), Ok(raw)) = (one_pass, raw) {
            prop_assert_eq!(read(&one_pass), read(&raw), "{} {}", name, damaged);
        }
    }
}

/// The fast path is taken where it should be: every captured workload create is read
/// while parsing (its object is no longer at hand raw), every update keeps its object
/// raw, and a create whose `operation` comes after `object` is kept raw too.
#[test]
fn workloads_being_created_are_read_in_one_pass() {
    for (name, captured) in fixtures() {
        // The files are stored with sorted keys; this is the order on the wire.
        let body = in_api_server_order(&serde_json::from_slice(&captured).unwrap());
        let request = admission::parse(body.as_bytes()).unwrap();
        let created = request.operation == "CREATE";
        assert_eq!(request.object_json().is_none(), created, "{name}");
        assert!(!created || admission::read(&request).is_ok(), "{name}");
        let raw = admission::parse_raw(body.as_bytes()).unwrap();
        assert_eq!(read(&request), read(&raw), "{name}");
    }
    // serde_json writes keys sorted: `object` before `operation`.
    let review: Value = serde_json::from_slice(&fixture("validate-create-pod.json")).unwrap();
    let late = review.to_string();
    assert!(late.find("\"object\"") < late.find("\"operation\""));
    let request = admission::parse(late.as_bytes()).unwrap();
    assert!(request.object_json().is_some());
    let in_order = in_api_server_order(&review);
    assert_eq!(
        read(&request),
        read(&admission::parse(in_order.as_bytes()).unwrap())
    );
}

/// What `admission::read` makes of a request, comparable.
fn read(request: &admission::Request<'_>) -> String {
    match admission::read(request) {
        Ok(e) => format!("{:?} {:?} {:?}", e.kind, e.object, *e.spec),
        Err(verdict) => format!("{verdict:?}"),
    }
}

/// Denies Docker Hub everywhere: the captured Pod uses nginx from Docker Hub.
const DENY_HUB: &[(&str, &str)] = &[(
    "no-hub",
    r#"{"rules":{"registries":{"deny":["docker.io/**"]}}}"#,
)];
