//! From the configuration to what each plane runs: the kernel's desired state for the net
//! reconciler, the dataplane's settings, and the IKE driver's tunnels.
//!
//! Every tunnel shares one TUN device ([`TUN_NAME`]): the dataplane's SPD chooses the tunnel by
//! selector, so routes only need to bring protected traffic to the device. A tunnel's traffic is
//! routed there whether the tunnel is up or not, so it is dropped (and counted) while no SA
//! exists — never sent out of the WAN in clear.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use isthmus_config::{Config, DpdAction, Mode, NatT, NextHop as CfgNextHop, StartAction};
use isthmus_ike::{ChildConfig, Identity, Lifetime, Psk, TrafficSelector};
use isthmus_net::{
    Address, DesiredState, FirewallSpec, Link, LinkKind, NextHop, Route, Rule, TABLE_MAIN,
};
use isthmus_tables::Prefix;

/// The TUN device that carries every tunnel's inner traffic.
pub const TUN_NAME: &str = "ist0";

/// Route metric of the catch-all blackholes for tunnel prefixes: worse than any configured
/// route, so they only win when nothing else routes the prefix.
const BLACKHOLE_METRIC: u32 = 4_000_000;

/// The kernel state the configuration asks for. With `with_tunnel_routes` false, routes through
/// the TUN device are left out (the device appears only when the dataplane starts).
pub fn desired_state(cfg: &Config, with_tunnel_routes: bool) -> DesiredState {
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
    for cg in &cfg.customer_gateways {
        if !gw.wan.address.network().contains(cg.address) {
            s.routes.push(Route {
                table: TABLE_MAIN,
                dst: Prefix::host(cg.address),
                via: NextHop::Gateway(gw.wan.next_hop),
                metric: 50,
            });
        }
    }
    if with_tunnel_routes {
        s.links.push(Link { name: TUN_NAME.into(), up: true, mtu: None, kind: LinkKind::Existing });
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
            // LANs bound to a table look it up first (RFC-free: plain Linux policy routing).
            for (i, lan) in rt.lans.iter().enumerate() {
                if let Some(l) = cfg.lan(lan) {
                    for n in l.all_networks() {
                        s.rules.push(Rule {
                            priority: 1000 + rt.id % 1000 * 10 + i as u32,
                            from: Some(n),
                            to: None,
                            table: rt.id,
                        });
                    }
                }
            }
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
    // The largest inner MTU any tunnel asks for; per-tunnel clamping happens in the dataplane.
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
    let wan = cfg.gateway.wan.address.addr;
    let mut out = Vec::new();
    for t in cfg.tunnels.iter().filter(|t| t.enabled) {
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
        let remote_id: Identity =
            cg.ike_identity().parse().map_err(|e| err(format!("ike_id: {e}")))?;
        let mut ike = isthmus_ike::TunnelConfig::new(
            &t.name,
            SocketAddr::new(wan, 500),
            SocketAddr::new(cg.address, 500),
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
        let close_action = match t.start_action {
            StartAction::Start => isthmus_tunnels::CloseAction::Restart,
            _ => isthmus_tunnels::CloseAction::None,
        };
        out.push(isthmus_tunnels::Tunnel { ike, close_action });
    }
    Ok(out)
}

/// A fingerprint of what the driver runs for a tunnel, to tell which tunnels a commit changed
/// (the PSK enters as its hash, never in clear).
pub fn tunnel_fingerprint(cfg: &Config, name: &str) -> String {
    use sha2::{Digest, Sha256};
    let Some(t) = cfg.tunnel(name) else { return String::new() };
    let cg = cfg.customer_gateway(&t.customer_gateway);
    let psk = t.psk.resolve().map(|v| v.fingerprint()).unwrap_or_default();
    let text = format!("{t:?}|{cg:?}|{psk}|{}", cfg.gateway.wan.address.addr);
    hex::encode(Sha256::digest(text.as_bytes()))
}
