//! Example plugin: what the default tables cannot express. Security-group rules whose action is
//! `punt` are decided per new flow, through the punt path, by the appliance's local time: a flow
//! is allowed during opening hours on opening days, denied otherwise. The verdict is cached in
//! the flow table, so the plugin runs once per flow, never per packet.
//!
//! Everything else compiles with the default cloud semantics ([`isthmus_plugin_sdk::sg`]).
//!
//! Needs the `clock` capability in its manifest. Configuration (defaults shown):
//!
//! ```toml
//! open = "08:00"     # local time, inclusive
//! close = "18:00"    # local time, exclusive
//! days = "mon-fri"   # "all", a range "mon-fri", or a list "mon,wed,fri"
//! ```

wit_bindgen::generate!({
    world: "security-group-punt-plugin",
    path: "../../wit",
});

isthmus_plugin_sdk::sg_conversions!();

use exports::isthmus::policy::punt::{Decision, Guest as Punt, PuntedFlow};
use exports::isthmus::policy::security_group::{Acl, Chain, Group, Guest};
use isthmus::policy::clock;
use isthmus_plugin_sdk::config::Config;

const DAYS: [&str; 7] = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"];

struct Hours {
    open: u32,
    close: u32,
    days: [bool; 7],
}

fn minutes(s: &str) -> Result<u32, String> {
    let (h, m) = s.split_once(':').ok_or_else(|| format!("`{s}` is not HH:MM"))?;
    let h: u32 = h.parse().map_err(|_| format!("`{s}` is not HH:MM"))?;
    let m: u32 = m.parse().map_err(|_| format!("`{s}` is not HH:MM"))?;
    if h > 24 || m > 59 || h * 60 + m > 24 * 60 {
        return Err(format!("`{s}` is not a time of day"));
    }
    Ok(h * 60 + m)
}

fn day(s: &str) -> Result<usize, String> {
    DAYS.iter().position(|d| *d == s.trim()).ok_or_else(|| format!("`{s}` is not a day (sun..sat)"))
}

fn hours() -> Result<Hours, String> {
    let cfg = Config::parse(&isthmus::policy::host::config())?;
    let open = minutes(cfg.str("", "open").unwrap_or("08:00"))?;
    let close = minutes(cfg.str("", "close").unwrap_or("18:00"))?;
    let spec = cfg.str("", "days").unwrap_or("mon-fri");
    let mut days = [false; 7];
    if spec == "all" {
        days = [true; 7];
    } else if let Some((a, b)) = spec.split_once('-') {
        let (a, b) = (day(a)?, day(b)?);
        let mut d = a;
        loop {
            days[d] = true;
            if d == b {
                break;
            }
            d = (d + 1) % 7;
        }
    } else {
        for d in spec.split(',') {
            days[day(d)?] = true;
        }
    }
    Ok(Hours { open, close, days })
}

struct Plugin;

impl Guest for Plugin {
    fn compile(groups: Vec<Group>, acls: Vec<Acl>) -> Result<Vec<Chain>, String> {
        // Refuse a bad configuration at compile time, not at the first punted flow.
        hours()?;
        let chains =
            isthmus_plugin_sdk::sg::compile(&sgconv::groups_in(groups), &sgconv::acls_in(acls))?;
        Ok(sgconv::chains_out(chains))
    }
}

impl Punt for Plugin {
    fn decide(flows: Vec<PuntedFlow>) -> Vec<Decision> {
        let Ok(h) = hours() else {
            // Validated at compile time; deny if the configuration vanished since.
            return flows
                .iter()
                .map(|_| Decision { allow: false, rule: "time-of-day:bad-config".into() })
                .collect();
        };
        let local = clock::now_unix() as i64 + i64::from(clock::utc_offset_minutes()) * 60;
        let days = local.div_euclid(86_400);
        let minute = (local.rem_euclid(86_400) / 60) as u32;
        // 1970-01-01 was a Thursday.
        let weekday = (days + 4).rem_euclid(7) as usize;
        let open = h.days[weekday] && h.open <= minute && minute < h.close;
        let rule = if open { "time-of-day:open" } else { "time-of-day:closed" };
        flows.iter().map(|_| Decision { allow: open, rule: rule.into() }).collect()
    }
}

export!(Plugin);
