//! Pods pinned to the digest that was checked, against a real API server and a real
//! registry (Debian's docker-registry): `kubectl run` stores the registry's digest, a
//! Deployment's template stays as written, an ephemeral container added through the
//! subresource is pinned, and with the registry gone an unresolved tag is admitted
//! as written with the annotation — or denied where `requireDigest` applies. The
//! mutating configuration's caBundle is the leader's to write, as the validating one's.

#![allow(clippy::unwrap_used)] // in tests a panic is the failure report

mod support;

use std::time::Duration;

use portcullis_webhook::testing::registry::{self, Registry};
use portcullis_webhook::testing::scanners::{self, Sim};
use support::cluster::Cleanup;
use support::replica::Installation;
use support::{
    Routes, eventually, free_port, mutating_webhook_configuration, policy, shared_cluster, unique,
    webhook_configuration,
};

fn indent(pem: &str, spaces: usize) -> String {
    pem.lines()
        .map(|line| format!("{:spaces$}{line}\n", ""))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn pods_are_pinned_to_the_registry_digest_and_templates_stay_as_written() {
    let Some(cluster) = shared_cluster() else {
        return;
    };
    if !registry::available() {
        return;
    }
    cluster.install_crds();
    let registry = Registry::start(None);
    let app_digest = registry.push("acme/app", "1");
    let debug_digest = registry.push("acme/debug", "1");
    let host = registry.host.clone();
    // The scanner is never asked (no policy here reads vulnerabilities); an integration
    // names one all the same.
    let scanner = scanners::serve(scanners::trivy_json(Sim::with(&[])))
        .await
        .unwrap();

    let mut cleanup = Cleanup::new(&cluster);
    let namespace = unique("pc-mutate");
    cleanup.namespace(&namespace);
    let port = free_port();
    let webhook = unique("pc-mutate-webhook");
    cluster.apply(&webhook_configuration(
        &webhook,
        &namespace,
        &format!("https://127.0.0.1:{port}/validate"),
        Routes {
            workloads: true,
            policies: false,
            ephemeral_containers: false,
        },
    ));
    cleanup.cluster_scoped("validatingwebhookconfiguration", &webhook);
    cluster.apply(&mutating_webhook_configuration(
        &webhook,
        &namespace,
        &format!("https://127.0.0.1:{port}/mutate"),
    ));
    cleanup.cluster_scoped("mutatingwebhookconfiguration", &webhook);

    let integration = unique("pc-mutate-registry");
    cleanup.cluster_scoped("registryintegration", &integration);
    cluster.apply(&format!(
        "apiVersion: portcullis.dev/v1alpha1\nkind: RegistryIntegration\nmetadata: {{name: {integration}}}\nspec:\n  registries: [\"{host}/**\"]\n  timeout: 2s\n  caBundle: |\n{}  scanner:\n    http:\n      url: https://localhost:{}/reports\n      caBundle: |\n{}",
        indent(&registry.ca_pem, 4),
        scanner.addr.port(),
        indent(&scanner.certs.ca_pem, 8),
    ));
    let pin = unique("pc-pin");
    cleanup.cluster_scoped("containerpolicy", &pin);
    cluster.apply(&policy(
        &pin,
        &format!("{{match: {{namespaces: [{namespace}]}}, mutate: {{pinDigests: true}}}}"),
    ));
    let digests_only = unique("pc-digests");
    cleanup.cluster_scoped("containerpolicy", &digests_only);
    cluster.apply(&policy(
        &digests_only,
        &format!("{{match: {{namespaces: [{namespace}], kinds: [Pod]}}, rules: {{tags: {{requireDigest: true}}}}}}"),
    ));

    let installation = Installation {
        cluster: cluster.clone(),
        namespace: namespace.clone(),
        webhook_configuration: webhook.clone(),
        flags: vec![],
    };
    let replica = installation.start("replica-0", port);
    replica.wait_ready(Duration::from_secs(60)).await;
    for name in [&pin, &digests_only] {
        eventually("the policies Ready", Duration::from_secs(30), || {
            cluster.policy_ready(name, "status") == "True"
        });
    }

    // kubectl run: the Pod stored runs the digest the registry resolved.
    let image = format!("{host}/acme/app:1");
    let pinned = format!("{image}@{app_digest}");
    let get = |what: &str, path: &str| cluster.jsonpath(what, Some(&namespace), path);
    eventually(
        "kubectl run admitted, pinned",
        Duration::from_secs(30),
        || {
            cluster
                .kubectl(&["run", "x", "-n", &namespace, "--image", &image], None)
                .status
                .success()
        },
    );
    assert_eq!(get("pod/x", "{.spec.containers[0].image}"), pinned);
    let originals = get(
        "pod/x",
        "{.metadata.annotations.portcullis\\.dev/original-images}",
    );
    assert_eq!(originals, format!(r#"{{"x":"{image}"}}"#));

    // A Deployment's template stays as written (no drift for GitOps tools).
    cluster.kubectl_ok(
        &[
            "create",
            "deployment",
            "web",
            "-n",
            &namespace,
            "--image",
            &image,
        ],
        None,
    );
    assert_eq!(
        get(
            "deployment/web",
            "{.spec.template.spec.containers[0].image}"
        ),
        image
    );

    // An ephemeral container added through the subresource (what `kubectl debug`
    // sends to this API server version) is pinned too. (The validating configuration
    // leaves the subresource out here: 1.19.0 fails its updates while a validating
    // webhook covers it, kubernetes#92557.)
    let debug_image = format!("{host}/acme/debug:1");
    let ephemeral = format!(
        r#"{{"apiVersion": "v1", "kind": "EphemeralContainers", "metadata": {{"name": "x", "namespace": "{namespace}"}},
            "ephemeralContainers": [{{"name": "debugger", "image": "{debug_image}", "terminationMessagePolicy": "File", "imagePullPolicy": "IfNotPresent"}}]}}"#
    );
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), ephemeral).unwrap();
    cluster.kubectl_ok(
        &[
            "replace",
            "--raw",
            &format!("/api/v1/namespaces/{namespace}/pods/x/ephemeralcontainers"),
            "-f",
            file.path().to_str().unwrap(),
        ],
        None,
    );
    assert_eq!(
        get("pod/x", "{.spec.ephemeralContainers[0].image}"),
        format!("{debug_image}@{debug_digest}")
    );

    // The registry goes away. A tag it never resolved cannot be pinned: where
    // requireDigest applies (Pods here) that fails closed…
    drop(registry);
    let unresolved = format!("{host}/acme/app:2");
    let out = cluster.kubectl(
        &["run", "y", "-n", &namespace, "--image", &unresolved],
        None,
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "admitted unpinned: {stderr}");
    assert!(
        stderr.contains(&format!("ContainerPolicy \"{digests_only}\""))
            && stderr.contains("not pinned by digest"),
        "{stderr}"
    );
    // …and without it the Pod is admitted as written, saying why.
    cluster.kubectl_ok(&["delete", "containerpolicy", &digests_only], None);
    let mut warned = String::new();
    eventually(
        "admitted unpinned once requireDigest is gone",
        Duration::from_secs(30),
        || {
            let out = cluster.kubectl(
                &["run", "z", "-n", &namespace, "--image", &unresolved],
                None,
            );
            warned = String::from_utf8_lossy(&out.stderr).into_owned();
            out.status.success()
        },
    );
    assert!(warned.contains("is not pinned to a digest"), "{warned}");
    assert_eq!(get("pod/z", "{.spec.containers[0].image}"), unresolved);
    let note = get("pod/z", "{.metadata.annotations.portcullis\\.dev/unpinned}");
    assert!(note.starts_with(&format!("{unresolved}: ")), "{note}");
    // The tag resolved before is still pinned from the cache.
    cluster.kubectl_ok(&["run", "w", "-n", &namespace, "--image", &image], None);
    assert_eq!(get("pod/w", "{.spec.containers[0].image}"), pinned);
}
