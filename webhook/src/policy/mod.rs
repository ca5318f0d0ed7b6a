//! Policies compiled from their specs, and the snapshot the webhook decides from.

mod compile;
mod integration;
mod selector;
mod set;

pub use compile::{
    CompiledPolicy, MutationRule, TagRule, VulnerabilityRule, WorkloadRule, compile,
};
pub(crate) use compile::{ImageScope, normalize_capability};
pub(crate) use integration::validate_https_url;
pub use integration::{CompiledIntegration, ScannerKind, compile_integration};
pub use selector::Selector;
pub use set::{Matching, NamespaceLabels, NamespaceView, PolicySet, SharedPolicySet};

use std::fmt;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

/// Which version of a cluster object was compiled: its `metadata.uid` (an object deleted
/// and created again under its name is another object) and `metadata.generation`.
/// Outside a cluster (files, tests) both are `None`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ObjectVersion {
    /// `metadata.uid`.
    pub uid: Option<String>,
    /// `metadata.generation`.
    pub generation: Option<i64>,
}

impl ObjectVersion {
    /// The object `meta` describes, at its generation.
    pub fn of(meta: &ObjectMeta) -> Self {
        Self::at(meta, meta.generation)
    }

    /// The object `meta` describes, at `generation` (one its status recorded, say).
    pub fn at(meta: &ObjectMeta, generation: Option<i64>) -> Self {
        ObjectVersion {
            uid: meta.uid.clone(),
            generation,
        }
    }
}

/// One problem with a spec: the field path and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// The field path, e.g. `spec.rules.vulnerabilities.maxCount.critical`.
    pub path: String,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// Joins field errors into one message, as status conditions and logs show them.
pub fn join_errors(errors: &[FieldError]) -> String {
    errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

/// Collects field errors while a spec is compiled.
#[derive(Debug, Default)]
pub(crate) struct Errors(Vec<FieldError>);

impl Errors {
    pub(crate) fn push(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.0.push(FieldError {
            path: path.into(),
            message: message.into(),
        });
    }

    /// Compiles each glob of an optional list, reporting bad ones by index.
    pub(crate) fn globs(
        &mut self,
        path: &str,
        patterns: Option<&[String]>,
        compile: fn(&str) -> Result<crate::glob::Glob, String>,
    ) -> Option<Vec<crate::glob::Glob>> {
        let patterns = patterns?;
        let mut globs = Vec::with_capacity(patterns.len());
        for (i, pattern) in patterns.iter().enumerate() {
            match compile(pattern) {
                Ok(glob) => globs.push(glob),
                Err(message) => self.push(format!("{path}[{i}]"), message),
            }
        }
        Some(globs)
    }

    pub(crate) fn duration(&mut self, path: &str, value: &str) -> Option<std::time::Duration> {
        crate::duration::parse(value)
            .map_err(|message| self.push(path, message))
            .ok()
    }

    pub(crate) fn finish<T>(self, value: T) -> Result<T, Vec<FieldError>> {
        if self.0.is_empty() {
            Ok(value)
        } else {
            Err(self.0)
        }
    }
}
