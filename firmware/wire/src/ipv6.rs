//! IPv6 header view (RFC 8200 §3) with extension headers skipped to find the upper layer
//! (RFC 8200 §4).

use std::net::Ipv6Addr;

use crate::{WireError, be16, need, proto};

/// Bytes of the fixed IPv6 header.
pub const HEADER_LEN: usize = 40;

/// At most this many extension headers are walked; more is treated as malformed (a defence
/// against long chains).
const MAX_EXTENSION_HEADERS: usize = 8;

/// A checked view of an IPv6 packet: version 6 and a payload length that fits the buffer.
/// (Jumbograms, payload length 0 with a hop-by-hop option, are not supported.)
#[derive(Debug, Clone, Copy)]
pub struct Ipv6Packet<T> {
    buf: T,
}

/// Where the upper-layer header of an IPv6 packet starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UpperLayer {
    /// The upper-layer protocol (6, 17, 58, 50, 59, ...).
    pub protocol: u8,
    /// Offset of its header from the start of the IPv6 packet.
    pub offset: usize,
    /// True when a fragment header says this is not the first fragment: the upper-layer
    /// header is not here.
    pub later_fragment: bool,
    /// True when a fragment header is present.
    pub fragment: bool,
}

impl<T: AsRef<[u8]>> Ipv6Packet<T> {
    /// Validates version and payload length against the buffer.
    pub fn new_checked(buf: T) -> Result<Ipv6Packet<T>, WireError> {
        let b = buf.as_ref();
        need("IPv6 header", b, HEADER_LEN)?;
        if b[0] >> 4 != 6 {
            return Err(WireError::BadVersion(b[0] >> 4));
        }
        need("IPv6 packet", b, HEADER_LEN + usize::from(be16(b, 4)))?;
        Ok(Ipv6Packet { buf })
    }

    /// The underlying buffer.
    pub fn into_inner(self) -> T {
        self.buf
    }

    fn b(&self) -> &[u8] {
        self.buf.as_ref()
    }

    /// Traffic class.
    pub fn traffic_class(&self) -> u8 {
        let b = self.b();
        (b[0] << 4) | (b[1] >> 4)
    }

    /// Flow label.
    pub fn flow_label(&self) -> u32 {
        let b = self.b();
        (u32::from(b[1] & 0x0f) << 16) | u32::from(be16(b, 2))
    }

    /// Payload length (extension headers included).
    pub fn payload_len(&self) -> usize {
        usize::from(be16(self.b(), 4))
    }

    /// Total length: header and payload.
    pub fn total_len(&self) -> usize {
        HEADER_LEN + self.payload_len()
    }

    /// The Next Header field of the fixed header.
    pub fn next_header(&self) -> u8 {
        self.b()[6]
    }

    /// Hop limit.
    pub fn hop_limit(&self) -> u8 {
        self.b()[7]
    }

    /// Source address.
    pub fn src(&self) -> Ipv6Addr {
        let a: [u8; 16] = self.b()[8..24].try_into().unwrap_or([0; 16]);
        Ipv6Addr::from(a)
    }

    /// Destination address.
    pub fn dst(&self) -> Ipv6Addr {
        let a: [u8; 16] = self.b()[24..40].try_into().unwrap_or([0; 16]);
        Ipv6Addr::from(a)
    }

    /// The payload, up to the payload length.
    pub fn payload(&self) -> &[u8] {
        &self.b()[HEADER_LEN..self.total_len()]
    }

    /// The whole packet, up to the payload length.
    pub fn packet(&self) -> &[u8] {
        &self.b()[..self.total_len()]
    }

    /// Walks hop-by-hop, routing, fragment, destination-options and AH headers to the upper
    /// layer. Fails if a header runs past the payload or the chain is too long.
    pub fn upper_layer(&self) -> Result<UpperLayer, WireError> {
        let pkt = self.packet();
        let mut nh = self.next_header();
        let mut off = HEADER_LEN;
        let mut fragment = false;
        let mut later_fragment = false;
        for _ in 0..MAX_EXTENSION_HEADERS {
            let len = match nh {
                proto::HOPOPT | proto::IPV6_ROUTE | proto::IPV6_OPTS => {
                    need("IPv6 extension header", pkt, off + 2)?;
                    (usize::from(pkt[off + 1]) + 1) * 8
                }
                proto::IPV6_FRAG => {
                    need("IPv6 fragment header", pkt, off + 8)?;
                    fragment = true;
                    later_fragment = be16(pkt, off + 2) & 0xfff8 != 0;
                    8
                }
                proto::AH => {
                    need("IPv6 AH header", pkt, off + 2)?;
                    (usize::from(pkt[off + 1]) + 2) * 4
                }
                _ => {
                    return Ok(UpperLayer { protocol: nh, offset: off, later_fragment, fragment });
                }
            };
            need("IPv6 extension header", pkt, off + len)?;
            nh = pkt[off];
            off += len;
            if later_fragment {
                return Ok(UpperLayer { protocol: nh, offset: off, later_fragment, fragment });
            }
        }
        Err(WireError::BadLength("IPv6 extension header chain"))
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Ipv6Packet<T> {
    /// Sets the hop limit (IPv6 has no header checksum).
    pub fn set_hop_limit(&mut self, hops: u8) {
        self.buf.as_mut()[7] = hops;
    }
}

/// Writes a 40-byte IPv6 header for a payload of `payload_len` bytes into `out[..40]`.
pub fn write_header(
    out: &mut [u8],
    src: Ipv6Addr,
    dst: Ipv6Addr,
    next_header: u8,
    payload_len: usize,
    hop_limit: u8,
) -> Result<(), WireError> {
    if out.len() < HEADER_LEN {
        return Err(WireError::BufferTooSmall { need: HEADER_LEN, have: out.len() });
    }
    let len = u16::try_from(payload_len).map_err(|_| WireError::BufferTooSmall {
        need: payload_len,
        have: usize::from(u16::MAX),
    })?;
    let h = &mut out[..HEADER_LEN];
    h[0..4].copy_from_slice(&[0x60, 0, 0, 0]);
    h[4..6].copy_from_slice(&len.to_be_bytes());
    h[6] = next_header;
    h[7] = hop_limit;
    h[8..24].copy_from_slice(&src.octets());
    h[24..40].copy_from_slice(&dst.octets());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packet(nh: u8, ext: &[u8], upper: &[u8]) -> Vec<u8> {
        let mut p = vec![0u8; 40];
        let len = ext.len() + upper.len();
        write_header(
            &mut p,
            "2001:db8::1".parse().unwrap(),
            "2001:db8::2".parse().unwrap(),
            nh,
            len,
            64,
        )
        .unwrap();
        p.extend(ext);
        p.extend(upper);
        p
    }

    #[test]
    fn rfc8200_3_fields() {
        let p = packet(17, &[], &[1, 2, 3, 4, 0, 8, 0, 0]);
        let v = Ipv6Packet::new_checked(&p[..]).unwrap();
        assert_eq!(v.payload_len(), 8);
        assert_eq!(v.next_header(), 17);
        assert_eq!(v.hop_limit(), 64);
        assert_eq!(v.src(), "2001:db8::1".parse::<Ipv6Addr>().unwrap());
        assert_eq!(
            v.upper_layer().unwrap(),
            UpperLayer { protocol: 17, offset: 40, later_fragment: false, fragment: false }
        );
    }

    #[test]
    fn rfc8200_4_extension_headers_are_skipped() {
        // Hop-by-hop (8 bytes) -> destination options (16 bytes) -> fragment (first) -> TCP.
        let mut ext = vec![60, 0, 0, 0, 0, 0, 0, 0];
        ext.extend([44, 1]);
        ext.extend([0; 14]);
        ext.extend([6, 0, 0, 1, 0, 0, 0, 7]);
        let p = packet(0, &ext, &[0; 20]);
        let u = Ipv6Packet::new_checked(&p[..]).unwrap().upper_layer().unwrap();
        assert_eq!(
            u,
            UpperLayer { protocol: 6, offset: 40 + 32, later_fragment: false, fragment: true }
        );
        // A later fragment: offset 8 bytes.
        let p = packet(44, &[17, 0, 0, 8, 0, 0, 0, 7], &[0; 8]);
        let u = Ipv6Packet::new_checked(&p[..]).unwrap().upper_layer().unwrap();
        assert!(u.later_fragment && u.protocol == 17);
    }

    #[test]
    fn truncated_and_endless_chains_are_refused() {
        let p = packet(60, &[60, 5], &[]);
        assert!(Ipv6Packet::new_checked(&p[..]).unwrap().upper_layer().is_err());
        let hop = [60u8, 0, 0, 0, 0, 0, 0, 0];
        let ext: Vec<u8> = hop.iter().copied().cycle().take(8 * 20).collect();
        let p = packet(60, &ext, &[]);
        assert_eq!(
            Ipv6Packet::new_checked(&p[..]).unwrap().upper_layer(),
            Err(WireError::BadLength("IPv6 extension header chain"))
        );
        let mut bad = packet(17, &[], &[0; 8]);
        bad[5] = 9;
        assert!(Ipv6Packet::new_checked(&bad[..]).is_err());
        bad[0] = 0x45;
        assert_eq!(Ipv6Packet::new_checked(&bad[..]).unwrap_err(), WireError::BadVersion(4));
    }
}
