//! Two replicas with leader election against a real API server: the leader keeps the
//! caBundle (a configuration re-applied without it is repaired within 2 s); a leader
//! that is SIGKILLed is replaced within the lease duration, and its successor keeps
//! status and caBundle current; a leader that is SIGTERMed hands over at once.

#![allow(clippy::unwrap_used)] // in tests a panic is the failure report

mod support;

use std::time::{Duration, Instant};

use support::cluster::Cleanup;
use support::installed::Installed;
use support::{eventually, policy, shared_cluster, unique};

/// The lease duration `portcullis run` uses.
const LEASE_DURATION: Duration = Duration::from_secs(15);

#[tokio::test(flavor = "multi_thread")]
async fn leadership_fails_over_and_hands_over() {
    let Some(cluster) = shared_cluster() else {
        return;
    };
    let mut installed =
        Installed::start(&cluster, "pc-leader", 2, &["--shutdown-grace", "2s"]).await;

    let repaired = installed.wipe_ca_bundle();
    println!("caBundle repaired by the first leader in {repaired:?}");
    assert!(
        repaired < Duration::from_secs(2),
        "caBundle repaired after {repaired:?}"
    );

    // SIGKILL: no release; the other replica takes the lease when it expires.
    let first = installed.leader();
    let other = 1 - first;
    installed.replicas[first].kill();
    let killed = Instant::now();
    let successor = installed.replicas[other].name.clone();
    eventually(
        "the other replica holding the lease",
        LEASE_DURATION + Duration::from_secs(5),
        || installed.holder() == successor,
    );
    let took = killed.elapsed();
    println!("after SIGKILL of the leader, {successor} held the lease in {took:?}");
    assert!(
        took <= LEASE_DURATION + Duration::from_secs(1),
        "took {took:?}, more than the lease duration"
    );
    // The new leader writes status…
    let bad = unique("pc-leader-bad");
    // (passes the schema; no policy webhook is registered here to refuse it)
    cluster.apply(&policy(&bad, "{match: {images: [\"ghcr.io/**x\"]}}"));
    let mut cleanup = Cleanup::new(&cluster);
    cleanup.cluster_scoped("containerpolicy", &bad);
    eventually(
        "Ready=False written by the new leader",
        Duration::from_secs(20),
        || cluster.policy_ready(&bad, "reason") == "InvalidSpec",
    );
    // …and keeps the caBundle.
    let repaired = installed.wipe_ca_bundle();
    println!("caBundle repaired by the new leader in {repaired:?}");
    assert!(
        repaired < Duration::from_secs(2),
        "caBundle repaired after {repaired:?}"
    );
    installed.wait_admitting();

    // The killed replica comes back; then SIGTERM the leader: it releases the lease at
    // once and the other takes it.
    let _ = installed.replicas[first].wait_exit(Duration::from_secs(5));
    installed.replace(first).await;
    let leader = installed.leader();
    assert_eq!(
        leader, other,
        "a restarted replica does not take over a held lease"
    );
    let standby = installed.replicas[first].name.clone();
    installed.replicas[leader].terminate();
    let terminated = Instant::now();
    let took = eventually("hand-over to the standby", Duration::from_secs(10), || {
        installed.holder() == standby
    });
    println!("after SIGTERM of the leader, {standby} held the lease in {took:?}");
    assert!(
        took < Duration::from_secs(2),
        "hand-over took {took:?} after SIGTERM (the lease is released at once)"
    );
    assert!(terminated.elapsed() < Duration::from_secs(10));
    assert!(installed.replicas[leader].wait_exit(Duration::from_secs(30)));
}
