//! Leader election over a `coordination.k8s.io/v1` Lease, the way client-go's
//! leaderelection does it (expiry judged by this replica's clock from when it last saw
//! the lease change, optimistic concurrency on every write), plus a watch of the Lease:
//! a lease released by a leader that shuts down is taken within moments, not when it
//! would have expired.

use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{ObjectMeta, PostParams};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client};
use tokio::sync::watch;
use tokio::time::Instant;

/// The lease and who competes for it.
#[derive(Debug, Clone)]
pub struct Election {
    /// Namespace of the Lease.
    pub namespace: String,
    /// Name of the Lease.
    pub name: String,
    /// This replica's identity (its Pod name).
    pub identity: String,
    /// How long a lease lasts without renewal. The holder renews every third of it and
    /// steps down when it could not renew for two thirds of it.
    pub duration: Duration,
}

/// How long to wait before writing again after a failed write.
const RETRY: Duration = Duration::from_secs(2);

/// What this replica knows of the Lease.
struct Observed {
    lease: Option<Lease>,
    /// When (by this replica's clock) holder or renew time last changed.
    changed_at: Instant,
}

impl Observed {
    fn spec(&self) -> Option<&LeaseSpec> {
        self.lease.as_ref()?.spec.as_ref()
    }

    fn holder(&self) -> Option<&str> {
        self.spec()?
            .holder_identity
            .as_deref()
            .filter(|h| !h.is_empty())
    }

    /// Takes what the API server says, noting when the record last changed.
    fn update(&mut self, lease: Option<Lease>) {
        let record = |l: &Option<Lease>| {
            l.as_ref().and_then(|l| l.spec.as_ref()).map(|s| {
                (
                    s.holder_identity.clone(),
                    s.renew_time.clone(),
                    s.lease_duration_seconds,
                )
            })
        };
        if record(&lease) != record(&self.lease) {
            self.changed_at = Instant::now();
        }
        self.lease = lease;
    }

    /// When a lease held by someone else may be taken.
    fn expires_at(&self, default: Duration) -> Instant {
        let seconds = self.spec().and_then(|s| s.lease_duration_seconds);
        let duration = seconds
            .and_then(|s| u64::try_from(s).ok())
            .map_or(default, Duration::from_secs);
        self.changed_at + duration
    }
}

/// Competes for the lease until `stop` completes; `leader` says whether this replica
/// holds it. On `stop` a leader steps down (sends `false`) and releases the lease.
pub async fn run(
    client: Client,
    election: Election,
    leader: watch::Sender<bool>,
    stop: impl std::future::Future<Output = ()>,
) {
    let api: Api<Lease> = Api::namespaced(client, &election.namespace);
    let config = watcher::Config::default().fields(&format!("metadata.name={}", election.name));
    let mut events = std::pin::pin!(watcher::watcher(api.clone(), config).default_backoff());
    let mut stop = std::pin::pin!(stop);
    let mut observed = Observed {
        lease: None,
        changed_at: Instant::now(),
    };
    let mut synced = false;
    let mut last_renewed: Option<Instant> = None;
    let mut retry_at = Instant::now();
    loop {
        let holding = last_renewed.is_some();
        let due = if !synced {
            None
        } else if let Some(renewed) = last_renewed {
            Some(renewed + election.duration / 3)
        } else {
            match observed.holder() {
                // Free, or held by this identity before a restart: take it now.
                None => Some(Instant::now()),
                Some(holder) if holder == election.identity => Some(Instant::now()),
                Some(_) => Some(observed.expires_at(election.duration)),
            }
        };
        let due = due.map(|d| d.max(retry_at));
        let sleep = async {
            match due {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            biased;
            () = &mut stop => break,
            event = events.next() => {
                match event {
                    Some(Ok(Event::Apply(lease) | Event::InitApply(lease))) => observed.update(Some(lease)),
                    Some(Ok(Event::Delete(_))) => observed.update(None),
                    Some(Ok(Event::InitDone)) => synced = true,
                    Some(Ok(Event::Init)) => {}
                    Some(Err(error)) => tracing::warn!(%error, lease = %election.name, "watching the leader lease; retrying"),
                    None => break,
                }
                if holding && observed.holder() != Some(election.identity.as_str()) && observed.lease.is_some() {
                    tracing::warn!(holder = ?observed.holder(), "another replica holds the leader lease: stepping down");
                    last_renewed = None;
                }
            }
            () = sleep => {
                match hold(&api, &election, &observed).await {
                    Ok(lease) => {
                        if !holding {
                            tracing::info!(identity = %election.identity, lease = %election.name, "acquired the leader lease");
                        }
                        observed.update(Some(lease));
                        last_renewed = Some(Instant::now());
                    }
                    Err(error) => {
                        retry_at = Instant::now() + RETRY;
                        if !is_conflict(&error) {
                            tracing::warn!(%error, lease = %election.name, "could not write the leader lease");
                        }
                        // Someone else wrote it (or it vanished): read what is there now.
                        if let Ok(current) = api.get_opt(&election.name).await {
                            observed.update(current);
                        }
                        if let Some(renewed) = last_renewed
                            && (renewed.elapsed() >= election.duration * 2 / 3
                                || observed.holder() != Some(election.identity.as_str()))
                        {
                            tracing::warn!(lease = %election.name, "could not renew the leader lease in time: stepping down");
                            last_renewed = None;
                        }
                    }
                }
            }
        }
        leader.send_if_modified(|is| {
            let now = last_renewed.is_some();
            std::mem::replace(is, now) != now
        });
    }
    if last_renewed.is_some() {
        // Writers stop first, then the lease is free for the next leader.
        leader.send_replace(false);
        match release(&api, &election).await {
            Ok(()) => tracing::info!(lease = %election.name, "released the leader lease"),
            Err(error) => {
                tracing::warn!(%error, "could not release the leader lease; it will expire")
            }
        }
    }
}

fn is_conflict(error: &kube::Error) -> bool {
    matches!(error, kube::Error::Api(status) if status.code == 409)
}

fn now() -> MicroTime {
    MicroTime(jiff::Timestamp::now())
}

fn seconds(duration: Duration) -> i32 {
    i32::try_from(duration.as_secs()).unwrap_or(i32::MAX)
}

/// Takes or renews the lease; the write fails with a conflict if anyone changed it
/// since it was observed.
async fn hold(api: &Api<Lease>, election: &Election, observed: &Observed) -> kube::Result<Lease> {
    let Some(current) = &observed.lease else {
        let lease = Lease {
            metadata: ObjectMeta {
                name: Some(election.name.clone()),
                namespace: Some(election.namespace.clone()),
                ..ObjectMeta::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(election.identity.clone()),
                lease_duration_seconds: Some(seconds(election.duration)),
                acquire_time: Some(now()),
                renew_time: Some(now()),
                lease_transitions: Some(0),
                ..LeaseSpec::default()
            }),
        };
        return api.create(&PostParams::default(), &lease).await;
    };
    let mut lease = current.clone();
    let spec = lease.spec.get_or_insert_default();
    if spec.holder_identity.as_deref() != Some(election.identity.as_str()) {
        spec.acquire_time = Some(now());
        spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
    }
    spec.holder_identity = Some(election.identity.clone());
    spec.lease_duration_seconds = Some(seconds(election.duration));
    spec.renew_time = Some(now());
    api.replace(&election.name, &PostParams::default(), &lease)
        .await
}

/// Gives the lease up, if this replica still holds it.
async fn release(api: &Api<Lease>, election: &Election) -> kube::Result<()> {
    let Some(mut lease) = api.get_opt(&election.name).await? else {
        return Ok(());
    };
    let spec = lease.spec.get_or_insert_default();
    if spec.holder_identity.as_deref() != Some(election.identity.as_str()) {
        return Ok(());
    }
    spec.holder_identity = None;
    spec.lease_duration_seconds = Some(1);
    spec.renew_time = Some(now());
    api.replace(&election.name, &PostParams::default(), &lease)
        .await
        .map(drop)
}
