//! AdmissionReview in, AdmissionReview out: which requests are evaluated, how the object
//! is read, and how a decision becomes `admission.k8s.io/v1` JSON.

use std::borrow::Cow;
use std::time::SystemTime;

use serde::Deserialize;
use serde_json::value::RawValue;

use crate::engine::{self, Decision, Subject, truncate};
use crate::policy::PolicySet;
use crate::policy::{NamespaceView, compile, compile_integration, join_errors};
use crate::scan::ScanResults;
use crate::workload::{ObjectInfo, PodSpecRef, ReadError, Workload, WorkloadKind, WorkloadObject};

mod answer;
mod request;

pub use answer::AnswerWriter;

use request::ObjectField;
pub use request::{
    GroupVersionKind, GroupVersionResource, Request, ReviewError, UserInfo, parse, parse_raw,
};

/// The only AdmissionReview version served.
pub const API_VERSION: &str = "admission.k8s.io/v1";
/// The audit annotation that carries Audit violations into the API server's audit log.
pub const AUDIT_ANNOTATION: &str = "audit-violations";
const MAX_AUDIT_ANNOTATION: usize = 4096;

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
    /// The object's name and shape.
    pub object: ObjectInfo<'a>,
    /// The pod spec as the rules read it (borrowed from the request when it was read
    /// in one pass).
    pub spec: PodSpecRef<'a>,
}

impl<'a> Evaluable<'a> {
    /// The Pod whose settings the ephemeral containers of a pre-1.22
    /// `EphemeralContainers` request will run with: that request does not carry them.
    pub fn pod_to_join(&self) -> Option<&str> {
        self.object
            .ephemeral_list
            .then_some(self.object.name.as_ref())
    }

    /// These ephemeral containers in `pod` (its JSON): judged with the Pod's own
    /// securityContext, volumes and host settings, as the kubelet will run them.
    pub fn join_pod<'p>(self, pod: &'p str) -> Result<Evaluable<'p>, ReadError>
    where
        'a: 'p,
    {
        let mut spec = Workload::read(WorkloadKind::Pod, pod)?.spec;
        spec.containers = None;
        spec.init_containers = None;
        spec.ephemeral_containers = self.spec.into_owned().ephemeral_containers;
        Ok(Evaluable {
            kind: self.kind,
            object: self.object,
            spec: PodSpecRef::Owned(spec),
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
    let read = Workload::read(kind, object).map(|w| Evaluable {
        kind,
        object: w.info,
        spec: PodSpecRef::Owned(w.spec),
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
pub fn read<'r>(request: &'r Request<'_>) -> Result<Evaluable<'r>, Verdict> {
    let operation = request.operation.as_ref();
    if operation != "CREATE" && operation != "UPDATE" {
        return Err(Verdict::Skipped("operation is not evaluated"));
    }
    let group = request.kind.group.as_ref();
    let kind_name = request.kind.kind.as_ref();
    if group == portcullis_crds::GROUP {
        let raw = match &request.object {
            Some(ObjectField::Raw(raw)) => Some(*raw),
            _ => None,
        };
        return Err(check_policy_object(kind_name, raw));
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
    let unreadable = |e: ReadError| unreadable(kind_name, e);
    let raw = match &request.object {
        None => return Err(Verdict::Unreadable("request.object is missing".into())),
        Some(ObjectField::Read(read_as, workload)) => {
            // `parse` keeps only an object read as what the request says it is.
            return if *read_as == kind && !ephemeral && operation == "CREATE" {
                Ok(Evaluable {
                    kind,
                    object: workload.info.clone(),
                    spec: PodSpecRef::Borrowed(&workload.spec),
                })
            } else {
                Err(Verdict::Unreadable(format!(
                    "request.object was read as {read_as}, not as {kind_name}"
                )))
            };
        }
        Some(ObjectField::Raw(raw)) => raw.get(),
    };
    if kind_name == "EphemeralContainers" {
        // The pre-1.22 subresource: a bare list, judged with the Pod's settings.
        let object = WorkloadObject::read_ephemeral_containers(raw).map_err(unreadable)?;
        let spec = object.pod_spec().map_err(unreadable)?;
        return Ok(Evaluable {
            kind,
            object: object.info,
            spec: PodSpecRef::Owned(spec),
        });
    }
    if operation == "UPDATE" && !ephemeral {
        let object = WorkloadObject::read(kind, raw).map_err(unreadable)?;
        let spec = object.pod_spec().map_err(unreadable)?;
        if let Some(old) = request
            .old_object
            .and_then(|old| WorkloadObject::read(kind, old.get()).ok())
            && old.pod_spec.map(RawValue::get) == object.pod_spec.map(RawValue::get)
        {
            return Err(Verdict::Skipped("pod spec unchanged"));
        }
        return Ok(Evaluable {
            kind,
            object: object.info,
            spec: PodSpecRef::Owned(spec),
        });
    }
    let Workload { info, mut spec } = Workload::read(kind, raw).map_err(unreadable)?;
    if ephemeral {
        // Only the ephemeral containers are being added (the containers were admitted
        // already); they run with the Pod's securityContext, volumes and host settings.
        spec.containers = None;
        spec.init_containers = None;
    }
    Ok(Evaluable {
        kind,
        object: info,
        spec: PodSpecRef::Owned(spec),
    })
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

/// The AdmissionReview answering `uid` with `verdict`, as JSON.
pub fn respond(uid: &str, verdict: &Verdict) -> Vec<u8> {
    let decision = match verdict {
        Verdict::Skipped(_) => None,
        Verdict::Unreadable(message) => return refusal(uid, 403, "Forbidden", message),
        Verdict::Invalid(message) => return refusal(uid, 422, "Invalid", message),
        Verdict::Decided(decision) => Some(decision),
    };
    let Some(decision) = decision else {
        let mut answer = AnswerWriter::new(uid, true, 0);
        answer.success();
        return answer.finish();
    };
    let audits = decision.audits();
    let capacity = decision.warnings_len() + audits.iter().map(|a| a.len() + 2).sum::<usize>();
    let mut answer = match decision.deny_message() {
        Some(message) => {
            let mut answer = AnswerWriter::new(uid, false, capacity + message.len() + 64);
            answer.failure(403, "Forbidden", &message);
            answer
        }
        None => {
            let mut answer = AnswerWriter::new(uid, true, capacity);
            answer.success();
            answer
        }
    };
    answer.warnings(decision.warning_lines());
    if !audits.is_empty() {
        let joined = truncate(audits.join("; "), MAX_AUDIT_ANNOTATION);
        answer.audit_annotation(AUDIT_ANNOTATION, &joined);
    }
    answer.finish()
}

fn refusal(uid: &str, code: u16, reason: &str, message: &str) -> Vec<u8> {
    let mut answer = AnswerWriter::new(uid, false, message.len() + 64);
    answer.failure(code, reason, message);
    answer.finish()
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use kube::core::Status;
    use kube::core::admission::AdmissionResponse;
    use portcullis_crds::Action;
    use serde_json::Value;

    use super::*;
    use crate::engine::Violation;

    /// The same answer built with kube's types, the reference for the hand-written JSON.
    fn reference(uid: &str, verdict: &Verdict) -> Value {
        let mut response = AdmissionResponse::invalid("");
        response.uid = uid.to_owned();
        response.allowed = verdict.allowed();
        response.result = Status::success();
        let refuse =
            |message: &str, reason: &str, code| Status::failure(message, reason).with_code(code);
        match verdict {
            Verdict::Skipped(_) => {}
            Verdict::Unreadable(message) => response.result = refuse(message, "Forbidden", 403),
            Verdict::Invalid(message) => response.result = refuse(message, "Invalid", 422),
            Verdict::Decided(decision) => {
                if let Some(message) = decision.deny_message() {
                    response.result = refuse(&message, "Forbidden", 403);
                }
                let warnings = decision.warnings();
                response.warnings = (!warnings.is_empty()).then_some(warnings);
                let audits = decision.audits();
                if !audits.is_empty() {
                    let joined = truncate(audits.join("; "), MAX_AUDIT_ANNOTATION);
                    response.audit_annotations =
                        HashMap::from([(AUDIT_ANNOTATION.to_owned(), joined)]);
                }
            }
        }
        serde_json::to_value(response.into_review()).unwrap()
    }

    fn violation(action: Action, detail: &str) -> Violation {
        Violation {
            policy: "p \"quoted\"".into(),
            action,
            rule: "tags.denyLatest",
            target: "container \"app\" image nginx:latest".into(),
            detail: detail.to_owned().into(),
        }
    }

    #[test]
    fn the_written_answer_is_what_kube_types_serialize() {
        let decided = |actions: &[Action]| {
            Verdict::Decided(Decision {
                object: "Pod team-a/web".into(),
                violations: actions
                    .iter()
                    .map(|&a| violation(a, "tag latest \\ \u{7} is denied"))
                    .collect(),
            })
        };
        let verdicts = [
            Verdict::Skipped("kind is not evaluated"),
            Verdict::Unreadable("Pod object cannot be read as Pod: spec: \"bad\"".into()),
            Verdict::Invalid("ContainerPolicy \"x\" is invalid: spec.action: unknown".into()),
            decided(&[]),
            decided(&[Action::Warn, Action::Warn]),
            decided(&[Action::Audit, Action::Audit]),
            decided(&[Action::Block, Action::Warn, Action::Audit]),
            // More warnings than are shown: the last line counts the rest.
            decided(&[Action::Warn; 25]),
        ];
        for verdict in &verdicts {
            let written = respond("uid-\"1\"", verdict);
            let written: Value = serde_json::from_slice(&written).unwrap();
            assert_eq!(written, reference("uid-\"1\"", verdict), "{verdict:?}");
        }
    }
}
