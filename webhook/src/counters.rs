//! Counters kept per key (an integration, a policy, a request's labels), found on the
//! request path without building a label set: allocating the labels cost more than the
//! count.

use std::borrow::Borrow;
use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, RwLock};

use prometheus_client::metrics::counter::Counter;

/// `N` counters of one metric family for each key, created on first use; cheap to
/// clone (shared). Keys are names from policies and integrations, and labels from
/// fixed sets, so a fast hash serves.
pub(crate) struct CountersBy<K, const N: usize>(
    Arc<RwLock<HashMap<K, [Counter; N], foldhash::fast::RandomState>>>,
);

/// Counters by a name.
pub(crate) type CountersByName<const N: usize> = CountersBy<String, N>;

impl<K, const N: usize> Clone for CountersBy<K, N> {
    fn clone(&self) -> Self {
        CountersBy(self.0.clone())
    }
}

impl<K, const N: usize> Default for CountersBy<K, N> {
    fn default() -> Self {
        CountersBy(Arc::default())
    }
}

impl<K: Hash + Eq, const N: usize> CountersBy<K, N> {
    /// Counts one at `index` of `key`'s counters; `create` makes them (from the family,
    /// so they are the ones exported) when `key` is new.
    pub fn inc<Q>(&self, key: &Q, index: usize, create: impl FnOnce() -> [Counter; N])
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ToOwned<Owned = K> + ?Sized,
    {
        {
            let counters = self.0.read().unwrap_or_else(|e| e.into_inner());
            if let Some(counters) = counters.get(key) {
                counters[index].inc();
                return;
            }
        }
        let mut counters = self.0.write().unwrap_or_else(|e| e.into_inner());
        counters.entry(key.to_owned()).or_insert_with(create)[index].inc();
    }
}
