//! Why does traffic not pass? A packet-path tracer and a negotiation explainer.
//!
//! [`diagnose_path`] follows one packet through the gateway in the order the planes handle it —
//! ingress LAN, the kernel's route lookup, the SPD (RFC 4301 §4.4.1, first match), network ACLs
//! and security groups, the CHILD SA's outbound SA, the tunnel MTU, egress — then its reply back
//! (inbound SA, the selector check of RFC 4301 §5.2 step 4, ACLs and the stateful security
//! groups), giving each stage a verdict and the entry that decided it, the dataplane counter
//! that counts such a drop, and advice an operator can act on. [`diagnose_tunnel`] explains the
//! last failed negotiations of a tunnel (RFC 7296 §2.9 TS_UNACCEPTABLE, NO_PROPOSAL_CHOSEN, ...)
//! from the driver's status and the event log.
//!
//! One truth: every verdict comes from what forwards the packets, never from a second model.
//! - routes: the kernel's own lookup (`RTM_GETROUTE` with `RTM_F_FIB_MATCH`, the packet's
//!   source and ingress interface, so policy rules of route tables bound to LANs apply), which
//!   names the FIB entry it forwards by;
//! - SPD: the table the dataplane's workers use now ([`isthmus_dataplane::Dataplane::spd`]),
//!   looked up with its own first-match [`SpdTable::lookup`];
//! - network ACLs and security groups: the dataplane's own answer for a new flow and its reply
//!   ([`Dataplane::trace_filter`], the workers' evaluation over the table and LAN bindings they
//!   use now, tested equal to the packet path): attachments in the dataplane's order (the
//!   tunnel, then the LAN-side address's LAN), each network ACL before its security group, the
//!   reply as return traffic of the flow the request created;
//! - CHILD SAs: the outbound SAs installed in the dataplane (no SA: the dataplane drops and
//!   counts `no-sa`), with the driver's status and the monitor's last-packet readings;
//! - drops that happened: the dataplane's counters by stage and reason, and by rule.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;

use isthmus_api as api;
use isthmus_config::Config;
use isthmus_dataplane::{ChainVerdict, Dataplane, LanBinding, SgTable, SpdTable};
use isthmus_tables::sg::Direction as SgDir;
use isthmus_tables::{FlowKey, Prefix};

use crate::obs::Readings;
use crate::obs::monitor::Monitor;

mod path;
mod tunnel;
mod words;

pub use path::trace;
pub use tunnel::diagnose_tunnel;

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
    /// ESP travels in UDP (NAT detected, or NAT-T forced).
    pub encap: bool,
    /// The peer's IKE address in use (a NAT device's, when one is on the path).
    pub peer: Option<std::net::SocketAddr>,
}

/// What the dataplane's workers use right now, and its drop counters.
#[derive(Clone, Debug)]
pub struct DataplaneView {
    /// The published SPD.
    pub spd: Arc<SpdTable>,
    /// The published security-group and network-ACL table.
    pub sg: Arc<SgTable>,
    /// LAN prefixes bound to LAN attachment names.
    pub lans: Vec<LanBinding>,
    /// Outbound SAs installed: (tunnel, child) -> SPI.
    pub outbound: BTreeMap<(String, String), u32>,
    /// Drops by reason (`sg-out` -> packets).
    pub drops: BTreeMap<String, u64>,
    /// Security-group and ACL drops by `attachment/rule`.
    pub rule_drops: BTreeMap<String, u64>,
    /// The running dataplane the view was read from (None: tables built by hand).
    pub source: Option<Arc<Dataplane>>,
}

impl DataplaneView {
    /// Reads the snapshots and counters of `dp`.
    pub fn read(dp: &Arc<Dataplane>) -> DataplaneView {
        let c = dp.counters();
        DataplaneView {
            spd: dp.spd(),
            sg: dp.sg(),
            lans: dp.lans(),
            outbound: c
                .sas
                .iter()
                .filter(|s| s.direction == isthmus_dataplane::Direction::Outbound)
                .map(|s| ((s.tunnel.clone(), s.child.clone()), s.spi))
                .collect(),
            drops: c.drops.iter().map(|(d, n)| (d.as_str().to_owned(), n)).collect(),
            rule_drops: c
                .rule_drops
                .iter()
                .map(|r| (format!("{}/{}", r.attachment, r.rule), r.packets))
                .collect(),
            source: Some(dp.clone()),
        }
    }

    /// What the dataplane does with a new flow `key` crossing `tunnel` in `direction`, and with
    /// its reply: every bound chain in the workers' order, up to the first that refuses. Asks
    /// the running dataplane ([`Dataplane::trace_filter`]: its table and LAN bindings, read
    /// together); a view built by hand is evaluated by the same code
    /// ([`isthmus_dataplane::trace`]) over its own tables.
    pub fn trace_filter(
        &self,
        tunnel: &str,
        direction: SgDir,
        key: &FlowKey,
    ) -> (Vec<ChainVerdict>, Vec<ChainVerdict>) {
        match &self.source {
            Some(dp) => dp.trace_filter(tunnel, direction, key),
            None => isthmus_dataplane::trace(&self.sg, &self.lans, tunnel, direction, key),
        }
    }

    /// Tables that bind nothing and no SA (a dataplane that has just started).
    pub fn empty() -> DataplaneView {
        DataplaneView {
            spd: Arc::new(SpdTable::new(0, Vec::new())),
            sg: Arc::new(SgTable::empty(0)),
            lans: Vec::new(),
            outbound: BTreeMap::new(),
            drops: BTreeMap::new(),
            rule_drops: BTreeMap::new(),
            source: None,
        }
    }
}

/// Live state of every tunnel and the dataplane's (None: the tunnel plane does not run).
#[derive(Clone, Debug, Default)]
pub struct Live {
    /// The dataplane's tables and counters.
    pub dataplane: Option<DataplaneView>,
    /// By tunnel name.
    pub tunnels: BTreeMap<String, TunnelLive>,
}

impl Live {
    /// Reads the dataplane, the driver's status and the monitor's readings.
    pub fn read(r: &Readings, monitor: &Monitor, cfg: &Config) -> Live {
        let mut live = Live {
            dataplane: r.dataplane.as_ref().map(|(d, _)| DataplaneView::read(d)),
            ..Live::default()
        };
        for t in &cfg.tunnels {
            let st = r.tunnel(&t.name);
            let (idle_out, idle_in) = monitor.idle(&t.name);
            let tot = monitor.totals(&t.name);
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
                encap: st.as_ref().is_some_and(|s| s.encap),
                peer: st.as_ref().map(|s| s.peer),
            };
            live.tunnels.insert(t.name.clone(), l);
        }
        live
    }
}

pub use isthmus_net::RouteKind;

/// The kernel's answer for the packet's destination.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KernelRoute {
    /// The FIB entry the kernel forwards the packet by.
    Found {
        /// Routing table id (254 main, 255 local).
        table: u32,
        /// The entry's destination prefix.
        prefix: Prefix,
        /// Output interface.
        oif: Option<String>,
        /// Next-hop router.
        gateway: Option<IpAddr>,
        /// Its type.
        kind: RouteKind,
    },
    /// The kernel refuses to forward it, in its words (`Network is unreachable`).
    Refused(String),
}

/// Asks the kernel how it forwards a packet from `src` arriving on `iif` to `dst`.
pub fn kernel_route(src: IpAddr, dst: IpAddr, iif: &str) -> KernelRoute {
    use isthmus_net::LookupError;
    match isthmus_net::route_get(Some(src), dst, Some(iif)) {
        Ok(r) => KernelRoute::Found {
            table: r.table,
            prefix: Prefix::new(r.destination, r.prefix_len)
                .unwrap_or_else(|_| Prefix::host(r.destination)),
            oif: r.oif,
            gateway: r.gateway,
            kind: r.kind,
        },
        // Lookups answer EINVAL when the entry found drops (blackhole, prohibit).
        Err(LookupError::Refused { errno: libc::EINVAL }) => KernelRoute::Refused(
            "the route found is a blackhole or prohibit route (the kernel answers Invalid argument)"
                .into(),
        ),
        Err(e) => KernelRoute::Refused(
            e.to_string().split(" (os error").next().unwrap_or_default().to_owned(),
        ),
    }
}

/// `GET /diagnose/path`: traces `q` through the applied configuration and live state.
pub fn diagnose_path(
    r: &Readings,
    monitor: &Monitor,
    q: &Query,
) -> Result<api::PathReport, DiagnoseError> {
    let (_, cfg) = r.applied.as_ref().ok_or(DiagnoseError::NoConfig)?;
    let live = Live::read(r, monitor, cfg);
    let route = path::lan_of(cfg, q.flow.src)
        .map(|(lan, _)| kernel_route(q.flow.src, q.flow.dst, &lan.interface))
        .unwrap_or_else(|| KernelRoute::Refused("the source is on no LAN".into()));
    Ok(trace(cfg, &live, &route, q))
}

#[cfg(test)]
mod tests {
    use super::words::thousands;
    use super::*;
    use isthmus_api::{PathStage, StageVerdict};
    use isthmus_tables::PortRange;
    use isthmus_tables::sg::{Action, ChainKind, ChainSpec, Rule as SgRule};
    use isthmus_tables::spd::{Selector, SpdAction, SpdEntry};

    fn cfg(extra: &str) -> Config {
        let toml = isthmus_testkit::config::Gateway::new("gw1")
            .wan("wan0", "10.65.100.1/24", "10.65.100.254")
            .lan("office", "lan0", "10.65.1.1/24")
            .customer_gateway("idc", "10.65.100.2")
            .push(
                r#"[[tunnel]]
name = "to-idc"
customer_gateway = "idc"
psk = "a-long-enough-pre-shared-key-0123"
[[tunnel.spd]]
local = ["10.65.1.0/24"]
remote = ["172.20.1.0/24"]
"#,
            )
            .push(extra)
            .toml();
        Config::check(&toml).expect("test config is valid").config
    }

    fn p(s: &str) -> Prefix {
        s.parse().unwrap()
    }

    /// The dataplane as the daemon publishes it for `cfg("")`: one SPD entry, the outbound SA
    /// installed, `chains` as the security-group plugin compiles them.
    fn view(chains: &[ChainSpec], sa: bool) -> DataplaneView {
        let mut v = DataplaneView::empty();
        v.spd = Arc::new(SpdTable::new(
            1,
            vec![SpdEntry {
                id: "to-idc/to-idc#0".into(),
                selector: Selector::between(p("10.65.1.0/24"), p("172.20.1.0/24")),
                action: SpdAction::Protect { tunnel: "to-idc".into(), child: "to-idc".into() },
            }],
        ));
        v.sg = Arc::new(SgTable::build(1, chains).unwrap());
        v.lans = vec![LanBinding { prefix: p("10.65.1.0/24"), name: "office".into() }];
        if sa {
            v.outbound.insert(("to-idc".into(), "to-idc".into()), 0xc2);
        }
        v
    }

    fn up(packets_out: u64, packets_in: u64, idle_in: Option<u64>) -> Live {
        let mut l = Live { dataplane: Some(view(&[], true)), ..Live::default() };
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
                encap: false,
                peer: None,
            },
        );
        l
    }

    /// The kernel's answer: `prefix` in `table` out of `oif`.
    fn found(table: u32, prefix: &str, oif: &str) -> KernelRoute {
        KernelRoute::Found {
            table,
            prefix: p(prefix),
            oif: Some(oif.into()),
            gateway: None,
            kind: RouteKind::Unicast,
        }
    }

    fn tun() -> KernelRoute {
        found(254, "172.20.1.0/24", "ist0")
    }

    fn unreachable() -> KernelRoute {
        KernelRoute::Refused("Network is unreachable".into())
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

    fn rule(id: &str, action: Action, proto: Option<u8>, dst_ports: PortRange) -> SgRule {
        SgRule {
            src: p("0.0.0.0/0"),
            dst: p("0.0.0.0/0"),
            proto,
            src_ports: PortRange::ANY,
            dst_ports,
            action,
            id: id.into(),
        }
    }

    fn chain(
        att: &str,
        kind: ChainKind,
        direction: SgDir,
        rules: Vec<SgRule>,
        default_action: Action,
        default_rule: &str,
    ) -> ChainSpec {
        ChainSpec {
            attachment: att.into(),
            kind,
            direction,
            rules,
            default_action,
            default_rule: default_rule.into(),
        }
    }

    #[test]
    fn a_good_packet_passes_every_stage_and_comes_back() {
        let r = trace(
            &cfg(""),
            &up(10, 10, Some(0)),
            &tun(),
            &q("10.65.1.5", "172.20.1.9", Some("tcp"), Some(443), None),
        );
        assert_eq!(r.verdict, StageVerdict::Pass, "{r:#?}");
        let names: Vec<&str> = r.forward.iter().map(|s| s.stage.as_str()).collect();
        assert_eq!(
            names,
            [
                "ingress",
                "route",
                "spd",
                "network-acl",
                "security-group",
                "child-sa",
                "mtu",
                "egress"
            ]
        );
        assert_eq!(
            stage_of(&r, "route").entry,
            "table main: 172.20.1.0/24 -> ist0 (tunnel remote network)"
        );
        assert!(
            stage_of(&r, "spd").entry.starts_with("to-idc/to-idc#0 10.65.1.0/24 <-> 172.20.1.0/24"),
            "{r:#?}"
        );
        assert!(stage_of(&r, "child-sa").entry.contains("SPI in 0x000000c1 out 0x000000c2"));
        assert!(r.reply.iter().all(|s| s.verdict == StageVerdict::Pass), "{r:#?}");
        assert!(r.advice.is_empty(), "{:?}", r.advice);
        assert_eq!(r.drop_counter, None);
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
        let r = trace(
            &c,
            &up(1, 1, Some(0)),
            &found(100, "172.20.0.0/16", "ist0"),
            &q("10.65.1.5", "172.20.2.5", None, None, None),
        );
        assert_eq!(r.verdict, StageVerdict::Drop);
        assert_eq!(
            stage_of(&r, "route").entry,
            "table office-out: 172.20.0.0/16 -> ist0 (tunnel to-idc)"
        );
        assert_eq!(stage_of(&r, "spd").verdict, StageVerdict::Drop);
        assert_eq!(r.drop_counter.as_deref(), Some("spd-no-policy"));
        assert!(
            r.advice[0].starts_with("SPD of tunnel to-idc covers 172.20.1.0/24, not 172.20.2.5"),
            "{:?}",
            r.advice
        );
    }

    #[test]
    fn link_local_multicast_is_dropped_as_link_scope_not_spd() {
        let r = trace(
            &cfg(""),
            &up(1, 1, Some(0)),
            &found(254, "224.0.0.0/4", "ist0"),
            &q("10.65.1.5", "224.0.0.22", None, None, None),
        );
        assert_eq!(stage_of(&r, "spd").verdict, StageVerdict::Drop, "{r:#?}");
        assert_eq!(r.drop_counter.as_deref(), Some("link-scope"));
    }

    #[test]
    fn the_internet_is_outside_every_tunnel() {
        let r = trace(
            &cfg(""),
            &up(0, 0, None),
            &unreachable(),
            &q("10.65.1.5", "8.8.8.8", None, None, None),
        );
        assert_eq!(stage_of(&r, "route").verdict, StageVerdict::Drop);
        assert_eq!(stage_of(&r, "route").detail, "the kernel: Network is unreachable");
        assert_eq!(
            r.advice,
            [
                "the gateway gives no Internet access: 8.8.8.8 is outside every tunnel's remote networks"
            ]
        );
        assert_eq!(r.drop_counter, None, "the kernel drops it, not the dataplane");
    }

    #[test]
    fn a_route_mode_tunnel_without_a_route_says_which_route_to_add() {
        let c = cfg(r#"
[[customer_gateway]]
name = "dc2"
address = "10.65.100.3"
[[tunnel]]
name = "to-dc2"
customer_gateway = "dc2"
mode = "route"
psk = "another-long-pre-shared-key-0123"
"#);
        let r = trace(
            &c,
            &up(0, 0, None),
            &unreachable(),
            &q("10.65.1.5", "172.30.0.7", None, None, None),
        );
        assert_eq!(
            r.advice,
            [
                "no route for 172.30.0.7 points to tunnel to-dc2: add one to a route table bound to lan office"
            ]
        );
    }

    #[test]
    fn a_source_off_every_lan_is_refused_at_ingress() {
        let r = trace(
            &cfg(""),
            &up(0, 0, None),
            &tun(),
            &q("192.168.9.9", "172.20.1.9", None, None, None),
        );
        assert_eq!(r.forward.len(), 1);
        assert!(r.forward[0].detail.starts_with("src 192.168.9.9 is not on any LAN"), "{r:#?}");
    }

    #[test]
    fn a_one_way_sa_advises_to_check_the_peer() {
        let r = trace(
            &cfg(""),
            &up(5000, 0, None),
            &tun(),
            &q("10.65.1.5", "172.20.1.9", None, None, None),
        );
        assert_eq!(stage_of(&r, "child-sa").verdict, StageVerdict::Warn);
        assert_eq!(
            r.advice,
            [
                "the SA is up but has received nothing for 600 s while sending 5,000 packets: the peer is not sending back — check its routes and SPD"
            ]
        );
    }

    #[test]
    fn no_outbound_sa_in_the_dataplane_drops_and_points_to_diagnose_tunnel() {
        let mut l = up(0, 0, None);
        l.dataplane = Some(view(&[], false));
        let t = l.tunnels.get_mut("to-idc").unwrap();
        t.state = "connecting".into();
        t.children.clear();
        t.last_failure =
            Some("tunnel `to-idc`: IKE_AUTH failed: the peer answered TS_UNACCEPTABLE".into());
        let r = trace(&cfg(""), &l, &tun(), &q("10.65.1.5", "172.20.1.9", None, None, None));
        assert_eq!(stage_of(&r, "child-sa").verdict, StageVerdict::Drop);
        assert_eq!(r.drop_counter.as_deref(), Some("no-sa"));
        assert!(r.advice[0].contains("isthmus diagnose tunnel to-idc"), "{:?}", r.advice);
        assert!(r.advice[1].contains("TS_UNACCEPTABLE"), "{:?}", r.advice);
    }

    #[test]
    fn security_group_and_acl_rules_of_the_dataplane_table_are_named() {
        // Security group sg-vpc on the tunnel: rule 3 denies tcp/443 going out.
        let sg = chain(
            "to-idc",
            ChainKind::SecurityGroup,
            SgDir::Outbound,
            vec![rule("sg:sg-vpc/3", Action::Deny, Some(6), PortRange::single(443))],
            Action::Allow,
            "sg:default-allow-outbound",
        );
        let mut l = up(1, 1, Some(0));
        l.dataplane = Some(view(&[sg], true));
        let r = trace(
            &cfg(""),
            &l,
            &tun(),
            &q("10.65.1.5", "172.20.1.9", Some("tcp"), Some(443), None),
        );
        assert_eq!(r.advice, ["security group sg-vpc rule 3 denies tcp/443 from 10.65.1.5"]);
        assert_eq!(r.drop_counter.as_deref(), Some("sg-out"));
        // Other traffic passes, and its reply passes statefully although inbound denies all.
        let sg_in = chain(
            "to-idc",
            ChainKind::SecurityGroup,
            SgDir::Inbound,
            vec![],
            Action::Deny,
            "sg:default-deny-inbound",
        );
        let sg = chain(
            "to-idc",
            ChainKind::SecurityGroup,
            SgDir::Outbound,
            vec![rule("sg:sg-vpc/3", Action::Deny, Some(6), PortRange::single(443))],
            Action::Allow,
            "sg:default-allow-outbound",
        );
        l.dataplane = Some(view(&[sg, sg_in], true));
        let r =
            trace(&cfg(""), &l, &tun(), &q("10.65.1.5", "172.20.1.9", Some("udp"), Some(53), None));
        assert_eq!(r.verdict, StageVerdict::Pass, "{r:#?}");
        assert!(
            r.reply.iter().any(|s| s.stage == "security-group" && s.entry.contains("stateful")),
            "{r:#?}"
        );

        // A stateless ACL on the LAN that lets the request out but not the reply in.
        let out = chain(
            "office",
            ChainKind::NetworkAcl,
            SgDir::Outbound,
            vec![rule("acl:acl-office/10", Action::Allow, None, PortRange::ANY)],
            Action::Deny,
            "acl:acl-office/default-deny",
        );
        let inn = chain(
            "office",
            ChainKind::NetworkAcl,
            SgDir::Inbound,
            vec![],
            Action::Deny,
            "acl:acl-office/default-deny",
        );
        l.dataplane = Some(view(&[out, inn], true));
        let r =
            trace(&cfg(""), &l, &tun(), &q("10.65.1.5", "172.20.1.9", Some("udp"), Some(53), None));
        assert_eq!(r.verdict, StageVerdict::Drop);
        assert_eq!(r.drop_counter.as_deref(), Some("nacl-in"));
        assert!(
            r.reply.iter().any(|s| s.stage == "network-acl" && s.verdict == StageVerdict::Drop)
        );
        assert!(r.advice[0].contains("ACLs are stateless"), "{:?}", r.advice);
    }

    #[test]
    fn a_punt_rule_waits_for_the_plugin_and_an_acl_only_lan_keeps_replies_stateless() {
        // A punt rule: the first packets of the flow wait for the plugin (punt-pending).
        let punt = chain(
            "to-idc",
            ChainKind::SecurityGroup,
            SgDir::Outbound,
            vec![rule("sg:tod/5", Action::Punt, Some(6), PortRange::single(22))],
            Action::Allow,
            "sg:tod/default",
        );
        let mut l = up(1, 1, Some(0));
        l.dataplane = Some(view(&[punt], true));
        let r =
            trace(&cfg(""), &l, &tun(), &q("10.65.1.5", "172.20.1.9", Some("tcp"), Some(22), None));
        assert_eq!(r.drop_counter.as_deref(), Some("punt-pending"), "{r:#?}");
        assert!(stage_of(&r, "security-group").entry.starts_with("sg:tod/5: a punt rule"));
        // An ACL allowing both ways on the LAN and no security group: both stages pass, the
        // reply through the inbound ACL, and the missing security group is said.
        let out = chain(
            "office",
            ChainKind::NetworkAcl,
            SgDir::Outbound,
            vec![],
            Action::Allow,
            "acl:office/default-allow",
        );
        let inn = chain(
            "office",
            ChainKind::NetworkAcl,
            SgDir::Inbound,
            vec![],
            Action::Allow,
            "acl:office/default-allow",
        );
        l.dataplane = Some(view(&[out, inn], true));
        let r =
            trace(&cfg(""), &l, &tun(), &q("10.65.1.5", "172.20.1.9", Some("udp"), Some(53), None));
        assert_eq!(r.verdict, StageVerdict::Pass, "{r:#?}");
        assert_eq!(stage_of(&r, "network-acl").entry, "acl:office/default-allow allows");
        assert_eq!(
            stage_of(&r, "security-group").entry,
            "none bound to tunnel to-idc or lan office"
        );
        let acl_in = r.reply.iter().find(|s| s.stage == "network-acl").expect("reply ACL stage");
        assert_eq!(acl_in.detail, "bound to office, direction in");
    }

    #[test]
    fn oversize_packets_warn_with_the_tunnel_mtu() {
        let r = trace(
            &cfg(""),
            &up(1, 1, Some(0)),
            &tun(),
            &q("10.65.1.5", "172.20.1.9", None, None, Some(1450)),
        );
        assert_eq!(stage_of(&r, "mtu").verdict, StageVerdict::Warn);
        assert!(r.advice[0].contains("exceeds tunnel to-idc's MTU 1400"), "{:?}", r.advice);
    }

    #[test]
    fn the_kernel_answers_with_the_fib_entry_policy_rules_included() {
        use isthmus_testkit::{Netns, require_root, veth};
        assert_eq!(
            kernel_route("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap(), "no-such-if0"),
            KernelRoute::Refused("interface no-such-if0 does not exist".into())
        );
        if !require_root() {
            return;
        }
        let a = Netns::new("dkr");
        let b = Netns::new("dkr");
        veth(&a, "d0", "10.65.201.1/24", &b, "p0", "10.65.201.10/24");
        veth(&a, "d1", "10.65.202.1/24", &b, "p1", "10.65.202.2/24");
        a.sh("sysctl -qw net.ipv4.ip_forward=1 \
              && ip route add 10.65.210.0/24 via 10.65.202.2 table 100 \
              && ip rule add from 10.65.201.0/24 lookup 100 pref 1100 \
              && ip route add blackhole 10.65.211.0/24");
        let ask = |dst: &'static str| {
            a.run(move || kernel_route("10.65.201.10".parse().unwrap(), dst.parse().unwrap(), "d0"))
        };
        assert_eq!(
            ask("10.65.210.5"),
            KernelRoute::Found {
                table: 100,
                prefix: p("10.65.210.0/24"),
                oif: Some("d1".into()),
                gateway: Some("10.65.202.2".parse().unwrap()),
                kind: RouteKind::Unicast,
            }
        );
        assert_eq!(ask("8.8.8.8"), KernelRoute::Refused("Network is unreachable".into()));
        match ask("10.65.211.1") {
            KernelRoute::Refused(why) => assert!(why.contains("blackhole"), "{why}"),
            other => panic!("{other:?}"),
        }
        match ask("10.65.201.1") {
            KernelRoute::Found { kind, table, .. } => {
                assert_eq!((kind, table), (RouteKind::Local, 255))
            }
            other => panic!("{other:?}"),
        }
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
