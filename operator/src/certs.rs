//! Self-managed serving certificates. The leader keeps a CA and a serving certificate
//! for the Service's DNS names in a Secret, renews them at two thirds of their
//! lifetime, and keeps the `caBundle` of the webhook configurations (validating and
//! mutating, one name) trusting them — the new CA before anyone serves with it, the
//! old one until its certificate expires. Every replica watches the Secret and serves
//! what it holds, without a restart.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures::StreamExt;
use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhookConfiguration, ValidatingWebhookConfiguration, WebhookClientConfig,
};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{ObjectMeta, PostParams};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client};
use portcullis_webhook::server::Readiness;
use portcullis_webhook::tls::{CertStore, certified_key, generate_valid};
use tokio::sync::watch;

const CA: &str = "ca.crt";
const CERT: &str = "tls.crt";
const KEY: &str = "tls.key";
const BUNDLE: &str = "ca-bundle.crt";
const NOT_BEFORE: &str = "portcullis.dev/not-before";
const NOT_AFTER: &str = "portcullis.dev/not-after";
const PREVIOUS_NOT_AFTER: &str = "portcullis.dev/previous-not-after";

/// Where the certificate lives and what it is for.
#[derive(Debug, Clone)]
pub struct CertSettings {
    /// Portcullis's namespace (the Secret's and the Service's).
    pub namespace: String,
    /// The Secret holding CA, certificate and key.
    pub secret: String,
    /// The Validating- and MutatingWebhookConfiguration (one name) whose `caBundle` is
    /// kept current; a mutating one need not exist.
    pub webhook: String,
    /// The Service the API server calls.
    pub service: String,
    /// Extra names for the certificate (out-of-cluster use).
    pub extra_names: Vec<String>,
    /// Certificate lifetime; renewed at two thirds of it.
    pub lifetime: Duration,
}

impl CertSettings {
    fn names(&self) -> Vec<String> {
        let (svc, ns) = (&self.service, &self.namespace);
        let mut names = vec![
            format!("{svc}.{ns}.svc"),
            format!("{svc}.{ns}.svc.cluster.local"),
            format!("{svc}.{ns}"),
            svc.clone(),
        ];
        names.extend(self.extra_names.iter().cloned());
        names
    }
}

/// Why the certificate could not be managed.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    /// The API server refused or did not answer.
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// Generating the certificate failed.
    #[error(transparent)]
    Tls(#[from] portcullis_webhook::tls::TlsError),
}

/// What a reconcile did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// No certificate existed: one was issued.
    Created,
    /// The certificate reached two thirds of its life: a new one was issued, the old CA
    /// still trusted.
    Renewed,
    /// The `caBundle` was brought up to date (restored, or the old CA dropped).
    BundleUpdated,
    /// Nothing to do.
    Unchanged,
}

/// What a reconcile did, and when the next one is due.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reconciled {
    /// What changed.
    pub outcome: Outcome,
    /// When the certificate next needs attention: its renewal, or the expiry of the
    /// previous CA still in the bundle.
    pub next: SystemTime,
}

/// A certificate as stored in the Secret.
struct Issued {
    ca: String,
    bundle: String,
    not_before: SystemTime,
    not_after: SystemTime,
    previous_not_after: Option<SystemTime>,
}

fn text(secret: &Secret, key: &str) -> Option<String> {
    String::from_utf8(secret.data.as_ref()?.get(key)?.0.clone()).ok()
}

fn time(secret: &Secret, key: &str) -> Option<SystemTime> {
    let value = secret.metadata.annotations.as_ref()?.get(key)?;
    value.parse::<jiff::Timestamp>().ok().map(SystemTime::from)
}

fn stamp(t: SystemTime) -> String {
    jiff::Timestamp::try_from(t)
        .map(|t| t.to_string())
        .unwrap_or_default()
}

impl Issued {
    /// Reads the Secret; `None` when anything is missing or the pair does not load.
    fn read(secret: &Secret) -> Option<Self> {
        let (cert, key) = (text(secret, CERT)?, text(secret, KEY)?);
        certified_key(cert.as_bytes(), key.as_bytes()).ok()?;
        Some(Issued {
            ca: text(secret, CA)?,
            bundle: text(secret, BUNDLE)?,
            not_before: time(secret, NOT_BEFORE)?,
            not_after: time(secret, NOT_AFTER)?,
            previous_not_after: time(secret, PREVIOUS_NOT_AFTER),
        })
    }

    fn renew_at(&self) -> SystemTime {
        let life = self
            .not_after
            .duration_since(self.not_before)
            .unwrap_or_default();
        self.not_before + life * 2 / 3
    }

    /// The renewal, or the previous CA's expiry if that comes first and is still ahead.
    fn next(&self, now: SystemTime) -> SystemTime {
        match self.previous_not_after {
            Some(expiry) if expiry > now => expiry.min(self.renew_at()),
            _ => self.renew_at(),
        }
    }
}

/// How long a renewal waits between trusting the new CA and serving the certificate it
/// signed, so the API server has seen the new `caBundle` before any replica switches.
fn trust_delay(lifetime: Duration) -> Duration {
    (lifetime / 20).min(Duration::from_secs(5))
}

/// One pass of the leader's duty at time `now`.
pub async fn reconcile(
    client: &Client,
    settings: &CertSettings,
    now: SystemTime,
) -> Result<Reconciled, CertError> {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &settings.namespace);
    let existing = secrets.get_opt(&settings.secret).await?;
    let issued = existing.as_ref().and_then(Issued::read);
    if let Some(issued) = &issued
        && now < issued.renew_at()
    {
        let bundle = match issued.previous_not_after {
            Some(expiry) if now >= expiry => issued.ca.clone(),
            _ => issued.bundle.clone(),
        };
        let mut changed = ensure_ca_bundle(client, settings, &bundle).await?;
        if bundle != issued.bundle
            && let Some(mut secret) = existing
        {
            secret
                .data
                .get_or_insert_default()
                .insert(BUNDLE.into(), ByteString(bundle.into_bytes()));
            if let Some(annotations) = secret.metadata.annotations.as_mut() {
                annotations.remove(PREVIOUS_NOT_AFTER);
            }
            secrets
                .replace(&settings.secret, &PostParams::default(), &secret)
                .await?;
            changed = true;
        }
        let outcome = if changed {
            Outcome::BundleUpdated
        } else {
            Outcome::Unchanged
        };
        return Ok(Reconciled {
            outcome,
            next: issued.next(now),
        });
    }

    // Issue a new certificate; keep trusting the old CA while its certificate is valid.
    // Backdated a little for clock skew between nodes.
    let not_before = now - (settings.lifetime / 10).min(Duration::from_secs(3600));
    let not_after = now + settings.lifetime;
    let generated = generate_valid(&settings.names(), not_before, not_after)?;
    let previous = issued.filter(|old| now < old.not_after);
    let bundle = match &previous {
        Some(old) => format!("{}{}", old.ca, generated.ca_pem),
        None => generated.ca_pem.clone(),
    };
    // Trust first: nothing serves the new certificate before the API server trusts it.
    ensure_ca_bundle(client, settings, &bundle).await?;
    if previous.is_some() {
        tokio::time::sleep(trust_delay(settings.lifetime)).await;
    }
    let issued = Issued {
        ca: generated.ca_pem.clone(),
        bundle: bundle.clone(),
        not_before,
        not_after,
        previous_not_after: previous.as_ref().map(|old| old.not_after),
    };
    let mut annotations = std::collections::BTreeMap::from([
        (NOT_BEFORE.to_owned(), stamp(not_before)),
        (NOT_AFTER.to_owned(), stamp(not_after)),
    ]);
    if let Some(old) = &previous {
        annotations.insert(PREVIOUS_NOT_AFTER.to_owned(), stamp(old.not_after));
    }
    let data = [
        (CA, generated.ca_pem),
        (CERT, generated.cert_pem),
        (KEY, generated.key_pem),
        (BUNDLE, bundle),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), ByteString(v.into_bytes())))
    .collect();
    let secret = Secret {
        metadata: ObjectMeta {
            name: Some(settings.secret.clone()),
            namespace: Some(settings.namespace.clone()),
            annotations: Some(annotations),
            resource_version: existing
                .as_ref()
                .and_then(|s| s.metadata.resource_version.clone()),
            ..ObjectMeta::default()
        },
        type_: Some("kubernetes.io/tls".into()),
        data: Some(data),
        ..Secret::default()
    };
    let outcome = if existing.is_some() {
        secrets
            .replace(&settings.secret, &PostParams::default(), &secret)
            .await?;
        Outcome::Renewed
    } else {
        secrets.create(&PostParams::default(), &secret).await?;
        Outcome::Created
    };
    Ok(Reconciled {
        outcome,
        next: issued.next(now),
    })
}

/// A webhook configuration kind whose `caBundle` the leader keeps.
trait WebhookConfiguration:
    kube::Resource<DynamicType = (), Scope = kube::core::ClusterResourceScope>
    + Clone
    + std::fmt::Debug
    + serde::de::DeserializeOwned
    + serde::Serialize
    + Send
    + Sync
    + 'static
{
    /// How logs name it.
    const KIND: &'static str;
    /// Whether the deployment needs it (the mutating webhook is optional).
    const REQUIRED: bool;
    fn client_configs(&mut self) -> Vec<&mut WebhookClientConfig>;
}

impl WebhookConfiguration for ValidatingWebhookConfiguration {
    const KIND: &'static str = "ValidatingWebhookConfiguration";
    const REQUIRED: bool = true;
    fn client_configs(&mut self) -> Vec<&mut WebhookClientConfig> {
        let webhooks = self.webhooks.iter_mut().flatten();
        webhooks.map(|w| &mut w.client_config).collect()
    }
}

impl WebhookConfiguration for MutatingWebhookConfiguration {
    const KIND: &'static str = "MutatingWebhookConfiguration";
    const REQUIRED: bool = false;
    fn client_configs(&mut self) -> Vec<&mut WebhookClientConfig> {
        let webhooks = self.webhooks.iter_mut().flatten();
        webhooks.map(|w| &mut w.client_config).collect()
    }
}

/// Sets `caBundle` on every webhook of both configurations; returns whether it changed.
async fn ensure_ca_bundle(
    client: &Client,
    settings: &CertSettings,
    bundle: &str,
) -> Result<bool, CertError> {
    let validating =
        ensure_ca_bundle_of::<ValidatingWebhookConfiguration>(client, settings, bundle).await?;
    let mutating =
        ensure_ca_bundle_of::<MutatingWebhookConfiguration>(client, settings, bundle).await?;
    Ok(validating || mutating)
}

async fn ensure_ca_bundle_of<K: WebhookConfiguration>(
    client: &Client,
    settings: &CertSettings,
    bundle: &str,
) -> Result<bool, CertError> {
    let api: Api<K> = Api::all(client.clone());
    let Some(mut config) = api.get_opt(&settings.webhook).await? else {
        if K::REQUIRED {
            tracing::warn!(webhook = %settings.webhook, kind = K::KIND, "webhook configuration not found; caBundle not written");
        }
        return Ok(false);
    };
    let wanted = ByteString(bundle.as_bytes().to_vec());
    let mut changed = false;
    for client_config in config.client_configs() {
        if client_config.ca_bundle.as_ref() != Some(&wanted) {
            client_config.ca_bundle = Some(wanted.clone());
            changed = true;
        }
    }
    if changed {
        api.replace(&settings.webhook, &PostParams::default(), &config)
            .await?;
    }
    Ok(changed)
}

/// Changes to the webhook configuration of kind `K` named `name`, as a stream of
/// "reconcile now" signals.
fn configuration_changes<K: WebhookConfiguration>(
    client: &Client,
    name: &str,
) -> impl futures::Stream<Item = Result<bool, watcher::Error>> + Send + use<K> {
    let api: Api<K> = Api::all(client.clone());
    let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
    watcher::watcher(api, config)
        .default_backoff()
        .map(|event| {
            event.map(|e| matches!(e, Event::Apply(_) | Event::InitApply(_) | Event::Delete(_)))
        })
}

/// The leader's loop: reconciles on gaining leadership, whenever a webhook
/// configuration changes (a GitOps sync that drops the `caBundle` is repaired at once),
/// when the certificate is due, and at least every `interval`.
pub async fn manage(
    client: Client,
    settings: CertSettings,
    mut leader: watch::Receiver<bool>,
    interval: Duration,
) {
    let mut changes = std::pin::pin!(futures::stream::select(
        configuration_changes::<ValidatingWebhookConfiguration>(&client, &settings.webhook),
        configuration_changes::<MutatingWebhookConfiguration>(&client, &settings.webhook),
    ));
    let mut due = true;
    let mut wait = interval;
    loop {
        if due && *leader.borrow_and_update() {
            wait = match reconcile(&client, &settings, SystemTime::now()).await {
                Ok(done) => {
                    if done.outcome != Outcome::Unchanged {
                        tracing::info!(outcome = ?done.outcome, secret = %settings.secret, "serving certificate reconciled");
                    }
                    let until = done.next.duration_since(SystemTime::now());
                    until.unwrap_or_default().min(interval)
                }
                Err(error) => {
                    tracing::warn!(%error, "serving certificate not reconciled; retrying");
                    RETRY.min(interval)
                }
            };
        }
        due = false;
        tokio::select! {
            changed = leader.changed() => {
                if changed.is_err() {
                    return;
                }
                due = true;
            }
            event = changes.next() => match event {
                Some(Ok(true)) => due = true,
                Some(Ok(false)) => {}
                Some(Err(error)) => tracing::warn!(%error, webhook = %settings.webhook, "watching the webhook configuration; retrying"),
                None => return,
            },
            () = tokio::time::sleep(wait) => due = true,
        }
    }
}

/// How soon a failed reconcile is tried again.
const RETRY: Duration = Duration::from_secs(5);

/// Every replica: serves the certificate the Secret holds, from the first one on.
pub async fn serve_from_secret(
    client: Client,
    settings: CertSettings,
    store: Arc<CertStore>,
    ready: Readiness,
) {
    let api: Api<Secret> = Api::namespaced(client, &settings.namespace);
    let config = watcher::Config::default().fields(&format!("metadata.name={}", settings.secret));
    let mut events = std::pin::pin!(watcher::watcher(api, config).default_backoff());
    while let Some(event) = events.next().await {
        match event {
            Ok(Event::Apply(secret) | Event::InitApply(secret)) => load(&secret, &store, &ready),
            Ok(_) => {}
            Err(error) => {
                tracing::warn!(%error, "watching the serving certificate Secret; retrying")
            }
        }
    }
}

fn load(secret: &Secret, store: &CertStore, ready: &Readiness) {
    match (text(secret, CERT), text(secret, KEY)) {
        (Some(cert), Some(key)) => match certified_key(cert.as_bytes(), key.as_bytes()) {
            Ok(key) => {
                store.replace(key);
                ready.certificate_loaded();
                tracing::info!(secret = ?secret.metadata.name, "serving the certificate from the Secret");
            }
            Err(error) => {
                tracing::warn!(%error, "the certificate Secret does not load; the current one keeps serving")
            }
        },
        _ => tracing::warn!("the certificate Secret has no tls.crt/tls.key yet"),
    }
}
