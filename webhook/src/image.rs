//! Image references, parsed and normalized the way the container runtime does.
//!
//! Grammar: distribution's `reference` package. Normalization: `nginx` →
//! `docker.io/library/nginx:latest`, and one name per registry ([`canonical_registry`]):
//! the host lowercased (DNS names are case-insensitive; a policy must not be dodged by
//! case), Docker Hub's aliases as `docker.io`, an explicit `:443` dropped.

use std::fmt;
use std::sync::{Arc, LazyLock};

/// The default registry of references without one.
pub const DOCKER_HUB: &str = "docker.io";
/// Other names the runtime pulls Docker Hub images by.
const DOCKER_HUB_ALIASES: [&str; 2] = ["index.docker.io", "registry-1.docker.io"];
/// The port a registry is reached on when none is written.
const DEFAULT_PORT: &str = ":443";
const MAX_NAME_LEN: usize = 255;
const MAX_TAG_LEN: usize = 128;
/// Most references [`ImageRef::parse_shared`] remembers. One is at most about 1.1 KB
/// (text and key), so the memo stays under 5 MiB.
const REMEMBERED: usize = 4096;

/// References parsed so far, by their text as written: replicas and rollouts send the
/// same few references over and over, and parsing one costs several times a lookup.
/// What does not parse is not remembered (it is parsed again, and said again).
static PARSED: LazyLock<quick_cache::sync::Cache<Box<str>, Arc<ImageRef>>> =
    LazyLock::new(|| quick_cache::sync::Cache::new(REMEMBERED));

/// Why an image reference does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ImageError {
    /// The reference is empty.
    #[error("is empty")]
    Empty,
    /// The reference has a character that no part of a reference may hold.
    #[error("contains a control character or whitespace")]
    ControlCharacter,
    /// The repository path has uppercase letters.
    #[error("repository name must be lowercase")]
    Uppercase,
    /// The repository name is longer than 255 characters.
    #[error("repository name is longer than {MAX_NAME_LEN} characters")]
    NameTooLong,
    /// A path component is malformed.
    #[error("invalid repository path component {0:?}")]
    BadComponent(String),
    /// The registry host or port is malformed.
    #[error("invalid registry host {0:?}")]
    BadRegistry(String),
    /// The tag is malformed.
    #[error("invalid tag {0:?}")]
    BadTag(String),
    /// The digest is malformed.
    #[error("invalid digest {0:?}")]
    BadDigest(String),
}

/// A parsed, normalized image reference, held as its one text
/// (`registry/path[:tag][@digest]`) and where its parts end: one allocation.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ImageRef {
    text: String,
    registry_len: usize,
    /// The repository is `text[..repository_len]`.
    repository_len: usize,
    /// The tag, when there is one, is `text[repository_len + 1..tag_end]`; the digest,
    /// when there is one, `text[tag_end + 1..]`.
    tag_end: usize,
}

impl ImageRef {
    /// Parses and normalizes a reference as written in a pod spec.
    pub fn parse(input: &str) -> Result<Self, ImageError> {
        if input.is_empty() {
            return Err(ImageError::Empty);
        }
        // Printable ASCII (the usual reference) has neither; only other text is read
        // char by char.
        if input.bytes().any(|b| !(0x21..0x7f).contains(&b))
            && input.chars().any(|c| c.is_control() || c.is_whitespace())
        {
            return Err(ImageError::ControlCharacter);
        }
        let (rest, digest) = match split_once_byte(input, b'@') {
            Some((name, digest)) => (name, Some(validate_digest(digest)?)),
            None => (input, None),
        };
        // A ':' after the last '/' separates the tag; one before it belongs to host:port.
        let last_slash = rest.bytes().rposition(|b| b == b'/').map_or(0, |i| i + 1);
        let (name, tag) = match find(&rest[last_slash..], b':') {
            Some(i) => {
                let tag = &rest[last_slash + i + 1..];
                if !valid_tag(tag) {
                    return Err(ImageError::BadTag(tag.to_owned()));
                }
                (&rest[..last_slash + i], Some(tag))
            }
            None => (rest, None),
        };
        if name.is_empty() {
            return Err(ImageError::Empty);
        }
        if name.len() > MAX_NAME_LEN {
            return Err(ImageError::NameTooLong);
        }
        let (registry, path) = split_registry(name)?;
        let mut components = path;
        while let Some((component, rest)) = split_once_byte(components, b'/') {
            validate_component(component)?;
            components = rest;
        }
        validate_component(components)?;
        let tag = match (tag, digest) {
            (None, None) => Some("latest"),
            (tag, _) => tag,
        };
        // `registry/[library/]path[:tag][@digest]`, built in place.
        let capacity = name.len() + DOCKER_HUB.len() + 9;
        let mut text = String::with_capacity(
            capacity + tag.map_or(0, |t| t.len() + 1) + digest.map_or(0, |d| d.len() + 1),
        );
        match registry {
            Some(host) => push_canonical_registry(&mut text, host),
            None => text.push_str(DOCKER_HUB),
        }
        let registry_len = text.len();
        text.push('/');
        if text[..registry_len] == *DOCKER_HUB && find(path, b'/').is_none() {
            text.push_str("library/");
        }
        text.push_str(path);
        let repository_len = text.len();
        if let Some(tag) = tag {
            text.push(':');
            text.push_str(tag);
        }
        let tag_end = text.len();
        if let Some(digest) = digest {
            text.push('@');
            text.push_str(digest);
        }
        Ok(ImageRef {
            text,
            registry_len,
            repository_len,
            tag_end,
        })
    }

    /// [`ImageRef::parse`], remembered: a reference parsed before is looked up, not
    /// parsed again (the result is the same, parsing being a function of the text).
    pub fn parse_shared(input: &str) -> Result<Arc<Self>, ImageError> {
        if let Some(parsed) = PARSED.get(input) {
            return Ok(parsed);
        }
        let parsed = Arc::new(ImageRef::parse(input)?);
        PARSED.insert(input.into(), Arc::clone(&parsed));
        Ok(parsed)
    }

    /// `registry/path`, what policy globs match against.
    pub fn repository(&self) -> &str {
        &self.text[..self.repository_len]
    }

    /// The registry host (and port).
    pub fn registry(&self) -> &str {
        &self.text[..self.registry_len]
    }

    /// The repository path within the registry.
    pub fn path(&self) -> &str {
        &self.text[self.registry_len + 1..self.repository_len]
    }

    /// The tag, if any (`latest` when neither tag nor digest was written).
    pub fn tag(&self) -> Option<&str> {
        self.text.get(self.repository_len + 1..self.tag_end)
    }

    /// The digest (`sha256:…`), if pinned.
    pub fn digest(&self) -> Option<&str> {
        self.text.get(self.tag_end + 1..)
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// The one name of a registry, as references, policy patterns, integrations,
/// credentials and the scan cache all use it: lowercase, Docker Hub's aliases
/// (`index.docker.io`, `registry-1.docker.io`) as `docker.io`, and an explicit default
/// port (`ghcr.io:443`) as the bare host. Nothing else normalizes a registry name.
pub fn canonical_registry(host: &str) -> String {
    let mut out = String::with_capacity(host.len());
    push_canonical_registry(&mut out, host);
    out
}

/// [`canonical_registry`], appended to `out`.
fn push_canonical_registry(out: &mut String, host: &str) {
    let bare = match host.len().checked_sub(DEFAULT_PORT.len()) {
        Some(end) if host.is_char_boundary(end) && host[end..] == *DEFAULT_PORT => &host[..end],
        _ => host,
    };
    if DOCKER_HUB_ALIASES
        .iter()
        .any(|alias| alias.eq_ignore_ascii_case(bare))
    {
        out.push_str(DOCKER_HUB);
    } else {
        let start = out.len();
        out.push_str(bare);
        out[start..].make_ascii_lowercase();
    }
}

/// Whether the first component of a name is a registry host, as the runtime decides:
/// it contains `.` or `:`, or is `localhost`.
pub(crate) fn is_registry_component(first: &str) -> bool {
    first.bytes().any(|b| b == b'.' || b == b':') || first == "localhost"
}

/// Where `byte` first is in `text`: a plain loop, cheaper than a `char` pattern's
/// search for the short texts of a reference.
fn find(text: &str, byte: u8) -> Option<usize> {
    text.bytes().position(|b| b == byte)
}

/// `text` before and after the first `byte` (ASCII, so both sides are on char
/// boundaries): `str::split_once` by [`find`]'s plain loop.
pub(crate) fn split_once_byte(text: &str, byte: u8) -> Option<(&str, &str)> {
    let at = find(text, byte)?;
    Some((&text[..at], &text[at + 1..]))
}

/// Splits `name` into the registry as written (`None`: Docker Hub) and the path.
fn split_registry(name: &str) -> Result<(Option<&str>, &str), ImageError> {
    match split_once_byte(name, b'/') {
        Some((first, rest)) if is_registry_component(first) => {
            validate_registry(first)?;
            Ok((Some(first), rest))
        }
        _ => Ok((None, name)),
    }
}

/// Checks a registry host (`host[:port]`, `[v6]:port`) as a reference may write it.
pub(crate) fn validate_registry(registry: &str) -> Result<(), ImageError> {
    let bad = || ImageError::BadRegistry(registry.to_owned());
    let (host, port) = if let Some(v6) = registry.strip_prefix('[') {
        let (addr, after) = v6.split_once(']').ok_or_else(bad)?;
        if addr.is_empty() || !addr.chars().all(|c| c.is_ascii_hexdigit() || c == ':') {
            return Err(bad());
        }
        let port = match after {
            "" => None,
            _ => Some(after.strip_prefix(':').ok_or_else(bad)?),
        };
        (None, port)
    } else {
        match split_once_byte(registry, b':') {
            Some((host, port)) => (Some(host), Some(port)),
            None => (Some(registry), None),
        }
    };
    if let Some(host) = host {
        let label_ok = |l: &[u8]| {
            !l.is_empty()
                && l.iter().all(|&b| b.is_ascii_alphanumeric() || b == b'-')
                && l.first() != Some(&b'-')
                && l.last() != Some(&b'-')
        };
        if !host.as_bytes().split(|&b| b == b'.').all(label_ok) {
            return Err(bad());
        }
    }
    if let Some(port) = port
        && (port.is_empty() || port.len() > 5 || !port.bytes().all(|b| b.is_ascii_digit()))
    {
        return Err(bad());
    }
    Ok(())
}

/// A path component: `[a-z0-9]+` joined by `.`, `_`, `__` or runs of `-`.
pub(crate) fn validate_component(component: &str) -> Result<(), ImageError> {
    if component.bytes().any(|b| b.is_ascii_uppercase()) {
        return Err(ImageError::Uppercase);
    }
    let bad = || ImageError::BadComponent(component.to_owned());
    let bytes = component.as_bytes();
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    if bytes.is_empty() || !alnum(bytes[0]) || !alnum(bytes[bytes.len() - 1]) {
        return Err(bad());
    }
    let mut i = 0;
    while i < bytes.len() {
        if alnum(bytes[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < bytes.len() && !alnum(bytes[i]) {
            i += 1;
        }
        let sep = &component[start..i];
        let ok = sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|b| b == b'-');
        if !ok {
            return Err(bad());
        }
    }
    Ok(())
}

fn valid_tag(tag: &str) -> bool {
    let word = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    let bytes = tag.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= MAX_TAG_LEN
        && word(bytes[0])
        && bytes.iter().all(|&b| word(b) || b == b'.' || b == b'-')
}

fn validate_digest(digest: &str) -> Result<&str, ImageError> {
    let bad = || ImageError::BadDigest(digest.to_owned());
    let (algorithm, hex) = split_once_byte(digest, b':').ok_or_else(bad)?;
    let hex_ok = |len: usize| {
        hex.len() == len
            && hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    let ok = match algorithm {
        "sha256" => hex_ok(64),
        "sha512" => hex_ok(128),
        _ => false,
    };
    if ok { Ok(digest) } else { Err(bad()) }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn normalizes_like_the_runtime() {
        let cases: &[(&str, &str, &str)] = &[
            (
                "nginx",
                "docker.io/library/nginx",
                "docker.io/library/nginx:latest",
            ),
            (
                "nginx:1.25",
                "docker.io/library/nginx",
                "docker.io/library/nginx:1.25",
            ),
            (
                "acme/api",
                "docker.io/acme/api",
                "docker.io/acme/api:latest",
            ),
            (
                "docker.io/nginx",
                "docker.io/library/nginx",
                "docker.io/library/nginx:latest",
            ),
            (
                "index.docker.io/acme/api:v1",
                "docker.io/acme/api",
                "docker.io/acme/api:v1",
            ),
            ("localhost/x", "localhost/x", "localhost/x:latest"),
            (
                "localhost:5000/x:1",
                "localhost:5000/x",
                "localhost:5000/x:1",
            ),
            (
                "registry.example.com:5000/a/b",
                "registry.example.com:5000/a/b",
                "registry.example.com:5000/a/b:latest",
            ),
            (
                "Registry.Example.COM/a",
                "registry.example.com/a",
                "registry.example.com/a:latest",
            ),
            (
                "registry-1.docker.io/library/nginx:1.25",
                "docker.io/library/nginx",
                "docker.io/library/nginx:1.25",
            ),
            (
                "Index.Docker.IO/nginx",
                "docker.io/library/nginx",
                "docker.io/library/nginx:latest",
            ),
            ("ghcr.io:443/evil/x:1", "ghcr.io/evil/x", "ghcr.io/evil/x:1"),
            (
                "docker.io:443/acme/api",
                "docker.io/acme/api",
                "docker.io/acme/api:latest",
            ),
            ("[::1]:443/a", "[::1]/a", "[::1]/a:latest"),
            ("ghcr.io:4443/a", "ghcr.io:4443/a", "ghcr.io:4443/a:latest"),
            ("[::1]:5000/a", "[::1]:5000/a", "[::1]:5000/a:latest"),
            (
                "ghcr.io/acme/a_b__c.d-e--f",
                "ghcr.io/acme/a_b__c.d-e--f",
                "ghcr.io/acme/a_b__c.d-e--f:latest",
            ),
        ];
        for (input, repo, full) in cases {
            let r = ImageRef::parse(input).unwrap_or_else(|e| panic!("{input}: {e}"));
            assert_eq!(r.repository(), *repo, "{input}");
            assert_eq!(r.to_string(), *full, "{input}");
        }
    }

    #[test]
    fn digest_is_the_identity() {
        let r = ImageRef::parse(&format!("ghcr.io/acme/api:v1@{D}")).unwrap();
        assert_eq!(r.tag(), Some("v1"));
        assert_eq!(r.digest(), Some(D));
        let r = ImageRef::parse(&format!("localhost:5000/api@{D}")).unwrap();
        assert_eq!(
            (r.registry(), r.path(), r.tag()),
            ("localhost:5000", "api", None)
        );
    }

    #[test]
    fn a_remembered_reference_is_the_one_parse_gives() {
        for input in [
            "nginx",
            "Index.Docker.IO/nginx",
            "ghcr.io:443/acme/api:v1",
            "remembered.example/a/b:c",
        ] {
            let first = ImageRef::parse_shared(input).unwrap_or_else(|e| panic!("{input}: {e}"));
            let again = ImageRef::parse_shared(input).unwrap_or_else(|e| panic!("{input}: {e}"));
            assert!(Arc::ptr_eq(&first, &again), "{input}: parsed again");
            assert_eq!(Ok(&*first), ImageRef::parse(input).as_ref(), "{input}");
        }
        // The memo is by exact text: a reference that normalizes alike is its own entry,
        // and one that does not parse is refused every time.
        let upper = ImageRef::parse_shared("Remembered.example/a/b:c");
        assert_eq!(
            upper.map(|r| r.to_string()).as_deref(),
            Ok("remembered.example/a/b:c")
        );
        for _ in 0..2 {
            assert_eq!(
                ImageRef::parse_shared("remembered.example/A"),
                Err(ImageError::Uppercase)
            );
        }
    }

    #[test]
    fn rejects_bad_references() {
        let long = format!("ghcr.io/{}", "a".repeat(4096));
        let cases: &[(&str, ImageError)] = &[
            ("", ImageError::Empty),
            ("NGINX", ImageError::Uppercase),
            ("acme/Api", ImageError::Uppercase),
            ("nginx\n", ImageError::ControlCharacter),
            ("ng\u{7}inx", ImageError::ControlCharacter),
            ("nginx latest", ImageError::ControlCharacter),
            (&long, ImageError::NameTooLong),
            (
                "nginx@sha256:abc",
                ImageError::BadDigest("sha256:abc".into()),
            ),
            (
                "nginx@sha256:0123456789ABCDEF0123456789abcdef0123456789abcdef0123456789abcdef",
                ImageError::BadDigest(
                    "sha256:0123456789ABCDEF0123456789abcdef0123456789abcdef0123456789abcdef"
                        .into(),
                ),
            ),
            ("nginx@md5:0123", ImageError::BadDigest("md5:0123".into())),
            ("nginx@", ImageError::BadDigest(String::new())),
            ("nginx:", ImageError::BadTag(String::new())),
            ("nginx:-x", ImageError::BadTag("-x".into())),
            ("nginx:a:b", ImageError::BadTag("a:b".into())),
            (":tag", ImageError::Empty),
            (
                "host:99999999/a",
                ImageError::BadRegistry("host:99999999".into()),
            ),
            (
                "bad_host.io/a",
                ImageError::BadRegistry("bad_host.io".into()),
            ),
            ("ghcr.io//a", ImageError::BadComponent(String::new())),
            ("ghcr.io/a/", ImageError::BadComponent(String::new())),
            ("ghcr.io/-a", ImageError::BadComponent("-a".into())),
            ("ghcr.io/a..b", ImageError::BadComponent("a..b".into())),
        ];
        for (input, want) in cases {
            assert_eq!(ImageRef::parse(input).as_ref(), Err(want), "{input:?}");
        }
        assert_eq!(
            ImageRef::parse(&format!("nginx:{}", "t".repeat(129))),
            Err(ImageError::BadTag("t".repeat(129)))
        );
    }
}
