//! Hostile: `compile` traps (a panic aborts, which traps).
wit_bindgen::generate!({
    world: "spd-plugin",
    path: "../../../wit",
});

use exports::isthmus::policy::spd::{Entry, Guest, Policy};

struct Plugin;

impl Guest for Plugin {
    fn compile(policies: Vec<Policy>) -> Result<Vec<Entry>, String> {
        let v: Vec<u32> = Vec::new();
        let i = std::hint::black_box(policies.len() + 3);
        Ok(vec![Entry { rule: v[i].to_string(), ..unreachable_entry() }])
    }
}

fn unreachable_entry() -> Entry {
    std::process::abort()
}

export!(Plugin);
