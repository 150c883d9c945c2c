//! IP addresses, prefixes and port ranges as plain values.

use std::fmt;

/// An IP address: IPv4 in the low 32 bits of `bits`, or IPv6.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Ip {
    /// True for IPv6.
    pub v6: bool,
    /// The address, big-endian value.
    pub bits: u128,
}

impl Ip {
    /// An IPv4 address from its big-endian value.
    pub fn v4(v: u32) -> Ip {
        Ip { v6: false, bits: u128::from(v) }
    }

    /// An IPv6 address from its big-endian value.
    pub fn v6(v: u128) -> Ip {
        Ip { v6: true, bits: v }
    }

    /// Address width in bits.
    pub fn width(&self) -> u8 {
        if self.v6 { 128 } else { 32 }
    }
}

/// An IP prefix.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Net {
    /// Network address.
    pub ip: Ip,
    /// Length in bits.
    pub len: u8,
}

impl Net {
    /// Every address of `ip`'s family.
    pub fn any_like(ip: Ip) -> Net {
        Net { ip: Ip { v6: ip.v6, bits: 0 }, len: 0 }
    }

    fn mask(&self) -> u128 {
        let host = u32::from(self.ip.width() - self.len.min(self.ip.width()));
        let m = if host >= 128 { 0 } else { u128::MAX << host };
        if self.ip.v6 { m } else { m & u128::from(u32::MAX) }
    }

    /// True when `ip` is inside this prefix (never across families).
    pub fn contains(&self, ip: Ip) -> bool {
        ip.v6 == self.ip.v6 && ip.bits & self.mask() == self.ip.bits & self.mask()
    }

    /// True when the length fits the family and no host bit is set.
    pub fn is_valid(&self) -> bool {
        self.len <= self.ip.width() && self.ip.bits & !self.mask() == 0
    }
}

impl fmt::Display for Net {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.ip.v6 {
            let segs: Vec<String> =
                (0..8).rev().map(|i| format!("{:x}", (self.ip.bits >> (i * 16)) as u16)).collect();
            write!(f, "{}/{}", segs.join(":"), self.len)
        } else {
            let b = self.ip.bits as u32;
            write!(f, "{}.{}.{}.{}/{}", b >> 24, (b >> 16) & 255, (b >> 8) & 255, b & 255, self.len)
        }
    }
}

/// An inclusive port range.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Ports {
    /// First port.
    pub first: u16,
    /// Last port.
    pub last: u16,
}

impl Ports {
    /// Every port.
    pub const ANY: Ports = Ports { first: 0, last: u16::MAX };

    /// True for every port.
    pub fn is_any(&self) -> bool {
        *self == Ports::ANY
    }

    /// Number of ports in the range.
    pub fn size(&self) -> u32 {
        u32::from(self.last).saturating_sub(u32::from(self.first)) + 1
    }

    /// True when `p` is in the range.
    pub fn contains(&self, p: u16) -> bool {
        self.first <= p && p <= self.last
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes() {
        let n = Net { ip: Ip::v4(0x0a01_0000), len: 16 };
        assert!(n.contains(Ip::v4(0x0a01_ff03)));
        assert!(!n.contains(Ip::v4(0x0a02_0000)));
        assert!(!n.contains(Ip::v6(0x0a01_0000)));
        assert!(n.is_valid());
        assert!(!Net { ip: Ip::v4(0x0a01_0001), len: 16 }.is_valid());
        assert_eq!(n.to_string(), "10.1.0.0/16");
        assert!(Net::any_like(Ip::v6(1)).contains(Ip::v6(u128::MAX)));
    }
}
