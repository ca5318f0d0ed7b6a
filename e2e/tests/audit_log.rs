//! Audit-log monitoring against a real API server: kube-apiserver v1.19.0 started with
//! `config/audit/policy.yaml` and its webhook audit backend pointed at a `portcullis
//! run` replica's `POST /audit` (bearer token, batches at most 1 s old). Each action —
//! a `*` ClusterRole, a cluster-admin binding, an anonymous call, a Secret read as a
//! user who may not, `kubectl exec` into a (Pending) Pod, a privileged Pod in
//! kube-system, a namespace deleted — raises its detection once within 5 s, in
//! `GET /findings`; a wrong token is refused; and `portcullis audit-scan` over the same
//! events, as the log backend wrote them, finds the same. Then an AuditMonitor: refused
//! when invalid; its exclusions, disabled detections and severities applied; its sink
//! (an https server here) sent the new findings in order once it stops answering 503;
//! its status (`Ready`, `SinkReachable`, counts) written; a Pod Portcullis's webhook
//! denies raises `admission-blocked`; one not named `default` is InvalidSpec with an
//! Event. And the backend authenticated by a client certificate instead of the token.

#![allow(clippy::unwrap_used)] // in tests a panic is the failure report

mod support;

use std::collections::BTreeSet;
use std::process::Command;
use std::time::{Duration, Instant};

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use portcullis_webhook::testing::{TestServer, client_identity};
use portcullis_webhook::tls::generate;
use support::cluster::PrivateCluster;
use support::replica::Installation;
use support::{Routes, SCOPE_LABEL, free_port, webhook_configuration};

const TOKEN: &str = "e2e-audit-token-0123456789";

/// What the actions raise: (detection, namespace/name of the object).
const EXPECTED: [(&str, &str); 9] = [
    ("wildcard-role", "/e2e-everything"),
    ("admin-binding", "/e2e-mallory"),
    ("anonymous-request", "e2e-audit/"),
    ("secret-access-denied", "e2e-audit/s1"),
    ("exec-into-container", "e2e-audit/pending"),
    ("manual-pod", "e2e-audit/pending"),
    ("privileged-workload", "kube-system/e2e-priv"),
    ("system-namespace-workload", "kube-system/e2e-priv"),
    ("namespace-deleted", "e2e-gone/e2e-gone"),
];

fn curl(args: &[&str]) -> String {
    let out = Command::new("curl")
        .args(["-s", "--max-time", "10"])
        .args(args)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn raised(findings: &serde_json::Value) -> Vec<(String, String, String)> {
    findings
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            (
                f["detection"].as_str().unwrap().to_owned(),
                format!(
                    "{}/{}",
                    f["namespace"].as_str().unwrap(),
                    f["name"].as_str().unwrap()
                ),
                f["auditID"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

/// How the API server's audit backend authenticates to Portcullis.
#[derive(Clone, Copy, PartialEq)]
enum BackendAuth {
    /// `--audit-token-file`; the backend kubeconfig's user has the token.
    Token,
    /// `--audit-client-ca-file`; the backend kubeconfig's user has a certificate of it.
    ClientCertificate,
}

/// A private kube-apiserver auditing to a `portcullis run` replica's `/audit`.
struct Monitored {
    private: PrivateCluster,
    cluster: support::Cluster,
    replica: support::replica::Replica,
    port: u16,
    ca: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

/// Starts the API server with `config/audit/policy.yaml` and its webhook backend at a
/// replica (namespace `e2e-audit`) that accepts it by `auth`; `None` where the test API
/// server is not available (only outside CI).
async fn monitored(auth: BackendAuth) -> Option<Monitored> {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let certs = generate(&["127.0.0.1".to_owned()]).unwrap();
    let path = |name: &str| dir.path().join(name);
    let (cert, key, ca) = (path("tls.crt"), path("tls.key"), path("ca.crt"));
    std::fs::write(&cert, &certs.cert_pem).unwrap();
    std::fs::write(&key, &certs.key_pem).unwrap();
    std::fs::write(&ca, &certs.ca_pem).unwrap();
    let mut flags: Vec<String> = [
        "--tls-cert-file",
        cert.to_str().unwrap(),
        "--tls-key-file",
        key.to_str().unwrap(),
    ]
    .map(str::to_owned)
    .to_vec();
    let user = match auth {
        BackendAuth::Token => {
            std::fs::write(path("token"), TOKEN).unwrap();
            flags.extend([
                "--audit-token-file".to_owned(),
                path("token").display().to_string(),
            ]);
            format!("{{token: {TOKEN}}}")
        }
        BackendAuth::ClientCertificate => {
            let client = client_identity("kube-apiserver").unwrap();
            std::fs::write(path("client-ca.crt"), &client.ca_pem).unwrap();
            std::fs::write(path("client.crt"), &client.cert_pem).unwrap();
            std::fs::write(path("client.key"), &client.key_pem).unwrap();
            flags.extend([
                "--audit-client-ca-file".to_owned(),
                path("client-ca.crt").display().to_string(),
            ]);
            format!(
                "{{client-certificate: \"{}\", client-key: \"{}\"}}",
                path("client.crt").display(),
                path("client.key").display()
            )
        }
    };
    let backend = path("audit-webhook.kubeconfig");
    std::fs::write(
        &backend,
        format!(
            "apiVersion: v1\nkind: Config\nclusters: [{{name: portcullis, cluster: {{server: \"https://127.0.0.1:{port}/audit\", certificate-authority: \"{}\"}}}}]\n\
             users: [{{name: api-server, user: {user}}}]\ncontexts: [{{name: default, context: {{cluster: portcullis, user: api-server}}}}]\ncurrent-context: default\n",
            ca.display()
        ),
    )
    .unwrap();
    let policy = support::repo().join("config/audit/policy.yaml");
    let private = PrivateCluster::start_with(&format!(
        "--audit-policy-file={} --audit-webhook-config-file={} --audit-webhook-batch-max-wait=1s",
        policy.display(),
        backend.display()
    ))?;
    let cluster = private.cluster.clone();
    cluster.install_crds();
    cluster.kubectl_ok(&["create", "namespace", "e2e-audit"], None);
    let installation = Installation {
        cluster: cluster.clone(),
        namespace: "e2e-audit".into(),
        webhook_configuration: "none".into(),
        flags,
    };
    let replica = installation.start("replica-0", port);
    replica.wait_ready(Duration::from_secs(60)).await;
    Some(Monitored {
        private,
        cluster,
        replica,
        port,
        ca,
        _dir: dir,
    })
}

/// Findings of `detection` in the replica's `/findings`, polled for `within`.
fn wait_for(findings_url: &str, detection: &str, within: Duration) -> Vec<serde_json::Value> {
    let started = Instant::now();
    loop {
        let body: serde_json::Value =
            serde_json::from_str(&curl(&[findings_url])).unwrap_or_default();
        let found: Vec<serde_json::Value> = body["findings"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .filter(|f| f["detection"] == detection)
            .collect();
        if !found.is_empty() || started.elapsed() > within {
            return found;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_certificate_of_the_audit_ca_authenticates_the_backend() {
    let Some(monitored) = monitored(BackendAuth::ClientCertificate).await else {
        return;
    };
    let findings_url = format!("http://{}/findings", monitored.replica.metrics);
    monitored.cluster.apply(
        "apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRole\nmetadata: {name: e2e-everything}\nrules: [{apiGroups: [\"*\"], resources: [\"*\"], verbs: [\"*\"]}]\n",
    );
    let found = wait_for(&findings_url, "wildcard-role", Duration::from_secs(5));
    assert_eq!(
        found.len(),
        1,
        "the backend's batches are accepted by certificate"
    );
    // Without the certificate (and with no token configured) nothing gets in.
    let refused = curl(&[
        "-k",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "-d",
        "{\"items\": []}",
        &format!("https://127.0.0.1:{}/audit", monitored.port),
    ]);
    assert_eq!(refused, "401");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_api_servers_audit_events_raise_each_detection_once() {
    let Some(monitored) = monitored(BackendAuth::Token).await else {
        return;
    };
    let Monitored {
        private,
        cluster,
        replica,
        port,
        ca,
        ..
    } = &monitored;
    let (port, ca) = (*port, ca.clone());
    cluster.kubectl_ok(&["create", "namespace", "e2e-gone"], None);
    let findings_url = format!("http://{}/findings", replica.metrics);

    // A wrong token is refused, and what it carried is never processed.
    let refused = curl(&[
        "-k",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "-H",
        "Authorization: Bearer wrong-token",
        "-d",
        "{\"items\": []}",
        &format!("https://127.0.0.1:{port}/audit"),
    ]);
    assert_eq!(refused, "401");

    cluster.apply(
        "apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRole\nmetadata: {name: e2e-everything}\nrules: [{apiGroups: [\"*\"], resources: [\"*\"], verbs: [\"*\"]}]\n---\n\
         apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRoleBinding\nmetadata: {name: e2e-mallory}\nroleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: cluster-admin}\nsubjects: [{kind: User, name: mallory, apiGroup: rbac.authorization.k8s.io}]\n---\n\
         apiVersion: v1\nkind: Pod\nmetadata: {name: e2e-priv, namespace: kube-system}\nspec: {containers: [{name: c, image: \"busybox:1.36\", securityContext: {privileged: true}}]}\n---\n\
         apiVersion: v1\nkind: Pod\nmetadata: {name: pending, namespace: e2e-audit}\nspec: {containers: [{name: c, image: \"busybox:1.36\"}]}\n",
    );
    cluster.kubectl_ok(
        &[
            "create",
            "secret",
            "generic",
            "s1",
            "-n",
            "e2e-audit",
            "--from-literal=k=v",
        ],
        None,
    );
    let denied = cluster.kubectl(
        &["get", "secret", "s1", "-n", "e2e-audit", "--as=bob"],
        None,
    );
    assert!(!denied.status.success());
    curl(&[
        "-k",
        &format!("{}/api/v1/namespaces/e2e-audit/pods", private.api_url()),
    ]);
    let exec = cluster.kubectl(&["exec", "-n", "e2e-audit", "pending", "--", "true"], None);
    assert!(
        !exec.status.success(),
        "no kubelet: the exec fails after authorization"
    );
    cluster.kubectl_ok(&["delete", "namespace", "e2e-gone", "--wait=false"], None);
    let acted = Instant::now();

    let expected: BTreeSet<(String, String)> = EXPECTED
        .iter()
        .map(|(d, o)| ((*d).to_owned(), (*o).to_owned()))
        .collect();
    let mut found = Vec::new();
    while acted.elapsed() < Duration::from_secs(5) {
        let body: serde_json::Value =
            serde_json::from_str(&curl(&[&findings_url])).unwrap_or_default();
        found = raised(&body["findings"]);
        let have: BTreeSet<(String, String)> = found
            .iter()
            .map(|(d, o, _)| (d.clone(), o.clone()))
            .collect();
        if expected.is_subset(&have) {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    eprintln!("findings after {:?}: {found:#?}", acted.elapsed());
    for (detection, object) in &expected {
        let times = found
            .iter()
            .filter(|(d, o, _)| d == detection && o == object)
            .count();
        assert_eq!(
            times, 1,
            "{detection} on {object}: raised {times} times within 5 s"
        );
    }
    // Metrics count them.
    let metrics = curl(&[&format!("http://{}/metrics", replica.metrics)]);
    assert!(
        metrics.contains(
            "portcullis_audit_findings_total{detection=\"admin-binding\",severity=\"Critical\"} 1"
        ),
        "{metrics}"
    );

    // The same events, as the log backend wrote them: the same findings.
    let scanned = Command::new(support::portcullis_bin())
        .args(["audit-scan", "-o", "json", "--fail-on", "Critical"])
        .arg(private.dir().join("audit.log"))
        .output()
        .unwrap();
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&scanned.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let from_log: BTreeSet<(String, String, String)> = raised(&serde_json::Value::Array(lines))
        .into_iter()
        .filter(|(d, o, _)| expected.contains(&(d.clone(), o.clone())))
        .collect();
    let from_webhook: BTreeSet<(String, String, String)> = found
        .into_iter()
        .filter(|(d, o, _)| expected.contains(&(d.clone(), o.clone())))
        .collect();
    assert_eq!(from_log, from_webhook);

    configured_by_an_audit_monitor(cluster, private, port, &ca, &findings_url).await;
}

/// The AuditMonitor `default`: refused when invalid, its exclusions and detection
/// settings applied within seconds, its sink sent every new finding — spooled while the
/// sink answers 503, delivered once it answers again — and its status counting them.
async fn configured_by_an_audit_monitor(
    cluster: &support::Cluster,
    private: &PrivateCluster,
    port: u16,
    ca: &std::path::Path,
    findings_url: &str,
) {
    // The policies webhook, as config/default registers it, at this replica.
    let mut configuration: serde_json::Value = serde_json::from_str(&webhook_configuration(
        "e2e-audit-monitor",
        "e2e-audit",
        &format!("https://127.0.0.1:{port}/validate"),
        Routes {
            workloads: false,
            ephemeral_containers: false,
            policies: true,
        },
    ))
    .unwrap();
    let ca_bundle =
        serde_json::to_value(k8s_openapi::ByteString(std::fs::read(ca).unwrap())).unwrap();
    for webhook in configuration["webhooks"].as_array_mut().unwrap() {
        webhook["clientConfig"]["caBundle"] = ca_bundle.clone();
    }
    cluster.apply(&configuration.to_string());

    // A SIEM that is down at first.
    let up = Arc::new(AtomicBool::new(false));
    let received = Arc::new(Mutex::new(Vec::<serde_json::Value>::new()));
    let sink = {
        let (up, received) = (up.clone(), received.clone());
        TestServer::start_router(axum::Router::new().route(
            "/findings",
            axum::routing::post(move |body: axum::body::Bytes| {
                let (up, received) = (up.clone(), received.clone());
                async move {
                    if !up.load(Ordering::SeqCst) {
                        return axum::http::StatusCode::SERVICE_UNAVAILABLE;
                    }
                    let batch: Vec<serde_json::Value> = serde_json::from_slice(&body).unwrap();
                    received.lock().unwrap().extend(batch);
                    axum::http::StatusCode::OK
                }
            }),
        ))
        .await
        .unwrap()
    };
    let monitor = |detections: &str| {
        format!(
            "apiVersion: portcullis.dev/v1alpha1\nkind: AuditMonitor\nmetadata: {{name: default}}\nspec:\n  detections: {detections}\n  exclude: {{users: [\"carol*\"]}}\n  sink:\n    url: https://127.0.0.1:{}/findings\n    caBundle: {}\n",
            sink.addr.port(),
            serde_json::to_string(&sink.certs.ca_pem).unwrap()
        )
    };
    let mut refused = String::new();
    support::eventually(
        "the policies webhook refusing an unknown detection",
        Duration::from_secs(30),
        || {
            let out = cluster.kubectl(
                &["apply", "-f", "-"],
                Some(&monitor("{anonymous-requests: {enabled: false}}")),
            );
            refused = String::from_utf8_lossy(&out.stderr).into_owned();
            !out.status.success() && refused.contains("policies.portcullis.dev")
        },
    );
    assert!(
        refused.contains("spec.detections.anonymous-requests: unknown detection"),
        "{refused}"
    );
    cluster.apply(&monitor(
        "{anonymous-request: {enabled: false}, secret-access-denied: {severity: High}}",
    ));
    let jsonpath = |path: &str| cluster.jsonpath("auditmonitor/default", None, path);
    support::eventually(
        "AuditMonitor default Ready",
        Duration::from_secs(30),
        || jsonpath("{.status.conditions[?(@.type==\"Ready\")].status}") == "True",
    );
    // The settings reach the receiver through the watch; give it a moment, then act.
    std::thread::sleep(Duration::from_secs(2));
    let before = raised(
        &serde_json::from_str::<serde_json::Value>(&curl(&[findings_url])).unwrap()["findings"],
    )
    .len();
    for user in ["carol", "dave"] {
        let denied = cluster.kubectl(
            &[
                "get",
                "secret",
                "s1",
                "-n",
                "e2e-audit",
                &format!("--as={user}"),
            ],
            None,
        );
        assert!(!denied.status.success());
    }
    curl(&[
        "-k",
        &format!("{}/api/v1/namespaces/e2e-audit/pods", private.api_url()),
    ]);
    cluster.kubectl(
        &["get", "secret", "s1", "-n", "e2e-audit", "--as=erin"],
        None,
    );
    let acted = Instant::now();
    let mut new = Vec::new();
    while acted.elapsed() < Duration::from_secs(5) {
        let body: serde_json::Value =
            serde_json::from_str(&curl(&[findings_url])).unwrap_or_default();
        new = body["findings"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .split_off(before);
        if new.iter().any(|f| f["user"] == "erin") {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    eprintln!("findings after the AuditMonitor: {new:#?}");
    let users: Vec<&str> = new.iter().map(|f| f["user"].as_str().unwrap()).collect();
    assert_eq!(
        users,
        ["dave", "erin"],
        "carol is excluded; anonymous-request is off"
    );
    assert!(
        new.iter()
            .all(|f| f["detection"] == "secret-access-denied" && f["severity"] == "High")
    );

    // The sink was down: both wait, in order, and the status says so.
    support::eventually("SinkReachable False", Duration::from_secs(30), || {
        jsonpath("{.status.conditions[?(@.type==\"SinkReachable\")].status}") == "False"
            && jsonpath("{.status.sink.pending}") == "2"
    });
    assert!(received.lock().unwrap().is_empty());
    up.store(true, Ordering::SeqCst);
    support::eventually(
        "the spooled findings delivered",
        Duration::from_secs(30),
        || received.lock().unwrap().len() >= 2,
    );
    let delivered: Vec<String> = received
        .lock()
        .unwrap()
        .iter()
        .map(|f| f["user"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(delivered, ["dave", "erin"]);
    support::eventually(
        "the status counting the delivery",
        Duration::from_secs(30),
        || {
            jsonpath("{.status.conditions[?(@.type==\"SinkReachable\")].status}") == "True"
                && jsonpath("{.status.sink.delivered}") == "2"
                && jsonpath("{.status.sink.pending}") == "0"
        },
    );
    let total: usize = jsonpath("{.status.findings.total}").parse().unwrap();
    assert_eq!(
        total,
        before + 2,
        "status counts every finding of this replica"
    );
    let columns = cluster.kubectl_ok(&["get", "amon"], None);
    assert!(
        columns.starts_with("NAME") && columns.contains("FINDINGS"),
        "{columns}"
    );

    // A Pod Portcullis's own admission webhook denies: `admission-blocked`.
    cluster.kubectl_ok(
        &[
            "label",
            "namespace",
            "e2e-audit",
            &format!("{SCOPE_LABEL}=e2e-audit"),
        ],
        None,
    );
    cluster.apply(&support::policy(
        "e2e-no-privileged",
        "{action: Block, match: {namespaces: [e2e-audit]}, rules: {workload: {denyPrivileged: true}}}",
    ));
    let privileged = "apiVersion: v1\nkind: Pod\nmetadata: {name: e2e-denied, namespace: e2e-audit}\nspec: {containers: [{name: c, image: \"busybox:1.36\", securityContext: {privileged: true}}]}\n";
    support::eventually("the privileged Pod denied", Duration::from_secs(30), || {
        let out = cluster.kubectl(&["apply", "-f", "-"], Some(privileged));
        !out.status.success() && String::from_utf8_lossy(&out.stderr).contains("denied the request")
    });
    let blocked = wait_for(findings_url, "admission-blocked", Duration::from_secs(5));
    if blocked.len() != 1 {
        let log = std::fs::read_to_string(private.dir().join("audit.log")).unwrap_or_default();
        for line in log.lines().filter(|l| l.contains("e2e-denied")) {
            eprintln!("audit.log: {line}");
        }
    }
    assert_eq!(blocked.len(), 1, "{blocked:#?}");
    assert_eq!(
        (
            blocked[0]["namespace"].as_str(),
            blocked[0]["name"].as_str()
        ),
        (Some("e2e-audit"), Some("e2e-denied"))
    );

    // One that got in while the policies webhook was away: not Ready, with an Event
    // saying why, and the settings of `default` untouched.
    cluster.kubectl_ok(
        &[
            "delete",
            "validatingwebhookconfiguration",
            "e2e-audit-monitor",
        ],
        None,
    );
    cluster.apply(
        "apiVersion: portcullis.dev/v1alpha1\nkind: AuditMonitor\nmetadata: {name: strict}\nspec: {detections: {manual-pod: {enabled: false}}}\n",
    );
    let strict = |path: &str| cluster.jsonpath("auditmonitor/strict", None, path);
    support::eventually(
        "AuditMonitor strict InvalidSpec",
        Duration::from_secs(30),
        || strict("{.status.conditions[?(@.type==\"Ready\")].reason}") == "InvalidSpec",
    );
    assert!(
        strict("{.status.conditions[?(@.type==\"Ready\")].message}")
            .contains("metadata.name: only the AuditMonitor named \"default\" is used")
    );
    support::eventually("an InvalidSpec Event", Duration::from_secs(30), || {
        cluster
            .kubectl_ok(
                &[
                    "get",
                    "events",
                    "-A",
                    "--field-selector",
                    "involvedObject.name=strict",
                ],
                None,
            )
            .contains("InvalidSpec")
    });
}
