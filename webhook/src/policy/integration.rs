//! `RegistryIntegrationSpec` → `CompiledIntegration`.

use std::collections::HashSet;
use std::time::Duration;

use portcullis_crds::{RegistryIntegrationSpec, UrlScanner};

use super::{Errors, FieldError, ObjectVersion};
use crate::glob::Glob;
use crate::image::canonical_registry;
use crate::scan::registry::strip_port;

/// Which scanner an integration reads results from.
#[derive(Debug, Clone, PartialEq)]
pub enum ScannerKind {
    /// Harbor v2.0 API at this base URL.
    Harbor(UrlScanner),
    /// trivy-operator VulnerabilityReports in the cluster.
    TrivyOperator,
    /// `GET {url}/{digest}` answering Trivy JSON.
    Http(UrlScanner),
}

impl ScannerKind {
    /// The scanner's host: the URL's authority, canonical as registries are named.
    fn host(&self) -> String {
        match self {
            ScannerKind::Harbor(s) | ScannerKind::Http(s) => s
                .url
                .parse::<axum::http::Uri>()
                .ok()
                .and_then(|uri| uri.authority().map(|a| canonical_registry(a.as_str())))
                .unwrap_or_else(|| s.url.clone()),
            ScannerKind::TrivyOperator => "trivy-operator".to_owned(),
        }
    }
}

/// A validated RegistryIntegration.
#[derive(Debug, Clone)]
pub struct CompiledIntegration {
    /// `metadata.name`.
    pub name: String,
    /// The object version compiled, where it has one (the cluster's).
    pub version: ObjectVersion,
    /// Repositories covered.
    pub registries: Vec<Glob>,
    /// The scanner.
    pub scanner: ScannerKind,
    /// The scanner's host, as breakers and logs name it (`trivy-operator` for reports
    /// read from the cluster).
    pub scanner_host: String,
    /// The credentials Secret's name, if any.
    pub credentials_secret: Option<String>,
    /// PEM CA for the registries' TLS.
    pub ca_bundle: Option<String>,
    /// Talk to the registries over http.
    pub plain_http: bool,
    /// Ask the scanner to scan unknown digests.
    pub scan_on_demand: bool,
    /// How long a result is fresh.
    pub cache_ttl: Duration,
    /// Deadline of each backend call.
    pub timeout: Duration,
    /// How long past `cache_ttl` a tag's digest serves while it cannot be refreshed.
    pub max_tag_age: Duration,
    /// The registry hosts `registries` names literally (no `*`): only these may be
    /// loopback, link-local or metadata addresses.
    pub explicit_hosts: HashSet<String>,
}

/// Validates and compiles a RegistryIntegration spec.
pub fn compile_integration(
    name: &str,
    spec: &RegistryIntegrationSpec,
) -> Result<CompiledIntegration, Vec<FieldError>> {
    let mut errors = Errors::default();
    if spec.registries.is_empty() {
        errors.push("spec.registries", "must list at least one repository glob");
    }
    let registries = errors
        .globs("spec.registries", Some(&spec.registries), Glob::repository)
        .unwrap_or_default();
    let s = &spec.scanner;
    let given = [
        s.harbor.is_some(),
        s.trivy_operator.is_some(),
        s.http.is_some(),
    ]
    .iter()
    .filter(|g| **g)
    .count();
    if given != 1 {
        errors.push(
            "spec.scanner",
            format!("exactly one of harbor, trivyOperator or http must be set (got {given})"),
        );
    }
    let mut url = |field: &str, scanner: &UrlScanner| {
        if let Err(message) = validate_https_url(&scanner.url) {
            errors.push(format!("spec.scanner.{field}.url"), message);
        }
    };
    let scanner = match (&s.harbor, &s.trivy_operator, &s.http) {
        (Some(h), _, _) => {
            url("harbor", h);
            ScannerKind::Harbor(h.clone())
        }
        (None, _, Some(h)) => {
            url("http", h);
            ScannerKind::Http(h.clone())
        }
        _ => ScannerKind::TrivyOperator,
    };
    let credentials_secret = spec.credentials.as_ref().map(|c| c.secret_ref.name.clone());
    if credentials_secret.as_deref() == Some("") {
        errors.push("spec.credentials.secretRef.name", "must not be empty");
    }
    let cache_ttl = errors
        .duration("spec.cacheTTL", &spec.cache_ttl)
        .unwrap_or_default();
    let timeout = errors
        .duration("spec.timeout", &spec.timeout)
        .unwrap_or_default();
    if timeout.is_zero() {
        errors.push("spec.timeout", "must be greater than 0");
    }
    let max_tag_age = errors
        .duration("spec.maxTagAge", &spec.max_tag_age)
        .unwrap_or_default();
    let explicit_hosts = registries
        .iter()
        .filter_map(|glob| {
            let normalized = glob.normalized();
            let host = strip_port(normalized.split('/').next()?).to_owned();
            (!host.contains('*')).then_some(host)
        })
        .collect();
    errors.finish(CompiledIntegration {
        name: name.to_owned(),
        version: ObjectVersion::default(),
        registries,
        scanner_host: scanner.host(),
        scanner,
        credentials_secret,
        ca_bundle: spec.ca_bundle.clone().filter(|ca| !ca.trim().is_empty()),
        plain_http: spec.plain_http,
        scan_on_demand: spec.scan_on_demand,
        cache_ttl,
        timeout,
        max_tag_age,
        explicit_hosts,
    })
}

/// Backend URLs are https, with a host, and carry no credentials.
pub(crate) fn validate_https_url(url: &str) -> Result<(), String> {
    let uri: axum::http::Uri = url
        .parse()
        .map_err(|e| format!("{url:?} is not a URL: {e}"))?;
    if uri.scheme_str() != Some("https") {
        return Err(format!("{url:?} must use https"));
    }
    match uri.authority() {
        None => Err(format!("{url:?} has no host")),
        Some(a) if a.as_str().contains('@') => {
            Err("must not carry credentials; use spec.credentials".into())
        }
        Some(_) => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errors(json: &str) -> Vec<String> {
        let spec: RegistryIntegrationSpec = serde_json::from_str(json).unwrap();
        compile_integration("r", &spec)
            .err()
            .unwrap_or_default()
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    #[test]
    fn valid_integration_compiles_with_defaults() {
        let spec: RegistryIntegrationSpec =
            serde_json::from_str(r#"{"registries":["harbor.acme.com/**"],"scanner":{"harbor":{"url":"https://harbor.acme.com"}}}"#).unwrap();
        let c = compile_integration("r", &spec).unwrap();
        assert_eq!(
            (c.cache_ttl, c.timeout, c.scan_on_demand),
            (Duration::from_secs(86400), Duration::from_secs(2), true)
        );
        assert!(c.registries[0].matches("harbor.acme.com/a/b"));
    }

    #[test]
    fn rejects_bad_specs_by_field() {
        assert_eq!(
            errors(
                r#"{"registries":[],"scanner":{"harbor":{"url":"http://h"},"http":{"url":"https://x"}},"timeout":"0s","cacheTTL":"1 day"}"#
            ),
            [
                "spec.registries: must list at least one repository glob",
                "spec.scanner: exactly one of harbor, trivyOperator or http must be set (got 2)",
                "spec.scanner.harbor.url: \"http://h\" must use https",
                "spec.cacheTTL: \"1 day\" is not a duration (use a Go duration such as 2s, 30m or 168h)",
                "spec.timeout: must be greater than 0",
            ]
        );
        assert_eq!(
            errors(r#"{"registries":["x.io/**"],"scanner":{"http":{"url":"https://u:p@scans"}}}"#),
            ["spec.scanner.http.url: must not carry credentials; use spec.credentials"]
        );
    }
}
