//! `GET /api/v1/events`: agents' and rollouts' events as they happen, as Server-Sent Events
//! (`event: <kind>`, `data: <json>`; `event: lagged` says how many a slow reader missed).

use super::reply::ApiError;
use crate::ops::events::Watched;
use crate::ops::{Caller, Error, Ops};
use axum::Extension;
use axum::extract::{Query, State};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use std::collections::HashMap;
use std::convert::Infallible;

pub(super) async fn stream(
    State(ops): State<Ops>,
    Extension(caller): Extension<Caller>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    if let Some(other) = q
        .keys()
        .find(|k| !["kind", "selector"].contains(&k.as_str()))
    {
        return Err(ApiError::from(Error::BadRequest(format!(
            "unknown parameter {other:?}; events take kind (a comma-separated list) and selector"
        ))));
    }
    let watched = ops
        .watch_events(
            &caller,
            q.get("kind").map(String::as_str),
            q.get("selector").map(String::as_str),
        )
        .await?;
    let events = futures_util::stream::unfold(watched, |mut w| async move {
        let event = match w.next().await? {
            Watched::Event { kind, json } => Event::default().event(kind).data(json),
            Watched::Lagged(n) => Event::default()
                .event("lagged")
                .data(format!("{{\"dropped\":{n}}}")),
        };
        Some((Ok::<_, Infallible>(event), w))
    });
    Ok(Sse::new(events)
        .keep_alive(KeepAlive::default())
        .into_response())
}
