//! Registry credentials from `kubernetes.io/dockerconfigjson` Secrets: parsed once per
//! Secret version, looked up by registry host, swapped in whole when Secrets change.

use std::collections::HashMap;
use std::sync::Arc;

use arc_swap::ArcSwap;
use base64::Engine;
use serde::Deserialize;

use crate::image::canonical_registry;

/// The Secret type that carries pull credentials.
pub const DOCKER_CONFIG_JSON_TYPE: &str = "kubernetes.io/dockerconfigjson";
/// The Secret data key that holds them.
pub const DOCKER_CONFIG_JSON_KEY: &str = ".dockerconfigjson";

/// A user name and password for one registry.
#[derive(Clone, PartialEq, Eq)]
pub struct Login {
    /// The user name.
    pub username: String,
    /// The password or token.
    pub password: String,
}

impl std::fmt::Debug for Login {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Login")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// The logins of one `.dockerconfigjson`, by registry host (`host[:port]`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DockerConfig {
    auths: HashMap<String, Login>,
}

#[derive(Deserialize)]
struct RawConfig {
    #[serde(default)]
    auths: HashMap<String, RawAuth>,
}

#[derive(Deserialize)]
struct RawAuth {
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
    #[serde(default)]
    auth: Option<String>,
}

/// Why a `.dockerconfigjson` is unusable (never carries a secret value).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CredentialsError {
    /// Not JSON shaped like a Docker config.
    #[error("{DOCKER_CONFIG_JSON_KEY} is not a Docker config JSON: {0}")]
    Malformed(String),
    /// An entry without usable credentials.
    #[error(
        "{DOCKER_CONFIG_JSON_KEY}: auths[{0:?}] has neither username/password nor a base64 user:password auth"
    )]
    Entry(String),
}

impl DockerConfig {
    /// Parses the JSON of a `.dockerconfigjson` key.
    pub fn parse(json: &[u8]) -> Result<Self, CredentialsError> {
        // serde's own message may quote the value it choked on (a credential): say
        // only where, and what kind of problem.
        let de = &mut serde_json::Deserializer::from_slice(json);
        let raw: RawConfig = serde_path_to_error::deserialize(de).map_err(|e| {
            let inner = e.inner();
            let what = match inner.classify() {
                serde_json::error::Category::Data => "a value of the wrong type or shape",
                _ => "invalid JSON",
            };
            CredentialsError::Malformed(format!(
                "{what} at {} (line {}, column {})",
                e.path(),
                inner.line(),
                inner.column()
            ))
        })?;
        let mut auths = HashMap::new();
        for (key, entry) in raw.auths {
            let login = match (entry.username, entry.password, entry.auth) {
                (Some(username), Some(password), _) => Login { username, password },
                (_, _, Some(auth)) => {
                    decode_auth(&auth).ok_or(CredentialsError::Entry(key.clone()))?
                }
                _ => return Err(CredentialsError::Entry(key)),
            };
            auths.insert(registry_host(&key), login);
        }
        Ok(DockerConfig { auths })
    }

    /// The login for a registry host, if the config has one.
    pub fn login_for(&self, registry: &str) -> Option<&Login> {
        self.auths.get(registry)
    }
}

fn decode_auth(auth: &str) -> Option<Login> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(auth.trim())
        .ok()?;
    let text = String::from_utf8(bytes).ok()?;
    let (username, password) = text.split_once(':')?;
    Some(Login {
        username: username.to_owned(),
        password: password.to_owned(),
    })
}

/// `https://index.docker.io/v1/`, `registry.example.com:5000/v2` and bare hosts all
/// become the registry's one name, as image references name it
/// ([`canonical_registry`]: `docker.io` for Docker Hub).
fn registry_host(key: &str) -> String {
    let without_scheme = key
        .strip_prefix("https://")
        .or_else(|| key.strip_prefix("http://"))
        .unwrap_or(key);
    canonical_registry(without_scheme.split('/').next().unwrap_or_default())
}

/// The credential Secrets Portcullis may use, by Secret name. Writers replace the map;
/// readers take a snapshot.
#[derive(Debug, Default, Clone)]
pub struct CredentialStore {
    secrets: Arc<ArcSwap<HashMap<String, Arc<DockerConfig>>>>,
    synced: Arc<std::sync::atomic::AtomicBool>,
}

impl CredentialStore {
    /// The parsed config of a Secret, if it exists and parsed.
    pub fn get(&self, secret: &str) -> Option<Arc<DockerConfig>> {
        self.secrets.load().get(secret).cloned()
    }

    /// How many Secrets are held.
    pub fn len(&self) -> usize {
        self.secrets.load().len()
    }

    /// Whether no Secret is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Replaces every Secret at once (local mode reloads, a watch re-list); from then
    /// on the store is synced.
    pub fn replace(&self, secrets: HashMap<String, Arc<DockerConfig>>) {
        self.secrets.store(Arc::new(secrets));
        self.synced
            .store(true, std::sync::atomic::Ordering::Release);
    }

    /// Whether every Secret has been read once: before that, a missing one may only be
    /// not listed yet.
    pub fn is_synced(&self) -> bool {
        self.synced.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Adds or replaces one Secret; `None` removes it.
    pub fn set(&self, secret: &str, config: Option<DockerConfig>) {
        self.secrets.rcu(|current| {
            let mut next = HashMap::clone(current);
            match &config {
                Some(config) => next.insert(secret.to_owned(), Arc::new(config.clone())),
                None => next.remove(secret),
            };
            next
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_each_way_docker_writes_logins() {
        let config = DockerConfig::parse(
            br#"{"auths": {
                "https://index.docker.io/v1/": {"auth": "aHViOnNlY3JldA=="},
                "Registry.Example.com:5000": {"username": "u", "password": "p:w"},
                "https://harbor.acme.com/v2/": {"username": "robot$ci", "password": "t", "auth": "ignored"},
                "GHCR.io:443": {"username": "g", "password": "h"}
            }}"#,
        )
        .unwrap();
        let login = |host| {
            config
                .login_for(host)
                .map(|l| (l.username.as_str(), l.password.as_str()))
        };
        assert_eq!(login("docker.io"), Some(("hub", "secret")));
        assert_eq!(login("registry.example.com:5000"), Some(("u", "p:w")));
        assert_eq!(login("harbor.acme.com"), Some(("robot$ci", "t")));
        assert_eq!(
            login("ghcr.io"),
            Some(("g", "h")),
            "the registry's one name"
        );
        assert_eq!(login("quay.io"), None);
        let hub = DockerConfig::parse(
            br#"{"auths": {"registry-1.docker.io": {"auth": "aHViOnNlY3JldA=="}}}"#,
        )
        .unwrap();
        assert!(
            hub.login_for("docker.io").is_some(),
            "Docker Hub's aliases are docker.io"
        );
        assert!(
            !format!("{config:?}").contains("secret"),
            "Debug never shows a password"
        );
    }

    #[test]
    fn unusable_configs_say_why_without_the_secret() {
        assert!(matches!(
            DockerConfig::parse(b"{"),
            Err(CredentialsError::Malformed(_))
        ));
        // An auths entry that is a bare string: serde's own message would quote it.
        let error = DockerConfig::parse(br#"{"auths":{"r.example.com":"dXNlcjpodW50ZXIy"}}"#)
            .unwrap_err()
            .to_string();
        assert!(!error.contains("dXNlcjpodW50ZXIy"), "{error}");
        assert!(error.contains("auths.r.example.com"), "{error}");
        let error =
            DockerConfig::parse(br#"{"auths": {"r.io": {"auth": "bm9jb2xvbg=="}}}"#).unwrap_err();
        assert_eq!(error, CredentialsError::Entry("r.io".into()));
        assert!(!error.to_string().contains("bm9jb2xvbg"));
    }

    #[test]
    fn the_store_swaps_secrets() {
        let store = CredentialStore::default();
        assert!(store.get("pull").is_none());
        store.set("pull", Some(DockerConfig::default()));
        assert!(store.get("pull").is_some());
        store.set("pull", None);
        assert!(store.get("pull").is_none());
    }
}
