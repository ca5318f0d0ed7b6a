//! `portcullis run` out of cluster against the cluster in `KUBECONFIG`, as a user sees
//! it: policies applied with kubectl get their status conditions and Events, and — when
//! `PORTCULLIS_E2E_WEBHOOK_HOST` says how the API server reaches this machine (e.g.
//! `172.18.0.1` for kind's bridge) — its self-managed certificate lands in the webhook's
//! caBundle and workloads are denied, warned and allowed.
//! Works on any conformant cluster from v1.19 (CronJob may be batch/v1beta1 there).

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

mod support;

use support::{cluster_available, install_crds, kubectl, kubectl_ok, portcullis_bin, unique};

/// Everything the test created; removed even when an assertion fails (a leftover
/// webhook configuration would block its namespace).
#[derive(Default)]
struct Cleanup {
    webhook: Option<String>,
    policies: Vec<String>,
    integrations: Vec<String>,
    namespace: Option<String>,
    process: Option<Child>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if let Some(webhook) = &self.webhook {
            kubectl(
                &[
                    "delete",
                    "validatingwebhookconfiguration",
                    webhook,
                    "--ignore-not-found",
                ],
                None,
            );
        }
        for policy in &self.policies {
            kubectl(
                &["delete", "containerpolicy", policy, "--ignore-not-found"],
                None,
            );
        }
        for integration in &self.integrations {
            kubectl(
                &[
                    "delete",
                    "registryintegration",
                    integration,
                    "--ignore-not-found",
                ],
                None,
            );
        }
        if let Some(namespace) = &self.namespace {
            kubectl(
                &[
                    "delete",
                    "namespace",
                    namespace,
                    "--wait=false",
                    "--ignore-not-found",
                ],
                None,
            );
        }
        if let Some(process) = &mut self.process {
            let _ = process.kill();
            let _ = process.wait();
        }
    }
}

fn eventually(what: &str, timeout: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !check() {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for: {what}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn ready(policy: &str, field: &str) -> String {
    kubectl_ok(
        &[
            "get",
            "containerpolicy",
            policy,
            "-o",
            &format!("jsonpath={{.status.conditions[?(@.type==\"Ready\")].{field}}}"),
        ],
        None,
    )
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("0.0.0.0:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

fn policy(name: &str, spec: &str) -> String {
    format!(
        "apiVersion: portcullis.dev/v1alpha1\nkind: ContainerPolicy\nmetadata: {{name: {name}}}\nspec: {spec}\n"
    )
}

fn deployment(namespace: &str, name: &str, image: &str) -> String {
    format!(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: {name}, namespace: {namespace}}}\nspec:\n  selector: {{matchLabels: {{app: {name}}}}}\n  template:\n    metadata: {{labels: {{app: {name}}}}}\n    spec: {{containers: [{{name: app, image: \"{image}\"}}]}}\n"
    )
}

#[test]
fn run_reports_status_and_enforces_kubectl_applied_policies() {
    if !cluster_available() {
        return;
    }
    install_crds();
    let mut cleanup = Cleanup::default();
    let namespace = unique("pc-e2e");
    kubectl_ok(&["create", "namespace", &namespace], None);
    cleanup.namespace = Some(namespace.clone());

    let (deny, warn, bad) = (unique("pc-deny"), unique("pc-warn"), unique("pc-bad"));
    let scoped = format!("{{namespaces: [{namespace}]}}");
    let policies = [
        policy(
            &deny,
            &format!(
                "{{action: Block, match: {scoped}, rules: {{registries: {{deny: [\"docker.io/**\"]}}}}}}"
            ),
        ),
        policy(
            &warn,
            &format!("{{action: Warn, match: {scoped}, rules: {{tags: {{requireDigest: true}}}}}}"),
        ),
        policy(
            &bad,
            &format!(
                "{{match: {scoped}, rules: {{vulnerabilities: {{maxCount: {{critical: -1}}}}}}}}"
            ),
        ),
    ];
    for (name, yaml) in [&deny, &warn, &bad].into_iter().zip(&policies) {
        kubectl_ok(&["apply", "-f", "-"], Some(yaml));
        cleanup.policies.push(name.clone());
    }

    let port = free_port();
    let host = std::env::var("PORTCULLIS_E2E_WEBHOOK_HOST").ok();
    let webhook = unique("pc-e2e-webhook");
    if let Some(host) = &host {
        // No caBundle: the leader writes it (self-managed TLS).
        let configuration = format!(
            r#"{{"apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingWebhookConfiguration", "metadata": {{"name": "{webhook}"}},
              "webhooks": [{{"name": "validate.portcullis.dev", "admissionReviewVersions": ["v1"], "sideEffects": "NoneOnDryRun",
                "failurePolicy": "Fail", "matchPolicy": "Equivalent", "timeoutSeconds": 5,
                "clientConfig": {{"url": "https://{host}:{port}/validate"}},
                "namespaceSelector": {{"matchLabels": {{"kubernetes.io/metadata.name": "{namespace}"}}}},
                "rules": [
                  {{"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE", "UPDATE"], "resources": ["pods", "pods/ephemeralcontainers", "replicationcontrollers"]}},
                  {{"apiGroups": ["apps"], "apiVersions": ["v1"], "operations": ["CREATE", "UPDATE"], "resources": ["deployments", "replicasets", "statefulsets", "daemonsets"]}},
                  {{"apiGroups": ["batch"], "apiVersions": ["*"], "operations": ["CREATE", "UPDATE"], "resources": ["jobs", "cronjobs"]}}]}}]}}"#
        );
        kubectl_ok(&["apply", "-f", "-"], Some(&configuration));
        cleanup.webhook = Some(webhook.clone());
    }
    // Portcullis's own namespace (Secret, Lease) is the test namespace.
    let mut command = Command::new(portcullis_bin());
    command
        .args([
            "run",
            "--listen",
            &format!("0.0.0.0:{port}"),
            "--metrics-listen",
            &format!("127.0.0.1:{}", free_port()),
        ])
        .args([
            "--namespace",
            &namespace,
            "--webhook-configuration",
            &webhook,
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    if let Some(host) = &host {
        command.args(["--self-signed-name", host]);
    }
    cleanup.process = Some(command.spawn().expect("start portcullis run"));

    // Status, as `kubectl get cpol` shows it.
    eventually(
        "Ready=True on the valid policies",
        Duration::from_secs(60),
        || ready(&deny, "status") == "True" && ready(&warn, "status") == "True",
    );
    eventually(
        "Ready=False on the invalid policy",
        Duration::from_secs(30),
        || ready(&bad, "status") == "False",
    );
    assert_eq!(ready(&bad, "reason"), "InvalidSpec");
    assert!(
        ready(&bad, "message")
            .contains("spec.rules.vulnerabilities.maxCount.critical: must be >= 0")
    );
    eventually("an InvalidSpec Event", Duration::from_secs(30), || {
        let selector = format!("involvedObject.name={bad},reason=InvalidSpec");
        !kubectl_ok(
            &[
                "get",
                "events",
                "-A",
                "--field-selector",
                &selector,
                "-o",
                "name",
            ],
            None,
        )
        .trim()
        .is_empty()
    });
    // A RegistryIntegration whose credentials Secret does not exist yet, then does.
    let integration = unique("pc-regint");
    kubectl_ok(
        &["apply", "-f", "-"],
        Some(&format!(
            "apiVersion: portcullis.dev/v1alpha1\nkind: RegistryIntegration\nmetadata: {{name: {integration}}}\n\
             spec: {{registries: [\"registry.e2e.invalid/**\"], credentials: {{secretRef: {{name: pc-pull}}}}, \
             scanner: {{http: {{url: \"https://scans.e2e.invalid/reports\"}}}}}}\n"
        )),
    );
    cleanup.integrations.push(integration.clone());
    let condition = |type_: &str, field: &str| {
        kubectl_ok(
            &[
                "get",
                "registryintegration",
                &integration,
                "-o",
                &format!("jsonpath={{.status.conditions[?(@.type==\"{type_}\")].{field}}}"),
            ],
            None,
        )
    };
    eventually(
        "Ready=False CredentialsNotFound on the integration",
        Duration::from_secs(30),
        || condition("Ready", "reason") == "CredentialsNotFound",
    );
    assert_eq!(condition("BackendReachable", "status"), "Unknown");
    kubectl_ok(
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

    eventually(
        "the serving certificate Secret",
        Duration::from_secs(30),
        || {
            kubectl(&["get", "secret", "portcullis-tls", "-n", &namespace], None)
                .status
                .success()
        },
    );

    if host.is_none() {
        eprintln!(
            "admission checks skipped: set PORTCULLIS_E2E_WEBHOOK_HOST to the address the API server reaches this machine at"
        );
        return;
    }
    eventually(
        "the leader writes the caBundle",
        Duration::from_secs(30),
        || {
            let jsonpath = "jsonpath={.webhooks[0].clientConfig.caBundle}";
            !kubectl_ok(
                &[
                    "get",
                    "validatingwebhookconfiguration",
                    &webhook,
                    "-o",
                    jsonpath,
                ],
                None,
            )
            .trim()
            .is_empty()
        },
    );

    // Denied, with the precise message (retried until the API server uses the new webhook).
    let denied = deployment(&namespace, "web", "nginx:1.25");
    eventually(
        "the Deployment denied by the webhook",
        Duration::from_secs(30),
        || {
            let out = kubectl(&["apply", "--dry-run=server", "-f", "-"], Some(&denied));
            let stderr = String::from_utf8_lossy(&out.stderr);
            !out.status.success()
                && stderr.contains(&format!("ContainerPolicy \"{deny}\""))
                && stderr.contains("matches rules.registries.deny")
        },
    );

    // Allowed with a warning.
    let warned = kubectl(
        &["apply", "--dry-run=server", "-f", "-"],
        Some(&deployment(&namespace, "api", "ghcr.io/acme/api:v1")),
    );
    let stderr = String::from_utf8_lossy(&warned.stderr);
    assert!(warned.status.success(), "{stderr}");
    assert!(
        stderr.contains("Warning:") && stderr.contains("rules.tags.requireDigest"),
        "{stderr}"
    );

    // A CronJob, in whichever batch version this cluster serves.
    let batch_v1 = kubectl_ok(&["get", "--raw", "/apis/batch/v1"], None);
    let version = if batch_v1.contains("\"cronjobs\"") {
        "batch/v1"
    } else {
        "batch/v1beta1"
    };
    let cronjob = format!(
        "apiVersion: {version}\nkind: CronJob\nmetadata: {{name: nightly, namespace: {namespace}}}\nspec:\n  schedule: \"0 3 * * *\"\n  jobTemplate:\n    spec:\n      template:\n        spec: {{restartPolicy: Never, containers: [{{name: report, image: alpine:3.19}}]}}\n"
    );
    let out = kubectl(&["apply", "--dry-run=server", "-f", "-"], Some(&cronjob));
    assert!(
        !out.status.success() && String::from_utf8_lossy(&out.stderr).contains("CronJob"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Deleting the policy lifts the denial, without a restart.
    kubectl_ok(&["delete", "containerpolicy", &deny], None);
    eventually(
        "the Deployment allowed after the policy is deleted",
        Duration::from_secs(30),
        || {
            kubectl(&["apply", "--dry-run=server", "-f", "-"], Some(&denied))
                .status
                .success()
        },
    );
}
