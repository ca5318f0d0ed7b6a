//! `ContainerPolicy`: which images may run where, and under what conditions.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;

use crate::schema::{
    GO_DURATION, NAMESPACE_GLOB, REPOSITORY_GLOB, VULNERABILITY_ID, capability_pattern,
    workload_kind_pattern,
};

/// Which images may run where, and under what conditions.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "portcullis.dev",
    version = "v1alpha1",
    kind = "ContainerPolicy",
    shortname = "cpol",
    status = "ContainerPolicyStatus",
    printcolumn = r#"{"name":"Action","type":"string","jsonPath":".spec.action"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Violations","type":"integer","jsonPath":".status.violations"}"#,
    printcolumn = r#"{"name":"Reason","type":"string","priority":1,"jsonPath":".status.conditions[?(@.type==\"Ready\")].reason"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct ContainerPolicySpec {
    /// What a violation does: Block denies, Warn admits with a warning, Audit only records.
    #[serde(default)]
    pub action: Action,
    /// Which objects and images the policy applies to; every field given must match.
    #[serde(default, rename = "match")]
    pub selector: MatchSpec,
    /// The checks; a rule family that is absent is not checked.
    #[serde(default)]
    pub rules: Rules,
    /// What the mutating webhook changes in the Pods this policy matches (never in
    /// Deployments or other templates).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mutate: Option<MutateSpec>,
}

/// Changes to matched Pods, made before they are validated.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MutateSpec {
    /// Rewrite each image tag to `tag@sha256:…`, the digest resolved (and scanned) at
    /// admission, so the digest validated is the digest that runs.
    #[serde(default)]
    pub pin_digests: bool,
    /// Security settings, each set only where the Pod leaves it unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub security_defaults: Option<SecurityDefaults>,
}

/// Security settings filled in where a Pod leaves them unset; what the author wrote
/// is never changed.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecurityDefaults {
    /// `true`: the Pod's `securityContext.runAsNonRoot`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_as_non_root: Option<bool>,
    /// `false`: each container's `securityContext.allowPrivilegeEscalation`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_privilege_escalation: Option<bool>,
    /// `capabilities.drop: [ALL]` on each container that drops nothing.
    #[serde(default)]
    pub drop_all_capabilities: bool,
    /// The Pod's `securityContext.seccompProfile.type`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seccomp_profile: Option<SeccompProfile>,
}

/// Seccomp profiles a default may set.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum SeccompProfile {
    /// The container runtime's default profile.
    RuntimeDefault,
}

/// What a violation does.
#[derive(
    Serialize,
    Deserialize,
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    JsonSchema,
)]
pub enum Action {
    /// Deny the request.
    #[default]
    Block,
    /// Admit the request with a warning.
    Warn,
    /// Admit the request; only record the violation.
    Audit,
}

/// What happens to an image with no usable scan result.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum UnscannedAction {
    /// Deny the request.
    Block,
    /// Admit the request with a warning.
    Warn,
    /// Admit the request silently.
    Allow,
}

/// Vulnerability severities, lowest first (so `Critical > High`).
#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, JsonSchema,
)]
pub enum Severity {
    /// Severity not known to the scanner.
    Unknown,
    /// Low.
    Low,
    /// Medium.
    Medium,
    /// High.
    High,
    /// Critical.
    Critical,
}

impl Severity {
    /// All severities, most severe first.
    pub const DESCENDING: [Severity; 5] = [
        Severity::Critical,
        Severity::High,
        Severity::Medium,
        Severity::Low,
        Severity::Unknown,
    ];

    /// Its index in [`Severity::DESCENDING`] (and in `maxCount`'s order).
    pub fn rank(self) -> usize {
        match self {
            Severity::Critical => 0,
            Severity::High => 1,
            Severity::Medium => 2,
            Severity::Low => 3,
            Severity::Unknown => 4,
        }
    }

    /// The lowercase name used in `maxCount` and messages.
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Critical => "critical",
            Severity::High => "high",
            Severity::Medium => "medium",
            Severity::Low => "low",
            Severity::Unknown => "unknown",
        }
    }
}

/// Which objects and images a policy applies to. An absent field matches anything.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MatchSpec {
    /// Globs on the namespace name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(inner(pattern(NAMESPACE_GLOB)))]
    pub namespaces: Option<Vec<String>>,
    /// Globs on namespace names the policy never applies to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(inner(pattern(NAMESPACE_GLOB)))]
    pub exclude_namespaces: Option<Vec<String>>,
    /// A label selector on the Namespace's labels.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace_selector: Option<LabelSelector>,
    /// Globs on the normalized repository (`registry/path`, no tag or digest).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(inner(pattern(REPOSITORY_GLOB)))]
    pub images: Option<Vec<String>>,
    /// Globs on repositories the policy never applies to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(inner(pattern(REPOSITORY_GLOB)))]
    pub exclude_images: Option<Vec<String>>,
    /// Workload kinds (Pod, Deployment, …); absent means every supported kind.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(inner(pattern(workload_kind_pattern())))]
    pub kinds: Option<Vec<String>>,
}

/// The rule families; each one given is checked.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Rules {
    /// Which repositories images may come from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registries: Option<RegistryRules>,
    /// Which namespaces the matched images may run in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespaces: Option<NamespaceRules>,
    /// Tag and digest pinning.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tags: Option<TagRules>,
    /// Limits on the image's known vulnerabilities (needs a scan result).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vulnerabilities: Option<VulnerabilityRules>,
    /// Pod and container security settings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload: Option<WorkloadRules>,
}

/// Repository allow and deny lists.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RegistryRules {
    /// If given, any repository that matches none of these globs violates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(inner(pattern(REPOSITORY_GLOB)))]
    pub allow: Option<Vec<String>>,
    /// A repository matching any of these globs violates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(inner(pattern(REPOSITORY_GLOB)))]
    pub deny: Option<Vec<String>>,
}

/// Where the matched images may run.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NamespaceRules {
    /// Namespace globs the matched images may run in; any other namespace violates.
    #[serde(default)]
    #[schemars(inner(pattern(NAMESPACE_GLOB)))]
    pub allow: Vec<String>,
}

/// Tag and digest rules.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TagRules {
    /// `:latest`, or neither tag nor digest, violates.
    #[serde(default)]
    pub deny_latest: bool,
    /// The image must be pinned by digest.
    #[serde(default)]
    pub require_digest: bool,
}

/// Vulnerability limits, checked against the image's scan result.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VulnerabilityRules {
    /// Any finding above this severity violates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_severity: Option<Severity>,
    /// Per-severity caps on the number of findings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_count: Option<MaxCount>,
    /// Count only findings that have a fixed version.
    #[serde(default)]
    pub fixable_only: bool,
    /// Vulnerability IDs that violate when present, at any severity.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(inner(pattern(VULNERABILITY_ID)))]
    pub deny: Vec<String>,
    /// Vulnerability IDs never counted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(inner(pattern(VULNERABILITY_ID)))]
    pub ignore: Vec<String>,
    /// A scan result older than this (Go duration, e.g. `168h`) counts as no result.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(GO_DURATION))]
    pub max_scan_age: Option<String>,
    /// What to do without a usable scan result; defaults to `spec.action`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unscanned: Option<UnscannedAction>,
}

/// Per-severity caps on findings.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
pub struct MaxCount {
    /// At most this many critical findings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub critical: Option<i64>,
    /// At most this many high findings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub high: Option<i64>,
    /// At most this many medium findings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub medium: Option<i64>,
    /// At most this many low findings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub low: Option<i64>,
    /// At most this many findings of unknown severity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub unknown: Option<i64>,
}

impl MaxCount {
    /// The cap for one severity.
    pub fn get(&self, severity: Severity) -> Option<i64> {
        match severity {
            Severity::Critical => self.critical,
            Severity::High => self.high,
            Severity::Medium => self.medium,
            Severity::Low => self.low,
            Severity::Unknown => self.unknown,
        }
    }
}

/// Pod and container security settings.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadRules {
    /// `securityContext.privileged: true` violates.
    #[serde(default)]
    pub deny_privileged: bool,
    /// `allowPrivilegeEscalation` not explicitly false violates.
    #[serde(default)]
    pub deny_privilege_escalation: bool,
    /// The container must run as non-root (`runAsNonRoot: true` or `runAsUser > 0`).
    #[serde(default)]
    pub require_run_as_non_root: bool,
    /// `hostNetwork`, `hostPID` or `hostIPC` violates.
    #[serde(default)]
    pub deny_host_namespaces: bool,
    /// Any `hostPath` volume violates.
    #[serde(default)]
    pub deny_host_path: bool,
    /// Capabilities that may not appear in `capabilities.add` (`ALL` included).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(inner(pattern(capability_pattern())))]
    pub forbidden_capabilities: Vec<String>,
    /// `readOnlyRootFilesystem` must be true.
    #[serde(default)]
    pub require_read_only_root_filesystem: bool,
}

/// ContainerPolicy status: readiness, and the generation enforced — the current one, or
/// the last that compiled when the current one does not.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ContainerPolicyStatus {
    /// The `metadata.generation` the conditions describe.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// The generation whose spec is enforced.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enforced_generation: Option<i64>,
    /// The spec of that generation: what keeps enforcing, across restarts, while a
    /// later generation does not compile.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enforced_spec: Option<ContainerPolicySpec>,
    /// Live objects (Pods and workloads) violating this policy, as the background
    /// audit last found them: what switching to Block would stop if they were created now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub violations: Option<i64>,
    /// When the background audit last evaluated what runs against this policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_audit_time: Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>,
}
