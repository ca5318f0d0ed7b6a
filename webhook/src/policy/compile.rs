//! `ContainerPolicySpec` → `CompiledPolicy`: the one validation every caller shares.

use std::collections::BTreeSet;
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::Duration;

use portcullis_crds::schema::CAPABILITIES;
use portcullis_crds::{
    Action, ContainerPolicySpec, Severity, UnscannedAction, VulnerabilityRules, WorkloadRules,
};

use super::{Errors, FieldError, ObjectVersion, Selector};
use crate::glob::{Glob, any_match};
use crate::scan::VulnId;
use crate::workload::WorkloadKind;

/// A validated policy, ready to evaluate.
#[derive(Debug, Clone)]
pub struct CompiledPolicy {
    /// `metadata.name` (shared with every violation of the policy).
    pub name: Arc<str>,
    /// The object version compiled, where it has one (the cluster's).
    pub version: ObjectVersion,
    /// What a violation does.
    pub action: Action,
    pub(crate) namespaces: Option<Vec<Glob>>,
    pub(crate) exclude_namespaces: Vec<Glob>,
    pub(crate) namespace_selector: Option<Selector>,
    pub(crate) image_scope: ImageScope,
    pub(crate) kinds: Option<Vec<WorkloadKind>>,
    pub(crate) registries_allow: Option<Vec<Glob>>,
    pub(crate) registries_deny: Vec<Glob>,
    pub(crate) namespaces_allow: Option<Vec<Glob>>,
    pub(crate) tags: Option<TagRule>,
    pub(crate) vulnerabilities: Option<VulnerabilityRule>,
    pub(crate) workload: Option<WorkloadRule>,
    pub(crate) mutate: Option<MutationRule>,
}

impl CompiledPolicy {
    /// Whether `match.namespaces`, `match.excludeNamespaces` and
    /// `match.namespaceSelector` let `namespace` (with `labels`) in.
    pub fn admits_namespace(&self, namespace: &str, labels: &super::NamespaceLabels) -> bool {
        self.admits_namespace_name(namespace)
            && self
                .namespace_selector
                .as_ref()
                .is_none_or(|s| s.matches(labels))
    }

    /// Whether `match.namespaces` and `match.excludeNamespaces` let `namespace` in.
    pub fn admits_namespace_name(&self, namespace: &str) -> bool {
        self.namespaces
            .as_ref()
            .is_none_or(|globs| any_match(globs, namespace))
            && !any_match(&self.exclude_namespaces, namespace)
    }

    /// Whether the policy selects namespaces by their labels.
    pub fn has_namespace_selector(&self) -> bool {
        self.namespace_selector.is_some()
    }
}

/// `match.images` and `match.excludeImages`: the images a policy takes in. Policies
/// often share one, so a review works out each distinct scope's matches once.
#[derive(Debug, Clone)]
pub(crate) struct ImageScope {
    /// A hash of the patterns: different scopes almost always differ here, so comparing
    /// two is usually one comparison; equal keys then compare the patterns as written.
    key: u64,
    /// `match.images`; `None` takes in every image. Private, like the rest: `key` is
    /// worked out from the patterns once.
    images: Option<Vec<Glob>>,
    /// `match.excludeImages`.
    exclude: Vec<Glob>,
}

impl ImageScope {
    fn new(images: Option<Vec<Glob>>, exclude: Vec<Glob>) -> Self {
        let mut hasher = std::hash::DefaultHasher::new();
        images.as_ref().map(Vec::len).hash(&mut hasher);
        for glob in images.iter().flatten().chain(&exclude) {
            glob.as_str().hash(&mut hasher);
        }
        ImageScope {
            key: hasher.finish(),
            images,
            exclude,
        }
    }

    fn sources(globs: &[Glob]) -> impl Iterator<Item = &str> {
        globs.iter().map(Glob::as_str)
    }

    /// Whether `match.images` is unset: the scope takes in every image, and an object
    /// with none.
    pub(crate) fn takes_every_image(&self) -> bool {
        self.images.is_none()
    }

    /// Whether the scope takes in images of `repository`.
    pub(crate) fn matches(&self, repository: &str) -> bool {
        self.images
            .as_ref()
            .is_none_or(|globs| any_match(globs, repository))
            && !any_match(&self.exclude, repository)
    }
}

/// Equal patterns as written: the same globs, compiled the same way (`Glob::repository`).
impl PartialEq for ImageScope {
    fn eq(&self, other: &Self) -> bool {
        self.key == other.key
            && self.images.is_some() == other.images.is_some()
            && Self::sources(self.images.as_deref().unwrap_or_default())
                .eq(Self::sources(other.images.as_deref().unwrap_or_default()))
            && Self::sources(&self.exclude).eq(Self::sources(&other.exclude))
    }
}

/// Compiled `rules.tags`.
#[derive(Debug, Clone, Copy)]
pub struct TagRule {
    /// `:latest` or no tag and no digest violates.
    pub deny_latest: bool,
    /// A reference without digest violates.
    pub require_digest: bool,
}

/// Vulnerability IDs a rule names, sorted by their interner slot. Every finding of
/// every image is checked against them, so a lookup is a binary search of slots: one
/// comparison for the usual single ID, where hashing it cost more.
#[derive(Debug, Clone)]
pub struct IdSet(Vec<VulnId>);

impl IdSet {
    /// Whether `id` is among them.
    pub fn contains(&self, id: &VulnId) -> bool {
        self.0
            .binary_search_by_key(&id.index(), VulnId::index)
            .is_ok()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl FromIterator<VulnId> for IdSet {
    fn from_iter<I: IntoIterator<Item = VulnId>>(ids: I) -> Self {
        let mut ids: Vec<VulnId> = ids.into_iter().collect();
        ids.sort_unstable_by_key(VulnId::index);
        ids.dedup();
        IdSet(ids)
    }
}

/// Compiled `rules.vulnerabilities`.
#[derive(Debug, Clone)]
pub struct VulnerabilityRule {
    /// Findings above this severity violate.
    pub max_severity: Option<Severity>,
    /// Caps indexed like `Severity::DESCENDING`.
    pub max_count: [Option<u64>; 5],
    /// The most findings of each severity (indexed like `Severity::DESCENDING`) that
    /// break neither `max_severity` nor `max_count`: a severity above `max_severity`
    /// allows none. An image within all five breaks no counting rule.
    pub limits: [u64; 5],
    /// Count only fixable findings.
    pub fixable_only: bool,
    /// IDs that violate when present.
    pub deny: IdSet,
    /// IDs never counted.
    pub ignore: IdSet,
    /// Older results count as none.
    pub max_scan_age: Option<Duration>,
    /// What no usable result does; `None` allows.
    pub unscanned: Option<Action>,
}

/// Compiled `mutate`: what the mutating webhook does to matched Pods.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MutationRule {
    /// Pin image tags to the resolved digest.
    pub pin_digests: bool,
    /// Set the Pod's `runAsNonRoot: true` where unset.
    pub run_as_non_root: bool,
    /// Set each container's `allowPrivilegeEscalation: false` where unset.
    pub no_privilege_escalation: bool,
    /// Set `capabilities.drop: [ALL]` where a container drops nothing.
    pub drop_all_capabilities: bool,
    /// Set the Pod's `seccompProfile: RuntimeDefault` where unset.
    pub seccomp_runtime_default: bool,
}

/// Compiled `rules.workload`.
#[derive(Debug, Clone)]
pub struct WorkloadRule {
    /// The spec's flags, as written.
    pub flags: WorkloadRules,
    /// Forbidden capabilities, uppercase without `CAP_`.
    pub forbidden_capabilities: Vec<String>,
}

/// Normalizes a capability as the runtime reads it: uppercase, `CAP_` prefix dropped.
pub(crate) fn normalize_capability(name: &str) -> String {
    let upper = name.to_ascii_uppercase();
    upper
        .strip_prefix("CAP_")
        .map(str::to_owned)
        .unwrap_or(upper)
}

/// Validates a spec and compiles it, or lists every field that is wrong.
pub fn compile(name: &str, spec: &ContainerPolicySpec) -> Result<CompiledPolicy, Vec<FieldError>> {
    let mut errors = Errors::default();
    let m = &spec.selector;
    let namespaces = errors.globs("spec.match.namespaces", m.namespaces.as_deref(), Glob::new);
    let exclude_namespaces = errors
        .globs(
            "spec.match.excludeNamespaces",
            m.exclude_namespaces.as_deref(),
            Glob::new,
        )
        .unwrap_or_default();
    let namespace_selector = m.namespace_selector.as_ref().and_then(|s| {
        Selector::compile(s)
            .map_err(|(field, message)| {
                errors.push(format!("spec.match.namespaceSelector.{field}"), message)
            })
            .ok()
    });
    let images = errors.globs("spec.match.images", m.images.as_deref(), Glob::repository);
    let exclude_images = errors
        .globs(
            "spec.match.excludeImages",
            m.exclude_images.as_deref(),
            Glob::repository,
        )
        .unwrap_or_default();
    let kinds = m.kinds.as_ref().map(|kinds| {
        kinds
            .iter()
            .enumerate()
            .filter_map(|(i, kind)| {
                WorkloadKind::from_name(kind)
                    .map_err(|message| errors.push(format!("spec.match.kinds[{i}]"), message))
                    .ok()
            })
            .collect()
    });

    let rules = &spec.rules;
    let (registries_allow, registries_deny) = match &rules.registries {
        Some(r) => (
            errors.globs(
                "spec.rules.registries.allow",
                r.allow.as_deref(),
                Glob::repository,
            ),
            errors
                .globs(
                    "spec.rules.registries.deny",
                    r.deny.as_deref(),
                    Glob::repository,
                )
                .unwrap_or_default(),
        ),
        None => (None, Vec::new()),
    };
    let namespaces_allow = rules
        .namespaces
        .as_ref()
        .and_then(|n| errors.globs("spec.rules.namespaces.allow", Some(&n.allow), Glob::new));
    let tags = rules.tags.as_ref().map(|t| TagRule {
        deny_latest: t.deny_latest,
        require_digest: t.require_digest,
    });
    let vulnerabilities = rules
        .vulnerabilities
        .as_ref()
        .map(|v| vulnerability_rule(v, spec.action, &mut errors));
    let workload = rules
        .workload
        .as_ref()
        .map(|w| workload_rule(w, &mut errors));
    let mutate = spec.mutate.as_ref().map(|m| mutation_rule(m, &mut errors));

    errors.finish(CompiledPolicy {
        name: name.into(),
        version: ObjectVersion::default(),
        action: spec.action,
        namespaces,
        exclude_namespaces,
        namespace_selector,
        image_scope: ImageScope::new(images, exclude_images),
        kinds,
        registries_allow,
        registries_deny,
        namespaces_allow,
        tags,
        vulnerabilities,
        workload,
        mutate,
    })
}

fn mutation_rule(m: &portcullis_crds::MutateSpec, errors: &mut Errors) -> MutationRule {
    const PATH: &str = "spec.mutate.securityDefaults";
    let defaults = m.security_defaults.clone().unwrap_or_default();
    if defaults.run_as_non_root == Some(false) {
        errors.push(
            format!("{PATH}.runAsNonRoot"),
            "only true is a default (leave the field out for none)",
        );
    }
    if defaults.allow_privilege_escalation == Some(true) {
        errors.push(
            format!("{PATH}.allowPrivilegeEscalation"),
            "only false is a default (leave the field out for none)",
        );
    }
    MutationRule {
        pin_digests: m.pin_digests,
        run_as_non_root: defaults.run_as_non_root == Some(true),
        no_privilege_escalation: defaults.allow_privilege_escalation == Some(false),
        drop_all_capabilities: defaults.drop_all_capabilities,
        seccomp_runtime_default: defaults.seccomp_profile.is_some(),
    }
}

fn vulnerability_rule(
    v: &VulnerabilityRules,
    action: Action,
    errors: &mut Errors,
) -> VulnerabilityRule {
    const PATH: &str = "spec.rules.vulnerabilities";
    let max_count = Severity::DESCENDING.map(|severity| {
        let cap = v.max_count.as_ref()?.get(severity)?;
        match u64::try_from(cap) {
            Ok(cap) => Some(cap),
            Err(_) => {
                errors.push(
                    format!("{PATH}.maxCount.{}", severity.as_str()),
                    format!("must be >= 0 (got {cap})"),
                );
                None
            }
        }
    });
    let mut ids = |field: &str, list: &[String]| -> BTreeSet<String> {
        let mut set = BTreeSet::new();
        for (i, id) in list.iter().enumerate() {
            let id = id.trim();
            if id.is_empty() || id.chars().any(|c| c.is_whitespace() || c.is_control()) {
                errors.push(
                    format!("{PATH}.{field}[{i}]"),
                    "must be a vulnerability ID such as CVE-2021-44228",
                );
            } else {
                set.insert(id.to_ascii_uppercase());
            }
        }
        set
    };
    let deny = ids("deny", &v.deny);
    let ignore = ids("ignore", &v.ignore);
    if let Some(both) = deny.intersection(&ignore).next() {
        errors.push(
            format!("{PATH}.ignore"),
            format!("{both} is also in {PATH}.deny; an ID can be denied or ignored, not both"),
        );
    }
    let max_scan_age = v
        .max_scan_age
        .as_deref()
        .and_then(|age| errors.duration(&format!("{PATH}.maxScanAge"), age));
    let unscanned = match v.unscanned {
        None => Some(action),
        Some(UnscannedAction::Block) => Some(Action::Block),
        Some(UnscannedAction::Warn) => Some(Action::Warn),
        Some(UnscannedAction::Allow) => None,
    };
    let limits = std::array::from_fn(|index| {
        let above_max = v
            .max_severity
            .is_some_and(|max| Severity::DESCENDING[index] > max);
        let cap = max_count[index].unwrap_or(u64::MAX);
        if above_max { 0 } else { cap }
    });
    VulnerabilityRule {
        max_severity: v.max_severity,
        max_count,
        limits,
        fixable_only: v.fixable_only,
        deny: deny.iter().map(|id| VulnId::new(id)).collect(),
        ignore: ignore.iter().map(|id| VulnId::new(id)).collect(),
        max_scan_age,
        unscanned,
    }
}

fn workload_rule(w: &WorkloadRules, errors: &mut Errors) -> WorkloadRule {
    let forbidden_capabilities = w
        .forbidden_capabilities
        .iter()
        .enumerate()
        .filter_map(|(i, cap)| {
            let normalized = normalize_capability(cap);
            if CAPABILITIES.contains(&normalized.as_str()) {
                Some(normalized)
            } else {
                errors.push(
                    format!("spec.rules.workload.forbiddenCapabilities[{i}]"),
                    format!("unknown capability {cap:?}"),
                );
                None
            }
        })
        .collect();
    WorkloadRule {
        flags: w.clone(),
        forbidden_capabilities,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(json: &str) -> ContainerPolicySpec {
        serde_json::from_str(json).unwrap()
    }

    fn errors(json: &str) -> Vec<String> {
        match compile("p", &spec(json)) {
            Ok(_) => vec![],
            Err(errors) => errors.iter().map(ToString::to_string).collect(),
        }
    }

    #[test]
    fn valid_spec_compiles() {
        let p = compile(
            "p",
            &spec(r#"{"action":"Warn","match":{"namespaces":["prod-*"],"images":["ghcr.io/acme/**"],"kinds":["Pod","Deployment"]},
                "rules":{"vulnerabilities":{"maxCount":{"critical":0},"maxScanAge":"168h","deny":["cve-2021-44228"]},
                "workload":{"forbiddenCapabilities":["CAP_SYS_ADMIN","net_raw","ALL"]}}}"#),
        )
        .unwrap();
        assert_eq!(p.action, Action::Warn);
        let v = p.vulnerabilities.unwrap();
        assert_eq!(v.max_count[0], Some(0));
        assert_eq!(v.max_scan_age, Some(Duration::from_secs(168 * 3600)));
        assert!(v.deny.contains(&VulnId::new("CVE-2021-44228")));
        assert_eq!(v.unscanned, Some(Action::Warn));
        assert_eq!(
            p.workload.unwrap().forbidden_capabilities,
            ["SYS_ADMIN", "NET_RAW", "ALL"]
        );
    }

    #[test]
    fn id_sets_hold_their_ids_and_no_other() {
        let named: Vec<VulnId> = (0..40)
            .map(|i| VulnId::new(&format!("CVE-2026-{i}")))
            .collect();
        let others: Vec<VulnId> = (0..40).map(|i| VulnId::new(&format!("GHSA-{i}"))).collect();
        for size in [0, 1, 2, 3, 17, 40] {
            // Given twice over, in reverse of the order the IDs were interned in.
            let given = named[..size].iter().rev();
            let set: IdSet = given.clone().chain(given).cloned().collect();
            assert_eq!(set.is_empty(), size == 0);
            for (i, id) in named.iter().enumerate() {
                assert_eq!(set.contains(id), i < size, "{size} IDs, ID {i}");
            }
            assert!(others.iter().all(|id| !set.contains(id)), "{size} IDs");
        }
    }

    #[test]
    fn every_error_names_its_field() {
        let got = errors(
            r#"{"match":{"namespaces":["ok","a//b"],"images":["ghcr.io/**x"],"kinds":["Pod","Service"],
                "namespaceSelector":{"matchExpressions":[{"key":"env","operator":"Near","values":["x"]}]}},
                "rules":{"registries":{"allow":[""]},"vulnerabilities":{"maxCount":{"critical":-1},"maxScanAge":"7d",
                "deny":["CVE-1"],"ignore":["cve-1"," "]},"workload":{"forbiddenCapabilities":["SYS_ADMN"]}}}"#,
        );
        let want = [
            "spec.match.namespaces[1]: pattern \"a//b\" has the character '/', which no namespace name contains",
            "spec.match.namespaceSelector.matchExpressions[0].operator: unknown operator \"Near\" (In, NotIn, Exists, DoesNotExist)",
            "spec.match.images[0]: pattern \"ghcr.io/**x\": `**` must be a whole segment",
            "spec.match.kinds[1]: unknown kind \"Service\" (Pod, Deployment, ReplicaSet, StatefulSet, DaemonSet, Job, CronJob, ReplicationController)",
            "spec.rules.registries.allow[0]: pattern is empty",
            "spec.rules.vulnerabilities.maxCount.critical: must be >= 0 (got -1)",
            "spec.rules.vulnerabilities.ignore[1]: must be a vulnerability ID such as CVE-2021-44228",
            "spec.rules.vulnerabilities.ignore: CVE-1 is also in spec.rules.vulnerabilities.deny; an ID can be denied or ignored, not both",
            "spec.rules.vulnerabilities.maxScanAge: \"7d\" is not a duration (use a Go duration such as 2s, 30m or 168h)",
            "spec.rules.workload.forbiddenCapabilities[0]: unknown capability \"SYS_ADMN\"",
        ];
        assert_eq!(got, want);
    }

    #[test]
    fn limits_say_when_max_severity_or_max_count_is_broken() {
        let severities = ["Critical", "High", "Medium", "Low", "Unknown"];
        let maxima = std::iter::once(None).chain(severities.iter().map(Some));
        for max_severity in maxima {
            for cap in [None, Some(0u64), Some(2)] {
                let mut rules = serde_json::Map::new();
                if let Some(max) = max_severity {
                    rules.insert("maxSeverity".into(), (*max).into());
                }
                if let Some(cap) = cap {
                    rules.insert("maxCount".into(), serde_json::json!({ "high": cap }));
                }
                let json = serde_json::json!({ "rules": { "vulnerabilities": rules } });
                let rule = compile("p", &spec(&json.to_string()))
                    .unwrap()
                    .vulnerabilities
                    .unwrap();
                for (index, severity) in Severity::DESCENDING.into_iter().enumerate() {
                    for n in 0..4u64 {
                        let over_severity =
                            n > 0 && rule.max_severity.is_some_and(|max| severity > max);
                        let over_count = rule.max_count[index].is_some_and(|cap| n > cap);
                        assert_eq!(
                            n > rule.limits[index],
                            over_severity || over_count,
                            "{json}: {n} {severity:?}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn unscanned_defaults_to_the_policy_action() {
        let unscanned = |json: &str| {
            compile("p", &spec(json))
                .unwrap()
                .vulnerabilities
                .unwrap()
                .unscanned
        };
        assert_eq!(
            unscanned(r#"{"action":"Audit","rules":{"vulnerabilities":{}}}"#),
            Some(Action::Audit)
        );
        assert_eq!(
            unscanned(r#"{"rules":{"vulnerabilities":{}}}"#),
            Some(Action::Block)
        );
        assert_eq!(
            unscanned(r#"{"action":"Block","rules":{"vulnerabilities":{"unscanned":"Warn"}}}"#),
            Some(Action::Warn)
        );
        assert_eq!(
            unscanned(r#"{"rules":{"vulnerabilities":{"unscanned":"Allow"}}}"#),
            None
        );
    }
}
