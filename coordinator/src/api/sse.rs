//! An event stream ([`crate::ops::events`]) as Server-Sent Events: `event: <kind>`,
//! `data: <json>`; `event: lagged` says how many a slow reader missed. The REST API's
//! `/api/v1/events` and the console's `/events` answer with it.

use crate::ops::events::{EventStream, Watched};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use std::convert::Infallible;

pub fn events(watched: EventStream) -> Response {
    let events = futures_util::stream::unfold(watched, |mut w| async move {
        let event = match w.next().await? {
            Watched::Event { kind, json } => Event::default().event(kind).data(json),
            Watched::Lagged(n) => Event::default()
                .event("lagged")
                .data(format!("{{\"dropped\":{n}}}")),
        };
        Some((Ok::<_, Infallible>(event), w))
    });
    Sse::new(events)
        .keep_alive(KeepAlive::default())
        .into_response()
}
