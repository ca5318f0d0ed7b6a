//! The decision: a pure function of (policy snapshot, workload, scan results, now).
//! No I/O and no clock reads here, so the webhook and `portcullis check` agree.

mod decision;
mod rules;

pub(crate) use decision::truncate;
pub use decision::{Decision, Violation};

use std::time::SystemTime;

use crate::glob::any_match;
use crate::image::ImageRef;
use crate::policy::{CompiledPolicy, PolicySet};
use crate::scan::ScanResults;
use crate::workload::{PodSpec, WorkloadKind};

/// The object under review.
#[derive(Debug, Clone, Copy)]
pub struct Subject<'a> {
    /// Its kind.
    pub kind: WorkloadKind,
    /// Its namespace.
    pub namespace: &'a str,
    /// Its name (as messages show it).
    pub name: &'a str,
    /// Its pod spec.
    pub spec: &'a PodSpec<'a>,
}

/// Evaluates every policy of `set` that matches `subject`.
pub fn decide(
    set: &PolicySet,
    subject: &Subject<'_>,
    scans: &dyn ScanResults,
    now: SystemTime,
) -> Decision {
    let mut decision = Decision::new(subject);
    let images: Vec<_> = subject
        .spec
        .images()
        .map(|u| (u, ImageRef::parse(u.image)))
        .collect();
    for policy in set.policies_in(subject.namespace) {
        if !policy
            .kinds
            .as_ref()
            .is_none_or(|kinds| kinds.contains(&subject.kind))
        {
            continue;
        }
        let mut eval = rules::Evaluation {
            policy,
            subject,
            scans,
            now,
            decision: &mut decision,
        };
        let mut any_image = images.is_empty() && policy.images.is_none();
        for (image_use, parsed) in &images {
            match parsed {
                Err(error) => eval.unparsable(image_use, error),
                Ok(image) if matches_image(policy, image.repository()) => {
                    any_image = true;
                    eval.image(image_use, image);
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

fn matches_image(policy: &CompiledPolicy, repository: &str) -> bool {
    policy
        .images
        .as_ref()
        .is_none_or(|globs| any_match(globs, repository))
        && !any_match(&policy.exclude_images, repository)
}

#[cfg(test)]
mod tests;
