//! Scanner backends: where a digest's scan result comes from. One trait, one
//! implementation per `spec.scanner` kind.

pub mod harbor;
pub mod http;
pub mod trivy_operator;

use std::time::Duration;

use futures::future::BoxFuture;

use super::ScanReport;

/// The largest response body read from a scanner; larger ones are refused.
pub const MAX_RESPONSE: usize = 16 * 1024 * 1024;

/// The image a backend is asked about: where it lives and its digest.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Target {
    /// Registry host (and port).
    pub registry: String,
    /// Repository path within the registry (`project/app`).
    pub path: String,
    /// `sha256:…`.
    pub digest: String,
}

/// A definitive answer from a scanner.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// The scan result.
    Report(ScanReport),
    /// The scanner has no result for this digest (and was not asked to scan it).
    NotFound,
    /// A scan is queued or running.
    Pending,
}

/// A failure to get an answer: logged, counted, reported on the integration's status,
/// never shown in a deny message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BackendError {
    /// No answer within the deadline.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// Connection or TLS failure.
    #[error("unreachable: {0}")]
    Unreachable(String),
    /// An HTTP status that means neither a result nor "not found".
    #[error("answered HTTP {0}")]
    Status(u16),
    /// A redirect, which is never followed.
    #[error("answered a redirect (HTTP {0}), which is not followed")]
    Redirect(u16),
    /// A body over [`MAX_RESPONSE`].
    #[error("response larger than {0} bytes")]
    TooLarge(usize),
    /// A body not in the API's shape.
    #[error("malformed response: {0}")]
    Malformed(String),
    /// A result for another artifact than the one asked for.
    #[error("answered for digest {got}, not {asked}")]
    WrongDigest {
        /// The digest requested.
        asked: String,
        /// What the response named.
        got: String,
    },
    /// The registry refused the credentials (or has none for an anonymous pull).
    #[error("the registry refused access: {0}")]
    Denied(String),
    /// The credentials Secret named by the integration is missing or unusable.
    #[error("credentials: {0}")]
    Credentials(String),
    /// The in-cluster report index has not finished its first list.
    #[error("VulnerabilityReports are not synced yet")]
    NotSynced,
    /// The integration's settings cannot make a client (a bad caBundle).
    #[error("configuration: {0}")]
    Config(String),
    /// Not called: the address is one Portcullis never calls for a Pod's image.
    #[error("not called: {0}")]
    Refused(String),
    /// Not called: this many calls to the integration were in flight already.
    #[error("not called: {0} calls to this integration are in flight")]
    Busy(usize),
}

/// A scanner that answers for digests.
pub trait Backend: Send + Sync {
    /// What the scanner knows about `target`. With `scan_on_demand`, a digest it has
    /// no result for is submitted for scanning (and answers `Pending`).
    fn fetch<'a>(
        &'a self,
        target: &'a Target,
        scan_on_demand: bool,
    ) -> BoxFuture<'a, Result<Outcome, BackendError>>;
}

/// An https-only client for a scanner URL: no redirects, TLS 1.2+, a deadline per call,
/// and an extra CA when the integration gives one.
pub fn https_client(ca_bundle: Option<&str>, timeout: Duration) -> Result<reqwest::Client, String> {
    let mut builder = reqwest::Client::builder()
        .https_only(true)
        .redirect(reqwest::redirect::Policy::none())
        .tls_version_min(reqwest::tls::Version::TLS_1_2)
        .timeout(timeout)
        .connect_timeout(timeout)
        .user_agent(concat!("portcullis/", env!("CARGO_PKG_VERSION")));
    if let Some(pem) = ca_bundle {
        for cert in ca_certificates(pem)? {
            builder = builder.add_root_certificate(cert);
        }
    }
    builder
        .build()
        .map_err(|e| format!("building the HTTPS client: {e}"))
}

/// The certificates of a `caBundle`; an error when it is not PEM or holds none.
pub fn ca_certificates(pem: &str) -> Result<Vec<reqwest::Certificate>, String> {
    let certs = reqwest::Certificate::from_pem_bundle(pem.as_bytes())
        .map_err(|e| format!("caBundle is not PEM certificates: {e}"))?;
    if certs.is_empty() {
        return Err("caBundle holds no certificate".into());
    }
    Ok(certs)
}

/// Maps a transport error; `timeout` is the deadline the client was built with.
fn transport(error: reqwest::Error, timeout: Duration) -> BackendError {
    if error.is_timeout() {
        BackendError::Timeout(timeout)
    } else {
        BackendError::Unreachable(error_chain(&error.without_url()))
    }
}

/// An error and its causes, as one line (`error sending request: client error
/// (Connect): invalid peer certificate: CaUsedAsEndEntity`); a cause whose text its
/// parent already holds is not repeated.
pub fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut line = error.to_string();
    let mut cause = error.source();
    while let Some(current) = cause {
        let text = current.to_string();
        if !line.contains(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
        cause = current.source();
    }
    line
}

/// Sends a GET (or the given request) and reads at most [`MAX_RESPONSE`] bytes of a 2xx
/// answer; `Ok(Err(status))` is a status the caller interprets (404, 202…).
async fn send_capped(
    request: reqwest::RequestBuilder,
    timeout: Duration,
) -> Result<Result<Vec<u8>, u16>, BackendError> {
    let mut response = request.send().await.map_err(|e| transport(e, timeout))?;
    let status = response.status();
    if status.is_redirection() {
        return Err(BackendError::Redirect(status.as_u16()));
    }
    if status != reqwest::StatusCode::OK {
        return Ok(Err(status.as_u16()));
    }
    if response
        .content_length()
        .is_some_and(|n| n > MAX_RESPONSE as u64)
    {
        return Err(BackendError::TooLarge(MAX_RESPONSE));
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|e| transport(e, timeout))? {
        if body.len() + chunk.len() > MAX_RESPONSE {
            return Err(BackendError::TooLarge(MAX_RESPONSE));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(Ok(body))
}

/// Decodes a JSON body strictly into `T`, naming the path of the first bad field.
fn decode<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, BackendError> {
    let de = &mut serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(de)
        .map_err(|e| BackendError::Malformed(format!("{}: {}", e.path(), e.inner())))
}

impl BackendError {
    /// Whether the error says the host itself is down (what a breaker counts), rather
    /// than something about the one image asked for.
    pub fn is_host_down(&self) -> bool {
        match self {
            BackendError::Timeout(_) | BackendError::Unreachable(_) => true,
            BackendError::Status(status) => *status >= 500,
            _ => false,
        }
    }

    /// Whether the error arose here, before any call (credentials, configuration, the
    /// in-cluster index not synced): it says nothing about the host.
    pub fn is_local(&self) -> bool {
        matches!(
            self,
            BackendError::Credentials(_)
                | BackendError::Config(_)
                | BackendError::NotSynced
                | BackendError::Refused(_)
                | BackendError::Busy(_)
        )
    }

    /// A short label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            BackendError::Timeout(_) => "timeout",
            BackendError::Unreachable(_) => "unreachable",
            BackendError::Status(_) => "status",
            BackendError::Redirect(_) => "redirect",
            BackendError::TooLarge(_) => "too_large",
            BackendError::Malformed(_) => "malformed",
            BackendError::WrongDigest { .. } => "wrong_digest",
            BackendError::Denied(_) => "denied",
            BackendError::Credentials(_) => "credentials",
            BackendError::NotSynced => "not_synced",
            BackendError::Config(_) => "config",
            BackendError::Refused(_) => "refused",
            BackendError::Busy(_) => "busy",
        }
    }
}
