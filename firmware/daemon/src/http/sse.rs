//! `GET /events`: the event bus as server-sent events.

use std::convert::Infallible;

use axum::extract::State;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use futures_util::Stream;
use tokio::sync::broadcast;

use crate::http::AppState;

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
