//! The decision: a pure function of (policy snapshot, workload, scan results, now).
//! No I/O and no clock reads here, so the webhook and `portcullis check` agree.

mod decision;
pub mod mutation;
mod rules;

pub use decision::truncate;
pub use decision::{Decision, Line, Violation};

use std::collections::HashSet;
use std::sync::Arc;
use std::time::SystemTime;

use crate::image::{ImageError, ImageRef};
use crate::policy::{ImageScope, Matching, NamespaceView, PolicySet};
use crate::scan::ScanResults;
use crate::workload::{ImageUse, PodSpec, WorkloadKind};

/// The object under review.
#[derive(Debug, Clone, Copy)]
pub struct Subject<'a> {
    /// Its kind.
    pub kind: WorkloadKind,
    /// Its namespace.
    pub namespace: &'a str,
    /// What is known of the namespace's labels.
    pub labels: NamespaceView<'a>,
    /// Its name (as messages show it).
    pub name: &'a str,
    /// Its pod spec.
    pub spec: &'a PodSpec<'a>,
}

/// Most images (containers, init and ephemeral containers, image volumes) evaluated in
/// one object. No real workload comes near; an object with more is not evaluated image by
/// image, which bounds the work any request can cause.
pub const MAX_IMAGES: usize = 1000;

/// Up to this many images, duplicates are found by comparing each with those kept (no
/// hash set to build); past it, by hashing, so the work stays linear.
const FEW_IMAGES: usize = 16;

/// An object under review with its images parsed once: what it needs from the scan
/// service, then its decision.
#[derive(Debug)]
pub struct Review<'a> {
    subject: Subject<'a>,
    images: Vec<(ImageUse<'a>, Result<Arc<ImageRef>, ImageError>)>,
    /// How many images the object has, when more than [`MAX_IMAGES`].
    oversized: Option<usize>,
}

impl<'a> Review<'a> {
    /// Parses the subject's image references.
    pub fn new(subject: Subject<'a>) -> Self {
        let count = subject.spec.images().count();
        if count > MAX_IMAGES {
            return Review {
                subject,
                images: Vec::new(),
                oversized: Some(count),
            };
        }
        let images = subject
            .spec
            .images()
            .map(|u| (u, ImageRef::parse_shared(u.image)))
            .collect();
        Review {
            subject,
            images,
            oversized: None,
        }
    }

    /// The policies that apply to the subject, with whether that is assumed.
    fn policies<'s>(&'s self, set: &'s PolicySet) -> impl Iterator<Item = Matching<'s>> {
        let subject = &self.subject;
        set.matching(subject.namespace, subject.labels)
            .filter(|(policy, _)| {
                policy
                    .kinds
                    .as_ref()
                    .is_none_or(|kinds| kinds.contains(&subject.kind))
            })
    }

    /// How many policies of `set` apply to the subject (by namespace and kind).
    pub fn applying(&self, set: &PolicySet) -> usize {
        self.policies(set).count()
    }

    /// The distinct images whose scan results a vulnerability rule of an applying policy
    /// reads, in pod-spec order: all the decision will look up.
    pub fn scans_needed(&self, set: &PolicySet) -> Vec<&ImageRef> {
        let readers: Vec<&ImageScope> = self
            .policies(set)
            .filter(|(policy, _)| policy.vulnerabilities.is_some())
            .map(|(policy, _)| &policy.image_scope)
            .collect();
        if readers.is_empty() {
            return Vec::new();
        }
        // Not through `ScopeMatches`: `any` stops at the first reader that takes an image
        // in, so readers sharing a scope match each image once here anyway.
        let read = self
            .images
            .iter()
            .filter_map(|(_, parsed)| parsed.as_deref().ok())
            .filter(|image| {
                readers
                    .iter()
                    .any(|scope| scope.matches(image.repository()))
            });
        let mut needed: Vec<&ImageRef> = Vec::with_capacity(self.images.len());
        if self.images.len() <= FEW_IMAGES {
            for image in read {
                if !needed.contains(&image) {
                    needed.push(image);
                }
            }
        } else {
            let mut seen = HashSet::with_hasher(foldhash::fast::RandomState::default());
            needed.extend(read.filter(|image| seen.insert(*image)));
        }
        needed
    }

    /// Evaluates every policy of `set` that applies to the subject.
    pub fn decide(&self, set: &PolicySet, scans: &dyn ScanResults, now: SystemTime) -> Decision {
        let subject = &self.subject;
        let mut decision = Decision::new(subject);
        let shared: Vec<rules::Shared> = self.images.iter().map(|_| Default::default()).collect();
        let mut scopes = ScopeMatches::default();
        for (policy, assumed) in self.policies(set) {
            let mut eval = rules::Evaluation {
                policy,
                assumed,
                subject,
                scans,
                now,
                decision: &mut decision,
            };
            if let Some(count) = self.oversized {
                eval.oversized(count);
                continue;
            }
            let mut any_image = self.images.is_empty() && policy.image_scope.takes_every_image();
            // One flag per image (the loop below must not stop short of any image).
            let matched = scopes.of(&policy.image_scope, self);
            debug_assert_eq!(matched.len(), self.images.len());
            for (((image_use, parsed), shared), matched) in
                self.images.iter().zip(&shared).zip(matched)
            {
                match parsed {
                    Err(error) => eval.unparsable(image_use, error, shared),
                    Ok(image) if *matched => {
                        any_image = true;
                        eval.image(image_use, image, shared);
                    }
                    Ok(_) => {}
                }
            }
            if any_image {
                eval.pod();
            }
        }
        decision
    }
}

/// Evaluates every policy of `set` that applies to `subject`.
pub fn decide(
    set: &PolicySet,
    subject: &Subject<'_>,
    scans: &dyn ScanResults,
    now: SystemTime,
) -> Decision {
    Review::new(*subject).decide(set, scans, now)
}

/// Most distinct image scopes whose matches one review keeps; past them a scope's
/// matches are worked out again for each policy, so that comparing scopes stays cheap.
const KEPT_SCOPES: usize = 16;

/// Which of a review's images each image scope takes in, worked out once per distinct
/// scope: the applying policies usually share a few (`ghcr.io/acme/**`), and each would
/// otherwise match every image again.
#[derive(Default)]
struct ScopeMatches<'p> {
    kept: Vec<(&'p ImageScope, Vec<bool>)>,
    /// The last scope worked out when `kept` is full.
    spare: Vec<bool>,
}

impl<'p> ScopeMatches<'p> {
    /// For each of `review`'s images, whether `scope` takes it in (an image that does
    /// not parse: `false`).
    fn of(&mut self, scope: &'p ImageScope, review: &Review<'_>) -> &[bool] {
        let matches = |out: &mut Vec<bool>| {
            out.clear();
            out.extend(review.images.iter().map(|(_, parsed)| {
                parsed
                    .as_deref()
                    .is_ok_and(|image| scope.matches(image.repository()))
            }));
        };
        let at = match self.kept.iter().position(|(kept, _)| *kept == scope) {
            Some(at) => at,
            None if self.kept.len() < KEPT_SCOPES => {
                let mut out = Vec::with_capacity(review.images.len());
                matches(&mut out);
                self.kept.push((scope, out));
                self.kept.len() - 1
            }
            None => {
                matches(&mut self.spare);
                return &self.spare;
            }
        };
        &self.kept[at].1
    }
}

#[cfg(test)]
mod tests;
