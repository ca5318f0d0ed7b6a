//! The sink's queue: findings waiting for delivery, oldest first, bounded, and kept in
//! a file so that a restart loses none of them.
//!
//! The file holds one line per finding (`{"seq":N,"finding":{…}}`), appended as they
//! come; a small marker file beside it records the first sequence number still wanted
//! and the counters. Delivered and dropped findings are skipped by sequence number, so
//! the two files never need to change together; the spool file is rewritten with only
//! what waits when most of it is behind the marker.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::Finding;

/// Findings kept waiting at most; beyond it the oldest are dropped (and counted).
pub const CAPACITY: usize = 20_000;

#[derive(Serialize, Deserialize)]
struct Line<'a> {
    seq: u64,
    finding: std::borrow::Cow<'a, Finding>,
}

/// What the marker file records.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct Marker {
    /// The first sequence number not yet delivered or dropped.
    first: u64,
    /// Findings delivered, ever.
    delivered: u64,
    /// Findings dropped because the spool was full, ever.
    dropped: u64,
}

/// Findings waiting for the sink.
#[derive(Debug)]
pub struct Spool {
    path: Option<PathBuf>,
    file: Option<File>,
    /// Lines in the file (waiting or not), to know when to rewrite it.
    lines: usize,
    queue: VecDeque<(u64, Finding)>,
    next: u64,
    marker: Marker,
    capacity: usize,
}

impl Spool {
    /// A spool kept in memory only.
    pub fn in_memory(capacity: usize) -> Self {
        Spool {
            path: None,
            file: None,
            lines: 0,
            queue: VecDeque::new(),
            next: 1,
            marker: Marker {
                first: 1,
                ..Marker::default()
            },
            capacity,
        }
    }

    /// Opens the spool at `path`, taking up what waited there; a line that cannot be
    /// read (a write cut by a crash) is skipped.
    pub fn open(path: &Path, capacity: usize) -> io::Result<Self> {
        let mut spool = Spool::in_memory(capacity);
        if let Ok(bytes) = std::fs::read(marker_path(path))
            && let Ok(marker) = serde_json::from_slice::<Marker>(&bytes)
        {
            spool.marker = marker;
            spool.next = marker.first.max(1);
        }
        match File::open(path) {
            Ok(file) => {
                for line in BufReader::new(file).lines() {
                    let line = line?;
                    spool.lines += 1;
                    let Ok(Line { seq, finding }) = serde_json::from_str::<Line<'_>>(&line) else {
                        continue;
                    };
                    spool.next = spool.next.max(seq + 1);
                    if seq >= spool.marker.first {
                        spool.queue.push_back((seq, finding.into_owned()));
                    }
                }
            }
            Err(error) if error.kind() == io::ErrorKind::NotFound => {}
            Err(error) => return Err(error),
        }
        spool.path = Some(path.to_owned());
        spool.enforce_capacity();
        spool.rewrite()?;
        Ok(spool)
    }

    /// Queues `finding` last; when full, the oldest waiting one is dropped.
    pub fn push(&mut self, finding: Finding) -> io::Result<()> {
        let seq = self.next;
        self.next += 1;
        if let Some(file) = &mut self.file {
            let mut line = serde_json::to_vec(&Line {
                seq,
                finding: std::borrow::Cow::Borrowed(&finding),
            })
            .map_err(io::Error::other)?;
            line.push(b'\n');
            file.write_all(&line)?;
            self.lines += 1;
        }
        self.queue.push_back((seq, finding));
        self.enforce_capacity();
        Ok(())
    }

    /// Up to `max` waiting findings, oldest first, with their sequence numbers.
    pub fn peek(&self, max: usize) -> Vec<(u64, Finding)> {
        self.queue.iter().take(max).cloned().collect()
    }

    /// Marks every finding up to `seq` delivered.
    pub fn delivered(&mut self, seq: u64) -> io::Result<()> {
        while self.queue.front().is_some_and(|(s, _)| *s <= seq) {
            self.queue.pop_front();
            self.marker.delivered += 1;
        }
        self.marker.first = self.marker.first.max(seq + 1);
        if self.lines > 2 * self.queue.len() + 1024 {
            self.rewrite()
        } else {
            self.save_marker()
        }
    }

    /// Findings waiting.
    pub fn pending(&self) -> usize {
        self.queue.len()
    }

    /// Findings delivered, ever.
    pub fn delivered_total(&self) -> u64 {
        self.marker.delivered
    }

    /// Findings dropped because the spool was full, ever.
    pub fn dropped_total(&self) -> u64 {
        self.marker.dropped
    }

    /// Writes the marker (the counters and what was dropped), e.g. at shutdown.
    pub fn save_marker(&self) -> io::Result<()> {
        let Some(path) = &self.path else {
            return Ok(());
        };
        let json = serde_json::to_vec(&self.marker).map_err(io::Error::other)?;
        write_atomically(&marker_path(path), &json)
    }

    fn enforce_capacity(&mut self) {
        while self.queue.len() > self.capacity {
            if let Some((seq, _)) = self.queue.pop_front() {
                self.marker.first = seq + 1;
                self.marker.dropped += 1;
            }
        }
    }

    /// Replaces the file with only what waits, and reopens it for appending.
    fn rewrite(&mut self) -> io::Result<()> {
        let Some(path) = self.path.clone() else {
            return Ok(());
        };
        self.file = None;
        let mut bytes = Vec::new();
        for (seq, finding) in &self.queue {
            serde_json::to_writer(
                &mut bytes,
                &Line {
                    seq: *seq,
                    finding: std::borrow::Cow::Borrowed(finding),
                },
            )
            .map_err(io::Error::other)?;
            bytes.push(b'\n');
        }
        self.save_marker()?;
        write_atomically(&path, &bytes)?;
        self.lines = self.queue.len();
        self.file = Some(OpenOptions::new().append(true).open(&path)?);
        Ok(())
    }
}

fn marker_path(path: &Path) -> PathBuf {
    path.with_extension("marker")
}

fn write_atomically(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let temporary = path.with_extension("tmp");
    std::fs::write(&temporary, bytes)?;
    std::fs::rename(&temporary, path)
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::auditlog::{Detection, Severity};

    pub(in crate::auditlog) fn finding(n: usize) -> Finding {
        Finding {
            detection: Detection::ExecIntoContainer,
            severity: Severity::High,
            message: format!("finding {n}"),
            audit_id: format!("id-{n}"),
            user: "alice".into(),
            groups: vec![],
            source_ips: vec![],
            verb: "create".into(),
            resource: "pods/exec".into(),
            namespace: "default".into(),
            name: "web".into(),
            time: "2026-11-30T20:00:00Z".into(),
        }
    }

    fn messages(spool: &Spool) -> Vec<String> {
        spool
            .peek(usize::MAX)
            .into_iter()
            .map(|(_, f)| f.message)
            .collect()
    }

    #[test]
    fn what_waits_survives_a_restart_in_order_and_what_was_delivered_does_not() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit-spool.jsonl");
        let mut spool = Spool::open(&path, 100).unwrap();
        for n in 0..5 {
            spool.push(finding(n)).unwrap();
        }
        let batch = spool.peek(2);
        spool.delivered(batch[1].0).unwrap();
        drop(spool);
        let mut reopened = Spool::open(&path, 100).unwrap();
        assert_eq!(messages(&reopened), ["finding 2", "finding 3", "finding 4"]);
        assert_eq!(reopened.delivered_total(), 2);
        // New findings go after the old ones, with new sequence numbers.
        reopened.push(finding(5)).unwrap();
        let seqs: Vec<u64> = reopened.peek(10).into_iter().map(|(s, _)| s).collect();
        assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
        assert_eq!(reopened.pending(), 4);
    }

    #[test]
    fn when_full_the_oldest_are_dropped_and_counted_also_across_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit-spool.jsonl");
        let mut spool = Spool::open(&path, 3).unwrap();
        for n in 0..5 {
            spool.push(finding(n)).unwrap();
        }
        assert_eq!(messages(&spool), ["finding 2", "finding 3", "finding 4"]);
        assert_eq!(spool.dropped_total(), 2);
        drop(spool); // no marker written since the drops: the file still has them
        let reopened = Spool::open(&path, 3).unwrap();
        assert_eq!(messages(&reopened), ["finding 2", "finding 3", "finding 4"]);
        assert_eq!(reopened.dropped_total(), 2);
    }

    #[test]
    fn a_torn_last_line_is_skipped_and_the_file_is_compacted() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit-spool.jsonl");
        let mut spool = Spool::open(&path, 10_000).unwrap();
        for n in 0..3000 {
            spool.push(finding(n)).unwrap();
        }
        let last = spool.peek(2990).last().unwrap().0;
        spool.delivered(last).unwrap();
        drop(spool);
        let lines = std::fs::read_to_string(&path).unwrap().lines().count();
        assert_eq!(lines, 10, "rewritten with only what waits");
        let mut file = OpenOptions::new().append(true).open(&path).unwrap();
        file.write_all(b"{\"seq\": 99999, \"find").unwrap();
        let reopened = Spool::open(&path, 10_000).unwrap();
        assert_eq!(reopened.pending(), 10);
        assert_eq!(messages(&reopened)[0], "finding 2990");
    }

    #[test]
    fn in_memory_spools_bound_too() {
        let mut spool = Spool::in_memory(2);
        for n in 0..4 {
            spool.push(finding(n)).unwrap();
        }
        assert_eq!(messages(&spool), ["finding 2", "finding 3"]);
        spool.delivered(spool.peek(1)[0].0).unwrap();
        assert_eq!(messages(&spool), ["finding 3"]);
        assert_eq!((spool.delivered_total(), spool.dropped_total()), (1, 2));
    }
}
