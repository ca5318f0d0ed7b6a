//! A simulated Kubernetes API server, in process, for controller tests. It speaks the
//! real API's documented shapes for the few endpoints Portcullis uses: LIST
//! (`{kind: XList, metadata: {resourceVersion}, items}`), WATCH (newline-delimited
//! `{type: ADDED|MODIFIED|DELETED|ERROR, object}` from a resourceVersion), PATCH of the
//! `status` subresource (merge patch), and POST of `events.k8s.io/v1` Events.
//! Simulated because no API server runs on these machines; `e2e/` covers a real one.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use tokio::sync::broadcast;

pub const POLICIES: &str = "/apis/portcullis.dev/v1alpha1/containerpolicies";
pub const INTEGRATIONS: &str = "/apis/portcullis.dev/v1alpha1/registryintegrations";
pub const NAMESPACES: &str = "/api/v1/namespaces";
/// trivy-operator's reports in every namespace.
pub const VULNERABILITY_REPORTS: &str =
    "/apis/aquasecurity.github.io/v1alpha1/vulnerabilityreports";
const EVENTS_PREFIX: &str = "/apis/events.k8s.io/v1/namespaces/";

#[derive(Default)]
struct Store {
    objects: BTreeMap<(String, String), Value>,
    resource_version: u64,
    /// Every watch event sent, for watches that start from an older resourceVersion.
    history: Vec<(u64, String, Value)>,
    status_patches: Vec<(String, Value)>,
    events: Vec<Value>,
    failing: bool,
}

pub struct FakeApi {
    store: Mutex<Store>,
    feed: broadcast::Sender<(u64, String, Value)>,
    pub addr: SocketAddr,
}

impl FakeApi {
    pub async fn start() -> Arc<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (feed, _) = broadcast::channel(4096);
        let fake = Arc::new(FakeApi {
            store: Mutex::default(),
            feed,
            addr,
        });
        let app = axum::Router::new()
            .fallback(handle)
            .with_state(fake.clone());
        tokio::spawn(async move { axum::serve(listener, app).await });
        fake
    }

    /// Creates or updates an object; `generation` moves when the spec changes.
    pub fn apply(&self, collection: &str, mut object: Value) {
        let mut store = self.store.lock().unwrap();
        let name = object["metadata"]["name"].as_str().unwrap().to_owned();
        let key = (collection.to_owned(), name.clone());
        let previous = store.objects.get(&key).cloned();
        let generation = match &previous {
            Some(p) if p["spec"] == object["spec"] => {
                p["metadata"]["generation"].as_i64().unwrap_or(1)
            }
            Some(p) => p["metadata"]["generation"].as_i64().unwrap_or(1) + 1,
            None => 1,
        };
        if let Some(status) = previous
            .as_ref()
            .map(|p| p["status"].clone())
            .filter(|s| !s.is_null())
        {
            object["status"] = status;
        }
        object["metadata"]["generation"] = json!(generation);
        object["metadata"]["uid"] = json!(format!("uid-{name}"));
        let kind = if previous.is_some() {
            "MODIFIED"
        } else {
            "ADDED"
        };
        Self::commit(&mut store, &self.feed, collection, key, object, kind);
    }

    /// Deletes an object and tells the watches.
    pub fn delete(&self, collection: &str, name: &str) {
        let mut store = self.store.lock().unwrap();
        if let Some(object) = store
            .objects
            .remove(&(collection.to_owned(), name.to_owned()))
        {
            store.resource_version += 1;
            let rv = store.resource_version;
            let event = json!({"type": "DELETED", "object": object});
            store
                .history
                .push((rv, collection.to_owned(), event.clone()));
            let _ = self.feed.send((rv, collection.to_owned(), event));
        }
    }

    /// Deletes an object while no watch can see it (only a re-list reveals it).
    pub fn delete_unseen(&self, collection: &str, name: &str) {
        self.store
            .lock()
            .unwrap()
            .objects
            .remove(&(collection.to_owned(), name.to_owned()));
    }

    fn commit(
        store: &mut Store,
        feed: &broadcast::Sender<(u64, String, Value)>,
        collection: &str,
        key: (String, String),
        mut object: Value,
        kind: &str,
    ) {
        store.resource_version += 1;
        let rv = store.resource_version;
        object["metadata"]["resourceVersion"] = json!(rv.to_string());
        store.objects.insert(key, object.clone());
        let event = json!({"type": kind, "object": object});
        store
            .history
            .push((rv, collection.to_owned(), event.clone()));
        let _ = feed.send((rv, collection.to_owned(), event));
    }

    /// While failing, LIST and WATCH answer 500 and open watches end with a 410 Gone.
    pub fn set_failing(&self, failing: bool) {
        let mut store = self.store.lock().unwrap();
        store.failing = failing;
        if failing {
            let gone = json!({"type": "ERROR", "object": {"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "Expired", "code": 410, "message": "too old resource version"}});
            let _ = self.feed.send((0, "*".into(), gone));
        }
    }

    pub fn object(&self, collection: &str, name: &str) -> Value {
        self.store
            .lock()
            .unwrap()
            .objects
            .get(&(collection.to_owned(), name.to_owned()))
            .cloned()
            .unwrap_or(Value::Null)
    }

    pub fn status_patches(&self, name: &str) -> usize {
        self.store
            .lock()
            .unwrap()
            .status_patches
            .iter()
            .filter(|(n, _)| n == name)
            .count()
    }

    pub fn events(&self) -> Vec<Value> {
        self.store.lock().unwrap().events.clone()
    }
}

/// Resource plurals the fake serves, with their kinds.
const KINDS: &[(&str, &str)] = &[
    ("containerpolicies", "ContainerPolicy"),
    ("registryintegrations", "RegistryIntegration"),
    ("auditmonitors", "AuditMonitor"),
    ("namespaces", "Namespace"),
    ("secrets", "Secret"),
    ("leases", "Lease"),
    ("vulnerabilityreports", "VulnerabilityReport"),
    (
        "validatingwebhookconfigurations",
        "ValidatingWebhookConfiguration",
    ),
];

fn is_plural(segment: &str) -> bool {
    KINDS.iter().any(|(plural, _)| *plural == segment)
}

/// `/…/secrets` → (collection, None); `/…/secrets/name` → (collection, Some(name)).
fn split_path(path: &str) -> Option<(&str, Option<&str>)> {
    let (parent, last) = path.rsplit_once('/')?;
    if is_plural(last) {
        return Some((path, None));
    }
    let (_, plural) = parent.rsplit_once('/')?;
    is_plural(plural).then_some((parent, Some(last)))
}

fn status(code: u16, reason: &str, message: &str) -> Response {
    let body = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": reason, "code": code, "message": message});
    (StatusCode::from_u16(code).unwrap(), axum::Json(body)).into_response()
}

/// `fieldSelector=metadata.name=x` (URL-encoded), the only field selector used.
fn name_selector(query: &str) -> Option<String> {
    let raw = query
        .split('&')
        .find_map(|p| p.strip_prefix("fieldSelector="))?;
    let decoded = raw.replace("%3D", "=").replace("%3d", "=");
    decoded.strip_prefix("metadata.name=").map(str::to_owned)
}

/// JSON merge of `patch` into `target` (enough for strategic and apply patches of the
/// objects used here).
fn merge(target: &mut Value, patch: &Value) {
    match (target, patch) {
        (Value::Object(t), Value::Object(p)) => {
            for (k, v) in p {
                match t.get_mut(k) {
                    Some(existing) if v.is_object() => merge(existing, v),
                    _ => drop(t.insert(k.clone(), v.clone())),
                }
            }
        }
        (t, p) => *t = p.clone(),
    }
}

async fn handle(State(fake): State<Arc<FakeApi>>, request: Request) -> Response {
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let query = request.uri().query().unwrap_or_default().to_owned();
    let body = axum::body::to_bytes(request.into_body(), 1 << 20)
        .await
        .unwrap_or_default();
    if method == Method::PATCH && path.ends_with("/status") {
        return patch_status(&fake, &path, &body);
    }
    if method == Method::POST && path.starts_with(EVENTS_PREFIX) && path.ends_with("/events") {
        let event: Value = serde_json::from_slice(&body).unwrap_or_default();
        fake.store.lock().unwrap().events.push(event.clone());
        return (StatusCode::CREATED, axum::Json(event)).into_response();
    }
    let Some((collection, name)) = split_path(&path) else {
        return status(
            404,
            "NotFound",
            &format!("fake API: {method} {path} is not simulated"),
        );
    };
    let key = |name: &str| (collection.to_owned(), name.to_owned());
    match (method, name) {
        (Method::GET, None) => {
            if fake.store.lock().unwrap().failing {
                return status(500, "InternalError", "etcd unavailable");
            }
            let only = name_selector(&query);
            if query
                .split('&')
                .any(|p| p == "watch=true" || p == "watch=1")
            {
                watch(&fake, collection, &query, only)
            } else {
                list(&fake, collection, only)
            }
        }
        (Method::GET, Some(name)) => match fake.store.lock().unwrap().objects.get(&key(name)) {
            Some(object) => axum::Json(object.clone()).into_response(),
            None => status(404, "NotFound", &format!("{name} not found")),
        },
        (Method::POST, None) => {
            let object: Value = serde_json::from_slice(&body).unwrap_or_default();
            let name = object["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            let mut store = fake.store.lock().unwrap();
            if store.objects.contains_key(&key(&name)) {
                return status(409, "AlreadyExists", &format!("{name} already exists"));
            }
            FakeApi::commit(
                &mut store,
                &fake.feed,
                collection,
                key(&name),
                object,
                "ADDED",
            );
            (
                StatusCode::CREATED,
                axum::Json(store.objects[&key(&name)].clone()),
            )
                .into_response()
        }
        (Method::PUT | Method::PATCH, Some(name)) => {
            let incoming: Value = serde_json::from_slice(&body).unwrap_or_default();
            let mut store = fake.store.lock().unwrap();
            let existing = store.objects.get(&key(name)).cloned();
            let object = match (existing, incoming) {
                (Some(mut object), patch)
                    if patch.get("metadata").is_none() || !body.starts_with(b"{\"apiVersion") =>
                {
                    merge(&mut object, &patch);
                    object
                }
                (_, replacement) => replacement,
            };
            FakeApi::commit(
                &mut store,
                &fake.feed,
                collection,
                key(name),
                object,
                "MODIFIED",
            );
            axum::Json(store.objects[&key(name)].clone()).into_response()
        }
        (Method::DELETE, Some(name)) => {
            fake.delete(collection, name);
            status(200, "Deleted", name)
        }
        (method, _) => status(
            405,
            "MethodNotAllowed",
            &format!("fake API: {method} {path} is not simulated"),
        ),
    }
}

fn list(fake: &FakeApi, collection: &str, only: Option<String>) -> Response {
    let store = fake.store.lock().unwrap();
    let items: Vec<Value> = store
        .objects
        .iter()
        .filter(|((c, name), _)| c == collection && only.as_ref().is_none_or(|only| only == name))
        .map(|(_, o)| o.clone())
        .collect();
    let api_version = match collection.strip_prefix("/apis/") {
        Some(rest) => rest.split('/').take(2).collect::<Vec<_>>().join("/"),
        None => "v1".to_owned(),
    };
    let plural = collection.rsplit('/').next().unwrap_or_default();
    let kind = KINDS
        .iter()
        .find(|(p, _)| *p == plural)
        .map_or("Unknown", |(_, k)| k);
    axum::Json(json!({
        "apiVersion": api_version,
        "kind": format!("{kind}List"),
        "metadata": {"resourceVersion": store.resource_version.to_string()},
        "items": items,
    }))
    .into_response()
}

fn watch(fake: &FakeApi, collection: &str, query: &str, only: Option<String>) -> Response {
    let from: u64 = query
        .split('&')
        .find_map(|p| p.strip_prefix("resourceVersion="))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let (backlog, live) = {
        let store = fake.store.lock().unwrap();
        let live = fake.feed.subscribe();
        let backlog: Vec<Value> = store
            .history
            .iter()
            .filter(|(rv, c, e)| *rv > from && c == collection && selected(&only, e))
            .map(|(_, _, e)| e.clone())
            .collect();
        (backlog, live)
    };
    // The backlog, then live events, one JSON line each; an ERROR event ends the watch.
    let line = |event: &Value| Ok::<_, Infallible>(Bytes::from(format!("{event}\n")));
    let backlog = futures::stream::iter(backlog.iter().map(line).collect::<Vec<_>>());
    let live = futures::stream::unfold(
        (live, collection.to_owned(), only, false),
        move |(mut live, collection, only, ended)| async move {
            if ended {
                return None;
            }
            loop {
                match live.recv().await {
                    Ok((_, c, event))
                        if (c == collection && selected(&only, &event)) || c == "*" =>
                    {
                        let ended = event["type"] == "ERROR";
                        return Some((line(&event), (live, collection, only, ended)));
                    }
                    Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                    Err(broadcast::error::RecvError::Closed) => return None,
                }
            }
        },
    );
    use futures::StreamExt;
    Response::builder()
        .header("content-type", "application/json")
        .body(Body::from_stream(backlog.chain(live)))
        .unwrap()
}

/// Whether a watch event passes the watch's name selector.
fn selected(only: &Option<String>, event: &Value) -> bool {
    only.as_ref()
        .is_none_or(|only| event["object"]["metadata"]["name"] == only.as_str())
}

fn patch_status(fake: &FakeApi, path: &str, body: &[u8]) -> Response {
    let Some((collection, name)) = path.trim_end_matches("/status").rsplit_once('/') else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let patch: Value = serde_json::from_slice(body).unwrap_or_default();
    let mut store = fake.store.lock().unwrap();
    let key = (collection.to_owned(), name.to_owned());
    let Some(mut object) = store.objects.get(&key).cloned() else {
        return (
            StatusCode::NOT_FOUND,
            axum::Json(json!({"kind": "Status", "code": 404, "reason": "NotFound"})),
        )
            .into_response();
    };
    if !object["status"].is_object() {
        object["status"] = json!({});
    }
    for (field, value) in patch["status"].as_object().cloned().unwrap_or_default() {
        object["status"][field] = value;
    }
    store.status_patches.push((name.to_owned(), patch));
    FakeApi::commit(
        &mut store,
        &fake.feed,
        collection,
        key,
        object.clone(),
        "MODIFIED",
    );
    axum::Json(store.objects[&(collection.to_owned(), name.to_owned())].clone()).into_response()
}
