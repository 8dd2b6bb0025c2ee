//! Property-based fuzzing of every parser of outside input (issue 16, part 4),
//! on stable Rust with `proptest`: ingest lines and bodies, replayed CSV and
//! JSON-lines files, NAB CSVs and labels (the library reader and `selfheal
//! detect`'s), the sidecar's TOML config, Q-table models and checkpoints,
//! rules and built-in files, and detector models.
//!
//! Each target asserts, for every input: no panic, a bounded time
//! ([`LIMIT`]), and that an error names where (the file, the 1-based line, the
//! key or the origin, as that parser's errors do). Inputs are random bytes and,
//! mostly, mutations of valid inputs (bit flips, inserted and deleted bytes,
//! numbers replaced by huge, negative, NaN or out-of-range ones, truncation,
//! duplicated fields and lines, deep nesting), so the fuzzer reaches past the
//! first check.
//!
//! Runs are reproducible: a fixed seed, and no failure files written. The
//! default case counts keep the file to a few seconds; `SELFHEAL_FUZZ_CASES=N`
//! runs N inputs per target (the long run of `benches/RESULTS.md`).

use proptest::prelude::*;
use proptest::test_runner::{Config, RngAlgorithm, RngSeed, TestCaseError, TestRunner};
use selfheal_agent::store::{GlueBuiltinsFile, ModelFile, RulesFile};
use selfheal_core::time::parse_stamp;
use selfheal_core::{Detector, Metric, Telemetry};
use selfheal_detect::telemetry::{DetectorModel, TelemetryDetector};
use selfheal_nab as nab;
use selfheal_sidecar::config::{ConfigError, SidecarConfig};
use selfheal_sidecar::source::{FileSource, Pacing, SourceError};
use selfheal_sidecar::window::{assemble, parse_body, parse_line, Assembler};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The most one input may take (debug builds and a shared machine included;
/// typical inputs take microseconds).
const LIMIT: Duration = Duration::from_secs(2);

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Inputs per target: `default`, or `SELFHEAL_FUZZ_CASES`.
fn cases(default: u32) -> u32 {
    std::env::var("SELFHEAL_FUZZ_CASES").ok().and_then(|s| s.parse().ok()).unwrap_or(default)
}

/// Run `check` on `cases` inputs of `strategy` with a fixed seed, no
/// persistence and no shrinking budget worth waiting for; report the count,
/// the wall time and the slowest input.
fn fuzz<S: Strategy>(
    name: &str,
    default_cases: u32,
    strategy: S,
    check: impl Fn(S::Value) -> Result<bool, TestCaseError>,
) where
    S::Value: std::fmt::Debug,
{
    let n = cases(default_cases);
    let config = Config {
        cases: n,
        failure_persistence: None,
        rng_algorithm: RngAlgorithm::ChaCha,
        rng_seed: RngSeed::Fixed(0x5e1f_4ea1 ^ name.len() as u64),
        max_shrink_iters: 2_000,
        ..Config::default()
    };
    let mut runner = TestRunner::new(config);
    let slowest = std::cell::Cell::new(Duration::ZERO);
    let accepted = std::cell::Cell::new(0u64);
    let started = Instant::now();
    let result = runner.run(&strategy, |input| {
        let t = Instant::now();
        accepted.set(accepted.get() + u64::from(check(input)?));
        let took = t.elapsed();
        slowest.set(slowest.get().max(took));
        prop_assert!(took < LIMIT, "one input took {took:?}");
        Ok(())
    });
    eprintln!(
        "fuzz {name}: {n} inputs ({} accepted) in {:.2} s, slowest {:.3} ms",
        accepted.get(),
        started.elapsed().as_secs_f64(),
        slowest.get().as_secs_f64() * 1e3
    );
    if let Err(e) = result {
        panic!("fuzz {name}: {e}");
    }
}

// ------------------------------------------------------------------ mutators

/// Replacements for a number: huge, negative, not finite, out of every
/// integer range, or not a number at all.
const NUMBERS: &[&str] = &[
    "1e999",
    "-1e999",
    "NaN",
    "nan",
    "inf",
    "-inf",
    "Infinity",
    "-1",
    "-0",
    "0",
    "1e-400",
    "9223372036854775807",
    "9223372036854775808",
    "-9223372036854775808",
    "-9223372036854775809",
    "18446744073709551615",
    "18446744073709551616",
    "4294967296",
    "65536",
    "99999999999999999999999999999999",
    "1.7976931348623157e308",
    "0x10",
    "1_000",
    "",
    "\"1\"",
    "null",
    "true",
    "[]",
    "{}",
];

/// Fragments worth inserting: structure, separators, escapes, keys the parsers look for.
const TOKENS: &[&str] = &[
    "{",
    "}",
    "[",
    "]",
    "\"",
    ",",
    ":",
    "=",
    "\n",
    "\r\n",
    "\\",
    "\\u0000",
    "\\ud800",
    "\u{feff}",
    "\u{0}",
    "é",
    "\u{10ffff}",
    " ",
    "\t",
    "#",
    "'",
    "\"\"\"",
    "'''",
    "\"detail-type\"",
    "\"ts\":",
    "\"pipeline\":",
    "\"metrics\":",
    "\"format\":",
    "\"version\":",
    "[[",
    "]]",
    ".",
    "-",
    "+",
    "e",
    "timestamp,value",
    "2014-02-29 00:00:00",
    "9999-12-31 23:59:59.999999999",
    "0000-01-01 00:00:00",
    "1970-01-01T00:00:00Z",
    "-99999999999999d",
];

#[derive(Clone, Debug)]
enum Mutation {
    FlipBit(usize, u8),
    SetByte(usize, u8),
    Insert(usize, Vec<u8>),
    InsertToken(usize, usize),
    Delete(usize, usize),
    Truncate(usize),
    ReplaceNumber(usize, usize),
    DupField(usize),
    DupLine(usize, u8),
    SwapLines(usize, usize),
    Nest(usize, usize, bool),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        3 => (any::<usize>(), 0u8..8).prop_map(|(i, b)| Mutation::FlipBit(i, b)),
        2 => (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Mutation::SetByte(i, b)),
        2 => (any::<usize>(), prop::collection::vec(any::<u8>(), 1..8)).prop_map(|(i, v)| Mutation::Insert(i, v)),
        3 => (any::<usize>(), 0..TOKENS.len()).prop_map(|(i, t)| Mutation::InsertToken(i, t)),
        2 => (any::<usize>(), 1usize..32).prop_map(|(i, n)| Mutation::Delete(i, n)),
        1 => any::<usize>().prop_map(Mutation::Truncate),
        5 => (any::<usize>(), 0..NUMBERS.len()).prop_map(|(k, r)| Mutation::ReplaceNumber(k, r)),
        2 => any::<usize>().prop_map(Mutation::DupField),
        2 => (any::<usize>(), 1u8..4).prop_map(|(k, n)| Mutation::DupLine(k, n)),
        1 => (any::<usize>(), any::<usize>()).prop_map(|(a, b)| Mutation::SwapLines(a, b)),
        1 => (any::<usize>(), prop_oneof![1usize..200, 200usize..5000], any::<bool>())
            .prop_map(|(i, d, o)| Mutation::Nest(i, d, o)),
    ]
}

/// Spans of numbers (an optional minus, digits, a fraction, an exponent).
fn numbers(b: &[u8]) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i].is_ascii_digit() {
            let start = if i > 0 && b[i - 1] == b'-' { i - 1 } else { i };
            let mut j = i;
            while j < b.len() && (b[j].is_ascii_digit() || matches!(b[j], b'.' | b'e' | b'E' | b'+' | b'-')) {
                j += 1;
            }
            out.push((start, j));
            i = j;
        } else {
            i += 1;
        }
    }
    out
}

fn line_spans(b: &[u8]) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut start = 0;
    for (i, &c) in b.iter().enumerate() {
        if c == b'\n' {
            out.push((start, i + 1));
            start = i + 1;
        }
    }
    if start < b.len() {
        out.push((start, b.len()));
    }
    out
}

fn apply(b: &mut Vec<u8>, m: &Mutation) {
    let at = |i: usize, len: usize| if len == 0 { 0 } else { i % (len + 1) };
    match m {
        Mutation::FlipBit(i, bit) if !b.is_empty() => {
            let i = i % b.len();
            b[i] ^= 1 << bit;
        }
        Mutation::SetByte(i, v) if !b.is_empty() => {
            let i = i % b.len();
            b[i] = *v;
        }
        Mutation::Insert(i, v) => {
            let i = at(*i, b.len());
            b.splice(i..i, v.iter().copied());
        }
        Mutation::InsertToken(i, t) => {
            let i = at(*i, b.len());
            b.splice(i..i, TOKENS[*t].bytes());
        }
        Mutation::Delete(i, n) if !b.is_empty() => {
            let i = i % b.len();
            let end = (i + n).min(b.len());
            b.drain(i..end);
        }
        Mutation::Truncate(i) => b.truncate(at(*i, b.len())),
        Mutation::ReplaceNumber(k, r) => {
            let spans = numbers(b);
            if !spans.is_empty() {
                let (s, e) = spans[k % spans.len()];
                b.splice(s..e, NUMBERS[*r].bytes());
            }
        }
        Mutation::DupField(k) => {
            // `"key": value,` repeated in place: a duplicate key.
            let commas: Vec<usize> = b.iter().enumerate().filter(|(_, &c)| c == b',').map(|(i, _)| i).collect();
            if !commas.is_empty() {
                let c = commas[k % commas.len()];
                let start = b[..c].iter().rposition(|&x| matches!(x, b',' | b'{' | b'\n')).map_or(0, |p| p + 1);
                let field = b[start..=c].to_vec();
                b.splice(c + 1..c + 1, field);
            }
        }
        Mutation::DupLine(k, n) => {
            let spans = line_spans(b);
            if !spans.is_empty() {
                let (s, e) = spans[k % spans.len()];
                let mut line = b[s..e].to_vec();
                if line.last() != Some(&b'\n') {
                    line.insert(0, b'\n');
                }
                for _ in 0..*n {
                    b.splice(e..e, line.iter().copied());
                }
            }
        }
        Mutation::SwapLines(x, y) => {
            let spans = line_spans(b);
            if spans.len() >= 2 {
                let mut lines: Vec<Vec<u8>> = spans.iter().map(|&(s, e)| b[s..e].to_vec()).collect();
                let n = lines.len();
                lines.swap(x % n, y % n);
                *b = lines.concat();
            }
        }
        Mutation::Nest(i, depth, object) => {
            let i = at(*i, b.len());
            let (open, close): (&[u8], &[u8]) = if *object { (b"{\"a\":", b"}") } else { (b"[", b"]") };
            let mut v = open.repeat(*depth);
            v.extend_from_slice(b"1");
            v.extend(close.repeat(*depth));
            b.splice(i..i, v);
        }
        _ => {}
    }
}

/// Valid inputs mutated 0 to 8 times, and now and then plain random bytes.
fn inputs(seeds: Vec<Vec<u8>>) -> impl Strategy<Value = Vec<u8>> {
    let mutated = (prop::sample::select(seeds), prop::collection::vec(mutation(), 0..8)).prop_map(|(mut b, ms)| {
        for m in &ms {
            apply(&mut b, m);
        }
        b
    });
    prop_oneof![
        8 => mutated,
        1 => prop::collection::vec(any::<u8>(), 0..256),
        1 => prop::collection::vec(prop::sample::select(b"{}[]\":,0123456789-.e \nabc".to_vec()), 0..256),
    ]
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn read(rel: &str) -> Vec<u8> {
    let p = root().join(rel);
    std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn shared(name: &str) -> Option<Vec<u8>> {
    std::fs::read(root().join("../shared/field-cases").join(name)).ok()
}

// ------------------------------------------------------------- ingest lines

const SAMPLE: &str = r#"{"ts": 1795489200000, "pipeline": "orders", "stage": "transform", "metrics": {"glue.driver.aggregate.numFailedTasks": 0, "glue.driver.aggregate.recordsRead": 999, "glue.ALL.jvm.heap.usage": 0.473, "pipeline.latency.p95": 60.0, "pipeline.backlog.records": 0}}"#;
const EVENT: &str = r#"{"version": "0", "id": "0", "detail-type": "Glue Job State Change", "source": "aws.glue", "time": "2026-11-23T03:25:00Z", "region": "us-east-1", "resources": [], "detail": {"jobName": "orders-etl", "severity": "ERROR", "state": "FAILED", "jobRunId": "jr_0", "message": "Container killed by YARN for exceeding memory limits. 5.5 GB of 5.5 GB physical memory used."}}"#;

fn line_seeds() -> Vec<Vec<u8>> {
    let mut seeds = vec![
        SAMPLE.as_bytes().to_vec(),
        EVENT.as_bytes().to_vec(),
        EVENT
            .replace("FAILED", "SUCCEEDED")
            .replace("2026-11-23T03:25:00Z", "2026-11-23T03:25:00.123+02:00")
            .into_bytes(),
        EVENT.replace("FAILED", "TIMEOUT").replace("Container killed", "Job timed out").into_bytes(),
        br#"{"ts": 0, "pipeline": "p", "metrics": {}}"#.to_vec(),
    ];
    if let Some(b) = shared("driver-oom.jsonl") {
        seeds.extend(b.split(|&c| c == b'\n').take(2).map(<[u8]>::to_vec));
    }
    if let Some(b) = shared("glue-job-state-change-failed.json") {
        seeds.push(b.split(|&c| c == b'\n').next().unwrap_or_default().to_vec());
    }
    seeds.retain(|s| !s.is_empty());
    seeds
}

fn check_sample(s: &selfheal_sidecar::window::SampleLine<'_>) -> Result<(), TestCaseError> {
    prop_assert!(!s.pipeline.is_empty());
    prop_assert!(s.ts >= 0);
    prop_assert!(s.metrics.0.iter().all(|(_, v)| v.is_finite()), "{:?}", s.metrics.0);
    Ok(())
}

#[test]
fn fuzz_ingest_line() {
    fuzz("ingest_line", 20_000, inputs(line_seeds()), |b| {
        let mut accepted = false;
        match parse_line(&b) {
            Ok(s) => {
                accepted = true;
                check_sample(&s)?;
                // Past the parser: the assembler takes whatever it accepted.
                let mut asm = Assembler::new(60_000);
                asm.map_jobs([("orders-etl".to_string(), "orders".to_string())]);
                if s.event {
                    asm.push_event(&s.pipeline, s.ts, &s.metrics.0);
                } else {
                    let _ = asm.push(&s.pipeline, s.ts, &s.metrics.0);
                    let _ = asm.push(&s.pipeline, s.ts.saturating_add(60_000), &s.metrics.0);
                }
                asm.drain();
            }
            // A line's error is its own; `parse_body` adds the line number.
            Err(e) => prop_assert!(!e.trim().is_empty(), "an empty error"),
        }
        Ok(accepted)
    });
}

/// Bodies of several mutated lines, blank lines and CRLFs among them.
fn bodies() -> impl Strategy<Value = Vec<u8>> {
    let line = inputs(line_seeds());
    let sep = prop::sample::select(vec![&b"\n"[..], b"\r\n", b"\n\n", b"\n  \n"]);
    prop_oneof![
        4 => prop::collection::vec((line, sep), 0..12).prop_map(|parts| {
            let mut body = Vec::new();
            for (l, s) in parts {
                body.extend(l);
                body.extend_from_slice(s);
            }
            body
        }),
        1 => prop::collection::vec(any::<u8>(), 0..512),
    ]
}

#[test]
fn fuzz_ingest_body() {
    fuzz("ingest_body", 5_000, bodies(), |body| {
        let (samples, refused) = parse_body(&body);
        let accepted = refused.is_empty() && !samples.is_empty();
        let lines: Vec<&[u8]> = body.split(|&c| c == b'\n').collect();
        let blank = |n: usize| lines[n - 1].iter().all(u8::is_ascii_whitespace);
        let non_blank = (1..=lines.len()).filter(|&n| !blank(n)).count();
        prop_assert_eq!(samples.len() + refused.len(), non_blank, "every non-blank line is a sample or refused");
        for (n, e) in &refused {
            prop_assert!((1..=lines.len()).contains(n) && !blank(*n), "refused line {} of {}", n, lines.len());
            prop_assert!(!e.trim().is_empty());
        }
        for (n, s) in &samples {
            prop_assert!((1..=lines.len()).contains(n) && !blank(*n));
            check_sample(s)?;
        }
        let refused_lines: Vec<usize> = refused.iter().map(|r| r.0).collect();
        let mut asm = Assembler::new(60_000);
        let out = assemble(&mut asm, &samples, refused);
        prop_assert_eq!(out.accepted + out.rejected.len(), non_blank);
        for (n, _) in &out.rejected {
            prop_assert!(refused_lines.contains(n) || samples.iter().any(|(m, _)| m == n), "line {}", n);
        }
        asm.drain();
        Ok(accepted)
    });
}

// ------------------------------------------------------------- file replay

/// An error of a file names the file, and a bad line its number.
fn names_the_file(e: &str, path: &Path, lines: usize) -> Result<(), TestCaseError> {
    let p = path.display().to_string();
    prop_assert!(e.contains(&p), "{e:?} does not name {p}");
    if let Some(rest) = e.strip_prefix(&format!("{p}:")) {
        if let Some((n, _)) = rest.split_once(':') {
            if let Ok(n) = n.trim().parse::<usize>() {
                prop_assert!((1..=lines.max(1)).contains(&n), "line {n} of {lines} in {e:?}");
            }
        }
    }
    Ok(())
}

fn csv_seeds() -> Vec<Vec<u8>> {
    let mut seeds = vec![
        b"timestamp,value\n2014-02-14 14:30:00,1.5\n2014-02-14 14:35:00,2\n2014-02-14 14:40:00.250,-3e2\n".to_vec(),
        b"timestamp,value\n2016-02-29 00:00:00,0\n2016-02-29 00:00:00,0\n2016-02-28 23:59:59,7\n".to_vec(),
        b"timestamp,value\r\n2014-01-01 00:00:00.123456789,4117\r\n".to_vec(),
    ];
    if let Some(b) = shared("two-level-200.csv") {
        seeds.push(b.split(|&c| c == b'\n').take(12).collect::<Vec<_>>().join(&b'\n'));
    }
    seeds
}

#[test]
fn fuzz_replay_file() {
    let dir = tempfile::tempdir().unwrap();
    let mut seeds: Vec<(bool, Vec<u8>)> = csv_seeds().into_iter().map(|s| (false, s)).collect();
    seeds.push((
        true,
        format!("{SAMPLE}\n{EVENT}\n{}\n", SAMPLE.replace("1795489200000", "1795489260000")).into_bytes(),
    ));
    if let Some(b) = shared("driver-oom.jsonl") {
        seeds.push((true, b.split(|&c| c == b'\n').take(6).collect::<Vec<_>>().join(&b'\n')));
    }
    let (csv, jsonl): (Vec<_>, Vec<_>) = seeds.into_iter().partition(|s| !s.0);
    let csv: Vec<Vec<u8>> = csv.into_iter().map(|s| s.1).collect();
    let jsonl: Vec<Vec<u8>> = jsonl.into_iter().map(|s| s.1).collect();
    let strategy = prop_oneof![(Just(false), inputs(csv)), (Just(true), inputs(jsonl)),];
    let from = prop_oneof![Just(None), Just(Some(i64::MIN)), Just(Some(i64::MAX)), any::<i64>().prop_map(Some)];
    fuzz("replay_file", 4_000, (strategy, from), |((is_jsonl, bytes), from)| {
        let mut accepted = false;
        let path = dir.path().join(if is_jsonl { "replay.jsonl" } else { "replay.csv" });
        std::fs::write(&path, &bytes).unwrap();
        let lines = bytes.split(|&c| c == b'\n').count();
        let jobs = [("orders-etl".to_string(), "orders".to_string())];
        match FileSource::open(&path, Metric::LatencyP95, "replayed", Pacing::Fast, from, &jobs) {
            Ok(src) => {
                accepted = true;
                prop_assert!(src.remaining() <= lines + 1)
            }
            Err(e @ SourceError::Bad { line, .. }) => {
                prop_assert!((1..=lines.max(1)).contains(&line), "line {line} of {lines}: {e}");
                names_the_file(&e.to_string(), &path, lines)?;
            }
            Err(e @ SourceError::Io { .. }) => names_the_file(&e.to_string(), &path, lines)?,
        }
        Ok(accepted)
    });
}

// --------------------------------------------------------------------- NAB

#[test]
fn fuzz_nab_stamp() {
    let seeds: Vec<Vec<u8>> = [
        "2014-02-14 14:30:00",
        "2016-02-29 23:59:59.999999999",
        "0000-01-01 00:00:00",
        "9999-12-31 23:59:59.5",
        "1900-02-28 12:00:00.000001",
    ]
    .iter()
    .map(|s| s.as_bytes().to_vec())
    .collect();
    fuzz("nab_stamp", 20_000, inputs(seeds), |b| {
        let mut accepted = false;
        let s = text(&b);
        if let Some(st) = parse_stamp(&s) {
            accepted = true;
            let ms = st.unix_ms();
            // Years 0000 to 9999: within ±300,000 years of 1970 in ms.
            prop_assert!(ms.abs() < 10_000_000_000_000_000, "{s:?} → {ms}");
        }
        Ok(accepted)
    });
}

#[test]
fn fuzz_nab_csv() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("series.csv");
    fuzz("nab_csv", 4_000, inputs(csv_seeds()), |bytes| {
        let mut accepted = false;
        std::fs::write(&path, &bytes).unwrap();
        let lines = bytes.split(|&c| c == b'\n').count();
        match nab::series::read_series(&path, false) {
            Ok(nab::series::Series { timestamps: t, values: v, .. }) => {
                accepted = true;
                prop_assert_eq!(t.len(), v.len());
                prop_assert!(v.iter().all(|x| x.is_finite()));
                prop_assert!(t.iter().all(|s| parse_stamp(s).is_some()));
            }
            Err(e @ nab::NabError::Csv { line, .. }) => {
                prop_assert!((1..=lines.max(2)).contains(&line), "line {line} of {lines}: {e}");
                names_the_file(&e.to_string(), &path, lines.max(2))?;
            }
            Err(e) => names_the_file(&e.to_string(), &path, lines)?,
        }
        Ok(accepted)
    });
}

/// A corpus directory: one CSV and `labels/combined_windows.json`, both mutated.
#[test]
fn fuzz_nab_corpus() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("cat")).unwrap();
    std::fs::create_dir_all(dir.path().join("labels")).unwrap();
    let labels: Vec<Vec<u8>> = vec![
        br#"{"cat/a.csv": [["2014-02-14 14:35:00", "2014-02-14 14:40:00.250000"]]}"#.to_vec(),
        br#"{"cat/a.csv": [["2014-02-14 14:30:00", "2014-02-14 14:30:00"], ["2014-02-14 14:40:00.25", "2014-02-14 14:40:00.25"]], "cat/b.csv": []}"#.to_vec(),
        br#"{"cat/a.csv": []}"#.to_vec(),
    ];
    let csv = csv_seeds();
    fuzz("nab_corpus", 3_000, (inputs(csv), inputs(labels)), |(csv, labels)| {
        let mut accepted = false;
        let csv_path = dir.path().join("cat/a.csv");
        let labels_path = dir.path().join("labels/combined_windows.json");
        std::fs::write(&csv_path, &csv).unwrap();
        std::fs::write(&labels_path, &labels).unwrap();
        match nab::load_category(dir.path(), "cat") {
            Ok(files) => {
                accepted = true;
                for (s, v) in &files {
                    prop_assert_eq!(s.len(), v.len());
                    prop_assert!(s.windows().iter().all(|&(l, r)| l <= r && r < s.len()));
                }
            }
            Err(e) => {
                let msg = e.to_string();
                match &e {
                    nab::NabError::Labels { .. } => prop_assert!(msg.starts_with("cat/a.csv: "), "{msg:?}"),
                    nab::NabError::Json { .. } => {
                        prop_assert!(msg.contains(&labels_path.display().to_string()), "{msg:?}");
                        prop_assert!(msg.contains("line "), "{msg:?}");
                    }
                    nab::NabError::Csv { .. } => {
                        names_the_file(&msg, &csv_path, csv.split(|&c| c == b'\n').count().max(2))?
                    }
                    _ => prop_assert!(msg.contains(&dir.path().display().to_string()), "{msg:?}"),
                }
            }
        }
        Ok(accepted)
    });
}

/// The same reader as `selfheal detect` calls it, with `--strict` on or off.
#[test]
fn fuzz_detect_csv() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("input.csv");
    let seeds =
        csv_seeds().into_iter().chain([b"\xef\xbb\xbftimestamp , value\n2014-02-14 14:30:00, 1\n\n\n".to_vec()]);
    fuzz("detect_csv", 4_000, (inputs(seeds.collect()), any::<bool>()), |(bytes, strict)| {
        let mut accepted = false;
        std::fs::write(&path, &bytes).unwrap();
        let lines = bytes.split(|&c| c == b'\n').count();
        match nab::series::read_series(&path, strict) {
            Ok(s) => {
                accepted = true;
                prop_assert_eq!(s.timestamps.len(), s.values.len());
                prop_assert_eq!(s.stamps.len(), s.values.len());
                prop_assert!(s.values.iter().all(|x| x.is_finite()));
                for w in &s.warnings {
                    prop_assert!((2..=lines).contains(&w.line), "warning on line {} of {}", w.line, lines);
                }
            }
            Err(e) => {
                let msg = format!("{e:#}");
                let p = path.display().to_string();
                prop_assert!(msg.starts_with(&format!("{p}:")), "{msg:?}");
                names_the_file(&msg, &path, lines.max(2))?;
            }
        }
        Ok(accepted)
    });
}

// ------------------------------------------------------------------ config

const SMALL_CONFIG: &str = r#"
[daemon]
listen = "127.0.0.1:9477"
state_dir = "state"

[source]
kind = "file"
path = "replay.csv"
metric = "pipeline.latency.p95"
pipeline = "orders"
"#;

#[test]
fn fuzz_config_toml() {
    let seeds = vec![read("crates/sidecar/src/sidecar.example.toml"), SMALL_CONFIG.as_bytes().to_vec()];
    fuzz("config_toml", 10_000, inputs(seeds), |b| {
        let mut accepted = false;
        let t = text(&b);
        match SidecarConfig::from_toml_str(&t, "fuzz.toml") {
            Ok(cfg) => {
                accepted = true;
                prop_assert!(cfg.validate().is_empty())
            }
            Err(e) => {
                let msg = e.to_string();
                prop_assert!(msg.starts_with("fuzz.toml: "), "{msg:?}");
                match e {
                    ConfigError::Parse { message, .. } => {
                        prop_assert!(message.contains("line "), "no line in {message:?}")
                    }
                    ConfigError::Invalid { problems, .. } => {
                        prop_assert!(!problems.is_empty());
                        for p in &problems {
                            let key = p.split_once(": ").map(|k| k.0).unwrap_or("");
                            prop_assert!(!key.is_empty() && !key.contains(' '), "a problem that names no key: {p:?}");
                        }
                    }
                    ConfigError::Read { .. } => prop_assert!(false, "no file was read"),
                }
            }
        }
        Ok(accepted)
    });
}

// ------------------------------------------------------------- model files

/// `models/policy.json` cut to its first rows (the file is 2.5 MB): a valid
/// trained model, and the same as a sidecar checkpoint (grown from it, with
/// online counts).
fn model_seeds() -> Vec<Vec<u8>> {
    let mut v: serde_json::Value = serde_json::from_slice(&read("models/policy.json")).unwrap();
    v["states"].as_array_mut().unwrap().truncate(3);
    let trained = serde_json::to_string_pretty(&v).unwrap();
    ModelFile::from_json(&trained, "seed").expect("the cut policy is valid");
    v["meta"]["grown_from"] = "detector-v2/default-train/seed=1/episodes=400000/states=43008".into();
    for row in v["states"].as_array_mut().unwrap() {
        let n = row["q"].as_array().unwrap().len();
        row["online"] = serde_json::Value::Array(vec![1.into(); n]);
    }
    let checkpoint = serde_json::to_string(&v).unwrap();
    ModelFile::from_json(&checkpoint, "seed").expect("the checkpoint is valid");
    vec![trained.into_bytes(), checkpoint.into_bytes()]
}

#[test]
fn fuzz_model_file() {
    fuzz("model_file", 10_000, inputs(model_seeds()), |b| {
        let mut accepted = false;
        let t = text(&b);
        match ModelFile::from_json(&t, "fuzz-model.json") {
            Ok(m) => {
                accepted = true;
                prop_assert!(m.states.iter().all(|r| (r.id as usize) < m.num_states));
                let _ = m.identity();
            }
            Err(e) => {
                let msg = e.to_string();
                prop_assert!(msg.starts_with("fuzz-model.json: "), "{msg:?}");
            }
        }
        Ok(accepted)
    });
}

#[test]
fn fuzz_rules_and_builtins() {
    let seeds = vec![read("models/rules.json"), read("models/glue-builtins.json")];
    fuzz("rules_builtins", 10_000, inputs(seeds), |b| {
        let t = text(&b);
        let rules = RulesFile::from_json(&t, "fuzz-rules.json");
        let builtins = GlueBuiltinsFile::from_json(&t, "fuzz-builtins.json");
        let accepted = rules.is_ok() || builtins.is_ok();
        if let Err(e) = rules {
            prop_assert!(e.to_string().starts_with("fuzz-rules.json: "), "{e}");
        }
        if let Err(e) = builtins {
            prop_assert!(e.to_string().starts_with("fuzz-builtins.json: "), "{e}");
        }
        Ok(accepted)
    });
}

/// `models/detector.json` cut to two trees, and a detector scoring windows
/// when the file is accepted (a model that loads must not panic in use).
#[test]
fn fuzz_detector_file() {
    let mut v: serde_json::Value = serde_json::from_slice(&read("models/detector.json")).unwrap();
    v["forest"]["trees"].as_array_mut().unwrap().truncate(2);
    let seed = serde_json::to_string_pretty(&v).unwrap();
    DetectorModel::from_json(&seed, "seed").expect("the cut detector is valid");
    let mut windows = vec![Telemetry::default()];
    let mut full = Telemetry::default();
    for (i, &m) in Metric::ALL.iter().enumerate() {
        full.set(m, i as f64 * 1e6 - 3.0);
    }
    windows.push(full);
    fuzz("detector_file", 5_000, inputs(vec![seed.into_bytes()]), |b| {
        let mut accepted = false;
        let t = text(&b);
        match DetectorModel::from_json(&t, "fuzz-detector.json") {
            Ok(m) => {
                accepted = true;
                let d = TelemetryDetector::new(m);
                for w in &windows {
                    let _ = d.detect(w);
                }
            }
            Err(e) => {
                let msg = e.to_string();
                prop_assert!(msg.starts_with("fuzz-detector.json: "), "{msg:?}");
            }
        }
        Ok(accepted)
    });
}

/// Found by `fuzz_detector_file`: a detector whose signature mean or scale is
/// shorter than its signature features, or whose forest splits on a
/// coordinate it does not have, loaded and then panicked when it scored.
#[test]
fn a_detector_that_would_panic_in_use_is_refused() {
    let v: serde_json::Value = serde_json::from_slice(&read("models/detector.json")).unwrap();
    let mut short = v.clone();
    short["signatures"]["mean"].as_array_mut().unwrap().pop();
    let e = DetectorModel::from_json(&short.to_string(), "d.json").unwrap_err().to_string();
    assert!(e.starts_with("d.json: signature mean"), "{e}");
    let text = v.to_string();
    let at = text.find("\"Split\":[[[").expect("a split") + "\"Split\":[[[".len();
    let end = at + text[at..].find(',').unwrap();
    let bad = format!("{}99{}", &text[..at], &text[end..]);
    let e = DetectorModel::from_json(&bad, "d.json").unwrap_err().to_string();
    assert!(e.starts_with("d.json: a split on coordinate 99"), "{e}");
}
