//! What the audit keeps of a live object: who it is and the pod spec as the rules read
//! it (owned; nothing else of the object), so memory follows what runs, not whole objects.

use std::fmt;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use portcullis_webhook::workload::{PodSpec, WorkloadKind};
use serde::Deserialize;
use serde_json::Value;

/// Identifies a live object; ordered by namespace first, so a namespace's objects are
/// one range.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectKey {
    /// Its namespace.
    pub namespace: String,
    /// Its kind.
    pub kind: WorkloadKind,
    /// Its name.
    pub name: String,
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}/{}", self.kind, self.namespace, self.name)
    }
}

/// A live object as the audit judges it.
#[derive(Debug)]
pub struct Running {
    /// `metadata.uid`.
    pub uid: String,
    /// `apiVersion` it was read as.
    pub api_version: &'static str,
    /// The pod spec's fields the rules read.
    pub spec: PodSpec<'static>,
    /// Pods: the digest each container's image runs at (`status.containerStatuses[].imageID`),
    /// by container name.
    pub digests: Vec<(String, String)>,
}

/// What an event's object amounts to.
#[derive(Debug)]
pub enum Projected {
    /// An object the rules judge.
    Live(ObjectKey, Box<Running>),
    /// An object nothing runs from: a finished Pod, a ReplicaSet or ReplicationController
    /// scaled to zero (a Deployment's old revisions). Not judged; forgotten if known.
    Idle(ObjectKey),
}

/// Why an object could not be projected.
#[derive(Debug, thiserror::Error)]
#[error("{key}: {message}")]
pub struct ProjectionError {
    /// The object.
    pub key: String,
    /// What was wrong.
    pub message: String,
}

/// The key of an object of `kind` with `metadata`.
pub fn key(kind: WorkloadKind, metadata: &ObjectMeta) -> ObjectKey {
    ObjectKey {
        namespace: metadata.namespace.clone().unwrap_or_default(),
        kind,
        name: metadata.name.clone().unwrap_or_default(),
    }
}

/// Projects one watched object (`metadata` and the rest as JSON) of `kind`.
pub fn project(
    kind: WorkloadKind,
    api_version: &'static str,
    metadata: &ObjectMeta,
    mut data: Value,
) -> Result<Projected, ProjectionError> {
    let key = key(kind, metadata);
    if is_idle(kind, &data) {
        return Ok(Projected::Idle(key));
    }
    let pointer = match kind {
        WorkloadKind::Pod => "/spec",
        WorkloadKind::CronJob => "/spec/jobTemplate/spec/template/spec",
        _ => "/spec/template/spec",
    };
    let spec = match data.pointer_mut(pointer).map(Value::take) {
        None | Some(Value::Null) => PodSpec::default(),
        Some(value) => PodSpec::deserialize(value).map_err(|e| ProjectionError {
            key: key.to_string(),
            message: format!("{} cannot be read: {e}", kind.pod_spec_path()),
        })?,
    };
    let digests = if kind == WorkloadKind::Pod {
        running_digests(&data)
    } else {
        Vec::new()
    };
    Ok(Projected::Live(
        key,
        Box::new(Running {
            uid: metadata.uid.clone().unwrap_or_default(),
            api_version,
            spec,
            digests,
        }),
    ))
}

fn is_idle(kind: WorkloadKind, data: &Value) -> bool {
    match kind {
        WorkloadKind::Pod => matches!(
            data.pointer("/status/phase").and_then(Value::as_str),
            Some("Succeeded" | "Failed")
        ),
        WorkloadKind::ReplicaSet | WorkloadKind::ReplicationController => {
            data.pointer("/spec/replicas").and_then(Value::as_i64) == Some(0)
        }
        _ => false,
    }
}

/// `sha256:…` of each container status whose `imageID` names a repository digest
/// (`docker-pullable://repo@sha256:…`, `repo@sha256:…`).
fn running_digests(data: &Value) -> Vec<(String, String)> {
    let mut digests = Vec::new();
    for list in [
        "initContainerStatuses",
        "containerStatuses",
        "ephemeralContainerStatuses",
    ] {
        let Some(statuses) = data
            .pointer(&format!("/status/{list}"))
            .and_then(Value::as_array)
        else {
            continue;
        };
        for status in statuses {
            let name = status.get("name").and_then(Value::as_str);
            let id = status.get("imageID").and_then(Value::as_str);
            if let (Some(name), Some(id)) = (name, id)
                && let Some((_, digest)) = id.rsplit_once('@')
                && digest.starts_with("sha256:")
            {
                digests.push((name.to_owned(), digest.to_owned()));
            }
        }
    }
    digests
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn meta() -> ObjectMeta {
        ObjectMeta {
            name: Some("api".into()),
            namespace: Some("team-a".into()),
            uid: Some("u-1".into()),
            ..Default::default()
        }
    }

    /// The projection keeps the fields the rules read and nothing of the rest (env,
    /// probes, resources), and the running digests from the Pod's status.
    #[test]
    fn a_pod_keeps_what_rules_read_and_the_running_digests() {
        let data = json!({
            "spec": {"containers": [{"name": "app", "image": "nginx:1.25",
                "env": [{"name": "X", "value": "y"}], "resources": {"limits": {"cpu": "1"}},
                "securityContext": {"privileged": true}}],
                "hostNetwork": true},
            "status": {"phase": "Running", "containerStatuses": [
                {"name": "app", "imageID": "docker-pullable://nginx@sha256:abc"},
                {"name": "side", "imageID": "sha256:config-id-not-a-repo-digest"}]}
        });
        let Projected::Live(key, running) =
            project(WorkloadKind::Pod, "v1", &meta(), data).unwrap()
        else {
            panic!("a running Pod is live");
        };
        assert_eq!(key.to_string(), "Pod team-a/api");
        let containers = running.spec.containers.as_ref().unwrap();
        assert_eq!(containers[0].image.as_deref(), Some("nginx:1.25"));
        assert_eq!(
            containers[0].security_context.as_ref().unwrap().privileged,
            Some(true)
        );
        assert_eq!(running.spec.host_network, Some(true));
        assert_eq!(
            running.digests,
            vec![("app".to_owned(), "sha256:abc".to_owned())]
        );
    }

    #[test]
    fn templates_are_read_where_each_kind_keeps_them() {
        let cron = json!({"spec": {"jobTemplate": {"spec": {"template": {"spec":
            {"containers": [{"name": "c", "image": "busybox"}]}}}}}});
        let Projected::Live(_, running) =
            project(WorkloadKind::CronJob, "batch/v1", &meta(), cron).unwrap()
        else {
            panic!("live");
        };
        assert_eq!(running.spec.containers.as_ref().unwrap()[0].name, "c");
        let deployment = json!({"spec": {"replicas": 0, "template": {"spec":
            {"containers": [{"name": "d", "image": "busybox"}]}}}});
        let Projected::Live(_, running) =
            project(WorkloadKind::Deployment, "apps/v1", &meta(), deployment).unwrap()
        else {
            panic!("a Deployment at zero replicas is still intent, judged");
        };
        assert_eq!(running.spec.containers.as_ref().unwrap()[0].name, "d");
    }

    #[test]
    fn finished_pods_and_replica_sets_at_zero_are_idle() {
        let done = json!({"spec": {"containers": []}, "status": {"phase": "Succeeded"}});
        assert!(matches!(
            project(WorkloadKind::Pod, "v1", &meta(), done),
            Ok(Projected::Idle(_))
        ));
        let old = json!({"spec": {"replicas": 0, "template": {"spec": {"containers": []}}}});
        assert!(matches!(
            project(WorkloadKind::ReplicaSet, "apps/v1", &meta(), old),
            Ok(Projected::Idle(_))
        ));
    }

    #[test]
    fn a_spec_that_cannot_be_read_names_the_object_and_field() {
        let bad = json!({"spec": {"containers": "not a list"}});
        let error = project(WorkloadKind::Pod, "v1", &meta(), bad).unwrap_err();
        assert!(
            error
                .to_string()
                .starts_with("Pod team-a/api: spec cannot be read"),
            "{error}"
        );
    }
}
