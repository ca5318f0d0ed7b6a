//! `POST /audit`: the API server's webhook audit backend sends `EventList`s here. Each
//! finding becomes one log line (target `portcullis::audit`), a count in
//! `portcullis_audit_findings_total{detection,severity}`, and an entry in a bounded
//! ring that `GET /findings` serves. The detections' state is saved to a file, so a
//! restart does not announce every registry again.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use serde::Serialize;

use portcullis_crds::FindingCounts;
use rustls::pki_types::CertificateDer;

use crate::client_cert::ClientCa;
use crate::policy::ObjectVersion;

use super::sink::Sink;
use super::spool::{CAPACITY, Spool};
use super::{EventList, Finding, Monitor, MonitorConfig, Settings, Severity, State, lock};

/// The detections' state file in the state directory.
pub const STATE_FILE: &str = "audit-state.json";
/// The sink's spool in the state directory.
pub const SPOOL_FILE: &str = "audit-spool.jsonl";

/// Findings kept for `GET /findings`; the oldest go first.
pub const RING: usize = 10_000;
/// Largest `EventList` accepted: the backend's batches (400 events by default) of
/// Request-level events with their objects.
pub const MAX_BODY: usize = 32 * 1024 * 1024;

/// A finding as `GET /findings` lists it.
#[derive(Debug, Clone, Serialize)]
pub struct Numbered {
    /// Its position in this process's stream (pass the last as `?since=`).
    pub sequence: u64,
    /// The finding.
    #[serde(flatten)]
    pub finding: Finding,
}

/// Why an `EventList` was refused.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    /// Not an `EventList`.
    #[error("not an audit.k8s.io/v1 EventList: {0}")]
    Malformed(#[from] serde_json::Error),
}

/// The `/audit` receiver.
pub struct AuditService {
    /// The bearer token `/audit` accepts.
    token: Option<String>,
    /// The CA whose client certificates `/audit` accepts.
    client_ca: Option<ClientCa>,
    monitor: Mutex<Monitor>,
    ring: Mutex<(u64, VecDeque<Numbered>)>,
    events: Counter,
    findings: Family<[(&'static str, &'static str); 2], Counter>,
    state_file: Option<PathBuf>,
    unsaved: std::sync::atomic::AtomicBool,
    /// Findings raised, by severity (indexed as [`Severity::ALL`]).
    by_severity: [std::sync::atomic::AtomicU64; Severity::ALL.len()],
    sink: Arc<Sink>,
    /// The AuditMonitor version whose settings apply (none: the defaults).
    configured: Mutex<ObjectVersion>,
}

impl AuditService {
    /// A receiver accepting `token` as bearer token and client certificates signed by
    /// `client_ca` (see [`AuditService::authorized`]), keeping the detections' state and
    /// the sink's spool in `dir` (taken up now if they exist; `None`: in memory).
    pub fn new(
        token: Option<String>,
        client_ca: Option<ClientCa>,
        settings: Settings,
        dir: Option<&Path>,
    ) -> std::io::Result<Self> {
        let state_file = dir.map(|dir| dir.join(STATE_FILE));
        let spool = match dir {
            Some(dir) => Spool::open(&dir.join(SPOOL_FILE), CAPACITY)?,
            None => Spool::in_memory(CAPACITY),
        };
        let state = match &state_file {
            Some(path) => match std::fs::read(path) {
                Ok(bytes) => serde_json::from_slice::<State>(&bytes).unwrap_or_else(|error| {
                    tracing::warn!(path = %path.display(), %error, "the audit detections' saved state cannot be read; starting afresh");
                    State::default()
                }),
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => State::default(),
                Err(error) => return Err(error),
            },
            None => State::default(),
        };
        Ok(AuditService {
            token,
            client_ca,
            monitor: Mutex::new(Monitor::new(settings, state)),
            ring: Mutex::default(),
            events: Counter::default(),
            findings: Family::default(),
            state_file,
            unsaved: std::sync::atomic::AtomicBool::new(false),
            by_severity: Default::default(),
            sink: Sink::new(spool),
            configured: Mutex::default(),
        })
    }

    /// Registers the metrics (under the registry's prefix).
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "audit_events",
            "Audit events received on /audit",
            self.events.clone(),
        );
        registry.register(
            "audit_findings",
            "Audit-log findings, by detection and severity",
            self.findings.clone(),
        );
        self.sink.register(registry);
    }

    /// The sink; its delivery task is the caller's to run ([`Sink::run`]).
    pub fn sink(&self) -> &Arc<Sink> {
        &self.sink
    }

    /// Whether a request may deliver events: its connection presented `client_chain`
    /// (end entity first), signed by the client CA, or its `Authorization` header
    /// carries the token (compared in constant time).
    pub fn authorized(
        &self,
        client_chain: Option<&[CertificateDer<'static>]>,
        authorization: Option<&[u8]>,
    ) -> bool {
        if let (Some(ca), Some(chain)) = (&self.client_ca, client_chain)
            && ca.verifies(chain)
        {
            return true;
        }
        let (Some(expected), Some(token)) = (
            &self.token,
            authorization.and_then(|h| h.strip_prefix(b"Bearer ")),
        ) else {
            return false;
        };
        aws_lc_rs::constant_time::verify_slices_are_equal(token, expected.as_bytes()).is_ok()
    }

    /// Judges every event of an `EventList`, in time order; returns how many events it held.
    pub fn ingest(&self, body: &[u8]) -> Result<usize, IngestError> {
        let mut list: EventList<'_> = serde_json::from_slice(body)?;
        let found = lock(&self.monitor).observe_batch(&mut list.items);
        self.events.inc_by(list.items.len() as u64);
        if !found.is_empty() {
            self.unsaved
                .store(true, std::sync::atomic::Ordering::Release);
        }
        for finding in found {
            self.record(finding);
        }
        Ok(list.items.len())
    }

    /// Judges from now on with `config`, compiled from the AuditMonitor `version` (the
    /// default version: no AuditMonitor, the defaults), and sends findings to its sink;
    /// what the detections remember is kept.
    pub fn configure(&self, config: MonitorConfig, version: ObjectVersion) {
        lock(&self.monitor).settings = config.settings;
        self.sink.configure(config.sink);
        *lock(&self.configured) = version;
    }

    /// The AuditMonitor version whose settings apply.
    pub fn configured(&self) -> ObjectVersion {
        lock(&self.configured).clone()
    }

    /// The findings raised since this process started, by severity.
    pub fn counts(&self) -> FindingCounts {
        let mut counts = FindingCounts::default();
        for (severity, count) in Severity::ALL.iter().zip(&self.by_severity) {
            let count = count.load(std::sync::atomic::Ordering::Relaxed);
            if count > 0 {
                counts.total += count;
                counts
                    .by_severity
                    .insert(severity.as_str().to_owned(), count);
            }
        }
        counts
    }

    fn record(&self, finding: Finding) {
        // Severity's variants are in the order of `Severity::ALL`.
        if let Some(count) = self.by_severity.get(finding.severity as usize) {
            count.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        self.findings
            .get_or_create(&[
                ("detection", finding.detection.id()),
                ("severity", finding.severity.as_str()),
            ])
            .inc();
        tracing::warn!(
            target: "portcullis::audit",
            detection = finding.detection.id(),
            severity = finding.severity.as_str(),
            user = %finding.user,
            groups = %finding.groups.join(","),
            source_ips = %finding.source_ips.join(","),
            verb = %finding.verb,
            resource = %finding.resource,
            namespace = %finding.namespace,
            name = %finding.name,
            audit_id = %finding.audit_id,
            time = %finding.time,
            "{}",
            finding.message
        );
        let mut ring = lock(&self.ring);
        ring.0 += 1;
        let sequence = ring.0;
        if ring.1.len() >= RING {
            ring.1.pop_front();
        }
        self.sink.offer(&finding);
        ring.1.push_back(Numbered { sequence, finding });
    }

    /// The findings after `since` (a sequence number, or an RFC 3339 time), oldest first.
    pub fn findings_since(&self, since: Option<&str>) -> Result<Vec<Numbered>, String> {
        let ring = lock(&self.ring);
        let keep: Box<dyn Fn(&Numbered) -> bool> = match since {
            None | Some("") => Box::new(|_| true),
            Some(text) => match text.parse::<u64>() {
                Ok(after) => Box::new(move |n: &Numbered| n.sequence > after),
                Err(_) => {
                    let after: jiff::Timestamp = text.parse().map_err(|_| {
                        format!("since={text:?} is neither a sequence number nor an RFC 3339 time")
                    })?;
                    Box::new(move |n: &Numbered| {
                        n.finding
                            .time
                            .parse::<jiff::Timestamp>()
                            .is_ok_and(|t| t > after)
                    })
                }
            },
        };
        Ok(ring.1.iter().filter(|n| keep(n)).cloned().collect())
    }

    /// Writes the detections' state, if it changed, to the state file (atomically), and
    /// the sink spool's counters.
    pub fn save(&self) -> std::io::Result<()> {
        self.sink.save()?;
        let Some(path) = &self.state_file else {
            return Ok(());
        };
        if !self
            .unsaved
            .swap(false, std::sync::atomic::Ordering::AcqRel)
        {
            return Ok(());
        }
        let json = serde_json::to_vec(&lock(&self.monitor).state).map_err(std::io::Error::other)?;
        let temporary = path.with_extension("tmp");
        std::fs::write(&temporary, json)?;
        std::fs::rename(&temporary, path)
    }
}
