//! `portcullis audit-scan`: the audit-log detections over log files (JSON lines, as the
//! API server's log backend and managed clusters' exports write them; gzip accepted),
//! streamed: findings print as they are found (events held at most
//! `order::HOLD_MICROS` of log time, to judge them in time order) and memory stays flat.

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::rc::Rc;

use portcullis_webhook::auditlog::order::{Reorder, Stamp};
use portcullis_webhook::auditlog::{Event, Finding, Monitor, Settings, State};

use crate::cli::{AuditScanArgs, OutputFormat};

/// Exit code when no finding reaches `--fail-on`.
pub const EXIT_CLEAN: u8 = 0;
/// Exit code when a finding reaches `--fail-on`.
pub const EXIT_FINDINGS: u8 = 1;
/// Exit code for input that could not be read (files, or lines that are not events).
pub const EXIT_BAD_INPUT: u8 = 2;

/// A progress line on stderr every this many events.
const PROGRESS_EVERY: u64 = 100_000;
/// Unreadable lines reported one by one (the rest are counted).
const SHOWN_ERRORS: u64 = 10;

/// What a scan saw.
#[derive(Debug, Default)]
pub struct Tally {
    /// Events read.
    pub events: u64,
    /// Findings raised.
    pub findings: u64,
    /// Findings at or above `--fail-on`.
    pub failing: u64,
    /// Lines that were not audit events, and files that could not be read.
    pub unreadable: u64,
}

/// Runs the scan; findings to stdout, progress and input errors to stderr.
pub fn run(args: &AuditScanArgs) -> ExitCode {
    let stdout = std::io::stdout();
    let mut out = std::io::LineWriter::new(stdout.lock());
    let tally = scan(args, &mut out, &mut std::io::stderr());
    eprintln!(
        "audit-scan: {} events, {} findings ({} at or above {}){}",
        tally.events,
        tally.findings,
        tally.failing,
        args.fail_on.as_str(),
        if tally.unreadable > 0 {
            format!(", {} unreadable lines or files", tally.unreadable)
        } else {
            String::new()
        }
    );
    ExitCode::from(if tally.failing > 0 {
        EXIT_FINDINGS
    } else if tally.unreadable > 0 || tally.events == 0 {
        EXIT_BAD_INPUT
    } else {
        EXIT_CLEAN
    })
}

/// Scans every input in order, one monitor across them (a log rotated into several
/// files is one stream), judging events in time order (`auditlog::order`).
pub fn scan(args: &AuditScanArgs, out: &mut dyn Write, err: &mut dyn Write) -> Tally {
    let mut scanner = Scanner {
        args,
        monitor: Monitor::new(Settings::default(), State::default()),
        reorder: Reorder::default(),
        tally: Tally::default(),
    };
    for input in &args.inputs {
        let files = if input.as_os_str() == "-" {
            vec![input.clone()]
        } else {
            match files_in(input) {
                Ok(files) => files,
                Err(error) => {
                    let _ = writeln!(err, "audit-scan: {}: {error}", input.display());
                    scanner.tally.unreadable += 1;
                    continue;
                }
            }
        };
        for file in files {
            if let Err(error) = scanner.read(&file, out, err) {
                let _ = writeln!(err, "audit-scan: {}: {error}", file.display());
                scanner.tally.unreadable += 1;
            }
        }
    }
    let rest = scanner.reorder.finish();
    if let Err(error) = scanner.judge(rest, out, err) {
        let _ = writeln!(err, "audit-scan: {error}");
        scanner.tally.unreadable += 1;
    }
    scanner.tally
}

/// One line of a log, held until it can be judged in time order.
struct Line {
    file: Rc<Path>,
    number: u64,
    text: String,
}

/// The state of one scan across its inputs.
struct Scanner<'a> {
    args: &'a AuditScanArgs,
    monitor: Monitor,
    reorder: Reorder<Line>,
    tally: Tally,
}

impl Scanner<'_> {
    /// Reads `path`'s lines, judging those no later line can precede.
    fn read(
        &mut self,
        path: &Path,
        out: &mut dyn Write,
        err: &mut dyn Write,
    ) -> std::io::Result<()> {
        let mut reader = open(path)?;
        let file: Rc<Path> = Rc::from(path);
        let mut number = 0u64;
        loop {
            let mut text = String::new();
            if reader.read_line(&mut text)? == 0 {
                return Ok(());
            }
            number += 1;
            if text.trim().is_empty() {
                continue;
            }
            let stamp = Stamp::of_line(&text);
            let bytes = text.len();
            let line = Line {
                file: Rc::clone(&file),
                number,
                text,
            };
            let ready = self.reorder.push(stamp, line, bytes);
            self.judge(ready, out, err)?;
        }
    }

    /// Judges `lines`, in the order given.
    fn judge(
        &mut self,
        lines: Vec<Line>,
        out: &mut dyn Write,
        err: &mut dyn Write,
    ) -> std::io::Result<()> {
        for line in lines {
            let event: Event<'_> = match serde_json::from_str(line.text.trim()) {
                Ok(event) => event,
                Err(error) => {
                    self.tally.unreadable += 1;
                    if self.tally.unreadable <= SHOWN_ERRORS {
                        let _ = writeln!(
                            err,
                            "audit-scan: {}:{}: not an audit event: {error}",
                            line.file.display(),
                            line.number
                        );
                    }
                    continue;
                }
            };
            self.tally.events += 1;
            for finding in self.monitor.observe(&event) {
                self.tally.findings += 1;
                if finding.severity >= self.args.fail_on {
                    self.tally.failing += 1;
                }
                print(&finding, self.args.output, out)?;
            }
            if self.tally.events.is_multiple_of(PROGRESS_EVERY) {
                let _ = writeln!(
                    err,
                    "audit-scan: {}: {} events, {} findings so far",
                    line.file.display(),
                    self.tally.events,
                    self.tally.findings
                );
            }
        }
        Ok(())
    }
}

/// `path`, or the files under it (recursively), by name — rotated logs in order.
fn files_in(path: &Path) -> std::io::Result<Vec<PathBuf>> {
    if !path.is_dir() {
        File::open(path)?;
        return Ok(vec![path.to_owned()]);
    }
    let mut files = Vec::new();
    let mut dirs = vec![path.to_owned()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir)? {
            let entry = entry?;
            if entry.file_type()?.is_dir() {
                dirs.push(entry.path());
            } else {
                files.push(entry.path());
            }
        }
    }
    files.sort();
    Ok(files)
}

fn open(path: &Path) -> std::io::Result<Box<dyn BufRead>> {
    let raw: Box<dyn Read> = if path.as_os_str() == "-" {
        Box::new(std::io::stdin())
    } else {
        Box::new(File::open(path)?)
    };
    let mut reader = BufReader::new(raw);
    // gzip by its magic number, whatever the file is called.
    let gzip = reader.fill_buf()?.starts_with(&[0x1f, 0x8b]);
    Ok(if gzip {
        Box::new(BufReader::new(flate2::bufread::MultiGzDecoder::new(reader)))
    } else {
        Box::new(reader)
    })
}

fn print(finding: &Finding, format: OutputFormat, out: &mut dyn Write) -> std::io::Result<()> {
    match format {
        OutputFormat::Json => {
            let json = serde_json::to_string(finding).map_err(std::io::Error::other)?;
            writeln!(out, "{json}")
        }
        OutputFormat::Text => writeln!(
            out,
            "{:<8} {:<26} {} {}",
            finding.severity.as_str(),
            finding.detection.id(),
            finding.time,
            finding.message
        ),
    }
}
