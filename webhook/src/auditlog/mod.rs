//! Kubernetes audit-log monitoring: API server audit events in, findings out. Pure —
//! the state the stateful detections keep (registries seen, per-user error windows,
//! recent findings for de-duplication) is a value the caller owns, and time is the
//! events' own, so `/audit` and `portcullis audit-scan` judge a stream alike.

pub mod config;
mod detect;
pub mod event;
pub mod order;
pub mod service;
pub mod sink;
mod spool;

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::glob::{Glob, any_match};
pub use config::{MonitorConfig, SinkConfig, compile_monitor};
pub use event::{Event, EventList};
/// How much a finding matters (the API's type).
pub use portcullis_crds::FindingSeverity as Severity;
pub use service::AuditService;

/// A built-in detection; its ID is stable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Detection {
    /// exec, attach or port-forward into a container.
    ExecIntoContainer,
    /// An ephemeral container added to a running Pod.
    EphemeralContainer,
    /// A Pod created by a user rather than a controller.
    ManualPod,
    /// A namespace deleted.
    NamespaceDeleted,
    /// A workload that runs privileged, as root, or with dangerous capabilities.
    PrivilegedWorkload,
    /// A workload with hostPath volumes or host namespaces.
    HostAccessWorkload,
    /// The first use of a registry.
    NewRegistry,
    /// A workload created in kube-system or kube-public by someone not a system component.
    SystemNamespaceWorkload,
    /// A Role or ClusterRole granting `*` verbs or resources.
    WildcardRole,
    /// A binding to cluster-admin, admin, edit, or the system:masters group.
    AdminBinding,
    /// A Secret read that was refused.
    SecretAccessDenied,
    /// A Pod creation that was refused by authorization.
    PodCreateDenied,
    /// A request by an unauthenticated user.
    AnonymousRequest,
    /// A request an admission webhook denied.
    AdmissionBlocked,
    /// A user's failed calls above the threshold in the window.
    ErrorRate,
}

impl Detection {
    /// Every detection.
    pub const ALL: [Detection; 15] = [
        Detection::ExecIntoContainer,
        Detection::EphemeralContainer,
        Detection::ManualPod,
        Detection::NamespaceDeleted,
        Detection::PrivilegedWorkload,
        Detection::HostAccessWorkload,
        Detection::NewRegistry,
        Detection::SystemNamespaceWorkload,
        Detection::WildcardRole,
        Detection::AdminBinding,
        Detection::SecretAccessDenied,
        Detection::PodCreateDenied,
        Detection::AnonymousRequest,
        Detection::AdmissionBlocked,
        Detection::ErrorRate,
    ];

    /// The stable ID (`exec-into-container`).
    pub fn id(self) -> &'static str {
        match self {
            Detection::ExecIntoContainer => "exec-into-container",
            Detection::EphemeralContainer => "ephemeral-container",
            Detection::ManualPod => "manual-pod",
            Detection::NamespaceDeleted => "namespace-deleted",
            Detection::PrivilegedWorkload => "privileged-workload",
            Detection::HostAccessWorkload => "host-access-workload",
            Detection::NewRegistry => "new-registry",
            Detection::SystemNamespaceWorkload => "system-namespace-workload",
            Detection::WildcardRole => "wildcard-role",
            Detection::AdminBinding => "admin-binding",
            Detection::SecretAccessDenied => "secret-access-denied",
            Detection::PodCreateDenied => "pod-create-denied",
            Detection::AnonymousRequest => "anonymous-request",
            Detection::AdmissionBlocked => "admission-blocked",
            Detection::ErrorRate => "error-rate",
        }
    }

    /// The severity a finding has unless configured otherwise.
    pub fn default_severity(self) -> Severity {
        match self {
            Detection::AdminBinding => Severity::Critical,
            Detection::ExecIntoContainer
            | Detection::EphemeralContainer
            | Detection::PrivilegedWorkload
            | Detection::HostAccessWorkload
            | Detection::WildcardRole
            | Detection::AnonymousRequest => Severity::High,
            Detection::NamespaceDeleted
            | Detection::NewRegistry
            | Detection::SystemNamespaceWorkload
            | Detection::SecretAccessDenied
            | Detection::ErrorRate => Severity::Medium,
            Detection::ManualPod | Detection::PodCreateDenied | Detection::AdmissionBlocked => {
                Severity::Low
            }
        }
    }
}

impl fmt::Display for Detection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.id())
    }
}

impl FromStr for Detection {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Detection::ALL
            .into_iter()
            .find(|d| d.id() == s)
            .ok_or_else(|| format!("unknown detection {s:?}"))
    }
}

/// One detection that fired on one event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Finding {
    /// Which detection.
    pub detection: Detection,
    /// How much it matters.
    pub severity: Severity,
    /// Who did what, in one line.
    pub message: String,
    /// The event's `auditID`.
    #[serde(rename = "auditID")]
    pub audit_id: String,
    /// The acting user (the impersonated one, when impersonating).
    pub user: String,
    /// Their groups.
    pub groups: Vec<String>,
    /// Where the request came from.
    #[serde(rename = "sourceIPs")]
    pub source_ips: Vec<String>,
    /// The verb.
    pub verb: String,
    /// `resource` or `resource/subresource`.
    pub resource: String,
    /// The object's namespace (empty when cluster-scoped).
    pub namespace: String,
    /// The object's name.
    pub name: String,
    /// When the API server finished the request (`stageTimestamp`).
    pub time: String,
}

/// What each detection does, and what is never judged.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Detections turned off.
    pub disabled: BTreeSet<Detection>,
    /// Severities other than the default.
    pub severities: HashMap<Detection, Severity>,
    /// Users whose events are never judged (globs: `system:serviceaccount:argocd:*`).
    pub exclude_users: Vec<Glob>,
    /// Namespaces whose objects are never judged (globs).
    pub exclude_namespaces: Vec<Glob>,
    /// Failed calls of one user in one window that raise `error-rate`.
    pub error_threshold: u32,
    /// The `error-rate` window, in seconds.
    pub error_window_seconds: i64,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            disabled: BTreeSet::new(),
            severities: HashMap::new(),
            exclude_users: Vec::new(),
            exclude_namespaces: Vec::new(),
            error_threshold: 50,
            error_window_seconds: 300,
        }
    }
}

impl Settings {
    fn severity(&self, detection: Detection) -> Option<Severity> {
        if self.disabled.contains(&detection) {
            return None;
        }
        Some(
            self.severities
                .get(&detection)
                .copied()
                .unwrap_or_else(|| detection.default_severity()),
        )
    }

    fn excluded(&self, event: &Event<'_>) -> bool {
        any_match(&self.exclude_users, &event.acting().username)
            || (!event.namespace().is_empty()
                && any_match(&self.exclude_namespaces, event.namespace()))
    }
}

/// A poisoned lock's data is still consistent here: every critical section only
/// replaces or pushes whole values.
fn lock<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// Most registries remembered by `new-registry`; beyond it the oldest-named are dropped.
const MAX_REGISTRIES: usize = 10_000;
/// Most users with an open `error-rate` window.
const MAX_USERS: usize = 10_000;
/// Most recent findings remembered for de-duplication.
const MAX_RECENT: usize = 10_000;
/// A finding repeated (same detection, user and object) within this many seconds is
/// the same finding: one `kubectl exec` makes several requests.
const REPEAT_SECONDS: i64 = 60;

/// What the stateful detections remember; persisted by the caller (a restart does not
/// re-announce every registry) and bounded.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    /// Registries seen in use.
    pub registries: BTreeSet<String>,
    /// Per user: the window's start (seconds since the epoch), failures in it, and
    /// whether it was reported.
    pub errors: HashMap<String, (i64, u32, bool)>,
    /// Recent findings' keys and when they fired.
    #[serde(skip)]
    recent: HashMap<String, i64>,
}

/// The detections over a stream of events.
#[derive(Debug, Default)]
pub struct Monitor {
    /// What is enabled and excluded.
    pub settings: Settings,
    /// What the stateful detections remember.
    pub state: State,
}

impl Monitor {
    /// A monitor with `settings`, continuing from `state`.
    pub fn new(settings: Settings, state: State) -> Self {
        Monitor { settings, state }
    }

    /// Judges one event; returns what it raised (usually nothing).
    pub fn observe(&mut self, event: &Event<'_>) -> Vec<Finding> {
        if event.stage != "ResponseComplete" && event.stage != "Panic" {
            return Vec::new();
        }
        if self.settings.excluded(event) {
            return Vec::new();
        }
        let time = event
            .stage_timestamp
            .as_deref()
            .and_then(|t| t.parse::<jiff::Timestamp>().ok())
            .map_or(0, |t| t.as_second());
        let mut found = Vec::new();
        for (detection, what) in detect::run(event, &mut self.state, &self.settings, time) {
            let Some(severity) = self.settings.severity(detection) else {
                continue;
            };
            if self.repeated(detection, event, time) {
                continue;
            }
            found.push(finding(detection, severity, what, event));
        }
        found
    }

    /// Judges one batch of events in time order (`order::sort`); returns what it raised.
    pub fn observe_batch(&mut self, events: &mut [Event<'_>]) -> Vec<Finding> {
        order::sort(events);
        events
            .iter()
            .flat_map(|event| self.observe(event))
            .collect()
    }

    /// Whether the same detection fired for the same user and object a moment ago.
    fn repeated(&mut self, detection: Detection, event: &Event<'_>, time: i64) -> bool {
        if detection == Detection::ErrorRate || detection == Detection::NewRegistry {
            return false; // their state already fires them once
        }
        let (resource, subresource) = event.resource();
        let key = [
            detection.id(),
            &event.acting().username,
            resource,
            subresource,
            event.namespace(),
            event.name(),
        ]
        .join("\n");
        let recent = &mut self.state.recent;
        if recent.len() >= MAX_RECENT {
            recent.retain(|_, at| (time - *at).abs() < REPEAT_SECONDS);
            if recent.len() >= MAX_RECENT {
                recent.clear();
            }
        }
        // Either way round: an earlier event arriving late is a repeat too, so the
        // order events arrive in never raises a finding twice.
        match recent.get_mut(&key) {
            Some(at) => {
                let repeated = (time - *at).abs() < REPEAT_SECONDS;
                *at = (*at).max(time);
                repeated
            }
            None => {
                recent.insert(key, time);
                false
            }
        }
    }
}

fn finding(detection: Detection, severity: Severity, what: String, event: &Event<'_>) -> Finding {
    let user = event.acting();
    let (resource, subresource) = event.resource();
    let resource = if subresource.is_empty() {
        resource.to_owned()
    } else {
        format!("{resource}/{subresource}")
    };
    // A Namespace's own events carry its name as their namespace too.
    let namespace = if resource == "namespaces" {
        ""
    } else {
        event.namespace()
    };
    let object = match (namespace, event.name()) {
        ("", "") => String::new(),
        ("", name) => format!(" {name}"),
        (namespace, "") => format!(" in {namespace}"),
        (namespace, name) => format!(" {namespace}/{name}"),
    };
    let target = if resource.is_empty() {
        event.request_uri.to_string()
    } else {
        format!("{resource}{object}")
    };
    let groups: Vec<String> = user.groups.iter().map(|g| g.to_string()).collect();
    let source_ips: Vec<String> = event.source_ips.iter().map(|ip| ip.to_string()).collect();
    let impersonation = match &event.impersonated_user {
        Some(_) => format!(" (impersonated by {})", event.user.username),
        None => String::new(),
    };
    let message = format!(
        "{what}: {}{impersonation} (groups {}) from {} {} {target} (code {}, audit ID {})",
        user.username,
        if groups.is_empty() {
            "none".to_owned()
        } else {
            groups.join(", ")
        },
        if source_ips.is_empty() {
            "unknown".to_owned()
        } else {
            source_ips.join(", ")
        },
        event.verb,
        event.code(),
        event.audit_id,
    );
    Finding {
        detection,
        severity,
        message,
        audit_id: event.audit_id.to_string(),
        user: user.username.to_string(),
        groups,
        source_ips,
        verb: event.verb.to_string(),
        resource,
        namespace: event.namespace().to_owned(),
        name: event.name().to_owned(),
        time: event
            .stage_timestamp
            .as_deref()
            .unwrap_or_default()
            .to_owned(),
    }
}

impl State {
    /// Remembers `registry`; whether it is new.
    fn first_use(&mut self, registry: &str) -> bool {
        if self.registries.contains(registry) {
            return false;
        }
        if self.registries.len() >= MAX_REGISTRIES
            && let Some(first) = self.registries.iter().next().cloned()
        {
            self.registries.remove(&first);
        }
        self.registries.insert(registry.to_owned());
        true
    }

    /// Counts a failure of `user` at `time`; whether it crosses `threshold` in the window
    /// (once per window).
    fn failure(&mut self, user: &str, time: i64, threshold: u32, window: i64) -> Option<u32> {
        if !self.errors.contains_key(user) && self.errors.len() >= MAX_USERS {
            self.errors
                .retain(|_, (start, _, _)| time - *start < window);
            if self.errors.len() >= MAX_USERS {
                return None;
            }
        }
        let entry = self
            .errors
            .entry(user.to_owned())
            .or_insert((time, 0, false));
        if time - entry.0 >= window || time < entry.0 {
            *entry = (time, 0, false);
        }
        entry.1 += 1;
        if entry.1 >= threshold && !entry.2 {
            entry.2 = true;
            return Some(entry.1);
        }
        None
    }
}
