//! Shared by the end-to-end tests. They run against a real API server: the cluster in
//! `KUBECONFIG` (in CI, the kube-apiserver `../shared/kube/up.sh` starts), or one a test
//! starts for itself ([`cluster::PrivateCluster`]). Without `KUBECONFIG` they are
//! skipped with a message — unless `CI` is set, where that is a failure.

#![allow(dead_code)] // each test binary uses a different part
#![allow(clippy::unwrap_used)] // in tests a panic is the failure report

pub mod balancer;
pub mod cluster;
pub mod installed;
pub mod load;
pub mod replica;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub use cluster::Cluster;

/// The repository root.
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Whether the e2e tests must run (CI): then nothing may be skipped.
pub fn required() -> bool {
    std::env::var_os("CI").is_some_and(|v| !v.is_empty())
}

/// Skips the test (returns `None`) with a message, or fails it when [`required`].
pub fn skip<T>(why: &str) -> Option<T> {
    assert!(!required(), "CI is set, so the e2e tests must run: {why}");
    eprintln!("SKIPPED: {why}");
    None
}

/// The cluster in `KUBECONFIG`, checked to answer; `None` (skipped) when none is given.
pub fn shared_cluster() -> Option<Cluster> {
    let Some(kubeconfig) = std::env::var_os("KUBECONFIG").filter(|v| !v.is_empty()) else {
        return skip(
            "set KUBECONFIG to run the e2e tests (`bash e2e/run.sh` starts a real API server and runs them)",
        );
    };
    let cluster = Cluster::new(PathBuf::from(kubeconfig));
    let version = cluster.kubectl(&["version", "-o", "json"], None);
    assert!(
        version.status.success(),
        "KUBECONFIG is set but the cluster does not answer: {}",
        String::from_utf8_lossy(&version.stderr)
    );
    Some(cluster)
}

/// The `portcullis` binary under test: `PORTCULLIS_BIN` (CI passes the release build),
/// or a debug build made now.
pub fn portcullis_bin() -> PathBuf {
    if let Some(bin) = std::env::var_os("PORTCULLIS_BIN") {
        return PathBuf::from(bin);
    }
    let status = std::process::Command::new(env!("CARGO"))
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

/// Polls `check` every 100 ms until it holds; fails the test after `timeout`. Returns
/// how long it took.
pub fn eventually(what: &str, timeout: Duration, mut check: impl FnMut() -> bool) -> Duration {
    let started = Instant::now();
    while !check() {
        assert!(
            started.elapsed() < timeout,
            "timed out after {timeout:?} waiting for: {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    started.elapsed()
}

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// A ContainerPolicy manifest.
pub fn policy(name: &str, spec: &str) -> String {
    format!(
        "apiVersion: portcullis.dev/v1alpha1\nkind: ContainerPolicy\nmetadata: {{name: {name}}}\nspec: {spec}\n"
    )
}

/// The label the test webhook configurations select namespaces by: a test's namespaces
/// carry it with the test's main namespace as value.
pub const SCOPE_LABEL: &str = "portcullis.dev/e2e-scope";

/// What a test webhook configuration sends to Portcullis.
#[derive(Debug, Clone, Copy)]
pub struct Routes {
    /// Every workload kind besides Pods.
    pub workloads: bool,
    /// `pods/ephemeralcontainers`. Kubernetes 1.19.0 fails every update of that
    /// subresource while a validating webhook covers it (kubernetes#92557, fixed in
    /// 1.20): tests that add ephemeral containers through the API server leave it out.
    pub ephemeral_containers: bool,
    /// ContainerPolicies and RegistryIntegrations, checked when applied (failing open,
    /// as `config/default` registers them).
    pub policies: bool,
}

/// A ValidatingWebhookConfiguration that sends Pods (and what `routes` adds) of the
/// namespaces labelled [`SCOPE_LABEL`]`=scope` to `url`, failing closed, with no
/// caBundle: the leader writes it (self-managed TLS).
pub fn webhook_configuration(name: &str, scope: &str, url: &str, routes: Routes) -> String {
    let workload_rules = if routes.workloads {
        r#",
          {"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE", "UPDATE"], "resources": ["replicationcontrollers"]},
          {"apiGroups": ["apps"], "apiVersions": ["v1"], "operations": ["CREATE", "UPDATE"], "resources": ["deployments", "replicasets", "statefulsets", "daemonsets"]},
          {"apiGroups": ["batch"], "apiVersions": ["*"], "operations": ["CREATE", "UPDATE"], "resources": ["jobs", "cronjobs"]}"#
    } else {
        ""
    };
    let policies = if routes.policies {
        format!(
            r#",
          {{"name": "policies.portcullis.dev", "admissionReviewVersions": ["v1"], "sideEffects": "None",
            "failurePolicy": "Ignore", "matchPolicy": "Equivalent", "timeoutSeconds": 5,
            "clientConfig": {{"url": "{url}"}},
            "rules": [{{"apiGroups": ["portcullis.dev"], "apiVersions": ["*"], "operations": ["CREATE", "UPDATE"],
                        "resources": ["containerpolicies", "registryintegrations", "auditmonitors"], "scope": "Cluster"}}]}}"#
        )
    } else {
        String::new()
    };
    let pods = if routes.ephemeral_containers {
        r#""pods", "pods/ephemeralcontainers""#
    } else {
        r#""pods""#
    };
    format!(
        r#"{{"apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingWebhookConfiguration", "metadata": {{"name": "{name}"}},
          "webhooks": [{{"name": "validate.portcullis.dev", "admissionReviewVersions": ["v1"], "sideEffects": "NoneOnDryRun",
            "failurePolicy": "Fail", "matchPolicy": "Equivalent", "timeoutSeconds": 10,
            "clientConfig": {{"url": "{url}"}},
            "namespaceSelector": {{"matchLabels": {{"{SCOPE_LABEL}": "{scope}"}}}},
            "rules": [
              {{"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE", "UPDATE"], "resources": [{pods}]}}{workload_rules}]}}{policies}]}}"#
    )
}

/// A MutatingWebhookConfiguration as `config/default` has it — Pods being created and
/// ephemeral containers being added, failing open, reinvoked if needed — for the
/// namespaces labelled [`SCOPE_LABEL`]`=scope`, sent to `url`, with no caBundle: the
/// leader writes it (self-managed TLS), as for the validating one of the same name.
pub fn mutating_webhook_configuration(name: &str, scope: &str, url: &str) -> String {
    format!(
        r#"{{"apiVersion": "admissionregistration.k8s.io/v1", "kind": "MutatingWebhookConfiguration", "metadata": {{"name": "{name}"}},
          "webhooks": [{{"name": "mutate.portcullis.dev", "admissionReviewVersions": ["v1"], "sideEffects": "NoneOnDryRun",
            "failurePolicy": "Ignore", "matchPolicy": "Equivalent", "reinvocationPolicy": "IfNeeded", "timeoutSeconds": 10,
            "clientConfig": {{"url": "{url}"}},
            "namespaceSelector": {{"matchLabels": {{"{SCOPE_LABEL}": "{scope}"}}}},
            "rules": [
              {{"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE"], "resources": ["pods"]}},
              {{"apiGroups": [""], "apiVersions": ["v1"], "operations": ["UPDATE"], "resources": ["pods/ephemeralcontainers"]}}]}}]}}"#
    )
}
