//! Trivy's JSON report (`trivy image --format json`, `SchemaVersion: 2`): what CI
//! pipelines write and what a Trivy-JSON HTTP endpoint serves.

use std::time::SystemTime;

use portcullis_crds::Severity;
use serde::Deserialize;

use super::{Finding, ScanReport, VulnId};

/// Why a document is not a usable Trivy report.
#[derive(Debug, thiserror::Error)]
pub enum TrivyError {
    /// Not JSON, or not shaped like a Trivy report.
    #[error("not a Trivy JSON report: {0}")]
    Malformed(String),
    /// A report of another schema version.
    #[error("Trivy report SchemaVersion {0} is not supported (expected 2)")]
    SchemaVersion(u32),
    /// `CreatedAt` is not an RFC 3339 timestamp.
    #[error("Trivy report CreatedAt {0:?} is not an RFC 3339 timestamp")]
    CreatedAt(String),
}

/// A parsed report: the image it names and its findings.
#[derive(Debug, Clone)]
pub struct TrivyReport {
    /// `ArtifactName`, as given to trivy (`nginx:1.25`).
    pub artifact_name: Option<String>,
    /// `Metadata.RepoTags`.
    pub repo_tags: Vec<String>,
    /// `Metadata.RepoDigests` (`repo@sha256:…`).
    pub repo_digests: Vec<String>,
    /// The digest of the first of `repo_digests`.
    pub digest: Option<String>,
    /// The findings; `scanned_at` is `CreatedAt` (or the caller's fallback).
    pub report: ScanReport,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Report {
    schema_version: u32,
    created_at: Option<String>,
    artifact_name: Option<String>,
    #[serde(default)]
    metadata: Metadata,
    #[serde(default)]
    results: Option<Vec<ResultEntry>>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
struct Metadata {
    #[serde(default)]
    repo_tags: Option<Vec<String>>,
    #[serde(default)]
    repo_digests: Option<Vec<String>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ResultEntry {
    #[serde(default)]
    vulnerabilities: Option<Vec<Vulnerability>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Vulnerability {
    #[serde(rename = "VulnerabilityID")]
    vulnerability_id: String,
    #[serde(deserialize_with = "super::deserialize_severity")]
    severity: Severity,
    #[serde(default)]
    fixed_version: Option<String>,
}

/// Parses a report; its scan time is `CreatedAt`, absent before trivy 0.37.
pub fn parse(json: &[u8]) -> Result<TrivyReport, TrivyError> {
    let de = &mut serde_json::Deserializer::from_slice(json);
    let report: Report = serde_path_to_error::deserialize(de)
        .map_err(|e| TrivyError::Malformed(format!("{}: {}", e.path(), e.inner())))?;
    if report.schema_version != 2 {
        return Err(TrivyError::SchemaVersion(report.schema_version));
    }
    let scanned_at = match &report.created_at {
        None => None,
        Some(text) => Some(
            text.parse::<jiff::Timestamp>()
                .map(SystemTime::from)
                .map_err(|_| TrivyError::CreatedAt(text.clone()))?,
        ),
    };
    let repo_digests = report.metadata.repo_digests.unwrap_or_default();
    let digest = repo_digests
        .iter()
        .find_map(|d| d.split_once('@'))
        .map(|(_, digest)| digest.to_owned());
    let findings = report
        .results
        .into_iter()
        .flatten()
        .flat_map(|r| r.vulnerabilities.into_iter().flatten())
        .map(|v| Finding {
            severity: v.severity,
            fixable: v.fixed_version.is_some_and(|f| !f.trim().is_empty()),
            id: VulnId::new(&v.vulnerability_id),
        });
    Ok(TrivyReport {
        artifact_name: report.artifact_name,
        repo_tags: report.metadata.repo_tags.unwrap_or_default(),
        repo_digests,
        digest,
        report: ScanReport::new(scanned_at, findings),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Shaped as `trivy image --format json` writes it (SchemaVersion 2): findings per
    /// target, one CVE in two packages, a vulnerability without a fix.
    const REPORT: &str = r#"{
      "SchemaVersion": 2,
      "CreatedAt": "2026-11-20T10:00:00.123456789Z",
      "ArtifactName": "nginx:1.25",
      "ArtifactType": "container_image",
      "Metadata": {
        "OS": {"Family": "debian", "Name": "12.5"},
        "ImageID": "sha256:aaaa",
        "RepoTags": ["nginx:1.25"],
        "RepoDigests": ["nginx@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"]
      },
      "Results": [
        {"Target": "nginx:1.25 (debian 12.5)", "Class": "os-pkgs", "Type": "debian", "Vulnerabilities": [
          {"VulnerabilityID": "CVE-2024-1", "PkgName": "openssl", "InstalledVersion": "3.0.1", "FixedVersion": "3.0.2", "Severity": "CRITICAL"},
          {"VulnerabilityID": "CVE-2024-1", "PkgName": "libssl3", "InstalledVersion": "3.0.1", "FixedVersion": "", "Severity": "HIGH"},
          {"VulnerabilityID": "CVE-2024-2", "PkgName": "zlib", "InstalledVersion": "1.2", "Severity": "LOW"}
        ]},
        {"Target": "usr/bin/app", "Class": "lang-pkgs", "Type": "gobinary", "Vulnerabilities": null},
        {"Target": "Node.js", "Class": "lang-pkgs", "Type": "node-pkg"}
      ]
    }"#;

    #[test]
    fn reads_findings_identity_and_time() {
        let t = parse(REPORT.as_bytes()).unwrap();
        assert_eq!(t.artifact_name.as_deref(), Some("nginx:1.25"));
        assert_eq!(t.repo_tags, ["nginx:1.25"]);
        assert_eq!(
            t.digest.as_deref(),
            Some("sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef")
        );
        let expected_time: jiff::Timestamp = "2026-11-20T10:00:00.123456789Z".parse().unwrap();
        assert_eq!(t.report.scanned_at, Some(SystemTime::from(expected_time)));
        let findings: Vec<(String, Severity, bool)> = t
            .report
            .findings()
            .iter()
            .map(|f| (f.id.to_string(), f.severity, f.fixable))
            .collect();
        assert_eq!(
            findings,
            [
                ("CVE-2024-1".to_owned(), Severity::Critical, true),
                ("CVE-2024-2".to_owned(), Severity::Low, false)
            ]
        );
    }

    #[test]
    fn rejects_what_is_not_a_v2_report() {
        assert!(matches!(parse(b"[]"), Err(TrivyError::Malformed(_))));
        assert!(matches!(
            parse(br#"{"SchemaVersion": 1}"#),
            Err(TrivyError::SchemaVersion(1))
        ));
        assert!(matches!(
            parse(br#"{"SchemaVersion": 2, "CreatedAt": "yesterday"}"#),
            Err(TrivyError::CreatedAt(_))
        ));
        let minimal = parse(br#"{"SchemaVersion": 2}"#).unwrap();
        assert!(minimal.report.findings().is_empty() && minimal.report.scanned_at.is_none());
        assert!(matches!(
            parse(br#"{"SchemaVersion": 2, "Results": [{"Vulnerabilities": [{"Severity": "HIGH"}]}]}"#),
            Err(TrivyError::Malformed(m)) if m.contains("VulnerabilityID")
        ));
    }

    /// Severities in any case count as what they say; anything else is no severity at
    /// all: the report is refused, never read as Unknown.
    #[test]
    fn severities_in_any_case_and_nothing_else() {
        let with = |severity: &str| {
            parse(
                format!(
                    r#"{{"SchemaVersion": 2, "Results": [{{"Vulnerabilities": [
                {{"VulnerabilityID": "CVE-1", "Severity": "{severity}"}}]}}]}}"#
                )
                .as_bytes(),
            )
        };
        for (written, severity) in [
            ("CRITICAL", Severity::Critical),
            ("Critical", Severity::Critical),
            ("critical", Severity::Critical),
            ("High", Severity::High),
            ("unknown", Severity::Unknown),
        ] {
            assert_eq!(
                with(written).unwrap().report.findings()[0].severity,
                severity
            );
        }
        for bad in ["Severe", "", "CRIT"] {
            assert!(
                matches!(with(bad), Err(TrivyError::Malformed(m)) if m.contains("Results[0].Vulnerabilities[0].Severity")),
                "{bad:?}"
            );
        }
    }
}
