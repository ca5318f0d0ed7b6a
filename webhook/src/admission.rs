//! AdmissionReview in, AdmissionReview out: which requests are evaluated, how the object
//! is read, and how a decision becomes `admission.k8s.io/v1` JSON.

use std::borrow::Cow;
use std::collections::HashMap;
use std::time::SystemTime;

use kube::core::admission::{AdmissionResponse, AdmissionReview};
use kube::core::{DynamicObject, Status};
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::engine::{self, Decision, Subject, truncate};
use crate::policy::PolicySet;
use crate::policy::{NamespaceView, compile, compile_integration, join_errors};
use crate::scan::ScanResults;
use crate::workload::{PodSpec, ReadError, WorkloadKind, WorkloadObject};

/// The only AdmissionReview version served.
pub const API_VERSION: &str = "admission.k8s.io/v1";
/// The audit annotation that carries Audit violations into the API server's audit log.
pub const AUDIT_ANNOTATION: &str = "audit-violations";
const MAX_AUDIT_ANNOTATION: usize = 4096;

/// Why a body is not an AdmissionReview the webhook can answer (HTTP 400).
#[derive(Debug, thiserror::Error)]
pub enum ReviewError {
    /// Not JSON, or not shaped like an AdmissionReview.
    #[error("malformed AdmissionReview: {0}")]
    Malformed(ReadError),
    /// Another `apiVersion` than `admission.k8s.io/v1`.
    #[error("unsupported AdmissionReview apiVersion {0:?}: only {API_VERSION} is served")]
    ApiVersion(String),
    /// No `request`.
    #[error("AdmissionReview has no request")]
    NoRequest,
    /// No `request.uid` to answer to.
    #[error("AdmissionReview request has no uid")]
    NoUid,
    /// A field every review carries is missing or empty (`operation`, `kind`,
    /// `resource`): nothing can be decided without it.
    #[error("AdmissionReview request has no {0}")]
    Missing(&'static str),
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Review<'a> {
    #[serde(borrow, default)]
    api_version: Cow<'a, str>,
    #[serde(borrow)]
    request: Option<Request<'a>>,
}

/// The fields of `request` the webhook reads; the object stays raw until its kind is known.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Request<'a> {
    /// `uid`, echoed in the answer.
    #[serde(borrow, default)]
    pub uid: Cow<'a, str>,
    /// `kind` (after `matchPolicy: Equivalent` conversion).
    #[serde(borrow, default)]
    pub kind: GroupVersionKind<'a>,
    /// `resource`.
    #[serde(borrow, default)]
    pub resource: GroupVersionResource<'a>,
    /// `subResource`.
    #[serde(borrow, default)]
    pub sub_resource: Option<Cow<'a, str>>,
    /// `namespace`.
    #[serde(borrow, default)]
    pub namespace: Option<Cow<'a, str>>,
    /// `name` (empty on a CREATE that generates it).
    #[serde(borrow, default)]
    pub name: Option<Cow<'a, str>>,
    /// `operation`: CREATE, UPDATE, DELETE or CONNECT.
    #[serde(borrow, default)]
    pub operation: Cow<'a, str>,
    /// `dryRun`: decide, but cause no side effects.
    #[serde(default)]
    pub dry_run: Option<bool>,
    /// `userInfo`: who asked (for the decision log).
    #[serde(borrow, default)]
    pub user_info: UserInfo<'a>,
    #[serde(borrow, default)]
    object: Option<&'a RawValue>,
    #[serde(borrow, default)]
    old_object: Option<&'a RawValue>,
}

impl<'a> Request<'a> {
    /// `object`, as sent.
    pub fn object_json(&self) -> Option<&'a str> {
        self.object.map(RawValue::get)
    }

    /// `oldObject`, as sent.
    pub fn old_object_json(&self) -> Option<&'a str> {
        self.old_object.map(RawValue::get)
    }
}

/// `request.userInfo`, as far as the decision log reads it.
#[derive(Debug, Default, Deserialize)]
pub struct UserInfo<'a> {
    /// `username`.
    #[serde(borrow, default)]
    pub username: Cow<'a, str>,
}

/// `request.kind`.
#[derive(Debug, Default, Deserialize)]
pub struct GroupVersionKind<'a> {
    /// API group (`""` for core).
    #[serde(borrow, default)]
    pub group: Cow<'a, str>,
    /// API version.
    #[serde(borrow, default)]
    pub version: Cow<'a, str>,
    /// Kind.
    #[serde(borrow, default)]
    pub kind: Cow<'a, str>,
}

/// `request.resource`.
#[derive(Debug, Default, Deserialize)]
pub struct GroupVersionResource<'a> {
    /// API group (`""` for core).
    #[serde(borrow, default)]
    pub group: Cow<'a, str>,
    /// API version.
    #[serde(borrow, default)]
    pub version: Cow<'a, str>,
    /// Resource (`pods`).
    #[serde(borrow, default)]
    pub resource: Cow<'a, str>,
}

/// Parses a review body, checking the envelope (not the object).
pub fn parse(body: &[u8]) -> Result<Request<'_>, ReviewError> {
    let text = std::str::from_utf8(body).map_err(|e| {
        ReviewError::Malformed(ReadError {
            path: String::new(),
            message: format!("body is not UTF-8: {e}"),
        })
    })?;
    let review: Review<'_> = crate::workload::decode(text).map_err(ReviewError::Malformed)?;
    if review.api_version != API_VERSION {
        return Err(ReviewError::ApiVersion(review.api_version.into_owned()));
    }
    let request = review.request.ok_or(ReviewError::NoRequest)?;
    if request.uid.is_empty() {
        return Err(ReviewError::NoUid);
    }
    if request.operation.is_empty() {
        return Err(ReviewError::Missing("operation"));
    }
    if request.kind.kind.is_empty() || request.kind.version.is_empty() {
        return Err(ReviewError::Missing("kind"));
    }
    if request.resource.resource.is_empty() || request.resource.version.is_empty() {
        return Err(ReviewError::Missing("resource"));
    }
    Ok(request)
}

/// What the webhook made of a request.
#[derive(Debug)]
pub enum Verdict {
    /// Allowed without evaluation, and why (kind, operation, unchanged spec…).
    Skipped(&'static str),
    /// The object could not be read as its kind: denied with this message.
    Unreadable(String),
    /// Evaluated against the policies.
    Decided(Decision),
    /// A Portcullis object (ContainerPolicy, RegistryIntegration, AuditMonitor) that
    /// would not compile: rejected with every bad field.
    Invalid(String),
}

impl Verdict {
    /// Whether the request is admitted.
    pub fn allowed(&self) -> bool {
        match self {
            Verdict::Skipped(_) => true,
            Verdict::Unreadable(_) | Verdict::Invalid(_) => false,
            Verdict::Decided(d) => d.allowed(),
        }
    }

    /// A short label for logs and metrics: allow, warn, deny or skip.
    pub fn label(&self) -> &'static str {
        match self {
            Verdict::Skipped(_) => "skip",
            Verdict::Decided(d) if !d.allowed() => "deny",
            Verdict::Unreadable(_) | Verdict::Invalid(_) => "deny",
            Verdict::Decided(d) if d.has_warnings() => "warn",
            Verdict::Decided(_) => "allow",
        }
    }
}

/// A request whose pod spec is to be evaluated.
#[derive(Debug)]
pub struct Evaluable<'a> {
    /// The workload kind.
    pub kind: WorkloadKind,
    /// The object's name and raw pod spec.
    pub object: WorkloadObject<'a>,
    /// The pod spec as the rules read it.
    pub spec: PodSpec<'a>,
}

impl<'a> Evaluable<'a> {
    /// The Pod whose settings the ephemeral containers of a pre-1.22
    /// `EphemeralContainers` request will run with: that request does not carry them.
    pub fn pod_to_join(&self) -> Option<&str> {
        self.object
            .ephemeral_list
            .then_some(self.object.name.as_str())
    }

    /// These ephemeral containers in `pod` (its JSON): judged with the Pod's own
    /// securityContext, volumes and host settings, as the kubelet will run them.
    pub fn join_pod<'p>(self, pod: &'p str) -> Result<Evaluable<'p>, ReadError>
    where
        'a: 'p,
    {
        let mut spec = WorkloadObject::read(WorkloadKind::Pod, pod)?.pod_spec()?;
        spec.containers = None;
        spec.init_containers = None;
        spec.ephemeral_containers = self.spec.ephemeral_containers;
        Ok(Evaluable {
            kind: self.kind,
            object: self.object,
            spec,
        })
    }

    /// The subject the engine decides, in `namespace` as `labels` knows it.
    pub fn subject<'s>(&'s self, namespace: &'s str, labels: NamespaceView<'s>) -> Subject<'s> {
        Subject {
            kind: self.kind,
            namespace,
            labels,
            name: &self.object.name,
            spec: &self.spec,
        }
    }
}

/// Decides a parsed request against a snapshot, with scan results at hand and the
/// namespace labels the snapshot holds (what tests and `portcullis check` run; the
/// server fetches scan results and unknown namespaces first).
pub fn evaluate(
    request: &Request<'_>,
    set: &PolicySet,
    scans: &dyn ScanResults,
    now: SystemTime,
) -> Verdict {
    match read(request) {
        Err(verdict) => verdict,
        Ok(e) => {
            let namespace = request.namespace.as_deref().unwrap_or_default();
            let subject = e.subject(namespace, NamespaceView::Snapshot);
            Verdict::Decided(engine::decide(set, &subject, scans, now))
        }
    }
}

/// Decides one workload object given as JSON, outside of an admission request (what
/// `portcullis check` runs), through the same readers and engine as the webhook.
pub fn evaluate_object(
    kind: WorkloadKind,
    namespace: &str,
    object: &str,
    set: &PolicySet,
    scans: &dyn ScanResults,
    now: SystemTime,
) -> Verdict {
    let read = WorkloadObject::read(kind, object).and_then(|object| {
        let spec = object.pod_spec()?;
        Ok(Evaluable { kind, object, spec })
    });
    match read {
        Ok(e) => {
            let subject = e.subject(namespace, NamespaceView::Snapshot);
            Verdict::Decided(engine::decide(set, &subject, scans, now))
        }
        Err(e) => unreadable(kind.as_str(), e),
    }
}

fn unreadable(kind_name: &str, e: ReadError) -> Verdict {
    Verdict::Unreadable(format!(
        "{kind_name} object cannot be read as {kind_name}: {e}"
    ))
}

/// Sorts out requests that are not evaluated, and reads the pod spec of those that are.
pub fn read<'a>(request: &Request<'a>) -> Result<Evaluable<'a>, Verdict> {
    let operation = request.operation.as_ref();
    if operation != "CREATE" && operation != "UPDATE" {
        return Err(Verdict::Skipped("operation is not evaluated"));
    }
    let group = request.kind.group.as_ref();
    let kind_name = request.kind.kind.as_ref();
    if group == portcullis_crds::GROUP {
        return Err(check_policy_object(kind_name, request.object));
    }
    let ephemeral = match request.sub_resource.as_deref() {
        None | Some("") => false,
        Some("ephemeralcontainers")
            if group.is_empty() && matches!(kind_name, "Pod" | "EphemeralContainers") =>
        {
            true
        }
        Some(_) => return Err(Verdict::Skipped("subresource is not evaluated")),
    };
    let kind = if ephemeral {
        WorkloadKind::Pod
    } else {
        WorkloadKind::from_group_kind(group, kind_name)
            .ok_or(Verdict::Skipped("kind is not evaluated"))?
    };
    let read = |raw: &'a RawValue| {
        if kind_name == "EphemeralContainers" {
            WorkloadObject::read_ephemeral_containers(raw.get())
        } else {
            WorkloadObject::read(kind, raw.get())
        }
    };
    let unreadable = |e: ReadError| unreadable(kind_name, e);
    let raw = request
        .object
        .ok_or_else(|| Verdict::Unreadable("request.object is missing".into()))?;
    let object = read(raw).map_err(unreadable)?;
    let mut spec = object.pod_spec().map_err(unreadable)?;
    if ephemeral {
        // Only the ephemeral containers are being added (the containers were admitted
        // already); they run with the Pod's securityContext, volumes and host settings.
        spec.containers = None;
        spec.init_containers = None;
    } else if operation == "UPDATE"
        && let Some(old) = request.old_object.and_then(|old| read(old).ok())
        && old.pod_spec.map(RawValue::get) == object.pod_spec.map(RawValue::get)
    {
        return Err(Verdict::Skipped("pod spec unchanged"));
    }
    Ok(Evaluable { kind, object, spec })
}

/// Checks a ContainerPolicy, RegistryIntegration or AuditMonitor with the compiler the
/// controller uses: allowed when it compiles, else rejected naming every bad field.
fn check_policy_object(kind: &str, object: Option<&RawValue>) -> Verdict {
    let Some(raw) = object else {
        return Verdict::Unreadable("request.object is missing".into());
    };
    let errors = match kind {
        "ContainerPolicy" => crate::workload::decode::<portcullis_crds::ContainerPolicy>(raw.get())
            .map(|p| compile(&p.metadata.name.clone().unwrap_or_default(), &p.spec).err()),
        "RegistryIntegration" => {
            crate::workload::decode::<portcullis_crds::RegistryIntegration>(raw.get()).map(|i| {
                compile_integration(&i.metadata.name.clone().unwrap_or_default(), &i.spec).err()
            })
        }
        "AuditMonitor" => {
            crate::workload::decode::<portcullis_crds::AuditMonitor>(raw.get()).map(|m| {
                crate::auditlog::compile_monitor(
                    &m.metadata.name.clone().unwrap_or_default(),
                    &m.spec,
                )
                .err()
            })
        }
        _ => return Verdict::Skipped("kind is not evaluated"),
    };
    let name = crate::workload::decode::<ObjectName<'_>>(raw.get())
        .ok()
        .and_then(|o| o.metadata)
        .and_then(|m| m.name)
        .unwrap_or_default();
    match errors {
        Ok(None) => Verdict::Skipped("the object compiles"),
        Ok(Some(errors)) => Verdict::Invalid(format!(
            "{kind} {name:?} is invalid: {}",
            join_errors(&errors)
        )),
        Err(error) => Verdict::Invalid(format!("{kind} {name:?} is invalid: {error}")),
    }
}

#[derive(Deserialize)]
struct ObjectName<'a> {
    #[serde(borrow)]
    metadata: Option<NameOnly<'a>>,
}

#[derive(Deserialize)]
struct NameOnly<'a> {
    #[serde(borrow)]
    name: Option<Cow<'a, str>>,
}

/// The AdmissionReview answering `uid` with `verdict`.
pub fn respond(uid: &str, verdict: &Verdict) -> AdmissionReview<DynamicObject> {
    let mut response = AdmissionResponse::invalid("");
    response.uid = uid.to_owned();
    response.allowed = true;
    response.result = Status::success();
    match verdict {
        Verdict::Skipped(_) => {}
        Verdict::Unreadable(message) => deny(&mut response, message.clone()),
        Verdict::Invalid(message) => {
            response.allowed = false;
            response.result = Status::failure(message, "Invalid").with_code(422);
        }
        Verdict::Decided(decision) => {
            if let Some(message) = decision.deny_message() {
                deny(&mut response, message);
            }
            let warnings = decision.warnings();
            if !warnings.is_empty() {
                response.warnings = Some(warnings);
            }
            let audits = decision.audits();
            if !audits.is_empty() {
                let joined = truncate(audits.join("; "), MAX_AUDIT_ANNOTATION);
                response.audit_annotations = HashMap::from([(AUDIT_ANNOTATION.to_owned(), joined)]);
            }
        }
    }
    response.into_review()
}

fn deny(response: &mut AdmissionResponse, message: String) {
    response.allowed = false;
    response.result = Status::failure(&message, "Forbidden").with_code(403);
}
