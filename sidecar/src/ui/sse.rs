//! `GET /v1/events`: server-sent events that tell the UI something changed.
//!
//! Each event carries only the latest catalog index and decision count
//! (`event: change`), read from watch channels: a burst of changes makes
//! one event, and a client that never reads holds nothing but its socket
//! buffer, since the stream is polled only when hyper can write. The number
//! of open streams is capped.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::stream;
use http::{header, HeaderValue, Response, StatusCode};
use http_body::Frame;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, StreamBody};
use tokio::sync::{watch, OwnedSemaphorePermit};

use crate::catalog::CatalogSnapshot;
use crate::handles::AdminHandles;

/// Open event streams allowed at once per agent.
pub const MAX_STREAMS: usize = 32;
/// Shortest time between two events: bursts are coalesced.
const COALESCE: Duration = Duration::from_millis(200);
/// A comment line this often keeps proxies from closing an idle stream.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// A streamed response body.
pub type StreamResponse = Response<BoxBody<Bytes, Infallible>>;

/// Why the stream woke up.
enum Wake {
    /// Something changed (true), or a channel closed or the agent stops (false).
    Changed(bool),
    /// Nothing for a while.
    KeepAlive,
}

struct State {
    catalog: watch::Receiver<Arc<CatalogSnapshot>>,
    decisions: watch::Receiver<u64>,
    shutdown: watch::Receiver<bool>,
    first: bool,
    _permit: OwnedSemaphorePermit,
}

/// Starts an event stream, or answers 429 when too many are open.
pub fn events(agent: &AdminHandles) -> StreamResponse {
    let Ok(permit) = agent.event_streams.clone().try_acquire_owned() else {
        return crate::reply::error(
            StatusCode::TOO_MANY_REQUESTS,
            format!("{MAX_STREAMS} event streams are already open on this agent"),
            "close another UI tab, or poll the JSON API with blocking queries",
        )
        .map(|body| body.boxed());
    };
    let state = State {
        catalog: agent.catalog.subscribe(),
        decisions: agent.decisions.subscribe(),
        shutdown: agent.shutdown.clone(),
        first: true,
        _permit: permit,
    };
    let frames = stream::unfold(state, |mut state| async move {
        if !state.first {
            tokio::time::sleep(COALESCE).await;
            let woke = tokio::select! {
                r = state.catalog.changed() => Wake::Changed(r.is_ok()),
                r = state.decisions.changed() => Wake::Changed(r.is_ok()),
                _ = state.shutdown.wait_for(|stop| *stop) => Wake::Changed(false),
                _ = tokio::time::sleep(KEEP_ALIVE) => Wake::KeepAlive,
            };
            match woke {
                Wake::Changed(true) => {}
                Wake::Changed(false) => return None,
                Wake::KeepAlive => {
                    let frame = Frame::data(Bytes::from_static(b": keep-alive\n\n"));
                    return Some((Ok::<_, Infallible>(frame), state));
                }
            }
        }
        state.first = false;
        let index = state.catalog.borrow_and_update().index;
        let decisions = *state.decisions.borrow_and_update();
        let text = format!(
            "event: change\nid: {index}.{decisions}\ndata: {{\"index\":{index},\"decisions\":{decisions}}}\n\n"
        );
        Some((Ok(Frame::data(Bytes::from(text))), state))
    });
    let mut response = Response::new(StreamBody::new(frames).boxed());
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}
