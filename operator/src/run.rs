//! `portcullis run`: the controllers and the webhook in one process.

use std::sync::Arc;

use anyhow::Context;
use arc_swap::ArcSwap;
use axum::routing::get;
use kube::Client;
use portcullis_webhook::decisions::Decisions;
use portcullis_webhook::policy::{PolicySet, SharedPolicySet};
use portcullis_webhook::scan::ScanService;
use portcullis_webhook::server::{self, AppState, Readiness};
use portcullis_webhook::tls::{CertStore, certified_key, generate};

use crate::audit::{self, Audit};
use crate::certs::{self, CertSettings};
use crate::cli::RunArgs;
use crate::controller::events::Reporter;
use crate::controller::lookup::ApiReads;
use crate::controller::{monitor, scans as scan_inputs, status, watch};
use crate::leader::{self, Election};
use crate::metrics::Metrics;
use crate::supervise::Essentials;

/// The Lease the writers (status, certificates) are elected by.
const LEASE: &str = "portcullis-leader";
/// How long a leader lease lasts unrenewed (client-go's default).
const LEASE_DURATION: std::time::Duration = std::time::Duration::from_secs(15);
/// How long shutdown waits for the leader lease to be released.
const LEASE_RELEASE: std::time::Duration = std::time::Duration::from_secs(3);
/// How often the leader checks the serving certificate.
const CERT_INTERVAL: std::time::Duration = std::time::Duration::from_secs(60);

/// Runs until SIGTERM or Ctrl-C, or until a critical task fails.
pub async fn run(args: RunArgs) -> anyhow::Result<()> {
    let client = Client::try_default()
        .await
        .context("connecting to the Kubernetes API (in-cluster, or KUBECONFIG)")?;
    let listener = std::net::TcpListener::bind(args.listen)
        .with_context(|| format!("binding the webhook to {}", args.listen))?;
    let metrics_listener = tokio::net::TcpListener::bind(args.metrics_listen)
        .await
        .with_context(|| format!("binding metrics to {}", args.metrics_listen))?;
    let webhook_addr = listener
        .local_addr()
        .context("reading the webhook address")?;
    let metrics_addr = metrics_listener
        .local_addr()
        .context("reading the metrics address")?;
    let identity =
        std::env::var("POD_NAME").unwrap_or_else(|_| format!("portcullis-{}", std::process::id()));
    tracing::info!(webhook = %webhook_addr, metrics = %metrics_addr, namespace = %args.namespace, %identity, "starting");

    let (leader_tx, leader) = tokio::sync::watch::channel(false);
    let (stop_election, election_stopped) = tokio::sync::oneshot::channel::<()>();
    let mut stop_election = Some(stop_election);
    let election = Election {
        namespace: args.namespace.clone(),
        name: LEASE.into(),
        identity: identity.clone(),
        duration: LEASE_DURATION,
    };
    let mut lease_task = tokio::spawn(leader::run(client.clone(), election, leader_tx, async {
        let _ = election_stopped.await;
    }));

    let ready = Readiness::default();
    let mut essentials = Essentials::default();
    let (audit_log, client_ca) =
        match crate::audit_receiver::service(&args.audit, args.scan.cache_dir.as_deref())? {
            Some((receiver, client_ca)) => (Some(receiver), client_ca),
            None => (None, None),
        };
    let tls = serving_certificate(
        &args,
        &client,
        &ready,
        &leader,
        client_ca.as_ref(),
        &mut essentials,
    )?;
    let shared = Arc::new(ArcSwap::from_pointee(PolicySet::default()));
    let metrics = Arc::new(Metrics::default());
    let scans = ScanService::new(&args.scan.settings()).context("opening the scan cache")?;
    metrics.register_with(|registry| scans.metrics().register(registry));
    require_scan_inputs(&ready, &scans, &shared);
    essentials.spawn(
        "the pull-credential Secret watch",
        scan_inputs::credentials(
            client.clone(),
            args.namespace.clone(),
            scans.clone(),
            metrics.clone(),
        ),
    );
    essentials.spawn(
        "the VulnerabilityReport watch",
        scan_inputs::vulnerability_reports(
            client.clone(),
            shared.clone(),
            scans.clone(),
            metrics.clone(),
        ),
    );
    let reporter = Reporter {
        controller: "portcullis.dev/controller".into(),
        instance: identity,
    };
    essentials.spawn(
        "the policy, integration and namespace watches",
        watch::run(
            client.clone(),
            shared.clone(),
            ready.clone(),
            metrics.clone(),
        ),
    );
    if let Some(receiver) = &audit_log {
        metrics.register_with(|registry| receiver.register(registry));
        essentials.spawn(
            "the audit state saver",
            crate::audit_receiver::save_periodically(receiver.clone()),
        );
        essentials.spawn("the audit sink", receiver.sink().clone().run());
        essentials.spawn(
            "the AuditMonitor watch",
            monitor::apply_settings(client.clone(), receiver.clone(), metrics.clone()),
        );
    }
    essentials.spawn(
        "the AuditMonitor status writer",
        monitor::report(
            client.clone(),
            reporter.clone(),
            metrics.clone(),
            leader.clone(),
            audit_log.clone(),
        ),
    );
    essentials.spawn(
        "the status controllers",
        status::run(
            client.clone(),
            reporter,
            metrics.clone(),
            leader.clone(),
            scans.clone(),
            shared.clone(),
        ),
    );
    let decisions = Decisions::new(args.decision_log);
    metrics.register_with(|registry| decisions.register(registry));
    let audit = Audit::new(decisions.clone());
    {
        let (client, audit, shared, scans) =
            (client.clone(), audit.clone(), shared.clone(), scans.clone());
        essentials.spawn("the background audit", async move {
            if let Err(error) = audit::run(client, audit, shared, scans).await {
                tracing::error!(error = format!("{error:#}"), "the background audit stopped");
            }
        });
    }
    essentials.spawn(
        "the audit's status and report writer",
        audit::writer::run(
            client.clone(),
            audit.clone(),
            shared.clone(),
            decisions.clone(),
            leader.clone(),
        ),
    );
    let (stop_webhook, webhook_stopped) = tokio::sync::oneshot::channel::<()>();
    let state = AppState {
        audit: audit_log.clone(),
        cluster: Some(Arc::new(ApiReads::new(client, metrics.clone()))),
        decisions,
        ..AppState::new(shared.clone(), scans.clone(), ready.clone())
    };
    metrics.register_with(|registry| state.mutations.register(registry));
    let mut webhook = tokio::spawn(server::serve(listener, tls, server::router(state), async {
        let _ = webhook_stopped.await;
    }));
    let scans_for_inventory = scans.clone();
    let metrics_app = axum::Router::new()
        .route(
            "/metrics",
            get(move || {
                let metrics = metrics.clone();
                async move {
                    (
                        [(
                            "content-type",
                            "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        )],
                        metrics.render(),
                    )
                }
            }),
        )
        .route(
            "/inventory",
            get(move || inventory(audit.clone(), shared.clone(), scans_for_inventory.clone())),
        );
    let metrics_app = match audit_log.clone() {
        Some(receiver) => metrics_app.route(
            "/findings",
            get(move |query| crate::audit_receiver::findings(receiver.clone(), query)),
        ),
        None => metrics_app,
    };
    essentials.spawn("the metrics server", async move {
        if let Err(error) = axum::serve(metrics_listener, metrics_app).await {
            tracing::error!(%error, "the metrics server failed");
        }
    });

    let outcome = tokio::select! {
        _ = crate::shutdown_signal() => {
            // Unready first, so endpoints drop this replica, while still serving; and the
            // leadership goes to a replica that is staying.
            ready.stopping();
            if let Some(stop) = stop_election.take() {
                let _ = stop.send(());
            }
            if tokio::time::timeout(LEASE_RELEASE, &mut lease_task).await.is_err() {
                tracing::warn!("the leader lease was not released in time; it will expire");
            }
            tracing::info!(grace = ?args.shutdown_grace, "unready; serving until the grace period ends");
            tokio::time::sleep(args.shutdown_grace).await;
            Ok(())
        }
        error = essentials.first_to_end() => {
            tracing::error!(%error, "an essential task ended: stopping");
            Err(error)
        }
        result = &mut webhook => Err(anyhow::anyhow!("the webhook server ended: {result:?}")),
        result = &mut lease_task => Err(anyhow::anyhow!("leader election ended: {result:?}")),
    };
    ready.stopping();
    let _ = stop_webhook.send(());
    let _ = webhook.await;
    scans.cache().close();
    if let Some(receiver) = &audit_log
        && let Err(error) = receiver.save()
    {
        tracing::warn!(%error, "could not save the audit detections' state");
    }
    essentials.abort();
    // After a failure the lease is still held: release it for the next leader.
    if let Some(stop) = stop_election.take() {
        let _ = stop.send(());
        let _ = tokio::time::timeout(LEASE_RELEASE, &mut lease_task).await;
    }
    outcome
}

/// `GET /inventory`: built off the runtime's workers (the ledger may be large).
async fn inventory(
    audit: Audit,
    shared: SharedPolicySet,
    scans: Arc<ScanService>,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    if !audit.synced() {
        return (
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            "the audit has not listed every object yet",
        )
            .into_response();
    }
    let built = tokio::task::spawn_blocking(move || {
        let set = shared.load();
        serde_json::to_vec(&audit::inventory::build(&audit.ledger(), &set, &scans))
    })
    .await;
    match built {
        Ok(Ok(json)) => ([("content-type", "application/json")], json).into_response(),
        _ => axum::http::StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

/// Readiness waits for every input decisions read: the pull-credential Secrets, and —
/// once an integration reads them — trivy-operator's VulnerabilityReports.
fn require_scan_inputs(ready: &Readiness, scans: &Arc<ScanService>, policies: &SharedPolicySet) {
    let credentials = scans.clone();
    ready.require("pull-credential Secrets not listed yet", move || {
        credentials.credentials().is_synced()
    });
    let (reports, policies) = (scans.clone(), policies.clone());
    ready.require("VulnerabilityReports not listed yet", move || {
        reports.reports().is_synced() || !scan_inputs::uses_reports(&policies)
    });
}

/// The serving certificate: from files (cert-manager), or self-managed through a
/// Secret the leader keeps, with the leader's certificate task. Until the Secret's
/// certificate is loaded the replica serves a throwaway one and stays unready.
fn serving_certificate(
    args: &RunArgs,
    client: &Client,
    ready: &Readiness,
    leader: &tokio::sync::watch::Receiver<bool>,
    client_ca: Option<&portcullis_webhook::client_cert::ClientCa>,
    essentials: &mut Essentials,
) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    if args.tls.tls_cert_file.is_some() {
        let tls = crate::tls::from_files(&args.tls, client_ca, essentials)?;
        ready.certificate_loaded();
        return Ok(tls);
    }
    let placeholder =
        generate(&["localhost".to_owned()]).context("generating a placeholder certificate")?;
    let store = CertStore::new(certified_key(
        placeholder.cert_pem.as_bytes(),
        placeholder.key_pem.as_bytes(),
    )?);
    let settings = CertSettings {
        namespace: args.namespace.clone(),
        secret: args.tls_secret.clone(),
        webhook: args.webhook_configuration.clone(),
        service: args.service.clone(),
        extra_names: args.tls.self_signed_name.clone(),
        lifetime: args.cert_lifetime,
    };
    essentials.spawn(
        "the serving certificate Secret watch",
        certs::serve_from_secret(
            client.clone(),
            settings.clone(),
            store.clone(),
            ready.clone(),
        ),
    );
    essentials.spawn(
        "the certificate manager",
        certs::manage(client.clone(), settings, leader.clone(), CERT_INTERVAL),
    );
    crate::tls::config(store, client_ca)
}

#[cfg(test)]
mod tests {
    use super::*;
    use portcullis_crds::RegistryIntegrationSpec;
    use portcullis_webhook::policy::compile_integration;

    fn integration(scanner: serde_json::Value) -> portcullis_webhook::policy::CompiledIntegration {
        let spec: RegistryIntegrationSpec = serde_json::from_value(
            serde_json::json!({"registries": ["ghcr.io/**"], "scanner": scanner}),
        )
        .unwrap();
        compile_integration("scans", &spec).unwrap()
    }

    /// Right after a restart the credentials and reports are not listed yet: serving
    /// then would count every image "unreachable". Readiness waits for them.
    #[test]
    fn readiness_waits_for_credentials_and_reports_in_use() {
        let ready = Readiness::ready_now();
        let scans = ScanService::in_memory();
        let policies: SharedPolicySet = Arc::new(ArcSwap::from_pointee(PolicySet::default()));
        require_scan_inputs(&ready, &scans, &policies);
        assert!(!ready.is_ready(), "{ready:?}");
        scans.credentials().replace(Default::default());
        assert!(
            ready.is_ready(),
            "no integration reads VulnerabilityReports: {ready:?}"
        );

        policies.store(Arc::new(PolicySet::new(
            Vec::<portcullis_webhook::policy::CompiledPolicy>::new(),
            [integration(serde_json::json!({"trivyOperator": {}}))],
            Arc::default(),
        )));
        assert!(!ready.is_ready(), "{ready:?}");
        assert!(format!("{ready:?}").contains("VulnerabilityReports not listed yet"));
        scans.reports().replace([]);
        assert!(ready.is_ready(), "{ready:?}");
    }
}
