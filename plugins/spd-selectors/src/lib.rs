//! The default SPD plugin (hook `spd`). It orders the tunnels' selector policies into the table the
//! gateway evaluates first match wins (RFC 4301 §4.4.1):
//!
//! 1. policies with an explicit priority come first, lowest priority first;
//! 2. then, and among equal priorities, the most specific selector first: longer remote prefix,
//!    then longer local prefix, then a named protocol before any protocol, then fewer remote
//!    ports, then fewer local ports;
//! 3. then configuration order.
//!
//! Each entry keeps the policy's identifier as its rule, so a verdict names where it came from.

wit_bindgen::generate!({
    world: "spd-plugin",
    path: "../../wit",
});

use exports::isthmus::policy::spd::{Entry, Guest, Policy};
use isthmus::policy::types::PortRange;

struct Plugin;

fn size(p: &PortRange) -> u32 {
    u32::from(p.last).saturating_sub(u32::from(p.first)) + 1
}

impl Guest for Plugin {
    fn compile(policies: Vec<Policy>) -> Result<Vec<Entry>, String> {
        let mut order: Vec<(usize, Policy)> = policies.into_iter().enumerate().collect();
        order.sort_by(|(ia, a), (ib, b)| {
            let (sa, sb) = (&a.selector, &b.selector);
            (a.priority.is_none(), a.priority.unwrap_or(0))
                .cmp(&(b.priority.is_none(), b.priority.unwrap_or(0)))
                .then(sb.remote.len.cmp(&sa.remote.len))
                .then(sb.local.len.cmp(&sa.local.len))
                .then(sa.protocol.is_none().cmp(&sb.protocol.is_none()))
                .then(size(&sa.remote_ports).cmp(&size(&sb.remote_ports)))
                .then(size(&sa.local_ports).cmp(&size(&sb.local_ports)))
                .then(ia.cmp(ib))
        });
        Ok(order
            .into_iter()
            .map(|(_, p)| Entry { rule: p.id, action: p.action, selector: p.selector })
            .collect())
    }
}

export!(Plugin);
