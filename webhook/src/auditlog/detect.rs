//! The detections: each looks at one event (and the state it keeps) and says what it
//! saw, in words that start the finding's message.

use serde::Deserialize;

use super::{Detection, Event, Settings, State};
use crate::image::ImageRef;
use crate::workload::{PodSpec, Workload, WorkloadKind};

/// Capabilities whose addition `privileged-workload` reports.
const DANGEROUS_CAPABILITIES: [&str; 8] = [
    "ALL",
    "SYS_ADMIN",
    "NET_ADMIN",
    "SYS_PTRACE",
    "SYS_MODULE",
    "DAC_READ_SEARCH",
    "BPF",
    "NET_RAW",
];
/// Roles whose binding `admin-binding` reports.
const ADMIN_ROLES: [&str; 3] = ["cluster-admin", "admin", "edit"];
/// Namespaces `system-namespace-workload` watches.
const SYSTEM_NAMESPACES: [&str; 2] = ["kube-system", "kube-public"];
/// Non-resource paths anonymous users may call by design (health and discovery).
const ANONYMOUS_OK: [&str; 5] = [
    "/healthz",
    "/livez",
    "/readyz",
    "/version",
    "/.well-known/openid-configuration",
];

/// What fired on `event`: each detection with the words that start its message.
pub(super) fn run(
    event: &Event<'_>,
    state: &mut State,
    settings: &Settings,
    time: i64,
) -> Vec<(Detection, String)> {
    let mut fired = Vec::new();
    let (resource, subresource) = event.resource();
    let verb = event.verb.as_ref();
    let user = event.acting();
    let writes = matches!(verb, "create" | "update" | "patch");

    if resource == "pods" && matches!(subresource, "exec" | "attach" | "portforward") {
        fired.push((
            Detection::ExecIntoContainer,
            format!("{subresource} into a container"),
        ));
    }
    if resource == "pods"
        && subresource == "ephemeralcontainers"
        && matches!(verb, "update" | "patch")
        && event.succeeded()
    {
        fired.push((
            Detection::EphemeralContainer,
            "ephemeral container added to a Pod".to_owned(),
        ));
    }
    if resource == "namespaces" && subresource.is_empty() && verb == "delete" && event.succeeded() {
        fired.push((Detection::NamespaceDeleted, "namespace deleted".to_owned()));
    }
    if resource == "secrets" && event.code() == 403 {
        fired.push((
            Detection::SecretAccessDenied,
            "Secret access denied".to_owned(),
        ));
    }
    if resource == "pods"
        && subresource.is_empty()
        && verb == "create"
        && event.code() == 403
        && authorization_denied(event)
    {
        fired.push((Detection::PodCreateDenied, "Pod creation denied".to_owned()));
    }
    if user.username == "system:anonymous"
        || user.groups.iter().any(|g| g == "system:unauthenticated")
    {
        let path = event.request_uri.split('?').next().unwrap_or_default();
        if !ANONYMOUS_OK
            .iter()
            .any(|ok| path == *ok || path.starts_with(&format!("{ok}/")))
        {
            fired.push((
                Detection::AnonymousRequest,
                "unauthenticated request".to_owned(),
            ));
        }
    }
    if let Some(status) = &event.response_status
        && status.code >= 400
    {
        if status.message.contains("admission webhook")
            && status.message.contains("denied the request")
        {
            fired.push((
                Detection::AdmissionBlocked,
                "request denied by an admission webhook".to_owned(),
            ));
        } else if status.code == 403
            && matches!(verb, "create" | "update" | "patch" | "delete")
            && event.authorization_decision() == Some("allow")
        {
            // v1.19 servers keep no message in the event: a write authorization allowed
            // and that was then refused 403 was refused by admission.
            fired.push((
                Detection::AdmissionBlocked,
                "request refused by admission (403 after authorization allowed it)".to_owned(),
            ));
        }
    }
    if event.code() >= 400
        && let Some(count) = state.failure(
            &user.username,
            time,
            settings.error_threshold,
            settings.error_window_seconds,
        )
    {
        fired.push((
            Detection::ErrorRate,
            format!(
                "{count} failed calls within {}s, the latest",
                settings.error_window_seconds
            ),
        ));
    }

    if !(writes && event.succeeded() && subresource.is_empty()) || is_control_plane(&user.username)
    {
        return fired;
    }
    let Some(object) = event.request_object.map(|raw| raw.get()) else {
        return fired;
    };
    match resource {
        "roles" | "clusterroles" if event.object_api_group() == "rbac.authorization.k8s.io" => {
            if let Ok(role) = serde_json::from_str::<Role<'_>>(object)
                && let Some(what) = role.wildcard()
            {
                fired.push((Detection::WildcardRole, what));
            }
        }
        "rolebindings" | "clusterrolebindings"
            if event.object_api_group() == "rbac.authorization.k8s.io" =>
        {
            if let Ok(binding) = serde_json::from_str::<Binding<'_>>(object)
                && let Some(what) = binding.admin()
            {
                fired.push((Detection::AdminBinding, what));
            }
        }
        _ => {
            if let Some(kind) = workload_kind(resource) {
                workload(event, kind, object, state, &mut fired);
            }
        }
    }
    fired
}

/// System components act for the cluster: their writes are not people's.
fn is_control_plane(username: &str) -> bool {
    username == "system:apiserver"
        || username.starts_with("system:kube-")
        || username.starts_with("system:node:")
        || username.starts_with("system:serviceaccount:kube-system:")
}

/// A 403 from authorization (the authorizer's annotation says forbid), not admission.
fn authorization_denied(event: &Event<'_>) -> bool {
    event.authorization_decision() != Some("allow")
}

fn workload_kind(resource: &str) -> Option<WorkloadKind> {
    WorkloadKind::ALL
        .into_iter()
        .find(|k| k.resource() == resource)
}

/// The workload detections, on a created or changed workload's request object.
fn workload(
    event: &Event<'_>,
    kind: WorkloadKind,
    object: &str,
    state: &mut State,
    fired: &mut Vec<(Detection, String)>,
) {
    let Ok(Workload { spec, .. }) = Workload::read(kind, object) else {
        return;
    };
    let owned = kind == WorkloadKind::Pod && has_owner(object);
    if let Some(what) = privileged(&spec) {
        fired.push((Detection::PrivilegedWorkload, format!("{kind} {what}")));
    }
    if let Some(what) = host_access(&spec) {
        fired.push((Detection::HostAccessWorkload, format!("{kind} {what}")));
    }
    if event.verb == "create" {
        if kind == WorkloadKind::Pod && !owned {
            fired.push((
                Detection::ManualPod,
                "Pod created by a user, not a controller".to_owned(),
            ));
        }
        if SYSTEM_NAMESPACES.contains(&event.namespace()) {
            fired.push((
                Detection::SystemNamespaceWorkload,
                format!("{kind} created in {}", event.namespace()),
            ));
        }
    }
    for used in spec.images() {
        if let Ok(image) = ImageRef::parse(used.image)
            && state.first_use(image.registry())
        {
            fired.push((
                Detection::NewRegistry,
                format!(
                    "first use of registry {} (image {})",
                    image.registry(),
                    used.image
                ),
            ));
        }
    }
}

fn has_owner(object: &str) -> bool {
    #[derive(Deserialize)]
    struct Meta {
        #[serde(default, rename = "ownerReferences")]
        owner_references: Vec<serde::de::IgnoredAny>,
    }
    #[derive(Deserialize)]
    struct Object {
        #[serde(default)]
        metadata: Option<Meta>,
    }
    serde_json::from_str::<Object>(object)
        .ok()
        .and_then(|o| o.metadata)
        .is_some_and(|m| !m.owner_references.is_empty())
}

/// What makes the spec privileged: `privileged`, root, or a dangerous capability.
fn privileged(spec: &PodSpec<'_>) -> Option<String> {
    let pod_root = spec.security_context.as_ref().and_then(|s| s.run_as_user) == Some(0);
    for used in spec.images() {
        let Some(security) = used.security else {
            if pod_root {
                return Some(format!(
                    "runs container {:?} as root (runAsUser 0)",
                    used.name
                ));
            }
            continue;
        };
        if security.privileged == Some(true) {
            return Some(format!("runs container {:?} privileged", used.name));
        }
        if security
            .run_as_user
            .or(if pod_root { Some(0) } else { None })
            == Some(0)
        {
            return Some(format!(
                "runs container {:?} as root (runAsUser 0)",
                used.name
            ));
        }
        let added = security.capabilities.as_ref().and_then(|c| c.add.as_ref());
        if let Some(capability) = added.into_iter().flatten().find(|c| {
            let name = c.trim_start_matches("CAP_").to_ascii_uppercase();
            DANGEROUS_CAPABILITIES.contains(&name.as_str())
        }) {
            return Some(format!(
                "adds capability {capability} to container {:?}",
                used.name
            ));
        }
    }
    None
}

/// What gives the spec the host: hostPath volumes, host namespaces.
fn host_access(spec: &PodSpec<'_>) -> Option<String> {
    let mut what = Vec::new();
    if spec.host_pid == Some(true) {
        what.push("hostPID");
    }
    if spec.host_ipc == Some(true) {
        what.push("hostIPC");
    }
    if spec.host_network == Some(true) {
        what.push("hostNetwork");
    }
    if spec.volumes.iter().flatten().any(|v| v.host_path) {
        what.push("a hostPath volume");
    }
    (!what.is_empty()).then(|| format!("uses {}", what.join(", ")))
}

#[derive(Deserialize)]
struct Role<'a> {
    #[serde(borrow, default)]
    rules: Vec<Rule<'a>>,
}

#[derive(Deserialize)]
struct Rule<'a> {
    #[serde(borrow, default)]
    verbs: Vec<std::borrow::Cow<'a, str>>,
    #[serde(borrow, default)]
    resources: Vec<std::borrow::Cow<'a, str>>,
}

impl Role<'_> {
    fn wildcard(&self) -> Option<String> {
        let verbs = self.rules.iter().any(|r| r.verbs.iter().any(|v| v == "*"));
        let resources = self
            .rules
            .iter()
            .any(|r| r.resources.iter().any(|v| v == "*"));
        match (verbs, resources) {
            (true, true) => Some("role grants every verb on every resource (`*`)".to_owned()),
            (true, false) => Some("role grants every verb (`*`)".to_owned()),
            (false, true) => Some("role grants every resource (`*`)".to_owned()),
            (false, false) => None,
        }
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Binding<'a> {
    #[serde(borrow, default)]
    role_ref: Option<Subject<'a>>,
    #[serde(borrow, default)]
    subjects: Vec<Subject<'a>>,
}

#[derive(Deserialize)]
struct Subject<'a> {
    #[serde(borrow, default)]
    kind: std::borrow::Cow<'a, str>,
    #[serde(borrow, default)]
    name: std::borrow::Cow<'a, str>,
}

impl Binding<'_> {
    fn admin(&self) -> Option<String> {
        let who: Vec<String> = self
            .subjects
            .iter()
            .map(|s| format!("{} {}", s.kind, s.name))
            .collect();
        let who = if who.is_empty() {
            "nobody".to_owned()
        } else {
            who.join(", ")
        };
        if let Some(role) = &self.role_ref
            && ADMIN_ROLES.contains(&role.name.as_ref())
        {
            return Some(format!("{who} bound to {} {}", role.kind, role.name));
        }
        self.subjects
            .iter()
            .any(|s| s.kind == "Group" && s.name == "system:masters")
            .then(|| format!("binding to the system:masters group ({who})"))
    }
}
