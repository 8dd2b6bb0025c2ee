//! Storage: append (durably or buffered), rotate and read the log files.
//! Everything that touches the disk is here, so the durability argument of
//! the module doc above can be checked against one file.

use super::{ProvenanceError, Record};
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::provenance::{OutcomeRecord, OutcomeStatus};

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
