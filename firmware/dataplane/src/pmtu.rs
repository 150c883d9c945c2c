//! Path MTU for the tunnel: the ICMP errors that tell a LAN sender its packet does not fit
//! (ICMPv4 "fragmentation needed and DF set", RFC 792 and RFC 1191 §4; ICMPv6 "packet too big",
//! RFC 4443 §3.2), built by `isthmus-wire`, and the advice they carry. TCP MSS clamping on SYNs
//! (RFC 879 §7, RFC 6691) is `isthmus_wire::tcp::clamp_mss`.

use std::net::IpAddr;

/// Builds the ICMP error telling the sender of `pkt` that at most `mtu` bytes fit, into `out`.
/// Returns its length, or `None` when no error may be sent: `pkt` is itself an ICMP error, a
/// non-first fragment, an IPv4 packet without DF (the tunnel fragments those instead), from a
/// source that is not a unicast host, or malformed.
///
/// The error's source address is the offending packet's destination: the gateway has no address
/// on the tunnel side, and that source passes reverse-path filtering on the LAN host's route
/// back. The sender keys its path MTU cache on the quoted destination, so this is what it needs.
pub fn build_too_big(pkt: &[u8], mtu: u32, out: &mut [u8]) -> Option<usize> {
    match isthmus_wire::ip_version(pkt)? {
        4 => {
            if !dont_fragment(pkt) {
                return None;
            }
            let dst: [u8; 4] = pkt.get(16..20)?.try_into().ok()?;
            let mtu = u16::try_from(mtu).unwrap_or(u16::MAX);
            isthmus_wire::icmpv4_frag_needed(pkt, mtu, dst.into(), out).ok()
        }
        6 => {
            let dst: [u8; 16] = pkt.get(24..40)?.try_into().ok()?;
            // Never below the IPv6 minimum MTU (RFC 8200 §5).
            isthmus_wire::icmpv6_packet_too_big(pkt, mtu.max(1280), dst.into(), out).ok()
        }
        _ => None,
    }
}

/// True when `pkt` (IPv4) has DF set; IPv6 never fragments in transit, so always true there.
pub fn dont_fragment(pkt: &[u8]) -> bool {
    match isthmus_wire::ip_version(pkt) {
        Some(4) => pkt.get(6).is_some_and(|f| f & 0x40 != 0),
        _ => true,
    }
}

/// The largest inner packet that fits a tunnel MTU after `overhead` bytes of outer headers and
/// ESP; what the ICMP error advertises.
pub fn inner_mtu(tunnel_mtu: u32, overhead: usize, inner: IpAddr) -> u32 {
    let floor = if inner.is_ipv4() { 68 } else { 1280 };
    tunnel_mtu.saturating_sub(overhead as u32).max(floor)
}

#[cfg(test)]
mod tests {
    use super::*;
    use isthmus_wire::{Icmpv4Packet, Icmpv6Packet, Ipv4Packet, Ipv6Packet};

    fn v4(len: usize, proto: u8, df: bool) -> Vec<u8> {
        let mut p = vec![0xab; len];
        isthmus_wire::ipv4::write_header(
            &mut p,
            [10, 61, 1, 2].into(),
            [10, 61, 2, 2].into(),
            proto,
            len - 20,
            64,
            0,
        )
        .unwrap();
        if df {
            p[6] |= 0x40
        } else {
            p[6] &= !0x40
        }
        p
    }

    #[test]
    fn frag_needed_comes_from_the_destination_rfc1191_4() {
        let big = v4(1500, 6, true);
        let mut out = [0u8; 600];
        let n = build_too_big(&big, 1400, &mut out).unwrap();
        assert_eq!(n, 576);
        let ip = Ipv4Packet::new_checked(&out[..n]).unwrap();
        assert_eq!(ip.src(), std::net::Ipv4Addr::new(10, 61, 2, 2));
        assert_eq!(ip.dst(), std::net::Ipv4Addr::new(10, 61, 1, 2));
        let icmp = Icmpv4Packet::new_checked(ip.payload()).unwrap();
        assert_eq!((icmp.msg_type(), icmp.code()), (3, 4));
        assert_eq!(icmp.rest_of_header() & 0xffff, 1400);
        assert!(icmp.verify_checksum());
        // Without DF the tunnel fragments instead.
        assert!(build_too_big(&v4(1500, 6, false), 1400, &mut out).is_none());
    }

    #[test]
    fn no_icmp_error_about_an_icmp_error_rfc1122_3_2_2() {
        let mut p = v4(1500, 1, true);
        p[20] = 3;
        let mut out = [0u8; 600];
        assert!(build_too_big(&p, 1400, &mut out).is_none());
        p[20] = 8;
        assert!(build_too_big(&p, 1400, &mut out).is_some());
    }

    #[test]
    fn packet_too_big_never_below_1280_rfc4443_3_2() {
        let mut p = vec![0u8; 1500];
        let (s, d): (std::net::Ipv6Addr, std::net::Ipv6Addr) =
            ("fd61:1::2".parse().unwrap(), "fd61:2::2".parse().unwrap());
        isthmus_wire::ipv6::write_header(&mut p, s, d, 17, 1460, 64).unwrap();
        let mut out = [0u8; 1400];
        let n = build_too_big(&p, 900, &mut out).unwrap();
        assert_eq!(n, 1280);
        let ip = Ipv6Packet::new_checked(&out[..n]).unwrap();
        assert_eq!((ip.src(), ip.dst()), (d, s));
        let icmp = Icmpv6Packet::new_checked(&out[40..n]).unwrap();
        assert_eq!((icmp.msg_type(), icmp.rest_of_header()), (2, 1280));
        assert!(icmp.verify_checksum(d, s));
    }

    #[test]
    fn garbage_never_panics() {
        let mut out = [0u8; 2000];
        for len in 0..64 {
            for b in [0x4f, 0x45, 0x6f, 0x60] {
                let _ = build_too_big(&vec![b; len], 1400, &mut out);
            }
        }
        assert_eq!(inner_mtu(1400, 73, "10.0.0.1".parse().unwrap()), 1327);
        assert_eq!(inner_mtu(1400, 200, "::1".parse().unwrap()), 1280);
    }
}
