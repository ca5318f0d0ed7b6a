//! `spec.scanner.trivyOperator`: trivy-operator's `VulnerabilityReport` objects
//! (aquasecurity.github.io/v1alpha1), watched by the controller into this index by image
//! digest, so a lookup never calls the API server.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::SystemTime;

use futures::future::BoxFuture;
use portcullis_crds::Severity;
use serde::Deserialize;

use super::{Backend, BackendError, Outcome, Target};
use crate::scan::{Finding, ScanReport, VulnId};

/// The API group, version and plural of the watched kind.
pub const GROUP: &str = "aquasecurity.github.io";
/// The served version.
pub const VERSION: &str = "v1alpha1";
/// The kind.
pub const KIND: &str = "VulnerabilityReport";
/// Its plural.
pub const PLURAL: &str = "vulnerabilityreports";

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Object {
    report: Report,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Report {
    #[serde(default)]
    update_timestamp: Option<String>,
    #[serde(default)]
    artifact: Artifact,
    #[serde(default)]
    vulnerabilities: Option<Vec<Vulnerability>>,
}

#[derive(Deserialize, Default)]
struct Artifact {
    #[serde(default)]
    digest: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Vulnerability {
    #[serde(rename = "vulnerabilityID")]
    vulnerability_id: String,
    #[serde(deserialize_with = "crate::scan::deserialize_severity")]
    severity: Severity,
    #[serde(default)]
    fixed_version: Option<String>,
}

/// A VulnerabilityReport as indexed: the digest it describes and its findings.
#[derive(Debug, Clone)]
pub struct DigestReport {
    /// `report.artifact.digest`.
    pub digest: String,
    /// The findings, scanned at `report.updateTimestamp`.
    pub report: ScanReport,
}

/// Reads one VulnerabilityReport object: the digest it describes and its findings.
/// A report without `report.artifact.digest` (older trivy-operator, tag-only pods)
/// cannot be matched to a digest and is refused.
pub fn parse_report(object: &serde_json::Value) -> Result<DigestReport, String> {
    let object: Object = serde_path_to_error::deserialize(object)
        .map_err(|e| format!("{}: {}", e.path(), e.inner()))?;
    let report = object.report;
    let digest = report
        .artifact
        .digest
        .filter(|d| d.starts_with("sha256:"))
        .ok_or(
            "report.artifact.digest is missing: the report cannot be matched to an image digest",
        )?;
    let scanned_at = match &report.update_timestamp {
        Some(text) => text
            .parse::<jiff::Timestamp>()
            .map(SystemTime::from)
            .map_err(|_| format!("report.updateTimestamp {text:?} is not an RFC 3339 time"))?,
        None => return Err("report.updateTimestamp is missing".into()),
    };
    let findings = report
        .vulnerabilities
        .into_iter()
        .flatten()
        .map(|v| Finding {
            id: VulnId::new(&v.vulnerability_id),
            severity: v.severity,
            fixable: v.fixed_version.is_some_and(|f| !f.trim().is_empty()),
        });
    Ok(DigestReport {
        digest,
        report: ScanReport::new(Some(scanned_at), findings),
    })
}

/// How far ahead of this replica's clock a report's time may be before it counts as
/// dated in the future.
const CLOCK_SKEW: std::time::Duration = std::time::Duration::from_secs(300);

/// Reports by object (`namespace/name`) and the objects of each digest. Several
/// workloads running one image each have a report; the most severe counts — never the
/// newest, so that one report written (or forged) later cannot clear a digest others
/// report findings for — and a report dated in the future counts for nothing.
#[derive(Debug, Default)]
pub struct ReportIndex {
    inner: RwLock<Inner>,
    synced: AtomicBool,
}

#[derive(Debug, Default)]
struct Inner {
    /// The digest each object reports on.
    objects: HashMap<String, String>,
    by_digest: HashMap<String, BTreeMap<String, ScanReport>>,
}

impl Inner {
    fn remove(&mut self, key: &str) {
        let Some(digest) = self.objects.remove(key) else {
            return;
        };
        if let Some(reports) = self.by_digest.get_mut(&digest) {
            reports.remove(key);
            if reports.is_empty() {
                self.by_digest.remove(&digest);
            }
        }
    }
}

impl ReportIndex {
    /// Adds or replaces the report of object `key`.
    pub fn apply(&self, key: &str, parsed: DigestReport) {
        let mut inner = self.inner.write().unwrap_or_else(|e| e.into_inner());
        inner.remove(key);
        inner
            .by_digest
            .entry(parsed.digest.clone())
            .or_default()
            .insert(key.to_owned(), parsed.report);
        inner.objects.insert(key.to_owned(), parsed.digest);
    }

    /// Forgets the report of object `key`.
    pub fn delete(&self, key: &str) {
        self.inner
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(key);
    }

    /// Replaces everything with a fresh list and marks the index synced.
    pub fn replace(&self, reports: impl IntoIterator<Item = (String, DigestReport)>) {
        let fresh = ReportIndex::default();
        for (key, report) in reports {
            fresh.apply(&key, report);
        }
        let fresh = fresh.inner.into_inner().unwrap_or_else(|e| e.into_inner());
        *self.inner.write().unwrap_or_else(|e| e.into_inner()) = fresh;
        self.synced.store(true, Ordering::Release);
    }

    /// Whether the first list has completed.
    pub fn is_synced(&self) -> bool {
        self.synced.load(Ordering::Acquire)
    }

    /// How many reports are indexed.
    pub fn len(&self) -> usize {
        self.inner
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .objects
            .len()
    }

    /// Whether no report is indexed.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The most severe report for a digest (by counts from critical down, then the
    /// number of findings), among those not dated after `now` (plus clock skew).
    pub fn most_severe(&self, digest: &str, now: SystemTime) -> Option<ScanReport> {
        let latest = now + CLOCK_SKEW;
        let inner = self.inner.read().unwrap_or_else(|e| e.into_inner());
        inner
            .by_digest
            .get(digest)?
            .values()
            .filter(|r| r.scanned_at.is_some_and(|at| at <= latest))
            .max_by_key(|r| (r.severity_profile(), r.findings().len()))
            .cloned()
    }
}

/// The backend over a shared index.
pub struct TrivyOperator {
    index: Arc<ReportIndex>,
}

impl TrivyOperator {
    /// A backend answering from `index`.
    pub fn new(index: Arc<ReportIndex>) -> Self {
        TrivyOperator { index }
    }
}

impl Backend for TrivyOperator {
    fn fetch<'a>(
        &'a self,
        target: &'a Target,
        _scan_on_demand: bool,
    ) -> BoxFuture<'a, Result<Outcome, BackendError>> {
        // trivy-operator scans what runs; there is nothing to ask for.
        let outcome = if !self.index.is_synced() {
            Err(BackendError::NotSynced)
        } else {
            Ok(self
                .index
                .most_severe(&target.digest, SystemTime::now())
                .map_or(Outcome::NotFound, Outcome::Report))
        };
        Box::pin(std::future::ready(outcome))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A VulnerabilityReport as trivy-operator (0.2x) writes it: one per workload
    /// container, labelled with the workload, `report.artifact.digest` from the pod's
    /// imageID.
    fn object(digest: &str, updated: &str, cves: &[(&str, &str, &str)]) -> serde_json::Value {
        serde_json::json!({
            "apiVersion": "aquasecurity.github.io/v1alpha1",
            "kind": "VulnerabilityReport",
            "metadata": {"name": "replicaset-api-7d9f-api", "namespace": "team-a",
                "labels": {"trivy-operator.resource.kind": "ReplicaSet", "trivy-operator.container.name": "api"}},
            "report": {
                "updateTimestamp": updated,
                "scanner": {"name": "Trivy", "vendor": "Aqua Security", "version": "0.50.1"},
                "registry": {"server": "registry.example.com"},
                "artifact": {"repository": "acme/api", "tag": "v1", "digest": digest},
                "summary": {"criticalCount": 1, "highCount": 0, "mediumCount": 0, "lowCount": 1, "unknownCount": 0, "noneCount": 0},
                "vulnerabilities": cves.iter().map(|(id, severity, fixed)| serde_json::json!({
                    "vulnerabilityID": id, "resource": "openssl", "installedVersion": "3.0.1",
                    "fixedVersion": fixed, "severity": severity, "title": "t", "primaryLink": "https://avd.aquasec.com/nvd/x"
                })).collect::<Vec<_>>()
            }
        })
    }

    const DIGEST: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";

    /// A later report from another namespace — a clean one anyone with write access to
    /// VulnerabilityReports could create — does not clear what another report found;
    /// one dated in the future counts for nothing.
    #[test]
    fn the_most_severe_report_of_a_digest_counts_never_the_newest() {
        let now = SystemTime::from("2026-11-30T00:00:00Z".parse::<jiff::Timestamp>().unwrap());
        let index = ReportIndex::default();
        let critical = parse_report(&object(
            DIGEST,
            "2026-11-01T00:00:00Z",
            &[("CVE-1", "CRITICAL", "")],
        ))
        .unwrap();
        let newer_clean = parse_report(&object(
            DIGEST,
            "2026-11-20T00:00:00Z",
            &[("CVE-2", "LOW", "1.1")],
        ))
        .unwrap();
        let future = parse_report(&object(
            DIGEST,
            "2027-01-01T00:00:00Z",
            &[("CVE-3", "CRITICAL", ""), ("CVE-4", "CRITICAL", "")],
        ))
        .unwrap();
        assert_eq!(critical.digest, DIGEST);
        assert_eq!(
            (
                critical.report.findings()[0].severity,
                critical.report.findings()[0].fixable
            ),
            (Severity::Critical, false)
        );
        index.replace([
            ("team-a/a".to_owned(), critical),
            ("team-b/b".to_owned(), newer_clean),
            ("team-c/c".to_owned(), future),
        ]);
        assert!(index.is_synced());
        let counted = |index: &ReportIndex| {
            index.most_severe(DIGEST, now).unwrap().findings()[0]
                .id
                .to_string()
        };
        assert_eq!(counted(&index), "CVE-1");
        index.delete("team-a/a");
        assert_eq!(counted(&index), "CVE-2");
        index.delete("team-b/b");
        assert!(
            index.most_severe(DIGEST, now).is_none(),
            "only the future-dated one is left"
        );
        index.delete("team-c/c");
        assert!(index.is_empty());
    }

    #[test]
    fn refuses_reports_it_cannot_match_or_read() {
        let no_digest = object("", "2026-11-01T00:00:00Z", &[]);
        assert!(
            parse_report(&no_digest)
                .unwrap_err()
                .contains("report.artifact.digest")
        );
        let bad_time = object(DIGEST, "yesterday", &[]);
        assert!(
            parse_report(&bad_time)
                .unwrap_err()
                .contains("updateTimestamp")
        );
        let mut bad_field = object(DIGEST, "2026-11-01T00:00:00Z", &[("CVE-1", "LOW", "")]);
        bad_field["report"]["vulnerabilities"][0]["vulnerabilityID"] = serde_json::json!(7);
        assert!(
            parse_report(&bad_field)
                .unwrap_err()
                .contains("report.vulnerabilities[0].vulnerabilityID")
        );
    }

    #[tokio::test]
    async fn the_backend_answers_from_the_index_once_it_is_synced() {
        let index = Arc::new(ReportIndex::default());
        let backend = TrivyOperator::new(index.clone());
        let target = Target {
            registry: "registry.example.com".into(),
            path: "acme/api".into(),
            digest: DIGEST.into(),
        };
        assert_eq!(
            backend.fetch(&target, true).await.unwrap_err(),
            BackendError::NotSynced
        );
        index.replace([]);
        assert!(matches!(
            backend.fetch(&target, true).await,
            Ok(Outcome::NotFound)
        ));
        let report = parse_report(&object(
            DIGEST,
            "2026-11-20T00:00:00Z",
            &[("CVE-9", "HIGH", "")],
        ))
        .unwrap();
        index.apply("team-a/r", report);
        assert!(matches!(
            backend.fetch(&target, false).await,
            Ok(Outcome::Report(r)) if &*r.findings()[0].id.as_str() == "CVE-9"
        ));
    }
}
