//! Why does traffic not pass? A packet-path tracer and a negotiation explainer.
//!
//! [`diagnose_path`] follows one packet through the gateway the way the planes handle it —
//! ingress LAN, network ACL, route lookup, SPD (RFC 4301 §4.4.1, first match), CHILD SA, security
//! group, tunnel MTU, egress — and then its reply back, giving each stage a verdict and the entry
//! that decided it, and ends with advice an operator can act on. [`diagnose_tunnel`] explains the
//! last failed negotiations of a tunnel (RFC 7296 §2.9 TS_UNACCEPTABLE, NO_PROPOSAL_CHOSEN, ...)
//! from the driver's status and the event log.
//!
//! Sources of truth, stage by stage:
//! - routes: the same rules `plan::desired_state` gives the kernel (every tunnel's remote
//!   prefixes to the TUN device, LAN networks, route tables bound to LANs looked up first);
//! - SPD: the dataplane does not expose the table it runs, so the tracer builds it the way the
//!   driver does before publishing it (`isthmus_tunnels::esp::selectors` over each CHILD SA's
//!   traffic selectors, tunnels in name order) and looks it up with the table's own
//!   [`SpdTable::lookup`];
//! - CHILD SAs: the driver's live status, with the monitor's last-packet readings;
//! - network ACLs and security groups: the configuration's rules in priority order.

use std::collections::BTreeMap;
use std::net::IpAddr;

use isthmus_api::{self as api, PathStage, StageVerdict};
use isthmus_config::{Action, Config, Direction, Mode, NextHop, Rule};
use isthmus_ike::TrafficSelector;
use isthmus_tables::spd::{SpdAction, SpdEntry, SpdTable};
use isthmus_tables::{FlowKey, PortRange, Prefix};

use crate::core::Core;
use crate::plan;

/// Why a diagnosis cannot be made.
#[derive(Debug, thiserror::Error)]
pub enum DiagnoseError {
    /// Nothing is applied yet.
    #[error("no configuration is applied yet")]
    NoConfig,
    /// The tunnel named is not configured.
    #[error("no tunnel named `{0}` is configured")]
    UnknownTunnel(String),
    /// A query parameter does not parse.
    #[error("{0}")]
    BadQuery(String),
}

/// The packet to trace.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Query {
    /// Its 5-tuple (for ICMP the ports carry type and code).
    pub flow: FlowKey,
    /// Its size in bytes (IP header included).
    pub size: u32,
}

impl Query {
    /// Parses the API's query parameters. `proto` is a name (`tcp`, `udp`, `icmp`, ...) or a
    /// number, default `icmp` (an echo request) without ports, else `tcp`.
    pub fn parse(
        src: &str,
        dst: &str,
        proto: Option<&str>,
        sport: Option<u16>,
        dport: Option<u16>,
        size: Option<u32>,
    ) -> Result<Query, DiagnoseError> {
        let ip = |what: &str, s: &str| {
            s.trim()
                .parse::<IpAddr>()
                .map_err(|_| DiagnoseError::BadQuery(format!("{what} `{s}` is not an IP address")))
        };
        let (src, dst) = (ip("src", src)?, ip("dst", dst)?);
        if src.is_ipv4() != dst.is_ipv4() {
            return Err(DiagnoseError::BadQuery(format!(
                "src {src} and dst {dst} are of different address families"
            )));
        }
        let proto = match proto.map(str::trim) {
            None | Some("") => {
                if dport.is_some() {
                    6
                } else if src.is_ipv4() {
                    1
                } else {
                    58
                }
            }
            Some(p) => match p.to_ascii_lowercase().as_str() {
                "icmp" => 1,
                "tcp" => 6,
                "udp" => 17,
                "gre" => 47,
                "esp" => 50,
                "icmpv6" => 58,
                n => n.parse::<u8>().map_err(|_| {
                    DiagnoseError::BadQuery(format!(
                        "proto `{p}` is not tcp, udp, icmp, icmpv6, gre, esp or a number"
                    ))
                })?,
            },
        };
        let (src_port, dst_port) = match proto {
            // An echo request: type 8 (ICMPv6: 128), code 0.
            1 => (sport.unwrap_or(8), dport.unwrap_or(0)),
            58 => (sport.unwrap_or(128), dport.unwrap_or(0)),
            6 | 17 | 132 | 136 => (sport.unwrap_or(40000), dport.unwrap_or(0)),
            _ => (0, 0),
        };
        let size = size.unwrap_or(100);
        if !(20..=65535).contains(&size) {
            return Err(DiagnoseError::BadQuery(format!(
                "size {size} is not a packet size (20..65535)"
            )));
        }
        Ok(Query { flow: FlowKey { src, dst, proto, src_port, dst_port }, size })
    }
}

/// A CHILD SA as the driver reports it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ChildLive {
    /// CHILD SA name.
    pub name: String,
    /// Inbound SPI.
    pub spi_in: u32,
    /// Outbound SPI.
    pub spi_out: u32,
}

/// What the tracer needs to know of a tunnel's live state.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TunnelLive {
    /// `up`, `connecting`, `down`.
    pub state: String,
    /// Installed CHILD SAs.
    pub children: Vec<ChildLive>,
    /// Seconds since the IKE SA came up.
    pub up_secs: Option<u64>,
    /// Seconds since a packet last left / arrived (None: never).
    pub idle_out: Option<u64>,
    /// See `idle_out`.
    pub idle_in: Option<u64>,
    /// Packets sent into the tunnel since the daemon started.
    pub packets_out: u64,
    /// Packets received from the tunnel since the daemon started.
    pub packets_in: u64,
    /// The last negotiation failure, explained.
    pub last_failure: Option<String>,
}

/// Live state of every tunnel, and whether the tunnel plane runs at all.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Live {
    /// Whether the dataplane and the IKE driver run.
    pub running: bool,
    /// By tunnel name.
    pub tunnels: BTreeMap<String, TunnelLive>,
}

impl Live {
    /// Reads the driver's status and the monitor's readings.
    pub fn read(core: &Core, cfg: &Config) -> Live {
        let mut live = Live { running: core.with_driver(|_| ()).is_some(), ..Live::default() };
        for t in &cfg.tunnels {
            let st = core.with_driver(|d| d.tunnels.tunnel(&t.name)).flatten();
            let (idle_out, idle_in) = core.monitor.idle(&t.name);
            let tot = core.monitor.totals(&t.name);
            let l = TunnelLive {
                state: st
                    .as_ref()
                    .map(|s| s.state.to_string())
                    .unwrap_or_else(|| if t.enabled { "down".into() } else { "disabled".into() }),
                children: st
                    .as_ref()
                    .map(|s| {
                        s.children
                            .iter()
                            .map(|c| ChildLive {
                                name: c.name.clone(),
                                spi_in: c.spi_in,
                                spi_out: c.spi_out,
                            })
                            .collect()
                    })
                    .unwrap_or_default(),
                up_secs: st.as_ref().and_then(|s| s.up_since).and_then(|u| {
                    std::time::SystemTime::now().duration_since(u).ok().map(|d| d.as_secs())
                }),
                idle_out,
                idle_in,
                packets_out: tot.packets_out,
                packets_in: tot.packets_in,
                last_failure: st.as_ref().and_then(|s| {
                    s.last_failure
                        .as_ref()
                        .map(|e| e.to_string())
                        .or_else(|| s.last_down_reason.clone())
                }),
            };
            live.tunnels.insert(t.name.clone(), l);
        }
        live
    }
}

/// `GET /diagnose/path`: traces `q` through the applied configuration and live state.
pub fn diagnose_path(core: &Core, q: &Query) -> Result<api::PathReport, DiagnoseError> {
    let (_, cfg) = core.applied().ok_or(DiagnoseError::NoConfig)?;
    let live = Live::read(core, &cfg);
    Ok(trace(&cfg, &live, q))
}

/// The SPD the driver publishes for `cfg`: per enabled tunnel (in name order) one CHILD SA per
/// `spd` entry (route mode: one any <-> any), each expanded by `esp::selectors`.
pub fn spd_table(cfg: &Config) -> SpdTable {
    let mut per_tunnel: BTreeMap<String, Vec<SpdEntry>> = BTreeMap::new();
    for t in cfg.tunnels.iter().filter(|t| t.enabled) {
        let ts = |p: &Prefix, proto: Option<u8>, ports: PortRange| {
            let mut s = TrafficSelector::from_prefix(*p);
            s.proto = proto.unwrap_or(0);
            s.ports = ports;
            s
        };
        let children: Vec<(String, Vec<TrafficSelector>, Vec<TrafficSelector>)> = match t.mode {
            Mode::Route => {
                let any4 = Prefix::new(IpAddr::from([0, 0, 0, 0]), 0).expect("/0 is valid");
                let any = vec![TrafficSelector::from_prefix(any4)];
                vec![(t.name.clone(), any.clone(), any)]
            }
            Mode::Policy => t
                .spd
                .iter()
                .enumerate()
                .map(|(i, e)| {
                    let proto = e.protocol.number();
                    (
                        if i == 0 { t.name.clone() } else { format!("{}-{i}", t.name) },
                        e.local.iter().map(|p| ts(p, proto, e.local_ports)).collect(),
                        e.remote.iter().map(|p| ts(p, proto, e.remote_ports)).collect(),
                    )
                })
                .collect(),
        };
        let mut entries = Vec::new();
        for (child, l, r) in children {
            for (i, s) in isthmus_tunnels::esp::selectors(&l, &r).into_iter().enumerate() {
                entries.push(SpdEntry {
                    id: format!("{}/{child}#{i}", t.name),
                    selector: s,
                    action: SpdAction::Protect { tunnel: t.name.clone(), child: child.clone() },
                });
            }
        }
        per_tunnel.insert(t.name.clone(), entries);
    }
    SpdTable::new(1, per_tunnel.into_values().flatten().collect())
}

fn proto_name(p: u8) -> String {
    match p {
        1 => "icmp".into(),
        6 => "tcp".into(),
        17 => "udp".into(),
        47 => "gre".into(),
        50 => "esp".into(),
        58 => "icmpv6".into(),
        n => format!("proto {n}"),
    }
}

fn has_ports(p: u8) -> bool {
    matches!(p, 6 | 17 | 132 | 136)
}

/// `tcp/443`, `icmp`, `udp/53`.
fn service(f: &FlowKey) -> String {
    if has_ports(f.proto) {
        format!("{}/{}", proto_name(f.proto), f.dst_port)
    } else {
        proto_name(f.proto)
    }
}

fn describe(f: &FlowKey, size: u32) -> String {
    if has_ports(f.proto) {
        format!(
            "{} {}:{} -> {}:{} ({size} bytes)",
            proto_name(f.proto),
            f.src,
            f.src_port,
            f.dst,
            f.dst_port
        )
    } else {
        format!("{} {} -> {} ({size} bytes)", proto_name(f.proto), f.src, f.dst)
    }
}

fn list(v: &[Prefix]) -> String {
    if v.is_empty() {
        return "nothing".into();
    }
    v.iter().map(|p| p.to_string()).collect::<Vec<_>>().join(", ")
}

/// 5000 -> "5,000".
fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn stage(
    name: &str,
    verdict: StageVerdict,
    entry: impl Into<String>,
    detail: impl Into<String>,
) -> PathStage {
    PathStage { stage: name.into(), verdict, entry: entry.into(), detail: detail.into() }
}

/// True for addresses no Internet route leads to (RFC 1918, RFC 6598, loopback, link-local,
/// RFC 4193 unique local).
fn is_private(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(a) => {
            let o = a.octets();
            a.is_private()
                || a.is_loopback()
                || a.is_link_local()
                || (o[0] == 100 && (64..128).contains(&o[1]))
        }
        IpAddr::V6(a) => {
            a.is_loopback()
                || (a.segments()[0] & 0xfe00) == 0xfc00
                || (a.segments()[0] & 0xffc0) == 0xfe80
        }
    }
}

fn rule_matches(r: &Rule, f: &FlowKey) -> bool {
    r.protocol.number().is_none_or(|p| p == f.proto)
        && (r.source.is_empty() || r.source.iter().any(|p| p.contains(f.src)))
        && (r.destination.is_empty() || r.destination.iter().any(|p| p.contains(f.dst)))
        && (!has_ports(f.proto) || r.ports.contains(f.dst_port))
}

/// The first rule of `dir` in priority order that matches, else the default action.
/// Returns (allowed, entry).
fn evaluate(
    kind: &str,
    name: &str,
    rules: &[Rule],
    default: Action,
    dir: Direction,
    f: &FlowKey,
) -> (bool, String, Option<u32>) {
    let mut sorted: Vec<&Rule> = rules.iter().filter(|r| r.direction == dir).collect();
    sorted.sort_by_key(|r| r.priority);
    for r in sorted {
        if rule_matches(r, f) {
            let what = match r.action {
                Action::Allow => "allows",
                Action::Deny => "denies",
            };
            let desc = r.description.as_deref().map(|d| format!(" ({d})")).unwrap_or_default();
            return (
                r.action == Action::Allow,
                format!("{kind} {name} rule {}{desc} {what}", r.priority),
                Some(r.priority),
            );
        }
    }
    let what = match default {
        Action::Allow => "allows",
        Action::Deny => "denies",
    };
    (
        default == Action::Allow,
        format!("{kind} {name} default_action {what} (no rule matches)"),
        None,
    )
}

fn dir_name(d: Direction) -> &'static str {
    match d {
        Direction::In => "in",
        Direction::Out => "out",
    }
}

/// Where a route sends a packet.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Target {
    /// The TUN device; the tunnel a route names, if it names one.
    Tun(Option<String>),
    /// Out of a LAN.
    Lan(String),
    /// Through a router.
    Via(IpAddr),
    /// Out of the WAN to a customer gateway's public address.
    Wan(String),
}

struct RouteHit {
    table: String,
    prefix: Prefix,
    target: Target,
}

impl RouteHit {
    fn entry(&self) -> String {
        let to = match &self.target {
            Target::Tun(Some(t)) => format!("{} (tunnel {t})", plan::TUN_NAME),
            Target::Tun(None) => format!("{} (tunnel remote network)", plan::TUN_NAME),
            Target::Lan(l) => format!("lan {l}"),
            Target::Via(a) => format!("via {a}"),
            Target::Wan(cg) => format!("wan (customer gateway {cg})"),
        };
        format!("table {}: {} -> {to}", self.table, self.prefix)
    }
}

/// Longest-prefix lookup: tables bound to the ingress LAN first, then main (as the kernel's
/// policy rules do: a table without a match falls through to the next rule).
fn route_lookup(cfg: &Config, lan: Option<&str>, dst: IpAddr) -> Option<RouteHit> {
    let mut main: Vec<RouteHit> = Vec::new();
    for l in &cfg.gateway.lans {
        for n in l.all_networks() {
            main.push(RouteHit {
                table: "main".into(),
                prefix: n,
                target: Target::Lan(l.name.clone()),
            });
        }
    }
    for cg in &cfg.customer_gateways {
        main.push(RouteHit {
            table: "main".into(),
            prefix: Prefix::host(cg.address),
            target: Target::Wan(cg.name.clone()),
        });
    }
    for t in cfg.tunnels.iter().filter(|t| t.enabled) {
        for p in plan::remote_prefixes(t) {
            main.push(RouteHit { table: "main".into(), prefix: p, target: Target::Tun(None) });
        }
    }
    let mut bound: Vec<RouteHit> = Vec::new();
    for rt in &cfg.route_tables {
        let is_main = rt.id == 0 || rt.id == isthmus_net::TABLE_MAIN;
        let is_bound = lan.is_some_and(|l| rt.lans.iter().any(|x| x == l));
        for r in &rt.routes {
            let target = match r.next_hop() {
                Some(NextHop::Tunnel(t)) => Target::Tun(Some(t.to_owned())),
                Some(NextHop::Interface(_, Some(g))) => Target::Via(g),
                Some(NextHop::Interface(i, None)) => Target::Lan(i.to_owned()),
                Some(NextHop::Address(a)) => Target::Via(a),
                None => continue,
            };
            let hit = RouteHit { table: rt.name.clone(), prefix: r.prefix, target };
            if is_main {
                main.push(hit);
            } else if is_bound {
                bound.push(hit);
            }
        }
    }
    let best = |v: Vec<RouteHit>| {
        v.into_iter().filter(|h| h.prefix.contains(dst)).max_by_key(|h| {
            // Configured routes beat the implicit tunnel routes of the same length (lower metric).
            (h.prefix.len(), !matches!(h.target, Target::Tun(None)))
        })
    };
    best(bound).or_else(|| best(main))
}

/// The LAN whose networks contain `ip` (longest prefix).
fn lan_of(cfg: &Config, ip: IpAddr) -> Option<(&isthmus_config::Lan, Prefix)> {
    cfg.gateway
        .lans
        .iter()
        .flat_map(|l| l.all_networks().map(move |n| (l, n)))
        .filter(|(_, n)| n.contains(ip))
        .max_by_key(|(_, n)| n.len())
}

/// Traces `q` through `cfg` and `live` (pure: unit tests call it with a config from TOML).
pub fn trace(cfg: &Config, live: &Live, q: &Query) -> api::PathReport {
    let f = q.flow;
    let mut fwd = Vec::new();
    let mut reply = Vec::new();
    let mut advice = Vec::new();
    let notes = vec![
        "spd: rebuilt from the applied configuration exactly as the tunnel driver builds the table it publishes to the dataplane (the dataplane does not expose its table); looked up first-match with isthmus_tables::spd::SpdTable::lookup".to_owned(),
        "network-acl, security-group: the configuration's rules evaluated in priority order (not the tables crate's classifier)".to_owned(),
    ];
    let report = |fwd, reply, advice, verdict| api::PathReport {
        packet: describe(&f, q.size),
        forward: fwd,
        reply,
        verdict,
        advice,
        notes: notes.clone(),
    };

    // 1. Ingress LAN.
    let Some((lan, net)) = lan_of(cfg, f.src) else {
        let lans: Vec<String> = cfg
            .gateway
            .lans
            .iter()
            .map(|l| format!("{} {}", l.name, list(&l.all_networks().collect::<Vec<_>>())))
            .collect();
        fwd.push(stage(
            "ingress",
            StageVerdict::Drop,
            "-",
            format!("src {} is not on any LAN (LANs: {})", f.src, lans.join("; ")),
        ));
        advice.push(format!(
            "src {} is not on any LAN of this gateway: trace from an address inside a LAN network ({})",
            f.src,
            lans.join("; ")
        ));
        return report(fwd, reply, advice, StageVerdict::Drop);
    };
    fwd.push(stage(
        "ingress",
        StageVerdict::Pass,
        format!("lan {} ({}) network {net}", lan.name, lan.interface),
        "",
    ));

    // 2. Network ACLs bound to the LAN: the packet leaves the LAN's network (`out`).
    let acls: Vec<_> = cfg.network_acls.iter().filter(|a| a.lans.contains(&lan.name)).collect();
    if acls.is_empty() {
        fwd.push(stage(
            "network-acl",
            StageVerdict::Pass,
            format!("none bound to lan {}", lan.name),
            "",
        ));
    }
    for a in &acls {
        let (ok, entry, prio) =
            evaluate("network ACL", &a.name, &a.rules, a.default_action, Direction::Out, &f);
        if ok {
            fwd.push(stage("network-acl", StageVerdict::Pass, entry, "direction out"));
        } else {
            fwd.push(stage("network-acl", StageVerdict::Drop, entry, "direction out"));
            advice.push(match prio {
                Some(p) => format!(
                    "network ACL {} rule {p} denies {} from {} (direction out): change the rule or add an allow rule with a lower priority",
                    a.name, service(&f), f.src
                ),
                None => format!(
                    "network ACL {} denies {} from {} by its default_action: add an allow rule (direction out)",
                    a.name, service(&f), f.src
                ),
            });
            return report(fwd, reply, advice, StageVerdict::Drop);
        }
    }

    // 3. Route lookup.
    let Some(hit) = route_lookup(cfg, Some(&lan.name), f.dst) else {
        fwd.push(stage(
            "route",
            StageVerdict::Drop,
            format!("no route for {}", f.dst),
            "the kernel answers ICMP net unreachable",
        ));
        let route_mode: Vec<&str> = cfg
            .tunnels
            .iter()
            .filter(|t| t.enabled && t.mode == Mode::Route)
            .map(|t| t.name.as_str())
            .collect();
        let table = cfg
            .route_tables
            .iter()
            .find(|rt| rt.lans.contains(&lan.name))
            .map(|rt| format!("route table {}", rt.name))
            .unwrap_or_else(|| format!("a route table bound to lan {}", lan.name));
        if !is_private(f.dst) {
            advice.push(format!(
                "the gateway gives no Internet access: {} is outside every tunnel's remote networks",
                f.dst
            ));
        } else if let Some(t) = route_mode.first() {
            advice.push(format!("no route for {} points to tunnel {t}: add one to {table}", f.dst));
        } else {
            let all: Vec<Prefix> =
                cfg.tunnels.iter().filter(|t| t.enabled).flat_map(plan::remote_prefixes).collect();
            advice.push(format!(
                "no route for {}: it is outside every tunnel's remote networks ({}); add it to the spd remote of the tunnel that reaches it (and to the peer's local)",
                f.dst,
                list(&all)
            ));
        }
        return report(fwd, reply, advice, StageVerdict::Drop);
    };
    fwd.push(stage("route", StageVerdict::Pass, hit.entry(), ""));
    let route_tunnel = match &hit.target {
        Target::Tun(t) => t.clone(),
        Target::Lan(l) => {
            fwd.push(stage("spd", StageVerdict::Skip, "not routed into a tunnel", ""));
            fwd.push(stage(
                "egress",
                StageVerdict::Pass,
                format!("lan {l}"),
                "LAN to LAN, not protected",
            ));
            reply.push(stage(
                "route",
                StageVerdict::Pass,
                format!("lan {}", lan.name),
                "reply LAN to LAN",
            ));
            return report(fwd, reply, advice, StageVerdict::Pass);
        }
        Target::Via(a) => {
            fwd.push(stage("spd", StageVerdict::Skip, "not routed into a tunnel", ""));
            fwd.push(stage("egress", StageVerdict::Pass, format!("via {a}"), "not protected"));
            return report(fwd, reply, advice, StageVerdict::Pass);
        }
        Target::Wan(cg) => {
            fwd.push(stage("spd", StageVerdict::Skip, "not routed into a tunnel", ""));
            fwd.push(stage(
                "egress",
                StageVerdict::Warn,
                format!("wan {}", cfg.gateway.wan.interface),
                format!("to customer gateway {cg}'s public address, in clear"),
            ));
            advice.push(format!(
                "{} is customer gateway {cg}'s public address: traffic to it is not protected; trace to an address behind it",
                f.dst
            ));
            return report(fwd, reply, advice, StageVerdict::Pass);
        }
    };

    // 4. SPD.
    let spd = spd_table(cfg);
    let Some((_, entry)) = spd.lookup(&f) else {
        fwd.push(stage(
            "spd",
            StageVerdict::Drop,
            "no entry matches",
            format!(
                "the dataplane drops it (no_policy); the table has {} entries",
                spd.entries.len()
            ),
        ));
        let cand = route_tunnel
            .as_deref()
            .and_then(|n| cfg.tunnel(n))
            .or_else(|| {
                cfg.tunnels
                    .iter()
                    .find(|t| t.spd.iter().any(|e| e.remote.iter().any(|p| p.contains(f.dst))))
            })
            .or_else(|| {
                cfg.tunnels
                    .iter()
                    .find(|t| t.spd.iter().any(|e| e.local.iter().any(|p| p.contains(f.src))))
            });
        match cand {
            Some(t) if !t.enabled => {
                advice.push(format!("tunnel {} is disabled: enable it", t.name))
            }
            Some(t) => {
                let remote: Vec<Prefix> =
                    t.spd.iter().flat_map(|e| e.remote.iter().copied()).collect();
                let local: Vec<Prefix> =
                    t.spd.iter().flat_map(|e| e.local.iter().copied()).collect();
                if !remote.iter().any(|p| p.contains(f.dst)) {
                    advice.push(format!(
                        "SPD of tunnel {} covers {}, not {}: add {} to its spd remote (and to the peer's local)",
                        t.name, list(&remote), f.dst, f.dst
                    ));
                } else if !local.iter().any(|p| p.contains(f.src)) {
                    advice.push(format!(
                        "SPD of tunnel {} covers local {}, not {}: add the source network to its spd local (and to the peer's remote)",
                        t.name, list(&local), f.src
                    ));
                } else {
                    advice.push(format!(
                        "SPD of tunnel {} covers {} -> {} but not {}: widen the spd entry's protocol or ports",
                        t.name, list(&local), list(&remote), service(&f)
                    ));
                }
            }
            None => advice.push(format!("no tunnel's SPD covers {} -> {}", f.src, f.dst)),
        }
        return report(fwd, reply, advice, StageVerdict::Drop);
    };
    let (tunnel, child) = match &entry.action {
        SpdAction::Protect { tunnel, child } => (tunnel.clone(), child.clone()),
        SpdAction::Bypass | SpdAction::Discard => {
            fwd.push(stage(
                "spd",
                StageVerdict::Drop,
                entry.id.clone(),
                format!("{:?}", entry.action),
            ));
            return report(fwd, reply, advice, StageVerdict::Drop);
        }
    };
    let sel = &entry.selector;
    let sel_text = format!(
        "{} <-> {}{}",
        sel.local,
        sel.remote,
        sel.proto.map(|p| format!(" {}", proto_name(p))).unwrap_or_default()
    );
    match &route_tunnel {
        Some(rt) if *rt != tunnel => {
            fwd.push(stage(
                "spd",
                StageVerdict::Warn,
                format!("{} {sel_text} -> protect tunnel {tunnel} child {child}", entry.id),
                format!(
                    "the route names tunnel {rt}, but the SPD decides: it goes through {tunnel}"
                ),
            ));
            advice.push(format!(
                "the route for {} names tunnel {rt} but the SPD sends it through tunnel {tunnel}: fix the route or the spd entries",
                f.dst
            ));
        }
        _ => fwd.push(stage(
            "spd",
            StageVerdict::Pass,
            format!("{} {sel_text} -> protect tunnel {tunnel} child {child}", entry.id),
            "",
        )),
    }

    // 5. CHILD SA.
    let tl = live.tunnels.get(&tunnel).cloned().unwrap_or_default();
    let sa = tl.children.iter().find(|c| c.name == child);
    let Some(sa) = sa.filter(|_| live.running && tl.state == "up") else {
        let why = if !live.running {
            "tunnels are not running on this daemon".to_owned()
        } else {
            format!(
                "tunnel {tunnel} is {}, no CHILD SA {child}",
                if tl.state.is_empty() { "down" } else { &tl.state }
            )
        };
        fwd.push(stage(
            "child-sa",
            StageVerdict::Drop,
            why.clone(),
            tl.last_failure
                .clone()
                .unwrap_or_else(|| "dropped (never sent in clear) until an SA exists".into()),
        ));
        advice.push(format!("{why}: the packet is dropped, never sent in clear; see `isthmus diagnose tunnel {tunnel}`"));
        if let Some(e) = &tl.last_failure {
            advice.push(format!("last failure: {e}"));
        }
        return report(fwd, reply, advice, StageVerdict::Drop);
    };
    let ago = |s: Option<u64>| s.map(|s| format!("{s} s ago")).unwrap_or_else(|| "never".into());
    let sa_entry = format!("{tunnel}/{child} SPI in 0x{:08x} out 0x{:08x}", sa.spi_in, sa.spi_out);
    let sa_detail = format!(
        "up; last packet out {}, in {} ({} out, {} in)",
        ago(tl.idle_out),
        ago(tl.idle_in),
        thousands(tl.packets_out),
        thousands(tl.packets_in)
    );
    // One-way: we send, nothing comes back (for 30 s longer than we have been sending).
    let silent_for = match (tl.idle_in, tl.packets_in) {
        (_, 0) => tl.up_secs,
        (Some(i), _) => Some(i),
        (None, _) => tl.up_secs,
    };
    let one_way = tl.packets_out > 0
        && tl.idle_out.is_some()
        && silent_for.is_some_and(|s| s >= 30 && s >= tl.idle_out.unwrap_or(0) + 30);
    if one_way {
        fwd.push(stage("child-sa", StageVerdict::Warn, sa_entry.clone(), sa_detail.clone()));
        advice.push(format!(
            "the SA is up but has received nothing for {} s while sending {} packets: the peer is not sending back — check its routes and SPD",
            silent_for.unwrap_or(0),
            thousands(tl.packets_out)
        ));
    } else {
        fwd.push(stage("child-sa", StageVerdict::Pass, sa_entry.clone(), sa_detail.clone()));
    }

    // 6. Security groups bound to the tunnel or the ingress LAN (the packet leaves: `out`).
    let sgs: Vec<_> = cfg
        .security_groups
        .iter()
        .filter(|g| g.tunnels.contains(&tunnel) || g.lans.contains(&lan.name))
        .collect();
    if sgs.is_empty() {
        fwd.push(stage(
            "security-group",
            StageVerdict::Pass,
            format!("none bound to tunnel {tunnel} or lan {}", lan.name),
            "",
        ));
    }
    for g in &sgs {
        let (ok, entry, prio) =
            evaluate("security group", &g.name, &g.rules, g.default_action, Direction::Out, &f);
        if ok {
            fwd.push(stage("security-group", StageVerdict::Pass, entry, "direction out"));
        } else {
            fwd.push(stage("security-group", StageVerdict::Drop, entry, "direction out"));
            advice.push(match prio {
                Some(p) => format!("security group {} rule {p} denies {} from {}", g.name, service(&f), f.src),
                None => format!(
                    "security group {} denies {} from {} by its default_action: add an allow rule (direction out)",
                    g.name, service(&f), f.src
                ),
            });
            return report(fwd, reply, advice, StageVerdict::Drop);
        }
    }

    // 7. MTU.
    let mtu = cfg.tunnel(&tunnel).map(|t| t.mtu).unwrap_or(1400);
    if q.size > mtu {
        let clamp = cfg.tunnel(&tunnel).and_then(|t| t.effective_mss());
        fwd.push(stage(
            "mtu",
            StageVerdict::Warn,
            format!("tunnel {tunnel} mtu {mtu} < {} bytes", q.size),
            "with DF set the packet is dropped and ICMP fragmentation-needed returned (path MTU discovery); without DF it is fragmented",
        ));
        advice.push(format!(
            "a {}-byte packet exceeds tunnel {tunnel}'s MTU {mtu}: senders must use path MTU discovery or an MTU of at most {mtu}{}",
            q.size,
            match (f.proto, clamp) {
                (6, Some(m)) => format!(" (TCP SYNs are clamped to MSS {m})"),
                _ => String::new(),
            }
        ));
    } else {
        fwd.push(stage(
            "mtu",
            StageVerdict::Pass,
            format!("tunnel {tunnel} mtu {mtu} >= {} bytes", q.size),
            "",
        ));
    }

    // 8. Egress.
    let peer = cfg
        .tunnel(&tunnel)
        .and_then(|t| cfg.customer_gateway(&t.customer_gateway))
        .map(|c| format!("{} ({})", c.name, c.address))
        .unwrap_or_default();
    fwd.push(stage(
        "egress",
        StageVerdict::Pass,
        format!("ESP SPI 0x{:08x} to {peer} via wan {}", sa.spi_out, cfg.gateway.wan.interface),
        "",
    ));

    // The reply: out of the tunnel, the inbound selector check, SGs (stateful), ACLs (stateless).
    let r = f.reversed();
    let inbound_ok =
        spd.entries_for(&tunnel, &child).any(|i| spd.entries[i].selector.matches_inbound(&r));
    let mut verdict = StageVerdict::Pass;
    reply.push(stage(
        "child-sa",
        if one_way { StageVerdict::Warn } else { StageVerdict::Pass },
        format!("{tunnel}/{child} SPI in 0x{:08x}", sa.spi_in),
        if one_way { "nothing arrives from the peer".to_owned() } else { sa_detail },
    ));
    if inbound_ok {
        reply.push(stage(
            "spd",
            StageVerdict::Pass,
            format!("{} inbound {sel_text}", entry.id),
            "",
        ));
    } else {
        reply.push(stage(
            "spd",
            StageVerdict::Drop,
            format!("{} inbound", entry.id),
            "the reply is outside the CHILD SA's selectors",
        ));
        advice.push(format!(
            "the reply {} -> {} is outside the selectors of {tunnel}/{child}",
            r.src, r.dst
        ));
        verdict = StageVerdict::Drop;
    }
    if verdict == StageVerdict::Pass {
        reply.push(stage(
            "security-group",
            StageVerdict::Pass,
            "reply of the flow allowed above (stateful)",
            "",
        ));
        let mut acl_ok = true;
        for a in &acls {
            let (ok, entry, _) =
                evaluate("network ACL", &a.name, &a.rules, a.default_action, Direction::In, &r);
            reply.push(stage(
                "network-acl",
                if ok { StageVerdict::Pass } else { StageVerdict::Drop },
                entry,
                format!("direction {}", dir_name(Direction::In)),
            ));
            if !ok {
                acl_ok = false;
                advice.push(format!(
                    "network ACL {} denies the reply {} from {} to {}: ACLs are stateless, add an allow rule (direction in) for the replies",
                    a.name,
                    service(&r),
                    r.src,
                    r.dst
                ));
                break;
            }
        }
        if acl_ok {
            reply.push(stage(
                "egress",
                StageVerdict::Pass,
                format!("lan {} ({})", lan.name, lan.interface),
                "",
            ));
        } else {
            verdict = StageVerdict::Drop;
        }
    }
    report(fwd, reply, advice, verdict)
}

/// `GET /diagnose/tunnel/NAME`: the last failure the driver recorded and recent events.
pub fn diagnose_tunnel(core: &Core, name: &str) -> Result<api::TunnelDiagnosis, DiagnoseError> {
    let (_, cfg) = core.applied().ok_or(DiagnoseError::NoConfig)?;
    let t = cfg.tunnel(name).ok_or_else(|| DiagnoseError::UnknownTunnel(name.to_owned()))?;
    let st = core.with_driver(|d| d.tunnels.tunnel(name)).flatten();
    let state = match &st {
        _ if !t.enabled => "disabled".to_owned(),
        Some(s) => s.state.to_string(),
        None => "down".to_owned(),
    };
    let last_failure =
        st.as_ref().and_then(|s| s.last_failure.as_ref()).map(|e| api::NegotiationFailure {
            exchange: e.exchange.to_string(),
            cause: e.cause.to_string(),
            ours: e.ours.clone(),
            theirs: e.theirs.clone(),
            suggestion: e.suggestion.clone(),
        });
    // Events of this tunnel, and those of requests from its peer that matched no tunnel.
    let peer = cfg.customer_gateway(&t.customer_gateway).map(|c| c.address.to_string());
    let mut events = core.events().recent(&format!("tunnel/{name}"), 50);
    if let Some(p) = &peer {
        events.extend(
            core.events()
                .recent("tunnel/", 50)
                .into_iter()
                .filter(|e| e.message.contains(&format!("peer {p}"))),
        );
    }
    events.retain(|e| {
        matches!(
            e.kind.as_str(),
            "negotiation-failed" | "tunnel-down" | "install-failed" | "child-down"
        )
    });
    events.sort_by_key(|e| e.time);
    let keep = events.len().saturating_sub(10);
    events.drain(..keep);
    let mut advice = Vec::new();
    if !t.enabled {
        advice.push(format!("tunnel {name} is disabled: set enabled = true"));
    }
    if let Some(f) = &last_failure {
        match &f.suggestion {
            Some(s) => advice.push(s.clone()),
            None => advice.push(format!("{} failed: {}", f.exchange, f.cause)),
        }
    }
    if state != "up" && last_failure.is_none() && t.enabled {
        match &peer {
            Some(p) => advice.push(format!(
                "no negotiation has failed yet: check that the peer {p} is reachable on UDP 500/4500 and configured for this gateway"
            )),
            None => advice.push("the customer gateway is not configured".into()),
        }
    }
    Ok(api::TunnelDiagnosis {
        tunnel: name.to_owned(),
        state,
        last_failure,
        last_down_reason: st.and_then(|s| s.last_down_reason),
        events,
        advice,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = r#"
[gateway]
name = "gw1"
[gateway.wan]
interface = "wan0"
address = "10.80.0.1/24"
next_hop = "10.80.0.254"
[[gateway.lan]]
name = "office"
interface = "lan0"
addresses = ["10.81.1.1/24"]

[[customer_gateway]]
name = "idc"
address = "10.80.0.2"

[[tunnel]]
name = "to-idc"
customer_gateway = "idc"
psk = "a-long-enough-pre-shared-key-0123"
[[tunnel.spd]]
local = ["10.81.1.0/24"]
remote = ["172.20.1.0/24"]
"#;

    fn cfg(extra: &str) -> Config {
        Config::check(&format!("{BASE}{extra}")).expect("test config is valid").config
    }

    fn up(packets_out: u64, packets_in: u64, idle_in: Option<u64>) -> Live {
        let mut l = Live { running: true, ..Live::default() };
        l.tunnels.insert(
            "to-idc".into(),
            TunnelLive {
                state: "up".into(),
                children: vec![ChildLive { name: "to-idc".into(), spi_in: 0xc1, spi_out: 0xc2 }],
                up_secs: Some(600),
                idle_out: Some(0),
                idle_in,
                packets_out,
                packets_in,
                last_failure: None,
            },
        );
        l
    }

    fn q(
        src: &str,
        dst: &str,
        proto: Option<&str>,
        dport: Option<u16>,
        size: Option<u32>,
    ) -> Query {
        Query::parse(src, dst, proto, None, dport, size).unwrap()
    }

    fn stage_of<'a>(r: &'a api::PathReport, name: &str) -> &'a PathStage {
        r.forward.iter().find(|s| s.stage == name).unwrap_or_else(|| panic!("no {name}: {r:#?}"))
    }

    #[test]
    fn a_good_packet_passes_every_stage_and_comes_back() {
        let r = trace(
            &cfg(""),
            &up(10, 10, Some(0)),
            &q("10.81.1.5", "172.20.1.9", Some("tcp"), Some(443), None),
        );
        assert_eq!(r.verdict, StageVerdict::Pass, "{r:#?}");
        let names: Vec<&str> = r.forward.iter().map(|s| s.stage.as_str()).collect();
        assert_eq!(
            names,
            [
                "ingress",
                "network-acl",
                "route",
                "spd",
                "child-sa",
                "security-group",
                "mtu",
                "egress"
            ]
        );
        assert_eq!(
            stage_of(&r, "route").entry,
            "table main: 172.20.1.0/24 -> ist0 (tunnel remote network)"
        );
        assert!(
            stage_of(&r, "spd").entry.starts_with("to-idc/to-idc#0 10.81.1.0/24 <-> 172.20.1.0/24"),
            "{r:#?}"
        );
        assert!(stage_of(&r, "child-sa").entry.contains("SPI in 0x000000c1 out 0x000000c2"));
        assert!(r.reply.iter().all(|s| s.verdict == StageVerdict::Pass), "{r:#?}");
        assert!(r.advice.is_empty(), "{:?}", r.advice);
    }

    #[test]
    fn a_destination_outside_the_spd_is_named_with_what_the_spd_covers() {
        // A route sends 172.20.0.0/16 into the tunnel, but the SPD only covers 172.20.1.0/24.
        let c = cfg(r#"
[[route_table]]
name = "office-out"
id = 100
lans = ["office"]
[[route_table.route]]
prefix = "172.20.0.0/16"
tunnel = "to-idc"
"#);
        let r = trace(&c, &up(1, 1, Some(0)), &q("10.81.1.5", "172.20.2.5", None, None, None));
        assert_eq!(r.verdict, StageVerdict::Drop);
        assert_eq!(stage_of(&r, "spd").verdict, StageVerdict::Drop);
        assert!(
            r.advice[0].starts_with("SPD of tunnel to-idc covers 172.20.1.0/24, not 172.20.2.5"),
            "{:?}",
            r.advice
        );
    }

    #[test]
    fn the_internet_is_outside_every_tunnel() {
        let r = trace(&cfg(""), &up(0, 0, None), &q("10.81.1.5", "8.8.8.8", None, None, None));
        assert_eq!(stage_of(&r, "route").verdict, StageVerdict::Drop);
        assert_eq!(
            r.advice,
            [
                "the gateway gives no Internet access: 8.8.8.8 is outside every tunnel's remote networks"
            ]
        );
    }

    #[test]
    fn a_route_mode_tunnel_without_a_route_says_which_route_to_add() {
        let c = cfg(r#"
[[customer_gateway]]
name = "dc2"
address = "10.80.0.3"
[[tunnel]]
name = "to-dc2"
customer_gateway = "dc2"
mode = "route"
psk = "another-long-pre-shared-key-0123"
"#);
        let r = trace(&c, &up(0, 0, None), &q("10.81.1.5", "172.30.0.7", None, None, None));
        assert_eq!(
            r.advice,
            [
                "no route for 172.30.0.7 points to tunnel to-dc2: add one to a route table bound to lan office"
            ]
        );
    }

    #[test]
    fn a_source_off_every_lan_is_refused_at_ingress() {
        let r = trace(&cfg(""), &up(0, 0, None), &q("192.168.9.9", "172.20.1.9", None, None, None));
        assert_eq!(r.forward.len(), 1);
        assert!(r.forward[0].detail.starts_with("src 192.168.9.9 is not on any LAN"), "{r:#?}");
    }

    #[test]
    fn a_one_way_sa_advises_to_check_the_peer() {
        let r =
            trace(&cfg(""), &up(5000, 0, None), &q("10.81.1.5", "172.20.1.9", None, None, None));
        assert_eq!(stage_of(&r, "child-sa").verdict, StageVerdict::Warn);
        assert_eq!(
            r.advice,
            [
                "the SA is up but has received nothing for 600 s while sending 5,000 packets: the peer is not sending back — check its routes and SPD"
            ]
        );
    }

    #[test]
    fn a_down_tunnel_drops_and_points_to_diagnose_tunnel() {
        let mut l = up(0, 0, None);
        let t = l.tunnels.get_mut("to-idc").unwrap();
        t.state = "connecting".into();
        t.children.clear();
        t.last_failure =
            Some("tunnel `to-idc`: IKE_AUTH failed: the peer answered TS_UNACCEPTABLE".into());
        let r = trace(&cfg(""), &l, &q("10.81.1.5", "172.20.1.9", None, None, None));
        assert_eq!(stage_of(&r, "child-sa").verdict, StageVerdict::Drop);
        assert!(r.advice[0].contains("isthmus diagnose tunnel to-idc"), "{:?}", r.advice);
        assert!(r.advice[1].contains("TS_UNACCEPTABLE"), "{:?}", r.advice);
    }

    #[test]
    fn security_group_and_acl_rules_are_named() {
        let sg = r#"
[[security_group]]
name = "sg-vpc"
tunnels = ["to-idc"]
default_action = "allow"
[[security_group.rule]]
priority = 3
action = "deny"
direction = "out"
protocol = "tcp"
ports = "443"
"#;
        let r = trace(
            &cfg(sg),
            &up(1, 1, Some(0)),
            &q("10.81.1.5", "172.20.1.9", Some("tcp"), Some(443), None),
        );
        assert_eq!(r.advice, ["security group sg-vpc rule 3 denies tcp/443 from 10.81.1.5"]);
        // A stateless ACL that lets the request out but not the reply in.
        let acl = r#"
[[network_acl]]
name = "acl-office"
lans = ["office"]
[[network_acl.rule]]
priority = 10
action = "allow"
direction = "out"
"#;
        let r = trace(
            &cfg(acl),
            &up(1, 1, Some(0)),
            &q("10.81.1.5", "172.20.1.9", Some("udp"), Some(53), None),
        );
        assert_eq!(r.verdict, StageVerdict::Drop);
        assert!(
            r.reply.iter().any(|s| s.stage == "network-acl" && s.verdict == StageVerdict::Drop)
        );
        assert!(r.advice[0].contains("ACLs are stateless"), "{:?}", r.advice);
    }

    #[test]
    fn oversize_packets_warn_with_the_tunnel_mtu() {
        let r = trace(
            &cfg(""),
            &up(1, 1, Some(0)),
            &q("10.81.1.5", "172.20.1.9", None, None, Some(1450)),
        );
        assert_eq!(stage_of(&r, "mtu").verdict, StageVerdict::Warn);
        assert!(r.advice[0].contains("exceeds tunnel to-idc's MTU 1400"), "{:?}", r.advice);
    }

    #[test]
    fn the_spd_table_matches_the_driver_layout() {
        let t = spd_table(&cfg(""));
        assert_eq!(t.entries.len(), 1);
        assert_eq!(t.entries[0].id, "to-idc/to-idc#0");
    }

    #[test]
    fn bad_queries_are_named() {
        let e = Query::parse("10.0.0.1", "nope", None, None, None, None).unwrap_err();
        assert_eq!(e.to_string(), "dst `nope` is not an IP address");
        let e = Query::parse("10.0.0.1", "10.0.0.2", Some("sctpx"), None, None, None).unwrap_err();
        assert!(e.to_string().starts_with("proto `sctpx`"));
        assert_eq!(thousands(5000), "5,000");
        assert_eq!(thousands(999), "999");
    }
}
