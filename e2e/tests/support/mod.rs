//! Shared by the end-to-end tests: they run against the cluster in
//! `KUBECONFIG` with `kubectl`, and are skipped with a message when none is given.

#![allow(dead_code)] // each test binary uses a different part

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// The repository root.
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Whether a cluster is given; prints why the test is skipped when not.
pub fn cluster_available() -> bool {
    let given = std::env::var_os("KUBECONFIG").is_some();
    if !given {
        eprintln!("skipped: set KUBECONFIG to run the e2e tests against a cluster");
    }
    given
}

/// Runs `kubectl` in the repository, with `stdin` piped in when given.
pub fn kubectl(args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = Command::new("kubectl")
        .args(args)
        .current_dir(repo())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("kubectl on PATH (KUBECONFIG is set, so the e2e tests need it)");
    if let Some(mut pipe) = child.stdin.take() {
        pipe.write_all(stdin.unwrap_or_default().as_bytes())
            .expect("write kubectl's stdin");
    }
    child.wait_with_output().expect("wait for kubectl")
}

/// `kubectl` that must succeed; returns its stdout.
pub fn kubectl_ok(args: &[&str], stdin: Option<&str>) -> String {
    let out = kubectl(args, stdin);
    assert!(
        out.status.success(),
        "kubectl {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Applies the CRDs and waits until the API server serves them.
pub fn install_crds() {
    kubectl_ok(&["apply", "--server-side", "-f", "crds/"], None);
    kubectl_ok(
        &[
            "wait",
            "--for=condition=Established",
            "--timeout=60s",
            "crd/containerpolicies.portcullis.dev",
            "crd/registryintegrations.portcullis.dev",
        ],
        None,
    );
}

/// The `portcullis` binary, built for this test run (`PORTCULLIS_BIN` overrides).
pub fn portcullis_bin() -> PathBuf {
    if let Some(bin) = std::env::var_os("PORTCULLIS_BIN") {
        return PathBuf::from(bin);
    }
    let status = Command::new(env!("CARGO"))
        .args(["build", "-q", "-p", "portcullis"])
        .current_dir(repo())
        .status()
        .expect("cargo build");
    assert!(status.success(), "building portcullis failed");
    repo().join("target/debug/portcullis")
}

/// A name unique to this run, for objects the test creates in a shared cluster.
pub fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or_default();
    format!("{prefix}-{}-{nanos:x}", std::process::id())
}
