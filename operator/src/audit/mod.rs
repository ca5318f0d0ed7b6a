//! The background audit: every Pod and workload that exists, watched and projected to
//! what the rules read, evaluated by the same engine against every policy — again when
//! a policy or a namespace's labels change (a new snapshot), when a scan result of an
//! image it runs is fetched (a rescan may have found new CVEs), when a result it lacked
//! is looked up, and every few minutes (`maxScanAge`).
//!
//! Evaluation runs on its own low-priority thread, so a full re-audit never takes a core
//! from admission. Scan results come from the cache only; what is missing is looked up
//! behind at a bounded rate, never blocking anything. The leader writes the counts
//! (`status.violations`) and PolicyReports ([`writer`]); `/inventory` reads the ledger.

pub mod inventory;
mod ledger;
pub mod projection;
pub mod reports;
mod watch;
pub mod writer;

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use portcullis_webhook::decisions::{Decisions, Source};
use portcullis_webhook::image::ImageRef;
use portcullis_webhook::policy::{PolicySet, SharedPolicySet};
use portcullis_webhook::scan::{ScanChanges, ScanService};
use portcullis_webhook::workload::WorkloadKind;

pub use ledger::{Entry, Ledger, PolicyResult};
use projection::{ObjectKey, Running};

/// How long the audit thread waits for input before looking at the snapshot again.
const TICK: Duration = Duration::from_millis(100);
/// Every object is evaluated again this often (stale results, `maxScanAge`).
const FULL_AUDIT_EVERY: Duration = Duration::from_secs(300);
/// Objects evaluated per lock of the ledger during a full audit (readers never wait long).
const CHUNK: usize = 256;
/// Images looked up per second for objects that lack a cached result.
pub const LOOKUPS_PER_SECOND: usize = 10;
/// An image whose lookup found nothing is not looked up again before this.
const LOOKUP_RETRY: Duration = Duration::from_secs(300);

/// What the watches and lookups tell the audit thread.
#[derive(Debug)]
pub enum Input {
    /// An object exists as projected.
    Live(ObjectKey, Box<Running>),
    /// An object is gone, or runs nothing.
    Gone(ObjectKey),
    /// A relist of a kind starts.
    Relisting(WorkloadKind),
    /// A relist of a kind is complete.
    Relisted(WorkloadKind),
    /// These images were looked up: evaluate their waiting objects again.
    LookedUp(Vec<ImageRef>),
}

/// The audit's shared state: the ledger (read by the writers and `/inventory`).
#[derive(Clone, Default)]
pub struct Audit {
    ledger: Arc<Mutex<Ledger>>,
    kinds: Arc<Mutex<Vec<WorkloadKind>>>,
    decisions: Decisions,
}

impl Audit {
    /// An audit counting what it finds in `decisions`' violation metric (`source="audit"`).
    pub fn new(decisions: Decisions) -> Self {
        Audit {
            decisions,
            ..Audit::default()
        }
    }

    /// The ledger, locked (briefly: the audit thread holds it per chunk).
    pub fn ledger(&self) -> MutexGuard<'_, Ledger> {
        self.ledger.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether every watched kind has listed once and everything was evaluated since.
    pub fn synced(&self) -> bool {
        let kinds = self.kinds.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let ledger = self.ledger();
        !kinds.is_empty() && ledger.synced(&kinds) && ledger.audited_at().is_some()
    }

    /// Runs the evaluation loop on this thread until every sender is dropped.
    pub fn evaluate_loop(
        &self,
        inputs: Receiver<Input>,
        policies: SharedPolicySet,
        scans: Arc<ScanService>,
        lookups: tokio::sync::mpsc::UnboundedSender<Vec<ImageRef>>,
    ) {
        let mut current: Arc<PolicySet> = policies.load_full();
        let mut last_full: Option<Instant> = None;
        loop {
            let mut batch = Vec::new();
            match inputs.recv_timeout(TICK) {
                Ok(input) => batch.push(input),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return,
            }
            batch.extend(inputs.try_iter().take(4096));
            let latest = policies.load_full();
            let mut changed = !Arc::ptr_eq(&latest, &current);
            current = latest;
            let mut wanted = Vec::new();
            {
                let mut ledger = self.ledger();
                match scans.take_scan_changes() {
                    ScanChanges::None => {}
                    ScanChanges::Many => changed = true,
                    ScanChanges::Repositories(repositories) => {
                        for key in ledger.using(&repositories) {
                            wanted.extend(ledger.evaluate(&key, &current, &scans));
                        }
                    }
                }
                for input in batch {
                    match input {
                        Input::Live(key, running) => {
                            wanted.extend(ledger.upsert(key, running, &current, &scans))
                        }
                        Input::Gone(key) => ledger.remove(&key),
                        Input::Relisting(kind) => ledger.relist_started(kind),
                        Input::Relisted(kind) => ledger.relist_done(kind),
                        Input::LookedUp(images) => {
                            for image in images {
                                for key in ledger.waiting_for(&image) {
                                    wanted.extend(ledger.evaluate(&key, &current, &scans));
                                }
                            }
                        }
                    }
                }
            }
            let due = last_full.is_none_or(|at| at.elapsed() >= FULL_AUDIT_EVERY);
            if changed || due {
                wanted.extend(self.full_audit(&current, &scans));
                last_full = Some(Instant::now());
            }
            for (policy, action) in self.ledger().take_found() {
                self.decisions.violation(&policy, action, Source::Audit);
            }
            if !wanted.is_empty() && lookups.send(wanted).is_err() {
                return;
            }
        }
    }

    /// Evaluates every object against `set`, a chunk per lock.
    fn full_audit(&self, set: &PolicySet, scans: &ScanService) -> Vec<ImageRef> {
        let started = SystemTime::now();
        let keys = self.ledger().keys();
        let mut wanted = Vec::new();
        for chunk in keys.chunks(CHUNK) {
            let mut ledger = self.ledger();
            for key in chunk {
                wanted.extend(ledger.evaluate(key, set, scans));
            }
        }
        self.ledger().audited(started);
        tracing::debug!(objects = keys.len(), "full audit done");
        wanted
    }
}

/// Starts the audit: the watches (kinds found by discovery), the evaluation thread and
/// the bounded lookups. Ends (for the supervisor to report) if the thread or a watch ends.
pub async fn run(
    client: kube::Client,
    audit: Audit,
    policies: SharedPolicySet,
    scans: Arc<ScanService>,
) -> anyhow::Result<()> {
    let (inputs, received) = std::sync::mpsc::channel::<Input>();
    let (lookups_tx, lookups_rx) = tokio::sync::mpsc::unbounded_channel();
    let resources = discover(&client).await;
    *audit.kinds.lock().unwrap_or_else(|e| e.into_inner()) =
        resources.iter().map(|(kind, _)| *kind).collect();
    let thread = {
        let (audit, policies, scans) = (audit.clone(), policies.clone(), scans.clone());
        std::thread::Builder::new()
            .name("portcullis-audit".into())
            .spawn(move || {
                lower_priority();
                audit.evaluate_loop(received, policies, scans, lookups_tx);
            })?
    };
    let watches = watch::all(client, resources, inputs.clone());
    let lookups = look_up(lookups_rx, inputs, policies, scans);
    tokio::select! {
        () = watches => anyhow::bail!("the audit's watches ended"),
        () = lookups => anyhow::bail!("the audit's lookups ended"),
        () = wait_for(thread) => anyhow::bail!("the audit thread ended"),
    }
}

/// Where the supported kinds are served, asked again (with backoff, up to a minute)
/// until the API server answers: the audit waits, admission does not.
async fn discover(client: &kube::Client) -> Vec<(WorkloadKind, kube::api::ApiResource)> {
    let mut pause = Duration::from_secs(1);
    loop {
        match watch::resources(client).await {
            Ok(resources) => return resources,
            Err(error) => {
                tracing::warn!(error = format!("{error:#}"), retry_in = ?pause, "the audit cannot discover the workload kinds yet");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(60));
            }
        }
    }
}

async fn wait_for(thread: std::thread::JoinHandle<()>) {
    let _ = tokio::task::spawn_blocking(move || thread.join()).await;
}

/// The audit thread yields to everything else of the process (nice 10): admission
/// answers first.
fn lower_priority() {
    let tid = rustix::thread::gettid();
    if let Err(error) = rustix::process::setpriority_process(Some(tid), 10) {
        tracing::warn!(%error, "the audit thread could not lower its priority");
    }
}

/// Looks up, behind and at most [`LOOKUPS_PER_SECOND`], the images the audit lacks
/// results for (never asking a scanner to scan: these are cache fills), and tells the
/// audit thread when done. An image that stays unresolved is left alone for a while.
async fn look_up(
    mut wanted: tokio::sync::mpsc::UnboundedReceiver<Vec<ImageRef>>,
    done: Sender<Input>,
    policies: SharedPolicySet,
    scans: Arc<ScanService>,
) {
    let mut queue: VecDeque<ImageRef> = VecDeque::new();
    let mut queued: HashSet<ImageRef> = HashSet::new();
    let mut resting: HashMap<ImageRef, Instant> = HashMap::new();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            images = wanted.recv() => {
                let Some(images) = images else { return };
                let now = Instant::now();
                for image in images {
                    if resting.get(&image).is_some_and(|until| *until > now) {
                        continue;
                    }
                    if queued.insert(image.clone()) {
                        queue.push_back(image);
                    }
                }
            }
            _ = tick.tick() => {
                if queue.is_empty() {
                    continue;
                }
                let batch: Vec<ImageRef> = queue.drain(..queue.len().min(LOOKUPS_PER_SECOND)).collect();
                let set = policies.load_full();
                let asked: Vec<&ImageRef> = batch.iter().collect();
                let _ = scans.results(&set, &asked, Instant::now(), true).await;
                let (_, missing) = scans.remembered(&set, &asked);
                let now = Instant::now();
                resting.retain(|_, until| *until > now);
                for image in missing {
                    resting.insert(image.clone(), now + LOOKUP_RETRY);
                }
                for image in &batch {
                    queued.remove(image);
                }
                if done.send(Input::LookedUp(batch)).is_err() {
                    return;
                }
            }
        }
    }
}
