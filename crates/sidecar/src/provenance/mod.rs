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
//!
//! # Layout
//!
//! The record types are the schema crate's ([`selfheal_schema::provenance`],
//! re-exported here). [`store`] appends, rotates and reads the files; [`query`]
//! selects records (filters, pages still owed) and parses and formats times;
//! [`render`] turns records into text for `selfheal log`, `explain` and the
//! daemon's console.

mod query;
mod render;
mod store;

pub use query::*;
pub use render::*;
pub use store::*;

use std::io;
use std::path::PathBuf;

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
