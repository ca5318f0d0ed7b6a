//! Status writers: `observedGeneration` and the `Ready` condition on every
//! ContainerPolicy and RegistryIntegration, and an Event when a spec is rejected.
//! A patch is sent only when the status would change, so our own writes end the loop.

use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;
use kube::{Api, Client, Resource, ResourceExt};
use portcullis_crds::{ContainerPolicy, RegistryIntegration};
use portcullis_webhook::policy::{
    FieldError, ObjectVersion, PolicySet, SharedPolicySet, compile, compile_integration,
    join_errors,
};
use portcullis_webhook::scan::credentials::DOCKER_CONFIG_JSON_TYPE;
use portcullis_webhook::scan::{Health, ScanService};
use serde_json::json;
use tokio::sync::watch;

use super::events::{self, Reporter};
use crate::metrics::Metrics;

/// The condition every object reports.
pub const READY: &str = "Ready";
/// The reason of `Ready=False` for a spec that does not validate.
pub const INVALID_SPEC: &str = "InvalidSpec";
const COMPILED: &str = "Compiled";
/// The reason of `Ready=False` for an integration whose credentials Secret is missing.
pub const CREDENTIALS_NOT_FOUND: &str = "CredentialsNotFound";
/// The condition integrations report about their scanner and registries.
pub const BACKEND_REACHABLE: &str = "BackendReachable";
/// How long status waits for the credential Secrets' first list.
const CREDENTIALS_WAIT: std::time::Duration = std::time::Duration::from_secs(1);
/// How often a valid object's status looks again whether it is enforced yet.
pub(super) const ENFORCE_WAIT: std::time::Duration = std::time::Duration::from_millis(200);
/// How often an integration's backend condition is refreshed.
const BACKEND_RECHECK: std::time::Duration = std::time::Duration::from_secs(30);

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
    reporter: Reporter,
    metrics: Arc<Metrics>,
    leader: watch::Receiver<bool>,
    scans: Arc<ScanService>,
    policies: SharedPolicySet,
}

/// How often a replica that is not the leader looks again.
pub(super) const FOLLOWER_RECHECK: std::time::Duration = std::time::Duration::from_secs(15);

/// Runs both status controllers until the process stops; only the leader writes.
pub async fn run(
    client: Client,
    reporter: Reporter,
    metrics: Arc<Metrics>,
    leader: watch::Receiver<bool>,
    scans: Arc<ScanService>,
    policies: SharedPolicySet,
) {
    let ctx = Arc::new(Context {
        reporter,
        client: client.clone(),
        metrics,
        leader,
        scans,
        policies,
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

/// What the status writer needs from each kind: why it is not Ready (if so), what it
/// enforces, what this replica observed of its backend (integrations), and its current
/// status.
trait Reported {
    /// The spec's field errors, if it does not compile.
    fn invalid(&self) -> Option<Vec<FieldError>>;
    /// `(reason, message)` of `Ready=False` for a spec that compiles, or `None`.
    fn unready(&self, _scans: &ScanService) -> Option<(&'static str, String)> {
        None
    }
    /// The version of this object `set` enforces, if any.
    fn enforced_in(&self, set: &PolicySet) -> Option<ObjectVersion>;
    /// The backend's health as this replica saw it; `None` for kinds without one.
    fn backend(&self, _scans: &ScanService) -> Option<Health> {
        None
    }
    /// The spec, as `status.enforcedSpec` records it.
    fn spec_json(&self) -> serde_json::Value;
    /// What the status holds now.
    fn reported(&self) -> Current<'_>;
}

/// What an object's status says now.
struct Current<'a> {
    observed: Option<i64>,
    conditions: &'a [Condition],
    last_contact: Option<&'a Time>,
    enforced_generation: Option<i64>,
    enforced_spec: Option<serde_json::Value>,
}

impl Reported for ContainerPolicy {
    fn invalid(&self) -> Option<Vec<FieldError>> {
        compile(&self.name_any(), &self.spec).err()
    }
    fn enforced_in(&self, set: &PolicySet) -> Option<ObjectVersion> {
        set.policy(&self.name_any()).map(|p| p.version.clone())
    }
    fn spec_json(&self) -> serde_json::Value {
        serde_json::to_value(&self.spec).unwrap_or_default()
    }
    fn reported(&self) -> Current<'_> {
        let status = self.status.as_ref();
        Current {
            observed: status.and_then(|s| s.observed_generation),
            conditions: status.map_or(&[], |s| &s.conditions),
            last_contact: None,
            enforced_generation: status.and_then(|s| s.enforced_generation),
            enforced_spec: status
                .and_then(|s| s.enforced_spec.as_ref())
                .and_then(|spec| serde_json::to_value(spec).ok()),
        }
    }
}

impl Reported for RegistryIntegration {
    fn invalid(&self) -> Option<Vec<FieldError>> {
        compile_integration(&self.name_any(), &self.spec).err()
    }
    fn unready(&self, scans: &ScanService) -> Option<(&'static str, String)> {
        let secret = &self.spec.credentials.as_ref()?.secret_ref.name;
        scans.credentials().get(secret).is_none().then(|| {
            (
                CREDENTIALS_NOT_FOUND,
                format!(
                    "credentials Secret {secret:?} is missing from Portcullis's namespace, or is not a valid {DOCKER_CONFIG_JSON_TYPE} Secret"
                ),
            )
        })
    }
    fn enforced_in(&self, set: &PolicySet) -> Option<ObjectVersion> {
        set.integration(&self.name_any()).map(|i| i.version.clone())
    }
    fn backend(&self, scans: &ScanService) -> Option<Health> {
        Some(scans.health(&self.name_any()).unwrap_or_default())
    }
    fn spec_json(&self) -> serde_json::Value {
        serde_json::to_value(&self.spec).unwrap_or_default()
    }
    fn reported(&self) -> Current<'_> {
        let status = self.status.as_ref();
        Current {
            observed: status.and_then(|s| s.observed_generation),
            conditions: status.map_or(&[], |s| &s.conditions),
            last_contact: status.and_then(|s| s.last_contact_time.as_ref()),
            enforced_generation: status.and_then(|s| s.enforced_generation),
            enforced_spec: status
                .and_then(|s| s.enforced_spec.as_ref())
                .and_then(|spec| serde_json::to_value(spec).ok()),
        }
    }
}

/// The JSON merge patch that turns `old` into `new`: a merge patch merges objects, so
/// every key only `old` has becomes `null` (removed).
pub(super) fn merge_replace(
    old: Option<&serde_json::Value>,
    new: serde_json::Value,
) -> serde_json::Value {
    match (old, new) {
        (Some(serde_json::Value::Object(old)), serde_json::Value::Object(mut new)) => {
            for (key, old_value) in old {
                let value = match new.remove(key) {
                    Some(value) => merge_replace(Some(old_value), value),
                    None => serde_json::Value::Null,
                };
                new.insert(key.clone(), value);
            }
            serde_json::Value::Object(new)
        }
        (_, new) => new,
    }
}

/// `InvalidSpec`'s message: the field errors, and what keeps enforcing meanwhile.
fn invalid_message(errors: &[FieldError], enforced: Option<Option<i64>>) -> String {
    let errors = join_errors(errors);
    match enforced {
        Some(Some(generation)) => format!("{errors}; generation {generation} is still enforced"),
        Some(None) => format!("{errors}; its last good version is still enforced"),
        None => format!("{errors}; nothing is enforced: no version of this object has compiled"),
    }
}

/// Patches status when it differs from what the object deserves; publishes an Event
/// when it becomes (or stays, with new errors) not Ready. Integrations are looked at
/// again periodically, since their backend's health changes without any watch event.
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
    let backend = object.backend(&ctx.scans);
    if backend.is_some() && !ctx.scans.credentials().is_synced() {
        // A Secret not listed yet is not a missing one.
        return Ok(Action::requeue(CREDENTIALS_WAIT));
    }
    let invalid = object.invalid();
    let generation = object.meta().generation;
    let enforced = object.enforced_in(&ctx.policies.load());
    if invalid.is_none() && enforced != Some(ObjectVersion::of(object.meta())) {
        // `Ready=True` says "enforced": it waits until the served set has this version
        // (the set's own watch may lag, e.g. re-listing after an outage).
        return Ok(Action::requeue(ENFORCE_WAIT));
    }
    let problem = match &invalid {
        Some(errors) => Some((
            INVALID_SPEC,
            invalid_message(errors, enforced.map(|v| v.generation)),
        )),
        None => object.unready(&ctx.scans),
    };
    let done = if backend.is_some() {
        Action::requeue(BACKEND_RECHECK)
    } else {
        Action::await_change()
    };
    let reported = object.reported();
    let (observed, conditions, reported_contact) = (
        reported.observed,
        reported.conditions,
        reported.last_contact,
    );
    // A spec that compiles is what enforces from now on, here and after restarts.
    let (enforced_generation, enforced_spec) = match invalid {
        None => (generation, Some(object.spec_json())),
        Some(_) => (reported.enforced_generation, reported.enforced_spec.clone()),
    };
    let previous = conditions.iter().find(|c| c.type_ == READY);
    let desired = ready_condition(problem.as_ref(), generation, previous);
    let mut all: Vec<Condition> = vec![desired.clone()];
    let mut last_contact = reported_contact.cloned();
    if let Some(health) = &backend {
        let previous = conditions.iter().find(|c| c.type_ == BACKEND_REACHABLE);
        all.push(backend_condition(health, generation, previous));
        if let Some(contact) = health
            .last_contact
            .and_then(|t| jiff::Timestamp::try_from(t).ok())
        {
            // metav1.Time has whole seconds.
            last_contact = jiff::Timestamp::from_second(contact.as_second())
                .ok()
                .map(Time);
        }
    }
    all.extend(
        conditions
            .iter()
            .filter(|c| c.type_ != READY && c.type_ != BACKEND_REACHABLE)
            .cloned(),
    );
    if observed == generation
        && conditions == all.as_slice()
        && last_contact.as_ref() == reported_contact
        && enforced_generation == reported.enforced_generation
        && enforced_spec == reported.enforced_spec
    {
        return Ok(done);
    }
    let api: Api<K> = Api::all(ctx.client.clone());
    let mut status = json!({"observedGeneration": generation, "conditions": all});
    if let Some(contact) = &last_contact {
        status["lastContactTime"] = json!(contact);
    }
    if let Some(spec) = enforced_spec {
        status["enforcedGeneration"] = json!(enforced_generation);
        status["enforcedSpec"] = merge_replace(reported.enforced_spec.as_ref(), spec);
    }
    api.patch_status(
        &object.name_any(),
        &PatchParams::default(),
        &Patch::Merge(&json!({ "status": status })),
    )
    .await?;
    if let Some((reason, _)) = problem
        && previous.is_none_or(|p| p.message != desired.message)
    {
        let regarding = object.object_ref(&());
        let note = &desired.message;
        if let Err(error) = events::warn(
            &ctx.client,
            &ctx.reporter,
            regarding,
            reason,
            "Validate",
            note,
        )
        .await
        {
            tracing::warn!(%error, object = %object.name_any(), reason, "could not publish the event");
        }
    }
    Ok(done)
}

/// The `Ready` condition an object deserves; the transition time moves only when the
/// status does.
pub(super) fn ready_condition(
    problem: Option<&(&'static str, String)>,
    generation: Option<i64>,
    previous: Option<&Condition>,
) -> Condition {
    let (status, reason, message) = match problem {
        None => ("True", COMPILED, "compiled and enforced".to_owned()),
        Some((reason, message)) => ("False", *reason, message.clone()),
    };
    condition(READY, status, reason, message, generation, previous)
}

/// `BackendReachable` from the last call this replica made to the scanner or registry.
/// The error text is for operators: it names the call and the failure, never a secret.
fn backend_condition(
    health: &Health,
    generation: Option<i64>,
    previous: Option<&Condition>,
) -> Condition {
    let (status, reason, message) = match (health.reachable, &health.last_error) {
        (Some(true), None) => ("True", "Answered", "the last call succeeded".to_owned()),
        (Some(true), Some(error)) => (
            "True",
            "Answered",
            format!("the last call was answered, but: {error}"),
        ),
        (Some(false), Some(error)) => ("False", "CallFailed", error.clone()),
        (Some(false), None) => ("False", "CallFailed", "the last call failed".to_owned()),
        (None, _) => (
            "Unknown",
            "NotContacted",
            "no admission request has needed this backend since this replica started".to_owned(),
        ),
    };
    condition(
        BACKEND_REACHABLE,
        status,
        reason,
        message,
        generation,
        previous,
    )
}

pub(super) fn condition(
    type_: &str,
    status: &str,
    reason: &str,
    message: String,
    generation: Option<i64>,
    previous: Option<&Condition>,
) -> Condition {
    let last_transition_time = match previous {
        Some(p) if p.status == status => p.last_transition_time.clone(),
        _ => Time(jiff::Timestamp::now()),
    };
    Condition {
        type_: type_.into(),
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
