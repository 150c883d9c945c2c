//! ICMPv4 (RFC 792) and ICMPv6 (RFC 4443) views, and the "too big" errors the dataplane sends
//! back to LAN hosts when an inner packet plus ESP overhead exceeds the tunnel MTU: ICMPv4
//! "fragmentation needed and DF set" with the next-hop MTU (RFC 1191 §4) and ICMPv6 "packet too
//! big" (RFC 4443 §3.2).

use std::net::{Ipv4Addr, Ipv6Addr};

use crate::checksum;
use crate::ipv4::{self, Ipv4Packet};
use crate::ipv6::{self, Ipv6Packet};
use crate::{WireError, be16, be32, need, proto};

/// Bytes of the ICMP header (type, code, checksum, four more bytes).
pub const HEADER_LEN: usize = 8;

/// An ICMPv4 error is at most 576 bytes long (RFC 1812 §4.3.2.3).
pub const ICMPV4_ERROR_MAX: usize = 576;
/// An ICMPv6 error is at most the IPv6 minimum MTU, 1280 bytes (RFC 4443 §2.4(c)).
pub const ICMPV6_ERROR_MAX: usize = 1280;

/// ICMPv4 type "destination unreachable".
pub const V4_DEST_UNREACHABLE: u8 = 3;
/// ICMPv4 code "fragmentation needed and DF set".
pub const V4_FRAG_NEEDED: u8 = 4;
/// ICMPv6 type "packet too big".
pub const V6_PACKET_TOO_BIG: u8 = 2;

macro_rules! icmp_view {
    ($name:ident, $what:literal) => {
        /// A checked view of an
        #[doc = $what]
        /// message: at least the 8-byte header.
        #[derive(Debug, Clone, Copy)]
        pub struct $name<T> {
            buf: T,
        }

        impl<T: AsRef<[u8]>> $name<T> {
            /// Checks that the header is present.
            pub fn new_checked(buf: T) -> Result<$name<T>, WireError> {
                need($what, buf.as_ref(), HEADER_LEN)?;
                Ok($name { buf })
            }

            /// Message type.
            pub fn msg_type(&self) -> u8 {
                self.buf.as_ref()[0]
            }

            /// Code.
            pub fn code(&self) -> u8 {
                self.buf.as_ref()[1]
            }

            /// Checksum field.
            pub fn checksum(&self) -> u16 {
                be16(self.buf.as_ref(), 2)
            }

            /// The four bytes after the checksum (identifier and sequence, MTU, pointer...).
            pub fn rest_of_header(&self) -> u32 {
                be32(self.buf.as_ref(), 4)
            }

            /// What follows the header (for errors, the quoted packet).
            pub fn data(&self) -> &[u8] {
                &self.buf.as_ref()[HEADER_LEN..]
            }
        }
    };
}

icmp_view!(Icmpv4Packet, "ICMPv4");
icmp_view!(Icmpv6Packet, "ICMPv6");

impl<T: AsRef<[u8]>> Icmpv4Packet<T> {
    /// True when the checksum over the message verifies.
    pub fn verify_checksum(&self) -> bool {
        checksum::checksum(self.buf.as_ref()) == 0
    }

    /// True for error messages (RFC 1812 §4.3.2.7 forbids errors about errors).
    pub fn is_error(&self) -> bool {
        matches!(self.msg_type(), 3 | 4 | 5 | 11 | 12)
    }
}

impl<T: AsRef<[u8]>> Icmpv6Packet<T> {
    /// True when the checksum over the pseudo-header and message verifies.
    pub fn verify_checksum(&self, src: Ipv6Addr, dst: Ipv6Addr) -> bool {
        let m = self.buf.as_ref();
        let ph = checksum::pseudo_v6(src, dst, proto::ICMPV6, m.len() as u32);
        checksum::finish(checksum::sum(ph, m)) == 0
    }

    /// True for error messages (types below 128, RFC 4443 §2.1).
    pub fn is_error(&self) -> bool {
        self.msg_type() < 128
    }
}

fn out_of_room(need: usize, have: usize) -> WireError {
    WireError::BufferTooSmall { need, have }
}

/// Builds an IPv4 packet from `src` to the sender of `offending` carrying ICMP "fragmentation
/// needed and DF set" with `next_hop_mtu` (RFC 1191 §4), quoting as much of `offending` as fits
/// in 576 bytes (RFC 1812 §4.3.2.3). Returns its length in `out`.
///
/// Refuses (RFC 1812 §4.3.2.7) to answer ICMP errors, non-first fragments, and packets whose
/// source is not a unicast host or whose destination is broadcast or multicast. The caller
/// checks the DF bit: without it, the packet may be fragmented instead.
pub fn icmpv4_frag_needed(
    offending: &[u8],
    next_hop_mtu: u16,
    src: Ipv4Addr,
    out: &mut [u8],
) -> Result<usize, WireError> {
    let p = Ipv4Packet::new_checked(offending)?;
    if p.frag_offset() != 0 {
        return Err(WireError::NoIcmpError("not the first fragment"));
    }
    let s = p.src();
    if s.is_unspecified() || s.is_multicast() || s.is_broadcast() || s.is_loopback() {
        return Err(WireError::NoIcmpError("source is not a unicast host"));
    }
    if p.dst().is_multicast() || p.dst().is_broadcast() {
        return Err(WireError::NoIcmpError("destination is broadcast or multicast"));
    }
    if p.protocol() == proto::ICMP {
        let inner = Icmpv4Packet::new_checked(p.payload());
        if inner.map(|i| i.is_error()).unwrap_or(true) {
            return Err(WireError::NoIcmpError("it is an ICMP error"));
        }
    }
    let quote = &p.packet()[..p.total_len().min(ICMPV4_ERROR_MAX - ipv4::HEADER_LEN - HEADER_LEN)];
    let total = ipv4::HEADER_LEN + HEADER_LEN + quote.len();
    if out.len() < total {
        return Err(out_of_room(total, out.len()));
    }
    ipv4::write_header(out, src, s, proto::ICMP, HEADER_LEN + quote.len(), 64, 0)?;
    let icmp = &mut out[ipv4::HEADER_LEN..total];
    icmp[0] = V4_DEST_UNREACHABLE;
    icmp[1] = V4_FRAG_NEEDED;
    icmp[2..6].fill(0);
    icmp[6..8].copy_from_slice(&next_hop_mtu.to_be_bytes());
    icmp[HEADER_LEN..].copy_from_slice(quote);
    let c = checksum::checksum(icmp);
    icmp[2..4].copy_from_slice(&c.to_be_bytes());
    Ok(total)
}

/// Builds an IPv6 packet from `src` to the sender of `offending` carrying ICMPv6 "packet too
/// big" with `mtu` (RFC 4443 §3.2), quoting as much of `offending` as fits in 1280 bytes
/// (RFC 4443 §2.4(c)). Returns its length in `out`.
///
/// Refuses (RFC 4443 §2.4(e)) to answer ICMPv6 errors and packets from an unspecified or
/// multicast source; a multicast destination is allowed for this message (§2.4(e.2)).
pub fn icmpv6_packet_too_big(
    offending: &[u8],
    mtu: u32,
    src: Ipv6Addr,
    out: &mut [u8],
) -> Result<usize, WireError> {
    let p = Ipv6Packet::new_checked(offending)?;
    let s = p.src();
    if s.is_unspecified() || s.is_multicast() || s.is_loopback() {
        return Err(WireError::NoIcmpError("source is not a unicast host"));
    }
    if let Ok(u) = p.upper_layer()
        && u.protocol == proto::ICMPV6
        && !u.later_fragment
    {
        let inner = Icmpv6Packet::new_checked(&p.packet()[u.offset..]);
        if inner.map(|i| i.is_error()).unwrap_or(true) {
            return Err(WireError::NoIcmpError("it is an ICMPv6 error"));
        }
    }
    let quote = &p.packet()[..p.total_len().min(ICMPV6_ERROR_MAX - ipv6::HEADER_LEN - HEADER_LEN)];
    let icmp_len = HEADER_LEN + quote.len();
    let total = ipv6::HEADER_LEN + icmp_len;
    if out.len() < total {
        return Err(out_of_room(total, out.len()));
    }
    ipv6::write_header(out, src, s, proto::ICMPV6, icmp_len, 64)?;
    let icmp = &mut out[ipv6::HEADER_LEN..total];
    icmp[0] = V6_PACKET_TOO_BIG;
    icmp[1] = 0;
    icmp[2..4].fill(0);
    icmp[4..8].copy_from_slice(&mtu.to_be_bytes());
    icmp[HEADER_LEN..].copy_from_slice(quote);
    let ph = checksum::pseudo_v6(src, s, proto::ICMPV6, icmp_len as u32);
    let c = checksum::finish(checksum::sum(ph, icmp));
    icmp[2..4].copy_from_slice(&c.to_be_bytes());
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v4_packet(len: usize, proto: u8, src: Ipv4Addr, dst: Ipv4Addr) -> Vec<u8> {
        let mut p = vec![0u8; len];
        ipv4::write_header(&mut p, src, dst, proto, len - 20, 64, 9).unwrap();
        for (i, b) in p[20..].iter_mut().enumerate() {
            *b = i as u8;
        }
        p
    }

    fn v6_packet(len: usize, nh: u8, src: &str, dst: &str) -> Vec<u8> {
        let mut p = vec![0u8; len];
        ipv6::write_header(&mut p, src.parse().unwrap(), dst.parse().unwrap(), nh, len - 40, 64)
            .unwrap();
        for (i, b) in p[40..].iter_mut().enumerate() {
            *b = i as u8;
        }
        p
    }

    #[test]
    fn rfc1191_4_frag_needed_quotes_and_checksums() {
        let host = Ipv4Addr::new(10, 31, 1, 5);
        let gw = Ipv4Addr::new(10, 31, 1, 1);
        let big = v4_packet(1500, proto::UDP, host, Ipv4Addr::new(10, 31, 9, 9));
        let mut out = [0u8; 1600];
        let n = icmpv4_frag_needed(&big, 1400, gw, &mut out).unwrap();
        assert_eq!(n, ICMPV4_ERROR_MAX);
        let ip = Ipv4Packet::new_checked(&out[..n]).unwrap();
        assert!(ip.verify_checksum());
        assert_eq!((ip.src(), ip.dst(), ip.protocol()), (gw, host, proto::ICMP));
        let icmp = Icmpv4Packet::new_checked(ip.payload()).unwrap();
        assert!(icmp.verify_checksum());
        assert_eq!((icmp.msg_type(), icmp.code(), icmp.rest_of_header()), (3, 4, 1400));
        assert_eq!(icmp.data(), &big[..548]);
        // A small packet is quoted whole.
        let small = v4_packet(100, proto::TCP, host, Ipv4Addr::new(10, 31, 9, 9));
        let n = icmpv4_frag_needed(&small, 1400, gw, &mut out).unwrap();
        assert_eq!(n, 128);
        assert!(matches!(
            icmpv4_frag_needed(&small, 1400, gw, &mut out[..100]),
            Err(WireError::BufferTooSmall { need: 128, have: 100 })
        ));
    }

    #[test]
    fn rfc1812_4_3_2_7_no_errors_about_errors_fragments_or_broadcast() {
        let host = Ipv4Addr::new(10, 31, 1, 5);
        let gw = Ipv4Addr::new(10, 31, 1, 1);
        let mut out = [0u8; 600];
        let mut err = v4_packet(60, proto::ICMP, host, gw);
        err[20] = 3;
        assert!(matches!(
            icmpv4_frag_needed(&err, 1400, gw, &mut out),
            Err(WireError::NoIcmpError(_))
        ));
        let mut echo = v4_packet(60, proto::ICMP, host, gw);
        echo[20] = 8;
        assert!(icmpv4_frag_needed(&echo, 1400, gw, &mut out).is_ok());
        let mut frag = v4_packet(60, proto::UDP, host, gw);
        frag[6..8].copy_from_slice(&0x0010u16.to_be_bytes());
        assert!(icmpv4_frag_needed(&frag, 1400, gw, &mut out).is_err());
        let bcast = v4_packet(60, proto::UDP, host, Ipv4Addr::BROADCAST);
        assert!(icmpv4_frag_needed(&bcast, 1400, gw, &mut out).is_err());
        let unspec = v4_packet(60, proto::UDP, Ipv4Addr::UNSPECIFIED, gw);
        assert!(icmpv4_frag_needed(&unspec, 1400, gw, &mut out).is_err());
    }

    #[test]
    fn rfc4443_3_2_packet_too_big_quotes_up_to_1280_and_checksums() {
        let gw: Ipv6Addr = "2001:db8:31::1".parse().unwrap();
        let big = v6_packet(1500, proto::TCP, "2001:db8:31::5", "2001:db8:99::9");
        let mut out = [0u8; 1600];
        let n = icmpv6_packet_too_big(&big, 1400, gw, &mut out).unwrap();
        assert_eq!(n, ICMPV6_ERROR_MAX);
        let ip = Ipv6Packet::new_checked(&out[..n]).unwrap();
        assert_eq!(ip.dst(), "2001:db8:31::5".parse::<Ipv6Addr>().unwrap());
        assert_eq!(ip.next_header(), proto::ICMPV6);
        let icmp = Icmpv6Packet::new_checked(ip.payload()).unwrap();
        assert!(icmp.verify_checksum(gw, ip.dst()));
        assert_eq!((icmp.msg_type(), icmp.code(), icmp.rest_of_header()), (2, 0, 1400));
        assert_eq!(icmp.data(), &big[..1232]);
        // Errors about ICMPv6 errors are refused; about echo requests allowed.
        let mut err = v6_packet(100, proto::ICMPV6, "2001:db8:31::5", "2001:db8:99::9");
        err[40] = 1;
        assert!(icmpv6_packet_too_big(&err, 1400, gw, &mut out).is_err());
        err[40] = 128;
        assert!(icmpv6_packet_too_big(&err, 1400, gw, &mut out).is_ok());
        let multi = v6_packet(100, proto::UDP, "ff02::1", "2001:db8:99::9");
        assert!(icmpv6_packet_too_big(&multi, 1400, gw, &mut out).is_err());
    }
}
