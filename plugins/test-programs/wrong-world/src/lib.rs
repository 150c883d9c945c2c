//! Hostile: an alarm plugin, to be uploaded as if it were an SPD plugin.
wit_bindgen::generate!({
    world: "alarm-plugin",
    path: "../../../wit",
});

use exports::isthmus::policy::alarm::{Action, Event, Guest};

struct Plugin;

impl Guest for Plugin {
    fn on_event(_event: Event) -> Vec<Action> {
        Vec::new()
    }
}

export!(Plugin);
