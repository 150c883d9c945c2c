//! Native implementations of the default plugins' documented semantics.
//!
//! They serve two purposes: the gateway uses them when no plugin is installed for a hook, and the
//! tests compare every default plugin against them on randomized inputs (identical tables,
//! identical verdicts, identical alarm actions). They are written independently of the plugins'
//! code, from the specification in their module documentation and in `docs/plugins.md`.

use std::collections::{BTreeMap, VecDeque};

use isthmus_tables::sg::{Action, ChainKind, ChainSpec, Direction, Rule};
use isthmus_tables::spd::SpdEntry;
use isthmus_tables::{PortRange, Prefix};

use crate::model::{
    AlarmAction, AlarmEvent, EventKind, Notification, Severity, SgGroup, SpdPolicy, Suppression,
};

/// `spd-selectors`: explicit priorities first (lowest first), then most specific selector first
/// (longer remote prefix, longer local prefix, named protocol, fewer remote ports, fewer local
/// ports), then configuration order.
pub fn spd_order(policies: &[SpdPolicy]) -> Vec<SpdEntry> {
    fn width(p: &PortRange) -> u32 {
        u32::from(p.last) - u32::from(p.first) + 1
    }
    let mut idx: Vec<usize> = (0..policies.len()).collect();
    idx.sort_by_key(|&i| {
        let p = &policies[i];
        let s = &p.selector;
        (
            match p.priority {
                Some(v) => (0u8, v),
                None => (1, 0),
            },
            std::cmp::Reverse(s.remote.len()),
            std::cmp::Reverse(s.local.len()),
            u8::from(s.proto.is_none()),
            width(&s.remote_ports),
            width(&s.local_ports),
            i,
        )
    });
    idx.into_iter()
        .map(|i| SpdEntry {
            id: policies[i].id.clone(),
            selector: policies[i].selector.clone(),
            action: policies[i].action.clone(),
        })
        .collect()
}

fn any_of(p: &Prefix) -> Prefix {
    let zero: std::net::IpAddr = if p.addr().is_ipv4() {
        std::net::Ipv4Addr::UNSPECIFIED.into()
    } else {
        std::net::Ipv6Addr::UNSPECIFIED.into()
    };
    // Length 0 is valid for both families.
    Prefix::new(zero, 0).unwrap_or(Prefix::host(zero))
}

fn validate(g: &SgGroup, what: &str, punt_ok: bool) -> Result<(), String> {
    if g.name.is_empty() {
        return Err(format!("a {what} has an empty name"));
    }
    for (i, r) in g.rules.iter().enumerate() {
        if g.rules[..i].iter().any(|x| x.id == r.id) {
            return Err(format!("{what} `{}`: rule `{}` appears twice", g.name, r.id));
        }
        if r.ports.first > r.ports.last {
            return Err(format!("{what} `{}` rule `{}`: port range is reversed", g.name, r.id));
        }
        if r.protocol.is_none() && !r.ports.is_any() {
            return Err(format!(
                "{what} `{}` rule `{}`: ports need a protocol (tcp, udp, icmp)",
                g.name, r.id
            ));
        }
        if r.action == Action::Punt && !punt_ok {
            return Err(format!("{what} `{}` rule `{}` cannot punt", g.name, r.id));
        }
    }
    Ok(())
}

fn translate(r: &crate::model::SgRule, id: String) -> Rule {
    let (src, dst) = match r.direction {
        Direction::Inbound => (r.peer, any_of(&r.peer)),
        Direction::Outbound => (any_of(&r.peer), r.peer),
    };
    Rule {
        src,
        dst,
        proto: r.protocol,
        src_ports: PortRange::ANY,
        dst_ports: r.ports,
        action: r.action,
        id,
    }
}

/// `security-group`: cloud semantics (see the plugin's documentation). `punt` says whether punt
/// rules are accepted (only by plugins with a punt path).
pub fn sg_compile(
    groups: &[SgGroup],
    acls: &[SgGroup],
    punt: bool,
) -> Result<Vec<ChainSpec>, String> {
    for g in groups {
        validate(g, "security group", punt)?;
    }
    for a in acls {
        validate(a, "network ACL", false)?;
    }
    let mut out = Vec::new();
    let mut atts: Vec<&str> =
        groups.iter().flat_map(|g| g.attach.iter().map(String::as_str)).collect();
    atts.sort_unstable();
    atts.dedup();
    for att in atts {
        let mut members: Vec<&SgGroup> =
            groups.iter().filter(|g| g.attach.iter().any(|a| a == att)).collect();
        members.sort_by(|a, b| a.name.cmp(&b.name));
        members.dedup_by(|a, b| a.name == b.name);
        for dir in [Direction::Inbound, Direction::Outbound] {
            let mut rules: Vec<(u32, &str, usize, Rule)> = Vec::new();
            for g in &members {
                for (i, r) in g.rules.iter().enumerate() {
                    if r.direction == dir {
                        rules.push((
                            r.priority,
                            &g.name,
                            i,
                            translate(r, format!("sg:{}/{}", g.name, r.id)),
                        ));
                    }
                }
            }
            rules.sort_by(|a, b| (a.0, a.1, a.2).cmp(&(b.0, b.1, b.2)));
            let (default_action, default_rule) = if dir == Direction::Inbound {
                (Action::Deny, "sg:default-deny-inbound")
            } else {
                (Action::Allow, "sg:default-allow-outbound")
            };
            out.push(ChainSpec {
                attachment: att.to_owned(),
                kind: ChainKind::SecurityGroup,
                direction: dir,
                rules: rules.into_iter().map(|x| x.3).collect(),
                default_action,
                default_rule: default_rule.to_owned(),
            });
        }
    }
    let mut acl_of: BTreeMap<&str, &SgGroup> = BTreeMap::new();
    for a in acls {
        for att in &a.attach {
            match acl_of.get(att.as_str()) {
                Some(prev) if prev.name != a.name => {
                    return Err(format!(
                        "attachment `{att}` has two network ACLs (`{}`, `{}`); it may have one",
                        prev.name, a.name
                    ));
                }
                _ => {
                    acl_of.insert(att, a);
                }
            }
        }
    }
    for (att, a) in acl_of {
        for dir in [Direction::Inbound, Direction::Outbound] {
            let mut rules: Vec<(u32, usize, Rule)> = a
                .rules
                .iter()
                .enumerate()
                .filter(|(_, r)| r.direction == dir)
                .map(|(i, r)| (r.priority, i, translate(r, format!("acl:{}/{}", a.name, r.id))))
                .collect();
            rules.sort_by_key(|x| (x.0, x.1));
            out.push(ChainSpec {
                attachment: att.to_owned(),
                kind: ChainKind::NetworkAcl,
                direction: dir,
                rules: rules.into_iter().map(|x| x.2).collect(),
                default_action: Action::Deny,
                default_rule: format!("acl:{}/default-deny", a.name),
            });
        }
    }
    out.sort_by(|a, b| {
        (&a.attachment, a.kind, a.direction).cmp(&(&b.attachment, b.kind, b.direction))
    });
    Ok(out)
}

/// `alarm-notify`'s settings, from its configuration text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AlarmSettings {
    /// Where notifications go.
    pub channel: String,
    /// Where critical notifications also go.
    pub critical_channel: Option<String>,
    /// Same state of the same subject at most once per this.
    pub dedup_ms: u64,
    /// Flap window.
    pub flap_window_ms: u64,
    /// State changes within the window that make a subject flapping.
    pub flap_threshold: usize,
    /// How long a flapping subject stays quiet.
    pub flap_hold_ms: u64,
    /// Severity per kind name.
    pub overrides: BTreeMap<String, Severity>,
}

impl AlarmSettings {
    /// Reads the keys `alarm-notify` knows from its TOML configuration (unknown keys and bad
    /// values fall back to defaults, as the plugin does).
    pub fn parse(text: &str) -> AlarmSettings {
        let mut s = AlarmSettings {
            channel: "default".into(),
            critical_channel: None,
            dedup_ms: 60_000,
            flap_window_ms: 300_000,
            flap_threshold: 4,
            flap_hold_ms: 600_000,
            overrides: BTreeMap::new(),
        };
        let mut section = String::new();
        for line in text.lines() {
            let line = line.split('#').next().unwrap_or("").trim();
            if let Some(h) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
                section = h.trim().to_owned();
                continue;
            }
            let Some((k, v)) = line.split_once('=') else { continue };
            let (k, v) = (k.trim(), v.trim());
            let text = v.strip_prefix('"').and_then(|v| v.strip_suffix('"'));
            let num = v.replace('_', "").parse::<u64>().ok();
            match (section.as_str(), k) {
                ("", "channel") => s.channel = text.unwrap_or("default").to_owned(),
                ("", "critical_channel") => s.critical_channel = text.map(str::to_owned),
                ("", "dedup_ms") => s.dedup_ms = num.unwrap_or(s.dedup_ms),
                ("", "flap_window_ms") => s.flap_window_ms = num.unwrap_or(s.flap_window_ms),
                ("", "flap_threshold") => s.flap_threshold = num.map_or(4, |n| n.max(1) as usize),
                ("", "flap_hold_ms") => s.flap_hold_ms = num.unwrap_or(s.flap_hold_ms),
                ("severity", kind) => {
                    let sev = match text {
                        Some("info") => Severity::Info,
                        Some("warning") => Severity::Warning,
                        Some("major") => Severity::Major,
                        Some("critical") => Severity::Critical,
                        _ => continue,
                    };
                    s.overrides.insert(kind.to_owned(), sev);
                }
                _ => {}
            }
        }
        s
    }
}

#[derive(Default)]
struct Track {
    state: Option<bool>,
    flips: VecDeque<u64>,
    quiet_until: u64,
    sent: [Option<u64>; 2],
}

/// `alarm-notify`: severity overrides, flap damping, deduplication (see the plugin).
pub struct AlarmNotify {
    s: AlarmSettings,
    tracks: BTreeMap<(&'static str, String), Track>,
}

impl AlarmNotify {
    /// A fresh instance with `config`.
    pub fn new(config: &str) -> AlarmNotify {
        AlarmNotify { s: AlarmSettings::parse(config), tracks: BTreeMap::new() }
    }

    /// Handles one event.
    pub fn on_event(&mut self, e: &AlarmEvent) -> Vec<AlarmAction> {
        let s = &self.s;
        let problem = e.raised && e.kind != EventKind::TunnelUp;
        // The alarm rule graded the event (its `severity`, or its kind's default); only a
        // `[severity]` entry re-grades it, on purpose.
        let severity = if !problem {
            Severity::Info
        } else {
            s.overrides.get(e.kind.name()).copied().unwrap_or(e.severity)
        };
        let family = match e.kind {
            EventKind::TunnelDown | EventKind::TunnelUp => "tunnel",
            k => k.name(),
        };
        let t = self.tracks.entry((family, e.subject.clone())).or_default();
        if t.state.is_some_and(|p| p != problem) {
            t.flips.push_back(e.at_ms);
        }
        t.state = Some(problem);
        t.flips.retain(|&f| f.saturating_add(s.flap_window_ms) > e.at_ms);
        if e.at_ms < t.quiet_until {
            return vec![];
        }
        if t.flips.len() >= s.flap_threshold {
            let n = t.flips.len();
            t.flips.clear();
            t.quiet_until = e.at_ms.saturating_add(s.flap_hold_ms);
            return vec![
                AlarmAction::Notify(Notification {
                    channel: s.channel.clone(),
                    severity: Severity::Warning,
                    message: format!(
                        "[WARNING] {family} {} is flapping: {n} changes within {} s; quiet for {} s",
                        e.subject,
                        s.flap_window_ms / 1000,
                        s.flap_hold_ms / 1000
                    ),
                }),
                AlarmAction::Suppress(Suppression {
                    kind: e.kind,
                    subject: e.subject.clone(),
                    for_ms: s.flap_hold_ms,
                }),
            ];
        }
        let slot = usize::from(problem);
        if let Some(at) = t.sent[slot]
            && e.at_ms.saturating_sub(at) < s.dedup_ms
        {
            return vec![];
        }
        t.sent[slot] = Some(e.at_ms);
        let mut out = Vec::new();
        if severity != e.severity {
            out.push(AlarmAction::SetSeverity(severity));
        }
        let label = match severity {
            Severity::Info => "INFO",
            Severity::Warning => "WARNING",
            Severity::Major => "MAJOR",
            Severity::Critical => "CRITICAL",
        };
        let message = if problem {
            format!("[{label}] {} {}: {}", e.kind.name(), e.subject, e.message)
        } else {
            format!("[INFO] {} {} cleared: {}", e.kind.name(), e.subject, e.message)
        };
        out.push(AlarmAction::Notify(Notification {
            channel: s.channel.clone(),
            severity,
            message: message.clone(),
        }));
        if severity == Severity::Critical
            && let Some(c) = &s.critical_channel
        {
            out.push(AlarmAction::Notify(Notification { channel: c.clone(), severity, message }));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alarm_dedup_and_flap_damping() {
        let mut a = AlarmNotify::new("flap_threshold = 3\ndedup_ms = 1000\n");
        let ev = |raised, at_ms| AlarmEvent {
            kind: EventKind::TunnelDown,
            subject: "dc1".into(),
            raised,
            severity: Severity::Warning,
            message: "peer gone".into(),
            at_ms,
        };
        let first = a.on_event(&ev(true, 0));
        assert!(
            matches!(&first[..], [AlarmAction::Notify(n)] if n.message == "[WARNING] tunnel-down dc1: peer gone"),
            "the rule's severity stands: {first:?}"
        );
        assert!(a.on_event(&ev(true, 500)).is_empty(), "duplicate within dedup_ms");
        assert_eq!(a.on_event(&ev(false, 600)).len(), 2, "the clear is notified");
        a.on_event(&ev(true, 2000));
        let flap = a.on_event(&ev(false, 2100));
        assert!(matches!(&flap[1], AlarmAction::Suppress(s) if s.for_ms == 600_000), "{flap:?}");
        assert!(a.on_event(&ev(true, 3000)).is_empty(), "quiet while held");
    }
}
