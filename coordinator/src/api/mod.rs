//! The interfaces over the operations: the REST API ([`rest`]), the gRPC service ([`grpc`]), the
//! web console ([`console`]), the auth gate ([`auth`]) and the OpenAPI document ([`openapi`]). Each is a thin adapter:
//! it reads a request into an operation's arguments, calls the operation with the caller the gate
//! found, and writes the operation's typed answer in its own format. The interfaces never use each
//! other.
//!
//! May use: the operations ([`crate::ops`]) and their views, the metrics. Must not: use the
//! running service ([`crate::service`]) or reach the store or bus itself.

pub mod auth;
pub mod console;
pub mod grpc;
pub mod openapi;
pub mod rest;
pub mod sse;

use crate::metrics::ApiMetrics;
use crate::ops::Ops;
use auth::{ApiTokens, Gate};
use axum::Router;
use prometheus_client::registry::Registry;
use std::sync::Arc;

/// The API routes, REST and gRPC, and the web console, over `ops`; with `tokens`, every request
/// must carry one whose role allows it (the console: a signed-in browser). `tls`: the port is
/// served over TLS (the console's cookies are then Secure). `max_body`: the largest request body
/// (413 past it). `per_agent_series`: serve `GET /metrics/agents` (one series per agent).
pub fn router(
    ops: Ops,
    tokens: Option<Arc<ApiTokens>>,
    tls: bool,
    max_body: usize,
    per_agent_series: bool,
    registry: &mut Registry,
) -> Router {
    let metrics = ApiMetrics::new(registry);
    registry
        .sub_registry_with_prefix("flotilla_coordinator")
        .register(
            "event_stream_dropped",
            "Events not sent to an event stream (GET /api/v1/events) whose reader fell behind \
         (it is told how many)",
            ops.watchers().dropped.clone(),
        );
    let gate = Gate::new(tokens.clone(), ops.clone(), metrics.clone());
    let console = console::routes(ops.clone(), tokens, tls);
    rest::routes(ops.clone(), per_agent_series)
        // Routed by hand rather than through `tonic::service::Routes`, whose catch-all fallback
        // (gRPC UNIMPLEMENTED) would answer unknown REST paths too.
        .route_service(
            &format!("/{}/{{*rpc}}", grpc::SERVICE_NAME),
            grpc::service(ops),
        )
        .layer(axum::middleware::from_fn_with_state(gate, auth::authorize))
        .merge(console)
        .layer(axum::extract::DefaultBodyLimit::max(max_body))
        .fallback(|uri: axum::http::Uri| async move {
            if uri.path().starts_with("/api/") {
                rest::not_found(uri.path())
            } else {
                console::not_found(uri.path())
            }
        })
        .layer(axum::middleware::from_fn_with_state(metrics, observe))
}

/// Times, counts and traces every admin request (an `api.request` span continuing the caller's
/// `traceparent`, if it sent one); [`auth::authorize`] adds the caller to the span.
async fn observe(
    axum::extract::State(metrics): axum::extract::State<ApiMetrics>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let route = req
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map_or("unmatched", |p| p.as_str())
        .to_owned();
    // Bounded: a client can send any method name.
    let method = match req.method().as_str() {
        m @ ("GET" | "HEAD" | "POST" | "PUT" | "DELETE" | "PATCH" | "OPTIONS") => m,
        _ => "other",
    }
    .to_owned();
    let span = flotilla_common::telemetry::traces::continued_http(req.headers(), || {
        tracing::debug_span!(
            parent: None,
            "api.request",
            otel.name = %format_args!("{method} {route}"),
            otel.kind = "server",
            http.request.method = %method,
            http.route = %route,
            caller = tracing::field::Empty,
            http.response.status_code = tracing::field::Empty,
        )
    });
    let started = std::time::Instant::now();
    let response = tracing::Instrument::instrument(next.run(req), span.clone()).await;
    let status = response.status().as_u16();
    span.record("http.response.status_code", status);
    metrics
        .request_seconds
        .get_or_create(&vec![("method", method.clone()), ("route", route.clone())])
        .observe(started.elapsed().as_secs_f64());
    metrics
        .requests
        .get_or_create(&vec![
            ("method", method),
            ("route", route),
            ("status", status.to_string()),
        ])
        .inc();
    response
}
