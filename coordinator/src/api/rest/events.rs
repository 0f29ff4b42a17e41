//! `GET /api/v1/events`: agents' and rollouts' events as they happen, as Server-Sent Events.

use super::reply::ApiError;
use crate::api::sse;
use crate::ops::{Caller, Error, Ops};
use axum::Extension;
use axum::extract::{Query, State};
use axum::response::Response;
use std::collections::HashMap;

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
    Ok(sse::events(watched))
}
