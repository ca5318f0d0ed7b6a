//! A rolling restart under load, against a real API server: two replicas behind a
//! balancer that sends new connections only to ready replicas (as Service endpoints
//! do), the webhook registered by URL at the balancer, Pods created through the API
//! server at 50/s for 60 s while each replica is restarted in turn. Not one create may
//! fail, and every verdict must be the policy's.

#![allow(clippy::unwrap_used)] // in tests a panic is the failure report

mod support;

use std::time::Duration;

use support::installed::Installed;
use support::load::create_pods;
use support::shared_cluster;

#[tokio::test(flavor = "multi_thread")]
async fn a_rolling_restart_under_load_fails_no_request() {
    let Some(cluster) = shared_cluster() else {
        return;
    };
    let mut installed =
        Installed::start(&cluster, "pc-rolling", 2, &["--shutdown-grace", "2s"]).await;
    let client = cluster.client().await;
    let load = tokio::spawn({
        let (namespace, policy) = (installed.namespace.clone(), installed.policy.clone());
        async move {
            create_pods(
                client,
                &namespace,
                "load",
                &policy,
                50,
                Duration::from_secs(60),
            )
            .await
        }
    });
    tokio::time::sleep(Duration::from_secs(10)).await;
    for index in [0, 1] {
        let started = std::time::Instant::now();
        installed.restart(index).await;
        println!(
            "replica {index} restarted (SIGTERM to ready successor) in {:?}",
            started.elapsed()
        );
        tokio::time::sleep(Duration::from_secs(15)).await;
    }
    let report = load.await.unwrap();
    let (connections, refused) = installed.balancer.connections();
    // On stdout, which a test report shows whole (stderr carries the replicas' logs).
    println!(
        "rolling restart under load: {report}; balancer connections per replica {connections:?}, refused {refused}"
    );
    report.assert_no_failures();
    assert!(report.sent >= 2500, "the load did not reach 50/s: {report}");
    assert_eq!(report.admitted + report.denied, report.sent);
}
