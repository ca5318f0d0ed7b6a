//! The cluster's policies, integrations and namespaces as the watches report them,
//! compiled once per generation. One task owns it; readers get [`PolicySet`] snapshots.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use portcullis_crds::{ContainerPolicy, RegistryIntegration};
use portcullis_webhook::policy::{
    CompiledIntegration, CompiledPolicy, FieldError, NamespaceLabels, PolicySet, compile,
    compile_integration,
};

/// A compiled object, with the generation it was compiled from.
struct Entry<T> {
    generation: Option<i64>,
    compiled: Result<T, Vec<FieldError>>,
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

    /// Compiles unless this generation is already compiled (a re-list repeats the
    /// objects it knows: their compilation is reused).
    /// Returns whether the visible entries changed (not just a re-list buffer).
    fn apply(
        &mut self,
        name: String,
        generation: Option<i64>,
        compile: impl FnOnce() -> Result<T, Vec<FieldError>>,
    ) -> bool {
        let known = self
            .relisting
            .as_ref()
            .and_then(|r| r.get(&name))
            .or_else(|| self.entries.get(&name));
        let same = generation.is_some() && known.is_some_and(|e| e.generation == generation);
        if same && self.relisting.is_none() {
            return false;
        }
        let compiled = match known {
            Some(known) if same => known.compiled.clone(),
            _ => compile(),
        };
        match &mut self.relisting {
            Some(relisting) => {
                relisting.insert(
                    name,
                    Entry {
                        generation,
                        compiled,
                    },
                );
                false
            }
            None => {
                self.entries.insert(
                    name,
                    Entry {
                        generation,
                        compiled,
                    },
                );
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

    fn valid(&self) -> impl Iterator<Item = &T> {
        self.entries
            .values()
            .filter_map(|e| e.compiled.as_ref().ok())
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
    Policy(ContainerPolicy),
    /// A ContainerPolicy was deleted.
    PolicyDeleted(String),
    /// A RegistryIntegration was added or modified.
    Integration(RegistryIntegration),
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

impl ClusterIndex {
    /// Applies one change; returns whether a snapshot built now would differ.
    pub fn apply(&mut self, change: Change) -> bool {
        match change {
            Change::Policy(p) => {
                let name = p.metadata.name.clone().unwrap_or_default();
                self.policies
                    .apply(name.clone(), p.metadata.generation, || {
                        compile(&name, &p.spec).map(Arc::new)
                    })
            }
            Change::PolicyDeleted(name) => self.policies.delete(&name),
            Change::Integration(i) => {
                let name = i.metadata.name.clone().unwrap_or_default();
                self.integrations
                    .apply(name.clone(), i.metadata.generation, || {
                        compile_integration(&name, &i.spec).map(Arc::new)
                    })
            }
            Change::IntegrationDeleted(name) => self.integrations.delete(&name),
            Change::Namespace(name, labels) => {
                // Labels change without a generation bump: always take them.
                let changed = self.namespaces.apply(name, None, || Ok(labels));
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

    /// How many objects are enforced and left out.
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

    fn policy(name: &str, generation: i64, spec: serde_json::Value) -> ContainerPolicy {
        let mut p = ContainerPolicy::new(name, serde_json::from_value(spec).unwrap());
        p.metadata.generation = Some(generation);
        p
    }

    fn names(index: &ClusterIndex) -> Vec<String> {
        index
            .snapshot()
            .policies()
            .iter()
            .map(|p| p.name.clone())
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

        // An invalid spec is left out; the others keep enforcing; a fix brings it back.
        index.apply(Change::Policy(policy(
            "b",
            2,
            serde_json::json!({"rules": {"vulnerabilities": {"maxCount": {"critical": -1}}}}),
        )));
        assert_eq!(names(&index), ["a"]);
        assert_eq!(index.counts().invalid_policies, 1);
        index.apply(Change::Policy(policy("b", 3, serde_json::json!({}))));
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
