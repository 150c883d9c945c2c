//! The Internet checksum (RFC 1071) and its incremental update (RFC 1624).

use std::net::{Ipv4Addr, Ipv6Addr};

/// The ones'-complement accumulator over `data` (big-endian 16-bit words; an odd last byte is
/// padded with zero), added to `initial` and folded to 16 bits (not complemented), so that
/// callers can add a few more words without overflow. `data` must start at an even offset of
/// the checksummed region. Fold and complement with [`finish`].
///
/// Long data is summed as native-endian 64-bit words split into 32-bit halves in four
/// independent lanes (which the compiler vectorises), byte-swapped once at the end: the sum is
/// independent of byte order up to a final swap (RFC 1071 §2(B)). About 3 times faster than
/// one big-endian accumulator on a 1500-byte packet.
pub fn sum(initial: u32, data: &[u8]) -> u32 {
    // Headers (8 to 60 bytes) are summed directly: the lanes' setup and padded tail cost more
    // than the data there.
    let acc = if data.len() <= 64 { sum_short(data) } else { u64::from(sum_lanes(data, None)) };
    u32::from(fold64(acc + u64::from(initial)))
}

/// Copies `src` into `dst` (same length) and returns the sum of the bytes, as [`sum`] with
/// `initial` 0, in one pass over the data.
pub fn copy_and_sum(dst: &mut [u8], src: &[u8]) -> u32 {
    u32::from(sum_lanes(src, Some(dst)))
}

/// Big-endian 64-bit words (four 16-bit words at once), then the 16-bit tail; unfolded.
#[inline]
fn sum_short(data: &[u8]) -> u64 {
    let mut acc = 0u64;
    let mut chunks = data.chunks_exact(8);
    for c in &mut chunks {
        let v = u64::from_be_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]);
        // High and low 32-bit halves, carries kept in u64.
        acc += (v >> 32) + (v & 0xffff_ffff);
    }
    let mut words = chunks.remainder().chunks_exact(2);
    acc += (&mut words).map(|w| u64::from(u16::from_be_bytes([w[0], w[1]]))).sum::<u64>();
    if let [b] = words.remainder() {
        acc += u64::from(*b) << 8;
    }
    acc
}

/// The lane sum of `src`, copied into `dst` on the way when given; folded, in network order.
/// Each lane gains at most 2^33 per 32 bytes: no overflow below 2^30 bytes.
#[inline(always)]
fn sum_lanes(src: &[u8], dst: Option<&mut [u8]>) -> u16 {
    let mut lane = [0u64; 4];
    let mut s = src.chunks_exact(32);
    let rest = match dst {
        Some(dst) => {
            let mut d = dst.chunks_exact_mut(32);
            for (dc, sc) in (&mut d).zip(&mut s) {
                dc.copy_from_slice(sc);
                lanes(&mut lane, sc);
            }
            d.into_remainder().copy_from_slice(s.remainder());
            s.remainder()
        }
        None => {
            for c in &mut s {
                lanes(&mut lane, c);
            }
            s.remainder()
        }
    };
    if !rest.is_empty() {
        let mut pad = [0u8; 32];
        pad[..rest.len()].copy_from_slice(rest);
        lanes(&mut lane, &pad);
    }
    let native = fold64(lane.iter().map(|&l| u64::from(fold64(l))).sum());
    u16::from_be_bytes(native.to_ne_bytes())
}

#[inline(always)]
fn lanes(lane: &mut [u64; 4], c: &[u8]) {
    for (k, l) in lane.iter_mut().enumerate() {
        let mut w = [0u8; 8];
        w.copy_from_slice(&c[k * 8..k * 8 + 8]);
        let w = u64::from_ne_bytes(w);
        *l += (w >> 32) + (w & 0xffff_ffff);
    }
}

#[inline]
fn fold64(mut acc: u64) -> u16 {
    // 2^16 = 1 in ones'-complement arithmetic.
    while acc > 0xffff {
        acc = (acc >> 16) + (acc & 0xffff);
    }
    acc as u16
}

/// Folds an accumulator to 16 bits, not complemented (the value a CHECKSUM_PARTIAL field
/// holds, or `0xffff` when a sum over a valid checksum is verified).
pub fn fold(acc: u32) -> u16 {
    fold64(u64::from(acc))
}

/// Folds an accumulator to 16 bits and complements it: the value to put in a checksum field.
pub fn finish(acc: u32) -> u16 {
    !fold(acc)
}

/// The checksum of `data` alone.
pub fn checksum(data: &[u8]) -> u16 {
    finish(sum(0, data))
}

/// The pseudo-header sum for TCP/UDP/ICMPv6 over IPv4 (RFC 768, RFC 793).
pub fn pseudo_v4(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, len: u16) -> u32 {
    let mut acc = sum(0, &src.octets());
    acc = sum(acc, &dst.octets());
    acc + u32::from(proto) + u32::from(len)
}

/// The pseudo-header sum over IPv6 (RFC 8200 §8.1).
pub fn pseudo_v6(src: Ipv6Addr, dst: Ipv6Addr, proto: u8, len: u32) -> u32 {
    let mut acc = sum(0, &src.octets());
    acc = sum(acc, &dst.octets());
    let acc = u64::from(acc) + u64::from(len >> 16) + u64::from(len & 0xffff) + u64::from(proto);
    ((acc >> 32) + (acc & 0xffff_ffff)) as u32
}

/// Updates checksum field `old_sum` after a 16-bit word changed from `old` to `new`
/// (RFC 1624 eqn. 3: HC' = ~(~HC + ~m + m')).
pub fn update16(old_sum: u16, old: u16, new: u16) -> u16 {
    let acc = u32::from(!old_sum) + u32::from(!old) + u32::from(new);
    finish(acc)
}

/// Updates a checksum after a 32-bit word (an IPv4 address, say) changed.
pub fn update32(old_sum: u16, old: u32, new: u32) -> u16 {
    let s = update16(old_sum, (old >> 16) as u16, (new >> 16) as u16);
    update16(s, old as u16, new as u16)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 1071 §3 numerical example: the words 0001 f203 f4f5 f6f7 sum to ddf2.
    #[test]
    fn rfc1071_3_example() {
        let data = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        let mut a = sum(0, &data);
        while a > 0xffff {
            a = (a >> 16) + (a & 0xffff);
        }
        assert_eq!(a, 0xddf2);
        assert_eq!(checksum(&data), !0xddf2);
        // Odd length pads with zero; split sums agree with one sum at even split points.
        assert_eq!(checksum(&[0xab]), !0xab00);
        assert_eq!(finish(sum(sum(0, &data[..2]), &data[2..])), checksum(&data));
    }

    /// A known IPv4 header (from Wikipedia's worked example) sums to b861.
    #[test]
    fn ipv4_header_example() {
        let h = [
            0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0x00, 0x00, 0xc0, 0xa8,
            0x00, 0x01, 0xc0, 0xa8, 0x00, 0xc7,
        ];
        assert_eq!(checksum(&h), 0xb861);
    }

    /// RFC 1624 §4: incremental update equals recomputation, including the -0 corner case.
    #[test]
    fn rfc1624_incremental_equals_full() {
        let mut data: Vec<u8> = (0..40u8).map(|i| i.wrapping_mul(13)).collect();
        for (at, new) in [(0usize, 0xffffu16), (6, 0x0000), (10, 0x1234), (38, 0xfffe)] {
            let before = checksum(&data);
            let old = u16::from_be_bytes([data[at], data[at + 1]]);
            data[at..at + 2].copy_from_slice(&new.to_be_bytes());
            assert_eq!(update16(before, old, new), checksum(&data), "word at {at}");
        }
        let before = checksum(&data);
        let old = u32::from_be_bytes(data[12..16].try_into().unwrap());
        data[12..16].copy_from_slice(&0x0a01_0203u32.to_be_bytes());
        assert_eq!(update32(before, old, 0x0a01_0203), checksum(&data));
    }

    /// RFC 1071 the slow way: big-endian 16-bit words, odd byte padded with zero.
    fn reference_sum(data: &[u8]) -> u16 {
        let mut acc = 0u64;
        for c in data.chunks(2) {
            acc += u64::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
        }
        fold64(acc)
    }

    #[test]
    fn fast_sum_matches_rfc1071() {
        let data: Vec<u8> =
            (0..100_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
        for len in (0..80).chain([1447, 1448, 1500, 9001, 65_535, 100_000]) {
            let d = &data[..len];
            assert_eq!(fold(sum(0, d)), reference_sum(d), "length {len}");
            assert_eq!(
                fold(sum(0x1234, d)),
                fold(0x1234 + u32::from(reference_sum(d))),
                "length {len}"
            );
        }
        assert_eq!(checksum(&[0xff; 64]), 0);
        assert_eq!(checksum(&vec![0xffu8; 100_000]), 0);
        for len in [0, 1, 31, 33, 1448] {
            let mut dst = vec![0u8; len];
            assert_eq!(fold(copy_and_sum(&mut dst, &data[..len])), reference_sum(&data[..len]));
            assert_eq!(dst, &data[..len]);
        }
    }
}
