//! The rule families, evaluated for one policy against one object.

use std::borrow::Cow;
use std::cell::OnceCell;
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::SystemTime;

use portcullis_crds::{Action, Severity};

use super::decision::{push_quoted, show_image};
use super::{Decision, Subject, Violation};
use crate::glob::Glob;
use crate::image::{ImageError, ImageRef};
use crate::policy::{CompiledPolicy, VulnerabilityRule, WorkloadRule, normalize_capability};
use crate::scan::{Finding, ScanResults, ScanStatus, VulnId};
use crate::workload::{ImageUse, SecurityContext, Slot};

/// Most vulnerability IDs listed in one message.
const MAX_IDS: usize = 5;
/// Said of a violation of a policy applied because the namespace's labels were unknown.
const UNKNOWN_LABELS: &str = " (the namespace's labels could not be read, so its match.namespaceSelector counts as matching)";

pub(super) struct Evaluation<'e, 'a> {
    pub policy: &'e CompiledPolicy,
    /// The policy applies only because the namespace's labels could not be read.
    pub assumed: bool,
    pub subject: &'e Subject<'a>,
    pub scans: &'e dyn ScanResults,
    pub now: SystemTime,
    pub decision: &'e mut Decision,
}

impl Evaluation<'_, '_> {
    fn violate(
        &mut self,
        action: Action,
        rule: &'static str,
        target: &Target<'_, '_>,
        detail: impl Into<Cow<'static, str>>,
    ) {
        let mut detail = detail.into();
        if self.assumed {
            detail.to_mut().push_str(UNKNOWN_LABELS);
        }
        self.decision.violations.push(Violation {
            policy: self.policy.name.clone(),
            action,
            rule,
            target: target.text(),
            detail,
        });
    }

    /// An object with more images than are evaluated violates every policy that applies
    /// to it, once.
    pub fn oversized(&mut self, count: usize) {
        let detail = format!(
            "the object has {count} images, more than the {} evaluated in one object",
            super::MAX_IMAGES
        );
        self.violate(self.policy.action, "image", &Target::PodSpec, detail);
    }

    /// A reference that does not parse violates every policy matching the namespace.
    pub fn unparsable(&mut self, image_use: &ImageUse<'_>, error: &ImageError, shared: &Shared) {
        self.violate(
            self.policy.action,
            "image",
            &Target::image(image_use, shared),
            format!("image reference does not parse: {error}"),
        );
    }

    /// The per-image rules, for an image the policy matches.
    pub fn image(&mut self, image_use: &ImageUse<'_>, image: &ImageRef, shared: &Shared) {
        let policy = self.policy;
        let action = policy.action;
        let target = Target::image(image_use, shared);
        let repository = image.repository();
        if let Some(allow) = &policy.registries_allow
            && !allow.iter().any(|g| g.matches(repository))
        {
            self.violate(
                action,
                "registries.allow",
                &target,
                format!("repository {repository} is not in rules.registries.allow"),
            );
        }
        if let Some(deny) = policy
            .registries_deny
            .iter()
            .find(|g| g.matches(repository))
        {
            self.violate(
                action,
                "registries.deny",
                &target,
                format!(
                    "repository {repository} matches rules.registries.deny {:?}",
                    deny.as_str()
                ),
            );
        }
        if let Some(allow) = &policy.namespaces_allow
            && !allow
                .iter()
                .any(|g: &Glob| g.matches(self.subject.namespace))
        {
            let detail = format!(
                "namespace {} is not in rules.namespaces.allow for this image",
                self.subject.namespace
            );
            self.violate(action, "namespaces.allow", &target, detail);
        }
        if let Some(tags) = policy.tags {
            if tags.deny_latest && image.tag() == Some("latest") {
                self.violate(
                    action,
                    "tags.denyLatest",
                    &target,
                    "the latest tag (explicit or implied) is denied by rules.tags.denyLatest",
                );
            }
            if tags.require_digest && image.digest().is_none() {
                self.violate(
                    action,
                    "tags.requireDigest",
                    &target,
                    "image is not pinned by digest (rules.tags.requireDigest)",
                );
            }
        }
        if let Some(rule) = &policy.vulnerabilities {
            self.vulnerabilities(rule, image, shared, &target);
        }
        if let Some(rule) = &policy.workload
            && image_use.slot != Slot::Volume
        {
            self.container_security(rule, image_use.security, &target);
        }
    }

    fn vulnerabilities(
        &mut self,
        rule: &VulnerabilityRule,
        image: &ImageRef,
        shared: &Shared,
        target: &Target<'_, '_>,
    ) {
        let report = match shared.status.get_or_init(|| self.scans.lookup(image)) {
            ScanStatus::Found(report) => report,
            ScanStatus::Unavailable(reason) => {
                return self.unscanned(rule, target, reason.clone());
            }
        };
        if let Some(max_age) = rule.max_scan_age {
            // A result whose scan time is unknown is as good as too old.
            let Some(scanned_at) = report.scanned_at else {
                let reason = "the scan result has no scan time, and maxScanAge is set";
                return self.unscanned(rule, target, Cow::Borrowed(reason));
            };
            let age = self.now.duration_since(scanned_at).unwrap_or_default();
            if age > max_age {
                let reason = format!(
                    "the scan result is {} old, older than maxScanAge {}",
                    crate::duration::show(age),
                    crate::duration::show(max_age)
                );
                return self.unscanned(rule, target, Cow::Owned(reason));
            }
        }
        let action = self.policy.action;
        // An empty set is not hashed into for every finding (most policies ignore none).
        let ignores = !rule.ignore.is_empty();
        let not_ignored = move || {
            report
                .findings()
                .iter()
                .filter(move |f| !(ignores && rule.ignore.contains(&f.id)))
        };
        if !rule.deny.is_empty() {
            let denied = || not_ignored().filter(|f| rule.deny.contains(&f.id));
            let n = denied().count();
            if n > 0 {
                let mut detail = String::with_capacity(96);
                detail.push_str("denied ");
                detail.push_str(plural(n, "vulnerability", "vulnerabilities"));
                detail.push_str(" present: ");
                push_ids(&mut detail, n, denied());
                self.violate(action, "vulnerabilities.deny", target, detail);
            }
        }
        // Counted without allocating, once per image for the policies that ignore no ID;
        // the IDs are listed only for a violation.
        let counting = || not_ignored().filter(|f| !rule.fixable_only || f.fixable);
        let counted = |severity: Severity| counting().filter(move |f| f.severity == severity);
        let counts = if ignores {
            Counts::of(counting()).all
        } else {
            let counts = shared.counts.get_or_init(|| Counts::of(report.findings()));
            if rule.fixable_only {
                counts.fixable
            } else {
                counts.all
            }
        };
        for (index, severity) in Severity::DESCENDING.into_iter().enumerate() {
            let n = counts[index];
            if n as u64 <= rule.limits[index] {
                continue;
            }
            // Past the limit, one rule or both are broken; which, for the message.
            let over_severity = rule.max_severity.filter(|max| n > 0 && severity > *max);
            let over_count = rule.max_count[index].filter(|cap| n as u64 > *cap);
            // `3 critical vulnerabilities (CVE-…, …) exceed`, then the rule and its bound.
            let mut what = String::with_capacity(160);
            what.push_str(itoa::Buffer::new().format(n));
            what.push(' ');
            what.push_str(severity.as_str());
            if rule.fixable_only {
                what.push_str(" fixable");
            }
            what.push(' ');
            what.push_str(plural(n, "vulnerability", "vulnerabilities"));
            what.push_str(" (");
            push_ids(&mut what, n, counted(severity));
            what.push_str(if n == 1 { ") exceeds" } else { ") exceed" });
            if let Some(max) = over_severity {
                let mut detail = if over_count.is_some() {
                    what.clone()
                } else {
                    std::mem::take(&mut what)
                };
                let _ = write!(detail, " maxSeverity {max:?}");
                self.violate(action, "vulnerabilities.maxSeverity", target, detail);
            }
            if let Some(cap) = over_count {
                what.push_str(" maxCount.");
                what.push_str(severity.as_str());
                what.push(' ');
                what.push_str(itoa::Buffer::new().format(cap));
                self.violate(action, "vulnerabilities.maxCount", target, what);
            }
        }
    }

    fn unscanned(
        &mut self,
        rule: &VulnerabilityRule,
        target: &Target<'_, '_>,
        reason: Cow<'static, str>,
    ) {
        if let Some(action) = rule.unscanned {
            self.violate(action, "vulnerabilities.unscanned", target, format!("no usable scan result ({reason}); rules.vulnerabilities.unscanned is {action:?}"));
        }
    }

    fn container_security(
        &mut self,
        rule: &WorkloadRule,
        security: Option<&SecurityContext>,
        target: &Target<'_, '_>,
    ) {
        let default = SecurityContext::default();
        let sc = security.unwrap_or(&default);
        let pod = self.subject.spec.security_context.as_ref();
        let action = self.policy.action;
        let flags = &rule.flags;
        if flags.deny_privileged && sc.privileged == Some(true) {
            self.violate(
                action,
                "workload.denyPrivileged",
                target,
                "runs privileged (rules.workload.denyPrivileged)",
            );
        }
        if flags.deny_privilege_escalation && sc.allow_privilege_escalation != Some(false) {
            let detail = "allowPrivilegeEscalation is not set to false (rules.workload.denyPrivilegeEscalation)";
            self.violate(action, "workload.denyPrivilegeEscalation", target, detail);
        }
        if flags.require_run_as_non_root {
            let non_root = sc.run_as_non_root.or(pod.and_then(|p| p.run_as_non_root));
            let user = sc.run_as_user.or(pod.and_then(|p| p.run_as_user));
            let detail = match user {
                Some(0) => {
                    Some("runs as root: runAsUser is 0 (rules.workload.requireRunAsNonRoot)")
                }
                Some(uid) if uid > 0 => None,
                _ if non_root == Some(true) => None,
                _ => Some(
                    "may run as root: neither runAsNonRoot true nor runAsUser > 0 is set (rules.workload.requireRunAsNonRoot)",
                ),
            };
            if let Some(detail) = detail {
                self.violate(action, "workload.requireRunAsNonRoot", target, detail);
            }
        }
        let added: Vec<String> = sc
            .capabilities
            .iter()
            .flat_map(|c| c.add.iter().flatten())
            .map(|c| normalize_capability(c))
            .collect();
        let forbidden: Vec<&str> = added
            .iter()
            .filter(|cap| {
                rule.forbidden_capabilities
                    .iter()
                    .any(|f| f == *cap || *cap == "ALL")
            })
            .map(String::as_str)
            .collect();
        if !forbidden.is_empty() {
            let detail = format!(
                "adds forbidden capabilities {} (rules.workload.forbiddenCapabilities)",
                forbidden.join(", ")
            );
            self.violate(action, "workload.forbiddenCapabilities", target, detail);
        }
        if flags.require_read_only_root_filesystem && sc.read_only_root_filesystem != Some(true) {
            let detail =
                "readOnlyRootFilesystem is not true (rules.workload.requireReadOnlyRootFilesystem)";
            self.violate(
                action,
                "workload.requireReadOnlyRootFilesystem",
                target,
                detail,
            );
        }
    }

    /// The pod-level rules, once per object the policy applies to.
    pub fn pod(&mut self) {
        let Some(rule) = &self.policy.workload else {
            return;
        };
        let spec = self.subject.spec;
        let action = self.policy.action;
        if rule.flags.deny_host_namespaces {
            let used: Vec<&str> = [
                (spec.host_network, "hostNetwork"),
                (spec.host_pid, "hostPID"),
                (spec.host_ipc, "hostIPC"),
            ]
            .into_iter()
            .filter_map(|(on, name)| (on == Some(true)).then_some(name))
            .collect();
            if !used.is_empty() {
                let detail = format!(
                    "uses host namespaces: {} (rules.workload.denyHostNamespaces)",
                    used.join(", ")
                );
                self.violate(
                    action,
                    "workload.denyHostNamespaces",
                    &Target::PodSpec,
                    detail,
                );
            }
        }
        if rule.flags.deny_host_path {
            let names: Vec<String> = spec
                .volumes
                .iter()
                .flatten()
                .filter(|v| v.host_path)
                .map(|v| format!("{:?}", v.name))
                .collect();
            if !names.is_empty() {
                let detail = format!(
                    "mounts hostPath volumes {} (rules.workload.denyHostPath)",
                    names.join(", ")
                );
                self.violate(action, "workload.denyHostPath", &Target::PodSpec, detail);
            }
        }
    }
}

/// What the policies evaluated against one image share: its scan status, looked up
/// when a rule first reads it, and its target text, formatted when a rule is first
/// broken (most images break none).
#[derive(Default)]
pub(super) struct Shared {
    status: OnceCell<ScanStatus>,
    /// Its findings counted, when a rule first needs them.
    counts: OnceCell<Counts>,
    target: OnceCell<Arc<str>>,
}

/// Findings by severity (indexed like `Severity::DESCENDING`): all, and the fixable.
struct Counts {
    all: [usize; 5],
    fixable: [usize; 5],
}

impl Counts {
    fn of<'f>(findings: impl IntoIterator<Item = &'f Finding>) -> Self {
        let mut counts = Counts {
            all: [0; 5],
            fixable: [0; 5],
        };
        for finding in findings {
            let rank = finding.severity.rank();
            counts.all[rank] += 1;
            counts.fixable[rank] += usize::from(finding.fixable);
        }
        counts
    }
}

/// What a violation is of.
enum Target<'u, 'a> {
    /// The pod spec as a whole.
    PodSpec,
    /// One image, with the text its violations share.
    Image {
        image_use: &'u ImageUse<'a>,
        text: &'u OnceCell<Arc<str>>,
    },
}

impl<'u, 'a> Target<'u, 'a> {
    fn image(image_use: &'u ImageUse<'a>, shared: &'u Shared) -> Self {
        Target::Image {
            image_use,
            text: &shared.target,
        }
    }

    /// `pod spec`, or `container "api" image nginx:1.25`.
    fn text(&self) -> Arc<str> {
        match self {
            Target::PodSpec => Arc::from("pod spec"),
            Target::Image { image_use, text } => {
                Arc::clone(text.get_or_init(|| target(image_use).into()))
            }
        }
    }
}

/// `container "api" image nginx:1.25`: built in one buffer (it is in every message).
fn target(image_use: &ImageUse<'_>) -> String {
    let noun = image_use.slot.noun();
    let mut text =
        String::with_capacity(noun.len() + image_use.name.len() + image_use.image.len() + 12);
    text.push_str(noun);
    text.push(' ');
    let _ = push_quoted(&mut text, image_use.name);
    text.push_str(" image ");
    show_image(&mut text, image_use.image);
    text
}

fn plural(n: usize, one: &'static str, many: &'static str) -> &'static str {
    if n == 1 { one } else { many }
}

/// `CVE-1, CVE-2` — the first [`MAX_IDS`] of `count` findings, then how many more.
fn push_ids<'f>(out: &mut String, count: usize, findings: impl Iterator<Item = &'f Finding>) {
    let mut ids = findings.take(MAX_IDS).map(|finding| &finding.id);
    if let Some(first) = ids.next() {
        // Gathered first, so that the interner's lock is taken once, not once an ID.
        let mut shown = [first; MAX_IDS];
        let mut len = 1;
        for (slot, id) in shown[1..].iter_mut().zip(ids) {
            *slot = id;
            len += 1;
        }
        VulnId::push_joined(out, &shown[..len], ", ");
    }
    if let Some(more) = count.checked_sub(MAX_IDS).filter(|m| *m > 0) {
        let _ = write!(out, " and {more} more");
    }
}
