//! The admin REST API (`/api/v1/...`, JSON). Errors are `{"error": "<message>"}` with the status
//! from the one error-kind mapping.

use crate::admin::ConfigDraft;
use crate::auth::{self, ApiTokens, Caller};
use crate::rollouts::RolloutRequest;
use crate::service::{Coordinator, RestartOutcome, ServiceError};
use crate::views::{self, Filters};
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Extension, Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use flotilla_common::error::ErrorKind;
use flotilla_common::selector::Selector;
use flotilla_common::store::{AuditQuery, StoredConfig};
use flotilla_proto::bus::AgentRecord;
use serde::Deserialize;
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use uuid::Uuid;

const DEFAULT_LIMIT: usize = 100;
const MAX_LIMIT: usize = 1000;

/// The API routes, REST and gRPC ([`crate::grpc`]); with `tokens`, every request must carry one
/// whose role allows it.
pub fn router(coordinator: Arc<Coordinator>, tokens: Option<Arc<ApiTokens>>) -> Router {
    Router::new()
        // Routed by hand rather than through `tonic::service::Routes`, whose catch-all fallback
        // (gRPC UNIMPLEMENTED) would answer unknown REST paths too.
        .route_service(
            &format!("/{}/{{*rpc}}", crate::grpc::SERVICE_NAME),
            crate::grpc::service(coordinator.clone()),
        )
        .route("/api/v1/fleet/health", get(fleet_health))
        .route("/api/v1/agents", get(list_agents))
        .route("/api/v1/agents/{uid}", get(get_agent).delete(delete_agent))
        .route("/api/v1/agents/{uid}/restart", post(restart_agent))
        .route("/api/v1/agents/{uid}/certificate", post(issue_certificate))
        .route(
            "/api/v1/agents/{uid}/labels",
            get(get_labels).post(set_labels),
        )
        .route("/api/v1/configs", get(list_configs))
        .route("/api/v1/configs/{name}", get(get_config).put(put_config))
        .route("/api/v1/configs/{name}/versions", get(config_versions))
        .route(
            "/api/v1/configs/{name}/versions/{version}",
            get(config_version),
        )
        .route("/api/v1/configs/{name}/diff", get(config_diff))
        .route("/api/v1/configs/{name}/rollback", post(rollback_config))
        .route("/api/v1/rollouts", get(list_rollouts).post(start_rollout))
        .route("/api/v1/rollouts/{id}", get(get_rollout))
        .route("/api/v1/rollouts/{id}/{action}", post(control_rollout))
        .route("/api/v1/restarts", post(restart_matching))
        .route("/api/v1/restarts/{id}", get(restart_job))
        .route("/api/v1/audit", get(audit))
        .route("/api/v1/openapi.json", get(openapi))
        .with_state(coordinator.clone())
        .layer(axum::middleware::from_fn_with_state(
            auth::Gate::new(tokens, coordinator),
            auth::authorize,
        ))
}

/// An API error: its kind picks the status (or gRPC code), its message is shown to the caller.
pub struct ApiError(pub(crate) ErrorKind, pub(crate) String);

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
    let [total, connected, healthy, unhealthy, silent, disconnected] = health_counts(&c).await?;
    Ok(axum::Json(json!({
        "total_agents": total,
        "connected_agents": connected,
        "healthy_agents": healthy,
        "unhealthy_agents": unhealthy,
        "silent_agents": silent,
        "disconnected_agents": disconnected,
    })))
}

/// [total, connected, healthy, unhealthy, silent, disconnected]; health counts connected agents.
pub(crate) async fn health_counts(c: &Coordinator) -> Result<[u64; 6], ApiError> {
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
    Ok(n)
}

fn parse_filters(q: &HashMap<String, String>) -> Result<(Filters, usize, Option<Uuid>), ApiError> {
    let mut f = Filters::default();
    if let Some(sel) = q.get("selector") {
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

/// A selector in its text form (`env=prod,region in (eu,us),!canary`).
pub fn parse_selector(s: &str) -> Result<Selector, ApiError> {
    s.parse().map_err(|e| bad_request(format!("{e}")))
}

async fn list_agents(
    State(c): State<Arc<Coordinator>>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult {
    let page = agents_page(&c, &q).await?;
    Ok(axum::Json(json!({
        "total": page.total,
        "agents": page.agents,
        "next_cursor": page.next_cursor,
    })))
}

/// One page of the agent list: summaries (as [`views::summary`] shows them).
pub(crate) struct AgentsPage {
    pub total: usize,
    pub agents: Vec<Value>,
    pub next_cursor: Option<String>,
}

/// Agents sorted by instance_uid; the cursor is the last uid of the previous page. `q` holds
/// the list's query parameters (selector, status, health, limit, cursor).
pub(crate) async fn agents_page(
    c: &Coordinator,
    q: &HashMap<String, String>,
) -> Result<AgentsPage, ApiError> {
    let (filters, limit, cursor) = parse_filters(q)?;
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
    let desired = c.desired();
    let mut agents = Vec::with_capacity(page.len());
    for uid in page {
        // An agent is never removed, so every uid of the page has a record.
        if let Some(rec) = c.agent(*uid).await? {
            agents.push(views::summary(&rec, &desired));
        }
    }
    Ok(AgentsPage {
        total,
        agents,
        next_cursor,
    })
}

pub(crate) fn parse_uid(s: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(s).map_err(|_| {
        bad_request(format!(
            "{s:?} is not an instance uid (expected a UUID such as 0190c9a4-...)"
        ))
    })
}

/// The record of agent `uid`, or NotFound.
pub(crate) async fn agent_record(c: &Coordinator, uid: Uuid) -> Result<AgentRecord, ApiError> {
    c.agent(uid)
        .await?
        .ok_or_else(|| ApiError(ErrorKind::NotFound, format!("no agent {uid}")))
}

async fn get_agent(State(c): State<Arc<Coordinator>>, Path(uid): Path<String>) -> ApiResult {
    let rec = agent_record(&c, parse_uid(&uid)?).await?;
    Ok(axum::Json(views::detail(&rec, &c.desired(), c.redactor())))
}

/// Removes an agent's record (audited); a connected agent comes back at its next message.
async fn delete_agent(
    State(c): State<Arc<Coordinator>>,
    Extension(caller): Extension<Caller>,
    Path(uid): Path<String>,
) -> ApiResult {
    let uid = parse_uid(&uid)?;
    c.delete_agent(uid, &caller.name).await?;
    Ok(axum::Json(
        json!({"instance_uid": uid.to_string(), "deleted": true}),
    ))
}

async fn restart_agent(
    State(c): State<Arc<Coordinator>>,
    Extension(caller): Extension<Caller>,
    Path(uid): Path<String>,
) -> Result<Response, ApiError> {
    let uid = parse_uid(&uid)?;
    let outcome = c.restart(uid, &caller.name).await?;
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
    let out = c.issue_certificate(uid, &caller.name).await?;
    let body = json!({
        "instance_uid": uid.to_string(),
        "sha256": out.sha256,
        "not_after": views::rfc3339(out.not_after_unix_ms),
        "delivered": out.delivered,
    });
    Ok((StatusCode::ACCEPTED, axum::Json(body)).into_response())
}

async fn list_configs(State(c): State<Arc<Coordinator>>) -> ApiResult {
    let desired = c.desired();
    let configs: Vec<Value> = desired.configs.iter().map(views::config_json).collect();
    Ok(axum::Json(json!({"configs": configs})))
}

async fn get_config(State(c): State<Arc<Coordinator>>, Path(name): Path<String>) -> ApiResult {
    Ok(axum::Json(views::config_json(
        &current_config(&c, &name).await?,
    )))
}

/// The active version of a config, or its latest if none is active (staged only).
pub(crate) async fn current_config(c: &Coordinator, name: &str) -> Result<StoredConfig, ApiError> {
    if let Some(cfg) = c.desired().configs.iter().find(|x| x.name == name) {
        return Ok(cfg.clone());
    }
    let mut history = c.config_history(name).await?;
    Ok(history.pop().expect("history is never empty"))
}

async fn put_config(
    State(c): State<Arc<Coordinator>>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    body: Bytes,
) -> ApiResult {
    let draft: ConfigDraft = serde_json::from_slice(&body).map_err(|e| {
        bad_request(format!(
            "invalid config body: {e}; expected {{\"selector\": \"env=prod\" or {{\"key\": \"value\"}}, \"files\": {{\"name.yaml\": \"<body>\"}}, \"packages\": {{...}}, \"settings\": {{...}}, \"activate\": true}}"
        ))
    })?;
    let stored = c
        .put_config(&name, draft, &caller.name, String::new())
        .await?;
    Ok(axum::Json(views::config_json(&stored)))
}

async fn config_versions(State(c): State<Arc<Coordinator>>, Path(name): Path<String>) -> ApiResult {
    let history = c.config_history(&name).await?;
    let active = c
        .desired()
        .configs
        .iter()
        .find(|x| x.name == name)
        .map(|x| x.version);
    let versions: Vec<Value> = history
        .iter()
        .rev()
        .map(|v| {
            json!({
                "version": v.version,
                "hash": v.hash,
                "selector": views::selector_json(&v.selector),
                "created": views::rfc3339(v.created_unix_ms),
                "created_by": v.created_by,
                "comment": v.comment,
                "active": Some(v.version) == active,
            })
        })
        .collect();
    Ok(axum::Json(
        json!({"name": name, "active_version": active, "versions": versions}),
    ))
}

fn parse_version(s: &str) -> Result<u64, ApiError> {
    s.parse()
        .map_err(|_| bad_request(format!("version must be a number, not {s:?}")))
}

async fn config_version(
    State(c): State<Arc<Coordinator>>,
    Path((name, version)): Path<(String, String)>,
) -> ApiResult {
    let v = c.config_version(&name, parse_version(&version)?).await?;
    Ok(axum::Json(views::config_json(&v)))
}

/// A unified diff between two versions (`?from=1&to=2`; `to` defaults to the latest).
async fn config_diff(
    State(c): State<Arc<Coordinator>>,
    Path(name): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult {
    let history = c.config_history(&name).await?;
    let pick = |key: &str| -> Result<Option<&flotilla_common::store::StoredConfig>, ApiError> {
        match q.get(key) {
            None => Ok(None),
            Some(v) => {
                let v = parse_version(v)?;
                history
                    .iter()
                    .find(|c| c.version == v)
                    .map(Some)
                    .ok_or_else(|| {
                        ApiError(
                            ErrorKind::NotFound,
                            format!("config {name:?} has no version {v}"),
                        )
                    })
            }
        }
    };
    let from = pick("from")?.ok_or_else(|| bad_request("?from=<version> is required"))?;
    let to = pick("to")?.unwrap_or_else(|| history.last().expect("never empty"));
    Ok(axum::Json(json!({
        "name": name,
        "from": from.version,
        "to": to.version,
        "diff": views::diff(from, to),
    })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RollbackBody {
    version: u64,
}

async fn rollback_config(
    State(c): State<Arc<Coordinator>>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    body: Bytes,
) -> ApiResult {
    let body: RollbackBody = parse_body(&body, "{\"version\": <number>}")?;
    let stored = c.rollback_config(&name, body.version, &caller.name).await?;
    Ok(axum::Json(views::config_json(&stored)))
}

fn parse_body<T: serde::de::DeserializeOwned>(body: &[u8], shape: &str) -> Result<T, ApiError> {
    serde_json::from_slice(body)
        .map_err(|e| bad_request(format!("invalid body: {e}; expected {shape}")))
}

async fn get_labels(State(c): State<Arc<Coordinator>>, Path(uid): Path<String>) -> ApiResult {
    let uid = parse_uid(&uid)?;
    let rec = agent_record(&c, uid).await?;
    let labels: BTreeMap<_, _> = rec.labels.into_iter().collect();
    Ok(axum::Json(
        json!({"instance_uid": uid.to_string(), "labels": labels}),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LabelsBody {
    #[serde(default)]
    set: BTreeMap<String, String>,
    #[serde(default)]
    remove: Vec<String>,
}

async fn set_labels(
    State(c): State<Arc<Coordinator>>,
    Extension(caller): Extension<Caller>,
    Path(uid): Path<String>,
    body: Bytes,
) -> ApiResult {
    let uid = parse_uid(&uid)?;
    let body: LabelsBody = parse_body(
        &body,
        "{\"set\": {\"key\": \"value\"}, \"remove\": [\"key\"]}",
    )?;
    let labels = c
        .set_labels(uid, body.set, body.remove, &caller.name)
        .await?;
    Ok(axum::Json(
        json!({"instance_uid": uid.to_string(), "labels": labels}),
    ))
}

async fn list_rollouts(State(c): State<Arc<Coordinator>>) -> ApiResult {
    let all: Vec<Value> = c
        .rollouts()
        .await?
        .iter()
        .map(views::rollout_json)
        .collect();
    Ok(axum::Json(json!({"rollouts": all})))
}

async fn start_rollout(
    State(c): State<Arc<Coordinator>>,
    Extension(caller): Extension<Caller>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let req: RolloutRequest = parse_body(
        &body,
        "{\"config\": \"name\", \"version\": 2, \"phases\": {\"initial\": 10, \"multiplier\": 2, \"max_per_phase\": 1000} or {\"percentages\": [10, 50, 100]}, \"soak\": \"30s\", \"error_budget\": {\"max_failure_percent\": 10, \"min_sample\": 5, \"action\": \"rollback\" or \"pause\"}}",
    )?;
    let r = c.start_rollout(req, &caller.name).await?;
    Ok((StatusCode::CREATED, axum::Json(views::rollout_json(&r))).into_response())
}

async fn get_rollout(State(c): State<Arc<Coordinator>>, Path(id): Path<String>) -> ApiResult {
    Ok(axum::Json(views::rollout_json(&c.rollout(&id).await?)))
}

async fn control_rollout(
    State(c): State<Arc<Coordinator>>,
    Extension(caller): Extension<Caller>,
    Path((id, action)): Path<(String, String)>,
) -> ApiResult {
    let r = c.control_rollout(&id, &action, &caller.name).await?;
    Ok(axum::Json(views::rollout_json(&r)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RestartBody {
    selector: Selector,
    #[serde(default = "default_restart_rate")]
    rate_per_second: f64,
}

pub(crate) fn default_restart_rate() -> f64 {
    10.0
}

async fn restart_matching(
    State(c): State<Arc<Coordinator>>,
    Extension(caller): Extension<Caller>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let body: RestartBody = parse_body(
        &body,
        "{\"selector\": \"env=prod\", \"rate_per_second\": 10}",
    )?;
    let job = c
        .restart_matching(body.selector, body.rate_per_second, &caller.name)
        .await?;
    Ok((StatusCode::ACCEPTED, axum::Json(json!(job))).into_response())
}

async fn restart_job(State(c): State<Arc<Coordinator>>, Path(id): Path<String>) -> ApiResult {
    Ok(axum::Json(json!(c.restart_job(&id).await?)))
}

const DEFAULT_AUDIT_LIMIT: usize = 100;

/// `?object=config/otel&since=<RFC 3339>&until=<RFC 3339>&limit=N`, newest first.
async fn audit(
    State(c): State<Arc<Coordinator>>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult {
    let page = c.audit_log(&audit_query(&q)?).await?;
    let entries: Vec<Value> = page.entries.iter().map(views::audit_json).collect();
    Ok(axum::Json(
        json!({"entries": entries, "truncated": page.truncated}),
    ))
}

/// The audit query of the parameters `q` (object, since, until, limit).
pub(crate) fn audit_query(q: &HashMap<String, String>) -> Result<AuditQuery, ApiError> {
    let time = |key: &str| -> Result<Option<u64>, ApiError> {
        q.get(key)
            .map(|t| {
                humantime::parse_rfc3339_weak(t)
                    .ok()
                    .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                    .map(|d| d.as_millis() as u64)
                    .ok_or_else(|| {
                        bad_request(format!(
                            "{key} must be an RFC 3339 time such as 2026-11-21T10:00:00Z, not {t:?}"
                        ))
                    })
            })
            .transpose()
    };
    for key in q.keys() {
        if !matches!(key.as_str(), "object" | "since" | "until" | "limit") {
            return Err(bad_request(format!("unknown query parameter {key:?}")));
        }
    }
    let limit = match q.get("limit") {
        None => DEFAULT_AUDIT_LIMIT,
        Some(l) => l
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=MAX_LIMIT).contains(n))
            .ok_or_else(|| {
                bad_request(format!("limit must be from 1 to {MAX_LIMIT}, not {l:?}"))
            })?,
    };
    Ok(AuditQuery {
        since_unix_ms: time("since")?,
        until_unix_ms: time("until")?,
        object: q.get("object").cloned(),
        limit,
        max_bytes: MAX_AUDIT_BYTES,
    })
}

/// An audit answer holds at most this much of entries (each may carry two config versions):
/// past it the page is cut short and says so.
const MAX_AUDIT_BYTES: usize = 16 << 20;

async fn openapi() -> Response {
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        crate::openapi::DOCUMENT,
    )
        .into_response()
}
