//! Tag → digest through the OCI distribution API (`HEAD /v2/<name>/manifests/<tag>`),
//! with the registry token flow (Docker's token specification) and the guards a client
//! needs when the registry hosts come from whoever creates Pods: redirects only within
//! the host, the login only to the host it is for and to a token realm on https, every
//! body capped, and no loopback, link-local or cloud-metadata address unless an
//! integration names that host explicitly.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reqwest::header::{ACCEPT, AUTHORIZATION, HeaderMap, WWW_AUTHENTICATE};
use reqwest::{Method, StatusCode};
use serde::Deserialize;

use super::backend::{BackendError, error_chain};
use super::credentials::Login;

/// The largest manifest or token body read.
const MAX_BODY: usize = 1024 * 1024;
/// Redirects followed within one host.
const MAX_REDIRECTS: usize = 5;
/// Tokens remembered (per host and scope).
const MAX_TOKENS: usize = 1024;
/// A token's life when the token service does not say.
const DEFAULT_TOKEN_LIFE: Duration = Duration::from_secs(60);
/// The manifest media types asked for: an index or a single image, OCI or Docker.
const MANIFEST_TYPES: &str = "application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.docker.distribution.manifest.v2+json";
/// What the resolver says of a name it refuses (and how its error is told apart).
const NOT_CALLED: &str = "resolves only to loopback, link-local or metadata addresses, and no integration names it explicitly";
/// Docker Hub's registry name and the host its API answers on.
const DOCKER_HUB: (&str, &str) = ("docker.io", "registry-1.docker.io");

/// How a tag resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resolved {
    /// The digest the tag points at (shared: the request path copies no text).
    Digest(Arc<str>),
    /// The registry has no such repository or tag.
    NotFound,
}

/// How to reach an integration's registries.
#[derive(Debug, Clone, Default)]
pub struct RegistrySettings {
    /// PEM CA trusted besides the system roots.
    pub ca_bundle: Option<String>,
    /// Plain http (local development registries only).
    pub plain_http: bool,
    /// Deadline of each call.
    pub timeout: Duration,
    /// Hosts the integration names literally: only these may be loopback, link-local
    /// or metadata addresses.
    pub explicit_hosts: HashSet<String>,
}

/// A client for the registries of one integration (one version of its credentials).
pub struct RegistryClient {
    client: reqwest::Client,
    settings: RegistrySettings,
    tokens: Mutex<HashMap<(String, String), (String, Instant)>>,
}

impl RegistryClient {
    /// A client with `settings`; fails on a caBundle that holds no certificate.
    pub fn new(settings: RegistrySettings) -> Result<Self, String> {
        let mut builder = reqwest::Client::builder()
            .redirect(same_host_redirects())
            .tls_version_min(reqwest::tls::Version::TLS_1_2)
            .timeout(settings.timeout)
            .connect_timeout(settings.timeout)
            .dns_resolver(Arc::new(GuardedResolver {
                explicit: settings.explicit_hosts.clone(),
            }))
            .user_agent(concat!("portcullis/", env!("CARGO_PKG_VERSION")));
        if !settings.plain_http {
            builder = builder.https_only(true);
        }
        if let Some(pem) = &settings.ca_bundle {
            for cert in super::backend::ca_certificates(pem)? {
                builder = builder.add_root_certificate(cert);
            }
        }
        let client = builder
            .build()
            .map_err(|e| format!("building the registry client: {e}"))?;
        Ok(RegistryClient {
            client,
            settings,
            tokens: Mutex::default(),
        })
    }

    /// The digest of `registry/path:tag`, with `login` for that registry.
    pub async fn resolve(
        &self,
        registry: &str,
        path: &str,
        tag: &str,
        login: Option<&Login>,
    ) -> Result<Resolved, BackendError> {
        let host = if registry == DOCKER_HUB.0 {
            DOCKER_HUB.1
        } else {
            registry
        };
        self.check_address(host)?;
        let scheme = if self.settings.plain_http {
            "http"
        } else {
            "https"
        };
        let url = format!("{scheme}://{host}/v2/{path}/manifests/{tag}");
        let scope = format!("repository:{path}:pull");
        let cached = self.token(host, &scope);
        let mut response = self.head(&url, cached.as_deref().map(Auth::Bearer)).await?;
        if response.status() == StatusCode::UNAUTHORIZED {
            let auth = match challenge(response.headers()) {
                Some(Challenge::Basic) => match login {
                    Some(login) => Auth::Basic(login),
                    None => return Err(denied(response.status())),
                },
                Some(Challenge::Bearer(params)) => {
                    let token = self.fetch_token(host, &scope, &params, login).await?;
                    return self
                        .resolved(self.head(&url, Some(Auth::Bearer(&token))).await?, &url)
                        .await;
                }
                None => return Err(denied(response.status())),
            };
            response = self.head(&url, Some(auth)).await?;
        }
        self.resolved(response, &url).await
    }

    /// Reads the digest from a manifest answer (the `Docker-Content-Digest` header, or
    /// the hash of the manifest itself when the registry leaves the header out).
    async fn resolved(
        &self,
        response: reqwest::Response,
        url: &str,
    ) -> Result<Resolved, BackendError> {
        match response.status() {
            StatusCode::OK => {}
            StatusCode::NOT_FOUND => return Ok(Resolved::NotFound),
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
                return Err(denied(response.status()));
            }
            status if status.is_redirection() => {
                return Err(BackendError::Redirect(status.as_u16()));
            }
            status => return Err(BackendError::Status(status.as_u16())),
        }
        let header = response
            .headers()
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let digest = match header {
            Some(digest) => digest,
            None => {
                let body = self.get_capped(url).await?;
                let hash = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &body);
                let hex: String = hash.as_ref().iter().map(|b| format!("{b:02x}")).collect();
                format!("sha256:{hex}")
            }
        };
        if valid_digest(&digest) {
            Ok(Resolved::Digest(digest.into()))
        } else {
            Err(BackendError::Malformed(format!(
                "the registry answered digest {digest:?}"
            )))
        }
    }

    async fn head(
        &self,
        url: &str,
        auth: Option<Auth<'_>>,
    ) -> Result<reqwest::Response, BackendError> {
        let request = self
            .client
            .request(Method::HEAD, url)
            .header(ACCEPT, MANIFEST_TYPES);
        with_auth(request, auth)
            .send()
            .await
            .map_err(|e| self.transport(e))
    }

    /// GET of a manifest (when HEAD did not name its digest), at most [`MAX_BODY`].
    async fn get_capped(&self, url: &str) -> Result<Vec<u8>, BackendError> {
        let response = self
            .client
            .get(url)
            .header(ACCEPT, MANIFEST_TYPES)
            .send()
            .await
            .map_err(|e| self.transport(e))?;
        if response.status() != StatusCode::OK {
            return Err(BackendError::Status(response.status().as_u16()));
        }
        read_capped(response, self.settings.timeout).await
    }

    /// A token for `scope` from the realm the registry named. The login goes with the
    /// request only when the realm is https (any host: Docker Hub's is auth.docker.io);
    /// otherwise the token is asked for anonymously.
    async fn fetch_token(
        &self,
        host: &str,
        scope: &str,
        params: &HashMap<String, String>,
        login: Option<&Login>,
    ) -> Result<String, BackendError> {
        let realm = params
            .get("realm")
            .ok_or_else(|| BackendError::Malformed("a Bearer challenge without a realm".into()))?;
        let mut url = reqwest::Url::parse(realm)
            .map_err(|e| BackendError::Malformed(format!("token realm {realm:?}: {e}")))?;
        let https = url.scheme() == "https";
        if !https && !self.settings.plain_http {
            return Err(BackendError::Malformed(format!(
                "the token realm {realm:?} is not https"
            )));
        }
        let realm_host = url.host_str().unwrap_or_default().to_owned();
        self.check_address(&realm_host)?;
        {
            let mut query = url.query_pairs_mut();
            if let Some(service) = params.get("service") {
                query.append_pair("service", service);
            }
            query.append_pair("scope", params.get("scope").map_or(scope, String::as_str));
        }
        let auth = login
            .filter(|_| https || realm_host == host)
            .map(Auth::Basic);
        let response = with_auth(self.client.get(url), auth)
            .send()
            .await
            .map_err(|e| self.transport(e))?;
        match response.status() {
            StatusCode::OK => {}
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
                return Err(denied(response.status()));
            }
            status => return Err(BackendError::Status(status.as_u16())),
        }
        let body = read_capped(response, self.settings.timeout).await?;
        // serde's message could quote the body: say only where it broke.
        let answer: TokenAnswer = serde_json::from_slice(&body).map_err(|e| {
            BackendError::Malformed(format!(
                "the token answer is not JSON with a token (line {}, column {})",
                e.line(),
                e.column()
            ))
        })?;
        let token = answer
            .token
            .or(answer.access_token)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| BackendError::Malformed("token answer without a token".into()))?;
        let life = answer
            .expires_in
            .map_or(DEFAULT_TOKEN_LIFE, Duration::from_secs)
            .min(Duration::from_secs(3600));
        let mut tokens = self.tokens.lock().unwrap_or_else(|e| e.into_inner());
        if tokens.len() >= MAX_TOKENS {
            tokens.retain(|_, (_, until)| *until > Instant::now());
            if tokens.len() >= MAX_TOKENS {
                tokens.clear();
            }
        }
        tokens.insert(
            (host.to_owned(), scope.to_owned()),
            (token.clone(), Instant::now() + life),
        );
        Ok(token)
    }

    fn token(&self, host: &str, scope: &str) -> Option<String> {
        let tokens = self.tokens.lock().unwrap_or_else(|e| e.into_inner());
        let (token, until) = tokens.get(&(host.to_owned(), scope.to_owned()))?;
        (*until > Instant::now()).then(|| token.clone())
    }

    /// An IP-literal host is checked here; names are checked as they resolve.
    fn check_address(&self, host: &str) -> Result<(), BackendError> {
        let bare = strip_port(host);
        let Ok(ip) = bare
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<IpAddr>()
        else {
            return Ok(());
        };
        if forbidden(ip) && !self.settings.explicit_hosts.contains(bare) {
            return Err(BackendError::Refused(format!(
                "{bare} is a loopback, link-local or metadata address that no integration names explicitly"
            )));
        }
        Ok(())
    }

    fn transport(&self, error: reqwest::Error) -> BackendError {
        if error.is_timeout() {
            return BackendError::Timeout(self.settings.timeout);
        }
        let chain = error_chain(&error.without_url());
        if chain.contains(NOT_CALLED) {
            BackendError::Refused(chain)
        } else {
            BackendError::Unreachable(chain)
        }
    }
}

/// How a request authenticates.
#[derive(Clone, Copy)]
enum Auth<'a> {
    Basic(&'a Login),
    Bearer(&'a str),
}

fn with_auth(request: reqwest::RequestBuilder, auth: Option<Auth<'_>>) -> reqwest::RequestBuilder {
    match auth {
        Some(Auth::Basic(login)) => request.basic_auth(&login.username, Some(&login.password)),
        Some(Auth::Bearer(token)) => request.header(AUTHORIZATION, format!("Bearer {token}")),
        None => request,
    }
}

#[derive(Deserialize)]
struct TokenAnswer {
    token: Option<String>,
    access_token: Option<String>,
    expires_in: Option<u64>,
}

/// What a 401 asks for.
enum Challenge {
    Basic,
    Bearer(HashMap<String, String>),
}

/// Reads `WWW-Authenticate`: `Basic realm="…"` or `Bearer realm="…",service="…",scope="…"`.
fn challenge(headers: &HeaderMap) -> Option<Challenge> {
    let value = headers.get(WWW_AUTHENTICATE)?.to_str().ok()?.trim();
    let (scheme, rest) = value.split_once(' ').unwrap_or((value, ""));
    if scheme.eq_ignore_ascii_case("basic") {
        return Some(Challenge::Basic);
    }
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let mut params = HashMap::new();
    let mut rest = rest.trim();
    while let Some((key, after)) = rest.split_once('=') {
        let key = key
            .trim()
            .trim_start_matches(',')
            .trim()
            .to_ascii_lowercase();
        let after = after.trim_start();
        let (value, next) = match after.strip_prefix('"') {
            Some(quoted) => {
                let end = quoted.find('"')?;
                (&quoted[..end], &quoted[end + 1..])
            }
            None => after.split_once(',').unwrap_or((after, "")),
        };
        params.insert(key, value.to_owned());
        rest = next.trim_start_matches([',', ' ']);
    }
    Some(Challenge::Bearer(params))
}

fn denied(status: StatusCode) -> BackendError {
    BackendError::Denied(format!("the registry answered {status}"))
}

/// Reads a body of at most [`MAX_BODY`] bytes.
async fn read_capped(
    mut response: reqwest::Response,
    timeout: Duration,
) -> Result<Vec<u8>, BackendError> {
    if response
        .content_length()
        .is_some_and(|n| n > MAX_BODY as u64)
    {
        return Err(BackendError::TooLarge(MAX_BODY));
    }
    let mut body = Vec::new();
    loop {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                if body.len() + chunk.len() > MAX_BODY {
                    return Err(BackendError::TooLarge(MAX_BODY));
                }
                body.extend_from_slice(&chunk);
            }
            Ok(None) => return Ok(body),
            Err(e) if e.is_timeout() => return Err(BackendError::Timeout(timeout)),
            Err(e) => return Err(BackendError::Unreachable(error_chain(&e.without_url()))),
        }
    }
}

/// Redirects are followed only to the same scheme, host and port, a few times.
fn same_host_redirects() -> reqwest::redirect::Policy {
    reqwest::redirect::Policy::custom(|attempt| {
        let first = attempt.previous().first().cloned();
        let same = first.is_some_and(|first| {
            first.scheme() == attempt.url().scheme()
                && first.host_str() == attempt.url().host_str()
                && first.port_or_known_default() == attempt.url().port_or_known_default()
        });
        if same && attempt.previous().len() <= MAX_REDIRECTS {
            attempt.follow()
        } else {
            attempt.stop()
        }
    })
}

/// Resolves names, dropping loopback, link-local and metadata addresses unless the
/// name is one an integration gives explicitly.
struct GuardedResolver {
    explicit: HashSet<String>,
}

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let host = name.as_str().to_owned();
        let explicit = self.explicit.contains(&host);
        Box::pin(async move {
            let all: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let kept: Vec<SocketAddr> = all
                .into_iter()
                .filter(|addr| explicit || !forbidden(addr.ip()))
                .collect();
            if kept.is_empty() {
                return Err(format!("{host} {NOT_CALLED}").into());
            }
            Ok(Box::new(kept.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// The addresses a registry named in a Pod spec may not lead to: loopback, link-local
/// (cloud metadata services live there), unspecified, and AWS's IPv6 metadata address.
pub fn forbidden(ip: IpAddr) -> bool {
    const AWS_METADATA_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254);
    match ip {
        IpAddr::V4(v4) => v4.is_loopback() || v4.is_link_local() || v4.is_unspecified(),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => forbidden(IpAddr::V4(v4)),
            None => {
                v6.is_loopback()
                    || v6.is_unspecified()
                    || (v6.segments()[0] & 0xffc0) == 0xfe80
                    || v6 == AWS_METADATA_V6
            }
        },
    }
}

/// `host` without its `:port` (IPv6 literals keep their brackets).
pub fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        return host.find(']').map_or(host, |end| &host[..=end]);
    }
    host.split_once(':').map_or(host, |(bare, _)| bare)
}

fn valid_digest(digest: &str) -> bool {
    digest
        .strip_prefix("sha256:")
        .is_some_and(|hex| hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forbidden_addresses() {
        for ip in [
            "127.0.0.1",
            "169.254.169.254",
            "0.0.0.0",
            "::1",
            "fe80::1",
            "fd00:ec2::254",
            "::ffff:169.254.169.254",
        ] {
            assert!(forbidden(ip.parse().unwrap()), "{ip}");
        }
        for ip in ["10.0.0.1", "192.168.1.1", "8.8.8.8", "2001:db8::1"] {
            assert!(!forbidden(ip.parse().unwrap()), "{ip}");
        }
    }

    #[test]
    fn reads_challenges() {
        let mut headers = HeaderMap::new();
        headers.insert(
            WWW_AUTHENTICATE,
            "Bearer realm=\"https://auth.docker.io/token\",service=\"registry.docker.io\",scope=\"repository:library/nginx:pull\""
                .parse()
                .unwrap(),
        );
        let Some(Challenge::Bearer(params)) = challenge(&headers) else {
            panic!("a Bearer challenge");
        };
        assert_eq!(params["realm"], "https://auth.docker.io/token");
        assert_eq!(params["service"], "registry.docker.io");
        assert_eq!(params["scope"], "repository:library/nginx:pull");
        headers.insert(WWW_AUTHENTICATE, "Basic realm=\"test\"".parse().unwrap());
        assert!(matches!(challenge(&headers), Some(Challenge::Basic)));
        assert_eq!(strip_port("[::1]:5000"), "[::1]");
        assert_eq!(strip_port("127.0.0.1:5000"), "127.0.0.1");
    }
}
