//! The security policy database (RFC 4301 §4.4.1): an ordered table of selectors, each mapping to
//! protect (through a tunnel's CHILD SA), bypass or discard.
//!
//! The table is a plain, immutable list evaluated first-match (RFC 4301 §4.4.1: the SPD is
//! ordered and the first matching entry decides). The control plane (and later the `spd` policy
//! plugins) builds a new [`SpdTable`] with a higher generation and publishes it whole; the
//! dataplane never edits one in place.
//!
//! Selectors are written from this gateway's point of view: `local` is the protected network
//! behind this gateway, `remote` the one behind the peer. An outbound packet (LAN to tunnel)
//! matches when its source is local and its destination remote ([`SpdTable::lookup`]); a packet
//! that came out of a tunnel matches the mirror image ([`Selector::matches_inbound`]).

use crate::types::{FlowKey, PortRange, Prefix};

/// One traffic selector pair (RFC 4301 §4.4.1.1): addresses, next-layer protocol and ports.
///
/// For ICMP the port ranges carry the type (`local_ports`, as the source port of an outbound
/// packet) and code, as [`FlowKey`] does.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Selector {
    /// Addresses behind this gateway.
    pub local: Prefix,
    /// Addresses behind the peer.
    pub remote: Prefix,
    /// IP protocol number, or `None` for any protocol.
    pub proto: Option<u8>,
    /// Ports on the local side.
    pub local_ports: PortRange,
    /// Ports on the remote side.
    pub remote_ports: PortRange,
}

impl Selector {
    /// Every packet between two prefixes, any protocol and port.
    pub fn between(local: Prefix, remote: Prefix) -> Selector {
        Selector {
            local,
            remote,
            proto: None,
            local_ports: PortRange::ANY,
            remote_ports: PortRange::ANY,
        }
    }

    /// True when `flow`, a packet leaving towards the peer, falls inside this selector.
    pub fn matches_outbound(&self, flow: &FlowKey) -> bool {
        self.local.contains(flow.src)
            && self.remote.contains(flow.dst)
            && self.proto_and_ports(flow.proto, flow.src_port, flow.dst_port)
    }

    /// True when `flow`, a packet that arrived from the peer, falls inside this selector.
    pub fn matches_inbound(&self, flow: &FlowKey) -> bool {
        self.remote.contains(flow.src)
            && self.local.contains(flow.dst)
            && self.proto_and_ports(flow.proto, flow.dst_port, flow.src_port)
    }

    fn proto_and_ports(&self, proto: u8, local_port: u16, remote_port: u16) -> bool {
        match self.proto {
            None => true,
            Some(p) if p != proto => false,
            Some(_) => {
                self.local_ports.contains(local_port) && self.remote_ports.contains(remote_port)
            }
        }
    }
}

/// What to do with a packet that matches an entry (RFC 4301 §4.4.1: PROTECT, BYPASS, DISCARD).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum SpdAction {
    /// Send it through the CHILD SA `child` of tunnel `tunnel`. With no usable SA the packet is
    /// dropped (never sent in clear) and the control plane is asked to negotiate one.
    Protect {
        /// The tunnel's name in the configuration.
        tunnel: String,
        /// The CHILD SA's name within the tunnel.
        child: String,
    },
    /// Forward it unprotected.
    Bypass,
    /// Drop it.
    Discard,
}

/// One row of the table.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct SpdEntry {
    /// Which rule produced this entry (for explanations: "matched rule `office-lan`").
    pub id: String,
    /// The packets it applies to.
    pub selector: Selector,
    /// What happens to them.
    pub action: SpdAction,
}

/// An immutable, ordered SPD with the generation it was published as.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SpdTable {
    /// Increases with each table the control plane publishes; cached verdicts remember it.
    pub generation: u64,
    /// Evaluated in order, first match wins.
    pub entries: Vec<SpdEntry>,
}

impl SpdTable {
    /// A table of `entries` published as `generation`.
    pub fn new(generation: u64, entries: Vec<SpdEntry>) -> SpdTable {
        SpdTable { generation, entries }
    }

    /// The first entry whose selector matches an outbound packet, with its index.
    pub fn lookup(&self, flow: &FlowKey) -> Option<(usize, &SpdEntry)> {
        self.entries.iter().enumerate().find(|(_, e)| e.selector.matches_outbound(flow))
    }

    /// The first entry whose selector matches a packet that arrived from a peer.
    pub fn lookup_inbound(&self, flow: &FlowKey) -> Option<(usize, &SpdEntry)> {
        self.entries.iter().enumerate().find(|(_, e)| e.selector.matches_inbound(flow))
    }

    /// Indices of the entries that protect through `tunnel`/`child`.
    pub fn entries_for<'a>(
        &'a self,
        tunnel: &'a str,
        child: &'a str,
    ) -> impl Iterator<Item = usize> + 'a {
        self.entries.iter().enumerate().filter_map(move |(i, e)| match &e.action {
            SpdAction::Protect { tunnel: t, child: c } if t == tunnel && c == child => Some(i),
            _ => None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::IpAddr;

    fn p(s: &str) -> Prefix {
        s.parse().unwrap()
    }

    fn flow(src: &str, dst: &str, proto: u8, sp: u16, dp: u16) -> FlowKey {
        FlowKey {
            src: src.parse::<IpAddr>().unwrap(),
            dst: dst.parse::<IpAddr>().unwrap(),
            proto,
            src_port: sp,
            dst_port: dp,
        }
    }

    fn protect(id: &str, sel: Selector, child: &str) -> SpdEntry {
        SpdEntry {
            id: id.into(),
            selector: sel,
            action: SpdAction::Protect { tunnel: "t1".into(), child: child.into() },
        }
    }

    fn table() -> SpdTable {
        let mut web = Selector::between(p("10.1.0.0/16"), p("10.2.0.0/16"));
        web.proto = Some(6);
        web.remote_ports = PortRange::single(443);
        SpdTable::new(
            7,
            vec![
                SpdEntry {
                    id: "mgmt-bypass".into(),
                    selector: Selector::between(p("10.1.0.5/32"), p("10.2.0.0/16")),
                    action: SpdAction::Bypass,
                },
                protect("web", web, "web"),
                protect("office", Selector::between(p("10.1.0.0/16"), p("10.2.0.0/16")), "all"),
                SpdEntry {
                    id: "default-discard".into(),
                    selector: Selector::between(p("0.0.0.0/0"), p("0.0.0.0/0")),
                    action: SpdAction::Discard,
                },
            ],
        )
    }

    #[test]
    fn first_match_wins_rfc4301_4_4_1() {
        let t = table();
        // The bypass entry shadows the later protect entries for its host.
        assert_eq!(t.lookup(&flow("10.1.0.5", "10.2.3.4", 6, 999, 443)).unwrap().0, 0);
        // TCP to 443 takes the narrower `web` child, anything else the `all` child.
        let (i, e) = t.lookup(&flow("10.1.0.6", "10.2.3.4", 6, 999, 443)).unwrap();
        assert_eq!((i, e.id.as_str()), (1, "web"));
        assert_eq!(t.lookup(&flow("10.1.0.6", "10.2.3.4", 6, 999, 80)).unwrap().1.id, "office");
        assert_eq!(t.lookup(&flow("10.1.0.6", "10.2.3.4", 1, 8, 0)).unwrap().1.id, "office");
        assert_eq!(
            t.lookup(&flow("192.0.2.1", "10.2.3.4", 17, 1, 2)).unwrap().1.id,
            "default-discard"
        );
        // IPv6 matches no IPv4 selector.
        assert!(t.lookup(&flow("2001:db8::1", "2001:db8::2", 17, 1, 2)).is_none());
    }

    #[test]
    fn inbound_is_the_mirror_image() {
        let t = table();
        let out = flow("10.1.0.6", "10.2.3.4", 6, 999, 443);
        let back = out.reversed();
        assert_eq!(t.lookup_inbound(&back).unwrap().1.id, "web");
        assert!(t.entries[1].selector.matches_inbound(&back));
        assert!(!t.entries[1].selector.matches_outbound(&back));
        assert!(!t.entries[1].selector.matches_inbound(&out));
    }

    #[test]
    fn entries_for_a_child() {
        let t = table();
        assert_eq!(t.entries_for("t1", "all").collect::<Vec<_>>(), vec![2]);
        assert_eq!(t.entries_for("t2", "all").count(), 0);
    }

    #[test]
    fn empty_table_matches_nothing() {
        assert!(SpdTable::default().lookup(&flow("10.0.0.1", "10.0.0.2", 6, 1, 2)).is_none());
    }
}
