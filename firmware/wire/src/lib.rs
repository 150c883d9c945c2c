//! Zero-copy, checked views of the packet headers the gateway handles: IPv4, IPv6, UDP, TCP,
//! ICMP/ICMPv6, ESP (RFC 4303 §2) and the NAT-T non-ESP marker and keepalive (RFC 3948 §2).
//!
//! Every view is built with `new_checked`, which validates lengths once, so that no accessor can
//! panic afterwards on bytes from the network (the smoltcp pattern). Views wrap any
//! `T: AsRef<[u8]>`; with `T: AsMut<[u8]>` the setters are available too.
//!
//! Besides the views:
//! - [`checksum`]: the Internet checksum (RFC 1071) and its incremental update (RFC 1624);
//! - [`flow_key`]: the 5-tuple the classifiers use;
//! - [`icmp`]: builders for ICMPv4 "fragmentation needed" (RFC 1191) and ICMPv6 "packet too
//!   big" (RFC 4443 §3.2) replies quoting the offending packet;
//! - [`tcp::clamp_mss`]: TCP MSS clamping with checksum fix-up;
//! - [`outer`]: outer IPv4/IPv6 (+ UDP 4500, RFC 3948) headers around an ESP payload, and their
//!   parsing;
//! - [`natt`]: classification of a UDP 4500 payload (keepalive, IKE behind the non-ESP marker,
//!   or ESP).
#![forbid(unsafe_code)]

pub mod checksum;
pub mod esp;
pub mod flow;
pub mod icmp;
pub mod ipv4;
pub mod ipv6;
pub mod natt;
pub mod outer;
pub mod tcp;
pub mod udp;

pub use esp::EspPacket;
pub use flow::{flow_key, ip_version};
pub use icmp::{Icmpv4Packet, Icmpv6Packet, icmpv4_frag_needed, icmpv6_packet_too_big};
pub use ipv4::Ipv4Packet;
pub use ipv6::Ipv6Packet;
pub use natt::{NattPayload, classify_natt};
pub use outer::{Outer, ParsedOuter, parse_outer};
pub use tcp::TcpPacket;
pub use udp::UdpPacket;

/// IP protocol numbers used here (IANA "Assigned Internet Protocol Numbers").
pub mod proto {
    /// ICMP.
    pub const ICMP: u8 = 1;
    /// IPv4 in IP (tunnel mode inner IPv4).
    pub const IPV4: u8 = 4;
    /// TCP.
    pub const TCP: u8 = 6;
    /// UDP.
    pub const UDP: u8 = 17;
    /// IPv6 in IP (tunnel mode inner IPv6).
    pub const IPV6: u8 = 41;
    /// IPv6 routing header.
    pub const IPV6_ROUTE: u8 = 43;
    /// IPv6 fragment header.
    pub const IPV6_FRAG: u8 = 44;
    /// ESP.
    pub const ESP: u8 = 50;
    /// AH.
    pub const AH: u8 = 51;
    /// ICMPv6.
    pub const ICMPV6: u8 = 58;
    /// No next header.
    pub const NONE: u8 = 59;
    /// IPv6 destination options.
    pub const IPV6_OPTS: u8 = 60;
    /// IPv6 hop-by-hop options.
    pub const HOPOPT: u8 = 0;
}

/// Why bytes were refused as a packet, or a packet could not be written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// Fewer bytes than the header (or the length it declares) needs.
    #[error("truncated {what}: need {need} bytes, have {have}")]
    Truncated {
        /// Which header.
        what: &'static str,
        /// Bytes needed.
        need: usize,
        /// Bytes present.
        have: usize,
    },
    /// The IP version nibble is neither 4 nor 6 (or not the one expected).
    #[error("IP version {0} where 4 or 6 was expected")]
    BadVersion(u8),
    /// A header length field is smaller than the fixed header.
    #[error("{0} header length field is too small")]
    BadHeaderLen(&'static str),
    /// A length field is inconsistent (smaller than the header it includes).
    #[error("{0} length field is inconsistent")]
    BadLength(&'static str),
    /// The caller's buffer cannot hold what is to be written.
    #[error("buffer too small: need {need} bytes, have {have}")]
    BufferTooSmall {
        /// Bytes needed.
        need: usize,
        /// Bytes available.
        have: usize,
    },
    /// The outer packet does not carry ESP (neither protocol 50 nor UDP to or from 4500).
    #[error("not an ESP packet (protocol {0})")]
    NotEsp(u8),
    /// An ICMP error must not be sent about this packet (RFC 1812 §4.3.2.7, RFC 4443 §2.4(e)).
    #[error("no ICMP error may be generated for this packet: {0}")]
    NoIcmpError(&'static str),
    /// Source and destination are of different IP versions.
    #[error("outer source and destination are of different IP versions")]
    MixedVersions,
}

pub(crate) fn need(what: &'static str, buf: &[u8], need: usize) -> Result<(), WireError> {
    if buf.len() < need {
        Err(WireError::Truncated { what, need, have: buf.len() })
    } else {
        Ok(())
    }
}

/// Reads a big-endian u16 at `at`; callers have checked the length.
#[inline]
pub(crate) fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

/// Reads a big-endian u32 at `at`; callers have checked the length.
#[inline]
pub(crate) fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::net::IpAddr;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// Untrusted bytes through every parser and builder: errors, never panics, and
        /// nothing reported reaches past the buffer.
        #[test]
        fn arbitrary_bytes_never_panic(mut bytes in proptest::collection::vec(any::<u8>(), 0..1600), v6 in any::<bool>()) {
            if let Some(b) = bytes.first_mut() {
                *b = (*b & 0x0f) | if v6 { 0x60 } else { 0x40 };
            }
            let _ = flow_key(&bytes);
            if let Ok(p) = parse_outer(&bytes)
                && let NattPayload::Esp(e) | NattPayload::Ike(e) = p.payload
            {
                prop_assert!(e.len() <= bytes.len());
            }
            let mut out = [0u8; 1500];
            if let Ok(n) = icmpv4_frag_needed(&bytes, 1400, [10, 31, 0, 1].into(), &mut out) {
                prop_assert!(n <= icmp::ICMPV4_ERROR_MAX);
                prop_assert!(Ipv4Packet::new_checked(&out[..n]).unwrap().verify_checksum());
            }
            let gw = "2001:db8:31::1".parse().unwrap();
            if let Ok(n) = icmpv6_packet_too_big(&bytes, 1400, gw, &mut out) {
                prop_assert!(n <= icmp::ICMPV6_ERROR_MAX);
            }
            let _ = tcp::clamp_mss(&mut bytes, 1360);
        }

        /// Outer headers written and parsed back give the same addresses, ports and payload.
        #[test]
        fn outer_round_trip(esp in proptest::collection::vec(any::<u8>(), 8..1500), v6 in any::<bool>(), udp in any::<bool>(), sport in any::<u16>()) {
            let mut esp = esp;
            esp[0] |= 0x80; // a non-zero SPI, not the non-ESP marker
            let (src, dst): (IpAddr, IpAddr) = if v6 {
                ("2001:db8:31::1".parse().unwrap(), "2001:db8:31::2".parse().unwrap())
            } else {
                ("10.31.0.1".parse().unwrap(), "10.31.0.2".parse().unwrap())
            };
            let outer = Outer { src, dst, udp: udp.then_some((sport, outer::NATT_PORT)), ttl: 64 };
            let hl = outer.header_len();
            let mut buf = vec![0u8; hl + esp.len()];
            buf[hl..].copy_from_slice(&esp);
            let n = outer.write(&mut buf, esp.len()).unwrap();
            let p = parse_outer(&buf[..n]).unwrap();
            prop_assert_eq!((p.src, p.dst, p.udp), (src, dst, outer.udp));
            prop_assert_eq!(p.payload, NattPayload::Esp(&esp[..]));
            let k = flow_key(&buf[..n]).unwrap();
            prop_assert_eq!(k.proto, if udp { proto::UDP } else { proto::ESP });
        }
    }
}
