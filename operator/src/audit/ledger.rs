//! The audit's state: every live object with what the engine found against the current
//! policy set, from cached scan results only. Pure: the caller feeds objects, snapshots
//! and scan answers, and reads counts, reports and the inventory out.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::ops::Bound;
use std::time::SystemTime;

use portcullis_crds::Action;
use portcullis_webhook::engine::{Review, Subject, Violation, truncate};
use portcullis_webhook::image::ImageRef;
use portcullis_webhook::policy::{NamespaceView, PolicySet};
use portcullis_webhook::scan::ScanService;
use portcullis_webhook::workload::WorkloadKind;

use super::projection::{ObjectKey, Running};

/// Longest message kept per object and policy (as admission caps its deny message).
const MAX_MESSAGE: usize = 4096;

/// What one policy found wrong with one object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyResult {
    /// The ContainerPolicy.
    pub policy: String,
    /// Its action.
    pub action: Action,
    /// The rules broken (`tags.denyLatest`), in the engine's order, distinct.
    pub rules: Vec<&'static str>,
    /// The message admission would give: the object, then each violation.
    pub message: String,
}

/// One live object and its latest evaluation.
#[derive(Debug)]
pub struct Entry {
    /// The object.
    pub running: Box<Running>,
    /// What each violated policy found.
    pub results: Vec<PolicyResult>,
    /// How many policies apply to it (so passes can be counted).
    pub applying: usize,
}

/// Every live object and what the policies find, plus what changed since the writers
/// last looked.
#[derive(Debug, Default)]
pub struct Ledger {
    objects: BTreeMap<ObjectKey, Entry>,
    /// Namespaces whose results changed since [`Ledger::take_dirty`].
    dirty: BTreeSet<String>,
    /// Objects evaluated without a scan result they need, by image.
    waiting: HashMap<ImageRef, HashSet<ObjectKey>>,
    /// Kinds whose watch has listed everything once.
    synced: BTreeSet<WorkloadKind>,
    /// Objects seen in a relist now in progress, by kind.
    relisting: HashMap<WorkloadKind, HashSet<ObjectKey>>,
    /// When every object was last evaluated against the current set.
    audited_at: Option<SystemTime>,
    /// Violations newly found (an object now violating a policy it did not), to count.
    found: Vec<(String, Action)>,
}

impl Ledger {
    /// Records (or replaces) a live object and evaluates it; returns the images whose
    /// scan results are missing or stale.
    pub fn upsert(
        &mut self,
        key: ObjectKey,
        running: Box<Running>,
        set: &PolicySet,
        scans: &ScanService,
    ) -> Vec<ImageRef> {
        if let Some(seen) = self.relisting.get_mut(&key.kind) {
            seen.insert(key.clone());
        }
        let entry = Entry {
            running,
            results: Vec::new(),
            applying: 0,
        };
        self.objects.insert(key.clone(), entry);
        self.evaluate(&key, set, scans)
    }

    /// Forgets an object (deleted, or idle).
    pub fn remove(&mut self, key: &ObjectKey) {
        if let Some(seen) = self.relisting.get_mut(&key.kind) {
            seen.remove(key);
        }
        if self.objects.remove(key).is_some() {
            self.dirty.insert(key.namespace.clone());
        }
    }

    /// A relist of `kind` starts: objects it does not deliver again are gone.
    pub fn relist_started(&mut self, kind: WorkloadKind) {
        self.relisting.insert(kind, HashSet::new());
    }

    /// A relist of `kind` is done: forgets the objects it did not deliver.
    pub fn relist_done(&mut self, kind: WorkloadKind) {
        let seen = self.relisting.remove(&kind).unwrap_or_default();
        let gone: Vec<ObjectKey> = self
            .objects
            .keys()
            .filter(|k| k.kind == kind && !seen.contains(*k))
            .cloned()
            .collect();
        for key in gone {
            self.remove(&key);
        }
        self.synced.insert(kind);
    }

    /// Whether every kind in `kinds` has been listed once.
    pub fn synced(&self, kinds: &[WorkloadKind]) -> bool {
        kinds.iter().all(|k| self.synced.contains(k))
    }

    /// The objects known, in order.
    pub fn keys(&self) -> Vec<ObjectKey> {
        self.objects.keys().cloned().collect()
    }

    /// Evaluates one known object against `set`; returns the images it lacks results for.
    pub fn evaluate(
        &mut self,
        key: &ObjectKey,
        set: &PolicySet,
        scans: &ScanService,
    ) -> Vec<ImageRef> {
        let Some(entry) = self.objects.get_mut(key) else {
            return Vec::new();
        };
        let subject = Subject {
            kind: key.kind,
            namespace: &key.namespace,
            labels: NamespaceView::Snapshot,
            name: &key.name,
            spec: &entry.running.spec,
        };
        let review = Review::new(subject);
        let needed = review.scans_needed(set);
        let (answers, wanted) = scans.remembered(set, &needed);
        let decision = review.decide(set, &answers, SystemTime::now());
        let results = by_policy(&decision.object, &decision.violations);
        entry.applying = review.applying(set);
        if results != entry.results {
            for r in &results {
                if !entry
                    .results
                    .iter()
                    .any(|old| old.policy == r.policy && old.action == r.action)
                {
                    self.found.push((r.policy.clone(), r.action));
                }
            }
            entry.results = results;
            self.dirty.insert(key.namespace.clone());
        }
        for image in &wanted {
            self.waiting
                .entry((*image).clone())
                .or_default()
                .insert(key.clone());
        }
        wanted.into_iter().cloned().collect()
    }

    /// Violations newly found since the last call.
    pub fn take_found(&mut self) -> Vec<(String, Action)> {
        std::mem::take(&mut self.found)
    }

    /// The objects that waited for `image`'s result (to evaluate again now it is looked up).
    pub fn waiting_for(&mut self, image: &ImageRef) -> HashSet<ObjectKey> {
        self.waiting.remove(image).unwrap_or_default()
    }

    /// The objects running an image of one of `repositories`.
    pub fn using(&self, repositories: &HashSet<String>) -> Vec<ObjectKey> {
        self.objects
            .iter()
            .filter(|(_, entry)| {
                entry.running.spec.images().any(|used| {
                    ImageRef::parse(used.image)
                        .is_ok_and(|image| repositories.contains(image.repository()))
                })
            })
            .map(|(key, _)| key.clone())
            .collect()
    }

    /// Every object has just been evaluated against the current set.
    pub fn audited(&mut self, at: SystemTime) {
        self.audited_at = Some(at);
    }

    /// When every object was last evaluated against the current set.
    pub fn audited_at(&self) -> Option<SystemTime> {
        self.audited_at
    }

    /// Namespaces whose results changed since the last call.
    pub fn take_dirty(&mut self) -> BTreeSet<String> {
        std::mem::take(&mut self.dirty)
    }

    /// Live objects violating each policy.
    pub fn violations_by_policy(&self) -> HashMap<String, i64> {
        let mut counts = HashMap::new();
        for entry in self.objects.values() {
            for result in &entry.results {
                *counts.entry(result.policy.clone()).or_insert(0) += 1;
            }
        }
        counts
    }

    /// The objects of `namespace`, in order.
    pub fn in_namespace<'s>(
        &'s self,
        namespace: &str,
    ) -> impl Iterator<Item = (&'s ObjectKey, &'s Entry)> {
        let start = ObjectKey {
            namespace: namespace.to_owned(),
            kind: WorkloadKind::ALL[0],
            name: String::new(),
        };
        let wanted = namespace.to_owned();
        self.objects
            .range((Bound::Included(start), Bound::Unbounded))
            .take_while(move |(k, _)| k.namespace == wanted)
    }

    /// Every namespace with a live object.
    pub fn namespaces(&self) -> BTreeSet<String> {
        self.objects.keys().map(|k| k.namespace.clone()).collect()
    }

    /// Every object, in order.
    pub fn entries(&self) -> impl Iterator<Item = (&ObjectKey, &Entry)> {
        self.objects.iter()
    }

    /// How many objects are known.
    pub fn len(&self) -> usize {
        self.objects.len()
    }

    /// Whether no object is known.
    pub fn is_empty(&self) -> bool {
        self.objects.is_empty()
    }
}

/// Groups violations (ordered by policy) into one result per policy.
fn by_policy(object: &str, violations: &[Violation]) -> Vec<PolicyResult> {
    let mut results: Vec<PolicyResult> = Vec::new();
    for v in violations {
        match results.last_mut() {
            Some(last) if *last.policy == *v.policy => {
                if !last.rules.contains(&v.rule) {
                    last.rules.push(v.rule);
                }
                if last.message.len() < MAX_MESSAGE {
                    last.message.push_str("; ");
                    last.message.push_str(&v.describe());
                }
            }
            _ => results.push(PolicyResult {
                policy: v.policy.to_string(),
                action: v.action,
                rules: vec![v.rule],
                message: format!("{object}: {}", v.describe()),
            }),
        }
    }
    for result in &mut results {
        result.message = truncate(std::mem::take(&mut result.message), MAX_MESSAGE);
    }
    results
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::audit::projection::{Projected, project};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
    use portcullis_crds::ContainerPolicySpec;
    use portcullis_webhook::policy::compile;
    use serde_json::json;

    pub(crate) fn set(policies: &[(&str, serde_json::Value)]) -> PolicySet {
        let compiled: Vec<_> = policies
            .iter()
            .map(|(name, spec)| {
                let spec: ContainerPolicySpec = serde_json::from_value(spec.clone()).unwrap();
                compile(name, &spec).unwrap()
            })
            .collect();
        PolicySet::new(
            compiled,
            Vec::<portcullis_webhook::policy::CompiledIntegration>::new(),
            Default::default(),
        )
    }

    pub(crate) fn pod(namespace: &str, name: &str, image: &str) -> (ObjectKey, Box<Running>) {
        let meta = ObjectMeta {
            name: Some(name.into()),
            namespace: Some(namespace.into()),
            uid: Some(format!("uid-{name}")),
            ..Default::default()
        };
        let data = json!({"spec": {"containers": [{"name": "app", "image": image}]}});
        match project(WorkloadKind::Pod, "v1", &meta, data).unwrap() {
            Projected::Live(key, running) => (key, running),
            Projected::Idle(_) => unreachable!("a Pod without status runs"),
        }
    }

    pub(crate) fn no_latest(action: &str) -> serde_json::Value {
        json!({"action": action, "rules": {"tags": {"denyLatest": true}}})
    }

    #[test]
    fn objects_are_counted_per_policy_and_a_policy_change_is_seen_on_evaluation() {
        let scans = ScanService::in_memory();
        let mut ledger = Ledger::default();
        let warn = set(&[("no-latest", no_latest("Warn"))]);
        for (ns, name, image) in [
            ("a", "p1", "nginx"),
            ("a", "p2", "nginx:1.25"),
            ("b", "p3", "redis:latest"),
        ] {
            let (key, running) = pod(ns, name, image);
            ledger.upsert(key, running, &warn, &scans);
        }
        assert_eq!(ledger.violations_by_policy()["no-latest"], 2);
        let results: Vec<_> = ledger
            .in_namespace("a")
            .flat_map(|(_, e)| e.results.clone())
            .collect();
        assert_eq!(results.len(), 1);
        assert_eq!(results[0].action, Action::Warn);
        assert_eq!(results[0].rules, vec!["tags.denyLatest"]);
        assert!(
            results[0].message.starts_with(
                "Pod a/p1: container \"app\" image nginx violates ContainerPolicy \"no-latest\""
            ),
            "{}",
            results[0].message
        );
        assert_eq!(
            ledger.take_dirty(),
            BTreeSet::from(["a".to_owned(), "b".to_owned()])
        );

        // The same policy switched to Block: counted the same, the action follows.
        let block = set(&[("no-latest", no_latest("Block"))]);
        for key in ledger.keys() {
            ledger.evaluate(&key, &block, &scans);
        }
        assert_eq!(ledger.violations_by_policy()["no-latest"], 2);
        assert!(
            ledger
                .entries()
                .flat_map(|(_, e)| &e.results)
                .all(|r| r.action == Action::Block)
        );

        // Fixed, and deleted: both clear.
        let (key, running) = pod("a", "p1", "nginx:1.25");
        ledger.upsert(key, running, &block, &scans);
        ledger.remove(&pod("b", "p3", "x").0);
        assert!(ledger.violations_by_policy().is_empty());
        assert_eq!(
            ledger.take_dirty(),
            BTreeSet::from(["a".to_owned(), "b".to_owned()])
        );
    }

    #[test]
    fn an_unchanged_result_leaves_the_namespace_clean() {
        let scans = ScanService::in_memory();
        let mut ledger = Ledger::default();
        let policies = set(&[("no-latest", no_latest("Warn"))]);
        let (key, running) = pod("a", "p1", "nginx");
        ledger.upsert(key.clone(), running, &policies, &scans);
        ledger.take_dirty();
        ledger.evaluate(&key, &policies, &scans);
        assert!(ledger.take_dirty().is_empty());
    }

    #[test]
    fn a_relist_forgets_what_it_did_not_deliver_again() {
        let scans = ScanService::in_memory();
        let mut ledger = Ledger::default();
        let policies = set(&[("no-latest", no_latest("Warn"))]);
        for name in ["p1", "p2"] {
            let (key, running) = pod("a", name, "nginx");
            ledger.upsert(key, running, &policies, &scans);
        }
        assert!(!ledger.synced(&[WorkloadKind::Pod]));
        ledger.relist_started(WorkloadKind::Pod);
        let (key, running) = pod("a", "p2", "nginx");
        ledger.upsert(key, running, &policies, &scans);
        ledger.relist_done(WorkloadKind::Pod);
        assert_eq!(
            ledger
                .keys()
                .iter()
                .map(|k| k.name.as_str())
                .collect::<Vec<_>>(),
            ["p2"]
        );
        assert!(ledger.synced(&[WorkloadKind::Pod]));
    }

    #[test]
    fn images_without_a_cached_result_are_wanted_and_their_objects_wait() {
        let scans = ScanService::in_memory();
        let policies = vulnerability_set();
        let mut ledger = Ledger::default();
        let (key, running) = pod(
            "a",
            "p1",
            "ghcr.io/acme/api@sha256:0000000000000000000000000000000000000000000000000000000000000000",
        );
        let wanted = ledger.upsert(key.clone(), running, &policies, &scans);
        assert_eq!(wanted.len(), 1, "{wanted:?}");
        // Unscanned counts as a violation of a Warn policy meanwhile (unscanned = action).
        assert_eq!(ledger.violations_by_policy()["vulns"], 1);
        assert_eq!(ledger.waiting_for(&wanted[0]), HashSet::from([key]));
        assert!(ledger.waiting_for(&wanted[0]).is_empty());
    }

    fn vulnerability_set() -> PolicySet {
        let integration: portcullis_crds::RegistryIntegrationSpec = serde_json::from_value(
            json!({"registries": ["ghcr.io/**"], "scanner": {"http": {"url": "https://scans.invalid/r"}}}),
        )
        .unwrap();
        let policy: ContainerPolicySpec = serde_json::from_value(
            json!({"action": "Warn", "rules": {"vulnerabilities": {"maxSeverity": "High"}}}),
        )
        .unwrap();
        PolicySet::new(
            [compile("vulns", &policy).unwrap()],
            [portcullis_webhook::policy::compile_integration("scans", &integration).unwrap()],
            Default::default(),
        )
    }

    /// A rescan that finds a new CVE for an image that already runs: the objects running
    /// that repository are found and, evaluated again, violate with it.
    #[test]
    fn a_rescan_of_a_running_image_is_seen_by_the_objects_running_it() {
        use portcullis_webhook::scan::{Finding, ScanChanges, ScanReport, VulnId};
        let scans = ScanService::in_memory();
        let policies = vulnerability_set();
        let mut ledger = Ledger::default();
        let digest = "sha256:1111111111111111111111111111111111111111111111111111111111111111";
        let (key, running) = pod("a", "p1", &format!("ghcr.io/acme/api@{digest}"));
        ledger.upsert(key.clone(), running, &policies, &scans);
        let (other, running) = pod("a", "p2", "ghcr.io/acme/web:1");
        ledger.upsert(other, running, &policies, &scans);
        assert_eq!(scans.take_scan_changes(), ScanChanges::None);

        let finding = Finding {
            id: VulnId::new("CVE-2026-0001"),
            severity: portcullis_crds::Severity::Critical,
            fixable: true,
        };
        let report = ScanReport::new(None, [finding]);
        scans.remember_scan("scans", "ghcr.io/acme/api", digest, report);
        let ScanChanges::Repositories(changed) = scans.take_scan_changes() else {
            panic!("one repository was rescanned");
        };
        assert_eq!(ledger.using(&changed), vec![key.clone()]);
        ledger.evaluate(&key, &policies, &scans);
        let message = &ledger.in_namespace("a").next().unwrap().1.results[0].message;
        assert!(message.contains("CVE-2026-0001"), "{message}");
    }
}
