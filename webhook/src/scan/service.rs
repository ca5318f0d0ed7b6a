//! The scan service: what the webhook consults before deciding. A request first reads
//! the in-memory cache only; images it lacks are fetched (tag → digest, then the
//! scanner) within the webhook's deadline, one call per digest however many requests
//! wait, behind a circuit breaker; stale results serve while a refresh runs behind.

use std::borrow::Cow;
use std::collections::HashMap;
use std::future::Future;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use futures::FutureExt;
use futures::future::{BoxFuture, Shared};

use super::backend::harbor::Harbor;
use super::backend::http::HttpScanner;
use super::backend::trivy_operator::{ReportIndex, TrivyOperator};
use super::backend::{Backend, BackendError, Outcome, Target};
use super::breaker::{Admit, Breaker};
use super::cache::{Budget, CacheError, CachedDigest, CachedScan, Key, ScanCache};
use super::credentials::{CredentialStore, DockerConfig};
use super::metrics::ScanMetrics;
use super::registry::{RegistryClient, RegistrySettings, Resolved};
use super::{ScanReport, ScanResults, ScanStatus};
use crate::engine::mutation::{DigestResults, Unresolved, UnresolvedCause};
use crate::image::{ImageRef, canonical_registry};
use crate::policy::{CompiledIntegration, PolicySet, ScannerKind};

/// How long "the scanner has no result" is believed before asking again.
const NOT_FOUND_TTL: Duration = Duration::from_secs(300);
/// How long "a scan is pending" is believed before asking again.
const PENDING_TTL: Duration = Duration::from_secs(15);
/// How long a tag's digest is used before it is resolved again (in the background).
const TAG_TTL: Duration = Duration::from_secs(300);
/// Most distinct images one request looks up; the rest count as unscanned.
pub const MAX_LOOKUPS_PER_REQUEST: usize = 200;
/// Most backend and registry calls in flight at once per integration.
const MAX_CALLS_PER_INTEGRATION: usize = 32;

/// How the service is set up.
#[derive(Debug, Clone)]
pub struct ScanSettings {
    /// Where the on-disk store lives; `None` keeps results in memory only.
    pub cache_dir: Option<PathBuf>,
    /// How much the in-memory cache holds (entries and bytes).
    pub budget: Budget,
    /// The most time one admission request spends fetching missing results.
    pub deadline: Duration,
}

impl Default for ScanSettings {
    fn default() -> Self {
        ScanSettings {
            cache_dir: None,
            budget: Budget {
                entries: 200_000,
                bytes: 128 * 1024 * 1024,
            },
            deadline: Duration::from_secs(3),
        }
    }
}

/// What one replica knows about an integration's backend, for its status.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Health {
    /// Whether the last call succeeded (`None`: not called yet).
    pub reachable: Option<bool>,
    /// When a call last succeeded.
    pub last_contact: Option<SystemTime>,
    /// The last call's failure, as logged (never shown in deny messages): why the host
    /// is unreachable, or what was wrong with an answer it gave; `None` after a
    /// success.
    pub last_error: Option<String>,
}

/// Scan results for admission requests: cache, backends, registries.
pub struct ScanService {
    cache: ScanCache,
    credentials: CredentialStore,
    reports: Arc<ReportIndex>,
    integrations: Mutex<HashMap<String, Arc<IntegrationState>>>,
    scans_in_flight: Arc<Flights<Result<CachedScan, BackendError>>>,
    digests_in_flight: Arc<Flights<Result<CachedDigest, BackendError>>>,
    metrics: ScanMetrics,
    deadline: Duration,
    fetched: Mutex<ScanChanges>,
}

/// Repositories whose scan results were fetched since the last look (the background
/// audit evaluates what runs them again: a rescan may have found new CVEs).
#[derive(Debug, Default, PartialEq, Eq)]
pub enum ScanChanges {
    /// None.
    #[default]
    None,
    /// These repositories.
    Repositories(std::collections::HashSet<String>),
    /// More than are tracked one by one: everything may have changed.
    Many,
}

/// Most repositories tracked one by one in [`ScanChanges`].
const MAX_TRACKED_CHANGES: usize = 1024;

struct IntegrationState {
    /// One breaker per backend host (the scanner, each registry): only signs that a host
    /// itself is down open it, and one host down never stops calls to another.
    breakers: Mutex<HashMap<String, Arc<Breaker>>>,
    health: Mutex<Health>,
    connection: Mutex<Option<Arc<Connection>>>,
    /// Calls in flight: one integration never takes every connection and task.
    calls: tokio::sync::Semaphore,
}

impl Default for IntegrationState {
    fn default() -> Self {
        IntegrationState {
            breakers: Mutex::default(),
            health: Mutex::default(),
            connection: Mutex::default(),
            calls: tokio::sync::Semaphore::new(MAX_CALLS_PER_INTEGRATION),
        }
    }
}

impl IntegrationState {
    fn breaker(&self, host: &str) -> Arc<Breaker> {
        let mut breakers = lock(&self.breakers);
        if let Some(breaker) = breakers.get(host) {
            return breaker.clone();
        }
        breakers.entry(host.to_owned()).or_default().clone()
    }

    /// Whether `image` may be looked up now: `Reject` if a host it needs is down,
    /// `Probe` if one is due a probe, else `Call`.
    fn admit<'h>(&self, hosts: impl IntoIterator<Item = &'h str>, now: Instant) -> Admit {
        let mut admit = Admit::Call;
        for host in hosts {
            match self.breaker(host).admit(now) {
                Admit::Reject => return Admit::Reject,
                Admit::Probe => admit = Admit::Probe,
                Admit::Call => {}
            }
        }
        admit
    }
}

/// The hosts a lookup of `image` calls: its registry, when a tag must be resolved, and
/// the scanner.
fn hosts<'a>(spec: &'a CompiledIntegration, image: &'a ImageRef) -> impl Iterator<Item = &'a str> {
    let registry = image.digest().is_none().then(|| image.registry());
    registry.into_iter().chain([spec.scanner_host.as_str()])
}

/// Clients built from one compiled spec and one version of its credentials.
struct Connection {
    spec: Arc<CompiledIntegration>,
    credentials: Option<Arc<DockerConfig>>,
    backend: Result<Arc<dyn Backend>, String>,
    registries: Result<RegistryClient, String>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

impl ScanService {
    /// A service with the given settings; opens the disk store if any, and starts
    /// loading it (lookups read it meanwhile).
    pub fn new(settings: &ScanSettings) -> Result<Arc<Self>, CacheError> {
        let cache = match &settings.cache_dir {
            None => ScanCache::in_memory(settings.budget),
            Some(dir) => ScanCache::open(dir, settings.budget)?,
        };
        Ok(Self::with_cache(cache, settings.deadline))
    }

    /// A memory-only service with default settings.
    pub fn in_memory() -> Arc<Self> {
        let settings = ScanSettings::default();
        Self::with_cache(ScanCache::in_memory(settings.budget), settings.deadline)
    }

    fn with_cache(cache: ScanCache, deadline: Duration) -> Arc<Self> {
        Arc::new(ScanService {
            cache,
            credentials: CredentialStore::default(),
            reports: Arc::default(),
            integrations: Mutex::default(),
            scans_in_flight: Arc::default(),
            digests_in_flight: Arc::default(),
            metrics: ScanMetrics::default(),
            deadline,
            fetched: Mutex::default(),
        })
    }

    /// The credential Secrets (filled by the Secret watch, or local mode's directory).
    pub fn credentials(&self) -> &CredentialStore {
        &self.credentials
    }

    /// The VulnerabilityReport index (filled by the trivy-operator watch).
    pub fn reports(&self) -> &Arc<ReportIndex> {
        &self.reports
    }

    /// The metrics, to register.
    pub fn metrics(&self) -> &ScanMetrics {
        &self.metrics
    }

    /// The cache (benchmarks fill it; shutdown flushes it).
    pub fn cache(&self) -> &ScanCache {
        &self.cache
    }

    /// Records, as fetched now, that `repository:tag` points at `digest` for
    /// `integration` (benchmarks and warm-up tooling fill the cache this way).
    pub fn remember_digest(&self, integration: &str, repository: &str, tag: &str, digest: &str) {
        self.cache.put_digest(
            Key::digest(integration, repository, tag).to_string(),
            CachedDigest {
                resolved: Resolved::Digest(digest.into()),
                fetched_at: SystemTime::now(),
            },
        );
    }

    /// Records, as fetched now, the scan of `repository@digest` for `integration`.
    pub fn remember_scan(
        &self,
        integration: &str,
        repository: &str,
        digest: &str,
        report: ScanReport,
    ) {
        let key = Key::scan(integration, repository, digest).to_string();
        self.fetched(&key);
        self.cache.put_scan(
            key,
            CachedScan {
                outcome: Outcome::Report(report),
                fetched_at: SystemTime::now(),
            },
        );
    }

    /// What this replica knows about an integration's backend.
    pub fn health(&self, integration: &str) -> Option<Health> {
        let state = lock(&self.integrations).get(integration)?.clone();
        Some(lock(&state.health).clone())
    }

    /// The scan status of each of `images` (what a decision reads): from memory when
    /// cached, else after fetching what is missing within the deadline measured from
    /// `started`. Stale results serve while a refresh runs behind.
    pub async fn results<'i>(
        self: &Arc<Self>,
        set: &PolicySet,
        images: &[&'i ImageRef],
        started: Instant,
        dry_run: bool,
    ) -> ScanAnswers<'i> {
        let over = || {
            ScanStatus::Unavailable(Cow::Owned(format!(
                "the object has more than {MAX_LOOKUPS_PER_REQUEST} distinct images; only the first {MAX_LOOKUPS_PER_REQUEST} are looked up"
            )))
        };
        let read = |image: &ImageRef, now, failure| self.cached(set, image, now, failure);
        ScanAnswers(
            self.gather(set, images, started, dry_run, Need::Scan, read, over)
                .await,
        )
    }

    /// The repositories whose results were fetched since the last call.
    pub fn take_scan_changes(&self) -> ScanChanges {
        std::mem::take(&mut *lock(&self.fetched))
    }

    /// Notes that the scan result under `key` was (re)fetched.
    fn fetched(&self, key: &str) {
        let repository = key
            .split_once('\n')
            .and_then(|(_, rest)| rest.rsplit_once('@'))
            .map(|(repository, _)| repository);
        let mut changes = lock(&self.fetched);
        match (&mut *changes, repository) {
            (ScanChanges::Many, _) => {}
            (ScanChanges::Repositories(set), Some(repository))
                if set.len() < MAX_TRACKED_CHANGES =>
            {
                set.insert(repository.to_owned());
            }
            (ScanChanges::None, Some(repository)) => {
                *changes = ScanChanges::Repositories([repository.to_owned()].into());
            }
            _ => *changes = ScanChanges::Many,
        }
    }

    /// What the cache alone says of each of `images`, with no call and no metric (the
    /// background audit): the answers, and the images whose result is missing or stale,
    /// for the caller to look up behind at its own pace.
    pub fn remembered<'i>(
        &self,
        set: &PolicySet,
        images: &[&'i ImageRef],
    ) -> (ScanAnswers<'i>, Vec<&'i ImageRef>) {
        let now = SystemTime::now();
        let mut answers = Vec::with_capacity(images.len());
        let mut wanted = Vec::new();
        for &image in images {
            let (status, want) = self.cached(set, image, now, Some(Cow::Borrowed(NOT_LOOKED_UP)));
            if want.is_some() {
                wanted.push(image);
            }
            answers.push((image, status));
        }
        (ScanAnswers(answers), wanted)
    }

    /// The digest the cache holds for `image`'s tag (or its own digest), with no call.
    pub fn remembered_digest(&self, set: &PolicySet, image: &ImageRef) -> Option<String> {
        if let Some(digest) = image.digest() {
            return Some(digest.to_owned());
        }
        let spec = set.integration_for(image.repository())?;
        let (digest, _) = self.cached_tag(
            spec,
            image,
            SystemTime::now(),
            Some(Cow::Borrowed(NOT_LOOKED_UP)),
        );
        digest.ok().map(|digest| digest.to_string())
    }

    /// The digest of each of `images`' tags (what pinning reads), from the same cache
    /// and resolution as [`Self::results`]; nothing is asked of a scanner.
    pub async fn digests<'i>(
        self: &Arc<Self>,
        set: &PolicySet,
        images: &[&'i ImageRef],
        started: Instant,
    ) -> DigestAnswers<'i> {
        let over = || {
            Err(Unresolved {
                cause: UnresolvedCause::TooManyImages,
                reason: Cow::Owned(format!(
                    "the Pod has more than {MAX_LOOKUPS_PER_REQUEST} distinct images to pin"
                )),
            })
        };
        let read = |image: &ImageRef, now, failure| match set.integration_for(image.repository()) {
            Some(spec) => {
                let (digest, want) = self.cached_tag(spec, image, now, failure);
                (digest.map(|digest| digest.to_string()), want)
            }
            None => (
                Err(Unresolved {
                    cause: UnresolvedCause::NoIntegration,
                    reason: Cow::Borrowed(NO_INTEGRATION),
                }),
                None,
            ),
        };
        DigestAnswers(
            self.gather(set, images, started, true, Need::Digest, read, over)
                .await,
        )
    }

    /// What the cache says of each image (`read` as of a time: the clock is read once for
    /// the pass over the cache and once after fetching), after fetching, within the
    /// deadline, what it lacks; stale entries are refreshed behind. At most
    /// [`MAX_LOOKUPS_PER_REQUEST`] images are looked up; the rest get `over()`.
    #[allow(clippy::too_many_arguments)]
    async fn gather<'i, T>(
        self: &Arc<Self>,
        set: &PolicySet,
        images: &[&'i ImageRef],
        started: Instant,
        dry_run: bool,
        need: Need,
        read: impl Fn(&ImageRef, SystemTime, Option<Cow<'static, str>>) -> (T, Option<Want>),
        over: impl Fn() -> T,
    ) -> Vec<(&'i ImageRef, T)> {
        let mut answers = Vec::with_capacity(images.len());
        let mut misses = Vec::new();
        let mut images = images.iter().copied();
        let now = SystemTime::now();
        for image in images.by_ref().take(MAX_LOOKUPS_PER_REQUEST) {
            let (answer, want) = read(image, now, None);
            match want {
                Some(Want::Refresh(spec)) => {
                    self.metrics.lookup(&spec.name, "stale");
                    self.refresh(spec, image, dry_run, need);
                }
                Some(Want::Fetch(spec)) => {
                    self.metrics.lookup(&spec.name, "miss");
                    misses.push((spec, image));
                    continue;
                }
                None => {}
            }
            answers.push((image, answer));
        }
        for image in images {
            answers.push((image, over()));
        }
        if misses.is_empty() {
            return answers;
        }
        // Calls are about to be made: forget the clients, breakers and health of
        // integrations that no longer exist.
        lock(&self.integrations).retain(|name, _| set.integration(name).is_some());
        let deadline = tokio::time::Instant::from_std(started + self.deadline);
        let fetched =
            futures::future::join_all(misses.into_iter().map(|(spec, image)| async move {
                let failure = self
                    .fetch_within(&spec, image, deadline, dry_run, need)
                    .await
                    .err();
                (image, failure)
            }))
            .await;
        let now = SystemTime::now();
        for (image, failure) in fetched {
            let reason = failure.unwrap_or(Cow::Borrowed("no result was fetched in time"));
            let (answer, _) = read(image, now, Some(reason));
            answers.push((image, answer));
        }
        answers
    }

    fn state(&self, integration: &str) -> Arc<IntegrationState> {
        let mut states = lock(&self.integrations);
        if let Some(state) = states.get(integration) {
            return state.clone();
        }
        states.entry(integration.to_owned()).or_default().clone()
    }

    /// The clients for `spec`, rebuilt when the spec or its credentials changed.
    fn connection(&self, spec: &Arc<CompiledIntegration>) -> Arc<Connection> {
        let state = self.state(&spec.name);
        let credentials = spec
            .credentials_secret
            .as_deref()
            .and_then(|secret| self.credentials.get(secret));
        let mut current = lock(&state.connection);
        if let Some(connection) = current.as_ref()
            && Arc::ptr_eq(&connection.spec, spec)
            && match (&connection.credentials, &credentials) {
                (Some(a), Some(b)) => Arc::ptr_eq(a, b),
                (None, None) => true,
                _ => false,
            }
        {
            return connection.clone();
        }
        let connection = Arc::new(Connection::new(spec, credentials, &self.reports));
        *current = Some(connection.clone());
        connection
    }

    /// Waits for `image` until `deadline`, unless the breaker says the backend is down.
    async fn fetch_within(
        self: &Arc<Self>,
        spec: &Arc<CompiledIntegration>,
        image: &ImageRef,
        deadline: tokio::time::Instant,
        dry_run: bool,
        need: Need,
    ) -> Result<(), Cow<'static, str>> {
        let state = self.state(&spec.name);
        match state.admit(hosts(spec, image), Instant::now()) {
            Admit::Call => {}
            Admit::Reject => return Err(unreachable(spec)),
            Admit::Probe => {
                let service = self.clone();
                let (spec_owned, image) = (spec.clone(), image.clone());
                tokio::spawn(
                    async move { service.lookup(&spec_owned, &image, dry_run, need).await },
                );
                return Err(unreachable(spec));
            }
        }
        match tokio::time::timeout_at(deadline, self.lookup(spec, image, dry_run, need)).await {
            Ok(result) => result,
            Err(_) => Err(Cow::Owned(format!(
                "RegistryIntegration {:?} did not answer within the webhook's deadline",
                spec.name
            ))),
        }
    }

    /// Refreshes a stale entry in the background (unless the backend is known down).
    fn refresh(
        self: &Arc<Self>,
        spec: Arc<CompiledIntegration>,
        image: &ImageRef,
        dry_run: bool,
        need: Need,
    ) {
        if self
            .state(&spec.name)
            .admit(hosts(&spec, image), Instant::now())
            == Admit::Reject
        {
            return;
        }
        let (service, image) = (self.clone(), image.clone());
        tokio::spawn(async move { service.lookup(&spec, &image, dry_run, need).await });
    }

    /// Makes sure the cache holds a fresh answer for `image` (tag, then scan).
    async fn lookup(
        self: &Arc<Self>,
        spec: &Arc<CompiledIntegration>,
        image: &ImageRef,
        dry_run: bool,
        need: Need,
    ) -> Result<(), Cow<'static, str>> {
        let now = SystemTime::now();
        let digest = match (image.digest(), image.tag()) {
            (Some(digest), _) => Digest::Named(digest),
            (None, tag) => {
                let tag = tag.unwrap_or("latest");
                let key = Key::digest(&spec.name, image.repository(), tag);
                let cached = self
                    .cache
                    .digest(key)
                    .filter(|e| fresh(e.fetched_at, tag_ttl(spec), now));
                let entry = match cached {
                    Some(entry) => entry,
                    None => self.resolve(spec, image, tag, key.to_string()).await?,
                };
                match entry.resolved {
                    Resolved::Digest(digest) => Digest::Cached(digest),
                    Resolved::NotFound => return Ok(()),
                }
            }
        };
        if need == Need::Digest {
            return Ok(());
        }
        let key = Key::scan(&spec.name, image.repository(), &digest);
        if self
            .cache
            .scan(key)
            .is_some_and(|e| fresh(e.fetched_at, scan_ttl(spec, &e.outcome), now))
        {
            return Ok(());
        }
        let entry = self
            .scan(spec, image, &digest, key.to_string(), dry_run)
            .await?;
        match entry.outcome {
            // Not cached (see `scan`), so the answer travels with the error.
            Outcome::NotFound if dry_run => Err(no_result(spec, &digest)),
            _ => Ok(()),
        }
    }

    async fn resolve(
        self: &Arc<Self>,
        spec: &Arc<CompiledIntegration>,
        image: &ImageRef,
        tag: &str,
        key: String,
    ) -> Result<CachedDigest, Cow<'static, str>> {
        let service = self.clone();
        let spec_owned = spec.clone();
        let (registry, path, tag) = (
            image.registry().to_owned(),
            image.path().to_owned(),
            tag.to_owned(),
        );
        let flight = Flights::join(&self.digests_in_flight, &key.clone(), move || async move {
            let connection = service.connection(&spec_owned);
            let work = async { connection.resolve(&registry, &path, &tag).await };
            let result = service
                .call(&spec_owned, "resolve", &registry, work)
                .await
                .map(|resolved| CachedDigest {
                    resolved,
                    fetched_at: SystemTime::now(),
                });
            if let Ok(entry) = &result {
                service.cache.put_digest(key, entry.clone());
            }
            result
        });
        match flight.await {
            Some(Ok(entry)) => Ok(entry),
            Some(Err(error)) => Err(failed(spec, &error)),
            None => Err(unreachable(spec)),
        }
    }

    async fn scan(
        self: &Arc<Self>,
        spec: &Arc<CompiledIntegration>,
        image: &ImageRef,
        digest: &str,
        key: String,
        dry_run: bool,
    ) -> Result<CachedScan, Cow<'static, str>> {
        let scan_on_demand = spec.scan_on_demand && !dry_run;
        let service = self.clone();
        let spec_owned = spec.clone();
        let target = Target {
            registry: image.registry().to_owned(),
            path: image.path().to_owned(),
            digest: digest.to_owned(),
        };
        // A dry-run lookup never triggers a scan, so it does not stand in for one that may.
        let flight_key = format!("{key}\n{scan_on_demand}");
        let flight = Flights::join(&self.scans_in_flight, &flight_key, move || async move {
            let connection = service.connection(&spec_owned);
            let work = async {
                let backend = connection.backend.clone().map_err(BackendError::Config)?;
                backend.fetch(&target, scan_on_demand).await
            };
            let fetched_at = SystemTime::now();
            let result = service
                .call(&spec_owned, "scan", &spec_owned.scanner_host, work)
                .await
                .map(|outcome| CachedScan {
                    outcome: service.dated(&key, outcome, fetched_at),
                    fetched_at,
                });
            // "No result" from a lookup that was not allowed to ask for a scan (a dry
            // run) must not keep the next real request from asking.
            let held_back = !scan_on_demand && spec_owned.scan_on_demand;
            match &result {
                Ok(entry) if !(held_back && matches!(entry.outcome, Outcome::NotFound)) => {
                    service.fetched(&key);
                    service.cache.put_scan(key, entry.clone());
                }
                _ => {}
            }
            result
        });
        match flight.await {
            Some(Ok(entry)) => Ok(entry),
            Some(Err(error)) => Err(failed(spec, &error)),
            None => Err(unreachable(spec)),
        }
    }

    /// A report with its scan time settled before it is cached: a time in the future
    /// counts as the fetch time (and is logged); a missing one is the time this report
    /// was first fetched (kept from the cache while the findings stay the same), so
    /// `maxScanAge` measures from the first sighting rather than from every refetch.
    fn dated(&self, key: &str, outcome: Outcome, fetched_at: SystemTime) -> Outcome {
        let Outcome::Report(report) = outcome else {
            return outcome;
        };
        let at = match report.scanned_at {
            Some(at) if at <= fetched_at => at,
            Some(_) => {
                tracing::warn!(scan = %key.replace('\n', " "), "the scanner dated its result in the future; counted as scanned now");
                fetched_at
            }
            None => {
                let previous =
                    self.cache
                        .scan(Key::text(key))
                        .and_then(|entry| match entry.outcome {
                            Outcome::Report(previous)
                                if previous.findings() == report.findings() =>
                            {
                                previous.scanned_at
                            }
                            _ => None,
                        });
                previous.unwrap_or(fetched_at)
            }
        };
        Outcome::Report(report.scanned(at))
    }

    /// Runs one backend or registry call to `host` under the integration's timeout, and
    /// records its outcome in that host's breaker, the health and the metrics. Only signs
    /// that the host is down (no connection, TLS refused, no answer in time, 5xx) count
    /// against it; an answer about one image (not found, refused, malformed, another
    /// digest) says the host is up.
    async fn call<T>(
        &self,
        spec: &CompiledIntegration,
        what: &'static str,
        host: &str,
        work: impl Future<Output = Result<T, BackendError>>,
    ) -> Result<T, BackendError> {
        let state = self.state(&spec.name);
        // A slot not free within the call's deadline says nothing about the host.
        let slot = tokio::time::timeout(spec.timeout, state.calls.acquire()).await;
        let started = Instant::now();
        let result = match slot {
            Ok(Ok(_slot)) => match tokio::time::timeout(spec.timeout, work).await {
                Ok(result) => result,
                Err(_) => Err(BackendError::Timeout(spec.timeout)),
            },
            _ => Err(BackendError::Busy(MAX_CALLS_PER_INTEGRATION)),
        };
        self.metrics
            .call(&spec.name, what, started.elapsed().as_secs_f64());
        let breaker = state.breaker(host);
        let mut health = lock(&state.health);
        match &result {
            Err(error) if error.is_local() => {
                // No call was made: nothing to say about the host.
                self.metrics.error(&spec.name, what, error.label());
                tracing::warn!(integration = %spec.name, call = what, %error, "scan backend not called");
            }
            Err(error) if error.is_host_down() => {
                breaker.failure(Instant::now());
                self.metrics.error(&spec.name, what, error.label());
                tracing::warn!(integration = %spec.name, call = what, %host, %error, breaker_open = breaker.is_open(), "scan backend call failed");
                health.reachable = Some(false);
                health.last_error = Some(format!("{what} ({host}): {error}"));
            }
            answered => {
                breaker.success();
                health.reachable = Some(true);
                health.last_contact = Some(SystemTime::now());
                health.last_error = match answered {
                    Ok(_) => None,
                    Err(error) => {
                        self.metrics.error(&spec.name, what, error.label());
                        tracing::warn!(integration = %spec.name, call = what, %host, %error, "scan backend answered, but not usably");
                        Some(format!("{what} ({host}): {error}"))
                    }
                };
            }
        }
        result
    }
}

impl Connection {
    fn new(
        spec: &Arc<CompiledIntegration>,
        credentials: Option<Arc<DockerConfig>>,
        reports: &Arc<ReportIndex>,
    ) -> Self {
        let login = |url: &str| {
            let uri = url.parse::<axum::http::Uri>().ok()?;
            let host = canonical_registry(uri.authority()?.as_str());
            credentials.as_ref()?.login_for(&host).cloned()
        };
        let backend: Result<Arc<dyn Backend>, String> = match &spec.scanner {
            ScannerKind::Harbor(s) => {
                Harbor::new(&s.url, s.ca_bundle.as_deref(), login(&s.url), spec.timeout)
                    .map(|b| Arc::new(b) as Arc<dyn Backend>)
            }
            ScannerKind::Http(s) => HttpScanner::new(&s.url, s.ca_bundle.as_deref(), spec.timeout)
                .map(|b| Arc::new(b) as Arc<dyn Backend>),
            ScannerKind::TrivyOperator => Ok(Arc::new(TrivyOperator::new(reports.clone()))),
        };
        let registries = RegistryClient::new(RegistrySettings {
            ca_bundle: spec.ca_bundle.clone(),
            plain_http: spec.plain_http,
            timeout: spec.timeout,
            explicit_hosts: spec.explicit_hosts.clone(),
        });
        Connection {
            spec: spec.clone(),
            credentials,
            backend,
            registries,
        }
    }

    /// Resolves `registry/path:tag` with the integration's login for that registry.
    async fn resolve(
        &self,
        registry: &str,
        path: &str,
        tag: &str,
    ) -> Result<Resolved, BackendError> {
        if let Some(secret) = &self.spec.credentials_secret
            && self.credentials.is_none()
        {
            return Err(BackendError::Credentials(format!(
                "Secret {secret:?} is missing from Portcullis's namespace or is not a valid {} Secret",
                super::credentials::DOCKER_CONFIG_JSON_TYPE
            )));
        }
        let client = self
            .registries
            .as_ref()
            .map_err(|e| BackendError::Config(e.clone()))?;
        let login = self
            .credentials
            .as_ref()
            .and_then(|c| c.login_for(registry));
        client.resolve(registry, path, tag, login).await
    }
}

fn no_result(spec: &CompiledIntegration, digest: &str) -> Cow<'static, str> {
    Cow::Owned(format!(
        "the scanner of RegistryIntegration {:?} has no result for {digest}",
        spec.name
    ))
}

/// Why a lookup failed, as a deny message may say it: the kind of failure, never the
/// backend's own words (those go to the log and the integration's status).
fn failed(spec: &CompiledIntegration, error: &BackendError) -> Cow<'static, str> {
    let name = &spec.name;
    match error {
        e if e.is_host_down() => unreachable(spec),
        BackendError::Denied(_) => Cow::Owned(format!(
            "the registry or scanner of RegistryIntegration {name:?} refused access"
        )),
        BackendError::Credentials(_) => Cow::Owned(format!(
            "the credentials Secret of RegistryIntegration {name:?} is missing or unusable"
        )),
        BackendError::NotSynced => Cow::Borrowed("VulnerabilityReports are not synced yet"),
        BackendError::Busy(_) => Cow::Owned(format!(
            "RegistryIntegration {name:?} has too many lookups in flight"
        )),
        BackendError::Config(_) => Cow::Owned(format!(
            "RegistryIntegration {name:?} cannot be used as configured"
        )),
        BackendError::Refused(_) => Cow::Owned(format!(
            "the image's registry is an address RegistryIntegration {name:?} may not call (loopback, link-local or metadata) unless its registries name it"
        )),
        _ => Cow::Owned(format!(
            "the scanner or registry of RegistryIntegration {name:?} gave an answer that cannot be used"
        )),
    }
}

fn unreachable(spec: &CompiledIntegration) -> Cow<'static, str> {
    Cow::Owned(format!(
        "the scanner or registry of RegistryIntegration {:?} is unreachable",
        spec.name
    ))
}

fn tag_ttl(spec: &CompiledIntegration) -> Duration {
    spec.cache_ttl.min(TAG_TTL)
}

fn scan_ttl(spec: &CompiledIntegration, outcome: &Outcome) -> Duration {
    match outcome {
        Outcome::Report(_) => spec.cache_ttl,
        Outcome::NotFound => spec.cache_ttl.min(NOT_FOUND_TTL),
        Outcome::Pending => spec.cache_ttl.min(PENDING_TTL),
    }
}

/// Fresh while younger than `ttl` (a time in the future, from clock skew, is fresh).
fn fresh(fetched_at: SystemTime, ttl: Duration, now: SystemTime) -> bool {
    now.duration_since(fetched_at).is_ok_and(|age| age <= ttl) || fetched_at > now
}

/// How far a lookup goes: a tag's digest (pinning), or on to the scan (the rules).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Need {
    Digest,
    Scan,
}

/// What a cached answer asks of the backend.
enum Want {
    /// Nothing usable is cached: fetch, and wait (within the deadline).
    Fetch(Arc<CompiledIntegration>),
    /// The cached answer serves, but is stale: refresh it behind.
    Refresh(Arc<CompiledIntegration>),
}

/// The digests of the tags one Pod's pinning needs, looked up before it is planned.
#[derive(Debug, Default)]
pub struct DigestAnswers<'i>(Vec<(&'i ImageRef, Result<String, Unresolved>)>);

impl DigestResults for DigestAnswers<'_> {
    fn digest(&self, image: &ImageRef) -> Result<String, Unresolved> {
        answer(&self.0, image).cloned().unwrap_or(Err(Unresolved {
            cause: UnresolvedCause::RegistryUnavailable,
            reason: Cow::Borrowed("the image was not looked up for this request"),
        }))
    }
}

/// The scan status of the images one request needs, looked up before it is decided.
#[derive(Debug, Default)]
pub struct ScanAnswers<'i>(Vec<(&'i ImageRef, ScanStatus)>);

/// The answer for `image` among one request's: the images asked about are the review's
/// own, so the same reference is found without comparing text; an equal image given
/// otherwise is found by value.
fn answer<'a, T>(answers: &'a [(&ImageRef, T)], image: &ImageRef) -> Option<&'a T> {
    answers
        .iter()
        .find(|(asked, _)| std::ptr::eq(*asked, image))
        .or_else(|| answers.iter().find(|(asked, _)| *asked == image))
        .map(|(_, answer)| answer)
}

/// Why the background audit has no result for an image yet.
const NOT_LOOKED_UP: &str = "no result is cached yet (the background audit looks it up)";

impl ScanResults for ScanAnswers<'_> {
    fn lookup(&self, image: &ImageRef) -> ScanStatus {
        answer(&self.0, image)
            .cloned()
            .unwrap_or(ScanStatus::Unavailable(Cow::Borrowed(
                "the image was not looked up for this request",
            )))
    }
}

/// An image's digest: the one its reference names, or its tag's as cached (shared with
/// the cache's entry, so a lookup copies no text).
enum Digest<'i> {
    Named(&'i str),
    Cached(Arc<str>),
}

impl std::ops::Deref for Digest<'_> {
    type Target = str;

    fn deref(&self) -> &str {
        match self {
            Digest::Named(digest) => digest,
            Digest::Cached(digest) => digest,
        }
    }
}

/// Why an image has no result when nothing covers it.
const NO_INTEGRATION: &str = "no RegistryIntegration covers this image's registry";

impl ScanService {
    /// The digest `image` names or its tag points at, as cached, and what the cache
    /// asks of the registry. `failure` is why a fetch just failed.
    fn cached_tag<'i>(
        &self,
        spec: &Arc<CompiledIntegration>,
        image: &'i ImageRef,
        now: SystemTime,
        failure: Option<Cow<'static, str>>,
    ) -> (Result<Digest<'i>, Unresolved>, Option<Want>) {
        if let Some(digest) = image.digest() {
            return (Ok(Digest::Named(digest)), None);
        }
        let unresolved = |cause, reason| Unresolved { cause, reason };
        let miss = || {
            let reason = failure
                .clone()
                .unwrap_or(Cow::Borrowed("no result was fetched in time"));
            (
                Err(unresolved(UnresolvedCause::RegistryUnavailable, reason)),
                Some(Want::Fetch(spec.clone())),
            )
        };
        let key = Key::digest(
            &spec.name,
            image.repository(),
            image.tag().unwrap_or("latest"),
        );
        let Some(entry) = self.cache.digest(key) else {
            return miss();
        };
        let is_fresh = fresh(entry.fetched_at, tag_ttl(spec), now);
        match entry.resolved {
            // Stale, it serves while a refresh runs behind — but only so long past
            // cacheTTL: the tag may have moved meanwhile.
            Resolved::Digest(_)
                if !fresh(entry.fetched_at, spec.cache_ttl + spec.max_tag_age, now) =>
            {
                let age = now.duration_since(entry.fetched_at).unwrap_or_default();
                let too_old = format!(
                    "the tag's last known digest was resolved {} ago, more than maxTagAge past cacheTTL",
                    crate::duration::show(age)
                );
                let reason = match &failure {
                    Some(failure) => format!("{failure}; {too_old}"),
                    None => too_old,
                };
                (
                    Err(unresolved(
                        UnresolvedCause::DigestTooOld,
                        Cow::Owned(reason),
                    )),
                    Some(Want::Fetch(spec.clone())),
                )
            }
            Resolved::Digest(digest) => {
                let want = (!is_fresh).then(|| Want::Refresh(spec.clone()));
                (Ok(Digest::Cached(digest)), want)
            }
            Resolved::NotFound if is_fresh => {
                let reason = format!("the tag is not found in registry {}", image.registry());
                (
                    Err(unresolved(UnresolvedCause::TagNotFound, Cow::Owned(reason))),
                    None,
                )
            }
            Resolved::NotFound => miss(),
        }
    }

    /// What the cache says of `image` now, and what it asks of the backend. `failure`
    /// is why a fetch just failed, said instead of "not fetched in time".
    fn cached(
        &self,
        set: &PolicySet,
        image: &ImageRef,
        now: SystemTime,
        failure: Option<Cow<'static, str>>,
    ) -> (ScanStatus, Option<Want>) {
        let Some(spec) = set.integration_for(image.repository()) else {
            return (ScanStatus::Unavailable(Cow::Borrowed(NO_INTEGRATION)), None);
        };
        let (digest, mut want) = match self.cached_tag(spec, image, now, failure.clone()) {
            (Ok(digest), want) => (digest, want),
            (Err(unresolved), want) => return (ScanStatus::Unavailable(unresolved.reason), want),
        };
        let miss = || {
            let reason = failure
                .clone()
                .unwrap_or(Cow::Borrowed("no result was fetched in time"));
            (
                ScanStatus::Unavailable(reason),
                Some(Want::Fetch(spec.clone())),
            )
        };
        let Some(entry) = self
            .cache
            .scan(Key::scan(&spec.name, image.repository(), &digest))
        else {
            return miss();
        };
        let is_fresh = fresh(entry.fetched_at, scan_ttl(spec, &entry.outcome), now);
        let status = match entry.outcome {
            Outcome::Report(report) => {
                if !is_fresh {
                    want = Some(Want::Refresh(spec.clone()));
                } else if want.is_none() && failure.is_none() {
                    self.metrics.lookup(&spec.name, "hit");
                }
                ScanStatus::Found(report)
            }
            _ if !is_fresh => return miss(),
            Outcome::NotFound => ScanStatus::Unavailable(no_result(spec, &digest)),
            Outcome::Pending => ScanStatus::Unavailable(Cow::Owned(format!(
                "a scan of {} is pending in RegistryIntegration {:?}",
                &*digest, spec.name
            ))),
        };
        (status, want)
    }
}

/// Calls in flight by key: the first caller starts a task, later ones share its result.
/// The task runs to completion even if every caller stops waiting, so its result still
/// lands in the cache.
struct Flights<V: Clone> {
    running: Mutex<HashMap<String, Shared<BoxFuture<'static, Option<V>>>>>,
}

impl<V: Clone> Default for Flights<V> {
    fn default() -> Self {
        Flights {
            running: Mutex::default(),
        }
    }
}

impl<V: Clone + Send + Sync + 'static> Flights<V> {
    /// Joins the call for `key`, starting it with `start` if none runs. The call is
    /// forgotten once its task ends (after caching its result), panic included.
    fn join<F>(
        flights: &Arc<Self>,
        key: &str,
        start: impl FnOnce() -> F,
    ) -> Shared<BoxFuture<'static, Option<V>>>
    where
        F: Future<Output = V> + Send + 'static,
    {
        let mut running = lock(&flights.running);
        if let Some(flight) = running.get(key) {
            return flight.clone();
        }
        let done = Done {
            flights: flights.clone(),
            key: key.to_owned(),
        };
        let call = start();
        let task = tokio::spawn(async move {
            let _done = done;
            call.await
        });
        let flight = async move { task.await.ok() }.boxed().shared();
        running.insert(key.to_owned(), flight.clone());
        flight
    }
}

/// Removes a call from its [`Flights`] when its task ends.
struct Done<V: Clone> {
    flights: Arc<Flights<V>>,
    key: String,
}

impl<V: Clone> Drop for Done<V> {
    fn drop(&mut self) {
        lock(&self.flights.running).remove(&self.key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An answer is found for the very image asked about, and for an equal one parsed
    /// elsewhere; an image not asked about has none.
    #[test]
    fn answers_are_found_by_reference_then_by_value() {
        let parse = |text: &str| ImageRef::parse(text).unwrap();
        let (a, b) = (parse("ghcr.io/acme/a:1"), parse("ghcr.io/acme/b:1"));
        let answers = [(&a, 1), (&b, 2)];
        assert_eq!(answer(&answers, &b), Some(&2));
        assert_eq!(answer(&answers, &parse("ghcr.io/acme/b:1")), Some(&2));
        assert_eq!(answer(&answers, &parse("ghcr.io/acme/b:2")), None);
    }
}
