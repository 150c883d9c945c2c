//! UDP header view (RFC 768).

use std::net::IpAddr;

use crate::checksum;
use crate::{WireError, be16, need};

/// Bytes of the UDP header.
pub const HEADER_LEN: usize = 8;

/// A checked view of a UDP datagram: the length field covers the header and fits the buffer.
#[derive(Debug, Clone, Copy)]
pub struct UdpPacket<T> {
    buf: T,
}

impl<T: AsRef<[u8]>> UdpPacket<T> {
    /// Validates the length field.
    pub fn new_checked(buf: T) -> Result<UdpPacket<T>, WireError> {
        let b = buf.as_ref();
        need("UDP header", b, HEADER_LEN)?;
        let len = usize::from(be16(b, 4));
        if len < HEADER_LEN {
            return Err(WireError::BadLength("UDP"));
        }
        need("UDP datagram", b, len)?;
        Ok(UdpPacket { buf })
    }

    fn b(&self) -> &[u8] {
        self.buf.as_ref()
    }

    /// Source port.
    pub fn src_port(&self) -> u16 {
        be16(self.b(), 0)
    }

    /// Destination port.
    pub fn dst_port(&self) -> u16 {
        be16(self.b(), 2)
    }

    /// Length field (header and payload).
    pub fn len(&self) -> usize {
        usize::from(be16(self.b(), 4))
    }

    /// True when the datagram carries no payload.
    pub fn is_empty(&self) -> bool {
        self.len() == HEADER_LEN
    }

    /// Checksum field (0: none, allowed over IPv4).
    pub fn checksum(&self) -> u16 {
        be16(self.b(), 6)
    }

    /// The payload, up to the length field.
    pub fn payload(&self) -> &[u8] {
        &self.b()[HEADER_LEN..self.len()]
    }

    /// True when the checksum verifies over the pseudo-header (or is absent over IPv4).
    pub fn verify_checksum(&self, src: IpAddr, dst: IpAddr) -> bool {
        if self.checksum() == 0 && src.is_ipv4() {
            return true;
        }
        let d = &self.b()[..self.len()];
        checksum::finish(checksum::sum(pseudo(src, dst, d.len()), d)) == 0
    }
}

fn pseudo(src: IpAddr, dst: IpAddr, len: usize) -> u32 {
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => checksum::pseudo_v4(s, d, 17, len as u16),
        (IpAddr::V6(s), IpAddr::V6(d)) => checksum::pseudo_v6(s, d, 17, len as u32),
        _ => 0,
    }
}

/// Writes a UDP header for `payload_len` bytes into `out[..8]`. The checksum is computed over
/// `payload` when `payload` is given (required over IPv6, RFC 8200 §8.1), else left zero
/// (allowed over IPv4 and what RFC 3948 §2.1 recommends for ESP in UDP).
pub fn write_header(
    out: &mut [u8],
    src_port: u16,
    dst_port: u16,
    payload_len: usize,
    checksum_over: Option<(IpAddr, IpAddr, &[u8])>,
) -> Result<(), WireError> {
    if out.len() < HEADER_LEN {
        return Err(WireError::BufferTooSmall { need: HEADER_LEN, have: out.len() });
    }
    let len = HEADER_LEN + payload_len;
    let len16 = u16::try_from(len)
        .map_err(|_| WireError::BufferTooSmall { need: len, have: usize::from(u16::MAX) })?;
    let h = &mut out[..HEADER_LEN];
    h[0..2].copy_from_slice(&src_port.to_be_bytes());
    h[2..4].copy_from_slice(&dst_port.to_be_bytes());
    h[4..6].copy_from_slice(&len16.to_be_bytes());
    h[6..8].fill(0);
    if let Some((src, dst, payload)) = checksum_over {
        let acc = checksum::sum(pseudo(src, dst, len), h);
        let mut c = checksum::finish(checksum::sum(acc, payload));
        if c == 0 {
            c = 0xffff; // RFC 768: a computed zero is sent as all ones
        }
        h[6..8].copy_from_slice(&c.to_be_bytes());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc768_header_and_checksum_over_both_versions() {
        let payload = b"hello, tunnel";
        for (src, dst) in [
            ("10.31.0.1".parse().unwrap(), "10.31.0.2".parse().unwrap()),
            ("2001:db8::1".parse::<IpAddr>().unwrap(), "2001:db8::2".parse().unwrap()),
        ] {
            let mut d = vec![0u8; 8];
            write_header(&mut d, 4500, 4500, payload.len(), Some((src, dst, payload))).unwrap();
            d.extend(payload);
            let u = UdpPacket::new_checked(&d[..]).unwrap();
            assert_eq!((u.src_port(), u.dst_port(), u.len()), (4500, 4500, 21));
            assert_eq!(u.payload(), payload);
            assert!(u.verify_checksum(src, dst));
            let mut bad = d.clone();
            bad[10] ^= 1;
            assert!(!UdpPacket::new_checked(&bad[..]).unwrap().verify_checksum(src, dst));
        }
    }

    #[test]
    fn refuses_inconsistent_lengths() {
        assert!(UdpPacket::new_checked(&[0u8; 7][..]).is_err());
        assert_eq!(
            UdpPacket::new_checked(&[0, 1, 0, 2, 0, 4, 0, 0][..]).unwrap_err(),
            WireError::BadLength("UDP")
        );
        assert!(UdpPacket::new_checked(&[0, 1, 0, 2, 0, 9, 0, 0][..]).is_err());
    }
}
