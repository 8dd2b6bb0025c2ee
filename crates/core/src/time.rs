//! Timestamps as NAB files and replayed metric files write them.
//!
//! One parser for `YYYY-MM-DD HH:MM:SS[.fraction]`, shared by the NAB scorer,
//! `selfheal detect` and the sidecar's file replay, so a stamp one accepts the
//! others accept too. The calendar arithmetic is the `time` crate's; this
//! module fixes the one format and the reading as UTC.

use time::format_description::BorrowedFormatItem;
use time::macros::format_description;
use time::PrimitiveDateTime;

/// `YYYY-MM-DD HH:MM:SS` with an optional fraction of 1 to 9 digits.
const FORMAT: &[BorrowedFormatItem<'_>] = format_description!(
    "[year repr:full sign:automatic]-[month]-[day] [hour]:[minute]:[second][optional [.[subsecond digits:1+]]]"
);

/// A parsed `YYYY-MM-DD HH:MM:SS[.fraction]` timestamp; equal instants compare
/// equal whatever the fraction's length (`00:05:00` equals `00:05:00.000000`),
/// and stamps order in time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Stamp(PrimitiveDateTime);

impl Stamp {
    /// The instant as Unix milliseconds (the stamp read as UTC), rounded
    /// towards the past.
    pub fn unix_ms(&self) -> i64 {
        let ns = self.0.assume_utc().unix_timestamp_nanos();
        // Years 0000 to 9999 fit an i64 of milliseconds many times over.
        i64::try_from(ns.div_euclid(1_000_000)).unwrap_or(if ns < 0 { i64::MIN } else { i64::MAX })
    }
}

/// Parse `YYYY-MM-DD HH:MM:SS[.fraction]` (years 0000 to 9999, 1 to 9 fraction
/// digits); `None` for anything else, impossible dates (02-30) and a 60th
/// second included.
pub fn parse_stamp(s: &str) -> Option<Stamp> {
    // The format's year would also take a sign or more digits, its fraction
    // more than nine digits (truncated); NAB's are four and at most nine.
    if !(19..=29).contains(&s.len()) || !s.as_bytes()[..4].iter().all(u8::is_ascii_digit) {
        return None;
    }
    PrimitiveDateTime::parse(s, FORMAT).ok().map(Stamp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamp_parsing() {
        assert_eq!(parse_stamp("2014-02-26 13:45:00"), parse_stamp("2014-02-26 13:45:00.000000"));
        assert_ne!(parse_stamp("2014-02-26 13:45:00"), parse_stamp("2014-02-26 13:45:00.000001"));
        assert_eq!(parse_stamp("2014-02-26 13:45:00.5"), parse_stamp("2014-02-26 13:45:00.500"));
        assert!(parse_stamp("2014-02-14 14:30:00") < parse_stamp("2014-02-14 14:30:00.5"));
        assert!(parse_stamp("2014-02-14 14:30:00") < parse_stamp("2014-02-15 00:00:00"));
        for good in ["2016-02-29 00:00:00", "0000-01-01 00:00:00", "9999-12-31 23:59:59.999999999"] {
            assert!(parse_stamp(good).is_some(), "{good:?}");
        }
        for bad in [
            "",
            "x",
            "2014-02-26",
            "2014-02-26T13:45:00",
            "2014-13-01 00:00:00",
            "2014-02-26 24:00:00",
            "2014-02-30 00:00:00",
            "2014-02-29 00:00:00",
            "2014-02-26 23:59:60",
            "2014-02-26 13:45:00.",
            "2014-02-26 13:45:00.1234567890",
            "2014-02-26 13:45:00x",
            "2014-02-26 13:45:0a",
            "2014-2-26 13:45:00",
            "+014-02-26 13:45:00",
            "+2014-02-26 13:45:00",
            "12014-02-26 13:45:00",
            " 2014-02-26 13:45:00",
        ] {
            assert_eq!(parse_stamp(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn stamp_to_unix_ms() {
        assert_eq!(parse_stamp("1970-01-01 00:00:00").unwrap().unix_ms(), 0);
        // date -u -d '2026-11-23 03:00:00' +%s
        assert_eq!(parse_stamp("2026-11-23 03:00:00.250").unwrap().unix_ms(), 1_795_402_800_250);
        assert_eq!(parse_stamp("2000-03-01 00:00:00").unwrap().unix_ms(), 951_868_800_000);
        // Before 1970 the fraction still counts forward from the whole second.
        assert_eq!(parse_stamp("1969-12-31 23:59:59.250").unwrap().unix_ms(), -750);
        // date -u -d '0000-01-01' +%s → -62167219200
        assert_eq!(parse_stamp("0000-01-01 00:00:00").unwrap().unix_ms(), -62_167_219_200_000);
    }
}
