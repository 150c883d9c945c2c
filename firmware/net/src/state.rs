//! The desired state: what the kernel should look like, as the daemon derives it from the
//! configuration. Plain data; [`DesiredState::validate`] refuses states the kernel could not hold
//! (duplicate route keys, bad names) before anything is planned.

use std::collections::HashSet;
use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use isthmus_tables::Prefix;

use crate::Error;

/// Everything the reconciler owns, in one value.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DesiredState {
    /// Interfaces to bring to a state (and TUN/dummy devices to create).
    pub links: Vec<Link>,
    /// Interface addresses Isthmus adds (and removes again when they leave this list).
    pub addresses: Vec<Address>,
    /// Routes, in any table; Isthmus removes its own routes that are not listed.
    pub routes: Vec<Route>,
    /// Policy routing rules.
    pub rules: Vec<Rule>,
    /// The host firewall; `None` removes Isthmus's nftables table.
    pub firewall: Option<FirewallSpec>,
}

/// One interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    /// Interface name (at most 15 bytes).
    pub name: String,
    /// Administratively up.
    pub up: bool,
    /// MTU to set; `None` leaves the kernel's value alone.
    pub mtu: Option<u32>,
    /// Whether Isthmus creates it.
    pub kind: LinkKind,
}

/// How an interface comes to exist.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkKind {
    /// A device that exists already (a NIC, a veth): never created or deleted, only configured.
    Existing,
    /// A persistent TUN device, created if missing with `IFF_TUN | IFF_NO_PI` (plus
    /// `IFF_MULTI_QUEUE` when `multi_queue`). A process attaching to it later must pass the same
    /// `IFF_MULTI_QUEUE` choice or the kernel refuses with `EINVAL`; `IFF_NO_PI` and
    /// `IFF_VNET_HDR` are chosen by the attaching process.
    Tun {
        /// Create the device with `IFF_MULTI_QUEUE`.
        multi_queue: bool,
    },
    /// A dummy device (a place for addresses and routes that no NIC carries).
    Dummy,
}

/// An address on an interface: `10.60.1.1/24` (host bits kept, unlike a [`Prefix`]).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Address {
    /// Interface name.
    pub ifname: String,
    /// The interface's own address.
    pub ip: IpAddr,
    /// Length of the on-link prefix.
    pub prefix_len: u8,
}

impl Address {
    /// Parses `ip/len` (a bare IP means a host address) for interface `ifname`.
    pub fn new(ifname: &str, cidr: &str) -> Result<Address, Error> {
        let bad = || Error::Invalid(format!("`{cidr}` is not an address with a prefix length"));
        let (ip, len) = match cidr.split_once('/') {
            Some((ip, len)) => (ip, Some(len)),
            None => (cidr, None),
        };
        let ip = IpAddr::from_str(ip.trim()).map_err(|_| bad())?;
        let max = if ip.is_ipv4() { 32 } else { 128 };
        let prefix_len = match len {
            Some(l) => l.trim().parse::<u8>().map_err(|_| bad())?,
            None => max,
        };
        if prefix_len > max {
            return Err(bad());
        }
        Ok(Address { ifname: ifname.to_owned(), ip, prefix_len })
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{} dev {}", self.ip, self.prefix_len, self.ifname)
    }
}

/// A route. The kernel identifies it by (family, table, destination, metric): two routes with
/// the same key are one route with a changed next hop.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Route {
    /// Routing table (254 is `main`).
    pub table: u32,
    /// Destination prefix.
    pub dst: Prefix,
    /// Where it goes.
    pub via: NextHop,
    /// Route metric (`RTA_PRIORITY`). The kernel turns IPv6 metric 0 into 1024, and so does
    /// the reconciler, so that an IPv6 route with metric 0 does not look drifted forever.
    pub metric: u32,
}

/// Table `main`.
pub const TABLE_MAIN: u32 = 254;

impl Route {
    /// The kernel's identity of this route.
    pub(crate) fn key(&self) -> RouteKey {
        RouteKey { table: self.table, dst: self.dst, metric: self.effective_metric() }
    }

    pub(crate) fn effective_metric(&self) -> u32 {
        if self.metric == 0 && !self.dst.addr().is_ipv4() { 1024 } else { self.metric }
    }
}

impl fmt::Display for Route {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {} table {} metric {}",
            self.dst,
            self.via,
            self.table,
            self.effective_metric()
        )
    }
}

/// The kernel's identity of a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct RouteKey {
    pub table: u32,
    pub dst: Prefix,
    pub metric: u32,
}

/// A route's next hop.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum NextHop {
    /// Out of an interface, no gateway (a tunnel's TUN device, a LAN).
    Interface(String),
    /// Through a neighbour router; the kernel picks the interface it is reachable on.
    Gateway(IpAddr),
    /// Dropped silently (keeps a tunnel's traffic from leaking while the tunnel is down).
    Blackhole,
}

impl fmt::Display for NextHop {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NextHop::Interface(i) => write!(f, "dev {i}"),
            NextHop::Gateway(g) => write!(f, "via {g}"),
            NextHop::Blackhole => write!(f, "blackhole"),
        }
    }
}

/// A policy routing rule: traffic matching `from`/`to` looks up `table`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Rule {
    /// Rule priority (lower runs first); must be unique among Isthmus's rules.
    pub priority: u32,
    /// Source prefix, any when `None`.
    pub from: Option<Prefix>,
    /// Destination prefix, any when `None`.
    pub to: Option<Prefix>,
    /// IP protocol (`FRA_IP_PROTO`, Linux 4.17), any when `None`.
    pub ip_proto: Option<u8>,
    /// Source port (`FRA_SPORT_RANGE` of one port), any when `None`.
    pub sport: Option<u16>,
    /// Table to look up.
    pub table: u32,
}

impl Rule {
    /// The address families this rule is installed for: a rule without prefixes is installed
    /// for IPv4 and IPv6.
    pub(crate) fn families(&self) -> Vec<bool> {
        match (self.from, self.to) {
            (Some(p), _) | (None, Some(p)) => vec![p.addr().is_ipv4()],
            (None, None) => vec![true, false],
        }
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "priority {}", self.priority)?;
        if let Some(p) = self.from {
            write!(f, " from {p}")?;
        }
        if let Some(p) = self.to {
            write!(f, " to {p}")?;
        }
        if let Some(p) = self.ip_proto {
            write!(f, " ipproto {p}")?;
        }
        if let Some(p) = self.sport {
            write!(f, " sport {p}")?;
        }
        write!(f, " lookup {}", self.table)
    }
}

/// What the host firewall protects and allows. The compiled ruleset is described in
/// [`crate::firewall`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FirewallSpec {
    /// The public interface: only IKE, ESP and path-MTU ICMP come in on it.
    pub wan_if: String,
    /// The gateway's public addresses; IKE/ESP are accepted only to these (any address when
    /// empty).
    pub wan_addrs: Vec<IpAddr>,
    /// The management interface, the only one the API port is open on.
    pub mgmt_if: Option<String>,
    /// The management API's TCP port.
    pub mgmt_port: u16,
    /// LAN interfaces: never forwarded to or from the WAN.
    pub lan_ifs: Vec<String>,
    /// Tunnel (TUN) interfaces: forwarded to and from the LANs.
    pub tunnel_ifs: Vec<String>,
    /// Answer ping on the WAN.
    pub wan_echo: bool,
}

/// Refuses what the kernel or the reconciler could not hold.
pub(crate) fn check_ifname(name: &str) -> Result<(), Error> {
    if name.is_empty() || name.len() > 15 || name.contains(['/', ' ', '\0']) || name == "." {
        return Err(Error::Invalid(format!(
            "interface name `{name}` is invalid (1–15 bytes, no `/`, space or NUL)"
        )));
    }
    Ok(())
}

impl DesiredState {
    /// Checks names, duplicates and families; every error names the offending item.
    pub fn validate(&self) -> Result<(), Error> {
        let mut names = HashSet::new();
        for l in &self.links {
            check_ifname(&l.name)?;
            if !names.insert(l.name.as_str()) {
                return Err(Error::Invalid(format!("link `{}` is listed twice", l.name)));
            }
            if l.mtu.is_some_and(|m| !(68..=65535).contains(&m)) {
                return Err(Error::Invalid(format!(
                    "link `{}`: MTU {} is outside 68–65535",
                    l.name,
                    l.mtu.unwrap_or(0)
                )));
            }
        }
        let mut addrs = HashSet::new();
        for a in &self.addresses {
            check_ifname(&a.ifname)?;
            if !addrs.insert((&a.ifname, a.ip)) {
                return Err(Error::Invalid(format!("address {a} is listed twice")));
            }
        }
        let mut keys = HashSet::new();
        for r in &self.routes {
            if r.table == 0 || r.table == 255 {
                return Err(Error::Invalid(format!(
                    "route {r}: table {} is reserved (0 unspec, 255 local)",
                    r.table
                )));
            }
            match &r.via {
                NextHop::Interface(i) => check_ifname(i)?,
                NextHop::Gateway(g) if g.is_ipv4() != r.dst.addr().is_ipv4() => {
                    return Err(Error::Invalid(format!(
                        "route {r}: gateway and destination are of different address families"
                    )));
                }
                _ => {}
            }
            if !keys.insert(r.key()) {
                return Err(Error::Invalid(format!(
                    "route {} table {} metric {} is listed twice",
                    r.dst,
                    r.table,
                    r.effective_metric()
                )));
            }
        }
        let mut prios = HashSet::new();
        for r in &self.rules {
            if let (Some(a), Some(b)) = (r.from, r.to)
                && a.addr().is_ipv4() != b.addr().is_ipv4()
            {
                return Err(Error::Invalid(format!("rule {r}: from and to differ in family")));
            }
            for v4 in r.families() {
                if !prios.insert((v4, r.priority)) {
                    return Err(Error::Invalid(format!(
                        "rule priority {} is used twice",
                        r.priority
                    )));
                }
            }
        }
        if let Some(fw) = &self.firewall {
            check_ifname(&fw.wan_if)?;
            if fw.mgmt_if.is_some() && fw.mgmt_port == 0 {
                return Err(Error::Invalid("firewall: management port 0 is not a port".into()));
            }
            for i in fw.mgmt_if.iter().chain(&fw.lan_ifs).chain(&fw.tunnel_ifs) {
                check_ifname(i)?;
                if *i == fw.wan_if {
                    return Err(Error::Invalid(format!(
                        "firewall: `{i}` is the WAN and cannot also be a LAN, tunnel or \
                         management interface"
                    )));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Prefix {
        s.parse().unwrap()
    }

    #[test]
    fn addresses_keep_host_bits_and_refuse_nonsense() {
        let a = Address::new("lan0", "10.60.1.1/24").unwrap();
        assert_eq!(a.to_string(), "10.60.1.1/24 dev lan0");
        assert_eq!(Address::new("x", "2001:db8::1").unwrap().prefix_len, 128);
        for bad in ["10.60.1.1/33", "10.60.1/24", "fe80::1/129", "10.0.0.1/x"] {
            assert!(Address::new("x", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn validation_names_what_is_wrong() {
        let route = |t, d: &str, m| Route {
            table: t,
            dst: p(d),
            via: NextHop::Interface("ist0".into()),
            metric: m,
        };
        let mut s = DesiredState {
            routes: vec![route(100, "10.61.0.0/16", 5), route(100, "10.61.0.0/16", 6)],
            ..Default::default()
        };
        assert!(s.validate().is_ok());
        s.routes.push(route(100, "10.61.0.0/16", 5));
        let e = s.validate().unwrap_err().to_string();
        assert!(e.contains("10.61.0.0/16 table 100 metric 5 is listed twice"), "{e}");
        // IPv6 metric 0 and 1024 are the same kernel route.
        s.routes = vec![route(254, "2001:db8::/32", 0), route(254, "2001:db8::/32", 1024)];
        assert!(s.validate().is_err());
        s.routes = vec![route(255, "10.0.0.0/8", 0)];
        assert!(s.validate().unwrap_err().to_string().contains("reserved"));
        s.routes.clear();
        s.links = vec![Link {
            name: "a-very-long-interface".into(),
            up: true,
            mtu: None,
            kind: LinkKind::Dummy,
        }];
        assert!(s.validate().unwrap_err().to_string().contains("a-very-long-interface"));
        s.links.clear();
        s.rules = vec![
            Rule { priority: 100, from: None, to: None, ip_proto: None, sport: None, table: 100 },
            Rule {
                priority: 100,
                from: Some(p("10.0.0.0/8")),
                to: None,
                ip_proto: None,
                sport: None,
                table: 101,
            },
        ];
        assert!(s.validate().unwrap_err().to_string().contains("priority 100"));
    }
}
