//! Simulated scanners served over HTTPS by the tests, answering in the real APIs'
//! documented shapes:
//! - Harbor v2.0 (`/api/v2.0/projects/{project}/repositories/{repository}/artifacts/
//!   {reference}?with_scan_overview=true`, `…/additions/vulnerabilities`, `POST …/scan`),
//!   as in Harbor's swagger (`Artifact.scan_overview` keyed by report MIME type,
//!   `NativeReportSummary.scan_status`, `VulnerabilityItem`);
//! - a Trivy-JSON endpoint (`GET /reports/{digest}` answering `trivy image --format json`,
//!   `SchemaVersion: 2`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::TestServer;
use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::json;

/// The Harbor report MIME type the simulator answers with.
pub const MIME: &str = "application/vnd.security.vulnerability.report; version=1.1";

/// How the simulated scanner misbehaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Answers as the API does.
    Normal,
    /// Not JSON.
    Garbage,
    /// Answers after this long.
    Slow(Duration),
    /// A 20 MiB body.
    Huge,
    /// Answers for another digest.
    WrongDigest,
}

/// What one digest's scan looks like in the simulator.
#[derive(Debug, Clone)]
pub enum Scan {
    /// Finished, with `(id, severity as the API spells it, fixed version)`.
    Done(Vec<(&'static str, &'static str, &'static str)>),
    /// Queued or running.
    Pending,
    /// Known artifact, never scanned.
    NotScanned,
}

/// Shared state of a simulated scanner; tests change it while it runs.
#[derive(Default)]
pub struct Sim {
    /// The scans by digest.
    pub scans: Mutex<HashMap<String, Scan>>,
    /// The current misbehaviour.
    pub mode: Mutex<Option<Mode>>,
    /// GETs answered (each backend call of a lookup counts).
    pub hits: AtomicUsize,
    /// `POST …/scan` received.
    pub scan_requests: AtomicUsize,
}

impl Sim {
    /// A simulator holding `scans`.
    pub fn with(scans: &[(&str, Scan)]) -> Arc<Self> {
        let sim = Sim::default();
        *sim.scans.lock().unwrap_or_else(|e| e.into_inner()) = scans
            .iter()
            .map(|(d, s)| ((*d).to_owned(), s.clone()))
            .collect();
        Arc::new(sim)
    }

    /// Changes how it answers from now on.
    pub fn set_mode(&self, mode: Mode) {
        *self.mode.lock().unwrap_or_else(|e| e.into_inner()) = Some(mode);
    }

    /// GETs answered so far.
    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    /// Counts the hit and applies the mode: `Some(response)` answers instead.
    async fn misbehave(&self) -> Option<Response> {
        self.hits.fetch_add(1, Ordering::SeqCst);
        let mode = self
            .mode
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .unwrap_or(Mode::Normal);
        match mode {
            Mode::Garbage => Some((StatusCode::OK, "<html>502 Bad Gateway</html>").into_response()),
            Mode::Slow(delay) => {
                tokio::time::sleep(delay).await;
                None
            }
            Mode::Huge => Some(
                (
                    StatusCode::OK,
                    [("content-type", "application/json")],
                    vec![b' '; 20 * 1024 * 1024],
                )
                    .into_response(),
            ),
            Mode::Normal | Mode::WrongDigest => None,
        }
    }

    /// The simulated scan of `digest`.
    fn scan(&self, digest: &str) -> Option<Scan> {
        self.scans
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(digest)
            .cloned()
    }

    fn wrong_digest(&self) -> bool {
        *self.mode.lock().unwrap_or_else(|e| e.into_inner()) == Some(Mode::WrongDigest)
    }
}

/// The digest a `WrongDigest` simulator names instead of the one asked for.
pub const OTHER_DIGEST: &str =
    "sha256:9999999999999999999999999999999999999999999999999999999999999999";

/// Harbor v2.0's artifact and vulnerability endpoints.
pub fn harbor(sim: Arc<Sim>) -> Router {
    Router::new()
        .route(
            "/api/v2.0/projects/{project}/repositories/{repository}/artifacts/{reference}",
            get(harbor_artifact),
        )
        .route(
            "/api/v2.0/projects/{project}/repositories/{repository}/artifacts/{reference}/additions/vulnerabilities",
            get(harbor_vulnerabilities),
        )
        .route(
            "/api/v2.0/projects/{project}/repositories/{repository}/artifacts/{reference}/scan",
            post(harbor_scan),
        )
        .with_state(sim)
}

async fn harbor_artifact(
    State(sim): State<Arc<Sim>>,
    Path((_project, _repository, reference)): Path<(String, String, String)>,
) -> Response {
    if let Some(response) = sim.misbehave().await {
        return response;
    }
    let scan = sim.scan(&reference);
    let Some(scan) = scan else {
        return (
            StatusCode::NOT_FOUND,
            axum::Json(json!({"errors": [{"code": "NOT_FOUND", "message": "artifact not found"}]})),
        )
            .into_response();
    };
    let digest = if sim.wrong_digest() {
        OTHER_DIGEST.to_owned()
    } else {
        reference
    };
    let overview = match scan {
        Scan::NotScanned => json!({}),
        Scan::Pending => {
            json!({MIME: {"report_id": "r1", "scan_status": "Running", "complete_percent": 40}})
        }
        Scan::Done(_) => json!({MIME: {
            "report_id": "r1", "scan_status": "Success", "severity": "Critical", "duration": 12,
            "start_time": "2026-11-20T09:59:48Z", "end_time": "2026-11-20T10:00:00Z", "complete_percent": 100,
            "scanner": {"name": "Trivy", "vendor": "Aqua Security", "version": "v0.50.1"},
            "summary": {"total": 2, "fixable": 1, "summary": {"Critical": 1, "Low": 1}}
        }}),
    };
    axum::Json(json!({
        "id": 7, "type": "IMAGE", "media_type": "application/vnd.oci.image.config.v1+json",
        "manifest_media_type": "application/vnd.oci.image.manifest.v1+json",
        "project_id": 2, "repository_id": 5, "digest": digest, "size": 1234,
        "push_time": "2026-11-20T09:00:00Z", "tags": [{"name": "v1"}],
        "scan_overview": overview
    }))
    .into_response()
}

async fn harbor_vulnerabilities(
    State(sim): State<Arc<Sim>>,
    Path((_project, _repository, reference)): Path<(String, String, String)>,
) -> Response {
    if let Some(response) = sim.misbehave().await {
        return response;
    }
    let scan = sim.scan(&reference);
    let Some(Scan::Done(findings)) = scan else {
        return axum::Json(json!({})).into_response();
    };
    let vulnerabilities: Vec<_> = findings
        .iter()
        .map(|(id, severity, fixed)| {
            json!({"id": id, "package": "openssl", "version": "3.0.1", "fix_version": fixed,
                   "severity": severity, "description": "d", "links": ["https://avd.aquasec.com/nvd/x"]})
        })
        .collect();
    axum::Json(json!({MIME: {
        "generated_at": "2026-11-20T10:00:00Z",
        "scanner": {"name": "Trivy", "vendor": "Aqua Security", "version": "v0.50.1"},
        "severity": "Critical",
        "vulnerabilities": vulnerabilities
    }}))
    .into_response()
}

async fn harbor_scan(
    State(sim): State<Arc<Sim>>,
    Path((_project, _repository, reference)): Path<(String, String, String)>,
) -> StatusCode {
    sim.scan_requests.fetch_add(1, Ordering::SeqCst);
    sim.scans
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(reference, Scan::Pending);
    StatusCode::ACCEPTED
}

/// A Trivy-JSON endpoint: `GET /reports/{digest}`.
pub fn trivy_json(sim: Arc<Sim>) -> Router {
    Router::new()
        .route("/reports/{digest}", get(trivy_report))
        .with_state(sim)
}

async fn trivy_report(State(sim): State<Arc<Sim>>, Path(digest): Path<String>) -> Response {
    if let Some(response) = sim.misbehave().await {
        return response;
    }
    let scan = sim.scan(&digest);
    let findings = match scan {
        None | Some(Scan::NotScanned) => return StatusCode::NOT_FOUND.into_response(),
        Some(Scan::Pending) => return StatusCode::ACCEPTED.into_response(),
        Some(Scan::Done(findings)) => findings,
    };
    let named = if sim.wrong_digest() {
        OTHER_DIGEST
    } else {
        digest.as_str()
    };
    let vulnerabilities: Vec<_> = findings
        .iter()
        .map(|(id, severity, fixed)| {
            json!({"VulnerabilityID": id, "PkgName": "openssl", "InstalledVersion": "3.0.1",
                   "FixedVersion": fixed, "Severity": severity})
        })
        .collect();
    axum::Json(json!({
        "SchemaVersion": 2,
        "CreatedAt": "2026-11-20T10:00:00Z",
        "ArtifactName": "registry.example.com/acme/api:v1",
        "ArtifactType": "container_image",
        "Metadata": {"RepoTags": ["registry.example.com/acme/api:v1"],
                     "RepoDigests": [format!("registry.example.com/acme/api@{named}")]},
        "Results": [{"Target": "registry.example.com/acme/api:v1 (debian 12.5)", "Class": "os-pkgs",
                     "Type": "debian", "Vulnerabilities": vulnerabilities}]
    }))
    .into_response()
}

/// A simulated scanner served over HTTPS; its CA is `server.certs.ca_pem`.
pub async fn serve(router: Router) -> std::io::Result<TestServer> {
    TestServer::start_router(router).await
}
