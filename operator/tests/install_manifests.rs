//! `kubectl kustomize config/default` renders, and what it renders is safe to install:
//! least-privilege RBAC, a webhook that cannot lock out the control plane or itself,
//! a hardened Deployment that survives drains.

#![allow(clippy::unwrap_used)] // in tests a panic is the failure report

use std::path::Path;
use std::process::Command;

use serde_json::Value;

fn rendered() -> Vec<Value> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/default");
    let out = Command::new("kubectl")
        .arg("kustomize")
        .arg(&dir)
        .output()
        .expect("kubectl on PATH (.ci/run installs it): the install manifests are rendered with `kubectl kustomize`");
    assert!(
        out.status.success(),
        "kubectl kustomize failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_saphyr::from_multiple(&String::from_utf8(out.stdout).unwrap()).unwrap()
}

fn find<'a>(objects: &'a [Value], kind: &str, name: &str) -> &'a Value {
    objects
        .iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name}"))
}

fn strings(v: &Value) -> Vec<&str> {
    v.as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

#[test]
fn rbac_is_least_privilege() {
    let objects = rendered();
    for role in objects
        .iter()
        .filter(|o| o["kind"] == "ClusterRole" || o["kind"] == "Role")
    {
        for rule in role["rules"].as_array().unwrap() {
            for field in ["apiGroups", "resources", "verbs", "resourceNames"] {
                assert!(
                    !strings(&rule[field]).contains(&"*"),
                    "wildcard in {} {}: {rule}",
                    role["kind"],
                    field
                );
            }
            let resources = strings(&rule["resources"]);
            if role["kind"] == "ClusterRole" {
                assert!(
                    !resources.contains(&"secrets") && !resources.contains(&"leases"),
                    "Secrets and Leases only in the own namespace: {rule}"
                );
            }
            if resources.contains(&"validatingwebhookconfigurations") {
                assert_eq!(
                    strings(&rule["resourceNames"]),
                    ["portcullis"],
                    "only its own webhook configuration"
                );
                // list/watch by name only: the API server authorizes them for a
                // metadata.name field selector naming a listed resourceName.
                assert!(
                    !strings(&rule["verbs"]).iter().any(|v| [
                        "create",
                        "delete",
                        "deletecollection"
                    ]
                    .contains(v))
                );
            }
            if resources.contains(&"events") {
                assert_eq!(
                    (
                        role["kind"].as_str(),
                        role["metadata"]["namespace"].as_str()
                    ),
                    (Some("Role"), Some("kube-system")),
                    "Events only where cluster-scoped objects' Events go"
                );
            }
            if resources.iter().any(|r| r.ends_with("/status")) {
                assert_eq!(strings(&rule["verbs"]), ["get", "patch"]);
            }
        }
    }
    let role = find(&objects, "Role", "portcullis");
    assert_eq!(role["metadata"]["namespace"], "portcullis-system");
    let crd_rule = find(&objects, "ClusterRole", "portcullis")["rules"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| strings(&r["apiGroups"]) == ["portcullis.dev"])
        .unwrap()
        .clone();
    assert_eq!(
        strings(&crd_rule["verbs"]),
        ["get", "list", "watch"],
        "the policies themselves are read-only"
    );
}

#[test]
fn webhook_fails_closed_but_never_locks_out_the_control_plane() {
    let objects = rendered();
    let config = find(&objects, "ValidatingWebhookConfiguration", "portcullis");
    let webhook = &config["webhooks"][0];
    assert_eq!(strings(&webhook["admissionReviewVersions"]), ["v1"]);
    assert_eq!(webhook["sideEffects"], "NoneOnDryRun");
    assert_eq!(webhook["matchPolicy"], "Equivalent");
    assert_eq!(webhook["failurePolicy"], "Fail");
    let timeout = webhook["timeoutSeconds"].as_u64().unwrap();
    assert!(
        (5..=30).contains(&timeout),
        "room above the server's internal deadline, within the API server's 30s cap: {timeout}"
    );

    let selector = &webhook["namespaceSelector"]["matchExpressions"][0];
    assert_eq!(
        selector["key"], "kubernetes.io/metadata.name",
        "the immutable label"
    );
    assert_eq!(selector["operator"], "NotIn");
    let excluded = strings(&selector["values"]);
    for namespace in ["kube-system", "kube-node-lease", "portcullis-system"] {
        assert!(
            excluded.contains(&namespace),
            "{namespace} must be excluded"
        );
    }

    let rules = webhook["rules"].as_array().unwrap();
    let covered = |group: &str, resource: &str| {
        rules.iter().any(|r| {
            strings(&r["apiGroups"]).contains(&group)
                && strings(&r["resources"]).contains(&resource)
        })
    };
    for (group, resource) in [
        ("", "pods"),
        ("", "pods/ephemeralcontainers"),
        ("", "replicationcontrollers"),
        ("apps", "deployments"),
        ("apps", "replicasets"),
        ("apps", "statefulsets"),
        ("apps", "daemonsets"),
        ("batch", "jobs"),
        ("batch", "cronjobs"),
    ] {
        assert!(covered(group, resource), "{group}/{resource} not covered");
    }
    let batch = rules
        .iter()
        .find(|r| strings(&r["apiGroups"]) == ["batch"])
        .unwrap();
    assert!(
        strings(&batch["apiVersions"]).contains(&"v1beta1"),
        "CronJob batch/v1beta1 on older clusters"
    );
    for rule in rules {
        assert_eq!(strings(&rule["operations"]), ["CREATE", "UPDATE"]);
    }
    let service = &webhook["clientConfig"]["service"];
    assert_eq!(
        (
            service["name"].as_str(),
            service["namespace"].as_str(),
            service["path"].as_str()
        ),
        (
            Some("portcullis"),
            Some("portcullis-system"),
            Some("/validate")
        )
    );
}

/// Policies are checked when applied, but a broken Portcullis must never block fixing
/// its own policies: that webhook fails open.
#[test]
fn policies_are_checked_when_applied_failing_open() {
    let objects = rendered();
    let config = find(&objects, "ValidatingWebhookConfiguration", "portcullis");
    let webhook = config["webhooks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["name"] == "policies.portcullis.dev")
        .expect("a webhook for portcullis.dev objects");
    assert_eq!(webhook["failurePolicy"], "Ignore");
    assert_eq!(webhook["sideEffects"], "None");
    assert_eq!(webhook["clientConfig"]["service"]["path"], "/validate");
    let rule = &webhook["rules"][0];
    assert_eq!(strings(&rule["apiGroups"]), ["portcullis.dev"]);
    assert_eq!(
        strings(&rule["resources"]),
        ["containerpolicies", "registryintegrations", "auditmonitors"]
    );
    assert_eq!(strings(&rule["operations"]), ["CREATE", "UPDATE"]);
}

#[test]
fn deployment_is_hardened_and_highly_available() {
    let objects = rendered();
    let deployment = find(&objects, "Deployment", "portcullis");
    let spec = &deployment["spec"];
    assert_eq!(spec["replicas"], 2);
    assert_eq!(spec["strategy"]["rollingUpdate"]["maxUnavailable"], 0);
    let pod = &spec["template"]["spec"];
    assert!(
        pod["affinity"]["podAntiAffinity"].is_object(),
        "replicas spread over nodes"
    );
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    let container = &pod["containers"][0];
    assert!(
        container["image"]
            .as_str()
            .unwrap()
            .starts_with("ghcr.io/portcullis-dev/portcullis:")
    );
    let security = &container["securityContext"];
    assert_eq!(security["readOnlyRootFilesystem"], true);
    assert_eq!(security["allowPrivilegeEscalation"], false);
    assert_eq!(strings(&security["capabilities"]["drop"]), ["ALL"]);
    assert!(security["capabilities"]["add"].is_null());
    for (kind, key) in [
        ("requests", "cpu"),
        ("requests", "memory"),
        ("limits", "memory"),
    ] {
        assert!(
            container["resources"][kind][key].is_string(),
            "resources.{kind}.{key}"
        );
    }
    assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(container["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(container["readinessProbe"]["httpGet"]["scheme"], "HTTPS");
    // SIGTERM: unready, serve the grace period (10s), drain (10s): the pod must get that long.
    assert!(pod["terminationGracePeriodSeconds"].as_u64().unwrap() >= 25);

    let pdb = find(&objects, "PodDisruptionBudget", "portcullis");
    assert_eq!(pdb["spec"]["minAvailable"], 1);
    assert_eq!(
        pdb["spec"]["selector"]["matchLabels"],
        spec["selector"]["matchLabels"]
    );
    let service = find(&objects, "Service", "portcullis");
    assert_eq!(service["spec"]["selector"], spec["selector"]["matchLabels"]);
}

#[test]
fn the_committed_crds_are_installed() {
    let objects = rendered();
    for file in [
        "portcullis.dev_containerpolicies.yaml",
        "portcullis.dev_registryintegrations.yaml",
        "portcullis.dev_auditmonitors.yaml",
    ] {
        let committed: Value = serde_saphyr::from_str(
            &std::fs::read_to_string(
                Path::new(env!("CARGO_MANIFEST_DIR"))
                    .join("../crds")
                    .join(file),
            )
            .unwrap(),
        )
        .unwrap();
        let name = committed["metadata"]["name"].as_str().unwrap();
        let mut installed = find(&objects, "CustomResourceDefinition", name).clone();
        installed["metadata"]
            .as_object_mut()
            .unwrap()
            .remove("labels");
        assert!(
            numbers_as_f64(&installed) == numbers_as_f64(&committed),
            "{name}: the installed CRD differs from crds/{file}"
        );
    }
}

/// Kustomize re-renders `0.0` as `0`: compare numbers by value.
fn numbers_as_f64(v: &Value) -> Value {
    match v {
        Value::Number(n) => serde_json::json!(n.as_f64()),
        Value::Array(items) => Value::Array(items.iter().map(numbers_as_f64).collect()),
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| (k.clone(), numbers_as_f64(v)))
                .collect(),
        ),
        other => other.clone(),
    }
}
