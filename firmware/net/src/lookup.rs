//! `ip route get`: how the kernel forwards one packet, for the path tracer. One `RTM_GETROUTE`
//! request with `RTM_F_FIB_MATCH` (answer with the FIB entry that matched, not a cloned host
//! route; Linux 4.13) and `RTM_F_LOOKUP_TABLE` (report the table it was found in), rtnetlink(7).

use std::collections::HashMap;
use std::net::IpAddr;

use netlink_packet_core::{Emitable, Parseable};
use netlink_packet_route::AddressFamily;
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteFlags, RouteHeader, RouteMessage, RouteType,
};
use netlink_sys::protocols::NETLINK_ROUTE;

use crate::Error;
use crate::kernel::{RTM_GETROUTE, RTM_NEWROUTE, dump_links};
use crate::nl::NlSocket;

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
    /// Another type (broadcast, multicast, ...), by its number.
    Other(u8),
}

/// The FIB entry the kernel forwards a packet by.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouteLookup {
    /// Routing table id (254 main, 255 local).
    pub table: u32,
    /// The entry's destination prefix: address and length.
    pub destination: IpAddr,
    /// The prefix length.
    pub prefix_len: u8,
    /// Output interface.
    pub oif: Option<String>,
    /// Next-hop router.
    pub gateway: Option<IpAddr>,
    /// Its type.
    pub kind: RouteKind,
}

/// Why a lookup has no answer.
#[derive(Debug, thiserror::Error)]
pub enum LookupError {
    /// The input interface does not exist.
    #[error("interface {0} does not exist")]
    NoInterface(String),
    /// The kernel refuses to forward the packet (`Network is unreachable`; `Invalid argument`
    /// when the entry found drops it: blackhole, prohibit).
    #[error("{}", std::io::Error::from_raw_os_error(*errno))]
    Refused {
        /// Positive errno.
        errno: i32,
    },
    /// The netlink exchange failed.
    #[error(transparent)]
    Netlink(#[from] Error),
}

/// Asks the kernel of the calling thread's namespace how it forwards a packet from `src`
/// arriving on `iif` to `dst` (`ip route get DST from SRC iif IIF fibmatch`).
pub fn route_get(
    src: Option<IpAddr>,
    dst: IpAddr,
    iif: Option<&str>,
) -> Result<RouteLookup, LookupError> {
    let mut sock = NlSocket::open(NETLINK_ROUTE)?;
    let names: HashMap<u32, String> =
        dump_links(&mut sock)?.into_iter().map(|l| (l.index, l.name)).collect();
    let iif = match iif {
        Some(name) => Some(
            names
                .iter()
                .find(|(_, n)| *n == name)
                .map(|(i, _)| *i)
                .ok_or_else(|| LookupError::NoInterface(name.to_owned()))?,
        ),
        None => None,
    };
    let req = request(src, dst, iif);
    let mut payload = vec![0; req.buffer_len()];
    req.emit(&mut payload);
    let answer =
        sock.get(RTM_GETROUTE, &payload)?.map_err(|e| LookupError::Refused { errno: e.errno })?;
    let (kind, p) = answer;
    if kind != RTM_NEWROUTE {
        return Err(Error::Protocol(format!("RTM_GETROUTE answered with type {kind}")).into());
    }
    parse(&p, &names).map_err(LookupError::Netlink)
}

fn request(src: Option<IpAddr>, dst: IpAddr, iif: Option<u32>) -> RouteMessage {
    let (family, bits) =
        if dst.is_ipv4() { (AddressFamily::Inet, 32) } else { (AddressFamily::Inet6, 128) };
    let mut m = RouteMessage::default();
    m.header = RouteHeader {
        address_family: family,
        destination_prefix_length: bits,
        source_prefix_length: if src.is_some() { bits } else { 0 },
        flags: RouteFlags::FibMatch | RouteFlags::LookupTable,
        ..RouteHeader::default()
    };
    m.attributes.push(RouteAttribute::Destination(RouteAddress::from(dst)));
    if let Some(s) = src {
        m.attributes.push(RouteAttribute::Source(RouteAddress::from(s)));
    }
    if let Some(i) = iif {
        m.attributes.push(RouteAttribute::Iif(i));
    }
    m
}

/// Reads the `RTM_NEWROUTE` answer; `names` maps interface indexes to names.
fn parse(p: &[u8], names: &HashMap<u32, String>) -> Result<RouteLookup, Error> {
    let m = RouteMessage::parse(p)
        .map_err(|e| Error::Protocol(format!("cannot parse a route from the kernel: {e}")))?;
    let v4 = m.header.address_family == AddressFamily::Inet;
    let any = if v4 { IpAddr::from([0u8; 4]) } else { IpAddr::from([0u16; 8]) };
    let ip = |a: &RouteAddress| match a {
        RouteAddress::Inet(v) => Some(IpAddr::V4(*v)),
        RouteAddress::Inet6(v) => Some(IpAddr::V6(*v)),
        _ => None,
    };
    let mut r = RouteLookup {
        table: u32::from(m.header.table),
        destination: any,
        prefix_len: m.header.destination_prefix_length,
        oif: None,
        gateway: None,
        kind: match m.header.kind {
            RouteType::Unicast => RouteKind::Unicast,
            RouteType::Local => RouteKind::Local,
            RouteType::BlackHole => RouteKind::Blackhole,
            RouteType::Unreachable => RouteKind::Unreachable,
            RouteType::Prohibit => RouteKind::Prohibit,
            other => RouteKind::Other(u8::from(other)),
        },
    };
    for a in &m.attributes {
        match a {
            RouteAttribute::Destination(d) => r.destination = ip(d).unwrap_or(any),
            RouteAttribute::Gateway(g) => r.gateway = ip(g),
            RouteAttribute::Oif(i) => r.oif = names.get(i).cloned(),
            RouteAttribute::Table(t) => r.table = *t,
            _ => {}
        }
    }
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_request_asks_for_the_matching_fib_entry_from_a_source_on_an_interface() {
        let m =
            request(Some("10.65.1.10".parse().unwrap()), "10.65.2.10".parse().unwrap(), Some(7));
        let mut b = vec![0; m.buffer_len()];
        m.emit(&mut b);
        // 12 rtmsg + 3 attributes of 8 bytes.
        assert_eq!(b.len(), 36);
        assert_eq!(&b[0..3], &[libc::AF_INET as u8, 32, 32]);
        assert_eq!(u32::from_ne_bytes(b[8..12].try_into().unwrap()), 0x3000);
        let back = RouteMessage::parse(&b[..]).unwrap();
        assert!(back.attributes.contains(&RouteAttribute::Iif(7)));
    }

    #[test]
    fn an_answer_names_its_table_interface_gateway_and_kind_and_junk_is_an_error() {
        let mut m = request(None, "10.65.2.0".parse().unwrap(), None);
        m.header.destination_prefix_length = 24;
        m.header.kind = RouteType::Unicast;
        m.attributes = vec![
            RouteAttribute::Destination(RouteAddress::Inet("10.65.2.0".parse().unwrap())),
            RouteAttribute::Gateway(RouteAddress::Inet("10.65.0.254".parse().unwrap())),
            RouteAttribute::Oif(3),
            RouteAttribute::Table(100),
        ];
        let mut b = vec![0; m.buffer_len()];
        m.emit(&mut b);
        let names = HashMap::from([(3, "wan0".to_owned())]);
        let r = parse(&b, &names).unwrap();
        assert_eq!((r.table, r.prefix_len, r.kind), (100, 24, RouteKind::Unicast));
        assert_eq!(r.destination, "10.65.2.0".parse::<IpAddr>().unwrap());
        assert_eq!((r.oif.as_deref(), r.gateway), (Some("wan0"), "10.65.0.254".parse().ok()));
        for n in 0..b.len() {
            let _ = parse(&b[..n], &names);
        }
        assert!(parse(&b[..5], &names).is_err());
    }
}
