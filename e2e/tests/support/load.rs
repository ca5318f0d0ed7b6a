//! Pods created through the API server at a steady rate, each answered by the webhook:
//! most must be admitted, every tenth (an image a test policy blocks) must be denied with
//! that policy's message. Anything else — a webhook call that failed, a TLS error, a
//! timeout, a wrong verdict — is a failure.

use std::fmt;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::PostParams;
use tokio::task::JoinSet;

/// The image every tenth Pod uses; the load's Block policy denies it.
pub const DENIED_IMAGE: &str = "denied.e2e.invalid/app:1";
/// The image the other Pods use.
pub const ALLOWED_IMAGE: &str = "allowed.e2e.invalid/app:1";

/// The Block policy that denies [`DENIED_IMAGE`] in `namespace`.
pub fn deny_policy(name: &str, namespace: &str) -> String {
    super::policy(
        name,
        &format!(
            "{{action: Block, match: {{namespaces: [{namespace}]}}, rules: {{registries: {{deny: [\"denied.e2e.invalid/**\"]}}}}}}"
        ),
    )
}

/// What a load run saw.
#[derive(Debug, Default)]
pub struct Report {
    /// Creates sent.
    pub sent: usize,
    /// Pods admitted as expected.
    pub admitted: usize,
    /// Pods denied by the policy as expected.
    pub denied: usize,
    /// Everything else, with the time since the start.
    pub failures: Vec<String>,
    /// Slowest answer.
    pub slowest: Duration,
    /// How long the run took.
    pub elapsed: Duration,
}

impl Report {
    /// Fails the test when any create failed, listing each on stdout first (a test
    /// report shows stdout whole; stderr carries the replicas' logs).
    pub fn assert_no_failures(&self) {
        for failure in &self.failures {
            println!("failed: {failure}");
        }
        assert!(
            self.failures.is_empty(),
            "{} of {} creates failed (listed on stdout)",
            self.failures.len(),
            self.sent
        );
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} creates in {:.1}s ({:.1}/s): {} admitted, {} denied by policy, {} failed; slowest answer {} ms",
            self.sent,
            self.elapsed.as_secs_f64(),
            self.sent as f64 / self.elapsed.as_secs_f64().max(0.001),
            self.admitted,
            self.denied,
            self.failures.len(),
            self.slowest.as_millis()
        )
    }
}

fn pod(name: &str, image: &str) -> Pod {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": "load"}},
        "spec": {"containers": [{"name": "app", "image": image}]}
    }))
    .unwrap()
}

/// Creates `rate` Pods per second in `namespace` for `duration`, named `{prefix}-N`.
pub async fn create_pods(
    client: kube::Client,
    namespace: &str,
    prefix: &str,
    policy: &str,
    rate: u32,
    duration: Duration,
) -> Report {
    let api: Api<Pod> = Api::namespaced(client, namespace);
    let started = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_secs(1) / rate);
    let mut inflight = JoinSet::new();
    let mut report = Report::default();
    let expected_denial = format!("ContainerPolicy \"{policy}\"");
    while started.elapsed() < duration {
        tick.tick().await;
        let n = report.sent;
        report.sent += 1;
        let deny = n % 10 == 9;
        let pod = pod(
            &format!("{prefix}-{n}"),
            if deny { DENIED_IMAGE } else { ALLOWED_IMAGE },
        );
        let api = api.clone();
        let expected_denial = expected_denial.clone();
        inflight.spawn(async move {
            let sent = Instant::now();
            let result = api.create(&PostParams::default(), &pod).await;
            let took = sent.elapsed();
            let at = started.elapsed().as_secs_f64();
            let outcome = match (deny, result) {
                (false, Ok(_)) => Ok(false),
                (true, Err(kube::Error::Api(status)))
                    if status.code == 403 && status.message.contains(&expected_denial) =>
                {
                    Ok(true)
                }
                (true, Ok(_)) => Err(format!("{at:.1}s pod {n}: admitted, should be denied")),
                (_, Err(error)) => Err(format!("{at:.1}s pod {n}: {error}")),
            };
            (outcome, took)
        });
        while let Some(done) = inflight.try_join_next() {
            record(&mut report, done);
        }
    }
    while let Some(done) = inflight.join_next().await {
        record(&mut report, done);
    }
    report.elapsed = started.elapsed();
    report
}

type Outcome = (Result<bool, String>, Duration);

fn record(report: &mut Report, done: Result<Outcome, tokio::task::JoinError>) {
    match done {
        Ok((Ok(false), took)) => {
            report.admitted += 1;
            report.slowest = report.slowest.max(took);
        }
        Ok((Ok(true), took)) => {
            report.denied += 1;
            report.slowest = report.slowest.max(took);
        }
        Ok((Err(failure), _)) => report.failures.push(failure),
        Err(error) => report.failures.push(format!("task failed: {error}")),
    }
}
