//! The background audit against a real API server: Pods that exist before a policy are
//! counted in its `VIOLATIONS` column and the namespace's PolicyReport; fixing or
//! deleting them clears both; Warn → Block denies new Pods and changes nothing for
//! running ones; a restart rebuilds the counts from the watch, not from what was stored.
//! (The test API server has no kubelet: Pods stay Pending, which is fine — they exist.)

#![allow(clippy::unwrap_used)] // in tests a panic is the failure report

mod support;

use std::time::{Duration, Instant};

use support::cluster::Cleanup;
use support::replica::Installation;
use support::{
    Routes, eventually, free_port, policy, shared_cluster, unique, webhook_configuration,
};

fn pod(namespace: &str, name: &str, image: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: {namespace}}}\nspec: {{containers: [{{name: app, image: \"{image}\"}}]}}\n"
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn running_pods_are_audited_into_status_and_policy_reports() {
    let Some(cluster) = shared_cluster() else {
        return;
    };
    cluster.install_crds();
    cluster.kubectl_ok(&["apply", "-k", "config/reports"], None);
    cluster.kubectl_ok(
        &[
            "wait",
            "--for=condition=Established",
            "--timeout=60s",
            "crd/policyreports.wgpolicyk8s.io",
            "crd/clusterpolicyreports.wgpolicyk8s.io",
        ],
        None,
    );
    let mut cleanup = Cleanup::new(&cluster);
    let namespace = unique("pc-audit");
    cleanup.namespace(&namespace);

    // Pods that exist before any policy or Portcullis.
    for (name, image) in [
        ("old-a", "nginx"),
        ("old-b", "nginx:latest"),
        ("fine", "nginx:1.25"),
    ] {
        cluster.apply(&pod(&namespace, name, image));
    }

    let port = free_port();
    let webhook = unique("pc-audit-webhook");
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
    replica.wait_ready(Duration::from_secs(60)).await;

    // A Warn policy applied now: the Pods already there are counted within 10 s.
    let name = unique("pc-no-latest");
    let spec = |action: &str| {
        format!(
            "{{action: {action}, match: {{namespaces: [{namespace}]}}, rules: {{tags: {{denyLatest: true}}}}}}"
        )
    };
    let applied = Instant::now();
    cluster.apply(&policy(&name, &spec("Warn")));
    cleanup.cluster_scoped("containerpolicy", &name);
    let violations = || {
        cluster.jsonpath(
            &format!("containerpolicy/{name}"),
            None,
            "{.status.violations}",
        )
    };
    let report = |path: &str| cluster.jsonpath("policyreport/portcullis", Some(&namespace), path);
    eventually(
        "VIOLATIONS counts the two Pods on :latest",
        Duration::from_secs(10),
        || violations() == "2",
    );
    eventually(
        "the namespace's PolicyReport lists them",
        Duration::from_secs(10),
        || report("{.summary.warn}") == "2",
    );
    eprintln!(
        "counted in status and report {:?} after the policy was applied",
        applied.elapsed()
    );
    let table = cluster.kubectl_ok(&["get", "cpol", &name], None);
    let rows: Vec<Vec<&str>> = table
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(
        rows[0],
        ["NAME", "ACTION", "READY", "VIOLATIONS", "AGE"],
        "{table}"
    );
    assert_eq!(
        &rows[1][..4],
        [name.as_str(), "Warn", "True", "2"],
        "{table}"
    );
    assert!(
        !cluster
            .jsonpath(
                &format!("containerpolicy/{name}"),
                None,
                "{.status.lastAuditTime}"
            )
            .is_empty()
    );
    let objects = report("{.results[*].resources[0].name}");
    assert_eq!(objects, "old-a old-b", "{objects}");
    let message = report("{.results[0].message}");
    assert!(
        message.starts_with(&format!("Pod {namespace}/old-a: container \"app\" image nginx violates ContainerPolicy \"{name}\"")),
        "the admission message: {message}"
    );
    assert_eq!(report("{.results[0].source}"), "portcullis");
    assert_eq!(report("{.summary.pass}"), "1");

    // The inventory, as `portcullis inventory` prints it from the metrics port.
    let out = std::process::Command::new(support::portcullis_bin())
        .args([
            "inventory",
            "--server",
            &format!("http://{}", replica.metrics),
            "-o",
            "json",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let inventory: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let latest = inventory["images"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["image"] == "docker.io/library/nginx:latest")
        .unwrap_or_else(|| panic!("nginx:latest is in use: {inventory:#}"));
    let objects: Vec<&str> = latest["objects"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|o| o.as_str())
        .collect();
    for name in ["old-a", "old-b"] {
        assert!(
            objects.contains(&format!("Pod {namespace}/{name}").as_str()),
            "{objects:?}"
        );
    }
    assert!(
        latest["unscanned"]
            .as_str()
            .unwrap()
            .contains("no RegistryIntegration"),
        "{latest}"
    );

    // Fixed (the image of a Pod may change) and deleted: both leave the count.
    cluster.kubectl_ok(
        &[
            "set",
            "image",
            "-n",
            &namespace,
            "pod/old-a",
            "app=nginx:1.25",
        ],
        None,
    );
    eventually(
        "a fixed Pod leaves the count",
        Duration::from_secs(10),
        || violations() == "1",
    );
    cluster.kubectl_ok(
        &["delete", "pod", "-n", &namespace, "old-b", "--wait=false"],
        None,
    );
    eventually(
        "a deleted Pod leaves the count and the report",
        Duration::from_secs(10),
        || violations() == "0" && report("{.summary.warn}") == "0",
    );

    // Warn → Block: what runs is counted, not touched; new Pods are denied.
    cluster.apply(&pod(&namespace, "again", "nginx"));
    eventually("the new Pod counted", Duration::from_secs(10), || {
        violations() == "1"
    });
    cluster.apply(&policy(&name, &spec("Block")));
    eventually(
        "the report says fail once the policy blocks",
        Duration::from_secs(10),
        || report("{.summary.fail}") == "1",
    );
    assert_eq!(violations(), "1");
    assert_eq!(
        cluster.jsonpath("pod/again", Some(&namespace), "{.metadata.name}"),
        "again",
        "a running Pod is never touched"
    );
    eventually(
        "a new Pod on :latest is denied",
        Duration::from_secs(10),
        || {
            let out = cluster.kubectl(
                &["apply", "-f", "-"],
                Some(&pod(&namespace, "denied", "nginx")),
            );
            !out.status.success()
                && String::from_utf8_lossy(&out.stderr).contains("denied the request")
        },
    );
    eventually(
        "the denial is counted in the report",
        Duration::from_secs(10),
        || report("{.results[?(@.rule==\"admission\")].properties.deniedRequests}") == "1",
    );
    eprintln!(
        "{}",
        cluster.kubectl_ok(&["get", "polr", "-n", &namespace], None)
    );

    // A restart: the count is rebuilt from the watch, not read back. A wrong number
    // written while no replica runs is corrected.
    drop(replica);
    let api: kube::Api<portcullis_crds::ContainerPolicy> = kube::Api::all(cluster.client().await);
    api.patch_status(
        &name,
        &kube::api::PatchParams::default(),
        &kube::api::Patch::Merge(serde_json::json!({"status": {"violations": 99}})),
    )
    .await
    .unwrap();
    assert_eq!(violations(), "99");
    let replica = installation.start("replica-1", port);
    replica.wait_ready(Duration::from_secs(60)).await;
    eventually(
        "the restarted audit writes the real count",
        Duration::from_secs(20),
        || violations() == "1",
    );
}
