//! Reading Portcullis objects from YAML or JSON files: multi-document files, `List`
//! objects, strict about the fields of our own kinds (a typo is an error, not ignored).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use base64::Engine;
use portcullis_crds::{ContainerPolicy, RegistryIntegration};
use portcullis_webhook::policy::{PolicySet, compile, compile_integration, join_errors};
use portcullis_webhook::scan::credentials::{
    DOCKER_CONFIG_JSON_KEY, DOCKER_CONFIG_JSON_TYPE, DockerConfig,
};
use serde::de::DeserializeOwned;
use serde_json::Value;

/// A file that could not be read at all.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// The file could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The input is not valid YAML.
    #[error("{file}: invalid YAML: {message}")]
    Yaml {
        /// The file (or `-` for standard input).
        file: String,
        /// The parser's message, with line and column.
        message: String,
    },
}

/// An object found in a file.
#[derive(Debug, Clone)]
pub enum Manifest {
    /// A ContainerPolicy.
    Policy(Box<ContainerPolicy>),
    /// A RegistryIntegration.
    Integration(Box<RegistryIntegration>),
    /// A Namespace: its name and labels.
    Namespace(String, BTreeMap<String, String>),
    /// A `kubernetes.io/dockerconfigjson` Secret (local mode's registry credentials).
    Secret(String, Arc<DockerConfig>),
    /// Any other object (workloads, for `check`), as read.
    Object(Value),
}

/// One document of a file: where it is (`file#2`) and the object, or why it is unusable.
pub type Document = (String, Result<Manifest, String>);

/// Reads every document of a YAML or JSON file.
pub fn read_file(path: &Path) -> Result<Vec<Document>, ManifestError> {
    let text = std::fs::read_to_string(path).map_err(|source| ManifestError::Io {
        path: path.to_owned(),
        source,
    })?;
    read_text(&path.display().to_string(), &text)
}

/// The YAML reader's limits: serde-saphyr's defaults, which bound aliases, anchors and
/// depth (YAML bombs), except the document, node and event counts, raised so that one
/// generated file of 10,000 policies reads (the defaults stop at 1,024 documents).
fn yaml_options() -> serde_saphyr::Options {
    serde_saphyr::options! {
        budget: serde_saphyr::budget! {
            max_documents: 100_000,
            max_nodes: 10_000_000,
            max_events: 40_000_000,
        },
    }
}

/// Reads every document of YAML or JSON text; `file` names it in locations and errors.
pub fn read_text(file: &str, text: &str) -> Result<Vec<Document>, ManifestError> {
    let Documents { mut out, .. } =
        serde_saphyr::from_str_multiple_with_options::<Value, Documents>(text, yaml_options())
            .map_err(|e| ManifestError::Yaml {
                file: file.to_owned(),
                message: e.to_string(),
            })?;
    for (location, _) in &mut out {
        location.insert_str(0, file);
    }
    Ok(out)
}

/// The documents of a text, each made an object as the reader hands it over, so that
/// the parsed documents are never all held at once (ten thousand policies would leave
/// 15 MB of freed parse trees in the heap). Locations lack the file until the end.
#[derive(Default)]
struct Documents {
    read: usize,
    out: Vec<Document>,
}

impl Extend<Value> for Documents {
    fn extend<I: IntoIterator<Item = Value>>(&mut self, docs: I) {
        for doc in docs {
            self.read += 1;
            collect(format!("#{}", self.read), doc, &mut self.out);
        }
    }
}

fn collect(location: String, doc: Value, out: &mut Vec<Document>) {
    if doc.is_null() {
        return;
    }
    let kind = doc
        .get("kind")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    if kind == "List" || (kind.ends_with("List") && doc.get("items").is_some_and(Value::is_array)) {
        if let Some(Value::Array(items)) = doc.get("items") {
            for (i, item) in items.iter().enumerate() {
                collect(format!("{location}.items[{i}]"), item.clone(), out);
            }
        }
        return;
    }
    let api_version = doc
        .get("apiVersion")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let group = api_version.split_once('/').map_or("", |(group, _)| group);
    let manifest = match (group, kind.as_str()) {
        (portcullis_crds::GROUP, "ContainerPolicy") => {
            strict::<ContainerPolicy>(&doc).map(|p| Manifest::Policy(Box::new(p)))
        }
        (portcullis_crds::GROUP, "RegistryIntegration") => {
            strict::<RegistryIntegration>(&doc).map(|i| Manifest::Integration(Box::new(i)))
        }
        ("", "Namespace") => namespace(&doc),
        ("", "Secret") => secret(&doc),
        _ if api_version.is_empty() || kind.is_empty() => {
            Err("not a Kubernetes object: apiVersion or kind is missing".to_owned())
        }
        _ => Ok(Manifest::Object(doc)),
    };
    out.push((location, manifest));
}

fn namespace(doc: &Value) -> Result<Manifest, String> {
    let meta = doc.get("metadata");
    let name = meta
        .and_then(|m| m.get("name"))
        .and_then(Value::as_str)
        .ok_or("Namespace: metadata.name is required")?;
    let labels = match meta.and_then(|m| m.get("labels")) {
        None | Some(Value::Null) => BTreeMap::new(),
        Some(labels) => serde_json::from_value(labels.clone())
            .map_err(|e| format!("Namespace {name:?}: metadata.labels: {e}"))?,
    };
    Ok(Manifest::Namespace(name.to_owned(), labels))
}

/// A pull-credentials Secret: `data` (base64) or `stringData` `.dockerconfigjson`.
/// Errors never quote the Secret's contents.
fn secret(doc: &Value) -> Result<Manifest, String> {
    let name = doc
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .ok_or("Secret: metadata.name is required")?;
    let type_ = doc.get("type").and_then(Value::as_str).unwrap_or_default();
    if type_ != DOCKER_CONFIG_JSON_TYPE {
        return Err(format!(
            "Secret {name:?}: type is {type_:?}; only {DOCKER_CONFIG_JSON_TYPE} Secrets are read"
        ));
    }
    let json = match (
        doc.pointer(&format!("/stringData/{DOCKER_CONFIG_JSON_KEY}")),
        doc.pointer(&format!("/data/{DOCKER_CONFIG_JSON_KEY}")),
    ) {
        (Some(Value::String(text)), _) => text.clone().into_bytes(),
        (_, Some(Value::String(encoded))) => base64::engine::general_purpose::STANDARD
            .decode(encoded.trim())
            .map_err(|_| format!("Secret {name:?}: data.{DOCKER_CONFIG_JSON_KEY} is not base64"))?,
        _ => {
            return Err(format!(
                "Secret {name:?}: data.{DOCKER_CONFIG_JSON_KEY} (or stringData) is required"
            ));
        }
    };
    let config = DockerConfig::parse(&json).map_err(|e| format!("Secret {name:?}: {e}"))?;
    Ok(Manifest::Secret(name.to_owned(), Arc::new(config)))
}

/// Decodes one of our kinds, naming the field of any type error, and rejects fields the
/// type does not know (the API server would prune them silently).
fn strict<T: DeserializeOwned + serde::Serialize + kube::Resource>(
    doc: &Value,
) -> Result<T, String> {
    let kind = doc.get("kind").and_then(Value::as_str).unwrap_or_default();
    let name = doc
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let what = format!("{kind} {name:?}");
    if name.is_empty() {
        return Err(format!("{kind}: metadata.name is required"));
    }
    let object: T = serde_path_to_error::deserialize(doc)
        .map_err(|e| format!("{what}: {}: {}", e.path(), e.inner()))?;
    let round_trip = serde_json::to_value(&object).map_err(|e| format!("{what}: {e}"))?;
    let mut unknown = Vec::new();
    if let (Some(spec), Some(known)) = (doc.get("spec"), round_trip.get("spec")) {
        unknown_fields(spec, known, "spec", &mut unknown);
    }
    if !unknown.is_empty() {
        return Err(format!("{what}: unknown fields: {}", unknown.join(", ")));
    }
    Ok(object)
}

/// Paths of `input` that the typed round trip `known` dropped.
fn unknown_fields(input: &Value, known: &Value, path: &str, out: &mut Vec<String>) {
    match (input, known) {
        (Value::Object(input), Value::Object(known)) => {
            for (key, value) in input {
                let field = format!("{path}.{key}");
                match known.get(key) {
                    Some(known) => unknown_fields(value, known, &field, out),
                    None if !value.is_null() => out.push(field),
                    None => {}
                }
            }
        }
        (Value::Array(input), Value::Array(known)) => {
            for (i, (value, known)) in input.iter().zip(known).enumerate() {
                unknown_fields(value, known, &format!("{path}[{i}]"), out);
            }
        }
        _ => {}
    }
}

/// A compiled set and what was left out of it, and why.
pub struct Loaded {
    /// The policies, integrations and namespaces that compiled.
    pub set: PolicySet,
    /// Each object left out, with its location and field errors.
    pub problems: Vec<String>,
    /// Pull-credential Secrets by name.
    pub secrets: HashMap<String, Arc<DockerConfig>>,
}

/// Compiles the policies, integrations and namespaces among `documents` (other objects
/// are ignored): the one way local mode and `portcullis check` build a set. The first
/// definition of a name counts; later ones and invalid ones are listed as problems. An
/// object that does not compile keeps its last good version enforcing, as in a cluster:
/// the one `previous` (the set built before) enforced, else the one its status records.
pub fn build_set<'d>(
    documents: impl IntoIterator<Item = &'d Document>,
    previous: Option<&PolicySet>,
) -> Loaded {
    let mut problems = Vec::new();
    let mut policies = BTreeMap::new();
    let mut integrations = BTreeMap::new();
    let mut namespaces = HashMap::new();
    let mut secrets = HashMap::new();
    for (location, document) in documents {
        let manifest = match document {
            Ok(manifest) => manifest,
            Err(message) => {
                problems.push(format!("{location}: {message}"));
                continue;
            }
        };
        match manifest {
            Manifest::Policy(p) => {
                let name = p.metadata.name.clone().unwrap_or_default();
                let compiled = compile(&name, &p.spec).map(Arc::new);
                let last_good = || {
                    let recorded = || {
                        let status = p.status.as_ref()?;
                        compile(&name, status.enforced_spec.as_ref()?)
                            .ok()
                            .map(Arc::new)
                    };
                    previous
                        .and_then(|set| set.policy(&name).cloned())
                        .or_else(recorded)
                };
                insert_once(
                    &mut policies,
                    "ContainerPolicy",
                    name.clone(),
                    compiled,
                    last_good,
                    location,
                    &mut problems,
                );
            }
            Manifest::Integration(i) => {
                let name = i.metadata.name.clone().unwrap_or_default();
                let compiled = compile_integration(&name, &i.spec).map(Arc::new);
                let last_good = || {
                    let recorded = || {
                        let status = i.status.as_ref()?;
                        let spec = status.enforced_spec.as_ref()?;
                        compile_integration(&name, spec).ok().map(Arc::new)
                    };
                    previous
                        .and_then(|set| set.integration(&name).cloned())
                        .or_else(recorded)
                };
                insert_once(
                    &mut integrations,
                    "RegistryIntegration",
                    name.clone(),
                    compiled,
                    last_good,
                    location,
                    &mut problems,
                );
            }
            Manifest::Namespace(name, labels) => {
                drop(namespaces.insert(name.clone(), labels.clone()))
            }
            Manifest::Secret(name, config) => {
                if secrets.insert(name.clone(), config.clone()).is_some() {
                    problems.push(format!(
                        "{location}: Secret {name:?} is defined twice; the last one counts"
                    ));
                }
            }
            Manifest::Object(_) => {}
        }
    }
    let set = PolicySet::new(
        policies.into_values(),
        integrations.into_values(),
        Arc::new(namespaces),
    );
    Loaded {
        set,
        problems,
        secrets,
    }
}

/// Keeps the first definition of each name; reports duplicates and field errors. A
/// definition that does not compile enforces its `last_good` version, if any.
fn insert_once<T>(
    compiled: &mut BTreeMap<String, T>,
    kind: &str,
    name: String,
    result: Result<T, Vec<portcullis_webhook::policy::FieldError>>,
    last_good: impl FnOnce() -> Option<T>,
    location: &str,
    problems: &mut Vec<String>,
) {
    if compiled.contains_key(&name) {
        return problems.push(format!(
            "{location}: {kind} {name:?} is defined twice; the first one counts"
        ));
    }
    match result {
        Err(e) => {
            let (kept, note) = match last_good() {
                Some(value) => (Some(value), "its last good version keeps enforcing"),
                None => (None, "nothing is enforced for it"),
            };
            problems.push(format!(
                "{location}: {kind} {name:?}: {}; {note}",
                join_errors(&e)
            ));
            if let Some(value) = kept {
                compiled.insert(name, value);
            }
        }
        Ok(value) => drop(compiled.insert(name, value)),
    }
}

/// The YAML and JSON files under `root` (or `root` itself), sorted; hidden entries are
/// skipped (ConfigMap volumes keep a second copy under `..data`).
pub fn find_files(root: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    if std::fs::metadata(root)?.is_file() {
        files.push(root.to_owned());
        return Ok(files);
    }
    let mut dirs = vec![root.to_owned()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir)? {
            let path = entry?.path();
            if path
                .file_name()
                .and_then(|n| n.to_str())
                .is_none_or(|n| n.starts_with('.'))
            {
                continue;
            }
            let Ok(meta) = std::fs::metadata(&path) else {
                continue;
            };
            if meta.is_dir() {
                dirs.push(path);
            } else if path
                .extension()
                .and_then(|e| e.to_str())
                .is_some_and(|e| matches!(e, "yaml" | "yml" | "json"))
            {
                files.push(path);
            }
        }
    }
    files.sort();
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(yaml: &str) -> Vec<Document> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.yaml");
        std::fs::write(&path, yaml).unwrap();
        read_file(&path).unwrap()
    }

    #[test]
    fn reads_multi_document_files_and_lists() {
        let docs = read(
            "apiVersion: portcullis.dev/v1alpha1\nkind: ContainerPolicy\nmetadata: {name: a}\nspec: {action: Warn}\n---\n\
             apiVersion: v1\nkind: List\nitems:\n- apiVersion: v1\n  kind: Namespace\n  metadata: {name: team-a, labels: {env: prod}}\n\
             - apiVersion: apps/v1\n  kind: Deployment\n  metadata: {name: d}\n",
        );
        assert_eq!(docs.len(), 3);
        assert!(
            matches!(&docs[0].1, Ok(Manifest::Policy(p)) if p.spec.action == portcullis_crds::Action::Warn)
        );
        assert!(
            matches!(&docs[1].1, Ok(Manifest::Namespace(n, l)) if n == "team-a" && l["env"] == "prod")
        );
        assert!(matches!(&docs[2].1, Ok(Manifest::Object(o)) if o["kind"] == "Deployment"));
        assert!(docs[1].0.ends_with("p.yaml#2.items[0]"));
    }

    #[test]
    fn names_the_field_of_a_bad_or_unknown_field() {
        let docs = read(
            "apiVersion: portcullis.dev/v1alpha1\nkind: ContainerPolicy\nmetadata: {name: a}\nspec: {action: Stop}\n---\n\
             apiVersion: portcullis.dev/v1alpha1\nkind: ContainerPolicy\nmetadata: {name: b}\nspec: {rules: {tags: {denyLates: true}}}\n",
        );
        let err = |i: usize| docs[i].1.as_ref().unwrap_err().clone();
        assert!(
            err(0).starts_with("ContainerPolicy \"a\": spec.action: unknown variant `Stop`"),
            "{}",
            err(0)
        );
        assert_eq!(
            err(1),
            "ContainerPolicy \"b\": unknown fields: spec.rules.tags.denyLates"
        );
    }

    #[test]
    fn invalid_yaml_names_the_file_and_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.yaml");
        std::fs::write(&path, "kind: ContainerPolicy\nspec: [unclosed\n").unwrap();
        let message = read_file(&path).unwrap_err().to_string();
        assert!(
            message.contains("bad.yaml") && message.contains("line"),
            "{message}"
        );
    }

    #[test]
    fn reads_pull_secrets_and_names_what_is_wrong_without_their_contents() {
        let docs = read_text(
            "s.yaml",
            "apiVersion: v1\nkind: Secret\ntype: kubernetes.io/dockerconfigjson\nmetadata: {name: pull}\n\
             stringData: {.dockerconfigjson: '{\"auths\":{\"r.example\":{\"username\":\"u\",\"password\":\"hunter2\"}}}'}\n---\n\
             apiVersion: v1\nkind: Secret\ntype: kubernetes.io/dockerconfigjson\nmetadata: {name: b64}\n\
             data: {.dockerconfigjson: eyJhdXRocyI6e319}\n---\n\
             apiVersion: v1\nkind: Secret\ntype: Opaque\nmetadata: {name: other}\ndata: {password: aHVudGVyMg==}\n---\n\
             apiVersion: v1\nkind: Secret\ntype: kubernetes.io/dockerconfigjson\nmetadata: {name: broken}\n\
             stringData: {.dockerconfigjson: 'hunter2'}\n",
        )
        .unwrap();
        let loaded = build_set(&docs, None);
        assert_eq!(
            loaded.secrets["pull"]
                .login_for("r.example")
                .unwrap()
                .username,
            "u"
        );
        assert!(loaded.secrets.contains_key("b64"));
        assert_eq!(loaded.problems.len(), 2, "{:?}", loaded.problems);
        assert!(loaded.problems[0].contains("Secret \"other\": type is \"Opaque\""));
        assert!(loaded.problems[1].contains("Secret \"broken\""));
        assert!(loaded.problems.iter().all(|p| !p.contains("hunter2")));
    }
}
