//! `portcullis run`: the controllers and the webhook in one process.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context;
use arc_swap::ArcSwap;
use axum::routing::get;
use kube::Client;
use kube::runtime::events::Reporter;
use portcullis_webhook::policy::PolicySet;
use portcullis_webhook::scan::NoScanResults;
use portcullis_webhook::server::{self, AppState};

use crate::cli::RunArgs;
use crate::controller::{status, watch};
use crate::metrics::Metrics;
use crate::tls::serving_tls;

/// Runs until SIGTERM or Ctrl-C, or until a critical task fails.
pub async fn run(args: RunArgs) -> anyhow::Result<()> {
    let client = Client::try_default()
        .await
        .context("connecting to the Kubernetes API (in-cluster, or KUBECONFIG)")?;
    let listener = std::net::TcpListener::bind(args.listen)
        .with_context(|| format!("binding the webhook to {}", args.listen))?;
    let tls = serving_tls(&args.tls, args.listen)?;
    let metrics_listener = tokio::net::TcpListener::bind(args.metrics_listen)
        .await
        .with_context(|| format!("binding metrics to {}", args.metrics_listen))?;
    let webhook_addr = listener
        .local_addr()
        .context("reading the webhook address")?;
    let metrics_addr = metrics_listener
        .local_addr()
        .context("reading the metrics address")?;
    tracing::info!(webhook = %webhook_addr, metrics = %metrics_addr, namespace = %args.namespace, "starting");

    let shared = Arc::new(ArcSwap::from_pointee(PolicySet::default()));
    let ready = Arc::new(AtomicBool::new(false));
    let metrics = Arc::new(Metrics::default());
    let reporter = Reporter {
        controller: "portcullis".into(),
        instance: std::env::var("POD_NAME").ok(),
    };

    let mut watches = tokio::spawn(watch::run(
        client.clone(),
        shared.clone(),
        ready.clone(),
        metrics.clone(),
    ));
    let mut statuses = tokio::spawn(status::run(client, reporter, metrics.clone()));
    let (stop_webhook, webhook_stopped) = tokio::sync::oneshot::channel::<()>();
    let state = AppState {
        policies: shared,
        scans: Arc::new(NoScanResults),
        ready: ready.clone(),
    };
    let mut webhook = tokio::spawn(server::serve(listener, tls, server::router(state), async {
        let _ = webhook_stopped.await;
    }));
    let metrics_app = axum::Router::new().route(
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
    );
    let mut metrics_server =
        tokio::spawn(async move { axum::serve(metrics_listener, metrics_app).await });

    let outcome = tokio::select! {
        _ = crate::shutdown_signal() => {
            // Unready first, so endpoints drop this replica, while still serving.
            ready.store(false, Ordering::Release);
            tracing::info!(grace = ?args.shutdown_grace, "unready; serving until the grace period ends");
            tokio::time::sleep(args.shutdown_grace).await;
            Ok(())
        }
        result = &mut watches => Err(anyhow::anyhow!("the watches ended: {result:?}")),
        result = &mut statuses => Err(anyhow::anyhow!("the status controllers ended: {result:?}")),
        result = &mut webhook => Err(anyhow::anyhow!("the webhook server ended: {result:?}")),
        result = &mut metrics_server => Err(anyhow::anyhow!("the metrics server ended: {result:?}")),
    };
    ready.store(false, Ordering::Release);
    let _ = stop_webhook.send(());
    let _ = webhook.await;
    outcome
}
