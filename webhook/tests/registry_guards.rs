//! The registry client's guards, against a simulated registry over HTTPS that follows
//! the OCI distribution API and Docker's token specification (a 401 with a `Bearer`
//! challenge naming a token realm, `GET {realm}?service=…&scope=…` answering
//! `{"token": …}`): the token flow works; the login never goes to a realm that is not
//! https; redirects leave no host; bodies are capped; metadata addresses are never
//! called. The real registry (basic auth) is in `registry.rs`.

#![allow(clippy::unwrap_used)] // in tests a panic is the failure report

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use portcullis_webhook::scan::backend::BackendError;
use portcullis_webhook::scan::credentials::Login;
use portcullis_webhook::scan::registry::{RegistryClient, RegistrySettings, Resolved};
use portcullis_webhook::testing::TestServer;

const DIGEST: &str = "sha256:3333333333333333333333333333333333333333333333333333333333333333";
const TOKEN: &str = "a-pull-token";

/// What the simulated registry and token service saw.
#[derive(Default)]
struct Seen {
    token_requests: AtomicUsize,
    logins_at_realm: AtomicUsize,
    realm: std::sync::Mutex<String>,
}

fn login() -> Login {
    Login {
        username: "ci".into(),
        password: "s3cret".into(),
    }
}

async fn manifest(State(seen): State<Arc<Seen>>, headers: HeaderMap) -> Response {
    let bearer = format!("Bearer {TOKEN}");
    if headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        == Some(bearer.as_str())
    {
        return (StatusCode::OK, [("docker-content-digest", DIGEST)]).into_response();
    }
    let realm = seen.realm.lock().unwrap().clone();
    let challenge =
        format!("Bearer realm=\"{realm}\",service=\"sim\",scope=\"repository:acme/api:pull\"");
    (
        StatusCode::UNAUTHORIZED,
        [(header::WWW_AUTHENTICATE, challenge)],
    )
        .into_response()
}

async fn token(State(seen): State<Arc<Seen>>, headers: HeaderMap) -> Response {
    seen.token_requests.fetch_add(1, Ordering::SeqCst);
    if headers.contains_key(header::AUTHORIZATION) {
        seen.logins_at_realm.fetch_add(1, Ordering::SeqCst);
    }
    axum::Json(serde_json::json!({"token": TOKEN, "expires_in": 300})).into_response()
}

async fn huge_token() -> Response {
    (StatusCode::OK, vec![b' '; 2 * 1024 * 1024]).into_response()
}

async fn redirect_away() -> Response {
    (
        StatusCode::TEMPORARY_REDIRECT,
        [(header::LOCATION, "https://localhost:1/v2/x")],
    )
        .into_response()
}

fn registry(seen: Arc<Seen>) -> Router {
    Router::new()
        .route("/v2/acme/api/manifests/{tag}", any(manifest))
        .route("/v2/away/app/manifests/{tag}", any(redirect_away))
        .route("/token", get(token))
        .route("/huge-token", get(huge_token))
        .with_state(seen)
}

fn client(ca: &str) -> RegistryClient {
    RegistryClient::new(RegistrySettings {
        ca_bundle: Some(ca.to_owned()),
        plain_http: false,
        timeout: Duration::from_secs(5),
        explicit_hosts: HashSet::from(["127.0.0.1".to_owned(), "localhost".to_owned()]),
    })
    .unwrap()
}

#[tokio::test]
async fn the_token_flow_sends_the_login_only_to_an_https_realm() {
    let seen = Arc::new(Seen::default());
    let server = TestServer::start_router(registry(seen.clone()))
        .await
        .unwrap();
    let host = format!("127.0.0.1:{}", server.addr.port());
    let client = client(&server.certs.ca_pem);

    // Docker Hub's shape: the realm on another host, over https: the login goes there.
    *seen.realm.lock().unwrap() = format!("https://localhost:{}/token", server.addr.port());
    assert_eq!(
        client
            .resolve(&host, "acme/api", "v1", Some(&login()))
            .await,
        Ok(Resolved::Digest(DIGEST.into()))
    );
    assert_eq!(seen.logins_at_realm.load(Ordering::SeqCst), 1);
    // The token is reused for the same repository.
    client
        .resolve(&host, "acme/api", "v1", Some(&login()))
        .await
        .unwrap();
    assert_eq!(seen.token_requests.load(Ordering::SeqCst), 1);

    // A realm over plain http: nothing is sent there, the login least of all.
    let fresh = self::client(&server.certs.ca_pem);
    *seen.realm.lock().unwrap() = format!("http://localhost:{}/token", server.addr.port());
    let refused = fresh.resolve(&host, "acme/api", "v1", Some(&login())).await;
    assert!(
        matches!(&refused, Err(BackendError::Malformed(m)) if m.contains("not https")),
        "{refused:?}"
    );
    assert_eq!(seen.token_requests.load(Ordering::SeqCst), 1);

    // A token answer past 1 MiB is not read.
    *seen.realm.lock().unwrap() = format!("https://localhost:{}/huge-token", server.addr.port());
    let huge = self::client(&server.certs.ca_pem)
        .resolve(&host, "acme/api", "v1", None)
        .await;
    assert!(matches!(huge, Err(BackendError::TooLarge(_))), "{huge:?}");
}

#[tokio::test]
async fn redirects_leave_no_host_and_metadata_addresses_are_never_called() {
    let seen = Arc::new(Seen::default());
    let server = TestServer::start_router(registry(seen)).await.unwrap();
    let host = format!("127.0.0.1:{}", server.addr.port());
    let client = client(&server.certs.ca_pem);
    let away = client
        .resolve(&host, "away/app", "v1", Some(&login()))
        .await;
    assert_eq!(away, Err(BackendError::Redirect(307)));

    // An image naming the metadata service, or loopback, under a broad integration.
    let broad = RegistryClient::new(RegistrySettings {
        timeout: Duration::from_secs(2),
        ..RegistrySettings::default()
    })
    .unwrap();
    for registry in [
        "169.254.169.254",
        "169.254.169.254:80",
        "[fd00:ec2::254]",
        "127.0.0.1:5000",
        "[::1]:443",
    ] {
        let refused = broad.resolve(registry, "x", "y", Some(&login())).await;
        assert!(
            matches!(refused, Err(BackendError::Refused(_))),
            "{registry}: {refused:?}"
        );
    }
    // A name that resolves only to loopback is refused as it resolves.
    let refused = broad.resolve("localhost", "x", "y", None).await;
    assert!(
        matches!(&refused, Err(BackendError::Refused(m)) if m.contains("loopback")),
        "{refused:?}"
    );
}
