//! Queries: which records `selfheal log` shows, which pages a restart still
//! owes, and the times users type and read (Unix ms, RFC 3339, relative).
//! Pure functions over records already read, so they are tested without files.

use super::{DecisionRecord, PagePhase, Record};
use std::collections::HashMap;

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
pub(super) fn clock(ts_ms: i64) -> String {
    let ms = ts_ms.rem_euclid(MS_PER_DAY);
    let (h, m, s, frac) = (ms / 3_600_000, ms / 60_000 % 60, ms / 1_000 % 60, ms % 1_000);
    format!("{h:02}:{m:02}:{s:02}.{frac:03}")
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
}
