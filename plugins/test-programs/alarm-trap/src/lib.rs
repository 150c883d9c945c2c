//! Hostile: an alarm plugin that traps on events about the subject `boom` and otherwise
//! notifies channel `plugin`.
wit_bindgen::generate!({
    world: "alarm-plugin",
    path: "../../../wit",
});

use exports::isthmus::policy::alarm::{Action, Event, Guest, Notification};

struct Plugin;

impl Guest for Plugin {
    fn on_event(event: Event) -> Vec<Action> {
        if event.subject == "boom" {
            std::process::abort();
        }
        vec![Action::Notify(Notification {
            channel: "plugin".into(),
            severity: event.severity,
            message: event.message,
        })]
    }
}

export!(Plugin);
