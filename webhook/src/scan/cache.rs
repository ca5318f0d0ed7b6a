//! Scan results and tag → digest mappings: a bounded in-memory cache (what the request
//! path reads, without I/O) written through to an embedded store on disk (redb), which
//! is loaded at start so decisions survive restarts and outages.

use std::hash::{BuildHasher, RandomState};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use portcullis_crds::Severity;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

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

/// The cache: memory first, disk behind it. In memory an entry is keyed by a 128-bit
/// hash of its key under per-process random keys (a fraction of the key's size, and
/// not collidable by someone choosing image names); on disk by the key itself.
pub struct ScanCache {
    scans: quick_cache::sync::Cache<u128, CachedScan>,
    digests: quick_cache::sync::Cache<u128, CachedDigest>,
    hashers: (RandomState, RandomState),
    disk: Option<DiskWriter>,
}

impl ScanCache {
    /// A memory-only cache holding at most `capacity` scans (and as many tags).
    pub fn in_memory(capacity: usize) -> Self {
        ScanCache {
            scans: quick_cache::sync::Cache::new(capacity),
            digests: quick_cache::sync::Cache::new(capacity),
            hashers: (RandomState::new(), RandomState::new()),
            disk: None,
        }
    }

    /// Opens (or creates) the store in `dir` and loads what it holds into memory.
    /// Returns the cache and how many entries were loaded.
    pub fn open(dir: &Path, capacity: usize) -> Result<(Self, usize), CacheError> {
        std::fs::create_dir_all(dir).map_err(|e| CacheError::Directory(dir.to_owned(), e))?;
        let path = dir.join(FILE_NAME);
        let store_error = |e: redb::Error| CacheError::Store(path.clone(), e);
        // redb caches pages it reads; everything is loaded into memory once, so its
        // own cache only needs to serve the writer.
        let db = Database::builder()
            .set_cache_size(STORE_CACHE_BYTES)
            .create(&path)
            .map_err(|e| store_error(e.into()))?;
        let mut cache = ScanCache::in_memory(capacity);
        let loaded = load(&db, &cache).map_err(store_error)?;
        let (sender, receiver) = mpsc::channel();
        std::thread::Builder::new()
            .name("scan-cache-writer".into())
            .spawn(move || write_loop(db, receiver))
            .map_err(|e| store_error(redb::Error::Io(e)))?;
        cache.disk = Some(DiskWriter { sender });
        Ok((cache, loaded))
    }

    fn memory_key(&self, key: &str) -> u128 {
        (u128::from(self.hashers.0.hash_one(key)) << 64) | u128::from(self.hashers.1.hash_one(key))
    }

    /// A cached scan, from memory.
    pub fn scan(&self, key: &str) -> Option<CachedScan> {
        self.scans.get(&self.memory_key(key))
    }

    /// A cached tag resolution, from memory.
    pub fn digest(&self, key: &str) -> Option<CachedDigest> {
        self.digests.get(&self.memory_key(key))
    }

    /// Caches a scan answer, in memory now and on disk shortly.
    pub fn put_scan(&self, key: String, value: CachedScan) {
        let value = CachedScan {
            outcome: match value.outcome {
                Outcome::Report(report) => Outcome::Report(report.without_digest()),
                other => other,
            },
            ..value
        };
        self.scans.insert(self.memory_key(&key), value.clone());
        if let Some(disk) = &self.disk {
            disk.send(Write::Scan(key, encode_scan(&value)));
        }
    }

    /// Caches a tag resolution, in memory now and on disk shortly.
    pub fn put_digest(&self, key: String, value: CachedDigest) {
        self.digests.insert(self.memory_key(&key), value.clone());
        if let Some(disk) = &self.disk {
            disk.send(Write::Digest(key, encode_digest(&value)));
        }
    }

    /// Waits until every write so far is committed to disk.
    pub fn flush(&self) {
        if let Some(disk) = &self.disk {
            let (done, wait) = mpsc::channel();
            disk.send(Write::Flush(done));
            let _ = wait.recv_timeout(Duration::from_secs(10));
        }
    }
}

struct DiskWriter {
    sender: mpsc::Sender<Write>,
}

impl DiskWriter {
    fn send(&self, write: Write) {
        if self.sender.send(write).is_err() {
            tracing::error!("the scan cache writer has stopped; results are kept in memory only");
        }
    }
}

enum Write {
    Scan(String, Vec<u8>),
    Digest(String, Vec<u8>),
    Flush(mpsc::Sender<()>),
}

/// Commits writes in batches until every sender is gone.
fn write_loop(db: Database, receiver: mpsc::Receiver<Write>) {
    while let Ok(first) = receiver.recv() {
        let mut batch = vec![first];
        while batch.len() < WRITE_BATCH {
            match receiver.try_recv() {
                Ok(write) => batch.push(write),
                Err(_) => break,
            }
        }
        let mut flushed = Vec::new();
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
                        Write::Flush(done) => flushed.push(done),
                    }
                }
            }
            txn.commit()?;
            Ok(())
        })();
        if let Err(error) = result {
            tracing::error!(%error, "writing the scan cache failed; those results are kept in memory only");
        }
        for done in flushed {
            let _ = done.send(());
        }
    }
}

/// Loads both tables into `cache`, dropping entries older than [`KEEP_ON_DISK`] or
/// unreadable ones (a format change) from disk.
fn load(db: &Database, cache: &ScanCache) -> Result<usize, redb::Error> {
    let cutoff = SystemTime::now()
        .checked_sub(KEEP_ON_DISK)
        .unwrap_or(UNIX_EPOCH);
    let mut dropped: Vec<(bool, String)> = Vec::new();
    let mut loaded = 0;
    let txn = db.begin_write()?;
    {
        // Create the tables on first use, so readers and the writer find them.
        txn.open_table(SCANS)?;
        txn.open_table(DIGESTS)?;
    }
    txn.commit()?;
    let read = db.begin_read()?;
    for (is_scan, table) in [(true, SCANS), (false, DIGESTS)] {
        let table = read.open_table(table)?;
        for item in table.iter()? {
            let (key, value) = item?;
            let (key, value) = (key.value().to_owned(), value.value());
            let kept = if is_scan {
                decode_scan(value)
                    .filter(|v| v.fetched_at >= cutoff)
                    .map(|v| cache.scans.insert(cache.memory_key(&key), v))
            } else {
                decode_digest(value)
                    .filter(|v| v.fetched_at >= cutoff)
                    .map(|v| cache.digests.insert(cache.memory_key(&key), v))
            };
            match kept {
                Some(()) => loaded += 1,
                None => dropped.push((is_scan, key)),
            }
        }
    }
    drop(read);
    if !dropped.is_empty() {
        let txn = db.begin_write()?;
        {
            let mut scans = txn.open_table(SCANS)?;
            let mut digests = txn.open_table(DIGESTS)?;
            for (is_scan, key) in &dropped {
                if *is_scan {
                    scans.remove(key.as_str())?;
                } else {
                    digests.remove(key.as_str())?;
                }
            }
        }
        txn.commit()?;
    }
    Ok(loaded)
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
        let id = finding.id.as_str().as_bytes();
        let Ok(len) = u16::try_from(id.len()) else {
            continue;
        };
        let severity = Severity::DESCENDING
            .iter()
            .position(|s| *s == finding.severity)
            .unwrap_or(4) as u8;
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
            let mut findings = Vec::new();
            while !rest.is_empty() {
                let head = take(&mut rest, 4)?;
                let len = u16::from_le_bytes([head[2], head[3]]) as usize;
                let id = std::str::from_utf8(take(&mut rest, len)?).ok()?;
                findings.push(Finding {
                    id: VulnId::new(id),
                    severity: *Severity::DESCENDING.get(head[0] as usize)?,
                    fixable: head[1] == 1,
                });
            }
            Outcome::Report(Arc::new(ScanReport::new(
                None,
                Some(time(scanned)),
                findings,
            )))
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
        Resolved::Digest(d) => Some(d.clone()),
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
        resolved: stored.digest.map_or(Resolved::NotFound, Resolved::Digest),
        fetched_at: time(stored.fetched),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report() -> CachedScan {
        CachedScan {
            outcome: Outcome::Report(Arc::new(ScanReport::new(
                Some("sha256:aa".into()),
                Some(time(1_700_000_000)),
                [Finding {
                    id: VulnId::new("CVE-2024-1"),
                    severity: Severity::Critical,
                    fixable: true,
                }],
            ))),
            fetched_at: SystemTime::now(),
        }
    }

    #[test]
    fn survives_a_reopen_and_drops_what_is_too_old() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (cache, loaded) = ScanCache::open(dir.path(), 100).unwrap();
            assert_eq!(loaded, 0);
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
            cache.flush();
        }
        // The writer thread exits once the cache is dropped; the file lock goes with it.
        let reopened = (0..50).find_map(|_| {
            std::thread::sleep(Duration::from_millis(20));
            ScanCache::open(dir.path(), 100).ok()
        });
        let (cache, loaded) = reopened.expect("the store reopens");
        assert_eq!(loaded, 3, "the month-old tag is dropped");
        let Some(CachedScan {
            outcome: Outcome::Report(r),
            ..
        }) = cache.scan("i\nr/a@sha256:aa")
        else {
            panic!("the report survives");
        };
        assert_eq!(r.findings()[0].id.as_str(), "CVE-2024-1");
        assert_eq!(r.scanned_at, Some(time(1_700_000_000)));
        assert!(matches!(
            cache.scan("i\nr/b@sha256:bb").unwrap().outcome,
            Outcome::Pending
        ));
        assert_eq!(
            cache.digest("i\nr/a:v1").unwrap().resolved,
            Resolved::Digest("sha256:aa".into())
        );
        assert!(cache.digest("i\nr/old:v1").is_none());
    }

    #[test]
    fn a_held_store_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let _first = ScanCache::open(dir.path(), 10).unwrap();
        let error = ScanCache::open(dir.path(), 10).err().unwrap().to_string();
        assert!(error.contains(FILE_NAME), "{error}");
    }
}
