//! Violations and how they become an admission answer.

use std::fmt::Write as _;

use portcullis_crds::Action;

use super::Subject;

/// Longest deny message; the API server and kubectl show it in one line.
const MAX_MESSAGE: usize = 4096;
/// Most warnings returned (the API server truncates long lists anyway).
const MAX_WARNINGS: usize = 20;
/// Longest image reference quoted in a message.
const MAX_IMAGE: usize = 200;

/// One broken rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// The ContainerPolicy's name.
    pub policy: String,
    /// What it does to the request.
    pub action: Action,
    /// The rule, as a field path under `spec.rules` (`vulnerabilities.maxCount`).
    pub rule: &'static str,
    /// What broke it: `container "api" image nginx:1.25`, or `pod spec`.
    pub target: String,
    /// The rule with the numbers that broke it.
    pub detail: String,
}

impl Violation {
    /// `container "api" image X violates ContainerPolicy "p": detail`.
    pub fn describe(&self) -> String {
        let mut text = String::new();
        self.describe_into(&mut text);
        text
    }

    /// [`Violation::describe`], appended to `out` (messages are built in one buffer).
    fn describe_into(&self, out: &mut String) {
        out.reserve(self.target.len() + self.policy.len() + self.detail.len() + 32);
        out.push_str(&self.target);
        out.push_str(" violates ContainerPolicy ");
        push_quoted(out, &self.policy);
        out.push_str(": ");
        out.push_str(&self.detail);
    }
}

/// Appends `text` quoted as `{:?}` would, without the formatter for the usual case of
/// nothing to escape (names are DNS labels).
pub(super) fn push_quoted(out: &mut String, text: &str) {
    if text
        .bytes()
        .all(|b| b == b' ' || (b.is_ascii_graphic() && b != b'"' && b != b'\\'))
    {
        out.push('"');
        out.push_str(text);
        out.push('"');
    } else {
        let _ = write!(out, "{text:?}");
    }
}

/// The outcome for one object: every violation of every matching policy, in a fixed
/// order (policies by name, then images in pod-spec order, then rules).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// `Deployment team-a/api`.
    pub object: String,
    /// Every violation found.
    pub violations: Vec<Violation>,
}

impl Decision {
    pub(super) fn new(subject: &Subject<'_>) -> Self {
        let kind = subject.kind.as_str();
        let mut object =
            String::with_capacity(kind.len() + subject.namespace.len() + subject.name.len() + 2);
        object.push_str(kind);
        object.push(' ');
        object.push_str(subject.namespace);
        object.push('/');
        object.push_str(subject.name);
        Decision {
            object,
            violations: Vec::new(),
        }
    }

    /// Whether the object is admitted: no Block violation.
    pub fn allowed(&self) -> bool {
        !self.violations.iter().any(|v| v.action == Action::Block)
    }

    fn with_action(&self, action: Action) -> impl Iterator<Item = &Violation> {
        self.violations.iter().filter(move |v| v.action == action)
    }

    /// The deny message: the object, then each Block violation, capped in length.
    pub fn deny_message(&self) -> Option<String> {
        let blocks: Vec<&Violation> = self.with_action(Action::Block).collect();
        if blocks.is_empty() {
            return None;
        }
        let mut message = String::with_capacity(MAX_MESSAGE / 2);
        message.push_str(&self.object);
        message.push_str(": ");
        for (i, v) in blocks.iter().enumerate() {
            let before = message.len();
            if i > 0 {
                message.push_str("; ");
            }
            v.describe_into(&mut message);
            if i > 0 && message.len() > MAX_MESSAGE {
                message.truncate(before);
                let _ = write!(message, "; and {} more violations", blocks.len() - i);
                break;
            }
        }
        Some(truncate(message, MAX_MESSAGE))
    }

    /// Whether any violation is a Warn.
    pub fn has_warnings(&self) -> bool {
        self.with_action(Action::Warn).next().is_some()
    }

    /// One warning per Warn violation, at most `MAX_WARNINGS`.
    pub fn warnings(&self) -> Vec<String> {
        lines(&self.object, self.with_action(Action::Warn))
    }

    /// One line per Audit violation, at most `MAX_WARNINGS`.
    pub fn audits(&self) -> Vec<String> {
        lines(&self.object, self.with_action(Action::Audit))
    }
}

fn lines<'a>(object: &str, violations: impl Iterator<Item = &'a Violation>) -> Vec<String> {
    let all: Vec<&Violation> = violations.collect();
    let line = |v: &Violation| {
        let mut text = String::with_capacity(object.len() + 2 + 160);
        text.push_str(object);
        text.push_str(": ");
        v.describe_into(&mut text);
        text
    };
    if all.len() <= MAX_WARNINGS {
        return all.into_iter().map(line).collect();
    }
    // Only what is shown is formatted.
    let more = all.len() - (MAX_WARNINGS - 1);
    let mut kept: Vec<String> = all[..MAX_WARNINGS - 1].iter().map(|v| line(v)).collect();
    kept.push(format!("{object}: and {more} more violations"));
    kept
}

/// Cuts `s` to at most `max` bytes, ending in `…` when cut.
pub fn truncate(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut cut = max - 3;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
        s.push('…');
    }
    s
}

/// An image reference as messages show it: as written, or quoted and shortened when it
/// holds characters a terminal or log should not get raw.
pub(super) fn show_image(out: &mut String, image: &str) {
    let plain = !image.is_empty()
        && image.len() <= MAX_IMAGE
        && image.bytes().all(|b| b.is_ascii_graphic() && b != b'"');
    if plain {
        out.push_str(image);
    } else {
        let short: String = image.chars().take(MAX_IMAGE).collect();
        let ellipsis = if short.len() < image.len() { "…" } else { "" };
        let _ = write!(out, "{short:?}{ellipsis}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// The fast path quotes exactly as `{:?}` does.
        #[test]
        fn push_quoted_is_debug(text in ".{0,24}") {
            let mut out = String::from("x");
            push_quoted(&mut out, &text);
            prop_assert_eq!(out, format!("x{text:?}"));
        }
    }

    #[test]
    fn a_long_deny_message_ends_in_the_count_of_what_did_not_fit() {
        let violation = |i: usize| Violation {
            policy: format!("p{i}"),
            action: Action::Block,
            rule: "tags.denyLatest",
            target: "container \"app\" image nginx".into(),
            detail: "x".repeat(200),
        };
        let decision = Decision {
            object: "Pod team-a/web".into(),
            violations: (0..100).map(violation).collect(),
        };
        let message = decision.deny_message().unwrap();
        assert!(message.len() <= MAX_MESSAGE, "{}", message.len());
        assert!(message.starts_with(
            "Pod team-a/web: container \"app\" image nginx violates ContainerPolicy \"p0\": xxx"
        ));
        let shown = message.matches("violates").count();
        assert!(
            message.ends_with(&format!("; and {} more violations", 100 - shown)),
            "{message}"
        );
    }
}
