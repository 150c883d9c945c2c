//! Hostile: `compile` returns a table far over the host's size bound, built from the first
//! policy repeated.
wit_bindgen::generate!({
    world: "spd-plugin",
    path: "../../../wit",
});

use exports::isthmus::policy::spd::{Entry, Guest, Policy};

struct Plugin;

impl Guest for Plugin {
    fn compile(policies: Vec<Policy>) -> Result<Vec<Entry>, String> {
        let Some(p) = policies.into_iter().next() else { return Ok(Vec::new()) };
        Ok((0..200_000)
            .map(|i| Entry {
                selector: p.selector,
                action: p.action.clone(),
                rule: format!("r{i}"),
            })
            .collect())
    }
}

export!(Plugin);
