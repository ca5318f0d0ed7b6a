//! Globs on `/`-separated names: `*` matches within one segment, `**` any number of
//! whole segments. Segments compare exactly, so `myreg.io/**` never matches
//! `myreg.io.evil.com/x` and `docker.io/acme/*` never matches `docker.io/acmeevil/x`.

use std::fmt;

use crate::image::DOCKER_HUB;

/// A compiled glob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Glob {
    source: String,
    segments: Vec<Segment>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    /// `**`: zero or more whole segments.
    Any,
    /// Literal pieces separated by `*`; one piece means an exact segment.
    Pieces(Vec<String>),
}

impl Glob {
    /// A glob on repositories. A pattern whose first segment is not a registry is
    /// normalized as the runtime normalizes references (`nginx` → `docker.io/library/nginx`).
    pub fn repository(pattern: &str) -> Result<Self, String> {
        let first = pattern.split('/').next().unwrap_or_default();
        let is_registry =
            pattern.is_empty() || first.contains(['.', ':', '*']) || first == "localhost";
        if is_registry {
            Self::parse(pattern, pattern)
        } else if pattern.contains('/') {
            Self::parse(pattern, &format!("{DOCKER_HUB}/{pattern}"))
        } else {
            Self::parse(pattern, &format!("{DOCKER_HUB}/library/{pattern}"))
        }
    }

    /// A glob on plain names such as namespaces.
    pub fn new(pattern: &str) -> Result<Self, String> {
        Self::parse(pattern, pattern)
    }

    /// Compiles `normalized`; errors and display quote `source`, as the user wrote it.
    fn parse(source: &str, normalized: &str) -> Result<Self, String> {
        if source.is_empty() {
            return Err("pattern is empty".into());
        }
        if let Some(c) = source
            .chars()
            .find(|c| c.is_control() || c.is_whitespace() || c.is_uppercase())
        {
            return Err(format!(
                "pattern {source:?} has the character {c:?} (patterns are lowercase, without spaces)"
            ));
        }
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
            .collect::<Result<_, _>>()?;
        Ok(Glob {
            source: source.to_owned(),
            segments,
        })
    }

    /// Whether `name` matches.
    pub fn matches(&self, name: &str) -> bool {
        match_segments(&self.segments, Some(name))
    }

    /// The pattern as the user wrote it.
    pub fn as_str(&self) -> &str {
        &self.source
    }
}

impl fmt::Display for Glob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
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

/// The first segment of a name, and the rest after its `/`.
fn first_segment(name: &str) -> (&str, Option<&str>) {
    match name.split_once('/') {
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
}
