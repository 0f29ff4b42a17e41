//! The admin REST API (`/api/v1/...`, JSON): each handler reads its request, calls one operation
//! ([`crate::ops`]) with the caller the auth gate found, and writes the operation's answer as
//! JSON. Errors are `{"error": "<message>"}` with the HTTP status of the error's kind.

mod agents;
mod configs;
mod events;
mod reply;
mod rollouts;
mod series;

use crate::ops::Ops;
use axum::Json;
use axum::Router;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::json;

/// The REST routes, over `ops` (with `per_agent_series`, `GET /metrics/agents` too). The auth
/// gate is layered on by [`crate::api::router`].
pub fn routes(ops: Ops, per_agent_series: bool) -> Router {
    let router = if per_agent_series {
        Router::new().route("/metrics/agents", get(series::agents))
    } else {
        Router::new()
    };
    router
        .route("/api/v1/fleet/health", get(agents::fleet_health))
        .route("/api/v1/fleet/overview", get(agents::fleet_overview))
        .route("/api/v1/fleet/agent-metrics", get(agents::fleet_metrics))
        .route("/api/v1/agents", get(agents::list))
        .route(
            "/api/v1/agents/{uid}",
            get(agents::get).delete(agents::delete),
        )
        .route("/api/v1/agents/{uid}/restart", post(agents::restart))
        .route(
            "/api/v1/agents/{uid}/custom-messages",
            post(agents::custom_message),
        )
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
            get(configs::get).put(configs::put).delete(configs::delete),
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
        .route(
            "/api/v1/region-rollouts",
            get(rollouts::region_list).post(rollouts::region_start),
        )
        .route("/api/v1/region-rollouts/{id}", get(rollouts::region_get))
        .route("/api/v1/restarts", post(rollouts::restart_matching))
        .route("/api/v1/restarts/{id}", get(rollouts::restart_job))
        .route("/api/v1/audit", get(rollouts::audit))
        .route("/api/v1/events", get(events::stream))
        .route("/api/v1/openapi.json", get(openapi))
        .method_not_allowed_fallback(|req: axum::extract::Request| async move {
            let msg = format!("{} is not allowed on {}", req.method(), req.uri().path());
            (
                StatusCode::METHOD_NOT_ALLOWED,
                Json(json!({ "error": msg })),
            )
                .into_response()
        })
        .layer(axum::middleware::from_fn(json_errors))
        .with_state(ops)
}

/// An API path nothing answers: a JSON 404 like every other API error.
pub fn not_found(path: &str) -> Response {
    let msg = format!("no such API path {path}; GET /api/v1/openapi.json lists them");
    (StatusCode::NOT_FOUND, Json(json!({ "error": msg }))).into_response()
}

/// Errors that axum itself answers before a handler (a body over the limit, a bad content type)
/// come as plain text: made `{"error": ...}` like the handlers' own, so every API error is JSON.
async fn json_errors(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let r = next.run(req).await;
    let json = r
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|t| t.as_bytes().starts_with(b"application/json"));
    if !(r.status().is_client_error() || r.status().is_server_error()) || json {
        return r;
    }
    let status = r.status();
    let text = match axum::body::to_bytes(r.into_body(), 64 << 10).await {
        Ok(b) if !b.is_empty() => String::from_utf8_lossy(&b).trim().to_owned(),
        _ => status.canonical_reason().unwrap_or("error").to_owned(),
    };
    (status, Json(json!({ "error": text }))).into_response()
}

async fn openapi() -> Response {
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        super::openapi::DOCUMENT,
    )
        .into_response()
}
