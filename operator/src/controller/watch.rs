//! The one writer: watches ContainerPolicies, RegistryIntegrations and Namespaces into
//! the index and swaps a new snapshot in after every change.

use std::sync::Arc;
use std::time::Instant;

use futures::{FutureExt, Stream, StreamExt};
use k8s_openapi::api::core::v1::Namespace;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client, Resource, ResourceExt};
use portcullis_crds::{ContainerPolicy, RegistryIntegration};
use portcullis_webhook::policy::SharedPolicySet;
use portcullis_webhook::server::Readiness;
use serde::de::DeserializeOwned;

use super::index::{Change, ClusterIndex, WatchedKind};
use crate::metrics::Metrics;

/// Most events applied before a snapshot is published (a burst becomes one swap).
const MAX_BATCH: usize = 512;

type Item = (WatchedKind, Result<Change, watcher::Error>);

fn watch<K>(
    api: Api<K>,
    kind: WatchedKind,
    apply: fn(K) -> Change,
    delete: fn(K) -> Change,
) -> impl Stream<Item = Item> + Send
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug + Send + 'static,
{
    watcher::watcher(api, watcher::Config::default())
        .default_backoff()
        .map(move |event| {
            let change = event.map(|event| match event {
                Event::Apply(o) | Event::InitApply(o) => apply(o),
                Event::Delete(o) => delete(o),
                Event::Init => Change::RelistStarted(kind),
                Event::InitDone => Change::RelistDone(kind),
            });
            (kind, change)
        })
}

/// Watches until the streams end (they retry with backoff on errors, so only when the
/// process stops). The set is published, and `ready` set, once every kind has synced;
/// while a watch is broken the last snapshot keeps enforcing.
pub async fn run(client: Client, shared: SharedPolicySet, ready: Readiness, metrics: Arc<Metrics>) {
    let streams = futures::stream::select_all([
        watch(
            Api::<ContainerPolicy>::all(client.clone()),
            WatchedKind::Policy,
            |p| Change::Policy(Box::new(p)),
            |p| Change::PolicyDeleted(p.name_any()),
        )
        .boxed(),
        watch(
            Api::<RegistryIntegration>::all(client.clone()),
            WatchedKind::Integration,
            |i| Change::Integration(Box::new(i)),
            |i| Change::IntegrationDeleted(i.name_any()),
        )
        .boxed(),
        watch(
            Api::<Namespace>::all(client),
            WatchedKind::Namespace,
            |n| Change::Namespace(n.name_any(), n.labels().clone()),
            |n| Change::NamespaceDeleted(n.name_any()),
        )
        .boxed(),
    ]);
    let mut streams = std::pin::pin!(streams);
    let mut index = ClusterIndex::default();
    let mut generation = 0u64;
    while let Some(first) = streams.next().await {
        let received = Instant::now();
        let mut changed = apply(&mut index, first, &metrics);
        for _ in 1..MAX_BATCH {
            match streams.next().now_or_never() {
                Some(Some(item)) => changed |= apply(&mut index, item, &metrics),
                _ => break,
            }
        }
        if !changed || !index.synced() {
            continue;
        }
        shared.store(Arc::new(index.snapshot()));
        generation += 1;
        metrics.published(generation, index.counts(), received.elapsed());
        if !ready.policies_synced() {
            let counts = index.counts();
            tracing::info!(
                policies = counts.policies,
                invalid = counts.invalid_policies,
                "all watches synced: enforcing the cluster's policies"
            );
        }
    }
}

fn apply(index: &mut ClusterIndex, (kind, item): Item, metrics: &Metrics) -> bool {
    match item {
        Ok(change) => index.apply(change),
        Err(error) => {
            metrics.watch_error(kind.as_str());
            tracing::warn!(kind = kind.as_str(), %error, "watch failed; retrying with backoff, the last snapshot keeps enforcing");
            false
        }
    }
}
