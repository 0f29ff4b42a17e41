//! The web console: the third interface over the operations, beside REST and gRPC. Pages are
//! rendered on the server (maud) from the same views the API returns, and every change is a plain
//! HTML form posted to the console, which calls the same operation with the same caller, role
//! check and audit entry as the API would. A small script adds live updates and confirmations;
//! every page works without it. ADR 0012 records why.
//!
//! Routes: `/` (overview), `/agents`, `/agents/{uid}`, `/agent-metrics`, `/configs`, `/configs/{name}`,
//! `/configs/{name}/edit`, `/rollouts`, `/rollouts/{id}`, `/audit`, `/signin`, `/signout` and
//! `/assets/*`. Changes are POSTs to the page's path (or a sub-path named like the API's), each
//! checked by [`session::Submitted`]: a CSRF token matching the cookie, a same-origin `Origin`,
//! and the role the API asks for the same change.

mod agent_metrics;
mod agents;
mod audit;
mod chart;
mod configs;
mod overview;
mod own_metrics;
mod page;
mod regions;
mod render;
mod rollouts;
mod session;

use super::auth::ApiTokens;
use crate::ops::Ops;
use axum::Router;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use page::Console;
use std::sync::Arc;

/// The console's routes over `ops`; with `tokens`, every page needs a signed-in caller. `tls`:
/// the API port is served over TLS.
pub fn routes(ops: Ops, tokens: Option<Arc<ApiTokens>>, tls: bool) -> Router {
    let console = Console {
        ops,
        tokens,
        secure: tls,
    };
    Router::new()
        .route("/", get(overview::page))
        .route("/events", get(overview::events))
        .route("/agents", get(agents::list))
        .route("/agents/{uid}", get(agents::detail))
        .route("/agents/{uid}/restart", post(agents::restart))
        .route(
            "/agents/{uid}/custom-messages",
            post(agents::custom_message),
        )
        .route("/agents/{uid}/certificate", post(agents::certificate))
        .route("/agents/{uid}/labels", post(agents::labels))
        .route("/agent-metrics", get(agent_metrics::page))
        .route("/configs", get(configs::list))
        .route(
            "/configs/{name}",
            get(configs::detail).post(configs::submit),
        )
        .route("/configs/{name}/edit", get(configs::editor))
        .route("/configs/{name}/rollback", post(configs::rollback))
        .route("/configs/{name}/delete", post(configs::delete))
        .route("/rollouts", get(rollouts::list).post(rollouts::submit))
        .route("/rollouts/{id}", get(rollouts::detail))
        .route("/rollouts/{id}/{action}", post(rollouts::control))
        .route("/audit", get(audit::page))
        .route("/signin", get(session::signin_page).post(session::signin))
        .route("/signout", post(session::signout))
        .route("/assets/console.css", get(css))
        .route("/assets/console.js", get(js))
        .layer(axum::middleware::from_fn_with_state(
            console.clone(),
            session::gate,
        ))
        .with_state(console)
}

/// A page nothing answers: the console's 404 page.
pub fn not_found(path: &str) -> Response {
    page::PageError::new(
        axum::http::StatusCode::NOT_FOUND,
        format!("There is no page at {path}."),
    )
    .into_response()
}

const CSS: &str = include_str!("assets/console.css");
const JS: &str = include_str!("assets/console.js");

async fn css() -> Response {
    asset("text/css; charset=utf-8", CSS)
}

async fn js() -> Response {
    asset("text/javascript; charset=utf-8", JS)
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "public, max-age=3600"),
        ],
        body,
    )
        .into_response()
}
