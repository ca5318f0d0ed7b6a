//! Scan results and tag → digest mappings: a bounded in-memory cache (what the request
//! path reads, without I/O) written through to an embedded store on disk (redb), which
//! is loaded at start so decisions survive restarts and outages.

use std::hash::{BuildHasher, Hasher, RandomState};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock, RwLock, mpsc};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use portcullis_crds::Severity;
use quick_cache::sync::GuardResult;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use siphasher::sip128::{Hasher128, SipHasher13};

use super::backend::Outcome;
use super::registry::Resolved;
use super::{Finding, ScanReport, VulnId};

const SCANS: TableDefinition<&str, &[u8]> = TableDefinition::new("scans");
const DIGESTS: TableDefinition<&str, &[u8]> = TableDefinition::new("digests");
/// The store's file inside `--cache-dir`.
pub const FILE_NAME: &str = "scan-cache.redb";
/// Entries fetched longer ago than this are dropped from disk at start.
const KEEP_ON_DISK: Duration = Duration::from_secs(30 * 24 * 3600);
/// redb's page cache (its default is 1 GiB).
const STORE_CACHE_BYTES: usize = 4 * 1024 * 1024;
/// Most writes committed in one transaction.
const WRITE_BATCH: usize = 1024;

/// What a cache entry is keyed by, as text in parts: `{integration}\n{repository}@{digest}`
/// for a scan, `{integration}\n{repository}:{tag}` for a tag's digest. The whole text is
/// what the store keeps ([`Key::to_string`]); lookups hash the parts.
#[derive(Debug, Clone, Copy)]
pub struct Key<'a>([&'a str; 5]);

impl<'a> Key<'a> {
    /// The key of `repository@digest`'s scan for `integration`.
    pub fn scan(integration: &'a str, repository: &'a str, digest: &'a str) -> Self {
        Key([integration, "\n", repository, "@", digest])
    }

    /// The key of `repository:tag`'s digest for `integration`.
    pub fn digest(integration: &'a str, repository: &'a str, tag: &'a str) -> Self {
        Key([integration, "\n", repository, ":", tag])
    }

    /// A key already written out.
    pub fn text(text: &'a str) -> Self {
        Key([text, "", "", "", ""])
    }
}

impl std::fmt::Display for Key<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.iter().try_for_each(|part| f.write_str(part))
    }
}

/// A scanner's answer for a digest and when it was fetched.
#[derive(Debug, Clone)]
pub struct CachedScan {
    /// The answer.
    pub outcome: Outcome,
    /// When Portcullis fetched it (freshness is measured from here).
    pub fetched_at: SystemTime,
}

/// A tag's digest (or its absence) and when it was resolved.
#[derive(Debug, Clone)]
pub struct CachedDigest {
    /// The resolution.
    pub resolved: Resolved,
    /// When it was resolved.
    pub fetched_at: SystemTime,
}

/// Why the on-disk store could not be used.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    /// The directory could not be created.
    #[error("creating the cache directory {0}: {1}")]
    Directory(PathBuf, std::io::Error),
    /// redb refused the file (another process holds it, corruption, I/O).
    #[error("opening the scan cache {0}: {1}")]
    Store(PathBuf, redb::Error),
}

/// What an in-memory scan entry costs besides its findings (key, slot, the findings'
/// allocation header), in bytes: the estimate the memory budget counts. Measured: a
/// million results of ten findings each take 187 MB (`bench/scale.sh`).
const SCAN_ENTRY_BYTES: u64 = 112;
/// What one finding costs.
const FINDING_BYTES: u64 = std::mem::size_of::<Finding>() as u64;
/// What an in-memory tag entry costs (key, slot, the digest's text).
const DIGEST_ENTRY_BYTES: u64 = 200;

/// How much memory the cache may hold: entries and bytes, whichever binds first. Scans
/// get seven eighths of the bytes, tag digests the rest.
#[derive(Debug, Clone, Copy)]
pub struct Budget {
    /// Most scans (and most tags) held.
    pub entries: usize,
    /// Most bytes held, as estimated.
    pub bytes: u64,
}

impl Budget {
    fn scan_bytes(self) -> u64 {
        self.bytes / 8 * 7
    }

    fn digest_bytes(self) -> u64 {
        self.bytes / 8
    }
}

/// An entry weighs its estimated bytes, and never less than its share of the entry
/// count: the byte budget then bounds the entries too.
#[derive(Clone)]
struct Weight {
    floor: u64,
}

impl Weight {
    fn new(bytes: u64, entries: usize) -> Self {
        Weight {
            floor: (bytes / entries.max(1) as u64).max(1),
        }
    }

    fn of(&self, bytes: u64) -> u64 {
        bytes.max(self.floor)
    }
}

impl quick_cache::Weighter<MemoryKey, CachedScan> for Weight {
    fn weight(&self, _key: &MemoryKey, value: &CachedScan) -> u64 {
        let findings = match &value.outcome {
            Outcome::Report(report) => report.findings().len(),
            _ => 0,
        };
        self.of(scan_bytes(findings))
    }
}

impl quick_cache::Weighter<MemoryKey, CachedDigest> for Weight {
    fn weight(&self, _key: &MemoryKey, _value: &CachedDigest) -> u64 {
        self.of(DIGEST_ENTRY_BYTES)
    }
}

fn scan_bytes(findings: usize) -> u64 {
    SCAN_ENTRY_BYTES + FINDING_BYTES * findings as u64
}

/// A key's 128-bit hash, as two words: 8-byte aligned, so an entry packs tighter than
/// with `u128`.
type MemoryKey = (u64, u64);

type Entries<V> = quick_cache::sync::Cache<MemoryKey, V, Weight>;

/// A SipHash keyed with 128 secret bits: std's `RandomState` is seeded from the
/// operating system's randomness, and its hashes of two fixed words are as secret.
fn random_hasher() -> SipHasher13 {
    let seed = RandomState::new();
    SipHasher13::new_with_keys(seed.hash_one(0u8), seed.hash_one(1u8))
}

/// The cache: memory first, disk behind it. In memory an entry is keyed by a 128-bit
/// hash of its key under a per-process random key (a fraction of the key's size, and
/// not collidable by someone choosing image names); on disk by the key itself.
///
/// At start the store is loaded into memory by a thread of its own, while the cache
/// already answers: until the load is done, what memory lacks is read from the store.
/// A replica is ready at once, whatever the store's size, and answers as it would
/// after the load.
pub struct ScanCache {
    memory: Arc<Memory>,
    disk: Option<DiskWriter>,
}

/// What lookups read, shared with the thread that loads the store.
struct Memory {
    scans: Entries<CachedScan>,
    digests: Entries<CachedDigest>,
    /// SipHash-1-3 with 128-bit output, keyed at random: one pass per lookup.
    hasher: SipHasher13,
    /// The store, while it is being loaded.
    warming: RwLock<Option<Arc<Database>>>,
    /// How many entries the load brought into memory, once it is done.
    loaded: OnceLock<usize>,
}

impl Memory {
    /// The memory key of the text `parts` make together: the keyed hash is fed the
    /// parts in turn, so a lookup builds no string (SipHash streams its input; a test
    /// checks that parts and the whole text give the same key).
    fn key_of(&self, parts: &[&str]) -> MemoryKey {
        let mut hasher = self.hasher;
        for part in parts {
            hasher.write(part.as_bytes());
        }
        let hash = hasher.finish128();
        (hash.h1, hash.h2)
    }

    fn key(&self, text: &str) -> MemoryKey {
        self.key_of(&[text])
    }

    /// `key`'s entry in `entries`, or while the store is loading, in its `table`.
    fn get<V: Stored>(
        &self,
        entries: &Entries<V>,
        table: TableDefinition<&str, &[u8]>,
        key: Key<'_>,
    ) -> Option<V>
    where
        Weight: quick_cache::Weighter<MemoryKey, V>,
    {
        let memory_key = self.key_of(&key.0);
        entries
            .get(&memory_key)
            .or_else(|| self.read_store(table, entries, memory_key, key))
    }

    /// While the store is loading: `key`'s entry in `table`, if stored, readable and
    /// recent enough, put into `entries` unless something (newer) got there first.
    #[cold]
    fn read_store<V: Stored>(
        &self,
        table: TableDefinition<&str, &[u8]>,
        entries: &Entries<V>,
        memory_key: MemoryKey,
        key: Key<'_>,
    ) -> Option<V>
    where
        Weight: quick_cache::Weighter<MemoryKey, V>,
    {
        let db = self
            .warming
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()?;
        let text = key.to_string();
        let read = || -> Result<Option<V>, redb::Error> {
            let txn = db.begin_read()?;
            let table = txn.open_table(table)?;
            Ok(table.get(text.as_str())?.and_then(|v| V::decode(v.value())))
        };
        let entry = match read() {
            Ok(entry) => entry.filter(|v| v.fetched_at() >= cutoff())?,
            Err(error) => {
                tracing::warn!(%error, "reading the scan cache while it loads failed; taken as not cached");
                return None;
            }
        };
        insert_absent(entries, memory_key, entry.clone());
        Some(entry)
    }
}

/// Puts `value` under `key` unless an entry is there, or being put there, already: the
/// store's entries never replace what was fetched since.
fn insert_absent<V: Clone>(entries: &Entries<V>, key: MemoryKey, value: V)
where
    Weight: quick_cache::Weighter<MemoryKey, V>,
{
    if let GuardResult::Guard(guard) = entries.get_value_or_guard(&key, Some(Duration::ZERO)) {
        let _ = guard.insert(value);
    }
}

/// Entries fetched before this are too old to use (and are dropped from disk).
fn cutoff() -> SystemTime {
    SystemTime::now()
        .checked_sub(KEEP_ON_DISK)
        .unwrap_or(UNIX_EPOCH)
}

impl ScanCache {
    /// A memory-only cache within `budget`.
    pub fn in_memory(budget: Budget) -> Self {
        let (scan_bytes, digest_bytes) = (budget.scan_bytes(), budget.digest_bytes());
        let memory = Memory {
            scans: Entries::with_weighter(
                budget.entries,
                scan_bytes,
                Weight::new(scan_bytes, budget.entries),
            ),
            digests: Entries::with_weighter(
                budget.entries,
                digest_bytes,
                Weight::new(digest_bytes, budget.entries),
            ),
            hasher: random_hasher(),
            warming: RwLock::new(None),
            loaded: OnceLock::new(),
        };
        ScanCache {
            memory: Arc::new(memory),
            disk: None,
        }
    }

    /// Opens (or creates) the store in `dir` and starts loading into memory, most
    /// recent first, what fits `budget` (the rest stays on disk); lookups read the store
    /// until the load is done ([`Self::loaded`]).
    pub fn open(dir: &Path, budget: Budget) -> Result<Self, CacheError> {
        Self::open_then(dir, budget, || {})
    }

    /// [`Self::open`], the loading thread running `first` before it loads.
    fn open_then(
        dir: &Path,
        budget: Budget,
        first: impl FnOnce() + Send + 'static,
    ) -> Result<Self, CacheError> {
        std::fs::create_dir_all(dir).map_err(|e| CacheError::Directory(dir.to_owned(), e))?;
        let path = dir.join(FILE_NAME);
        let store_error = |e: redb::Error| CacheError::Store(path.clone(), e);
        // redb caches pages it reads; everything is loaded into memory once, so its
        // own cache only needs to serve the writer.
        let db = Database::builder()
            .set_cache_size(STORE_CACHE_BYTES)
            .create(&path)
            .map_err(|e| store_error(e.into()))?;
        create_tables(&db).map_err(store_error)?;
        let mut cache = ScanCache::in_memory(budget);
        let db = Arc::new(db);
        *cache
            .memory
            .warming
            .write()
            .unwrap_or_else(|e| e.into_inner()) = Some(db.clone());
        let (sender, receiver) = mpsc::channel();
        let closed = Arc::new(AtomicBool::new(false));
        let store = Store {
            db,
            memory: cache.memory.clone(),
            path: path.clone(),
            closed: closed.clone(),
        };
        std::thread::Builder::new()
            .name("scan-cache".into())
            .spawn(move || {
                first();
                write_loop(store.load(budget), receiver)
            })
            .map_err(|e| store_error(redb::Error::Io(e)))?;
        cache.disk = Some(DiskWriter { sender, closed });
        Ok(cache)
    }

    /// How many stored entries the start loaded into memory, once the load is done.
    pub fn loaded(&self) -> Option<usize> {
        self.memory.loaded.get().copied()
    }

    /// A cached scan, from memory (or, while loading, the store).
    pub fn scan(&self, key: Key<'_>) -> Option<CachedScan> {
        self.memory.get(&self.memory.scans, SCANS, key)
    }

    /// A cached tag resolution, from memory (or, while loading, the store).
    pub fn digest(&self, key: Key<'_>) -> Option<CachedDigest> {
        self.memory.get(&self.memory.digests, DIGESTS, key)
    }

    /// Caches a scan answer, in memory now and on disk shortly.
    pub fn put_scan(&self, key: String, value: CachedScan) {
        self.memory
            .scans
            .insert(self.memory.key(&key), value.clone());
        if let Some(disk) = &self.disk {
            disk.send(Write::Scan(key, encode_scan(&value)));
        }
    }

    /// Caches a tag resolution, in memory now and on disk shortly.
    pub fn put_digest(&self, key: String, value: CachedDigest) {
        self.memory
            .digests
            .insert(self.memory.key(&key), value.clone());
        if let Some(disk) = &self.disk {
            disk.send(Write::Digest(key, encode_digest(&value)));
        }
    }

    /// At a stop: commits every write so far and closes the store, waiting at most 10 s
    /// (a stop's grace period). What is not written by then is fetched again after a
    /// restart; what is cached later stays in memory only. A load still running stops.
    pub fn close(&self) {
        self.close_within(Duration::from_secs(10));
    }

    /// [`Self::close`], waiting at most `limit`; whether every write was committed and
    /// the store closed. A store closed this way opens without redb's repair, which
    /// reads and checksums the whole file after an unclean stop.
    pub fn close_within(&self, limit: Duration) -> bool {
        let Some(disk) = &self.disk else {
            return true;
        };
        let (done, wait) = mpsc::channel();
        disk.send(Write::Close(done));
        disk.closed.store(true, Ordering::Release);
        wait.recv_timeout(limit).is_ok()
    }
}

struct DiskWriter {
    sender: mpsc::Sender<Write>,
    /// The store was closed at a stop: later writes stay in memory, quietly, and a load
    /// still running stops.
    closed: Arc<AtomicBool>,
}

impl DiskWriter {
    fn send(&self, write: Write) {
        if self.closed.load(Ordering::Acquire) {
            return;
        }
        if self.sender.send(write).is_err() {
            tracing::error!("the scan cache writer has stopped; results are kept in memory only");
        }
    }
}

/// A cache dropped without a stop (a test, a failed start) stops its load too, so the
/// store's lock is let go soon.
impl Drop for DiskWriter {
    fn drop(&mut self) {
        self.closed.store(true, Ordering::Release);
    }
}

enum Write {
    Scan(String, Vec<u8>),
    Digest(String, Vec<u8>),
    /// Commit what came before, close the store, then answer.
    Close(mpsc::Sender<()>),
}

/// The store's thread: it loads the store into memory, then commits writes.
struct Store {
    db: Arc<Database>,
    memory: Arc<Memory>,
    path: PathBuf,
    closed: Arc<AtomicBool>,
}

impl Store {
    /// Loads the store into memory (see [`load`]), then ends its reading by lookups and
    /// returns it, now this thread's alone.
    fn load(self, budget: Budget) -> Database {
        let started = Instant::now();
        let path = self.path.display();
        match load(&self.db, &self.memory, budget, &self.closed) {
            Ok(loaded) => {
                let _ = self.memory.loaded.set(loaded);
                let took_ms = started.elapsed().as_millis();
                // Cut short by a stop, it says so.
                let stopped = self.closed.load(Ordering::Acquire);
                tracing::info!(loaded, took_ms, stopped, %path, "scan cache loaded");
            }
            Err(error) => {
                let _ = self.memory.loaded.set(0);
                tracing::error!(%error, %path, "loading the scan cache failed; what it holds is fetched again when needed");
            }
        }
        self.memory
            .warming
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        // A lookup that took the store before finishes its one read.
        let mut db = self.db;
        loop {
            match Arc::try_unwrap(db) {
                Ok(db) => return db,
                Err(shared) => {
                    db = shared;
                    std::thread::yield_now();
                }
            }
        }
    }
}

/// Commits writes in batches until asked to close (or every sender is gone), then closes
/// the store cleanly.
fn write_loop(db: Database, receiver: mpsc::Receiver<Write>) {
    let mut closing = Vec::new();
    while closing.is_empty() {
        let Ok(first) = receiver.recv() else {
            break;
        };
        let mut batch = vec![first];
        while batch.len() < WRITE_BATCH {
            match receiver.try_recv() {
                Ok(write) => batch.push(write),
                Err(_) => break,
            }
        }
        let result = (|| -> Result<(), redb::Error> {
            let txn = db.begin_write()?;
            {
                let mut scans = txn.open_table(SCANS)?;
                let mut digests = txn.open_table(DIGESTS)?;
                for write in batch {
                    match write {
                        Write::Scan(key, value) => {
                            drop(scans.insert(key.as_str(), value.as_slice())?)
                        }
                        Write::Digest(key, value) => {
                            drop(digests.insert(key.as_str(), value.as_slice())?)
                        }
                        Write::Close(done) => closing.push(done),
                    }
                }
            }
            txn.commit()?;
            Ok(())
        })();
        if let Err(error) = result {
            tracing::error!(%error, "writing the scan cache failed; those results are kept in memory only");
        }
    }
    // Dropping the database records a clean shutdown.
    drop(db);
    for done in closing {
        let _ = done.send(());
    }
}

/// Creates the tables on first use, so that lookups and the writer find them.
fn create_tables(db: &Database) -> Result<(), redb::Error> {
    let txn = db.begin_write()?;
    txn.open_table(SCANS)?;
    txn.open_table(DIGESTS)?;
    txn.commit()?;
    Ok(())
}

/// Loads both tables into `memory`, most recent first, as far as `budget` goes, until
/// `closed`; entries older than [`KEEP_ON_DISK`] or unreadable (a format change) are
/// dropped from disk.
fn load(
    db: &Database,
    memory: &Memory,
    budget: Budget,
    closed: &AtomicBool,
) -> Result<usize, redb::Error> {
    let cutoff = cutoff();
    let read = db.begin_read()?;
    let key = |text: &str| memory.key(text);
    let scans = Loading {
        table: read.open_table(SCANS)?,
        memory: &memory.scans,
        bytes: budget.scan_bytes(),
        weight: Weight::new(budget.scan_bytes(), budget.entries),
        cutoff,
        closed,
    }
    .load(key)?;
    let digests = Loading {
        table: read.open_table(DIGESTS)?,
        memory: &memory.digests,
        bytes: budget.digest_bytes(),
        weight: Weight::new(budget.digest_bytes(), budget.entries),
        cutoff,
        closed,
    }
    .load(key)?;
    drop(read);
    if !scans.dropped.is_empty() || !digests.dropped.is_empty() {
        let txn = db.begin_write()?;
        {
            let mut table = txn.open_table(SCANS)?;
            for key in &scans.dropped {
                table.remove(key.as_str())?;
            }
            let mut table = txn.open_table(DIGESTS)?;
            for key in &digests.dropped {
                table.remove(key.as_str())?;
            }
        }
        txn.commit()?;
    }
    Ok(scans.loaded + digests.loaded)
}

/// An entry as stored on disk.
trait Stored: Sized + Clone {
    fn decode(bytes: &[u8]) -> Option<Self>;
    fn fetched_at(&self) -> SystemTime;
    /// When it was fetched and what it would weigh in memory, read without decoding it
    /// all.
    fn header(bytes: &[u8]) -> Option<(SystemTime, u64)>;
}

impl Stored for CachedScan {
    fn decode(bytes: &[u8]) -> Option<Self> {
        decode_scan(bytes)
    }

    fn fetched_at(&self) -> SystemTime {
        self.fetched_at
    }

    fn header(bytes: &[u8]) -> Option<(SystemTime, u64)> {
        scan_header(bytes)
    }
}

impl Stored for CachedDigest {
    fn decode(bytes: &[u8]) -> Option<Self> {
        decode_digest(bytes)
    }

    fn fetched_at(&self) -> SystemTime {
        self.fetched_at
    }

    fn header(bytes: &[u8]) -> Option<(SystemTime, u64)> {
        decode_digest(bytes).map(|d| (d.fetched_at, DIGEST_ENTRY_BYTES))
    }
}

/// One table being loaded into its memory cache: within `bytes` as `weight` weighs
/// entries, dropping what was fetched before `cutoff`, until `closed`.
struct Loading<'c, V> {
    table: redb::ReadOnlyTable<&'static str, &'static [u8]>,
    memory: &'c Entries<V>,
    bytes: u64,
    weight: Weight,
    cutoff: SystemTime,
    closed: &'c AtomicBool,
}

/// What loading a table did.
struct Loaded {
    loaded: usize,
    /// Keys of entries too old or unreadable, to drop from disk.
    dropped: Vec<String>,
}

impl<'c, V: Stored> Loading<'c, V>
where
    Weight: quick_cache::Weighter<MemoryKey, V>,
{
    /// Everything in one pass when it fits the budget (the usual case). When it does
    /// not, the most recent entries that fit: a pass over the headers finds the oldest
    /// fetch time that fits, what the first pass put in memory from before then is
    /// removed, and a second pass loads what is as recent. Nothing replaces an entry
    /// cached meanwhile, which is newer.
    fn load(&self, key: impl Fn(&str) -> MemoryKey) -> Result<Loaded, redb::Error> {
        use quick_cache::Weighter as _;
        let mut loaded = Loaded {
            loaded: 0,
            dropped: Vec::new(),
        };
        let mut total = 0u64;
        for item in self.table.iter()? {
            if self.closed.load(Ordering::Relaxed) {
                break;
            }
            let (stored, value) = item?;
            let Some(entry) = V::decode(value.value()).filter(|v| v.fetched_at() >= self.cutoff)
            else {
                loaded.dropped.push(stored.value().to_owned());
                continue;
            };
            let memory_key = key(stored.value());
            total += self.weight.weight(&memory_key, &entry);
            if total > self.bytes {
                return self.most_recent(key);
            }
            insert_absent(self.memory, memory_key, entry);
            loaded.loaded += 1;
        }
        Ok(loaded)
    }

    fn most_recent(&self, key: impl Fn(&str) -> MemoryKey) -> Result<Loaded, redb::Error> {
        let mut dropped = Vec::new();
        let mut entries: Vec<(SystemTime, u64)> = Vec::new();
        for item in self.table.iter()? {
            if self.closed.load(Ordering::Relaxed) {
                return Ok(Loaded { loaded: 0, dropped });
            }
            let (stored, value) = item?;
            match V::header(value.value()) {
                Some((fetched, size)) if fetched >= self.cutoff => {
                    entries.push((fetched, self.weight.of(size)))
                }
                _ => dropped.push(stored.value().to_owned()),
            }
        }
        entries.sort_unstable_by_key(|(fetched, _)| std::cmp::Reverse(*fetched));
        let mut total = 0u64;
        let since = entries
            .iter()
            .take_while(|(_, weight)| {
                total += weight;
                total <= self.bytes
            })
            .last()
            .map_or(SystemTime::now() + KEEP_ON_DISK, |(fetched, _)| *fetched);
        drop(entries);
        self.memory.retain(|_, entry| entry.fetched_at() >= since);
        let mut loaded = 0;
        for item in self.table.iter()? {
            if self.closed.load(Ordering::Relaxed) {
                break;
            }
            let (stored, value) = item?;
            if let Some(entry) = V::decode(value.value()).filter(|v| v.fetched_at() >= since) {
                insert_absent(self.memory, key(stored.value()), entry);
                loaded += 1;
            }
        }
        Ok(Loaded { loaded, dropped })
    }
}

#[derive(Serialize, Deserialize)]
struct StoredDigest {
    /// The digest, or none when the tag was not found.
    digest: Option<String>,
    fetched: u64,
}

fn secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs()
}

fn time(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(secs)
}

/// On-disk form of a scan answer, read without allocating per finding (loading 100,000
/// results must not leave the heap fragmented):
/// `[1][outcome: 0 report, 1 not found, 2 pending][fetched: u64][scanned: u64]`
/// then per finding `[severity: index in Severity::DESCENDING][fixable: 0|1][len: u16][ID]`,
/// integers little-endian.
const SCAN_FORMAT: u8 = 1;

fn encode_scan(value: &CachedScan) -> Vec<u8> {
    let (outcome, report) = match &value.outcome {
        Outcome::Report(report) => (0u8, Some(report)),
        Outcome::NotFound => (1, None),
        Outcome::Pending => (2, None),
    };
    let mut out = vec![SCAN_FORMAT, outcome];
    out.extend_from_slice(&secs(value.fetched_at).to_le_bytes());
    // Reports are cached with their scan time filled in (see the scan service).
    let scanned = report.map_or(0, |r| secs(r.scanned_at.unwrap_or(value.fetched_at)));
    out.extend_from_slice(&scanned.to_le_bytes());
    for finding in report.iter().flat_map(|r| r.findings()) {
        let text = finding.id.as_str();
        let id = text.as_bytes();
        let Ok(len) = u16::try_from(id.len()) else {
            continue;
        };
        let severity = finding.severity.rank() as u8;
        out.extend_from_slice(&[severity, u8::from(finding.fixable)]);
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(id);
    }
    out
}

/// The first `n` bytes of `bytes`, advancing it.
fn take<'a>(bytes: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
    let (head, tail) = bytes.split_at_checked(n)?;
    *bytes = tail;
    Some(head)
}

/// When a stored scan was fetched and what it would weigh in memory, from its bytes
/// (nothing interned, nothing allocated per finding).
fn scan_header(bytes: &[u8]) -> Option<(SystemTime, u64)> {
    let mut rest = bytes;
    let header = take(&mut rest, 18)?;
    if header[0] != SCAN_FORMAT {
        return None;
    }
    let fetched = time(u64::from_le_bytes(header[2..10].try_into().ok()?));
    let mut findings = 0;
    while !rest.is_empty() {
        let head = take(&mut rest, 4)?;
        take(&mut rest, u16::from_le_bytes([head[2], head[3]]) as usize)?;
        findings += 1;
    }
    Some((fetched, scan_bytes(findings)))
}

fn decode_scan(bytes: &[u8]) -> Option<CachedScan> {
    let mut rest = bytes;
    let header = take(&mut rest, 18)?;
    if header[0] != SCAN_FORMAT {
        return None;
    }
    let fetched = u64::from_le_bytes(header[2..10].try_into().ok()?);
    let scanned = u64::from_le_bytes(header[10..18].try_into().ok()?);
    let outcome = match header[1] {
        0 => {
            // Each finding takes at least its 4-byte head: room for all at once, not a
            // vector grown three times for each of a million stored reports.
            let mut findings = Vec::with_capacity(rest.len() / 4);
            // Written from a report, so sorted by ID and without repeats; checked, and
            // built through `ScanReport::new` if not (a file from elsewhere).
            let mut sorted = true;
            let mut previous = "";
            while !rest.is_empty() {
                let head = take(&mut rest, 4)?;
                let len = u16::from_le_bytes([head[2], head[3]]) as usize;
                let id = std::str::from_utf8(take(&mut rest, len)?).ok()?;
                sorted &= previous < id && !id.bytes().any(|b| b.is_ascii_lowercase());
                previous = id;
                findings.push(Finding {
                    id: VulnId::new(id),
                    severity: *Severity::DESCENDING.get(head[0] as usize)?,
                    fixable: head[1] == 1,
                });
            }
            let scanned = Some(time(scanned));
            Outcome::Report(if sorted {
                ScanReport::sorted(scanned, findings)
            } else {
                ScanReport::new(scanned, findings)
            })
        }
        1 => Outcome::NotFound,
        2 => Outcome::Pending,
        _ => return None,
    };
    Some(CachedScan {
        outcome,
        fetched_at: time(fetched),
    })
}

fn encode_digest(value: &CachedDigest) -> Vec<u8> {
    let digest = match &value.resolved {
        Resolved::Digest(d) => Some(d.to_string()),
        Resolved::NotFound => None,
    };
    serde_json::to_vec(&StoredDigest {
        digest,
        fetched: secs(value.fetched_at),
    })
    .unwrap_or_default()
}

fn decode_digest(bytes: &[u8]) -> Option<CachedDigest> {
    let stored: StoredDigest = serde_json::from_slice(bytes).ok()?;
    Some(CachedDigest {
        resolved: stored
            .digest
            .map_or(Resolved::NotFound, |d| Resolved::Digest(d.into())),
        fetched_at: time(stored.fetched),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const BUDGET: Budget = Budget {
        entries: 100,
        bytes: 1 << 30,
    };

    fn report() -> CachedScan {
        CachedScan {
            outcome: Outcome::Report(ScanReport::new(
                Some(time(1_700_000_000)),
                [Finding {
                    id: VulnId::new("CVE-2024-1"),
                    severity: Severity::Critical,
                    fixable: true,
                }],
            )),
            fetched_at: SystemTime::now(),
        }
    }

    /// How many entries `cache`'s start loaded, once it has (within 10 s).
    fn loaded(cache: &ScanCache) -> usize {
        let until = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(loaded) = cache.loaded() {
                return loaded;
            }
            assert!(Instant::now() < until, "the store did not load within 10 s");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// A stop closes the store cleanly: the next open needs no repair (which would read
    /// and checksum the whole file).
    #[test]
    fn a_closed_store_opens_without_a_repair() {
        let dir = tempfile::tempdir().unwrap();
        let cache = ScanCache::open(dir.path(), BUDGET).unwrap();
        cache.put_scan("i\nr/a@sha256:aa".into(), report());
        assert!(cache.close_within(Duration::from_secs(10)));
        let repaired = std::rc::Rc::new(std::cell::Cell::new(false));
        let seen = repaired.clone();
        let opened = Database::builder()
            .set_repair_callback(move |session| {
                seen.set(true);
                session.abort();
            })
            .create(dir.path().join(FILE_NAME));
        assert!(opened.is_ok(), "{:?}", opened.err());
        assert!(!repaired.get(), "the store needed a repair");
        drop(opened);
        drop(cache);
    }

    /// A stored report is taken as written when its IDs are in order; one that is not
    /// (a file from elsewhere) is read as a scanner's answer is: sorted, repeats merged.
    #[test]
    fn stored_findings_out_of_order_are_sorted_and_merged() {
        let finding = |id: &str, severity, fixable| Finding {
            id: VulnId::new(id),
            severity,
            fixable,
        };
        let stored = |findings: Vec<Finding>| {
            let mut bytes = encode_scan(&report());
            bytes.truncate(18);
            for f in findings {
                let id = f.id.to_string();
                bytes.extend_from_slice(&[f.severity.rank() as u8, u8::from(f.fixable)]);
                bytes.extend_from_slice(&(id.len() as u16).to_le_bytes());
                bytes.extend_from_slice(id.as_bytes());
            }
            bytes
        };
        let read = |bytes: &[u8]| match decode_scan(bytes).unwrap().outcome {
            Outcome::Report(report) => report
                .findings()
                .iter()
                .map(|f| (f.id.to_string(), f.severity, f.fixable))
                .collect::<Vec<_>>(),
            _ => panic!("a report"),
        };
        let in_order = stored(vec![
            finding("CVE-1", Severity::Low, false),
            finding("CVE-2", Severity::High, true),
        ]);
        assert_eq!(
            read(&in_order),
            [
                ("CVE-1".to_owned(), Severity::Low, false),
                ("CVE-2".to_owned(), Severity::High, true)
            ]
        );
        // A report cut short is unreadable (dropped from disk when loading).
        let mut cut = stored(vec![
            finding("CVE-3", Severity::Low, false),
            finding("CVE-4", Severity::Low, false),
        ]);
        cut.pop();
        assert!(decode_scan(&cut).is_none());
        let out_of_order = stored(vec![
            finding("CVE-2", Severity::Low, false),
            finding("CVE-1", Severity::Medium, false),
            finding("CVE-2", Severity::Critical, true),
        ]);
        assert_eq!(
            read(&out_of_order),
            [
                ("CVE-1".to_owned(), Severity::Medium, false),
                ("CVE-2".to_owned(), Severity::Critical, true)
            ]
        );
    }

    /// A store of `r/a`'s report, `r/b`'s pending scan, `r/a:v1`'s digest and a
    /// month-old tag's absence.
    fn stored(dir: &Path) {
        let cache = ScanCache::open(dir, BUDGET).unwrap();
        assert_eq!(loaded(&cache), 0);
        cache.put_scan("i\nr/a@sha256:aa".into(), report());
        cache.put_scan(
            "i\nr/b@sha256:bb".into(),
            CachedScan {
                outcome: Outcome::Pending,
                fetched_at: SystemTime::now(),
            },
        );
        cache.put_digest(
            "i\nr/a:v1".into(),
            CachedDigest {
                resolved: Resolved::Digest("sha256:aa".into()),
                fetched_at: SystemTime::now(),
            },
        );
        cache.put_digest(
            "i\nr/old:v1".into(),
            CachedDigest {
                resolved: Resolved::NotFound,
                fetched_at: time(1_000),
            },
        );
        assert!(cache.close_within(Duration::from_secs(10)));
    }

    /// `cache` reads what [`stored`] wrote, but for the month-old tag.
    fn assert_reads_stored(cache: &ScanCache) {
        let Some(CachedScan {
            outcome: Outcome::Report(r),
            ..
        }) = cache.scan(Key::scan("i", "r/a", "sha256:aa"))
        else {
            panic!("the report is read");
        };
        assert_eq!(&*r.findings()[0].id.as_str(), "CVE-2024-1");
        assert_eq!(r.scanned_at, Some(time(1_700_000_000)));
        assert_eq!(
            cache
                .digest(Key::digest("i", "r/a", "v1"))
                .unwrap()
                .resolved,
            Resolved::Digest("sha256:aa".into())
        );
        assert!(cache.digest(Key::digest("i", "r/old", "v1")).is_none());
        assert!(cache.scan(Key::scan("i", "r/c", "sha256:cc")).is_none());
    }

    fn pending(cache: &ScanCache, key: Key<'_>) -> bool {
        matches!(cache.scan(key).unwrap().outcome, Outcome::Pending)
    }

    #[test]
    fn survives_a_reopen_and_drops_what_is_too_old() {
        let dir = tempfile::tempdir().unwrap();
        stored(dir.path());
        let cache = ScanCache::open(dir.path(), BUDGET).expect("the closed store reopens");
        assert_eq!(loaded(&cache), 3, "the month-old tag is dropped");
        assert_reads_stored(&cache);
        assert!(pending(&cache, Key::scan("i", "r/b", "sha256:bb")));
    }

    /// A store [`stored`] wrote, opened with its load held until the sender sends.
    fn opened_held() -> (tempfile::TempDir, ScanCache, mpsc::Sender<()>) {
        let dir = tempfile::tempdir().unwrap();
        stored(dir.path());
        let (go, wait) = mpsc::channel::<()>();
        let cache = ScanCache::open_then(dir.path(), BUDGET, move || {
            let _ = wait.recv();
        })
        .unwrap();
        (dir, cache, go)
    }

    /// Until the store is loaded, what memory lacks is read from the store, as the load
    /// would have put it (a month-old entry is not), and the load never replaces what
    /// was cached meanwhile.
    #[test]
    fn lookups_read_the_store_while_it_loads() {
        let (_dir, cache, go) = opened_held();
        assert_eq!(cache.loaded(), None);
        assert_reads_stored(&cache);
        cache.put_scan("i\nr/b@sha256:bb".into(), report());
        go.send(()).unwrap();
        assert_eq!(loaded(&cache), 3, "the month-old tag is dropped");
        assert!(
            !pending(&cache, Key::scan("i", "r/b", "sha256:bb")),
            "what was cached during the load stays"
        );
        assert!(cache.memory.warming.read().unwrap().is_none());
    }

    /// A stop during the load stops it, and still closes the store cleanly.
    #[test]
    fn a_stop_during_the_load_ends_it() {
        let (dir, cache, go) = opened_held();
        std::thread::scope(|scope| {
            let closing = scope.spawn(|| cache.close_within(Duration::from_secs(10)));
            let disk = cache.disk.as_ref().unwrap();
            while !disk.closed.load(Ordering::Acquire) {
                std::thread::yield_now();
            }
            go.send(()).unwrap();
            assert!(closing.join().unwrap(), "the store closes");
        });
        assert_eq!(cache.loaded(), Some(0), "nothing loaded after the stop");
        drop(cache);
        let reopened = ScanCache::open(dir.path(), BUDGET).unwrap();
        assert_eq!(loaded(&reopened), 3);
    }

    /// A stop during the pass over an oversized store's headers ends it there: what
    /// memory holds is not evicted to make room for a second pass.
    #[test]
    fn a_stop_ends_the_pass_over_an_oversized_stores_headers() {
        let dir = tempfile::tempdir().unwrap();
        stored(dir.path());
        let db = Database::open(dir.path().join(FILE_NAME)).unwrap();
        let read = db.begin_read().unwrap();
        let memory = ScanCache::in_memory(BUDGET);
        let held = memory.memory.key("i\nr/held:v1");
        memory.memory.digests.insert(
            held,
            CachedDigest {
                resolved: Resolved::NotFound,
                fetched_at: time(2_000),
            },
        );
        let closed = AtomicBool::new(true);
        let loading = Loading {
            table: read.open_table(DIGESTS).unwrap(),
            memory: &memory.memory.digests,
            bytes: 0,
            weight: Weight::new(0, BUDGET.entries),
            cutoff: cutoff(),
            closed: &closed,
        };
        let loaded = loading.most_recent(|text| memory.memory.key(text)).unwrap();
        assert_eq!(loaded.loaded, 0);
        assert!(loaded.dropped.is_empty(), "{:?}", loaded.dropped);
        assert!(
            memory.memory.digests.get(&held).is_some(),
            "a stopped load evicts nothing"
        );
    }

    /// Lookups hash a key's parts; the store keeps its text (a format files on disk
    /// already use). Both must name the same entry.
    #[test]
    fn a_key_in_parts_finds_the_entry_stored_under_its_text() {
        let cache = ScanCache::in_memory(BUDGET);
        let key = Key::scan("harbor", "ghcr.io/acme/api", "sha256:aa");
        assert_eq!(key.to_string(), "harbor\nghcr.io/acme/api@sha256:aa");
        cache.put_scan(key.to_string(), report_with(1, SystemTime::now()));
        assert!(cache.scan(key).is_some());
        assert!(
            cache
                .scan(Key::text("harbor\nghcr.io/acme/api@sha256:aa"))
                .is_some()
        );
        assert!(
            cache
                .scan(Key::scan("harbor", "ghcr.io/acme/api", "sha256:ab"))
                .is_none()
        );
    }

    fn report_with(findings: usize, fetched_at: SystemTime) -> CachedScan {
        CachedScan {
            outcome: Outcome::Report(ScanReport::new(
                Some(fetched_at),
                (0..findings).map(|i| Finding {
                    id: VulnId::new(&format!("CVE-2099-{i}")),
                    severity: Severity::High,
                    fixable: false,
                }),
            )),
            fetched_at,
        }
    }

    /// The byte budget binds as well as the entry count: large reports make room by
    /// evicting; at start, the most recent results that fit are loaded, the rest stay on
    /// disk.
    #[test]
    fn memory_is_bounded_in_bytes_and_loading_takes_the_most_recent() {
        // Room for about ten reports of 1,000 findings (8 KiB each).
        let budget = Budget {
            entries: 10_000,
            bytes: 8 * 10 * 8 * 1024 / 7,
        };
        let memory = ScanCache::in_memory(budget);
        let now = SystemTime::now();
        for i in 0..40 {
            memory.put_scan(format!("i\nr/x@{i}"), report_with(1000, now));
        }
        let held = (0..40)
            .filter(|i| memory.scan(Key::text(&format!("i\nr/x@{i}"))).is_some())
            .count();
        assert!(
            (5..=12).contains(&held),
            "{held} large reports held in a 10-report budget"
        );

        let dir = tempfile::tempdir().unwrap();
        {
            let cache = ScanCache::open(dir.path(), BUDGET).unwrap();
            for i in 0..40u64 {
                let fetched = now - Duration::from_secs(3600 * (40 - i));
                cache.put_scan(format!("i\nr/y@{i}"), report_with(1000, fetched));
            }
            cache.close();
        }
        let cache = ScanCache::open(dir.path(), budget).expect("the closed store reopens");
        let loaded = loaded(&cache);
        assert!((5..=10).contains(&loaded), "{loaded} loaded");
        let present: Vec<u64> = (0..40)
            .filter(|i| cache.scan(Key::text(&format!("i\nr/y@{i}"))).is_some())
            .collect();
        // (quick_cache bounds each shard, so a few may be evicted on the way in.)
        assert!(present.len() >= 4, "{present:?}");
        assert!(
            present.iter().all(|i| *i >= 40 - loaded as u64),
            "the newest: {present:?}"
        );
    }

    #[test]
    fn a_held_store_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let _first = ScanCache::open(dir.path(), BUDGET).unwrap();
        let error = ScanCache::open(dir.path(), BUDGET)
            .err()
            .unwrap()
            .to_string();
        assert!(error.contains(FILE_NAME), "{error}");
    }
}
