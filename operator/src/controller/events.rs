//! Events about Portcullis's own objects (`events.k8s.io/v1`), as `kubectl describe`
//! and `kubectl get events -A` show them.

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{ObjectMeta, PostParams};
use kube::{Api, Client};

/// Where Events about cluster-scoped objects are created. Every API server accepts them
/// in `kube-system`; v1.19–1.21 refuse `default`, which later versions also allow.
pub const CLUSTER_EVENTS_NAMESPACE: &str = "kube-system";
/// The API server refuses notes longer than this (bytes).
const NOTE_LIMIT: usize = 1024;

/// Who reports: the controller and this replica.
#[derive(Debug, Clone)]
pub struct Reporter {
    /// `reportingController`.
    pub controller: String,
    /// `reportingInstance`: this replica.
    pub instance: String,
}

/// A Warning Event about the cluster-scoped object `regarding`.
pub async fn warn(
    client: &Client,
    reporter: &Reporter,
    regarding: ObjectReference,
    reason: &str,
    action: &str,
    note: &str,
) -> kube::Result<()> {
    let now = jiff::Timestamp::now();
    let name = format!(
        "{}.{:x}",
        regarding.name.as_deref().unwrap_or(&reporter.controller),
        now.as_nanosecond()
    );
    let event = Event {
        metadata: ObjectMeta {
            name: Some(name),
            namespace: Some(CLUSTER_EVENTS_NAMESPACE.into()),
            ..ObjectMeta::default()
        },
        event_time: Some(MicroTime(now)),
        type_: Some("Warning".into()),
        reason: Some(reason.into()),
        action: Some(action.into()),
        note: Some(truncate(note, NOTE_LIMIT).into()),
        regarding: Some(ObjectReference {
            namespace: None,
            ..regarding
        }),
        reporting_controller: Some(reporter.controller.clone()),
        reporting_instance: Some(reporter.instance.clone()),
        ..Event::default()
    };
    Api::<Event>::namespaced(client.clone(), CLUSTER_EVENTS_NAMESPACE)
        .create(&PostParams::default(), &event)
        .await
        .map(drop)
}

/// `text` cut to at most `limit` bytes, on a character boundary.
fn truncate(text: &str, limit: usize) -> &str {
    if text.len() <= limit {
        return text;
    }
    let mut end = limit;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notes_are_cut_on_a_character_boundary() {
        assert_eq!(truncate("short", 10), "short");
        let long = "é".repeat(600); // 1,200 bytes
        let cut = truncate(&long, NOTE_LIMIT);
        assert!(cut.len() <= NOTE_LIMIT && cut.len() >= NOTE_LIMIT - 1);
        assert!(cut.chars().all(|c| c == 'é'));
    }
}
