//! Hostile: `compile` never returns. The host's epoch deadline must stop it.
wit_bindgen::generate!({
    world: "spd-plugin",
    path: "../../../wit",
});

use exports::isthmus::policy::spd::{Entry, Guest, Policy};

struct Plugin;

impl Guest for Plugin {
    fn compile(policies: Vec<Policy>) -> Result<Vec<Entry>, String> {
        let mut n = policies.len() as u64;
        loop {
            n = std::hint::black_box(n.wrapping_mul(6364136223846793005).wrapping_add(1));
            if n == 42 {
                return Ok(Vec::new());
            }
        }
    }
}

export!(Plugin);
