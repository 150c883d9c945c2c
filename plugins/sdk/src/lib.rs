//! Guest SDK for Isthmus policy plugins.
//!
//! A plugin crate generates its world's bindings itself (`wit_bindgen::generate!` at the crate
//! root, `path` pointing at the repository's `wit/`), then uses this crate for the parts every
//! plugin needs:
//!
//! - [`net`]: IP addresses, prefixes and port ranges as plain Rust values;
//! - [`config`]: the small TOML subset plugin configurations use (`host.config()` returns it);
//! - [`sg`]: cloud security-group semantics (the default `security-group` plugin's compiler, for
//!   plugins that extend it, like the `time-of-day` example);
//! - [`sg_conversions!`]: conversions between the generated `security-group` types and [`sg`].
//!
//! Plugins must be deterministic and self-contained: the host gives them no filesystem, network,
//! clock (unless the manifest asks for the `clock` capability) or randomness, so use `BTreeMap`
//! rather than `HashMap` (whose random seed would trap).

pub mod config;
pub mod net;
pub mod sg;

/// Conversions between the bindings `wit_bindgen::generate!` made for a world that exports
/// `isthmus:policy/security-group` and the plain types of [`sg`]. Invoke at the crate root, after
/// `generate!`. Defines a private module `sgconv` with `groups_in`, `chains_out`.
#[macro_export]
#[allow(clippy::crate_in_macro_def)] // `crate` is the plugin's: its generated bindings
macro_rules! sg_conversions {
    () => {
        mod sgconv {
            use crate::exports::isthmus::policy::security_group as g;
            use crate::isthmus::policy::types as t;
            use $crate::net::{Ip, Net, Ports};
            use $crate::sg;

            pub fn ip_in(a: t::IpAddr) -> Ip {
                match a {
                    t::IpAddr::V4(v) => Ip::v4(v),
                    t::IpAddr::V6((hi, lo)) => Ip::v6(u128::from(hi) << 64 | u128::from(lo)),
                }
            }

            pub fn ip_out(a: Ip) -> t::IpAddr {
                if a.v6 {
                    t::IpAddr::V6(((a.bits >> 64) as u64, a.bits as u64))
                } else {
                    t::IpAddr::V4(a.bits as u32)
                }
            }

            pub fn net_in(p: t::Prefix) -> Net {
                Net { ip: ip_in(p.addr), len: p.len }
            }

            pub fn net_out(n: Net) -> t::Prefix {
                t::Prefix { addr: ip_out(n.ip), len: n.len }
            }

            fn dir_in(d: t::Direction) -> sg::Dir {
                match d {
                    t::Direction::Inbound => sg::Dir::Inbound,
                    t::Direction::Outbound => sg::Dir::Outbound,
                }
            }

            fn dir_out(d: sg::Dir) -> t::Direction {
                match d {
                    sg::Dir::Inbound => t::Direction::Inbound,
                    sg::Dir::Outbound => t::Direction::Outbound,
                }
            }

            fn act_in(a: g::RuleAction) -> sg::Act {
                match a {
                    g::RuleAction::Allow => sg::Act::Allow,
                    g::RuleAction::Deny => sg::Act::Deny,
                    g::RuleAction::Punt => sg::Act::Punt,
                }
            }

            fn act_out(a: sg::Act) -> g::RuleAction {
                match a {
                    sg::Act::Allow => g::RuleAction::Allow,
                    sg::Act::Deny => g::RuleAction::Deny,
                    sg::Act::Punt => g::RuleAction::Punt,
                }
            }

            fn ports_in(p: t::PortRange) -> Ports {
                Ports { first: p.first, last: p.last }
            }

            fn ports_out(p: Ports) -> t::PortRange {
                t::PortRange { first: p.first, last: p.last }
            }

            fn rule_in(r: g::Rule) -> sg::Rule {
                sg::Rule {
                    id: r.id,
                    priority: r.priority,
                    direction: dir_in(r.direction),
                    action: act_in(r.action),
                    protocol: r.protocol,
                    peer: net_in(r.peer),
                    ports: ports_in(r.ports),
                }
            }

            pub fn groups_in(groups: Vec<g::Group>) -> Vec<sg::Group> {
                groups
                    .into_iter()
                    .map(|x| sg::Group {
                        name: x.name,
                        attach: x.attach,
                        rules: x.rules.into_iter().map(rule_in).collect(),
                    })
                    .collect()
            }

            pub fn acls_in(acls: Vec<g::Acl>) -> Vec<sg::Group> {
                acls.into_iter()
                    .map(|x| sg::Group {
                        name: x.name,
                        attach: x.attach,
                        rules: x.rules.into_iter().map(rule_in).collect(),
                    })
                    .collect()
            }

            pub fn chains_out(chains: Vec<sg::Chain>) -> Vec<g::Chain> {
                chains
                    .into_iter()
                    .map(|c| g::Chain {
                        attachment: c.attachment,
                        kind: match c.kind {
                            sg::Kind::SecurityGroup => g::ChainKind::SecurityGroup,
                            sg::Kind::NetworkAcl => g::ChainKind::NetworkAcl,
                        },
                        direction: dir_out(c.direction),
                        rules: c
                            .rules
                            .into_iter()
                            .map(|r| g::TableRule {
                                src: net_out(r.src),
                                dst: net_out(r.dst),
                                protocol: r.protocol,
                                src_ports: ports_out(r.src_ports),
                                dst_ports: ports_out(r.dst_ports),
                                action: act_out(r.action),
                                rule: r.rule,
                            })
                            .collect(),
                        default_action: act_out(c.default_action),
                        default_rule: c.default_rule,
                    })
                    .collect()
            }
        }
    };
}
