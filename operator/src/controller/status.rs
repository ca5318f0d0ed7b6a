//! Status writers: `observedGeneration` and the `Ready` condition on every
//! ContainerPolicy and RegistryIntegration, and an Event when a spec is rejected.
//! A patch is sent only when the status would change, so our own writes end the loop.

use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::watcher;
use kube::{Api, Client, Resource, ResourceExt};
use portcullis_crds::{ContainerPolicy, RegistryIntegration};
use portcullis_webhook::policy::{FieldError, compile, compile_integration, join_errors};
use serde_json::json;
use tokio::sync::watch;

use crate::metrics::Metrics;

/// The condition every object reports.
pub const READY: &str = "Ready";
/// The reason of `Ready=False` for a spec that does not validate.
pub const INVALID_SPEC: &str = "InvalidSpec";
const COMPILED: &str = "Compiled";

/// Why a reconcile failed (retried with backoff).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The API server refused or did not answer.
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
}

impl Error {
    fn label(&self) -> &'static str {
        match self {
            Error::Kube(_) => "kube",
        }
    }
}

struct Context {
    client: Client,
    recorder: Recorder,
    metrics: Arc<Metrics>,
    leader: watch::Receiver<bool>,
}

/// How often a replica that is not the leader looks again.
const FOLLOWER_RECHECK: std::time::Duration = std::time::Duration::from_secs(15);

/// Runs both status controllers until the process stops; only the leader writes.
pub async fn run(
    client: Client,
    reporter: Reporter,
    metrics: Arc<Metrics>,
    leader: watch::Receiver<bool>,
) {
    let ctx = Arc::new(Context {
        recorder: Recorder::new(client.clone(), reporter),
        client: client.clone(),
        metrics,
        leader,
    });
    let policies = Controller::new(
        Api::<ContainerPolicy>::all(client.clone()),
        watcher::Config::default(),
    )
    .run(reconcile, error_policy, ctx.clone())
    .for_each(|_| async {});
    let integrations = Controller::new(
        Api::<RegistryIntegration>::all(client),
        watcher::Config::default(),
    )
    .run(reconcile, error_policy, ctx)
    .for_each(|_| async {});
    futures::join!(policies, integrations);
}

/// What the status writer needs from each kind: its spec's field errors and its
/// current `observedGeneration` and conditions.
trait Reported {
    fn spec_errors(&self) -> Option<Vec<FieldError>>;
    fn reported(&self) -> (Option<i64>, &[Condition]);
}

impl Reported for ContainerPolicy {
    fn spec_errors(&self) -> Option<Vec<FieldError>> {
        compile(&self.name_any(), &self.spec).err()
    }
    fn reported(&self) -> (Option<i64>, &[Condition]) {
        self.status
            .as_ref()
            .map_or((None, &[]), |s| (s.observed_generation, &s.conditions))
    }
}

impl Reported for RegistryIntegration {
    fn spec_errors(&self) -> Option<Vec<FieldError>> {
        compile_integration(&self.name_any(), &self.spec).err()
    }
    fn reported(&self) -> (Option<i64>, &[Condition]) {
        self.status
            .as_ref()
            .map_or((None, &[]), |s| (s.observed_generation, &s.conditions))
    }
}

/// Patches status when it differs from what the spec deserves; publishes an Event when
/// the object becomes (or stays, with new errors) invalid.
async fn reconcile<K>(object: Arc<K>, ctx: Arc<Context>) -> Result<Action, Error>
where
    K: Reported
        + Resource<Scope = kube::core::ClusterResourceScope, DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    if !*ctx.leader.borrow() {
        return Ok(Action::requeue(FOLLOWER_RECHECK));
    }
    let errors = object.spec_errors();
    let (observed, conditions) = object.reported();
    let generation = object.meta().generation;
    let previous = conditions.iter().find(|c| c.type_ == READY);
    let desired = ready_condition(errors.as_deref(), generation, previous);
    if observed == generation && previous == Some(&desired) {
        return Ok(Action::await_change());
    }
    let mut all: Vec<Condition> = conditions
        .iter()
        .filter(|c| c.type_ != READY)
        .cloned()
        .collect();
    all.insert(0, desired.clone());
    let api: Api<K> = Api::all(ctx.client.clone());
    let patch = json!({"status": {"observedGeneration": generation, "conditions": all}});
    api.patch_status(
        &object.name_any(),
        &PatchParams::default(),
        &Patch::Merge(&patch),
    )
    .await?;
    if desired.status == "False" && previous.is_none_or(|p| p.message != desired.message) {
        let event = Event {
            type_: EventType::Warning,
            reason: INVALID_SPEC.into(),
            note: Some(desired.message.clone()),
            action: "Validate".into(),
            secondary: None,
        };
        if let Err(error) = ctx.recorder.publish(&event, &object.object_ref(&())).await {
            tracing::warn!(%error, object = %object.name_any(), "could not publish the InvalidSpec event");
        }
    }
    Ok(Action::await_change())
}

/// The `Ready` condition a spec deserves; the transition time moves only when the
/// status does.
fn ready_condition(
    errors: Option<&[FieldError]>,
    generation: Option<i64>,
    previous: Option<&Condition>,
) -> Condition {
    let (status, reason, message) = match errors {
        None => ("True", COMPILED, "compiled and enforced".to_owned()),
        Some(errors) => ("False", INVALID_SPEC, join_errors(errors)),
    };
    let last_transition_time = match previous {
        Some(p) if p.status == status => p.last_transition_time.clone(),
        _ => Time(jiff::Timestamp::now()),
    };
    Condition {
        type_: READY.into(),
        status: status.into(),
        reason: reason.into(),
        message,
        observed_generation: generation,
        last_transition_time,
    }
}

fn error_policy<K>(object: Arc<K>, error: &Error, ctx: Arc<Context>) -> Action
where
    K: Resource<DynamicType = ()>,
{
    let kind = K::kind(&());
    ctx.metrics.reconcile_error(&kind, error.label());
    tracing::warn!(%kind, object = %object.meta().name.as_deref().unwrap_or_default(), %error, "status reconcile failed; retrying");
    Action::requeue(std::time::Duration::from_secs(5))
}
