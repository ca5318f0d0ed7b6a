//! The audit-log detections over events a real kube-apiserver v1.19.0 wrote
//! (`fixtures/audit-kube-1.19.jsonl`: its log backend with `config/audit/policy.yaml`,
//! while a user created Pods, a privileged Pod in kube-system, a `*` ClusterRole, a
//! cluster-admin binding, read a Secret and created a Pod as a user who may not, called
//! the API anonymously, tried `kubectl exec`, and deleted a namespace; before that, the
//! API server's own bootstrap, which must raise nothing), and over events built from
//! the same shapes for what that capture lacks.

#![allow(clippy::unwrap_used)] // in tests a panic is the failure report

use std::collections::BTreeMap;

use portcullis_webhook::auditlog::{
    Detection, Event, EventList, Finding, Monitor, Settings, Severity, State,
};
use portcullis_webhook::glob::Glob;
use serde_json::json;

const CAPTURE: &str = include_str!("fixtures/audit-kube-1.19.jsonl");

fn scan(monitor: &mut Monitor, lines: &str) -> Vec<Finding> {
    lines
        .lines()
        .flat_map(|line| {
            let event: Event<'_> = serde_json::from_str(line).unwrap();
            monitor.observe(&event)
        })
        .collect()
}

fn by_detection(findings: &[Finding]) -> BTreeMap<&'static str, Vec<String>> {
    let mut map: BTreeMap<&'static str, Vec<String>> = BTreeMap::new();
    for f in findings {
        map.entry(f.detection.id())
            .or_default()
            .push(format!("{}/{}", f.namespace, f.name));
    }
    map
}

#[test]
fn the_captured_session_raises_each_detection_once_and_the_bootstrap_nothing() {
    let mut monitor = Monitor::default();
    let findings = scan(&mut monitor, CAPTURE);
    let found = by_detection(&findings);
    let expected: BTreeMap<&str, Vec<&str>> = BTreeMap::from([
        ("manual-pod", vec!["team-a/manual", "kube-system/priv"]),
        (
            "new-registry",
            vec!["team-a/manual", "kube-system/priv", "team-a/web"],
        ),
        ("privileged-workload", vec!["kube-system/priv"]),
        ("host-access-workload", vec!["kube-system/priv"]),
        ("system-namespace-workload", vec!["kube-system/priv"]),
        ("wildcard-role", vec!["/everything"]),
        ("admin-binding", vec!["/mallory-admin"]),
        ("secret-access-denied", vec!["team-a/s1"]),
        ("pod-create-denied", vec!["team-a/"]),
        ("anonymous-request", vec!["team-a/"]),
        ("exec-into-container", vec!["team-a/manual"]),
        ("namespace-deleted", vec!["team-a/team-a"]),
    ]);
    let found_plain: BTreeMap<&str, Vec<&str>> = found
        .iter()
        .map(|(k, v)| (*k, v.iter().map(String::as_str).collect()))
        .collect();
    assert_eq!(found_plain, expected, "{findings:#?}");
    assert_eq!(
        monitor
            .state
            .registries
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
        ["docker.io", "ghcr.io", "registry.example.com:5000"]
    );
}

#[test]
fn messages_name_who_did_what_where_and_the_audit_id() {
    let mut monitor = Monitor::default();
    let findings = scan(&mut monitor, CAPTURE);
    let secret = findings
        .iter()
        .find(|f| f.detection == Detection::SecretAccessDenied)
        .unwrap();
    assert_eq!(secret.user, "bob", "the impersonated user acts");
    assert_eq!(secret.severity, Severity::Medium);
    assert!(
        secret.message.starts_with("Secret access denied: bob (impersonated by admin) (groups system:authenticated) from 127.0.0.1 get secrets team-a/s1 (code 403, audit ID "),
        "{}",
        secret.message
    );
    let binding = findings
        .iter()
        .find(|f| f.detection == Detection::AdminBinding)
        .unwrap();
    assert_eq!(binding.severity, Severity::Critical);
    assert!(
        binding
            .message
            .starts_with("User mallory bound to ClusterRole cluster-admin: admin"),
        "{}",
        binding.message
    );
    let privileged = findings
        .iter()
        .find(|f| f.detection == Detection::PrivilegedWorkload)
        .unwrap();
    assert!(
        privileged
            .message
            .starts_with("Pod runs container \"c\" privileged: admin"),
        "{}",
        privileged.message
    );
    let json = serde_json::to_value(secret).unwrap();
    assert_eq!(json["detection"], "secret-access-denied");
    assert_eq!(json["severity"], "Medium");
    assert!(json["auditID"].as_str().unwrap().len() > 10);
}

fn event(overrides: serde_json::Value) -> String {
    let mut base = json!({
        "kind": "Event", "apiVersion": "audit.k8s.io/v1", "level": "Request",
        "auditID": "a-1", "stage": "ResponseComplete", "requestURI": "/api/v1/namespaces/team-a/pods/web",
        "verb": "get", "user": {"username": "carol", "groups": ["devs", "system:authenticated"]},
        "sourceIPs": ["10.0.0.7"], "objectRef": {"resource": "pods", "namespace": "team-a", "name": "web", "apiVersion": "v1"},
        "responseStatus": {"metadata": {}, "code": 200},
        "stageTimestamp": "2026-11-30T12:00:00.000000Z",
        "annotations": {"authorization.k8s.io/decision": "allow"}
    });
    for (k, v) in overrides.as_object().unwrap() {
        base[k] = v.clone();
    }
    base.to_string()
}

fn fired(monitor: &mut Monitor, line: &str) -> Vec<Detection> {
    scan(monitor, line)
        .into_iter()
        .map(|f| f.detection)
        .collect()
}

#[test]
fn an_ephemeral_container_and_an_admission_denial_fire() {
    let mut monitor = Monitor::default();
    let ephemeral = event(
        json!({"verb": "patch", "objectRef": {"resource": "pods", "subresource": "ephemeralcontainers", "namespace": "team-a", "name": "web"}}),
    );
    assert_eq!(
        fired(&mut monitor, &ephemeral),
        [Detection::EphemeralContainer]
    );
    let denied = event(json!({"verb": "create", "responseStatus": {"code": 400,
        "message": "admission webhook \"validate.portcullis.dev\" denied the request: Pod team-a/web: …"}}));
    assert_eq!(fired(&mut monitor, &denied), [Detection::AdmissionBlocked]);
}

/// What kube-apiserver v1.19.0 wrote for a privileged Pod Portcullis's webhook denied
/// (captured in the e2e `audit_log`): no message, only 403 after authorization allowed.
const DENIED_BY_WEBHOOK: &str = r#"{"kind":"Event","apiVersion":"audit.k8s.io/v1","level":"Request","auditID":"9e53ecf9-ce0e-4f0e-a512-c2c10513cdda","stage":"ResponseComplete","requestURI":"/api/v1/namespaces/e2e-audit/pods?fieldManager=kubectl-client-side-apply&fieldValidation=Strict","verb":"create","user":{"username":"admin","uid":"admin","groups":["system:masters","system:authenticated"]},"sourceIPs":["127.0.0.1"],"userAgent":"kubectl/v1.32.4 (linux/amd64) kubernetes/4cb5f07","objectRef":{"resource":"pods","namespace":"e2e-audit","name":"e2e-denied","apiVersion":"v1"},"responseStatus":{"metadata":{},"status":"Failure","reason":"Forbidden","code":403},"requestObject":{"kind":"Pod","apiVersion":"v1","metadata":{"name":"e2e-denied","namespace":"e2e-audit","creationTimestamp":null},"spec":{"containers":[{"name":"c","image":"busybox:1.36","resources":{},"terminationMessagePath":"/dev/termination-log","terminationMessagePolicy":"File","imagePullPolicy":"IfNotPresent","securityContext":{"privileged":true}}],"restartPolicy":"Always","terminationGracePeriodSeconds":30,"dnsPolicy":"ClusterFirst","securityContext":{},"schedulerName":"default-scheduler","enableServiceLinks":true},"status":{}},"requestReceivedTimestamp":"2026-11-30T21:23:32.909915Z","stageTimestamp":"2026-11-30T21:23:32.912126Z","annotations":{"authorization.k8s.io/decision":"allow","authorization.k8s.io/reason":""}}"#;

#[test]
fn a_webhook_denial_as_v1_19_records_it_is_admission_blocked_and_a_forbidden_read_is_not() {
    let mut monitor = Monitor::default();
    assert_eq!(
        scan(&mut monitor, DENIED_BY_WEBHOOK)
            .into_iter()
            .map(|f| (f.detection, f.name))
            .collect::<Vec<_>>(),
        [(Detection::AdmissionBlocked, "e2e-denied".to_owned())],
        "the privileged Pod was never created: no privileged-workload"
    );
    let forbidden = DENIED_BY_WEBHOOK.replace(
        "\"authorization.k8s.io/decision\":\"allow\"",
        "\"authorization.k8s.io/decision\":\"forbid\"",
    );
    assert!(
        !fired(&mut Monitor::default(), &forbidden).contains(&Detection::AdmissionBlocked),
        "refused by authorization, not admission"
    );
}

#[test]
fn error_rate_fires_once_per_window_at_the_threshold() {
    let mut monitor = Monitor::new(
        Settings {
            error_threshold: 3,
            error_window_seconds: 60,
            ..Settings::default()
        },
        State::default(),
    );
    let failure = |second: u32| {
        event(
            json!({"verb": "list", "responseStatus": {"code": 404}, "stageTimestamp": format!("2026-11-30T12:00:{second:02}Z")}),
        )
    };
    let counts: Vec<usize> = (0..6)
        .map(|s| fired(&mut monitor, &failure(s)).len())
        .collect();
    assert_eq!(counts, [0, 0, 1, 0, 0, 0], "once at the third failure");
    let later = event(
        json!({"verb": "list", "responseStatus": {"code": 404}, "stageTimestamp": "2026-11-30T12:01:30Z"}),
    );
    for _ in 0..2 {
        assert!(fired(&mut monitor, &later).is_empty());
    }
    assert_eq!(
        fired(&mut monitor, &later),
        [Detection::ErrorRate],
        "a new window fires again"
    );
}

#[test]
fn what_must_not_fire_does_not() {
    let mut monitor = Monitor::default();
    // A Pod its ReplicaSet created, from an image of a registry already seen.
    monitor.state.registries.insert("docker.io".into());
    let owned = event(json!({"verb": "create", "responseStatus": {"code": 201},
        "user": {"username": "system:serviceaccount:kube-system:replicaset-controller"},
        "requestObject": {"metadata": {"name": "web-1", "ownerReferences": [{"kind": "ReplicaSet", "name": "web"}]},
            "spec": {"containers": [{"name": "c", "image": "nginx:1.25"}]}}}));
    assert!(fired(&mut monitor, &owned).is_empty());
    let owned_by_user = owned.replace(
        "system:serviceaccount:kube-system:replicaset-controller",
        "carol",
    );
    assert!(
        fired(&mut monitor, &owned_by_user).is_empty(),
        "owned Pods are not manual"
    );
    // A role without wildcards; a binding to view.
    let role = event(json!({"verb": "create", "responseStatus": {"code": 201},
        "objectRef": {"resource": "clusterroles", "name": "reader", "apiGroup": "rbac.authorization.k8s.io"},
        "requestObject": {"rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list"]}]}}));
    assert!(fired(&mut monitor, &role).is_empty());
    let binding = event(json!({"verb": "create", "responseStatus": {"code": 201},
        "objectRef": {"resource": "clusterrolebindings", "name": "carol-view", "apiGroup": "rbac.authorization.k8s.io"},
        "requestObject": {"roleRef": {"kind": "ClusterRole", "name": "view"}, "subjects": [{"kind": "User", "name": "carol"}]}}));
    assert!(fired(&mut monitor, &binding).is_empty());
    // Anonymous health checks; the request stage of an exec (only completed requests count).
    let health = event(
        json!({"user": {"username": "system:anonymous", "groups": ["system:unauthenticated"]},
        "requestURI": "/healthz", "objectRef": null}),
    );
    assert!(fired(&mut monitor, &health).is_empty());
    let received = event(
        json!({"stage": "RequestReceived", "objectRef": {"resource": "pods", "subresource": "exec", "namespace": "team-a", "name": "web"}}),
    );
    assert!(fired(&mut monitor, &received).is_empty());
    // A Secret read that was allowed; a Pod create refused by admission, not authorization.
    let secret =
        event(json!({"objectRef": {"resource": "secrets", "namespace": "team-a", "name": "s"}}));
    assert!(fired(&mut monitor, &secret).is_empty());
    let admission = event(
        json!({"verb": "create", "objectRef": {"resource": "pods", "namespace": "team-a"}, "responseStatus": {"code": 403}}),
    );
    assert!(!fired(&mut monitor, &admission).contains(&Detection::PodCreateDenied));
}

#[test]
fn excluded_users_and_namespaces_and_disabled_detections_raise_nothing_and_severities_follow_settings()
 {
    let exec = event(
        json!({"verb": "create", "objectRef": {"resource": "pods", "subresource": "exec", "namespace": "team-a", "name": "web"}}),
    );
    let settings = |f: fn(&mut Settings)| {
        let mut s = Settings::default();
        f(&mut s);
        Monitor::new(s, State::default())
    };
    assert!(
        fired(
            &mut settings(|s| s.exclude_users = vec![Glob::new("car*").unwrap()]),
            &exec
        )
        .is_empty()
    );
    assert!(
        fired(
            &mut settings(|s| s.exclude_namespaces = vec![Glob::new("team-*").unwrap()]),
            &exec
        )
        .is_empty()
    );
    assert!(
        fired(
            &mut settings(|s| {
                s.disabled.insert(Detection::ExecIntoContainer);
            }),
            &exec
        )
        .is_empty()
    );
    let mut low = settings(|s| {
        s.severities
            .insert(Detection::ExecIntoContainer, Severity::Low);
    });
    let findings = scan(&mut low, &exec);
    assert_eq!(findings.len(), 1);
    assert_eq!(findings[0].severity, Severity::Low);
}

#[test]
fn an_event_list_as_the_webhook_backend_sends_it_is_read() {
    let items: Vec<serde_json::Value> = CAPTURE
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let body = json!({"kind": "EventList", "apiVersion": "audit.k8s.io/v1", "metadata": {}, "items": items}).to_string();
    let list: EventList<'_> = serde_json::from_str(&body).unwrap();
    let mut monitor = Monitor::default();
    let from_list: usize = list.items.iter().map(|e| monitor.observe(e).len()).sum();
    let from_lines = scan(&mut Monitor::default(), CAPTURE).len();
    assert_eq!(from_list, from_lines);
}

/// `kubectl exec` into a Pod that cannot run, as kube-apiserver v1.19.0 audits it: two
/// requests 3 ms apart (`kubectl` tries again). The webhook backend may deliver them in
/// either order, in one batch or two.
fn exec_pair() -> [String; 2] {
    let exec = |id: &str, at: &str| {
        event(
            json!({"auditID": id, "verb": "create", "stageTimestamp": at,
            "requestURI": "/api/v1/namespaces/team-a/pods/web/exec?command=true",
            "objectRef": {"resource": "pods", "subresource": "exec", "namespace": "team-a", "name": "web"},
            "responseStatus": {"code": 400}}),
        )
    };
    [
        exec("ffff-first", "2026-12-01T06:29:40.135119Z"),
        exec("0000-second", "2026-12-01T06:29:40.138854Z"),
    ]
}

#[test]
fn a_repeat_delivered_out_of_order_raises_once_naming_the_first_request() {
    let [first, second] = exec_pair();
    let exec_findings = |found: Vec<Finding>| -> Vec<String> {
        found
            .into_iter()
            .filter(|f| f.detection == Detection::ExecIntoContainer)
            .map(|f| f.audit_id)
            .collect()
    };
    for (arrival, what) in [
        ([&first, &second], "in order"),
        ([&second, &first], "the later request first"),
    ] {
        let body = format!(r#"{{"items": [{}, {}]}}"#, arrival[0], arrival[1]);
        let mut list: EventList<'_> = serde_json::from_str(&body).unwrap();
        let found = Monitor::default().observe_batch(&mut list.items);
        assert_eq!(exec_findings(found), ["ffff-first"], "one batch, {what}");
    }
    // In two batches, the later request first: what was raised stands, and the earlier
    // request arriving late is its repeat, not a second finding.
    let mut monitor = Monitor::default();
    let mut raised = exec_findings(scan(&mut monitor, &second));
    raised.extend(exec_findings(scan(&mut monitor, &first)));
    assert_eq!(raised, ["0000-second"], "two batches: raised once");
}

mod receiver {
    //! `POST /audit` through the webhook's router, as the API server's webhook backend
    //! calls it, and the receiver's ring and saved state.

    use super::*;
    use axum::body::Body;
    use axum::http::{Request, StatusCode};
    use portcullis_webhook::auditlog::AuditService;
    use portcullis_webhook::policy::PolicySet;
    use portcullis_webhook::scan::ScanService;
    use portcullis_webhook::server::{AppState, Readiness, router};
    use std::sync::Arc;
    use tower::ServiceExt;

    const TOKEN: &str = "an-audit-token-of-some-length";

    fn event_list() -> String {
        let items: Vec<serde_json::Value> = CAPTURE
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        json!({"kind": "EventList", "apiVersion": "audit.k8s.io/v1", "metadata": {}, "items": items}).to_string()
    }

    fn app(service: Option<Arc<AuditService>>) -> axum::Router {
        let shared = Arc::new(arc_swap::ArcSwap::from_pointee(PolicySet::default()));
        router(AppState {
            audit: service,
            ..AppState::new(shared, ScanService::in_memory(), Readiness::ready_now())
        })
    }

    async fn post(app: &axum::Router, token: Option<&str>, body: String) -> StatusCode {
        let mut request = Request::post("/audit").header("content-type", "application/json");
        if let Some(token) = token {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        app.clone()
            .oneshot(request.body(Body::from(body)).unwrap())
            .await
            .unwrap()
            .status()
    }

    #[tokio::test]
    async fn only_the_token_gets_in_and_what_gets_in_is_judged() {
        let service = Arc::new(
            AuditService::new(Some(TOKEN.into()), None, Settings::default(), None).unwrap(),
        );
        let app = app(Some(service.clone()));
        assert_eq!(
            post(&app, None, event_list()).await,
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(
            post(&app, Some("an-audit-token-of-some-lengtH"), event_list()).await,
            StatusCode::UNAUTHORIZED
        );
        assert!(
            service.findings_since(None).unwrap().is_empty(),
            "nothing refused is processed"
        );
        assert_eq!(
            post(&app, Some(TOKEN), "{\"items\": 3}".into()).await,
            StatusCode::BAD_REQUEST
        );
        assert_eq!(post(&app, Some(TOKEN), event_list()).await, StatusCode::OK);
        let all = service.findings_since(None).unwrap();
        assert_eq!(all.len(), 15);
        assert_eq!(all[0].sequence, 1);
        let after = service.findings_since(Some("13")).unwrap();
        assert_eq!(
            after.iter().map(|n| n.sequence).collect::<Vec<_>>(),
            [14, 15]
        );
        let by_time = service
            .findings_since(Some("2026-11-30T18:04:40.5Z"))
            .unwrap();
        assert_eq!(
            by_time
                .iter()
                .map(|n| n.finding.detection.id())
                .collect::<Vec<_>>(),
            ["exec-into-container", "namespace-deleted"]
        );
        assert!(
            service
                .findings_since(Some("yesterday"))
                .unwrap_err()
                .contains("\"yesterday\"")
        );
    }

    #[tokio::test]
    async fn without_a_token_configured_audit_is_not_served() {
        assert_eq!(
            post(&app(None), Some(TOKEN), event_list()).await,
            StatusCode::NOT_FOUND
        );
    }

    /// A restart does not announce every registry again.
    #[test]
    fn the_saved_state_survives_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let first = AuditService::new(
            Some(TOKEN.into()),
            None,
            Settings::default(),
            Some(dir.path()),
        )
        .unwrap();
        first.ingest(event_list().as_bytes()).unwrap();
        first.save().unwrap();
        let again = AuditService::new(
            Some(TOKEN.into()),
            None,
            Settings::default(),
            Some(dir.path()),
        )
        .unwrap();
        again.ingest(event_list().as_bytes()).unwrap();
        let detections: Vec<&str> = again
            .findings_since(None)
            .unwrap()
            .iter()
            .map(|n| n.finding.detection.id())
            .collect();
        assert!(!detections.contains(&"new-registry"), "{detections:?}");
        assert_eq!(detections.len(), 12);
    }
}

/// `/audit` over real HTTPS with `--audit-client-ca-file`: a client certificate signed
/// by that CA gets in without a token; no certificate, or one of another CA, is refused
/// (401) — and a client with another CA's certificate still gets its other requests
/// served (an API server presenting one to admission webhooks is not cut off).
mod client_certificates {
    use std::sync::Arc;

    use portcullis_webhook::auditlog::{AuditService, Settings};
    use portcullis_webhook::client_cert::ClientCa;
    use portcullis_webhook::policy::PolicySet;
    use portcullis_webhook::scan::ScanService;
    use portcullis_webhook::server::{AppState, Readiness};
    use portcullis_webhook::testing::{TestClient, TestServer, client_identity};

    use super::CAPTURE;

    #[tokio::test]
    async fn a_certificate_of_the_audit_ca_gets_in_and_nothing_else_does() {
        let apiserver = client_identity("kube-apiserver").unwrap();
        let stranger = client_identity("kube-apiserver").unwrap();
        let ca = ClientCa::from_pem(apiserver.ca_pem.as_bytes()).unwrap();
        let service =
            Arc::new(AuditService::new(None, Some(ca.clone()), Settings::default(), None).unwrap());
        let shared = Arc::new(arc_swap::ArcSwap::from_pointee(PolicySet::default()));
        let state = AppState {
            audit: Some(service.clone()),
            ..AppState::new(shared, ScanService::in_memory(), Readiness::ready_now())
        };
        let server = TestServer::start_verifying_clients(state, &ca)
            .await
            .unwrap();
        let items: Vec<serde_json::Value> = CAPTURE
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let body = serde_json::json!({"kind": "EventList", "apiVersion": "audit.k8s.io/v1", "items": items})
            .to_string()
            .into_bytes();

        let anonymous = server.client().unwrap();
        assert_eq!(
            anonymous.post("/audit", body.clone()).await.unwrap().status,
            401
        );
        // Admission requests (the API server usually presents no certificate) go on.
        assert_eq!(anonymous.get("/readyz").await.unwrap().status, 200);

        let other = TestClient::with_identity(
            server.addr,
            &server.certs.ca_pem,
            &stranger.cert_pem,
            &stranger.key_pem,
        )
        .unwrap();
        assert_eq!(
            other.post("/audit", body.clone()).await.unwrap().status,
            401
        );
        assert_eq!(other.get("/readyz").await.unwrap().status, 200);
        assert!(
            service.findings_since(None).unwrap().is_empty(),
            "nothing refused is processed"
        );

        let trusted = TestClient::with_identity(
            server.addr,
            &server.certs.ca_pem,
            &apiserver.cert_pem,
            &apiserver.key_pem,
        )
        .unwrap();
        assert_eq!(trusted.post("/audit", body).await.unwrap().status, 200);
        assert_eq!(service.findings_since(None).unwrap().len(), 15);
    }

    #[test]
    fn a_ca_file_without_a_certificate_is_a_clear_error() {
        let error = ClientCa::from_pem(b"not a certificate").unwrap_err();
        assert!(error.to_string().contains("client CA"), "{error}");
    }
}
