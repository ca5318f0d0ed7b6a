//! `spec.scanner.http`: `GET {url}/{digest}` answers a Trivy JSON report
//! (`SchemaVersion: 2`); 404 means no result, 202 a scan in progress.

use std::time::Duration;

use futures::FutureExt;
use futures::future::BoxFuture;

use super::{Backend, BackendError, Outcome, Target, https_client, send_capped};
use crate::scan::trivy;

/// A Trivy-JSON endpoint.
pub struct HttpScanner {
    base: String,
    client: reqwest::Client,
    timeout: Duration,
}

impl HttpScanner {
    /// A scanner at `url` (https), trusting `ca_bundle` too, each call bounded by `timeout`.
    pub fn new(url: &str, ca_bundle: Option<&str>, timeout: Duration) -> Result<Self, String> {
        Ok(HttpScanner {
            base: url.trim_end_matches('/').to_owned(),
            client: https_client(ca_bundle, timeout)?,
            timeout,
        })
    }

    async fn get(&self, target: &Target) -> Result<Outcome, BackendError> {
        let request = self
            .client
            .get(format!("{}/{}", self.base, target.digest))
            .header(reqwest::header::ACCEPT, "application/json");
        let body = match send_capped(request, self.timeout).await? {
            Ok(body) => body,
            Err(404) => return Ok(Outcome::NotFound),
            Err(202) => return Ok(Outcome::Pending),
            Err(status) => return Err(BackendError::Status(status)),
        };
        let parsed = trivy::parse(&body).map_err(|e| BackendError::Malformed(e.to_string()))?;
        let suffix = format!("@{}", target.digest);
        if !parsed.repo_digests.iter().any(|d| d.ends_with(&suffix)) {
            return Err(BackendError::WrongDigest {
                asked: target.digest.clone(),
                got: parsed
                    .digest
                    .unwrap_or_else(|| "none (Metadata.RepoDigests is empty)".into()),
            });
        }
        Ok(Outcome::Report(parsed.report))
    }
}

impl Backend for HttpScanner {
    fn fetch<'a>(
        &'a self,
        target: &'a Target,
        _scan_on_demand: bool,
    ) -> BoxFuture<'a, Result<Outcome, BackendError>> {
        self.get(target).boxed()
    }
}
