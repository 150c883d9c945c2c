//! Outer headers of ESP in tunnel mode: IPv4 or IPv6 with protocol 50 (RFC 4303 §3.1.2), or
//! with UDP (normally port 4500) in between for NAT traversal (RFC 3948 §2.1). Used by tests
//! and by raw-socket paths; the kernel writes these headers when a UDP socket sends.

use std::net::IpAddr;

use crate::ipv4::{self, Ipv4Packet};
use crate::ipv6::{self, Ipv6Packet};
use crate::natt::{NattPayload, classify_natt};
use crate::udp::{self, UdpPacket};
use crate::{WireError, proto};

/// The NAT-T port (RFC 3948 §2.1).
pub const NATT_PORT: u16 = 4500;

/// How to wrap an ESP payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outer {
    /// Outer source address (this gateway).
    pub src: IpAddr,
    /// Outer destination address (the peer).
    pub dst: IpAddr,
    /// UDP source and destination ports for RFC 3948, or `None` for protocol 50.
    pub udp: Option<(u16, u16)>,
    /// TTL or hop limit.
    pub ttl: u8,
}

impl Outer {
    /// Bytes of outer headers in front of the ESP payload.
    pub fn header_len(&self) -> usize {
        let ip = if self.src.is_ipv4() { ipv4::HEADER_LEN } else { ipv6::HEADER_LEN };
        ip + if self.udp.is_some() { udp::HEADER_LEN } else { 0 }
    }

    /// Writes the outer headers into `buf[..header_len()]` for the ESP payload of `esp_len`
    /// bytes already at `buf[header_len()..]` (the UDP checksum over IPv6 covers it). Returns
    /// the length of the whole packet. Over IPv4 the UDP checksum is zero (RFC 3948 §2.1).
    pub fn write(&self, buf: &mut [u8], esp_len: usize) -> Result<usize, WireError> {
        let hl = self.header_len();
        let total = hl + esp_len;
        if buf.len() < total {
            return Err(WireError::BufferTooSmall { need: total, have: buf.len() });
        }
        let (ip_len, l4_proto) = match (self.src, self.udp) {
            (IpAddr::V4(_), Some(_)) => (ipv4::HEADER_LEN, proto::UDP),
            (IpAddr::V4(_), None) => (ipv4::HEADER_LEN, proto::ESP),
            (IpAddr::V6(_), Some(_)) => (ipv6::HEADER_LEN, proto::UDP),
            (IpAddr::V6(_), None) => (ipv6::HEADER_LEN, proto::ESP),
        };
        if let Some((sport, dport)) = self.udp {
            let (h, esp) = buf[ip_len..total].split_at_mut(udp::HEADER_LEN);
            let sum = if self.src.is_ipv6() { Some((self.src, self.dst, &*esp)) } else { None };
            udp::write_header(h, sport, dport, esp_len, sum)?;
        }
        match (self.src, self.dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                ipv4::write_header(buf, s, d, l4_proto, total - ip_len, self.ttl, 0)?
            }
            (IpAddr::V6(s), IpAddr::V6(d)) => {
                ipv6::write_header(buf, s, d, l4_proto, total - ip_len, self.ttl)?
            }
            _ => return Err(WireError::MixedVersions),
        }
        Ok(total)
    }
}

/// An outer packet taken apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParsedOuter<'a> {
    /// Outer source.
    pub src: IpAddr,
    /// Outer destination.
    pub dst: IpAddr,
    /// UDP source and destination ports when UDP-encapsulated.
    pub udp: Option<(u16, u16)>,
    /// What the packet carries (always [`NattPayload::Esp`] for protocol 50).
    pub payload: NattPayload<'a>,
}

/// Parses an outer IPv4/IPv6 packet carrying ESP (protocol 50) or UDP to or from port 4500.
/// Fragments are refused (reassembly is the kernel's job before a raw socket sees them).
pub fn parse_outer(packet: &[u8]) -> Result<ParsedOuter<'_>, WireError> {
    let (src, dst, protocol, l4) = match packet.first().map(|b| b >> 4) {
        Some(4) => {
            let p = Ipv4Packet::new_checked(packet)?;
            if p.is_fragment() {
                return Err(WireError::BadLength("IPv4 fragment"));
            }
            let (hl, tl) = (p.header_len(), p.total_len());
            (p.src().into(), p.dst().into(), p.protocol(), &packet[hl..tl])
        }
        Some(6) => {
            let p = Ipv6Packet::new_checked(packet)?;
            let u = p.upper_layer()?;
            if u.fragment {
                return Err(WireError::BadLength("IPv6 fragment"));
            }
            (p.src().into(), p.dst().into(), u.protocol, &packet[u.offset..p.total_len()])
        }
        Some(v) => return Err(WireError::BadVersion(v)),
        None => return Err(WireError::Truncated { what: "IP header", need: 1, have: 0 }),
    };
    match protocol {
        proto::ESP => {
            crate::EspPacket::new_checked(l4)?;
            Ok(ParsedOuter { src, dst, udp: None, payload: NattPayload::Esp(l4) })
        }
        proto::UDP => {
            let u = UdpPacket::new_checked(l4)?;
            if u.src_port() != NATT_PORT && u.dst_port() != NATT_PORT {
                return Err(WireError::NotEsp(proto::UDP));
            }
            let len = u.len();
            let payload = classify_natt(&l4[udp::HEADER_LEN..len])?;
            Ok(ParsedOuter { src, dst, udp: Some((u.src_port(), u.dst_port())), payload })
        }
        other => Err(WireError::NotEsp(other)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wrap(outer: Outer, esp: &[u8]) -> Vec<u8> {
        let hl = outer.header_len();
        let mut buf = vec![0u8; hl + esp.len()];
        buf[hl..].copy_from_slice(esp);
        let n = outer.write(&mut buf, esp.len()).unwrap();
        assert_eq!(n, buf.len());
        buf
    }

    #[test]
    fn rfc4303_and_rfc3948_outer_headers_round_trip() {
        let esp = [0u8, 0, 0x12, 0x34, 0, 0, 0, 1, 0xaa, 0xbb, 0xcc, 0xdd];
        let v4: (IpAddr, IpAddr) = ("10.31.0.1".parse().unwrap(), "10.31.0.2".parse().unwrap());
        let v6: (IpAddr, IpAddr) =
            ("2001:db8:31::1".parse().unwrap(), "2001:db8:31::2".parse().unwrap());
        for (src, dst) in [v4, v6] {
            for udp in [None, Some((4500, 4500)), Some((61000, 4500))] {
                let outer = Outer { src, dst, udp, ttl: 64 };
                let pkt = wrap(outer, &esp);
                let p = parse_outer(&pkt).unwrap();
                assert_eq!((p.src, p.dst, p.udp), (src, dst, udp));
                assert_eq!(p.payload, NattPayload::Esp(&esp));
                if let (Some(_), IpAddr::V6(_)) = (udp, src) {
                    let u = UdpPacket::new_checked(&pkt[40..]).unwrap();
                    assert!(u.checksum() != 0 && u.verify_checksum(src, dst));
                }
                if src.is_ipv4() {
                    assert!(Ipv4Packet::new_checked(&pkt[..]).unwrap().verify_checksum());
                }
            }
        }
        // IKE behind the marker and keepalives come out classified.
        let outer = Outer { src: v4.0, dst: v4.1, udp: Some((4500, 4500)), ttl: 64 };
        let ike = wrap(outer, &[0, 0, 0, 0, 7, 7]);
        assert_eq!(parse_outer(&ike).unwrap().payload, NattPayload::Ike(&[7, 7]));
        let ka = wrap(outer, &[0xff]);
        assert_eq!(parse_outer(&ka).unwrap().payload, NattPayload::Keepalive);
    }

    #[test]
    fn refuses_other_traffic_and_mixed_versions() {
        let v4: IpAddr = "10.31.0.1".parse().unwrap();
        let v6: IpAddr = "2001:db8::1".parse().unwrap();
        let outer = Outer { src: v4, dst: v4, udp: Some((53, 53)), ttl: 64 };
        let dns = wrap(outer, &[1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(parse_outer(&dns).unwrap_err(), WireError::NotEsp(17));
        let mut buf = [0u8; 100];
        let mixed = Outer { src: v4, dst: v6, udp: None, ttl: 64 };
        assert_eq!(mixed.write(&mut buf, 8).unwrap_err(), WireError::MixedVersions);
        assert!(matches!(
            Outer { src: v4, dst: v4, udp: None, ttl: 1 }.write(&mut buf[..20], 8),
            Err(WireError::BufferTooSmall { .. })
        ));
        assert!(parse_outer(&[]).is_err());
        assert!(parse_outer(&[0x10; 40]).is_err());
    }
}
