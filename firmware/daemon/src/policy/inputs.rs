//! What the tables are compiled from, planned from the configuration: the SPD from the
//! tunnels the IKE driver is to run, the security groups and network ACLs with their
//! attachments, and the LANs.

use std::collections::BTreeMap;

use isthmus_config::Config;
use isthmus_ike::TunnelConfig;
use isthmus_policy::{SgGroup, SgRule, SpdPolicy};
use isthmus_tables::sg::{Action, Direction};
use isthmus_tables::{PortRange, Prefix};

/// What the tables are compiled from (all of it planned from the configuration by
/// [`Policy::refresh`]).
#[derive(Default)]
pub(super) struct Inputs {
    /// Per tunnel the driver runs: its SPD policies and CHILD SA names.
    pub(super) spd: BTreeMap<String, (Vec<SpdPolicy>, Vec<String>)>,
    pub(super) groups: Vec<SgGroup>,
    pub(super) acls: Vec<SgGroup>,
    pub(super) attachments: Vec<String>,
    /// LAN prefixes by LAN name, so LAN-bound chains apply to their hosts.
    pub(super) lans: Vec<isthmus_dataplane::LanBinding>,
}

impl Inputs {
    /// The inputs of `cfg`, whose IKE driver runs `tunnels`.
    pub(super) fn plan(cfg: &Config, tunnels: &[isthmus_tunnels::Tunnel]) -> Inputs {
        let (groups, acls) = sg_inputs(cfg);
        let attachments = cfg
            .tunnels
            .iter()
            .map(|t| t.name.clone())
            .chain(cfg.gateway.lans.iter().map(|l| l.name.clone()))
            .collect();
        let lans = cfg
            .gateway
            .lans
            .iter()
            .flat_map(|l| {
                l.all_networks()
                    .map(|prefix| isthmus_dataplane::LanBinding { prefix, name: l.name.clone() })
            })
            .collect();
        Inputs {
            spd: tunnels.iter().map(|t| (t.ike.name.clone(), spd_policies(&t.ike))).collect(),
            groups,
            acls,
            attachments,
            lans,
        }
    }
}

/// The `spd` hook's input for one tunnel: the driver's `protect` entries
/// ([`isthmus_tunnels::spd_entries`], RFC 4301 §4.4.1.1) with no explicit priority (the plugin
/// orders them), and the tunnel's CHILD SA names.
pub(super) fn spd_policies(cfg: &TunnelConfig) -> (Vec<SpdPolicy>, Vec<String>) {
    let out = isthmus_tunnels::spd_entries(cfg)
        .into_iter()
        .map(|e| SpdPolicy { id: e.id, selector: e.selector, action: e.action, priority: None })
        .collect();
    (out, cfg.children.iter().map(|c| c.name.clone()).collect())
}

pub(super) fn any_prefixes() -> [Prefix; 2] {
    [
        Prefix::new(std::net::Ipv4Addr::UNSPECIFIED.into(), 0)
            .unwrap_or(Prefix::host(std::net::Ipv4Addr::UNSPECIFIED.into())),
        Prefix::new(std::net::Ipv6Addr::UNSPECIFIED.into(), 0)
            .unwrap_or(Prefix::host(std::net::Ipv6Addr::UNSPECIFIED.into())),
    ]
}

/// One configuration rule in the hook's cloud form: one rule per peer prefix (the source of an
/// `in` rule, the destination of an `out` rule; any IPv4 and any IPv6 when none is given). The
/// prefixes on the bound side (an `in` rule's destination, an `out` rule's source) have no place
/// in that form: traffic there is the attachment's own by construction, so they are not used.
pub(super) fn cloud_rules(r: &isthmus_config::Rule, out: &mut Vec<SgRule>) {
    let direction = match r.direction {
        isthmus_config::Direction::In => Direction::Inbound,
        isthmus_config::Direction::Out => Direction::Outbound,
    };
    let peers: Vec<Prefix> = match direction {
        Direction::Inbound => r.source.clone(),
        Direction::Outbound => r.destination.clone(),
    };
    let peers = if peers.is_empty() { any_prefixes().to_vec() } else { peers };
    let single = peers.len() == 1;
    for (k, peer) in peers.into_iter().enumerate() {
        out.push(SgRule {
            id: if single { r.priority.to_string() } else { format!("{}#{k}", r.priority) },
            priority: r.priority,
            direction,
            action: match r.action {
                isthmus_config::Action::Allow => Action::Allow,
                isthmus_config::Action::Deny => Action::Deny,
            },
            protocol: r.protocol.number(),
            peer,
            ports: if r.protocol.has_ports() { r.ports } else { PortRange::ANY },
        });
    }
}

/// Rules that give a group the configuration's `default_action` where the hook's cloud defaults
/// (security groups: inbound deny, outbound allow; ACLs: deny) differ: catch-alls after every
/// other rule.
pub(super) fn defaults(
    default: isthmus_config::Action,
    cloud_in: Action,
    cloud_out: Action,
    out: &mut Vec<SgRule>,
) {
    let want = match default {
        isthmus_config::Action::Allow => Action::Allow,
        isthmus_config::Action::Deny => Action::Deny,
    };
    for (dir, cloud, tag) in
        [(Direction::Inbound, cloud_in, "in"), (Direction::Outbound, cloud_out, "out")]
    {
        if cloud == want {
            continue;
        }
        for (k, peer) in any_prefixes().into_iter().enumerate() {
            out.push(SgRule {
                id: format!("default-{tag}#{k}"),
                priority: u32::MAX,
                direction: dir,
                action: want,
                protocol: None,
                peer,
                ports: PortRange::ANY,
            });
        }
    }
}

/// The `security-group` hook's input from the configuration.
pub(super) fn sg_inputs(cfg: &Config) -> (Vec<SgGroup>, Vec<SgGroup>) {
    let groups = cfg
        .security_groups
        .iter()
        .map(|g| {
            let mut rules = Vec::new();
            for r in &g.rules {
                cloud_rules(r, &mut rules);
            }
            defaults(g.default_action, Action::Deny, Action::Allow, &mut rules);
            SgGroup {
                name: g.name.clone(),
                attach: g.tunnels.iter().chain(g.lans.iter()).cloned().collect(),
                rules,
            }
        })
        .collect();
    let acls = cfg
        .network_acls
        .iter()
        .map(|a| {
            let mut rules = Vec::new();
            for r in &a.rules {
                cloud_rules(r, &mut rules);
            }
            defaults(a.default_action, Action::Deny, Action::Deny, &mut rules);
            SgGroup { name: a.name.clone(), attach: a.lans.clone(), rules }
        })
        .collect();
    (groups, acls)
}
