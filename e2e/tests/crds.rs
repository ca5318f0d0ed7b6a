//! Against the cluster in `KUBECONFIG`: the CRDs install, the samples validate, and the
//! schema rejects a typo. Skipped, with a message, when no cluster is given.

#![allow(clippy::unwrap_used)] // in tests a panic is the failure report

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// `kubectl` against the cluster, or `None` (test skipped) when no `KUBECONFIG` is set.
fn kubectl(args: &[&str], stdin: Option<&str>) -> Option<Output> {
    if std::env::var_os("KUBECONFIG").is_none() {
        eprintln!("skipped: set KUBECONFIG to run the e2e tests against a cluster");
        return None;
    }
    let mut command = Command::new("kubectl");
    command.args(args).current_dir(repo());
    let output = match stdin {
        None => command.output(),
        Some(input) => {
            use std::io::Write;
            let mut child = command
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .expect("kubectl on PATH (KUBECONFIG is set, so the e2e tests need it)");
            child
                .stdin
                .take()
                .unwrap()
                .write_all(input.as_bytes())
                .unwrap();
            child.wait_with_output()
        }
    };
    Some(output.expect("kubectl on PATH (KUBECONFIG is set, so the e2e tests need it)"))
}

fn succeeded(output: &Output) -> bool {
    if !output.status.success() {
        eprintln!("{}", String::from_utf8_lossy(&output.stderr));
    }
    output.status.success()
}

#[test]
fn crds_install_and_samples_validate() {
    let Some(out) = kubectl(&["apply", "--server-side", "-f", "crds/"], None) else {
        return;
    };
    assert!(succeeded(&out));
    let established = kubectl(
        &[
            "wait",
            "--for=condition=Established",
            "--timeout=60s",
            "crd/containerpolicies.portcullis.dev",
            "crd/registryintegrations.portcullis.dev",
        ],
        None,
    )
    .unwrap();
    assert!(succeeded(&established));
    let samples = kubectl(
        &["apply", "--dry-run=server", "-f", "config/samples/"],
        None,
    )
    .unwrap();
    assert!(succeeded(&samples));
}

#[test]
fn schema_rejects_a_typo_in_an_enum() {
    let policy = "apiVersion: portcullis.dev/v1alpha1\nkind: ContainerPolicy\nmetadata: {name: e2e-typo}\nspec: {action: Stop}\n";
    let Some(out) = kubectl(&["apply", "--dry-run=server", "-f", "-"], Some(policy)) else {
        return;
    };
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
