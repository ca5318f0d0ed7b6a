//! Against the cluster in `KUBECONFIG`: `config/default` passes a server-side dry-run
//! apply (schemas, RBAC objects, webhook configuration all accepted).

mod support;

use support::{cluster_available, install_crds, kubectl, kubectl_ok};

#[test]
fn config_default_passes_a_server_side_dry_run() {
    if !cluster_available() {
        return;
    }
    install_crds();
    // Namespaced objects need their namespace to exist, even in a dry run.
    let existed = kubectl(&["get", "namespace", "portcullis-system"], None)
        .status
        .success();
    if !existed {
        kubectl_ok(&["create", "namespace", "portcullis-system"], None);
    }
    let out = kubectl(&["apply", "--dry-run=server", "-k", "config/default"], None);
    if !existed {
        kubectl(
            &["delete", "namespace", "portcullis-system", "--wait=false"],
            None,
        );
    }
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let applied = String::from_utf8_lossy(&out.stdout);
    for object in [
        "deployment.apps/portcullis",
        "validatingwebhookconfiguration.admissionregistration.k8s.io/portcullis",
        "poddisruptionbudget.policy/portcullis",
    ] {
        assert!(
            applied.contains(object),
            "{object} missing from:\n{applied}"
        );
    }
}
