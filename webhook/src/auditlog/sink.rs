//! The AuditMonitor's sink: findings POSTed as JSON arrays to an https URL, in order,
//! retried with backoff while it fails, and spooled on disk meanwhile ([`Spool`]).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use portcullis_crds::SinkStatus;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::sync::{Notify, watch};

use super::spool::Spool;
use super::{Finding, SinkConfig, lock};
use crate::scan::backend::{error_chain, https_client};

/// Findings per POST at most.
pub const BATCH: usize = 200;
/// Deadline of each POST.
pub const TIMEOUT: Duration = Duration::from_secs(10);
/// The first wait after a failure; it doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
/// The longest wait between attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// How the last delivery attempt went.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SinkHealth {
    /// Whether the last attempt was accepted; `None` before the first.
    pub reachable: Option<bool>,
    /// Why the last attempt failed.
    pub last_error: Option<String>,
    /// When the sink last accepted a delivery.
    pub last_delivery: Option<jiff::Timestamp>,
}

/// The sink: a spool and the task that empties it.
pub struct Sink {
    spool: Mutex<Spool>,
    config: watch::Sender<Option<SinkConfig>>,
    /// Whether the AuditMonitor was read yet: until then findings are spooled, since a
    /// sink may be configured.
    known: std::sync::atomic::AtomicBool,
    queued: Notify,
    health: Mutex<SinkHealth>,
    delivered: Counter,
    dropped: Gauge,
    failures: Counter,
    pending: Gauge,
}

impl Sink {
    /// A sink queueing into `spool`; it sends nothing until [`Sink::configure`] names a URL.
    pub fn new(spool: Spool) -> Arc<Self> {
        let sink = Sink {
            spool: Mutex::new(spool),
            config: watch::Sender::new(None),
            known: std::sync::atomic::AtomicBool::new(false),
            queued: Notify::new(),
            health: Mutex::default(),
            delivered: Counter::default(),
            dropped: Gauge::default(),
            failures: Counter::default(),
            pending: Gauge::default(),
        };
        sink.update_gauges(&lock(&sink.spool));
        Arc::new(sink)
    }

    /// Registers the metrics (under the registry's prefix).
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "audit_sink_delivered",
            "Findings the AuditMonitor's sink accepted",
            self.delivered.clone(),
        );
        registry.register(
            "audit_sink_dropped",
            "Findings dropped, ever, because the sink's spool was full",
            self.dropped.clone(),
        );
        registry.register(
            "audit_sink_failures",
            "Deliveries to the AuditMonitor's sink that failed (retried)",
            self.failures.clone(),
        );
        registry.register(
            "audit_sink_pending",
            "Findings spooled for the AuditMonitor's sink",
            self.pending.clone(),
        );
    }

    /// Sends to `config` from now on (`None`: keeps what waits, sends nothing).
    pub fn configure(&self, config: Option<SinkConfig>) {
        self.known.store(true, std::sync::atomic::Ordering::Release);
        self.config.send_if_modified(|current| {
            let changed = *current != config;
            *current = config;
            changed
        });
    }

    /// Whether a URL is configured.
    pub fn configured(&self) -> bool {
        self.config.borrow().is_some()
    }

    /// Queues a finding for the sink, when one is configured or the AuditMonitor was
    /// not read yet (right after a start).
    pub fn offer(&self, finding: &Finding) {
        if self.known.load(std::sync::atomic::Ordering::Acquire) && !self.configured() {
            return;
        }
        let mut spool = lock(&self.spool);
        if let Err(error) = spool.push(finding.clone()) {
            tracing::warn!(%error, "could not write the audit sink's spool; the finding waits in memory only");
        }
        self.update_gauges(&spool);
        drop(spool);
        self.queued.notify_one();
    }

    /// The delivery counts, as the AuditMonitor's status shows them.
    pub fn status(&self) -> SinkStatus {
        let spool = lock(&self.spool);
        SinkStatus {
            delivered: spool.delivered_total(),
            pending: spool.pending() as u64,
            dropped: spool.dropped_total(),
            last_delivery_time: lock(&self.health)
                .last_delivery
                .and_then(|t| jiff::Timestamp::from_second(t.as_second()).ok())
                .map(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time),
        }
    }

    /// How the last attempt went.
    pub fn health(&self) -> SinkHealth {
        lock(&self.health).clone()
    }

    /// Writes the spool's marker (at shutdown).
    pub fn save(&self) -> std::io::Result<()> {
        lock(&self.spool).save_marker()
    }

    fn update_gauges(&self, spool: &Spool) {
        self.pending
            .set(i64::try_from(spool.pending()).unwrap_or(i64::MAX));
        self.dropped
            .set(i64::try_from(spool.dropped_total()).unwrap_or(i64::MAX));
    }

    /// Delivers until the process stops: a batch at a time, in order; a failed batch is
    /// sent again after a backoff (sooner when the configuration changes).
    pub async fn run(self: Arc<Self>) {
        let mut config = self.config.subscribe();
        let mut backoff = FIRST_BACKOFF;
        let mut client: Option<(SinkConfig, reqwest::Client)> = None;
        loop {
            let current = config.borrow_and_update().clone();
            let batch = lock(&self.spool).peek(BATCH);
            let (Some(target), false) = (current, batch.is_empty()) else {
                tokio::select! {
                    _ = self.queued.notified() => {}
                    _ = config.changed() => {}
                }
                continue;
            };
            if client.as_ref().is_none_or(|(built, _)| *built != target) {
                match https_client(target.ca_bundle.as_deref(), TIMEOUT) {
                    Ok(built) => client = Some((target.clone(), built)),
                    Err(error) => {
                        self.failed(error);
                        let _ = config.changed().await;
                        continue;
                    }
                }
            }
            let Some((_, http)) = &client else { continue };
            let findings: Vec<&Finding> = batch.iter().map(|(_, f)| f).collect();
            let outcome = match serde_json::to_vec(&findings) {
                Err(error) => Err(format!("findings cannot be encoded: {error}")),
                Ok(body) => {
                    let request = http
                        .post(&target.url)
                        .header(reqwest::header::CONTENT_TYPE, "application/json")
                        .body(body);
                    match request.send().await {
                        Ok(answer) if answer.status().is_success() => Ok(()),
                        Ok(answer) => Err(format!("the sink answered {}", answer.status())),
                        Err(error) => Err(error_chain(&error.without_url())),
                    }
                }
            };
            match outcome {
                Ok(()) => {
                    backoff = FIRST_BACKOFF;
                    let last = batch.last().map_or(0, |(seq, _)| *seq);
                    let mut spool = lock(&self.spool);
                    if let Err(error) = spool.delivered(last) {
                        tracing::warn!(%error, "could not record the audit sink's delivery in its spool");
                    }
                    self.update_gauges(&spool);
                    drop(spool);
                    self.delivered.inc_by(batch.len() as u64);
                    *lock(&self.health) = SinkHealth {
                        reachable: Some(true),
                        last_error: None,
                        last_delivery: Some(jiff::Timestamp::now()),
                    };
                }
                Err(error) => {
                    self.failed(error);
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = config.changed() => {}
                    }
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }

    fn failed(&self, error: String) {
        self.failures.inc();
        let mut health = lock(&self.health);
        if health.last_error.as_ref() != Some(&error) {
            tracing::warn!(%error, "the audit sink refused or did not answer; findings stay spooled and are sent again");
        }
        health.reachable = Some(false);
        health.last_error = Some(error);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auditlog::spool::tests::finding;

    #[test]
    fn findings_wait_until_the_monitor_is_read_then_only_while_a_sink_is_configured() {
        let sink = Sink::new(Spool::in_memory(100));
        sink.offer(&finding(1));
        assert_eq!(sink.status().pending, 1, "kept: a sink may be configured");
        sink.configure(None);
        sink.offer(&finding(2));
        assert_eq!(sink.status().pending, 1, "no sink: nothing new is kept");
        sink.configure(Some(SinkConfig {
            url: "https://siem.internal/findings".into(),
            ca_bundle: None,
        }));
        sink.offer(&finding(3));
        assert_eq!(sink.status().pending, 2);
        assert_eq!(sink.health().reachable, None);
    }
}
