//! Portcullis API types (`portcullis.dev/v1alpha1`): what users write in Git and apply.
//!
//! These are plain data. Their validation and compilation into enforceable policy lives
//! in `portcullis-webhook` (`policy::compile`), the one validation the controller, local
//! mode and the CLI share.

mod audit;
mod policy;
mod registry;
pub mod schema;

pub use audit::*;
pub use policy::*;
pub use registry::*;

use kube::CustomResourceExt;

/// The API group of every Portcullis kind.
pub const GROUP: &str = "portcullis.dev";
/// The served API version.
pub const VERSION: &str = "v1alpha1";

/// The generated CustomResourceDefinitions as YAML, each with the file name it is
/// committed under in `crds/`.
pub fn crd_yaml() -> Result<Vec<(&'static str, String)>, serde_saphyr::SerializeError> {
    Ok(vec![
        (
            "portcullis.dev_containerpolicies.yaml",
            serde_saphyr::to_string(&ContainerPolicy::crd())?,
        ),
        (
            "portcullis.dev_registryintegrations.yaml",
            serde_saphyr::to_string(&RegistryIntegration::crd())?,
        ),
        (
            "portcullis.dev_auditmonitors.yaml",
            serde_saphyr::to_string(&AuditMonitor::crd())?,
        ),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The committed CRD YAML is what users apply; it must match the types.
    #[test]
    fn committed_crds_are_current() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        for (file, yaml) in crd_yaml().unwrap() {
            let committed = std::fs::read_to_string(dir.join(file)).unwrap_or_default();
            assert!(
                committed == yaml,
                "crds/{file} is stale: run `cargo run -p portcullis -- crds --out-dir crds` and commit the result"
            );
        }
    }

    #[test]
    fn a_severity_ranks_at_its_place_in_descending_order() {
        for (index, severity) in Severity::DESCENDING.into_iter().enumerate() {
            assert_eq!(severity.rank(), index, "{severity:?}");
        }
    }

    #[test]
    fn enums_are_enums_in_the_schema() {
        let crd = serde_json::to_value(ContainerPolicy::crd()).unwrap();
        let spec = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"];
        assert_eq!(
            spec["action"]["enum"],
            serde_json::json!(["Block", "Warn", "Audit"])
        );
        let vulns = &spec["rules"]["properties"]["vulnerabilities"]["properties"];
        assert_eq!(
            vulns["maxSeverity"]["enum"],
            serde_json::json!(["Unknown", "Low", "Medium", "High", "Critical"])
        );
        assert_eq!(
            vulns["unscanned"]["enum"],
            serde_json::json!(["Block", "Warn", "Allow"])
        );
        assert_eq!(
            vulns["maxCount"]["properties"]["critical"]["minimum"].as_f64(),
            Some(0.0)
        );
        assert_eq!(crd["spec"]["scope"], "Cluster");
        assert_eq!(
            crd["spec"]["names"]["shortNames"],
            serde_json::json!(["cpol"])
        );
    }
}
