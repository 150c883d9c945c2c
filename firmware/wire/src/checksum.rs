//! The Internet checksum (RFC 1071) and its incremental update (RFC 1624).

use std::net::{Ipv4Addr, Ipv6Addr};

/// The ones'-complement accumulator (folded to 16 bits, not complemented) over `data` (big-endian 16-bit words; an odd last
/// byte is padded with zero), added to `initial`. Fold with [`finish`].
pub fn sum(initial: u32, data: &[u8]) -> u32 {
    let mut acc = u64::from(initial);
    let mut chunks = data.chunks_exact(8);
    for c in &mut chunks {
        let v = u64::from_be_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]);
        // Add the four 16-bit words at once: high and low 32-bit halves, carries kept in u64.
        acc += (v >> 32) + (v & 0xffff_ffff);
    }
    let mut rest = chunks.remainder();
    while rest.len() >= 2 {
        acc += u64::from(u16::from_be_bytes([rest[0], rest[1]]));
        rest = &rest[2..];
    }
    if let [b] = rest {
        acc += u64::from(*b) << 8;
    }
    // Fold to 16 bits (2^16 = 1 in ones'-complement arithmetic), so that callers can add a
    // few more words without overflow.
    while acc > 0xffff {
        acc = (acc >> 16) + (acc & 0xffff);
    }
    acc as u32
}

/// Folds an accumulator to 16 bits and complements it: the value to put in a checksum field.
pub fn finish(acc: u32) -> u16 {
    let mut a = acc;
    while a > 0xffff {
        a = (a >> 16) + (a & 0xffff);
    }
    !(a as u16)
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

    #[test]
    fn long_buffers_fold_correctly() {
        let data = vec![0xffu8; 100_000];
        assert_eq!(checksum(&data), 0);
        let data: Vec<u8> = (0..9001u32).map(|i| (i * 7) as u8).collect();
        let mut slow = 0u32;
        for c in data.chunks(2) {
            slow += u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
        }
        assert_eq!(checksum(&data), finish(slow));
    }
}
