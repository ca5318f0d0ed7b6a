//! A real API server to test against — the shared one in `KUBECONFIG`, or a private one
//! started from `../shared/kube/up.sh` — and what a test creates there, removed when
//! the test ends however it ends.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use super::{SCOPE_LABEL, repo, skip};

/// An API server reached through a kubeconfig.
#[derive(Debug, Clone)]
pub struct Cluster {
    /// The kubeconfig file.
    pub kubeconfig: PathBuf,
}

impl Cluster {
    /// The cluster `kubeconfig` points at.
    pub fn new(kubeconfig: PathBuf) -> Self {
        Cluster { kubeconfig }
    }

    /// Runs `kubectl` in the repository against this cluster, with `stdin` piped in.
    pub fn kubectl(&self, args: &[&str], stdin: Option<&str>) -> Output {
        let mut child = Command::new("kubectl")
            .args(args)
            .env("KUBECONFIG", &self.kubeconfig)
            .current_dir(repo())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("kubectl on PATH (.ci/run installs it)");
        if let Some(mut pipe) = child.stdin.take() {
            pipe.write_all(stdin.unwrap_or_default().as_bytes())
                .expect("write kubectl's stdin");
        }
        child.wait_with_output().expect("wait for kubectl")
    }

    /// `kubectl` that must succeed; returns its stdout.
    pub fn kubectl_ok(&self, args: &[&str], stdin: Option<&str>) -> String {
        let out = self.kubectl(args, stdin);
        assert!(
            out.status.success(),
            "kubectl {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `kubectl apply -f -` of `yaml`.
    pub fn apply(&self, yaml: &str) {
        self.kubectl_ok(&["apply", "-f", "-"], Some(yaml));
    }

    /// `kubectl get … -o jsonpath=…` of one object.
    pub fn jsonpath(&self, resource: &str, namespace: Option<&str>, path: &str) -> String {
        let jsonpath = format!("jsonpath={path}");
        let mut args = vec!["get", resource, "-o", &jsonpath];
        if let Some(namespace) = namespace {
            args.extend(["-n", namespace]);
        }
        let out = self.kubectl(&args, None);
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// Installs the CRDs the way the README says (`kubectl apply --server-side -f crds/`) and waits
    /// until they are served.
    pub fn install_crds(&self) {
        self.kubectl_ok(&["apply", "--server-side", "-f", "crds/"], None);
        self.kubectl_ok(
            &[
                "wait",
                "--for=condition=Established",
                "--timeout=60s",
                "crd/containerpolicies.portcullis.dev",
                "crd/registryintegrations.portcullis.dev",
                "crd/auditmonitors.portcullis.dev",
            ],
            None,
        );
    }

    /// A kube client for this cluster.
    pub async fn client(&self) -> kube::Client {
        let kubeconfig = kube::config::Kubeconfig::read_from(&self.kubeconfig).unwrap();
        let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
            .await
            .unwrap();
        kube::Client::try_from(config).unwrap()
    }

    /// The `ready` condition's `field` (`status`, `reason`, `message`) of a policy.
    pub fn policy_ready(&self, policy: &str, field: &str) -> String {
        self.jsonpath(
            &format!("containerpolicy/{policy}"),
            None,
            &format!("{{.status.conditions[?(@.type==\"Ready\")].{field}}}"),
        )
    }

    /// Removes a namespace and what the tests put in it. Without a controller-manager
    /// (the test API server has none) nobody finalizes a deleted namespace: the test
    /// deletes the contents itself and then finalizes it.
    pub fn remove_namespace(&self, namespace: &str) {
        self.kubectl(
            &[
                "delete",
                "pods,secrets,leases,events,deployments,cronjobs",
                "--all",
                "-n",
                namespace,
                "--wait=false",
            ],
            None,
        );
        self.kubectl(
            &[
                "delete",
                "namespace",
                namespace,
                "--wait=false",
                "--ignore-not-found",
            ],
            None,
        );
        let deadline = Instant::now() + Duration::from_secs(1);
        while Instant::now() < deadline {
            let exists = self.kubectl(&["get", "namespace", namespace], None);
            if !exists.status.success() {
                return;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        let finalized = format!(
            r#"{{"apiVersion": "v1", "kind": "Namespace", "metadata": {{"name": "{namespace}"}}, "spec": {{"finalizers": []}}}}"#
        );
        self.kubectl(
            &[
                "replace",
                "--raw",
                &format!("/api/v1/namespaces/{namespace}/finalize"),
                "-f",
                "-",
            ],
            Some(&finalized),
        );
    }
}

/// Cluster objects a test created, deleted (in reverse order) when it ends: a leftover
/// webhook configuration would block the next test, a leftover policy would judge it.
pub struct Cleanup {
    cluster: Cluster,
    /// `(resource, namespace, name)`.
    objects: Vec<(String, Option<String>, String)>,
}

impl Cleanup {
    /// Nothing to remove yet.
    pub fn new(cluster: &Cluster) -> Self {
        Cleanup {
            cluster: cluster.clone(),
            objects: Vec::new(),
        }
    }

    /// Remove the cluster-scoped `resource/name` at the end.
    pub fn cluster_scoped(&mut self, resource: &str, name: &str) {
        self.objects.push((resource.into(), None, name.into()));
    }

    /// Create a namespace labelled with its name (as 1.21+ does by itself) and in its
    /// own scope (what the test webhook configurations select), removed at the end with
    /// its contents.
    pub fn namespace(&mut self, name: &str) {
        self.cluster.apply(&format!(
            "apiVersion: v1\nkind: Namespace\nmetadata: {{name: {name}, labels: {{kubernetes.io/metadata.name: {name}, {SCOPE_LABEL}: {name}}}}}\n"
        ));
        self.created_namespace(name);
    }

    /// Remove a namespace the test created some other way, with its contents, at the end.
    pub fn created_namespace(&mut self, name: &str) {
        self.objects.push(("namespace".into(), None, name.into()));
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        for (resource, namespace, name) in self.objects.iter().rev() {
            if resource == "namespace" {
                self.cluster.remove_namespace(name);
                continue;
            }
            let mut args = vec![
                "delete",
                resource,
                name,
                "--ignore-not-found",
                "--wait=false",
            ];
            if let Some(namespace) = namespace {
                args.extend(["-n", namespace]);
            }
            self.cluster.kubectl(&args, None);
        }
    }
}

/// A kube-apiserver (with etcd) of a test's own, from `../shared/kube/up.sh`, for tests
/// that stop the API server or install cluster-wide objects; stopped with `down.sh`
/// when dropped.
pub struct PrivateCluster {
    /// The cluster it serves.
    pub cluster: Cluster,
    dir: tempfile::TempDir,
    api_port: u16,
    etcd_port: u16,
    flags: String,
}

fn kube_scripts() -> PathBuf {
    repo().join("../shared/kube")
}

impl PrivateCluster {
    /// Starts one; `None` (skipped, or failed in CI) where `../shared/kube` is missing.
    pub fn start() -> Option<Self> {
        Self::start_with("")
    }

    /// Starts one whose API server gets these extra flags (`KUBE_TEST_APISERVER_FLAGS`).
    pub fn start_with(flags: &str) -> Option<Self> {
        if !kube_scripts().join("up.sh").exists() {
            return skip("../shared/kube/up.sh is missing: this test starts its own API server");
        }
        let dir = tempfile::Builder::new()
            .prefix("portcullis-e2e-kube")
            .tempdir()
            .unwrap();
        let cluster = PrivateCluster {
            cluster: Cluster::new(dir.path().join("kubeconfig")),
            api_port: super::free_port(),
            etcd_port: super::free_port(),
            dir,
            flags: flags.to_owned(),
        };
        cluster.up();
        Some(cluster)
    }

    /// The API server's URL.
    pub fn api_url(&self) -> String {
        format!("https://127.0.0.1:{}", self.api_port)
    }

    /// Where `up.sh` keeps its files (`apiserver.log`, `audit.log`).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    fn up(&self) {
        let out = Command::new("bash")
            .arg(kube_scripts().join("up.sh"))
            .env("KUBE_TEST_DIR", self.dir.path())
            .env("KUBE_TEST_API_PORT", self.api_port.to_string())
            .env("KUBE_TEST_ETCD_PORT", self.etcd_port.to_string())
            .env("KUBE_TEST_APISERVER_FLAGS", &self.flags)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "up.sh failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Kills the API server (etcd keeps running), as a crash or a lost node would, and
    /// waits until it is gone.
    pub fn stop_api_server(&self) {
        let pid = std::fs::read_to_string(self.dir.path().join("apiserver.pid")).unwrap();
        Command::new("kill")
            .args(["-KILL", pid.trim()])
            .status()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", self.api_port)).is_ok() {
            assert!(Instant::now() < deadline, "the API server did not stop");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Starts the API server again on the same port, etcd and certificates.
    pub fn start_api_server(&self) {
        self.up();
    }
}

impl Drop for PrivateCluster {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .arg(kube_scripts().join("down.sh"))
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}
