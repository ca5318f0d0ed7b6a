//! The mutating webhook's plan and patch, on the real mutating AdmissionReviews captured
//! from a kube-apiserver and on generated Pods: each patch is applied with a JSONPatch
//! library and the result compared with what was asked. Digests come from a table here
//! (the engine is pure); the server path against a real registry is in `registry.rs`.
//!
//! The property tests run like those in `properties.rs` (`PROPTEST_CASES` for more).

#![allow(clippy::unwrap_used)] // in tests a panic is the failure report

mod common;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use base64::Engine as _;
use common::*;
use portcullis_webhook::admission;
use portcullis_webhook::engine::Review;
use portcullis_webhook::engine::mutation::{DigestResults, Unresolved, UnresolvedCause};
use portcullis_webhook::image::ImageRef;
use portcullis_webhook::mutate::{self, NotSent, ORIGINAL_IMAGES, UNPINNED, Untouched};
use portcullis_webhook::policy::{
    CompiledIntegration, NamespaceLabels, NamespaceView, PolicySet, compile,
};
use proptest::prelude::*;
use serde_json::{Value, json};

const DIGEST_A: &str = "sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
const DIGEST_B: &str = "sha256:bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";

/// Digests by reference as written; anything else is unresolved (registry down).
#[derive(Default)]
struct Digests(HashMap<ImageRef, Result<String, UnresolvedCause>>);

impl Digests {
    fn with(mut self, image: &str, digest: Result<&str, UnresolvedCause>) -> Self {
        self.0
            .insert(ImageRef::parse(image).unwrap(), digest.map(str::to_owned));
        self
    }
}

impl DigestResults for Digests {
    fn digest(&self, image: &ImageRef) -> Result<String, Unresolved> {
        let unresolved = |cause| Unresolved {
            cause,
            reason: format!("{} could not be resolved", image.repository()).into(),
        };
        match self.0.get(image) {
            Some(Ok(digest)) => Ok(digest.clone()),
            Some(Err(cause)) => Err(unresolved(*cause)),
            None => Err(unresolved(UnresolvedCause::RegistryUnavailable)),
        }
    }
}

/// What one mutation did: the answer, the object before and after its patch.
struct Mutated {
    answer: mutate::Answer,
    before: Value,
    after: Value,
    /// The images the plan asked digests for.
    asked: Vec<String>,
}

/// Mutates `body` as `/mutate` does: the review is parsed with its fields in
/// kube-apiserver's order, so a Pod being created is read in the same pass.
fn mutate_body(body: &[u8], set: &PolicySet, digests: &Digests) -> Mutated {
    let review: Value = serde_json::from_slice(body).unwrap();
    let before = review["request"]["object"].clone();
    let body = in_api_server_order(&review);
    let request = admission::parse(body.as_bytes()).unwrap();
    let (answer, asked) = answer_for(&request, body.len(), set, digests);
    let mut after = before.clone();
    if let Some(patch) = &answer.patch {
        let patch: json_patch::Patch = serde_json::from_slice(patch).unwrap();
        json_patch::patch(&mut after, &patch).unwrap();
    }
    Mutated {
        answer,
        before,
        after,
        asked,
    }
}

/// The answer to `request` (a review of `review_bytes`), and the images its plan asked
/// digests for.
fn answer_for(
    request: &admission::Request<'_>,
    review_bytes: usize,
    set: &PolicySet,
    digests: &Digests,
) -> (mutate::Answer, Vec<String>) {
    let target = mutate::read(request, review_bytes).unwrap();
    let namespace = request.namespace.as_deref().unwrap_or_default();
    let review = Review::new(target.evaluable.subject(namespace, NamespaceView::Snapshot));
    let asked = review
        .digests_to_pin(set, target.scope())
        .iter()
        .map(|i| i.repository().to_owned())
        .collect();
    let plan = review.mutation(set, target.scope(), digests);
    (mutate::answer(&target, &plan, "Pod team-a/web"), asked)
}

/// `m` sent no patch, for a reason `why` takes, and its first warning says `says`.
fn assert_not_sent(m: &Mutated, why: fn(&NotSent) -> bool, says: &str) {
    assert_eq!(m.answer.patch, None);
    assert!(
        m.answer.not_sent.as_ref().is_some_and(why),
        "{:?}",
        m.answer.not_sent
    );
    assert!(
        m.answer.warnings[0].contains(says),
        "{:?}",
        m.answer.warnings
    );
}

/// `body` (an AdmissionReview) with `object` in place of its object.
fn with_object(body: &[u8], object: &Value) -> Vec<u8> {
    let mut review: Value = serde_json::from_slice(body).unwrap();
    review["request"]["object"] = object.clone();
    serde_json::to_vec(&review).unwrap()
}

fn annotation(object: &Value, key: &str) -> Option<String> {
    object["metadata"]["annotations"][key]
        .as_str()
        .map(str::to_owned)
}

const PIN: &str = r#"{"mutate": {"pinDigests": true}}"#;
const DEFAULTS: &str = r#"{"mutate": {"securityDefaults": {"runAsNonRoot": true,
    "allowPrivilegeEscalation": false, "dropAllCapabilities": true,
    "seccompProfile": "RuntimeDefault"}}}"#;

#[test]
fn tags_are_pinned_to_their_digests_and_the_originals_recorded() {
    // The captured Pod: app nginx:1.25, init busybox:1.36, sidecar already by digest.
    let body = fixture("mutate-create-pod.json");
    let digests = Digests::default()
        .with("nginx:1.25", Ok(DIGEST_A))
        .with("busybox:1.36", Ok(DIGEST_B));
    let m = mutate_body(&body, &policy_set(&[("pin", PIN)]), &digests);
    assert!(m.answer.warnings.is_empty(), "{:?}", m.answer.warnings);
    let spec = &m.after["spec"];
    assert_eq!(
        spec["containers"][0]["image"],
        format!("nginx:1.25@{DIGEST_A}")
    );
    assert_eq!(
        spec["initContainers"][0]["image"],
        format!("busybox:1.36@{DIGEST_B}")
    );
    assert_eq!(
        spec["containers"][1]["image"],
        m.before["spec"]["containers"][1]["image"]
    );
    let record: BTreeMap<String, String> =
        serde_json::from_str(&annotation(&m.after, ORIGINAL_IMAGES).unwrap()).unwrap();
    assert_eq!(
        record,
        BTreeMap::from([
            ("app".to_owned(), "nginx:1.25".to_owned()),
            ("init".to_owned(), "busybox:1.36".to_owned()),
        ])
    );
    // Everything else is as sent: the annotation kubectl wrote, the rest of the spec.
    let mut expected = m.before.clone();
    expected["spec"]["containers"][0]["image"] = spec["containers"][0]["image"].clone();
    expected["spec"]["initContainers"][0]["image"] = spec["initContainers"][0]["image"].clone();
    expected["metadata"]["annotations"][ORIGINAL_IMAGES] =
        m.after["metadata"]["annotations"][ORIGINAL_IMAGES].clone();
    assert_eq!(m.after, expected);
    // The digest-pinned sidecar was never asked for.
    assert_eq!(
        m.asked,
        ["docker.io/library/busybox", "docker.io/library/nginx"]
    );
}

#[test]
fn a_mutated_pod_mutated_again_gets_no_patch() {
    let body = fixture("mutate-create-pod.json");
    let digests = Digests::default()
        .with("nginx:1.25", Ok(DIGEST_A))
        .with("busybox:1.36", Ok(DIGEST_B));
    let policies = policy_set(&[("pin", PIN), ("defaults", DEFAULTS)]);
    let first = mutate_body(&body, &policies, &digests);
    assert!(first.answer.patch.is_some());
    let again = mutate_body(&with_object(&body, &first.after), &policies, &digests);
    assert_eq!(again.answer.patch, None, "reinvocation changes nothing");
    assert!(
        again.asked.is_empty(),
        "pinned images are not looked up again"
    );
}

#[test]
fn security_defaults_fill_only_what_the_author_left_unset() {
    // app: privileged, runAsUser 0; sidecar and init: no securityContext.
    let body = fixture("mutate-create-pod.json");
    let m = mutate_body(
        &body,
        &policy_set(&[("defaults", DEFAULTS)]),
        &Digests::default(),
    );
    let spec = &m.after["spec"];
    let app = &spec["containers"][0]["securityContext"];
    assert_eq!(app["privileged"], true, "what the author wrote stays");
    assert_eq!(app["runAsUser"], 0);
    assert_eq!(
        app.get("allowPrivilegeEscalation"),
        None,
        "the API server refuses allowPrivilegeEscalation: false beside privileged"
    );
    assert_eq!(app["capabilities"]["drop"], json!(["ALL"]));
    for c in [&spec["containers"][1], &spec["initContainers"][0]] {
        assert_eq!(
            c["securityContext"],
            json!({"allowPrivilegeEscalation": false, "capabilities": {"drop": ["ALL"]}})
        );
    }
    let pod = &spec["securityContext"];
    assert_eq!(pod["seccompProfile"], json!({"type": "RuntimeDefault"}));
    assert_eq!(
        pod.get("runAsNonRoot"),
        None,
        "runAsUser 0 is written: runAsNonRoot would keep the Pod from starting"
    );
    // Nothing is pinned, so nothing is recorded.
    assert_eq!(annotation(&m.after, ORIGINAL_IMAGES), None);
    // The result is still a Pod.
    let _: k8s_openapi::api::core::v1::Pod = serde_json::from_value(m.after.clone()).unwrap();
}

#[test]
fn a_drop_list_or_a_setting_the_author_wrote_is_kept() {
    let pod = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "web", "namespace": "team-a"},
        "spec": {
            "securityContext": {"runAsNonRoot": false, "seccompProfile": {"type": "Unconfined"}},
            "containers": [
                {"name": "a", "image": "nginx:1.25", "securityContext": {
                    "allowPrivilegeEscalation": true, "capabilities": {"drop": ["NET_RAW"]}}},
                {"name": "b", "image": "nginx:1.25", "securityContext": {
                    "capabilities": {"add": ["NET_ADMIN"]}}},
                {"name": "c", "image": "nginx:1.25", "securityContext": {
                    "capabilities": {"add": ["SYS_ADMIN"]}}}
            ]
        }
    });
    let body = with_object(&fixture("mutate-create-pod.json"), &pod);
    let m = mutate_body(
        &body,
        &policy_set(&[("defaults", DEFAULTS)]),
        &Digests::default(),
    );
    let containers = &m.after["spec"]["containers"];
    assert_eq!(containers[0], pod["spec"]["containers"][0], "all written");
    assert_eq!(
        containers[1]["securityContext"],
        json!({"allowPrivilegeEscalation": false,
               "capabilities": {"add": ["NET_ADMIN"], "drop": ["ALL"]}})
    );
    assert_eq!(
        containers[2]["securityContext"],
        json!({"capabilities": {"add": ["SYS_ADMIN"], "drop": ["ALL"]}}),
        "SYS_ADMIN means privilege escalation: the API server refuses false beside it"
    );
    assert_eq!(
        m.after["spec"]["securityContext"],
        pod["spec"]["securityContext"]
    );
}

#[test]
fn a_windows_pod_gets_only_the_defaults_windows_accepts() {
    // The API server refuses seccomp, capabilities and allowPrivilegeEscalation when
    // `spec.os.name` is windows; runAsNonRoot is allowed there.
    let pod = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "win", "namespace": "team-a"},
        "spec": {
            "os": {"name": "windows"},
            "containers": [{"name": "iis", "image": "nginx:1.25"}]
        }
    });
    let body = with_object(&fixture("mutate-create-pod.json"), &pod);
    let m = mutate_body(
        &body,
        &policy_set(&[("defaults", DEFAULTS)]),
        &Digests::default(),
    );
    assert_eq!(m.after["spec"]["containers"], pod["spec"]["containers"]);
    assert_eq!(
        m.after["spec"]["securityContext"],
        json!({"runAsNonRoot": true})
    );
}

#[test]
fn a_pod_without_a_spec_gets_nothing_under_it() {
    // Found by the property below with 200,000 cases: Pod-level defaults were added
    // under a `/spec` the object did not have, so the patch could not apply.
    let body = with_object(
        &fixture("mutate-create-pod.json"),
        &json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "web"}}),
    );
    let m = mutate_body(
        &body,
        &policy_set(&[("defaults", DEFAULTS)]),
        &Digests::default(),
    );
    assert_eq!(m.answer.patch, None);
    assert_eq!(m.after, m.before);
}

#[test]
fn an_unresolved_tag_stays_as_written_and_says_why() {
    let body = fixture("mutate-create-pod.json");
    let digests = Digests::default().with("busybox:1.36", Ok(DIGEST_B));
    let m = mutate_body(&body, &policy_set(&[("pin", PIN)]), &digests);
    assert_eq!(m.after["spec"]["containers"][0]["image"], "nginx:1.25");
    assert_eq!(
        annotation(&m.after, UNPINNED).unwrap(),
        "nginx:1.25: docker.io/library/nginx could not be resolved"
    );
    assert_eq!(
        m.answer.warnings,
        [
            "Pod team-a/web: image nginx:1.25 is not pinned to a digest: docker.io/library/nginx could not be resolved"
        ]
    );
    let record = annotation(&m.after, ORIGINAL_IMAGES).unwrap();
    assert_eq!(record, r#"{"init":"busybox:1.36"}"#);

    // Reinvoked once the registry answers: pinned, recorded beside init, and the
    // unpinned annotation goes.
    let digests = digests.with("nginx:1.25", Ok(DIGEST_A));
    let again = mutate_body(
        &with_object(&body, &m.after),
        &policy_set(&[("pin", PIN)]),
        &digests,
    );
    assert_eq!(
        again.after["spec"]["containers"][0]["image"],
        format!("nginx:1.25@{DIGEST_A}")
    );
    assert_eq!(annotation(&again.after, UNPINNED), None);
    assert_eq!(
        annotation(&again.after, ORIGINAL_IMAGES).unwrap(),
        r#"{"app":"nginx:1.25","init":"busybox:1.36"}"#
    );
    assert!(again.answer.warnings.is_empty());
}

#[test]
fn only_images_a_pinning_policy_covers_are_pinned() {
    let body = fixture("mutate-create-pod.json");
    let digests = Digests::default()
        .with("nginx:1.25", Ok(DIGEST_A))
        .with("busybox:1.36", Ok(DIGEST_B));
    let only_nginx =
        r#"{"match": {"images": ["docker.io/library/nginx"]}, "mutate": {"pinDigests": true}}"#;
    let other_namespace =
        r#"{"match": {"namespaces": ["team-b"]}, "mutate": {"pinDigests": true}}"#;
    let deployments = r#"{"match": {"kinds": ["Deployment"]}, "mutate": {"pinDigests": true}}"#;
    let m = mutate_body(
        &body,
        &policy_set(&[
            ("nginx", only_nginx),
            ("b", other_namespace),
            ("d", deployments),
        ]),
        &digests,
    );
    assert_eq!(
        m.after["spec"]["containers"][0]["image"],
        format!("nginx:1.25@{DIGEST_A}")
    );
    assert_eq!(
        m.after["spec"]["initContainers"][0]["image"],
        "busybox:1.36"
    );
    assert_eq!(m.asked, ["docker.io/library/nginx"]);
}

#[test]
fn workloads_other_than_pods_are_never_mutated() {
    for name in [
        "validate-create-deployment.json",
        "validate-create-statefulset.json",
        "validate-create-job.json",
        "validate-create-cronjob.json",
        "validate-update-pod.json",
    ] {
        let body = fixture(name);
        let request = admission::parse_raw(&body).unwrap();
        assert!(
            matches!(
                mutate::read(&request, body.len()),
                Err(Untouched::Skipped(_))
            ),
            "{name}"
        );
    }
}

/// A `pods/ephemeralcontainers` UPDATE as a 1.19–1.21 API server sends it.
fn ephemeral_review(kind: &str, existing: &Value, added: &Value) -> Vec<u8> {
    let (object, old) = if kind == "EphemeralContainers" {
        (
            json!({"apiVersion": "v1", "kind": "EphemeralContainers",
                   "metadata": {"name": "web", "namespace": "team-a"},
                   "ephemeralContainers": [existing, added]}),
            json!({"apiVersion": "v1", "kind": "EphemeralContainers",
                   "metadata": {"name": "web", "namespace": "team-a"},
                   "ephemeralContainers": [existing]}),
        )
    } else {
        let pod = |ephemeral: Vec<&Value>| {
            json!({"apiVersion": "v1", "kind": "Pod",
                   "metadata": {"name": "web", "namespace": "team-a"},
                   "spec": {"containers": [{"name": "app", "image": "nginx:1.25"}],
                            "ephemeralContainers": ephemeral}})
        };
        (pod(vec![existing, added]), pod(vec![existing]))
    };
    serde_json::to_vec(&json!({
        "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "request": {
            "uid": "e", "kind": {"group": "", "version": "v1", "kind": kind},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "subResource": "ephemeralcontainers", "name": "web", "namespace": "team-a",
            "operation": "UPDATE", "object": object, "oldObject": old
        }
    }))
    .unwrap()
}

#[test]
fn only_the_ephemeral_container_being_added_is_changed() {
    let existing = json!({"name": "debugger-1", "image": "busybox:1.36"});
    let added = json!({"name": "debugger-2", "image": "busybox:1.36"});
    let digests = Digests::default().with("busybox:1.36", Ok(DIGEST_B));
    let policies = policy_set(&[("pin", PIN), ("defaults", DEFAULTS)]);
    for (kind, list) in [
        ("EphemeralContainers", "/ephemeralContainers"),
        ("Pod", "/spec/ephemeralContainers"),
    ] {
        let m = mutate_body(
            &ephemeral_review(kind, &existing, &added),
            &policies,
            &digests,
        );
        let patch: Vec<Value> = serde_json::from_slice(m.answer.patch.as_ref().unwrap()).unwrap();
        let paths: Vec<&str> = patch
            .iter()
            .map(|op| op["path"].as_str().unwrap())
            .collect();
        assert_eq!(
            paths,
            [
                format!("{list}/1/image"),
                format!("{list}/1/image"),
                format!("{list}/1/securityContext")
            ],
            "{kind}: the existing ephemeral container, the Pod's containers and its metadata are immutable"
        );
    }
    // Unresolved: no annotation can be written through the subresource; the warning says it.
    let m = mutate_body(
        &ephemeral_review("EphemeralContainers", &existing, &added),
        &policy_set(&[("pin", PIN)]),
        &Digests::default(),
    );
    assert_eq!(m.answer.patch, None);
    assert_eq!(m.answer.warnings.len(), 1, "{:?}", m.answer.warnings);
}

#[test]
fn a_pod_whose_annotations_would_pass_the_limit_is_not_mutated() {
    let body = fixture("mutate-create-pod.json");
    let mut pod: Value = admission::parse_raw(&body)
        .map(|r| serde_json::from_str(r.object_json().unwrap()).unwrap())
        .unwrap();
    pod["metadata"]["annotations"]["big"] = Value::String("x".repeat(256 * 1024 - 200));
    let digests = Digests::default()
        .with("nginx:1.25", Ok(DIGEST_A))
        .with("busybox:1.36", Ok(DIGEST_B));
    let m = mutate_body(
        &with_object(&body, &pod),
        &policy_set(&[("pin", PIN)]),
        &digests,
    );
    assert_not_sent(
        &m,
        |n| matches!(n, NotSent::Annotations(_)),
        "is not mutated: its annotations would take",
    );
}

/// `/mutate` reads a Pod being created while it parses the review; the answer is the
/// one the object kept as sent gets.
#[test]
fn a_pod_read_in_one_pass_gets_the_answer_of_one_kept_as_sent() {
    let set = policy_set(&[("pin", PIN), ("defaults", DEFAULTS)]);
    let digests = Digests::default()
        .with("nginx:1.25", Ok(DIGEST_A))
        .with("busybox:1.36", Ok(DIGEST_B));
    for name in [
        "mutate-create-pod.json",
        "mutate-create-pod-2.json",
        "mutate-create-pod-dryrun.json",
    ] {
        let body = in_api_server_order(&serde_json::from_slice(&fixture(name)).unwrap());
        let one_pass = admission::parse(body.as_bytes()).unwrap();
        assert!(one_pass.object_json().is_none(), "{name}: read in one pass");
        let kept = admission::parse_raw(body.as_bytes()).unwrap();
        let (answer, _) = answer_for(&one_pass, body.len(), &set, &digests);
        assert!(answer.patch.is_some(), "{name}: something to change");
        assert_eq!(
            answer,
            answer_for(&kept, body.len(), &set, &digests).0,
            "{name}"
        );
    }
}

/// No patch is sent that would take the Pod past etcd's object limit. For a Pod read in
/// one pass the review's size stands for the object's, so the margin is the envelope.
#[test]
fn a_pod_whose_patch_would_pass_etcds_object_limit_is_not_mutated() {
    let body = fixture("mutate-create-pod.json");
    let review: Value = serde_json::from_slice(&body).unwrap();
    let envelope =
        in_api_server_order(&review).len() - review["request"]["object"].to_string().len();
    // The review at `bytes`, padded by an environment variable no rule reads.
    let sized = |bytes: usize| {
        let mut pod = review["request"]["object"].clone();
        pod["spec"]["containers"][0]["env"] = json!([{"name": "PAD", "value": ""}]);
        let padding = bytes - envelope - pod.to_string().len();
        pod["spec"]["containers"][0]["env"][0]["value"] = Value::String("x".repeat(padding));
        with_object(&body, &pod)
    };
    let digests = Digests::default()
        .with("nginx:1.25", Ok(DIGEST_A))
        .with("busybox:1.36", Ok(DIGEST_B));
    let pin = policy_set(&[("pin", PIN)]);
    let near = mutate_body(
        &sized(mutate::patch::MAX_OBJECT_BYTES - 100),
        &pin,
        &digests,
    );
    assert_not_sent(
        &near,
        |n| matches!(n, NotSent::Object(_)),
        "more than etcd's object limit",
    );
    let under = mutate_body(
        &sized(mutate::patch::MAX_OBJECT_BYTES - 64 * 1024),
        &pin,
        &digests,
    );
    assert!(under.answer.patch.is_some(), "{:?}", under.answer.warnings);
    assert_eq!(under.answer.not_sent, None);
}

#[test]
fn the_answer_carries_the_patch_in_base64_as_the_api_server_reads_it() {
    let body = fixture("mutate-create-pod.json");
    let digests = Digests::default()
        .with("nginx:1.25", Ok(DIGEST_A))
        .with("busybox:1.36", Ok(DIGEST_B));
    let m = mutate_body(&body, &policy_set(&[("pin", PIN)]), &digests);
    let json = mutate::respond("f0621ab0", &m.answer).unwrap();
    let answer = response(&json);
    assert_eq!(answer["uid"], "f0621ab0");
    assert_eq!(answer["allowed"], true);
    assert_eq!(answer["patchType"], "JSONPatch");
    let patch = base64::engine::general_purpose::STANDARD
        .decode(answer["patch"].as_str().unwrap())
        .unwrap();
    assert_eq!(Some(patch), m.answer.patch);
    // Nothing to change: no patch, no patchType.
    let empty = response(&mutate::respond("u", &mutate::Answer::default()).unwrap());
    assert_eq!(empty, json!({"uid": "u", "allowed": true}));
}

// ---- properties ----------------------------------------------------------------------

/// A container as authors write them: an image with or without a digest, any mix of
/// security settings.
fn container(name: String) -> impl Strategy<Value = Value> {
    let image = prop_oneof![
        Just("nginx:1.25".to_owned()),
        Just("ghcr.io/acme/app:v2".to_owned()),
        Just("busybox".to_owned()),
        Just(format!("ghcr.io/acme/app@{DIGEST_A}")),
        Just(format!("nginx:1.25@{DIGEST_B}")),
    ];
    let capabilities = prop_oneof![
        Just(None),
        Just(Some(json!({}))),
        Just(Some(json!({"drop": ["NET_RAW"]}))),
        Just(Some(json!({"add": ["SYS_ADMIN"]}))),
        Just(Some(json!({"add": ["NET_ADMIN"], "drop": []}))),
    ];
    let context = prop::option::of((
        prop::option::of(any::<bool>()),
        prop::option::of(any::<bool>()),
        prop::option::of(prop_oneof![Just(0i64), Just(1000i64)]),
        capabilities,
    ));
    (image, context).prop_map(move |(image, context)| {
        let mut c = json!({"name": name, "image": image});
        if let Some((privileged, escalation, user, capabilities)) = context {
            let mut sc = serde_json::Map::new();
            if let Some(p) = privileged {
                sc.insert("privileged".into(), p.into());
            }
            if let Some(e) = escalation {
                sc.insert("allowPrivilegeEscalation".into(), e.into());
            }
            if let Some(u) = user {
                sc.insert("runAsUser".into(), u.into());
            }
            if let Some(caps) = capabilities {
                sc.insert("capabilities".into(), caps);
            }
            c["securityContext"] = Value::Object(sc);
        }
        c
    })
}

fn pod() -> impl Strategy<Value = Value> {
    let containers = prop::collection::vec(0..5u8, 1..4).prop_flat_map(|v| {
        v.iter()
            .enumerate()
            .map(|(i, _)| container(format!("c{i}")))
            .collect::<Vec<_>>()
    });
    let init = prop::collection::vec(0..5u8, 0..2).prop_flat_map(|v| {
        v.iter()
            .enumerate()
            .map(|(i, _)| container(format!("init{i}")))
            .collect::<Vec<_>>()
    });
    let pod_context = prop_oneof![
        Just(None),
        Just(Some(json!({}))),
        Just(Some(json!({"runAsNonRoot": false}))),
        Just(Some(json!({"runAsUser": 0}))),
        Just(Some(
            json!({"seccompProfile": {"type": "Localhost", "localhostProfile": "p"}})
        )),
    ];
    let annotations = prop_oneof![
        Just(None),
        Just(Some(json!({}))),
        Just(Some(json!({"team": "a"}))),
        Just(Some(json!({ORIGINAL_IMAGES: "{\"c0\":\"nginx:1.24\"}"}))),
        Just(Some(
            json!({ORIGINAL_IMAGES: "not json", UNPINNED: "stale"})
        )),
    ];
    (containers, init, pod_context, annotations).prop_map(|(containers, init, sc, annotations)| {
        let mut pod = json!({"apiVersion": "v1", "kind": "Pod",
                             "metadata": {"name": "web", "namespace": "team-a"},
                             "spec": {"containers": containers}});
        if !init.is_empty() {
            pod["spec"]["initContainers"] = Value::Array(init);
        }
        if let Some(sc) = sc {
            pod["spec"]["securityContext"] = sc;
        }
        if let Some(a) = annotations {
            pod["metadata"]["annotations"] = a;
        }
        pod
    })
}

/// Mutation rules, or none, for the three policy slots.
fn mutate_rule() -> impl Strategy<Value = Option<Value>> {
    prop::option::of(
        (
            any::<bool>(),
            any::<bool>(),
            any::<bool>(),
            any::<bool>(),
            any::<bool>(),
        )
            .prop_map(|(pin, non_root, ape, drop, seccomp)| {
                let mut defaults = serde_json::Map::new();
                if non_root {
                    defaults.insert("runAsNonRoot".into(), true.into());
                }
                if ape {
                    defaults.insert("allowPrivilegeEscalation".into(), false.into());
                }
                if drop {
                    defaults.insert("dropAllCapabilities".into(), true.into());
                }
                if seccomp {
                    defaults.insert("seccompProfile".into(), "RuntimeDefault".into());
                }
                json!({"pinDigests": pin, "securityDefaults": defaults})
            }),
    )
}

fn policies(rules: &[Option<Value>]) -> PolicySet {
    let scopes = [
        json!({}),
        json!({"images": ["ghcr.io/acme/**"]}),
        json!({"images": ["docker.io/**"], "excludeImages": ["docker.io/library/busybox"]}),
    ];
    let compiled = rules
        .iter()
        .zip(scopes)
        .enumerate()
        .filter_map(|(i, (rule, scope))| {
            let spec = json!({"match": scope, "mutate": rule.as_ref()?});
            Some(compile(&format!("p{i}"), &serde_json::from_value(spec).unwrap()).unwrap())
        });
    let namespaces = HashMap::from([("team-a".to_owned(), NamespaceLabels::new())]);
    PolicySet::new(
        compiled,
        Vec::<CompiledIntegration>::new(),
        Arc::new(namespaces),
    )
}

/// Every image of `object` with the JSON pointer to it.
fn images(object: &Value) -> Vec<(String, String)> {
    let mut found = Vec::new();
    for list in ["containers", "initContainers"] {
        for (i, c) in object["spec"][list]
            .as_array()
            .into_iter()
            .flatten()
            .enumerate()
        {
            found.push((
                format!("/spec/{list}/{i}/image"),
                c["image"].as_str().unwrap().to_owned(),
            ));
        }
    }
    found
}

proptest! {
    #![proptest_config(config())]

    /// A captured mutating review with one field replaced by anything (or any bytes):
    /// answered without a panic, and any patch sent applies to the object as sent —
    /// unless the damage turned an object into an array or back, which the API server
    /// never sends (it decodes and re-encodes the object): serde reads a struct from an
    /// array too, and the patch then may not apply (the API server would fail the
    /// request, never admit it unmutated).
    #[test]
    fn any_review_is_answered_without_a_panic(
        path in prop::collection::vec(0usize..32, 1..5),
        value in prop::option::of(json_value()),
        bytes in any::<Vec<u8>>(),
    ) {
        let mut review: Value = serde_json::from_slice(&fixture("mutate-create-pod.json")).unwrap();
        let original = review.clone();
        let damaged = damage(&mut review, &path, value);
        let shape = |v: Option<&Value>| match v {
            Some(Value::Object(_)) => 1,
            Some(Value::Array(_)) => 2,
            _ => 0,
        };
        let (before, after) = (shape(original.pointer(&damaged)), shape(review.pointer(&damaged)));
        let reshaped = before != after && before + after > 0 && review.pointer(&damaged).is_some();
        let everything = policy_set(&[("pin", PIN), ("defaults", DEFAULTS)]);
        let digests = Digests::default().with("nginx:1.25", Ok(DIGEST_A));
        for body in [serde_json::to_vec(&review).unwrap(), bytes] {
            let Ok(request) = admission::parse_raw(&body) else { continue };
            let Ok(target) = mutate::read(&request, body.len()) else { continue };
            let namespace = request.namespace.as_deref().unwrap_or_default();
            let review = Review::new(target.evaluable.subject(namespace, NamespaceView::Snapshot));
            let plan = review.mutation(&everything, target.scope(), &digests);
            let answer = mutate::answer(&target, &plan, "Pod");
            // The hand-written answer is JSON that carries the uid and the patch as sent.
            let reply: Value = serde_json::from_slice(&mutate::respond(&request.uid, &answer).unwrap()).unwrap();
            prop_assert_eq!(reply["response"]["uid"].as_str(), Some(request.uid.as_ref()));
            let sent = reply["response"]["patch"].as_str().map(|p| base64::engine::general_purpose::STANDARD.decode(p).unwrap());
            prop_assert_eq!(&sent, &answer.patch);
            if let Some(patch) = answer.patch.as_ref().filter(|_| !reshaped) {
                let mut object: Value = serde_json::from_str(request.object_json().unwrap()).unwrap();
                let patch: json_patch::Patch = serde_json::from_slice(patch).unwrap();
                prop_assert!(json_patch::patch(&mut object, &patch).is_ok(), "damaged {}", damaged);
            }
        }
    }

    /// Applying the patch gives a Pod whose only changes are pinned images, defaults
    /// where nothing was written, and the two annotations; mutating it again changes
    /// nothing.
    #[test]
    fn a_patch_changes_only_what_was_asked(
        pod in pod(),
        rules in prop::collection::vec(mutate_rule(), 3),
        resolves in any::<bool>(),
    ) {
        let policies = policies(&rules);
        let digests = if resolves {
            Digests::default()
                .with("nginx:1.25", Ok(DIGEST_A))
                .with("ghcr.io/acme/app:v2", Ok(DIGEST_B))
                .with("busybox", Err(UnresolvedCause::TagNotFound))
        } else {
            Digests::default()
        };
        let body = with_object(&fixture("mutate-create-pod.json"), &pod);
        let m = mutate_body(&body, &policies, &digests);
        let typed: Result<k8s_openapi::api::core::v1::Pod, _> =
            serde_json::from_value(m.after.clone());
        prop_assert!(typed.is_ok(), "{:?}", typed.err());

        // Images: unchanged, or the written reference @ the digest it resolved to.
        for ((path, before), (_, after)) in images(&m.before).iter().zip(images(&m.after)) {
            if &after != before {
                prop_assert!(!before.contains('@'), "{path}: a digest was replaced");
                let digest = digests.digest(&ImageRef::parse(before).unwrap()).unwrap();
                prop_assert_eq!(&after, &format!("{before}@{digest}"), "{}", path);
            }
        }
        // Security settings: nothing the author wrote changes; new values are the defaults.
        let diff = json_patch::diff(&m.before, &m.after);
        for op in diff.0.iter() {
            let path = op.path().to_string();
            let allowed = path.ends_with("/image")
                || path.starts_with("/metadata/annotations")
                || path == "/metadata"
                || path.ends_with("/securityContext")
                || path.ends_with("/allowPrivilegeEscalation")
                || path.ends_with("/capabilities")
                || path.ends_with("/capabilities/drop")
                || path.ends_with("/runAsNonRoot")
                || path.ends_with("/seccompProfile");
            prop_assert!(allowed, "unexpected change at {}", path);
            if let json_patch::PatchOperation::Replace(r) = op {
                prop_assert!(path.ends_with("/image") || path.starts_with("/metadata/annotations/"),
                    "{} replaced with {}", path, r.value);
            }
            if let json_patch::PatchOperation::Remove(_) = op {
                prop_assert_eq!(path.as_str(), "/metadata/annotations/portcullis.dev~1unpinned");
            }
        }
        // Annotations other than Portcullis's are as they were.
        let others = |o: &Value| -> BTreeMap<String, Value> {
            o["metadata"]["annotations"].as_object().into_iter().flatten()
                .filter(|(k, _)| !k.starts_with("portcullis.dev/"))
                .map(|(k, v)| (k.clone(), v.clone())).collect()
        };
        prop_assert_eq!(others(&m.before), others(&m.after));

        // Idempotent: the mutated Pod, sent again, gets no patch.
        let again = mutate_body(&with_object(&body, &m.after), &policies, &digests);
        prop_assert_eq!(again.answer.patch, None);
    }
}
