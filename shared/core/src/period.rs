//! Calendar periods (UTC) that budgets and the cost ledger are kept in: a day
//! `YYYY-MM-DD` or a month `YYYY-MM`. Pure arithmetic on days since 1970-01-01 (Howard
//! Hinnant's civil-date algorithms), so no time-zone database is needed.

pub const DAY_MS: i64 = 86_400_000;

/// (year, month, day) of a day number since 1970-01-01.
pub fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = if z >= 0 { z } else { z - 146_096 } / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// Days since 1970-01-01 of a proleptic Gregorian date.
pub fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = (m as i64 + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// `YYYY-MM-DD` (UTC) of a timestamp in ms.
pub fn day_of(at_ms: i64) -> String {
    let (y, m, d) = civil_from_days(at_ms.div_euclid(DAY_MS));
    format!("{y:04}-{m:02}-{d:02}")
}

/// `HH:MM:SS` (UTC) of a timestamp in ms.
pub fn clock_of(at_ms: i64) -> String {
    let s = at_ms.div_euclid(1000).rem_euclid(DAY_MS / 1000);
    format!("{:02}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
}

/// `YYYY-MM` (UTC) of a timestamp in ms.
pub fn month_of(at_ms: i64) -> String {
    day_of(at_ms)[..7].to_string()
}

/// Start and end (ms, end exclusive) of a period `YYYY-MM-DD` or `YYYY-MM`; `None` for
/// anything else, including dates that do not exist (`2023-02-29`).
pub fn period_bounds(period: &str) -> Option<(i64, i64)> {
    let num = |s: &str, len: usize| -> Option<u32> {
        (s.len() == len && s.bytes().all(|b| b.is_ascii_digit()))
            .then(|| s.parse().ok())
            .flatten()
    };
    match period.split('-').collect::<Vec<_>>().as_slice() {
        [y, m] => {
            let (y, m) = (num(y, 4)? as i64, num(m, 2)?);
            if !(1..=12).contains(&m) {
                return None;
            }
            let (ny, nm) = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
            Some((
                days_from_civil(y, m, 1) * DAY_MS,
                days_from_civil(ny, nm, 1) * DAY_MS,
            ))
        }
        [y, m, d] => {
            let (y, m, d) = (num(y, 4)? as i64, num(m, 2)?, num(d, 2)?);
            if !(1..=12).contains(&m) || !(1..=31).contains(&d) {
                return None;
            }
            let start = days_from_civil(y, m, d) * DAY_MS;
            // A day past the month's end rolls over: 2023-02-29 would be 2023-03-01.
            (day_of(start) == period).then_some((start, start + DAY_MS))
        }
        _ => None,
    }
}

/// When a period ends (ms since the epoch, UTC): a month at the first of the next one, a
/// day at the next midnight.
pub fn period_end_ms(period: &str) -> Option<i64> {
    period_bounds(period).map(|(_, end)| end)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn days_and_dates_round_trip() {
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(2026, 11, 29) * DAY_MS, 1_795_910_400_000);
        for d in -800_000..800_000i64 {
            let (y, m, dd) = civil_from_days(d);
            assert_eq!(days_from_civil(y, m, dd), d);
        }
        assert_eq!(day_of(0), "1970-01-01");
        assert_eq!(clock_of(0), "00:00:00");
        assert_eq!(
            clock_of(1_795_910_400_000 + 13 * 3_600_000 + 5 * 60_000 + 9_999),
            "13:05:09"
        );
        assert_eq!(clock_of(-1_000), "23:59:59");
        assert_eq!(day_of(951_782_400_000), "2000-02-29");
        assert_eq!(month_of(1_795_910_400_000 + 3_600_000), "2026-11");
    }

    #[test]
    fn periods_end_at_midnight_or_the_first_of_the_next_month() {
        assert_eq!(
            period_bounds("2026-11-29"),
            Some((1_795_910_400_000, 1_795_910_400_000 + DAY_MS))
        );
        assert_eq!(period_end_ms("2026-11"), Some(1_796_083_200_000));
        assert_eq!(period_end_ms("2026-12"), Some(1_798_761_600_000));
        assert_eq!(
            period_end_ms("2024-02-29"),
            Some(1_709_251_200_000),
            "leap day → 2024-03-01"
        );
        assert_eq!(period_end_ms("1970-01-01"), Some(DAY_MS));
        for bad in [
            "2023-02-29",
            "2026-02-30",
            "2026-13",
            "2026-W48",
            "soon",
            "2026-1",
            "26-11",
            "2026-11-29-1",
            "",
        ] {
            assert_eq!(period_bounds(bad), None, "{bad}");
        }
    }
}
