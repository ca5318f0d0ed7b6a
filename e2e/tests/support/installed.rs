//! Portcullis installed in a test namespace as in a cluster: replicas (self-managed TLS,
//! leader election) behind a readiness-aware balancer standing in for the Service, a
//! ValidatingWebhookConfiguration that reaches them by URL, and the load's Block policy.

use std::time::Duration;

use super::balancer::Balancer;
use super::cluster::{Cleanup, Cluster};
use super::replica::{Installation, Replica};
use super::{Routes, eventually, free_port, load, unique, webhook_configuration};

/// A running installation; everything is removed when it drops.
pub struct Installed {
    /// The replicas, in start order (restarted ones replace theirs).
    pub replicas: Vec<Replica>,
    /// The Service stand-in.
    pub balancer: Balancer,
    /// How replicas are started.
    pub installation: Installation,
    /// The namespace: Portcullis's own, and where the test's Pods go.
    pub namespace: String,
    /// The load's Block policy.
    pub policy: String,
    ports: Vec<u16>,
    generation: usize,
    _cleanup: Cleanup,
}

impl Installed {
    /// Installs `replicas` replicas started with `flags`, and waits until the API server
    /// admits through them.
    pub async fn start(cluster: &Cluster, prefix: &str, replicas: usize, flags: &[&str]) -> Self {
        cluster.install_crds();
        let mut cleanup = Cleanup::new(cluster);
        let namespace = unique(prefix);
        cleanup.namespace(&namespace);
        let policy = unique(&format!("{prefix}-deny"));
        cluster.apply(&load::deny_policy(&policy, &namespace));
        cleanup.cluster_scoped("containerpolicy", &policy);
        let ports: Vec<u16> = (0..replicas).map(|_| free_port()).collect();
        let addrs: Vec<std::net::SocketAddr> =
            ports.iter().map(|&p| ([127, 0, 0, 1], p).into()).collect();
        let balancer = Balancer::start(&addrs).await;
        let webhook = unique(&format!("{prefix}-webhook"));
        cluster.apply(&webhook_configuration(
            &webhook,
            &namespace,
            &format!("https://{}/validate", balancer.addr),
            Routes {
                workloads: false,
                policies: false,
                ephemeral_containers: true,
            },
        ));
        cleanup.cluster_scoped("validatingwebhookconfiguration", &webhook);
        let installation = Installation {
            cluster: cluster.clone(),
            namespace: namespace.clone(),
            webhook_configuration: webhook,
            flags: flags.iter().map(|f| (*f).to_owned()).collect(),
        };
        let started = ports
            .iter()
            .enumerate()
            .map(|(i, &port)| installation.start(&format!("replica-{i}"), port))
            .collect();
        let installed = Installed {
            replicas: started,
            balancer,
            installation,
            namespace,
            policy,
            ports,
            generation: 0,
            _cleanup: cleanup,
        };
        for replica in &installed.replicas {
            replica.wait_ready(Duration::from_secs(60)).await;
        }
        installed.wait_admitting();
        installed
    }

    /// Waits until the API server calls the webhook: a Pod with the denied image is
    /// refused by the load's policy (a dry run).
    pub fn wait_admitting(&self) {
        let cluster = &self.installation.cluster;
        let pod = format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: probe, namespace: {}}}\nspec: {{containers: [{{name: app, image: \"{}\"}}]}}\n",
            self.namespace,
            load::DENIED_IMAGE
        );
        let wanted = format!("ContainerPolicy \"{}\"", self.policy);
        eventually(
            "the API server denying through the webhook",
            Duration::from_secs(60),
            || {
                let out = cluster.kubectl(&["apply", "--dry-run=server", "-f", "-"], Some(&pod));
                !out.status.success() && String::from_utf8_lossy(&out.stderr).contains(&wanted)
            },
        );
    }

    /// The ValidatingWebhookConfiguration's name.
    pub fn webhook(&self) -> &str {
        &self.installation.webhook_configuration
    }

    /// The caBundle the API server trusts (base64), empty when none.
    pub fn ca_bundle(&self) -> String {
        self.installation.cluster.jsonpath(
            &format!("validatingwebhookconfiguration/{}", self.webhook()),
            None,
            "{.webhooks[0].clientConfig.caBundle}",
        )
    }

    /// The leader lease's holder (a replica's name), empty when free.
    pub fn holder(&self) -> String {
        self.installation.cluster.jsonpath(
            "lease/portcullis-leader",
            Some(&self.namespace),
            "{.spec.holderIdentity}",
        )
    }

    /// The index of the replica holding the lease.
    pub fn leader(&self) -> usize {
        let holder = self.holder();
        self.replicas
            .iter()
            .position(|r| r.name == holder)
            .unwrap_or_else(|| panic!("the lease holder {holder:?} is none of the replicas"))
    }

    /// Stops replica `index` as the kubelet does (SIGTERM, then waits for a clean exit)
    /// and starts its successor on the same port; returns once the successor is ready.
    pub async fn restart(&mut self, index: usize) {
        let replica = &mut self.replicas[index];
        replica.terminate();
        assert!(
            replica.wait_exit(Duration::from_secs(30)),
            "{} did not exit cleanly on SIGTERM",
            replica.name
        );
        self.replace(index).await;
    }

    /// Starts the successor of replica `index` (which has exited) on its port; returns
    /// once it is ready.
    pub async fn replace(&mut self, index: usize) {
        self.generation += 1;
        let name = format!("replica-{index}-{}", self.generation);
        self.replicas[index] = self.installation.start(&name, self.ports[index]);
        self.replicas[index]
            .wait_ready(Duration::from_secs(60))
            .await;
    }

    /// Replaces the webhook configuration with one without a caBundle, as a GitOps
    /// tool re-applying the manifest does; returns how long until the leader has
    /// written it back.
    pub fn wipe_ca_bundle(&self) -> Duration {
        let cluster = &self.installation.cluster;
        let mut config: serde_json::Value = serde_json::from_str(&cluster.kubectl_ok(
            &[
                "get",
                "validatingwebhookconfiguration",
                self.webhook(),
                "-o",
                "json",
            ],
            None,
        ))
        .unwrap();
        let bundle = config["webhooks"][0]["clientConfig"]["caBundle"].take();
        assert!(bundle.is_string(), "no caBundle to wipe");
        if let Some(client_config) = config["webhooks"][0]["clientConfig"].as_object_mut() {
            client_config.remove("caBundle");
        }
        cluster.kubectl_ok(&["replace", "-f", "-"], Some(&config.to_string()));
        eventually("the caBundle written back", Duration::from_secs(10), || {
            !self.ca_bundle().is_empty()
        })
    }
}
