//! `AuditMonitorSpec` → the settings the detections run with and the sink, validated
//! once for the admission webhook, the controller and `audit-scan` alike.

use portcullis_crds::{AUDIT_MONITOR_NAME, AuditMonitorSpec};

use super::{Detection, Settings};
use crate::glob::Glob;
use crate::policy::{Errors, FieldError, validate_https_url};
use crate::scan::backend::ca_certificates;

/// Longest `errorRate.window`: the per-user windows are kept in memory that long.
const MAX_WINDOW_SECONDS: u64 = 24 * 3600;

/// A validated AuditMonitor.
#[derive(Debug, Clone)]
pub struct MonitorConfig {
    /// What the detections run with.
    pub settings: Settings,
    /// Where findings are also sent.
    pub sink: Option<SinkConfig>,
}

/// A validated sink.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SinkConfig {
    /// The https URL findings are POSTed to.
    pub url: String,
    /// PEM CA bundle to trust for it.
    pub ca_bundle: Option<String>,
}

/// Validates and compiles the AuditMonitor `name`; every bad field is named.
pub fn compile_monitor(
    name: &str,
    spec: &AuditMonitorSpec,
) -> Result<MonitorConfig, Vec<FieldError>> {
    let mut errors = Errors::default();
    if name != AUDIT_MONITOR_NAME {
        errors.push(
            "metadata.name",
            format!(
                "only the AuditMonitor named {AUDIT_MONITOR_NAME:?} is used; name this one {AUDIT_MONITOR_NAME:?}"
            ),
        );
    }
    let mut settings = Settings::default();
    for (id, detection) in &spec.detections {
        let Ok(known) = id.parse::<Detection>() else {
            let known: Vec<&str> = Detection::ALL.iter().map(|d| d.id()).collect();
            errors.push(
                format!("spec.detections.{id}"),
                format!("unknown detection (known: {})", known.join(", ")),
            );
            continue;
        };
        if !detection.enabled {
            settings.disabled.insert(known);
        }
        if let Some(severity) = detection.severity {
            settings.severities.insert(known, severity);
        }
    }
    settings.exclude_users = errors
        .globs("spec.exclude.users", Some(&spec.exclude.users), Glob::user)
        .unwrap_or_default();
    settings.exclude_namespaces = errors
        .globs(
            "spec.exclude.namespaces",
            Some(&spec.exclude.namespaces),
            Glob::new,
        )
        .unwrap_or_default();
    if spec.error_rate.threshold == 0 {
        errors.push("spec.errorRate.threshold", "must be at least 1");
    }
    settings.error_threshold = spec.error_rate.threshold;
    if let Some(window) = errors.duration("spec.errorRate.window", &spec.error_rate.window) {
        let seconds = window.as_secs();
        if seconds == 0 || seconds > MAX_WINDOW_SECONDS {
            errors.push(
                "spec.errorRate.window",
                "must be between 1s and 24h (whole seconds)",
            );
        }
        settings.error_window_seconds = i64::try_from(seconds).unwrap_or(i64::MAX);
    }
    let sink = spec.sink.as_ref().map(|sink| {
        if let Err(message) = validate_https_url(&sink.url) {
            errors.push("spec.sink.url", message);
        }
        let ca_bundle = sink.ca_bundle.clone().filter(|ca| !ca.trim().is_empty());
        if let Some(ca) = &ca_bundle
            && let Err(message) = ca_certificates(ca)
        {
            errors.push("spec.sink.caBundle", message);
        }
        SinkConfig {
            url: sink.url.clone(),
            ca_bundle,
        }
    });
    errors.finish(MonitorConfig { settings, sink })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auditlog::Severity;

    fn spec(json: serde_json::Value) -> AuditMonitorSpec {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn the_example_of_the_api_compiles_into_settings() {
        let config = compile_monitor(
            "default",
            &spec(serde_json::json!({
                "detections": {"manual-pod": {"enabled": false}, "new-registry": {"severity": "High"}},
                "exclude": {"users": ["system:serviceaccount:argocd:*"], "namespaces": ["dev-*"]},
                "errorRate": {"threshold": 20, "window": "1m"},
                "sink": {"url": "https://siem.internal/portcullis"},
            })),
        )
        .unwrap();
        let s = &config.settings;
        assert!(s.disabled.contains(&Detection::ManualPod));
        assert_eq!(s.severity(Detection::ManualPod), None);
        assert_eq!(s.severity(Detection::NewRegistry), Some(Severity::High));
        assert_eq!(
            s.severity(Detection::AdminBinding),
            Some(Severity::Critical)
        );
        assert!(s.exclude_users[0].matches("system:serviceaccount:argocd:server"));
        assert!(!s.exclude_users[0].matches("system:serviceaccount:default:server"));
        assert!(s.exclude_namespaces[0].matches("dev-a"));
        assert_eq!((s.error_threshold, s.error_window_seconds), (20, 60));
        assert_eq!(config.sink.unwrap().url, "https://siem.internal/portcullis");
    }

    #[test]
    fn an_empty_spec_is_every_default() {
        let config = compile_monitor("default", &spec(serde_json::json!({}))).unwrap();
        assert!(config.settings.disabled.is_empty());
        assert_eq!(config.settings.error_threshold, 50);
        assert_eq!(config.settings.error_window_seconds, 300);
        assert!(config.sink.is_none());
    }

    #[test]
    fn every_bad_field_is_named() {
        let errors = compile_monitor(
            "other",
            &spec(serde_json::json!({
                "detections": {"manual-pods": {"enabled": false}},
                "exclude": {"users": ["a**b"], "namespaces": ["Dev"]},
                "errorRate": {"threshold": 0, "window": "2d"},
                "sink": {"url": "http://siem.internal", "caBundle": "not pem"},
            })),
        )
        .unwrap_err();
        let text: Vec<String> = errors.iter().map(ToString::to_string).collect();
        let text = text.join("\n");
        for expected in [
            "metadata.name: only the AuditMonitor named \"default\" is used",
            "spec.detections.manual-pods: unknown detection (known: exec-into-container,",
            "spec.exclude.users[0]:",
            "spec.exclude.namespaces[0]:",
            "spec.errorRate.threshold: must be at least 1",
            "spec.errorRate.window:",
            "spec.sink.url: \"http://siem.internal\" must use https",
            "spec.sink.caBundle:",
        ] {
            assert!(
                text.contains(expected),
                "{expected:?} missing from:\n{text}"
            );
        }
    }

    #[test]
    fn a_window_beyond_a_day_is_refused() {
        let errors = compile_monitor(
            "default",
            &spec(serde_json::json!({"errorRate": {"threshold": 5, "window": "25h"}})),
        )
        .unwrap_err();
        assert_eq!(errors[0].path, "spec.errorRate.window");
    }
}
