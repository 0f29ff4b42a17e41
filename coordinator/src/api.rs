//! The admin REST API (`/api/v1/...`, JSON). Errors are `{"error": "<message>"}` with the status
//! from the one error-kind mapping.

use crate::auth::{self, ApiTokens, Caller};
use crate::service::{Coordinator, RestartOutcome, ServiceError};
use crate::views::{self, Filters};
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Extension, Path, Query, State};
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

/// The API routes; with `tokens`, every request must carry one whose role allows it.
pub fn router(coordinator: Arc<Coordinator>, tokens: Option<Arc<ApiTokens>>) -> Router {
    Router::new()
        .route("/api/v1/fleet/health", get(fleet_health))
        .route("/api/v1/agents", get(list_agents))
        .route("/api/v1/agents/{uid}", get(get_agent))
        .route("/api/v1/agents/{uid}/restart", post(restart_agent))
        .route("/api/v1/agents/{uid}/certificate", post(issue_certificate))
        .route("/api/v1/configs", get(list_configs))
        .route("/api/v1/configs/{name}", get(get_config).put(put_config))
        .with_state(coordinator)
        .layer(axum::middleware::from_fn_with_state(
            tokens,
            auth::authorize,
        ))
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
    // [total, connected, healthy, unhealthy, silent, disconnected]; health counts connected agents.
    let mut n = [0u64; 6];
    c.visit_agents(&mut |a| {
        n[0] += 1;
        match views::status_name(a) {
            "connected" => {
                n[1] += 1;
                match views::healthy(a) {
                    Some(true) => n[2] += 1,
                    Some(false) => n[3] += 1,
                    None => {}
                }
            }
            "silent" => n[4] += 1,
            _ => n[5] += 1,
        }
    })
    .await?;
    Ok(axum::Json(json!({
        "total_agents": n[0],
        "connected_agents": n[1],
        "healthy_agents": n[2],
        "unhealthy_agents": n[3],
        "silent_agents": n[4],
        "disconnected_agents": n[5],
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
    // Only the uids of matching agents are collected; records are read for one page.
    let mut uids: Vec<Uuid> = Vec::new();
    c.visit_agents(&mut |a| {
        if views::matches_filters(a, &filters) {
            uids.extend(Uuid::from_slice(&a.instance_uid).ok());
        }
    })
    .await?;
    uids.sort_unstable();
    let total = uids.len();
    let start = cursor.map_or(0, |cur| uids.partition_point(|u| *u <= cur));
    let page = &uids[start..(start + limit).min(total)];
    let next_cursor = (start + limit < total)
        .then(|| page.last().map(Uuid::to_string))
        .flatten();
    let configs = c.configs();
    let mut agents = Vec::with_capacity(page.len());
    for uid in page {
        // An agent is never removed, so every uid of the page has a record.
        if let Some(rec) = c.agent(*uid).await? {
            agents.push(views::summary(&rec, &configs));
        }
    }
    Ok(axum::Json(json!({
        "total": total,
        "agents": agents,
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

/// Issues the agent a new client certificate and key and offers them over OpAMP.
async fn issue_certificate(
    State(c): State<Arc<Coordinator>>,
    Extension(caller): Extension<Caller>,
    Path(uid): Path<String>,
) -> Result<Response, ApiError> {
    let uid = parse_uid(&uid)?;
    let out = c.issue_certificate(uid).await?;
    tracing::info!(target: "flotilla::audit", caller = %caller.name, %uid, sha256 = %out.sha256, "certificate issued");
    let body = json!({
        "instance_uid": uid.to_string(),
        "sha256": out.sha256,
        "not_after": views::rfc3339(out.not_after_unix_ms),
        "delivered": out.delivered,
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
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    body: Bytes,
) -> ApiResult {
    let body: PutConfigBody = serde_json::from_slice(&body).map_err(|e| {
        bad_request(format!(
            "invalid config body: {e}; expected {{\"selector\": {{\"key\": \"value\"}}, \"files\": {{\"name.yaml\": \"<body>\"}}}}"
        ))
    })?;
    let stored = c
        .put_config(&name, body.selector, body.files, &caller.name)
        .await?;
    Ok(axum::Json(views::config_json(&stored)))
}
