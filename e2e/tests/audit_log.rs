//! Audit-log monitoring against a real API server: kube-apiserver v1.19.0 started with
//! `config/audit/policy.yaml` and its webhook audit backend pointed at a `portcullis
//! run` replica's `POST /audit` (bearer token, batches at most 1 s old). Each action —
//! a `*` ClusterRole, a cluster-admin binding, an anonymous call, a Secret read as a
//! user who may not, `kubectl exec` into a (Pending) Pod, a privileged Pod in
//! kube-system, a namespace deleted — raises its detection once within 5 s, in
//! `GET /findings`; a wrong token is refused; and `portcullis audit-scan` over the same
//! events, as the log backend wrote them, finds the same.

#![allow(clippy::unwrap_used)] // in tests a panic is the failure report

mod support;

use std::collections::BTreeSet;
use std::process::Command;
use std::time::{Duration, Instant};

use portcullis_webhook::tls::generate;
use support::cluster::PrivateCluster;
use support::free_port;
use support::replica::Installation;

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

#[tokio::test(flavor = "multi_thread")]
async fn the_api_servers_audit_events_raise_each_detection_once() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let certs = generate(&["127.0.0.1".to_owned()]).unwrap();
    let (cert, key, ca, token) = (
        dir.path().join("tls.crt"),
        dir.path().join("tls.key"),
        dir.path().join("ca.crt"),
        dir.path().join("token"),
    );
    std::fs::write(&cert, &certs.cert_pem).unwrap();
    std::fs::write(&key, &certs.key_pem).unwrap();
    std::fs::write(&ca, &certs.ca_pem).unwrap();
    std::fs::write(&token, TOKEN).unwrap();
    let backend = dir.path().join("audit-webhook.kubeconfig");
    std::fs::write(
        &backend,
        format!(
            "apiVersion: v1\nkind: Config\nclusters: [{{name: portcullis, cluster: {{server: \"https://127.0.0.1:{port}/audit\", certificate-authority: \"{}\"}}}}]\n\
             users: [{{name: api-server, user: {{token: {TOKEN}}}}}]\ncontexts: [{{name: default, context: {{cluster: portcullis, user: api-server}}}}]\ncurrent-context: default\n",
            ca.display()
        ),
    )
    .unwrap();
    let policy = support::repo().join("config/audit/policy.yaml");
    let flags = format!(
        "--audit-policy-file={} --audit-webhook-config-file={} --audit-webhook-batch-max-wait=1s",
        policy.display(),
        backend.display()
    );
    let Some(private) = PrivateCluster::start_with(&flags) else {
        return;
    };
    let cluster = private.cluster.clone();
    cluster.install_crds();
    cluster.kubectl_ok(&["create", "namespace", "e2e-audit"], None);
    cluster.kubectl_ok(&["create", "namespace", "e2e-gone"], None);
    let installation = Installation {
        cluster: cluster.clone(),
        namespace: "e2e-audit".into(),
        webhook_configuration: "none".into(),
        flags: [
            "--tls-cert-file",
            cert.to_str().unwrap(),
            "--tls-key-file",
            key.to_str().unwrap(),
            "--audit-token-file",
            token.to_str().unwrap(),
        ]
        .map(str::to_owned)
        .to_vec(),
    };
    let replica = installation.start("replica-0", port);
    replica.wait_ready(Duration::from_secs(60)).await;
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
}
