//! Violations and how they become an admission answer.

use std::borrow::Cow;
use std::fmt::{self, Write};
use std::sync::Arc;

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
    pub policy: Arc<str>,
    /// What it does to the request.
    pub action: Action,
    /// The rule, as a field path under `spec.rules` (`vulnerabilities.maxCount`).
    pub rule: &'static str,
    /// What broke it: `container "api" image nginx:1.25` (shared by that image's
    /// violations), or `pod spec`.
    pub target: Arc<str>,
    /// The rule with the numbers that broke it.
    pub detail: Cow<'static, str>,
}

impl Violation {
    /// `container "api" image X violates ContainerPolicy "p": detail`.
    pub fn describe(&self) -> String {
        let mut text = String::new();
        let _ = self.describe_into(&mut text);
        text
    }

    /// [`Violation::describe`], written to `out` (messages are built in one buffer, or
    /// escaped straight into the answer).
    fn describe_into<W: Write>(&self, out: &mut W) -> fmt::Result {
        out.write_str(&self.target)?;
        out.write_str(" violates ContainerPolicy ")?;
        push_quoted(out, &self.policy)?;
        out.write_str(": ")?;
        out.write_str(&self.detail)
    }
}

/// Writes `text` quoted as `{:?}` would, without the formatter for the usual case of
/// nothing to escape (names are DNS labels).
pub(super) fn push_quoted<W: Write>(out: &mut W, text: &str) -> fmt::Result {
    if text
        .bytes()
        .all(|b| b == b' ' || (b.is_ascii_graphic() && b != b'"' && b != b'\\'))
    {
        out.write_char('"')?;
        out.write_str(text)?;
        out.write_char('"')
    } else {
        write!(out, "{text:?}")
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
            let _ = v.describe_into(&mut message);
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
        self.warning_lines().map(|line| line.to_string()).collect()
    }

    /// [`Decision::warnings`], not yet formatted: the answer formats each into one
    /// reused buffer instead of a `String` apiece.
    pub fn warning_lines(&self) -> impl Iterator<Item = Line<'_>> {
        self.lines(Action::Warn)
    }

    /// About how many bytes [`Decision::warnings`] take in the answer: each line's
    /// parts, its fixed words (32 bytes), and its JSON quotes, comma and the escapes of
    /// the quotes around the container's and the policy's names (7).
    pub fn warnings_len(&self) -> usize {
        let line = |v: &Violation| {
            self.object.len() + v.target.len() + v.policy.len() + v.detail.len() + 39
        };
        self.with_action(Action::Warn)
            .take(MAX_WARNINGS)
            .map(line)
            .sum()
    }

    /// One line per Audit violation, at most `MAX_WARNINGS`.
    pub fn audits(&self) -> Vec<String> {
        self.lines(Action::Audit)
            .map(|line| line.to_string())
            .collect()
    }

    /// A line per violation with `action`; past `MAX_WARNINGS`, the last says how many
    /// more there are.
    fn lines(&self, action: Action) -> impl Iterator<Item = Line<'_>> {
        let count = self.with_action(action).count();
        let shown = if count <= MAX_WARNINGS {
            count
        } else {
            MAX_WARNINGS - 1
        };
        let object = self.object.as_str();
        let more = (count > shown).then_some(Line {
            object,
            what: What::More(count - shown),
        });
        self.with_action(action)
            .take(shown)
            .map(move |violation| Line {
                object,
                what: What::Violation(violation),
            })
            .chain(more)
    }
}

/// One warning or audit line: `Deployment team-a/api: ` and a violation, or how many
/// more violations there are.
#[derive(Debug, Clone, Copy)]
pub struct Line<'d> {
    object: &'d str,
    what: What<'d>,
}

#[derive(Debug, Clone, Copy)]
enum What<'d> {
    Violation(&'d Violation),
    More(usize),
}

impl Line<'_> {
    /// The line, written to `out` (a `String` is written to directly, with no
    /// `Formatter` between; [`fmt::Display`] goes through this too).
    pub fn write_into<W: Write>(&self, out: &mut W) -> fmt::Result {
        out.write_str(self.object)?;
        out.write_str(": ")?;
        match self.what {
            What::Violation(violation) => violation.describe_into(out),
            What::More(more) => write!(out, "and {more} more violations"),
        }
    }
}

impl fmt::Display for Line<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.write_into(f)
    }
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
            prop_assert!(push_quoted(&mut out, &text).is_ok());
            prop_assert_eq!(out, format!("x{text:?}"));
        }
    }

    #[test]
    fn a_long_deny_message_ends_in_the_count_of_what_did_not_fit() {
        let violation = |i: usize| Violation {
            policy: format!("p{i}").into(),
            action: Action::Block,
            rule: "tags.denyLatest",
            target: "container \"app\" image nginx".into(),
            detail: "x".repeat(200).into(),
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
