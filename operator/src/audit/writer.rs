//! What the leader writes from the audit: `status.violations` and `status.lastAuditTime`
//! of each ContainerPolicy (batched: at most one write per policy per tick, only when
//! the count changed or the time is old), and the PolicyReports when their CRD is
//! installed. Followers write nothing; a new leader writes everything once.

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant, SystemTime};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{
    ApiResource, DeleteParams, DynamicObject, GroupVersionKind, ListParams, Patch, PatchParams,
};
use kube::{Api, Client};
use portcullis_crds::{Action, ContainerPolicy};
use portcullis_webhook::decisions::Decisions;
use portcullis_webhook::policy::SharedPolicySet;
use serde_json::{Value, json};
use tokio::sync::watch;

use super::Audit;
use super::reports::{self, REPORT_NAME};

/// How often the leader writes what changed.
pub const WRITE_EVERY: Duration = Duration::from_secs(3);
/// `lastAuditTime` is written again at least this often, even when counts hold.
const REFRESH_EVERY: Duration = Duration::from_secs(300);
/// Most namespace reports written per tick (the rest wait for the next).
const REPORTS_PER_TICK: usize = 50;
/// How often a missing PolicyReport CRD is looked for again.
const CRD_RECHECK: Duration = Duration::from_secs(10);
/// The field manager of the reports.
const MANAGER: &str = "portcullis-audit";

/// The leader's bookkeeping of what it wrote.
#[derive(Default)]
struct Written {
    counts: HashMap<String, (i64, Instant)>,
    pending: BTreeSet<String>,
    denials: HashMap<(String, String), u64>,
    cluster: Option<Value>,
    reports: Option<bool>,
    reports_checked: Option<Instant>,
    fresh: bool,
}

/// Writes until the process stops.
pub async fn run(
    client: Client,
    audit: Audit,
    policies: SharedPolicySet,
    decisions: Decisions,
    leader: watch::Receiver<bool>,
) {
    let mut written = Written::default();
    let mut tick = tokio::time::interval(WRITE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if !*leader.borrow() {
            written = Written::default();
            continue;
        }
        if !audit.synced() {
            continue;
        }
        if !written.fresh {
            // A new leader: everything once, and stale reports of namespaces now empty.
            written.fresh = true;
            written.pending = audit.ledger().namespaces();
            audit.ledger().take_dirty();
            if reports_on(&client, &mut written).await {
                written.pending.extend(existing_reports(&client).await);
            }
        }
        write_status(&client, &audit, &policies, &mut written).await;
        if reports_on(&client, &mut written).await {
            write_reports(&client, &audit, &policies, &decisions, &mut written).await;
        }
    }
}

async fn write_status(
    client: &Client,
    audit: &Audit,
    policies: &SharedPolicySet,
    written: &mut Written,
) {
    let (counts, audited) = {
        let ledger = audit.ledger();
        (ledger.violations_by_policy(), ledger.audited_at())
    };
    let Some(audited) = audited else { return };
    let api: Api<ContainerPolicy> = Api::all(client.clone());
    for policy in policies.load().policies() {
        let count = counts.get(&*policy.name).copied().unwrap_or_default();
        if !due(written.counts.get(&*policy.name), count, Instant::now()) {
            continue;
        }
        let time =
            Time(jiff::Timestamp::try_from(audited).unwrap_or_else(|_| jiff::Timestamp::now()));
        let status = json!({"status": {"violations": count, "lastAuditTime": time}});
        match api
            .patch_status(
                &policy.name,
                &PatchParams::default(),
                &Patch::Merge(&status),
            )
            .await
        {
            Ok(_) => {
                written
                    .counts
                    .insert(policy.name.to_string(), (count, Instant::now()));
            }
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(error) => {
                tracing::warn!(policy = %policy.name, %error, "could not write the audit's count; retrying");
            }
        }
    }
}

/// Whether a policy's status is written now: never written by this leader, a count
/// that changed, or a `lastAuditTime` older than [`REFRESH_EVERY`]. (Ticks are
/// [`WRITE_EVERY`] apart, so a policy gets at most one write per tick.)
fn due(last: Option<&(i64, Instant)>, count: i64, now: Instant) -> bool {
    last.is_none_or(|(written, at)| *written != count || now.duration_since(*at) >= REFRESH_EVERY)
}

fn resource(kind: &str) -> ApiResource {
    ApiResource::from_gvk(&GroupVersionKind::gvk("wgpolicyk8s.io", "v1alpha2", kind))
}

/// Whether the PolicyReport CRD is served (checked again now and then while it is not).
async fn reports_on(client: &Client, written: &mut Written) -> bool {
    if written.reports == Some(true) {
        return true;
    }
    if written
        .reports_checked
        .is_some_and(|at| at.elapsed() < CRD_RECHECK)
    {
        return false;
    }
    written.reports_checked = Some(Instant::now());
    let served = match client.list_api_group_resources(reports::API_VERSION).await {
        Ok(list) => list.resources.iter().any(|r| r.name == "policyreports"),
        Err(_) => false,
    };
    if served {
        tracing::info!("PolicyReport CRD found: writing PolicyReports");
    } else if written.reports.is_none() {
        tracing::info!(
            "the PolicyReport CRD (wgpolicyk8s.io/v1alpha2) is not installed: reports are off (`kubectl apply -k config/reports` turns them on)"
        );
    }
    written.reports = Some(served);
    served
}

/// Namespaces holding a report Portcullis wrote (a new leader checks each one).
async fn existing_reports(client: &Client) -> Vec<String> {
    let api: Api<DynamicObject> = Api::all_with(client.clone(), &resource("PolicyReport"));
    let params = ListParams::default().labels("app.kubernetes.io/managed-by=portcullis");
    match api.list_metadata(&params).await {
        Ok(list) => list
            .items
            .into_iter()
            .filter_map(|r| r.metadata.namespace)
            .collect(),
        Err(error) => {
            tracing::warn!(%error, "could not list existing PolicyReports");
            Vec::new()
        }
    }
}

async fn write_reports(
    client: &Client,
    audit: &Audit,
    policies: &SharedPolicySet,
    decisions: &Decisions,
    written: &mut Written,
) {
    let denials = decisions.denials();
    for (key, denied) in &denials {
        if written.denials.get(key) != Some(&denied.count) {
            written.pending.insert(key.0.clone());
        }
    }
    written.pending.extend(audit.ledger().take_dirty());
    let now = SystemTime::now();
    let batch: Vec<String> = written
        .pending
        .iter()
        .take(REPORTS_PER_TICK)
        .cloned()
        .collect();
    for namespace in batch {
        let mut here: Vec<(&str, &portcullis_webhook::decisions::Denials)> = denials
            .iter()
            .filter(|((ns, _), _)| *ns == namespace)
            .map(|((_, policy), d)| (policy.as_str(), d))
            .collect();
        here.sort_by_key(|(policy, _)| *policy);
        let report = reports::namespace_report(&audit.ledger(), &namespace, &here, now);
        let api: Api<DynamicObject> =
            Api::namespaced_with(client.clone(), &namespace, &resource("PolicyReport"));
        let outcome = match &report {
            Some(report) => apply(&api, report).await,
            None => match api.delete(REPORT_NAME, &DeleteParams::default()).await {
                Ok(_) => Ok(()),
                Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
                Err(error) => Err(error),
            },
        };
        match outcome {
            Ok(()) => {
                written.pending.remove(&namespace);
                for (policy, d) in &here {
                    written
                        .denials
                        .insert((namespace.clone(), (*policy).to_owned()), d.count);
                }
            }
            // The namespace is being deleted, or gone: nothing to report there.
            Err(kube::Error::Api(e))
                if e.code == 404 || e.code == 403 && e.message.contains("being terminated") =>
            {
                written.pending.remove(&namespace);
            }
            Err(error) => {
                tracing::warn!(%namespace, %error, "could not write the PolicyReport; retrying");
            }
        }
    }
    let set = policies.load();
    let named: Vec<(String, Action)> = set
        .policies()
        .iter()
        .map(|p| (p.name.to_string(), p.action))
        .collect();
    let mut denied: HashMap<String, u64> = HashMap::new();
    for ((_, policy), d) in &denials {
        *denied.entry(policy.clone()).or_default() += d.count;
    }
    let counts = audit.ledger().violations_by_policy();
    let cluster = reports::cluster_report(&named, &counts, &denied, now);
    let unchanged = written
        .cluster
        .as_ref()
        .is_some_and(|last| same_results(last, &cluster));
    if !unchanged {
        let api: Api<DynamicObject> =
            Api::all_with(client.clone(), &resource("ClusterPolicyReport"));
        match apply(&api, &cluster).await {
            Ok(()) => written.cluster = Some(cluster),
            Err(error) => {
                tracing::warn!(%error, "could not write the ClusterPolicyReport; retrying")
            }
        }
    }
}

/// Whether two reports say the same, timestamps aside.
fn same_results(a: &Value, b: &Value) -> bool {
    let strip = |v: &Value| {
        let mut v = v.clone();
        if let Some(results) = v.get_mut("results").and_then(Value::as_array_mut) {
            for r in results {
                if let Some(r) = r.as_object_mut() {
                    r.remove("timestamp");
                }
            }
        }
        v
    };
    strip(a) == strip(b)
}

async fn apply(api: &Api<DynamicObject>, report: &Value) -> Result<(), kube::Error> {
    api.patch(
        REPORT_NAME,
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(report),
    )
    .await
    .map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_status_is_written_when_new_changed_or_old_and_not_otherwise() {
        let now = Instant::now();
        assert!(due(None, 0, now), "never written");
        let recent = (3, now);
        assert!(
            !due(Some(&recent), 3, now + WRITE_EVERY),
            "same count, written a tick ago"
        );
        assert!(
            due(Some(&recent), 4, now + WRITE_EVERY),
            "the count changed"
        );
        assert!(
            due(Some(&recent), 3, now + REFRESH_EVERY),
            "lastAuditTime is old"
        );
    }

    #[test]
    fn reports_that_differ_only_in_timestamps_are_the_same() {
        let a = json!({"results": [{"policy": "p", "timestamp": {"seconds": 1, "nanos": 0}}]});
        let b = json!({"results": [{"policy": "p", "timestamp": {"seconds": 2, "nanos": 0}}]});
        let c = json!({"results": [{"policy": "q", "timestamp": {"seconds": 2, "nanos": 0}}]});
        assert!(same_results(&a, &b));
        assert!(!same_results(&a, &c));
    }
}
