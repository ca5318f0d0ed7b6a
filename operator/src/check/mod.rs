//! `portcullis check`: the webhook's decision for manifests on disk or stdin, for CI
//! pipelines and GitOps repositories.

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::SystemTime;

use portcullis_webhook::admission::{Evaluable, evaluate_object};
use portcullis_webhook::engine::Review;
use portcullis_webhook::engine::mutation::{DigestResults, Unresolved, UnresolvedCause};
use portcullis_webhook::image::ImageRef;
use portcullis_webhook::mutate;
use portcullis_webhook::policy::{NamespaceView, PolicySet};
use portcullis_webhook::scan::{ScanReport, ScanResults, ScanStatus, trivy};
use portcullis_webhook::workload::{PodSpecRef, Workload, WorkloadKind};
use serde_json::Value;

use crate::cli::{CheckArgs, OutputFormat};
use crate::manifests::{self, Document, Manifest};

mod report;

pub use report::{CheckReport, ObjectResult, Skipped, Summary, ViolationOut};

/// Exit code when nothing would be blocked.
pub const EXIT_PASS: u8 = 0;
/// Exit code when something would be blocked.
pub const EXIT_BLOCKED: u8 = 1;
/// Exit code for bad input: unreadable files, invalid YAML or policies, no input.
pub const EXIT_BAD_INPUT: u8 = 2;

/// Runs the check; prints the report to stdout and input errors to stderr.
pub fn run(args: &CheckArgs) -> ExitCode {
    let report = match check(args, SystemTime::now()) {
        Ok(report) => report,
        Err(errors) => {
            for error in &errors {
                eprintln!("portcullis check: {error}");
            }
            eprintln!(
                "portcullis check: {} input error(s); nothing was checked",
                errors.len()
            );
            return ExitCode::from(EXIT_BAD_INPUT);
        }
    };
    let printed = match args.output {
        OutputFormat::Text => report.text(),
        OutputFormat::Json => match serde_json::to_string_pretty(&report) {
            Ok(json) => json + "\n",
            Err(error) => {
                eprintln!("portcullis check: {error}");
                return ExitCode::from(EXIT_BAD_INPUT);
            }
        },
    };
    print!("{printed}");
    ExitCode::from(if report.summary.denied > 0 {
        EXIT_BLOCKED
    } else {
        EXIT_PASS
    })
}

/// Reads policies, manifests and scan results, and decides every workload object.
pub fn check(args: &CheckArgs, now: SystemTime) -> Result<CheckReport, Vec<String>> {
    let mut errors = Vec::new();
    let mut policy_docs = Vec::new();
    for path in &args.policies {
        read_path(path, &mut policy_docs, &mut errors);
    }
    let mut input_docs = Vec::new();
    if args.inputs.is_empty() {
        errors
            .push("no manifests given: name files or directories, or - for standard input".into());
    }
    for input in &args.inputs {
        if input.as_os_str() == "-" {
            read_stdin(&mut input_docs, &mut errors);
        } else {
            read_path(input, &mut input_docs, &mut errors);
        }
    }
    if !args.inputs.is_empty() && input_docs.is_empty() && errors.is_empty() {
        errors.push("the manifests hold no objects".into());
    }
    let namespaces = input_docs
        .iter()
        .filter(|(_, d)| matches!(d, Ok(Manifest::Namespace(..))));
    let loaded = manifests::build_set(policy_docs.iter().chain(namespaces), None);
    errors.extend(loaded.problems);
    let scans = ScanIndex::read(&args.scan_results, now, &mut errors);
    if !errors.is_empty() {
        return Err(errors);
    }

    let mut report = CheckReport::default();
    for (location, document) in &input_docs {
        match document {
            Ok(Manifest::Object(object)) => decide(
                object,
                location,
                args,
                &loaded.set,
                &scans,
                now,
                &mut report,
            ),
            Ok(Manifest::Namespace(..) | Manifest::Secret(..)) => {}
            Ok(Manifest::Policy(p)) => report.skip(
                location,
                "ContainerPolicy",
                p.metadata.name.as_deref(),
                "policies are read with --policies",
            ),
            Ok(Manifest::Integration(i)) => report.skip(
                location,
                "RegistryIntegration",
                i.metadata.name.as_deref(),
                "policies are read with --policies",
            ),
            Err(message) => report.skip(location, "", None, message),
        }
    }
    Ok(report)
}

fn decide(
    object: &Value,
    location: &str,
    args: &CheckArgs,
    set: &PolicySet,
    scans: &ScanIndex,
    now: SystemTime,
    report: &mut CheckReport,
) {
    let kind = object["kind"].as_str().unwrap_or_default();
    let group = object["apiVersion"]
        .as_str()
        .and_then(|v| v.split_once('/'))
        .map_or("", |(group, _)| group);
    let name = object.pointer("/metadata/name").and_then(Value::as_str);
    let Some(workload) = WorkloadKind::from_group_kind(group, kind) else {
        return report.skip(
            location,
            kind,
            name,
            &format!("kind {kind} is not evaluated"),
        );
    };
    let namespace = object
        .pointer("/metadata/namespace")
        .and_then(Value::as_str)
        .unwrap_or(&args.namespace);
    let (json, mutations) = match workload {
        WorkloadKind::Pod => mutated_pod(object, namespace, set, scans),
        _ => (object.to_string(), Vec::new()),
    };
    let verdict = evaluate_object(workload, namespace, &json, set, scans, now);
    report.add(
        location,
        workload,
        namespace,
        name.unwrap_or_default(),
        &verdict,
        mutations,
    );
}

/// A Pod as validation sees it once the mutating webhook has changed it (JSON), and
/// what it changed. A Pod that cannot be read is left as written: validation says why.
fn mutated_pod(
    object: &Value,
    namespace: &str,
    set: &PolicySet,
    scans: &ScanIndex,
) -> (String, Vec<String>) {
    let json = object.to_string();
    match mutate_pod(object, &json, namespace, set, scans) {
        Some((mutated, changes)) => (mutated.to_string(), changes),
        None => (json, Vec::new()),
    }
}

fn mutate_pod(
    object: &Value,
    json: &str,
    namespace: &str,
    set: &PolicySet,
    scans: &ScanIndex,
) -> Option<(Value, Vec<String>)> {
    let read = Workload::read(WorkloadKind::Pod, json).ok()?;
    let subject = format!("Pod {namespace}/{}", read.info.name);
    let evaluable = Evaluable {
        kind: WorkloadKind::Pod,
        object: read.info,
        spec: PodSpecRef::Owned(read.spec),
    };
    let target = mutate::creating(evaluable, json.len()).ok()?;
    let review = Review::new(target.evaluable.subject(namespace, NamespaceView::Snapshot));
    let plan = review.mutation(set, target.scope(), scans);
    if plan.is_empty() {
        return None;
    }
    let answer = mutate::answer(&target, &plan, &subject);
    let Some(patch) = &answer.patch else {
        return Some((object.clone(), answer.warnings));
    };
    let patch: json_patch::Patch = serde_json::from_slice(patch).ok()?;
    let mut mutated = object.clone();
    json_patch::patch(&mut mutated, &patch).ok()?;
    Some((mutated, plan.changes()))
}

fn read_path(path: &Path, out: &mut Vec<Document>, errors: &mut Vec<String>) {
    let files = match manifests::find_files(path) {
        Ok(files) => files,
        Err(error) => return errors.push(format!("{}: {error}", path.display())),
    };
    for file in files {
        match manifests::read_file(&file) {
            Ok(documents) => out.extend(documents),
            Err(error) => errors.push(error.to_string()),
        }
    }
}

fn read_stdin(out: &mut Vec<Document>, errors: &mut Vec<String>) {
    let mut text = String::new();
    if let Err(error) = std::io::stdin().read_to_string(&mut text) {
        return errors.push(format!("-: {error}"));
    }
    match manifests::read_text("-", &text) {
        Ok(documents) => out.extend(documents),
        Err(error) => errors.push(error.to_string()),
    }
}

/// Trivy reports from `--scan-results`, by digest and by normalized reference.
#[derive(Default)]
struct ScanIndex {
    by_digest: HashMap<String, ScanReport>,
    /// Reports by reference, with the digest each names.
    by_reference: HashMap<String, (ScanReport, Option<String>)>,
}

impl ScanIndex {
    /// Reads every report under `paths`. A report without `CreatedAt` (trivy before
    /// 0.37) counts as scanned when its file was written, else `now`.
    fn read(paths: &[PathBuf], now: SystemTime, errors: &mut Vec<String>) -> Self {
        let mut index = ScanIndex::default();
        for path in paths {
            let files = match json_files(path) {
                Ok(files) => files,
                Err(error) => {
                    errors.push(format!("{}: {error}", path.display()));
                    continue;
                }
            };
            for file in files {
                let parsed = std::fs::read(&file)
                    .map_err(|e| e.to_string())
                    .and_then(|bytes| trivy::parse(&bytes).map_err(|e| e.to_string()));
                match parsed {
                    Ok(mut report) => {
                        if report.report.scanned_at.is_none() {
                            let written = std::fs::metadata(&file).and_then(|m| m.modified());
                            report.report.scanned_at = Some(written.unwrap_or(now));
                        }
                        index.insert(report);
                    }
                    Err(error) => errors.push(format!("{}: {error}", file.display())),
                }
            }
        }
        index
    }

    fn insert(&mut self, parsed: trivy::TrivyReport) {
        if let Some(digest) = &parsed.digest {
            self.by_digest.insert(digest.clone(), parsed.report.clone());
        }
        for reference in parsed.artifact_name.iter().chain(&parsed.repo_tags) {
            if let Ok(image) = ImageRef::parse(reference) {
                let named = (parsed.report.clone(), parsed.digest.clone());
                self.by_reference.insert(image.to_string(), named);
            }
        }
    }
}

impl ScanResults for ScanIndex {
    fn lookup(&self, image: &ImageRef) -> ScanStatus {
        let found = match image.digest() {
            Some(digest) => self.by_digest.get(digest),
            None => self
                .by_reference
                .get(&image.to_string())
                .map(|(report, _)| report),
        };
        match found {
            Some(report) => ScanStatus::Found(report.clone()),
            None => ScanStatus::Unavailable("no --scan-results report matches this image".into()),
        }
    }
}

/// A tag's digest is the one a report for that tag names.
impl DigestResults for ScanIndex {
    fn digest(&self, image: &ImageRef) -> Result<String, Unresolved> {
        if let Some(digest) = image.digest() {
            return Ok(digest.to_owned());
        }
        self.by_reference
            .get(&image.to_string())
            .and_then(|(_, digest)| digest.clone())
            .ok_or(Unresolved {
                cause: UnresolvedCause::RegistryUnavailable,
                reason: "no --scan-results report names this tag's digest".into(),
            })
    }
}

/// Trivy reports: the file given, or the `.json` files under a directory (recursively,
/// as manifests are found).
fn json_files(path: &Path) -> std::io::Result<Vec<PathBuf>> {
    let files = manifests::find_files(path)?;
    if files.len() == 1 && files[0] == path {
        return Ok(files);
    }
    Ok(files
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect())
}
