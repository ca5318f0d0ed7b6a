//! The immutable snapshot of everything a decision reads.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use arc_swap::ArcSwap;

use super::{CompiledIntegration, CompiledPolicy};

/// A namespace's labels.
pub type NamespaceLabels = BTreeMap<String, String>;

/// What the request path knows of a namespace's labels.
#[derive(Debug, Clone, Copy)]
pub enum NamespaceView<'a> {
    /// What the snapshot holds: the watched namespace, or — for one not seen — only the
    /// `kubernetes.io/metadata.name` label every namespace has.
    Snapshot,
    /// Read from the API server for this request (the watch had not delivered it).
    LookedUp(&'a NamespaceLabels),
    /// Could not be read: policies that select namespaces by label and block count as
    /// matching (fail closed); the others do not.
    Unknown,
}

/// A policy that applies to a request, and whether that is assumed (its
/// namespaceSelector could not be evaluated: [`NamespaceView::Unknown`]).
pub type Matching<'s> = (&'s CompiledPolicy, bool);

/// The snapshot shared between the writer (controller or local loader) and the webhook:
/// writers build a new set and store it; each request loads one.
pub type SharedPolicySet = Arc<ArcSwap<PolicySet>>;

/// Compiled policies (by name), integrations (by name) and namespace labels.
#[derive(Debug, Clone, Default)]
pub struct PolicySet {
    policies: Vec<Arc<CompiledPolicy>>,
    integrations: Vec<Arc<CompiledIntegration>>,
    namespaces: Arc<HashMap<String, NamespaceLabels>>,
    by_namespace: NamespaceIndex,
}

/// Namespaces most remembered by [`NamespaceIndex`].
const INDEXED_NAMESPACES: usize = 4096;

/// Which policies' namespace filters (`namespaces`, `excludeNamespaces`,
/// `namespaceSelector`) let a namespace in, worked out on first use per snapshot: with
/// many team-scoped policies, a request then visits only its namespace's.
struct NamespaceIndex(quick_cache::sync::Cache<String, Arc<[u32]>>);

impl Default for NamespaceIndex {
    fn default() -> Self {
        NamespaceIndex(quick_cache::sync::Cache::new(INDEXED_NAMESPACES))
    }
}

/// A copy of a set starts with an empty index (it is only a cache).
impl Clone for NamespaceIndex {
    fn clone(&self) -> Self {
        NamespaceIndex::default()
    }
}

impl std::fmt::Debug for NamespaceIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "NamespaceIndex({} namespaces)", self.0.len())
    }
}

impl PolicySet {
    /// Builds a set; policies and integrations are kept sorted by name, which fixes the
    /// order of evaluation and of messages, and which integration covers an image first.
    /// Compiled objects are shared (`Arc`), so a new snapshot copies no policy.
    pub fn new(
        policies: impl IntoIterator<Item = impl Into<Arc<CompiledPolicy>>>,
        integrations: impl IntoIterator<Item = impl Into<Arc<CompiledIntegration>>>,
        namespaces: Arc<HashMap<String, NamespaceLabels>>,
    ) -> Self {
        let mut policies: Vec<Arc<CompiledPolicy>> = policies.into_iter().map(Into::into).collect();
        let mut integrations: Vec<Arc<CompiledIntegration>> =
            integrations.into_iter().map(Into::into).collect();
        policies.sort_by(|a, b| a.name.cmp(&b.name));
        integrations.sort_by(|a, b| a.name.cmp(&b.name));
        PolicySet {
            policies,
            integrations,
            namespaces,
            by_namespace: NamespaceIndex::default(),
        }
    }

    /// The policies whose namespace filters admit `namespace`, by name.
    pub fn policies_in(&self, namespace: &str) -> impl Iterator<Item = &CompiledPolicy> {
        let indices = match self.by_namespace.0.get(namespace) {
            Some(indices) => indices,
            None => {
                let labels = self.namespace_labels(namespace);
                let indices: Arc<[u32]> = (0u32..)
                    .zip(&self.policies)
                    .filter(|(_, p)| p.admits_namespace(namespace, &labels))
                    .map(|(i, _)| i)
                    .collect();
                self.by_namespace
                    .0
                    .insert(namespace.to_owned(), indices.clone());
                indices
            }
        };
        (0..indices.len()).filter_map(move |k| {
            let index = *indices.get(k)? as usize;
            self.policies.get(index).map(AsRef::as_ref)
        })
    }

    /// The policies whose namespace filters admit `namespace` as `view` knows it, by
    /// name.
    pub fn matching<'s>(
        &'s self,
        namespace: &'s str,
        view: NamespaceView<'s>,
    ) -> Box<dyn Iterator<Item = Matching<'s>> + 's> {
        match view {
            NamespaceView::Snapshot => Box::new(self.policies_in(namespace).map(|p| (p, false))),
            NamespaceView::LookedUp(labels) => Box::new(
                self.policies
                    .iter()
                    .filter(move |p| p.admits_namespace(namespace, labels))
                    .map(|p| (p.as_ref(), false)),
            ),
            NamespaceView::Unknown => Box::new(self.policies.iter().filter_map(move |p| {
                if !p.admits_namespace_name(namespace) {
                    None
                } else if !p.has_namespace_selector() {
                    Some((p.as_ref(), false))
                } else {
                    (p.action == portcullis_crds::Action::Block).then_some((p.as_ref(), true))
                }
            })),
        }
    }

    /// Whether the snapshot holds `namespace` (the watch delivered it).
    pub fn knows_namespace(&self, namespace: &str) -> bool {
        self.namespaces.contains_key(namespace)
    }

    /// Whether any policy selects namespaces by label (only then are a namespace's
    /// labels worth reading).
    pub fn selects_by_namespace_labels(&self) -> bool {
        self.policies.iter().any(|p| p.has_namespace_selector())
    }

    /// The policies, by name.
    pub fn policies(&self) -> &[Arc<CompiledPolicy>] {
        &self.policies
    }

    /// The integrations, by name.
    pub fn integrations(&self) -> &[Arc<CompiledIntegration>] {
        &self.integrations
    }

    /// The policy enforced under `name`, if any.
    pub fn policy(&self, name: &str) -> Option<&Arc<CompiledPolicy>> {
        let i = self
            .policies
            .binary_search_by(|p| (*p.name).cmp(name))
            .ok()?;
        self.policies.get(i)
    }

    /// The integration enforced under `name`, if any.
    pub fn integration(&self, name: &str) -> Option<&Arc<CompiledIntegration>> {
        let i = self
            .integrations
            .binary_search_by(|p| (*p.name).cmp(name))
            .ok()?;
        self.integrations.get(i)
    }

    /// The first integration (by name) whose registries cover `repository`.
    pub fn integration_for(&self, repository: &str) -> Option<&Arc<CompiledIntegration>> {
        self.integrations
            .iter()
            .find(|i| crate::glob::any_match(&i.registries, repository))
    }

    /// A namespace's labels. A namespace not seen yet has only the label the API server
    /// sets on every namespace, `kubernetes.io/metadata.name`.
    pub fn namespace_labels(&self, namespace: &str) -> Cow<'_, NamespaceLabels> {
        match self.namespaces.get(namespace) {
            Some(labels) => Cow::Borrowed(labels),
            None => Cow::Owned(BTreeMap::from([(
                "kubernetes.io/metadata.name".to_owned(),
                namespace.to_owned(),
            )])),
        }
    }
}
