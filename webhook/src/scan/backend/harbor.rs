//! `spec.scanner.harbor`: Harbor's v2.0 API. The artifact (`with_scan_overview=true`)
//! says whether a scan exists and its status; its `additions/vulnerabilities` holds the
//! findings; `POST …/scan` asks for one.

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use futures::FutureExt;
use futures::future::BoxFuture;
use portcullis_crds::Severity;
use serde::Deserialize;

use super::{Backend, BackendError, Outcome, Target, decode, https_client, send_capped};
use crate::scan::credentials::Login;
use crate::scan::{Finding, ScanReport, VulnId, parse_severity};

/// The report formats asked for, newest first (`X-Accept-Vulnerabilities`).
const REPORT_MIME_TYPES: [&str; 2] = [
    "application/vnd.security.vulnerability.report; version=1.1",
    "application/vnd.scanner.adapter.vuln.report.harbor+json; version=1.0",
];

/// A Harbor instance.
pub struct Harbor {
    base: String,
    client: reqwest::Client,
    login: Option<Login>,
    timeout: Duration,
}

#[derive(Deserialize)]
struct Artifact {
    digest: String,
    #[serde(default)]
    scan_overview: Option<HashMap<String, Overview>>,
}

#[derive(Deserialize)]
struct Overview {
    #[serde(default)]
    scan_status: String,
    #[serde(default)]
    end_time: Option<String>,
}

#[derive(Deserialize)]
struct VulnerabilityReport {
    #[serde(default)]
    generated_at: Option<String>,
    #[serde(default)]
    vulnerabilities: Option<Vec<Vulnerability>>,
}

#[derive(Deserialize)]
struct Vulnerability {
    id: String,
    #[serde(deserialize_with = "harbor_severity")]
    severity: Severity,
    #[serde(default)]
    fix_version: Option<String>,
}

impl Harbor {
    /// Harbor at `url` (https); `login` (from the integration's credentials Secret) is
    /// sent as basic auth.
    pub fn new(
        url: &str,
        ca_bundle: Option<&str>,
        login: Option<Login>,
        timeout: Duration,
    ) -> Result<Self, String> {
        Ok(Harbor {
            base: url.trim_end_matches('/').to_owned(),
            client: https_client(ca_bundle, timeout)?,
            login,
            timeout,
        })
    }

    /// `…/projects/{project}/repositories/{repository}/artifacts/{digest}`; Harbor wants a
    /// repository name containing `/` URL-encoded twice (`a/b` → `a%252Fb`).
    fn artifact_url(&self, target: &Target) -> Option<String> {
        let (project, repository) = target.path.split_once('/')?;
        Some(format!(
            "{}/api/v2.0/projects/{project}/repositories/{}/artifacts/{}",
            self.base,
            repository.replace('/', "%252F"),
            target.digest
        ))
    }

    fn request(&self, method: reqwest::Method, url: &str) -> reqwest::RequestBuilder {
        let request = self
            .client
            .request(method, url)
            .header(reqwest::header::ACCEPT, "application/json")
            .header("X-Accept-Vulnerabilities", REPORT_MIME_TYPES.join(", "));
        match &self.login {
            Some(login) => request.basic_auth(&login.username, Some(&login.password)),
            None => request,
        }
    }

    async fn get(&self, target: &Target, scan_on_demand: bool) -> Result<Outcome, BackendError> {
        // Harbor keeps every repository inside a project: a path without one is not there.
        let Some(url) = self.artifact_url(target) else {
            return Ok(Outcome::NotFound);
        };
        let request = self.request(
            reqwest::Method::GET,
            &format!("{url}?with_scan_overview=true"),
        );
        let artifact: Artifact = match send_capped(request, self.timeout).await? {
            Ok(body) => decode(&body)?,
            Err(404) => return Ok(Outcome::NotFound),
            Err(status) => return Err(status_error(status)),
        };
        if artifact.digest != target.digest {
            return Err(BackendError::WrongDigest {
                asked: target.digest.clone(),
                got: artifact.digest,
            });
        }
        let overview = artifact
            .scan_overview
            .as_ref()
            .and_then(|o| REPORT_MIME_TYPES.iter().find_map(|mime| o.get(*mime)));
        match overview.map(|o| o.scan_status.as_str()) {
            Some("Success") => {}
            Some("Pending" | "Running" | "Scheduled") => return Ok(Outcome::Pending),
            // Never scanned, or the last scan stopped or failed.
            _ if scan_on_demand => return self.scan(&url).await,
            _ => return Ok(Outcome::NotFound),
        }
        // Without generated_at, the scan's end time; without that, unknown.
        let fallback = overview
            .and_then(|o| o.end_time.as_deref())
            .and_then(|t| t.parse::<jiff::Timestamp>().ok())
            .map(SystemTime::from);
        let request = self.request(
            reqwest::Method::GET,
            &format!("{url}/additions/vulnerabilities"),
        );
        let reports: HashMap<String, VulnerabilityReport> =
            match send_capped(request, self.timeout).await? {
                Ok(body) => decode(&body)?,
                Err(status) => return Err(status_error(status)),
            };
        let report = REPORT_MIME_TYPES
            .iter()
            .find_map(|mime| reports.get(*mime))
            .ok_or_else(|| {
                BackendError::Malformed(format!(
                    "additions/vulnerabilities has none of {}",
                    REPORT_MIME_TYPES.join(", ")
                ))
            })?;
        let scanned_at = match &report.generated_at {
            Some(text) => Some(
                text.parse::<jiff::Timestamp>()
                    .map(SystemTime::from)
                    .map_err(|_| {
                        BackendError::Malformed(format!(
                            "generated_at {text:?} is not an RFC 3339 time"
                        ))
                    })?,
            ),
            None => fallback,
        };
        let findings = report.vulnerabilities.iter().flatten().map(|v| Finding {
            id: VulnId::new(&v.id),
            severity: v.severity,
            fixable: v
                .fix_version
                .as_deref()
                .is_some_and(|f| !f.trim().is_empty()),
        });
        Ok(Outcome::Report(ScanReport::new(scanned_at, findings)))
    }

    /// Asks Harbor to scan the artifact; 202 (accepted) and 409 (already scanning)
    /// both mean a result is on its way.
    async fn scan(&self, artifact_url: &str) -> Result<Outcome, BackendError> {
        let request = self.request(reqwest::Method::POST, &format!("{artifact_url}/scan"));
        match send_capped(request, self.timeout).await? {
            Ok(_) | Err(202 | 409) => Ok(Outcome::Pending),
            Err(404) => Ok(Outcome::NotFound),
            Err(status) => Err(status_error(status)),
        }
    }
}

fn status_error(status: u16) -> BackendError {
    match status {
        401 | 403 => BackendError::Denied(format!("Harbor answered HTTP {status}")),
        _ => BackendError::Status(status),
    }
}

/// Harbor's severities: the five names in any case, and `Negligible`, Harbor's name for
/// the lowest real one; anything else makes the answer malformed.
fn harbor_severity<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Severity, D::Error> {
    let name = <std::borrow::Cow<'de, str> as Deserialize>::deserialize(d)?;
    if name.eq_ignore_ascii_case("negligible") {
        return Ok(Severity::Low);
    }
    parse_severity(&name)
        .ok_or_else(|| serde::de::Error::custom(format!("unknown severity {name:?}")))
}

impl Backend for Harbor {
    fn fetch<'a>(
        &'a self,
        target: &'a Target,
        scan_on_demand: bool,
    ) -> BoxFuture<'a, Result<Outcome, BackendError>> {
        self.get(target, scan_on_demand).boxed()
    }
}
