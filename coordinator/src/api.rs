//! The admin REST API (`/api/v1/...`, JSON). Errors are `{"error": "<message>"}` with the status
//! from the one error-kind mapping.

use crate::service::{Coordinator, RestartOutcome, ServiceError};
use crate::views::{self, Filters};
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use flotilla_common::error::ErrorKind;
use serde::Deserialize;
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use uuid::Uuid;

const DEFAULT_LIMIT: usize = 100;
const MAX_LIMIT: usize = 1000;

pub fn router(coordinator: Arc<Coordinator>) -> Router {
    Router::new()
        .route("/api/v1/fleet/health", get(fleet_health))
        .route("/api/v1/agents", get(list_agents))
        .route("/api/v1/agents/{uid}", get(get_agent))
        .route("/api/v1/agents/{uid}/restart", post(restart_agent))
        .route("/api/v1/configs", get(list_configs))
        .route("/api/v1/configs/{name}", get(get_config).put(put_config))
        .with_state(coordinator)
}

/// An API error: its kind picks the status, its message is shown to the caller.
pub struct ApiError(ErrorKind, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status =
            StatusCode::from_u16(self.0.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        (status, axum::Json(json!({"error": self.1}))).into_response()
    }
}

impl From<ServiceError> for ApiError {
    fn from(e: ServiceError) -> Self {
        Self(e.kind(), e.to_string())
    }
}

impl From<flotilla_common::store::StoreError> for ApiError {
    fn from(e: flotilla_common::store::StoreError) -> Self {
        ServiceError::from(e).into()
    }
}

fn bad_request(msg: impl Into<String>) -> ApiError {
    ApiError(ErrorKind::BadRequest, msg.into())
}

type ApiResult = Result<axum::Json<Value>, ApiError>;

async fn fleet_health(State(c): State<Arc<Coordinator>>) -> ApiResult {
    let agents = c.agents().await?;
    let count = |f: &dyn Fn(&flotilla_proto::bus::AgentRecord) -> bool| {
        agents.iter().filter(|a| f(a)).count()
    };
    let connected = |a: &flotilla_proto::bus::AgentRecord| views::status_name(a) == "connected";
    Ok(axum::Json(json!({
        "total_agents": agents.len(),
        "connected_agents": count(&connected),
        "healthy_agents": count(&|a| connected(a) && views::healthy(a) == Some(true)),
        "unhealthy_agents": count(&|a| connected(a) && views::healthy(a) == Some(false)),
        "silent_agents": count(&|a| views::status_name(a) == "silent"),
        "disconnected_agents": count(&|a| views::status_name(a) == "disconnected"),
    })))
}

fn parse_filters(q: &HashMap<String, String>) -> Result<(Filters, usize, Option<Uuid>), ApiError> {
    let mut f = Filters::default();
    if let Some(sel) = q.get("selector").filter(|s| !s.is_empty()) {
        f.selector = parse_selector(sel)?;
    }
    if let Some(s) = q.get("status") {
        if !matches!(s.as_str(), "connected" | "disconnected" | "silent") {
            return Err(bad_request(format!(
                "status must be connected, disconnected or silent, not {s:?}"
            )));
        }
        f.status = Some(s.clone());
    }
    f.healthy = match q.get("health").map(String::as_str) {
        None => None,
        Some("healthy") => Some(true),
        Some("unhealthy") => Some(false),
        Some(h) => {
            return Err(bad_request(format!(
                "health must be healthy or unhealthy, not {h:?}"
            )));
        }
    };
    let limit = match q.get("limit") {
        None => DEFAULT_LIMIT,
        Some(l) => match l.parse::<usize>() {
            Ok(n) if (1..=MAX_LIMIT).contains(&n) => n,
            _ => {
                return Err(bad_request(format!(
                    "limit must be a number from 1 to {MAX_LIMIT}, not {l:?}"
                )));
            }
        },
    };
    let cursor = match q.get("cursor").filter(|c| !c.is_empty()) {
        None => None,
        Some(c) => {
            Some(Uuid::parse_str(c).map_err(|_| bad_request(format!("invalid cursor {c:?}")))?)
        }
    };
    for key in q.keys() {
        if !matches!(
            key.as_str(),
            "selector" | "status" | "health" | "limit" | "cursor"
        ) {
            return Err(bad_request(format!("unknown query parameter {key:?}")));
        }
    }
    Ok((f, limit, cursor))
}

/// `k=v,k2=v2` -> map.
pub fn parse_selector(s: &str) -> Result<BTreeMap<String, String>, ApiError> {
    s.split(',')
        .map(|pair| match pair.split_once('=') {
            Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_owned(), v.trim().to_owned())),
            _ => Err(bad_request(format!(
                "selector must be k=v pairs separated by commas; got {pair:?}"
            ))),
        })
        .collect()
}

/// Agents sorted by instance_uid; the cursor is the last uid of the previous page.
async fn list_agents(
    State(c): State<Arc<Coordinator>>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult {
    let (filters, limit, cursor) = parse_filters(&q)?;
    let mut agents: Vec<_> = c
        .agents()
        .await?
        .into_iter()
        .filter(|a| views::matches_filters(a, &filters))
        .collect();
    agents.sort_by(|a, b| a.instance_uid.cmp(&b.instance_uid));
    let total = agents.len();
    let start = cursor.map_or(0, |cur| {
        agents.partition_point(|a| a.instance_uid.as_slice() <= cur.as_bytes().as_slice())
    });
    let page = &agents[start..(start + limit).min(total)];
    let next_cursor = (start + limit < total)
        .then(|| page.last().map(views::uid_string))
        .flatten();
    let configs = c.configs();
    Ok(axum::Json(json!({
        "total": total,
        "agents": page.iter().map(|a| views::summary(a, &configs)).collect::<Vec<_>>(),
        "next_cursor": next_cursor,
    })))
}

fn parse_uid(s: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(s).map_err(|_| {
        bad_request(format!(
            "{s:?} is not an instance uid (expected a UUID such as 0190c9a4-...)"
        ))
    })
}

async fn get_agent(State(c): State<Arc<Coordinator>>, Path(uid): Path<String>) -> ApiResult {
    let uid = parse_uid(&uid)?;
    let rec = c
        .agent(uid)
        .await?
        .ok_or_else(|| ApiError(ErrorKind::NotFound, format!("no agent {uid}")))?;
    Ok(axum::Json(views::detail(&rec, &c.configs())))
}

async fn restart_agent(
    State(c): State<Arc<Coordinator>>,
    Path(uid): Path<String>,
) -> Result<Response, ApiError> {
    let uid = parse_uid(&uid)?;
    let outcome = c.restart(uid).await?;
    let body = json!({
        "instance_uid": uid.to_string(),
        "delivered": outcome == RestartOutcome::Delivered,
        "queued": outcome == RestartOutcome::Queued,
    });
    Ok((StatusCode::ACCEPTED, axum::Json(body)).into_response())
}

async fn list_configs(State(c): State<Arc<Coordinator>>) -> ApiResult {
    let configs = c.configs();
    Ok(axum::Json(
        json!({"configs": configs.iter().map(views::config_json).collect::<Vec<_>>()}),
    ))
}

async fn get_config(State(c): State<Arc<Coordinator>>, Path(name): Path<String>) -> ApiResult {
    let configs = c.configs();
    let cfg = configs
        .iter()
        .find(|x| x.name == name)
        .ok_or_else(|| ApiError(ErrorKind::NotFound, format!("no config {name:?}")))?;
    Ok(axum::Json(views::config_json(cfg)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PutConfigBody {
    #[serde(default)]
    selector: BTreeMap<String, String>,
    files: BTreeMap<String, String>,
}

async fn put_config(
    State(c): State<Arc<Coordinator>>,
    Path(name): Path<String>,
    body: Bytes,
) -> ApiResult {
    let body: PutConfigBody = serde_json::from_slice(&body).map_err(|e| {
        bad_request(format!(
            "invalid config body: {e}; expected {{\"selector\": {{\"key\": \"value\"}}, \"files\": {{\"name.yaml\": \"<body>\"}}}}"
        ))
    })?;
    let stored = c.put_config(&name, body.selector, body.files).await?;
    Ok(axum::Json(views::config_json(&stored)))
}
