//! Inputs of the scan service that live in the cluster: pull-credential Secrets in
//! Portcullis's namespace, and trivy-operator's VulnerabilityReports (watched only once
//! an integration uses them). Both are indexed in memory; the request path never asks
//! the API server.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{ApiResource, DynamicObject, GroupVersionKind};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client, ResourceExt};
use portcullis_webhook::policy::{ScannerKind, SharedPolicySet};
use portcullis_webhook::scan::ScanService;
use portcullis_webhook::scan::backend::trivy_operator::{self, DigestReport, parse_report};
use portcullis_webhook::scan::credentials::{
    DOCKER_CONFIG_JSON_KEY, DOCKER_CONFIG_JSON_TYPE, DockerConfig,
};

use crate::metrics::Metrics;

/// How often the policy set is checked for a trivyOperator integration.
const TRIVY_OPERATOR_CHECK: Duration = Duration::from_secs(1);

/// Watches the `kubernetes.io/dockerconfigjson` Secrets of `namespace` into the
/// credential store, so rotation applies without a restart.
pub async fn credentials(
    client: Client,
    namespace: String,
    scans: Arc<ScanService>,
    metrics: Arc<Metrics>,
) {
    let api = Api::<Secret>::namespaced(client, &namespace);
    let config = watcher::Config::default().fields(&format!("type={DOCKER_CONFIG_JSON_TYPE}"));
    let store = scans.credentials();
    let mut relisted: Option<HashMap<String, Arc<DockerConfig>>> = None;
    let mut events = std::pin::pin!(watcher::watcher(api, config).default_backoff());
    while let Some(event) = events.next().await {
        match event {
            Ok(Event::Init) => relisted = Some(HashMap::new()),
            Ok(Event::InitApply(secret)) => {
                if let (Some(all), Some(config)) = (relisted.as_mut(), docker_config(&secret)) {
                    all.insert(secret.name_any(), Arc::new(config));
                }
            }
            Ok(Event::InitDone) => {
                let all = relisted.take().unwrap_or_default();
                tracing::info!(secrets = all.len(), %namespace, "pull-credential Secrets synced");
                store.replace(all);
            }
            Ok(Event::Apply(secret)) => store.set(&secret.name_any(), docker_config(&secret)),
            Ok(Event::Delete(secret)) => store.set(&secret.name_any(), None),
            Err(error) => {
                metrics.watch_error("Secret");
                tracing::warn!(%error, "Secret watch failed; retrying with backoff, the last credentials stay in use");
            }
        }
    }
}

/// The parsed `.dockerconfigjson` of a Secret, or `None` (logged without its contents).
fn docker_config(secret: &Secret) -> Option<DockerConfig> {
    if secret.type_.as_deref() != Some(DOCKER_CONFIG_JSON_TYPE) {
        return None;
    }
    let data = secret.data.as_ref()?.get(DOCKER_CONFIG_JSON_KEY);
    let Some(data) = data else {
        tracing::warn!(secret = %secret.name_any(), "Secret has no {DOCKER_CONFIG_JSON_KEY} key");
        return None;
    };
    match DockerConfig::parse(&data.0) {
        Ok(config) => Some(config),
        Err(error) => {
            tracing::warn!(secret = %secret.name_any(), %error, "Secret is not usable for registry credentials");
            None
        }
    }
}

/// Whether an integration reads trivy-operator's VulnerabilityReports.
pub fn uses_reports(policies: &SharedPolicySet) -> bool {
    policies
        .load()
        .integrations()
        .iter()
        .any(|i| i.scanner == ScannerKind::TrivyOperator)
}

/// Once an integration uses `trivyOperator`, watches VulnerabilityReports in every
/// namespace into the scan service's report index.
pub async fn vulnerability_reports(
    client: Client,
    policies: SharedPolicySet,
    scans: Arc<ScanService>,
    metrics: Arc<Metrics>,
) {
    while !uses_reports(&policies) {
        tokio::time::sleep(TRIVY_OPERATOR_CHECK).await;
    }
    let gvk = GroupVersionKind::gvk(
        trivy_operator::GROUP,
        trivy_operator::VERSION,
        trivy_operator::KIND,
    );
    let resource = ApiResource::from_gvk_with_plural(&gvk, trivy_operator::PLURAL);
    let api = Api::<DynamicObject>::all_with(client, &resource);
    let index = scans.reports();
    let mut relisted: Option<Vec<(String, DigestReport)>> = None;
    let mut events =
        std::pin::pin!(watcher::watcher(api, watcher::Config::default()).default_backoff());
    tracing::info!("watching trivy-operator VulnerabilityReports");
    while let Some(event) = events.next().await {
        match event {
            Ok(Event::Init) => relisted = Some(Vec::new()),
            Ok(Event::InitApply(object)) => {
                if let (Some(all), Some(report)) = (relisted.as_mut(), report(&object)) {
                    all.push((key(&object), report));
                }
            }
            Ok(Event::InitDone) => {
                let all = relisted.take().unwrap_or_default();
                tracing::info!(reports = all.len(), "VulnerabilityReports synced");
                index.replace(all);
            }
            Ok(Event::Apply(object)) => match report(&object) {
                Some(report) => index.apply(&key(&object), report),
                None => index.delete(&key(&object)),
            },
            Ok(Event::Delete(object)) => index.delete(&key(&object)),
            Err(error) => {
                metrics.watch_error(trivy_operator::KIND);
                tracing::warn!(%error, "VulnerabilityReport watch failed (is trivy-operator installed?); retrying with backoff");
            }
        }
    }
}

fn key(object: &DynamicObject) -> String {
    format!(
        "{}/{}",
        object.namespace().unwrap_or_default(),
        object.name_any()
    )
}

fn report(object: &DynamicObject) -> Option<DigestReport> {
    parse_report(&object.data)
        .inspect_err(
            |error| tracing::debug!(report = %key(object), %error, "VulnerabilityReport skipped"),
        )
        .ok()
}
