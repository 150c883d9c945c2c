//! The event bus: every component reports what happened here; the API streams it as server-sent
//! events, `tunnel show` lists recent ones, and alarms are evaluated from it.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::extract::State;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use futures_util::Stream;
use isthmus_api::{Event, Severity};
use tokio::sync::broadcast;

use crate::http::AppState;

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
    pub fn emit(&self, kind: &str, subject: &str, severity: Severity, message: impl Into<String>) {
        let e = Event {
            time: unix_now(),
            kind: kind.into(),
            subject: subject.into(),
            message: message.into(),
            severity,
        };
        match severity {
            Severity::Info => tracing::info!(kind, subject, "{}", e.message),
            Severity::Warning => tracing::warn!(kind, subject, "{}", e.message),
            Severity::Critical => tracing::error!(kind, subject, "{}", e.message),
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

/// Server-sent events: one JSON `Event` per `data:` line
///
/// Each `event` event carries an `Event`. A subscriber too slow to keep up gets a `lagged` event
/// with the number it missed rather than stalling the daemon.
#[utoipa::path(get, path = "/events", context_path = isthmus_api::PREFIX, tag = "events",
    operation_id = "events", responses(
    (status = 200, description = "The stream", body = String, content_type = "text/event-stream"),
    (status = 401, response = crate::http::openapi::Unauthorized),
))]
pub async fn stream(
    State(st): State<AppState>,
) -> Sse<impl Stream<Item = Result<SseEvent, Infallible>>> {
    let rx = st.core.events().subscribe();
    let s = futures_util::stream::unfold(rx, |mut rx| async move {
        let ev = match rx.recv().await {
            Ok(e) => SseEvent::default()
                .event("event")
                .data(serde_json::to_string(&e).unwrap_or_default()),
            Err(broadcast::error::RecvError::Lagged(n)) => {
                SseEvent::default().event("lagged").data(n.to_string())
            }
            Err(broadcast::error::RecvError::Closed) => return None,
        };
        Some((Ok(ev), rx))
    });
    Sse::new(s).keep_alive(KeepAlive::default())
}
