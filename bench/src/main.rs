//! `portcullis-bench`: the ceiling servers and the load client of BENCHMARKS.md.
//!
//! - `echo --listen ADDR`: reads the body, answers a fixed `allowed: true` review.
//! - `typed --listen ADDR`: deserializes the review into typed Kubernetes objects
//!   (`AdmissionReview<Pod>`), answers `allowed: true` with the request's uid.
//! - `lean --listen ADDR`: the lean ceiling (borrowed structs of the fields the rules
//!   read, hash lookups of policies and scan results), answers `allowed: true`.
//! - `body --containers N --out FILE`: a realistic N-container Pod review.
//! - `fill --out DIR`: N policies and a scan cache of M results (memory benchmark).
//! - `load --url URL --ca FILE --body FILE [--rate N]`: keep-alive HTTPS POSTs over
//!   N connections, at saturation or at a fixed rate; prints throughput and latency
//!   percentiles. At a fixed rate, latency counts from the intended send time, so a
//!   server that falls behind is not hidden by the client waiting for it.

mod body;
mod fill;
mod lean;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use axum::body::Bytes;
use axum::routing::post;
use clap::{Parser, Subcommand};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use k8s_openapi::api::core::v1::Pod;
use kube::core::admission::{AdmissionResponse, AdmissionReview};
use rustls::pki_types::ServerName;
use rustls::pki_types::pem::PemObject;

#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// The echo ceiling server.
    Echo(ServerArgs),
    /// The typed ceiling server.
    Typed(ServerArgs),
    /// The lean ceiling server.
    Lean(LeanArgs),
    /// Writes a realistic Pod review.
    Body(body::BodyArgs),
    /// The load client.
    Load(LoadArgs),
    /// Writes N policies and fills a scan cache with M results (memory benchmark).
    Fill(fill::FillArgs),
}

#[derive(clap::Args)]
struct ServerArgs {
    /// Address to listen on.
    #[arg(long)]
    listen: SocketAddr,
    /// Where the generated CA is written.
    #[arg(long)]
    ca_out: PathBuf,
}

#[derive(clap::Args)]
struct LeanArgs {
    #[command(flatten)]
    server: ServerArgs,
    /// Policies held (as `fill --policies`).
    #[arg(long, default_value_t = 1000)]
    policies: usize,
    /// Scan results held (as `fill --scans`).
    #[arg(long, default_value_t = 100_000)]
    scans: usize,
}

#[derive(clap::Args)]
struct LoadArgs {
    /// The server's address (`127.0.0.1:PORT`).
    #[arg(long)]
    addr: SocketAddr,
    /// The path posted to.
    #[arg(long, default_value = "/validate")]
    path: String,
    /// The CA the server's certificate chains to.
    #[arg(long)]
    ca: PathBuf,
    /// The request body (an AdmissionReview, or an EventList for `/audit`).
    #[arg(long)]
    body: PathBuf,
    /// Keep-alive connections.
    #[arg(long, default_value_t = 16)]
    connections: usize,
    /// Seconds to run.
    #[arg(long, default_value_t = 8)]
    seconds: u64,
    /// Requests per second in total; absent = as fast as the server answers.
    #[arg(long)]
    rate: Option<u64>,
    /// A header sent with every request (`name: value`), e.g. `/audit`'s bearer token.
    #[arg(long = "header", value_parser = parse_header)]
    headers: Vec<(String, String)>,
}

fn parse_header(text: &str) -> Result<(String, String), String> {
    let (name, value) = text
        .split_once(':')
        .ok_or_else(|| format!("{text:?} is not `name: value`"))?;
    Ok((name.trim().to_owned(), value.trim().to_owned()))
}

const FIXED: &str = r#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","response":{"uid":"","allowed":true}}"#;

fn main() -> anyhow::Result<()> {
    let command = Cli::parse().command;
    // The client runs on one thread: two workers sharing its one pinned core would
    // preempt each other and show up as server latency.
    let runtime = match command {
        Command::Load(_) => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?,
        _ => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?,
    };
    runtime.block_on(async {
        match command {
            Command::Echo(args) => {
                serve(
                    args,
                    post(|_body: Bytes| async { ([("content-type", "application/json")], FIXED) }),
                )
                .await
            }
            Command::Typed(args) => serve(args, post(typed)).await,
            Command::Lean(args) => {
                let data = Arc::new(lean::Data::new(args.policies, args.scans));
                let route = post(move |body: Bytes| {
                    let data = data.clone();
                    async move { lean::answer(&data, &body) }
                });
                serve(args.server, route).await
            }
            Command::Body(args) => body::write(&args),
            Command::Load(args) => load(args).await,
            Command::Fill(args) => fill::fill(&args),
        }
    })
}

async fn typed(body: Bytes) -> axum::response::Response {
    use axum::response::IntoResponse;
    match serde_json::from_slice::<AdmissionReview<Pod>>(&body)
        .map_err(|e| e.to_string())
        .and_then(|r| {
            let request = r.request.ok_or("no request")?;
            serde_json::to_vec(&AdmissionResponse::from(&request).into_review())
                .map_err(|e| e.to_string())
        }) {
        Ok(json) => ([("content-type", "application/json")], json).into_response(),
        Err(error) => (axum::http::StatusCode::BAD_REQUEST, error).into_response(),
    }
}

async fn serve(args: ServerArgs, route: axum::routing::MethodRouter) -> anyhow::Result<()> {
    let certs = portcullis_webhook::tls::generate(&["localhost".into(), "127.0.0.1".into()])?;
    std::fs::write(&args.ca_out, &certs.ca_pem).context("writing the CA")?;
    let key = portcullis_webhook::tls::certified_key(
        certs.cert_pem.as_bytes(),
        certs.key_pem.as_bytes(),
    )?;
    let tls = portcullis_webhook::tls::server_config(portcullis_webhook::tls::CertStore::new(key))?;
    let router = axum::Router::new()
        .route("/validate", route)
        .layer(axum::extract::DefaultBodyLimit::max(7 << 20));
    let listener = std::net::TcpListener::bind(args.listen)?;
    // Until SIGTERM: a ceiling built for profile-guided optimization (bench/pgo.sh)
    // writes its profile as it exits, which a kill by the signal's default would skip.
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("listening for SIGTERM")?;
    let stop = async move {
        terminate.recv().await;
    };
    portcullis_webhook::server::serve(listener, tls, router, stop).await?;
    Ok(())
}

async fn load(args: LoadArgs) -> anyhow::Result<()> {
    let body = Bytes::from(std::fs::read(&args.body).context("reading the body")?);
    let mut roots = rustls::RootCertStore::empty();
    for cert in
        rustls::pki_types::CertificateDer::pem_file_iter(&args.ca).context("reading the CA")?
    {
        roots.add(cert?)?;
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    // Connect everything first: handshakes are not part of any request's latency.
    let mut senders = Vec::with_capacity(args.connections);
    for _ in 0..args.connections {
        let tcp = tokio::net::TcpStream::connect(args.addr).await?;
        tcp.set_nodelay(true)?;
        let tls = connector
            .connect(ServerName::try_from("localhost")?, tcp)
            .await?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await?;
        tokio::spawn(conn);
        senders.push(sender);
    }
    let started = Instant::now();
    let cpu_at_start = cpu_seconds();
    let sleeps_at_start = sleeps();
    let end = started + Duration::from_secs(args.seconds);
    let interval = args
        .rate
        .map(|rate| Duration::from_secs_f64(args.connections as f64 / rate as f64));
    let mut tasks = Vec::new();
    for (connection, mut sender) in senders.into_iter().enumerate() {
        let body = body.clone();
        let path = args.path.clone();
        let headers = args.headers.clone();
        let offset = interval.map(|i| i.mul_f64(connection as f64 / args.connections as f64));
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut next = started + offset.unwrap_or_default();
            while Instant::now() < end {
                if interval.is_some() {
                    // tokio's timer fires up to 1 ms late: sleep to just before the
                    // slot, then yield until it, so the client's error is not measured.
                    tokio::time::sleep_until((next - Duration::from_millis(2)).into()).await;
                    while Instant::now() < next {
                        tokio::task::yield_now().await;
                    }
                }
                let intended = if interval.is_some() {
                    next
                } else {
                    Instant::now()
                };
                let mut request = hyper::Request::post(path.as_str())
                    .header("host", "localhost")
                    .header("content-type", "application/json");
                for (name, value) in &headers {
                    request = request.header(name.as_str(), value.as_str());
                }
                let request = request.body(Full::new(body.clone()))?;
                let response = sender.send_request(request).await?;
                anyhow::ensure!(response.status() == 200, "status {}", response.status());
                response.into_body().collect().await?;
                latencies.push(intended.elapsed());
                next += interval.unwrap_or_default();
            }
            anyhow::Ok(latencies)
        }));
    }
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await??);
    }
    let elapsed = started.elapsed().as_secs_f64();
    latencies.sort();
    let at = |p: f64| {
        latencies
            .get(((latencies.len() as f64 * p) as usize).min(latencies.len().saturating_sub(1)))
            .copied()
            .unwrap_or_default()
    };
    let client_cpu = match (cpu_at_start, cpu_seconds()) {
        (Some(a), Some(b)) => format!("{:.0}%", (b - a) / elapsed * 100.0),
        _ => "?".into(),
    };
    let client_sleeps = match (sleeps_at_start, sleeps()) {
        (Some(a), Some(b)) if !latencies.is_empty() => {
            format!("{:.2}", (b - a) as f64 / latencies.len() as f64)
        }
        _ => "?".into(),
    };
    println!(
        "requests {} in {elapsed:.1}s: {:.0} req/s, p50 {:?}, p90 {:?}, p99 {:?}, max {:?}, client CPU {client_cpu}, client sleeps {client_sleeps} a request",
        latencies.len(),
        latencies.len() as f64 / elapsed,
        at(0.50),
        at(0.90),
        at(0.99),
        latencies.last().copied().unwrap_or_default()
    );
    Ok(())
}

/// How often this process's main thread (the client's only one) has gone to sleep,
/// from `/proc/self/status`. Each sleep is a wake-up some answer pays for on the
/// server's core: the slower the server, the more often the client waits idle for it.
fn sleeps() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("voluntary_ctxt_switches:"))?
        .trim()
        .parse()
        .ok()
}

/// This process's CPU time (user + system) from `/proc/self/stat`, in seconds, assuming
/// Linux's 100 clock ticks per second. Above 90 % of a core the figure is client-bound.
fn cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the parenthesized command name; utime and stime are the 12th and 13th.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(ticks as f64 / 100.0)
}
