//! Shared packet-classification types: prefixes, port ranges and flow keys.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

/// An IP prefix (`10.1.0.0/16`, `2001:db8::/32`). Host bits are always zero.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Prefix {
    addr: IpAddr,
    len: u8,
}

/// Why a prefix was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PrefixError {
    /// The address part does not parse.
    #[error("`{0}` is not an IP address")]
    BadAddress(String),
    /// The length is not a number or is longer than the address.
    #[error("prefix length `{0}` is out of range (0–32 for IPv4, 0–128 for IPv6)")]
    BadLength(String),
    /// Bits are set beyond the prefix length: `10.1.2.3/16` is probably a typo for `10.1.0.0/16`.
    #[error("`{0}` has host bits set; did you mean `{1}`?")]
    HostBits(String, String),
}

impl Prefix {
    /// A prefix from an address and length; host bits are cleared.
    pub fn new(addr: IpAddr, len: u8) -> Result<Prefix, PrefixError> {
        if len > max_len(&addr) {
            return Err(PrefixError::BadLength(len.to_string()));
        }
        Ok(Prefix { addr: mask(addr, len), len })
    }

    /// The prefix that holds only `addr`.
    pub fn host(addr: IpAddr) -> Prefix {
        Prefix { addr, len: max_len(&addr) }
    }

    /// The network address.
    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    /// The prefix length in bits.
    #[allow(clippy::len_without_is_empty)] // a prefix length, not a collection size
    pub fn len(&self) -> u8 {
        self.len
    }

    /// True for `0.0.0.0/0` and `::/0`.
    pub fn is_default(&self) -> bool {
        self.len == 0
    }

    /// True when `ip` lies inside this prefix (never across address families).
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(_), IpAddr::V4(_)) | (IpAddr::V6(_), IpAddr::V6(_)) => {
                mask(ip, self.len) == self.addr
            }
            _ => false,
        }
    }

    /// True when every address of `other` lies inside this prefix.
    pub fn covers(&self, other: &Prefix) -> bool {
        other.len >= self.len && self.contains(other.addr)
    }

    /// True when the two prefixes share at least one address.
    pub fn overlaps(&self, other: &Prefix) -> bool {
        self.covers(other) || other.covers(self)
    }
}

fn max_len(addr: &IpAddr) -> u8 {
    if addr.is_ipv4() { 32 } else { 128 }
}

fn mask(addr: IpAddr, len: u8) -> IpAddr {
    match addr {
        IpAddr::V4(a) => {
            let m = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
            IpAddr::V4((u32::from(a) & m).into())
        }
        IpAddr::V6(a) => {
            let m = u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0);
            IpAddr::V6((u128::from(a) & m).into())
        }
    }
}

impl fmt::Display for Prefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

impl FromStr for Prefix {
    type Err = PrefixError;

    /// Parses `addr/len`, or a bare address as a host prefix. Refuses host bits.
    fn from_str(s: &str) -> Result<Prefix, PrefixError> {
        let (a, l) = match s.split_once('/') {
            Some((a, l)) => (a, Some(l)),
            None => (s, None),
        };
        let addr: IpAddr = a.trim().parse().map_err(|_| PrefixError::BadAddress(a.to_owned()))?;
        let len = match l {
            Some(l) => l.trim().parse::<u8>().map_err(|_| PrefixError::BadLength(l.to_owned()))?,
            None => max_len(&addr),
        };
        let p = Prefix::new(addr, len)?;
        if p.addr != addr {
            return Err(PrefixError::HostBits(s.to_owned(), p.to_string()));
        }
        Ok(p)
    }
}

/// An inclusive port range; `0..=65535` means any port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PortRange {
    /// First port, inclusive.
    pub first: u16,
    /// Last port, inclusive.
    pub last: u16,
}

impl PortRange {
    /// Every port.
    pub const ANY: PortRange = PortRange { first: 0, last: u16::MAX };

    /// One port.
    pub fn single(port: u16) -> PortRange {
        PortRange { first: port, last: port }
    }

    /// True when `port` lies in the range.
    pub fn contains(&self, port: u16) -> bool {
        self.first <= port && port <= self.last
    }

    /// True for the range of every port.
    pub fn is_any(&self) -> bool {
        *self == PortRange::ANY
    }
}

/// The 5-tuple of a packet as the classifiers see it. For ICMP, `src_port` carries the type and
/// `dst_port` the code (as RFC 4301 §4.4.1.1 does for selectors); for other protocols without
/// ports both are zero.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FlowKey {
    /// Source address.
    pub src: IpAddr,
    /// Destination address.
    pub dst: IpAddr,
    /// IP protocol number (6 TCP, 17 UDP, 1 ICMP, 58 ICMPv6, ...).
    pub proto: u8,
    /// Source port (ICMP type).
    pub src_port: u16,
    /// Destination port (ICMP code).
    pub dst_port: u16,
}

impl FlowKey {
    /// The key of the reply direction.
    pub fn reversed(&self) -> FlowKey {
        FlowKey {
            src: self.dst,
            dst: self.src,
            proto: self.proto,
            src_port: self.dst_port,
            dst_port: self.src_port,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_refuses_host_bits_with_a_suggestion() {
        let p: Prefix = "10.1.0.0/16".parse().unwrap();
        assert!(p.contains("10.1.255.3".parse().unwrap()));
        assert!(!p.contains("10.2.0.1".parse().unwrap()));
        assert!(!p.contains("::1".parse().unwrap()));
        let e = "10.1.2.3/16".parse::<Prefix>().unwrap_err();
        assert_eq!(e.to_string(), "`10.1.2.3/16` has host bits set; did you mean `10.1.0.0/16`?");
        assert!(matches!("10.0.0.0/33".parse::<Prefix>(), Err(PrefixError::BadLength(_))));
        assert!(matches!("nonsense/8".parse::<Prefix>(), Err(PrefixError::BadAddress(_))));
        assert_eq!("2001:db8::/32".parse::<Prefix>().unwrap().len(), 32);
        assert_eq!("0.0.0.0/0".parse::<Prefix>().unwrap().to_string(), "0.0.0.0/0");
        assert_eq!("192.0.2.7".parse::<Prefix>().unwrap().len(), 32);
    }

    #[test]
    fn covers_and_overlaps() {
        let a: Prefix = "10.0.0.0/8".parse().unwrap();
        let b: Prefix = "10.1.0.0/16".parse().unwrap();
        let c: Prefix = "192.168.0.0/16".parse().unwrap();
        assert!(a.covers(&b) && !b.covers(&a));
        assert!(a.overlaps(&b) && b.overlaps(&a) && !a.overlaps(&c));
        let any: Prefix = "0.0.0.0/0".parse().unwrap();
        assert!(any.covers(&c) && any.is_default());
    }
}
