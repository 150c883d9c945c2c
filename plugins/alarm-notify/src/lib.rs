//! The default alarm plugin (hook `alarm`). For each event, in order:
//!
//! 1. **Severity.** A raised event keeps the severity its alarm rule gave it (the rule's
//!    `severity`, or its kind's default: see docs/config.md); `[severity]` in the configuration
//!    re-grades a kind on purpose (`tunnel-down = "critical"`). `tunnel-up` and every cleared
//!    event: info.
//! 2. **Flap damping.** A subject's state (problem or not; `tunnel-up` clears `tunnel-down`)
//!    that changes `flap_threshold` times (default 4) within `flap_window_ms` (300 000) is
//!    flapping: one warning is sent, with a `suppress` action, and the subject stays silent for
//!    `flap_hold_ms` (600 000).
//! 3. **Deduplication.** The same state of the same subject is notified at most once per
//!    `dedup_ms` (60 000).
//! 4. **Notification** to `channel` (default `default`); critical ones also to
//!    `critical_channel` when set. A `set-severity` action comes first when the mapped severity
//!    differs from the event's.
//!
//! State lives in the plugin instance; the host re-creates it after a fault.

wit_bindgen::generate!({
    world: "alarm-plugin",
    path: "../../wit",
});

use std::cell::RefCell;
use std::collections::{BTreeMap, VecDeque};

use exports::isthmus::policy::alarm::{
    Action, Event, EventKind, Guest, Notification, Severity, Suppression,
};
use isthmus_plugin_sdk::config::Config;

struct Settings {
    channel: String,
    critical_channel: Option<String>,
    dedup_ms: u64,
    flap_window_ms: u64,
    flap_threshold: usize,
    flap_hold_ms: u64,
    overrides: BTreeMap<String, Severity>,
}

#[derive(Default)]
struct Subject {
    problem: Option<bool>,
    changes: VecDeque<u64>,
    held_until: u64,
    last_notified: BTreeMap<bool, u64>,
}

struct State {
    settings: Settings,
    subjects: BTreeMap<(String, String), Subject>,
}

thread_local! {
    static STATE: RefCell<Option<State>> = const { RefCell::new(None) };
}

fn kind_name(k: EventKind) -> &'static str {
    match k {
        EventKind::TunnelDown => "tunnel-down",
        EventKind::TunnelUp => "tunnel-up",
        EventKind::DpdTimeout => "dpd-timeout",
        EventKind::RekeyFailed => "rekey-failed",
        EventKind::HealthCheckLoss => "health-check-loss",
        EventKind::HealthCheckLatency => "health-check-latency",
        EventKind::OneWayTraffic => "one-way-traffic",
        EventKind::PluginFault => "plugin-fault",
        EventKind::Other => "other",
    }
}

fn family(k: EventKind) -> &'static str {
    match k {
        EventKind::TunnelDown | EventKind::TunnelUp => "tunnel",
        other => kind_name(other),
    }
}

fn sev_name(s: Severity) -> &'static str {
    match s {
        Severity::Info => "info",
        Severity::Warning => "warning",
        Severity::Major => "major",
        Severity::Critical => "critical",
    }
}

fn parse_sev(s: &str) -> Option<Severity> {
    Some(match s {
        "info" => Severity::Info,
        "warning" => Severity::Warning,
        "major" => Severity::Major,
        "critical" => Severity::Critical,
        _ => return None,
    })
}

fn settings() -> Settings {
    let text = isthmus::policy::host::config();
    let cfg = match Config::parse(&text) {
        Ok(c) => c,
        Err(e) => {
            isthmus::policy::host::log(
                isthmus::policy::host::Level::Warn,
                &format!("configuration ignored: {e}"),
            );
            Config::default()
        }
    };
    let int = |k: &str, d: u64| cfg.int("", k).and_then(|v| u64::try_from(v).ok()).unwrap_or(d);
    Settings {
        channel: cfg.str("", "channel").unwrap_or("default").to_owned(),
        critical_channel: cfg.str("", "critical_channel").map(str::to_owned),
        dedup_ms: int("dedup_ms", 60_000),
        flap_window_ms: int("flap_window_ms", 300_000),
        flap_threshold: int("flap_threshold", 4).max(1) as usize,
        flap_hold_ms: int("flap_hold_ms", 600_000),
        overrides: cfg
            .section("severity")
            .filter_map(|(k, v)| match v {
                isthmus_plugin_sdk::config::Value::Str(s) => Some((k.to_owned(), parse_sev(s)?)),
                _ => None,
            })
            .collect(),
    }
}

fn handle(st: &mut State, e: &Event) -> Vec<Action> {
    let s = &st.settings;
    let problem = e.raised && e.kind != EventKind::TunnelUp;
    let sev = if !problem {
        Severity::Info
    } else {
        s.overrides.get(kind_name(e.kind)).copied().unwrap_or(e.severity)
    };
    let fam = family(e.kind);
    let sub = st.subjects.entry((fam.to_owned(), e.subject.clone())).or_default();
    if let Some(prev) = sub.problem
        && prev != problem
    {
        sub.changes.push_back(e.at_ms);
    }
    sub.problem = Some(problem);
    while sub.changes.front().is_some_and(|t| t.saturating_add(s.flap_window_ms) <= e.at_ms) {
        sub.changes.pop_front();
    }
    if e.at_ms < sub.held_until {
        return Vec::new();
    }
    if sub.changes.len() >= s.flap_threshold {
        let n = sub.changes.len();
        sub.changes.clear();
        sub.held_until = e.at_ms.saturating_add(s.flap_hold_ms);
        return vec![
            Action::Notify(Notification {
                channel: s.channel.clone(),
                severity: Severity::Warning,
                message: format!(
                    "[WARNING] {fam} {} is flapping: {n} changes within {} s; quiet for {} s",
                    e.subject,
                    s.flap_window_ms / 1000,
                    s.flap_hold_ms / 1000
                ),
            }),
            Action::Suppress(Suppression {
                kind: e.kind,
                subject: e.subject.clone(),
                for_ms: s.flap_hold_ms,
            }),
        ];
    }
    if let Some(t) = sub.last_notified.get(&problem)
        && e.at_ms.saturating_sub(*t) < s.dedup_ms
    {
        return Vec::new();
    }
    sub.last_notified.insert(problem, e.at_ms);
    let mut out = Vec::new();
    if sev != e.severity {
        out.push(Action::SetSeverity(sev));
    }
    let message = if problem {
        format!(
            "[{}] {} {}: {}",
            sev_name(sev).to_uppercase(),
            kind_name(e.kind),
            e.subject,
            e.message
        )
    } else {
        format!("[INFO] {} {} cleared: {}", kind_name(e.kind), e.subject, e.message)
    };
    out.push(Action::Notify(Notification {
        channel: s.channel.clone(),
        severity: sev,
        message: message.clone(),
    }));
    if sev == Severity::Critical
        && let Some(c) = &s.critical_channel
    {
        out.push(Action::Notify(Notification { channel: c.clone(), severity: sev, message }));
    }
    out
}

struct Plugin;

impl Guest for Plugin {
    fn on_event(event: Event) -> Vec<Action> {
        STATE.with(|cell| {
            let mut slot = cell.borrow_mut();
            let st = slot
                .get_or_insert_with(|| State { settings: settings(), subjects: BTreeMap::new() });
            handle(st, &event)
        })
    }
}

export!(Plugin);
