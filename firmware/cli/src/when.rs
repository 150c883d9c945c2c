//! Times for people and for scripts. The API carries instants as whole seconds since the Unix
//! epoch (its v1 contract). Tables print them relative to now within a day (`42s ago`,
//! `3m ago`, `5h07m ago`, `in 2m`) and as local date and time beyond (`2026-12-01 14:03:27`);
//! the event stream always prints local time, since its lines stay on screen while time moves
//! on; `--json` output gives them in RFC 3339 (`isthmus_api::instant`). Local means the
//! time zone of the machine running the CLI (`TZ` is honoured).

use jiff::Timestamp;
use jiff::tz::TimeZone;

/// Beyond this distance from now a time is printed as a date, not as `... ago`.
const RELATIVE_SECS: i64 = 86_400;

/// Seconds since the Unix epoch, now.
pub fn now() -> i64 {
    Timestamp::now().as_second()
}

/// `t` for a table: relative to `now` within a day, else local date and time.
pub fn human(t: u64, now: i64) -> String {
    human_in(t, now, &TimeZone::system())
}

fn human_in(t: u64, now: i64, tz: &TimeZone) -> String {
    let d = now.saturating_sub(secs(t));
    if d == 0 {
        "just now".into()
    } else if d.abs() >= RELATIVE_SECS {
        local_in(t, tz)
    } else if d > 0 {
        format!("{} ago", span(d))
    } else {
        format!("in {}", span(-d))
    }
}

/// `42s`, `3m`, `5h07m`: as precise as a glance needs.
fn span(s: i64) -> String {
    if s < 60 {
        format!("{s}s")
    } else if s < 3600 {
        format!("{}m", s / 60)
    } else {
        format!("{}h{:02}m", s / 3600, s % 3600 / 60)
    }
}

/// `t` as local date and time, e.g. `2026-12-07 23:01:12`.
pub fn local(t: u64) -> String {
    local_in(t, &TimeZone::system())
}

fn local_in(t: u64, tz: &TimeZone) -> String {
    match Timestamp::from_second(secs(t)) {
        Ok(ts) => ts.to_zoned_datetime(tz.clone()).strftime("%Y-%m-%d %H:%M:%S").to_string(),
        Err(_) => t.to_string(),
    }
}

fn secs(t: u64) -> i64 {
    i64::try_from(t).unwrap_or(i64::MAX)
}

/// `--since`: a span back from now in the configuration's duration grammar (`10m`, `2h`,
/// `1d`, `1h30m`) or an RFC 3339 time (`2026-12-07T23:00:00Z`, `2026-12-08T00:00:00+01:00`);
/// seconds since the Unix epoch.
pub fn parse_since(s: &str) -> Result<u64, String> {
    if let Ok(d) = s.parse::<isthmus_config::Dur>() {
        return Ok(u64::try_from(now()).unwrap_or(0).saturating_sub(d.as_duration().as_secs()));
    }
    match isthmus_api::instant::parse_rfc3339(s) {
        Some(t) => Ok(t),
        None => Err(format!(
            "`{s}` is neither a duration back from now (10m, 2h, 1d) nor an RFC 3339 time \
             (2026-12-07T23:00:00Z)"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // 2026-12-07T23:01:12Z.
    const T: u64 = 1_796_684_472;

    #[test]
    fn tables_say_how_long_ago_within_a_day_and_the_local_date_beyond() {
        let now = T as i64;
        let berlin = TimeZone::get("Europe/Berlin").unwrap_or(TimeZone::fixed(jiff::tz::offset(1)));
        let h = |t: u64| human_in(t, now, &TimeZone::UTC);
        assert_eq!(h(T), "just now");
        assert_eq!(h(T - 42), "42s ago");
        assert_eq!(h(T - 3 * 60 - 59), "3m ago");
        assert_eq!(h(T - 5 * 3600 - 7 * 60), "5h07m ago");
        assert_eq!(h(T + 120), "in 2m");
        assert_eq!(h(T + 89 * 60 + 30), "in 1h29m");
        assert_eq!(h(T - 86_400), "2026-12-06 23:01:12");
        assert_eq!(human_in(T - 86_400, now, &berlin), "2026-12-07 00:01:12");
        assert_eq!(h(T + 2 * 86_400), "2026-12-09 23:01:12");
        assert_eq!(local_in(T, &berlin), "2026-12-08 00:01:12");
    }

    #[test]
    fn since_takes_a_span_back_from_now_or_an_rfc3339_time() {
        let n = now() as u64;
        let ago = |s: &str| n - parse_since(s).unwrap();
        assert!((600..=601).contains(&ago("10m")), "{}", ago("10m"));
        assert!((7200..=7201).contains(&ago("2h")));
        assert!((5400..=5401).contains(&ago("1h30m")));
        assert_eq!(parse_since("2026-12-07T23:01:12Z"), Ok(T));
        assert_eq!(parse_since("2026-12-08T00:01:12+01:00"), Ok(T));
        let e = parse_since("yesterday").unwrap_err();
        assert!(e.contains("`yesterday` is neither a duration"), "{e}");
    }
}
