//! What the request path may read from the cluster. It never waits on the API server
//! except for these, each bounded by the implementation's deadline: a namespace the
//! watch has not delivered yet (its labels decide `namespaceSelector` policies), and the
//! Pod that a pre-1.22 `pods/ephemeralcontainers` request adds containers to (that
//! request carries only the new containers, not the Pod they will run in).

use futures::future::BoxFuture;

use crate::policy::NamespaceLabels;

/// Bounded reads from the cluster; an error says why the read failed.
pub trait ClusterReads: Send + Sync {
    /// A namespace's labels; `Ok(None)` when it does not exist.
    fn namespace_labels<'a>(
        &'a self,
        name: &'a str,
    ) -> BoxFuture<'a, Result<Option<NamespaceLabels>, String>>;

    /// A Pod, as JSON; `Ok(None)` when it does not exist.
    fn pod<'a>(
        &'a self,
        namespace: &'a str,
        name: &'a str,
    ) -> BoxFuture<'a, Result<Option<String>, String>>;
}
