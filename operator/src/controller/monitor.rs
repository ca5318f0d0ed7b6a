//! The AuditMonitor: its settings into this replica's audit-log receiver (every
//! replica), and its status (the leader only): `Ready`, `SinkReachable`, the findings
//! and the sink's counts, and an Event when its spec is rejected.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::api::{Patch, PatchParams};
use kube::runtime::WatchStreamExt;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client, Resource, ResourceExt};
use portcullis_crds::{AUDIT_MONITOR_NAME, AuditMonitor, AuditMonitorStatus};
use portcullis_webhook::auditlog::sink::SinkHealth;
use portcullis_webhook::auditlog::{AuditService, MonitorConfig, Settings, compile_monitor};
use portcullis_webhook::policy::{ObjectVersion, join_errors};
use serde_json::json;
use tokio::sync::watch;

use super::events::{self, Reporter};
use super::status::{
    ENFORCE_WAIT, FOLLOWER_RECHECK, INVALID_SPEC, READY, condition, merge_replace, ready_condition,
};
use crate::metrics::Metrics;

/// The condition about the sink.
pub const SINK_REACHABLE: &str = "SinkReachable";
/// The reason of `Ready=False` when this replica receives no audit events.
pub const RECEIVER_OFF: &str = "ReceiverOff";
/// How often the counts in the status are refreshed.
const REFRESH: Duration = Duration::from_secs(10);

/// Applies the AuditMonitor named `default` to `receiver` as the watch reports it: its
/// settings when it compiles (a version that does not keeps the last good one), every
/// default when there is none.
pub async fn apply_settings(client: Client, receiver: Arc<AuditService>, metrics: Arc<Metrics>) {
    let api = Api::<AuditMonitor>::all(client);
    let config = watcher::Config::default().fields(&format!("metadata.name={AUDIT_MONITOR_NAME}"));
    let mut events = std::pin::pin!(watcher::watcher(api, config).default_backoff());
    let mut listed = false;
    while let Some(event) = events.next().await {
        match event {
            Ok(Event::Apply(monitor) | Event::InitApply(monitor)) => {
                listed = true;
                match compile_monitor(&monitor.name_any(), &monitor.spec) {
                    Ok(config) => {
                        tracing::info!(generation = ?monitor.meta().generation, "audit-log detections configured by AuditMonitor default");
                        receiver.configure(config, ObjectVersion::of(monitor.meta()));
                    }
                    Err(errors) => tracing::warn!(
                        errors = join_errors(&errors),
                        "AuditMonitor default is invalid; the detections keep their previous settings"
                    ),
                }
            }
            Ok(Event::Delete(_)) => defaults(&receiver),
            Ok(Event::Init) => listed = false,
            Ok(Event::InitDone) => {
                if !listed {
                    defaults(&receiver);
                }
            }
            Err(error) => {
                metrics.watch_error("AuditMonitor");
                tracing::warn!(%error, "AuditMonitor watch failed; retrying with backoff, the detections keep their settings");
            }
        }
    }
}

fn defaults(receiver: &AuditService) {
    receiver.configure(
        MonitorConfig {
            settings: Settings::default(),
            sink: None,
        },
        ObjectVersion::default(),
    );
}

/// Why a status write failed (retried).
#[derive(Debug, thiserror::Error)]
enum Error {
    /// The API server refused or did not answer.
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// The status could not be encoded.
    #[error("encoding the status: {0}")]
    Encode(#[from] serde_json::Error),
}

impl Error {
    fn label(&self) -> &'static str {
        match self {
            Error::Kube(_) => "kube",
            Error::Encode(_) => "encode",
        }
    }
}

struct Context {
    client: Client,
    reporter: Reporter,
    metrics: Arc<Metrics>,
    leader: watch::Receiver<bool>,
    receiver: Option<Arc<AuditService>>,
}

/// Writes every AuditMonitor's status until the process stops; only the leader writes.
pub async fn report(
    client: Client,
    reporter: Reporter,
    metrics: Arc<Metrics>,
    leader: watch::Receiver<bool>,
    receiver: Option<Arc<AuditService>>,
) {
    let ctx = Arc::new(Context {
        client: client.clone(),
        reporter,
        metrics,
        leader,
        receiver,
    });
    Controller::new(Api::<AuditMonitor>::all(client), watcher::Config::default())
        .run(reconcile, error_policy, ctx)
        .for_each(|_| async {})
        .await;
}

/// The status `monitor` deserves: `Ready` from its spec and this replica's receiver,
/// `SinkReachable` when it has a sink, and the counts. `None` while a valid generation
/// is not applied to the receiver yet: `Ready=True` says it is.
fn desired(monitor: &AuditMonitor, receiver: Option<&AuditService>) -> Option<AuditMonitorStatus> {
    let generation = monitor.meta().generation;
    let previous = monitor.status.as_ref().map_or(&[][..], |s| &s.conditions);
    let find = |type_: &str| previous.iter().find(|c| c.type_ == type_);
    let compiled = compile_monitor(&monitor.name_any(), &monitor.spec);
    if compiled.is_ok()
        && receiver.is_some_and(|r| r.configured() != ObjectVersion::of(monitor.meta()))
    {
        return None;
    }
    let problem = match (compiled, receiver) {
        (Err(errors), _) => Some((
            INVALID_SPEC,
            if monitor.name_any() == AUDIT_MONITOR_NAME {
                format!(
                    "{}; the detections keep the last valid settings (every default after a restart)",
                    join_errors(&errors)
                )
            } else {
                format!("{}; it is not used", join_errors(&errors))
            },
        )),
        (Ok(_), None) => Some((
            RECEIVER_OFF,
            "Portcullis runs without --audit-token-file or --audit-client-ca-file: it receives no audit events".to_owned(),
        )),
        (Ok(_), Some(_)) => None,
    };
    let mut conditions = vec![ready_condition(problem.as_ref(), generation, find(READY))];
    // Only `default` is used: the others count nothing.
    let receiver = receiver.filter(|_| monitor.name_any() == AUDIT_MONITOR_NAME);
    let sink = receiver.map(|r| r.sink()).filter(|s| s.configured());
    if let Some(sink) = sink {
        conditions.push(sink_condition(
            &sink.health(),
            generation,
            find(SINK_REACHABLE),
        ));
    }
    Some(AuditMonitorStatus {
        observed_generation: generation,
        conditions,
        findings: receiver.map(AuditService::counts),
        sink: sink.map(|s| s.status()),
    })
}

fn sink_condition(
    health: &SinkHealth,
    generation: Option<i64>,
    previous: Option<&Condition>,
) -> Condition {
    let (status, reason, message) = match (health.reachable, &health.last_error) {
        (Some(true), _) => (
            "True",
            "Delivered",
            "the last delivery was accepted".to_owned(),
        ),
        (Some(false), Some(error)) => (
            "False",
            "DeliveryFailed",
            format!("{error}; findings are spooled and sent again"),
        ),
        (Some(false), None) => (
            "False",
            "DeliveryFailed",
            "the last delivery failed; findings are spooled and sent again".to_owned(),
        ),
        (None, _) => (
            "Unknown",
            "NothingSent",
            "no finding has been sent since this replica started".to_owned(),
        ),
    };
    condition(
        SINK_REACHABLE,
        status,
        reason,
        message,
        generation,
        previous,
    )
}

async fn reconcile(monitor: Arc<AuditMonitor>, ctx: Arc<Context>) -> Result<Action, Error> {
    if !*ctx.leader.borrow() {
        return Ok(Action::requeue(FOLLOWER_RECHECK));
    }
    let Some(status) = desired(&monitor, ctx.receiver.as_deref()) else {
        return Ok(Action::requeue(ENFORCE_WAIT));
    };
    if monitor.status.as_ref() == Some(&status) {
        return Ok(Action::requeue(REFRESH));
    }
    let name = monitor.name_any();
    // Keys the status no longer has (a sink removed) are removed.
    let reported = monitor
        .status
        .as_ref()
        .and_then(|s| serde_json::to_value(s).ok());
    let patch = merge_replace(reported.as_ref(), serde_json::to_value(&status)?);
    Api::<AuditMonitor>::all(ctx.client.clone())
        .patch_status(
            &name,
            &PatchParams::default(),
            &Patch::Merge(&json!({ "status": patch })),
        )
        .await?;
    let ready = status.conditions.iter().find(|c| c.type_ == READY);
    let before = monitor
        .status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == READY));
    if let Some(ready) = ready
        && ready.status == "False"
        && before.is_none_or(|b| b.message != ready.message)
        && let Err(error) = events::warn(
            &ctx.client,
            &ctx.reporter,
            monitor.object_ref(&()),
            &ready.reason,
            "Validate",
            &ready.message,
        )
        .await
    {
        tracing::warn!(%error, object = %name, "could not publish the event");
    }
    Ok(Action::requeue(REFRESH))
}

fn error_policy(monitor: Arc<AuditMonitor>, error: &Error, ctx: Arc<Context>) -> Action {
    ctx.metrics.reconcile_error("AuditMonitor", error.label());
    tracing::warn!(object = %monitor.name_any(), %error, "AuditMonitor status reconcile failed; retrying");
    Action::requeue(Duration::from_secs(5))
}

#[cfg(test)]
mod tests {
    use super::*;
    use portcullis_crds::AuditMonitorSpec;

    fn monitor(name: &str, spec: serde_json::Value) -> AuditMonitor {
        let spec: AuditMonitorSpec = serde_json::from_value(spec).unwrap();
        let mut monitor = AuditMonitor::new(name, spec);
        monitor.metadata.generation = Some(3);
        monitor.metadata.uid = Some("uid-1".into());
        monitor
    }

    fn ready(status: &AuditMonitorStatus) -> (&str, &str, &str) {
        let c = status.conditions.iter().find(|c| c.type_ == READY).unwrap();
        (c.status.as_str(), c.reason.as_str(), c.message.as_str())
    }

    fn receiver() -> AuditService {
        AuditService::new(
            Some("a-token-long-enough".into()),
            None,
            Settings::default(),
            None,
        )
        .unwrap()
    }

    #[test]
    fn without_a_receiver_the_monitor_says_so() {
        let status = desired(&monitor("default", serde_json::json!({})), None).unwrap();
        assert_eq!(ready(&status).1, RECEIVER_OFF);
        assert_eq!(status.observed_generation, Some(3));
        assert!(status.findings.is_none());
    }

    #[test]
    fn a_valid_default_is_ready_with_counts_and_its_sink_not_yet_contacted() {
        let receiver = receiver();
        let monitor = monitor(
            "default",
            serde_json::json!({"sink": {"url": "https://siem.internal/findings"}}),
        );
        assert_eq!(
            desired(&monitor, Some(&receiver)),
            None,
            "not applied yet: no status claims it is"
        );
        let config = || compile_monitor("default", &monitor.spec).unwrap();
        let at = |uid: &str, generation| ObjectVersion {
            uid: Some(uid.into()),
            generation: Some(generation),
        };
        receiver.configure(config(), at("uid-1", 2));
        assert_eq!(
            desired(&monitor, Some(&receiver)),
            None,
            "generation 2 applies, the object is at 3"
        );
        receiver.configure(config(), at("deleted", 3));
        assert_eq!(
            desired(&monitor, Some(&receiver)),
            None,
            "an AuditMonitor deleted since applies"
        );
        receiver.configure(config(), at("uid-1", 3));
        let status = desired(&monitor, Some(&receiver)).unwrap();
        assert_eq!(ready(&status).0, "True");
        assert_eq!(status.findings.as_ref().map(|f| f.total), Some(0));
        let sink = status
            .conditions
            .iter()
            .find(|c| c.type_ == SINK_REACHABLE)
            .unwrap();
        assert_eq!(
            (sink.status.as_str(), sink.reason.as_str()),
            ("Unknown", "NothingSent")
        );
        assert_eq!(status.sink.map(|s| s.pending), Some(0));
    }

    #[test]
    fn invalid_monitors_name_their_fields_and_others_than_default_count_nothing() {
        let receiver = receiver();
        let bad = desired(
            &monitor("default", serde_json::json!({"detections": {"nope": {}}})),
            Some(&receiver),
        )
        .unwrap();
        let (status, reason, message) = ready(&bad);
        assert_eq!((status, reason), ("False", INVALID_SPEC));
        assert!(
            message.contains("spec.detections.nope: unknown detection"),
            "{message}"
        );
        assert!(
            message.contains("keep the last valid settings"),
            "{message}"
        );
        let other = desired(&monitor("strict", serde_json::json!({})), Some(&receiver)).unwrap();
        assert!(
            ready(&other).2.ends_with("it is not used"),
            "{:?}",
            ready(&other)
        );
        assert!(other.findings.is_none() && other.sink.is_none());
    }
}
