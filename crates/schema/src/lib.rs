//! The records selfheal writes to disk, declared once.
//!
//! A file written by one crate and read by another used to be declared on
//! both sides, and the copies drifted (a field `Option<f64>` on one side and
//! `f64` on the other, a reader converting through a JSON round trip). Here
//! each on-disk shape has one Rust type that the writer serialises and every
//! reader deserialises. The crate holds serde types and the pure helpers that
//! keep their reading lenient, nothing else: no files, no clocks, no parsing
//! of anything but the types' own serde shape.
//!
//! Layout, one module per file family:
//! - [`eval`]: `selfheal evaluate --format json`, the side-by-side comparison
//!   the harness writes and `report` reads back.
//! - [`provenance`]: the sidecar's decision, outcome and reward records,
//!   read by `report`, `shadow`, `ope` and `selfheal log`.
//!
//! Reading rules: a field added after a format first shipped is optional on
//! read (`#[serde(default)]`), so older files still load and show the field
//! as missing; a non-finite number is written as JSON `null` (what
//! `serde_json` does with NaN) and read back as NaN. A format whose shape
//! changes incompatibly carries a `version` field and its reader says which
//! versions it knows.

#![forbid(unsafe_code)]

pub mod eval;
mod float;
pub mod provenance;
