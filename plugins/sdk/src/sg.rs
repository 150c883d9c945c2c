//! Cloud security-group semantics, compiled into the chains the gateway evaluates natively.
//!
//! - A **security group** is stateful: replies to an allowed flow pass without rules. Its rules
//!   name a peer prefix (the source of inbound traffic, the destination of outbound traffic), a
//!   protocol and destination ports, and allow, deny or punt. Every group attached to an
//!   attachment contributes; their rules are merged in (priority, group name, rule order) order,
//!   first match wins. **Defaults, as in AWS:** inbound traffic no rule allows is denied
//!   (`sg:default-deny-inbound`); outbound traffic no rule denies is allowed
//!   (`sg:default-allow-outbound`). An attachment with no group is not filtered by groups.
//! - A **network ACL** is stateless: each packet is checked against the rules of its own
//!   direction, replies included, in (priority, rule order) order; no match is denied
//!   (`acl:NAME/default-deny`, AWS's `*` rule). An attachment has at most one ACL. ACL rules cannot
//!   punt.
//! - A rule without a protocol must not restrict ports.

use std::collections::BTreeMap;

use crate::net::{Net, Ports};

/// A rule's direction.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Dir {
    /// Into the attachment's protected side.
    Inbound,
    /// Out of it.
    Outbound,
}

/// A rule's action.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Act {
    /// Let through.
    Allow,
    /// Drop.
    Deny,
    /// Ask the plugin per new flow.
    Punt,
}

/// An operator's rule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    /// Unique within its group.
    pub id: String,
    /// Lower first.
    pub priority: u32,
    /// Direction.
    pub direction: Dir,
    /// Action.
    pub action: Act,
    /// `None` = any protocol.
    pub protocol: Option<u8>,
    /// The other end.
    pub peer: Net,
    /// Destination ports.
    pub ports: Ports,
}

/// A security group or a network ACL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Group {
    /// Its name.
    pub name: String,
    /// Tunnels or LANs it is bound to.
    pub attach: Vec<String>,
    /// Its rules.
    pub rules: Vec<Rule>,
}

/// Stateful group or stateless ACL.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    /// Stateful.
    SecurityGroup,
    /// Stateless.
    NetworkAcl,
}

/// A compiled rule over packet fields.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TableRule {
    /// Source.
    pub src: Net,
    /// Destination.
    pub dst: Net,
    /// Protocol.
    pub protocol: Option<u8>,
    /// Source ports.
    pub src_ports: Ports,
    /// Destination ports.
    pub dst_ports: Ports,
    /// Action.
    pub action: Act,
    /// Rule identifier shown in explanations.
    pub rule: String,
}

/// One attachment's rules in one direction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Chain {
    /// Tunnel or LAN.
    pub attachment: String,
    /// Group or ACL.
    pub kind: Kind,
    /// Direction.
    pub direction: Dir,
    /// First match wins.
    pub rules: Vec<TableRule>,
    /// When nothing matches.
    pub default_action: Act,
    /// Names the default.
    pub default_rule: String,
}

fn check(g: &Group, what: &str) -> Result<(), String> {
    if g.name.is_empty() {
        return Err(format!("a {what} has an empty name"));
    }
    let mut seen = BTreeMap::new();
    for r in &g.rules {
        if seen.insert(r.id.as_str(), ()).is_some() {
            return Err(format!("{what} `{}`: rule `{}` appears twice", g.name, r.id));
        }
        if !r.peer.is_valid() {
            return Err(format!(
                "{what} `{}` rule `{}`: peer {} has host bits set",
                g.name, r.id, r.peer
            ));
        }
        if r.ports.first > r.ports.last {
            return Err(format!("{what} `{}` rule `{}`: port range is reversed", g.name, r.id));
        }
        if r.protocol.is_none() && !r.ports.is_any() {
            return Err(format!(
                "{what} `{}` rule `{}`: ports need a protocol (tcp, udp, icmp)",
                g.name, r.id
            ));
        }
    }
    Ok(())
}

fn table_rule(r: &Rule, id: String) -> TableRule {
    let any = Net::any_like(r.peer.ip);
    let (src, dst) = match r.direction {
        Dir::Inbound => (r.peer, any),
        Dir::Outbound => (any, r.peer),
    };
    TableRule {
        src,
        dst,
        protocol: r.protocol,
        src_ports: Ports::ANY,
        dst_ports: r.ports,
        action: r.action,
        rule: id,
    }
}

/// Compiles groups and ACLs into chains sorted by (attachment, kind, direction).
pub fn compile(groups: &[Group], acls: &[Group]) -> Result<Vec<Chain>, String> {
    for g in groups {
        check(g, "security group")?;
    }
    for a in acls {
        check(a, "network ACL")?;
        if let Some(r) = a.rules.iter().find(|r| r.action == Act::Punt) {
            return Err(format!(
                "network ACL `{}` rule `{}`: ACLs are stateless and cannot punt",
                a.name, r.id
            ));
        }
    }
    let mut by_att: BTreeMap<&str, Vec<&Group>> = BTreeMap::new();
    for g in groups {
        for a in &g.attach {
            let v = by_att.entry(a.as_str()).or_default();
            if !v.iter().any(|x| x.name == g.name) {
                v.push(g);
            }
        }
    }
    let mut acl_of: BTreeMap<&str, &Group> = BTreeMap::new();
    for a in acls {
        for att in &a.attach {
            if let Some(prev) = acl_of.insert(att.as_str(), a)
                && prev.name != a.name
            {
                return Err(format!(
                    "attachment `{att}` has two network ACLs (`{}`, `{}`); it may have one",
                    prev.name, a.name
                ));
            }
        }
    }
    let mut out = Vec::new();
    for (att, gs) in &by_att {
        for dir in [Dir::Inbound, Dir::Outbound] {
            let mut rules: Vec<(u32, &str, usize, &Rule)> = Vec::new();
            for g in gs {
                for (i, r) in g.rules.iter().enumerate().filter(|(_, r)| r.direction == dir) {
                    rules.push((r.priority, g.name.as_str(), i, r));
                }
            }
            rules.sort_by(|a, b| (a.0, a.1, a.2).cmp(&(b.0, b.1, b.2)));
            let (default_action, default_rule) = match dir {
                Dir::Inbound => (Act::Deny, "sg:default-deny-inbound"),
                Dir::Outbound => (Act::Allow, "sg:default-allow-outbound"),
            };
            out.push(Chain {
                attachment: (*att).to_owned(),
                kind: Kind::SecurityGroup,
                direction: dir,
                rules: rules
                    .into_iter()
                    .map(|(_, g, _, r)| table_rule(r, format!("sg:{g}/{}", r.id)))
                    .collect(),
                default_action,
                default_rule: default_rule.to_owned(),
            });
        }
    }
    for (att, a) in &acl_of {
        for dir in [Dir::Inbound, Dir::Outbound] {
            let mut rules: Vec<(u32, usize, &Rule)> = a
                .rules
                .iter()
                .enumerate()
                .filter(|(_, r)| r.direction == dir)
                .map(|(i, r)| (r.priority, i, r))
                .collect();
            rules.sort_by_key(|x| (x.0, x.1));
            out.push(Chain {
                attachment: (*att).to_owned(),
                kind: Kind::NetworkAcl,
                direction: dir,
                rules: rules
                    .into_iter()
                    .map(|(_, _, r)| table_rule(r, format!("acl:{}/{}", a.name, r.id)))
                    .collect(),
                default_action: Act::Deny,
                default_rule: format!("acl:{}/default-deny", a.name),
            });
        }
    }
    out.sort_by(|a, b| {
        (&a.attachment, a.kind, a.direction).cmp(&(&b.attachment, b.kind, b.direction))
    });
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::Ip;

    #[test]
    fn cloud_defaults_and_order() {
        let r = |id: &str, prio, dir, action| Rule {
            id: id.into(),
            priority: prio,
            direction: dir,
            action,
            protocol: Some(6),
            peer: Net { ip: Ip::v4(0x0a00_0000), len: 8 },
            ports: Ports { first: 443, last: 443 },
        };
        let g = Group {
            name: "web".into(),
            attach: vec!["lan0".into()],
            rules: vec![r("b", 20, Dir::Inbound, Act::Allow), r("a", 10, Dir::Inbound, Act::Deny)],
        };
        let chains = compile(&[g], &[]).unwrap();
        assert_eq!(chains.len(), 2);
        assert_eq!(chains[0].rules[0].rule, "sg:web/a");
        assert_eq!(chains[0].default_action, Act::Deny);
        assert_eq!(chains[1].default_action, Act::Allow);
        assert_eq!(chains[0].rules[0].src.len, 8);
        assert_eq!(chains[0].rules[0].dst.len, 0);
    }
}
