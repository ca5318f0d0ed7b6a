//! The request path's bounded reads from the API server
//! ([`portcullis_webhook::cluster::ClusterReads`]): a namespace the watch has not
//! delivered yet, and the Pod a pre-1.22 ephemeral-containers request joins. Each read
//! has a short deadline; namespace answers are cached briefly (the watch takes over).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::FutureExt;
use futures::future::BoxFuture;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::{Api, Client, ResourceExt};
use portcullis_webhook::cluster::ClusterReads;
use portcullis_webhook::policy::NamespaceLabels;

use crate::metrics::Metrics;

/// The most one read waits for the API server.
const DEADLINE: Duration = Duration::from_secs(1);
/// How long a namespace read is reused (the watch delivers it meanwhile).
const FOUND_TTL: Duration = Duration::from_secs(30);
/// How long a failed read is reused, so an unreachable API server is not waited on for
/// every request.
const FAILED_TTL: Duration = Duration::from_secs(5);
/// Most namespaces remembered.
const MAX_CACHED: usize = 1024;

type Answer = Result<Option<NamespaceLabels>, String>;

/// Reads through the API server with `client`.
pub struct ApiReads {
    client: Client,
    metrics: Arc<Metrics>,
    namespaces: Mutex<HashMap<String, (Instant, Answer)>>,
}

impl ApiReads {
    /// Reads with `client`, counted in `metrics`.
    pub fn new(client: Client, metrics: Arc<Metrics>) -> Self {
        ApiReads {
            client,
            metrics,
            namespaces: Mutex::default(),
        }
    }

    fn cached(&self, name: &str) -> Option<Answer> {
        let cache = self.namespaces.lock().unwrap_or_else(|e| e.into_inner());
        let (at, answer) = cache.get(name)?;
        let ttl = if answer.is_ok() {
            FOUND_TTL
        } else {
            FAILED_TTL
        };
        (at.elapsed() < ttl).then(|| answer.clone())
    }

    fn remember(&self, name: &str, answer: &Answer) {
        let mut cache = self.namespaces.lock().unwrap_or_else(|e| e.into_inner());
        if cache.len() >= MAX_CACHED {
            cache.retain(|_, (at, _)| at.elapsed() < FOUND_TTL);
            if cache.len() >= MAX_CACHED {
                cache.clear();
            }
        }
        cache.insert(name.to_owned(), (Instant::now(), answer.clone()));
    }

    async fn read_namespace(&self, name: &str) -> Answer {
        if let Some(answer) = self.cached(name) {
            self.metrics.namespace_lookup("cached");
            return answer;
        }
        let api = Api::<Namespace>::all(self.client.clone());
        let answer = match tokio::time::timeout(DEADLINE, api.get_opt(name)).await {
            Ok(Ok(found)) => Ok(found.map(|ns| ns.labels().clone())),
            Ok(Err(error)) => Err(format!("reading namespace {name}: {error}")),
            Err(_) => Err(format!(
                "reading namespace {name}: no answer within {DEADLINE:?}"
            )),
        };
        self.metrics.namespace_lookup(match &answer {
            Ok(Some(_)) => "found",
            Ok(None) => "missing",
            Err(_) => "failed",
        });
        self.remember(name, &answer);
        answer
    }

    async fn read_pod(&self, namespace: &str, name: &str) -> Result<Option<String>, String> {
        let api = Api::<Pod>::namespaced(self.client.clone(), namespace);
        match tokio::time::timeout(DEADLINE, api.get_opt(name)).await {
            Ok(Ok(pod)) => pod
                .map(|pod| serde_json::to_string(&pod).map_err(|e| e.to_string()))
                .transpose(),
            Ok(Err(error)) => Err(format!("reading Pod {namespace}/{name}: {error}")),
            Err(_) => Err(format!(
                "reading Pod {namespace}/{name}: no answer within {DEADLINE:?}"
            )),
        }
    }
}

impl ClusterReads for ApiReads {
    fn namespace_labels<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Answer> {
        self.read_namespace(name).boxed()
    }

    fn pod<'a>(
        &'a self,
        namespace: &'a str,
        name: &'a str,
    ) -> BoxFuture<'a, Result<Option<String>, String>> {
        self.read_pod(namespace, name).boxed()
    }
}
