//! TCP header view (RFC 9293 §3.1) with MSS option access and MSS clamping (RFC 9293 §3.7.1;
//! the clamp rewrites the option of SYN segments crossing the tunnel so that full-size segments
//! fit the tunnel MTU, with an incremental checksum fix-up, RFC 1624).

use crate::checksum;
use crate::ipv4::Ipv4Packet;
use crate::ipv6::Ipv6Packet;
use crate::{WireError, be16, be32, need, proto};

/// Bytes of the TCP header without options.
pub const HEADER_LEN: usize = 20;

/// TCP flag bits.
pub mod flags {
    /// FIN.
    pub const FIN: u8 = 0x01;
    /// SYN.
    pub const SYN: u8 = 0x02;
    /// RST.
    pub const RST: u8 = 0x04;
    /// PSH.
    pub const PSH: u8 = 0x08;
    /// ACK.
    pub const ACK: u8 = 0x10;
}

const OPT_EOL: u8 = 0;
const OPT_NOP: u8 = 1;
const OPT_MSS: u8 = 2;

/// A checked view of a TCP segment: data offset within the buffer.
#[derive(Debug, Clone, Copy)]
pub struct TcpPacket<T> {
    buf: T,
}

impl<T: AsRef<[u8]>> TcpPacket<T> {
    /// Validates the data offset.
    pub fn new_checked(buf: T) -> Result<TcpPacket<T>, WireError> {
        let b = buf.as_ref();
        need("TCP header", b, HEADER_LEN)?;
        let off = usize::from(b[12] >> 4) * 4;
        if off < HEADER_LEN {
            return Err(WireError::BadHeaderLen("TCP"));
        }
        need("TCP header with options", b, off)?;
        Ok(TcpPacket { buf })
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

    /// Sequence number.
    pub fn seq(&self) -> u32 {
        be32(self.b(), 4)
    }

    /// Acknowledgment number.
    pub fn ack(&self) -> u32 {
        be32(self.b(), 8)
    }

    /// Header length (data offset) in bytes.
    pub fn header_len(&self) -> usize {
        usize::from(self.b()[12] >> 4) * 4
    }

    /// The flag byte (see [`flags`]).
    pub fn flags(&self) -> u8 {
        self.b()[13]
    }

    /// True for a SYN (with or without ACK).
    pub fn is_syn(&self) -> bool {
        self.flags() & flags::SYN != 0
    }

    /// Window.
    pub fn window(&self) -> u16 {
        be16(self.b(), 14)
    }

    /// Checksum field.
    pub fn checksum(&self) -> u16 {
        be16(self.b(), 16)
    }

    /// The options bytes.
    pub fn options(&self) -> &[u8] {
        &self.b()[HEADER_LEN..self.header_len()]
    }

    /// The payload.
    pub fn payload(&self) -> &[u8] {
        &self.b()[self.header_len()..]
    }

    /// Offset of the MSS option's value within the segment, if present and well formed.
    fn mss_at(&self) -> Option<usize> {
        let opts = self.options();
        let mut i = 0;
        while i < opts.len() {
            match opts[i] {
                OPT_EOL => return None,
                OPT_NOP => i += 1,
                kind => {
                    let len = usize::from(*opts.get(i + 1)?);
                    if len < 2 || i + len > opts.len() {
                        return None;
                    }
                    if kind == OPT_MSS && len == 4 {
                        return Some(HEADER_LEN + i + 2);
                    }
                    i += len;
                }
            }
        }
        None
    }

    /// The MSS option's value, if present.
    pub fn mss(&self) -> Option<u16> {
        self.mss_at().map(|at| be16(self.b(), at))
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> TcpPacket<T> {
    /// Lowers the MSS option to `max` if it is larger, fixing the checksum incrementally.
    /// Returns true when the segment changed.
    pub fn clamp_mss(&mut self, max: u16) -> bool {
        let Some(at) = self.mss_at() else { return false };
        let old = be16(self.b(), at);
        if old <= max {
            return false;
        }
        let sum = checksum::update16(self.checksum(), old, max);
        let b = self.buf.as_mut();
        b[at..at + 2].copy_from_slice(&max.to_be_bytes());
        b[16..18].copy_from_slice(&sum.to_be_bytes());
        true
    }
}

/// Clamps the MSS of a TCP SYN inside the IPv4 or IPv6 packet `ip` to `max`; other packets are
/// left alone. Returns true when the packet changed. Fragments are not touched.
pub fn clamp_mss(ip: &mut [u8], max: u16) -> Result<bool, WireError> {
    let (proto, off, len) = match ip.first().map(|b| b >> 4) {
        Some(4) => {
            let p = Ipv4Packet::new_checked(&*ip)?;
            if p.is_fragment() {
                return Ok(false);
            }
            (p.protocol(), p.header_len(), p.total_len())
        }
        Some(6) => {
            let p = Ipv6Packet::new_checked(&*ip)?;
            let u = p.upper_layer()?;
            if u.fragment {
                return Ok(false);
            }
            (u.protocol, u.offset, p.total_len())
        }
        Some(v) => return Err(WireError::BadVersion(v)),
        None => return Err(WireError::Truncated { what: "IP header", need: 1, have: 0 }),
    };
    if proto != proto::TCP {
        return Ok(false);
    }
    let mut tcp = TcpPacket::new_checked(&mut ip[off..len])?;
    if !tcp.is_syn() {
        return Ok(false);
    }
    Ok(tcp.clamp_mss(max))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ipv4;
    use std::net::Ipv4Addr;

    /// An IPv4 SYN with options NOP, NOP, MSS 1460, window scale, and a valid checksum.
    fn syn(mss: u16) -> Vec<u8> {
        let src = Ipv4Addr::new(10, 31, 1, 1);
        let dst = Ipv4Addr::new(10, 31, 2, 1);
        let mut tcp = vec![0u8; 20];
        tcp[0..2].copy_from_slice(&40000u16.to_be_bytes());
        tcp[2..4].copy_from_slice(&80u16.to_be_bytes());
        tcp[4..8].copy_from_slice(&1u32.to_be_bytes());
        tcp[12] = 8 << 4; // 32 bytes
        tcp[13] = flags::SYN;
        tcp[14..16].copy_from_slice(&65535u16.to_be_bytes());
        tcp.extend([1, 1, 2, 4]);
        tcp.extend(mss.to_be_bytes());
        tcp.extend([1, 3, 3, 7, 0, 0]);
        let c = checksum::finish(checksum::sum(
            checksum::pseudo_v4(src, dst, 6, tcp.len() as u16),
            &tcp,
        ));
        tcp[16..18].copy_from_slice(&c.to_be_bytes());
        let mut p = vec![0u8; 20];
        ipv4::write_header(&mut p, src, dst, 6, tcp.len(), 64, 1).unwrap();
        p.extend(tcp);
        p
    }

    fn tcp_checksum_ok(p: &[u8]) -> bool {
        let ip = Ipv4Packet::new_checked(p).unwrap();
        let seg = ip.payload();
        checksum::finish(checksum::sum(
            checksum::pseudo_v4(ip.src(), ip.dst(), 6, seg.len() as u16),
            seg,
        )) == 0
    }

    #[test]
    fn rfc9293_3_7_1_mss_is_read_and_clamped_with_a_valid_checksum() {
        let mut p = syn(1460);
        assert!(tcp_checksum_ok(&p));
        let t = TcpPacket::new_checked(&p[20..]).unwrap();
        assert_eq!((t.src_port(), t.dst_port(), t.mss()), (40000, 80, Some(1460)));
        assert!(t.is_syn());
        assert!(clamp_mss(&mut p, 1360).unwrap());
        assert_eq!(TcpPacket::new_checked(&p[20..]).unwrap().mss(), Some(1360));
        assert!(tcp_checksum_ok(&p));
        // Already small enough: untouched.
        assert!(!clamp_mss(&mut p, 1400).unwrap());
        // Not a SYN: untouched.
        let mut ack = syn(1460);
        ack[20 + 13] = flags::ACK;
        assert!(!clamp_mss(&mut ack, 1000).unwrap());
    }

    #[test]
    fn malformed_options_are_ignored_not_trusted() {
        let mut p = syn(1460);
        p[20 + 23] = 0; // MSS length byte 0
        assert_eq!(TcpPacket::new_checked(&p[20..]).unwrap().mss(), None);
        p[20 + 23] = 200; // runs past the options
        assert_eq!(TcpPacket::new_checked(&p[20..]).unwrap().mss(), None);
        assert!(!clamp_mss(&mut p, 1000).unwrap());
        let mut short = syn(1460);
        short[20 + 12] = 0x40; // data offset 16 < 20
        assert!(clamp_mss(&mut short, 1000).is_err());
    }
}
