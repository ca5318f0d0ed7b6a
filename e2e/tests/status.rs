//! `portcullis run` against a real API server, as a user sees it: policies applied with
//! kubectl get their status conditions, printer columns and Events; an integration
//! reports its credentials; workloads are denied, warned and allowed through the
//! webhook (registered by URL at the replica, with the caBundle the leader writes).

#![allow(clippy::unwrap_used)] // in tests a panic is the failure report

mod support;

use std::time::Duration;

use support::cluster::Cleanup;
use support::replica::Installation;
use support::{
    Routes, eventually, free_port, policy, shared_cluster, unique, webhook_configuration,
};

fn deployment(namespace: &str, name: &str, image: &str) -> String {
    format!(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: {name}, namespace: {namespace}}}\nspec:\n  selector: {{matchLabels: {{app: {name}}}}}\n  template:\n    metadata: {{labels: {{app: {name}}}}}\n    spec: {{containers: [{{name: app, image: \"{image}\"}}]}}\n"
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn status_events_and_admission_through_the_real_api_server() {
    let Some(cluster) = shared_cluster() else {
        return;
    };
    cluster.install_crds();
    let mut cleanup = Cleanup::new(&cluster);
    let namespace = unique("pc-status");
    cleanup.namespace(&namespace);

    let (deny, warn, bad) = (unique("pc-deny"), unique("pc-warn"), unique("pc-bad"));
    let scoped = format!("{{namespaces: [{namespace}]}}");
    for (name, spec) in [
        (
            &deny,
            format!(
                "{{action: Block, match: {scoped}, rules: {{registries: {{deny: [\"docker.io/**\"]}}}}}}"
            ),
        ),
        (
            &warn,
            format!("{{action: Warn, match: {scoped}, rules: {{tags: {{requireDigest: true}}}}}}"),
        ),
        // The schema lets this pattern through (its characters are fine); Portcullis
        // reports it. (No policy webhook is registered here: it would refuse it.)
        (
            &bad,
            format!(
                "{{match: {{namespaces: [{namespace}], images: [\"ghcr.io/**x\"]}}, rules: {{tags: {{denyLatest: true}}}}}}"
            ),
        ),
    ] {
        cluster.apply(&policy(name, &spec));
        cleanup.cluster_scoped("containerpolicy", name);
    }

    let port = free_port();
    let webhook = unique("pc-status-webhook");
    cluster.apply(&webhook_configuration(
        &webhook,
        &namespace,
        &format!("https://127.0.0.1:{port}/validate"),
        Routes {
            workloads: true,
            policies: false,
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
    let replica = installation.start("replica-0", port);

    // Status, as `kubectl get cpol` shows it.
    eventually(
        "Ready=True on the valid policies",
        Duration::from_secs(60),
        || {
            cluster.policy_ready(&deny, "status") == "True"
                && cluster.policy_ready(&warn, "status") == "True"
        },
    );
    eventually(
        "Ready=False on the invalid policy",
        Duration::from_secs(30),
        || cluster.policy_ready(&bad, "status") == "False",
    );
    assert_eq!(cluster.policy_ready(&bad, "reason"), "InvalidSpec");
    let message = cluster.policy_ready(&bad, "message");
    assert!(
        message.contains(
            "spec.match.images[0]: pattern \"ghcr.io/**x\": `**` must be a whole segment"
        ) && message.ends_with("nothing is enforced: no version of this object has compiled"),
        "{message}"
    );
    let table = cluster.kubectl_ok(&["get", "cpol", &deny, &bad], None);
    let rows: Vec<Vec<&str>> = table
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(
        rows[0],
        ["NAME", "ACTION", "READY", "VIOLATIONS", "AGE"],
        "{table}"
    );
    assert_eq!(&rows[1][..3], [deny.as_str(), "Block", "True"], "{table}");
    assert_eq!(&rows[2][..3], [bad.as_str(), "Block", "False"], "{table}");
    let wide = cluster.kubectl_ok(&["get", "cpol", &bad, "-o", "wide"], None);
    assert!(wide.contains("InvalidSpec"), "{wide}");

    // The Event, as users look for it.
    let selector = format!("involvedObject.name={bad}");
    eventually("an InvalidSpec Event", Duration::from_secs(30), || {
        cluster
            .kubectl_ok(
                &["get", "events", "-A", "--field-selector", &selector],
                None,
            )
            .contains("InvalidSpec")
    });
    let described = cluster.kubectl_ok(&["describe", "cpol", &bad], None);
    assert!(
        described.contains("InvalidSpec") && described.contains("must be a whole segment"),
        "kubectl describe shows the Event: {described}"
    );

    // A RegistryIntegration whose credentials Secret does not exist yet, then does.
    let integration = unique("pc-regint");
    cluster.apply(&format!(
        "apiVersion: portcullis.dev/v1alpha1\nkind: RegistryIntegration\nmetadata: {{name: {integration}}}\n\
         spec: {{registries: [\"registry.e2e.invalid/**\"], credentials: {{secretRef: {{name: pc-pull}}}}, \
         scanner: {{http: {{url: \"https://scans.e2e.invalid/reports\"}}}}}}\n"
    ));
    cleanup.cluster_scoped("registryintegration", &integration);
    let condition = |type_: &str, field: &str| {
        cluster.jsonpath(
            &format!("registryintegration/{integration}"),
            None,
            &format!("{{.status.conditions[?(@.type==\"{type_}\")].{field}}}"),
        )
    };
    eventually(
        "Ready=False CredentialsNotFound on the integration",
        Duration::from_secs(30),
        || condition("Ready", "reason") == "CredentialsNotFound",
    );
    assert_eq!(condition("BackendReachable", "status"), "Unknown");
    let table = cluster.kubectl_ok(&["get", "regint", &integration], None);
    let header: Vec<&str> = table.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(
        header,
        ["NAME", "READY", "REACHABLE", "LAST", "CONTACT", "AGE"]
    );
    assert!(
        table.contains("False") && table.contains("Unknown"),
        "{table}"
    );
    cluster.kubectl_ok(
        &[
            "create",
            "secret",
            "docker-registry",
            "pc-pull",
            "-n",
            &namespace,
            "--docker-server=registry.e2e.invalid",
            "--docker-username=e2e",
            "--docker-password=not-a-real-password",
        ],
        None,
    );
    eventually(
        "Ready=True once the Secret exists (rechecked every 30 s)",
        Duration::from_secs(60),
        || condition("Ready", "status") == "True",
    );

    // Admission: the leader writes the caBundle, then the API server calls the webhook.
    replica.wait_ready(Duration::from_secs(30)).await;
    eventually(
        "the leader writes the caBundle",
        Duration::from_secs(30),
        || {
            !cluster
                .jsonpath(
                    &format!("validatingwebhookconfiguration/{webhook}"),
                    None,
                    "{.webhooks[0].clientConfig.caBundle}",
                )
                .is_empty()
        },
    );
    let denied = deployment(&namespace, "web", "nginx:1.25");
    eventually(
        "the Deployment denied by the webhook",
        Duration::from_secs(30),
        || {
            let out = cluster.kubectl(&["apply", "--dry-run=server", "-f", "-"], Some(&denied));
            let stderr = String::from_utf8_lossy(&out.stderr);
            !out.status.success()
                && stderr.contains(&format!("ContainerPolicy \"{deny}\""))
                && stderr.contains("matches rules.registries.deny")
        },
    );
    let warned = cluster.kubectl(
        &["apply", "--dry-run=server", "-f", "-"],
        Some(&deployment(&namespace, "api", "ghcr.io/acme/api:v1")),
    );
    let stderr = String::from_utf8_lossy(&warned.stderr);
    assert!(warned.status.success(), "{stderr}");
    assert!(
        stderr.contains("Warning:") && stderr.contains("rules.tags.requireDigest"),
        "{stderr}"
    );

    // A CronJob, in whichever batch version this server serves.
    let batch_v1 = cluster.kubectl_ok(&["get", "--raw", "/apis/batch/v1"], None);
    let version = if batch_v1.contains("\"cronjobs\"") {
        "batch/v1"
    } else {
        "batch/v1beta1"
    };
    let cronjob = format!(
        "apiVersion: {version}\nkind: CronJob\nmetadata: {{name: nightly, namespace: {namespace}}}\nspec:\n  schedule: \"0 3 * * *\"\n  jobTemplate:\n    spec:\n      template:\n        spec: {{restartPolicy: Never, containers: [{{name: report, image: alpine:3.19}}]}}\n"
    );
    let out = cluster.kubectl(&["apply", "--dry-run=server", "-f", "-"], Some(&cronjob));
    assert!(
        !out.status.success() && String::from_utf8_lossy(&out.stderr).contains("CronJob"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Deleting the policy lifts the denial, without a restart.
    cluster.kubectl_ok(&["delete", "containerpolicy", &deny], None);
    eventually(
        "the Deployment allowed after the policy is deleted",
        Duration::from_secs(30),
        || {
            cluster
                .kubectl(&["apply", "--dry-run=server", "-f", "-"], Some(&denied))
                .status
                .success()
        },
    );
}
