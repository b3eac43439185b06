//! The RFC 3339 timestamps the components write (`updated_at`,
//! `acquired_at`, `created_at`), in the shape Prodigy's `chrono` values
//! serialize to: UTC with microseconds (`2025-09-06T08:31:02.907114Z`).
//! A dozen lines here instead of a date crate; `storage_core::parse_rfc3339`
//! reads them back.

use std::time::{SystemTime, UNIX_EPOCH};

/// `at` as RFC 3339 UTC with microseconds; a time before 1970 is written as
/// the epoch (no clock Prodigy runs on is set that far back).
#[must_use]
pub fn rfc3339(at: SystemTime) -> String {
    let since = at.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let days = i64::try_from(secs / 86_400).expect("days since 1970 fit in i64");
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:06}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        since.subsec_micros()
    )
}

/// The proleptic Gregorian date of a day count since 1970-01-01 (Howard
/// Hinnant's `civil_from_days`, the inverse of the one `storage-core` parses with).
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn writes_what_prodigy_writes_and_reads_back() {
        let t = UNIX_EPOCH + Duration::new(1_757_147_462, 907_114_000);
        assert_eq!(rfc3339(t), "2025-09-06T08:31:02.907114Z");
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000000Z");
        let leap = UNIX_EPOCH + Duration::from_secs(1_709_164_800);
        assert_eq!(rfc3339(leap), "2024-02-29T00:00:00.000000Z");
        for secs in [0, 951_782_400, 4_102_444_799, 1_757_147_462] {
            let t = UNIX_EPOCH + Duration::new(secs, 123_456_000);
            assert_eq!(storage_core::parse_rfc3339(&rfc3339(t)), Some(t), "{secs}");
        }
    }
}
