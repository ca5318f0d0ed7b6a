//! The audit's watches: every supported kind the API server serves, projected as events
//! arrive (the full objects are dropped at once).

use std::sync::mpsc::Sender;

use futures::{StreamExt, future};
use kube::api::{ApiResource, DynamicObject, GroupVersionKind};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client};
use portcullis_webhook::workload::WorkloadKind;

use super::Input;
use super::projection::{Projected, key, project};

/// Where each kind is served: `(group, version)`, preferred first.
fn candidates(kind: WorkloadKind) -> &'static [(&'static str, &'static str)] {
    match kind {
        WorkloadKind::Pod | WorkloadKind::ReplicationController => &[("", "v1")],
        WorkloadKind::Deployment
        | WorkloadKind::ReplicaSet
        | WorkloadKind::StatefulSet
        | WorkloadKind::DaemonSet => &[("apps", "v1")],
        WorkloadKind::Job => &[("batch", "v1")],
        // batch/v1 from Kubernetes 1.21; batch/v1beta1 before.
        WorkloadKind::CronJob => &[("batch", "v1"), ("batch", "v1beta1")],
    }
}

/// The kinds this API server serves, each at the first version it serves.
pub async fn resources(client: &Client) -> anyhow::Result<Vec<(WorkloadKind, ApiResource)>> {
    let mut found = Vec::new();
    for kind in WorkloadKind::ALL {
        let plural = kind.resource();
        for (group, version) in candidates(kind) {
            let api_version = if group.is_empty() {
                (*version).to_owned()
            } else {
                format!("{group}/{version}")
            };
            let listed = if group.is_empty() {
                client.list_core_api_resources(version).await
            } else {
                client.list_api_group_resources(&api_version).await
            };
            let served = match listed {
                Ok(list) => list.resources.iter().any(|r| r.name == *plural),
                Err(kube::Error::Api(status)) if status.code == 404 => false,
                Err(error) => {
                    return Err(anyhow::Error::new(error).context(format!(
                        "discovering where {kind} is served ({api_version})"
                    )));
                }
            };
            if served {
                let gvk = GroupVersionKind::gvk(group, version, kind.as_str());
                found.push((kind, ApiResource::from_gvk_with_plural(&gvk, plural)));
                break;
            }
        }
    }
    if !found.iter().any(|(kind, _)| *kind == WorkloadKind::Pod) {
        anyhow::bail!("the API server serves no v1 Pods");
    }
    Ok(found)
}

/// Watches every resource into `inputs` until a stream ends (they retry with backoff).
pub async fn all(
    client: Client,
    resources: Vec<(WorkloadKind, ApiResource)>,
    inputs: Sender<Input>,
) {
    let streams = resources.into_iter().map(|(kind, resource)| {
        let api: Api<DynamicObject> = Api::all_with(client.clone(), &resource);
        let api_version: &'static str = api_version_of(&resource);
        let inputs = inputs.clone();
        watcher::watcher(api, watcher::Config::default())
            .default_backoff()
            .for_each(move |event| {
                let input = match event {
                    Ok(Event::Apply(o) | Event::InitApply(o)) => {
                        match project(kind, api_version, &o.metadata, o.data) {
                            Ok(Projected::Live(key, running)) => Some(Input::Live(key, running)),
                            Ok(Projected::Idle(key)) => Some(Input::Gone(key)),
                            Err(error) => {
                                tracing::warn!(%error, "the audit cannot judge an object");
                                None
                            }
                        }
                    }
                    Ok(Event::Delete(o)) => Some(Input::Gone(key(kind, &o.metadata))),
                    Ok(Event::Init) => Some(Input::Relisting(kind)),
                    Ok(Event::InitDone) => Some(Input::Relisted(kind)),
                    Err(error) => {
                        tracing::warn!(kind = kind.as_str(), %error, "audit watch failed; retrying with backoff");
                        None
                    }
                };
                if let Some(input) = input {
                    let _ = inputs.send(input);
                }
                future::ready(())
            })
    });
    future::join_all(streams).await;
}

/// The `apiVersion` string of a resource, interned for the process (a handful exist).
fn api_version_of(resource: &ApiResource) -> &'static str {
    match (resource.group.as_str(), resource.version.as_str()) {
        ("", _) => "v1",
        ("apps", _) => "apps/v1",
        ("batch", "v1beta1") => "batch/v1beta1",
        _ => "batch/v1",
    }
}
