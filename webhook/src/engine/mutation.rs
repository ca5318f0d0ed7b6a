//! What the mutating webhook changes in a Pod, as a plan: images pinned to the digest
//! resolved (and scanned) at admission, and security settings filled in where the Pod
//! leaves them unset. Pure, like the decision: digests come in through
//! [`DigestResults`]; the admission layer turns the plan into a JSONPatch.

use std::borrow::Cow;

use super::Review;
use crate::image::ImageRef;
use crate::policy::{MutationRule, PolicySet};
use crate::workload::{ImageUse, SecurityContext, Slot};

/// A tag's digest, as far as the caller could resolve it before planning.
pub trait DigestResults {
    /// The digest `image`'s tag points at, or why it is not known.
    fn digest(&self, image: &ImageRef) -> Result<String, Unresolved>;
}

/// Why a tag's digest is not known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unresolved {
    /// The kind of reason (a metric label).
    pub cause: UnresolvedCause,
    /// The reason, for the annotation and the warning.
    pub reason: Cow<'static, str>,
}

/// The kinds of reason a tag stays unpinned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnresolvedCause {
    /// No RegistryIntegration covers the registry.
    NoIntegration,
    /// The registry says the tag does not exist.
    TagNotFound,
    /// The last digest known is older than `maxTagAge` allows.
    DigestTooOld,
    /// The registry did not answer (down, slow, refused, or not yet asked).
    RegistryUnavailable,
    /// More images than one request looks up.
    TooManyImages,
}

impl UnresolvedCause {
    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            UnresolvedCause::NoIntegration => "no-integration",
            UnresolvedCause::TagNotFound => "tag-not-found",
            UnresolvedCause::DigestTooOld => "digest-too-old",
            UnresolvedCause::RegistryUnavailable => "registry-unavailable",
            UnresolvedCause::TooManyImages => "too-many-images",
        }
    }
}

/// An image a policy asks to pin that stays as written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unpinned {
    /// The image as written.
    pub image: String,
    /// Why.
    pub why: Unresolved,
}

/// One image pinned to its digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pin {
    /// Where the container is.
    pub slot: Slot,
    /// Its position in that list.
    pub index: usize,
    /// The container's name.
    pub container: String,
    /// The image as written.
    pub written: String,
    /// The image as it will run: written, `@` the digest.
    pub pinned: String,
}

/// Security settings filled in on one container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerDefaults {
    /// Where the container is.
    pub slot: Slot,
    /// Its position in that list.
    pub index: usize,
    /// The container's name.
    pub container: String,
    /// Whether it has a `securityContext` object already.
    pub has_security_context: bool,
    /// Whether that has a `capabilities` object already.
    pub has_capabilities: bool,
    /// `allowPrivilegeEscalation: false`.
    pub no_privilege_escalation: bool,
    /// `capabilities.drop: [ALL]`.
    pub drop_all: bool,
}

/// The Pod-level settings filled in.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PodDefaults {
    /// Whether the Pod has a `securityContext` object already.
    pub has_security_context: bool,
    /// `runAsNonRoot: true`.
    pub run_as_non_root: bool,
    /// `seccompProfile: {type: RuntimeDefault}`.
    pub seccomp_runtime_default: bool,
}

/// Everything the mutating webhook changes in one Pod, in a stable order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// Images pinned, in pod-spec order.
    pub pins: Vec<Pin>,
    /// Images that a policy asks to pin but cannot be, in pod-spec order.
    pub unpinned: Vec<Unpinned>,
    /// Pod-level defaults.
    pub pod: PodDefaults,
    /// Container-level defaults, in pod-spec order.
    pub containers: Vec<ContainerDefaults>,
}

impl Plan {
    /// Whether the plan changes nothing.
    pub fn is_empty(&self) -> bool {
        self.pins.is_empty()
            && self.unpinned.is_empty()
            && !self.pod.run_as_non_root
            && !self.pod.seccomp_runtime_default
            && self.containers.is_empty()
    }

    /// What the plan changes, one line each, in the order the patch makes the changes.
    pub fn changes(&self) -> Vec<String> {
        let mut lines = Vec::new();
        for pin in &self.pins {
            lines.push(format!(
                "{} {:?} image {} pinned to {}",
                pin.slot.noun(),
                pin.container,
                pin.written,
                pin.pinned
            ));
        }
        for c in &self.containers {
            let at = format!("{} {:?} securityContext", c.slot.noun(), c.container);
            if c.no_privilege_escalation {
                lines.push(format!("{at}.allowPrivilegeEscalation set to false"));
            }
            if c.drop_all {
                lines.push(format!("{at}.capabilities.drop set to [ALL]"));
            }
        }
        if self.pod.run_as_non_root {
            lines.push("pod securityContext.runAsNonRoot set to true".into());
        }
        if self.pod.seccomp_runtime_default {
            lines.push("pod securityContext.seccompProfile set to RuntimeDefault".into());
        }
        for u in &self.unpinned {
            lines.push(format!(
                "image {} stays unpinned: {}",
                u.image, u.why.reason
            ));
        }
        lines
    }
}

/// Where a plan may change a Pod: all of it on CREATE; only the ephemeral containers
/// being added on `pods/ephemeralcontainers` (the rest of a running Pod, and ephemeral
/// containers that already exist, are immutable).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope<'s> {
    /// A Pod being created.
    WholePod,
    /// The ephemeral containers not named here (those the Pod already has).
    NewEphemeralContainers(&'s [String]),
}

impl Review<'_> {
    /// The union of the applying policies' `mutate` rules for one image, or — with
    /// `None` — for the Pod (policies that cover any of its images, as pod-level rules
    /// apply).
    fn mutation_for(&self, set: &PolicySet, image: Option<&ImageRef>) -> MutationRule {
        let mut union = MutationRule::default();
        for (policy, _) in self.policies(set) {
            let Some(rule) = policy.mutate else { continue };
            let covered = match image {
                Some(image) => policy.image_scope.matches(image.repository()),
                None => {
                    policy.image_scope.takes_every_image()
                        || self.images.iter().any(|(_, parsed)| {
                            parsed
                                .as_ref()
                                .is_ok_and(|i| policy.image_scope.matches(i.repository()))
                        })
                }
            };
            if covered {
                union.pin_digests |= rule.pin_digests;
                union.run_as_non_root |= rule.run_as_non_root;
                union.no_privilege_escalation |= rule.no_privilege_escalation;
                union.drop_all_capabilities |= rule.drop_all_capabilities;
                union.seccomp_runtime_default |= rule.seccomp_runtime_default;
            }
        }
        union
    }

    /// The container image uses a plan in `scope` may change, with their parsed
    /// references.
    fn mutable<'s>(
        &'s self,
        scope: Scope<'s>,
    ) -> impl Iterator<Item = (&'s ImageUse<'s>, &'s ImageRef)> {
        self.images.iter().filter_map(move |(image_use, parsed)| {
            let in_scope = match scope {
                Scope::WholePod => image_use.slot != Slot::Volume,
                Scope::NewEphemeralContainers(existing) => {
                    image_use.slot == Slot::EphemeralContainer
                        && !existing.iter().any(|name| name == image_use.name)
                }
            };
            Some((image_use, parsed.as_deref().ok().filter(|_| in_scope)?))
        })
    }

    /// The images whose digests a plan needs: tags a policy asks to pin.
    pub fn digests_to_pin<'s>(&'s self, set: &PolicySet, scope: Scope<'s>) -> Vec<&'s ImageRef> {
        let mut needed: Vec<&ImageRef> = Vec::new();
        for (_, image) in self.mutable(scope) {
            if image.digest().is_none()
                && self.mutation_for(set, Some(image)).pin_digests
                && !needed.contains(&image)
            {
                needed.push(image);
            }
        }
        needed
    }

    /// What the applying policies change in this Pod, within `scope`.
    pub fn mutation(&self, set: &PolicySet, scope: Scope<'_>, digests: &dyn DigestResults) -> Plan {
        let mut plan = Plan::default();
        if self.oversized.is_some() {
            return plan;
        }
        let linux = !self.subject.spec.is_windows();
        for (image_use, image) in self.mutable(scope) {
            let rule = self.mutation_for(set, Some(image));
            if rule.pin_digests && image.digest().is_none() {
                match digests.digest(image) {
                    Ok(digest) => plan.pins.push(Pin {
                        slot: image_use.slot,
                        index: image_use.index,
                        container: image_use.name.to_owned(),
                        written: image_use.image.to_owned(),
                        pinned: format!("{}@{digest}", image_use.image),
                    }),
                    Err(why) => plan.unpinned.push(Unpinned {
                        image: image_use.image.to_owned(),
                        why,
                    }),
                }
            }
            if let Some(defaults) = container_defaults(image_use, rule, linux) {
                plan.containers.push(defaults);
            }
        }
        if scope == Scope::WholePod {
            plan.pod = self.pod_defaults(self.mutation_for(set, None));
        }
        plan
    }

    fn pod_defaults(&self, rule: MutationRule) -> PodDefaults {
        let spec = self.subject.spec;
        let pod = spec.security_context.as_ref();
        // A Pod without containers runs nothing (the API server refuses it), and may have
        // no spec to put Pod-level settings under.
        if spec.containers.as_ref().is_none_or(Vec::is_empty) {
            return PodDefaults {
                has_security_context: pod.is_some(),
                ..PodDefaults::default()
            };
        }
        // An explicit runAsUser 0 anywhere is the author's choice to run as root:
        // runAsNonRoot would only keep the Pod from starting.
        let root_written = pod.and_then(|p| p.run_as_user) == Some(0)
            || spec
                .images()
                .any(|u| u.security.and_then(|s| s.run_as_user) == Some(0));
        PodDefaults {
            has_security_context: pod.is_some(),
            run_as_non_root: rule.run_as_non_root
                && pod.and_then(|p| p.run_as_non_root).is_none()
                && !root_written,
            seccomp_runtime_default: rule.seccomp_runtime_default
                && !spec.is_windows()
                && !pod.is_some_and(|p| p.seccomp_profile),
        }
    }
}

/// The container-level defaults `rule` fills in on one container, if any. The API
/// server refuses `allowPrivilegeEscalation: false` beside `privileged: true` or an
/// added `SYS_ADMIN`, and both settings in a Windows Pod (`linux` false), so those
/// containers keep what they have.
fn container_defaults(
    image_use: &ImageUse<'_>,
    rule: MutationRule,
    linux: bool,
) -> Option<ContainerDefaults> {
    if !linux {
        return None;
    }
    let default = SecurityContext::default();
    let sc = image_use.security.unwrap_or(&default);
    let escalates_anyway = sc.privileged == Some(true)
        || sc
            .capabilities
            .iter()
            .flat_map(|c| c.add.iter().flatten())
            .any(|cap| crate::policy::normalize_capability(cap) == "SYS_ADMIN");
    let defaults = ContainerDefaults {
        slot: image_use.slot,
        index: image_use.index,
        container: image_use.name.to_owned(),
        has_security_context: image_use.security.is_some(),
        has_capabilities: sc.capabilities.is_some(),
        no_privilege_escalation: rule.no_privilege_escalation
            && sc.allow_privilege_escalation.is_none()
            && !escalates_anyway,
        drop_all: rule.drop_all_capabilities && sc.capabilities.as_ref().is_none_or(|c| !c.drop),
    };
    (defaults.no_privilege_escalation || defaults.drop_all).then_some(defaults)
}
