//! The default SPD plugin: orders the tunnels' selector policies so that the most specific one
//! (longest remote, then local prefix) comes first; an explicit priority (lower first) wins over
//! specificity.

wit_bindgen::generate!({
    world: "spd-plugin",
    path: "../../wit",
});

use exports::isthmus::policy::spd::{Action, Entry, Guest, Policy};

struct Plugin;

impl Guest for Plugin {
    fn compile(policies: Vec<Policy>) -> Result<Vec<Entry>, String> {
        let mut order: Vec<(usize, Policy)> = policies.into_iter().enumerate().collect();
        order.sort_by(|(ia, a), (ib, b)| {
            a.priority
                .cmp(&b.priority)
                .then(b.selector.remote.len.cmp(&a.selector.remote.len))
                .then(b.selector.local.len.cmp(&a.selector.local.len))
                .then(ia.cmp(ib))
        });
        Ok(order
            .into_iter()
            .map(|(i, p)| Entry {
                rule: format!("{}/{}#{i}", p.tunnel, p.child),
                action: Action::Protect((p.tunnel, p.child)),
                selector: p.selector,
            })
            .collect())
    }
}

export!(Plugin);
