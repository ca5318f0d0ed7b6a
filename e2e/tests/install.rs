//! The install applies for real — on an API server of the test's own, since its webhook
//! configuration fails closed for the whole cluster — with the overlay the server's
//! version needs, grants the ServiceAccount what Portcullis does and nothing more, and
//! deletes cleanly.

#![allow(clippy::unwrap_used)] // in tests a panic is the failure report

mod support;

use support::cluster::PrivateCluster;

/// `config/default` from 1.21; `config/kube-1.19` before (docs/install.md).
fn install_dir(minor: u32) -> &'static str {
    if minor >= 21 {
        "config/default"
    } else {
        "config/kube-1.19"
    }
}

#[test]
fn the_install_applies_grants_least_privilege_and_deletes() {
    let Some(private) = PrivateCluster::start() else {
        return;
    };
    let cluster = &private.cluster;
    let version: serde_json::Value =
        serde_json::from_str(&cluster.kubectl_ok(&["version", "-o", "json"], None)).unwrap();
    // gitVersion, since builds from source may leave major and minor empty.
    let git_version = version["serverVersion"]["gitVersion"].as_str().unwrap();
    let minor: u32 = git_version.split('.').nth(1).unwrap().parse().unwrap();
    let dir = install_dir(minor);
    if minor < 21 {
        // What 1.21+ does by itself, and docs/install.md tells users of older versions.
        for namespace in ["kube-system", "kube-node-lease"] {
            cluster.kubectl_ok(
                &[
                    "label",
                    "namespace",
                    namespace,
                    &format!("kubernetes.io/metadata.name={namespace}"),
                ],
                None,
            );
        }
    }
    cluster.kubectl_ok(&["apply", "--server-side", "-k", dir], None);
    // The optional PolicyReport CRDs (docs/install.md): the grants name their resources.
    cluster.kubectl_ok(&["apply", "--server-side", "-k", "config/reports"], None);
    for object in [
        "namespace/portcullis-system",
        "crd/containerpolicies.portcullis.dev",
        "crd/registryintegrations.portcullis.dev",
        "crd/auditmonitors.portcullis.dev",
        "-n portcullis-system serviceaccount/portcullis",
        "-n portcullis-system deployment/portcullis",
        "-n portcullis-system service/portcullis",
        "-n portcullis-system poddisruptionbudget/portcullis",
        "validatingwebhookconfiguration/portcullis",
        "-n kube-system role/portcullis-events",
    ] {
        let args: Vec<&str> = std::iter::once("get").chain(object.split(' ')).collect();
        cluster.kubectl_ok(&args, None);
    }

    // The webhook fails closed but never for the control plane or Portcullis itself:
    // a Pod in portcullis-system is admitted with no Portcullis running.
    let pod = "apiVersion: v1\nkind: Pod\nmetadata: {name: probe, namespace: portcullis-system}\nspec: {containers: [{name: c, image: busybox}]}\n";
    cluster.kubectl_ok(&["apply", "--dry-run=server", "-f", "-"], Some(pod));
    let elsewhere = pod.replace("portcullis-system", "default");
    let out = cluster.kubectl(&["apply", "--dry-run=server", "-f", "-"], Some(&elsewhere));
    assert!(
        !out.status.success()
            && String::from_utf8_lossy(&out.stderr).contains("validate.portcullis.dev"),
        "with Portcullis down, a Pod elsewhere must be refused (failurePolicy Fail): {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // What the ServiceAccount may do, as the API server's authorizer answers.
    let sa = "--as=system:serviceaccount:portcullis-system:portcullis";
    let can = |args: &[&str]| {
        let mut all = vec!["auth", "can-i"];
        all.extend_from_slice(args);
        all.push(sa);
        cluster.kubectl(&all, None).status.success()
    };
    for allowed in [
        &["watch", "containerpolicies.portcullis.dev"][..],
        &[
            "patch",
            "containerpolicies.portcullis.dev",
            "--subresource=status",
        ],
        &["watch", "auditmonitors.portcullis.dev"],
        &[
            "patch",
            "auditmonitors.portcullis.dev",
            "--subresource=status",
        ],
        &["watch", "namespaces"],
        &["watch", "pods"],
        &["watch", "deployments.apps"],
        &["watch", "cronjobs.batch"],
        &["patch", "policyreports.wgpolicyk8s.io", "-n", "default"],
        &["create", "events.events.k8s.io", "-n", "kube-system"],
        &[
            "create",
            "leases.coordination.k8s.io",
            "-n",
            "portcullis-system",
        ],
        &["watch", "secrets", "-n", "portcullis-system"],
        &[
            "update",
            "validatingwebhookconfigurations.admissionregistration.k8s.io/portcullis",
        ],
        &[
            "watch",
            "validatingwebhookconfigurations.admissionregistration.k8s.io/portcullis",
        ],
    ] {
        assert!(can(allowed), "the ServiceAccount may not {allowed:?}");
    }
    for denied in [
        &["update", "containerpolicies.portcullis.dev"][..],
        &["get", "secrets", "-n", "default"],
        &["create", "events.events.k8s.io", "-n", "default"],
        &[
            "update",
            "validatingwebhookconfigurations.admissionregistration.k8s.io/other",
        ],
        &["create", "pods", "-n", "default"],
    ] {
        assert!(!can(denied), "the ServiceAccount may {denied:?}");
    }

    cluster.kubectl_ok(&["delete", "-k", dir, "--wait=false"], None);
    for gone in [
        "validatingwebhookconfiguration/portcullis",
        "crd/containerpolicies.portcullis.dev",
        "clusterrole/portcullis",
    ] {
        support::eventually(
            &format!("{gone} deleted"),
            std::time::Duration::from_secs(30),
            || !cluster.kubectl(&["get", gone], None).status.success(),
        );
    }
}
