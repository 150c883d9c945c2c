//! What the operator configures for the IKE layer: the endpoint's knobs and one
//! [`TunnelConfig`] per tunnel (RFC 7296 §2.4 retransmission, §2.6 cookies, §2.9 selectors,
//! §2.15 pre-shared keys; RFC 3948 keepalives).

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::str::FromStr;
use std::time::Duration;

use isthmus_tables::{PortRange, Prefix};
use zeroize::Zeroize;

use crate::error::Error;
use crate::proposal::{EspProposal, IkeProposal};

/// Endpoint-wide settings. [`Default`] gives strongSwan-like values.
#[derive(Clone, Debug)]
pub struct EndpointConfig {
    /// First retransmission after this long without a response (strongSwan: 4 s).
    pub retransmit_timeout: Duration,
    /// Each further retransmission waits this factor longer (strongSwan: 1.8).
    pub retransmit_base: f64,
    /// Retransmissions before the exchange is declared failed (strongSwan: 5).
    pub retransmit_tries: u32,
    /// Half-open IKE SAs (responder, IKE_SA_INIT answered, IKE_AUTH not yet) beyond which new
    /// IKE_SA_INIT requests must return a COOKIE (§2.6). 0 always requires a cookie.
    pub cookie_threshold: usize,
    /// A half-open responder SA is dropped after this long.
    pub half_open_timeout: Duration,
    /// Interval of NAT-T keepalives when behind a NAT (RFC 3948 §4).
    pub nat_keepalive: Duration,
    /// Refuse a new IKE_SA_INIT while this many half-open SAs exist (flood protection).
    pub max_half_open: usize,
}

impl Default for EndpointConfig {
    fn default() -> Self {
        EndpointConfig {
            retransmit_timeout: Duration::from_secs(4),
            retransmit_base: 1.8,
            retransmit_tries: 5,
            cookie_threshold: 30,
            half_open_timeout: Duration::from_secs(30),
            nat_keepalive: Duration::from_secs(20),
            max_half_open: 5000,
        }
    }
}

/// An IKE identity (RFC 7296 §3.5), written as strongSwan does: an IP address, `@fqdn`,
/// `user@domain`, a bare host name (FQDN), or `%any` (remote only: accept any identity).
#[derive(Clone, PartialEq, Eq, Hash)]
pub enum Identity {
    /// ID_IPV4_ADDR.
    Ipv4(Ipv4Addr),
    /// ID_IPV6_ADDR.
    Ipv6(Ipv6Addr),
    /// ID_FQDN.
    Fqdn(String),
    /// ID_RFC822_ADDR.
    Email(String),
    /// ID_KEY_ID (opaque bytes).
    KeyId(Vec<u8>),
    /// Matches any identity (remote identity only). Sent as the local address if used locally.
    Any,
}

impl Identity {
    /// The ID type number and data as carried in IDi/IDr.
    pub fn to_wire(&self, fallback: IpAddr) -> (u8, Vec<u8>) {
        match self {
            Identity::Ipv4(a) => (1, a.octets().to_vec()),
            Identity::Ipv6(a) => (5, a.octets().to_vec()),
            Identity::Fqdn(s) => (2, s.as_bytes().to_vec()),
            Identity::Email(s) => (3, s.as_bytes().to_vec()),
            Identity::KeyId(k) => (11, k.clone()),
            Identity::Any => Identity::from(fallback).to_wire(fallback),
        }
    }

    /// The identity an IDi/IDr payload carries; `None` for unsupported types.
    pub fn from_wire(ty: u8, data: &[u8]) -> Option<Identity> {
        Some(match ty {
            1 => Identity::Ipv4(<[u8; 4]>::try_from(data).ok()?.into()),
            5 => Identity::Ipv6(<[u8; 16]>::try_from(data).ok()?.into()),
            2 => Identity::Fqdn(String::from_utf8(data.to_vec()).ok()?),
            3 => Identity::Email(String::from_utf8(data.to_vec()).ok()?),
            11 => Identity::KeyId(data.to_vec()),
            _ => return None,
        })
    }

    /// True when a received identity is acceptable for this configured one.
    pub fn matches(&self, received: &Identity) -> bool {
        match (self, received) {
            (Identity::Any, _) => true,
            (Identity::Fqdn(a), Identity::Fqdn(b)) | (Identity::Email(a), Identity::Email(b)) => {
                a.eq_ignore_ascii_case(b)
            }
            (a, b) => a == b,
        }
    }
}

impl From<IpAddr> for Identity {
    fn from(a: IpAddr) -> Identity {
        match a {
            IpAddr::V4(a) => Identity::Ipv4(a),
            IpAddr::V6(a) => Identity::Ipv6(a),
        }
    }
}

impl FromStr for Identity {
    type Err = Error;

    fn from_str(s: &str) -> Result<Identity, Error> {
        let s = s.trim();
        if s.is_empty() {
            return Err(Error::InvalidConfig {
                tunnel: String::new(),
                why: "empty identity".into(),
            });
        }
        if s == "%any" {
            return Ok(Identity::Any);
        }
        if let Ok(a) = s.parse::<IpAddr>() {
            return Ok(a.into());
        }
        if let Some(rest) = s.strip_prefix('@') {
            if let Some(hex) = rest.strip_prefix("#") {
                let bytes = (0..hex.len())
                    .step_by(2)
                    .map(|i| hex.get(i..i + 2).and_then(|h| u8::from_str_radix(h, 16).ok()))
                    .collect::<Option<Vec<u8>>>()
                    .ok_or_else(|| Error::InvalidConfig {
                        tunnel: String::new(),
                        why: format!("identity `{s}`: `@#` must be followed by hex digits"),
                    })?;
                return Ok(Identity::KeyId(bytes));
            }
            return Ok(Identity::Fqdn(rest.to_owned()));
        }
        if s.contains('@') {
            return Ok(Identity::Email(s.to_owned()));
        }
        Ok(Identity::Fqdn(s.to_owned()))
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Identity::Ipv4(a) => write!(f, "{a}"),
            Identity::Ipv6(a) => write!(f, "{a}"),
            Identity::Fqdn(s) => write!(f, "{s}"),
            Identity::Email(s) => write!(f, "{s}"),
            Identity::KeyId(k) => {
                f.write_str("@#")?;
                k.iter().try_for_each(|b| write!(f, "{b:02x}"))
            }
            Identity::Any => f.write_str("%any"),
        }
    }
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Identity({self})")
    }
}

/// A pre-shared key. Its bytes never appear in Debug output, errors or events, and are wiped
/// when dropped.
#[derive(Clone, PartialEq, Eq)]
pub struct Psk(Vec<u8>);

impl Psk {
    /// A key from its bytes.
    pub fn new(bytes: impl Into<Vec<u8>>) -> Psk {
        Psk(bytes.into())
    }

    /// The key bytes (for the AUTH computation, §2.15).
    pub fn expose(&self) -> &[u8] {
        &self.0
    }
}

impl Drop for Psk {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

impl fmt::Debug for Psk {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Psk(<redacted>)")
    }
}

/// A traffic selector (§3.13.1): an address range, an IP protocol (0 = any) and a port range.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct TrafficSelector {
    /// IP protocol, 0 for any.
    pub proto: u8,
    /// Ports (ICMP: type in the high byte, code in the low byte per RFC 4301 §4.4.1.1).
    pub ports: PortRange,
    /// First address, inclusive.
    pub start: IpAddr,
    /// Last address, inclusive; same family as `start`.
    pub end: IpAddr,
}

impl TrafficSelector {
    /// Every address of a prefix, any protocol and port.
    pub fn from_prefix(p: Prefix) -> TrafficSelector {
        let (start, end) = prefix_range(&p);
        TrafficSelector { proto: 0, ports: PortRange::ANY, start, end }
    }

    /// True for IPv4 selectors.
    pub fn is_ipv4(&self) -> bool {
        self.start.is_ipv4()
    }

    /// The intersection of two selectors, if not empty (§2.9 narrowing).
    pub fn intersect(&self, other: &TrafficSelector) -> Option<TrafficSelector> {
        if self.start.is_ipv4() != other.start.is_ipv4() {
            return None;
        }
        let proto = match (self.proto, other.proto) {
            (0, p) | (p, 0) => p,
            (a, b) if a == b => a,
            _ => return None,
        };
        let first = self.ports.first.max(other.ports.first);
        let last = self.ports.last.min(other.ports.last);
        let start = self.start.max(other.start);
        let end = self.end.min(other.end);
        if first > last || start > end {
            return None;
        }
        Some(TrafficSelector { proto, ports: PortRange { first, last }, start, end })
    }

    /// True when `other` lies entirely inside this selector.
    pub fn covers(&self, other: &TrafficSelector) -> bool {
        self.intersect(other).as_ref() == Some(other)
    }

    /// The smallest set of prefixes that exactly covers the address range.
    pub fn prefixes(&self) -> Vec<Prefix> {
        let mut out = Vec::new();
        let (mut lo, hi, bits) = match (self.start, self.end) {
            (IpAddr::V4(a), IpAddr::V4(b)) => {
                (u128::from(u32::from(a)), u128::from(u32::from(b)), 32)
            }
            (IpAddr::V6(a), IpAddr::V6(b)) => (u128::from(a), u128::from(b), 128),
            _ => return out,
        };
        if lo > hi {
            return out;
        }
        loop {
            // The largest aligned block that starts at `lo` and ends within `hi`.
            let mut size = if lo == 0 { bits } else { lo.trailing_zeros().min(bits) };
            let span = |size: u32| if size >= 128 { u128::MAX } else { (1u128 << size) - 1 };
            while size > 0 && lo.checked_add(span(size)).is_none_or(|e| e > hi) {
                size -= 1;
            }
            let addr = if bits == 32 {
                IpAddr::V4(Ipv4Addr::from(lo as u32))
            } else {
                IpAddr::V6(Ipv6Addr::from(lo))
            };
            if let Ok(p) = Prefix::new(addr, (bits - size) as u8) {
                out.push(p);
            }
            let end = lo + span(size);
            if end >= hi {
                break;
            }
            lo = end + 1;
        }
        out
    }
}

fn prefix_range(p: &Prefix) -> (IpAddr, IpAddr) {
    match p.addr() {
        IpAddr::V4(a) => {
            let host = u32::MAX.checked_shr(u32::from(p.len())).unwrap_or(0);
            (IpAddr::V4(a), IpAddr::V4(Ipv4Addr::from(u32::from(a) | host)))
        }
        IpAddr::V6(a) => {
            let host = u128::MAX.checked_shr(u32::from(p.len())).unwrap_or(0);
            (IpAddr::V6(a), IpAddr::V6(Ipv6Addr::from(u128::from(a) | host)))
        }
    }
}

impl FromStr for TrafficSelector {
    type Err = Error;

    /// strongSwan form: `10.1.0.0/16`, `10.1.0.0/16[tcp/80]`, `10.1.0.0/16[17]`.
    fn from_str(s: &str) -> Result<TrafficSelector, Error> {
        let bad = |why: String| Error::InvalidConfig { tunnel: String::new(), why };
        let (net, extra) = match s.split_once('[') {
            Some((n, rest)) => {
                (n, Some(rest.strip_suffix(']').ok_or_else(|| bad(format!("`{s}`: missing `]`")))?))
            }
            None => (s, None),
        };
        let p: Prefix = net.trim().parse().map_err(|e| bad(format!("selector `{s}`: {e}")))?;
        let mut ts = TrafficSelector::from_prefix(p);
        if let Some(extra) = extra {
            let (proto, port) = match extra.split_once('/') {
                Some((a, b)) => (a, Some(b)),
                None => (extra, None),
            };
            ts.proto = match proto {
                "" | "any" | "0" => 0,
                "tcp" => 6,
                "udp" => 17,
                "icmp" => 1,
                "icmp6" | "ipv6-icmp" => 58,
                n => {
                    n.parse().map_err(|_| bad(format!("selector `{s}`: unknown protocol `{n}`")))?
                }
            };
            if let Some(port) = port {
                ts.ports = match port.split_once('-') {
                    _ if port == "any" || port.is_empty() => PortRange::ANY,
                    Some((a, b)) => PortRange {
                        first: a.parse().map_err(|_| bad(format!("selector `{s}`: bad port")))?,
                        last: b.parse().map_err(|_| bad(format!("selector `{s}`: bad port")))?,
                    },
                    None => PortRange::single(
                        port.parse().map_err(|_| bad(format!("selector `{s}`: bad port")))?,
                    ),
                };
            }
        }
        Ok(ts)
    }
}

impl fmt::Display for TrafficSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ps = self.prefixes();
        if ps.len() == 1 {
            write!(f, "{}", ps[0])?;
        } else {
            write!(f, "{}..{}", self.start, self.end)?;
        }
        if self.proto != 0 || !self.ports.is_any() {
            let proto = match self.proto {
                6 => "tcp".to_owned(),
                17 => "udp".to_owned(),
                1 => "icmp".to_owned(),
                58 => "ipv6-icmp".to_owned(),
                n => n.to_string(),
            };
            f.write_str("[")?;
            f.write_str(&proto)?;
            if !self.ports.is_any() {
                if self.ports.first == self.ports.last {
                    write!(f, "/{}", self.ports.first)?;
                } else {
                    write!(f, "/{}-{}", self.ports.first, self.ports.last)?;
                }
            }
            f.write_str("]")?;
        }
        Ok(())
    }
}

impl fmt::Debug for TrafficSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TS({self})")
    }
}

/// When an SA is rekeyed and when it dies (strongSwan's `rekey_time`, `rand_time`,
/// `life_time`). The rekey starts at `rekey_time` minus a random part of `rand_time`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Lifetime {
    /// Nominal time to start a rekey. Zero disables time-based rekeying.
    pub rekey_time: Duration,
    /// Up to this much is subtracted at random so that peers do not rekey at once.
    pub rand_time: Duration,
    /// Hard lifetime: the SA is deleted if it is still alive by then.
    pub life_time: Duration,
}

impl Lifetime {
    /// strongSwan's IKE SA defaults: rekey after 4 h (minus up to 24 min), die after 4.4 h.
    pub const IKE_DEFAULT: Lifetime = Lifetime {
        rekey_time: Duration::from_secs(4 * 3600),
        rand_time: Duration::from_secs(1440),
        life_time: Duration::from_secs(4 * 3600 + 1440),
    };
    /// strongSwan's CHILD SA defaults: rekey after 1 h (minus up to 6 min), die after 1.1 h.
    pub const CHILD_DEFAULT: Lifetime = Lifetime {
        rekey_time: Duration::from_secs(3600),
        rand_time: Duration::from_secs(360),
        life_time: Duration::from_secs(3960),
    };
}

/// What to do when the peer stops answering liveness checks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DpdAction {
    /// Delete the SAs and initiate again at once.
    Restart,
    /// Delete the SAs and wait (for traffic or the peer).
    Clear,
}

/// Dead peer detection (§2.4 liveness checks).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Dpd {
    /// Send an empty INFORMATIONAL after this long without any message from the peer; zero
    /// disables DPD.
    pub delay: Duration,
    /// Declare the peer dead when a liveness check got no answer for this long, exactly then
    /// (retransmissions continue until it, however many that takes).
    pub timeout: Duration,
    /// What then.
    pub action: DpdAction,
}

impl Default for Dpd {
    fn default() -> Self {
        Dpd {
            delay: Duration::from_secs(30),
            timeout: Duration::from_secs(150),
            action: DpdAction::Restart,
        }
    }
}

/// When a tunnel is brought up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StartAction {
    /// The driver calls [`crate::Endpoint::initiate`] at once.
    Start,
    /// The driver calls [`crate::Endpoint::acquire`] when traffic needs the tunnel.
    Trap,
    /// Wait for the peer to initiate.
    None,
}

/// Which IKE version a tunnel speaks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum IkeVersion {
    /// IKEv2 (RFC 7296).
    #[default]
    V2,
    /// IKEv1 (RFC 2409): Main Mode (or Aggressive Mode when asked) and Quick Mode.
    V1,
    /// Answer whichever version the peer starts with; initiate with IKEv2, as strongSwan's
    /// `version = 0` does.
    Any,
}

impl IkeVersion {
    /// This tunnel answers an IKEv1 peer.
    pub fn accepts_v1(self) -> bool {
        self != IkeVersion::V2
    }
    /// This tunnel answers an IKEv2 peer.
    pub fn accepts_v2(self) -> bool {
        self != IkeVersion::V1
    }
}

/// One CHILD SA of a tunnel: which traffic it protects, with which ESP proposals.
#[derive(Clone, Debug)]
pub struct ChildConfig {
    /// Name (unique in the tunnel), used in events and commands.
    pub name: String,
    /// Local traffic selectors (what we protect on our side).
    pub local_ts: Vec<TrafficSelector>,
    /// Remote traffic selectors.
    pub remote_ts: Vec<TrafficSelector>,
    /// ESP proposals, in preference order. PFS groups in them apply to CREATE_CHILD_SA.
    pub esp_proposals: Vec<EspProposal>,
    /// Rekey and expiry.
    pub lifetime: Lifetime,
}

/// One tunnel: an IKE SA to one peer and its CHILD SAs.
#[derive(Clone, Debug)]
pub struct TunnelConfig {
    /// Unique name, used in events and commands.
    pub name: String,
    /// Our IKE address (port 500; we move to 4500 when NAT-T is used).
    pub local: SocketAddr,
    /// The peer's IKE address (port 500).
    pub remote: SocketAddr,
    /// Our identity.
    pub local_id: Identity,
    /// The identity we require of the peer ([`Identity::Any`] accepts any).
    pub remote_id: Identity,
    /// The pre-shared key (§2.15).
    pub psk: Psk,
    /// IKE proposals, in preference order.
    pub ike_proposals: Vec<IkeProposal>,
    /// IKE SA rekey and expiry.
    pub ike_lifetime: Lifetime,
    /// CHILD SAs; the first one is created with IKE_AUTH, the others with CREATE_CHILD_SA.
    pub children: Vec<ChildConfig>,
    /// Dead peer detection.
    pub dpd: Dpd,
    /// Use UDP encapsulation (port 4500) even without a NAT, by faking NAT detection as
    /// strongSwan's `encap = yes` does.
    pub force_nat_t: bool,
    /// When the tunnel is brought up.
    pub start_action: StartAction,
    /// The IKE version spoken.
    pub version: IkeVersion,
    /// IKEv1 phase 1 in Aggressive Mode (RFC 2409 §5.4) instead of Main Mode. It sends the PSK's
    /// hash where a passive listener can guess the key offline, so it is off unless asked for.
    pub aggressive: bool,
}

impl TunnelConfig {
    /// A tunnel with strongSwan's defaults for everything but addresses, identities, key and
    /// one CHILD SA for `local_ts` <-> `remote_ts`.
    pub fn new(
        name: &str,
        local: SocketAddr,
        remote: SocketAddr,
        psk: Psk,
        local_ts: Vec<TrafficSelector>,
        remote_ts: Vec<TrafficSelector>,
    ) -> TunnelConfig {
        TunnelConfig {
            name: name.to_owned(),
            local,
            remote,
            local_id: local.ip().into(),
            remote_id: remote.ip().into(),
            psk,
            ike_proposals: crate::proposal::parse_ike_list("aes256gcm16-prfsha256-x25519")
                .unwrap_or_default(),
            ike_lifetime: Lifetime::IKE_DEFAULT,
            children: vec![ChildConfig {
                name: name.to_owned(),
                local_ts,
                remote_ts,
                esp_proposals: crate::proposal::parse_esp_list("aes256gcm16").unwrap_or_default(),
                lifetime: Lifetime::CHILD_DEFAULT,
            }],
            dpd: Dpd::default(),
            force_nat_t: false,
            start_action: StartAction::Start,
            version: IkeVersion::V2,
            aggressive: false,
        }
    }

    /// The name under which the dataplane knows the SA pair of CHILD SA `child` for its
    /// `pair`-th selector pair (local-major order). IKEv1 negotiates one SA pair per selector
    /// pair (RFC 2409 §5.5), so an IKEv1 CHILD SA with several pairs is several dataplane
    /// children, `name/1`, `name/2`, ...; IKEv2 carries all of a CHILD SA's selectors in one SA
    /// pair (RFC 7296 §2.9).
    pub fn dataplane_child(&self, child: usize, pair: usize) -> String {
        let Some(c) = self.children.get(child) else { return String::new() };
        if self.version == IkeVersion::V1 && c.local_ts.len() * c.remote_ts.len() > 1 {
            format!("{}/{}", c.name, pair + 1)
        } else {
            c.name.clone()
        }
    }

    /// Checks what the state machines rely on.
    pub fn validate(&self) -> Result<(), Error> {
        let bad =
            |why: &str| Error::InvalidConfig { tunnel: self.name.clone(), why: why.to_owned() };
        if self.ike_proposals.is_empty() {
            return Err(bad("no IKE proposals"));
        }
        for p in &self.ike_proposals {
            if p.encr.is_empty() || p.prf.is_empty() || p.dh.is_empty() {
                return Err(bad(&format!(
                    "IKE proposal `{p}` needs an encryption algorithm, a PRF and a key exchange group"
                )));
            }
        }
        if self.children.is_empty() {
            return Err(bad("no CHILD SA configured"));
        }
        if matches!(self.local_id, Identity::Any) {
            return Err(bad("the local identity cannot be %any"));
        }
        if self.psk.expose().is_empty() {
            return Err(bad("the pre-shared key is empty"));
        }
        if self.local.is_ipv4() != self.remote.is_ipv4() {
            return Err(bad("local and remote addresses are of different families"));
        }
        let year = Duration::from_secs(366 * 24 * 3600);
        let lifetimes = std::iter::once(("IKE SA", &self.ike_lifetime))
            .chain(self.children.iter().map(|c| ("CHILD SA", &c.lifetime)));
        for (what, l) in lifetimes {
            if l.rekey_time > year || l.life_time > year || l.rand_time > year {
                return Err(bad(&format!("{what} lifetime: times must be at most a year")));
            }
            if l.life_time < l.rekey_time {
                return Err(bad(&format!(
                    "{what} lifetime: life_time must not be shorter than rekey_time"
                )));
            }
        }
        if self.aggressive && self.version == IkeVersion::V2 {
            return Err(bad("Aggressive Mode is IKEv1: it needs version 1 or any"));
        }
        if self.dpd.delay > year || self.dpd.timeout > year {
            return Err(bad("DPD delay and timeout must be at most a year"));
        }
        for c in &self.children {
            if c.esp_proposals.is_empty() {
                return Err(bad(&format!("CHILD SA `{}` has no ESP proposals", c.name)));
            }
            if let Some(p) = c.esp_proposals.iter().find(|p| p.encr.is_empty() || p.esn.is_empty())
            {
                return Err(bad(&format!(
                    "ESP proposal `{p}` of CHILD SA `{}` needs an encryption algorithm and an ESN choice",
                    c.name
                )));
            }
            if self.children.iter().filter(|o| o.name == c.name).count() > 1 {
                return Err(bad(&format!("two CHILD SAs are named `{}`", c.name)));
            }
            if c.local_ts.is_empty() || c.remote_ts.is_empty() {
                return Err(bad(&format!(
                    "CHILD SA `{}` needs local and remote selectors",
                    c.name
                )));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identities_parse_as_strongswan_writes_them() {
        assert_eq!("192.0.2.1".parse::<Identity>().unwrap(), Identity::Ipv4([192, 0, 2, 1].into()));
        assert_eq!("@gw.example".parse::<Identity>().unwrap(), Identity::Fqdn("gw.example".into()));
        assert_eq!(
            "a@b.example".parse::<Identity>().unwrap(),
            Identity::Email("a@b.example".into())
        );
        assert_eq!("@#0a0b".parse::<Identity>().unwrap(), Identity::KeyId(vec![10, 11]));
        assert_eq!("%any".parse::<Identity>().unwrap(), Identity::Any);
        assert!(Identity::Any.matches(&Identity::Fqdn("x".into())));
    }

    #[test]
    fn psk_is_redacted() {
        let p = Psk::new(b"hunter2".to_vec());
        assert_eq!(format!("{p:?}"), "Psk(<redacted>)");
    }

    #[test]
    fn selectors_parse_print_and_narrow() {
        let a: TrafficSelector = "10.1.0.0/16".parse().unwrap();
        let b: TrafficSelector = "10.1.2.0/24[tcp/80]".parse().unwrap();
        assert_eq!(a.to_string(), "10.1.0.0/16");
        assert_eq!(b.to_string(), "10.1.2.0/24[tcp/80]");
        assert_eq!(a.intersect(&b), Some(b));
        assert!(a.covers(&b) && !b.covers(&a));
        let c: TrafficSelector = "10.2.0.0/16".parse().unwrap();
        assert_eq!(a.intersect(&c), None);
        let odd = TrafficSelector {
            proto: 0,
            ports: PortRange::ANY,
            start: "10.0.0.1".parse().unwrap(),
            end: "10.0.0.6".parse().unwrap(),
        };
        let ps: Vec<String> = odd.prefixes().iter().map(|p| p.to_string()).collect();
        assert_eq!(ps, ["10.0.0.1/32", "10.0.0.2/31", "10.0.0.4/31", "10.0.0.6/32"]);
        let all: TrafficSelector = "0.0.0.0/0".parse().unwrap();
        assert_eq!(all.prefixes().len(), 1);
        let all6: TrafficSelector = "::/0".parse().unwrap();
        assert_eq!(all6.to_string(), "::/0");
    }

    #[test]
    fn validation_refuses_what_would_break_the_state_machines() {
        let t = |f: &dyn Fn(&mut TunnelConfig)| {
            let mut c = TunnelConfig::new(
                "t",
                "192.0.2.1:500".parse().unwrap(),
                "192.0.2.2:500".parse().unwrap(),
                Psk::new(b"k".to_vec()),
                vec!["10.1.0.0/16".parse().unwrap()],
                vec!["10.2.0.0/16".parse().unwrap()],
            );
            f(&mut c);
            c.validate()
        };
        assert!(t(&|_| {}).is_ok());
        let e = t(&|c| c.children[0].lifetime.life_time = Duration::from_secs(1)).unwrap_err();
        assert!(e.to_string().contains("life_time must not be shorter than rekey_time"), "{e}");
        let e = t(&|c| c.ike_lifetime.rekey_time = Duration::MAX).unwrap_err();
        assert!(e.to_string().contains("at most a year"), "{e}");
        let e = t(&|c| c.psk = Psk::new(Vec::new())).unwrap_err();
        assert_eq!(
            e.to_string(),
            "invalid tunnel configuration for `t`: the pre-shared key is empty"
        );
        assert!(t(&|c| c.ike_proposals[0].dh.clear()).is_err());
        assert!(t(&|c| c.children.push(c.children[0].clone())).is_err());
    }
}
