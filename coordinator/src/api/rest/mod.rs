//! The admin REST API (`/api/v1/...`, JSON): each handler reads its request, calls one operation
//! ([`crate::ops`]) with the caller the auth gate found, and writes the operation's answer as
//! JSON. Errors are `{"error": "<message>"}` with the HTTP status of the error's kind.

mod agents;
mod configs;
mod reply;
mod rollouts;

use crate::ops::Ops;
use axum::Router;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};

/// The REST routes, over `ops`. The auth gate is layered on by [`crate::api::router`].
pub fn routes(ops: Ops) -> Router {
    Router::new()
        .route("/api/v1/fleet/health", get(agents::fleet_health))
        .route("/api/v1/fleet/overview", get(agents::fleet_overview))
        .route("/api/v1/agents", get(agents::list))
        .route(
            "/api/v1/agents/{uid}",
            get(agents::get).delete(agents::delete),
        )
        .route("/api/v1/agents/{uid}/restart", post(agents::restart))
        .route(
            "/api/v1/agents/{uid}/certificate",
            post(agents::certificate),
        )
        .route(
            "/api/v1/agents/{uid}/labels",
            get(agents::labels).post(agents::set_labels),
        )
        .route("/api/v1/configs", get(configs::list))
        .route(
            "/api/v1/configs/{name}",
            get(configs::get).put(configs::put),
        )
        .route("/api/v1/configs/{name}/versions", get(configs::versions))
        .route(
            "/api/v1/configs/{name}/versions/{version}",
            get(configs::version),
        )
        .route("/api/v1/configs/{name}/diff", get(configs::diff))
        .route("/api/v1/configs/{name}/rollback", post(configs::rollback))
        .route(
            "/api/v1/rollouts",
            get(rollouts::list).post(rollouts::start),
        )
        .route("/api/v1/rollouts/{id}", get(rollouts::get))
        .route("/api/v1/rollouts/{id}/{action}", post(rollouts::control))
        .route("/api/v1/restarts", post(rollouts::restart_matching))
        .route("/api/v1/restarts/{id}", get(rollouts::restart_job))
        .route("/api/v1/audit", get(rollouts::audit))
        .route("/api/v1/openapi.json", get(openapi))
        .with_state(ops)
}

async fn openapi() -> Response {
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        super::openapi::DOCUMENT,
    )
        .into_response()
}
