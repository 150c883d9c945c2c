//! Whole-document validation: every rule runs and every finding is kept, each with the path of
//! the field it is about (`tunnel[1].spd[0].remote[0]`).
//!
//! Errors block a commit: dangling references, duplicate names, prefixes in the wrong place,
//! unparseable proposals, lifetimes that cannot work, routes that would send a customer gateway's
//! own IKE/ESP packets into its tunnel. Warnings are likely mistakes that can be meant.

use std::collections::HashMap;
use std::net::IpAddr;

use isthmus_ike::proposal::{EspProposal, IkeProposal};
use isthmus_tables::Prefix;

use crate::error::{Issue, Report};
use crate::parse::suggest;
use crate::schema::*;
use crate::secret::Secret;
use crate::types::{Dur, PeerAddress};

/// IPv6's minimum link MTU (RFC 8200 §5).
const IPV6_MIN_MTU: u32 = 1280;

/// Checks a parsed configuration as a whole.
pub fn validate(c: &Config) -> Report {
    let mut v = V { c, r: Report::default(), peer_of: Vec::new() };
    v.run();
    v.r
}

struct V<'c> {
    c: &'c Config,
    r: Report,
    /// Each tunnel's customer gateway (index), when it resolves.
    peer_of: Vec<Option<usize>>,
}

/// Minimum bytes IPsec adds to a packet (outer IPv4, UDP encapsulation, ESP header, IV, ICV,
/// trailer): an inner MTU above WAN MTU minus this fragments.
const IPSEC_OVERHEAD: u32 = 80;
/// A shorter PSK draws a warning.
const MIN_PSK_CHARS: usize = 20;

fn lower_upper(p: &Prefix) -> (bool, u128, u128) {
    match p.addr() {
        IpAddr::V4(a) => {
            let start = u128::from(u32::from(a));
            let size = 1u128 << (32 - u32::from(p.len()));
            (false, start, start + size - 1)
        }
        IpAddr::V6(a) => {
            let start = u128::from(a);
            let host = 128 - u32::from(p.len());
            let end = if host == 128 { u128::MAX } else { start | ((1u128 << host) - 1) };
            (true, start, end)
        }
    }
}

fn ip_key(ip: IpAddr) -> (bool, u128) {
    match ip {
        IpAddr::V4(a) => (false, u128::from(u32::from(a))),
        IpAddr::V6(a) => (true, u128::from(a)),
    }
}

fn list(names: &[&str]) -> String {
    let shown: Vec<String> = names.iter().take(8).map(|n| format!("`{n}`")).collect();
    let more =
        if names.len() > 8 { format!(" and {} more", names.len() - 8) } else { String::new() };
    if shown.is_empty() { "none".to_owned() } else { format!("{}{more}", shown.join(", ")) }
}

fn valid_ifname(n: &str) -> Result<(), String> {
    if n.is_empty() || n.len() > 15 {
        return Err(format!("interface name `{n}` must be 1 to 15 bytes long (Linux IFNAMSIZ)"));
    }
    if n == "." || n == ".." || n.bytes().any(|b| b == b'/' || b == b':' || b.is_ascii_whitespace())
    {
        return Err(format!("`{n}` is not a valid interface name (no `/`, `:` or spaces)"));
    }
    Ok(())
}

impl<'c> V<'c> {
    fn err(&mut self, path: impl Into<String>, msg: impl Into<String>) {
        self.r.push(Issue::error(path, msg));
    }

    fn warn(&mut self, path: impl Into<String>, msg: impl Into<String>) {
        self.r.push(Issue::warning(path, msg));
    }

    fn run(&mut self) {
        let c = self.c;
        if c.schema != 1 {
            self.err(
                "schema",
                format!("schema {} is not supported; this firmware reads schema 1", c.schema),
            );
        }
        self.gateway();
        let cgws =
            self.names("customer_gateway", c.customer_gateways.iter().map(|x| x.name.as_str()));
        let tunnels = self.names("tunnel", c.tunnels.iter().map(|x| x.name.as_str()));
        self.peer_of =
            c.tunnels.iter().map(|t| cgws.get(t.customer_gateway.as_str()).copied()).collect();
        let lans = self.names("gateway.lan", c.gateway.lans.iter().map(|x| x.name.as_str()));
        let keys = self.names("trusted_key", c.trusted_keys.iter().map(|x| x.name.as_str()));
        let sgs = self.names("security_group", c.security_groups.iter().map(|x| x.name.as_str()));
        let alarms = self.names("alarm", c.alarms.iter().map(|x| x.name.as_str()));
        let notify = self.names("notify", c.notify.iter().map(|x| x.name.as_str()));
        self.names("route_table", c.route_tables.iter().map(|x| x.name.as_str()));
        self.names("network_acl", c.network_acls.iter().map(|x| x.name.as_str()));
        self.names("plugin", c.plugins.iter().map(|x| x.name.as_str()));
        self.names("api_token", c.api_tokens.iter().map(|x| x.name.as_str()));
        self.interfaces();
        self.customer_gateways();
        self.tunnels(&cgws);
        self.tunnel_device_ipv6();
        self.spd_overlaps();
        self.route_tables(&tunnels, &lans);
        self.filters(&tunnels, &lans);
        self.plugins(&keys, &tunnels, &sgs, &alarms);
        self.alarms(&tunnels, &notify);
        self.notify();
        self.api_tokens();
        self.placeholders();
    }

    /// Refuses secrets copied from `show` output: their value is the redaction marker.
    fn placeholders(&mut self) {
        let c = self.c;
        let mut found: Vec<String> = Vec::new();
        for (i, t) in c.tunnels.iter().enumerate() {
            if t.psk.is_redacted_placeholder() {
                found.push(format!("tunnel[{i}].psk"));
            }
        }
        for (i, n) in c.notify.iter().enumerate() {
            if n.secret.as_ref().is_some_and(Secret::is_redacted_placeholder) {
                found.push(format!("notify[{i}].secret"));
            }
        }
        for (i, t) in c.api_tokens.iter().enumerate() {
            if t.token.as_ref().is_some_and(Secret::is_redacted_placeholder) {
                found.push(format!("api_token[{i}].token"));
            }
        }
        for path in found {
            self.err(
                path,
                "this is the redacted form that `show` prints, not a key; give the real value or a `{ file = ... }` / `{ env = ... }` reference",
            );
        }
    }

    /// Checks names in one section: present, well-formed, unique. Returns name → index.
    fn names<'a>(
        &mut self,
        section: &str,
        names: impl Iterator<Item = &'a str>,
    ) -> HashMap<&'a str, usize> {
        let mut seen: HashMap<&'a str, usize> = HashMap::new();
        for (i, n) in names.enumerate() {
            let path = format!("{section}[{i}].name");
            if n.is_empty() || n.len() > 64 {
                self.err(path, "a name must be 1 to 64 characters long");
                continue;
            }
            if let Some(b) = n.bytes().find(|b| !(b.is_ascii_alphanumeric() || b"-_.".contains(b)))
            {
                self.err(
                    path,
                    format!(
                        "name `{n}` contains `{}`; use letters, digits, `-`, `_` and `.`",
                        b as char
                    ),
                );
                continue;
            }
            if let Some(first) = seen.get(n) {
                self.err(path, format!("name `{n}` is already used by {section}[{first}]"));
            } else {
                seen.insert(n, i);
            }
        }
        seen
    }

    fn refer(
        &mut self,
        path: String,
        what: &str,
        name: &str,
        known: &HashMap<&str, usize>,
    ) -> Option<usize> {
        if let Some(i) = known.get(name) {
            return Some(*i);
        }
        let mut names: Vec<&str> = known.keys().copied().collect();
        names.sort_unstable();
        let hint = match suggest(name, names.iter().copied()) {
            Some(s) => format!("did you mean `{s}`?"),
            None => format!("defined: {}", list(&names)),
        };
        self.err(path, format!("{what} `{name}` is not defined; {hint}"));
        None
    }

    fn gateway(&mut self) {
        let g = &self.c.gateway;
        if g.name.trim().is_empty() {
            self.err("gateway.name", "the gateway needs a name");
        }
        let wan_net = g.wan.address.network();
        if !wan_net.contains(g.wan.next_hop) {
            self.err(
                "gateway.wan.next_hop",
                format!(
                    "next hop {} is not on the WAN network {wan_net}; the gateway could not reach it",
                    g.wan.next_hop
                ),
            );
        }
        if g.wan.next_hop == g.wan.address.addr {
            self.err("gateway.wan.next_hop", "the next hop is the WAN address itself");
        }
        self.mtu("gateway.wan.mtu", g.wan.mtu, g.wan.address.addr.is_ipv6());
        if g.lans.is_empty() {
            self.warn("gateway.lan", "no [[gateway.lan]]: the gateway protects no local network");
        }
        for (i, lan) in g.lans.iter().enumerate() {
            let base = format!("gateway.lan[{i}]");
            if lan.addresses.is_empty() {
                self.err(
                    format!("{base}.addresses"),
                    "a LAN needs at least one address, e.g. \"10.10.0.1/24\"",
                );
            }
            self.mtu(
                &format!("{base}.mtu"),
                lan.mtu,
                lan.addresses.iter().any(|a| a.addr.is_ipv6()),
            );
            for (j, a) in lan.addresses.iter().enumerate() {
                if a.network().overlaps(&wan_net) {
                    self.err(
                        format!("{base}.addresses[{j}]"),
                        format!("{a} overlaps the WAN network {wan_net}"),
                    );
                }
            }
            let on_link: Vec<Prefix> = lan.addresses.iter().map(|a| a.network()).collect();
            for (j, n) in lan.networks.iter().enumerate() {
                let path = format!("{base}.networks[{j}]");
                if n.overlaps(&wan_net) {
                    self.err(path.clone(), format!("{n} overlaps the WAN network {wan_net}"));
                }
                if n.is_default() {
                    self.err(
                        path.clone(),
                        "a LAN cannot hold every address (0.0.0.0/0); list the networks behind it",
                    );
                }
                if let Some(nh) = lan.next_hop
                    && nh.is_ipv4() != n.addr().is_ipv4()
                {
                    self.err(
                        path.clone(),
                        format!(
                            "{n} and {base}.next_hop {nh} are of different address families: the route to it could not be installed; list it on a LAN with a next hop of its family"
                        ),
                    );
                }
                if !on_link.iter().any(|o| o.covers(n)) && lan.next_hop.is_none() {
                    self.err(
                        path,
                        format!(
                            "{n} is not on the LAN's link; set {base}.next_hop to the router that reaches it"
                        ),
                    );
                }
            }
            if let Some(nh) = lan.next_hop
                && !on_link.iter().any(|o| o.contains(nh))
            {
                self.err(
                    format!("{base}.next_hop"),
                    format!("next hop {nh} is not on this LAN's on-link networks"),
                );
            }
            // Networks of different LANs must not overlap: the gateway could not tell where
            // traffic for them goes.
            for (k, other) in g.lans.iter().enumerate().skip(i + 1) {
                for n in lan.all_networks() {
                    if let Some(o) = other.all_networks().find(|o| o.overlaps(&n)) {
                        self.err(
                            format!("gateway.lan[{k}]"),
                            format!(
                                "network {o} of LAN `{}` overlaps {n} of LAN `{}`",
                                other.name, lan.name
                            ),
                        );
                        break;
                    }
                }
            }
        }
        match &g.management {
            None => self.warn(
                "gateway.management",
                "no [gateway.management]: the management API listens only on loopback (127.0.0.1:8080), so it is reachable from this box alone",
            ),
            Some(m) => {
                if m.interface == g.wan.interface {
                    self.err(
                        "gateway.management.interface",
                        "the management API must not listen on the WAN interface; use a dedicated interface",
                    );
                }
                if g.lans.iter().any(|l| l.interface == m.interface) {
                    self.warn(
                        "gateway.management.interface",
                        format!(
                            "`{}` is also a LAN interface: the API is reachable from that LAN",
                            m.interface
                        ),
                    );
                }
                if m.port == 0 {
                    self.err(
                        "gateway.management.port",
                        "port 0 is not a port; the default is 8443",
                    );
                }
                if m.address.network().overlaps(&wan_net) {
                    self.err(
                        "gateway.management.address",
                        "the management network overlaps the WAN network",
                    );
                }
            }
        }
    }

    /// Every tunnel shares one TUN device whose MTU is the smallest tunnel MTU; below 1280,
    /// IPv6's minimum link MTU (RFC 8200 §5), the kernel turns IPv6 off on the device, so no
    /// tunnel could carry the IPv6 the configuration sends into one.
    fn tunnel_device_ipv6(&mut self) {
        let c = self.c;
        let Some((i, low)) = c
            .tunnels
            .iter()
            .enumerate()
            .filter(|(_, t)| t.mtu < IPV6_MIN_MTU)
            .min_by_key(|(_, t)| t.mtu)
        else {
            return;
        };
        let v6 = |p: &Prefix| p.addr().is_ipv6();
        // Only enabled tunnels' selectors are routed into the device; routes always are.
        let by_spd = c.tunnels.iter().enumerate().filter(|(_, t)| t.enabled).find_map(|(j, t)| {
            t.spd.iter().enumerate().find_map(|(k, e)| {
                let p = e.local.iter().chain(&e.remote).find(|p| v6(p))?;
                Some(format!("tunnel[{j}].spd[{k}] ({p})"))
            })
        });
        let by_route = || {
            c.route_tables.iter().enumerate().find_map(|(j, rt)| {
                rt.routes.iter().enumerate().find_map(|(k, r)| {
                    (r.tunnel.is_some() && v6(&r.prefix))
                        .then(|| format!("route_table[{j}].route[{k}] ({})", r.prefix))
                })
            })
        };
        if let Some(what) = by_spd.or_else(by_route) {
            self.err(
                format!("tunnel[{i}].mtu"),
                format!(
                    "MTU {} is below {IPV6_MIN_MTU}, IPv6's minimum link MTU (RFC 8200 §5): the tunnels share \
                     one device whose MTU is the smallest tunnel MTU, and the kernel turns IPv6 \
                     off on it, yet {what} sends IPv6 into a tunnel; use {IPV6_MIN_MTU} or more",
                    low.mtu
                ),
            );
        }
    }

    fn mtu(&mut self, path: &str, mtu: u32, ipv6: bool) {
        let min = if ipv6 { IPV6_MIN_MTU } else { 576 };
        if !(min..=9216).contains(&mtu) {
            self.err(path, format!("MTU {mtu} is out of range ({min}–9216)"));
        }
    }

    fn interfaces(&mut self) {
        let g = &self.c.gateway;
        let mut all: Vec<(String, String)> =
            vec![("gateway.wan.interface".into(), g.wan.interface.clone())];
        for (i, l) in g.lans.iter().enumerate() {
            all.push((format!("gateway.lan[{i}].interface"), l.interface.clone()));
        }
        if let Some(m) = &g.management {
            all.push(("gateway.management.interface".into(), m.interface.clone()));
        }
        all.insert(0, ("the shared TUN device of the tunnels".into(), crate::TUN_DEVICE.into()));
        for (i, t) in self.c.tunnels.iter().enumerate() {
            if let Some(n) = &t.interface {
                self.warn(
                    format!("tunnel[{i}].interface"),
                    format!(
                        "`{n}` has no effect: every tunnel uses the shared TUN device `{}`; remove this field",
                        crate::TUN_DEVICE
                    ),
                );
            }
        }
        let mut seen: HashMap<&str, &str> = HashMap::new();
        for (path, name) in &all {
            if let Err(e) = valid_ifname(name) {
                self.err(path.clone(), e);
                continue;
            }
            match seen.get(name.as_str()) {
                // Management on a LAN interface is a warning of its own; other clashes are errors.
                Some(first)
                    if !(path.starts_with("gateway.management")
                        && first.starts_with("gateway.lan")) =>
                {
                    self.err(
                        path.clone(),
                        format!("interface `{name}` is already used by {first}"),
                    );
                }
                Some(_) => {}
                None => {
                    seen.insert(name, path);
                }
            }
        }
    }

    fn customer_gateways(&mut self) {
        let c = self.c;
        let mut by_addr: HashMap<IpAddr, usize> = HashMap::new();
        let mut any_ids: HashMap<String, usize> = HashMap::new();
        for (i, cg) in c.customer_gateways.iter().enumerate() {
            let path = format!("customer_gateway[{i}].address");
            if cg.ike_id.as_deref().is_some_and(|s| s.trim().is_empty()) {
                self.err(
                    format!("customer_gateway[{i}].ike_id"),
                    "an IKE identity cannot be empty; remove it to use the address",
                );
            }
            if let Some(d) = cg.dns_refresh {
                if !matches!(cg.address, PeerAddress::Name(_)) {
                    self.err(
                        format!("customer_gateway[{i}].dns_refresh"),
                        "only a DNS name in `address` is resolved again; remove dns_refresh",
                    );
                } else if d < Dur::secs(1) {
                    self.err(format!("customer_gateway[{i}].dns_refresh"), "at least 1s");
                }
            }
            let a = match &cg.address {
                PeerAddress::Ip(a) => *a,
                PeerAddress::Name(_) => continue,
                PeerAddress::Any => {
                    // Only the identity tells such peers apart (RFC 7296 §2.15 binds it to the
                    // PSK): one that matched anything would let any PSK holder be this peer.
                    let id = cg.ike_id.as_deref().map(str::trim).filter(|s| !s.is_empty());
                    match id {
                        None | Some("%any") => self.err(
                            format!("customer_gateway[{i}].ike_id"),
                            "a peer with address = \"any\" is recognised only by its IKE identity; set ike_id to the identity it sends, e.g. \"@branch1.example.com\"",
                        ),
                        Some(id) => {
                            if let Some(first) = any_ids.insert(id.to_ascii_lowercase(), i) {
                                self.err(
                                    format!("customer_gateway[{i}].ike_id"),
                                    format!("customer_gateway[{first}] also has address = \"any\" and identity {id}: a connecting peer could not be told apart; give each its own identity"),
                                );
                            }
                        }
                    }
                    continue;
                }
            };
            if a.is_unspecified() || a.is_loopback() || a.is_multicast() {
                self.err(
                    path.clone(),
                    format!("{a} cannot be a peer's public address (write \"any\" for a peer whose address changes)"),
                );
            }
            if a == c.gateway.wan.address.addr {
                self.err(path.clone(), format!("{a} is this gateway's own WAN address"));
            }
            if let Some(n) = c.local_networks().find(|n| n.contains(a)) {
                self.warn(
                    path.clone(),
                    format!(
                        "{a} lies inside the local network {n}; peers are reached over the WAN"
                    ),
                );
            }
            if let Some(first) = by_addr.insert(a, i) {
                self.warn(path, format!("customer_gateway[{first}] has the same address; tunnels to both will compete"));
            }
        }
    }

    fn tunnels(&mut self, cgws: &HashMap<&str, usize>) {
        let c = self.c;
        let local: Vec<Prefix> = c.local_networks().collect();
        let lan_addrs: Vec<IpAddr> =
            c.gateway.lans.iter().flat_map(|l| l.addresses.iter().map(|a| a.addr)).collect();
        for (i, t) in c.tunnels.iter().enumerate() {
            let base = format!("tunnel[{i}]");
            let cgw = self
                .refer(
                    format!("{base}.customer_gateway"),
                    "customer gateway",
                    &t.customer_gateway,
                    cgws,
                )
                .map(|k| &c.customer_gateways[k]);
            if let Some(n) = t.psk.inline_len()
                && n < MIN_PSK_CHARS
            {
                self.warn(
                    format!("{base}.psk"),
                    format!(
                        "the pre-shared key is only {n} characters; use at least {MIN_PSK_CHARS} random \
                         characters (a captured IKE exchange lets an attacker guess a short key offline)"
                    ),
                );
            }
            if t.local_id.as_deref().is_some_and(|s| s.trim().is_empty()) {
                self.err(
                    format!("{base}.local_id"),
                    "an IKE identity cannot be empty; remove it to use the WAN address",
                );
            }
            self.proposals(&base, "ike_proposals", &t.ike_proposals, true, t.allow_weak);
            self.proposals(&base, "esp_proposals", &t.esp_proposals, false, t.allow_weak);
            self.ike_version(&base, t);
            self.lifetime(
                &base,
                "ike",
                t.ike_lifetime,
                t.ike_rekey_margin,
                t.rekey_fuzz_percent,
                300,
            );
            self.lifetime(
                &base,
                "child",
                t.child_lifetime,
                t.child_rekey_margin,
                t.rekey_fuzz_percent,
                60,
            );
            if t.rekey_fuzz_percent > 100 {
                self.err(
                    format!("{base}.rekey_fuzz_percent"),
                    "at most 100 (percent of the rekey margin)",
                );
            }
            if t.dpd_enabled() {
                if t.dpd.timeout <= t.dpd.delay {
                    self.err(
                        format!("{base}.dpd.timeout"),
                        format!(
                            "{} must be longer than dpd.delay ({})",
                            t.dpd.timeout, t.dpd.delay
                        ),
                    );
                }
            } else {
                self.warn(
                    format!("{base}.dpd"),
                    "dead peer detection is off: a dead peer keeps this tunnel black-holing traffic until its SAs expire",
                );
            }
            if let Some(cg) = cgw
                && cg.address == PeerAddress::Any
                && t.start_action != StartAction::None
            {
                self.err(
                    format!("{base}.start_action"),
                    format!("customer gateway `{}` has address = \"any\": this gateway cannot initiate to it, it connects to us; set start_action = \"none\"", cg.name),
                );
            }
            self.mtu(&format!("{base}.mtu"), t.mtu, false);
            if t.mtu + IPSEC_OVERHEAD > c.gateway.wan.mtu {
                self.warn(
                    format!("{base}.mtu"),
                    format!(
                        "{} plus up to {IPSEC_OVERHEAD} bytes of IPsec overhead exceeds the WAN MTU {}; packets will fragment",
                        t.mtu, c.gateway.wan.mtu
                    ),
                );
            }
            if let Some(m) = t.mss_clamp
                && m != 0
                && u32::from(m) + 40 > t.mtu
            {
                self.warn(
                    format!("{base}.mss_clamp"),
                    format!("{m} + 40 exceeds the tunnel MTU {}", t.mtu),
                );
            }
            match t.mode {
                Mode::Policy if t.spd.is_empty() => self.err(
                    format!("{base}.spd"),
                    "a policy-mode tunnel needs at least one [[tunnel.spd]] entry (or set mode = \"route\")",
                ),
                Mode::Route if !t.spd.is_empty() => self.err(
                    format!("{base}.spd"),
                    "spd entries apply only to mode = \"policy\"; route-mode traffic is chosen by route tables",
                ),
                _ => {}
            }
            for (j, e) in t.spd.iter().enumerate() {
                self.spd_entry(&format!("{base}.spd[{j}]"), e, &local, cgw);
            }
            if let Some(h) = &t.health_check {
                let hb = format!("{base}.health_check");
                if !lan_addrs.contains(&h.source) {
                    self.err(
                        format!("{hb}.source"),
                        format!("{} is not one of the gateway's LAN addresses; probes must come from one", h.source),
                    );
                }
                if t.mode == Mode::Policy {
                    if !t.spd.iter().any(|e| e.local.iter().any(|p| p.contains(h.source)))
                        && !t.spd.is_empty()
                    {
                        self.err(format!("{hb}.source"), format!("{} is outside this tunnel's SPD local prefixes; probes would not enter the tunnel", h.source));
                    }
                    if !t.spd.iter().any(|e| e.remote.iter().any(|p| p.contains(h.destination)))
                        && !t.spd.is_empty()
                    {
                        self.err(format!("{hb}.destination"), format!("{} is outside this tunnel's SPD remote prefixes; probes would not enter the tunnel", h.destination));
                    }
                }
                if h.interval < crate::types::Dur::secs(1) {
                    self.err(format!("{hb}.interval"), "at least 1s");
                }
                if h.timeout.is_zero() || h.timeout > h.interval {
                    self.err(
                        format!("{hb}.timeout"),
                        format!("must be more than 0 and at most the interval ({})", h.interval),
                    );
                }
                if h.failure_threshold == 0 {
                    self.err(format!("{hb}.failure_threshold"), "at least 1");
                }
                if h.recovery_threshold == 0 {
                    self.err(format!("{hb}.recovery_threshold"), "at least 1");
                }
            }
        }
    }

    fn proposals(&mut self, base: &str, field: &str, list: &[String], ike: bool, allow_weak: bool) {
        if list.is_empty() {
            self.err(
                format!("{base}.{field}"),
                "at least one proposal is needed (remove the field for the defaults)",
            );
        }
        // The IKE crate's own parser: what validates here is what the firmware negotiates.
        for (k, p) in list.iter().enumerate() {
            let path = format!("{base}.{field}[{k}]");
            let weak = if ike {
                IkeProposal::parse(p).map(|p| p.weak())
            } else {
                EspProposal::parse(p).map(|e| e.weak())
            };
            match weak {
                Err(e) => self.err(path, e.to_string()),
                Ok(w) if w.is_empty() => {}
                Ok(w) if allow_weak => self.warn(
                    path,
                    format!(
                        "uses weak algorithms ({}), accepted because allow_weak = true; move the \
                         peer to aes256-sha256-modp2048 or better when it can",
                        w.join(", ")
                    ),
                ),
                Ok(w) => self.err(
                    path,
                    format!(
                        "uses weak algorithms ({}); remove them, or set allow_weak = true on the \
                         tunnel if the peer offers nothing stronger",
                        w.join(", ")
                    ),
                ),
            }
        }
    }

    /// What IKEv1 (RFC 2409) cannot negotiate, and Aggressive Mode's risk. Proposals that do not
    /// parse were reported by [`V::proposals`].
    fn ike_version(&mut self, base: &str, t: &Tunnel) {
        use isthmus_ike::proposal::{DhGroup, Encr};
        if t.aggressive_mode {
            if t.ike_version == IkeVersion::V2 {
                self.err(
                    format!("{base}.aggressive_mode"),
                    "aggressive_mode is IKEv1 Main Mode's alternative; set ike_version = 1 or \"any\"",
                );
            } else {
                self.warn(
                    format!("{base}.aggressive_mode"),
                    "Aggressive Mode (RFC 2409 §5.4) sends a hash of the pre-shared key in clear: anyone \
                     who sees the exchange can guess the key offline. Use it only if the peer needs it, \
                     with a long random key; Main Mode (the default) encrypts that hash",
                );
            }
        }
        let x25519 = |dh: &[DhGroup]| dh.contains(&DhGroup::Curve25519);
        let v1_phase1 = |p: &IkeProposal| !p.encr.iter().any(|e| e.is_aead()) && !x25519(&p.dh);
        match t.ike_version {
            IkeVersion::V2 => return,
            IkeVersion::Any => {
                let mut ike = t.ike_proposals.iter().filter_map(|p| IkeProposal::parse(p).ok());
                if !t.ike_proposals.is_empty() && !ike.any(|p| v1_phase1(&p)) {
                    self.warn(
                        format!("{base}.ike_proposals"),
                        "no proposal can be used with IKEv1 (AEAD ciphers and x25519 are IKEv2 \
                         only): an IKEv1 peer will be refused; add one such as aes256-sha256-modp2048",
                    );
                }
                // An IKEv2 CHILD SA carries all of an entry's prefixes; IKEv1 needs one SA pair
                // per prefix pair, named apart in the dataplane: which one applies is only
                // known once the peer has spoken.
                for (k, e) in t.spd.iter().enumerate() {
                    if e.local.len() * e.remote.len() > 1 {
                        self.err(
                            format!("{base}.spd[{k}]"),
                            "with ike_version = \"any\" each spd entry takes one local and one \
                             remote prefix (IKEv1 negotiates one SA pair per prefix pair, IKEv2 one \
                             for all); write one entry per pair",
                        );
                    }
                }
                return;
            }
            IkeVersion::V1 => {}
        }
        // An IKEv1 proxy ID names one port or all of them (RFC 2407 §4.6.2).
        for (k, e) in t.spd.iter().enumerate() {
            for (side, r) in [("local_ports", e.local_ports), ("remote_ports", e.remote_ports)] {
                if r != isthmus_tables::PortRange::ANY && r.first != r.last {
                    self.err(
                        format!("{base}.spd[{k}].{side}"),
                        format!(
                            "{}-{}: an IKEv1 proxy ID carries one port or all of them \
                             (RFC 2407 §4.6.2); write one spd entry per port, or use IKEv2",
                            r.first, r.last
                        ),
                    );
                }
            }
        }
        let suggest = "such as aes256-sha256-modp2048";
        for (k, text) in t.ike_proposals.iter().enumerate() {
            let Ok(p) = IkeProposal::parse(text) else { continue };
            let path = format!("{base}.ike_proposals[{k}]");
            if p.encr.iter().any(|e| e.is_aead()) {
                self.err(
                    path.clone(),
                    format!(
                        "`{text}` uses an AEAD cipher, and IKEv1 has none for phase 1 (RFC 2409); \
                         with ike_version = 1 use a CBC cipher with a hash, {suggest}"
                    ),
                );
            }
            if x25519(&p.dh) {
                self.err(
                    path,
                    format!(
                        "`{text}` uses x25519, an IKEv2 group (RFC 8031); with ike_version = 1 use \
                         a MODP or ECP group, {suggest} or aes256-sha256-ecp256"
                    ),
                );
            }
        }
        for (k, text) in t.esp_proposals.iter().enumerate() {
            let Ok(p) = EspProposal::parse(text) else { continue };
            let path = format!("{base}.esp_proposals[{k}]");
            if p.encr.contains(&Encr::ChaCha20Poly1305) {
                self.err(
                    path.clone(),
                    format!(
                        "`{text}`: chacha20poly1305 has no IKEv1 ESP transform (RFC 7634 is IKEv2 \
                         only); with ike_version = 1 use aes256gcm16 or aes256-sha256"
                    ),
                );
            }
            if x25519(&p.dh) {
                self.err(
                    path.clone(),
                    format!(
                        "`{text}`: x25519 is an IKEv2 group (RFC 8031) and cannot be the PFS group of \
                         IKEv1 Quick Mode; use a MODP or ECP group, such as modp2048 or ecp256"
                    ),
                );
            }
            if !p.esn.contains(&false) {
                self.err(
                    path,
                    format!(
                        "`{text}`: IKEv1 has no extended sequence numbers; remove `esn` with \
                         ike_version = 1"
                    ),
                );
            }
        }
    }

    fn lifetime(
        &mut self,
        base: &str,
        sa: &str,
        life: crate::types::Dur,
        margin: crate::types::Dur,
        fuzz: u32,
        min_secs: u64,
    ) {
        if life.as_secs() < min_secs {
            self.err(
                format!("{base}.{sa}_lifetime"),
                format!("{life} is too short; at least {}", crate::types::Dur::secs(min_secs)),
            );
            return;
        }
        if margin.is_zero() {
            self.err(
                format!("{base}.{sa}_rekey_margin"),
                "must be more than 0, or the SA expires before it is rekeyed",
            );
            return;
        }
        // Rekeying starts between lifetime - margin * (1 + fuzz) and lifetime - margin.
        let earliest = u128::from(margin.as_millis()) * (100 + u128::from(fuzz.min(100))) / 100;
        if earliest >= u128::from(life.as_millis()) {
            self.err(
                format!("{base}.{sa}_rekey_margin"),
                format!(
                    "{margin} (with {fuzz}% fuzz) leaves no time before rekeying; it must be well under {sa}_lifetime ({life})"
                ),
            );
        } else if margin.as_secs() < 30 {
            self.warn(
                format!("{base}.{sa}_rekey_margin"),
                format!("{margin} leaves little time to rekey before the SA expires; 3m or more is usual"),
            );
        }
    }

    fn spd_entry(
        &mut self,
        path: &str,
        e: &SpdEntry,
        local: &[Prefix],
        cgw: Option<&CustomerGateway>,
    ) {
        if e.local.is_empty() {
            self.err(format!("{path}.local"), "at least one local prefix is needed");
        }
        if e.remote.is_empty() {
            self.err(format!("{path}.remote"), "at least one remote prefix is needed");
        }
        for (k, p) in e.local.iter().enumerate() {
            if !local.iter().any(|n| n.covers(p)) {
                let nets: Vec<String> = local.iter().map(ToString::to_string).collect();
                self.err(
                    format!("{path}.local[{k}]"),
                    format!(
                        "{p} is not inside the gateway's LAN networks ({}); add it to a LAN's `networks` or fix the prefix",
                        if nets.is_empty() { "none".to_owned() } else { nets.join(", ") }
                    ),
                );
            }
        }
        let fam_l: Vec<bool> = e.local.iter().map(|p| p.addr().is_ipv6()).collect();
        for (k, p) in e.remote.iter().enumerate() {
            let rp = format!("{path}.remote[{k}]");
            if !fam_l.is_empty() && !fam_l.contains(&p.addr().is_ipv6()) {
                self.err(
                    rp.clone(),
                    format!("{p} is of another address family than every local prefix"),
                );
            }
            if p.is_default() {
                self.warn(
                    rp.clone(),
                    format!("{p} in policy mode sends all LAN traffic through this tunnel; route mode may be meant"),
                );
            } else if let Some(n) = local.iter().find(|n| n.overlaps(p)) {
                self.warn(rp.clone(), format!("{p} overlaps the local network {n}: those hosts would be unreachable locally"));
            }
            if let Some(a) = cgw.and_then(|cg| cg.address.ip())
                && p.contains(a)
                && !p.is_default()
            {
                self.warn(
                    rp,
                    format!("{p} contains the customer gateway's own address {a}; LAN traffic to it is tunnelled"),
                );
            }
        }
        if !(e.protocol.has_ports() || e.local_ports.is_any() && e.remote_ports.is_any()) {
            self.err(
                format!("{path}.protocol"),
                format!(
                    "ports are given but protocol `{}` has none; set protocol = \"tcp\" or \"udp\"",
                    e.protocol
                ),
            );
        }
    }

    /// Warns where two tunnels protect overlapping local and remote prefixes.
    fn spd_overlaps(&mut self) {
        let mut entries: Vec<(bool, u128, u128, usize, usize, usize)> = Vec::new();
        for (i, t) in self.c.tunnels.iter().enumerate() {
            if t.mode != Mode::Policy {
                continue;
            }
            for (j, e) in t.spd.iter().enumerate() {
                for (k, p) in e.remote.iter().enumerate() {
                    let (f, lo, hi) = lower_upper(p);
                    entries.push((f, lo, hi, i, j, k));
                }
            }
        }
        entries.sort_unstable();
        let mut reported = 0;
        for a in 0..entries.len() {
            let (f, _, hi, i, j, _) = entries[a];
            for &(f2, lo2, _, i2, j2, k2) in &entries[a + 1..] {
                if f2 != f || lo2 > hi {
                    break;
                }
                if i2 == i {
                    continue;
                }
                let (e1, e2) = (&self.c.tunnels[i].spd[j], &self.c.tunnels[i2].spd[j2]);
                let local_overlap = e1.local.iter().any(|p| e2.local.iter().any(|q| p.overlaps(q)));
                if local_overlap && reported < 20 {
                    reported += 1;
                    self.warn(
                        format!("tunnel[{i2}].spd[{j2}].remote[{k2}]"),
                        format!(
                            "overlaps tunnel[{i}].spd[{j}] (tunnel `{}`) for the same local prefixes; which tunnel carries the traffic is ambiguous",
                            self.c.tunnels[i].name
                        ),
                    );
                }
            }
        }
    }

    fn route_tables(&mut self, tunnels: &HashMap<&str, usize>, lans: &HashMap<&str, usize>) {
        let c = self.c;
        let g = &c.gateway;
        // Sorted peer addresses, for "does this prefix contain a customer gateway?" in log time.
        let mut peers: Vec<((bool, u128), usize)> = c
            .customer_gateways
            .iter()
            .enumerate()
            .filter_map(|(i, cg)| Some((ip_key(cg.address.ip()?), i)))
            .collect();
        peers.sort_unstable();
        let mut ids: HashMap<u32, usize> = HashMap::new();
        let mut lan_table: HashMap<&str, usize> = HashMap::new();
        let mut routed_tunnels = vec![false; c.tunnels.len()];
        for (ti, t) in c.route_tables.iter().enumerate() {
            let base = format!("route_table[{ti}]");
            match t.id {
                0 | 253..=255 => self.err(
                    format!("{base}.id"),
                    format!("table {} is reserved by the kernel (0 unspec, 253 default, 254 main, 255 local); choose 1–251 or 256 and above", t.id),
                ),
                PEER_ROUTE_TABLE => self.err(
                    format!("{base}.id"),
                    format!("table {PEER_ROUTE_TABLE} is Isthmus's own (the WAN's path to customer gateways with address \"any\" or a DNS name); choose 1–251 or 256 and above"),
                ),
                _ => {}
            }
            if let Some(first) = ids.insert(t.id, ti) {
                self.err(
                    format!("{base}.id"),
                    format!("table id {} is already used by route_table[{first}]", t.id),
                );
            }
            for (k, l) in t.lans.iter().enumerate() {
                if self.refer(format!("{base}.lans[{k}]"), "LAN", l, lans).is_some()
                    && let Some(first) = lan_table.insert(l.as_str(), ti)
                {
                    self.err(
                        format!("{base}.lans[{k}]"),
                        format!(
                            "LAN `{l}` already looks up route_table[{first}]; a LAN uses one table"
                        ),
                    );
                }
            }
            let mut seen: HashMap<(Prefix, u32), usize> = HashMap::new();
            for (ri, r) in t.routes.iter().enumerate() {
                let path = format!("{base}.route[{ri}]");
                if let Some(first) = seen.insert((r.prefix, r.metric), ri) {
                    self.err(
                        path.clone(),
                        format!(
                            "route[{first}] has the same prefix {} and metric {}; give the standby route a higher metric",
                            r.prefix, r.metric
                        ),
                    );
                }
                match r.next_hop() {
                    None => self.err(
                        path,
                        "a route needs exactly one next hop: `tunnel`, or `interface` (optionally with `via`), or `via`",
                    ),
                    Some(NextHop::Tunnel(name)) => {
                        let Some(k) = self.refer(format!("{path}.tunnel"), "tunnel", name, tunnels) else {
                            continue;
                        };
                        routed_tunnels[k] = true;
                        self.route_into_tunnel(&path, r, k, &peers);
                    }
                    Some(NextHop::Interface(name, via)) => {
                        let lan = g.lans.iter().find(|l| l.name == name || l.interface == name);
                        let known = lan.is_some()
                            || name == g.wan.interface
                            || (!c.tunnels.is_empty() && name == crate::TUN_DEVICE);
                        if !known {
                            let mut names: Vec<&str> = g.lans.iter().map(|l| l.name.as_str()).collect();
                            names.push(&g.wan.interface);
                            self.err(
                                format!("{path}.interface"),
                                format!("`{name}` is neither a LAN nor an interface of this gateway; known: {}", list(&names)),
                            );
                        }
                        if let (Some(v), Some(l)) = (via, lan)
                            && !l.addresses.iter().any(|a| a.network().contains(v))
                        {
                            self.err(format!("{path}.via"), format!("{v} is not on LAN `{}`'s link", l.name));
                        }
                    }
                    Some(NextHop::Address(v)) => {
                        let on_link = g.wan.address.network().contains(v)
                            || g.lans.iter().any(|l| l.addresses.iter().any(|a| a.network().contains(v)));
                        if !on_link {
                            self.err(
                                format!("{path}.via"),
                                format!("{v} is on no interface's link; name the `interface` or fix the address"),
                            );
                        }
                    }
                }
            }
        }
        for (i, t) in c.tunnels.iter().enumerate() {
            if t.mode == Mode::Route && !routed_tunnels[i] {
                self.warn(
                    format!("tunnel[{i}].mode"),
                    "no route points into this route-mode tunnel: it carries no traffic",
                );
            }
        }
    }

    /// A route into a tunnel must not cover the address its own packets go to.
    fn route_into_tunnel(
        &mut self,
        path: &str,
        r: &Route,
        tunnel: usize,
        peers: &[((bool, u128), usize)],
    ) {
        let c = self.c;
        let t = &c.tunnels[tunnel];
        let own = self.peer_of[tunnel].map(|i| &c.customer_gateways[i]);
        if let Some((cg, a)) = own.and_then(|cg| Some((cg, cg.address.ip()?)))
            && r.prefix.contains(a)
        {
            self.err(
                format!("{path}.prefix"),
                format!(
                    "{} contains {}, the address of customer gateway `{}`, and sends it into tunnel `{}` that runs to that address: \
                     the tunnel's own IKE and ESP packets would loop. Narrow the prefix or route it elsewhere",
                    r.prefix, a, cg.name, t.name
                ),
            );
        }
        if r.prefix.contains(c.gateway.wan.next_hop) {
            self.err(
                format!("{path}.prefix"),
                format!("{} contains the WAN next hop {}; every tunnel's outer packets would enter tunnel `{}`", r.prefix, c.gateway.wan.next_hop, t.name),
            );
        }
        let (f, lo, hi) = lower_upper(&r.prefix);
        let start = peers.partition_point(|(k, _)| *k < (f, lo));
        for ((pf, a), i) in &peers[start..] {
            if *pf != f || *a > hi {
                break;
            }
            let cg = &c.customer_gateways[*i];
            if own.is_some_and(|o| o.name == cg.name) {
                continue;
            }
            self.warn(
                format!("{path}.prefix"),
                format!("{} contains customer gateway `{}`'s address {}: its tunnels' packets would enter tunnel `{}`", r.prefix, cg.name, cg.address, t.name),
            );
        }
    }

    fn filters(&mut self, tunnels: &HashMap<&str, usize>, lans: &HashMap<&str, usize>) {
        let c = self.c;
        for (i, sg) in c.security_groups.iter().enumerate() {
            let base = format!("security_group[{i}]");
            for (k, t) in sg.tunnels.iter().enumerate() {
                self.refer(format!("{base}.tunnels[{k}]"), "tunnel", t, tunnels);
            }
            for (k, l) in sg.lans.iter().enumerate() {
                self.refer(format!("{base}.lans[{k}]"), "LAN", l, lans);
            }
            if sg.tunnels.is_empty() && sg.lans.is_empty() {
                self.warn(base.clone(), "bound to no tunnel and no LAN: it filters nothing");
            }
            self.rules(&base, &sg.rules);
        }
        for (i, acl) in c.network_acls.iter().enumerate() {
            let base = format!("network_acl[{i}]");
            for (k, l) in acl.lans.iter().enumerate() {
                self.refer(format!("{base}.lans[{k}]"), "LAN", l, lans);
            }
            if acl.lans.is_empty() {
                self.warn(format!("{base}.lans"), "bound to no LAN: it filters nothing");
            }
            self.rules(&base, &acl.rules);
        }
    }

    fn rules(&mut self, base: &str, rules: &[Rule]) {
        let mut prio: HashMap<u32, usize> = HashMap::new();
        for (k, r) in rules.iter().enumerate() {
            let path = format!("{base}.rule[{k}]");
            if let Some(first) = prio.insert(r.priority, k) {
                self.err(
                    format!("{path}.priority"),
                    format!("priority {} is already used by rule[{first}]; the order would be ambiguous", r.priority),
                );
            }
            if !r.protocol.has_ports() && !r.ports.is_any() {
                self.err(
                    format!("{path}.ports"),
                    format!("ports are given but protocol `{}` has none; set protocol = \"tcp\" or \"udp\"", r.protocol),
                );
            }
        }
        // A rule behind a catch-all of the same direction never matches.
        for (k, r) in rules.iter().enumerate() {
            let shadow = rules.iter().enumerate().find(|(_, o)| {
                o.priority < r.priority
                    && o.direction == r.direction
                    && o.protocol == crate::types::Protocol::Any
                    && o.source.is_empty()
                    && o.destination.is_empty()
                    && o.ports.is_any()
            });
            if let Some((s, o)) = shadow {
                self.warn(
                    format!("{base}.rule[{k}]"),
                    format!("never matches: rule[{s}] (priority {}) matches every packet in this direction first", o.priority),
                );
            }
        }
    }

    fn plugins(
        &mut self,
        keys: &HashMap<&str, usize>,
        tunnels: &HashMap<&str, usize>,
        sgs: &HashMap<&str, usize>,
        alarms: &HashMap<&str, usize>,
    ) {
        let c = self.c;
        for (i, k) in c.trusted_keys.iter().enumerate() {
            if k.key_bytes().is_none() {
                self.err(
                    format!("trusted_key[{i}].public_key"),
                    "not an Ed25519 public key: expected 64 hex digits or base64 of 32 bytes",
                );
            }
        }
        for (i, p) in c.plugins.iter().enumerate() {
            let base = format!("plugin[{i}]");
            if p.plugin.trim().is_empty() {
                self.err(format!("{base}.plugin"), "name the uploaded plugin");
            }
            let hex = p.digest.strip_prefix("sha256:").unwrap_or("");
            if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                self.err(
                    format!("{base}.digest"),
                    "expected `sha256:` and 64 hex digits (as `isthmus plugin upload` prints)",
                );
            }
            if c.trusted_keys.is_empty() {
                self.err(format!("{base}.signed_by"), "no [[trusted_key]] is configured: plugins must be signed by a trusted key to load");
            }
            for (k, s) in p.signed_by.iter().enumerate() {
                self.refer(format!("{base}.signed_by[{k}]"), "trusted key", s, keys);
            }
            let (what, known) = match p.hook {
                Hook::Spd => ("tunnel", tunnels),
                Hook::SecurityGroup => ("security group", sgs),
                Hook::Alarm => ("alarm", alarms),
            };
            for (k, t) in p.targets.iter().enumerate() {
                self.refer(format!("{base}.targets[{k}]"), what, t, known);
            }
        }
    }

    fn alarms(&mut self, tunnels: &HashMap<&str, usize>, notify: &HashMap<&str, usize>) {
        let c = self.c;
        for (i, a) in c.alarms.iter().enumerate() {
            let base = format!("alarm[{i}]");
            let mut watched = Vec::new();
            for (k, t) in a.tunnels.iter().enumerate() {
                if let Some(ti) = self.refer(format!("{base}.tunnels[{k}]"), "tunnel", t, tunnels) {
                    watched.push((k, ti));
                }
            }
            for (k, n) in a.notify.iter().enumerate() {
                self.refer(format!("{base}.notify[{k}]"), "notify target", n, notify);
            }
            if a.notify.is_empty() {
                self.warn(
                    format!("{base}.notify"),
                    "notifies nobody: the alarm is only logged and shown",
                );
            }
            match (a.kind, a.threshold) {
                (AlarmKind::HealthLoss, None) | (AlarmKind::HealthLatency, None) => {
                    self.err(format!("{base}.threshold"), "required for this kind: percent of lost probes (health-loss) or milliseconds (health-latency)");
                }
                (AlarmKind::HealthLoss, Some(t)) if t == 0 || t > 100 => {
                    self.err(
                        format!("{base}.threshold"),
                        format!("{t} is not a percentage of lost probes (1–100)"),
                    );
                }
                (AlarmKind::HealthLatency, Some(0)) => {
                    self.err(
                        format!("{base}.threshold"),
                        "a latency threshold of 0 ms always fires",
                    );
                }
                (k, Some(_)) if !k.needs_health_check() => {
                    self.warn(format!("{base}.threshold"), "ignored for this kind of alarm");
                }
                _ => {}
            }
            if a.kind.needs_health_check() {
                for (k, ti) in &watched {
                    if c.tunnels[*ti].health_check.is_none() {
                        self.err(
                            format!("{base}.tunnels[{k}]"),
                            format!(
                                "tunnel `{}` has no health_check, which this alarm reads",
                                c.tunnels[*ti].name
                            ),
                        );
                    }
                }
                if a.tunnels.is_empty() && !c.tunnels.iter().any(|t| t.health_check.is_some()) {
                    self.warn(base, "no tunnel has a health_check: this alarm can never fire");
                }
            }
        }
    }

    fn notify(&mut self) {
        for (i, n) in self.c.notify.iter().enumerate() {
            let path = format!("notify[{i}].webhook");
            let rest =
                n.webhook.strip_prefix("https://").or_else(|| n.webhook.strip_prefix("http://"));
            match rest {
                Some(r) if !r.is_empty() && !r.starts_with('/') => {
                    if n.webhook.starts_with("http://") {
                        self.warn(
                            path,
                            "plain http: alarm details cross the network unencrypted; use https",
                        );
                    }
                }
                _ => self.err(
                    path,
                    format!("`{}` is not an http:// or https:// URL with a host", n.webhook),
                ),
            }
            if n.timeout.is_zero() {
                self.err(format!("notify[{i}].timeout"), "must be more than 0");
            }
            if n.retries > 20 {
                self.err(format!("notify[{i}].retries"), "at most 20");
            }
            if let Err(why) = n.ca_certificates() {
                self.err(format!("notify[{i}].ca"), why);
            }
        }
    }

    fn api_tokens(&mut self) {
        let mut hashes: HashMap<String, usize> = HashMap::new();
        for (i, t) in self.c.api_tokens.iter().enumerate() {
            let base = format!("api_token[{i}]");
            match (&t.token_hash, &t.token) {
                (Some(_), Some(_)) | (None, None) => self.err(
                    base.clone(),
                    "give exactly one of `token_hash` (\"sha256:...\", as `isthmus token hash` prints) or `token` (a secret reference)",
                ),
                (Some(h), None) => {
                    let hex = h.strip_prefix("sha256:").unwrap_or("");
                    if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                        self.err(format!("{base}.token_hash"), "expected `sha256:` and 64 hex digits");
                    } else if let Some(first) = hashes.insert(hex.to_ascii_lowercase(), i) {
                        self.err(format!("{base}.token_hash"), format!("the same token as api_token[{first}]"));
                    }
                }
                (None, Some(s)) => {
                    if s.inline_len().is_some() {
                        self.warn(
                            format!("{base}.token"),
                            "an inline token is stored in every revision; store only its hash in `token_hash`",
                        );
                    }
                }
            }
        }
        if !self.c.api_tokens.iter().any(|t| t.role == Role::Admin) {
            self.warn(
                "api_token",
                "no admin token: the configuration cannot be changed through the API",
            );
        }
    }
}
