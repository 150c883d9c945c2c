//! Instants. The API carries them as whole seconds since the Unix epoch: that is its v1 contract,
//! and the A/B upgrade record is written in this form by one firmware and read by the other, so
//! an older slot that the gate falls back to must still read it. People and scripts reading the
//! CLI's `--json` get RFC 3339 in UTC (`2026-12-07T23:01:12Z`) instead: [`rfc3339_fields`]
//! rewrites the fields at the paths listed here, next to the types that own them, and the types
//! read either form back ([`de`], [`de_opt`]), so `isthmus --json` output parses as these types.

use serde::{Deserialize, Deserializer};
use serde_json::Value;

/// Where the instants of an [`crate::Alarm`] are: a path is dotted field names, `name[]` (or a
/// bare `[]`) goes into each element of an array.
pub const ALARM: &[&str] = &["raised", "cleared", "acknowledged.at"];
/// ... of a list of alarms.
pub const ALARMS: &[&str] = &["[].raised", "[].cleared", "[].acknowledged.at"];
/// ... of an [`crate::Event`].
pub const EVENT: &[&str] = &["time"];
/// ... of a list of [`crate::Revision`]s.
pub const REVISIONS: &[&str] = &["[].time", "[].confirm_deadline"];
/// ... of a [`crate::SystemStatus`].
pub const SYSTEM_STATUS: &[&str] = &["upgrade.time"];
/// ... of a [`crate::TunnelDetail`] and a [`crate::TunnelDiagnosis`].
pub const WITH_EVENTS: &[&str] = &["events[].time"];

/// `t` (seconds since the Unix epoch) as RFC 3339 in UTC; the number itself when it is beyond
/// what a calendar holds.
pub fn rfc3339(t: u64) -> String {
    i64::try_from(t)
        .ok()
        .and_then(|s| jiff::Timestamp::from_second(s).ok())
        .map_or_else(|| t.to_string(), |ts| ts.to_string())
}

/// An RFC 3339 time as seconds since the Unix epoch (`None` before the epoch or unparsable).
pub fn parse_rfc3339(s: &str) -> Option<u64> {
    s.parse::<jiff::Timestamp>().ok().and_then(|ts| u64::try_from(ts.as_second()).ok())
}

/// Rewrites the instants at `paths` in a serialized API object as RFC 3339 strings. Absent
/// fields and `null` stay as they are.
pub fn rfc3339_fields(v: &mut Value, paths: &[&str]) {
    for p in paths {
        rewrite(v, &p.split('.').collect::<Vec<_>>());
    }
}

fn rewrite(v: &mut Value, path: &[&str]) {
    let Some((first, rest)) = path.split_first() else {
        if let Some(n) = v.as_u64() {
            *v = Value::String(rfc3339(n));
        }
        return;
    };
    let (key, each) = match first.strip_suffix("[]") {
        Some(k) => (k, true),
        None => (*first, false),
    };
    let target = if key.is_empty() { Some(v) } else { v.get_mut(key) };
    match (target, each) {
        (Some(Value::Array(a)), true) => a.iter_mut().for_each(|x| rewrite(x, rest)),
        (Some(t), false) => rewrite(t, rest),
        _ => {}
    }
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Either {
    Secs(u64),
    Text(String),
}

impl Either {
    fn secs<E: serde::de::Error>(self) -> Result<u64, E> {
        match self {
            Either::Secs(s) => Ok(s),
            Either::Text(t) => parse_rfc3339(&t).ok_or_else(|| {
                E::custom(format!("`{t}` is neither seconds since the epoch nor an RFC 3339 time"))
            }),
        }
    }
}

/// Reads an instant as seconds since the epoch or as RFC 3339.
pub fn de<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    Either::deserialize(d)?.secs()
}

/// [`de`] for an optional instant (`null` is `None`).
pub fn de_opt<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    Option::<Either>::deserialize(d)?.map(Either::secs).transpose()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::*;

    // 2026-12-07T23:01:12Z.
    const T: u64 = 1_796_684_472;

    fn event() -> Event {
        Event {
            time: T,
            kind: EventKind::TunnelUp,
            subject: "tunnel/a".into(),
            message: "up".into(),
            severity: Severity::Info,
        }
    }

    /// Rewrites `v`'s instants at `paths`, checks each listed instant became RFC 3339 and the
    /// result reads back as the same value.
    fn round_trip<T>(v: &T, paths: &[&str], instants: usize)
    where
        T: serde::Serialize + serde::de::DeserializeOwned + PartialEq + std::fmt::Debug,
    {
        let mut j = serde_json::to_value(v).unwrap();
        rfc3339_fields(&mut j, paths);
        let text = j.to_string();
        assert_eq!(text.matches("\"2026-12-07T23:01:12Z\"").count(), instants, "{text}");
        assert!(!text.contains(&T.to_string()), "an instant was left as a number: {text}");
        assert_eq!(&serde_json::from_value::<T>(j).unwrap(), v);
    }

    #[test]
    fn every_listed_instant_becomes_rfc3339_and_reads_back() {
        assert_eq!(rfc3339(T), "2026-12-07T23:01:12Z");
        assert_eq!(parse_rfc3339("2026-12-08T00:01:12+01:00"), Some(T));
        let alarm = Alarm {
            name: "down".into(),
            subject: "tunnel/a".into(),
            severity: Severity::Major,
            message: "down".into(),
            raised: T,
            cleared: Some(T),
            clear_reason: Some("up".into()),
            acknowledged: Some(Acknowledgement { by: "ops".into(), at: T }),
        };
        round_trip(&alarm, ALARM, 3);
        round_trip(&vec![alarm.clone(), Alarm { cleared: None, ..alarm }], ALARMS, 5);
        round_trip(&event(), EVENT, 1);
        let rev = Revision {
            number: 2,
            time: T,
            author: "ops".into(),
            comment: String::new(),
            active: false,
            confirm_deadline: Some(T),
        };
        round_trip(&vec![rev.clone(), Revision { confirm_deadline: None, ..rev }], REVISIONS, 3);
        let upgrade = UpgradeRecord {
            from_slot: "a".into(),
            to_slot: "b".into(),
            from_version: "1".into(),
            to_version: "2".into(),
            sha256: String::new(),
            requested_by: "ops".into(),
            time: T,
            tunnels: vec![],
            gate_secs: 60,
            tries: 1,
            state: "trial".into(),
            detail: String::new(),
        };
        let status = SystemStatus {
            version: "2".into(),
            booted_slot: Some("b".into()),
            slots: vec![],
            upgrade: Some(upgrade),
        };
        round_trip(&status, SYSTEM_STATUS, 1);
    }

    #[test]
    fn json_instants_become_rfc3339_in_utc_and_nothing_else_changes() {
        assert_eq!(rfc3339(T), "2026-12-07T23:01:12Z");
        let mut v = serde_json::json!([
            {"name": "a", "raised": T, "cleared": null, "acknowledged": {"by": "ops", "at": T + 1}},
            {"name": "b", "raised": T, "cleared": T + 60, "age_secs": 5},
        ]);
        rfc3339_fields(&mut v, ALARMS);
        assert_eq!(
            v,
            serde_json::json!([
                {"name": "a", "raised": "2026-12-07T23:01:12Z", "cleared": null,
                 "acknowledged": {"by": "ops", "at": "2026-12-07T23:01:13Z"}},
                {"name": "b", "raised": "2026-12-07T23:01:12Z", "cleared": "2026-12-07T23:02:12Z",
                 "age_secs": 5},
            ])
        );
        let mut d = serde_json::json!({"events": [{"time": T}], "rekeys": 3});
        rfc3339_fields(&mut d, WITH_EVENTS);
        assert_eq!(
            d,
            serde_json::json!({"events": [{"time": "2026-12-07T23:01:12Z"}], "rekeys": 3})
        );
    }

    #[test]
    fn a_bad_instant_is_named() {
        let e = serde_json::from_str::<Event>(
            r#"{"time":"yesterday","kind":"tunnel-up","subject":"","message":"","severity":"info"}"#,
        )
        .unwrap_err();
        assert!(e.to_string().contains("`yesterday` is neither"), "{e}");
    }
}
