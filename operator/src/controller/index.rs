//! The cluster's policies, integrations and namespaces as the watches report them,
//! compiled once per generation. One task owns it; readers get [`PolicySet`] snapshots.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use portcullis_crds::{
    ContainerPolicy, ContainerPolicySpec, RegistryIntegration, RegistryIntegrationSpec,
};
use portcullis_webhook::policy::{
    CompiledIntegration, CompiledPolicy, FieldError, NamespaceLabels, ObjectVersion, PolicySet,
    compile, compile_integration,
};

/// A compiled object, with the version it was compiled from, and — while that version
/// does not compile — the last good version, which keeps enforcing.
struct Entry<T> {
    version: ObjectVersion,
    compiled: Result<T, Vec<FieldError>>,
    last_good: Option<T>,
}

impl<T> Entry<T> {
    /// What the object enforces: its own compile, or its last good version.
    fn enforced(&self) -> Option<&T> {
        self.compiled.as_ref().ok().or(self.last_good.as_ref())
    }
}

/// One kind's objects by name, with `apply`, `delete` and `reset` (re-list).
struct Kind<T> {
    entries: BTreeMap<String, Entry<T>>,
    /// Objects of a re-list in progress, swapped in when it completes.
    relisting: Option<BTreeMap<String, Entry<T>>>,
    synced: bool,
}

impl<T: Clone> Kind<T> {
    fn new() -> Self {
        Kind {
            entries: BTreeMap::new(),
            relisting: None,
            synced: false,
        }
    }

    /// Compiles unless this version is already compiled (a re-list repeats the objects
    /// it knows: their compilation is reused; an object created again under the name
    /// has another uid). A version that does not compile keeps the object's last good
    /// version enforcing: the one this process compiled before, else `recorded` (the
    /// version the object's status says was enforced). Returns whether the visible
    /// entries changed (not just a re-list buffer).
    fn apply(
        &mut self,
        name: String,
        version: ObjectVersion,
        compile: impl FnOnce() -> Result<T, Vec<FieldError>>,
        recorded: impl FnOnce() -> Option<T>,
    ) -> bool {
        let known = self
            .relisting
            .as_ref()
            .and_then(|r| r.get(&name))
            .or_else(|| self.entries.get(&name));
        let same = version.generation.is_some() && known.is_some_and(|e| e.version == version);
        if same && self.relisting.is_none() {
            return false;
        }
        let entry = match known {
            Some(known) if same => Entry {
                version,
                compiled: known.compiled.clone(),
                last_good: known.last_good.clone(),
            },
            _ => {
                let compiled = compile();
                let last_good = match &compiled {
                    Ok(_) => None,
                    Err(_) => known
                        .filter(|k| k.version.uid == version.uid)
                        .and_then(|k| k.enforced().cloned())
                        .or_else(recorded),
                };
                Entry {
                    version,
                    compiled,
                    last_good,
                }
            }
        };
        match &mut self.relisting {
            Some(relisting) => {
                relisting.insert(name, entry);
                false
            }
            None => {
                self.entries.insert(name, entry);
                true
            }
        }
    }

    fn delete(&mut self, name: &str) -> bool {
        if let Some(relisting) = &mut self.relisting {
            relisting.remove(name);
        }
        self.entries.remove(name).is_some()
    }

    fn start_relist(&mut self) {
        self.relisting = Some(BTreeMap::new());
    }

    /// Replaces the entries with the re-listed ones: what disappeared is dropped.
    fn finish_relist(&mut self) {
        if let Some(relisted) = self.relisting.take() {
            self.entries = relisted;
        }
        self.synced = true;
    }

    /// What each object enforces (its own compile, or its last good version).
    fn valid(&self) -> impl Iterator<Item = &T> {
        self.entries.values().filter_map(Entry::enforced)
    }

    fn invalid_count(&self) -> usize {
        self.entries
            .values()
            .filter(|e| e.compiled.is_err())
            .count()
    }
}

/// Everything a snapshot is built from.
pub struct ClusterIndex {
    policies: Kind<Arc<CompiledPolicy>>,
    integrations: Kind<Arc<CompiledIntegration>>,
    namespaces: Kind<NamespaceLabels>,
    namespace_map: Arc<HashMap<String, NamespaceLabels>>,
}

/// Counts for metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    /// Valid ContainerPolicies (enforced).
    pub policies: usize,
    /// Invalid ContainerPolicies (left out).
    pub invalid_policies: usize,
    /// Valid RegistryIntegrations.
    pub integrations: usize,
    /// Invalid RegistryIntegrations.
    pub invalid_integrations: usize,
    /// Namespaces known.
    pub namespaces: usize,
}

impl Default for ClusterIndex {
    fn default() -> Self {
        ClusterIndex {
            policies: Kind::new(),
            integrations: Kind::new(),
            namespaces: Kind::new(),
            namespace_map: Arc::default(),
        }
    }
}

/// What changed, as a watch reports it.
pub enum Change {
    /// A ContainerPolicy was added or modified (also during a re-list).
    Policy(Box<ContainerPolicy>),
    /// A ContainerPolicy was deleted.
    PolicyDeleted(String),
    /// A RegistryIntegration was added or modified.
    Integration(Box<RegistryIntegration>),
    /// A RegistryIntegration was deleted.
    IntegrationDeleted(String),
    /// A Namespace was added or modified: name and labels.
    Namespace(String, NamespaceLabels),
    /// A Namespace was deleted.
    NamespaceDeleted(String),
    /// A re-list of a kind started.
    RelistStarted(WatchedKind),
    /// A re-list of a kind completed.
    RelistDone(WatchedKind),
}

/// The kinds watched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WatchedKind {
    /// ContainerPolicy.
    Policy,
    /// RegistryIntegration.
    Integration,
    /// Namespace.
    Namespace,
}

impl WatchedKind {
    /// The kind's name, for logs and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            WatchedKind::Policy => "ContainerPolicy",
            WatchedKind::Integration => "RegistryIntegration",
            WatchedKind::Namespace => "Namespace",
        }
    }
}

/// Compiles a policy spec, noting the object version it came from.
fn compile_at(
    name: &str,
    spec: &ContainerPolicySpec,
    version: ObjectVersion,
) -> Result<Arc<CompiledPolicy>, Vec<FieldError>> {
    compile(name, spec).map(|mut p| {
        p.version = version;
        Arc::new(p)
    })
}

/// Compiles an integration spec, noting the object version it came from.
fn compile_integration_at(
    name: &str,
    spec: &RegistryIntegrationSpec,
    version: ObjectVersion,
) -> Result<Arc<CompiledIntegration>, Vec<FieldError>> {
    compile_integration(name, spec).map(|mut i| {
        i.version = version;
        Arc::new(i)
    })
}

impl ClusterIndex {
    /// Applies one change; returns whether a snapshot built now would differ.
    pub fn apply(&mut self, change: Change) -> bool {
        match change {
            Change::Policy(p) => {
                let name = p.metadata.name.clone().unwrap_or_default();
                let version = ObjectVersion::of(&p.metadata);
                let status = p.status.as_ref();
                self.policies.apply(
                    name.clone(),
                    version.clone(),
                    || compile_at(&name, &p.spec, version),
                    || {
                        let status = status?;
                        let recorded = ObjectVersion::at(&p.metadata, status.enforced_generation);
                        compile_at(&name, status.enforced_spec.as_ref()?, recorded).ok()
                    },
                )
            }
            Change::PolicyDeleted(name) => self.policies.delete(&name),
            Change::Integration(i) => {
                let name = i.metadata.name.clone().unwrap_or_default();
                let version = ObjectVersion::of(&i.metadata);
                let status = i.status.as_ref();
                self.integrations.apply(
                    name.clone(),
                    version.clone(),
                    || compile_integration_at(&name, &i.spec, version),
                    || {
                        let status = status?;
                        let spec = status.enforced_spec.as_ref()?;
                        let recorded = ObjectVersion::at(&i.metadata, status.enforced_generation);
                        compile_integration_at(&name, spec, recorded).ok()
                    },
                )
            }
            Change::IntegrationDeleted(name) => self.integrations.delete(&name),
            Change::Namespace(name, labels) => {
                // Labels change without a generation bump: always take them.
                let changed =
                    self.namespaces
                        .apply(name, ObjectVersion::default(), || Ok(labels), || None);
                self.refresh_namespaces(changed)
            }
            Change::NamespaceDeleted(name) => {
                let changed = self.namespaces.delete(&name);
                self.refresh_namespaces(changed)
            }
            Change::RelistStarted(kind) => {
                match kind {
                    WatchedKind::Policy => self.policies.start_relist(),
                    WatchedKind::Integration => self.integrations.start_relist(),
                    WatchedKind::Namespace => self.namespaces.start_relist(),
                }
                false
            }
            Change::RelistDone(kind) => {
                match kind {
                    WatchedKind::Policy => self.policies.finish_relist(),
                    WatchedKind::Integration => self.integrations.finish_relist(),
                    WatchedKind::Namespace => {
                        self.namespaces.finish_relist();
                        self.refresh_namespaces(true);
                    }
                }
                true
            }
        }
    }

    fn refresh_namespaces(&mut self, changed: bool) -> bool {
        if changed {
            let map = self
                .namespaces
                .entries
                .iter()
                .filter_map(|(n, e)| Some((n.clone(), e.compiled.as_ref().ok()?.clone())));
            self.namespace_map = Arc::new(map.collect());
        }
        changed
    }

    /// Whether every kind has completed its first list: only then is the set real.
    pub fn synced(&self) -> bool {
        self.policies.synced && self.integrations.synced && self.namespaces.synced
    }

    /// A snapshot of the valid policies and integrations.
    pub fn snapshot(&self) -> PolicySet {
        PolicySet::new(
            self.policies.valid().cloned(),
            self.integrations.valid().cloned(),
            self.namespace_map.clone(),
        )
    }

    /// How many objects are enforced and invalid (an invalid object may still enforce
    /// its last good version).
    pub fn counts(&self) -> Counts {
        Counts {
            policies: self.policies.valid().count(),
            invalid_policies: self.policies.invalid_count(),
            integrations: self.integrations.valid().count(),
            invalid_integrations: self.integrations.invalid_count(),
            namespaces: self.namespace_map.len(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(name: &str, generation: i64, spec: serde_json::Value) -> Box<ContainerPolicy> {
        let mut p = ContainerPolicy::new(name, serde_json::from_value(spec).unwrap());
        p.metadata.generation = Some(generation);
        Box::new(p)
    }

    fn names(index: &ClusterIndex) -> Vec<String> {
        index
            .snapshot()
            .policies()
            .iter()
            .map(|p| p.name.to_string())
            .collect()
    }

    #[test]
    fn apply_delete_and_relist() {
        let mut index = ClusterIndex::default();
        index.apply(Change::RelistStarted(WatchedKind::Policy));
        index.apply(Change::Policy(policy("a", 1, serde_json::json!({}))));
        index.apply(Change::Policy(policy("b", 1, serde_json::json!({}))));
        assert!(
            names(&index).is_empty(),
            "a re-list is swapped in only when complete"
        );
        index.apply(Change::RelistDone(WatchedKind::Policy));
        assert_eq!(names(&index), ["a", "b"]);
        assert!(
            !index.synced(),
            "integrations and namespaces not listed yet"
        );
        index.apply(Change::RelistDone(WatchedKind::Integration));
        index.apply(Change::RelistDone(WatchedKind::Namespace));
        assert!(index.synced());

        // An invalid edit keeps the last good generation enforcing; a fix replaces it.
        index.apply(Change::Policy(policy(
            "b",
            2,
            serde_json::json!({"rules": {"vulnerabilities": {"maxCount": {"critical": -1}}}}),
        )));
        assert_eq!(names(&index), ["a", "b"]);
        assert_eq!(generation(&index, "b"), Some(1));
        assert_eq!(index.counts().invalid_policies, 1);
        index.apply(Change::Policy(policy("b", 3, serde_json::json!({}))));
        assert_eq!(names(&index), ["a", "b"]);
        assert_eq!(generation(&index, "b"), Some(3));
        // A new object that never compiled enforces nothing.
        index.apply(Change::Policy(policy(
            "new",
            1,
            serde_json::json!({"rules": {"workload": {"forbiddenCapabilities": ["NET_RAWR"]}}}),
        )));
        assert_eq!(names(&index), ["a", "b"]);

        index.apply(Change::PolicyDeleted("a".into()));
        assert_eq!(names(&index), ["b"]);

        // A re-list after a broken watch drops what disappeared meanwhile.
        index.apply(Change::RelistStarted(WatchedKind::Policy));
        index.apply(Change::Policy(policy("c", 1, serde_json::json!({}))));
        assert_eq!(
            names(&index),
            ["b"],
            "the last snapshot keeps enforcing during a re-list"
        );
        index.apply(Change::RelistDone(WatchedKind::Policy));
        assert_eq!(names(&index), ["c"]);
    }

    /// Deleted and created again while no watch saw it (an outage, an expired watch): the
    /// re-list brings an object of the same name and generation, but another uid.
    #[test]
    fn an_object_created_again_under_its_name_is_compiled_again() {
        let mut index = ClusterIndex::default();
        for kind in [WatchedKind::Integration, WatchedKind::Namespace] {
            index.apply(Change::RelistDone(kind));
        }
        let with_uid = |uid: &str, spec| {
            let mut p = policy("p", 1, spec);
            p.metadata.uid = Some(uid.into());
            Change::Policy(p)
        };
        index.apply(with_uid("first", serde_json::json!({"action": "Warn"})));
        index.apply(Change::RelistDone(WatchedKind::Policy));
        let action = |index: &ClusterIndex| index.snapshot().policy("p").map(|p| p.action);
        assert_eq!(action(&index), Some(portcullis_crds::Action::Warn));

        index.apply(Change::RelistStarted(WatchedKind::Policy));
        index.apply(with_uid("second", serde_json::json!({"action": "Block"})));
        index.apply(Change::RelistDone(WatchedKind::Policy));
        assert_eq!(
            action(&index),
            Some(portcullis_crds::Action::Block),
            "the new object's spec, not the compilation of the one deleted"
        );

        // Created again with a spec that does not compile: the deleted object's version
        // is not its last good one.
        index.apply(Change::RelistStarted(WatchedKind::Policy));
        index.apply(with_uid(
            "third",
            serde_json::json!({"rules": {"workload": {"forbiddenCapabilities": ["NET_RAWR"]}}}),
        ));
        index.apply(Change::RelistDone(WatchedKind::Policy));
        assert_eq!(action(&index), None, "it never compiled: nothing enforces");
    }

    fn generation(index: &ClusterIndex, name: &str) -> Option<i64> {
        index.snapshot().policy(name)?.version.generation
    }

    /// After a restart the process has seen no good version: the one the status
    /// recorded as enforced keeps enforcing.
    #[test]
    fn an_invalid_object_enforces_the_version_its_status_recorded() {
        let mut index = ClusterIndex::default();
        let mut p = policy(
            "p",
            4,
            serde_json::json!({"rules": {"workload": {"forbiddenCapabilities": ["NET_RAWR"]}}}),
        );
        p.status = Some(portcullis_crds::ContainerPolicyStatus {
            enforced_generation: Some(3),
            enforced_spec: Some(
                serde_json::from_value(
                    serde_json::json!({"rules": {"tags": {"denyLatest": true}}}),
                )
                .unwrap(),
            ),
            ..Default::default()
        });
        index.apply(Change::Policy(p));
        assert_eq!(names(&index), ["p"]);
        assert_eq!(generation(&index, "p"), Some(3));
        assert_eq!(index.counts().invalid_policies, 1);
    }

    #[test]
    fn namespaces_feed_the_snapshot() {
        let mut index = ClusterIndex::default();
        index.apply(Change::Namespace(
            "shop".into(),
            NamespaceLabels::from([("env".into(), "prod".into())]),
        ));
        assert_eq!(index.snapshot().namespace_labels("shop")["env"], "prod");
        index.apply(Change::Namespace(
            "shop".into(),
            NamespaceLabels::from([("env".into(), "dev".into())]),
        ));
        assert_eq!(index.snapshot().namespace_labels("shop")["env"], "dev");
        index.apply(Change::NamespaceDeleted("shop".into()));
        assert!(
            !index
                .snapshot()
                .namespace_labels("shop")
                .contains_key("env")
        );
    }
}
