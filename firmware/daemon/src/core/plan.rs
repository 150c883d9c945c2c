//! From the configuration to what each plane runs: the kernel's desired state for the net
//! reconciler, the dataplane's settings, and the IKE driver's tunnels.
//!
//! Every tunnel shares one TUN device ([`TUN_NAME`]): the dataplane's SPD chooses the tunnel by
//! selector, so routes only need to bring protected traffic to the device. A tunnel's traffic is
//! routed there whether the tunnel is up or not, so it is dropped (and counted) while no SA
//! exists — never sent out of the WAN in clear.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use isthmus_config::{
    Config, DpdAction, Mode, NatT, NextHop as CfgNextHop, PEER_ROUTE_TABLE, PeerAddress,
    StartAction,
};
use isthmus_ike::{ChildConfig, Identity, Lifetime, Psk, TrafficSelector};
use isthmus_net::{
    Address, DesiredState, FirewallSpec, Link, LinkKind, NextHop, Route, Rule, TABLE_MAIN,
};
use isthmus_tables::Prefix;

/// The TUN device that carries every tunnel's inner traffic.
pub const TUN_NAME: &str = isthmus_config::TUN_DEVICE;

/// Route metric of the catch-all blackholes for tunnel prefixes: worse than any configured
/// route, so they only win when nothing else routes the prefix.
const BLACKHOLE_METRIC: u32 = 4_000_000;

/// The priority of the first policy rule (a LAN network looking up its route table).
pub const RULE_PRIORITY_FIRST: u32 = 1000;

/// The priorities of the rules that send IKE and ESP from the WAN address to
/// [`PEER_ROUTE_TABLE`] (three, before the LANs' rules).
pub const PEER_RULE_PRIORITY: u32 = RULE_PRIORITY_FIRST - 3;

/// The last priority a policy rule may take: the kernel's rule for the main table is at 32766,
/// and a LAN's tables must be looked up before it.
pub const RULE_PRIORITY_LAST: u32 = 32765;

/// What the kernel's desired state holds of the TUN device, by how far the tunnel plane is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TunnelDevice {
    /// The daemon runs no tunnels (`--no-tunnels`): no device and no route into it; the
    /// blackholes of the tunnels' prefixes and the other routes of route tables stay.
    Absent,
    /// The dataplane has not started: the reconciler creates the device (persistent, its IPv6
    /// quiet: see `isthmus_net::tun`) for the dataplane to attach to; no routes into it yet.
    Created,
    /// The dataplane runs: routes bring protected traffic to the device.
    Routed,
}

impl TunnelDevice {
    /// The state for a daemon that runs tunnels or not, whose dataplane runs or not.
    pub fn of(run_tunnels: bool, dataplane_running: bool) -> TunnelDevice {
        match (run_tunnels, dataplane_running) {
            (false, _) => TunnelDevice::Absent,
            (true, false) => TunnelDevice::Created,
            (true, true) => TunnelDevice::Routed,
        }
    }
}

/// The kernel state the configuration asks for, with the TUN device as `tun` says.
pub fn desired_state(cfg: &Config, tun: TunnelDevice) -> DesiredState {
    let gw = &cfg.gateway;
    let mut s = DesiredState::default();
    s.links.push(Link {
        name: gw.wan.interface.clone(),
        up: true,
        mtu: Some(gw.wan.mtu),
        kind: LinkKind::Existing,
    });
    s.addresses.push(addr(&gw.wan.interface, gw.wan.address.addr, gw.wan.address.len));
    for lan in &gw.lans {
        s.links.push(Link {
            name: lan.interface.clone(),
            up: true,
            mtu: Some(lan.mtu),
            kind: LinkKind::Existing,
        });
        for a in &lan.addresses {
            s.addresses.push(addr(&lan.interface, a.addr, a.len));
        }
        if let Some(nh) = lan.next_hop {
            for n in &lan.networks {
                s.routes.push(Route {
                    table: TABLE_MAIN,
                    dst: *n,
                    via: NextHop::Gateway(nh),
                    metric: 100,
                });
            }
        }
    }
    if let Some(m) = &gw.management
        && m.interface != gw.wan.interface
        && !gw.lans.iter().any(|l| l.interface == m.interface)
    {
        s.links.push(Link {
            name: m.interface.clone(),
            up: true,
            mtu: None,
            kind: LinkKind::Existing,
        });
        s.addresses.push(addr(&m.interface, m.address.addr, m.address.len));
    }
    // The WAN's upstream: only customer gateways are reachable through it (the gateway gives no
    // path to the Internet), so host routes to each peer rather than a default route.
    for a in cfg.customer_gateways.iter().filter_map(|cg| cg.address.ip()) {
        if !gw.wan.address.network().contains(a) {
            s.routes.push(Route {
                table: TABLE_MAIN,
                dst: Prefix::host(a),
                via: NextHop::Gateway(gw.wan.next_hop),
                metric: 50,
            });
        }
    }
    // Peers without a fixed address (`any`, a DNS name) may be anywhere: the WAN's default
    // route, in a table that only IKE (UDP 500 and 4500) and ESP sent from the WAN address
    // look up. LAN traffic still finds no route to the Internet.
    if cfg.customer_gateways.iter().any(|cg| cg.address.ip().is_none()) {
        let wan = gw.wan.address.addr;
        let any = Prefix::new(unspecified(wan), 0).expect("length 0 fits every family");
        s.routes.push(Route {
            table: PEER_ROUTE_TABLE,
            dst: any,
            via: NextHop::Gateway(gw.wan.next_hop),
            metric: 0,
        });
        let from = Some(Prefix::host(wan));
        for (k, (ip_proto, sport)) in
            [(17, Some(500)), (17, Some(isthmus_tunnels::driver::NAT_T_PORT)), (50, None)]
                .into_iter()
                .enumerate()
        {
            s.rules.push(Rule {
                priority: PEER_RULE_PRIORITY + k as u32,
                from,
                to: None,
                ip_proto: Some(ip_proto),
                sport,
                table: PEER_ROUTE_TABLE,
            });
        }
    }
    if tun != TunnelDevice::Absent {
        let kind = LinkKind::Tun { multi_queue: false };
        s.links.push(Link { name: TUN_NAME.into(), up: true, mtu: None, kind });
    }
    if tun != TunnelDevice::Created {
        // Every remote prefix of every tunnel goes to the TUN device (the SPD decides which SA).
        for t in cfg.tunnels.iter().filter(|t| t.enabled) {
            for p in remote_prefixes(t) {
                s.routes.push(Route {
                    table: TABLE_MAIN,
                    dst: p,
                    via: NextHop::Interface(TUN_NAME.into()),
                    metric: 100,
                });
                // Should the route above be removed, protected traffic still never leaves in clear.
                s.routes.push(Route {
                    table: TABLE_MAIN,
                    dst: p,
                    via: NextHop::Blackhole,
                    metric: BLACKHOLE_METRIC,
                });
            }
        }
        for rt in &cfg.route_tables {
            for r in &rt.routes {
                let via = match r.next_hop() {
                    Some(CfgNextHop::Tunnel(_)) => NextHop::Interface(TUN_NAME.into()),
                    // A router on a LAN: the kernel finds the interface it is reachable on.
                    Some(CfgNextHop::Interface(_, Some(g))) => NextHop::Gateway(g),
                    Some(CfgNextHop::Interface(i, None)) => NextHop::Interface(lan_ifname(cfg, i)),
                    Some(CfgNextHop::Address(a)) => NextHop::Gateway(a),
                    None => continue,
                };
                // Validation refuses the reserved ids (0, 253–255): `id` is the kernel table.
                s.routes.push(Route { table: rt.id, dst: r.prefix, via, metric: r.metric });
            }
        }
        s.rules.extend(lan_rules(cfg));
        if tun == TunnelDevice::Absent {
            s.routes.retain(|r| r.via != NextHop::Interface(TUN_NAME.into()));
        }
        s.routes.sort_by_key(|r| (r.table, r.dst, r.metric));
        s.routes.dedup_by(|a, b| a.table == b.table && a.dst == b.dst && a.metric == b.metric);
    }
    s.firewall = Some(FirewallSpec {
        wan_if: gw.wan.interface.clone(),
        wan_addrs: vec![gw.wan.address.addr],
        mgmt_if: gw.management.as_ref().map(|m| m.interface.clone()),
        mgmt_port: gw.management.as_ref().map(|m| m.port).unwrap_or(8443),
        lan_ifs: gw.lans.iter().map(|l| l.interface.clone()).collect(),
        tunnel_ifs: vec![TUN_NAME.into()],
        wan_echo: true,
    });
    s
}

/// The route tables a LAN looks up, in order: the table that names it in `lans`, else every
/// table with `lans = []` ("every LAN not bound to another table"), in the order written (a
/// lookup that finds no route falls through to the next rule, and finally to `main`).
pub fn lan_tables<'a>(cfg: &'a Config, lan: &str) -> Vec<&'a isthmus_config::RouteTable> {
    let bound: Vec<_> =
        cfg.route_tables.iter().filter(|t| t.lans.iter().any(|l| l == lan)).collect();
    if !bound.is_empty() {
        return bound;
    }
    cfg.route_tables.iter().filter(|t| t.lans.is_empty()).collect()
}

/// The policy rules: each network of each LAN (its on-link subnets and the `networks` behind
/// it) looks up the LAN's tables. Every rule has its own priority (the kernel orders rules by
/// it; two rules at one priority would have no defined order, and the reconciler refuses
/// them), counted up from [`RULE_PRIORITY_FIRST`]. Networks of different LANs never overlap
/// (validation), so the order between LANs does not matter; within a LAN a network covered by
/// another of the same LAN adds nothing and gets no rule.
pub fn lan_rules(cfg: &Config) -> Vec<Rule> {
    let mut rules = Vec::new();
    for lan in &cfg.gateway.lans {
        let tables = lan_tables(cfg, &lan.name);
        let all: Vec<Prefix> = lan.all_networks().collect();
        let mut nets: Vec<Prefix> = Vec::new();
        for (i, n) in all.iter().enumerate() {
            // Kept when no other network of the LAN covers it (of equal ones, the first).
            let covered = all.iter().enumerate().any(|(j, o)| o.covers(n) && (o != n || j < i));
            if !covered {
                nets.push(*n);
            }
        }
        for n in nets {
            for t in &tables {
                rules.push(Rule {
                    priority: 0,
                    from: Some(n),
                    to: None,
                    ip_proto: None,
                    sport: None,
                    table: t.id,
                });
            }
        }
    }
    for (k, r) in rules.iter_mut().enumerate() {
        r.priority = RULE_PRIORITY_FIRST.saturating_add(u32::try_from(k).unwrap_or(u32::MAX));
    }
    rules
}

/// Whether `cfg` can be planned: the kernel state it asks for is consistent (unique rule
/// priorities below the main table's rule, no route listed twice, interface names the kernel
/// accepts). Validation runs this too, so a configuration that validates also applies as far
/// as the configuration alone decides.
pub fn check(cfg: &Config) -> Result<(), String> {
    let s = desired_state(cfg, TunnelDevice::Routed);
    if let Some(last) = s.rules.last()
        && last.priority > RULE_PRIORITY_LAST
    {
        return Err(format!(
            "route_table: the LANs' networks need {} policy rules, but at most {} fit before the main table's rule; bind fewer networks or tables",
            s.rules.len(),
            RULE_PRIORITY_LAST - RULE_PRIORITY_FIRST + 1
        ));
    }
    s.validate().map_err(|e| format!("planning the kernel state: {e}"))
}

fn lan_ifname(cfg: &Config, name: &str) -> String {
    cfg.lan(name).map(|l| l.interface.clone()).unwrap_or_else(|| name.to_owned())
}

fn addr(ifname: &str, ip: IpAddr, len: u8) -> Address {
    Address { ifname: ifname.to_owned(), ip, prefix_len: len }
}

/// The remote prefixes a tunnel protects.
pub fn remote_prefixes(t: &isthmus_config::Tunnel) -> Vec<Prefix> {
    let mut v: Vec<Prefix> = t.spd.iter().flat_map(|e| e.remote.iter().copied()).collect();
    v.sort();
    v.dedup();
    v
}

/// The dataplane's settings.
pub fn dataplane_config(cfg: &Config) -> isthmus_dataplane::Config {
    let mut d = isthmus_dataplane::Config::new(TUN_NAME, cfg.gateway.wan.address.addr);
    d.tunnel_mtu = cfg.gateway.wan.mtu;
    // The device takes the smallest inner MTU of all tunnels (enabled or not), so that every
    // tunnel's packets fit; per-tunnel clamping happens in the dataplane.
    d.tun_mtu = cfg.tunnels.iter().map(|t| t.mtu).min();
    d.mss_clamp = cfg.tunnels.iter().any(|t| t.effective_mss().is_some());
    d
}

fn ts(p: Prefix, proto: Option<u8>, ports: isthmus_tables::PortRange) -> TrafficSelector {
    let mut s = TrafficSelector::from_prefix(p);
    s.proto = proto.unwrap_or(0);
    s.ports = ports;
    s
}

/// Why a tunnel could not be turned into an IKE configuration (validation catches these first;
/// this is the last line of defence, and it names the tunnel).
#[derive(Debug, thiserror::Error)]
#[error("tunnel `{tunnel}`: {why}")]
pub struct PlanError {
    /// The tunnel.
    pub tunnel: String,
    /// What is wrong.
    pub why: String,
}

/// The IKE driver's tunnels: one CHILD SA per SPD entry (route mode: one for any <-> any).
/// Secrets are resolved here, and only here.
pub fn ike_tunnels(cfg: &Config) -> Result<Vec<isthmus_tunnels::Tunnel>, PlanError> {
    cfg.tunnels
        .iter()
        .filter(|t| t.enabled && peer_address(cfg, t).is_some())
        .map(|t| ike_tunnel(cfg, t))
        .collect()
}

/// The address of `t`'s customer gateway as the driver sees it: its fixed address, the
/// unspecified address for `any` (the endpoint then matches the peer by identity wherever it
/// comes from), or what its DNS name resolved to; `None` while the name has no answer (or the
/// gateway is not configured), and the tunnel waits.
pub fn peer_address(cfg: &Config, t: &isthmus_config::Tunnel) -> Option<IpAddr> {
    let wan = cfg.gateway.wan.address.addr;
    match &cfg.customer_gateway(&t.customer_gateway)?.address {
        PeerAddress::Ip(a) => Some(*a),
        PeerAddress::Any => Some(unspecified(wan)),
        PeerAddress::Name(n) => super::resolve::address(n, wan.is_ipv4()),
    }
}

/// The unspecified address of `like`'s family.
fn unspecified(like: IpAddr) -> IpAddr {
    match like {
        IpAddr::V4(_) => std::net::Ipv4Addr::UNSPECIFIED.into(),
        IpAddr::V6(_) => std::net::Ipv6Addr::UNSPECIFIED.into(),
    }
}

/// The IKE driver's configuration of one tunnel (see [`ike_tunnels`]).
pub fn ike_tunnel(
    cfg: &Config,
    t: &isthmus_config::Tunnel,
) -> Result<isthmus_tunnels::Tunnel, PlanError> {
    let wan = cfg.gateway.wan.address.addr;
    {
        let err = |why: String| PlanError { tunnel: t.name.clone(), why };
        let cg = cfg.customer_gateway(&t.customer_gateway).ok_or_else(|| {
            err(format!("customer gateway `{}` is not configured", t.customer_gateway))
        })?;
        let psk = t.psk.resolve().map_err(|e| err(e.to_string()))?;
        let ike_proposals = isthmus_ike::proposal::parse_ike_list(&t.ike_proposals.join(","))
            .map_err(|e| err(format!("ike_proposals: {e}")))?;
        let esp_proposals = isthmus_ike::proposal::parse_esp_list(&t.esp_proposals.join(","))
            .map_err(|e| err(format!("esp_proposals: {e}")))?;
        let life = |life: Duration, margin: Duration| Lifetime {
            rekey_time: life.saturating_sub(margin),
            rand_time: margin * t.rekey_fuzz_percent.min(100) / 100 / 2,
            life_time: life,
        };
        let child_life = life(t.child_lifetime.as_duration(), t.child_rekey_margin.as_duration());
        let children: Vec<ChildConfig> = match t.mode {
            Mode::Route => {
                let any4 =
                    Prefix::new(IpAddr::from([0, 0, 0, 0]), 0).map_err(|e| err(e.to_string()))?;
                vec![ChildConfig {
                    name: t.name.clone(),
                    local_ts: vec![TrafficSelector::from_prefix(any4)],
                    remote_ts: vec![TrafficSelector::from_prefix(any4)],
                    esp_proposals: esp_proposals.clone(),
                    lifetime: child_life,
                }]
            }
            Mode::Policy => t
                .spd
                .iter()
                .enumerate()
                .map(|(i, e)| ChildConfig {
                    name: if i == 0 { t.name.clone() } else { format!("{}-{i}", t.name) },
                    local_ts: e
                        .local
                        .iter()
                        .map(|p| ts(*p, e.protocol.number(), e.local_ports))
                        .collect(),
                    remote_ts: e
                        .remote
                        .iter()
                        .map(|p| ts(*p, e.protocol.number(), e.remote_ports))
                        .collect(),
                    esp_proposals: esp_proposals.clone(),
                    lifetime: child_life,
                })
                .collect(),
        };
        if children.is_empty() {
            return Err(err("policy mode needs at least one spd entry".into()));
        }
        let local_id: Identity = match &t.local_id {
            Some(s) => s.parse().map_err(|e| err(format!("local_id: {e}")))?,
            None => wan.into(),
        };
        let remote = peer_address(cfg, t).ok_or_else(|| {
            let why = match &cg.address {
                PeerAddress::Name(n) => match super::resolve::answer(n, wan.is_ipv4()) {
                    Some(super::resolve::Answer::Failed(why)) => why,
                    _ => format!("{n} has not been resolved yet"),
                },
                a => format!("{a} is not an address"),
            };
            err(format!("customer gateway `{}`: {why}", cg.name))
        })?;
        let remote_id: Identity = cg
            .ike_identity(Some(remote))
            .unwrap_or_else(|| remote.to_string())
            .parse()
            .map_err(|e| err(format!("ike_id: {e}")))?;
        let mut ike = isthmus_ike::TunnelConfig::new(
            &t.name,
            SocketAddr::new(wan, 500),
            SocketAddr::new(remote, 500),
            Psk::new(psk.expose().as_bytes().to_vec()),
            Vec::new(),
            Vec::new(),
        );
        ike.local_id = local_id;
        ike.remote_id = remote_id;
        ike.ike_proposals = ike_proposals;
        ike.ike_lifetime = life(t.ike_lifetime.as_duration(), t.ike_rekey_margin.as_duration());
        ike.children = children;
        ike.dpd = isthmus_ike::Dpd {
            delay: if t.dpd_enabled() { t.dpd.delay.as_duration() } else { Duration::ZERO },
            timeout: t.dpd.timeout.as_duration(),
            action: match t.dpd.action {
                // Restarting would initiate to a peer we cannot address; it comes back itself.
                _ if cg.address == PeerAddress::Any => isthmus_ike::DpdAction::Clear,
                DpdAction::Clear => isthmus_ike::DpdAction::Clear,
                DpdAction::Restart | DpdAction::None => isthmus_ike::DpdAction::Restart,
            },
        };
        ike.force_nat_t = t.nat_t == NatT::Force;
        ike.start_action = match t.start_action {
            StartAction::Start => isthmus_ike::StartAction::Start,
            StartAction::Trap => isthmus_ike::StartAction::Trap,
            StartAction::None => isthmus_ike::StartAction::None,
        };
        ike.version = match t.ike_version {
            isthmus_config::IkeVersion::V2 => isthmus_ike::IkeVersion::V2,
            isthmus_config::IkeVersion::V1 => isthmus_ike::IkeVersion::V1,
            isthmus_config::IkeVersion::Any => isthmus_ike::IkeVersion::Any,
        };
        ike.aggressive = t.aggressive_mode;
        let close_action = match t.start_action {
            StartAction::Start => isthmus_tunnels::CloseAction::Restart,
            _ => isthmus_tunnels::CloseAction::None,
        };
        Ok(isthmus_tunnels::Tunnel { ike, close_action })
    }
}

/// The tunnels that run the same in `old` and `new`, found without looking at secrets: same
/// settings, same customer gateway, same WAN address, and a PSK written inline (a PSK in a file
/// or the environment can change behind the text, so those tunnels are fingerprinted instead).
pub fn unchanged_tunnels<'a>(old: &Config, new: &'a Config) -> std::collections::HashSet<&'a str> {
    use std::collections::HashMap;
    let mut out = std::collections::HashSet::new();
    if old.gateway.wan.address != new.gateway.wan.address {
        return out;
    }
    let tunnels: HashMap<&str, &isthmus_config::Tunnel> =
        old.tunnels.iter().map(|t| (t.name.as_str(), t)).collect();
    let old_cgs: HashMap<&str, &isthmus_config::CustomerGateway> =
        old.customer_gateways.iter().map(|g| (g.name.as_str(), g)).collect();
    let new_cgs: HashMap<&str, &isthmus_config::CustomerGateway> =
        new.customer_gateways.iter().map(|g| (g.name.as_str(), g)).collect();
    for t in &new.tunnels {
        let cg = new_cgs.get(t.customer_gateway.as_str());
        // A DNS name can resolve differently now: such tunnels are fingerprinted.
        let same = tunnels.get(t.name.as_str()).is_some_and(|o| *o == t)
            && matches!(t.psk, isthmus_config::Secret::Inline(_))
            && !cg.is_some_and(|g| matches!(g.address, PeerAddress::Name(_)))
            && old_cgs.get(t.customer_gateway.as_str()) == cg;
        if same {
            out.insert(t.name.as_str());
        }
    }
    out
}

/// Where the time of a commit went, stage by stage.
#[derive(Debug, Clone, Default)]
pub struct Stages {
    stages: Vec<(&'static str, Duration)>,
    last: Option<std::time::Instant>,
}

impl Stages {
    /// Starts the clock.
    pub fn start() -> Stages {
        Stages { stages: Vec::new(), last: Some(std::time::Instant::now()) }
    }

    /// Ends stage `name` (it ran since the previous mark).
    pub fn mark(&mut self, name: &'static str) {
        let now = std::time::Instant::now();
        if let Some(l) = self.last {
            self.stages.push((name, now - l));
        }
        self.last = Some(now);
    }

    /// Appends the stages of `other` (which ran after these).
    pub fn extend(&mut self, other: &Stages) {
        self.stages.extend(other.stages.iter().copied());
        self.last = other.last.or(self.last);
    }

    /// The stages in order, with their durations (a stage marked twice is summed).
    pub fn list(&self) -> Vec<(&'static str, Duration)> {
        let mut out: Vec<(&'static str, Duration)> = Vec::new();
        for (n, d) in &self.stages {
            match out.iter_mut().find(|(m, _)| m == n) {
                Some((_, t)) => *t += *d,
                None => out.push((n, *d)),
            }
        }
        out
    }
}

impl std::fmt::Display for Stages {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let parts: Vec<String> = self
            .list()
            .iter()
            .map(|(n, d)| format!("{n} {:.1} ms", d.as_secs_f64() * 1000.0))
            .collect();
        f.write_str(&parts.join(", "))
    }
}

/// A fingerprint of what the driver runs for a tunnel, to tell which tunnels a commit changed
/// (the PSK enters as its hash, never in clear).
pub fn tunnel_fingerprint(cfg: &Config, name: &str) -> String {
    use sha2::{Digest, Sha256};
    let Some(t) = cfg.tunnel(name) else { return String::new() };
    let cg = cfg.customer_gateway(&t.customer_gateway);
    let psk = t.psk.resolve().map(|v| v.fingerprint()).unwrap_or_default();
    let peer = peer_address(cfg, t);
    let text = format!("{t:?}|{cg:?}|{peer:?}|{psk}|{}", cfg.gateway.wan.address.addr);
    hex::encode(Sha256::digest(text.as_bytes()))
}

/// The kernel side of the apply pipeline: the reconciler and the state it last brought the
/// kernel to, so that the next apply sends only what changed.
#[derive(Debug, Default)]
pub struct NetPlane {
    /// The netlink reconciler (opened on the first apply).
    pub rec: Option<isthmus_net::Reconciler>,
    /// What the kernel was last brought to; `None` when unknown (never applied, or an apply
    /// failed half-way), and the next apply then plans against a full dump of the kernel.
    pub desired: Option<DesiredState>,
    /// When the kernel was last compared with `desired`.
    pub checked: Option<std::time::Instant>,
}

/// How often the daemon compares the kernel with the applied state.
pub const DRIFT_EVERY: Duration = Duration::from_secs(5);

fn kernel_lines(plan: &isthmus_net::Plan) -> Vec<String> {
    plan.changes().iter().map(|c| format!("kernel: {c}")).collect()
}

impl NetPlane {
    /// Brings the kernel to `desired` and returns the changes made, one line each.
    ///
    /// Incremental: the plan is the difference between the last applied state and `desired`
    /// (links, addresses and the firewall are read from the kernel, routes and rules are not
    /// dumped), so one changed route is one netlink message. Should that plan fail (someone
    /// changed the kernel since), the kernel is read in full and planned against.
    pub fn apply(&mut self, desired: DesiredState) -> Result<Vec<String>, String> {
        let rec = match &mut self.rec {
            Some(r) => r,
            None => self
                .rec
                .insert(isthmus_net::Reconciler::new().map_err(|e| format!("netlink: {e}"))?),
        };
        let old = self.desired.take();
        if let Some(old) = &old {
            let plan = rec
                .plan_change(old, &desired)
                .map_err(|e| format!("planning kernel changes: {e}"))?;
            match rec.apply(&plan) {
                Ok(_) => {
                    self.desired = Some(desired);
                    return Ok(kernel_lines(&plan));
                }
                Err(e) => tracing::info!(
                    "the kernel differs from the last applied state ({e}); planning against it"
                ),
            }
        }
        let plan = rec.plan(&desired).map_err(|e| format!("planning kernel changes: {e}"))?;
        rec.apply(&plan).map_err(|e| format!("applying kernel changes: {e}"))?;
        self.desired = Some(desired);
        self.checked = Some(std::time::Instant::now());
        Ok(kernel_lines(&plan))
    }

    /// What differs between the kernel and the last applied state (someone deleted a route by
    /// hand, a link went down), repaired; one line per difference. Objects Isthmus does not own
    /// are not looked at.
    pub fn repair_drift(&mut self) -> Result<Vec<String>, String> {
        self.checked = Some(std::time::Instant::now());
        let (Some(rec), Some(desired)) = (self.rec.as_mut(), self.desired.as_ref()) else {
            return Ok(Vec::new());
        };
        let plan = rec.plan(desired).map_err(|e| format!("reading the kernel: {e}"))?;
        if plan.is_empty() {
            return Ok(Vec::new());
        }
        let lines = plan.changes().iter().map(|c| c.as_drift().to_string()).collect();
        rec.apply(&plan).map_err(|e| format!("repairing drift: {e}"))?;
        Ok(lines)
    }

    /// Whether [`DRIFT_EVERY`] has passed since the last comparison (or apply).
    pub fn drift_check_due(&self) -> bool {
        self.checked.is_none_or(|t| t.elapsed() >= DRIFT_EVERY)
    }

    /// What applying `desired` would change, against the kernel as it is (a dry run).
    pub fn dry_run(&mut self, desired: &DesiredState) -> Result<Vec<String>, String> {
        match self.rec.as_mut() {
            Some(rec) => rec
                .plan(desired)
                .map(|p| kernel_lines(&p))
                .map_err(|e| format!("planning kernel changes: {e}")),
            None => Ok(Vec::new()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(psk: &str, remote: &str) -> Config {
        let toml = isthmus_testkit::config::Gateway::new("gw")
            .wan("wan0", "192.0.2.1/24", "192.0.2.254")
            .lan("app", "lan0", "10.1.0.1/24")
            .customer_gateway("a", "198.51.100.1")
            .customer_gateway("b", "198.51.100.2")
            .push(&format!(
                r#"[[tunnel]]
name = "ta"
customer_gateway = "a"
psk = {psk}
[[tunnel.spd]]
local = "10.1.0.0/24"
remote = "10.2.0.0/24"
[[tunnel]]
name = "tb"
customer_gateway = "b"
psk = "0123456789abcdef0123456789abcdef"
[[tunnel.spd]]
local = "10.1.0.0/24"
remote = "{remote}"
"#
            ))
            .toml();
        Config::from_toml(&toml).expect("parses")
    }

    #[test]
    fn peers_without_a_fixed_address_get_the_wan_default_for_ike_and_esp_only() {
        let fixed = desired_state(
            &cfg("\"0123456789abcdef0123456789abcdef\"", "10.3.0.0/24"),
            TunnelDevice::Routed,
        );
        assert!(fixed.rules.iter().all(|r| r.table != PEER_ROUTE_TABLE));
        let text = isthmus_testkit::config::Gateway::new("gw")
            .wan("wan0", "192.0.2.1/24", "192.0.2.254")
            .lan("app", "lan0", "10.1.0.1/24")
            .push(
                "[[customer_gateway]]\nname = \"b\"\naddress = \"any\"\nike_id = \"@b.example\"\n\
                 [[tunnel]]\nname = \"tb\"\ncustomer_gateway = \"b\"\nstart_action = \"none\"\n\
                 psk = \"0123456789abcdef0123456789abcdef\"\n[tunnel.dpd]\naction = \"restart\"\n\
                 [[tunnel.spd]]\nlocal = \"10.1.0.0/24\"\nremote = \"10.2.0.0/24\"\n",
            )
            .toml();
        let c = Config::from_toml(&text).unwrap();
        let s = desired_state(&c, TunnelDevice::Routed);
        let rules: Vec<String> = s.rules.iter().map(|r| r.to_string()).collect();
        assert_eq!(
            rules[..3],
            [
                "priority 997 from 192.0.2.1/32 ipproto 17 sport 500 lookup 252",
                "priority 998 from 192.0.2.1/32 ipproto 17 sport 4500 lookup 252",
                "priority 999 from 192.0.2.1/32 ipproto 50 lookup 252",
            ]
        );
        let peer_routes: Vec<String> = s
            .routes
            .iter()
            .filter(|r| r.table == PEER_ROUTE_TABLE)
            .map(|r| r.to_string())
            .collect();
        assert_eq!(peer_routes, ["0.0.0.0/0 via 192.0.2.254 table 252 metric 0"]);
        assert!(!s.routes.iter().any(|r| r.table == TABLE_MAIN && r.dst.is_default()));
        // The driver answers it from any address, matched by identity; DPD cannot restart it.
        let t = &ike_tunnels(&c).unwrap()[0].ike;
        assert!(t.remote.ip().is_unspecified());
        assert_eq!(t.remote_id.to_string(), "b.example");
        assert_eq!(t.dpd.action, isthmus_ike::DpdAction::Clear);
    }

    #[test]
    fn only_changed_tunnels_and_those_with_outside_secrets_are_fingerprinted() {
        let inline = "\"0123456789abcdef0123456789abcdef\"";
        let old = cfg(inline, "10.3.0.0/24");
        let new = cfg(inline, "10.4.0.0/24");
        let same = unchanged_tunnels(&old, &new);
        assert!(same.contains("ta") && !same.contains("tb"), "{same:?}");
        // A PSK from the environment can change behind the same text.
        let env = "{ env = \"ISTHMUS_TEST_PSK\" }";
        let (a, b) = (cfg(env, "10.3.0.0/24"), cfg(env, "10.3.0.0/24"));
        let same = unchanged_tunnels(&a, &b);
        assert!(!same.contains("ta") && same.contains("tb"), "{same:?}");
    }

    #[test]
    fn ike_version_and_aggressive_mode_reach_the_driver_and_a_change_recreates_the_tunnel() {
        let inline = "\"0123456789abcdef0123456789abcdef\"";
        let old = cfg(inline, "10.3.0.0/24");
        let t = &ike_tunnels(&old).unwrap()[0].ike;
        assert_eq!((t.version, t.aggressive), (isthmus_ike::IkeVersion::V2, false));
        let mut new = old.clone();
        new.tunnels[0].ike_version = isthmus_config::IkeVersion::V1;
        new.tunnels[0].aggressive_mode = true;
        let t = &ike_tunnels(&new).unwrap()[0].ike;
        assert_eq!((t.version, t.aggressive), (isthmus_ike::IkeVersion::V1, true));
        let same = unchanged_tunnels(&old, &new);
        assert!(!same.contains("ta") && same.contains("tb"), "{same:?}");
        new.tunnels[0].ike_version = isthmus_config::IkeVersion::Any;
        new.tunnels[0].aggressive_mode = false;
        assert_eq!(ike_tunnels(&new).unwrap()[0].ike.version, isthmus_ike::IkeVersion::Any);
        assert!(!unchanged_tunnels(&old, &new).contains("ta"));
        assert_ne!(tunnel_fingerprint(&old, "ta"), tunnel_fingerprint(&new, "ta"));
    }

    /// A gateway with `lans` (name, extra `networks`) and `tables` (id, bound LANs).
    fn routed(lans: &[(&str, &[&str])], tables: &[(u32, &[&str])]) -> String {
        let mut g =
            isthmus_testkit::config::Gateway::new("gw").wan("wan0", "192.0.2.1/24", "192.0.2.254");
        for (i, (name, nets)) in lans.iter().enumerate() {
            g = g.routed_lan(
                name,
                &format!("lan{i}"),
                &[&format!("10.{i}.0.1/24"), &format!("fd00:{i}::1/64")],
                nets,
                Some(&format!("10.{i}.0.254")),
            );
        }
        let mut t = g.toml();
        for (id, bound) in tables {
            let bound: Vec<String> = bound.iter().map(|n| format!("\"{n}\"")).collect();
            t += &format!(
                "[[route_table]]\nname = \"t{id}\"\nid = {id}\nlans = [{}]\n[[route_table.route]]\nprefix = \"172.16.{}.0/24\"\nvia = \"10.0.0.9\"\n",
                bound.join(", "),
                id % 250
            );
        }
        t
    }

    /// Anything that validates must plan: every combination of LANs with networks beyond their
    /// subnets (covered, disjoint, IPv6) and route tables bound to some LANs or to none (with
    /// ids equal modulo 1000, which the old priority formula folded together).
    #[test]
    fn every_valid_combination_of_lans_networks_and_tables_plans() {
        let nets: [&[&str]; 4] = [
            &[],
            &["10.0.0.0/16"],
            &["10.0.0.0/16", "10.0.5.0/24", "172.31.0.0/16", "fd00:0:0:8000::/49"],
            &["10.0.0.0/16", "10.0.0.0/16"],
        ];
        let ids = [100u32, 1100, 7];
        let bindings: [&[&str]; 5] = [&[], &["a"], &["b"], &["a", "b"], &["c"]];
        let (mut planned, mut refused) = (0, 0);
        for na in nets {
            for nb in [&[][..], &["10.1.0.0/16", "10.1.9.0/24"][..]] {
                let lans = [("a", na), ("b", nb), ("c", &[][..])];
                for n_tables in 0..=ids.len() {
                    for combo in 0..bindings.len().pow(n_tables as u32) {
                        let mut c = combo;
                        let tables: Vec<(u32, &[&str])> = ids[..n_tables]
                            .iter()
                            .map(|id| {
                                let b = bindings[c % bindings.len()];
                                c /= bindings.len();
                                (*id, b)
                            })
                            .collect();
                        let text = routed(&lans, &tables);
                        let Ok(checked) = Config::check(&text) else {
                            refused += 1;
                            continue;
                        };
                        let cfg = checked.config;
                        check(&cfg).unwrap_or_else(|e| panic!("{e}\n{text}"));
                        let rules = desired_state(&cfg, TunnelDevice::Routed).rules;
                        // Every LAN that looks up a table has a rule for each of its subnets.
                        for lan in &cfg.gateway.lans {
                            for t in lan_tables(&cfg, &lan.name) {
                                for a in &lan.addresses {
                                    assert!(
                                        rules.iter().any(|r| r.table == t.id
                                            && r.from.is_some_and(|f| f.covers(&a.network()))),
                                        "LAN {} does not look up table {}:\n{text}\n{rules:?}",
                                        lan.name,
                                        t.id
                                    );
                                }
                            }
                        }
                        planned += 1;
                    }
                }
            }
        }
        assert!(planned > 100, "planned {planned}, refused {refused}");
    }

    #[test]
    fn a_lan_with_networks_gets_one_rule_per_network_each_with_its_own_priority() {
        let text = routed(&[("a", &["10.0.0.0/16", "172.31.0.0/16"])], &[(100, &["a"])]);
        let cfg = Config::from_toml(&text).unwrap();
        let rules: Vec<String> =
            desired_state(&cfg, TunnelDevice::Routed).rules.iter().map(|r| r.to_string()).collect();
        assert_eq!(
            rules,
            [
                "priority 1000 from fd00::/64 lookup 100",
                "priority 1001 from 10.0.0.0/16 lookup 100",
                "priority 1002 from 172.31.0.0/16 lookup 100",
            ],
        );
    }

    /// `lans = []` means every LAN not bound to another table (docs/config.md): those LANs look
    /// the table up; a LAN bound elsewhere does not.
    #[test]
    fn a_table_without_lans_is_looked_up_by_every_unbound_lan() {
        let text = routed(&[("a", &[]), ("b", &[])], &[(100, &[]), (200, &["b"])]);
        let cfg = Config::from_toml(&text).unwrap();
        let rules: Vec<String> =
            desired_state(&cfg, TunnelDevice::Routed).rules.iter().map(|r| r.to_string()).collect();
        assert_eq!(
            rules,
            [
                "priority 1000 from 10.0.0.0/24 lookup 100",
                "priority 1001 from fd00::/64 lookup 100",
                "priority 1002 from 10.1.0.0/24 lookup 200",
                "priority 1003 from fd00:1::/64 lookup 200",
            ]
        );
    }

    /// Every complete configuration in docs/ plans (the site-A example did not: `rule priority
    /// 2000 is used twice`). Applying them in a namespace is `tests/apply_netns.rs`.
    #[test]
    fn every_docs_example_plans() {
        let examples = isthmus_testkit::docs::examples();
        assert!(!examples.is_empty());
        for e in examples {
            let cfg = Config::from_toml(&e.text).unwrap_or_else(|err| panic!("{}: {err}", e.name));
            check(&cfg).unwrap_or_else(|err| panic!("{} ({}): {err}", e.name, e.page));
        }
    }

    #[test]
    fn stages_sum_repeated_marks_in_order() {
        let mut s = Stages::start();
        s.mark("kernel");
        s.mark("tunnels");
        s.mark("kernel");
        let names: Vec<&str> = s.list().iter().map(|(n, _)| *n).collect();
        assert_eq!(names, ["kernel", "tunnels"]);
        assert!(s.to_string().starts_with("kernel ") && s.to_string().contains(" ms, tunnels "));
    }
}
