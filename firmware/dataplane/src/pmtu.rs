//! Path MTU for the tunnel: the ICMP errors that tell a LAN sender its packet does not fit
//! (ICMPv4 "fragmentation needed and DF set", RFC 792 and RFC 1191 §4; ICMPv6 "packet too big",
//! RFC 4443 §3.2), and TCP MSS clamping on SYNs (RFC 879 §7, RFC 6691) with the checksum fixed
//! up incrementally (RFC 1624 §3).
//!
//! These are written here rather than taken from `isthmus-wire`, whose builders were not
//! published when the dataplane was written; they only touch bytes already validated by
//! `isthmus_wire::flow_key` and never index past a checked length.

use std::net::IpAddr;

/// ICMP error types (RFC 792, RFC 1122 §3.2.2): never answered with another ICMP error.
const ICMPV4_ERRORS: [u8; 5] = [3, 4, 5, 11, 12];

/// Largest ICMPv4 error we build: RFC 1812 §4.3.2.3 quotes as much as fits in 576 bytes.
const ICMPV4_MAX: usize = 576;
/// ICMPv6 errors must not exceed the IPv6 minimum MTU (RFC 4443 §2.4 (c)).
const ICMPV6_MAX: usize = 1280;

/// The one's-complement sum of `data` (RFC 1071), folded but not inverted, added to `acc`.
fn sum(mut acc: u32, data: &[u8]) -> u32 {
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        acc += u32::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [last] = chunks.remainder() {
        acc += u32::from(*last) << 8;
    }
    acc
}

fn fold(mut acc: u32) -> u16 {
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc as u16
}

fn checksum(data: &[u8]) -> u16 {
    !fold(sum(0, data))
}

/// Builds the ICMP error telling the sender of `pkt` that at most `mtu` bytes fit, into `out`.
/// Returns its length, or `None` when no error may be sent: `pkt` is itself an ICMP error, a
/// non-first fragment, an IPv4 packet without DF (the tunnel fragments those instead), or too
/// short to quote.
///
/// The error's source address is the offending packet's destination: the gateway has no address
/// on the tunnel side, and that source passes reverse-path filtering on the LAN host's route
/// back. The sender keys its path MTU cache on the quoted destination, so this is what it needs.
pub fn build_too_big(
    pkt: &[u8],
    proto: u8,
    icmp_type: u16,
    mtu: u32,
    out: &mut [u8],
) -> Option<usize> {
    match pkt.first()? >> 4 {
        4 => build_frag_needed(pkt, proto, icmp_type, mtu, out),
        6 => build_packet_too_big(pkt, proto, icmp_type, mtu, out),
        _ => None,
    }
}

/// True when `pkt` (IPv4) has DF set; IPv6 never fragments in transit, so always true there.
pub fn dont_fragment(pkt: &[u8]) -> bool {
    match pkt.first().map(|b| b >> 4) {
        Some(4) => pkt.get(6).is_some_and(|f| f & 0x40 != 0),
        _ => true,
    }
}

fn build_frag_needed(
    pkt: &[u8],
    proto: u8,
    icmp_type: u16,
    mtu: u32,
    out: &mut [u8],
) -> Option<usize> {
    if pkt.len() < 20 || !dont_fragment(pkt) {
        return None;
    }
    let frag_offset = u16::from_be_bytes([pkt[6], pkt[7]]) & 0x1fff;
    if frag_offset != 0 || (proto == 1 && ICMPV4_ERRORS.contains(&(icmp_type as u8))) {
        return None;
    }
    let quote = pkt.len().min(ICMPV4_MAX - 28);
    let total = 28 + quote;
    let out = out.get_mut(..total)?;
    out.fill(0);
    out[0] = 0x45;
    out[2..4].copy_from_slice(&(total as u16).to_be_bytes());
    out[8] = 64;
    out[9] = 1;
    out[12..16].copy_from_slice(&pkt[16..20]);
    out[16..20].copy_from_slice(&pkt[12..16]);
    let c = checksum(&out[..20]);
    out[10..12].copy_from_slice(&c.to_be_bytes());
    out[20] = 3; // destination unreachable
    out[21] = 4; // fragmentation needed and DF set
    out[26..28].copy_from_slice(&(mtu.min(0xffff) as u16).to_be_bytes());
    out[28..].copy_from_slice(&pkt[..quote]);
    let c = checksum(&out[20..]);
    out[22..24].copy_from_slice(&c.to_be_bytes());
    Some(total)
}

fn build_packet_too_big(
    pkt: &[u8],
    proto: u8,
    icmp_type: u16,
    mtu: u32,
    out: &mut [u8],
) -> Option<usize> {
    if pkt.len() < 40 || (proto == 58 && icmp_type < 128) {
        return None;
    }
    let quote = pkt.len().min(ICMPV6_MAX - 48);
    let total = 48 + quote;
    let out = out.get_mut(..total)?;
    out.fill(0);
    out[0] = 0x60;
    out[4..6].copy_from_slice(&((8 + quote) as u16).to_be_bytes());
    out[6] = 58;
    out[7] = 64;
    out[8..24].copy_from_slice(&pkt[24..40]);
    out[24..40].copy_from_slice(&pkt[8..24]);
    out[40] = 2; // packet too big
    out[44..48].copy_from_slice(&mtu.max(1280).to_be_bytes());
    out[48..].copy_from_slice(&pkt[..quote]);
    // Pseudo-header (RFC 8200 §8.1): addresses, upper-layer length, next header.
    let mut acc = sum(0, &out[8..40]);
    acc += (8 + quote) as u32;
    acc += 58;
    acc = sum(acc, &out[40..]);
    let c = !fold(acc);
    out[42..44].copy_from_slice(&c.to_be_bytes());
    Some(total)
}

/// Lowers the MSS option of a TCP SYN in `pkt` to `max_mss` if it is larger, fixing the TCP
/// checksum incrementally. Returns true when the packet changed. IPv6 packets with extension
/// headers before TCP are left alone.
pub fn clamp_mss(pkt: &mut [u8], max_mss: u16) -> bool {
    let Some(tcp_start) = tcp_offset(pkt) else { return false };
    let Some(tcp) = pkt.get_mut(tcp_start..) else { return false };
    if tcp.len() < 20 || tcp[13] & 0x02 == 0 {
        return false; // not a SYN
    }
    let hdr_len = usize::from(tcp[12] >> 4) * 4;
    if hdr_len < 20 || hdr_len > tcp.len() {
        return false;
    }
    let mut i = 20;
    while i < hdr_len {
        match tcp[i] {
            0 => break,
            1 => i += 1,
            kind => {
                let Some(&len) = tcp.get(i + 1) else { break };
                let len = usize::from(len);
                if len < 2 || i + len > hdr_len {
                    break;
                }
                if kind == 2 && len == 4 {
                    let old = u16::from_be_bytes([tcp[i + 2], tcp[i + 3]]);
                    if old <= max_mss {
                        return false;
                    }
                    tcp[i + 2..i + 4].copy_from_slice(&max_mss.to_be_bytes());
                    // RFC 1624 eqn. 3: HC' = ~(~HC + ~m + m').
                    let hc = u16::from_be_bytes([tcp[16], tcp[17]]);
                    let acc = u32::from(!hc) + u32::from(!old) + u32::from(max_mss);
                    tcp[16..18].copy_from_slice(&(!fold(acc)).to_be_bytes());
                    return true;
                }
                i += len;
            }
        }
    }
    false
}

fn tcp_offset(pkt: &[u8]) -> Option<usize> {
    match pkt.first()? >> 4 {
        4 => {
            let ihl = usize::from(pkt[0] & 0x0f) * 4;
            let frag = u16::from_be_bytes([*pkt.get(6)?, *pkt.get(7)?]) & 0x1fff;
            (*pkt.get(9)? == 6 && frag == 0 && ihl >= 20).then_some(ihl)
        }
        6 => (*pkt.get(6)? == 6).then_some(40),
        _ => None,
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

    /// An IPv4 TCP SYN with MSS 1460, checksums valid.
    fn syn_v4() -> Vec<u8> {
        let mut p = vec![
            0x45, 0, 0, 44, 0, 1, 0x40, 0, 64, 6, 0, 0, 10, 32, 1, 2, 10, 32, 2, 2, // IPv4
            0x30, 0x39, 0x00, 0x50, 0, 0, 0, 1, 0, 0, 0, 0, 0x60, 0x02, 0xff, 0xff, 0, 0, 0,
            0, // TCP
            2, 4, 0x05, 0xb4, // MSS 1460
        ];
        let c = checksum(&p[..20]);
        p[10..12].copy_from_slice(&c.to_be_bytes());
        let c = tcp_checksum_v4(&p);
        p[36..38].copy_from_slice(&c.to_be_bytes());
        p
    }

    fn tcp_checksum_v4(p: &[u8]) -> u16 {
        let mut acc = sum(0, &p[12..20]);
        acc += 6 + (p.len() - 20) as u32;
        let mut tcp = p[20..].to_vec();
        tcp[16] = 0;
        tcp[17] = 0;
        !fold(sum(acc, &tcp))
    }

    #[test]
    fn mss_clamp_rewrites_and_keeps_checksum_valid_rfc1624() {
        let mut p = syn_v4();
        assert!(clamp_mss(&mut p, 1360));
        assert_eq!(u16::from_be_bytes([p[42], p[43]]), 1360);
        assert_eq!(u16::from_be_bytes([p[36], p[37]]), tcp_checksum_v4(&p));
        // Already small enough: untouched.
        assert!(!clamp_mss(&mut p, 1400));
        // Not a SYN: untouched.
        let mut q = syn_v4();
        q[33] = 0x10;
        assert!(!clamp_mss(&mut q, 1000));
        // Truncated options never panic.
        let mut r = syn_v4();
        r.truncate(42);
        assert!(!clamp_mss(&mut r, 1000));
    }

    #[test]
    fn frag_needed_quotes_the_packet_rfc1191_4() {
        let mut big = syn_v4();
        big.resize(1500, 0xab);
        let mut out = [0u8; 600];
        let n = build_too_big(&big, 6, 0, 1400, &mut out).unwrap();
        assert_eq!(n, 576);
        assert_eq!(&out[12..16], &[10, 32, 2, 2]);
        assert_eq!(&out[16..20], &[10, 32, 1, 2]);
        assert_eq!((out[20], out[21]), (3, 4));
        assert_eq!(u16::from_be_bytes([out[26], out[27]]), 1400);
        assert_eq!(checksum(&out[..20]), 0);
        assert_eq!(checksum(&out[20..n]), 0);
        assert_eq!(&out[28..48], &big[..20]);
        // Without DF the tunnel fragments instead.
        big[6] = 0;
        assert!(build_too_big(&big, 6, 0, 1400, &mut out).is_none());
    }

    #[test]
    fn no_icmp_error_about_an_icmp_error_rfc1122_3_2_2() {
        let mut p = syn_v4();
        p[9] = 1;
        let mut out = [0u8; 600];
        assert!(build_too_big(&p, 1, 3, 1400, &mut out).is_none());
        assert!(build_too_big(&p, 1, 8, 1400, &mut out).is_some());
    }

    #[test]
    fn packet_too_big_rfc4443_3_2() {
        let mut p = vec![0u8; 1500];
        p[0] = 0x60;
        p[6] = 17;
        p[8..24].copy_from_slice(&"2001:db8::1".parse::<std::net::Ipv6Addr>().unwrap().octets());
        p[24..40].copy_from_slice(&"2001:db8::2".parse::<std::net::Ipv6Addr>().unwrap().octets());
        let mut out = [0u8; 1400];
        let n = build_too_big(&p, 17, 0, 1400, &mut out).unwrap();
        assert_eq!(n, 1280);
        assert_eq!((out[40], out[41]), (2, 0));
        assert_eq!(u32::from_be_bytes([out[44], out[45], out[46], out[47]]), 1400);
        assert_eq!(&out[8..24], &p[24..40]);
        let mut acc = sum(0, &out[8..40]);
        acc += (n - 40) as u32 + 58;
        assert_eq!(!fold(sum(acc, &out[40..n])), 0);
        // Never about an ICMPv6 error; never below the IPv6 minimum MTU.
        assert!(build_too_big(&p, 58, 1, 1400, &mut out).is_none());
        build_too_big(&p, 17, 0, 900, &mut out).unwrap();
        assert_eq!(u32::from_be_bytes([out[44], out[45], out[46], out[47]]), 1280);
    }

    #[test]
    fn garbage_never_panics() {
        let mut out = [0u8; 2000];
        for len in 0..64 {
            let mut p = vec![0x4f; len];
            let _ = build_too_big(&p, 6, 0, 1400, &mut out);
            let _ = clamp_mss(&mut p, 1000);
            p.iter_mut().for_each(|b| *b = 0x6f);
            let _ = build_too_big(&p, 6, 0, 1400, &mut out);
            let _ = clamp_mss(&mut p, 1000);
        }
    }
}
