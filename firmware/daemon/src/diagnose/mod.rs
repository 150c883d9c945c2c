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

use isthmus_api::{self as api, EventKind, PathStage, StageVerdict};
use isthmus_config::{Config, Mode, NextHop};
use isthmus_dataplane::{ChainVerdict, Dataplane, LanBinding, SgTable, SpdTable};
use isthmus_tables::sg::{Action, ChainKind, Direction as SgDir};
use isthmus_tables::spd::SpdAction;
use isthmus_tables::{FlowKey, Prefix};

use crate::core::plan;
use crate::obs::Readings;
use crate::obs::events::EventBus;
use crate::obs::monitor::Monitor;

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
            drops: c.stage_drops.entries().iter().map(|(_, r, n)| ((*r).to_owned(), *n)).collect(),
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

/// What kind of FIB entry the kernel found (`rtm_type`, rtnetlink(7)).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RouteKind {
    /// A forwarding route.
    Unicast,
    /// An address of the gateway itself.
    Local,
    /// Silently dropped.
    Blackhole,
    /// Dropped with ICMP unreachable.
    Unreachable,
    /// Dropped with ICMP administratively prohibited.
    Prohibit,
    /// Another type (broadcast, multicast, ...).
    Other(u8),
}

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
    let Some(index) = rtnl::if_index(iif) else {
        return KernelRoute::Refused(format!("interface {iif} does not exist"));
    };
    match rtnl::get_route(Some(src), dst, Some(index)) {
        Ok(a) => a.into_route(),
        // Lookups answer EINVAL when the entry found drops (blackhole, prohibit).
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => KernelRoute::Refused(
            "the route found is a blackhole or prohibit route (the kernel answers Invalid argument)"
                .into(),
        ),
        Err(e) => KernelRoute::Refused(
            e.to_string().split(" (os error").next().unwrap_or_default().to_owned(),
        ),
    }
}

/// `RTM_GETROUTE` over a netlink socket (rtnetlink(7)); no crate of the daemon speaks it.
mod rtnl {
    use std::io;
    use std::net::IpAddr;
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

    use isthmus_tables::Prefix;

    use super::{KernelRoute, RouteKind};

    const NLMSG_ERROR: u16 = 2;
    const RTM_NEWROUTE: u16 = 24;
    const RTM_GETROUTE: u16 = 26;
    const NLM_F_REQUEST: u16 = 1;
    /// Answer with the FIB entry that matched, not a cloned host route (Linux 4.13).
    const RTM_F_FIB_MATCH: u32 = 0x2000;
    /// Report the table the lookup found the entry in (else the kernel says main).
    const RTM_F_LOOKUP_TABLE: u32 = 0x1000;
    const RTA_DST: u16 = 1;
    const RTA_SRC: u16 = 2;
    const RTA_IIF: u16 = 3;
    const RTA_OIF: u16 = 4;
    const RTA_GATEWAY: u16 = 5;
    const RTA_TABLE: u16 = 15;

    /// The parts of an `RTM_NEWROUTE` answer the tracer uses.
    #[derive(Debug)]
    pub(super) struct Answer {
        pub(super) table: u32,
        pub(super) dst: Option<IpAddr>,
        pub(super) dst_len: u8,
        pub(super) v4: bool,
        pub(super) oif: Option<u32>,
        pub(super) gateway: Option<IpAddr>,
        pub(super) kind: u8,
    }

    impl Answer {
        pub(super) fn into_route(self) -> KernelRoute {
            let any = if self.v4 { IpAddr::from([0u8; 4]) } else { IpAddr::from([0u16; 8]) };
            let prefix = Prefix::new(self.dst.unwrap_or(any), self.dst_len)
                .unwrap_or_else(|_| Prefix::host(any));
            KernelRoute::Found {
                table: self.table,
                prefix,
                oif: self.oif.and_then(if_name),
                gateway: self.gateway,
                kind: match self.kind {
                    1 => RouteKind::Unicast,
                    2 => RouteKind::Local,
                    6 => RouteKind::Blackhole,
                    7 => RouteKind::Unreachable,
                    8 => RouteKind::Prohibit,
                    n => RouteKind::Other(n),
                },
            }
        }
    }

    /// The index of interface `name` in the daemon's namespace.
    pub(super) fn if_index(name: &str) -> Option<u32> {
        let c = std::ffi::CString::new(name).ok()?;
        // SAFETY: `c` is a valid NUL-terminated string that outlives the call.
        let i = unsafe { libc::if_nametoindex(c.as_ptr()) };
        (i != 0).then_some(i)
    }

    fn if_name(index: u32) -> Option<String> {
        let mut buf = [0 as libc::c_char; libc::IF_NAMESIZE];
        // SAFETY: `buf` has the IF_NAMESIZE bytes if_indextoname(3) may write.
        let p = unsafe { libc::if_indextoname(index, buf.as_mut_ptr()) };
        if p.is_null() {
            return None;
        }
        // SAFETY: on success the buffer holds a NUL-terminated name.
        let s = unsafe { std::ffi::CStr::from_ptr(buf.as_ptr()) };
        Some(s.to_string_lossy().into_owned())
    }

    fn attr(buf: &mut Vec<u8>, kind: u16, data: &[u8]) {
        let len = 4 + data.len();
        buf.extend_from_slice(&(len as u16).to_ne_bytes());
        buf.extend_from_slice(&kind.to_ne_bytes());
        buf.extend_from_slice(data);
        buf.resize(buf.len().next_multiple_of(4), 0);
    }

    fn ip_bytes(ip: IpAddr) -> Vec<u8> {
        match ip {
            IpAddr::V4(a) => a.octets().to_vec(),
            IpAddr::V6(a) => a.octets().to_vec(),
        }
    }

    fn ip_of(v: &[u8]) -> Option<IpAddr> {
        match v.len() {
            4 => Some(IpAddr::from(<[u8; 4]>::try_from(v).ok()?)),
            16 => Some(IpAddr::from(<[u8; 16]>::try_from(v).ok()?)),
            _ => None,
        }
    }

    /// The request: `nlmsghdr`, `rtmsg`, then attributes.
    fn request(src: Option<IpAddr>, dst: IpAddr, iif: Option<u32>, seq: u32) -> Vec<u8> {
        let v4 = dst.is_ipv4();
        let (family, bits) = if v4 { (libc::AF_INET, 32) } else { (libc::AF_INET6, 128) };
        let mut b = vec![0u8; 16];
        b.extend_from_slice(&[
            family as u8,
            bits,
            if src.is_some() { bits } else { 0 },
            0, // tos
            0, // table
            0, // protocol
            0, // scope
            0, // type
        ]);
        b.extend_from_slice(&(RTM_F_FIB_MATCH | RTM_F_LOOKUP_TABLE).to_ne_bytes());
        attr(&mut b, RTA_DST, &ip_bytes(dst));
        if let Some(s) = src {
            attr(&mut b, RTA_SRC, &ip_bytes(s));
        }
        if let Some(i) = iif {
            attr(&mut b, RTA_IIF, &i.to_ne_bytes());
        }
        let len = b.len() as u32;
        b[0..4].copy_from_slice(&len.to_ne_bytes());
        b[4..6].copy_from_slice(&RTM_GETROUTE.to_ne_bytes());
        b[6..8].copy_from_slice(&NLM_F_REQUEST.to_ne_bytes());
        b[8..12].copy_from_slice(&seq.to_ne_bytes());
        b
    }

    /// Parses the kernel's reply to request `seq`.
    fn parse(buf: &[u8], seq: u32, v4: bool) -> Option<io::Result<Answer>> {
        let mut off = 0;
        while let Some(h) = buf.get(off..off + 16) {
            let len = u32::from_ne_bytes(h[0..4].try_into().ok()?) as usize;
            let kind = u16::from_ne_bytes(h[4..6].try_into().ok()?);
            let s = u32::from_ne_bytes(h[8..12].try_into().ok()?);
            if len < 16 {
                return None;
            }
            let body = buf.get(off + 16..off + len)?;
            off += len.next_multiple_of(4);
            if s != seq {
                continue;
            }
            match kind {
                NLMSG_ERROR => {
                    let err = i32::from_ne_bytes(body.get(0..4)?.try_into().ok()?);
                    return Some(Err(io::Error::from_raw_os_error(err.saturating_neg())));
                }
                RTM_NEWROUTE => {
                    let r = body.get(0..12)?;
                    let mut a = Answer {
                        table: u32::from(r[4]),
                        dst: None,
                        dst_len: r[1],
                        v4,
                        oif: None,
                        gateway: None,
                        kind: r[7],
                    };
                    let mut at = body.get(12..)?;
                    while at.len() >= 4 {
                        let l = usize::from(u16::from_ne_bytes([at[0], at[1]]));
                        let t = u16::from_ne_bytes([at[2], at[3]]) & 0x3fff;
                        if l < 4 || l > at.len() {
                            break;
                        }
                        let v = &at[4..l];
                        let u =
                            || v.get(..4).and_then(|b| b.try_into().ok()).map(u32::from_ne_bytes);
                        match t {
                            RTA_DST => a.dst = ip_of(v),
                            RTA_GATEWAY => a.gateway = ip_of(v),
                            RTA_OIF => a.oif = u(),
                            RTA_TABLE => a.table = u().unwrap_or(a.table),
                            _ => {}
                        }
                        at = at.get(l.next_multiple_of(4)..).unwrap_or_default();
                    }
                    return Some(Ok(a));
                }
                _ => {}
            }
        }
        None
    }

    /// One `RTM_GETROUTE` round trip (2 s at most).
    pub(super) fn get_route(
        src: Option<IpAddr>,
        dst: IpAddr,
        iif: Option<u32>,
    ) -> io::Result<Answer> {
        // SAFETY: socket(2) with constant arguments; the descriptor is owned right below.
        let fd = unsafe {
            libc::socket(libc::AF_NETLINK, libc::SOCK_RAW | libc::SOCK_CLOEXEC, libc::NETLINK_ROUTE)
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a fresh descriptor nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let tv = libc::timeval { tv_sec: 2, tv_usec: 0 };
        // SAFETY: `tv` is a valid timeval for the duration of the call, its size is passed.
        let rc = unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&tv as *const libc::timeval).cast(),
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        let seq = std::process::id() ^ 0x6973_7468;
        let req = request(src, dst, iif, seq);
        // SAFETY: `req` is a valid buffer of `req.len()` bytes; an unconnected netlink socket
        // sends to the kernel.
        let n = unsafe { libc::send(fd.as_raw_fd(), req.as_ptr().cast(), req.len(), 0) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            // SAFETY: `buf` is a writable buffer of `buf.len()` bytes.
            let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n < 0 {
                return Err(io::Error::last_os_error());
            }
            let got = buf.get(..n as usize).unwrap_or_default();
            if let Some(r) = parse(got, seq, dst.is_ipv4()) {
                return r;
            }
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn the_request_is_an_rtmsg_with_aligned_attributes() {
            let r = request(
                Some("10.65.1.10".parse().unwrap()),
                "10.65.2.10".parse().unwrap(),
                Some(7),
                1,
            );
            // 16 header + 12 rtmsg + 3 attributes of 8 bytes.
            assert_eq!(r.len(), 52);
            assert_eq!(u32::from_ne_bytes(r[0..4].try_into().unwrap()), 52);
            assert_eq!(&r[16..19], &[libc::AF_INET as u8, 32, 32]);
            assert_eq!(&r[32..36], &[10, 65, 2, 10]);
        }

        #[test]
        fn errors_and_truncated_replies_are_not_panics() {
            let mut e = vec![0u8; 20];
            e[0..4].copy_from_slice(&20u32.to_ne_bytes());
            e[4..6].copy_from_slice(&NLMSG_ERROR.to_ne_bytes());
            e[8..12].copy_from_slice(&5u32.to_ne_bytes());
            e[16..20].copy_from_slice(&(-libc::ENETUNREACH).to_ne_bytes());
            let err = parse(&e, 5, true).unwrap().unwrap_err();
            assert_eq!(err.raw_os_error(), Some(libc::ENETUNREACH));
            for n in 0..e.len() {
                let _ = parse(&e[..n], 5, true);
            }
            assert!(parse(&e, 6, true).is_none(), "another request's answer");
        }
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
    let route = lan_of(cfg, q.flow.src)
        .map(|(lan, _)| kernel_route(q.flow.src, q.flow.dst, &lan.interface))
        .unwrap_or_else(|| KernelRoute::Refused("the source is on no LAN".into()));
    Ok(trace(cfg, &live, &route, q))
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

/// Where the kernel sends a packet.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Target {
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
fn table_name(cfg: &Config, id: u32) -> String {
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
fn route_target(
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
    let cg = cfg.customer_gateways.iter().find(|c| c.address == dst).map(|c| c.name.clone());
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
fn lan_of(cfg: &Config, ip: IpAddr) -> Option<(&isthmus_config::Lan, Prefix)> {
    cfg.gateway
        .lans
        .iter()
        .flat_map(|l| l.all_networks().map(move |n| (l, n)))
        .filter(|(_, n)| n.contains(ip))
        .max_by_key(|(_, n)| n.len())
}

/// A security-group or ACL drop the filter predicts.
struct FilterDrop {
    counter: &'static str,
    advice: String,
}

/// How one rule's name reads in advice: `sg:web/3` is rule 3 of security group web.
fn rule_advice(
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
fn render_filter(
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
                    (ChainKind::NetworkAcl, SgDir::Inbound) => "nacl-in",
                    (ChainKind::NetworkAcl, SgDir::Outbound) => "nacl-out",
                    (ChainKind::SecurityGroup, SgDir::Inbound) => "sg-in",
                    (ChainKind::SecurityGroup, SgDir::Outbound) => "sg-out",
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
                    counter: "punt-pending",
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
/// answer `route` (pure: unit tests call it with tables built by hand).
pub fn trace(cfg: &Config, live: &Live, route: &KernelRoute, q: &Query) -> api::PathReport {
    let f = q.flow;
    let mut fwd = Vec::new();
    let mut reply = Vec::new();
    let mut advice = Vec::new();
    let notes = vec![
        "route: the kernel's own lookup (RTM_GETROUTE, FIB match, from the source on the ingress interface)".to_owned(),
        "spd, network-acl, security-group, child-sa: the tables and SAs the dataplane's workers use now, evaluated with the packet path's own code".to_owned(),
    ];
    let empty = DataplaneView::empty();
    let view = live.dataplane.as_ref().unwrap_or(&empty);
    let counters: BTreeMap<String, u64> = view.drops.clone();
    let report = |fwd, reply, advice, verdict, counter: Option<&str>| {
        let mut counters = counters.clone();
        for (k, v) in &view.rule_drops {
            counters.insert(format!("rule {k}"), *v);
        }
        api::PathReport {
            packet: describe(&f, q.size),
            forward: fwd,
            reply,
            verdict,
            advice,
            notes: notes.clone(),
            drop_counter: counter.map(str::to_owned),
            counters,
        }
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
        return report(fwd, reply, advice, StageVerdict::Drop, None);
    };
    fwd.push(stage(
        "ingress",
        StageVerdict::Pass,
        format!("lan {} ({}) network {net}", lan.name, lan.interface),
        "",
    ));

    // 2. The kernel's route.
    let (entry, target) = match route_target(cfg, route, f.dst) {
        Ok(x) => x,
        Err(why) => {
            fwd.push(stage(
                "route",
                StageVerdict::Drop,
                format!("no route for {}", f.dst),
                format!("the kernel: {why}"),
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
                advice.push(format!(
                    "no route for {} points to tunnel {t}: add one to {table}",
                    f.dst
                ));
            } else {
                let all: Vec<Prefix> = cfg
                    .tunnels
                    .iter()
                    .filter(|t| t.enabled)
                    .flat_map(plan::remote_prefixes)
                    .collect();
                advice.push(format!(
                    "no route for {}: it is outside every tunnel's remote networks ({}); add it to the spd remote of the tunnel that reaches it (and to the peer's local)",
                    f.dst,
                    list(&all)
                ));
            }
            return report(fwd, reply, advice, StageVerdict::Drop, None);
        }
    };
    fwd.push(stage("route", StageVerdict::Pass, entry, ""));
    let route_tunnel = match &target {
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
            return report(fwd, reply, advice, StageVerdict::Pass, None);
        }
        Target::Local => {
            fwd.push(stage("spd", StageVerdict::Skip, "not routed into a tunnel", ""));
            fwd.push(stage("egress", StageVerdict::Pass, "the gateway itself", "not forwarded"));
            return report(fwd, reply, advice, StageVerdict::Pass, None);
        }
        Target::Via(a) => {
            fwd.push(stage("spd", StageVerdict::Skip, "not routed into a tunnel", ""));
            fwd.push(stage("egress", StageVerdict::Pass, format!("via {a}"), "not protected"));
            return report(fwd, reply, advice, StageVerdict::Pass, None);
        }
        Target::Dev(d) => {
            fwd.push(stage("spd", StageVerdict::Skip, "not routed into a tunnel", ""));
            fwd.push(stage("egress", StageVerdict::Pass, format!("dev {d}"), "not protected"));
            return report(fwd, reply, advice, StageVerdict::Pass, None);
        }
        Target::Wan(cg) => {
            fwd.push(stage("spd", StageVerdict::Skip, "not routed into a tunnel", ""));
            fwd.push(stage(
                "egress",
                StageVerdict::Warn,
                format!("wan {}", cfg.gateway.wan.interface),
                "in clear: the host firewall's forward chain decides",
            ));
            match cg {
                Some(cg) => advice.push(format!(
                    "{} is customer gateway {cg}'s public address: traffic to it is not protected; trace to an address behind it",
                    f.dst
                )),
                None => advice.push(format!(
                    "{} is on the WAN network: the gateway does not protect traffic to it",
                    f.dst
                )),
            }
            return report(fwd, reply, advice, StageVerdict::Pass, None);
        }
    };

    // 3. SPD: the dataplane's table.
    if live.dataplane.is_none() {
        fwd.push(stage(
            "spd",
            StageVerdict::Drop,
            "the dataplane does not run",
            "tunnels are not running on this daemon",
        ));
        advice.push(
            "tunnels are not running on this daemon: nothing is forwarded into a tunnel".into(),
        );
        return report(fwd, reply, advice, StageVerdict::Drop, None);
    }
    if isthmus_dataplane::link_scoped(&f) {
        fwd.push(stage(
            "spd",
            StageVerdict::Drop,
            "link-scoped address",
            "the dataplane drops it (link-scope): link-local addresses and link-local multicast are never forwarded (RFC 4291 §2.5.6, §2.7)",
        ));
        advice.push(format!(
            "{} -> {} cannot leave this link: trace between routable addresses",
            f.src, f.dst
        ));
        return report(fwd, reply, advice, StageVerdict::Drop, Some("link-scope"));
    }
    let spd = &view.spd;
    let Some((_, entry)) = spd.lookup(&f) else {
        fwd.push(stage(
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
        return report(fwd, reply, advice, StageVerdict::Drop, Some("spd-no-policy"));
    };
    let (tunnel, child) = match &entry.action {
        SpdAction::Protect { tunnel, child } => (tunnel.clone(), child.clone()),
        SpdAction::Bypass | SpdAction::Discard => {
            let counter =
                if entry.action == SpdAction::Bypass { "spd-bypass" } else { "spd-discard" };
            fwd.push(stage(
                "spd",
                StageVerdict::Drop,
                entry.id.clone(),
                format!("{:?}: the dataplane drops it ({counter})", entry.action),
            ));
            advice.push(format!(
                "SPD entry {} {} it: change the spd policy (or its plugin) to protect it",
                entry.id,
                if entry.action == SpdAction::Bypass { "bypasses" } else { "discards" }
            ));
            return report(fwd, reply, advice, StageVerdict::Drop, Some(counter));
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

    // 4. Network ACLs and security groups, before the SA (denied traffic asks for no SA).
    let (chains_out, chains_in) = view.trace_filter(&tunnel, SgDir::Outbound, &f);
    if let Some(d) = render_filter(view, &tunnel, &f, &chains_out, &[], false, &mut fwd) {
        advice.push(d.advice);
        return report(fwd, reply, advice, StageVerdict::Drop, Some(d.counter));
    }

    // 5. CHILD SA: the outbound SA installed in the dataplane.
    let tl = live.tunnels.get(&tunnel).cloned().unwrap_or_default();
    let spi_out = view.outbound.get(&(tunnel.clone(), child.clone())).copied();
    let sa = tl.children.iter().find(|c| c.name == child);
    let (Some(spi_out), Some(sa)) = (spi_out, sa) else {
        let why = format!(
            "tunnel {tunnel} is {}, no outbound SA for CHILD SA {child} in the dataplane",
            if tl.state.is_empty() { "down" } else { &tl.state }
        );
        fwd.push(stage(
            "child-sa",
            StageVerdict::Drop,
            why.clone(),
            tl.last_failure.clone().unwrap_or_else(|| {
                "dropped (never sent in clear) until an SA exists; the packet asks the driver for one"
                    .into()
            }),
        ));
        advice.push(format!("{why}: the packet is dropped, never sent in clear; see `isthmus diagnose tunnel {tunnel}`"));
        if let Some(e) = &tl.last_failure {
            advice.push(format!("last failure: {e}"));
        }
        return report(fwd, reply, advice, StageVerdict::Drop, Some("no-sa"));
    };
    let ago = |s: Option<u64>| s.map(|s| format!("{s} s ago")).unwrap_or_else(|| "never".into());
    let sa_entry = format!("{tunnel}/{child} SPI in 0x{:08x} out 0x{spi_out:08x}", sa.spi_in);
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

    // 6. MTU.
    let mtu = cfg.tunnel(&tunnel).map(|t| t.mtu).unwrap_or(1400);
    if q.size > mtu {
        let clamp = cfg.tunnel(&tunnel).and_then(|t| t.effective_mss());
        fwd.push(stage(
            "mtu",
            StageVerdict::Warn,
            format!("tunnel {tunnel} mtu {mtu} < {} bytes", q.size),
            "with DF set the packet is dropped (too-big) and ICMP fragmentation-needed returned (path MTU discovery); without DF it is fragmented",
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

    // 7. Egress.
    let peer = cfg
        .tunnel(&tunnel)
        .and_then(|t| cfg.customer_gateway(&t.customer_gateway))
        .map(|c| match (tl.encap, tl.peer) {
            (true, Some(p)) => format!("{} ({p})", c.name),
            (false, Some(p)) => format!("{} ({})", c.name, p.ip()),
            (_, None) => format!("{} ({})", c.name, c.address),
        })
        .unwrap_or_default();
    let (how, why) = match (tl.encap, cfg.tunnel(&tunnel).map(|t| t.nat_t)) {
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
    fwd.push(stage(
        "egress",
        StageVerdict::Pass,
        format!("{how}, SPI 0x{spi_out:08x}, to {peer} via wan {}", cfg.gateway.wan.interface),
        why,
    ));

    // The reply: the inbound SA, its selector check, then ACLs and security groups inbound
    // through the state the request created.
    let r = f.reversed();
    reply.push(stage(
        "child-sa",
        if one_way { StageVerdict::Warn } else { StageVerdict::Pass },
        format!("{tunnel}/{child} SPI in 0x{:08x}", sa.spi_in),
        if one_way { "nothing arrives from the peer".to_owned() } else { sa_detail },
    ));
    if !entry.selector.matches_inbound(&r) {
        reply.push(stage(
            "spd",
            StageVerdict::Drop,
            format!("{} inbound", entry.id),
            "the reply is outside the CHILD SA's selectors (selector-mismatch)",
        ));
        advice.push(format!(
            "the reply {} -> {} is outside the selectors of {tunnel}/{child}",
            r.src, r.dst
        ));
        return report(fwd, reply, advice, StageVerdict::Drop, Some("selector-mismatch"));
    }
    reply.push(stage("spd", StageVerdict::Pass, format!("{} inbound {sel_text}", entry.id), ""));
    if let Some(d) = render_filter(view, &tunnel, &r, &chains_in, &chains_out, true, &mut reply) {
        advice.push(d.advice);
        return report(fwd, reply, advice, StageVerdict::Drop, Some(d.counter));
    }
    reply.push(stage(
        "egress",
        StageVerdict::Pass,
        format!("lan {} ({})", lan.name, lan.interface),
        "",
    ));
    report(fwd, reply, advice, StageVerdict::Pass, None)
}

/// `GET /diagnose/tunnel/NAME`: the last failure the driver recorded and recent events.
pub fn diagnose_tunnel(
    r: &Readings,
    events: &EventBus,
    name: &str,
) -> Result<api::TunnelDiagnosis, DiagnoseError> {
    let (_, cfg) = r.applied.as_ref().ok_or(DiagnoseError::NoConfig)?;
    let t = cfg.tunnel(name).ok_or_else(|| DiagnoseError::UnknownTunnel(name.to_owned()))?;
    let st = r.tunnel(name);
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
    let mut recent = events.recent(&format!("tunnel/{name}"), 50);
    if let Some(p) = &peer {
        recent.extend(
            events
                .recent("tunnel/", 50)
                .into_iter()
                .filter(|e| e.message.contains(&format!("peer {p}"))),
        );
    }
    recent.retain(|e| {
        matches!(
            e.kind,
            EventKind::NegotiationFailed
                | EventKind::TunnelDown
                | EventKind::InstallFailed
                | EventKind::ChildDown
        )
    });
    recent.sort_by_key(|e| e.time);
    let keep = recent.len().saturating_sub(10);
    recent.drain(..keep);
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
    let transport = st.as_ref().filter(|s| s.state == isthmus_tunnels::TunnelState::Up).map(|s| {
        match (s.encap, t.nat_t) {
            (true, isthmus_config::NatT::Force) => {
                format!("ESP in UDP 4500 to {} (nat_t = force)", s.peer)
            }
            (true, _) => format!(
                "ESP in UDP 4500 to {}: NAT detected on the path (RFC 7296 §2.23); the NAT device must pass UDP 500 and 4500",
                s.peer
            ),
            (false, _) => format!("ESP (IP protocol 50) to {}: no NAT detected", s.peer),
        }
    });
    Ok(api::TunnelDiagnosis {
        transport,
        tunnel: name.to_owned(),
        state,
        last_failure,
        last_down_reason: st.and_then(|s| s.last_down_reason.clone()),
        events: recent,
        advice,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use isthmus_tables::PortRange;
    use isthmus_tables::sg::{Action, ChainSpec, Rule as SgRule};
    use isthmus_tables::spd::{Selector, SpdEntry};

    const BASE: &str = r#"
[gateway]
name = "gw1"
[gateway.wan]
interface = "wan0"
address = "10.65.100.1/24"
next_hop = "10.65.100.254"
[[gateway.lan]]
name = "office"
interface = "lan0"
addresses = ["10.65.1.1/24"]

[[customer_gateway]]
name = "idc"
address = "10.65.100.2"

[[tunnel]]
name = "to-idc"
customer_gateway = "idc"
psk = "a-long-enough-pre-shared-key-0123"
[[tunnel.spd]]
local = ["10.65.1.0/24"]
remote = ["172.20.1.0/24"]
"#;

    fn cfg(extra: &str) -> Config {
        Config::check(&format!("{BASE}{extra}")).expect("test config is valid").config
    }

    fn p(s: &str) -> Prefix {
        s.parse().unwrap()
    }

    /// The dataplane as the daemon publishes it for BASE: one SPD entry, the outbound SA
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
