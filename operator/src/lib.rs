//! The `portcullis` binary's jobs: the in-cluster controller and webhook, local mode,
//! the manifest checker and CRD generation.

pub mod audit;
pub mod audit_receiver;
pub mod audit_scan;
pub mod certs;
pub mod check;
pub mod cli;
pub mod controller;
pub mod leader;
pub mod local;
pub mod manifests;
pub mod metrics;
pub mod run;
pub mod supervise;
pub mod tls;

use std::process::ExitCode;

use anyhow::Context;
use cli::{Cli, Command, LogFormat};

/// Runs the command line; errors are printed with their causes.
pub async fn run(cli: Cli) -> ExitCode {
    init_logging(cli.log.log_format);
    let result = match cli.command {
        Command::Check(args) => return check::run(&args),
        Command::AuditScan(args) => return audit_scan::run(&args),
        Command::Run(args) => run::run(args).await,
        Command::Serve(args) => local::serve(args).await,
        Command::Crds(args) => crds(args.out_dir.as_deref()),
        Command::Inventory(args) => inventory(&args).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("portcullis: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colours only for a person at a terminal, never in collected logs.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}

fn crds(out_dir: Option<&std::path::Path>) -> anyhow::Result<()> {
    let crds = portcullis_crds::crd_yaml().context("rendering the CRDs")?;
    match out_dir {
        Some(dir) => {
            for (file, yaml) in crds {
                let path = dir.join(file);
                std::fs::write(&path, yaml)
                    .with_context(|| format!("writing {}", path.display()))?;
            }
        }
        None => {
            let docs: Vec<String> = crds.into_iter().map(|(_, yaml)| yaml).collect();
            print!("{}", docs.join("---\n"));
        }
    }
    Ok(())
}

/// `portcullis inventory`: fetches `/inventory` from a replica and prints it.
async fn inventory(args: &cli::InventoryArgs) -> anyhow::Result<()> {
    let url = format!("{}/inventory", args.server.trim_end_matches('/'));
    let client = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(30))
        .build()
        .context("building the HTTP client")?;
    let response = client
        .get(&url)
        .send()
        .await
        .with_context(|| format!("GET {url}"))?;
    let status = response.status();
    let body = response
        .text()
        .await
        .with_context(|| format!("reading {url}"))?;
    if !status.is_success() {
        anyhow::bail!("GET {url}: {status}: {}", body.trim());
    }
    let parsed: audit::inventory::Inventory = serde_json::from_str(&body)
        .with_context(|| format!("{url} did not answer an inventory"))?;
    match args.output {
        cli::OutputFormat::Json => println!("{body}"),
        cli::OutputFormat::Text => print!("{}", audit::inventory::table(&parsed)),
    }
    Ok(())
}

/// Completes on SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(error) => {
                tracing::warn!(%error, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate => {}
    }
    tracing::info!("shutting down");
}
