//! Against the cluster in `KUBECONFIG`: the CRDs install, the samples validate, and the
//! schema rejects a typo. Skipped, with a message, when no cluster is given.

mod support;

use support::{cluster_available, install_crds, kubectl, kubectl_ok};

#[test]
fn crds_install_and_samples_validate() {
    if !cluster_available() {
        return;
    }
    install_crds();
    kubectl_ok(
        &["apply", "--dry-run=server", "-f", "config/samples/"],
        None,
    );
}

#[test]
fn schema_rejects_a_typo_in_an_enum() {
    if !cluster_available() {
        return;
    }
    install_crds();
    let policy = "apiVersion: portcullis.dev/v1alpha1\nkind: ContainerPolicy\nmetadata: {name: e2e-typo}\nspec: {action: Stop}\n";
    let out = kubectl(&["apply", "--dry-run=server", "-f", "-"], Some(policy));
    assert!(
        !out.status.success(),
        "the API server accepted action: Stop"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("spec.action") && stderr.contains("Unsupported value"),
        "{stderr}"
    );
}
