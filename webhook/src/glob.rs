//! Globs on `/`-separated names: `*` matches within one segment, `**` any number of
//! whole segments. Segments compare exactly, so `myreg.io/**` never matches
//! `myreg.io.evil.com/x` and `docker.io/acme/*` never matches `docker.io/acmeevil/x`.

use std::fmt;

use crate::image::{
    DOCKER_HUB, canonical_registry, is_registry_component, split_once_byte, validate_component,
    validate_registry,
};

/// A compiled glob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Glob {
    source: String,
    segments: Vec<Segment>,
    /// The same match as a string comparison, for the usual shapes.
    literal: Option<Literal>,
}

/// Globs without `*` inside a segment, compared as strings.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Literal {
    /// No wildcard: the name itself.
    Exact(String),
    /// Literal segments then a final `**`: that path or anything under it.
    Under(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    /// `**`: zero or more whole segments.
    Any,
    /// Literal pieces separated by `*`; one piece means an exact segment.
    Pieces(Vec<String>),
}

impl Glob {
    /// A glob on repositories (`registry/path`, no tag or digest), normalized exactly
    /// as references are ([`crate::image`]): `nginx` is `docker.io/library/nginx`,
    /// `docker.io/nginx` too, `index.docker.io/**` is `docker.io/**`, `ghcr.io:443/**`
    /// is `ghcr.io/**`. A pattern no repository could match is an error.
    pub fn repository(pattern: &str) -> Result<Self, String> {
        check_characters(pattern, REPOSITORY_CHARACTERS, "repository")?;
        let normalized = normalize_repository(pattern)?;
        Self::parse(pattern, &normalized)
    }

    /// A glob on namespace names (DNS labels: lowercase letters, digits, `-`).
    pub fn new(pattern: &str) -> Result<Self, String> {
        check_characters(pattern, NAMESPACE_CHARACTERS, "namespace")?;
        Self::parse(pattern, pattern)
    }

    /// A glob on user names (`system:serviceaccount:argocd:*`, `*@example.com`): any
    /// characters but whitespace and control characters, compared exactly (case too).
    pub fn user(pattern: &str) -> Result<Self, String> {
        if pattern.is_empty() {
            return Err("pattern is empty".into());
        }
        if let Some(c) = pattern
            .chars()
            .find(|c| c.is_whitespace() || c.is_control())
        {
            return Err(format!(
                "pattern {pattern:?} has the character {c:?}, which no user name contains"
            ));
        }
        Self::parse(pattern, pattern)
    }

    /// Compiles `normalized`; errors and display quote `source`, as the user wrote it.
    fn parse(source: &str, normalized: &str) -> Result<Self, String> {
        let segments = normalized
            .split('/')
            .map(|segment| match segment {
                "" => Err(format!("pattern {source:?} has an empty path segment")),
                "**" => Ok(Segment::Any),
                s if s.contains("**") => {
                    Err(format!("pattern {source:?}: `**` must be a whole segment"))
                }
                s => Ok(Segment::Pieces(s.split('*').map(str::to_owned).collect())),
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Glob {
            source: source.to_owned(),
            literal: literal(&segments),
            segments,
        })
    }

    /// Whether `name` matches.
    pub fn matches(&self, name: &str) -> bool {
        match &self.literal {
            Some(Literal::Exact(exact)) => name == exact,
            Some(Literal::Under(path)) => name
                .strip_prefix(path.as_str())
                .is_some_and(|rest| rest.is_empty() || rest.starts_with('/')),
            None => match_segments(&self.segments, Some(name)),
        }
    }

    /// The pattern as the user wrote it.
    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// The pattern as it is matched: normalized like references (`nginx` is
    /// `docker.io/library/nginx`).
    pub fn normalized(&self) -> String {
        let segments: Vec<String> = self
            .segments
            .iter()
            .map(|segment| match segment {
                Segment::Any => "**".to_owned(),
                Segment::Pieces(pieces) => pieces.join("*"),
            })
            .collect();
        segments.join("/")
    }
}

impl fmt::Display for Glob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

/// Characters a repository (`registry[:port]/path`, IPv6 hosts in brackets) can hold,
/// and `*`.
const REPOSITORY_CHARACTERS: &str = "abcdefghijklmnopqrstuvwxyz0123456789._-/:[]*";
/// Characters a namespace name can hold, and `*`.
const NAMESPACE_CHARACTERS: &str = "abcdefghijklmnopqrstuvwxyz0123456789-*";

/// Refuses an empty pattern and characters no `what` name contains.
fn check_characters(pattern: &str, allowed: &str, what: &str) -> Result<(), String> {
    if pattern.is_empty() {
        return Err("pattern is empty".into());
    }
    match pattern.chars().find(|c| !allowed.contains(*c)) {
        None => Ok(()),
        Some(c) if c.is_uppercase() || c.is_whitespace() || c.is_control() => Err(format!(
            "pattern {pattern:?} has the character {c:?} (patterns are lowercase, without spaces)"
        )),
        Some('@') => Err(format!(
            "pattern {pattern:?} has the character '@': patterns match repositories, without tag or digest"
        )),
        Some(c) => Err(format!(
            "pattern {pattern:?} has the character {c:?}, which no {what} name contains"
        )),
    }
}

/// `pattern` as the runtime would normalize a reference written that way; literal
/// parts are checked as references are, so a pattern that cannot match is an error.
fn normalize_repository(pattern: &str) -> Result<String, String> {
    let bad = |why: String| format!("pattern {pattern:?}: {why}");
    let Some((first, path)) = pattern.split_once('/') else {
        // One component: an official Docker Hub image, like the reference `nginx`.
        if pattern == "**" {
            return Ok(pattern.to_owned());
        }
        if let Some((name, after)) = pattern.split_once(':') {
            return Err(bad(format!(
                "\":{after}\" is a tag or port; patterns match repositories without tags (write {name:?}, or \"{pattern}/**\" for a registry)"
            )));
        }
        if pattern.contains('.') && !pattern.contains('*') {
            return Err(bad(format!(
                "a registry without a repository (write \"{pattern}/**\" for the registry, or \"docker.io/library/{pattern}\" for a Docker Hub image)"
            )));
        }
        check_path(pattern).map_err(bad)?;
        return Ok(format!("{DOCKER_HUB}/library/{pattern}"));
    };
    let (registry, path) = if is_registry_component(first) || first.contains('*') {
        if !first.contains('*') {
            validate_registry(first).map_err(|e| bad(e.to_string()))?;
        } else if let Some((_, port)) = first.rsplit_once(':')
            && !port.chars().all(|c| c.is_ascii_digit() || c == '*')
        {
            return Err(bad(format!("port {port:?} is not a number")));
        }
        (canonical_registry(first), path)
    } else {
        (DOCKER_HUB.to_owned(), pattern)
    };
    check_path(path).map_err(bad)?;
    let library = registry == DOCKER_HUB && !path.contains('/') && path != "**";
    Ok(if library {
        format!("{registry}/library/{path}")
    } else {
        format!("{registry}/{path}")
    })
}

/// Checks each literal path component as a reference's; components with `*` by their
/// characters.
fn check_path(path: &str) -> Result<(), String> {
    for component in path.split('/') {
        if component.is_empty() {
            continue; // reported by the glob's own parse
        }
        if !component.contains('*') {
            validate_component(component).map_err(|e| e.to_string())?;
        } else if let Some(c) = component.chars().find(|c| ":[]".contains(*c)) {
            return Err(format!(
                "{c:?} cannot appear in a repository path component ({component:?})"
            ));
        }
    }
    Ok(())
}

/// Matches `pattern` against the rest of a name (`None` once every segment is used),
/// walking the string without allocating: this runs for every policy on every request.
fn match_segments(pattern: &[Segment], name: Option<&str>) -> bool {
    match pattern.split_first() {
        None => name.is_none(),
        Some((Segment::Any, rest)) => {
            let mut remaining = name;
            loop {
                if match_segments(rest, remaining) {
                    return true;
                }
                match remaining {
                    Some(n) => remaining = first_segment(n).1,
                    None => return false,
                }
            }
        }
        Some((Segment::Pieces(pieces), rest)) => match name {
            Some(n) => {
                let (first, remaining) = first_segment(n);
                match_pieces(pieces, first) && match_segments(rest, remaining)
            }
            None => false,
        },
    }
}

/// The string comparison `segments` amount to, if they are literal segments, optionally
/// ending in one `**` (`ghcr.io/acme/**`, most patterns written).
fn literal(segments: &[Segment]) -> Option<Literal> {
    let (under, literals) = match segments.split_last() {
        Some((Segment::Any, rest)) if !rest.is_empty() => (true, rest),
        _ => (false, segments),
    };
    let words: Vec<&str> = literals
        .iter()
        .map(|segment| match segment {
            Segment::Pieces(pieces) if pieces.len() == 1 => Some(pieces[0].as_str()),
            _ => None,
        })
        .collect::<Option<_>>()?;
    let path = words.join("/");
    Some(if under {
        Literal::Under(path)
    } else {
        Literal::Exact(path)
    })
}

/// The first segment of a name, and the rest after its `/`.
fn first_segment(name: &str) -> (&str, Option<&str>) {
    match split_once_byte(name, b'/') {
        Some((first, rest)) => (first, Some(rest)),
        None => (name, None),
    }
}

/// `pieces` are the literals between `*`s of one segment.
fn match_pieces(pieces: &[String], segment: &str) -> bool {
    let [first, middle @ .., last] = pieces else {
        return pieces.first().is_some_and(|p| p == segment);
    };
    let Some(mut rest) = segment.strip_prefix(first.as_str()) else {
        return false;
    };
    for piece in middle {
        match rest.find(piece.as_str()) {
            Some(i) => rest = &rest[i + piece.len()..],
            None => return false,
        }
    }
    rest.len() >= last.len() && rest.ends_with(last.as_str())
}

/// Whether any glob in the list matches.
pub fn any_match(globs: &[Glob], name: &str) -> bool {
    globs.iter().any(|g| g.matches(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_whole_segments() {
        let cases: &[(&str, &str, bool)] = &[
            ("myreg.io/**", "myreg.io/a/b", true),
            ("myreg.io/**", "myreg.io.evil.com/a", false),
            ("myreg.io/*", "myreg.io/a/b", false),
            ("myreg.io/*", "myreg.io/a", true),
            ("docker.io/acme/*", "docker.io/acmeevil/x", false),
            ("docker.io/acme/**", "docker.io/acme", true),
            ("docker.io/acme*/**", "docker.io/acmeevil/x", true),
            ("ghcr.io/**/api", "ghcr.io/a/b/api", true),
            ("ghcr.io/**/api", "ghcr.io/api", true),
            ("ghcr.io/**/api", "ghcr.io/a/api2", false),
            ("*.acme.com/**", "harbor.acme.com/x", true),
            ("*.acme.com/**", "acme.com/x", false),
            ("ghcr.io/a*b*c", "ghcr.io/abc", true),
            ("ghcr.io/a*b*c", "ghcr.io/axxbyyc", true),
            ("ghcr.io/a*b*c", "ghcr.io/acb", false),
            ("ghcr.io/ab*ba", "ghcr.io/aba", false),
            ("nginx", "docker.io/library/nginx", true),
            ("acme/*", "docker.io/acme/api", true),
            ("**", "anything/at/all", true),
            ("localhost:5000/**", "localhost:5000/x", true),
            // One name per registry, patterns normalized exactly like references.
            ("docker.io/**", "docker.io/library/nginx", true),
            ("index.docker.io/**", "docker.io/acme/api", true),
            ("registry-1.docker.io/acme/*", "docker.io/acme/api", true),
            ("docker.io/nginx", "docker.io/library/nginx", true),
            ("docker.io/*", "docker.io/library/nginx", true),
            ("docker.io/*", "docker.io/acme/api", false),
            ("ghcr.io:443/evil/**", "ghcr.io/evil/x", true),
            ("ghcr.io/evil/**", "ghcr.io/evil/x", true),
            ("ghcr.io:4443/**", "ghcr.io/evil/x", false),
            ("*", "docker.io/library/nginx", true),
            ("[::1]:5000/**", "[::1]:5000/a", true),
            ("*.acme.com:*/**", "harbor.acme.com:8443/x", true),
        ];
        for (pattern, name, want) in cases {
            let g = Glob::repository(pattern).unwrap();
            assert_eq!(g.matches(name), *want, "{pattern} ~ {name}");
        }
        let ns = Glob::new("prod-*").unwrap();
        assert!(ns.matches("prod-eu"));
        assert!(!ns.matches("staging-prod-eu"));
    }

    #[test]
    fn rejects_bad_patterns() {
        for bad in [
            "",
            "a//b",
            "ghcr.io/a**",
            "ghcr.io/**x/y",
            "Ghcr.io/a",
            "ghcr.io/a b",
            "a\u{0}",
            "acme/",
        ] {
            assert!(Glob::new(bad).is_err(), "{bad:?}");
            assert!(Glob::repository(bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            Glob::repository("acme/").unwrap_err(),
            "pattern \"acme/\" has an empty path segment"
        );
    }

    /// Patterns no repository can match are errors that say why, never silent no-ops.
    #[test]
    fn patterns_that_cannot_match_are_refused() {
        let cases: &[(&str, &str)] = &[
            (
                "[unclosed",
                "invalid repository path component \"[unclosed\"",
            ),
            (
                "docker.io/nginx@sha256",
                "has the character '@': patterns match repositories, without tag or digest",
            ),
            (
                "nginx:1.25",
                "\":1.25\" is a tag or port; patterns match repositories without tags",
            ),
            (
                "ghcr.io:https/**",
                "invalid registry host \"ghcr.io:https\"",
            ),
            ("*.acme.com:x*/**", "port \"x*\" is not a number"),
            ("ghcr.io", "a registry without a repository"),
            ("ghcr.io/a..b", "invalid repository path component \"a..b\""),
            ("ghcr.io/-a", "invalid repository path component \"-a\""),
            (
                "ghcr.io/a*:b",
                "':' cannot appear in a repository path component",
            ),
            (
                "ghcr.io/a%b",
                "has the character '%', which no repository name contains",
            ),
        ];
        for (pattern, wanted) in cases {
            let error = Glob::repository(pattern).expect_err(pattern);
            assert!(error.contains(wanted), "{pattern}: {error}");
        }
        assert!(
            Glob::new("team_a")
                .unwrap_err()
                .contains("which no namespace name contains")
        );
        assert!(Glob::new("team-*").is_ok());
    }

    proptest::proptest! {
        /// The string comparison of literal patterns decides exactly as segment matching.
        #[test]
        fn literal_patterns_match_as_segments_do(
            pattern in "[ab]{1,2}(/[ab*]{1,2}){0,3}(/\\*\\*)?",
            name in "[ab]{0,2}(/[ab]{0,2}){0,4}",
        ) {
            let glob = Glob::user(&pattern).unwrap();
            proptest::prop_assert_eq!(
                glob.matches(&name),
                match_segments(&glob.segments, Some(&name)),
                "{} {}", pattern, name
            );
        }
    }
}
