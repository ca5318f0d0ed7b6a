//! Policies checked when applied, against a real API server: `kubectl apply` (and
//! `--dry-run=server`) of a policy that would not compile is refused with every bad
//! field; an invalid version stored anyway (the policy webhook down: it fails open)
//! keeps the last good version enforcing, also after Portcullis restarts; and a
//! namespace created together with its workloads is judged with its labels.

#![allow(clippy::unwrap_used)] // in tests a panic is the failure report

mod support;

use std::time::Duration;

use support::cluster::Cleanup;
use support::replica::Installation;
use support::{
    Routes, SCOPE_LABEL, eventually, free_port, policy, shared_cluster, unique,
    webhook_configuration,
};

fn pod(namespace: &str, name: &str, image: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: {namespace}}}\nspec: {{containers: [{{name: app, image: \"{image}\"}}]}}\n"
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn policies_are_checked_when_applied_and_the_last_good_version_enforces() {
    let Some(cluster) = shared_cluster() else {
        return;
    };
    cluster.install_crds();
    let mut cleanup = Cleanup::new(&cluster);
    let namespace = unique("pc-admit");
    cleanup.namespace(&namespace);
    let port = free_port();
    let webhook = unique("pc-admit-webhook");
    cluster.apply(&webhook_configuration(
        &webhook,
        &namespace,
        &format!("https://127.0.0.1:{port}/validate"),
        Routes {
            workloads: false,
            policies: true,
            ephemeral_containers: true,
        },
    ));
    cleanup.cluster_scoped("validatingwebhookconfiguration", &webhook);
    let installation = Installation {
        cluster: cluster.clone(),
        namespace: namespace.clone(),
        webhook_configuration: webhook.clone(),
        flags: vec![],
    };
    let mut replica = installation.start("replica-0", port);
    replica.wait_ready(Duration::from_secs(60)).await;

    // Refused at apply time, every bad field named, dry run or not.
    let typo = unique("pc-typo");
    cleanup.cluster_scoped("containerpolicy", &typo);
    let bad = policy(
        &typo,
        "{match: {images: [\"ghcr.io/**x\", \"nginx:1.25\"]}, rules: {vulnerabilities: {deny: [CVE-1], ignore: [cve-1]}}}",
    );
    for args in [
        &["apply", "-f", "-"][..],
        &["apply", "--dry-run=server", "-f", "-"],
    ] {
        let mut refused = String::new();
        eventually(
            "the policy webhook refusing the typo",
            Duration::from_secs(30),
            || {
                let out = cluster.kubectl(args, Some(&bad));
                refused = String::from_utf8_lossy(&out.stderr).into_owned();
                !out.status.success() && refused.contains("policies.portcullis.dev")
            },
        );
        for field in [
            &format!("ContainerPolicy \"{typo}\" is invalid"),
            "spec.match.images[0]: pattern \"ghcr.io/**x\": `**` must be a whole segment",
            "spec.match.images[1]: pattern \"nginx:1.25\"",
            "spec.rules.vulnerabilities.ignore: CVE-1 is also in spec.rules.vulnerabilities.deny",
        ] {
            assert!(refused.contains(field), "{field:?} missing from: {refused}");
        }
    }
    assert!(
        !cluster
            .kubectl(&["get", "cpol", &typo], None)
            .status
            .success(),
        "nothing was stored"
    );

    // An enforcing Block policy…
    let guard = unique("pc-guard");
    cleanup.cluster_scoped("containerpolicy", &guard);
    cluster.apply(&policy(
        &guard,
        &format!("{{match: {{namespaces: [{namespace}]}}, rules: {{registries: {{deny: [\"docker.io/**\"]}}}}}}"),
    ));
    eventually("the guard Ready", Duration::from_secs(30), || {
        cluster.policy_ready(&guard, "status") == "True"
    });
    let hub_pod = pod(&namespace, "hub", "nginx:1.25");
    let denied_by_guard = || {
        let out = cluster.kubectl(&["apply", "--dry-run=server", "-f", "-"], Some(&hub_pod));
        !out.status.success()
            && String::from_utf8_lossy(&out.stderr)
                .contains(&format!("ContainerPolicy \"{guard}\""))
    };
    eventually(
        "the guard denying Docker Hub",
        Duration::from_secs(30),
        denied_by_guard,
    );

    // …edited into something that does not compile while the policy webhook is out of
    // the way (as when Portcullis is down: that webhook fails open).
    cluster.kubectl_ok(
        &[
            "patch",
            "validatingwebhookconfiguration",
            &webhook,
            "--type=json",
            "-p",
            r#"[{"op": "remove", "path": "/webhooks/1"}]"#,
        ],
        None,
    );
    cluster.apply(&policy(
        &guard,
        &format!("{{match: {{namespaces: [{namespace}]}}, rules: {{registries: {{deny: [\"docker.io/**x\"]}}}}}}"),
    ));
    let message = || cluster.policy_ready(&guard, "message");
    eventually(
        "Ready=False naming the generation still enforced",
        Duration::from_secs(30),
        || message().ends_with("generation 1 is still enforced"),
    );
    assert_eq!(cluster.policy_ready(&guard, "reason"), "InvalidSpec");
    assert_eq!(
        cluster.jsonpath(
            &format!("containerpolicy/{guard}"),
            None,
            "{.status.enforcedGeneration}"
        ),
        "1"
    );
    assert!(denied_by_guard(), "the last good version keeps enforcing");

    // Portcullis restarts: the version the status recorded keeps enforcing.
    replica.terminate();
    assert!(replica.wait_exit(Duration::from_secs(30)));
    let replica = installation.start("replica-1", port);
    replica.wait_ready(Duration::from_secs(60)).await;
    eventually(
        "denied after the restart",
        Duration::from_secs(30),
        denied_by_guard,
    );
    assert!(
        message().ends_with("generation 1 is still enforced"),
        "{}",
        message()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_namespace_created_with_its_workloads_is_judged_by_its_labels() {
    let Some(cluster) = shared_cluster() else {
        return;
    };
    cluster.install_crds();
    let mut cleanup = Cleanup::new(&cluster);
    let scope = unique("pc-window");
    cleanup.namespace(&scope);
    let port = free_port();
    let webhook = unique("pc-window-webhook");
    cluster.apply(&webhook_configuration(
        &webhook,
        &scope,
        &format!("https://127.0.0.1:{port}/validate"),
        Routes {
            workloads: false,
            policies: false,
            ephemeral_containers: true,
        },
    ));
    cleanup.cluster_scoped("validatingwebhookconfiguration", &webhook);
    let selector = unique("pc-window-prod");
    cleanup.cluster_scoped("containerpolicy", &selector);
    cluster.apply(&policy(
        &selector,
        &format!("{{match: {{namespaceSelector: {{matchLabels: {{tier: {scope}}}}}}}, rules: {{registries: {{deny: [\"docker.io/**\"]}}}}}}"),
    ));
    let installation = Installation {
        cluster: cluster.clone(),
        namespace: scope.clone(),
        webhook_configuration: webhook.clone(),
        flags: vec![],
    };
    let replica = installation.start("replica-0", port);
    replica.wait_ready(Duration::from_secs(60)).await;
    eventually("the selector policy Ready", Duration::from_secs(30), || {
        cluster.policy_ready(&selector, "status") == "True"
    });

    // A GitOps sync: the namespace and its workload in one apply, again and again.
    for round in 0..10 {
        let namespace = format!("{scope}-{round}");
        cleanup.created_namespace(&namespace);
        let manifest = format!(
            "apiVersion: v1\nkind: Namespace\nmetadata: {{name: {namespace}, labels: {{tier: {scope}, {SCOPE_LABEL}: {scope}}}}}\n---\n{}",
            pod(&namespace, "web", "nginx:1.25")
        );
        let out = cluster.kubectl(&["apply", "-f", "-"], Some(&manifest));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && stderr.contains(&format!("ContainerPolicy \"{selector}\"")),
            "round {round}: the Pod in the new namespace was not denied by its labels: {stderr}"
        );
    }
    let metrics = get_metrics(replica.metrics).await;
    let lookups: Vec<&str> = metrics
        .lines()
        .filter(|l| l.starts_with("portcullis_namespace_lookups_total"))
        .collect();
    println!("namespace reads on the request path: {lookups:?}");
}

/// `GET /metrics` (plain HTTP on the metrics port).
async fn get_metrics(addr: std::net::SocketAddr) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut body = String::new();
    stream.read_to_string(&mut body).await.unwrap();
    body
}
