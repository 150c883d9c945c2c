//! Reading the kernel's routing state and writing rtnetlink requests (`rtnetlink(7)`), with
//! the message types of `netlink-packet-route`.
//!
//! Only what Isthmus owns is kept after a dump: routes and rules whose protocol is
//! [`RTPROT_ISTHMUS`], addresses whose `IFA_PROTO` is the same number, every link (links are
//! looked up by name; those Isthmus created carry the alias [`LINK_ALIAS`]).

use std::collections::HashMap;
use std::net::IpAddr;

use isthmus_tables::Prefix;
use netlink_packet_core::{Emitable, Parseable};
use netlink_packet_route::AddressFamily;
use netlink_packet_route::IpProtocol;
use netlink_packet_route::address::{
    AddressAttribute, AddressHeaderFlags, AddressMessage, AddressProtocol, AddressScope,
};
use netlink_packet_route::link::{InfoKind, LinkAttribute, LinkFlags, LinkInfo, LinkMessage};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::rule::{RuleAction, RuleAttribute, RuleMessage, RulePortRange};

use crate::nl::{NlSocket, Request};
use crate::state::{Address, NextHop, Route, RouteKey, Rule};
use crate::{Error, RTPROT_ISTHMUS};

pub(crate) const RTM_NEWLINK: u16 = 16;
pub(crate) const RTM_DELLINK: u16 = 17;
const RTM_GETLINK: u16 = 18;
pub(crate) const RTM_SETLINK: u16 = 19;
pub(crate) const RTM_NEWADDR: u16 = 20;
pub(crate) const RTM_DELADDR: u16 = 21;
const RTM_GETADDR: u16 = 22;
pub(crate) const RTM_NEWROUTE: u16 = 24;
pub(crate) const RTM_DELROUTE: u16 = 25;
pub(crate) const RTM_GETROUTE: u16 = 26;
pub(crate) const RTM_NEWRULE: u16 = 32;
pub(crate) const RTM_DELRULE: u16 = 33;
const RTM_GETRULE: u16 = 34;

/// The `IFLA_IFALIAS` that marks links Isthmus created (and may delete again).
pub const LINK_ALIAS: &str = "isthmus";

/// A link as the kernel has it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct KLink {
    pub index: u32,
    pub name: String,
    pub up: bool,
    pub mtu: u32,
    /// `IFLA_INFO_KIND` (`tun`, `dummy`, `veth`, ...).
    pub kind: Option<String>,
    pub alias: Option<String>,
}

/// A route as the kernel has it. `via` is `None` for shapes Isthmus never installs
/// (multipath, unreachable, ...), which are therefore always replaced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct KRoute {
    pub key: RouteKey,
    pub via: Option<NextHop>,
}

/// A policy rule as the kernel has it (one address family).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct KRule {
    pub v4: bool,
    pub rule: Rule,
}

/// The kernel state that matters to the reconciler.
#[derive(Debug, Clone, Default)]
pub(crate) struct Observed {
    pub links: Vec<KLink>,
    /// Every address (`ours` tells which carry Isthmus's protocol).
    pub addresses: Vec<(Address, bool)>,
    pub routes: Vec<KRoute>,
    pub rules: Vec<KRule>,
}

impl Observed {
    pub(crate) fn link(&self, name: &str) -> Option<&KLink> {
        self.links.iter().find(|l| l.name == name)
    }
}

pub(crate) fn emit<T: Emitable>(m: &T) -> Vec<u8> {
    let mut v = vec![0; m.buffer_len()];
    m.emit(&mut v);
    v
}

fn family(v4: bool) -> AddressFamily {
    if v4 { AddressFamily::Inet } else { AddressFamily::Inet6 }
}

fn parse_err(what: &str, e: impl std::fmt::Display) -> Error {
    Error::Protocol(format!("cannot parse {what} from the kernel: {e}"))
}

/// Reads links.
pub(crate) fn dump_links(sock: &mut NlSocket) -> Result<Vec<KLink>, Error> {
    let mut out = Vec::new();
    let req = emit(&LinkMessage::default());
    sock.dump("links", RTM_GETLINK, &req, |kind, p| {
        if kind == RTM_NEWLINK {
            out.push(parse_link(p)?);
        }
        Ok(())
    })?;
    Ok(out)
}

/// Reads one `RTM_NEWLINK`.
pub(crate) fn parse_link(p: &[u8]) -> Result<KLink, Error> {
    let m = LinkMessage::parse(p).map_err(|e| parse_err("a link", e))?;
    let mut l = KLink {
        index: m.header.index,
        name: String::new(),
        up: m.header.flags.contains(LinkFlags::Up),
        mtu: 0,
        kind: None,
        alias: None,
    };
    for a in m.attributes {
        match a {
            LinkAttribute::IfName(n) => l.name = n,
            LinkAttribute::Mtu(v) => l.mtu = v,
            LinkAttribute::IfAlias(s) => l.alias = Some(s),
            LinkAttribute::LinkInfo(infos) => {
                for i in infos {
                    if let LinkInfo::Kind(k) = i {
                        l.kind = Some(k.to_string());
                    }
                }
            }
            _ => {}
        }
    }
    Ok(l)
}

/// Reads every address; `names` maps indexes to interface names.
pub(crate) fn dump_addresses(
    sock: &mut NlSocket,
    names: &HashMap<u32, String>,
) -> Result<Vec<(Address, bool)>, Error> {
    let mut out = Vec::new();
    let req = emit(&AddressMessage::default());
    sock.dump("addresses", RTM_GETADDR, &req, |kind, p| {
        if kind == RTM_NEWADDR
            && let Some(a) = parse_address(p, names)?
        {
            out.push(a);
        }
        Ok(())
    })?;
    Ok(out)
}

/// Reads one `RTM_NEWADDR`: the address and whether it carries Isthmus's protocol (`None`
/// when the message holds no address).
pub(crate) fn parse_address(
    p: &[u8],
    names: &HashMap<u32, String>,
) -> Result<Option<(Address, bool)>, Error> {
    let m = AddressMessage::parse(p).map_err(|e| parse_err("an address", e))?;
    let mut ip = None;
    let mut local = None;
    let mut ours = false;
    for a in m.attributes {
        match a {
            AddressAttribute::Address(a) => ip = Some(a),
            AddressAttribute::Local(a) => local = Some(a),
            AddressAttribute::Protocol(p) => ours = u8::from(p) == RTPROT_ISTHMUS,
            _ => {}
        }
    }
    // IFA_LOCAL is the interface's own address on point-to-point links.
    Ok(local.or(ip).map(|ip| {
        let ifname = names.get(&m.header.index).cloned().unwrap_or_default();
        (Address { ifname, ip, prefix_len: m.header.prefix_len }, ours)
    }))
}

/// Reads Isthmus's routes of one family (the kernel filters by protocol when it can).
pub(crate) fn dump_routes(
    sock: &mut NlSocket,
    v4: bool,
    names: &HashMap<u32, String>,
    out: &mut Vec<KRoute>,
) -> Result<(), Error> {
    let mut req = RouteMessage::default();
    req.header.address_family = family(v4);
    req.header.protocol = RouteProtocol::from(RTPROT_ISTHMUS);
    let req = emit(&req);
    sock.dump("routes", RTM_GETROUTE, &req, |kind, p| {
        if kind == RTM_NEWROUTE
            && let Some(r) = parse_route(p, names)
        {
            out.push(r);
        }
        Ok(())
    })
}

/// Reads one `RTM_NEWROUTE` of Isthmus's protocol. Parsed by hand, not with
/// `netlink-packet-route`: a plan reads every route Isthmus owns (tens of thousands), and this
/// path allocates nothing but the interface name. `None` for other protocols and for malformed
/// input.
///
/// ```text
/// struct rtmsg { family, dst_len, src_len, tos, table, protocol, scope, type: u8; flags: u32 }
/// then attributes: RTA_DST 1, RTA_OIF 4, RTA_GATEWAY 5, RTA_PRIORITY 6, RTA_MULTIPATH 9,
/// RTA_TABLE 15
/// ```
pub(crate) fn parse_route(p: &[u8], names: &HashMap<u32, String>) -> Option<KRoute> {
    const RTA_DST: u16 = 1;
    const RTA_OIF: u16 = 4;
    const RTA_GATEWAY: u16 = 5;
    const RTA_PRIORITY: u16 = 6;
    const RTA_MULTIPATH: u16 = 9;
    const RTA_TABLE: u16 = 15;
    const RTN_UNICAST: u8 = 1;
    const RTN_BLACKHOLE: u8 = 6;
    let h = p.get(..12)?;
    let (fam, dst_len, table, proto, kind) = (h[0], h[1], h[4], h[5], h[7]);
    if proto != RTPROT_ISTHMUS {
        return None;
    }
    let ip = |v: &[u8]| -> Option<IpAddr> {
        match v.len() {
            4 => Some(IpAddr::from(<[u8; 4]>::try_from(v).ok()?)),
            16 => Some(IpAddr::from(<[u8; 16]>::try_from(v).ok()?)),
            _ => None,
        }
    };
    let u32v = |v: &[u8]| v.get(..4).and_then(|b| b.try_into().ok()).map(u32::from_ne_bytes);
    let mut table = u32::from(table);
    let (mut dst, mut gw, mut oif, mut metric, mut multipath) = (None, None, None, 0, false);
    for (t, v) in crate::nl::Attrs::new(p.get(12..)?) {
        match t {
            RTA_TABLE => table = u32v(v)?,
            RTA_DST => dst = ip(v),
            RTA_GATEWAY => gw = ip(v),
            RTA_OIF => oif = u32v(v),
            RTA_PRIORITY => metric = u32v(v)?,
            RTA_MULTIPATH => multipath = true,
            _ => {}
        }
    }
    let any = if u16::from(fam) == libc::AF_INET as u16 {
        IpAddr::from([0u8; 4])
    } else {
        IpAddr::from([0u16; 8])
    };
    let dst = Prefix::new(dst.unwrap_or(any), dst_len).ok()?;
    let via = match kind {
        _ if multipath => None,
        RTN_BLACKHOLE => Some(NextHop::Blackhole),
        RTN_UNICAST => match (gw, oif) {
            (Some(g), _) => Some(NextHop::Gateway(g)),
            (None, Some(i)) => {
                Some(NextHop::Interface(names.get(&i).cloned().unwrap_or(format!("#{i}"))))
            }
            (None, None) => None,
        },
        _ => None,
    };
    Some(KRoute { key: RouteKey { table, dst, metric }, via })
}

/// Reads Isthmus's rules of one family.
pub(crate) fn dump_rules(sock: &mut NlSocket, v4: bool, out: &mut Vec<KRule>) -> Result<(), Error> {
    let mut req = RuleMessage::default();
    req.header.family = family(v4);
    let req = emit(&req);
    sock.dump("rules", RTM_GETRULE, &req, |kind, p| {
        if kind == RTM_NEWRULE
            && let Some(r) = parse_rule(p, v4)?
        {
            out.push(r);
        }
        Ok(())
    })
}

/// Reads one `RTM_NEWRULE` of a dump of family `v4`; `None` unless it is Isthmus's.
pub(crate) fn parse_rule(p: &[u8], v4: bool) -> Result<Option<KRule>, Error> {
    let m = RuleMessage::parse(p).map_err(|e| parse_err("a rule", e))?;
    let mut rule = Rule {
        priority: 0,
        from: None,
        to: None,
        ip_proto: None,
        sport: None,
        table: u32::from(m.header.table),
    };
    let mut ours = false;
    for a in m.attributes {
        match a {
            RuleAttribute::Priority(p) => rule.priority = p,
            RuleAttribute::Table(t) => rule.table = t,
            RuleAttribute::Source(ip) => rule.from = Prefix::new(ip, m.header.src_len).ok(),
            RuleAttribute::Destination(ip) => {
                rule.to = Prefix::new(ip, m.header.dst_len).ok();
            }
            RuleAttribute::Protocol(p) => ours = u8::from(p) == RTPROT_ISTHMUS,
            RuleAttribute::IpProtocol(p) => rule.ip_proto = Some(u8::from(p)),
            RuleAttribute::SourcePortRange(r) if r.start == r.end => rule.sport = Some(r.start),
            _ => {}
        }
    }
    Ok(ours.then_some(KRule { v4, rule }))
}

/// Reads everything the planner compares.
pub(crate) fn observe(sock: &mut NlSocket) -> Result<Observed, Error> {
    let links = dump_links(sock)?;
    let names: HashMap<u32, String> = links.iter().map(|l| (l.index, l.name.clone())).collect();
    let addresses = dump_addresses(sock, &names)?;
    let mut routes = Vec::new();
    dump_routes(sock, true, &names, &mut routes)?;
    dump_routes(sock, false, &names, &mut routes)?;
    let mut rules = Vec::new();
    dump_rules(sock, true, &mut rules)?;
    dump_rules(sock, false, &mut rules)?;
    Ok(Observed { links, addresses, routes, rules })
}

/// Links and addresses only (routes and rules are taken from a desired state instead, see
/// [`assume`]).
pub(crate) fn observe_links_and_addresses(sock: &mut NlSocket) -> Result<Observed, Error> {
    let links = dump_links(sock)?;
    let names: HashMap<u32, String> = links.iter().map(|l| (l.index, l.name.clone())).collect();
    let addresses = dump_addresses(sock, &names)?;
    Ok(Observed { links, addresses, routes: Vec::new(), rules: Vec::new() })
}

/// Fills in the routes and rules that the kernel has when it is at `state` (what the last apply
/// installed), in the shape a dump would report them.
pub(crate) fn assume(k: &mut Observed, state: &crate::DesiredState) {
    k.routes =
        state.routes.iter().map(|r| KRoute { key: r.key(), via: Some(r.via.clone()) }).collect();
    k.rules = state
        .rules
        .iter()
        .flat_map(|r| r.families().into_iter().map(|v4| KRule { v4, rule: r.clone() }))
        .collect();
}

// ---- requests -------------------------------------------------------------------------------

/// Creates a dummy link.
pub(crate) fn create_dummy(name: &str) -> Request {
    let mut m = LinkMessage::default();
    m.attributes.push(LinkAttribute::IfName(name.to_owned()));
    m.attributes.push(LinkAttribute::LinkInfo(vec![LinkInfo::Kind(InfoKind::Dummy)]));
    Request {
        kind: RTM_NEWLINK,
        flags: crate::nl::NLM_F_CREATE | crate::nl::NLM_F_EXCL,
        payload: emit(&m),
    }
}

/// Sets MTU, admin state and/or alias of an existing link.
pub(crate) fn set_link(
    index: u32,
    up: Option<bool>,
    mtu: Option<u32>,
    alias: Option<&str>,
) -> Request {
    let mut m = LinkMessage::default();
    m.header.index = index;
    if let Some(up) = up {
        m.header.change_mask = LinkFlags::Up;
        m.header.flags = if up { LinkFlags::Up } else { LinkFlags::empty() };
    }
    if let Some(mtu) = mtu {
        m.attributes.push(LinkAttribute::Mtu(mtu));
    }
    if let Some(a) = alias {
        m.attributes.push(LinkAttribute::IfAlias(a.to_owned()));
    }
    Request { kind: RTM_SETLINK, flags: 0, payload: emit(&m) }
}

/// Deletes a link.
pub(crate) fn delete_link(index: u32) -> Request {
    let mut m = LinkMessage::default();
    m.header.index = index;
    Request { kind: RTM_DELLINK, flags: 0, payload: emit(&m) }
}

fn address_msg(a: &Address, index: u32) -> AddressMessage {
    let mut m = AddressMessage::default();
    m.header.family = family(a.ip.is_ipv4());
    m.header.prefix_len = a.prefix_len;
    m.header.index = index;
    m.header.scope = AddressScope::Universe;
    m.header.flags = AddressHeaderFlags::empty();
    m.attributes.push(AddressAttribute::Local(a.ip));
    m.attributes.push(AddressAttribute::Address(a.ip));
    m
}

/// Adds an address marked with Isthmus's protocol.
pub(crate) fn add_address(a: &Address, index: u32) -> Request {
    let mut m = address_msg(a, index);
    m.attributes.push(AddressAttribute::Protocol(AddressProtocol::from(RTPROT_ISTHMUS)));
    Request {
        kind: RTM_NEWADDR,
        flags: crate::nl::NLM_F_CREATE | crate::nl::NLM_F_EXCL,
        payload: emit(&m),
    }
}

/// Removes an address.
pub(crate) fn delete_address(a: &Address, index: u32) -> Request {
    Request { kind: RTM_DELADDR, flags: 0, payload: emit(&address_msg(a, index)) }
}

pub(crate) fn route_msg(key: &RouteKey, via: &NextHop, oif: Option<u32>) -> RouteMessage {
    let v4 = key.dst.addr().is_ipv4();
    let mut m = RouteMessage::default();
    m.header.address_family = family(v4);
    m.header.destination_prefix_length = key.dst.len();
    m.header.table = u8::try_from(key.table).unwrap_or(0);
    m.header.protocol = RouteProtocol::from(RTPROT_ISTHMUS);
    m.header.kind = RouteType::Unicast;
    m.header.scope = RouteScope::Universe;
    m.attributes.push(RouteAttribute::Table(key.table));
    if key.dst.len() > 0 {
        m.attributes.push(RouteAttribute::Destination(RouteAddress::from(key.dst.addr())));
    }
    m.attributes.push(RouteAttribute::Priority(key.metric));
    match via {
        NextHop::Interface(_) => {
            m.header.scope = RouteScope::Link;
            if let Some(i) = oif {
                m.attributes.push(RouteAttribute::Oif(i));
            }
        }
        NextHop::Gateway(g) => m.attributes.push(RouteAttribute::Gateway(RouteAddress::from(*g))),
        NextHop::Blackhole => m.header.kind = RouteType::BlackHole,
    }
    m
}

/// Adds (`replace == false`: fails if the key is taken) or replaces a route.
pub(crate) fn add_route(r: &Route, oif: Option<u32>, replace: bool) -> Request {
    use crate::nl::{NLM_F_CREATE, NLM_F_EXCL, NLM_F_REPLACE};
    let flags = if replace { NLM_F_CREATE | NLM_F_REPLACE } else { NLM_F_CREATE | NLM_F_EXCL };
    Request { kind: RTM_NEWROUTE, flags, payload: emit(&route_msg(&r.key(), &r.via, oif)) }
}

/// Deletes one of Isthmus's routes (the protocol in the request keeps foreign routes safe).
pub(crate) fn delete_route(key: &RouteKey) -> Request {
    let mut m = route_msg(key, &NextHop::Blackhole, None);
    // Match any type and scope: only table, prefix, metric and protocol select the route.
    m.header.kind = RouteType::Unspec;
    m.header.scope = RouteScope::NoWhere;
    Request { kind: RTM_DELROUTE, flags: 0, payload: emit(&m) }
}

pub(crate) fn rule_msg(r: &KRule) -> RuleMessage {
    let mut m = RuleMessage::default();
    m.header.family = family(r.v4);
    m.header.table = u8::try_from(r.rule.table).unwrap_or(0);
    m.header.action = RuleAction::ToTable;
    m.attributes.push(RuleAttribute::Priority(r.rule.priority));
    m.attributes.push(RuleAttribute::Table(r.rule.table));
    if let Some(p) = r.rule.from {
        m.header.src_len = p.len();
        m.attributes.push(RuleAttribute::Source(p.addr()));
    }
    if let Some(p) = r.rule.to {
        m.header.dst_len = p.len();
        m.attributes.push(RuleAttribute::Destination(p.addr()));
    }
    if let Some(p) = r.rule.ip_proto {
        m.attributes.push(RuleAttribute::IpProtocol(IpProtocol::from(p)));
    }
    if let Some(p) = r.rule.sport {
        m.attributes.push(RuleAttribute::SourcePortRange(RulePortRange { start: p, end: p }));
    }
    m.attributes.push(RuleAttribute::Protocol(RouteProtocol::from(RTPROT_ISTHMUS)));
    m
}

/// Adds a rule.
pub(crate) fn add_rule(r: &KRule) -> Request {
    Request {
        kind: RTM_NEWRULE,
        flags: crate::nl::NLM_F_CREATE | crate::nl::NLM_F_EXCL,
        payload: emit(&rule_msg(r)),
    }
}

/// Deletes a rule.
pub(crate) fn delete_rule(r: &KRule) -> Request {
    Request { kind: RTM_DELRULE, flags: 0, payload: emit(&rule_msg(r)) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn route_requests_round_trip_through_the_parser() {
        // A route request parses back to the same key and next hop: the same code reads dumps.
        let r = Route {
            table: 1000,
            dst: "10.61.3.0/24".parse().unwrap(),
            via: NextHop::Interface("ist0".into()),
            metric: 7,
        };
        let req = add_route(&r, Some(42), false);
        let m = RouteMessage::parse(&req.payload[..]).unwrap();
        assert_eq!(m.header.destination_prefix_length, 24);
        assert_eq!(u8::from(m.header.protocol), RTPROT_ISTHMUS);
        assert_eq!(m.header.table, 0, "tables above 255 go in RTA_TABLE only");
        assert!(m.attributes.contains(&RouteAttribute::Table(1000)));
        assert!(m.attributes.contains(&RouteAttribute::Oif(42)));
        assert!(m.attributes.contains(&RouteAttribute::Priority(7)));
        assert_eq!(m.header.scope, RouteScope::Link);
        // The hand parser used for dumps reads the same bytes back.
        let names = HashMap::from([(42, "ist0".to_owned())]);
        let back = parse_route(&req.payload, &names).unwrap();
        assert_eq!(back, KRoute { key: r.key(), via: Some(r.via.clone()) });
        assert_eq!(parse_route(&req.payload[..11], &names), None, "short header");
        let mut foreign = req.payload.clone();
        foreign[5] = 4; // RTPROT_STATIC
        assert_eq!(parse_route(&foreign, &names), None, "other protocols are not ours");
        let bh = Route { via: NextHop::Blackhole, table: 254, ..r };
        let req = add_route(&bh, None, true);
        let m = RouteMessage::parse(&req.payload[..]).unwrap();
        assert_eq!(m.header.kind, RouteType::BlackHole);
        assert_eq!(m.header.table, 254);
        assert_eq!(parse_route(&req.payload, &names).unwrap().via, Some(NextHop::Blackhole));
    }

    #[test]
    fn rule_requests_carry_the_protocol_and_prefixes() {
        let r = KRule {
            v4: true,
            rule: Rule {
                priority: 1000,
                from: Some("10.60.1.0/24".parse().unwrap()),
                to: None,
                ip_proto: Some(17),
                sport: Some(4500),
                table: 100,
            },
        };
        let req = add_rule(&r);
        let m = RuleMessage::parse(&req.payload[..]).unwrap();
        assert_eq!(m.header.src_len, 24);
        assert!(m.attributes.contains(&RuleAttribute::Protocol(RouteProtocol::from(181))));
        assert!(m.attributes.contains(&RuleAttribute::Priority(1000)));
        // The same code reads dumps: the rule parses back whole.
        assert_eq!(parse_rule(&req.payload, true).unwrap().map(|k| k.rule), Some(r.rule));
    }
}
