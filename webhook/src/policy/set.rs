//! The immutable snapshot of everything a decision reads.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use arc_swap::ArcSwap;

use super::{CompiledIntegration, CompiledPolicy};

/// A namespace's labels.
pub type NamespaceLabels = BTreeMap<String, String>;

/// The snapshot shared between the writer (controller or local loader) and the webhook:
/// writers build a new set and store it; each request loads one.
pub type SharedPolicySet = Arc<ArcSwap<PolicySet>>;

/// Compiled policies (by name), integrations (by name) and namespace labels.
#[derive(Debug, Clone, Default)]
pub struct PolicySet {
    policies: Vec<Arc<CompiledPolicy>>,
    integrations: Vec<Arc<CompiledIntegration>>,
    namespaces: Arc<HashMap<String, NamespaceLabels>>,
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
        }
    }

    /// The policies, by name.
    pub fn policies(&self) -> &[Arc<CompiledPolicy>] {
        &self.policies
    }

    /// The integrations, by name.
    pub fn integrations(&self) -> &[Arc<CompiledIntegration>] {
        &self.integrations
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
