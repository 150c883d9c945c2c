//! The event bus: every component reports what happened here; the API streams it as server-sent
//! events (`http::sse`), `tunnel show` lists recent ones, and alarms are evaluated from it.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use isthmus_api::{Event, EventKind, Severity};
use tokio::sync::broadcast;

/// How many recent events are kept for `tunnel show` and late subscribers.
const KEEP: usize = 512;

/// Publishes events to subscribers and keeps the most recent.
pub struct EventBus {
    tx: broadcast::Sender<Event>,
    recent: Mutex<VecDeque<Event>>,
}

impl Default for EventBus {
    fn default() -> Self {
        EventBus {
            tx: broadcast::channel(1024).0,
            recent: Mutex::new(VecDeque::with_capacity(KEEP)),
        }
    }
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

impl EventBus {
    /// Records and broadcasts an event; it is logged too.
    pub fn emit(
        &self,
        kind: EventKind,
        subject: &str,
        severity: Severity,
        message: impl Into<String>,
    ) {
        let e = Event {
            time: unix_now(),
            kind,
            subject: subject.into(),
            message: message.into(),
            severity,
        };
        match severity {
            Severity::Info => tracing::info!(kind = kind.as_str(), subject, "{}", e.message),
            Severity::Warning => tracing::warn!(kind = kind.as_str(), subject, "{}", e.message),
            Severity::Major | Severity::Critical => {
                tracing::error!(kind = kind.as_str(), subject, "{}", e.message)
            }
        }
        // Kept and sent under one lock, so that `replay_and_subscribe` sees each event exactly
        // once: in the replay or on its subscription.
        let mut r = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        if r.len() == KEEP {
            r.pop_front();
        }
        r.push_back(e.clone());
        let _ = self.tx.send(e);
    }

    /// A new subscription to future events.
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.tx.subscribe()
    }

    /// The kept events that `f` selects, oldest first, and a subscription to every later event
    /// (the caller applies `f` to those: [`EventFilter::wants`]).
    pub fn replay_and_subscribe(
        &self,
        f: &EventFilter,
    ) -> (Vec<Event>, broadcast::Receiver<Event>) {
        let r = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        let rx = self.tx.subscribe();
        let since = f.since.unwrap_or(0);
        (r.iter().filter(|e| e.time >= since && f.wants(e)).cloned().collect(), rx)
    }

    /// True when a kept event is about `subject`.
    pub fn mentions(&self, subject: &str) -> bool {
        self.recent.lock().unwrap_or_else(|p| p.into_inner()).iter().any(|e| e.subject == subject)
    }

    /// Recent events about `subject`, oldest first, at most `n`.
    pub fn recent(&self, subject: &str, n: usize) -> Vec<Event> {
        let r = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        let mut v: Vec<Event> =
            r.iter().rev().filter(|e| e.subject == subject).take(n).cloned().collect();
        v.reverse();
        v
    }
}

/// Which events a reader of `GET /events` asked for.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EventFilter {
    /// Only events about this subject, e.g. `tunnel/to-idc`.
    pub subject: Option<String>,
    /// Only events of these kinds (any when empty).
    pub kinds: Vec<EventKind>,
    /// Replayed kept events start at this time, seconds since the Unix epoch (none: all kept).
    pub since: Option<u64>,
}

impl EventFilter {
    /// True when `e` has the subject and one of the kinds asked for (`since` is for the replay
    /// only: what arrives later is newer anyway).
    pub fn wants(&self, e: &Event) -> bool {
        self.subject.as_ref().is_none_or(|s| *s == e.subject)
            && (self.kinds.is_empty() || self.kinds.contains(&e.kind))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replay_selects_by_subject_kind_and_time_and_the_subscription_starts_after_it() {
        let bus = EventBus::default();
        bus.emit(EventKind::TunnelUp, "tunnel/a", Severity::Info, "a up");
        bus.emit(EventKind::TunnelUp, "tunnel/b", Severity::Info, "b up");
        bus.emit(EventKind::TunnelDown, "tunnel/a", Severity::Warning, "a down");
        let f = |subject: Option<&str>, kinds: &[EventKind], since| EventFilter {
            subject: subject.map(String::from),
            kinds: kinds.to_vec(),
            since,
        };
        let msgs = |f: &EventFilter| {
            bus.replay_and_subscribe(f).0.into_iter().map(|e| e.message).collect::<Vec<_>>()
        };
        assert_eq!(msgs(&f(None, &[], None)), ["a up", "b up", "a down"]);
        assert_eq!(msgs(&f(Some("tunnel/a"), &[], Some(0))), ["a up", "a down"]);
        assert_eq!(msgs(&f(None, &[EventKind::TunnelUp], Some(0))), ["a up", "b up"]);
        assert_eq!(msgs(&f(Some("tunnel/a"), &[EventKind::TunnelUp], Some(0))), ["a up"]);
        assert!(msgs(&f(None, &[], Some(unix_now() + 60))).is_empty());
        let (old, mut rx) = bus.replay_and_subscribe(&f(None, &[], Some(0)));
        assert_eq!(old.len(), 3);
        assert!(rx.try_recv().is_err(), "a replayed event comes again on the subscription");
        bus.emit(EventKind::ChildUp, "tunnel/a", Severity::Info, "later");
        assert_eq!(rx.try_recv().unwrap().message, "later");
        assert!(bus.mentions("tunnel/b") && !bus.mentions("tunnel/c"));
    }
}
