//! REST handlers for rollouts, restart jobs and the audit log.

use super::reply::{ApiError, Reply, pairs, parse_body};
use crate::fleet::region_rollout::RegionRollout;
use crate::ops::region_rollouts::RegionRolloutRequest;
use crate::ops::restarts::{DEFAULT_RATE, RestartJob};
use crate::ops::rollouts::RolloutRequest;
use crate::ops::views::{AuditLog, RolloutView};
use crate::ops::{Caller, Ops, audit};
use axum::Json;
use axum::body::Bytes;
use axum::extract::{Extension, Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use flotilla_common::selector::Selector;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

#[derive(Serialize)]
pub(super) struct Rollouts {
    rollouts: Vec<RolloutView>,
}

pub(super) async fn list(
    State(ops): State<Ops>,
    Extension(caller): Extension<Caller>,
) -> Reply<Rollouts> {
    Ok(Json(Rollouts {
        rollouts: ops.rollouts(&caller).await?,
    }))
}

pub(super) async fn start(
    State(ops): State<Ops>,
    Extension(caller): Extension<Caller>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let req: RolloutRequest = parse_body(
        &body,
        "{\"config\": \"name\", \"version\": 2, \"phases\": {\"initial\": 10, \"multiplier\": 2, \"max_per_phase\": 1000} or {\"percentages\": [10, 50, 100]}, \"soak\": \"30s\", \"error_budget\": {\"max_failure_percent\": 10, \"min_sample\": 5, \"action\": \"rollback\" or \"pause\"}}",
    )?;
    let r = ops.start_rollout(&caller, req).await?;
    Ok((StatusCode::CREATED, Json(r)).into_response())
}

#[derive(Serialize)]
pub(super) struct RegionRollouts {
    rollouts: Vec<RegionRollout>,
}

pub(super) async fn region_list(
    State(ops): State<Ops>,
    Extension(caller): Extension<Caller>,
) -> Reply<RegionRollouts> {
    Ok(Json(RegionRollouts {
        rollouts: ops.region_rollouts(&caller).await?,
    }))
}

pub(super) async fn region_start(
    State(ops): State<Ops>,
    Extension(caller): Extension<Caller>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let req: RegionRolloutRequest = parse_body(
        &body,
        "{\"config\": \"name\", \"version\": 2, \"regions\": [\"eu\", \"us\"], \"phases\": {\"percentages\": [10, 100]}, \"soak\": \"30s\", \"error_budget\": {\"max_failure_percent\": 10, \"min_sample\": 5, \"action\": \"rollback\"}}",
    )?;
    let r = ops.start_region_rollout(&caller, req).await?;
    Ok((StatusCode::CREATED, Json(r)).into_response())
}

pub(super) async fn region_get(
    State(ops): State<Ops>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Reply<RegionRollout> {
    Ok(Json(ops.region_rollout(&caller, &id).await?))
}

pub(super) async fn get(
    State(ops): State<Ops>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Reply<RolloutView> {
    Ok(Json(ops.rollout(&caller, &id).await?))
}

pub(super) async fn control(
    State(ops): State<Ops>,
    Extension(caller): Extension<Caller>,
    Path((id, action)): Path<(String, String)>,
) -> Reply<RolloutView> {
    Ok(Json(ops.control_rollout(&caller, &id, &action).await?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RestartBody {
    selector: Selector,
    #[serde(default = "default_rate")]
    rate_per_second: f64,
}

fn default_rate() -> f64 {
    DEFAULT_RATE
}

pub(super) async fn restart_matching(
    State(ops): State<Ops>,
    Extension(caller): Extension<Caller>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let body: RestartBody = parse_body(
        &body,
        "{\"selector\": \"env=prod\", \"rate_per_second\": 10}",
    )?;
    let job = ops
        .restart_matching(&caller, body.selector, body.rate_per_second)
        .await?;
    Ok((StatusCode::ACCEPTED, Json(job)).into_response())
}

pub(super) async fn restart_job(
    State(ops): State<Ops>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Reply<RestartJob> {
    Ok(Json(ops.restart_job(&caller, &id).await?))
}

/// `?object=config/otel&since=<RFC 3339>&until=<RFC 3339>&limit=N`, newest first.
pub(super) async fn audit(
    State(ops): State<Ops>,
    Extension(caller): Extension<Caller>,
    Query(q): Query<HashMap<String, String>>,
) -> Reply<AuditLog> {
    let query = audit::query(pairs(&q))?;
    Ok(Json(ops.audit_log(&caller, &query).await?))
}
