//! The reconciler: plan against the live kernel, apply with pipelined netlink requests.

use std::collections::HashMap;
use std::fmt;

use crate::kernel::{self, KRule};
use crate::nl::{NlSocket, Request};
use crate::plan::{self, Change, Drift, Inputs, Plan};
use crate::state::{DesiredState, LinkKind, NextHop, RouteKey};
use crate::{Error, LINK_ALIAS, firewall, tun};

const NETLINK_ROUTE: isize = 0;
const NETLINK_NETFILTER: isize = 12;

/// One change that the kernel refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// The change, as the plan prints it.
    pub change: String,
    /// Why it failed (the kernel's errno and extended-ACK message).
    pub error: String,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.change, self.error)
    }
}

/// What an apply did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    /// Changes applied.
    pub applied: usize,
    /// Of which link changes (create, configure, delete).
    pub links: usize,
    /// Of which address changes.
    pub addresses: usize,
    /// Of which route changes.
    pub routes: usize,
    /// Of which rule changes.
    pub rules: usize,
    /// Whether the firewall table was replaced or removed.
    pub firewall: bool,
}

impl Report {
    fn count(&mut self, c: &Change) {
        self.applied += 1;
        match c {
            Change::CreateLink { .. }
            | Change::ConfigureLink { .. }
            | Change::DeleteLink { .. } => {
                self.links += 1;
            }
            Change::AddAddress(_) | Change::DeleteAddress(_) => self.addresses += 1,
            Change::AddRoute(_) | Change::ReplaceRoute { .. } | Change::DeleteRoute { .. } => {
                self.routes += 1;
            }
            Change::AddRule { .. } | Change::DeleteRule { .. } => self.rules += 1,
            Change::ReplaceFirewall { .. } | Change::RemoveFirewall => self.firewall = true,
        }
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "applied {} changes (links {}, addresses {}, routes {}, rules {}, firewall {})",
            self.applied,
            self.links,
            self.addresses,
            self.routes,
            self.rules,
            if self.firewall { "replaced" } else { "unchanged" }
        )
    }
}

/// Brings the kernel of one network namespace to a [`DesiredState`].
#[derive(Debug)]
pub struct Reconciler {
    rt: NlSocket,
    nft: NlSocket,
}

impl Reconciler {
    /// Opens the rtnetlink and nfnetlink sockets in the calling thread's network namespace.
    pub fn new() -> Result<Reconciler, Error> {
        Ok(Reconciler {
            rt: NlSocket::open(NETLINK_ROUTE)?,
            nft: NlSocket::open(NETLINK_NETFILTER)?,
        })
    }

    /// What would change to reach `desired` (nothing is changed).
    pub fn plan(&mut self, desired: &DesiredState) -> Result<Plan, Error> {
        // A dump that raced with a change elsewhere is consistent on the next try.
        let mut attempt = 0;
        loop {
            attempt += 1;
            let seen = kernel::observe(&mut self.rt)
                .and_then(|k| Ok((k, firewall::observe(&mut self.nft)?)));
            match seen {
                Ok((kernel, table)) => {
                    return plan::diff(&Inputs { desired, kernel: &kernel, table: table.as_ref() });
                }
                Err(Error::DumpInterrupted(_)) if attempt < 5 => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// What would change to go from `old` to `new`, for a kernel that is at `old`: links,
    /// addresses and the firewall table are read from the kernel (a handful of objects), routes
    /// and rules are taken from `old` instead of dumped, so a one-route change costs one route
    /// message rather than a dump of every route. Should the kernel have drifted from `old`,
    /// applying the plan fails on the drifted objects (the route already exists, or is gone):
    /// then fall back to [`Reconciler::plan`] against the kernel.
    pub fn plan_change(&mut self, old: &DesiredState, new: &DesiredState) -> Result<Plan, Error> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let seen = kernel::observe_links_and_addresses(&mut self.rt)
                .and_then(|k| Ok((k, firewall::observe(&mut self.nft)?)));
            match seen {
                Ok((mut kernel, table)) => {
                    kernel::assume(&mut kernel, old);
                    return plan::diff(&Inputs {
                        desired: new,
                        kernel: &kernel,
                        table: table.as_ref(),
                    });
                }
                Err(Error::DumpInterrupted(_)) if attempt < 5 => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// How the kernel differs from `desired`; empty when it matches.
    pub fn drift(&mut self, desired: &DesiredState) -> Result<Vec<Drift>, Error> {
        Ok(self.plan(desired)?.changes().iter().map(Change::as_drift).collect())
    }

    /// Plans and applies.
    pub fn reconcile(&mut self, desired: &DesiredState) -> Result<Report, Error> {
        let plan = self.plan(desired)?;
        self.apply(&plan)
    }

    /// Carries out `plan` in order: links, addresses, routes, rules, link deletions, firewall.
    /// Changes are independent: when some fail the rest are still applied and the error lists
    /// every failure ([`Error::Apply`]).
    pub fn apply(&mut self, plan: &Plan) -> Result<Report, Error> {
        let mut report = Report::default();
        let mut failures = Vec::new();
        let changes = plan.changes();
        let fail = |c: &Change, e: String| Failure { change: c.to_string(), error: e };

        // Devices first: routes and addresses need their indexes.
        for c in changes {
            let Change::CreateLink { name, kind } = c else { continue };
            let r = match kind {
                LinkKind::Tun { multi_queue } => tun::create_persistent_tun(name, *multi_queue),
                LinkKind::Dummy => self.one(kernel::create_dummy(name)),
                LinkKind::Existing => Err(Error::LinkMissing(name.clone())),
            };
            match r {
                Ok(()) => report.count(c),
                Err(e) => failures.push(fail(c, e.to_string())),
            }
        }
        let links = kernel::dump_links(&mut self.rt)?;
        let index: HashMap<&str, u32> = links.iter().map(|l| (l.name.as_str(), l.index)).collect();
        for c in changes {
            // A TUN device opened from another namespace would not show up here.
            if let Change::CreateLink { name, .. } = c
                && !index.contains_key(name.as_str())
                && !failures.iter().any(|f| f.change == c.to_string())
            {
                failures.push(fail(c, "created but not visible in this namespace".into()));
            }
        }

        // Everything else that is rtnetlink goes out pipelined, in plan order.
        let mut reqs: Vec<Request> = Vec::with_capacity(changes.len());
        let mut owners: Vec<&Change> = Vec::with_capacity(changes.len());
        for c in changes {
            let idx = |name: &str| {
                index.get(name).copied().ok_or_else(|| format!("interface `{name}` does not exist"))
            };
            let req = match c {
                Change::CreateLink { .. }
                | Change::ReplaceFirewall { .. }
                | Change::RemoveFirewall => continue,
                Change::ConfigureLink { name, up, mtu, mark } => {
                    idx(name).map(|i| kernel::set_link(i, *up, *mtu, mark.then_some(LINK_ALIAS)))
                }
                Change::DeleteLink { name } => idx(name).map(kernel::delete_link),
                Change::AddAddress(a) => idx(&a.ifname).map(|i| kernel::add_address(a, i)),
                Change::DeleteAddress(a) => idx(&a.ifname).map(|i| kernel::delete_address(a, i)),
                Change::AddRoute(r) | Change::ReplaceRoute { new: r, .. } => {
                    let oif = match &r.via {
                        NextHop::Interface(n) => idx(n).map(Some),
                        _ => Ok(None),
                    };
                    let replace = matches!(c, Change::ReplaceRoute { .. });
                    oif.map(|oif| kernel::add_route(r, oif, replace))
                }
                Change::DeleteRoute { table, dst, metric, .. } => {
                    Ok(kernel::delete_route(&RouteKey {
                        table: *table,
                        dst: *dst,
                        metric: *metric,
                    }))
                }
                Change::AddRule { ipv4, rule } => {
                    Ok(kernel::add_rule(&KRule { v4: *ipv4, rule: rule.clone() }))
                }
                Change::DeleteRule { ipv4, rule } => {
                    Ok(kernel::delete_rule(&KRule { v4: *ipv4, rule: rule.clone() }))
                }
            };
            match req {
                Ok(r) => {
                    reqs.push(r);
                    owners.push(c);
                }
                Err(e) => failures.push(fail(c, e)),
            }
        }
        let results = self.rt.execute(&reqs)?;
        for (c, r) in owners.iter().zip(results) {
            match r {
                Ok(()) => report.count(c),
                Err(e) if already_done(c, e.errno) => {
                    tracing::debug!(change = %c, error = %e, "already so in the kernel");
                }
                Err(e) => failures.push(fail(c, e.to_string())),
            }
        }

        for c in changes {
            let r = match c {
                Change::ReplaceFirewall { .. } => match &plan.ruleset {
                    Some(rs) => firewall::apply(&mut self.nft, Some(rs)),
                    None => Err(Error::Invalid("plan has no ruleset to install".into())),
                },
                Change::RemoveFirewall => firewall::apply(&mut self.nft, None),
                _ => continue,
            };
            match r {
                Ok(()) => report.count(c),
                Err(e) => failures.push(fail(c, e.to_string())),
            }
        }

        if failures.is_empty() {
            tracing::debug!(%report, "kernel state applied");
            Ok(report)
        } else {
            tracing::warn!(failed = failures.len(), applied = report.applied, "apply incomplete");
            Err(Error::Apply { total: changes.len(), failures })
        }
    }

    fn one(&mut self, req: Request) -> Result<(), Error> {
        match self.rt.execute(std::slice::from_ref(&req))?.pop() {
            Some(Err(e)) => Err(Error::Protocol(e.to_string())),
            _ => Ok(()),
        }
    }
}

/// Whether the kernel refused `c` only because it is already done: what is to be deleted is
/// gone (a route the kernel dropped with its address or link answers ESRCH), or an identical
/// rule or address exists (EEXIST). Apply converges on the desired state whatever the kernel
/// was left at (a half-done apply, a restart); a route added over another at the same key is
/// not among these, as that one may be someone else's.
fn already_done(c: &Change, errno: i32) -> bool {
    match c {
        Change::DeleteRoute { .. } | Change::DeleteRule { .. } | Change::DeleteAddress(_) => {
            matches!(errno, libc::ESRCH | libc::ENOENT | libc::EADDRNOTAVAIL)
        }
        Change::AddRule { .. } | Change::AddAddress(_) => errno == libc::EEXIST,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reconciler_can_move_to_a_blocking_thread() {
        // The daemon runs it under `tokio::task::spawn_blocking`, which needs `Send`.
        fn send<T: Send>() {}
        send::<Reconciler>();
        send::<Plan>();
        send::<Error>();
    }
}
