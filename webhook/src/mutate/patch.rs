//! A mutation plan as an RFC 6902 JSONPatch on the object the API server sent: only
//! what changes, each pinned image guarded by a `test` of what was written, and the
//! annotations that record it.

use std::collections::BTreeMap;

use json_patch::jsonptr::Token;

use crate::engine::mutation::{ContainerDefaults, Plan, PodDefaults};
use crate::workload::Slot;

/// The annotation recording what each pinned container's image was as written
/// (a JSON map, container name → image).
pub const ORIGINAL_IMAGES: &str = "portcullis.dev/original-images";
/// The annotation listing the images a policy asks to pin that stay as written, and why.
pub const UNPINNED: &str = "portcullis.dev/unpinned";
/// The API server's limit on an object's annotations, keys and values together.
pub const MAX_ANNOTATIONS_BYTES: usize = 256 * 1024;
/// The largest object etcd stores by default (`--max-request-bytes`, 1.5 MiB).
pub const MAX_OBJECT_BYTES: usize = 1536 * 1024;

/// What the patch needs to know of the object as sent.
#[derive(Debug, Default)]
pub struct Shape {
    /// The object is the pre-1.22 `EphemeralContainers` holder, whose
    /// `ephemeralContainers` list sits at the top level.
    pub legacy_list: bool,
    /// A Pod being created: Pod-level fields and annotations may change.
    pub whole_pod: bool,
    /// Whether the object has `metadata`.
    pub has_metadata: bool,
    /// `metadata.annotations` as sent (`None`: absent).
    pub annotations: Option<BTreeMap<String, String>>,
    /// The object's size as sent, in bytes, or an upper bound of it (the whole review's
    /// size, when the object was read while the review was parsed).
    pub object_bytes: usize,
}

/// Why a plan is not sent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotSent {
    /// The annotations would pass the API server's limit.
    #[error(
        "its annotations would take {0} bytes, more than the API server's limit of {MAX_ANNOTATIONS_BYTES}"
    )]
    Annotations(usize),
    /// The Pod would pass etcd's object size.
    #[error(
        "the Pod would take up to {0} bytes with its patch, more than etcd's object limit of {MAX_OBJECT_BYTES}"
    )]
    Object(usize),
    /// The patch could not be encoded.
    #[error("the patch could not be encoded: {0}")]
    Encoding(String),
}

impl NotSent {
    /// A short label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            NotSent::Annotations(_) => "annotations-too-large",
            NotSent::Object(_) => "object-too-large",
            NotSent::Encoding(_) => "encoding",
        }
    }
}

/// A JSONPatch written as JSON text, op by op: this is on every Pod's admission path,
/// so nothing goes through intermediate JSON values. Paths are made of tokens that need
/// no escaping (field names, indexes, annotation keys escaped as JSON pointer tokens);
/// strings that come from the object go through serde_json.
struct Writer {
    out: Vec<u8>,
}

impl Writer {
    fn new() -> Self {
        Writer { out: Vec::new() }
    }

    /// Starts an op at `path` (the concatenated parts); the caller writes its value.
    fn start(&mut self, op: &str, path: &[&str]) {
        self.out
            .extend_from_slice(if self.out.is_empty() { b"[" } else { b"," });
        self.out.extend_from_slice(br#"{"op":""#);
        self.out.extend_from_slice(op.as_bytes());
        self.out.extend_from_slice(br#"","path":""#);
        for part in path {
            self.out.extend_from_slice(part.as_bytes());
        }
        self.out.push(b'"');
    }

    /// An op whose value is JSON text written here.
    fn raw(&mut self, op: &str, path: &[&str], value: &str) {
        self.start(op, path);
        self.out.extend_from_slice(br#","value":"#);
        self.out.extend_from_slice(value.as_bytes());
        self.out.push(b'}');
    }

    /// An op whose value is serialized by serde_json (escaped as needed).
    fn value(
        &mut self,
        op: &str,
        path: &[&str],
        value: &impl serde::Serialize,
    ) -> Result<(), NotSent> {
        self.start(op, path);
        self.out.extend_from_slice(br#","value":"#);
        serde_json::to_writer(&mut self.out, value)
            .map_err(|e| NotSent::Encoding(e.to_string()))?;
        self.out.push(b'}');
        Ok(())
    }

    fn remove(&mut self, path: &[&str]) {
        self.start("remove", path);
        self.out.push(b'}');
    }

    fn finish(mut self) -> Option<Vec<u8>> {
        if self.out.is_empty() {
            return None;
        }
        self.out.push(b']');
        Some(self.out)
    }
}

/// The JSONPatch (serialized) that carries out `plan` on an object of `shape`, or `None`
/// when nothing changes.
pub fn build(plan: &Plan, shape: &Shape) -> Result<Option<Vec<u8>>, NotSent> {
    let mut patch = Writer::new();
    for pin in &plan.pins {
        let at = container(shape, pin.slot, pin.index);
        patch.value("test", &[&at, "/image"], &pin.written)?;
        patch.value("replace", &[&at, "/image"], &pin.pinned)?;
    }
    for defaults in &plan.containers {
        container_ops(
            &container(shape, defaults.slot, defaults.index),
            defaults,
            &mut patch,
        );
    }
    if shape.whole_pod {
        pod_ops(&plan.pod, &mut patch);
        annotation_ops(plan, shape, &mut patch)?;
    }
    let Some(json) = patch.finish() else {
        return Ok(None);
    };
    let grown = shape.object_bytes + json.len();
    if grown > MAX_OBJECT_BYTES {
        return Err(NotSent::Object(grown));
    }
    Ok(Some(json))
}

/// The JSON pointer to a container (its tokens need no escaping).
fn container(shape: &Shape, slot: Slot, index: usize) -> String {
    let index = index.to_string();
    if shape.legacy_list {
        ["/ephemeralContainers/", &index].concat()
    } else {
        ["/spec/", slot.field(), "/", &index].concat()
    }
}

const DROP_ALL: &str = r#"["ALL"]"#;
const CAPABILITIES: &str = r#"{"drop":["ALL"]}"#;
const RUNTIME_DEFAULT: &str = r#"{"type":"RuntimeDefault"}"#;

fn container_ops(at: &str, d: &ContainerDefaults, patch: &mut Writer) {
    const CONTEXT: &str = "/securityContext";
    if !d.has_security_context {
        let whole = match (d.no_privilege_escalation, d.drop_all) {
            (true, true) => r#"{"allowPrivilegeEscalation":false,"capabilities":{"drop":["ALL"]}}"#,
            (true, false) => r#"{"allowPrivilegeEscalation":false}"#,
            (false, true) => r#"{"capabilities":{"drop":["ALL"]}}"#,
            (false, false) => return,
        };
        patch.raw("add", &[at, CONTEXT], whole);
        return;
    }
    if d.no_privilege_escalation {
        patch.raw("add", &[at, CONTEXT, "/allowPrivilegeEscalation"], "false");
    }
    if d.drop_all {
        if d.has_capabilities {
            patch.raw("add", &[at, CONTEXT, "/capabilities/drop"], DROP_ALL);
        } else {
            patch.raw("add", &[at, CONTEXT, "/capabilities"], CAPABILITIES);
        }
    }
}

fn pod_ops(d: &PodDefaults, patch: &mut Writer) {
    const CONTEXT: &str = "/spec/securityContext";
    if !d.has_security_context {
        let whole = match (d.run_as_non_root, d.seccomp_runtime_default) {
            (true, true) => r#"{"runAsNonRoot":true,"seccompProfile":{"type":"RuntimeDefault"}}"#,
            (true, false) => r#"{"runAsNonRoot":true}"#,
            (false, true) => r#"{"seccompProfile":{"type":"RuntimeDefault"}}"#,
            (false, false) => return,
        };
        patch.raw("add", &[CONTEXT], whole);
        return;
    }
    if d.run_as_non_root {
        patch.raw("add", &[CONTEXT, "/runAsNonRoot"], "true");
    }
    if d.seccomp_runtime_default {
        patch.raw("add", &[CONTEXT, "/seccompProfile"], RUNTIME_DEFAULT);
    }
}

/// `original-images` gains the pinned containers (what this request wrote wins over an
/// older record); `unpinned` says what stays as written, and goes when nothing does.
fn annotation_ops(plan: &Plan, shape: &Shape, patch: &mut Writer) -> Result<(), NotSent> {
    let empty = BTreeMap::new();
    let existing = shape.annotations.as_ref().unwrap_or(&empty);
    let mut wanted: BTreeMap<&str, Option<String>> = BTreeMap::new();
    if !plan.pins.is_empty() {
        let mut record: BTreeMap<String, String> = existing
            .get(ORIGINAL_IMAGES)
            .and_then(|v| serde_json::from_str(v).ok())
            .unwrap_or_default();
        for pin in &plan.pins {
            record.insert(pin.container.clone(), pin.written.clone());
        }
        let record =
            serde_json::to_string(&record).map_err(|e| NotSent::Encoding(e.to_string()))?;
        wanted.insert(ORIGINAL_IMAGES, Some(record));
    }
    let mut unpinned: Vec<String> = Vec::new();
    for u in &plan.unpinned {
        let line = format!("{}: {}", u.image, u.why.reason);
        if !unpinned.contains(&line) {
            unpinned.push(line);
        }
    }
    if !unpinned.is_empty() {
        wanted.insert(UNPINNED, Some(unpinned.join("; ")));
    } else if existing.contains_key(UNPINNED) {
        wanted.insert(UNPINNED, None);
    }
    wanted.retain(|key, value| existing.get(*key) != value.as_ref());
    if wanted.is_empty() {
        return Ok(());
    }
    let size: usize = existing
        .iter()
        .filter(|(key, _)| !wanted.contains_key(key.as_str()))
        .map(|(key, value)| key.len() + value.len())
        .chain(
            wanted
                .iter()
                .map(|(key, value)| value.as_ref().map_or(0, |v| key.len() + v.len())),
        )
        .sum();
    if size > MAX_ANNOTATIONS_BYTES {
        return Err(NotSent::Annotations(size));
    }
    if shape.annotations.is_none() {
        let map: BTreeMap<&str, String> = wanted
            .into_iter()
            .filter_map(|(key, value)| Some((key, value?)))
            .collect();
        return if shape.has_metadata {
            patch.value("add", &["/metadata/annotations"], &map)
        } else {
            patch.value(
                "add",
                &["/metadata"],
                &BTreeMap::from([("annotations", map)]),
            )
        };
    }
    for (key, value) in wanted {
        let token = Token::new(key);
        let path = ["/metadata/annotations/", token.encoded()];
        match value {
            Some(value) => patch.value("add", &path, &value)?,
            None => patch.remove(&path),
        }
    }
    Ok(())
}
