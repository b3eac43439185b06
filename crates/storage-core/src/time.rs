//! Reading the RFC 3339 timestamps Prodigy writes into events and records.
//!
//! Retention by age needs an event's time, and events carry it as text
//! (`"timestamp": "2025-09-06T08:31:02.907114Z"`, chrono's format). A small
//! strict parser here keeps `storage-core` free of a date crate: it accepts
//! `YYYY-MM-DDTHH:MM:SS[.fraction](Z|±HH:MM)` (also `t`, `z` and a space
//! for `T`, as RFC 3339 allows) and nothing else. A value it cannot read is
//! `None`, and retention keeps such an event rather than guess its age.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The instant an RFC 3339 timestamp names, or `None` if it is not one
/// (or lies before 1970).
#[must_use]
pub fn parse_rfc3339(text: &str) -> Option<SystemTime> {
    let b = text.as_bytes();
    if b.len() < 20 {
        return None;
    }
    let num = |from: usize, len: usize| -> Option<i64> {
        let part = b.get(from..from + len)?;
        if !part.iter().all(u8::is_ascii_digit) {
            return None;
        }
        std::str::from_utf8(part).ok()?.parse().ok()
    };
    let (year, month, day) = (num(0, 4)?, num(5, 2)?, num(8, 2)?);
    let (hour, minute, second) = (num(11, 2)?, num(14, 2)?, num(17, 2)?);
    if b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') {
        return None;
    }
    if b[13] != b':' || b[16] != b':' {
        return None;
    }
    if !(1..=12).contains(&month) || day < 1 || day > days_in_month(year, month) {
        return None;
    }
    // 60 is a leap second; it reads as the next second's start.
    if hour > 23 || minute > 59 || second > 60 {
        return None;
    }
    let mut i = 19;
    let mut nanos: u32 = 0;
    if b.get(i) == Some(&b'.') {
        i += 1;
        let start = i;
        while b.get(i).is_some_and(u8::is_ascii_digit) {
            if i - start < 9 {
                nanos = nanos * 10 + u32::from(b[i] - b'0');
            }
            i += 1;
        }
        let digits = i - start;
        if digits == 0 {
            return None;
        }
        for _ in digits..9 {
            nanos *= 10;
        }
    }
    let offset_secs: i64 = match b.get(i..)? {
        [b'Z' | b'z'] => 0,
        [sign @ (b'+' | b'-'), h1, h2, b':', m1, m2] => {
            let digit = |c: u8| c.is_ascii_digit().then(|| i64::from(c - b'0'));
            let h = digit(*h1)? * 10 + digit(*h2)?;
            let m = digit(*m1)? * 10 + digit(*m2)?;
            if h > 23 || m > 59 {
                return None;
            }
            let total = h * 3600 + m * 60;
            if *sign == b'+' { total } else { -total }
        }
        _ => return None,
    };
    let days = days_from_civil(year, month, day);
    let secs = days * 86_400 + hour * 3600 + minute * 60 + second - offset_secs;
    let secs = u64::try_from(secs).ok()?;
    Some(UNIX_EPOCH + Duration::new(secs, nanos))
}

fn is_leap(y: i64) -> bool {
    (y % 4 == 0 && y % 100 != 0) || y % 400 == 0
}

fn days_in_month(y: i64, m: i64) -> i64 {
    match m {
        2 if is_leap(y) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's
/// `days_from_civil`).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: &str) -> Option<(u64, u32)> {
        parse_rfc3339(s).map(|t| {
            let d = t.duration_since(UNIX_EPOCH).expect("after epoch");
            (d.as_secs(), d.subsec_nanos())
        })
    }

    #[test]
    fn reads_what_prodigy_writes() {
        assert_eq!(
            secs("2025-09-06T08:31:02.907114Z"),
            Some((1_757_147_462, 907_114_000))
        );
        assert_eq!(secs("1970-01-01T00:00:00Z"), Some((0, 0)));
        assert_eq!(
            secs("2025-09-06T10:31:02+02:00"),
            secs("2025-09-06T08:31:02Z")
        );
        assert_eq!(
            secs("2024-02-29T00:00:00.5z"),
            Some((1_709_164_800, 500_000_000))
        );
        assert_eq!(
            secs("2025-01-01 00:00:00.1234567891Z"),
            Some((1_735_689_600, 123_456_789))
        );
    }

    #[test]
    fn refuses_anything_else() {
        for bad in [
            "",
            "2025-09-06",
            "2025-09-06T08:31:02",
            "2025-13-01T00:00:00Z",
            "2025-02-29T00:00:00Z",
            "2025-09-06T24:00:00Z",
            "2025-09-06T08:31:02.Z",
            "2025-09-06T08:31:02+0200",
            "1969-12-31T23:59:59Z",
            "２０２５-09-06T08:31:02Z",
            "2025-09-06T08:31:02Zjunk",
        ] {
            assert_eq!(parse_rfc3339(bad), None, "{bad}");
        }
    }
}
