//! The append-only provenance log: why the sidecar did what it did.
//!
//! A controller that changes production pipelines on its own must be able to answer
//! "why did it do that?" long after the fact, and the answer must survive a crash of
//! the daemon. Every decision is therefore written down as JSON lines, one [`Record`]
//! per line: the decision itself (the telemetry window, anomaly score, state, Q
//! values, chosen action, the rule policy's shadow choice and the guardrail verdict),
//! then, as they happen, approvals, every call attempt to a downstream endpoint, the
//! outcome, escalations, and finally the reward and the Q update it caused. All the
//! records of one decision share its `id`; [`explain`] joins them into a story and
//! [`one_line`] / [`filter`] serve `selfheal log`.
//!
//! JSON lines because the log must be appendable without rewriting, readable with
//! `grep` and `jq` during an incident, and robust to a torn write: a crash can only
//! damage the last line, which [`ProvenanceLog::open`] cuts off and [`read_log`]
//! skips and reports. A bad line in the middle (say, edited by hand) is reported by
//! the reader and never stops it.
//!
//! # Durability (fsync policy)
//!
//! A record is durable once [`ProvenanceLog::append`] with `durable = true` has
//! returned: the line is written, flushed and `fdatasync`ed. The sidecar appends
//! durably
//!
//! * (a) a decision *before* its action is started, so no action ever runs without
//!   its reason on disk;
//! * (b) an approval *before* the HTTP 2xx answer, so an acknowledged approval is
//!   never lost;
//! * (c) the outcome of every action;
//! * (d) a page (escalation) *before* its first delivery attempt, with the page
//!   itself in the record, and every attempt's result after it, so that a page
//!   is never lost to a crash: [`owed_pages`] finds those a restart must send.
//!
//! Other records (no-op decisions, rewards and the like) are buffered, then flushed
//! and synced every 500 ms (the daemon's tick) and at shutdown via
//! [`ProvenanceLog::flush`], so a crash can lose at most the last half second of
//! those, never an acknowledged decision.
//!
//! # Rotation and retention
//!
//! With a [`Rotation`] ([`ProvenanceLog::open_rotating`]), the active file
//! `provenance.jsonl` is rotated at an append boundary, before a record is
//! written, once it holds at least `max_bytes` or its first record is at least
//! `max_age_ms` older than the record being appended. Rotation (1) flushes and
//! fsyncs the active file, (2) renames it to `provenance.<seq>.jsonl`, `seq` one
//! more than the highest segment present (zero-padded, so names sort in time
//! order), (3) creates a new empty `provenance.jsonl` and fsyncs the directory,
//! and only then (4) deletes the oldest segments beyond `keep` and fsyncs the
//! directory again. No acknowledged record is lost by a crash at any point:
//! before (2) the old file is whole and synced under its old name; after (2)
//! its synced data sits under one of the two names, and readers read both
//! ([`segments`]); between (2) and (3) there is no active file, which
//! [`ProvenanceLog::open`] simply creates at restart; a record is only appended
//! to the new file after the directory holding both names was synced in (3).
//! A rotated segment always ends at a record boundary (it was flushed whole), so
//! the torn-last-line cut applies to the active file only. Deletion in (4) is
//! the retention policy, not a crash: a page owed from a deleted segment is no
//! longer resent, so keep `keep × max_bytes` well above a day of records.
//!
//! Every reader ([`read_log`], `selfheal log`, `explain`, `report`, `shadow`,
//! `ope` and the pager's owed-pages scan at start) reads the rotated segments
//! oldest first, then the active file; given `provenance.jsonl` it finds its
//! rotated siblings in the same directory.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// Errors of the provenance log.
#[derive(Debug, thiserror::Error)]
pub enum ProvenanceError {
    /// Reading or writing the log file failed.
    #[error("provenance log {}: {source}", path.display())]
    Io {
        /// The log file.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// The log file to read does not exist.
    #[error("provenance log {} does not exist (check the path, or has the sidecar not written it yet?)", path.display())]
    NotFound {
        /// The missing file.
        path: PathBuf,
    },
    /// A record could not be serialised.
    #[error("cannot serialise provenance record: {0}")]
    Serialize(#[from] serde_json::Error),
    /// `explain` was asked about an id that has no decision record.
    #[error("no decision with id {0:?} in the provenance log; run `selfheal log` to list decision ids")]
    UnknownId(String),
}

pub use selfheal_schema::provenance::*;

/// A page raised and not yet accepted by the webhook, as found in the log at start.
#[derive(Clone, Debug, PartialEq)]
pub struct OwedPage {
    /// The page.
    pub page: crate::notify::Escalation,
    /// When it was raised, Unix ms.
    pub raised_ms: i64,
    /// Attempts made so far.
    pub attempts: u32,
    /// Whether it already went to the second channel.
    pub fell_back: bool,
}

/// Pages raised and neither delivered nor refused for good, in the order they
/// were raised: what a restarted daemon still owes a human.
pub fn owed_pages(records: &[Record]) -> Vec<OwedPage> {
    let mut order: Vec<String> = Vec::new();
    let mut owed: HashMap<String, OwedPage> = HashMap::new();
    for r in records {
        let Record::Escalation(e) = r else { continue };
        match e.phase {
            Some(PagePhase::Raised) => {
                if let Some(page) = &e.page {
                    if !owed.contains_key(&e.id) {
                        order.push(e.id.clone());
                    }
                    owed.insert(
                        e.id.clone(),
                        OwedPage { page: page.clone(), raised_ms: e.ts_ms, attempts: e.attempts, fell_back: false },
                    );
                }
            }
            Some(PagePhase::AttemptFailed) => {
                if let Some(p) = owed.get_mut(&e.id) {
                    p.attempts = p.attempts.max(e.attempts);
                }
            }
            Some(PagePhase::Fallback) => {
                if let Some(p) = owed.get_mut(&e.id) {
                    p.fell_back = true;
                }
            }
            Some(PagePhase::Delivered | PagePhase::PermanentFailure) | None => {
                if e.delivered || e.phase.is_some() {
                    owed.remove(&e.id);
                }
            }
            Some(PagePhase::LoggedOnly) => {}
        }
    }
    order.into_iter().filter_map(|id| owed.remove(&id)).collect()
}

/// When the active log file is rotated, and how many rotated segments are kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rotation {
    /// Rotate once the active file holds at least this many bytes.
    pub max_bytes: u64,
    /// Rotate once the active file's first record is this much older than the next one, ms.
    pub max_age_ms: i64,
    /// Rotated segments kept; older ones are deleted, oldest first.
    pub keep: usize,
}

/// The writer: appends records to the log file, one JSON line each.
#[derive(Debug)]
pub struct ProvenanceLog {
    path: PathBuf,
    out: BufWriter<File>,
    recovered: u64,
    rotation: Option<Rotation>,
    /// Bytes in the active file (written or buffered).
    bytes: u64,
    /// `ts_ms` of the active file's first record, if it has one.
    first_ts_ms: Option<i64>,
}

impl ProvenanceLog {
    /// Opens (creating it and its parent directories if needed) the log at `path` for appending.
    ///
    /// If the file does not end in a newline, a crash tore the last write: the file is
    /// truncated back to just after its last newline and synced, and the number of
    /// bytes dropped is available from [`ProvenanceLog::recovered_bytes`]. A complete
    /// last line that is not valid JSON is left alone ([`read_log`] reports it).
    pub fn open(path: &Path) -> Result<ProvenanceLog, ProvenanceError> {
        let io_err = |source| ProvenanceError::Io { path: path.to_owned(), source };
        let parent = path.parent().filter(|p| !p.as_os_str().is_empty());
        if let Some(dir) = parent {
            fs::create_dir_all(dir).map_err(io_err)?;
        }
        let created = !path.exists();
        let mut file = OpenOptions::new().read(true).append(true).create(true).open(path).map_err(io_err)?;
        if created {
            // A durable append is only durable if the file's directory entry is, too.
            sync_dir(parent.unwrap_or(Path::new("."))).map_err(io_err)?;
        }
        let recovered = truncate_torn_tail(&mut file).map_err(io_err)?;
        if recovered > 0 {
            tracing::warn!(
                path = %path.display(),
                dropped_bytes = recovered,
                "provenance log ended in a torn line (crash during a write); truncated it to the last complete line"
            );
        }
        let bytes = file.metadata().map_err(io_err)?.len();
        let first_ts_ms = if bytes > 0 { first_ts_ms(&mut file).map_err(io_err)? } else { None };
        file.seek(SeekFrom::End(0)).map_err(io_err)?;
        Ok(ProvenanceLog {
            path: path.to_owned(),
            out: BufWriter::new(file),
            recovered,
            rotation: None,
            bytes,
            first_ts_ms,
        })
    }

    /// [`ProvenanceLog::open`], rotating the file by `rotation` (see the module doc).
    pub fn open_rotating(path: &Path, rotation: Rotation) -> Result<ProvenanceLog, ProvenanceError> {
        let mut log = ProvenanceLog::open(path)?;
        log.rotation = Some(rotation);
        Ok(log)
    }

    /// Rotates now if the active file is due (`next_ts_ms`: the record about to be written).
    fn rotate_if_due(&mut self, next_ts_ms: i64) -> Result<(), ProvenanceError> {
        let Some(r) = self.rotation else { return Ok(()) };
        if self.bytes == 0 {
            return Ok(());
        }
        let too_big = self.bytes >= r.max_bytes;
        let too_old = self.first_ts_ms.is_some_and(|t| next_ts_ms.saturating_sub(t) >= r.max_age_ms);
        if too_big || too_old {
            self.rotate(r.keep)?;
        }
        Ok(())
    }

    /// Closes the active file into the next segment, opens a new one, applies retention.
    fn rotate(&mut self, keep: usize) -> Result<(), ProvenanceError> {
        self.flush(true)?;
        let dir = self.path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new(".")).to_owned();
        let rotated = rotated_segments(&self.path).map_err(|source| self.io_err(source))?;
        let seq = rotated.last().map_or(1, |(n, _)| n + 1);
        let target = segment_path(&self.path, seq);
        fs::rename(&self.path, &target).map_err(|source| self.io_err(source))?;
        let file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(&self.path)
            .map_err(|source| self.io_err(source))?;
        sync_dir(&dir).map_err(|source| self.io_err(source))?;
        self.out = BufWriter::new(file);
        self.bytes = 0;
        self.first_ts_ms = None;
        tracing::info!(path = %self.path.display(), segment = %target.display(), "provenance log rotated");
        let mut all: Vec<PathBuf> = rotated.into_iter().map(|(_, p)| p).collect();
        all.push(target);
        if all.len() > keep {
            for old in &all[..all.len() - keep] {
                if let Err(e) = fs::remove_file(old) {
                    tracing::warn!(segment = %old.display(), error = %e, "cannot delete an old provenance segment");
                }
            }
            sync_dir(&dir).map_err(|source| self.io_err(source))?;
        }
        Ok(())
    }

    /// Bytes of a torn last line dropped by [`ProvenanceLog::open`] (0 if the file was clean).
    pub fn recovered_bytes(&self) -> u64 {
        self.recovered
    }

    /// The log file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends one record as one line. With `durable`, the line is flushed and
    /// `fdatasync`ed before this returns; otherwise it may sit in the buffer until
    /// the next [`ProvenanceLog::flush`] (see the module doc for the policy).
    pub fn append(&mut self, rec: &Record, durable: bool) -> Result<(), ProvenanceError> {
        let mut line = serde_json::to_string(rec)?;
        line.push('\n');
        self.rotate_if_due(rec.ts_ms())?;
        self.out.write_all(line.as_bytes()).map_err(|source| self.io_err(source))?;
        self.bytes += line.len() as u64;
        self.first_ts_ms.get_or_insert(rec.ts_ms());
        if durable {
            self.flush(true)?;
        }
        Ok(())
    }

    /// Writes buffered records to the file; with `sync`, also `fdatasync`s it.
    pub fn flush(&mut self, sync: bool) -> Result<(), ProvenanceError> {
        self.out.flush().map_err(|source| self.io_err(source))?;
        if sync {
            self.out.get_ref().sync_data().map_err(|source| self.io_err(source))?;
        }
        Ok(())
    }

    fn io_err(&self, source: io::Error) -> ProvenanceError {
        ProvenanceError::Io { path: self.path.clone(), source }
    }
}

/// `ts_ms` of the file's first line, if it has one that carries it.
fn first_ts_ms(file: &mut File) -> io::Result<Option<i64>> {
    use std::io::BufRead;
    file.seek(SeekFrom::Start(0))?;
    let mut line = String::new();
    if io::BufReader::new(&mut *file).read_line(&mut line).is_err() {
        return Ok(None);
    }
    let v: Option<serde_json::Value> = serde_json::from_str(line.trim()).ok();
    Ok(v.and_then(|v| v.get("ts_ms").and_then(|t| t.as_i64())))
}

/// `name` split at its last dot: (`provenance`, `.jsonl`); no dot: (name, "").
fn split_name(path: &Path) -> (String, String) {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    match name.rfind('.') {
        Some(i) if i > 0 => (name[..i].to_owned(), name[i..].to_owned()),
        _ => (name, String::new()),
    }
}

/// The path of rotated segment `seq` of the log at `path`: `provenance.000042.jsonl`.
pub fn segment_path(path: &Path, seq: u64) -> PathBuf {
    let (stem, ext) = split_name(path);
    path.with_file_name(format!("{stem}.{seq:06}{ext}"))
}

/// The rotated segments of the log at `path`, (sequence, path), oldest first.
fn rotated_segments(path: &Path) -> io::Result<Vec<(u64, PathBuf)>> {
    let (stem, ext) = split_name(path);
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let prefix = format!("{stem}.");
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(mid) = name.strip_prefix(&prefix).and_then(|r| r.strip_suffix(ext.as_str())) else { continue };
        if mid.is_empty() || !mid.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        if let Ok(n) = mid.parse::<u64>() {
            out.push((n, path.with_file_name(&name)));
        }
    }
    out.sort();
    Ok(out)
}

/// Every file of the log at `path`: its rotated segments oldest first
/// (`provenance.000001.jsonl`, …), then `path` itself if it exists. Empty if
/// there is neither.
pub fn segments(path: &Path) -> Result<Vec<PathBuf>, ProvenanceError> {
    let mut out: Vec<PathBuf> = rotated_segments(path)
        .map_err(|source| ProvenanceError::Io { path: path.to_owned(), source })?
        .into_iter()
        .map(|(_, p)| p)
        .collect();
    if path.exists() {
        out.push(path.to_owned());
    }
    Ok(out)
}

/// Cuts the file back to just after its last newline; returns the bytes dropped.
fn truncate_torn_tail(file: &mut File) -> io::Result<u64> {
    const CHUNK: u64 = 64 * 1024;
    let len = file.metadata()?.len();
    let mut buf = vec![0u8; CHUNK as usize];
    let mut end = len;
    let keep = loop {
        if end == 0 {
            break 0;
        }
        let start = end.saturating_sub(CHUNK);
        let n = (end - start) as usize;
        file.seek(SeekFrom::Start(start))?;
        file.read_exact(&mut buf[..n])?;
        if let Some(i) = buf[..n].iter().rposition(|&b| b == b'\n') {
            break start + i as u64 + 1;
        }
        end = start;
    };
    if keep < len {
        file.set_len(keep)?;
        file.sync_all()?;
    }
    Ok(len - keep)
}

#[cfg(unix)]
fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(not(unix))]
fn sync_dir(_dir: &Path) -> io::Result<()> {
    Ok(())
}

/// What [`read_log`] found: the records, and the lines it had to skip.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LogRead {
    /// Every record that parsed, in file order.
    pub records: Vec<Record>,
    /// Lines that did not parse: (1-based line number, why).
    pub skipped: Vec<(usize, String)>,
}

/// Reads the whole log: every segment ([`segments`]) in order, rotated ones
/// first. Bad lines and a torn (newline-less) last line are skipped and
/// reported in [`LogRead::skipped`] (line numbers count within their file; a
/// rotated segment's are prefixed by its file name), never fatal; blank lines
/// are ignored.
pub fn read_log(path: &Path) -> Result<LogRead, ProvenanceError> {
    let files = segments(path)?;
    if files.is_empty() {
        return Err(ProvenanceError::NotFound { path: path.to_owned() });
    }
    let mut read = LogRead::default();
    for file in files {
        let one = read_file(&file)?;
        read.records.extend(one.records);
        if file.as_path() == path {
            read.skipped.extend(one.skipped);
        } else {
            let name = file.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            read.skipped.extend(one.skipped.into_iter().map(|(n, why)| (n, format!("in {name}: {why}"))));
        }
    }
    Ok(read)
}

/// Reads one file of the log (see [`read_log`]).
fn read_file(path: &Path) -> Result<LogRead, ProvenanceError> {
    let bytes = fs::read(path).map_err(|source| match source.kind() {
        io::ErrorKind::NotFound => ProvenanceError::NotFound { path: path.to_owned() },
        _ => ProvenanceError::Io { path: path.to_owned(), source },
    })?;
    let mut read = LogRead::default();
    let pieces: Vec<&[u8]> = bytes.split(|&b| b == b'\n').collect();
    let last = pieces.len() - 1;
    for (i, piece) in pieces.into_iter().enumerate() {
        let line_no = i + 1;
        if i == last {
            // After the final newline: empty for a clean file, otherwise a torn line.
            if !piece.is_empty() {
                let why = format!(
                    "incomplete last line ({} bytes without a newline): torn by a crash or still being written",
                    piece.len()
                );
                read.skipped.push((line_no, why));
            }
            break;
        }
        let Ok(text) = std::str::from_utf8(piece) else {
            read.skipped.push((line_no, "not valid UTF-8".to_owned()));
            continue;
        };
        if text.trim().is_empty() {
            continue;
        }
        match serde_json::from_str::<Record>(text) {
            Ok(rec) => read.records.push(rec),
            Err(e) => read.skipped.push((line_no, e.to_string())),
        }
    }
    Ok(read)
}

/// Which records `selfheal log` shows. Every set field must match.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LogFilter {
    /// Keep records with `ts_ms >= since_ms`.
    pub since_ms: Option<i64>,
    /// Keep records with `ts_ms < until_ms`.
    pub until_ms: Option<i64>,
    /// Keep records of decisions about this pipeline.
    pub pipeline: Option<String>,
    /// Keep records of decisions that chose this action.
    pub action: Option<String>,
    /// Keep records of decisions with this guardrail verdict.
    pub verdict: Option<String>,
    /// Keep records of this decision id.
    pub id: Option<String>,
}

impl LogFilter {
    /// Whether `rec` passes. Pipeline, action and verdict are properties of a
    /// decision: a decision record is tested itself, any other record through its
    /// decision (`decision_of_id`, looked up by id) and fails if that is unknown.
    /// Time bounds test each record's own `ts_ms`.
    pub fn matches(&self, rec: &Record, decision_of_id: Option<&DecisionRecord>) -> bool {
        if self.id.as_deref().is_some_and(|id| id != rec.id()) {
            return false;
        }
        if self.since_ms.is_some_and(|t| rec.ts_ms() < t) || self.until_ms.is_some_and(|t| rec.ts_ms() >= t) {
            return false;
        }
        if self.pipeline.is_none() && self.action.is_none() && self.verdict.is_none() {
            return true;
        }
        let decision = match rec {
            Record::Decision(d) => Some(d),
            _ => decision_of_id,
        };
        let Some(d) = decision else { return false };
        let same = |want: &Option<String>, have: &str| want.iter().all(|w| w == have);
        same(&self.pipeline, &d.pipeline)
            && same(&self.action, d.chosen.name())
            && same(&self.verdict, d.verdict.as_str())
    }
}

/// The records passing `f`, in their original order. Non-decision records are
/// judged by the decision with their id found anywhere in `records`.
pub fn filter<'a>(records: &'a [Record], f: &LogFilter) -> Vec<&'a Record> {
    let mut decisions: HashMap<&str, &DecisionRecord> = HashMap::new();
    for rec in records {
        if let Record::Decision(d) = rec {
            decisions.entry(d.id.as_str()).or_insert(d);
        }
    }
    records.iter().filter(|rec| f.matches(rec, decisions.get(rec.id()).copied())).collect()
}

const MS_PER_DAY: i64 = 86_400_000;

/// Parses a time given on the command line into Unix ms: Unix ms as an integer
/// (`1795402800000`), RFC 3339 (`2026-11-23T03:00:00Z`, with optional fraction and
/// `±HH:MM` offset), or relative to `now_ms` (`-30s`, `-15m`, `-2h`, `-1d`).
pub fn parse_time(s: &str, now_ms: i64) -> Result<i64, String> {
    let t = s.trim();
    let bad = |why: &str| {
        format!(
            "invalid time {s:?}: {why}; expected Unix milliseconds (e.g. 1795402800000), \
             RFC 3339 UTC (e.g. 2026-11-23T03:00:00Z) or a relative time (e.g. -15m, -2h, -1d)"
        )
    };
    if t.is_empty() {
        return Err(bad("empty"));
    }
    if let Some(rel) = t.strip_prefix('-') {
        let unit_ms = match rel.chars().last() {
            Some('s') => 1_000,
            Some('m') => 60_000,
            Some('h') => 3_600_000,
            Some('d') => MS_PER_DAY,
            _ => return Err(bad("a relative time needs a unit s, m, h or d")),
        };
        let digits = &rel[..rel.len() - 1];
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad("a relative time is a minus sign, a whole number and a unit"));
        }
        let n: i64 = digits.parse().map_err(|_| bad("number out of range"))?;
        return n
            .checked_mul(unit_ms)
            .and_then(|back| now_ms.checked_sub(back))
            .ok_or_else(|| bad("number out of range"));
    }
    if t.bytes().all(|b| b.is_ascii_digit()) {
        return t.parse().map_err(|_| bad("number out of range"));
    }
    parse_rfc3339(t).map_err(|why| bad(&why))
}

/// `YYYY-MM-DD[T ]HH:MM:SS[.frac](Z|±HH:MM)` → Unix ms (fraction truncated to ms).
fn parse_rfc3339(t: &str) -> Result<i64, String> {
    let b = t.as_bytes();
    let num = |from: usize, to: usize| -> Result<i64, String> {
        let part = b.get(from..to).filter(|p| p.iter().all(u8::is_ascii_digit));
        part.map(|p| p.iter().fold(0i64, |acc, d| acc * 10 + i64::from(d - b'0')))
            .ok_or_else(|| "not of the form YYYY-MM-DDTHH:MM:SSZ".to_owned())
    };
    let sep_ok = b.len() >= 19
        && b[4] == b'-'
        && b[7] == b'-'
        && matches!(b[10], b'T' | b't' | b' ')
        && b[13] == b':'
        && b[16] == b':';
    if !sep_ok {
        return Err("not of the form YYYY-MM-DDTHH:MM:SSZ".to_owned());
    }
    let (year, month, day) = (num(0, 4)?, num(5, 7)?, num(8, 10)?);
    let (hour, minute, second) = (num(11, 13)?, num(14, 16)?, num(17, 19)?);
    let mut i = 19;
    let mut millis = 0;
    if b.get(i) == Some(&b'.') {
        let start = i + 1;
        i = start;
        while b.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
        }
        if i == start {
            return Err("a fraction of a second needs digits after the '.'".to_owned());
        }
        // Milliseconds are the first three digits, padded with zeros; the rest is cut.
        let padded = b[start..i].iter().chain(std::iter::repeat(&b'0')).take(3);
        millis = padded.fold(0, |acc, d| acc * 10 + i64::from(d - b'0'));
    }
    let offset_min = match &b[i..] {
        [b'Z' | b'z'] => 0,
        [sign @ (b'+' | b'-'), h1, h2, b':', m1, m2] if [h1, h2, m1, m2].iter().all(|d| d.is_ascii_digit()) => {
            let (h, m) = (i64::from((h1 - b'0') * 10 + (h2 - b'0')), i64::from((m1 - b'0') * 10 + (m2 - b'0')));
            if h > 23 || m > 59 {
                return Err("offset out of range".to_owned());
            }
            if *sign == b'+' {
                h * 60 + m
            } else {
                -(h * 60 + m)
            }
        }
        [] => return Err("missing time zone: end with Z for UTC".to_owned()),
        _ => return Err("expected Z or ±HH:MM after the seconds".to_owned()),
    };
    if !(1..=12).contains(&month) {
        return Err(format!("month {month} out of range"));
    }
    if day < 1 || day > days_in_month(year, month) {
        return Err(format!("day {day} out of range for {year:04}-{month:02}"));
    }
    if hour > 23 || minute > 59 || second > 59 {
        return Err(format!("time {hour:02}:{minute:02}:{second:02} out of range"));
    }
    let days = days_from_civil(year, month, day);
    let secs = days * 86_400 + hour * 3_600 + minute * 60 + second - offset_min * 60;
    Ok(secs * 1_000 + millis)
}

fn is_leap(year: i64) -> bool {
    year % 4 == 0 && (year % 100 != 0 || year % 400 == 0)
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if is_leap(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's `days_from_civil`).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = if month > 2 { month - 3 } else { month + 9 };
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The inverse of [`days_from_civil`]: (year, month, day).
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// Unix ms as RFC 3339 UTC with milliseconds: `2026-11-23T03:12:05.123Z`.
pub fn format_utc(ts_ms: i64) -> String {
    let (year, month, day) = civil_from_days(ts_ms.div_euclid(MS_PER_DAY));
    format!("{year:04}-{month:02}-{day:02}T{}Z", clock(ts_ms))
}

/// The UTC time of day of Unix ms: `03:12:05.123`.
fn clock(ts_ms: i64) -> String {
    let ms = ts_ms.rem_euclid(MS_PER_DAY);
    let (h, m, s, frac) = (ms / 3_600_000, ms / 60_000 % 60, ms / 1_000 % 60, ms % 1_000);
    format!("{h:02}:{m:02}:{s:02}.{frac:03}")
}

/// One human-readable line per record, for `selfheal log` and the daemon's console, e.g.
/// `03:12:05.123 p2 d-42 anomalous (score 0.81, signature 3) → scale_up [allowed: confident, 412 visits]`.
pub fn one_line(rec: &Record) -> String {
    let at = clock(rec.ts_ms());
    match rec {
        Record::Decision(d) => {
            let health = if d.anomalous { "anomalous" } else { "normal" };
            let mut line = format!(
                "{at} {} {} {health} (score {:.2}, signature {}) → {} [{}: {}]",
                d.pipeline, d.id, d.score, d.signature, d.chosen, d.verdict, d.reason
            );
            if d.shadow != d.chosen.name() {
                let _ = write!(line, " (rules: {})", d.shadow);
            }
            line
        }
        Record::Approval(a) => {
            let what = match (a.approved, a.by.as_str()) {
                (false, "expiry") => "expired unapproved".to_owned(),
                (true, by) => format!("approved by {by}"),
                (false, by) => format!("rejected by {by}"),
            };
            with_note(format!("{at} {} {what}", a.id), &a.note)
        }
        Record::Call(c) => format!("{at} {} call {}", c.id, describe_call(c)),
        Record::Outcome(o) => with_note(format!("{at} {} outcome {}", o.id, o.status), &o.detail),
        Record::Reward(r) => format!(
            "{at} {} reward {:.3} over {} windows → state {}; Q {:.3} → {:.3}",
            r.id, r.reward, r.windows, r.next_state, r.q_before, r.q_after
        ),
        Record::Escalation(e) => with_note(format!("{at} {} escalation {}", e.id, describe_escalation(e)), &e.detail),
    }
}

fn with_note(mut line: String, note: &str) -> String {
    if !note.is_empty() {
        let _ = write!(line, ": {note}");
    }
    line
}

fn describe_call(c: &CallRecord) -> String {
    let result = match (&c.ok, &c.error) {
        (true, _) => "ok".to_owned(),
        (false, Some(err)) => format!("failed: {err}"),
        (false, None) => "failed".to_owned(),
    };
    format!(
        "{} attempt {}: {result} in {} ms (timeout {} ms, idempotency key {})",
        c.endpoint, c.attempt, c.duration_ms, c.timeout_ms, c.idempotency_key
    )
}

fn describe_escalation(e: &EscalationRecord) -> String {
    let plural = if e.attempts == 1 { "" } else { "s" };
    let status = e.status.map(|s| format!(" (HTTP {s})")).unwrap_or_default();
    match e.phase {
        Some(PagePhase::Raised) => "raised, to be delivered".to_owned(),
        Some(phase) => format!("{}{status} after {} attempt{plural}", phase.name(), e.attempts),
        None => {
            let state = if e.delivered { "delivered" } else { "NOT delivered" };
            format!("{state} after {} attempt{plural}", e.attempts)
        }
    }
}

/// Tells the story of decision `id` in plain words: the window, the detector's
/// verdict, the state, the ranked Q values, the choice and what the rules would have
/// done, the guardrails, then every later record (approvals, call attempts, outcome,
/// escalations, reward and Q update) in time order.
pub fn explain(id: &str, records: &[Record]) -> Result<String, ProvenanceError> {
    let d = records
        .iter()
        .find_map(|r| match r {
            Record::Decision(d) if d.id == id => Some(d),
            _ => None,
        })
        .ok_or_else(|| ProvenanceError::UnknownId(id.to_owned()))?;
    let w = &d.window;
    let mut out = String::new();
    // Writing to a String cannot fail; the results are ignored.
    let _ = writeln!(out, "decision {} on pipeline {} at {} (mode {})", d.id, d.pipeline, format_utc(d.ts_ms), d.mode);
    let _ = writeln!(
        out,
        "window starting {}: latency p95 {:.2} s, error ratio {:.1}%, backlog {:.0}, {:.0} workers, {:.0} records in",
        format_utc(w.ts_ms),
        w.latency_p95_s,
        w.error_ratio * 100.0,
        w.backlog,
        w.workers,
        w.records_in
    );
    let health = if d.anomalous { "anomalous" } else { "not anomalous" };
    let _ = writeln!(out, "detector: {health}, anomaly score {:.3}, failure signature {}", d.score, d.signature);
    let _ = writeln!(out, "state {}: {}", d.state, d.state_text);
    let mut ranked: Vec<&(String, f64)> = d.q.iter().collect();
    ranked.sort_by(|a, b| b.1.total_cmp(&a.1));
    let _ = writeln!(out, "Q values, best first (state visited {} times):", d.visits);
    for (action, q) in ranked {
        let mark = if *action == d.chosen.name() { "  ← chosen" } else { "" };
        let _ = writeln!(out, "  {action:<20} {q:>10.4}{mark}");
    }
    let _ = writeln!(out, "chosen: {} with probability {:.3}", d.chosen, d.probability);
    let agreement = if d.shadow == d.chosen.name() { "agrees" } else { "differs" };
    let _ = writeln!(out, "rules would have chosen: {} ({agreement})", d.shadow);
    if let Some(g) = &d.glue_shadow {
        let agreement = if *g == d.chosen { "agrees" } else { "differs" };
        let _ = writeln!(out, "Glue's built-ins would have chosen: {} ({agreement})", g.name());
    }
    let _ = writeln!(out, "guardrails: {} — {}", d.verdict, d.reason);
    if let Some(key) = &d.idempotency_key {
        let _ = writeln!(out, "idempotency key: {key}");
    }

    let mut later: Vec<&Record> =
        records.iter().filter(|r| r.id() == id && !matches!(r, Record::Decision(_))).collect();
    later.sort_by_key(|r| r.ts_ms());
    if later.is_empty() {
        let _ = writeln!(out, "nothing recorded after the decision (no approval, call, outcome or reward yet)");
    }
    let mut has_outcome = false;
    for rec in later {
        let at = format_utc(rec.ts_ms());
        match rec {
            Record::Decision(_) => {}
            Record::Approval(a) => {
                let what = match (a.approved, a.by.as_str()) {
                    (false, "expiry") => "the proposal expired without approval".to_owned(),
                    (true, by) => format!("approved via {by}"),
                    (false, by) => format!("rejected via {by}"),
                };
                let _ = writeln!(out, "{at} approval: {}", with_note(what, &a.note));
            }
            Record::Call(c) => {
                let _ = writeln!(out, "{at} call: {}", describe_call(c));
            }
            Record::Outcome(o) => {
                has_outcome = true;
                let _ = writeln!(out, "{at} outcome: {}", with_note(o.status.to_string(), &o.detail));
            }
            Record::Escalation(e) => {
                let _ = writeln!(out, "{at} escalation: {}", with_note(describe_escalation(e), &e.detail));
            }
            Record::Reward(r) => {
                let _ = writeln!(
                    out,
                    "{at} reward: {:.3} over {} windows, next state {}; Q(state {}, {}) {:.4} → {:.4}",
                    r.reward,
                    r.windows,
                    r.next_state,
                    d.state,
                    r.action.as_deref().unwrap_or(d.chosen.name()),
                    r.q_before,
                    r.q_after
                );
            }
        }
    }
    if !has_outcome && d.verdict != "noop" && d.verdict != "observed" {
        let _ = writeln!(out, "no outcome recorded yet");
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_round_trip_and_known_dates() {
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(2000, 3, 1), 11_017);
        assert_eq!(days_from_civil(1969, 12, 31), -1);
        for days in (-800_000..800_000).step_by(97) {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days);
        }
    }

    #[test]
    fn rfc3339_forms() {
        // `date -u -d 2026-11-23T03:00:00Z +%s` → 1795402800
        assert_eq!(parse_rfc3339("2026-11-23T03:00:00Z"), Ok(1_795_402_800_000));
        assert_eq!(parse_rfc3339("2026-11-23t03:00:00.5z"), Ok(1_795_402_800_500));
        assert_eq!(parse_rfc3339("2026-11-23 03:00:00.123456Z"), Ok(1_795_402_800_123));
        assert_eq!(parse_rfc3339("2026-11-23T04:30:00+01:30"), Ok(1_795_402_800_000));
        assert_eq!(parse_rfc3339("2026-11-22T23:00:00-04:00"), Ok(1_795_402_800_000));
        assert_eq!(parse_rfc3339("2024-02-29T00:00:00Z"), Ok(1_709_164_800_000));
        assert!(parse_rfc3339("2023-02-29T00:00:00Z").is_err());
        assert!(parse_rfc3339("2026-13-01T00:00:00Z").is_err());
        assert!(parse_rfc3339("2026-11-23T24:00:00Z").is_err());
        assert!(parse_rfc3339("2026-11-23T03:00:00").is_err());
        assert!(parse_rfc3339("2026-11-23T03:00:00.Z").is_err());
    }

    #[test]
    fn clock_and_format_handle_negative_times() {
        assert_eq!(format_utc(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(format_utc(-1), "1969-12-31T23:59:59.999Z");
        assert_eq!(clock(1_795_402_800_000 + 725_123), "03:12:05.123");
    }

    #[test]
    fn torn_tail_is_cut_back_to_the_last_newline() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log.jsonl");
        fs::write(&path, b"{\"a\":1}\n{\"b\"").unwrap();
        let mut f = OpenOptions::new().read(true).append(true).open(&path).unwrap();
        assert_eq!(truncate_torn_tail(&mut f).unwrap(), 4);
        assert_eq!(fs::read(&path).unwrap(), b"{\"a\":1}\n");
        fs::write(&path, b"no newline at all").unwrap();
        let mut f = OpenOptions::new().read(true).append(true).open(&path).unwrap();
        assert_eq!(truncate_torn_tail(&mut f).unwrap(), 17);
        assert_eq!(fs::read(&path).unwrap(), b"");
    }

    fn outcome(id: usize, ts_ms: i64) -> Record {
        Record::Outcome(OutcomeRecord {
            id: format!("d-{id}"),
            ts_ms,
            status: OutcomeStatus::Succeeded,
            detail: "x".repeat(40),
        })
    }

    fn ids(path: &Path) -> Vec<String> {
        read_log(path).unwrap().records.iter().map(|r| r.id().to_owned()).collect()
    }

    fn names(path: &Path) -> Vec<String> {
        segments(path).unwrap().iter().map(|p| p.file_name().unwrap().to_string_lossy().into_owned()).collect()
    }

    const BIG: Rotation = Rotation { max_bytes: u64::MAX, max_age_ms: i64::MAX, keep: 100 };

    #[test]
    fn rotates_by_size_at_record_boundaries_and_loses_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("provenance.jsonl");
        let line = serde_json::to_string(&outcome(0, 0)).unwrap().len() as u64 + 1;
        // Three records per segment: rotation comes before the fourth.
        let mut log = ProvenanceLog::open_rotating(&path, Rotation { max_bytes: 3 * line, ..BIG }).unwrap();
        for i in 0..10 {
            log.append(&outcome(i, 1000), i % 2 == 0).unwrap();
        }
        log.flush(true).unwrap();
        assert_eq!(
            names(&path),
            ["provenance.000001.jsonl", "provenance.000002.jsonl", "provenance.000003.jsonl", "provenance.jsonl"]
        );
        for seg in &segments(&path).unwrap()[..3] {
            let text = fs::read_to_string(seg).unwrap();
            assert_eq!(text.lines().count(), 3, "{}", seg.display());
            assert!(text.ends_with('\n'));
        }
        let want: Vec<String> = (0..10).map(|i| format!("d-{i}")).collect();
        assert_eq!(ids(&path), want);
        // Reopening continues the sequence and the active file's size.
        drop(log);
        let mut log = ProvenanceLog::open_rotating(&path, Rotation { max_bytes: 3 * line, ..BIG }).unwrap();
        for i in 10..13 {
            log.append(&outcome(i, 1000), true).unwrap();
        }
        assert_eq!(names(&path).len(), 5);
        assert_eq!(names(&path)[3], "provenance.000004.jsonl");
        assert_eq!(ids(&path).len(), 13);
    }

    #[test]
    fn rotates_by_age_of_the_first_record_even_across_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("provenance.jsonl");
        let rot = Rotation { max_age_ms: 60_000, ..BIG };
        let mut log = ProvenanceLog::open_rotating(&path, rot).unwrap();
        log.append(&outcome(0, 0), true).unwrap();
        log.append(&outcome(1, 59_999), true).unwrap();
        assert_eq!(names(&path), ["provenance.jsonl"]);
        drop(log);
        let mut log = ProvenanceLog::open_rotating(&path, rot).unwrap();
        log.append(&outcome(2, 60_000), true).unwrap();
        assert_eq!(names(&path), ["provenance.000001.jsonl", "provenance.jsonl"]);
        log.append(&outcome(3, 100_000), true).unwrap();
        log.append(&outcome(4, 120_000), true).unwrap();
        assert_eq!(names(&path).len(), 3);
        assert_eq!(ids(&path), ["d-0", "d-1", "d-2", "d-3", "d-4"]);
        assert_eq!(fs::read_to_string(&path).unwrap().lines().count(), 1);
    }

    #[test]
    fn retention_deletes_the_oldest_segments() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("provenance.jsonl");
        let mut log = ProvenanceLog::open_rotating(&path, Rotation { max_bytes: 1, keep: 2, ..BIG }).unwrap();
        for i in 0..6 {
            log.append(&outcome(i, 0), true).unwrap();
        }
        // One record per file: segments 1..=5 were made, 1..=3 deleted.
        assert_eq!(names(&path), ["provenance.000004.jsonl", "provenance.000005.jsonl", "provenance.jsonl"]);
        assert_eq!(ids(&path), ["d-3", "d-4", "d-5"]);
    }

    #[test]
    fn segments_sort_by_number_and_ignore_strangers() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("provenance.jsonl");
        assert!(segments(&path).unwrap().is_empty());
        assert!(matches!(read_log(&path), Err(ProvenanceError::NotFound { .. })));
        for name in ["provenance.000010.jsonl", "provenance.000009.jsonl", "provenance.1000000.jsonl"] {
            fs::write(dir.path().join(name), "").unwrap();
        }
        for name in ["provenance.old.jsonl", "provenance..jsonl", "other.000001.jsonl", "provenance.000001.json"] {
            fs::write(dir.path().join(name), "").unwrap();
        }
        // No active file (a crash between rename and create): the segments still read.
        assert_eq!(names(&path), ["provenance.000009.jsonl", "provenance.000010.jsonl", "provenance.1000000.jsonl"]);
        assert!(read_log(&path).unwrap().records.is_empty());
        fs::write(&path, "").unwrap();
        assert_eq!(names(&path).last().unwrap(), "provenance.jsonl");
        // A rotated segment given directly reads alone.
        assert_eq!(segments(&dir.path().join("provenance.000009.jsonl")).unwrap().len(), 1);
        // A bad line in an old segment names it.
        fs::write(dir.path().join("provenance.000009.jsonl"), "nope\n").unwrap();
        let read = read_log(&path).unwrap();
        assert_eq!(read.skipped.len(), 1);
        assert!(read.skipped[0].1.starts_with("in provenance.000009.jsonl: "), "{:?}", read.skipped);
    }
}
