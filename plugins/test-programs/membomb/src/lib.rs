//! Hostile: `compile` allocates until memory runs out. The host's memory cap must stop it.
wit_bindgen::generate!({
    world: "spd-plugin",
    path: "../../../wit",
});

use exports::isthmus::policy::spd::{Entry, Guest, Policy};

struct Plugin;

impl Guest for Plugin {
    fn compile(_policies: Vec<Policy>) -> Result<Vec<Entry>, String> {
        let mut hoard: Vec<Vec<u8>> = Vec::new();
        loop {
            let mut chunk = vec![0u8; 1 << 20];
            chunk[4096] = hoard.len() as u8;
            hoard.push(std::hint::black_box(chunk));
            if hoard.len() == usize::MAX {
                return Ok(Vec::new());
            }
        }
    }
}

export!(Plugin);
