//! `portcullis run` processes, as replicas of one installation: out of cluster against
//! a real API server, self-managed TLS, the test's namespace as their own.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;

use portcullis_webhook::testing::TestClient;
use portcullis_webhook::testing::process::{self, Spawned};

use super::{Cluster, free_port, portcullis_bin};

/// How one installation's replicas are started.
#[derive(Debug, Clone)]
pub struct Installation {
    /// The cluster.
    pub cluster: Cluster,
    /// Portcullis's namespace (Lease, Secrets).
    pub namespace: String,
    /// The ValidatingWebhookConfiguration whose caBundle the leader keeps.
    pub webhook_configuration: String,
    /// More flags for every replica.
    pub flags: Vec<String>,
}

/// One running replica; killed when dropped.
pub struct Replica {
    /// Its name (`POD_NAME`: the lease holder identity).
    pub name: String,
    /// Where the webhook listens.
    pub webhook: SocketAddr,
    /// Where `/metrics` listens.
    pub metrics: SocketAddr,
    process: Spawned,
}

impl Installation {
    /// Starts a replica named `name` whose webhook listens on `port`.
    pub fn start(&self, name: &str, port: u16) -> Replica {
        let webhook: SocketAddr = ([127, 0, 0, 1], port).into();
        let metrics: SocketAddr = ([127, 0, 0, 1], free_port()).into();
        let mut command = process::command(portcullis_bin());
        command
            .args(["run", "--listen", &webhook.to_string()])
            .args(["--metrics-listen", &metrics.to_string()])
            .args(["--namespace", &self.namespace])
            .args(["--webhook-configuration", &self.webhook_configuration])
            .args(["--self-signed-name", "127.0.0.1"])
            .args(&self.flags)
            .env("KUBECONFIG", &self.cluster.kubeconfig)
            .env("POD_NAME", name)
            // Every admission (and decision line) is logged at info; under load that drowns
            // what matters.
            .env(
                "RUST_LOG",
                "info,portcullis_webhook::server=warn,portcullis::decision=warn",
            )
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut process = Spawned::spawn(&mut command).expect("start portcullis run");
        if let Some(stderr) = process.child_mut().stderr.take() {
            let prefix = name.to_owned();
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    eprintln!("[{prefix}] {line}");
                }
            });
        }
        Replica {
            name: name.into(),
            webhook,
            metrics,
            process,
        }
    }
}

impl Replica {
    /// Whether `/readyz` answers 200 (probed as the kubelet does, without verifying the
    /// certificate).
    pub async fn ready(&self) -> bool {
        ready(self.webhook).await
    }

    /// Waits until ready; fails the test after `timeout`.
    pub async fn wait_ready(&self, timeout: Duration) {
        let deadline = tokio::time::Instant::now() + timeout;
        while !self.ready().await {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{} not ready after {timeout:?}",
                self.name
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// `SIGTERM`, as the kubelet stops a Pod.
    pub fn terminate(&self) {
        self.process.terminate().expect("SIGTERM");
    }

    /// `SIGKILL`: the replica vanishes without a word.
    pub fn kill(&self) {
        self.process.kill().expect("SIGKILL");
    }

    /// Waits for the process to exit; whether it exited successfully.
    pub fn wait_exit(&mut self, timeout: Duration) -> bool {
        match self.process.wait_timeout(timeout).expect("wait") {
            Some(status) => status.success(),
            None => panic!(
                "{} still running {timeout:?} after it was stopped",
                self.name
            ),
        }
    }
}

/// `/readyz` of the webhook at `addr` answers 200.
pub async fn ready(addr: SocketAddr) -> bool {
    let Ok(client) = TestClient::unverified(addr) else {
        return false;
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(2), client.get("/readyz")).await,
        Ok(Ok(reply)) if reply.status == 200
    )
}
