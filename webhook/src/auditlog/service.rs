//! `POST /audit`: the API server's webhook audit backend sends `EventList`s here. Each
//! finding becomes one log line (target `portcullis::audit`), a count in
//! `portcullis_audit_findings_total{detection,severity}`, and an entry in a bounded
//! ring that `GET /findings` serves. The detections' state is saved to a file, so a
//! restart does not announce every registry again.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::Mutex;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use serde::Serialize;

use super::{EventList, Finding, Monitor, Settings, State};

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
    token: String,
    monitor: Mutex<Monitor>,
    ring: Mutex<(u64, VecDeque<Numbered>)>,
    events: Counter,
    findings: Family<[(&'static str, &'static str); 2], Counter>,
    state_file: Option<PathBuf>,
    unsaved: std::sync::atomic::AtomicBool,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

impl AuditService {
    /// A receiver accepting `token` as bearer token, keeping the detections' state in
    /// `state_file` (read now if it exists).
    pub fn new(
        token: String,
        settings: Settings,
        state_file: Option<PathBuf>,
    ) -> std::io::Result<Self> {
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
            monitor: Mutex::new(Monitor::new(settings, state)),
            ring: Mutex::default(),
            events: Counter::default(),
            findings: Family::default(),
            state_file,
            unsaved: std::sync::atomic::AtomicBool::new(false),
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
    }

    /// Whether an `Authorization` header carries the token (compared in constant time).
    pub fn authorized(&self, authorization: Option<&[u8]>) -> bool {
        let Some(token) = authorization.and_then(|h| h.strip_prefix(b"Bearer ")) else {
            return false;
        };
        aws_lc_rs::constant_time::verify_slices_are_equal(token, self.token.as_bytes()).is_ok()
    }

    /// Judges every event of an `EventList`; returns how many events it held.
    pub fn ingest(&self, body: &[u8]) -> Result<usize, IngestError> {
        let list: EventList<'_> = serde_json::from_slice(body)?;
        let found: Vec<Finding> = {
            let mut monitor = lock(&self.monitor);
            list.items
                .iter()
                .flat_map(|event| monitor.observe(event))
                .collect()
        };
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

    fn record(&self, finding: Finding) {
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

    /// Writes the detections' state, if it changed, to the state file (atomically).
    pub fn save(&self) -> std::io::Result<()> {
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
