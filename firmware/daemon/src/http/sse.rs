//! `GET /events`: the event bus as server-sent events, filtered here rather than by the reader:
//! the kept events live in the daemon, and a reader that wants one tunnel's failures should not
//! be sent every rekey of the gateway to throw away.

use std::convert::Infallible;

use axum::extract::{Query, State};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use futures_util::{Stream, StreamExt};
use isthmus_api::{Event, EventKind};
use serde::Deserialize;
use tokio::sync::broadcast;
use utoipa::IntoParams;

use crate::http::{AppState, Failure};
use crate::obs::events::EventFilter;

/// `GET /events` query parameters (strings, so that a bad value gets a message naming it).
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct EventsQuery {
    /// Only events about this tunnel (subject `tunnel/NAME`). 404 when no such tunnel is
    /// configured and no kept event names it.
    tunnel: Option<String>,
    /// Only events of these kinds, comma-separated (e.g. `tunnel-up,tunnel-down`). 400 for a
    /// kind the daemon does not emit, naming those it does.
    kind: Option<String>,
    /// Replay the kept events (the last 512) from this time on, before new ones: seconds since
    /// the Unix epoch or an RFC 3339 time.
    #[param(value_type = Option<String>)]
    since: Option<String>,
    /// `false`: end the stream after the replay (then all kept events when `since` is absent).
    /// Default `true`: keep streaming new events.
    #[param(value_type = Option<bool>)]
    follow: Option<String>,
}

impl EventsQuery {
    /// The filter, whether to follow, and whether to replay kept events.
    fn parse(&self, st: &AppState) -> Result<(EventFilter, bool), Failure> {
        let kinds = match self.kind.as_deref().filter(|k| !k.is_empty()) {
            None => vec![],
            Some(list) => list.split(',').map(|k| kind(k.trim())).collect::<Result<_, _>>()?,
        };
        let since = match self.since.as_deref().filter(|s| !s.is_empty()) {
            None => None,
            Some(s) => {
                let s = s.trim();
                let t = s.parse::<u64>().ok().or_else(|| isthmus_api::instant::parse_rfc3339(s));
                Some(t.ok_or_else(|| {
                    Failure::bad_request(format!(
                        "since `{s}` is neither seconds since the Unix epoch nor an RFC 3339 time"
                    ))
                })?)
            }
        };
        let follow = match self.follow.as_deref() {
            None | Some("true") => true,
            Some("false") => false,
            Some(f) => {
                return Err(Failure::bad_request(format!("follow `{f}` is not true or false")));
            }
        };
        let subject = match self.tunnel.as_deref().filter(|t| !t.is_empty()) {
            None => None,
            Some(t) => {
                let subject = format!("tunnel/{t}");
                let configured = st.core.applied().is_some_and(|(_, c)| c.tunnel(t).is_some());
                if !configured && !st.core.events().mentions(&subject) {
                    return Err(Failure::not_found(format!(
                        "no tunnel named `{t}` is configured or named by a kept event"
                    )));
                }
                Some(subject)
            }
        };
        Ok((EventFilter { subject, kinds, since }, follow))
    }
}

fn kind(k: &str) -> Result<EventKind, Failure> {
    EventKind::ALL.into_iter().find(|x| x.as_str() == k).ok_or_else(|| {
        let all: Vec<&str> = EventKind::ALL.iter().map(|k| k.as_str()).collect();
        Failure::bad_request(format!("unknown event kind `{k}`; the kinds are {}", all.join(", ")))
    })
}

fn sse(e: &Event) -> SseEvent {
    SseEvent::default().event("event").data(serde_json::to_string(e).unwrap_or_default())
}

/// Server-sent events: one JSON `Event` per `data:` line
///
/// Each `event` event carries an `Event`. With `since`, the kept events from then on come
/// first, oldest first; each event is sent once, in the replay or after it. A subscriber too
/// slow to keep up gets a `lagged` event with the number it missed rather than stalling the
/// daemon.
#[utoipa::path(get, path = "/events", context_path = isthmus_api::PREFIX, tag = "events",
    operation_id = "events", params(EventsQuery), responses(
    (status = 200, description = "The stream", body = String, content_type = "text/event-stream"),
    (status = 400, response = crate::http::openapi::BadRequest),
    (status = 401, response = crate::http::openapi::Unauthorized),
    (status = 404, response = crate::http::openapi::NotFound),
))]
pub async fn stream(
    State(st): State<AppState>,
    Query(q): Query<EventsQuery>,
) -> Result<Sse<impl Stream<Item = Result<SseEvent, Infallible>>>, Failure> {
    let (filter, follow) = q.parse(&st)?;
    let (kept, rx) = st.core.events().replay_and_subscribe(&filter);
    // Following without `since` is "from now on", as before filters existed.
    let replay = if follow && filter.since.is_none() { vec![] } else { kept };
    let replay =
        futures_util::stream::iter(replay.into_iter().map(|e| Ok::<_, Infallible>(sse(&e))));
    let live = futures_util::stream::unfold(follow.then_some(rx), move |rx| {
        let filter = filter.clone();
        async move {
            let mut rx = rx?;
            loop {
                let ev = match rx.recv().await {
                    Ok(e) if !filter.wants(&e) => continue,
                    Ok(e) => sse(&e),
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        SseEvent::default().event("lagged").data(n.to_string())
                    }
                    Err(broadcast::error::RecvError::Closed) => return None,
                };
                return Some((Ok(ev), Some(rx)));
            }
        }
    });
    Ok(Sse::new(replay.chain(live)).keep_alive(KeepAlive::default()))
}
