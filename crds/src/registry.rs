//! `RegistryIntegration`: where scan results for a set of registries come from.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::schema::{GO_DURATION, HTTPS_URL, REPOSITORY_GLOB};

/// How Portcullis reaches a set of registries and the scanner that covers them.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "portcullis.dev",
    version = "v1alpha1",
    kind = "RegistryIntegration",
    shortname = "regint",
    status = "RegistryIntegrationStatus",
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Reachable","type":"string","jsonPath":".status.conditions[?(@.type==\"BackendReachable\")].status"}"#,
    printcolumn = r#"{"name":"Last Contact","type":"date","jsonPath":".status.lastContactTime"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct RegistryIntegrationSpec {
    /// Globs on normalized repositories this integration covers.
    #[schemars(inner(pattern(REPOSITORY_GLOB)))]
    pub registries: Vec<String>,
    /// Pull credentials for these registries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials: Option<Credentials>,
    /// The scanner that holds results for these registries: exactly one kind.
    pub scanner: ScannerSpec,
    /// PEM CA bundle for these registries' TLS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_bundle: Option<String>,
    /// Talk to these registries over plain http (local development registries only).
    #[serde(default, rename = "plainHTTP")]
    pub plain_http: bool,
    /// Ask the scanner to scan a digest it has no result for.
    #[serde(default = "default_true")]
    pub scan_on_demand: bool,
    /// How long a result is fresh (Go duration).
    #[serde(default = "default_cache_ttl", rename = "cacheTTL")]
    #[schemars(pattern(GO_DURATION))]
    pub cache_ttl: String,
    /// Deadline of each backend call (Go duration).
    #[serde(default = "default_timeout")]
    #[schemars(pattern(GO_DURATION))]
    pub timeout: String,
    /// How long past `cacheTTL` a tag's cached digest is still used while the registry
    /// cannot be reached (Go duration); after that the image counts as unscanned.
    #[serde(default = "default_max_tag_age")]
    #[schemars(pattern(GO_DURATION))]
    pub max_tag_age: String,
}

fn default_true() -> bool {
    true
}
fn default_cache_ttl() -> String {
    "24h".into()
}
fn default_timeout() -> String {
    "2s".into()
}
fn default_max_tag_age() -> String {
    "1h".into()
}

/// Where pull credentials come from.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Credentials {
    /// A `kubernetes.io/dockerconfigjson` Secret in Portcullis's own namespace.
    pub secret_ref: SecretRef,
}

/// A Secret by name, in Portcullis's own namespace.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
pub struct SecretRef {
    /// The Secret's name.
    pub name: String,
}

/// The scanner backend; exactly one field is set.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ScannerSpec {
    /// A Harbor v2.0 API.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub harbor: Option<UrlScanner>,
    /// trivy-operator VulnerabilityReports in this cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trivy_operator: Option<TrivyOperatorScanner>,
    /// An HTTP endpoint answering `GET {url}/{digest}` with a Trivy JSON report.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<UrlScanner>,
}

/// A scanner reached over https.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct UrlScanner {
    /// The base URL (https only).
    #[schemars(pattern(HTTPS_URL))]
    pub url: String,
    /// PEM CA bundle to trust for this URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_bundle: Option<String>,
}

/// trivy-operator takes no settings: reports are read from this cluster.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
pub struct TrivyOperatorScanner {}

/// RegistryIntegration status: `Ready`, `BackendReachable`, last successful contact.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RegistryIntegrationStatus {
    /// The `metadata.generation` the conditions describe.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready` and `BackendReachable`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// When the scanner last answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_contact_time: Option<Time>,
    /// The generation whose spec is enforced.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enforced_generation: Option<i64>,
    /// The spec of that generation: what keeps enforcing, across restarts, while a
    /// later generation does not compile.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enforced_spec: Option<RegistryIntegrationSpec>,
}
