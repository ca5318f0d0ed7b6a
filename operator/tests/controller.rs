//! The controllers against a simulated API server (see `support/fake_api.rs` for the
//! shapes it follows): status, Events, enforcement of changes, deletes, broken watches.

#![allow(clippy::unwrap_used)] // in tests a panic is the failure report

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use axum::body::Body;
use http_body_util::BodyExt;
use portcullis::controller::events::Reporter;
use portcullis::controller::{scans as scan_inputs, status, watch};
use portcullis::metrics::Metrics;
use portcullis_webhook::policy::{
    CompiledIntegration, ObjectVersion, PolicySet, SharedPolicySet, compile,
};
use portcullis_webhook::scan::ScanService;
use portcullis_webhook::server::{AppState, Readiness, router};
use serde_json::{Value, json};
use support::fake_api::{FakeApi, INTEGRATIONS, NAMESPACES, POLICIES, VULNERABILITY_REPORTS};
use tower::ServiceExt;

struct Harness {
    api: Arc<FakeApi>,
    shared: SharedPolicySet,
    ready: Readiness,
    metrics: Arc<Metrics>,
    scans: Arc<ScanService>,
    _leader: tokio::sync::watch::Sender<bool>,
}

impl Harness {
    /// The fake API with `objects` in it, and Portcullis's watches and status
    /// controllers running against it.
    async fn start(objects: &[(&str, Value)]) -> Self {
        Self::start_with(objects, true).await
    }

    /// As [`Harness::start`]; without `watch`, only the test stores into the served set.
    async fn start_with(objects: &[(&str, Value)], watch: bool) -> Self {
        let api = FakeApi::start().await;
        for (collection, object) in objects {
            api.apply(collection, object.clone());
        }
        let config = kube::Config::new(format!("http://{}", api.addr).parse().unwrap());
        let client = kube::Client::try_from(config).unwrap();
        let shared = Arc::new(ArcSwap::from_pointee(PolicySet::default()));
        let ready = Readiness::default();
        ready.certificate_loaded();
        let metrics = Arc::new(Metrics::default());
        if watch {
            tokio::spawn(watch::run(
                client.clone(),
                shared.clone(),
                ready.clone(),
                metrics.clone(),
            ));
        }
        let reporter = Reporter {
            controller: "portcullis.dev/controller".into(),
            instance: "test".into(),
        };
        let (leader, elected) = tokio::sync::watch::channel(true);
        let scans = ScanService::in_memory();
        tokio::spawn(scan_inputs::credentials(
            client.clone(),
            "portcullis-system".into(),
            scans.clone(),
            metrics.clone(),
        ));
        tokio::spawn(scan_inputs::vulnerability_reports(
            client.clone(),
            shared.clone(),
            scans.clone(),
            metrics.clone(),
        ));
        tokio::spawn(status::run(
            client,
            reporter,
            metrics.clone(),
            elected,
            scans.clone(),
            shared.clone(),
        ));
        Harness {
            api,
            shared,
            ready,
            metrics,
            scans,
            _leader: leader,
        }
    }

    fn enforced(&self) -> Vec<String> {
        self.shared
            .load()
            .policies()
            .iter()
            .map(|p| p.name.to_string())
            .collect()
    }

    fn ready_condition(&self, collection: &str, name: &str) -> Value {
        let object = self.api.object(collection, name);
        let conditions = object["status"]["conditions"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let ready = conditions
            .into_iter()
            .find(|c| c["type"] == "Ready")
            .unwrap_or(Value::Null);
        json!({"observedGeneration": object["status"]["observedGeneration"], "status": ready["status"], "reason": ready["reason"], "message": ready["message"]})
    }
}

/// Polls `check` every 20 ms for up to 10 s.
async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn policy(name: &str, spec: Value) -> Value {
    json!({"apiVersion": "portcullis.dev/v1alpha1", "kind": "ContainerPolicy", "metadata": {"name": name}, "spec": spec})
}

/// A captured AdmissionReview from `../shared/fixtures/admission`.
fn fixture(name: &str) -> String {
    std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../shared/fixtures/admission")
            .join(name),
    )
    .unwrap()
}

/// Posts a review to the webhook's router and returns the answer's `response`.
async fn review_response(app: axum::Router, review: String) -> Value {
    let request = axum::http::Request::post("/validate")
        .body(Body::from(review))
        .unwrap();
    let body = app
        .oneshot(request)
        .await
        .unwrap()
        .into_body()
        .collect()
        .await
        .unwrap()
        .to_bytes();
    serde_json::from_slice::<Value>(&body).unwrap()["response"].clone()
}

fn namespace(name: &str, labels: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}})
}

const INVALID: &str = "spec.rules.vulnerabilities.maxCount.critical: must be >= 0 (got -1); \
     nothing is enforced: no version of this object has compiled";

#[tokio::test]
async fn status_events_fixes_and_deletes() {
    let h = Harness::start(&[
        (NAMESPACES, namespace("team-a", json!({"env": "prod"}))),
        (POLICIES, policy("good", json!({"rules": {"tags": {"denyLatest": true}}}))),
        (POLICIES, policy("bad", json!({"rules": {"vulnerabilities": {"maxCount": {"critical": -1}}}}))),
        (INTEGRATIONS, json!({"apiVersion": "portcullis.dev/v1alpha1", "kind": "RegistryIntegration", "metadata": {"name": "harbor"},
            "spec": {"registries": ["harbor.acme.com/**"], "scanner": {"harbor": {"url": "http://harbor.acme.com"}}}})),
    ])
    .await;

    eventually("ready after the first sync of every kind", || {
        h.ready.is_ready()
    })
    .await;
    assert_eq!(
        h.enforced(),
        ["good"],
        "the invalid policy is left out, the valid one enforced"
    );
    assert_eq!(h.shared.load().namespace_labels("team-a")["env"], "prod");

    eventually("Ready=True on the valid policy", || {
        h.ready_condition(POLICIES, "good")["status"] == "True"
    })
    .await;
    assert_eq!(h.ready_condition(POLICIES, "good")["observedGeneration"], 1);
    eventually("Ready=False on the invalid policy", || {
        h.ready_condition(POLICIES, "bad")["status"] == "False"
    })
    .await;
    let bad = h.ready_condition(POLICIES, "bad");
    assert_eq!(
        (bad["reason"].as_str(), bad["message"].as_str()),
        (Some("InvalidSpec"), Some(INVALID))
    );
    eventually("Ready=False on the integration with an http URL", || {
        h.ready_condition(INTEGRATIONS, "harbor")["status"] == "False"
    })
    .await;
    assert!(
        h.ready_condition(INTEGRATIONS, "harbor")["message"]
            .as_str()
            .unwrap()
            .contains("spec.scanner.harbor.url")
    );

    eventually("an InvalidSpec Event on the policy", || {
        h.api.events().iter().any(|e| {
            e["reason"] == "InvalidSpec" && e["regarding"]["name"] == "bad" && e["note"] == INVALID
        })
    })
    .await;

    // Our own status writes come back as watch events; they must not cause more writes.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        (h.api.status_patches("good"), h.api.status_patches("bad")),
        (1, 1),
        "no reconcile storm"
    );

    // Fixing the spec enforces it and flips the condition.
    h.api.apply(
        POLICIES,
        policy("bad", json!({"rules": {"tags": {"requireDigest": true}}})),
    );
    eventually("the fixed policy enforced", || {
        h.enforced() == ["bad", "good"]
    })
    .await;
    eventually("Ready=True after the fix", || {
        h.ready_condition(POLICIES, "bad")["status"] == "True"
    })
    .await;
    assert_eq!(h.ready_condition(POLICIES, "bad")["observedGeneration"], 2);

    // An invalid edit of an enforcing policy keeps its last good generation enforcing,
    // and the status says which; the enforced spec is recorded for restarts.
    assert_eq!(
        h.api.object(POLICIES, "good")["status"]["enforcedGeneration"],
        1
    );
    assert_eq!(
        h.api.object(POLICIES, "good")["status"]["enforcedSpec"]["rules"]["tags"]["denyLatest"],
        true
    );
    h.api.apply(
        POLICIES,
        policy(
            "good",
            json!({"rules": {"workload": {"forbiddenCapabilities": ["NET_RAWR"]}}}),
        ),
    );
    eventually("Ready=False naming the generation still enforced", || {
        h.ready_condition(POLICIES, "good")["message"]
            == "spec.rules.workload.forbiddenCapabilities[0]: unknown capability \"NET_RAWR\"; \
                generation 1 is still enforced"
    })
    .await;
    assert_eq!(h.enforced(), ["bad", "good"]);
    assert_eq!(
        h.api.object(POLICIES, "good")["status"]["enforcedGeneration"],
        1
    );

    h.api.delete(POLICIES, "good");
    eventually("the deleted policy gone", || h.enforced() == ["bad"]).await;
    let metrics = h.metrics.render();
    assert!(
        metrics.contains("portcullis_objects{kind=\"ContainerPolicy\",state=\"enforced\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("portcullis_snapshot_swap_seconds_count"),
        "{metrics}"
    );
}

#[tokio::test]
async fn ready_is_written_once_the_served_set_enforces_that_generation() {
    // The served set is the test's: it plays a policy watch that lags behind status's.
    let h = Harness::start_with(
        &[(
            POLICIES,
            policy("p", json!({"rules": {"tags": {"denyLatest": true}}})),
        )],
        false,
    )
    .await;
    // `uid-p` is the uid the fake API gives `p`.
    let serve = |spec: Value, uid: &str, generation: i64| {
        let spec = serde_json::from_value(spec).unwrap();
        let mut compiled = compile("p", &spec).unwrap();
        compiled.version = ObjectVersion {
            uid: Some(uid.into()),
            generation: Some(generation),
        };
        h.shared.store(Arc::new(PolicySet::new(
            [compiled],
            Vec::<CompiledIntegration>::new(),
            Arc::default(),
        )));
    };
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(
        h.api.status_patches("p"),
        0,
        "it compiles, but nothing serves it yet: no status claims it is enforced"
    );
    // An object of the same name and generation, deleted since: not this one.
    serve(json!({"action": "Warn"}), "uid-deleted", 1);
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(
        h.api.status_patches("p"),
        0,
        "the set serves another object of that name"
    );
    serve(json!({"rules": {"tags": {"denyLatest": true}}}), "uid-p", 1);
    eventually("Ready=True once the set has generation 1", || {
        h.ready_condition(POLICIES, "p")["status"] == "True"
    })
    .await;
    assert_eq!(h.ready_condition(POLICIES, "p")["observedGeneration"], 1);

    let edited = json!({"rules": {"tags": {"requireDigest": true}}});
    h.api.apply(POLICIES, policy("p", edited.clone()));
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(
        h.ready_condition(POLICIES, "p")["observedGeneration"],
        1,
        "generation 2 is not served yet: the status still speaks of generation 1"
    );
    serve(edited, "uid-p", 2);
    eventually("observedGeneration 2 once the set has it", || {
        h.ready_condition(POLICIES, "p")["observedGeneration"] == 2
    })
    .await;
    assert_eq!(h.ready_condition(POLICIES, "p")["status"], "True");
}

#[tokio::test]
async fn broken_watches_keep_the_last_snapshot_and_resume() {
    let h = Harness::start(&[
        (POLICIES, policy("a", json!({}))),
        (POLICIES, policy("b", json!({}))),
    ])
    .await;
    eventually("ready", || h.ready.is_ready()).await;
    assert_eq!(h.enforced(), ["a", "b"]);

    // The API server goes away: watches end with 410 Gone, lists fail.
    h.api.set_failing(true);
    h.api.delete_unseen(POLICIES, "b");
    h.api.apply(POLICIES, policy("c", json!({})));
    eventually("watch errors counted", || {
        h.metrics
            .render()
            .contains("portcullis_watch_errors_total{kind=\"ContainerPolicy\"}")
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        h.enforced(),
        ["a", "b"],
        "the last snapshot keeps enforcing"
    );
    assert!(
        h.ready.is_ready(),
        "still ready: the snapshot is the real set, only stale"
    );

    // It comes back: the re-list brings c in and drops b, deleted while nobody watched.
    h.api.set_failing(false);
    eventually("resumed after the outage", || h.enforced() == ["a", "c"]).await;
}

#[tokio::test]
async fn the_webhook_answer_changes_with_the_policies() {
    let h = Harness::start(&[(NAMESPACES, namespace("team-a", json!({"env": "prod"})))]).await;
    eventually("ready", || h.ready.is_ready()).await;
    let app = router(AppState::new(
        h.shared.clone(),
        ScanService::in_memory(),
        h.ready.clone(),
    ));
    let deployment = fixture("validate-create-deployment.json");
    let allowed = |app: axum::Router| {
        let deployment = deployment.clone();
        async move {
            review_response(app, deployment).await["allowed"]
                .as_bool()
                .unwrap()
        }
    };
    assert!(allowed(app.clone()).await);

    h.api.apply(POLICIES, policy("prod-digests", json!({"match": {"namespaceSelector": {"matchLabels": {"env": "prod"}}}, "rules": {"tags": {"requireDigest": true}}})));
    let deadline = Instant::now() + Duration::from_secs(10);
    while allowed(app.clone()).await {
        assert!(Instant::now() < deadline, "the new policy was not enforced");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Relabelling the namespace takes it out of the policy's reach.
    h.api
        .apply(NAMESPACES, namespace("team-a", json!({"env": "staging"})));
    let deadline = Instant::now() + Duration::from_secs(10);
    while !allowed(app.clone()).await {
        assert!(
            Instant::now() < deadline,
            "the namespace label change was not picked up"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

const SECRETS: &str = "/api/v1/namespaces/portcullis-system/secrets";

fn condition(h: &Harness, name: &str, type_: &str) -> Value {
    h.api.object(INTEGRATIONS, name)["status"]["conditions"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["type"] == type_).cloned())
        .unwrap_or(Value::Null)
}

#[tokio::test]
async fn integrations_report_missing_credentials_and_their_backend_until_the_secret_appears() {
    let integration = json!({
        "apiVersion": "portcullis.dev/v1alpha1", "kind": "RegistryIntegration",
        "metadata": {"name": "acme", "generation": 1},
        "spec": {"registries": ["registry.acme.test/**"], "credentials": {"secretRef": {"name": "pull"}},
                 "scanner": {"http": {"url": "https://scans.acme.test/reports"}}}
    });
    let h = Harness::start(&[(INTEGRATIONS, integration)]).await;
    eventually("Ready=False CredentialsNotFound", || {
        condition(&h, "acme", "Ready")["reason"] == "CredentialsNotFound"
    })
    .await;
    assert!(
        condition(&h, "acme", "Ready")["message"]
            .as_str()
            .unwrap()
            .contains("\"pull\" is missing")
    );
    let backend = condition(&h, "acme", "BackendReachable");
    assert_eq!(
        (backend["status"].as_str(), backend["reason"].as_str()),
        (Some("Unknown"), Some("NotContacted"))
    );
    eventually("a CredentialsNotFound Event", || {
        h.api
            .events()
            .iter()
            .any(|e| e["reason"] == "CredentialsNotFound" && e["regarding"]["name"] == "acme")
    })
    .await;

    // The Secret is created (as `kubectl create secret docker-registry` writes it).
    let config = r#"{"auths":{"registry.acme.test":{"username":"ci","password":"s3cret"}}}"#;
    use base64::Engine;
    let encoded = base64::engine::general_purpose::STANDARD.encode(config);
    h.api.apply(
        SECRETS,
        json!({
            "apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/dockerconfigjson",
            "metadata": {"name": "pull", "namespace": "portcullis-system"},
            "data": {".dockerconfigjson": encoded}
        }),
    );
    eventually("the credentials are indexed", || {
        h.scans.credentials().get("pull").is_some()
    })
    .await;
    let login = h.scans.credentials().get("pull").unwrap();
    assert_eq!(
        login.login_for("registry.acme.test").unwrap().username,
        "ci"
    );
    // The status is rechecked on its own schedule; touching the object rechecks now.
    let mut touched = h.api.object(INTEGRATIONS, "acme");
    touched["metadata"]["generation"] = json!(2);
    h.api.apply(INTEGRATIONS, touched);
    eventually("Ready=True once the Secret exists", || {
        condition(&h, "acme", "Ready")["status"] == "True"
    })
    .await;
    h.api.delete(SECRETS, "pull");
    eventually("a deleted Secret is forgotten", || {
        h.scans.credentials().get("pull").is_none()
    })
    .await;
}

/// A VulnerabilityReport as trivy-operator writes one per workload container (shape of
/// aquasecurity.github.io/v1alpha1), for an image by digest.
fn vulnerability_report(name: &str, digest: &str, cve: &str) -> Value {
    json!({
        "apiVersion": "aquasecurity.github.io/v1alpha1", "kind": "VulnerabilityReport",
        "metadata": {"name": name, "namespace": "team-a",
            "labels": {"trivy-operator.resource.kind": "ReplicaSet", "trivy-operator.container.name": "api"}},
        "report": {
            "updateTimestamp": "2026-11-20T10:00:00Z",
            "scanner": {"name": "Trivy", "vendor": "Aqua Security", "version": "0.50.1"},
            "registry": {"server": "registry.acme.test"},
            "artifact": {"repository": "team/api", "tag": "v1", "digest": digest},
            "summary": {"criticalCount": 1, "highCount": 0, "mediumCount": 0, "lowCount": 0, "unknownCount": 0},
            "vulnerabilities": [{"vulnerabilityID": cve, "resource": "openssl", "installedVersion": "3.0.1",
                "fixedVersion": "3.0.2", "severity": "CRITICAL", "title": "t"}]
        }
    })
}

#[tokio::test]
async fn vulnerability_reports_decide_once_an_integration_uses_trivy_operator() {
    const DIGEST: &str = "sha256:7777777777777777777777777777777777777777777777777777777777777777";
    let integration = json!({
        "apiVersion": "portcullis.dev/v1alpha1", "kind": "RegistryIntegration",
        "metadata": {"name": "in-cluster"},
        "spec": {"registries": ["registry.acme.test/**"], "scanner": {"trivyOperator": {}}}
    });
    let blocking = policy(
        "no-criticals",
        json!({"match": {"images": ["registry.acme.test/**"]},
               "rules": {"vulnerabilities": {"maxSeverity": "High", "unscanned": "Block"}}}),
    );
    let h = Harness::start(&[
        (INTEGRATIONS, integration),
        (POLICIES, blocking),
        (
            VULNERABILITY_REPORTS,
            vulnerability_report("replicaset-api-1-api", DIGEST, "CVE-2024-7"),
        ),
    ])
    .await;
    eventually("the report is indexed", || {
        h.scans
            .reports()
            .most_severe(DIGEST, std::time::SystemTime::now())
            .is_some()
    })
    .await;
    eventually("ready", || h.ready.is_ready()).await;

    let app = router(AppState::new(
        h.shared.clone(),
        h.scans.clone(),
        h.ready.clone(),
    ));
    let review = fixture("validate-create-pod.json").replace(
        "nginx:1.25",
        &format!("registry.acme.test/team/api@{DIGEST}"),
    );
    let response = review_response(app, review).await;
    assert_eq!(response["allowed"], false);
    assert!(
        response["status"]["message"]
            .as_str()
            .unwrap()
            .contains("1 critical vulnerability (CVE-2024-7) exceeds maxSeverity High"),
        "{response}"
    );

    h.api.delete(VULNERABILITY_REPORTS, "replicaset-api-1-api");
    eventually("a deleted report is forgotten", || {
        h.scans
            .reports()
            .most_severe(DIGEST, std::time::SystemTime::now())
            .is_none()
    })
    .await;
}
