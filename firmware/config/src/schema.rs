//! The object model as TOML: one struct per table, every field documented in `docs/config.md`.
//!
//! Unknown fields are refused everywhere (`deny_unknown_fields`): a misspelt key must not silently
//! fall back to a default on a VPN gateway. Serializing a [`Config`] gives the canonical form that
//! `show` prints and `diff` compares: defaults filled in, secrets redacted.

use std::net::IpAddr;

use isthmus_tables::{PortRange, Prefix};
use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};

use crate::secret::Secret;
use crate::types::{Dur, IfAddr, PeerAddress, Protocol, any_ports, ports, prefix, prefixes};

/// The whole configuration document.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Schema version of the document; only 1 exists.
    #[serde(default = "one")]
    pub schema: u32,
    /// This appliance.
    pub gateway: Gateway,
    /// Remote peers.
    #[serde(default, rename = "customer_gateway", skip_serializing_if = "Vec::is_empty")]
    pub customer_gateways: Vec<CustomerGateway>,
    /// IPsec connections.
    #[serde(default, rename = "tunnel", skip_serializing_if = "Vec::is_empty")]
    pub tunnels: Vec<Tunnel>,
    /// Route tables.
    #[serde(default, rename = "route_table", skip_serializing_if = "Vec::is_empty")]
    pub route_tables: Vec<RouteTable>,
    /// Stateful filters bound to tunnels and LANs.
    #[serde(default, rename = "security_group", skip_serializing_if = "Vec::is_empty")]
    pub security_groups: Vec<SecurityGroup>,
    /// Stateless filters bound to LANs.
    #[serde(default, rename = "network_acl", skip_serializing_if = "Vec::is_empty")]
    pub network_acls: Vec<NetworkAcl>,
    /// Plugin bindings.
    #[serde(default, rename = "plugin", skip_serializing_if = "Vec::is_empty")]
    pub plugins: Vec<Plugin>,
    /// Keys that may sign plugins.
    #[serde(default, rename = "trusted_key", skip_serializing_if = "Vec::is_empty")]
    pub trusted_keys: Vec<TrustedKey>,
    /// Alarm conditions.
    #[serde(default, rename = "alarm", skip_serializing_if = "Vec::is_empty")]
    pub alarms: Vec<Alarm>,
    /// Where alarms are sent.
    #[serde(default, rename = "notify", skip_serializing_if = "Vec::is_empty")]
    pub notify: Vec<Notify>,
    /// Management API credentials.
    #[serde(default, rename = "api_token", skip_serializing_if = "Vec::is_empty")]
    pub api_tokens: Vec<ApiToken>,
}

fn one() -> u32 {
    1
}
fn yes() -> bool {
    true
}

/// This appliance: its WAN, LANs and management interface.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Gateway {
    /// A name for this appliance (used in alarms and as the default IKE identity's label).
    pub name: String,
    /// The public side.
    pub wan: Wan,
    /// The private sides.
    #[serde(default, rename = "lan", skip_serializing_if = "Vec::is_empty")]
    pub lans: Vec<Lan>,
    /// Where the management API listens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub management: Option<Management>,
}

/// The WAN (public) interface.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Wan {
    /// Kernel interface name.
    pub interface: String,
    /// Public address with its on-link prefix length.
    pub address: IfAddr,
    /// The upstream router.
    pub next_hop: IpAddr,
    /// Interface MTU.
    #[serde(default = "mtu_1500")]
    pub mtu: u32,
}

fn mtu_1500() -> u32 {
    1500
}

/// A LAN (private) interface and the networks behind it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Lan {
    /// Name used by route tables, security groups and ACLs.
    pub name: String,
    /// Kernel interface name.
    pub interface: String,
    /// The gateway's addresses on this LAN, with on-link prefix lengths.
    pub addresses: Vec<IfAddr>,
    /// Further networks reached through this LAN (behind `next_hop`). The on-link networks of
    /// `addresses` are always included.
    #[serde(default, with = "prefixes", skip_serializing_if = "Vec::is_empty")]
    pub networks: Vec<Prefix>,
    /// Router on this LAN for `networks` that are not on-link.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_hop: Option<IpAddr>,
    /// Interface MTU.
    #[serde(default = "mtu_1500")]
    pub mtu: u32,
}

impl Lan {
    /// Every network of this LAN: on-link networks first, then `networks`.
    pub fn all_networks(&self) -> impl Iterator<Item = Prefix> + '_ {
        self.addresses.iter().map(IfAddr::network).chain(self.networks.iter().copied())
    }
}

/// The management interface (HTTP API).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Management {
    /// Kernel interface name; must not be the WAN.
    pub interface: String,
    /// Address with on-link prefix length.
    pub address: IfAddr,
    /// TCP port of the API.
    #[serde(default = "api_port")]
    pub port: u16,
    /// Source networks allowed to reach the API (empty: any source on the management interface).
    #[serde(default, with = "prefixes", skip_serializing_if = "Vec::is_empty")]
    pub allow: Vec<Prefix>,
}

fn api_port() -> u16 {
    8443
}

/// The kernel route table that holds the WAN's default route for the IKE and ESP packets of
/// customer gateways whose address is not fixed (`"any"` or a DNS name); policy rules send only
/// those packets to it, so LAN traffic still has no path to the Internet.
pub const PEER_ROUTE_TABLE: u32 = 252;

/// A remote peer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CustomerGateway {
    /// Name tunnels refer to.
    pub name: String,
    /// Its public IP address, `"any"` (a peer whose address changes: it initiates and is
    /// recognised by `ike_id`), or a DNS name that is resolved and re-resolved.
    pub address: PeerAddress,
    /// Its IKE identity (default: its address; required with `address = "any"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ike_id: Option<String>,
    /// How often a DNS name in `address` is resolved again (default 60 s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns_refresh: Option<Dur>,
}

impl CustomerGateway {
    /// The identity the peer must present: `ike_id`, else its address (`resolved` for a DNS
    /// name); `None` when neither is known.
    pub fn ike_identity(&self, resolved: Option<IpAddr>) -> Option<String> {
        self.ike_id.clone().or_else(|| self.address.ip().or(resolved).map(|a| a.to_string()))
    }
}

/// Whether traffic selectors come from SPD entries or from routes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// Policy-based: the tunnel protects the `spd` entries.
    #[default]
    Policy,
    /// Route-based: selectors are any-to-any; route tables choose what enters the tunnel.
    Route,
}

/// What to do when dead peer detection declares the peer dead.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DpdAction {
    /// Tear down and re-establish at once.
    #[default]
    Restart,
    /// Tear down and wait for traffic (with start_action trap) or the peer.
    Clear,
    /// Only report.
    None,
}

/// What the gateway does with a tunnel when the configuration is applied.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum StartAction {
    /// Initiate at once.
    #[default]
    Start,
    /// Initiate on the first matching packet.
    Trap,
    /// Only respond.
    None,
}

/// NAT traversal (UDP encapsulation of ESP, RFC 3948).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum NatT {
    /// Encapsulate when NAT is detected.
    #[default]
    Auto,
    /// Always encapsulate in UDP 4500.
    Force,
    /// Never encapsulate (raw ESP, IP protocol 50).
    Off,
}

/// The IKE version a tunnel speaks, written `2`, `1` or `"any"` (TOML has no integer-or-string
/// enum, so serde is done by hand).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum IkeVersion {
    /// IKEv2 (RFC 7296).
    #[default]
    V2,
    /// IKEv1 (RFC 2409): Main Mode, or Aggressive Mode with `aggressive_mode`, then Quick Mode.
    V1,
    /// Answer whichever version the peer starts with; initiate with IKEv2.
    Any,
}

impl Serialize for IkeVersion {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            IkeVersion::V2 => s.serialize_u8(2),
            IkeVersion::V1 => s.serialize_u8(1),
            IkeVersion::Any => s.serialize_str("any"),
        }
    }
}

impl<'de> Deserialize<'de> for IkeVersion {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<IkeVersion, D::Error> {
        const ACCEPTED: &str = "ike_version must be 2 (IKEv2), 1 (IKEv1) or \"any\"";
        struct V;
        impl Visitor<'_> for V {
            type Value = IkeVersion;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("2, 1 or \"any\" for ike_version")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<IkeVersion, E> {
                match v {
                    2 => Ok(IkeVersion::V2),
                    1 => Ok(IkeVersion::V1),
                    _ => Err(E::custom(format!("{ACCEPTED}, not {v}"))),
                }
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<IkeVersion, E> {
                self.visit_i64(i64::try_from(v).unwrap_or(i64::MAX))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<IkeVersion, E> {
                if v.trim().eq_ignore_ascii_case("any") {
                    return Ok(IkeVersion::Any);
                }
                Err(E::custom(format!("{ACCEPTED} (a number, unquoted), not {v:?}")))
            }
        }
        d.deserialize_any(V)
    }
}

/// Dead peer detection (RFC 7296 §2.4 liveness checks).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Dpd {
    /// Idle time before a liveness check; 0 turns DPD off.
    #[serde(default = "dpd_delay")]
    pub delay: Dur,
    /// Time without an answer after which the peer is dead.
    #[serde(default = "dpd_timeout")]
    pub timeout: Dur,
    /// What happens then.
    #[serde(default)]
    pub action: DpdAction,
}

fn dpd_delay() -> Dur {
    Dur::secs(30)
}
fn dpd_timeout() -> Dur {
    Dur::secs(150)
}

impl Default for Dpd {
    fn default() -> Dpd {
        Dpd { delay: dpd_delay(), timeout: dpd_timeout(), action: DpdAction::Restart }
    }
}

/// One policy-mode SPD entry: local prefixes <-> remote prefixes (RFC 4301 §4.4.1).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpdEntry {
    /// Local prefixes (inside the gateway's LAN networks).
    #[serde(with = "prefixes")]
    pub local: Vec<Prefix>,
    /// Remote prefixes (behind the customer gateway).
    #[serde(with = "prefixes")]
    pub remote: Vec<Prefix>,
    /// IP protocol.
    #[serde(default)]
    pub protocol: Protocol,
    /// Local ports (TCP/UDP only).
    #[serde(default = "any_ports", with = "ports")]
    pub local_ports: PortRange,
    /// Remote ports (TCP/UDP only).
    #[serde(default = "any_ports", with = "ports")]
    pub remote_ports: PortRange,
}

/// Probes sent through the tunnel to measure that it carries traffic.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthCheck {
    /// Source address: one of the gateway's LAN addresses.
    pub source: IpAddr,
    /// Destination address behind the customer gateway (answers ICMP echo).
    pub destination: IpAddr,
    /// Time between probes.
    #[serde(default = "hc_interval")]
    pub interval: Dur,
    /// Time to wait for an answer.
    #[serde(default = "hc_timeout")]
    pub timeout: Dur,
    /// Consecutive failed probes that mark the tunnel unhealthy.
    #[serde(default = "three")]
    pub failure_threshold: u32,
    /// Consecutive good probes that mark it healthy again.
    #[serde(default = "two")]
    pub recovery_threshold: u32,
    /// A probe slower than this counts as failed (unset: only lost probes fail).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_threshold: Option<Dur>,
}

fn hc_interval() -> Dur {
    Dur::secs(5)
}
fn hc_timeout() -> Dur {
    Dur::secs(2)
}
fn three() -> u32 {
    3
}
fn two() -> u32 {
    2
}

/// An IPsec connection to one customer gateway.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tunnel {
    /// Name route tables and security groups refer to.
    pub name: String,
    /// Administratively up.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// The peer.
    pub customer_gateway: String,
    /// Our IKE identity (default: the WAN address).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local_id: Option<String>,
    /// Pre-shared key.
    pub psk: Secret,
    /// IKE proposals, strongSwan syntax, most preferred first.
    #[serde(default = "ike_proposals")]
    pub ike_proposals: Vec<String>,
    /// ESP proposals, strongSwan syntax, most preferred first.
    #[serde(default = "esp_proposals")]
    pub esp_proposals: Vec<String>,
    /// Accept the weak algorithms (3DES, HMAC-SHA1-96, PRF-SHA1, MODP 1024 and 1536) that old
    /// peers still need; validation names each one in a warning (RFC 8247 §2, RFC 8221 §5).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_weak: bool,
    /// IKE SA lifetime.
    #[serde(default = "ike_lifetime")]
    pub ike_lifetime: Dur,
    /// How long before the IKE SA lifetime ends that rekeying starts.
    #[serde(default = "rekey_margin")]
    pub ike_rekey_margin: Dur,
    /// CHILD (ESP) SA lifetime.
    #[serde(default = "child_lifetime")]
    pub child_lifetime: Dur,
    /// How long before the CHILD SA lifetime ends that rekeying starts.
    #[serde(default = "rekey_margin")]
    pub child_rekey_margin: Dur,
    /// Random extra margin, in percent of the margin, so that both peers do not rekey at once.
    #[serde(default = "fuzz")]
    pub rekey_fuzz_percent: u32,
    /// Dead peer detection.
    #[serde(default)]
    pub dpd: Dpd,
    /// Policy-based or route-based.
    #[serde(default)]
    pub mode: Mode,
    /// SPD entries (policy mode only).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub spd: Vec<SpdEntry>,
    /// Read but without effect (validation warns): every tunnel uses [`TUN_DEVICE`]. Kept so
    /// that stored revisions which set it still load.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<String>,
    /// Inner MTU of the tunnel device.
    #[serde(default = "tunnel_mtu")]
    pub mtu: u32,
    /// TCP MSS clamp for SYNs through the tunnel; default MTU − 40; 0 turns it off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mss_clamp: Option<u16>,
    /// When to bring the tunnel up.
    #[serde(default)]
    pub start_action: StartAction,
    /// Probes through the tunnel.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check: Option<HealthCheck>,
    /// UDP encapsulation.
    #[serde(default)]
    pub nat_t: NatT,
    /// IKEv2, IKEv1 or either.
    #[serde(default)]
    pub ike_version: IkeVersion,
    /// IKEv1 phase 1 in Aggressive Mode (RFC 2409 §5.4) instead of Main Mode; validation warns
    /// that it exposes the PSK's hash to offline guessing.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub aggressive_mode: bool,
}

/// Default IKE proposals: AES-GCM with Curve25519, then with the NIST P-256 group.
pub const DEFAULT_IKE_PROPOSALS: [&str; 2] =
    ["aes256gcm16-prfsha256-x25519", "aes128gcm16-prfsha256-ecp256"];
/// Default ESP proposals.
pub const DEFAULT_ESP_PROPOSALS: [&str; 2] = ["aes256gcm16", "aes128gcm16"];

fn ike_proposals() -> Vec<String> {
    DEFAULT_IKE_PROPOSALS.iter().map(|s| (*s).to_owned()).collect()
}
fn esp_proposals() -> Vec<String> {
    DEFAULT_ESP_PROPOSALS.iter().map(|s| (*s).to_owned()).collect()
}
fn ike_lifetime() -> Dur {
    Dur::secs(8 * 3600)
}
fn child_lifetime() -> Dur {
    Dur::secs(3600)
}
fn rekey_margin() -> Dur {
    Dur::secs(9 * 60)
}
fn fuzz() -> u32 {
    100
}
fn tunnel_mtu() -> u32 {
    1400
}

/// The TUN device that carries every tunnel's inner traffic: the dataplane's SPD, not the
/// device, chooses the tunnel, so one device serves them all.
pub const TUN_DEVICE: &str = "ist0";

impl Tunnel {
    /// The MSS clamp in effect, `None` when off.
    pub fn effective_mss(&self) -> Option<u16> {
        match self.mss_clamp {
            Some(0) => None,
            Some(v) => Some(v),
            None => u16::try_from(self.mtu.saturating_sub(40)).ok(),
        }
    }

    /// The weak algorithms its proposals name (`3des`, `sha1`, `prfsha1`, `modp1024`,
    /// `modp1536`), each once; validation refuses them unless `allow_weak` is set.
    pub fn weak_algorithms(&self) -> Vec<&'static str> {
        use isthmus_ike::proposal::{EspProposal, IkeProposal};
        let ike = self.ike_proposals.iter().filter_map(|p| IkeProposal::parse(p).ok());
        let esp = self.esp_proposals.iter().filter_map(|p| EspProposal::parse(p).ok());
        let mut v: Vec<&'static str> = ike.flat_map(|p| p.weak()).collect();
        v.extend(esp.flat_map(|p| p.weak()));
        let mut seen = std::collections::HashSet::new();
        v.retain(|w| seen.insert(*w));
        v
    }

    /// True when dead peer detection runs.
    pub fn dpd_enabled(&self) -> bool {
        !self.dpd.delay.is_zero() && self.dpd.action != DpdAction::None
    }
}

/// A route table.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteTable {
    /// Name.
    pub name: String,
    /// Kernel table number (1–4294967295 except 253, 254, 255).
    pub id: u32,
    /// LANs whose traffic looks up this table (empty: every LAN not bound to another table).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub lans: Vec<String>,
    /// The routes.
    #[serde(default, rename = "route", skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<Route>,
}

/// A route: a prefix and exactly one of `tunnel`, `interface` or `via`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    /// Destination.
    #[serde(with = "prefix")]
    pub prefix: Prefix,
    /// Next hop: this tunnel's device.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tunnel: Option<String>,
    /// Next hop: a LAN (by name) or a kernel interface.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<String>,
    /// Next hop: a router address (with `interface`, on that interface).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub via: Option<IpAddr>,
    /// Preference; the lowest metric whose next hop is up wins (active/standby).
    #[serde(default = "metric")]
    pub metric: u32,
}

fn metric() -> u32 {
    100
}

/// Where a route sends traffic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NextHop<'a> {
    /// Into a tunnel.
    Tunnel(&'a str),
    /// Out of an interface (LAN name or kernel name), optionally through a router.
    Interface(&'a str, Option<IpAddr>),
    /// Through a router, interface found by the kernel.
    Address(IpAddr),
}

impl Route {
    /// The next hop, `None` when the route names none (a validation error).
    pub fn next_hop(&self) -> Option<NextHop<'_>> {
        match (&self.tunnel, &self.interface, self.via) {
            (Some(t), None, None) => Some(NextHop::Tunnel(t)),
            (None, Some(i), via) => Some(NextHop::Interface(i, via)),
            (None, None, Some(a)) => Some(NextHop::Address(a)),
            _ => None,
        }
    }
}

/// Allow or deny.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Action {
    /// Let the packet through.
    Allow,
    /// Drop it.
    #[default]
    Deny,
}

/// The direction a rule applies to, seen from the bound object.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Direction {
    /// Entering the bound tunnel or LAN's network.
    In,
    /// Leaving it.
    Out,
}

/// One filter rule of a security group or network ACL.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// Evaluation order, lowest first; unique within its group.
    pub priority: u32,
    /// What a match does.
    pub action: Action,
    /// Which direction it applies to.
    pub direction: Direction,
    /// IP protocol.
    #[serde(default)]
    pub protocol: Protocol,
    /// Source prefixes (empty: any).
    #[serde(default, with = "prefixes", skip_serializing_if = "Vec::is_empty")]
    pub source: Vec<Prefix>,
    /// Destination prefixes (empty: any).
    #[serde(default, with = "prefixes", skip_serializing_if = "Vec::is_empty")]
    pub destination: Vec<Prefix>,
    /// Destination ports (TCP/UDP only).
    #[serde(default = "any_ports", with = "ports")]
    pub ports: PortRange,
    /// Free text for operators.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

/// A stateful filter bound to tunnels and LANs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecurityGroup {
    /// Name.
    pub name: String,
    /// Tunnels it is bound to.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tunnels: Vec<String>,
    /// LANs it is bound to.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub lans: Vec<String>,
    /// What happens to a new flow no rule matches.
    #[serde(default)]
    pub default_action: Action,
    /// Rules.
    #[serde(default, rename = "rule", skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<Rule>,
}

/// A stateless filter bound to LANs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkAcl {
    /// Name.
    pub name: String,
    /// LANs it is bound to.
    pub lans: Vec<String>,
    /// What happens to a packet no rule matches.
    #[serde(default)]
    pub default_action: Action,
    /// Rules.
    #[serde(default, rename = "rule", skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<Rule>,
}

/// Where a plugin hooks in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Hook {
    /// Compiles SPD entries for tunnels.
    Spd,
    /// Compiles security group rules.
    SecurityGroup,
    /// Runs when alarms fire.
    Alarm,
}

/// A plugin bound to a hook.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Plugin {
    /// Name of this binding.
    pub name: String,
    /// Enabled.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// The hook.
    pub hook: Hook,
    /// Name of the uploaded plugin component.
    pub plugin: String,
    /// `sha256:` and 64 hex digits of the component; pins exactly one build.
    pub digest: String,
    /// Trusted keys that may sign it (empty: any trusted key).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub signed_by: Vec<String>,
    /// What it applies to: tunnels (spd), security groups (security-group) or alarms (alarm);
    /// empty: all of them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub targets: Vec<String>,
    /// The plugin's own configuration, handed to it as is.
    #[serde(default, skip_serializing_if = "toml::Table::is_empty")]
    pub config: toml::Table,
}

/// A public key trusted to sign plugins.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrustedKey {
    /// Name.
    pub name: String,
    /// Ed25519 public key: 64 hex digits or base64 of 32 bytes, optionally prefixed `ed25519:`.
    pub public_key: String,
}

impl TrustedKey {
    /// The 32 key bytes, `None` when malformed.
    pub fn key_bytes(&self) -> Option<[u8; 32]> {
        let s = self.public_key.trim();
        let s = s.strip_prefix("ed25519:").unwrap_or(s);
        let bytes = if s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit()) {
            (0..32).map(|i| u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()).collect()
        } else {
            base64_decode(s)
        }?;
        bytes.try_into().ok()
    }
}

fn base64_decode(s: &str) -> Option<Vec<u8>> {
    let val = |c: u8| match c {
        b'A'..=b'Z' => Some(c - b'A'),
        b'a'..=b'z' => Some(c - b'a' + 26),
        b'0'..=b'9' => Some(c - b'0' + 52),
        b'+' => Some(62),
        b'/' => Some(63),
        _ => None,
    };
    let s = s.trim_end_matches('=');
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in s.bytes() {
        acc = (acc << 6) | u32::from(val(c)?);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Some(out)
}

/// What an alarm watches.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AlarmKind {
    /// A tunnel has been down for `hold`.
    TunnelDown,
    /// Dead peer detection declared a peer dead.
    DpdTimeout,
    /// A rekey failed.
    RekeyFailure,
    /// Health-check loss over `threshold` percent.
    HealthLoss,
    /// Health-check round trip over `threshold` milliseconds.
    HealthLatency,
    /// Traffic leaves through a tunnel but none returns, for `hold`.
    OneWayTraffic,
    /// A plugin trapped, timed out or ran out of memory.
    PluginFault,
}

impl AlarmKind {
    /// True for kinds that read health-check results.
    pub fn needs_health_check(self) -> bool {
        matches!(self, AlarmKind::HealthLoss | AlarmKind::HealthLatency)
    }

    /// The severity of a rule that names none: a lost tunnel or peer, loss and one-way traffic
    /// are major (traffic is failing); a failed rekey and high latency are warnings (traffic
    /// still passes); a plugin fault is critical (policy fell back for every tunnel).
    pub fn default_severity(self) -> AlarmSeverity {
        match self {
            AlarmKind::TunnelDown
            | AlarmKind::DpdTimeout
            | AlarmKind::HealthLoss
            | AlarmKind::OneWayTraffic => AlarmSeverity::Major,
            AlarmKind::RekeyFailure | AlarmKind::HealthLatency => AlarmSeverity::Warning,
            AlarmKind::PluginFault => AlarmSeverity::Critical,
        }
    }
}

/// How loud an alarm is: the API's severity, so that the words agree everywhere.
pub use isthmus_api::Severity as AlarmSeverity;

/// An alarm: a condition and who is told.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Alarm {
    /// Name.
    pub name: String,
    /// Condition.
    pub kind: AlarmKind,
    /// Tunnels watched (empty: all).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tunnels: Vec<String>,
    /// How long the condition must hold before the alarm fires.
    #[serde(default)]
    pub hold: Dur,
    /// Percent for health-loss, milliseconds for health-latency; unused by other kinds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threshold: Option<u32>,
    /// Severity; absent: [`AlarmKind::default_severity`]. The rule's word is what the alarm
    /// carries; only an alarm plugin configured to re-grade a kind changes it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub severity: Option<AlarmSeverity>,
    /// Notification targets by name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notify: Vec<String>,
}

impl Alarm {
    /// The severity its alarms carry: the rule's, else its kind's default.
    pub fn severity(&self) -> AlarmSeverity {
        self.severity.unwrap_or(self.kind.default_severity())
    }
}

/// A notification target.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Notify {
    /// Name.
    pub name: String,
    /// URL that receives a JSON POST per alarm event.
    pub webhook: String,
    /// Attempts after the first failure.
    #[serde(default = "three")]
    pub retries: u32,
    /// Time limit of one attempt.
    #[serde(default = "notify_timeout")]
    pub timeout: Dur,
    /// Key for the HMAC-SHA256 signature header (unset: unsigned).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<Secret>,
    /// A PEM file of CA certificates trusted for this webhook's HTTPS besides the built-in
    /// roots (a receiver with a private CA).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<String>,
}

impl Notify {
    /// The certificates of [`Notify::ca`] (none without it), or why the file is unusable,
    /// naming it.
    pub fn ca_certificates(
        &self,
    ) -> Result<Vec<rustls_pki_types::CertificateDer<'static>>, String> {
        use rustls_pki_types::pem::PemObject;
        let Some(path) = &self.ca else { return Ok(Vec::new()) };
        let pem = std::fs::read(path).map_err(|e| format!("cannot read `{path}`: {e}"))?;
        let certs = rustls_pki_types::CertificateDer::pem_slice_iter(&pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("`{path}` is not a PEM certificate bundle: {e}"))?;
        if certs.is_empty() {
            return Err(format!("`{path}` holds no PEM certificate"));
        }
        Ok(certs)
    }
}

fn notify_timeout() -> Dur {
    Dur::secs(5)
}

/// What an API token may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    /// Everything.
    Admin,
    /// Read state and configuration (secrets redacted), change nothing.
    ReadOnly,
}

/// A management API credential. The token itself is stored only as its hash, or as a reference.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiToken {
    /// Name (shown in revision authors and logs).
    pub name: String,
    /// Role.
    pub role: Role,
    /// `sha256:` and the 64 hex digits of the token's SHA-256.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_hash: Option<String>,
    /// The token, from a file or variable (or inline, discouraged).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<Secret>,
}

/// The `token_hash` form of a token: `sha256:` and 64 hex digits.
pub fn hash_token(token: &str) -> String {
    use sha2::{Digest, Sha256};
    let d = Sha256::digest(token.as_bytes());
    let hex: String = d.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

/// Equal token hashes, in time that depends only on their lengths (all hashes have the same).
pub fn token_hashes_equal(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A new random token: `ist_` and 64 hex digits (256 bits from the kernel's random source).
pub fn new_token() -> String {
    let mut b = [0u8; 32];
    getrandom::fill(&mut b).expect("the kernel's random source is available");
    let hex: String = b.iter().map(|b| format!("{b:02x}")).collect();
    format!("ist_{hex}")
}

impl ApiToken {
    /// The token's hash in the `token_hash` form; a `token` reference is resolved here (`None`
    /// when it cannot be, or when neither is set).
    pub fn hash(&self) -> Option<String> {
        match (&self.token_hash, &self.token) {
            // Validation checked the form: `sha256:` and 64 hex digits.
            (Some(h), _) => Some(h.to_ascii_lowercase()),
            (None, Some(s)) => Some(hash_token(s.resolve().ok()?.expose())),
            (None, None) => None,
        }
    }

    /// True when `presented` is this token. Compares hashes in constant time.
    pub fn matches(&self, presented: &str) -> bool {
        self.hash().is_some_and(|want| token_hashes_equal(&want, &hash_token(presented)))
    }
}

impl Config {
    /// The customer gateway named `name`.
    pub fn customer_gateway(&self, name: &str) -> Option<&CustomerGateway> {
        self.customer_gateways.iter().find(|c| c.name == name)
    }

    /// The tunnel named `name`.
    pub fn tunnel(&self, name: &str) -> Option<&Tunnel> {
        self.tunnels.iter().find(|t| t.name == name)
    }

    /// The LAN named `name`.
    pub fn lan(&self, name: &str) -> Option<&Lan> {
        self.gateway.lans.iter().find(|l| l.name == name)
    }

    /// Every local network (all LANs).
    pub fn local_networks(&self) -> impl Iterator<Item = Prefix> + '_ {
        self.gateway.lans.iter().flat_map(Lan::all_networks)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trusted_keys_read_hex_and_base64() {
        let hex = TrustedKey { name: "k".into(), public_key: "ab".repeat(32) };
        assert_eq!(hex.key_bytes(), Some([0xab; 32]));
        // 32 bytes of 0xab in base64.
        let b64 = TrustedKey {
            name: "k".into(),
            public_key: "ed25519:q6urq6urq6urq6urq6urq6urq6urq6urq6urq6urq6s=".into(),
        };
        assert_eq!(b64.key_bytes(), Some([0xab; 32]));
        assert_eq!(TrustedKey { name: "k".into(), public_key: "abc!".into() }.key_bytes(), None);
        assert_eq!(TrustedKey { name: "k".into(), public_key: "q6ur".into() }.key_bytes(), None);
    }

    #[test]
    fn api_tokens_match_by_hash_only() {
        let t = ApiToken {
            name: "ops".into(),
            role: Role::Admin,
            token_hash: Some(hash_token("s3cret-token-value")),
            token: None,
        };
        assert!(t.matches("s3cret-token-value"));
        assert!(!t.matches("s3cret-token-valuf"));
        assert!(!t.matches(""));
        let inline = ApiToken { token_hash: None, token: Some(Secret::Inline("abc".into())), ..t };
        assert!(inline.matches("abc") && !inline.matches("abd"));
        assert_eq!(hash_token("").len(), 7 + 64);
    }

    #[test]
    fn new_tokens_are_distinct_and_hash_to_the_stored_form() {
        let (a, b) = (new_token(), new_token());
        assert_ne!(a, b);
        assert_eq!(a.len(), 4 + 64);
        assert!(a.starts_with("ist_") && a[4..].bytes().all(|c| c.is_ascii_hexdigit()));
        let h = hash_token(&a);
        assert!(h.starts_with("sha256:") && h.len() == 7 + 64);
        assert!(token_hashes_equal(&h, &hash_token(&a)));
        assert!(!token_hashes_equal(&h, &hash_token(&b)));
    }

    #[test]
    fn tunnel_defaults_and_derived_values() {
        let t: Tunnel = toml::from_str(
            "name = \"to-the-data-centre\"\ncustomer_gateway = \"idc\"\npsk = { env = \"P\" }",
        )
        .unwrap();
        assert_eq!(t.effective_mss(), Some(1360));
        assert!(t.dpd_enabled());
        assert_eq!(t.ike_lifetime, Dur::secs(28_800));
        assert_eq!(t.ike_proposals[0], "aes256gcm16-prfsha256-x25519");
        assert_eq!((t.ike_version, t.aggressive_mode), (IkeVersion::V2, false));
        let r = Route {
            prefix: "10.0.0.0/8".parse().unwrap(),
            tunnel: None,
            interface: Some("app".into()),
            via: None,
            metric: 1,
        };
        assert_eq!(r.next_hop(), Some(NextHop::Interface("app", None)));
    }

    #[test]
    fn ike_version_reads_2_1_or_any_and_writes_them_back() {
        let base = "name = \"t\"\ncustomer_gateway = \"idc\"\npsk = { env = \"P\" }\n";
        let read = |v: &str| toml::from_str::<Tunnel>(&format!("{base}ike_version = {v}"));
        for (text, want) in
            [("2", IkeVersion::V2), ("1", IkeVersion::V1), ("\"any\"", IkeVersion::Any)]
        {
            let t = read(text).unwrap();
            assert_eq!(t.ike_version, want, "{text}");
            let shown = toml::to_string(&t).unwrap();
            assert!(shown.contains(&format!("\nike_version = {text}\n")), "{shown}");
            assert_eq!(toml::from_str::<Tunnel>(&shown).unwrap(), t);
        }
        for bad in ["3", "0", "-1", "\"v1\"", "\"2\"", "true", "1.0"] {
            let e = read(bad).unwrap_err().to_string();
            assert!(e.contains("ike_version") && e.contains("\"any\""), "{bad}: {e}");
        }
        let e = read("3").unwrap_err().to_string();
        assert!(e.contains("ike_version must be 2 (IKEv2), 1 (IKEv1) or \"any\", not 3"), "{e}");
        // aggressive_mode is written only when set.
        let t = toml::from_str::<Tunnel>(&format!("{base}ike_version = 1\naggressive_mode = true"))
            .unwrap();
        assert!(
            t.aggressive_mode && toml::to_string(&t).unwrap().contains("aggressive_mode = true")
        );
        assert!(!toml::to_string(&read("1").unwrap()).unwrap().contains("aggressive_mode"));
    }
}
