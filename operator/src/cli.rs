//! Command-line flags (each also settable by environment variable).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Portcullis: admission control for container images.
#[derive(Debug, Parser)]
#[command(name = "portcullis", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
    /// Logging.
    #[command(flatten)]
    pub log: LogArgs,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run in a cluster: reconcile the CRDs and serve the admission webhook.
    Run(RunArgs),
    /// Serve the admission webhook from policy YAML in a directory (local mode).
    Serve(ServeArgs),
    /// Check manifests against policies as the webhook would (exit 0 pass, 1 blocked, 2 bad input).
    Check(CheckArgs),
    /// Print the CustomResourceDefinitions, or write them to a directory.
    Crds(CrdsArgs),
    /// Print the running-image inventory a `portcullis run` replica serves.
    Inventory(InventoryArgs),
    /// Run the audit-log detections over API server audit logs (exit 0 nothing at
    /// --fail-on, 1 findings at or above it, 2 unreadable input).
    AuditScan(AuditScanArgs),
}

/// The audit-log receiver (`POST /audit`).
#[derive(Debug, Args)]
pub struct AuditArgs {
    /// A file holding the bearer token the API server's webhook audit backend sends
    /// (its kubeconfig's `users[].user.token`). Without it or `--audit-client-ca-file`,
    /// `/audit` answers 404.
    #[arg(long, env = "PORTCULLIS_AUDIT_TOKEN_FILE")]
    pub audit_token_file: Option<PathBuf>,
    /// A PEM CA file: `/audit` also accepts connections presenting a client certificate
    /// it signed (the backend kubeconfig's `client-certificate`), verified in the TLS
    /// handshake.
    #[arg(long, env = "PORTCULLIS_AUDIT_CLIENT_CA_FILE")]
    pub audit_client_ca_file: Option<PathBuf>,
}

/// `portcullis audit-scan`.
#[derive(Debug, Args)]
pub struct AuditScanArgs {
    /// Audit logs: JSON lines as the log backend writes them (gzip accepted), files,
    /// directories (every file, by name: rotated logs in order) or `-` for stdin.
    #[arg(required = true)]
    pub inputs: Vec<PathBuf>,
    /// Findings as text lines or JSON lines.
    #[arg(long, short = 'o', value_enum, default_value_t = OutputFormat::Text)]
    pub output: OutputFormat,
    /// Exit 1 when a finding at or above this severity exists (Info, Low, Medium, High, Critical).
    #[arg(long, default_value = "High")]
    pub fail_on: portcullis_webhook::auditlog::Severity,
}

/// `portcullis inventory`.
#[derive(Debug, Args)]
pub struct InventoryArgs {
    /// The metrics address of a replica (`http://localhost:9090` after
    /// `kubectl -n portcullis-system port-forward deploy/portcullis 9090`).
    #[arg(long, env = "PORTCULLIS_SERVER")]
    pub server: String,
    /// Table or JSON.
    #[arg(long, short = 'o', value_enum, default_value_t = OutputFormat::Text)]
    pub output: OutputFormat,
}

/// `portcullis serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Directory of ContainerPolicy, RegistryIntegration and Namespace YAML (searched
    /// recursively; reloaded on change).
    #[arg(long, env = "PORTCULLIS_POLICIES")]
    pub policies: PathBuf,
    /// Address the webhook listens on.
    #[arg(long, env = "PORTCULLIS_LISTEN", default_value = "127.0.0.1:8443")]
    pub listen: SocketAddr,
    /// How often the policy directory is checked for changes.
    #[arg(long, env = "PORTCULLIS_RELOAD_INTERVAL", default_value = "2s", value_parser = parse_duration)]
    pub reload_interval: Duration,
    /// Serving certificate.
    #[command(flatten)]
    pub tls: TlsArgs,
    /// Scan results.
    #[command(flatten)]
    pub scan: ScanArgs,
    /// One JSON decision line (uid, user, namespace, kind, name, verdict, policies;
    /// never the object) per request: all, violations or none.
    #[arg(long, env = "PORTCULLIS_DECISION_LOG", default_value = "violations")]
    pub decision_log: portcullis_webhook::decisions::DecisionLog,
}

/// The scan-result cache and lookups.
#[derive(Debug, Args)]
pub struct ScanArgs {
    /// Directory of the on-disk scan cache (results survive restarts and outages);
    /// without it results are kept in memory only.
    #[arg(long, env = "PORTCULLIS_CACHE_DIR")]
    pub cache_dir: Option<PathBuf>,
    /// Most scan results (and as many tag digests) held in memory.
    #[arg(long, env = "PORTCULLIS_CACHE_ENTRIES", default_value_t = 200_000)]
    pub cache_entries: usize,
    /// Most memory the scan results and tag digests take (estimated), e.g. `128Mi`,
    /// `1Gi`; startup loads the most recent results that fit.
    #[arg(long, env = "PORTCULLIS_CACHE_MEMORY", default_value = "128Mi", value_parser = parse_bytes)]
    pub cache_memory: u64,
    /// The most time one admission request waits for missing scan results, in total
    /// (each backend call is also bounded by its integration's timeout).
    #[arg(long, env = "PORTCULLIS_SCAN_DEADLINE", default_value = "3s", value_parser = parse_duration)]
    pub scan_deadline: Duration,
}

impl ScanArgs {
    /// The scan service's settings.
    pub fn settings(&self) -> portcullis_webhook::scan::ScanSettings {
        portcullis_webhook::scan::ScanSettings {
            cache_dir: self.cache_dir.clone(),
            budget: portcullis_webhook::scan::cache::Budget {
                entries: self.cache_entries,
                bytes: self.cache_memory,
            },
            deadline: self.scan_deadline,
        }
    }
}

/// `portcullis run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Address the webhook listens on.
    #[arg(long, env = "PORTCULLIS_LISTEN", default_value = "0.0.0.0:8443")]
    pub listen: SocketAddr,
    /// Address of the plain-HTTP `/metrics` endpoint.
    #[arg(
        long,
        env = "PORTCULLIS_METRICS_LISTEN",
        default_value = "0.0.0.0:9090"
    )]
    pub metrics_listen: SocketAddr,
    /// After SIGTERM: how long to keep serving while unready, so the API server's
    /// endpoints drop this replica before it stops accepting requests.
    #[arg(long, env = "PORTCULLIS_SHUTDOWN_GRACE", default_value = "10s", value_parser = parse_duration)]
    pub shutdown_grace: Duration,
    /// Portcullis's own namespace, where its Secrets and Leases live.
    #[arg(long, env = "POD_NAMESPACE", default_value = "portcullis-system")]
    pub namespace: String,
    /// Self-managed TLS (without --tls-cert-file): the Secret the leader keeps the CA
    /// and serving certificate in.
    #[arg(long, env = "PORTCULLIS_TLS_SECRET", default_value = "portcullis-tls")]
    pub tls_secret: String,
    /// Self-managed TLS: the Validating- and MutatingWebhookConfiguration (one name) whose
    /// caBundle the leader keeps.
    #[arg(
        long,
        env = "PORTCULLIS_WEBHOOK_CONFIGURATION",
        default_value = "portcullis"
    )]
    pub webhook_configuration: String,
    /// Self-managed TLS: the Service the API server calls (its DNS names go in the certificate).
    #[arg(long, env = "PORTCULLIS_SERVICE", default_value = "portcullis")]
    pub service: String,
    /// Self-managed TLS: certificate lifetime; renewed at two thirds of it.
    #[arg(long, env = "PORTCULLIS_CERT_LIFETIME", default_value = "2160h", value_parser = parse_duration)]
    pub cert_lifetime: Duration,
    /// Serving certificate.
    #[command(flatten)]
    pub tls: TlsArgs,
    /// Scan results.
    #[command(flatten)]
    pub scan: ScanArgs,
    /// One JSON decision line (uid, user, namespace, kind, name, verdict, policies;
    /// never the object) per request: all, violations or none.
    #[arg(long, env = "PORTCULLIS_DECISION_LOG", default_value = "violations")]
    pub decision_log: portcullis_webhook::decisions::DecisionLog,
    /// Audit-log monitoring.
    #[command(flatten)]
    pub audit: AuditArgs,
}

/// The serving certificate: files, or a generated self-signed CA.
#[derive(Debug, Args)]
pub struct TlsArgs {
    /// PEM certificate chain; reloaded when the file changes.
    #[arg(long, env = "PORTCULLIS_TLS_CERT_FILE", requires = "tls_key_file")]
    pub tls_cert_file: Option<PathBuf>,
    /// PEM private key; reloaded when the file changes.
    #[arg(long, env = "PORTCULLIS_TLS_KEY_FILE", requires = "tls_cert_file")]
    pub tls_key_file: Option<PathBuf>,
    /// Extra DNS names or IP addresses for the generated certificate (the name the API
    /// server dials, e.g. `host.docker.internal`). Repeat or separate with commas.
    #[arg(long, env = "PORTCULLIS_SELF_SIGNED_NAMES", value_delimiter = ',')]
    pub self_signed_name: Vec<String>,
    /// Where a generated CA and certificate are written when no files are given.
    #[arg(long, env = "PORTCULLIS_SELF_SIGNED_DIR", default_value_os_t = std::env::temp_dir().join("portcullis"))]
    pub self_signed_dir: PathBuf,
}

/// `portcullis check`.
#[derive(Debug, Args)]
pub struct CheckArgs {
    /// ContainerPolicy, RegistryIntegration and Namespace YAML: a file or a directory
    /// (searched recursively). Repeat for several.
    #[arg(
        long,
        short = 'p',
        required = true,
        env = "PORTCULLIS_POLICIES",
        value_delimiter = ','
    )]
    pub policies: Vec<PathBuf>,
    /// Manifests to check: files, directories (recursively, .yaml/.yml/.json) or `-`
    /// for standard input (`helm template … | portcullis check -p policies -`).
    pub inputs: Vec<PathBuf>,
    /// Namespace of objects that name none.
    #[arg(long, short = 'n', default_value = "default")]
    pub namespace: String,
    /// Trivy JSON reports (`trivy image --format json`): a file or a directory of them.
    #[arg(long)]
    pub scan_results: Vec<PathBuf>,
    /// Report format.
    #[arg(long, short = 'o', value_enum, default_value_t = OutputFormat::Text)]
    pub output: OutputFormat,
}

/// Report formats of `check`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    /// Readable lines.
    Text,
    /// JSON, schema `portcullis.dev/check/v1`.
    Json,
}

/// `portcullis crds`.
#[derive(Debug, Args)]
pub struct CrdsArgs {
    /// Write one file per CRD into this directory instead of printing them.
    #[arg(long)]
    pub out_dir: Option<PathBuf>,
}

/// Log output.
#[derive(Debug, Args)]
pub struct LogArgs {
    /// Log format.
    #[arg(long, env = "PORTCULLIS_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text, global = true)]
    pub log_format: LogFormat,
}

/// Log formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// A size in bytes: a number with an optional `Ki`, `Mi` or `Gi` suffix.
fn parse_bytes(s: &str) -> Result<u64, String> {
    let (number, unit) = match s.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => s.split_at(i),
        None => (s, ""),
    };
    let scale: u64 = match unit {
        "" => 1,
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        _ => {
            return Err(format!(
                "{s:?} is not a size (use bytes, or a number with Ki, Mi or Gi)"
            ));
        }
    };
    number
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(scale))
        .filter(|n| *n > 0)
        .ok_or_else(|| format!("{s:?} is not a size (use bytes, or a number with Ki, Mi or Gi)"))
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    portcullis_webhook::duration::parse(s)
}
