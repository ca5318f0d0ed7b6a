//! The lean ceiling: what an admission webhook written for speed alone does for an
//! image policy — serde into borrowed structs holding only the fields image and
//! workload rules read, hash lookups of the namespace's policies and of each image's
//! scan result, a rule check per policy and image, and `allowed` with the uid. No
//! messages, no metrics, no logs: the floor Portcullis's cost is measured against.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

use crate::body;

/// Policies and scan results, the sizes of `fill`'s data set.
pub struct Data {
    /// Policies by namespace; `""` holds the cluster-wide ones.
    policies: HashMap<String, Vec<Policy>>,
    /// Critical findings by image reference.
    scans: HashMap<String, u32>,
}

struct Policy {
    denied_registry: String,
    max_critical: u32,
    deny_privileged: bool,
}

impl Data {
    /// `policies` policies (ten cluster-wide, the rest one per team namespace) and
    /// `scans` results, the body's images among them.
    pub fn new(policies: usize, scans: usize) -> Data {
        let policy = |i: usize| Policy {
            denied_registry: format!("registry-{i}.example.com/"),
            max_critical: 5,
            deny_privileged: i.is_multiple_of(2),
        };
        let mut by_namespace: HashMap<String, Vec<Policy>> = HashMap::new();
        for i in 0..policies {
            let namespace = if i < 10 {
                String::new()
            } else {
                format!("team-{i}")
            };
            by_namespace.entry(namespace).or_default().push(policy(i));
        }
        by_namespace
            .entry("team-a".into())
            .or_default()
            .push(policy(policies));
        let scans = (0..scans)
            .map(|i| {
                let image = if i < 20 {
                    body::image(i)
                } else {
                    format!("ghcr.io/acme/svc-{}:1.{i}.0", i % 5000)
                };
                (image, (i % 3) as u32)
            })
            .collect();
        Data {
            policies: by_namespace,
            scans,
        }
    }
}

#[derive(Deserialize)]
struct Review<'a> {
    #[serde(borrow)]
    request: Request<'a>,
}

#[derive(Deserialize)]
struct Request<'a> {
    #[serde(borrow)]
    uid: Cow<'a, str>,
    #[serde(borrow, default)]
    namespace: Option<Cow<'a, str>>,
    #[serde(borrow)]
    object: Object<'a>,
}

#[derive(Deserialize)]
struct Object<'a> {
    #[serde(borrow)]
    spec: Spec<'a>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Spec<'a> {
    #[serde(borrow, default)]
    containers: Vec<Container<'a>>,
    #[serde(borrow, default)]
    init_containers: Vec<Container<'a>>,
    #[serde(default)]
    host_network: bool,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Container<'a> {
    #[serde(borrow)]
    image: Cow<'a, str>,
    #[serde(default)]
    security_context: Option<SecurityContext>,
}

#[derive(Deserialize)]
struct SecurityContext {
    #[serde(default)]
    privileged: bool,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Answer<'a> {
    api_version: &'static str,
    kind: &'static str,
    response: Verdict<'a>,
}

#[derive(Serialize)]
struct Verdict<'a> {
    uid: &'a str,
    allowed: bool,
}

/// Answers one review.
pub fn answer(data: &Arc<Data>, body: &Bytes) -> Response {
    let Ok(review) = serde_json::from_slice::<Review<'_>>(body) else {
        return axum::http::StatusCode::BAD_REQUEST.into_response();
    };
    let request = review.request;
    let namespace = request.namespace.as_deref().unwrap_or_default();
    let applying = [data.policies.get(""), data.policies.get(namespace)];
    let spec = &request.object.spec;
    let mut allowed = !spec.host_network;
    for container in spec.containers.iter().chain(&spec.init_containers) {
        let critical = data.scans.get(container.image.as_ref()).copied();
        let privileged = container
            .security_context
            .as_ref()
            .is_some_and(|s| s.privileged);
        for policy in applying.iter().flatten().flat_map(|p| p.iter()) {
            allowed &= !container.image.starts_with(&policy.denied_registry)
                && critical.is_some_and(|c| c <= policy.max_critical)
                && !(policy.deny_privileged && privileged);
        }
    }
    // The verdict is computed and, like a real webhook's, would shape the answer; the
    // ceiling answers allowed either way so that every server sends the same bytes.
    std::hint::black_box(allowed);
    match serde_json::to_vec(&Answer {
        api_version: "admission.k8s.io/v1",
        kind: "AdmissionReview",
        response: Verdict {
            uid: &request.uid,
            allowed: true,
        },
    }) {
        Ok(json) => ([("content-type", "application/json")], json).into_response(),
        Err(_) => axum::http::StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}
