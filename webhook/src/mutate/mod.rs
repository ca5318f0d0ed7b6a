//! The mutating webhook (`POST /mutate`): which requests it may change, and its answer
//! — the engine's plan as a JSONPatch, with a warning for each image that stays as
//! written. It never denies: validation, which sees the mutated Pod, decides.

mod metrics;
pub mod patch;

use std::collections::BTreeMap;

use base64::Engine as _;

use crate::admission::{self, AnswerWriter, Evaluable, Request, Verdict};
use crate::engine::mutation::{Plan, Scope};
use crate::workload::{ReadError, Workload, WorkloadKind, WorkloadObject, decode};
pub use metrics::MutationMetrics;
pub use patch::{NotSent, ORIGINAL_IMAGES, UNPINNED};

/// A request the mutating webhook may change: a Pod being created, or ephemeral
/// containers being added to one.
#[derive(Debug)]
pub struct Target<'a> {
    /// The Pod (or, on the subresource, its ephemeral containers) as read.
    pub evaluable: Evaluable<'a>,
    /// Ephemeral containers the Pod already has: immutable, never changed.
    existing: Vec<String>,
    shape: patch::Shape,
}

impl Target<'_> {
    /// What a plan may change.
    pub fn scope(&self) -> Scope<'_> {
        if self.shape.whole_pod {
            Scope::WholePod
        } else {
            Scope::NewEphemeralContainers(&self.existing)
        }
    }
}

/// Why a request gets no patch.
#[derive(Debug, PartialEq, Eq)]
pub enum Untouched {
    /// Not something the webhook mutates.
    Skipped(&'static str),
    /// The object could not be read (validation denies it): the message says why.
    Unreadable(String),
}

/// Sorts out the requests that are not mutated, and reads those that may be.
/// `review_bytes` is the whole review's size. When the object was read while the review
/// was parsed (`admission::parse`, for a Pod being created), it is not kept as sent, and
/// `review_bytes` stands for its size: an upper bound, larger by the envelope (a few
/// hundred bytes to a few KB).
pub fn read<'r>(request: &'r Request<'_>, review_bytes: usize) -> Result<Target<'r>, Untouched> {
    let subresource = request.sub_resource.as_deref().unwrap_or_default();
    let whole_pod = match (request.operation.as_ref(), subresource) {
        ("CREATE", "") => true,
        ("UPDATE", "ephemeralcontainers") => false,
        _ => {
            return Err(Untouched::Skipped(
                "only Pods being created and ephemeral containers being added are mutated",
            ));
        }
    };
    let kind = request.kind.kind.as_ref();
    let legacy_list = kind == "EphemeralContainers" && !whole_pod;
    if !request.kind.group.is_empty() || !(kind == "Pod" || legacy_list) {
        return Err(Untouched::Skipped("only Pods are mutated"));
    }
    let evaluable = match admission::read(request) {
        Ok(evaluable) => evaluable,
        Err(Verdict::Unreadable(message)) => return Err(Untouched::Unreadable(message)),
        Err(_) => return Err(Untouched::Skipped("the request is not evaluated")),
    };
    // Its size bounds the patch. `admission::read` found an object: it is kept as sent,
    // or it was read in one pass and the review's size bounds it.
    let object_bytes = request.object_json().map_or(review_bytes, str::len);
    if whole_pod {
        return creating(evaluable, object_bytes);
    }
    let old = request.old_object_json().ok_or_else(|| {
        Untouched::Unreadable(
            "request.oldObject is missing: the ephemeral containers the Pod already has are unknown"
                .into(),
        )
    })?;
    let existing =
        ephemeral_names(legacy_list, old).map_err(|e| unreadable("request.oldObject", e))?;
    let shape = patch::Shape {
        legacy_list,
        has_metadata: evaluable.object.has_metadata,
        object_bytes,
        ..patch::Shape::default()
    };
    Ok(Target {
        evaluable,
        existing,
        shape,
    })
}

/// A Pod being created (`object_bytes` long as sent): what `read` makes of a CREATE,
/// and what `portcullis check` mutates.
pub fn creating(evaluable: Evaluable<'_>, object_bytes: usize) -> Result<Target<'_>, Untouched> {
    let annotations = match evaluable.object.annotations {
        Some(raw) => Some(
            decode::<BTreeMap<String, String>>(raw.get())
                .map_err(|e| unreadable("metadata.annotations", e))?,
        ),
        None => None,
    };
    let shape = patch::Shape {
        whole_pod: true,
        has_metadata: evaluable.object.has_metadata,
        annotations,
        object_bytes,
        ..patch::Shape::default()
    };
    Ok(Target {
        evaluable,
        existing: Vec::new(),
        shape,
    })
}

fn unreadable(what: &str, e: ReadError) -> Untouched {
    Untouched::Unreadable(format!("{what}: {e}"))
}

/// The names of the ephemeral containers in the object before the update.
fn ephemeral_names(legacy_list: bool, old: &str) -> Result<Vec<String>, ReadError> {
    let spec = if legacy_list {
        WorkloadObject::read_ephemeral_containers(old)?.pod_spec()?
    } else {
        Workload::read(WorkloadKind::Pod, old)?.spec
    };
    Ok(spec
        .ephemeral_containers
        .iter()
        .flatten()
        .map(|c| c.name.to_string())
        .collect())
}

/// What the webhook answers for one plan.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Answer {
    /// The JSONPatch, when something changes.
    pub patch: Option<Vec<u8>>,
    /// Warnings for the client: images left as written, a plan not sent.
    pub warnings: Vec<String>,
    /// Why the plan was not sent, if it was not.
    pub not_sent: Option<NotSent>,
}

/// The answer carrying out `plan` on `target`, which `subject` names in warnings
/// (`Pod namespace/name`).
pub fn answer(target: &Target<'_>, plan: &Plan, subject: &str) -> Answer {
    let mut warnings: Vec<String> = Vec::new();
    for u in &plan.unpinned {
        let line = format!(
            "{subject}: image {} is not pinned to a digest: {}",
            u.image, u.why.reason
        );
        if !warnings.contains(&line) {
            warnings.push(line);
        }
    }
    match patch::build(plan, &target.shape) {
        Ok(patch) => Answer {
            patch,
            warnings,
            not_sent: None,
        },
        Err(not_sent) => {
            warnings.push(format!(
                "{subject} is not mutated: {not_sent}; validation decides on it as written"
            ));
            Answer {
                patch: None,
                warnings,
                not_sent: Some(not_sent),
            }
        }
    }
}

/// The AdmissionReview answering `uid`: always allowed, with the patch (base64, as the
/// API server reads `[]byte`) and the warnings. Written by hand around the patch, which
/// is the bulk of it: base64 needs no escaping, so it is encoded straight into the answer.
pub fn respond(uid: &str, answer: &Answer) -> Result<Vec<u8>, serde_json::Error> {
    let patch_len = answer.patch.as_ref().map_or(0, |p| p.len().div_ceil(3) * 4);
    let mut out = AnswerWriter::new(uid, true, patch_len + 32);
    if let Some(patch) = &answer.patch {
        out.field("patchType").extend_from_slice(br#""JSONPatch""#);
        let value = out.field("patch");
        value.push(b'"');
        let start = value.len();
        value.resize(start + patch_len, 0);
        let written = base64::engine::general_purpose::STANDARD
            .encode_slice(patch, &mut value[start..])
            .map_err(serde::ser::Error::custom)?;
        value.truncate(start + written);
        value.push(b'"');
    }
    out.warnings(answer.warnings.iter());
    Ok(out.finish())
}
