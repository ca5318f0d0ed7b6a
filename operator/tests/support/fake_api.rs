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

fn list_kind(collection: &str) -> &'static str {
    match collection {
        POLICIES => "ContainerPolicyList",
        INTEGRATIONS => "RegistryIntegrationList",
        _ => "NamespaceList",
    }
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

async fn handle(State(fake): State<Arc<FakeApi>>, request: Request) -> Response {
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let query = request.uri().query().unwrap_or_default().to_owned();
    let body = axum::body::to_bytes(request.into_body(), 1 << 20)
        .await
        .unwrap_or_default();
    match (method, path.as_str()) {
        (Method::GET, POLICIES | INTEGRATIONS | NAMESPACES) => {
            if fake.store.lock().unwrap().failing {
                return (StatusCode::INTERNAL_SERVER_ERROR, axum::Json(json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 500, "message": "etcd unavailable"}))).into_response();
            }
            if query
                .split('&')
                .any(|p| p == "watch=true" || p == "watch=1")
            {
                watch(&fake, &path, &query)
            } else {
                list(&fake, &path)
            }
        }
        (Method::PATCH, p) if p.ends_with("/status") => patch_status(&fake, p, &body),
        (Method::POST, p) if p.starts_with(EVENTS_PREFIX) && p.ends_with("/events") => {
            let event: Value = serde_json::from_slice(&body).unwrap_or_default();
            fake.store.lock().unwrap().events.push(event.clone());
            (StatusCode::CREATED, axum::Json(event)).into_response()
        }
        (method, path) => (
            StatusCode::NOT_FOUND,
            format!("fake API: {method} {path} is not simulated"),
        )
            .into_response(),
    }
}

fn list(fake: &FakeApi, collection: &str) -> Response {
    let store = fake.store.lock().unwrap();
    let items: Vec<Value> = store
        .objects
        .iter()
        .filter(|((c, _), _)| c == collection)
        .map(|(_, o)| o.clone())
        .collect();
    let api_version = if collection == NAMESPACES {
        "v1"
    } else {
        "portcullis.dev/v1alpha1"
    };
    axum::Json(json!({
        "apiVersion": api_version,
        "kind": list_kind(collection),
        "metadata": {"resourceVersion": store.resource_version.to_string()},
        "items": items,
    }))
    .into_response()
}

fn watch(fake: &FakeApi, collection: &str, query: &str) -> Response {
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
            .filter(|(rv, c, _)| *rv > from && c == collection)
            .map(|(_, _, e)| e.clone())
            .collect();
        (backlog, live)
    };
    // The backlog, then live events, one JSON line each; an ERROR event ends the watch.
    let line = |event: &Value| Ok::<_, Infallible>(Bytes::from(format!("{event}\n")));
    let backlog = futures::stream::iter(backlog.iter().map(line).collect::<Vec<_>>());
    let live = futures::stream::unfold(
        (live, collection.to_owned(), false),
        move |(mut live, collection, ended)| async move {
            if ended {
                return None;
            }
            loop {
                match live.recv().await {
                    Ok((_, c, event)) if c == collection || c == "*" => {
                        let ended = event["type"] == "ERROR";
                        return Some((line(&event), (live, collection, ended)));
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
