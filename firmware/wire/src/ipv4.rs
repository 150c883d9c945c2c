//! IPv4 header view (RFC 791 §3.1).

use std::net::Ipv4Addr;

use crate::checksum;
use crate::{WireError, be16, need};

/// Bytes of an IPv4 header without options.
pub const HEADER_LEN: usize = 20;

/// A checked view of an IPv4 packet: version 4, header length and total length consistent with
/// the buffer. Bytes beyond the total length (link padding) are ignored by [`payload`].
///
/// [`payload`]: Ipv4Packet::payload
#[derive(Debug, Clone, Copy)]
pub struct Ipv4Packet<T> {
    buf: T,
}

impl<T: AsRef<[u8]>> Ipv4Packet<T> {
    /// Validates version, IHL and total length against the buffer.
    pub fn new_checked(buf: T) -> Result<Ipv4Packet<T>, WireError> {
        let b = buf.as_ref();
        need("IPv4 header", b, HEADER_LEN)?;
        if b[0] >> 4 != 4 {
            return Err(WireError::BadVersion(b[0] >> 4));
        }
        let hl = usize::from(b[0] & 0x0f) * 4;
        if hl < HEADER_LEN {
            return Err(WireError::BadHeaderLen("IPv4"));
        }
        need("IPv4 header with options", b, hl)?;
        let total = usize::from(be16(b, 2));
        if total < hl {
            return Err(WireError::BadLength("IPv4 total"));
        }
        need("IPv4 packet", b, total)?;
        Ok(Ipv4Packet { buf })
    }

    /// The underlying buffer.
    pub fn into_inner(self) -> T {
        self.buf
    }

    fn b(&self) -> &[u8] {
        self.buf.as_ref()
    }

    /// Header length in bytes (20..=60).
    pub fn header_len(&self) -> usize {
        usize::from(self.b()[0] & 0x0f) * 4
    }

    /// DSCP and ECN (the former TOS byte).
    pub fn tos(&self) -> u8 {
        self.b()[1]
    }

    /// Total length from the header.
    pub fn total_len(&self) -> usize {
        usize::from(be16(self.b(), 2))
    }

    /// Identification.
    pub fn ident(&self) -> u16 {
        be16(self.b(), 4)
    }

    /// Don't Fragment.
    pub fn dont_frag(&self) -> bool {
        self.b()[6] & 0x40 != 0
    }

    /// More Fragments.
    pub fn more_frags(&self) -> bool {
        self.b()[6] & 0x20 != 0
    }

    /// Fragment offset in bytes.
    pub fn frag_offset(&self) -> usize {
        usize::from(be16(self.b(), 6) & 0x1fff) * 8
    }

    /// True for any fragment (first or later).
    pub fn is_fragment(&self) -> bool {
        self.more_frags() || self.frag_offset() != 0
    }

    /// Time to live.
    pub fn ttl(&self) -> u8 {
        self.b()[8]
    }

    /// Upper-layer protocol.
    pub fn protocol(&self) -> u8 {
        self.b()[9]
    }

    /// Header checksum field.
    pub fn checksum(&self) -> u16 {
        be16(self.b(), 10)
    }

    /// Source address.
    pub fn src(&self) -> Ipv4Addr {
        let b = self.b();
        Ipv4Addr::new(b[12], b[13], b[14], b[15])
    }

    /// Destination address.
    pub fn dst(&self) -> Ipv4Addr {
        let b = self.b();
        Ipv4Addr::new(b[16], b[17], b[18], b[19])
    }

    /// True when the header checksum verifies.
    pub fn verify_checksum(&self) -> bool {
        checksum::checksum(&self.b()[..self.header_len()]) == 0
    }

    /// The header, options included.
    pub fn header(&self) -> &[u8] {
        &self.b()[..self.header_len()]
    }

    /// The payload, up to the total length.
    pub fn payload(&self) -> &[u8] {
        &self.b()[self.header_len()..self.total_len()]
    }

    /// The whole packet, up to the total length.
    pub fn packet(&self) -> &[u8] {
        &self.b()[..self.total_len()]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Ipv4Packet<T> {
    fn bm(&mut self) -> &mut [u8] {
        self.buf.as_mut()
    }

    /// Sets the TTL and fixes the checksum incrementally (RFC 1624).
    pub fn set_ttl(&mut self, ttl: u8) {
        let old = be16(self.b(), 8);
        let new = (u16::from(ttl) << 8) | (old & 0xff);
        let sum = checksum::update16(self.checksum(), old, new);
        let b = self.bm();
        b[8] = ttl;
        b[10..12].copy_from_slice(&sum.to_be_bytes());
    }

    /// Recomputes the header checksum.
    pub fn fill_checksum(&mut self) {
        let hl = self.header_len();
        let b = self.bm();
        b[10..12].fill(0);
        let c = checksum::checksum(&b[..hl]);
        b[10..12].copy_from_slice(&c.to_be_bytes());
    }

    /// The payload, mutable.
    pub fn payload_mut(&mut self) -> &mut [u8] {
        let (hl, tl) = (self.header_len(), self.total_len());
        &mut self.bm()[hl..tl]
    }
}

/// Writes a 20-byte IPv4 header (no options, DF set, checksum filled) for a payload of
/// `payload_len` bytes into `out[..20]`.
pub fn write_header(
    out: &mut [u8],
    src: Ipv4Addr,
    dst: Ipv4Addr,
    protocol: u8,
    payload_len: usize,
    ttl: u8,
    ident: u16,
) -> Result<(), WireError> {
    if out.len() < HEADER_LEN {
        return Err(WireError::BufferTooSmall { need: HEADER_LEN, have: out.len() });
    }
    let total = HEADER_LEN + payload_len;
    let total = u16::try_from(total)
        .map_err(|_| WireError::BufferTooSmall { need: total, have: usize::from(u16::MAX) })?;
    let h = &mut out[..HEADER_LEN];
    h[0] = 0x45;
    h[1] = 0;
    h[2..4].copy_from_slice(&total.to_be_bytes());
    h[4..6].copy_from_slice(&ident.to_be_bytes());
    h[6..8].copy_from_slice(&0x4000u16.to_be_bytes());
    h[8] = ttl;
    h[9] = protocol;
    h[10..12].fill(0);
    h[12..16].copy_from_slice(&src.octets());
    h[16..20].copy_from_slice(&dst.octets());
    let c = checksum::checksum(h);
    h[10..12].copy_from_slice(&c.to_be_bytes());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<u8> {
        let mut p = vec![0u8; 28];
        write_header(&mut p, [10, 31, 0, 1].into(), [10, 31, 0, 2].into(), 17, 8, 64, 7).unwrap();
        p
    }

    #[test]
    fn rfc791_fields_and_checksum() {
        let p = Ipv4Packet::new_checked(sample()).unwrap();
        assert_eq!(p.header_len(), 20);
        assert_eq!(p.total_len(), 28);
        assert_eq!(p.protocol(), 17);
        assert_eq!(p.ttl(), 64);
        assert_eq!(p.ident(), 7);
        assert!(p.dont_frag() && !p.is_fragment());
        assert_eq!(p.src(), Ipv4Addr::new(10, 31, 0, 1));
        assert_eq!(p.dst(), Ipv4Addr::new(10, 31, 0, 2));
        assert!(p.verify_checksum());
        assert_eq!(p.payload().len(), 8);
    }

    #[test]
    fn ttl_update_keeps_the_checksum_valid() {
        let mut p = Ipv4Packet::new_checked(sample()).unwrap();
        p.set_ttl(3);
        assert_eq!(p.ttl(), 3);
        assert!(p.verify_checksum());
    }

    #[test]
    fn refuses_bad_versions_and_lengths() {
        let good = sample();
        assert!(matches!(Ipv4Packet::new_checked(&good[..19]), Err(WireError::Truncated { .. })));
        let mut v6 = good.clone();
        v6[0] = 0x65;
        assert_eq!(Ipv4Packet::new_checked(&v6[..]).unwrap_err(), WireError::BadVersion(6));
        let mut ihl = good.clone();
        ihl[0] = 0x44;
        assert_eq!(Ipv4Packet::new_checked(&ihl[..]).unwrap_err(), WireError::BadHeaderLen("IPv4"));
        let mut long = good.clone();
        long[0] = 0x4f; // 60-byte header in a 28-byte packet
        assert!(matches!(Ipv4Packet::new_checked(&long[..]), Err(WireError::Truncated { .. })));
        let mut total = good.clone();
        total[3] = 100;
        assert!(matches!(Ipv4Packet::new_checked(&total[..]), Err(WireError::Truncated { .. })));
        total[3] = 10;
        assert_eq!(
            Ipv4Packet::new_checked(&total[..]).unwrap_err(),
            WireError::BadLength("IPv4 total")
        );
        // Trailing link padding is allowed and ignored.
        let mut padded = good.clone();
        padded.extend([0; 6]);
        assert_eq!(Ipv4Packet::new_checked(&padded[..]).unwrap().payload().len(), 8);
    }
}
