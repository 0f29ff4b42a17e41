//! REST handlers for the fleet's health and agents.

use super::reply::{ApiError, Reply, pairs, parse_body};
use crate::ops::agents::{AgentQuery, Deleted, Labels};
use crate::ops::error::bad_request;
use crate::ops::own_metrics::FleetMetricsQuery;
use crate::ops::views::{AgentDetail, AgentsPage, FleetHealth, FleetMetrics, FleetOverview};
use crate::ops::{Caller, Ops};
use axum::Json;
use axum::body::Bytes;
use axum::extract::{Extension, Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use base64::Engine;
use serde::Deserialize;
use std::collections::{BTreeMap, HashMap};

pub(super) async fn fleet_health(
    State(ops): State<Ops>,
    Extension(caller): Extension<Caller>,
) -> Reply<FleetHealth> {
    Ok(Json(ops.fleet_health(&caller).await?))
}

pub(super) async fn fleet_overview(
    State(ops): State<Ops>,
    Extension(caller): Extension<Caller>,
) -> Reply<FleetOverview> {
    Ok(Json(ops.fleet_overview(&caller).await?))
}

pub(super) async fn fleet_metrics(
    State(ops): State<Ops>,
    Extension(caller): Extension<Caller>,
    Query(q): Query<HashMap<String, String>>,
) -> Reply<FleetMetrics> {
    let query = FleetMetricsQuery::parse(pairs(&q))?;
    Ok(Json(ops.fleet_metrics(&caller, &query).await?))
}

pub(super) async fn list(
    State(ops): State<Ops>,
    Extension(caller): Extension<Caller>,
    Query(q): Query<HashMap<String, String>>,
) -> Reply<AgentsPage> {
    let query = AgentQuery::parse(pairs(&q))?;
    Ok(Json(ops.list_agents(&caller, &query).await?))
}

pub(super) async fn get(
    State(ops): State<Ops>,
    Extension(caller): Extension<Caller>,
    Path(uid): Path<String>,
) -> Reply<AgentDetail> {
    Ok(Json(ops.agent(&caller, &uid).await?))
}

pub(super) async fn delete(
    State(ops): State<Ops>,
    Extension(caller): Extension<Caller>,
    Path(uid): Path<String>,
) -> Reply<Deleted> {
    Ok(Json(ops.delete_agent(&caller, &uid).await?))
}

pub(super) async fn restart(
    State(ops): State<Ops>,
    Extension(caller): Extension<Caller>,
    Path(uid): Path<String>,
) -> Result<Response, ApiError> {
    let r = ops.restart_agent(&caller, &uid).await?;
    Ok((StatusCode::ACCEPTED, Json(r)).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CustomMessageBody {
    capability: String,
    r#type: String,
    data: Option<String>,
    data_base64: Option<String>,
}

/// Sends the agent a custom message (data as text, or base64).
pub(super) async fn custom_message(
    State(ops): State<Ops>,
    Extension(caller): Extension<Caller>,
    Path(uid): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let body: CustomMessageBody = parse_body(
        &body,
        "{\"capability\": \"io.example.cap\", \"type\": \"ping\", \"data\": \"text\"} \
         (or \"data_base64\")",
    )?;
    let data = match (body.data, body.data_base64) {
        (Some(_), Some(_)) => return Err(bad_request("give data or data_base64, not both").into()),
        (Some(text), None) => text.into_bytes(),
        (None, Some(b64)) => base64::engine::general_purpose::STANDARD
            .decode(b64.trim())
            .map_err(|e| bad_request(format!("data_base64 is not base64: {e}")))?,
        (None, None) => Vec::new(),
    };
    let sent = ops
        .send_custom_message(&caller, &uid, &body.capability, &body.r#type, data)
        .await?;
    Ok((StatusCode::ACCEPTED, Json(sent)).into_response())
}

/// Issues the agent a new client certificate and key and offers them over OpAMP.
pub(super) async fn certificate(
    State(ops): State<Ops>,
    Extension(caller): Extension<Caller>,
    Path(uid): Path<String>,
) -> Result<Response, ApiError> {
    let issued = ops.issue_certificate(&caller, &uid).await?;
    Ok((StatusCode::ACCEPTED, Json(issued)).into_response())
}

pub(super) async fn labels(
    State(ops): State<Ops>,
    Extension(caller): Extension<Caller>,
    Path(uid): Path<String>,
) -> Reply<Labels> {
    Ok(Json(ops.labels(&caller, &uid).await?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LabelsBody {
    #[serde(default)]
    set: BTreeMap<String, String>,
    #[serde(default)]
    remove: Vec<String>,
}

pub(super) async fn set_labels(
    State(ops): State<Ops>,
    Extension(caller): Extension<Caller>,
    Path(uid): Path<String>,
    body: Bytes,
) -> Reply<Labels> {
    let body: LabelsBody = parse_body(
        &body,
        "{\"set\": {\"key\": \"value\"}, \"remove\": [\"key\"]}",
    )?;
    Ok(Json(
        ops.set_labels(&caller, &uid, body.set, body.remove).await?,
    ))
}
