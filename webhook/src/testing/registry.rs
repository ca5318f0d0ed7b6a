//! A real OCI registry for tests: Debian's `docker-registry` (distribution 2.8) on
//! 127.0.0.1 with TLS and htpasswd auth, images pushed with skopeo from an OCI layout
//! made by `../shared/tools/make-oci-layout.sh` (recipe: `../shared/TESTING.md`).
//! Test support: failures panic with what went wrong.

#![allow(clippy::unwrap_used)]

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::process::{self, Spawned};
use crate::tls::generate;

/// Set in CI: a missing registry binary fails the test instead of skipping it.
const REQUIRE: &str = "PORTCULLIS_REQUIRE_REGISTRY";

/// A running registry; dropping it stops the server (see [`Spawned`]).
pub struct Registry {
    _server: Spawned,
    dir: tempfile::TempDir,
    /// `127.0.0.1:PORT`.
    pub host: String,
    /// The CA of its certificate.
    pub ca_pem: String,
    /// Basic-auth login, when started with auth.
    pub login: Option<(String, String)>,
}

fn installed(program: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Whether the registry tools are here; without them the test is skipped (with a
/// message), unless `PORTCULLIS_REQUIRE_REGISTRY` is set.
pub fn available() -> bool {
    let missing: Vec<&str> = ["docker-registry", "skopeo", "htpasswd"]
        .into_iter()
        .filter(|p| !installed(p))
        .collect();
    if missing.is_empty() {
        return true;
    }
    assert!(
        std::env::var_os(REQUIRE).is_none(),
        "{REQUIRE} is set but {missing:?} are not installed"
    );
    eprintln!(
        "SKIPPED: {missing:?} not installed (apt-get install -y docker-registry skopeo apache2-utils)"
    );
    false
}

impl Registry {
    /// Starts a registry over TLS; with `login`, htpasswd basic auth is required.
    pub fn start(login: Option<(&str, &str)>) -> Registry {
        Self::start_with(login, true)
    }

    /// Starts a registry over plain http (a local development registry), no auth.
    pub fn start_plain_http() -> Registry {
        Self::start_with(None, false)
    }

    fn start_with(login: Option<(&str, &str)>, tls: bool) -> Registry {
        let dir = tempfile::tempdir().unwrap();
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let certs = generate(&["localhost".into(), "127.0.0.1".into()]).unwrap();
        std::fs::write(dir.path().join("cert.pem"), &certs.cert_pem).unwrap();
        std::fs::write(dir.path().join("key.pem"), &certs.key_pem).unwrap();
        let mut auth = String::new();
        if let Some((user, pass)) = login {
            let line = Command::new("htpasswd")
                .args(["-Bbn", user, pass])
                .output()
                .unwrap();
            assert!(line.status.success());
            std::fs::write(dir.path().join("htpasswd"), line.stdout).unwrap();
            auth = format!(
                "auth:\n  htpasswd:\n    realm: test\n    path: {}\n",
                dir.path().join("htpasswd").display()
            );
        }
        let tls = if tls {
            format!(
                "  tls:\n    certificate: {d}/cert.pem\n    key: {d}/key.pem\n",
                d = dir.path().display()
            )
        } else {
            String::new()
        };
        let config = format!(
            "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {root}\nhttp:\n  addr: 127.0.0.1:{port}\n{tls}{auth}",
            root = dir.path().join("data").display(),
        );
        std::fs::write(dir.path().join("config.yml"), config).unwrap();
        let server = Spawned::spawn(
            process::command("docker-registry")
                .arg("serve")
                .arg(dir.path().join("config.yml"))
                .stdout(Stdio::null())
                .stderr(Stdio::null()),
        )
        .unwrap();
        let started = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "the registry did not start"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Registry {
            _server: server,
            dir,
            host: format!("127.0.0.1:{port}"),
            ca_pem: certs.ca_pem,
            login: login.map(|(u, p)| (u.to_owned(), p.to_owned())),
        }
    }

    /// The path of the server's configuration file (it names the process).
    pub fn config_path(&self) -> String {
        self.dir.path().join("config.yml").display().to_string()
    }

    /// Pushes a fresh one-layer image as `name:tag`; returns its manifest digest.
    pub fn push(&self, name: &str, tag: &str) -> String {
        let work = tempfile::tempdir().unwrap();
        let layout = work.path().join("layout");
        let script =
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/tools/make-oci-layout.sh");
        assert!(script.exists(), "{} is missing", script.display());
        let made = Command::new("sh")
            .arg(script)
            .arg(&layout)
            .arg(tag)
            .output()
            .unwrap();
        assert!(
            made.status.success(),
            "{}",
            String::from_utf8_lossy(&made.stderr)
        );
        let digest = String::from_utf8(made.stdout).unwrap().trim().to_owned();
        let mut copy = Command::new("skopeo");
        copy.args([
            "--insecure-policy",
            "copy",
            "--dest-tls-verify=false",
            "--preserve-digests",
        ]);
        if let Some((user, pass)) = &self.login {
            copy.arg(format!("--dest-creds={user}:{pass}"));
        }
        let pushed = copy
            .arg(format!("oci:{}:{tag}", layout.display()))
            .arg(format!("docker://{}/{name}:{tag}", self.host))
            .output()
            .unwrap();
        assert!(
            pushed.status.success(),
            "{}",
            String::from_utf8_lossy(&pushed.stderr)
        );
        digest
    }
}
