//! The HTTPS admission server: `POST /validate`, `POST /mutate`, `POST /audit`,
//! `GET /healthz`, `GET /readyz`.

use std::borrow::Cow;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Instant, SystemTime};

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Router};
use tracing::Instrument;

use crate::admission::{self, Verdict};
use crate::auditlog::AuditService;
use crate::client_cert::{ClientCertAcceptor, PeerCertificates};
use crate::cluster::ClusterReads;
use crate::decisions::Decisions;
use crate::engine::Review;
use crate::mutate::{self, MutationMetrics, Untouched};
use crate::policy::{NamespaceLabels, NamespaceView, PolicySet, SharedPolicySet};
use crate::scan::{DigestAnswers, ScanService};

/// Largest AdmissionReview accepted; the API server's own request limit is 3 MiB of
/// object, and a review carries the object twice on UPDATE.
pub const MAX_BODY: usize = 7 * 1024 * 1024;

/// What the handlers share.
#[derive(Clone)]
pub struct AppState {
    /// The policy snapshot, loaded once per request.
    pub policies: SharedPolicySet,
    /// Scan results: the cache, and the backends behind it.
    pub scans: Arc<ScanService>,
    /// What `/readyz` answers.
    pub ready: Readiness,
    /// Bounded reads of what the snapshot lacks (in a cluster; none in local mode).
    pub cluster: Option<Arc<dyn ClusterReads>>,
    /// What `/mutate` changed.
    pub mutations: MutationMetrics,
    /// What `/validate` decided: metrics, decision log, denials for reports.
    pub decisions: Decisions,
    /// The `/audit` receiver, when an audit token is configured.
    pub audit: Option<Arc<AuditService>>,
}

impl AppState {
    /// A state that reads nothing from a cluster (local mode, tests).
    pub fn new(policies: SharedPolicySet, scans: Arc<ScanService>, ready: Readiness) -> Self {
        AppState {
            policies,
            scans,
            ready,
            cluster: None,
            mutations: MutationMetrics::default(),
            decisions: Decisions::default(),
            audit: None,
        }
    }
}

/// Ready means enforcing the real policy set, with every other input decisions read
/// (credentials, scan reports) listed, a certificate clients trust, and not shutting
/// down. Each part is set by the task that knows it.
#[derive(Clone, Default)]
pub struct Readiness {
    policies: Arc<AtomicBool>,
    certificate: Arc<AtomicBool>,
    stopping: Arc<AtomicBool>,
    inputs: Arc<std::sync::RwLock<Vec<Input>>>,
}

/// An input readiness waits for: why not ready while `ready()` is false.
struct Input {
    waiting: &'static str,
    ready: Box<dyn Fn() -> bool + Send + Sync>,
}

impl std::fmt::Debug for Readiness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Readiness")
            .field("reason", &self.not_ready_because())
            .finish()
    }
}

impl Readiness {
    /// Ready from the start (local mode and tests: policies and certificate are loaded
    /// before serving).
    pub fn ready_now() -> Self {
        let r = Readiness::default();
        r.policies.store(true, Ordering::Release);
        r.certificate.store(true, Ordering::Release);
        r
    }

    /// Whether `/readyz` answers 200.
    pub fn is_ready(&self) -> bool {
        self.not_ready_because().is_none()
    }

    /// Why `/readyz` answers 503, if it does.
    fn not_ready_because(&self) -> Option<&'static str> {
        if self.stopping.load(Ordering::Acquire) {
            return Some("shutting down");
        } else if !self.policies.load(Ordering::Acquire) {
            return Some("policies not loaded yet");
        } else if !self.certificate.load(Ordering::Acquire) {
            return Some("serving certificate not loaded yet");
        }
        let inputs = self.inputs.read().unwrap_or_else(|e| e.into_inner());
        inputs
            .iter()
            .find(|input| !(input.ready)())
            .map(|input| input.waiting)
    }

    /// Waits, too, for an input: unready saying `waiting` while `ready()` is false.
    pub fn require(&self, waiting: &'static str, ready: impl Fn() -> bool + Send + Sync + 'static) {
        let mut inputs = self.inputs.write().unwrap_or_else(|e| e.into_inner());
        inputs.push(Input {
            waiting,
            ready: Box::new(ready),
        });
    }

    /// The policy set reflects every watched kind; returns whether it already did.
    pub fn policies_synced(&self) -> bool {
        self.policies.swap(true, Ordering::AcqRel)
    }

    /// The serving certificate is one the API server trusts.
    pub fn certificate_loaded(&self) {
        self.certificate.store(true, Ordering::Release);
    }

    /// Shutting down: unready from now on.
    pub fn stopping(&self) {
        self.stopping.store(true, Ordering::Release);
    }

    /// Whether shutting down.
    pub fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::Acquire)
    }
}

/// The webhook's routes. The state is shared behind one `Arc`: a request clones one
/// pointer, not each of its parts.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/validate", post(validate))
        .route("/mutate", post(mutate))
        .route(
            "/audit",
            post(audit).layer(DefaultBodyLimit::max(crate::auditlog::service::MAX_BODY)),
        )
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(Arc::new(state))
}

/// `POST /audit`: an `EventList` from the API server's webhook audit backend, with the
/// bearer token or over a connection that presented a client certificate of the audit
/// CA; 404 when the receiver is off, 401 without either.
async fn audit(
    State(state): State<Arc<AppState>>,
    client: Option<Extension<PeerCertificates>>,
    headers: axum::http::HeaderMap,
    body: Bytes,
) -> Response {
    let Some(service) = &state.audit else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let authorization = headers.get(header::AUTHORIZATION).map(|h| h.as_bytes());
    let chain = client
        .as_ref()
        .map(|Extension(PeerCertificates(chain))| &chain[..]);
    if !service.authorized(chain, authorization) {
        tracing::warn!("refused an /audit request without the audit token or client certificate");
        return (
            StatusCode::UNAUTHORIZED,
            "the audit token or a client certificate is required",
        )
            .into_response();
    }
    match service.ingest(&body) {
        Ok(_) => (StatusCode::OK, "{}").into_response(),
        Err(error) => {
            tracing::warn!(%error, "refused an /audit request");
            (StatusCode::BAD_REQUEST, error.to_string()).into_response()
        }
    }
}

async fn readyz(State(state): State<Arc<AppState>>) -> Response {
    match state.ready.not_ready_because() {
        None => (StatusCode::OK, "ready").into_response(),
        Some(reason) => (StatusCode::SERVICE_UNAVAILABLE, reason).into_response(),
    }
}

/// The AdmissionReview in `body` (a Pod being created read in the same pass), or the
/// 400 that answers a request that is not one.
fn parse(body: &[u8]) -> Result<admission::Request<'_>, (StatusCode, String)> {
    admission::parse(body).map_err(|error| {
        tracing::warn!(%error, "rejected a request that is not an AdmissionReview");
        (StatusCode::BAD_REQUEST, error.to_string())
    })
}

async fn validate(State(state): State<Arc<AppState>>, body: Bytes) -> Response {
    let started = Instant::now();
    let request = match parse(&body) {
        Ok(request) => request,
        Err(rejected) => return rejected.into_response(),
    };
    // At debug level: at info the fmt subscriber would format its fields on every request
    // (measured: 24k instructions, 3.8 % of a 5-container review).
    let span = tracing::debug_span!("admission", uid = %request.uid, kind = %request.kind.kind, operation = %request.operation);
    let snapshot = state.policies.load();
    let (verdict, name) = match admission::read(&request) {
        Err(verdict) => (
            verdict,
            Cow::Borrowed(request.name.as_deref().unwrap_or_default()),
        ),
        Ok(evaluable) => {
            let name = evaluable.object.name.clone();
            let decided = decide(&state, &request, &snapshot, evaluable, started);
            (decided.instrument(span.clone()).await, name)
        }
    };
    span.in_scope(|| {
        state
            .decisions
            .record(&request, &name, &verdict, started.elapsed())
    });
    reply(
        &state,
        &request.uid,
        Ok(admission::respond(&request.uid, &verdict)),
    )
}

/// The AdmissionReview answer serialized for `uid`, or a 500 if it could not be.
///
/// While shutting down (the grace period) the answer also closes its HTTP/1.1
/// connection: the API server's next call opens a new one, which the Service sends to a
/// replica that stays. Otherwise a kept-alive connection is closed under a request sent
/// at the moment the server stops, and that request fails (fail-closed webhook: a
/// user's create refused). HTTP/2 connections get GOAWAY at the stop instead.
fn reply(state: &AppState, uid: &str, answer: serde_json::Result<Vec<u8>>) -> Response {
    let mut response = match answer {
        Ok(json) => ([(header::CONTENT_TYPE, "application/json")], json).into_response(),
        Err(error) => {
            tracing::error!(%error, uid, "could not serialize the AdmissionReview answer");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    };
    if state.ready.is_stopping() {
        response.headers_mut().insert(
            header::CONNECTION,
            header::HeaderValue::from_static("close"),
        );
    }
    response
}

/// The decision path, as the data flows: the subject, the scan results its policies
/// need (from memory, or fetched within the deadline), one pass of the pure engine.
async fn decide(
    state: &AppState,
    request: &admission::Request<'_>,
    snapshot: &PolicySet,
    evaluable: admission::Evaluable<'_>,
    started: Instant,
) -> Verdict {
    let namespace = request.namespace.as_deref().unwrap_or_default();
    let pod = match (evaluable.pod_to_join(), &state.cluster) {
        (Some(name), Some(cluster)) => read_pod(cluster.as_ref(), namespace, name).await,
        _ => None,
    };
    let evaluable = match &pod {
        Some(json) => {
            let name = evaluable.object.name.clone();
            match evaluable.join_pod(json) {
                Ok(joined) => joined,
                Err(error) => {
                    return Verdict::Unreadable(format!(
                        "Pod {namespace}/{name}, which the ephemeral containers join, cannot be read as Pod: {error}"
                    ));
                }
            }
        }
        None => evaluable,
    };
    let labels = namespace_labels(state, snapshot, namespace).await;
    let review = Review::new(evaluable.subject(namespace, labels.view()));
    let needed = review.scans_needed(snapshot);
    let dry_run = request.dry_run == Some(true);
    let results = state
        .scans
        .results(snapshot, &needed, started, dry_run)
        .await;
    Verdict::Decided(review.decide(snapshot, &results, SystemTime::now()))
}

/// A namespace's labels for one request.
enum Labels {
    Snapshot,
    LookedUp(NamespaceLabels),
    Unknown,
}

impl Labels {
    fn view(&self) -> NamespaceView<'_> {
        match self {
            Labels::Snapshot => NamespaceView::Snapshot,
            Labels::LookedUp(labels) => NamespaceView::LookedUp(labels),
            Labels::Unknown => NamespaceView::Unknown,
        }
    }
}

async fn mutate(State(state): State<Arc<AppState>>, body: Bytes) -> Response {
    let started = Instant::now();
    let request = match parse(&body) {
        Ok(request) => request,
        Err(rejected) => return rejected.into_response(),
    };
    let answer = match mutate::read(&request, body.len()) {
        Err(Untouched::Skipped(_)) => mutate::Answer::default(),
        Err(Untouched::Unreadable(message)) => {
            tracing::info!(uid = %request.uid, %message, "not mutated: the object cannot be read");
            mutate::Answer {
                warnings: vec![format!("not mutated: {message}")],
                ..Default::default()
            }
        }
        Ok(target) => plan(&state, &request, target, started).await,
    };
    reply(&state, &request.uid, mutate::respond(&request.uid, &answer))
}

/// The mutation path: the digests the applying policies ask to pin (from memory, or
/// resolved within the deadline; never a scan), the engine's plan, the patch.
async fn plan(
    state: &AppState,
    request: &admission::Request<'_>,
    target: mutate::Target<'_>,
    started: Instant,
) -> mutate::Answer {
    let snapshot = state.policies.load();
    let namespace = request.namespace.as_deref().unwrap_or_default();
    let labels = namespace_labels(state, &snapshot, namespace).await;
    let review = Review::new(target.evaluable.subject(namespace, labels.view()));
    let scope = target.scope();
    let needed = review.digests_to_pin(&snapshot, scope);
    let digests = if needed.is_empty() {
        DigestAnswers::default()
    } else {
        state.scans.digests(&snapshot, &needed, started).await
    };
    let plan = review.mutation(&snapshot, scope, &digests);
    let subject = format!("Pod {namespace}/{}", target.evaluable.object.name);
    let answer = mutate::answer(&target, &plan, &subject);
    if request.dry_run != Some(true) {
        match &answer.not_sent {
            None => state.mutations.applied(&plan),
            Some(reason) => state.mutations.not_mutated(reason.label()),
        }
    }
    tracing::debug!(uid = %request.uid, pins = plan.pins.len(), unpinned = plan.unpinned.len(), micros = started.elapsed().as_micros() as u64, "mutation");
    answer
}

/// The snapshot's labels, unless the watch has not delivered the namespace and a policy
/// selects by labels: then one bounded read; if it fails, the labels are unknown (and
/// selector-scoped Block policies count as matching).
async fn namespace_labels(state: &AppState, snapshot: &PolicySet, namespace: &str) -> Labels {
    let Some(cluster) = &state.cluster else {
        return Labels::Snapshot;
    };
    if namespace.is_empty()
        || snapshot.knows_namespace(namespace)
        || !snapshot.selects_by_namespace_labels()
    {
        return Labels::Snapshot;
    }
    match cluster.namespace_labels(namespace).await {
        Ok(Some(labels)) => Labels::LookedUp(labels),
        Ok(None) => {
            tracing::warn!(%namespace, "a request names a namespace the API server does not know; its labels count as unknown");
            Labels::Unknown
        }
        Err(error) => {
            tracing::warn!(%namespace, %error, "the namespace's labels could not be read; selector-scoped Block policies count as matching");
            Labels::Unknown
        }
    }
}

/// The Pod a pre-1.22 ephemeral-containers request joins; without it the containers
/// are judged by their own settings alone (logged).
async fn read_pod(cluster: &dyn ClusterReads, namespace: &str, name: &str) -> Option<String> {
    match cluster.pod(namespace, name).await {
        Ok(pod) => pod,
        Err(error) => {
            tracing::warn!(%namespace, pod = %name, %error, "the Pod could not be read; its ephemeral containers are judged by their own settings");
            None
        }
    }
}

/// Serves `router` over TLS on `listener` until `shutdown` completes, then drains.
pub async fn serve(
    listener: std::net::TcpListener,
    tls: Arc<rustls::ServerConfig>,
    router: Router,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    listener.set_nonblocking(true)?;
    let handle = axum_server::Handle::<SocketAddr>::new();
    let stopper = handle.clone();
    tokio::spawn(async move {
        shutdown.await;
        stopper.graceful_shutdown(Some(std::time::Duration::from_secs(10)));
    });
    // TCP_NODELAY: without it Nagle and the client's delayed ACK stall small answers ~40 ms.
    let acceptor = axum_server::tls_rustls::RustlsAcceptor::new(
        axum_server::tls_rustls::RustlsConfig::from_config(tls),
    )
    .acceptor(axum_server::accept::NoDelayAcceptor::new());
    let acceptor = ClientCertAcceptor(acceptor);
    axum_server::from_tcp(listener)?
        .acceptor(acceptor)
        .handle(handle)
        .serve(router.into_make_service())
        .await
}
