//! The Prometheus exposition (`GET /metrics`, text format 0.0.4), following the Prometheus
//! naming conventions (<https://prometheus.io/docs/practices/naming/>): every family has HELP
//! and TYPE, counters end in `_total`, units are base units (`_seconds`, `_bytes`), times are
//! Unix timestamps (`_timestamp_seconds`), and every series whose label values are known in
//! advance (drop reasons, failure reasons, tunnel states, severities, configured tunnels and
//! webhook targets) is there at zero from the start, so that `rate()` and alerts see the first
//! increment.
//!
//! Metrics are computed from a snapshot ([`Readings`]) at scrape time, as a Prometheus
//! "collector" does; the small `Expo` writer below owns the format (escaping, HELP/TYPE),
//! and a test parses its output with the `prometheus-parse` crate.

use std::fmt::{Display, Write};
use std::time::{SystemTime, UNIX_EPOCH};

use isthmus_api as api;
use isthmus_config::Config;
use isthmus_dataplane::{Drop, Io};
use isthmus_esp::DropReason;
use isthmus_tunnels::TunnelState;

use crate::obs::Readings;
use crate::obs::alarms::Alarms;
use crate::obs::health::Health;
use crate::obs::monitor::{IkeFailure, Monitor};

/// The commit the daemon was built from (see `build.rs`).
pub const GIT_COMMIT: &str = env!("ISTHMUS_GIT");

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Counter,
    Gauge,
}

/// Text exposition writer: one family at a time, HELP and TYPE first.
struct Expo(String);

impl Expo {
    fn family(&mut self, name: &'static str, kind: Kind, help: &str) -> Family<'_> {
        debug_assert_eq!(kind == Kind::Counter, name.ends_with("_total"), "{name}");
        let t = if kind == Kind::Counter { "counter" } else { "gauge" };
        let help = help.replace('\\', "\\\\").replace('\n', "\\n");
        let _ = writeln!(self.0, "# HELP {name} {help}\n# TYPE {name} {t}");
        Family { o: &mut self.0, name }
    }
}

struct Family<'a> {
    o: &'a mut String,
    name: &'static str,
}

impl Family<'_> {
    fn sample(&mut self, labels: &[(&str, &str)], v: impl Display) {
        let _ = write!(self.o, "{}", self.name);
        if !labels.is_empty() {
            self.o.push('{');
            for (i, (k, val)) in labels.iter().enumerate() {
                if i > 0 {
                    self.o.push(',');
                }
                let _ = write!(self.o, "{k}=\"{}\"", esc(val));
            }
            self.o.push('}');
        }
        let _ = writeln!(self.o, " {v}");
    }
}

/// A label value as the text format wants it: backslash, double quote and line feed escaped.
fn esc(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

fn unix_secs(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

/// The exposition: build and process facts, configuration, tunnels, dataplane, health checks,
/// alarms and their delivery.
pub fn metrics(r: &Readings, monitor: &Monitor, health: &Health, alarms: &Alarms) -> String {
    let mut o = Expo(String::new());
    o.family("isthmus_build_info", Kind::Gauge, "Always 1: the daemon's version and git commit.")
        .sample(&[("version", env!("CARGO_PKG_VERSION")), ("git", GIT_COMMIT)], 1);
    process(&mut o);
    let applied = r.applied.as_ref();
    o.family(
        "isthmus_config_revision",
        Kind::Gauge,
        "The applied configuration revision (0: none applied).",
    )
    .sample(&[], applied.map_or(0, |(rev, _)| *rev));
    o.family(
        "isthmus_apply_failures_total",
        Kind::Counter,
        "Configuration revisions that could not be applied (at start or on commit).",
    )
    .sample(&[], monitor.stats.apply_failures());
    if let Some((_, cfg)) = applied {
        tunnels(&mut o, r, monitor, cfg);
        health_metrics(&mut o, health, cfg);
    }
    dataplane(&mut o, r);
    let mut f = o.family(
        "isthmus_alarms_active",
        Kind::Gauge,
        "Alarms raised and not cleared, by severity.",
    );
    for (s, n) in alarms.active_by_severity() {
        f.sample(&[("severity", s.as_str())], n);
    }
    let mut f = o.family(
        "isthmus_webhook_deliveries_total",
        Kind::Counter,
        "Alarm notifications per webhook target: delivered, or failed after every retry.",
    );
    for (t, (ok, failed)) in alarms.delivery_stats().read(alarms.targets()) {
        f.sample(&[("target", t.as_str()), ("result", "delivered")], ok);
        f.sample(&[("target", t.as_str()), ("result", "failed")], failed);
    }
    o.family(
        "isthmus_webhook_dropped_total",
        Kind::Counter,
        "Alarm notifications dropped because the delivery queue was full.",
    )
    .sample(&[], alarms.dropped());
    o.0
}

/// The standard process metrics (as the official client libraries name them), read from
/// /proc with the `procfs` crate: it parses /proc/self/stat correctly around a command name
/// that may hold spaces and parentheses, and knows the clock tick and page size. A reading
/// that fails leaves its series out rather than reporting a false zero.
fn process(o: &mut Expo) {
    let Ok(me) = procfs::process::Process::myself() else { return };
    let tick = procfs::ticks_per_second() as f64;
    if let Ok(st) = me.stat() {
        o.family(
            "process_cpu_seconds_total",
            Kind::Counter,
            "Total user and system CPU time spent in seconds.",
        )
        .sample(&[], (st.utime + st.stime) as f64 / tick);
        o.family("process_resident_memory_bytes", Kind::Gauge, "Resident memory size in bytes.")
            .sample(&[], st.rss * procfs::page_size());
        if let Ok(boot) = procfs::boot_time_secs() {
            o.family(
                "process_start_time_seconds",
                Kind::Gauge,
                "Start time of the process since unix epoch in seconds.",
            )
            .sample(&[], boot as f64 + st.starttime as f64 / tick);
        }
    }
    if let Ok(n) = me.fd_count() {
        o.family("process_open_fds", Kind::Gauge, "Number of open file descriptors.")
            .sample(&[], n);
    }
    if let Ok(procfs::process::LimitValue::Value(n)) =
        me.limits().map(|l| l.max_open_files.soft_limit)
    {
        o.family("process_max_fds", Kind::Gauge, "Maximum number of open file descriptors.")
            .sample(&[], n);
    }
}

/// Per configured tunnel: state, traffic, drops, negotiation failures, rekeys, SA ages.
fn tunnels(o: &mut Expo, r: &Readings, monitor: &Monitor, cfg: &Config) {
    let sums: Vec<api::TunnelSummary> =
        cfg.tunnels.iter().map(|t| monitor.summary(r, cfg, &t.name)).collect();
    let mut f = o.family(
        "isthmus_tunnel_up",
        Kind::Gauge,
        "1 when the tunnel has an IKE SA and a CHILD SA.",
    );
    for s in &sums {
        f.sample(&[("tunnel", s.name.as_str())], u8::from(s.state == api::TunnelState::Up));
    }
    let mut f = o.family(
        "isthmus_tunnel_state",
        Kind::Gauge,
        "1 for the tunnel's current state, 0 for the others: up, degraded (IKE SA without CHILD SA), connecting, idle (on demand, no traffic), down, disabled.",
    );
    for s in &sums {
        for st in api::TunnelState::ALL {
            f.sample(
                &[("tunnel", s.name.as_str()), ("state", st.as_str())],
                u8::from(s.state == st),
            );
        }
    }
    let mut f = o.family(
        "isthmus_tunnel_last_change_timestamp_seconds",
        Kind::Gauge,
        "When the tunnel entered its current state (Unix time; the daemon's start for the state it found).",
    );
    for s in &sums {
        if let Some(t) = monitor.state_since(&s.name) {
            f.sample(&[("tunnel", s.name.as_str())], unix_secs(t));
        }
    }
    for (metric, help, bytes) in [
        ("isthmus_tunnel_packets_total", "Inner packets through the tunnel, across rekeys.", false),
        ("isthmus_tunnel_bytes_total", "Inner bytes through the tunnel, across rekeys.", true),
    ] {
        let mut f = o.family(metric, Kind::Counter, help);
        for s in &sums {
            let c = &s.counters;
            let (out, inn) =
                if bytes { (c.bytes_out, c.bytes_in) } else { (c.packets_out, c.packets_in) };
            f.sample(&[("tunnel", s.name.as_str()), ("direction", "out")], out);
            f.sample(&[("tunnel", s.name.as_str()), ("direction", "in")], inn);
        }
    }
    let mut f = o.family(
        "isthmus_tunnel_drops_total",
        Kind::Counter,
        "Packets of the tunnel's SAs dropped, by reason (spelled as in isthmus_drops_total), across rekeys.",
    );
    for s in &sums {
        let drops = monitor.totals(&s.name).drops;
        for reason in DropReason::ALL.map(|d| Drop::from(d).as_str()) {
            let n = drops.get(reason).copied().unwrap_or(0);
            f.sample(&[("tunnel", s.name.as_str()), ("reason", reason)], n);
        }
    }
    let mut f = o.family(
        "isthmus_ike_failures_total",
        Kind::Counter,
        "IKE negotiations of the tunnel that failed, by reason: timeout, peer-refused, we-refused, bad-response.",
    );
    for s in &sums {
        for why in IkeFailure::ALL {
            f.sample(
                &[("tunnel", s.name.as_str()), ("reason", why.as_str())],
                monitor.stats.ike_failures(&s.name, why),
            );
        }
    }
    let mut f = o.family(
        "isthmus_tunnel_rekeys_total",
        Kind::Counter,
        "IKE and CHILD SA rekeys of the tunnel, whichever side started them (since its driver started).",
    );
    for s in &sums {
        f.sample(&[("tunnel", s.name.as_str())], r.tunnel(&s.name).map_or(0, |st| st.rekeys));
    }
    let now = SystemTime::now();
    let age = |t: SystemTime| now.duration_since(t).map(|d| d.as_secs_f64()).unwrap_or(0.0);
    let up: Vec<_> = sums
        .iter()
        .filter_map(|s| r.tunnel(&s.name))
        .filter(|st| st.state == TunnelState::Up)
        .collect();
    let mut f = o.family(
        "isthmus_ike_sa_age_seconds",
        Kind::Gauge,
        "Age of the tunnel's IKE SA in force (absent without one).",
    );
    for st in &up {
        if let Some(t) = st.ike_since {
            f.sample(&[("tunnel", st.name.as_str())], age(t));
        }
    }
    let mut f = o.family(
        "isthmus_child_sa_age_seconds",
        Kind::Gauge,
        "Age of the newest CHILD SA of each name (absent without one).",
    );
    for st in &up {
        let mut newest: std::collections::BTreeMap<&str, SystemTime> = Default::default();
        for c in &st.children {
            let e = newest.entry(c.name.as_str()).or_insert(c.since);
            *e = (*e).max(c.since);
        }
        for (child, since) in newest {
            f.sample(&[("tunnel", st.name.as_str()), ("child", child)], age(since));
        }
    }
}

/// The dataplane's drops and IO, at zero without a dataplane (no tunnels run).
fn dataplane(o: &mut Expo, r: &Readings) {
    let c = r.counters();
    let mut f = o.family(
        "isthmus_drops_total",
        Kind::Counter,
        "Every dataplane drop, by stage of the packet path and reason.",
    );
    for d in Drop::ALL {
        let n = c.map_or(0, |c| c.drops[d]);
        f.sample(&[("stage", d.stage()), ("reason", d.as_str())], n);
    }
    let mut f = o.family(
        "isthmus_rule_drops_total",
        Kind::Counter,
        "Security-group and network-ACL drops by deciding rule.",
    );
    for rd in c.map(|c| c.rule_drops.as_slice()).unwrap_or_default() {
        f.sample(
            &[
                ("attachment", rd.attachment.as_str()),
                ("stage", Drop::of_chain(rd.kind, rd.direction).as_str()),
                ("rule", rd.rule.as_str()),
            ],
            rd.packets,
        );
    }
    let mut f = o.family(
        "isthmus_dataplane_packets_total",
        Kind::Counter,
        "Dataplane IO by path (drops are in isthmus_drops_total).",
    );
    for k in Io::ALL {
        f.sample(&[("path", k.as_str())], c.map_or(0, |c| c.io[k]));
    }
}

/// Health-check gauges per tunnel that has a check: loss ratio, mean round trip and jitter over
/// the window (absent until an answer came), and 1/0 for healthy/unhealthy.
fn health_metrics(o: &mut Expo, health: &Health, cfg: &Config) {
    let reports: Vec<(&str, api::Health)> = cfg
        .tunnels
        .iter()
        .filter_map(|t| health.report(&t.name).map(|h| (t.name.as_str(), h)))
        .collect();
    if reports.is_empty() {
        return;
    }
    type Get = fn(&api::Health) -> Option<f64>;
    let gauges: [(&'static str, &str, Get); 4] = [
        (
            "isthmus_tunnel_health_loss_ratio",
            "Health-check probes lost over the window, 0 to 1.",
            |h| (h.sent > 0).then_some(h.loss_ratio),
        ),
        (
            "isthmus_tunnel_health_latency_seconds",
            "Mean health-check round trip over the window.",
            |h| h.latency_avg_ms.map(|v| v / 1e3),
        ),
        (
            "isthmus_tunnel_health_jitter_seconds",
            "Mean difference between consecutive health-check round trips (RFC 3550 6.4.1).",
            |h| h.jitter_ms.map(|v| v / 1e3),
        ),
        ("isthmus_tunnel_healthy", "1 when the health check passes, 0 when it fails.", |h| match h
            .state
        {
            api::HealthState::Healthy => Some(1.0),
            api::HealthState::Unhealthy => Some(0.0),
            api::HealthState::Unknown => None,
        }),
    ];
    for (metric, help, get) in gauges {
        let mut f = o.family(metric, Kind::Gauge, help);
        for (n, h) in &reports {
            if let Some(v) = get(h) {
                f.sample(&[("tunnel", *n)], v);
            }
        }
    }
}
