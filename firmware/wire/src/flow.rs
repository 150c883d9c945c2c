//! The 5-tuple of an IP packet ([`FlowKey`]) as the SPD, security-group and flow tables see it.
//! Ports are those of TCP, UDP, SCTP and UDP-Lite; for ICMP and ICMPv6 the source port carries
//! the type and the destination port the code (RFC 4301 §4.4.1.1). Non-first fragments have no
//! ports (zero), as RFC 4301 §7 describes for "OPAQUE" selectors.

use std::net::IpAddr;

use isthmus_tables::FlowKey;

use crate::ipv4::Ipv4Packet;
use crate::ipv6::Ipv6Packet;
use crate::{WireError, be16, need, proto};

const SCTP: u8 = 132;
const UDPLITE: u8 = 136;

/// The IP version of a packet from its first nibble.
pub fn ip_version(packet: &[u8]) -> Option<u8> {
    packet.first().map(|b| b >> 4)
}

/// Extracts the flow key of an IPv4 or IPv6 packet.
pub fn flow_key(packet: &[u8]) -> Result<FlowKey, WireError> {
    let (src, dst, protocol, l4, later_fragment): (IpAddr, IpAddr, u8, &[u8], bool) =
        match ip_version(packet) {
            Some(4) => {
                let p = Ipv4Packet::new_checked(packet)?;
                let (hl, tl) = (p.header_len(), p.total_len());
                (
                    p.src().into(),
                    p.dst().into(),
                    p.protocol(),
                    &packet[hl..tl],
                    p.frag_offset() != 0,
                )
            }
            Some(6) => {
                let p = Ipv6Packet::new_checked(packet)?;
                let u = p.upper_layer()?;
                let l4 = &packet[u.offset..p.total_len()];
                (p.src().into(), p.dst().into(), u.protocol, l4, u.later_fragment)
            }
            Some(v) => return Err(WireError::BadVersion(v)),
            None => return Err(WireError::Truncated { what: "IP header", need: 1, have: 0 }),
        };
    let (src_port, dst_port) = if later_fragment {
        (0, 0)
    } else {
        match protocol {
            proto::TCP | proto::UDP | SCTP | UDPLITE => {
                need("transport ports", l4, 4)?;
                (be16(l4, 0), be16(l4, 2))
            }
            proto::ICMP | proto::ICMPV6 => {
                need("ICMP type and code", l4, 2)?;
                (u16::from(l4[0]), u16::from(l4[1]))
            }
            _ => (0, 0),
        }
    };
    Ok(FlowKey { src, dst, proto: protocol, src_port, dst_port })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ipv4, ipv6};

    fn v4(protocol: u8, l4: &[u8]) -> Vec<u8> {
        let mut p = vec![0u8; 20];
        ipv4::write_header(
            &mut p,
            [10, 31, 1, 2].into(),
            [10, 31, 2, 3].into(),
            protocol,
            l4.len(),
            64,
            0,
        )
        .unwrap();
        p.extend(l4);
        p
    }

    #[test]
    fn ports_types_and_fragments() {
        let k = flow_key(&v4(proto::TCP, &[0x9c, 0x40, 0, 80, 0, 0, 0, 0])).unwrap();
        assert_eq!(k.src, "10.31.1.2".parse::<IpAddr>().unwrap());
        assert_eq!((k.proto, k.src_port, k.dst_port), (6, 40000, 80));
        let k = flow_key(&v4(proto::ICMP, &[8, 0, 0, 0, 0, 0, 0, 0])).unwrap();
        assert_eq!((k.src_port, k.dst_port), (8, 0));
        let k = flow_key(&v4(47, &[0; 4])).unwrap();
        assert_eq!((k.proto, k.src_port, k.dst_port), (47, 0, 0));
        let mut frag = v4(proto::UDP, &[0; 8]);
        frag[6..8].copy_from_slice(&0x0002u16.to_be_bytes());
        frag[10..12].fill(0);
        assert_eq!(flow_key(&frag).unwrap().src_port, 0);
        assert!(matches!(flow_key(&v4(proto::UDP, &[0, 1])), Err(WireError::Truncated { .. })));
        assert!(flow_key(&[]).is_err());
        assert_eq!(flow_key(&[0x25; 30]).unwrap_err(), WireError::BadVersion(2));
    }

    #[test]
    fn ipv6_through_extension_headers() {
        let mut p = vec![0u8; 40];
        let l4 = [0u8, 53, 0x30, 0x39, 0, 8, 0, 0];
        let hop = [proto::UDP, 0, 0, 0, 0, 0, 0, 0];
        ipv6::write_header(
            &mut p,
            "2001:db8::1".parse().unwrap(),
            "2001:db8::2".parse().unwrap(),
            0,
            16,
            64,
        )
        .unwrap();
        p.extend(hop);
        p.extend(l4);
        let k = flow_key(&p).unwrap();
        assert_eq!((k.proto, k.src_port, k.dst_port), (17, 53, 12345));
        assert_eq!(k.dst, "2001:db8::2".parse::<IpAddr>().unwrap());
    }
}
