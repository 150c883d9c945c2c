//! Planning: the difference between the desired state and what the kernel has, as a list of
//! changes that can be printed (a dry run) or applied. Pure: the kernel's state comes in as a
//! value, so every ownership rule is unit-tested here.

use std::collections::{HashMap, HashSet};
use std::fmt;

use isthmus_tables::Prefix;

use crate::Error;
use crate::firewall::{self, ObservedTable, Ruleset};
use crate::kernel::{KRule, LINK_ALIAS, Observed};
use crate::state::{Address, DesiredState, LinkKind, NextHop, Route, RouteKey, Rule};

/// One change to the kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// Create a TUN or dummy device.
    CreateLink {
        /// Interface name.
        name: String,
        /// What to create.
        kind: LinkKind,
    },
    /// Set a link's admin state and/or MTU (and mark links Isthmus created).
    ConfigureLink {
        /// Interface name.
        name: String,
        /// New admin state (`None`: unchanged).
        up: Option<bool>,
        /// New MTU (`None`: unchanged).
        mtu: Option<u32>,
        /// Set the ownership alias.
        mark: bool,
    },
    /// Delete a link Isthmus created that is no longer wanted.
    DeleteLink {
        /// Interface name.
        name: String,
    },
    /// Add an address.
    AddAddress(Address),
    /// Remove one of Isthmus's addresses.
    DeleteAddress(Address),
    /// Add a route.
    AddRoute(Route),
    /// Change the next hop of one of Isthmus's routes.
    ReplaceRoute {
        /// The next hop the kernel has (`None`: a shape Isthmus never installs).
        old: Option<NextHop>,
        /// The route as it should be.
        new: Route,
    },
    /// Delete one of Isthmus's routes.
    DeleteRoute {
        /// Table.
        table: u32,
        /// Destination.
        dst: Prefix,
        /// Metric.
        metric: u32,
        /// The next hop it had, for the record.
        via: Option<NextHop>,
    },
    /// Add a rule (for one address family).
    AddRule {
        /// IPv4 (else IPv6).
        ipv4: bool,
        /// The rule.
        rule: Rule,
    },
    /// Delete one of Isthmus's rules.
    DeleteRule {
        /// IPv4 (else IPv6).
        ipv4: bool,
        /// The rule.
        rule: Rule,
    },
    /// Replace the `inet isthmus` nftables table.
    ReplaceFirewall {
        /// What differs.
        reason: String,
    },
    /// Remove the `inet isthmus` nftables table.
    RemoveFirewall,
}

fn fam(ipv4: bool) -> &'static str {
    if ipv4 { "-4" } else { "-6" }
}

fn via_text(v: &Option<NextHop>) -> String {
    v.as_ref().map_or_else(|| "(unmanaged shape)".to_owned(), ToString::to_string)
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Change::CreateLink { name, kind } => match kind {
                LinkKind::Tun { multi_queue: true } => write!(f, "+ link {name} (tun multi_queue)"),
                LinkKind::Tun { .. } => write!(f, "+ link {name} (tun)"),
                LinkKind::Dummy => write!(f, "+ link {name} (dummy)"),
                LinkKind::Existing => write!(f, "+ link {name}"),
            },
            Change::ConfigureLink { name, up, mtu, mark } => {
                write!(f, "~ link {name}")?;
                if let Some(u) = up {
                    write!(f, " {}", if *u { "up" } else { "down" })?;
                }
                if let Some(m) = mtu {
                    write!(f, " mtu {m}")?;
                }
                if *mark {
                    write!(f, " alias {LINK_ALIAS}")?;
                }
                Ok(())
            }
            Change::DeleteLink { name } => write!(f, "- link {name}"),
            Change::AddAddress(a) => write!(f, "+ address {a}"),
            Change::DeleteAddress(a) => write!(f, "- address {a}"),
            Change::AddRoute(r) => write!(f, "+ route {r}"),
            Change::ReplaceRoute { old, new } => {
                write!(f, "~ route {new} (was {})", via_text(old))
            }
            Change::DeleteRoute { table, dst, metric, via } => {
                write!(f, "- route {dst} {} table {table} metric {metric}", via_text(via))
            }
            Change::AddRule { ipv4, rule } => write!(f, "+ rule {} {rule}", fam(*ipv4)),
            Change::DeleteRule { ipv4, rule } => write!(f, "- rule {} {rule}", fam(*ipv4)),
            Change::ReplaceFirewall { reason } => {
                write!(f, "~ firewall table inet {} ({reason})", firewall::TABLE)
            }
            Change::RemoveFirewall => write!(f, "- firewall table inet {}", firewall::TABLE),
        }
    }
}

/// A difference between the desired state and the kernel, for reporting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Drift {
    /// What it is about (`route 10.1.0.0/16 table 100 metric 0`).
    pub object: String,
    /// What the desired state says.
    pub expected: String,
    /// What the kernel has.
    pub found: String,
}

impl fmt::Display for Drift {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: expected {}, found {}", self.object, self.expected, self.found)
    }
}

impl Change {
    /// The same difference told as drift.
    pub fn as_drift(&self) -> Drift {
        let d = |o: String, e: &str, f: &str| Drift {
            object: o,
            expected: e.to_owned(),
            found: f.to_owned(),
        };
        match self {
            Change::CreateLink { name, .. } => d(format!("link {name}"), "present", "missing"),
            Change::ConfigureLink { name, up, mtu, mark } => {
                let mut e = Vec::new();
                if let Some(u) = up {
                    e.push(if *u { "up".to_owned() } else { "down".to_owned() });
                }
                if let Some(m) = mtu {
                    e.push(format!("mtu {m}"));
                }
                if *mark {
                    e.push(format!("alias {LINK_ALIAS}"));
                }
                d(format!("link {name}"), &e.join(" "), "different settings")
            }
            Change::DeleteLink { name } => d(format!("link {name}"), "absent", "present"),
            Change::AddAddress(a) => d(format!("address {a}"), "present", "missing"),
            Change::DeleteAddress(a) => d(format!("address {a}"), "absent", "present"),
            Change::AddRoute(r) => Drift {
                object: format!(
                    "route {} table {} metric {}",
                    r.dst,
                    r.table,
                    r.effective_metric()
                ),
                expected: r.via.to_string(),
                found: "missing".into(),
            },
            Change::ReplaceRoute { old, new } => Drift {
                object: format!(
                    "route {} table {} metric {}",
                    new.dst,
                    new.table,
                    new.effective_metric()
                ),
                expected: new.via.to_string(),
                found: via_text(old),
            },
            Change::DeleteRoute { table, dst, metric, via } => Drift {
                object: format!("route {dst} table {table} metric {metric}"),
                expected: "absent".into(),
                found: via_text(via),
            },
            Change::AddRule { ipv4, rule } => {
                d(format!("rule {} {rule}", fam(*ipv4)), "present", "missing")
            }
            Change::DeleteRule { ipv4, rule } => {
                d(format!("rule {} {rule}", fam(*ipv4)), "absent", "present")
            }
            Change::ReplaceFirewall { reason } => Drift {
                object: format!("firewall table inet {}", firewall::TABLE),
                expected: "the configured ruleset".into(),
                found: reason.clone(),
            },
            Change::RemoveFirewall => {
                d(format!("firewall table inet {}", firewall::TABLE), "absent", "present")
            }
        }
    }
}

/// What would change, in the order it will be applied.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    changes: Vec<Change>,
    /// The ruleset to install when the plan holds [`Change::ReplaceFirewall`].
    pub(crate) ruleset: Option<Ruleset>,
}

impl Plan {
    /// The changes, in application order.
    pub fn changes(&self) -> &[Change] {
        &self.changes
    }

    /// True when the kernel already matches.
    pub fn is_empty(&self) -> bool {
        self.changes.is_empty()
    }

    /// Number of changes.
    pub fn len(&self) -> usize {
        self.changes.len()
    }

    /// One line for a dry run's footer: `3 to add, 1 to change, 2 to delete`.
    pub fn summary(&self) -> String {
        let (mut add, mut change, mut delete) = (0, 0, 0);
        for c in &self.changes {
            match c {
                Change::CreateLink { .. }
                | Change::AddAddress(_)
                | Change::AddRoute(_)
                | Change::AddRule { .. } => add += 1,
                Change::ConfigureLink { .. }
                | Change::ReplaceRoute { .. }
                | Change::ReplaceFirewall { .. } => change += 1,
                Change::DeleteLink { .. }
                | Change::DeleteAddress(_)
                | Change::DeleteRoute { .. }
                | Change::DeleteRule { .. }
                | Change::RemoveFirewall => delete += 1,
            }
        }
        format!("{add} to add, {change} to change, {delete} to delete")
    }
}

impl fmt::Display for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.changes.is_empty() {
            return writeln!(f, "no changes");
        }
        for c in &self.changes {
            writeln!(f, "{c}")?;
        }
        Ok(())
    }
}

/// Everything a plan is computed from.
pub(crate) struct Inputs<'a> {
    pub desired: &'a DesiredState,
    pub kernel: &'a Observed,
    pub table: Option<&'a ObservedTable>,
}

/// Computes the plan. Fails when the desired state names an existing interface that is not
/// there or a device name taken by a device of another kind.
pub(crate) fn diff(i: &Inputs<'_>) -> Result<Plan, Error> {
    let desired = i.desired;
    let k = i.kernel;
    desired.validate()?;
    let mut changes = Vec::new();
    // Interfaces that exist once the link phase has run.
    let mut present: HashSet<&str> = k.links.iter().map(|l| l.name.as_str()).collect();
    let wanted: HashSet<&str> = desired.links.iter().map(|l| l.name.as_str()).collect();

    let mut configure = Vec::new();
    for l in &desired.links {
        match (k.link(&l.name), l.kind) {
            (None, LinkKind::Existing) => return Err(Error::LinkMissing(l.name.clone())),
            (None, kind) => {
                changes.push(Change::CreateLink { name: l.name.clone(), kind });
                configure.push(Change::ConfigureLink {
                    name: l.name.clone(),
                    up: l.up.then_some(true),
                    mtu: l.mtu,
                    mark: true,
                });
                present.insert(&l.name);
            }
            (Some(kl), kind) => {
                let want_kind = match kind {
                    LinkKind::Existing => None,
                    LinkKind::Tun { .. } => Some("tun"),
                    LinkKind::Dummy => Some("dummy"),
                };
                if let Some(w) = want_kind
                    && kl.kind.as_deref() != Some(w)
                {
                    return Err(Error::LinkConflict {
                        name: l.name.clone(),
                        wanted: w,
                        found: kl.kind.clone().unwrap_or_else(|| "a device".into()),
                    });
                }
                let up = (kl.up != l.up).then_some(l.up);
                let mtu = l.mtu.filter(|m| *m != kl.mtu);
                let mark = want_kind.is_some() && kl.alias.as_deref() != Some(LINK_ALIAS);
                if up.is_some() || mtu.is_some() || mark {
                    configure.push(Change::ConfigureLink { name: l.name.clone(), up, mtu, mark });
                }
            }
        }
    }
    changes.extend(configure);
    let deleted_links: Vec<Change> = k
        .links
        .iter()
        .filter(|l| l.alias.as_deref() == Some(LINK_ALIAS) && !wanted.contains(l.name.as_str()))
        .map(|l| Change::DeleteLink { name: l.name.clone() })
        .collect();
    for c in &deleted_links {
        if let Change::DeleteLink { name } = c {
            present.remove(name.as_str());
        }
    }

    // Addresses: desired ones that are missing; Isthmus's own that are not desired.
    let want_addrs: HashSet<&Address> = desired.addresses.iter().collect();
    let have: HashSet<&Address> = k.addresses.iter().map(|(a, _)| a).collect();
    for (a, ours) in &k.addresses {
        if *ours && !want_addrs.contains(a) && present.contains(a.ifname.as_str()) {
            changes.push(Change::DeleteAddress(a.clone()));
        }
    }
    for a in &desired.addresses {
        if !present.contains(a.ifname.as_str()) {
            return Err(Error::LinkMissing(a.ifname.clone()));
        }
        if !have.contains(a) {
            changes.push(Change::AddAddress(a.clone()));
        }
    }

    // Routes: keyed by (table, destination, metric).
    let kroutes: HashMap<RouteKey, &crate::kernel::KRoute> =
        k.routes.iter().map(|r| (r.key, r)).collect();
    let want_keys: HashSet<RouteKey> = desired.routes.iter().map(Route::key).collect();
    for r in &k.routes {
        if !want_keys.contains(&r.key) {
            changes.push(Change::DeleteRoute {
                table: r.key.table,
                dst: r.key.dst,
                metric: r.key.metric,
                via: r.via.clone(),
            });
        }
    }
    for r in &desired.routes {
        if let NextHop::Interface(i) = &r.via
            && !present.contains(i.as_str())
        {
            return Err(Error::LinkMissing(i.clone()));
        }
        let key = r.key();
        let normalized = || Route { metric: key.metric, ..r.clone() };
        match kroutes.get(&key) {
            None => changes.push(Change::AddRoute(normalized())),
            Some(kr) if kr.via.as_ref() == Some(&r.via) => {}
            Some(kr) => {
                changes.push(Change::ReplaceRoute { old: kr.via.clone(), new: normalized() })
            }
        }
    }

    // Rules: no in-place change, delete and add.
    let want_rules: HashSet<KRule> = desired
        .rules
        .iter()
        .flat_map(|r| r.families().into_iter().map(|v4| KRule { v4, rule: r.clone() }))
        .collect();
    let have_rules: HashSet<&KRule> = k.rules.iter().collect();
    for r in &k.rules {
        if !want_rules.contains(r) {
            changes.push(Change::DeleteRule { ipv4: r.v4, rule: r.rule.clone() });
        }
    }
    for r in desired
        .rules
        .iter()
        .flat_map(|r| r.families().into_iter().map(|v4| KRule { v4, rule: r.clone() }))
    {
        if !have_rules.contains(&r) {
            changes.push(Change::AddRule { ipv4: r.v4, rule: r.rule });
        }
    }

    changes.extend(deleted_links);

    let mut ruleset = None;
    match &desired.firewall {
        Some(spec) => {
            let rs = firewall::compile(spec);
            if let Some(reason) = firewall::difference(&rs, i.table) {
                changes.push(Change::ReplaceFirewall { reason });
                ruleset = Some(rs);
            }
        }
        None if i.table.is_some() => changes.push(Change::RemoveFirewall),
        None => {}
    }
    Ok(Plan { changes, ruleset })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::{KLink, KRoute};
    use crate::state::Link;

    fn p(s: &str) -> Prefix {
        s.parse().unwrap()
    }

    fn klink(index: u32, name: &str, kind: Option<&str>, alias: Option<&str>) -> KLink {
        KLink {
            index,
            name: name.into(),
            up: true,
            mtu: 1500,
            kind: kind.map(Into::into),
            alias: alias.map(Into::into),
        }
    }

    fn route(d: &str, via: NextHop) -> Route {
        Route { table: 100, dst: p(d), via, metric: 0 }
    }

    fn kroute(r: &Route) -> KRoute {
        KRoute { key: r.key(), via: Some(r.via.clone()) }
    }

    #[test]
    fn summary_counts_by_kind() {
        let desired = DesiredState {
            routes: vec![route("10.61.1.0/24", NextHop::Blackhole)],
            ..Default::default()
        };
        let kernel = Observed {
            routes: vec![kroute(&route("10.61.2.0/24", NextHop::Blackhole))],
            ..Default::default()
        };
        let p = diff(&Inputs { desired: &desired, kernel: &kernel, table: None }).unwrap();
        assert_eq!(p.summary(), "1 to add, 0 to change, 1 to delete");
        assert_eq!(Plan::default().to_string(), "no changes\n");
    }

    fn plan(desired: &DesiredState, kernel: &Observed) -> Vec<String> {
        diff(&Inputs { desired, kernel, table: None })
            .unwrap()
            .changes()
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    #[test]
    fn plans_creation_in_dependency_order_and_nothing_when_equal() {
        let tun = NextHop::Interface("ist0".into());
        let desired = DesiredState {
            links: vec![Link {
                name: "ist0".into(),
                up: true,
                mtu: Some(1400),
                kind: LinkKind::Tun { multi_queue: false },
            }],
            addresses: vec![Address::new("ist0", "10.60.9.1/32").unwrap()],
            routes: vec![route("10.61.0.0/16", tun.clone())],
            rules: vec![Rule {
                priority: 100,
                from: Some(p("10.60.0.0/16")),
                to: None,
                ip_proto: None,
                sport: None,
                table: 100,
            }],
            firewall: None,
        };
        let empty = Observed { links: vec![klink(1, "lo", None, None)], ..Default::default() };
        assert_eq!(
            plan(&desired, &empty),
            [
                "+ link ist0 (tun)",
                "~ link ist0 up mtu 1400 alias isthmus",
                "+ address 10.60.9.1/32 dev ist0",
                "+ route 10.61.0.0/16 dev ist0 table 100 metric 0",
                "+ rule -4 priority 100 from 10.60.0.0/16 lookup 100",
            ]
        );
        let mut l = klink(7, "ist0", Some("tun"), Some(LINK_ALIAS));
        l.mtu = 1400;
        let same = Observed {
            links: vec![l],
            addresses: vec![(desired.addresses[0].clone(), true)],
            routes: vec![kroute(&desired.routes[0])],
            rules: vec![KRule { v4: true, rule: desired.rules[0].clone() }],
        };
        assert!(plan(&desired, &same).is_empty());
    }

    #[test]
    fn changes_only_what_differs_and_leaves_foreign_things_alone() {
        let desired = DesiredState {
            links: vec![Link {
                name: "eth1".into(),
                up: true,
                mtu: None,
                kind: LinkKind::Existing,
            }],
            routes: vec![
                route("10.61.1.0/24", NextHop::Interface("eth1".into())),
                route("10.61.2.0/24", NextHop::Blackhole),
            ],
            ..Default::default()
        };
        let mut down = klink(2, "eth1", Some("veth"), None);
        down.up = false;
        let gone = route("10.61.3.0/24", NextHop::Gateway("10.60.0.9".parse().unwrap()));
        let kernel = Observed {
            links: vec![down, klink(3, "old0", Some("dummy"), Some(LINK_ALIAS))],
            // Only Isthmus-protocol routes and addresses are observed as ours.
            addresses: vec![
                (Address::new("eth1", "10.60.0.1/24").unwrap(), false),
                (Address::new("eth1", "10.60.0.2/24").unwrap(), true),
            ],
            routes: vec![
                kroute(&route("10.61.1.0/24", NextHop::Interface("eth1".into()))),
                kroute(&route("10.61.2.0/24", NextHop::Interface("eth1".into()))),
                kroute(&gone),
            ],
            rules: vec![],
        };
        assert_eq!(
            plan(&desired, &kernel),
            [
                "~ link eth1 up",
                "- address 10.60.0.2/24 dev eth1",
                "- route 10.61.3.0/24 via 10.60.0.9 table 100 metric 0",
                "~ route 10.61.2.0/24 blackhole table 100 metric 0 (was dev eth1)",
                "- link old0",
            ]
        );
    }

    #[test]
    fn refuses_missing_interfaces_and_kind_conflicts() {
        let mut desired = DesiredState {
            links: vec![Link {
                name: "eth9".into(),
                up: true,
                mtu: None,
                kind: LinkKind::Existing,
            }],
            ..Default::default()
        };
        let kernel =
            Observed { links: vec![klink(2, "eth1", Some("veth"), None)], ..Default::default() };
        let e = diff(&Inputs { desired: &desired, kernel: &kernel, table: None }).unwrap_err();
        assert_eq!(e.to_string(), "interface `eth9` does not exist");
        desired.links[0] = Link { name: "eth1".into(), up: true, mtu: None, kind: LinkKind::Dummy };
        let e = diff(&Inputs { desired: &desired, kernel: &kernel, table: None }).unwrap_err();
        assert!(e.to_string().contains("`eth1` exists as veth"), "{e}");
        desired.links.clear();
        desired.routes = vec![route("10.61.0.0/16", NextHop::Interface("nope0".into()))];
        assert!(diff(&Inputs { desired: &desired, kernel: &kernel, table: None }).is_err());
    }

    #[test]
    fn ipv6_metric_zero_means_1024_and_a_rule_without_prefixes_covers_both_families() {
        let r6 = Route { table: 254, dst: p("2001:db8::/32"), via: NextHop::Blackhole, metric: 0 };
        let desired = DesiredState {
            routes: vec![r6.clone()],
            rules: vec![Rule {
                priority: 50,
                from: None,
                to: None,
                ip_proto: None,
                sport: None,
                table: 100,
            }],
            ..Default::default()
        };
        let kernel = Observed {
            routes: vec![KRoute {
                key: RouteKey { table: 254, dst: r6.dst, metric: 1024 },
                via: Some(NextHop::Blackhole),
            }],
            ..Default::default()
        };
        assert_eq!(
            plan(&desired, &kernel),
            ["+ rule -4 priority 50 lookup 100", "+ rule -6 priority 50 lookup 100"]
        );
    }

    #[test]
    fn drift_tells_expected_and_found() {
        let c = Change::ReplaceRoute {
            old: Some(NextHop::Blackhole),
            new: route("10.61.0.0/16", NextHop::Interface("ist0".into())),
        };
        assert_eq!(
            c.as_drift().to_string(),
            "route 10.61.0.0/16 table 100 metric 0: expected dev ist0, found blackhole"
        );
    }
}
