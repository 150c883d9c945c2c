//! TUN offloads (`IFF_VNET_HDR` with `TUNSETOFFLOAD`): the kernel hands the dataplane whole TCP
//! super-segments of up to 64 KiB instead of MTU-sized packets, with the transport checksum left
//! for us to finish, and takes coalesced super-segments back. This is the technique of
//! wireguard-go's `tun/offload_linux.go`; it turns per-packet system calls and forwarding work
//! on both LAN legs into per-64-KiB work, which is what the tunnel benchmark is bound by.
//!
//! Every read and write on such a TUN device is prefixed by a `struct virtio_net_hdr` (virtio
//! 1.2 §5.1.6, in host byte order for TUN):
//!
//! ```text
//!  0      1         2        4         6           8            10
//!  +------+---------+--------+---------+-----------+------------+
//!  |flags |gso_type |hdr_len |gso_size |csum_start |csum_offset |
//!  +------+---------+--------+---------+-----------+------------+
//! ```
//!
//! Outbound, [`segment_tcp`] splits a super-segment into the MSS-sized segments a kernel would
//! have sent (sequence numbers, IP IDs, lengths, flags and checksums fixed, RFC 9293 §3.1,
//! RFC 791 §3.1); each is then encrypted on its own, so the wire carries ordinary ESP packets.
//! Inbound, [`Coalescer`] merges in-order TCP segments of one flow from a receive batch back
//! into one super-segment (as GRO does) before writing it to TUN.

use isthmus_wire::checksum::{copy_and_sum, finish, fold, sum};

/// Bytes of `struct virtio_net_hdr`.
pub const VNET_HDR_LEN: usize = 10;

/// `VIRTIO_NET_HDR_F_NEEDS_CSUM`: the checksum at `csum_start + csum_offset` is unfinished.
pub const F_NEEDS_CSUM: u8 = 1;
/// `VIRTIO_NET_HDR_F_DATA_VALID`: the receiver need not verify the checksum.
pub const F_DATA_VALID: u8 = 2;
/// `VIRTIO_NET_HDR_GSO_NONE`.
pub const GSO_NONE: u8 = 0;
/// `VIRTIO_NET_HDR_GSO_TCPV4`.
pub const GSO_TCPV4: u8 = 1;
/// `VIRTIO_NET_HDR_GSO_TCPV6`.
pub const GSO_TCPV6: u8 = 4;
/// `VIRTIO_NET_HDR_GSO_ECN` flag bit.
pub const GSO_ECN: u8 = 0x80;

/// A parsed `virtio_net_hdr`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VnetHdr {
    /// `F_*` bits.
    pub flags: u8,
    /// `GSO_*` type.
    pub gso_type: u8,
    /// Length of the headers to replicate in each segment (a hint).
    pub hdr_len: u16,
    /// Payload bytes per segment.
    pub gso_size: u16,
    /// Where checksumming starts (the transport header).
    pub csum_start: u16,
    /// Where the checksum is stored, from `csum_start`.
    pub csum_offset: u16,
}

impl VnetHdr {
    /// Reads the header in front of a packet.
    pub fn parse(b: &[u8]) -> Option<VnetHdr> {
        let b = b.get(..VNET_HDR_LEN)?;
        let u = |i: usize| u16::from_ne_bytes([b[i], b[i + 1]]);
        Some(VnetHdr {
            flags: b[0],
            gso_type: b[1],
            hdr_len: u(2),
            gso_size: u(4),
            csum_start: u(6),
            csum_offset: u(8),
        })
    }

    /// The header's bytes.
    pub fn to_bytes(self) -> [u8; VNET_HDR_LEN] {
        let mut b = [0u8; VNET_HDR_LEN];
        b[0] = self.flags;
        b[1] = self.gso_type;
        b[2..4].copy_from_slice(&self.hdr_len.to_ne_bytes());
        b[4..6].copy_from_slice(&self.gso_size.to_ne_bytes());
        b[6..8].copy_from_slice(&self.csum_start.to_ne_bytes());
        b[8..10].copy_from_slice(&self.csum_offset.to_ne_bytes());
        b
    }

    /// True for a TCP super-segment to split.
    pub fn is_tcp_gso(&self) -> bool {
        matches!(self.gso_type & !GSO_ECN, GSO_TCPV4 | GSO_TCPV6)
    }
}

/// Finishes a checksum the kernel left partial (`F_NEEDS_CSUM`): the field already holds the
/// pseudo-header sum, so the checksum is the inverted sum from `start` to the end.
pub fn finish_checksum(pkt: &mut [u8], start: usize, offset: usize) -> bool {
    let field = start + offset;
    if field + 2 > pkt.len() || start > pkt.len() {
        return false;
    }
    let c = finish(sum(0, &pkt[start..]));
    pkt[field..field + 2].copy_from_slice(&c.to_be_bytes());
    true
}

/// The transport-layer pseudo-header sum (RFC 9293 §3.1, RFC 8200 §8.1) of `pkt` for `len`
/// bytes of upper-layer data.
fn pseudo_sum(pkt: &[u8], proto: u8, len: usize) -> u32 {
    let acc = if pkt[0] >> 4 == 4 { sum(0, &pkt[12..20]) } else { sum(0, &pkt[8..40]) };
    // `len` is at most 64 KiB: the 32-bit sum cannot overflow.
    acc + u32::from(proto) + len as u32
}

/// Layout of a TCP super-segment: where TCP starts and where its payload starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TcpLayout {
    /// Offset of the TCP header.
    pub l4: usize,
    /// Offset of the payload (all headers before it are replicated per segment).
    pub payload: usize,
    /// Payload bytes per segment.
    pub mss: usize,
    /// Number of segments.
    pub count: usize,
}

/// Checks a super-segment from TUN and returns its layout, or `None` when it cannot be split
/// safely (not IPv4/IPv6 TCP where the header says, zero segment size, lengths inconsistent).
pub fn tcp_layout(pkt: &[u8], hdr: &VnetHdr) -> Option<TcpLayout> {
    let l4 = usize::from(hdr.csum_start);
    let mss = usize::from(hdr.gso_size);
    let ok_ip = match *pkt.first()? >> 4 {
        4 => pkt.len() >= 20 && *pkt.get(9)? == 6 && usize::from(pkt[0] & 0x0f) * 4 == l4,
        6 => pkt.len() >= 40 && l4 >= 40,
        _ => false,
    };
    if !ok_ip || mss == 0 {
        return None;
    }
    let doff = usize::from(*pkt.get(l4 + 12)? >> 4) * 4;
    let payload = l4 + doff;
    if doff < 20 || payload > pkt.len() {
        return None;
    }
    let count = (pkt.len() - payload).div_ceil(mss).max(1);
    Some(TcpLayout { l4, payload, mss, count })
}

/// Writes segment `i` of the super-segment `pkt` into `dst` as a complete packet with valid
/// IP and TCP checksums; returns its length (`None` if `dst` is too small).
pub fn segment_tcp(pkt: &[u8], lay: &TcpLayout, i: usize, dst: &mut [u8]) -> Option<usize> {
    let start = lay.payload + i * lay.mss;
    let end = (start + lay.mss).min(pkt.len());
    let chunk = pkt.get(start..end)?;
    let total = lay.payload + chunk.len();
    let dst = dst.get_mut(..total)?;
    dst[..lay.payload].copy_from_slice(&pkt[..lay.payload]);
    let payload_sum = copy_and_sum(&mut dst[lay.payload..], chunk);
    let last = i + 1 == lay.count;
    if dst[0] >> 4 == 4 {
        dst[2..4].copy_from_slice(&(total as u16).to_be_bytes());
        let id = u16::from_be_bytes([pkt[4], pkt[5]]).wrapping_add(i as u16);
        dst[4..6].copy_from_slice(&id.to_be_bytes());
        dst[10] = 0;
        dst[11] = 0;
        let c = finish(sum(0, &dst[..lay.l4]));
        dst[10..12].copy_from_slice(&c.to_be_bytes());
    } else {
        dst[4..6].copy_from_slice(&((total - 40) as u16).to_be_bytes());
    }
    let t = lay.l4;
    let seq = u32::from_be_bytes([pkt[t + 4], pkt[t + 5], pkt[t + 6], pkt[t + 7]]);
    let seq = seq.wrapping_add((i * lay.mss) as u32);
    dst[t + 4..t + 8].copy_from_slice(&seq.to_be_bytes());
    if !last {
        dst[t + 13] &= !0x09; // FIN and PSH only on the last segment
    }
    if i != 0 {
        dst[t + 13] &= !0x80; // CWR only on the first
    }
    dst[t + 16] = 0;
    dst[t + 17] = 0;
    // The TCP header is a multiple of 4 bytes long, so the payload's sum adds on directly.
    let acc = pseudo_sum(dst, 6, total - t) + payload_sum;
    let c = finish(sum(acc, &dst[t..lay.payload]));
    dst[t + 16..t + 18].copy_from_slice(&c.to_be_bytes());
    Some(total)
}

/// TCP flow identity and the fields that must agree for two segments to merge.
#[derive(Clone, Copy, PartialEq, Eq)]
struct MergeKey {
    v4: bool,
    /// TOS and TTL (IPv4) or traffic class, flow label and hop limit (IPv6).
    ip_misc: [u8; 5],
    addrs: [u8; 32],
    ports: [u8; 4],
    ack: [u8; 4],
    window: [u8; 2],
    l4: usize,
    doff: usize,
}

fn merge_key(pkt: &[u8]) -> Option<(MergeKey, u32, u8)> {
    let v4 = *pkt.first()? >> 4 == 4;
    let l4 = if v4 {
        let ihl = usize::from(pkt[0] & 0x0f) * 4;
        let frag = u16::from_be_bytes([*pkt.get(6)?, *pkt.get(7)?]);
        // Plain IPv4 TCP only: no options, not a fragment (DF allowed).
        if ihl != 20 || pkt.get(9)? != &6 || frag & 0x3fff != 0 {
            return None;
        }
        20
    } else {
        if pkt.len() < 40 || pkt[6] != 6 {
            return None;
        }
        40
    };
    let tcp = pkt.get(l4..l4 + 20)?;
    let doff = usize::from(tcp[12] >> 4) * 4;
    let flags = tcp[13];
    // Only pure data segments (ACK, optionally PSH) merge, as in GRO.
    if doff < 20 || pkt.len() <= l4 + doff || flags & !0x08 != 0x10 {
        return None;
    }
    let mut addrs = [0u8; 32];
    if v4 {
        addrs[..8].copy_from_slice(&pkt[12..20]);
    } else {
        addrs.copy_from_slice(&pkt[8..40]);
    }
    let ip_misc =
        if v4 { [pkt[1], pkt[8], 0, 0, 0] } else { [pkt[0], pkt[1], pkt[2], pkt[3], pkt[7]] };
    let key = MergeKey {
        v4,
        ip_misc,
        addrs,
        ports: tcp[..4].try_into().ok()?,
        ack: tcp[8..12].try_into().ok()?,
        window: tcp[14..16].try_into().ok()?,
        l4,
        doff,
    };
    Some((key, u32::from_be_bytes([tcp[4], tcp[5], tcp[6], tcp[7]]), flags))
}

/// Merges consecutive in-order TCP segments of one flow into one super-segment to write to a
/// TUN device with offloads (as the kernel's GRO would). Anything that does not merge is
/// written as it is. Output goes to a callback as (vnet header, packet), for one `writev`.
pub struct Coalescer {
    buf: Vec<u8>,
    /// Bytes used in `buf` after the vnet header.
    len: usize,
    key: Option<MergeKey>,
    next_seq: u32,
    seg_payload: usize,
    segments: usize,
    /// The last merged segment was shorter than the first, or carried PSH: nothing may follow.
    closed: bool,
}

/// The header of a packet written as it is: no GSO, checksum already verified (it came out of
/// an authenticated ESP packet).
const PLAIN: VnetHdr = VnetHdr {
    flags: F_DATA_VALID,
    gso_type: GSO_NONE,
    hdr_len: 0,
    gso_size: 0,
    csum_start: 0,
    csum_offset: 0,
};

/// Largest super-segment (IPv4 total length is 16 bits).
const MAX_SUPER: usize = 65_535;

impl Default for Coalescer {
    fn default() -> Coalescer {
        Coalescer {
            buf: vec![0u8; MAX_SUPER],
            len: 0,
            key: None,
            next_seq: 0,
            seg_payload: 0,
            segments: 0,
            closed: false,
        }
    }
}

impl Coalescer {
    /// Adds a packet. If it cannot join the pending super-segment, `flush` is called first with
    /// the pending one; a packet that cannot merge at all is passed to `flush` as it is.
    pub fn push(&mut self, pkt: &[u8], flush: &mut impl FnMut(&VnetHdr, &[u8])) {
        let Some((key, seq, flags)) = merge_key(pkt) else {
            self.flush(flush);
            flush(&PLAIN, pkt);
            return;
        };
        let payload = pkt.len() - key.l4 - key.doff;
        let fits = self.len + payload <= MAX_SUPER;
        let joins = self.key == Some(key)
            && !self.closed
            && seq == self.next_seq
            && payload <= self.seg_payload
            && fits
            // The headers (options such as timestamps included) must match except the
            // sequence number, as GRO requires.
            && pkt[key.l4 + 20..key.l4 + key.doff]
                == self.buf[key.l4 + 20..key.l4 + key.doff];
        if joins {
            let at = self.len;
            self.buf[at..at + payload].copy_from_slice(&pkt[key.l4 + key.doff..]);
            self.len += payload;
            self.segments += 1;
            self.next_seq = seq.wrapping_add(payload as u32);
            if payload < self.seg_payload || flags & 0x08 != 0 {
                self.closed = true;
                // Carry PSH to the merged header.
                self.buf[key.l4 + 13] |= flags & 0x08;
            }
            return;
        }
        self.flush(flush);
        if pkt.len() > MAX_SUPER {
            flush(&PLAIN, pkt);
            return;
        }
        self.buf[..pkt.len()].copy_from_slice(pkt);
        self.len = pkt.len();
        self.key = Some(key);
        self.next_seq = seq.wrapping_add(payload as u32);
        self.seg_payload = payload;
        self.segments = 1;
        self.closed = flags & 0x08 != 0;
    }

    /// Writes out the pending super-segment, if any.
    pub fn flush(&mut self, out: &mut impl FnMut(&VnetHdr, &[u8])) {
        let Some(key) = self.key.take() else { return };
        let total = self.len;
        let pkt = &mut self.buf[..total];
        let hdr = if self.segments == 1 {
            PLAIN
        } else {
            if key.v4 {
                pkt[2..4].copy_from_slice(&(total as u16).to_be_bytes());
                pkt[10] = 0;
                pkt[11] = 0;
                let c = finish(sum(0, &pkt[..20]));
                pkt[10..12].copy_from_slice(&c.to_be_bytes());
            } else {
                pkt[4..6].copy_from_slice(&((total - 40) as u16).to_be_bytes());
            }
            // CHECKSUM_PARTIAL: the field holds the folded pseudo-header sum.
            let psum = fold(pseudo_sum(pkt, 6, total - key.l4));
            pkt[key.l4 + 16..key.l4 + 18].copy_from_slice(&psum.to_be_bytes());
            VnetHdr {
                flags: F_NEEDS_CSUM,
                gso_type: if key.v4 { GSO_TCPV4 } else { GSO_TCPV6 },
                hdr_len: (key.l4 + key.doff) as u16,
                gso_size: self.seg_payload as u16,
                csum_start: key.l4 as u16,
                csum_offset: 16,
            }
        };
        out(&hdr, &self.buf[..total]);
        self.len = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An IPv4 TCP packet 10.0.0.1:1000 -> 10.0.0.2:80 with `payload` and valid checksums.
    fn tcp_v4(seq: u32, flags: u8, payload: &[u8]) -> Vec<u8> {
        let total = 40 + payload.len();
        let mut p = vec![0x45, 0, 0, 0, 0x12, 0x34, 0x40, 0, 64, 6, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2];
        p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
        p.extend_from_slice(&[0x03, 0xe8, 0, 80]);
        p.extend_from_slice(&seq.to_be_bytes());
        p.extend_from_slice(&[0, 0, 0, 7, 0x50, flags, 0x10, 0, 0, 0, 0, 0]);
        p.extend_from_slice(payload);
        let c = finish(sum(0, &p[..20]));
        p[10..12].copy_from_slice(&c.to_be_bytes());
        let acc = pseudo_sum(&p, 6, total - 20);
        let c = finish(sum(acc, &p[20..]));
        p[36..38].copy_from_slice(&c.to_be_bytes());
        p
    }

    fn valid(p: &[u8]) -> bool {
        let ip_ok = fold(sum(0, &p[..20])) == 0xffff;
        let acc = pseudo_sum(p, 6, p.len() - 20);
        ip_ok && fold(sum(acc, &p[20..])) == 0xffff
    }

    #[test]
    fn vnet_header_round_trips() {
        let h = VnetHdr {
            flags: 1,
            gso_type: 1,
            hdr_len: 52,
            gso_size: 1448,
            csum_start: 20,
            csum_offset: 16,
        };
        assert_eq!(VnetHdr::parse(&h.to_bytes()), Some(h));
        assert!(h.is_tcp_gso());
        assert_eq!(VnetHdr::parse(&[0; 9]), None);
    }

    #[test]
    fn segments_a_super_segment_like_the_kernel_rfc9293_3_1() {
        let payload: Vec<u8> = (0..3000u32).map(|i| i as u8).collect();
        let big = tcp_v4(1000, 0x18, &payload); // ACK|PSH
        let hdr =
            VnetHdr { gso_type: GSO_TCPV4, gso_size: 1400, csum_start: 20, ..VnetHdr::default() };
        let lay = tcp_layout(&big, &hdr).unwrap();
        assert_eq!(lay.count, 3);
        let mut out = vec![0u8; 2000];
        let mut joined = Vec::new();
        for i in 0..3 {
            let n = segment_tcp(&big, &lay, i, &mut out).unwrap();
            let s = &out[..n];
            assert!(valid(s), "segment {i} checksums");
            assert_eq!(u16::from_be_bytes([s[2], s[3]]) as usize, n);
            assert_eq!(u32::from_be_bytes([s[24], s[25], s[26], s[27]]), 1000 + 1400 * i as u32);
            assert_eq!(s[33] & 0x08 != 0, i == 2, "PSH only on the last");
            joined.extend_from_slice(&s[40..]);
        }
        assert_eq!(joined, payload);
    }

    #[test]
    fn coalesces_in_order_segments_and_splits_back() {
        let seg = |i: u32, flags| tcp_v4(5000 + i * 100, flags, &[i as u8; 100]);
        let mut c = Coalescer::default();
        let mut out: Vec<(VnetHdr, Vec<u8>)> = Vec::new();
        let mut sink = |h: &VnetHdr, b: &[u8]| out.push((*h, b.to_vec()));
        for i in 0..4 {
            c.push(&seg(i, if i == 3 { 0x18 } else { 0x10 }), &mut sink);
        }
        // Out of order: starts a new one.
        c.push(&seg(9, 0x10), &mut sink);
        c.flush(&mut sink);
        assert_eq!(out.len(), 2);
        let h = out[0].0;
        assert_eq!((h.gso_type, h.gso_size, h.csum_start, h.csum_offset), (GSO_TCPV4, 100, 20, 16));
        let merged = &out[0].1[..];
        assert_eq!(merged.len(), 40 + 400);
        assert_eq!(merged[33] & 0x08, 0x08, "PSH carried");
        // Finishing the partial checksum and splitting again gives the original segments.
        let mut whole = merged.to_vec();
        finish_checksum(&mut whole, 20, 16);
        assert!(valid(&whole));
        let lay = tcp_layout(merged, &h).unwrap();
        let mut buf = vec![0u8; 200];
        let n = segment_tcp(merged, &lay, 1, &mut buf).unwrap();
        assert_eq!(&buf[40..n], &[1u8; 100]);
        assert_eq!(out[1].0.gso_type, GSO_NONE);
    }

    #[test]
    fn non_tcp_passes_through_unmerged() {
        let mut udp = tcp_v4(1, 0x10, &[1, 2, 3]);
        udp[9] = 17;
        let mut c = Coalescer::default();
        let mut out = Vec::new();
        let mut sink = |h: &VnetHdr, b: &[u8]| out.push((*h, b.to_vec()));
        c.push(&udp, &mut sink);
        c.flush(&mut sink);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0], (PLAIN, udp.clone()));
        // Garbage never panics.
        for len in 0..70 {
            c.push(&vec![0x45; len], &mut |_, _| {});
            c.push(&vec![0x60; len], &mut |_, _| {});
            let _ = tcp_layout(
                &vec![0x45; len],
                &VnetHdr { csum_start: 20, gso_size: 10, ..VnetHdr::default() },
            );
        }
    }
}
