//! Scan results as the engine sees them, and the lookup its caller fills.

pub mod backend;
pub mod breaker;
pub mod cache;
pub mod credentials;
pub mod metrics;
pub mod registry;
pub mod service;
pub mod trivy;
pub mod vuln_id;

pub use service::{DigestAnswers, Health, ScanAnswers, ScanChanges, ScanService, ScanSettings};
pub use vuln_id::VulnId;

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::SystemTime;

use portcullis_crds::Severity;

use crate::image::ImageRef;

/// One known vulnerability of an image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// The vulnerability ID (`CVE-2024-1`, `GHSA-…`).
    pub id: VulnId,
    /// Its severity.
    pub severity: Severity,
    /// Whether a fixed version exists.
    pub fixable: bool,
}

/// A scan of one image digest: its findings, one per vulnerability ID, sorted by ID.
/// Cloning shares the findings: the cache, the scan service and every decision hold one
/// allocation per result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScanReport {
    /// When the scanner produced the result, if it said (the scan service fills it in
    /// before caching: a missing time is the first fetch's, a future one the fetch's).
    pub scanned_at: Option<SystemTime>,
    findings: Arc<[Finding]>,
}

impl ScanReport {
    /// Builds a report; a vulnerability listed for several packages counts once, at its
    /// highest severity, fixable if any package has a fix.
    pub fn new(
        scanned_at: Option<SystemTime>,
        findings: impl IntoIterator<Item = Finding>,
    ) -> Self {
        let mut by_id: HashMap<u32, Finding> = HashMap::new();
        for finding in findings {
            match by_id.entry(finding.id.index()) {
                std::collections::hash_map::Entry::Occupied(mut known) => {
                    let known = known.get_mut();
                    known.severity = known.severity.max(finding.severity);
                    known.fixable |= finding.fixable;
                }
                std::collections::hash_map::Entry::Vacant(slot) => {
                    slot.insert(finding);
                }
            }
        }
        let mut findings: Vec<(Arc<str>, Finding)> =
            by_id.into_values().map(|f| (f.id.as_str(), f)).collect();
        findings.sort_unstable_by(|(a, _), (b, _)| a.cmp(b));
        ScanReport::sorted(scanned_at, findings.into_iter().map(|(_, f)| f).collect())
    }

    /// A report of `findings` already sorted by ID without repeats (as stored).
    pub(crate) fn sorted(scanned_at: Option<SystemTime>, findings: Vec<Finding>) -> Self {
        if findings.is_empty() {
            return ScanReport::clean(scanned_at);
        }
        ScanReport {
            scanned_at,
            findings: findings.into(),
        }
    }

    /// A report without findings; all of them share one allocation.
    fn clean(scanned_at: Option<SystemTime>) -> Self {
        static NONE: std::sync::LazyLock<Arc<[Finding]>> =
            std::sync::LazyLock::new(|| Arc::from([]));
        ScanReport {
            scanned_at,
            findings: NONE.clone(),
        }
    }

    /// The findings, sorted by ID.
    pub fn findings(&self) -> &[Finding] {
        &self.findings
    }

    /// How severe the findings are, for comparing reports: the counts from critical
    /// down to unknown.
    pub fn severity_profile(&self) -> [usize; 5] {
        Severity::DESCENDING.map(|severity| {
            self.findings
                .iter()
                .filter(|f| f.severity == severity)
                .count()
        })
    }

    /// The same report scanned at `at`.
    pub(crate) fn scanned(self, at: SystemTime) -> Self {
        ScanReport {
            scanned_at: Some(at),
            ..self
        }
    }
}

/// A severity as scanners write it, in any case. Anything else is not a severity: the
/// answer holding it is malformed, never counted as Unknown.
pub(crate) fn parse_severity(name: &str) -> Option<Severity> {
    Severity::DESCENDING
        .into_iter()
        .find(|s| s.as_str().eq_ignore_ascii_case(name))
}

/// Serde: a `severity` field, through [`parse_severity`].
pub(crate) fn deserialize_severity<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Severity, D::Error> {
    let name = <Cow<'de, str> as serde::Deserialize>::deserialize(deserializer)?;
    parse_severity(&name)
        .ok_or_else(|| serde::de::Error::custom(format!("unknown severity {name:?}")))
}

/// What the caller knows about an image's scan.
#[derive(Debug, Clone)]
pub enum ScanStatus {
    /// A result is available.
    Found(ScanReport),
    /// No usable result, and why (said in the violation message; never a backend error text).
    Unavailable(Cow<'static, str>),
}

/// Scan results the engine can consult without I/O: the caller fetches before deciding.
pub trait ScanResults {
    /// The scan status of one image.
    fn lookup(&self, image: &ImageRef) -> ScanStatus;
}

/// No scanner configured: every image is unscanned.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoScanResults;

impl ScanResults for NoScanResults {
    fn lookup(&self, _image: &ImageRef) -> ScanStatus {
        ScanStatus::Unavailable(Cow::Borrowed("no scanner backend is configured"))
    }
}
