//! Tag → digest through the OCI distribution API (`HEAD /v2/<name>/manifests/<tag>`).

use std::time::Duration;

use oci_client::client::{Certificate, CertificateEncoding, ClientConfig, ClientProtocol};
use oci_client::errors::{OciDistributionError, OciErrorCode};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};

use super::backend::BackendError;
use super::credentials::Login;

/// How a tag resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resolved {
    /// The digest the tag points at.
    Digest(String),
    /// The registry has no such repository or tag.
    NotFound,
}

/// A client for one registry with one set of credentials. oci-client keeps the first
/// credentials it sees per registry, so rotated credentials get a new `RegistryClient`.
pub struct RegistryClient {
    client: Client,
    auth: RegistryAuth,
    timeout: Duration,
}

impl RegistryClient {
    /// A client speaking https (or http with `plain_http`), trusting `ca_bundle` too.
    pub fn new(
        login: Option<&Login>,
        ca_bundle: Option<&str>,
        plain_http: bool,
        timeout: Duration,
    ) -> Self {
        let config = ClientConfig {
            protocol: if plain_http {
                ClientProtocol::Http
            } else {
                ClientProtocol::Https
            },
            extra_root_certificates: ca_bundle
                .map(|pem| Certificate {
                    encoding: CertificateEncoding::Pem,
                    data: pem.as_bytes().to_vec(),
                })
                .into_iter()
                .collect(),
            read_timeout: Some(timeout),
            connect_timeout: Some(timeout),
            ..ClientConfig::default()
        };
        let auth = match login {
            Some(l) => RegistryAuth::Basic(l.username.clone(), l.password.clone()),
            None => RegistryAuth::Anonymous,
        };
        RegistryClient {
            client: Client::new(config),
            auth,
            timeout,
        }
    }

    /// The digest of `registry/path:tag`, bounded by the client's timeout.
    pub async fn resolve(
        &self,
        registry: &str,
        path: &str,
        tag: &str,
    ) -> Result<Resolved, BackendError> {
        let reference = Reference::with_tag(registry.to_owned(), path.to_owned(), tag.to_owned());
        let call = self.client.fetch_manifest_digest(&reference, &self.auth);
        match tokio::time::timeout(self.timeout, call).await {
            Err(_) => Err(BackendError::Timeout(self.timeout)),
            Ok(Ok(digest)) if valid_digest(&digest) => Ok(Resolved::Digest(digest)),
            Ok(Ok(digest)) => Err(BackendError::Malformed(format!(
                "the registry answered digest {digest:?}"
            ))),
            Ok(Err(error)) => classify(error),
        }
    }
}

fn valid_digest(digest: &str) -> bool {
    digest
        .strip_prefix("sha256:")
        .is_some_and(|hex| hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()))
}

fn classify(error: OciDistributionError) -> Result<Resolved, BackendError> {
    match error {
        OciDistributionError::RegistryError { envelope, .. } => {
            let codes: Vec<&OciErrorCode> = envelope.errors.iter().map(|e| &e.code).collect();
            if codes.iter().any(|c| {
                matches!(
                    c,
                    OciErrorCode::ManifestUnknown
                        | OciErrorCode::NameUnknown
                        | OciErrorCode::NotFound
                )
            }) {
                Ok(Resolved::NotFound)
            } else if codes
                .iter()
                .any(|c| matches!(c, OciErrorCode::Unauthorized | OciErrorCode::Denied))
            {
                Err(BackendError::Denied(format!("{codes:?}")))
            } else {
                Err(BackendError::Unreachable(format!(
                    "registry errors {codes:?}"
                )))
            }
        }
        OciDistributionError::ServerError { code: 404, .. } => Ok(Resolved::NotFound),
        OciDistributionError::ServerError {
            code: 401 | 403, ..
        }
        | OciDistributionError::UnauthorizedError { .. } => {
            Err(BackendError::Denied("the registry answered 401/403".into()))
        }
        OciDistributionError::AuthenticationFailure(message) => Err(BackendError::Denied(message)),
        OciDistributionError::ServerError { code, .. } => Err(BackendError::Status(code)),
        OciDistributionError::RequestError(e) if e.is_timeout() => {
            Err(BackendError::Unreachable("timed out".into()))
        }
        OciDistributionError::RequestError(e) => {
            Err(BackendError::Unreachable(e.without_url().to_string()))
        }
        other => Err(BackendError::Unreachable(other.to_string())),
    }
}
