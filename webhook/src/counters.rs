//! Counters kept per name (an integration, a policy), found on the request path without
//! building a label set: allocating the labels cost more than the count.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use prometheus_client::metrics::counter::Counter;

/// `N` counters of one metric family for each name, created on first use; cheap to
/// clone (shared).
#[derive(Clone)]
pub(crate) struct CountersByName<const N: usize>(Arc<RwLock<HashMap<String, [Counter; N]>>>);

impl<const N: usize> Default for CountersByName<N> {
    fn default() -> Self {
        CountersByName(Arc::default())
    }
}

impl<const N: usize> CountersByName<N> {
    /// Counts one at `index` of `name`'s counters; `create` makes them (from the family,
    /// so they are the ones exported) when `name` is new.
    pub fn inc(&self, name: &str, index: usize, create: impl FnOnce() -> [Counter; N]) {
        {
            let counters = self.0.read().unwrap_or_else(|e| e.into_inner());
            if let Some(counters) = counters.get(name) {
                counters[index].inc();
                return;
            }
        }
        let mut counters = self.0.write().unwrap_or_else(|e| e.into_inner());
        counters.entry(name.to_owned()).or_insert_with(create)[index].inc();
    }
}
