//! `AuditMonitor`: how the API server's audit events are judged, and where findings go.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::schema::{GO_DURATION, HTTPS_URL, NAMESPACE_GLOB};

/// The name of the one AuditMonitor Portcullis reads.
pub const AUDIT_MONITOR_NAME: &str = "default";

/// Settings of the audit-log detections (cluster-scoped; only the one named `default` is
/// used, and without it every detection runs with its defaults).
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "portcullis.dev",
    version = "v1alpha1",
    kind = "AuditMonitor",
    shortname = "amon",
    status = "AuditMonitorStatus",
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Findings","type":"integer","jsonPath":".status.findings.total"}"#,
    printcolumn = r#"{"name":"Sink","type":"string","jsonPath":".status.conditions[?(@.type==\"SinkReachable\")].status"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct AuditMonitorSpec {
    /// Per detection ID (`manual-pod`, `new-registry`, …): turned off, or another severity.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub detections: BTreeMap<String, DetectionSpec>,
    /// Events never judged.
    #[serde(default)]
    pub exclude: AuditExclusions,
    /// When a user's failed calls raise `error-rate`.
    #[serde(default)]
    pub error_rate: ErrorRateSpec,
    /// Where findings are also sent, as JSON over https.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sink: Option<SinkSpec>,
}

/// One detection's settings.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DetectionSpec {
    /// Whether it runs.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Its findings' severity instead of the default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub severity: Option<FindingSeverity>,
}

fn default_true() -> bool {
    true
}

/// Events never judged.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AuditExclusions {
    /// Globs on the acting user's name (`system:serviceaccount:argocd:*`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub users: Vec<String>,
    /// Globs on the namespace of the object acted on.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(inner(pattern(NAMESPACE_GLOB)))]
    pub namespaces: Vec<String>,
}

/// `error-rate`: this many failed calls of one user within the window.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ErrorRateSpec {
    /// Failed calls that raise the finding.
    #[serde(default = "default_threshold")]
    #[schemars(range(min = 1))]
    pub threshold: u32,
    /// The window (Go duration).
    #[serde(default = "default_window")]
    #[schemars(pattern(GO_DURATION))]
    pub window: String,
}

impl Default for ErrorRateSpec {
    fn default() -> Self {
        ErrorRateSpec {
            threshold: default_threshold(),
            window: default_window(),
        }
    }
}

fn default_threshold() -> u32 {
    50
}
fn default_window() -> String {
    "5m".into()
}

/// An https endpoint that receives findings (a JSON array per POST).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SinkSpec {
    /// The URL (https only).
    #[schemars(pattern(HTTPS_URL))]
    pub url: String,
    /// PEM CA bundle to trust for this URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_bundle: Option<String>,
}

/// How much a finding matters, least first (so `Critical > High`).
#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, JsonSchema,
)]
pub enum FindingSeverity {
    /// Informational.
    Info,
    /// Low.
    Low,
    /// Medium.
    Medium,
    /// High.
    High,
    /// Critical.
    Critical,
}

impl FindingSeverity {
    /// Every severity, least first.
    pub const ALL: [FindingSeverity; 5] = [
        FindingSeverity::Info,
        FindingSeverity::Low,
        FindingSeverity::Medium,
        FindingSeverity::High,
        FindingSeverity::Critical,
    ];

    /// Its name (`High`).
    pub fn as_str(self) -> &'static str {
        match self {
            FindingSeverity::Info => "Info",
            FindingSeverity::Low => "Low",
            FindingSeverity::Medium => "Medium",
            FindingSeverity::High => "High",
            FindingSeverity::Critical => "Critical",
        }
    }
}

impl fmt::Display for FindingSeverity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for FindingSeverity {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        FindingSeverity::ALL
            .into_iter()
            .find(|v| v.as_str().eq_ignore_ascii_case(s))
            .ok_or_else(|| format!("unknown severity {s:?} (Info, Low, Medium, High, Critical)"))
    }
}

/// AuditMonitor status: `Ready`, `SinkReachable`, and what was found.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AuditMonitorStatus {
    /// The `metadata.generation` the conditions describe.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready` and, with a sink, `SinkReachable`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// Findings raised since the reporting replica started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub findings: Option<FindingCounts>,
    /// The sink's delivery.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sink: Option<SinkStatus>,
}

/// Findings counted.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FindingCounts {
    /// All of them.
    pub total: u64,
    /// By severity name.
    #[serde(default)]
    pub by_severity: BTreeMap<String, u64>,
}

/// What the sink received and what waits.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SinkStatus {
    /// Findings delivered.
    pub delivered: u64,
    /// Findings spooled, waiting for delivery.
    pub pending: u64,
    /// Findings dropped because the spool was full (the oldest go first).
    pub dropped: u64,
    /// When the sink last accepted a delivery.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_delivery_time: Option<Time>,
}
