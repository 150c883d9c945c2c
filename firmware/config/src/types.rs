//! Value types of the schema that TOML has no native form for: durations, interface addresses,
//! protocols, port ranges, and the serde adapters that read prefixes (`isthmus_tables::Prefix`) and
//! port ranges from strings.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use isthmus_tables::{PortRange, Prefix};
use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::{Deserialize, Serialize, Serializer};

/// A span of time, written as a number of seconds (`30`) or a string with units
/// (`"500ms"`, `"30s"`, `"10m"`, `"8h"`, `"1d"`, combined as `"1h30m"`). Millisecond resolution.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Dur(u64);

impl Dur {
    /// A duration of `s` seconds.
    pub const fn secs(s: u64) -> Dur {
        Dur(s.saturating_mul(1000))
    }

    /// A duration of `ms` milliseconds.
    pub const fn millis(ms: u64) -> Dur {
        Dur(ms)
    }

    /// Whole milliseconds.
    pub fn as_millis(self) -> u64 {
        self.0
    }

    /// Whole seconds (rounded down).
    pub fn as_secs(self) -> u64 {
        self.0 / 1000
    }

    /// As a standard duration.
    pub fn as_duration(self) -> std::time::Duration {
        std::time::Duration::from_millis(self.0)
    }

    /// True for a zero duration (used as "off" by some fields).
    pub fn is_zero(self) -> bool {
        self.0 == 0
    }
}

impl fmt::Debug for Dur {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Display for Dur {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0 == 0 {
            return f.write_str("0s");
        }
        let mut ms = self.0;
        for (unit, size) in [("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1000)] {
            if ms >= size {
                write!(f, "{}{unit}", ms / size)?;
                ms %= size;
            }
        }
        if ms > 0 {
            write!(f, "{ms}ms")?;
        }
        Ok(())
    }
}

impl FromStr for Dur {
    type Err = String;

    fn from_str(s: &str) -> Result<Dur, String> {
        let bad =
            || format!("`{s}` is not a duration; write e.g. `30s`, `10m`, `8h`, `1d` or `1h30m`");
        let t = s.trim();
        if t.is_empty() {
            return Err(bad());
        }
        if let Ok(n) = t.parse::<u64>() {
            return Ok(Dur::secs(n));
        }
        let mut total: u64 = 0;
        let mut rest = t;
        while !rest.is_empty() {
            let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
            if digits == 0 {
                return Err(bad());
            }
            let n: u64 = rest[..digits].parse().map_err(|_| bad())?;
            rest = &rest[digits..];
            let unit_len = rest.bytes().take_while(u8::is_ascii_alphabetic).count();
            let scale = match &rest[..unit_len] {
                "ms" => 1,
                "s" => 1000,
                "m" => 60_000,
                "h" => 3_600_000,
                "d" => 86_400_000,
                _ => return Err(bad()),
            };
            rest = &rest[unit_len..];
            total = n.checked_mul(scale).and_then(|v| total.checked_add(v)).ok_or_else(bad)?;
        }
        Ok(Dur(total))
    }
}

impl Serialize for Dur {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Dur, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Dur;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration: seconds as a number, or a string like \"30s\" or \"8h\"")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Dur, E> {
                u64::try_from(v)
                    .map(Dur::secs)
                    .map_err(|_| E::custom(format!("a duration cannot be negative ({v})")))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Dur, E> {
                Ok(Dur::secs(v))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Dur, E> {
                v.parse().map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

/// An address assigned to an interface, with the length of its on-link prefix
/// (`203.0.113.10/24`). Unlike a [`Prefix`], host bits are the point.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct IfAddr {
    /// The address itself.
    pub addr: IpAddr,
    /// The on-link prefix length.
    pub len: u8,
}

impl IfAddr {
    /// The on-link network (`203.0.113.0/24` for `203.0.113.10/24`).
    pub fn network(&self) -> Prefix {
        // The length was checked when parsed.
        Prefix::new(self.addr, self.len).unwrap_or_else(|_| Prefix::host(self.addr))
    }
}

impl fmt::Debug for IfAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Display for IfAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

impl FromStr for IfAddr {
    type Err = String;

    fn from_str(s: &str) -> Result<IfAddr, String> {
        let Some((a, l)) = s.split_once('/') else {
            return Err(format!(
                "`{s}` has no prefix length; write the address with its on-link prefix, e.g. `{s}/24`"
            ));
        };
        let addr: IpAddr = a.trim().parse().map_err(|_| format!("`{a}` is not an IP address"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let len: u8 = l
            .trim()
            .parse()
            .ok()
            .filter(|l| *l <= max)
            .ok_or_else(|| format!("prefix length `{l}` is out of range (0–{max})"))?;
        Ok(IfAddr { addr, len })
    }
}

impl Serialize for IfAddr {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for IfAddr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<IfAddr, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(de::Error::custom)
    }
}

/// An IP protocol selector: a name (`any`, `tcp`, `udp`, `icmp`, `icmpv6`, `esp`, `gre`) or a
/// protocol number (0–255).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum Protocol {
    /// Every protocol.
    #[default]
    Any,
    /// One protocol by number.
    Number(u8),
}

const PROTOCOL_NAMES: [(&str, u8); 6] =
    [("icmp", 1), ("tcp", 6), ("udp", 17), ("gre", 47), ("esp", 50), ("icmpv6", 58)];

impl Protocol {
    /// The protocol number, `None` for any.
    pub fn number(self) -> Option<u8> {
        match self {
            Protocol::Any => None,
            Protocol::Number(n) => Some(n),
        }
    }

    /// True for TCP, UDP (and SCTP/UDP-Lite): protocols whose selectors may name ports.
    pub fn has_ports(self) -> bool {
        matches!(self, Protocol::Number(6 | 17 | 132 | 136))
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Protocol::Any => f.write_str("any"),
            Protocol::Number(n) => match PROTOCOL_NAMES.iter().find(|(_, v)| v == n) {
                Some((name, _)) => f.write_str(name),
                None => write!(f, "{n}"),
            },
        }
    }
}

impl Serialize for Protocol {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Protocol::Number(n) if !PROTOCOL_NAMES.iter().any(|(_, v)| v == n) => {
                s.serialize_u8(*n)
            }
            _ => s.collect_str(self),
        }
    }
}

impl<'de> Deserialize<'de> for Protocol {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Protocol, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Protocol;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a protocol: any, tcp, udp, icmp, icmpv6, esp, gre or a number 0-255")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Protocol, E> {
                u8::try_from(v)
                    .map(Protocol::Number)
                    .map_err(|_| E::custom(format!("protocol number {v} is out of range (0-255)")))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Protocol, E> {
                self.visit_i64(i64::try_from(v).unwrap_or(i64::MAX))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Protocol, E> {
                let l = v.trim().to_ascii_lowercase();
                if l == "any" {
                    return Ok(Protocol::Any);
                }
                if let Some((_, n)) = PROTOCOL_NAMES.iter().find(|(name, _)| *name == l) {
                    return Ok(Protocol::Number(*n));
                }
                l.parse::<u8>().map(Protocol::Number).map_err(|_| {
                    E::custom(format!(
                        "unknown protocol `{v}`; use any, tcp, udp, icmp, icmpv6, esp, gre or a number 0-255"
                    ))
                })
            }
        }
        d.deserialize_any(V)
    }
}

/// Parses a port selector: `any`, `443`, `"443"` or `"8000-8080"`.
pub fn parse_ports(s: &str) -> Result<PortRange, String> {
    let t = s.trim();
    if t.eq_ignore_ascii_case("any") {
        return Ok(PortRange::ANY);
    }
    let port = |p: &str| {
        p.trim().parse::<u16>().map_err(|_| {
            format!("`{p}` is not a port (0-65535); write `any`, `443` or a range `8000-8080`")
        })
    };
    match t.split_once('-') {
        Some((a, b)) => {
            let (first, last) = (port(a)?, port(b)?);
            if first > last {
                return Err(format!(
                    "port range `{t}` is reversed; did you mean `{last}-{first}`?"
                ));
            }
            Ok(PortRange { first, last })
        }
        None => Ok(PortRange::single(port(t)?)),
    }
}

/// Formats a port selector the way [`parse_ports`] reads it.
pub fn format_ports(p: &PortRange) -> String {
    if p.is_any() {
        "any".to_owned()
    } else if p.first == p.last {
        p.first.to_string()
    } else {
        format!("{}-{}", p.first, p.last)
    }
}

/// Serde adapter for a [`PortRange`] field.
pub mod ports {
    use super::*;

    /// Writes `any`, `443` or `8000-8080`.
    pub fn serialize<S: Serializer>(p: &PortRange, s: S) -> Result<S::Ok, S::Error> {
        if !p.is_any() && p.first == p.last {
            s.serialize_u16(p.first)
        } else {
            s.serialize_str(&format_ports(p))
        }
    }

    /// Reads a number or a string.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<PortRange, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = PortRange;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("ports: `any`, a port number, or a range like \"8000-8080\"")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<PortRange, E> {
                u16::try_from(v)
                    .map(PortRange::single)
                    .map_err(|_| E::custom(format!("port {v} is out of range (0-65535)")))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<PortRange, E> {
                self.visit_i64(i64::try_from(v).unwrap_or(i64::MAX))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<PortRange, E> {
                parse_ports(v).map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

/// The [`PortRange`] of every port, for `#[serde(default)]`.
pub fn any_ports() -> PortRange {
    PortRange::ANY
}

/// Serde adapter for one [`Prefix`] field.
pub mod prefix {
    use super::*;

    /// Writes `10.1.0.0/16`.
    pub fn serialize<S: Serializer>(p: &Prefix, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(p)
    }

    /// Reads `10.1.0.0/16` (or a bare address as a host prefix); refuses host bits.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Prefix, D::Error> {
        let s = String::deserialize(d)?;
        s.parse::<Prefix>().map_err(de::Error::custom)
    }
}

/// A [`Prefix`] read from a string; the element type of prefix lists.
struct PrefixDe(Prefix);

impl<'de> Deserialize<'de> for PrefixDe {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<PrefixDe, D::Error> {
        prefix::deserialize(d).map(PrefixDe)
    }
}

/// Serde adapter for a list of prefixes, written as one string or an array of strings.
pub mod prefixes {
    use super::*;

    /// Always writes an array.
    pub fn serialize<S: Serializer>(v: &[Prefix], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(v.iter().map(|p| p.to_string()))
    }

    /// Reads `"10.0.0.0/8"` or `["10.0.0.0/8", "192.168.0.0/16"]`.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Prefix>, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Vec<Prefix>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a prefix like \"10.1.0.0/16\" or an array of them")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Vec<Prefix>, E> {
                v.parse::<Prefix>().map(|p| vec![p]).map_err(E::custom)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<Prefix>, A::Error> {
                let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0));
                while let Some(PrefixDe(p)) = seq.next_element()? {
                    out.push(p);
                }
                Ok(out)
            }
        }
        d.deserialize_any(V)
    }
}

/// Where a customer gateway is: a fixed IP address, `"any"` (a peer on a dynamic or NATed line,
/// recognised by its IKE identity; it must initiate), or a DNS name the daemon resolves and
/// re-resolves.
#[derive(Clone, PartialEq, Eq, Hash)]
pub enum PeerAddress {
    /// A fixed public address.
    Ip(IpAddr),
    /// Any address: responder only, matched by identity.
    Any,
    /// A DNS name (RFC 1123 host name syntax).
    Name(String),
}

impl PeerAddress {
    /// The fixed address, if it is one.
    pub fn ip(&self) -> Option<IpAddr> {
        match self {
            PeerAddress::Ip(a) => Some(*a),
            _ => None,
        }
    }
}

impl From<IpAddr> for PeerAddress {
    fn from(a: IpAddr) -> PeerAddress {
        PeerAddress::Ip(a)
    }
}

impl fmt::Debug for PeerAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Display for PeerAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PeerAddress::Ip(a) => write!(f, "{a}"),
            PeerAddress::Any => f.write_str("any"),
            PeerAddress::Name(n) => f.write_str(n),
        }
    }
}

impl FromStr for PeerAddress {
    type Err = String;

    fn from_str(s: &str) -> Result<PeerAddress, String> {
        if let Ok(a) = s.parse::<IpAddr>() {
            return Ok(PeerAddress::Ip(a));
        }
        if s == "any" {
            return Ok(PeerAddress::Any);
        }
        // RFC 1123 §2.1 host names: labels of letters, digits and hyphens, 1–63 characters, not
        // starting or ending with a hyphen; at most 253 characters; a trailing dot is allowed.
        // An all-numeric last label would be a mistyped address, not a name.
        let name = s.strip_suffix('.').unwrap_or(s);
        let labels: Vec<&str> = name.split('.').collect();
        let label_ok = |l: &&str| {
            (1..=63).contains(&l.len())
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        };
        let numeric_tld = labels.last().is_some_and(|l| l.bytes().all(|b| b.is_ascii_digit()));
        if name.len() > 253 || !labels.iter().all(label_ok) || numeric_tld {
            return Err(format!(
                "`{s}` is neither an IP address, \"any\", nor a DNS name (letters, digits, hyphens and dots)"
            ));
        }
        Ok(PeerAddress::Name(name.to_ascii_lowercase()))
    }
}

impl Serialize for PeerAddress {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for PeerAddress {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<PeerAddress, D::Error> {
        String::deserialize(d)?.parse().map_err(de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_and_print_canonically() {
        assert_eq!("30".parse::<Dur>().unwrap(), Dur::secs(30));
        assert_eq!("1h30m".parse::<Dur>().unwrap(), Dur::secs(5400));
        assert_eq!("500ms".parse::<Dur>().unwrap(), Dur::millis(500));
        assert_eq!(Dur::secs(5400).to_string(), "1h30m");
        assert_eq!(Dur::secs(86_400 + 1).to_string(), "1d1s");
        assert_eq!(Dur::millis(1500).to_string(), "1s500ms");
        assert_eq!(Dur::default().to_string(), "0s");
        let e = "10 minutes".parse::<Dur>().unwrap_err();
        assert!(e.contains("is not a duration"), "{e}");
        assert!("5x".parse::<Dur>().is_err());
        assert!("h".parse::<Dur>().is_err());
        assert!("99999999999999999999d".parse::<Dur>().is_err());
    }

    #[test]
    fn interface_addresses_keep_host_bits_and_need_a_length() {
        let a: IfAddr = "203.0.113.10/24".parse().unwrap();
        assert_eq!(a.network().to_string(), "203.0.113.0/24");
        assert_eq!(a.to_string(), "203.0.113.10/24");
        assert!("203.0.113.10".parse::<IfAddr>().unwrap_err().contains("`203.0.113.10/24`"));
        assert!("203.0.113.10/33".parse::<IfAddr>().is_err());
        assert_eq!("2001:db8::1/64".parse::<IfAddr>().unwrap().network().len(), 64);
    }

    #[test]
    fn ports_and_protocols() {
        assert_eq!(parse_ports("any").unwrap(), PortRange::ANY);
        assert_eq!(parse_ports("443").unwrap(), PortRange::single(443));
        assert_eq!(parse_ports("8000-8080").unwrap(), PortRange { first: 8000, last: 8080 });
        assert!(parse_ports("8080-8000").unwrap_err().contains("did you mean `8000-8080`"));
        assert!(parse_ports("70000").is_err());
        assert_eq!(format_ports(&PortRange { first: 1, last: 2 }), "1-2");
        assert_eq!(Protocol::Number(6).to_string(), "tcp");
        assert_eq!(Protocol::Number(99).to_string(), "99");
        assert!(Protocol::Number(17).has_ports() && !Protocol::Number(1).has_ports());
    }

    #[test]
    fn peer_addresses_are_an_address_any_or_a_host_name() {
        assert_eq!("192.0.2.7".parse(), Ok(PeerAddress::Ip("192.0.2.7".parse().unwrap())));
        assert_eq!("any".parse(), Ok(PeerAddress::Any));
        assert_eq!(
            "VPN.Branch-1.example.".parse(),
            Ok(PeerAddress::Name("vpn.branch-1.example".into()))
        );
        for bad in ["", "192.0.2.300", "-a.example", "a..example", "a_b.example", "%any", "a b"] {
            let e = bad.parse::<PeerAddress>().unwrap_err();
            assert!(e.contains("neither an IP address"), "{bad}: {e}");
        }
        assert_eq!(PeerAddress::Any.to_string(), "any");
    }
}
