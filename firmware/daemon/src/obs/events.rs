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
        {
            let mut r = self.recent.lock().unwrap_or_else(|p| p.into_inner());
            if r.len() == KEEP {
                r.pop_front();
            }
            r.push_back(e.clone());
        }
        let _ = self.tx.send(e);
    }

    /// A new subscription to future events.
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.tx.subscribe()
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
