//! The flow key (addresses, protocol, ports) of an inner packet, as the SPD matches it
//! (RFC 4301 §4.4.1.1). IPv6 extension headers are skipped to find the upper layer (RFC 8200
//! §4); non-initial fragments carry no ports (RFC 4301 §7: they match "OPAQUE" ports as zero).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use isthmus_tables::FlowKey;

/// Extension headers walked before giving up: a packet with more is treated as malformed.
const MAX_EXT_HEADERS: usize = 8;

/// The flow key of an IPv4 or IPv6 packet, or `None` when the bytes are not a well-formed
/// packet header.
pub fn flow_key(pkt: &[u8]) -> Option<FlowKey> {
    match pkt.first()? >> 4 {
        4 => v4(pkt),
        6 => v6(pkt),
        _ => None,
    }
}

fn v4(pkt: &[u8]) -> Option<FlowKey> {
    let ihl = usize::from(pkt[0] & 0x0f) * 4;
    if ihl < 20 || pkt.len() < ihl {
        return None;
    }
    let src = IpAddr::V4(Ipv4Addr::new(pkt[12], pkt[13], pkt[14], pkt[15]));
    let dst = IpAddr::V4(Ipv4Addr::new(pkt[16], pkt[17], pkt[18], pkt[19]));
    let proto = pkt[9];
    let first_fragment = u16::from_be_bytes([pkt[6], pkt[7]]) & 0x1fff == 0;
    let (src_port, dst_port) = if first_fragment { ports(proto, &pkt[ihl..]) } else { (0, 0) };
    Some(FlowKey { src, dst, proto, src_port, dst_port })
}

fn v6(pkt: &[u8]) -> Option<FlowKey> {
    if pkt.len() < 40 {
        return None;
    }
    let a: [u8; 16] = pkt[8..24].try_into().ok()?;
    let b: [u8; 16] = pkt[24..40].try_into().ok()?;
    let (src, dst) = (IpAddr::V6(Ipv6Addr::from(a)), IpAddr::V6(Ipv6Addr::from(b)));
    let mut next = pkt[6];
    let mut off = 40;
    let mut first_fragment = true;
    for _ in 0..MAX_EXT_HEADERS {
        let hdr = pkt.get(off..off + 8);
        let len = match next {
            0 | 43 | 60 => usize::from(hdr?[1]) * 8 + 8,
            44 => {
                first_fragment = u16::from_be_bytes([hdr?[2], hdr?[3]]) & 0xfff8 == 0;
                8
            }
            51 => usize::from(hdr?[1]) * 4 + 8,
            proto => {
                let (sp, dp) = if first_fragment { ports(proto, pkt.get(off..)?) } else { (0, 0) };
                return Some(FlowKey { src, dst, proto, src_port: sp, dst_port: dp });
            }
        };
        next = hdr?[0];
        off += len;
    }
    None
}

/// Ports for TCP, UDP, UDP-Lite and SCTP; type and code for ICMP and ICMPv6; zero otherwise or
/// when the transport header is cut short.
fn ports(proto: u8, l4: &[u8]) -> (u16, u16) {
    match (proto, l4) {
        (6 | 17 | 132 | 136, [a, b, c, d, ..]) => {
            (u16::from_be_bytes([*a, *b]), u16::from_be_bytes([*c, *d]))
        }
        (1 | 58, [t, c, ..]) => (u16::from(*t), u16::from(*c)),
        _ => (0, 0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v4_packet(proto: u8, l4: &[u8]) -> Vec<u8> {
        let mut p = vec![0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, proto, 0, 0, 10, 32, 1, 2, 10, 32, 2, 2];
        p.extend_from_slice(l4);
        p
    }

    #[test]
    fn tcp_udp_and_icmp_v4() {
        let f = flow_key(&v4_packet(6, &[0x30, 0x39, 0, 80, 0, 0, 0, 0])).unwrap();
        assert_eq!((f.proto, f.src_port, f.dst_port), (6, 12345, 80));
        assert_eq!(f.src, "10.32.1.2".parse::<IpAddr>().unwrap());
        let f = flow_key(&v4_packet(1, &[8, 0, 0, 0])).unwrap();
        assert_eq!((f.proto, f.src_port, f.dst_port), (1, 8, 0));
        // Cut-short transport header: no ports, still a flow.
        let f = flow_key(&v4_packet(17, &[1])).unwrap();
        assert_eq!((f.src_port, f.dst_port), (0, 0));
    }

    #[test]
    fn non_initial_fragment_has_no_ports_rfc4301_7() {
        let mut p = v4_packet(6, &[0x30, 0x39, 0, 80]);
        p[7] = 10;
        let f = flow_key(&p).unwrap();
        assert_eq!((f.src_port, f.dst_port), (0, 0));
    }

    #[test]
    fn ipv6_skips_extension_headers_rfc8200_4() {
        let mut p = vec![0u8; 40];
        p[0] = 0x60;
        p[6] = 0; // hop-by-hop
        p[23] = 1;
        p[39] = 2;
        p.extend_from_slice(&[60, 0, 0, 0, 0, 0, 0, 0]); // HBH -> dest opts
        p.extend_from_slice(&[17, 0, 0, 0, 0, 0, 0, 0]); // dest opts -> UDP
        p.extend_from_slice(&[0, 53, 0x13, 0x88, 0, 8, 0, 0]);
        let f = flow_key(&p).unwrap();
        assert_eq!((f.proto, f.src_port, f.dst_port), (17, 53, 5000));
        assert_eq!(f.dst, "::2".parse::<IpAddr>().unwrap());
        // A chain that runs off the end is malformed.
        p.truncate(50);
        assert!(flow_key(&p).is_none());
    }

    #[test]
    fn garbage_is_refused_without_panicking() {
        assert!(flow_key(&[]).is_none());
        assert!(flow_key(&[0x45; 19]).is_none());
        assert!(flow_key(&[0x4f; 40]).is_none());
        assert!(flow_key(&[0x60; 39]).is_none());
        assert!(flow_key(&[0x10; 60]).is_none());
        for len in 0..80 {
            let _ = flow_key(&vec![0x60; len]);
            let _ = flow_key(&vec![0x46; len]);
        }
    }
}
