//! One packet's path through the gateway, stage by stage ([`trace`]).

use std::collections::BTreeMap;
use std::net::IpAddr;

use isthmus_api::{self as api, PathStage, StageVerdict};
use isthmus_config::{Config, Mode, NextHop};
use isthmus_dataplane::{ChainVerdict, Drop};
use isthmus_tables::sg::{Action, ChainKind, Direction as SgDir};
use isthmus_tables::spd::SpdAction;
use isthmus_tables::{FlowKey, Prefix};

use super::words::{describe, list, proto_name, service, thousands};
use super::{DataplaneView, KernelRoute, Live, Query, RouteKind, TunnelLive};
use crate::core::plan;

pub(super) fn stage(
    name: &str,
    verdict: StageVerdict,
    entry: impl Into<String>,
    detail: impl Into<String>,
) -> PathStage {
    PathStage { stage: name.into(), verdict, entry: entry.into(), detail: detail.into() }
}

/// True for addresses no Internet route leads to (RFC 1918, RFC 6598, loopback, link-local,
/// RFC 4193 unique local).
pub(super) fn is_private(ip: IpAddr) -> bool {
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

/// Where the kernel sends a packet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Target {
    /// The TUN device; the tunnel a configured route names, if one does.
    Tun(Option<String>),
    /// Out of a LAN.
    Lan(String),
    /// Through a router.
    Via(IpAddr),
    /// Out of the WAN, to a customer gateway's public address when it is one.
    Wan(Option<String>),
    /// To another interface.
    Dev(String),
    /// To the gateway itself.
    Local,
}

/// `main`, `local`, or the configured route table of that id.
pub(super) fn table_name(cfg: &Config, id: u32) -> String {
    match id {
        254 => "main".into(),
        255 => "local".into(),
        _ => cfg
            .route_tables
            .iter()
            .find(|rt| rt.id == id)
            .map(|rt| rt.name.clone())
            .unwrap_or_else(|| id.to_string()),
    }
}

/// What the kernel's FIB entry means for the packet.
pub(super) fn route_target(
    cfg: &Config,
    route: &KernelRoute,
    dst: IpAddr,
) -> Result<(String, Target), String> {
    let (table, prefix, oif, gateway, kind) = match route {
        KernelRoute::Refused(why) => return Err(why.clone()),
        KernelRoute::Found { table, prefix, oif, gateway, kind } => {
            (table, prefix, oif, gateway, kind)
        }
    };
    let tname = table_name(cfg, *table);
    match kind {
        RouteKind::Unicast => {}
        RouteKind::Local => {
            return Ok((format!("table {tname}: {prefix} local"), Target::Local));
        }
        k => return Err(format!("table {tname}: {prefix} is a {k:?} route").to_lowercase()),
    }
    let cg =
        cfg.customer_gateways.iter().find(|c| c.address.ip() == Some(dst)).map(|c| c.name.clone());
    let oif = oif.clone().unwrap_or_default();
    let target = if oif == plan::TUN_NAME {
        // The tunnel a configured route of this table names for this prefix.
        let named = cfg
            .route_tables
            .iter()
            .filter(|rt| rt.id == *table || (*table == isthmus_net::TABLE_MAIN && rt.id == 0))
            .flat_map(|rt| rt.routes.iter())
            .find(|r| r.prefix == *prefix)
            .and_then(|r| match r.next_hop() {
                Some(NextHop::Tunnel(t)) => Some(t.to_owned()),
                _ => None,
            });
        Target::Tun(named)
    } else if oif == cfg.gateway.wan.interface {
        Target::Wan(cg)
    } else if let Some(g) = gateway {
        Target::Via(*g)
    } else if let Some(l) = cfg.gateway.lans.iter().find(|l| l.interface == oif) {
        Target::Lan(l.name.clone())
    } else {
        Target::Dev(oif.clone())
    };
    let to = match &target {
        Target::Tun(Some(t)) => format!("{} (tunnel {t})", plan::TUN_NAME),
        Target::Tun(None) => format!("{} (tunnel remote network)", plan::TUN_NAME),
        Target::Lan(l) => format!("lan {l}"),
        Target::Via(a) => format!("via {a} dev {oif}"),
        Target::Wan(Some(c)) => format!("wan {oif} (customer gateway {c})"),
        Target::Wan(None) => format!("wan {oif}"),
        Target::Dev(d) => format!("dev {d}"),
        Target::Local => "local".into(),
    };
    Ok((format!("table {tname}: {prefix} -> {to}"), target))
}

/// The LAN whose networks contain `ip` (longest prefix).
pub(super) fn lan_of(cfg: &Config, ip: IpAddr) -> Option<(&isthmus_config::Lan, Prefix)> {
    cfg.gateway
        .lans
        .iter()
        .flat_map(|l| l.all_networks().map(move |n| (l, n)))
        .filter(|(_, n)| n.contains(ip))
        .max_by_key(|(_, n)| n.len())
}

/// A security-group or ACL drop the filter predicts.
pub(super) struct FilterDrop {
    counter: &'static str,
    advice: String,
}

/// How one rule's name reads in advice: `sg:web/3` is rule 3 of security group web.
pub(super) fn rule_advice(
    kind: ChainKind,
    att: &str,
    rule: &str,
    f: &FlowKey,
    dir: SgDir,
    reply: bool,
) -> String {
    let what = if reply {
        format!("the reply {} from {} to {}", service(f), f.src, f.dst)
    } else {
        format!("{} from {}", service(f), f.src)
    };
    let d = match dir {
        SgDir::Inbound => "in",
        SgDir::Outbound => "out",
    };
    let (kind_word, rest) = match kind {
        ChainKind::SecurityGroup => ("security group", rule.strip_prefix("sg:")),
        ChainKind::NetworkAcl => ("network ACL", rule.strip_prefix("acl:")),
    };
    let parsed = rest.and_then(|r| r.split_once('/'));
    let stateless = if kind == ChainKind::NetworkAcl && reply {
        " (ACLs are stateless: replies need their own allow rule)"
    } else {
        ""
    };
    match parsed {
        Some((group, id)) if id.starts_with("default") => format!(
            "{kind_word} {group} denies {what} by its default_action: add an allow rule (direction {d}){stateless}"
        ),
        Some((group, id)) => {
            let prio = id.split('#').next().unwrap_or(id);
            match (kind, reply) {
                (ChainKind::SecurityGroup, _) => {
                    format!("{kind_word} {group} rule {prio} denies {what}")
                }
                (ChainKind::NetworkAcl, false) => format!(
                    "{kind_word} {group} rule {prio} denies {what} (direction {d}): change the rule or add an allow rule with a lower priority"
                ),
                (ChainKind::NetworkAcl, true) => format!(
                    "{kind_word} {group} rule {prio} denies {what}: ACLs are stateless, add an allow rule (direction {d}) for the replies"
                ),
            }
        }
        None => format!(
            "{kind_word} rule `{rule}` bound to {att} denies {what} (direction {d}){stateless}"
        ),
    }
}

/// Renders the dataplane's chain verdicts for one direction of the flow (see
/// [`DataplaneView::trace_filter`]) as `network-acl` and `security-group` stages, in the order
/// the workers evaluate them. Returns the drop when a chain refuses the packet: its counter and
/// advice. `request` holds the forward verdicts when `reply` is true (a reply that passes as
/// return traffic names the rule that allowed its request).
pub(super) fn render_filter(
    view: &DataplaneView,
    tunnel: &str,
    key: &FlowKey,
    verdicts: &[ChainVerdict],
    request: &[ChainVerdict],
    reply: bool,
    stages: &mut Vec<PathStage>,
) -> Option<FilterDrop> {
    let dir = if reply { SgDir::Inbound } else { SgDir::Outbound };
    let d = match dir {
        SgDir::Inbound => "in",
        SgDir::Outbound => "out",
    };
    let lan_addr = if reply { key.dst } else { key.src };
    let unbound = || {
        let lan = view
            .lans
            .iter()
            .filter(|b| b.prefix.contains(lan_addr))
            .max_by_key(|b| b.prefix.len())
            .map(|b| format!(" or lan {}", b.name))
            .unwrap_or_default();
        format!("none bound to tunnel {tunnel}{lan}")
    };
    let has = |kind: ChainKind| verdicts.iter().any(|v| v.kind == kind);
    // An ACL stage for the request even when none is bound: the operator sees it was looked at.
    if !reply && !has(ChainKind::NetworkAcl) {
        stages.push(stage("network-acl", StageVerdict::Pass, unbound(), ""));
    }
    for v in verdicts {
        let att = &v.attachment;
        let sname = match v.kind {
            ChainKind::NetworkAcl => "network-acl",
            ChainKind::SecurityGroup => "security-group",
        };
        let bound = format!("bound to {att}, direction {d}");
        match v.action {
            Some(Action::Allow) => {
                stages.push(stage(sname, StageVerdict::Pass, format!("{} allows", v.rule), bound))
            }
            None => {
                let entry = request
                    .iter()
                    .find(|r| r.kind == ChainKind::SecurityGroup && r.attachment == *att)
                    .map(|r| {
                        format!("{} allowed the request (stateful: its replies pass)", r.rule)
                    })
                    .unwrap_or_else(|| {
                        format!(
                            "no security group of {att} filters the request (stateful: its replies pass)"
                        )
                    });
                stages.push(stage(sname, StageVerdict::Pass, entry, bound));
            }
            Some(Action::Deny) => {
                let counter = match (v.kind, dir) {
                    (ChainKind::NetworkAcl, SgDir::Inbound) => Drop::NaclIn.as_str(),
                    (ChainKind::NetworkAcl, SgDir::Outbound) => Drop::NaclOut.as_str(),
                    (ChainKind::SecurityGroup, SgDir::Inbound) => Drop::SgIn.as_str(),
                    (ChainKind::SecurityGroup, SgDir::Outbound) => Drop::SgOut.as_str(),
                };
                let seen = view.rule_drops.get(&format!("{att}/{}", v.rule)).copied().unwrap_or(0);
                stages.push(stage(
                    sname,
                    StageVerdict::Drop,
                    format!("{} denies", v.rule),
                    format!("{bound}; this rule has dropped {} packets", thousands(seen)),
                ));
                return Some(FilterDrop {
                    counter,
                    advice: rule_advice(v.kind, att, &v.rule, key, v.direction, reply),
                });
            }
            Some(Action::Punt) => {
                stages.push(stage(
                    "security-group",
                    StageVerdict::Drop,
                    format!("{}: a punt rule, the security-group plugin decides this flow", v.rule),
                    format!("bound to {att}; packets wait (and are dropped) until it answers"),
                ));
                return Some(FilterDrop {
                    counter: Drop::PuntPending.as_str(),
                    advice: format!(
                        "the security-group plugin decides {} per flow: see `isthmus plugin list` for its state",
                        service(key)
                    ),
                });
            }
        }
    }
    if !has(ChainKind::SecurityGroup) {
        stages.push(stage(
            "security-group",
            StageVerdict::Pass,
            unbound(),
            format!("direction {d}"),
        ));
    }
    None
}

/// Traces `q` through `cfg`, the dataplane's tables and live state in `live`, and the kernel's
/// answer `route` (pure: unit tests call it with tables built by hand). One function per stage,
/// in the order the planes handle the packet; a stage that stops it (or sees it leave the
/// protected path) ends the trace with its verdict.
pub fn trace(cfg: &Config, live: &Live, route: &KernelRoute, q: &Query) -> api::PathReport {
    let empty = DataplaneView::empty();
    let mut t = Trace {
        cfg,
        live,
        view: live.dataplane.as_ref().unwrap_or(&empty),
        q,
        f: q.flow,
        fwd: Vec::new(),
        reply: Vec::new(),
        advice: Vec::new(),
    };
    let end = t.stages(route).err().unwrap_or(End { verdict: StageVerdict::Pass, counter: None });
    t.report(end)
}

/// A trace in progress: the stages passed so far, both ways, and the advice gathered.
struct Trace<'a> {
    cfg: &'a Config,
    live: &'a Live,
    view: &'a DataplaneView,
    q: &'a Query,
    f: FlowKey,
    fwd: Vec<PathStage>,
    reply: Vec<PathStage>,
    advice: Vec<String>,
}

/// Where a trace ends: the verdict, and the dataplane counter that counts such a drop.
struct End {
    verdict: StageVerdict,
    counter: Option<&'static str>,
}

impl End {
    fn drop(counter: Option<&'static str>) -> End {
        End { verdict: StageVerdict::Drop, counter }
    }

    fn pass() -> End {
        End { verdict: StageVerdict::Pass, counter: None }
    }
}

/// The SPD entry that protects the packet, and the CHILD SA it names.
struct Protected<'a> {
    entry: &'a isthmus_tables::spd::SpdEntry,
    tunnel: String,
    child: String,
    /// The entry's selector, as the stages show it.
    selector: String,
}

/// The outbound SA the packet leaves on.
struct OutboundSa {
    tunnel: TunnelLive,
    spi_out: u32,
    spi_in: u32,
    /// State and last-packet readings, as the stages show them.
    detail: String,
    /// We send and nothing comes back.
    one_way: bool,
}

impl<'a> Trace<'a> {
    fn stages(&mut self, route: &KernelRoute) -> Result<(), End> {
        let (lan, net) = self.ingress()?;
        self.fwd.push(stage(
            "ingress",
            StageVerdict::Pass,
            format!("lan {} ({}) network {net}", lan.name, lan.interface),
            "",
        ));
        let route_tunnel = self.route(lan, route)?;
        let p = self.spd(route_tunnel)?;
        // Network ACLs and security groups, before the SA (denied traffic asks for no SA).
        let (chains_out, chains_in) = self.view.trace_filter(&p.tunnel, SgDir::Outbound, &self.f);
        if let Some(d) =
            render_filter(self.view, &p.tunnel, &self.f, &chains_out, &[], false, &mut self.fwd)
        {
            self.advice.push(d.advice);
            return Err(End::drop(Some(d.counter)));
        }
        let sa = self.child_sa(&p)?;
        self.mtu(&p.tunnel);
        self.egress(&p.tunnel, &sa);
        self.reply(lan, &p, sa, &chains_out, &chains_in)
    }

    fn report(self, end: End) -> api::PathReport {
        let mut counters: BTreeMap<String, u64> = self.view.drops.clone();
        for (k, v) in &self.view.rule_drops {
            counters.insert(format!("rule {k}"), *v);
        }
        api::PathReport {
            packet: describe(&self.f, self.q.size),
            forward: self.fwd,
            reply: self.reply,
            verdict: end.verdict,
            advice: self.advice,
            notes: vec![
                "route: the kernel's own lookup (RTM_GETROUTE, FIB match, from the source on the ingress interface)".to_owned(),
                "spd, network-acl, security-group, child-sa: the tables and SAs the dataplane's workers use now, evaluated with the packet path's own code".to_owned(),
            ],
            drop_counter: end.counter.map(str::to_owned),
            counters,
        }
    }

    /// Stage 1, ingress: the LAN the source is on.
    fn ingress(&mut self) -> Result<(&'a isthmus_config::Lan, Prefix), End> {
        let (cfg, f) = (self.cfg, self.f);
        if let Some(x) = lan_of(cfg, f.src) {
            return Ok(x);
        }
        let lans: Vec<String> = cfg
            .gateway
            .lans
            .iter()
            .map(|l| format!("{} {}", l.name, list(&l.all_networks().collect::<Vec<_>>())))
            .collect();
        self.fwd.push(stage(
            "ingress",
            StageVerdict::Drop,
            "-",
            format!("src {} is not on any LAN (LANs: {})", f.src, lans.join("; ")),
        ));
        self.advice.push(format!(
            "src {} is not on any LAN of this gateway: trace from an address inside a LAN network ({})",
            f.src,
            lans.join("; ")
        ));
        Err(End::drop(None))
    }

    /// Stage 2, the kernel's route. Returns the tunnel a route into the tunnel device names (if it
    /// names one); a route elsewhere ends the trace: the packet is not protected.
    fn route(
        &mut self,
        lan: &isthmus_config::Lan,
        route: &KernelRoute,
    ) -> Result<Option<String>, End> {
        let (cfg, f) = (self.cfg, self.f);
        let (entry, target) = match route_target(cfg, route, f.dst) {
            Ok(x) => x,
            Err(why) => {
                self.fwd.push(stage(
                    "route",
                    StageVerdict::Drop,
                    format!("no route for {}", f.dst),
                    format!("the kernel: {why}"),
                ));
                self.no_route_advice(lan);
                return Err(End::drop(None));
            }
        };
        self.fwd.push(stage("route", StageVerdict::Pass, entry, ""));
        // Not routed into a tunnel: not protected, and where it goes instead.
        let (verdict, to, detail) = match &target {
            Target::Tun(t) => return Ok(t.clone()),
            Target::Lan(l) => (StageVerdict::Pass, format!("lan {l}"), "LAN to LAN, not protected"),
            Target::Local => (StageVerdict::Pass, "the gateway itself".to_owned(), "not forwarded"),
            Target::Via(a) => (StageVerdict::Pass, format!("via {a}"), "not protected"),
            Target::Dev(d) => (StageVerdict::Pass, format!("dev {d}"), "not protected"),
            Target::Wan(_) => (
                StageVerdict::Warn,
                format!("wan {}", cfg.gateway.wan.interface),
                "in clear: the host firewall's forward chain decides",
            ),
        };
        self.fwd.push(stage("spd", StageVerdict::Skip, "not routed into a tunnel", ""));
        self.fwd.push(stage("egress", verdict, to, detail));
        match target {
            Target::Lan(_) => self.reply.push(stage(
                "route",
                StageVerdict::Pass,
                format!("lan {}", lan.name),
                "reply LAN to LAN",
            )),
            Target::Wan(Some(cg)) => self.advice.push(format!(
                "{} is customer gateway {cg}'s public address: traffic to it is not protected; trace to an address behind it",
                f.dst
            )),
            Target::Wan(None) => self.advice.push(format!(
                "{} is on the WAN network: the gateway does not protect traffic to it",
                f.dst
            )),
            _ => {}
        }
        Err(End::pass())
    }

    /// What to change when the kernel has no route for the destination.
    fn no_route_advice(&mut self, lan: &isthmus_config::Lan) {
        let (cfg, f) = (self.cfg, self.f);
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
            self.advice.push(format!(
                "the gateway gives no Internet access: {} is outside every tunnel's remote networks",
                f.dst
            ));
        } else if let Some(t) = route_mode.first() {
            self.advice
                .push(format!("no route for {} points to tunnel {t}: add one to {table}", f.dst));
        } else {
            let all: Vec<Prefix> =
                cfg.tunnels.iter().filter(|t| t.enabled).flat_map(plan::remote_prefixes).collect();
            self.advice.push(format!(
                "no route for {}: it is outside every tunnel's remote networks ({}); add it to the spd remote of the tunnel that reaches it (and to the peer's local)",
                f.dst,
                list(&all)
            ));
        }
    }

    /// Stage 3, SPD: the dataplane's table, first match (stage 4, network ACLs and security
    /// groups, is the dataplane's own evaluation in [`render_filter`]).
    fn spd(&mut self, route_tunnel: Option<String>) -> Result<Protected<'a>, End> {
        let (cfg, f, view) = (self.cfg, self.f, self.view);
        if self.live.dataplane.is_none() {
            self.fwd.push(stage(
                "spd",
                StageVerdict::Drop,
                "the dataplane does not run",
                "tunnels are not running on this daemon",
            ));
            self.advice.push(
                "tunnels are not running on this daemon: nothing is forwarded into a tunnel".into(),
            );
            return Err(End::drop(None));
        }
        if isthmus_dataplane::link_scoped(&f) {
            self.fwd.push(stage(
                "spd",
                StageVerdict::Drop,
                "link-scoped address",
                "the dataplane drops it (link-scope): link-local addresses and link-local multicast are never forwarded (RFC 4291 §2.5.6, §2.7)",
            ));
            self.advice.push(format!(
                "{} -> {} cannot leave this link: trace between routable addresses",
                f.src, f.dst
            ));
            return Err(End::drop(Some(Drop::LinkScope.as_str())));
        }
        let spd = &view.spd;
        let Some((_, entry)) = spd.lookup(&f) else {
            self.fwd.push(stage(
                "spd",
                StageVerdict::Drop,
                "no entry matches",
                format!(
                    "the dataplane drops it (spd-no-policy); its table (generation {}) has {} entries",
                    spd.generation,
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
            self.advice.push(spd_advice(cand, &f));
            return Err(End::drop(Some(Drop::SpdNoPolicy.as_str())));
        };
        let (tunnel, child) = match &entry.action {
            SpdAction::Protect { tunnel, child } => (tunnel.clone(), child.clone()),
            SpdAction::Bypass | SpdAction::Discard => {
                let counter = if entry.action == SpdAction::Bypass {
                    Drop::SpdBypass.as_str()
                } else {
                    Drop::SpdDiscard.as_str()
                };
                self.fwd.push(stage(
                    "spd",
                    StageVerdict::Drop,
                    entry.id.clone(),
                    format!("{:?}: the dataplane drops it ({counter})", entry.action),
                ));
                self.advice.push(format!(
                    "SPD entry {} {} it: change the spd policy (or its plugin) to protect it",
                    entry.id,
                    if entry.action == SpdAction::Bypass { "bypasses" } else { "discards" }
                ));
                return Err(End::drop(Some(counter)));
            }
        };
        let sel = &entry.selector;
        let selector = format!(
            "{} <-> {}{}",
            sel.local,
            sel.remote,
            sel.proto.map(|p| format!(" {}", proto_name(p))).unwrap_or_default()
        );
        match &route_tunnel {
            Some(rt) if *rt != tunnel => {
                self.fwd.push(stage(
                    "spd",
                    StageVerdict::Warn,
                    format!("{} {selector} -> protect tunnel {tunnel} child {child}", entry.id),
                    format!(
                        "the route names tunnel {rt}, but the SPD decides: it goes through {tunnel}"
                    ),
                ));
                self.advice.push(format!(
                    "the route for {} names tunnel {rt} but the SPD sends it through tunnel {tunnel}: fix the route or the spd entries",
                    f.dst
                ));
            }
            _ => self.fwd.push(stage(
                "spd",
                StageVerdict::Pass,
                format!("{} {selector} -> protect tunnel {tunnel} child {child}", entry.id),
                "",
            )),
        }
        Ok(Protected { entry, tunnel, child, selector })
    }

    /// Stage 5, CHILD SA: the outbound SA installed in the dataplane.
    fn child_sa(&mut self, p: &Protected<'_>) -> Result<OutboundSa, End> {
        let (tunnel, child) = (&p.tunnel, &p.child);
        let tl = self.live.tunnels.get(tunnel).cloned().unwrap_or_default();
        let spi_out = self.view.outbound.get(&(tunnel.clone(), child.clone())).copied();
        let sa = tl.children.iter().find(|c| c.name == *child);
        let (Some(spi_out), Some(sa)) = (spi_out, sa) else {
            let why = format!(
                "tunnel {tunnel} is {}, no outbound SA for CHILD SA {child} in the dataplane",
                if tl.state.is_empty() { "down" } else { &tl.state }
            );
            self.fwd.push(stage(
                "child-sa",
                StageVerdict::Drop,
                why.clone(),
                tl.last_failure.clone().unwrap_or_else(|| {
                    "dropped (never sent in clear) until an SA exists; the packet asks the driver for one"
                        .into()
                }),
            ));
            self.advice.push(format!("{why}: the packet is dropped, never sent in clear; see `isthmus diagnose tunnel {tunnel}`"));
            if let Some(e) = &tl.last_failure {
                self.advice.push(format!("last failure: {e}"));
            }
            return Err(End::drop(Some(Drop::NoSa.as_str())));
        };
        let spi_in = sa.spi_in;
        let ago =
            |s: Option<u64>| s.map(|s| format!("{s} s ago")).unwrap_or_else(|| "never".into());
        let entry = format!("{tunnel}/{child} SPI in 0x{spi_in:08x} out 0x{spi_out:08x}");
        let detail = format!(
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
            self.fwd.push(stage("child-sa", StageVerdict::Warn, entry, detail.clone()));
            self.advice.push(format!(
                "the SA is up but has received nothing for {} s while sending {} packets: the peer is not sending back — check its routes and SPD",
                silent_for.unwrap_or(0),
                thousands(tl.packets_out)
            ));
        } else {
            self.fwd.push(stage("child-sa", StageVerdict::Pass, entry, detail.clone()));
        }
        Ok(OutboundSa { tunnel: tl, spi_out, spi_in, detail, one_way })
    }

    /// Stage 6, MTU: the tunnel's, against the packet's size.
    fn mtu(&mut self, tunnel: &str) {
        let (cfg, f, size) = (self.cfg, self.f, self.q.size);
        let mtu = cfg.tunnel(tunnel).map(|t| t.mtu).unwrap_or(1400);
        if size <= mtu {
            self.fwd.push(stage(
                "mtu",
                StageVerdict::Pass,
                format!("tunnel {tunnel} mtu {mtu} >= {size} bytes"),
                "",
            ));
            return;
        }
        let clamp = cfg.tunnel(tunnel).and_then(|t| t.effective_mss());
        self.fwd.push(stage(
            "mtu",
            StageVerdict::Warn,
            format!("tunnel {tunnel} mtu {mtu} < {size} bytes"),
            "with DF set the packet is dropped (too-big) and ICMP fragmentation-needed returned (path MTU discovery); without DF it is fragmented",
        ));
        self.advice.push(format!(
            "a {size}-byte packet exceeds tunnel {tunnel}'s MTU {mtu}: senders must use path MTU discovery or an MTU of at most {mtu}{}",
            match (f.proto, clamp) {
                (6, Some(m)) => format!(" (TCP SYNs are clamped to MSS {m})"),
                _ => String::new(),
            }
        ));
    }

    /// Stage 7, egress: ESP (in UDP when NAT is on the path) to the customer gateway.
    fn egress(&mut self, tunnel: &str, sa: &OutboundSa) {
        let cfg = self.cfg;
        let tl = &sa.tunnel;
        let peer = cfg
            .tunnel(tunnel)
            .and_then(|t| cfg.customer_gateway(&t.customer_gateway))
            .map(|c| match (tl.encap, tl.peer) {
                (true, Some(p)) => format!("{} ({p})", c.name),
                (false, Some(p)) => format!("{} ({})", c.name, p.ip()),
                (_, None) => format!("{} ({})", c.name, c.address),
            })
            .unwrap_or_default();
        let (how, why) = match (tl.encap, cfg.tunnel(tunnel).map(|t| t.nat_t)) {
            (true, Some(isthmus_config::NatT::Force)) => {
                ("ESP in UDP 4500", "nat_t = force".to_owned())
            }
            (true, _) => (
                "ESP in UDP 4500",
                "NAT detected on the path (RFC 7296 §2.23): ESP is encapsulated in UDP (RFC 3948)"
                    .to_owned(),
            ),
            (false, _) => ("ESP (IP protocol 50)", "no NAT detected".to_owned()),
        };
        self.fwd.push(stage(
            "egress",
            StageVerdict::Pass,
            format!(
                "{how}, SPI 0x{:08x}, to {peer} via wan {}",
                sa.spi_out, cfg.gateway.wan.interface
            ),
            why,
        ));
    }

    /// The reply: the inbound SA, its selector check (RFC 4301 §5.2), then ACLs and security
    /// groups inbound through the state the request created.
    fn reply(
        &mut self,
        lan: &isthmus_config::Lan,
        p: &Protected<'_>,
        sa: OutboundSa,
        chains_out: &[ChainVerdict],
        chains_in: &[ChainVerdict],
    ) -> Result<(), End> {
        let (tunnel, child) = (&p.tunnel, &p.child);
        let r = self.f.reversed();
        self.reply.push(stage(
            "child-sa",
            if sa.one_way { StageVerdict::Warn } else { StageVerdict::Pass },
            format!("{tunnel}/{child} SPI in 0x{:08x}", sa.spi_in),
            if sa.one_way { "nothing arrives from the peer".to_owned() } else { sa.detail },
        ));
        if !p.entry.selector.matches_inbound(&r) {
            self.reply.push(stage(
                "spd",
                StageVerdict::Drop,
                format!("{} inbound", p.entry.id),
                "the reply is outside the CHILD SA's selectors (selector-mismatch)",
            ));
            self.advice.push(format!(
                "the reply {} -> {} is outside the selectors of {tunnel}/{child}",
                r.src, r.dst
            ));
            return Err(End::drop(Some(Drop::SelectorMismatch.as_str())));
        }
        self.reply.push(stage(
            "spd",
            StageVerdict::Pass,
            format!("{} inbound {}", p.entry.id, p.selector),
            "",
        ));
        if let Some(d) =
            render_filter(self.view, tunnel, &r, chains_in, chains_out, true, &mut self.reply)
        {
            self.advice.push(d.advice);
            return Err(End::drop(Some(d.counter)));
        }
        self.reply.push(stage(
            "egress",
            StageVerdict::Pass,
            format!("lan {} ({})", lan.name, lan.interface),
            "",
        ));
        Ok(())
    }
}

/// What to change when no SPD entry matches: the tunnel the packet should go through (the
/// route's, or one whose SPD covers the destination or the source), and what its SPD lacks.
fn spd_advice(cand: Option<&isthmus_config::Tunnel>, f: &FlowKey) -> String {
    match cand {
        Some(t) if !t.enabled => format!("tunnel {} is disabled: enable it", t.name),
        Some(t) => {
            let remote: Vec<Prefix> = t.spd.iter().flat_map(|e| e.remote.iter().copied()).collect();
            let local: Vec<Prefix> = t.spd.iter().flat_map(|e| e.local.iter().copied()).collect();
            if !remote.iter().any(|p| p.contains(f.dst)) {
                format!(
                    "SPD of tunnel {} covers {}, not {}: add {} to its spd remote (and to the peer's local)",
                    t.name,
                    list(&remote),
                    f.dst,
                    f.dst
                )
            } else if !local.iter().any(|p| p.contains(f.src)) {
                format!(
                    "SPD of tunnel {} covers local {}, not {}: add the source network to its spd local (and to the peer's remote)",
                    t.name,
                    list(&local),
                    f.src
                )
            } else {
                format!(
                    "SPD of tunnel {} covers {} -> {} but not {}: widen the spd entry's protocol or ports",
                    t.name,
                    list(&local),
                    list(&remote),
                    service(f)
                )
            }
        }
        None => format!("no tunnel's SPD covers {} -> {}", f.src, f.dst),
    }
}
