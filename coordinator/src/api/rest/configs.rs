//! REST handlers for configs.

use super::reply::{ApiError, Reply, parse_body, parse_version};
use crate::ops::configs::{ConfigDeleted, ConfigDraft, DRAFT_SHAPE};
use crate::ops::views::{ConfigDiff, ConfigHistory, ConfigView};
use crate::ops::{self, Caller, Ops};
use axum::Json;
use axum::body::Bytes;
use axum::extract::{Extension, Path, Query, State};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

#[derive(Serialize)]
pub(super) struct Configs {
    configs: Vec<ConfigView>,
}

pub(super) async fn list(
    State(ops): State<Ops>,
    Extension(caller): Extension<Caller>,
) -> Reply<Configs> {
    Ok(Json(Configs {
        configs: ops.configs(&caller).await?,
    }))
}

/// The active version of a config, or its latest if none is active (staged only).
pub(super) async fn get(
    State(ops): State<Ops>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
) -> Reply<ConfigView> {
    Ok(Json(ops.config(&caller, &name, None).await?))
}

pub(super) async fn put(
    State(ops): State<Ops>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    body: Bytes,
) -> Reply<ConfigView> {
    let draft: ConfigDraft = serde_json::from_slice(&body).map_err(|e| {
        ApiError::from(ops::Error::BadRequest(format!(
            "invalid config body: {e}; expected {DRAFT_SHAPE}"
        )))
    })?;
    Ok(Json(ops.put_config(&caller, &name, draft).await?))
}

pub(super) async fn versions(
    State(ops): State<Ops>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
) -> Reply<ConfigHistory> {
    Ok(Json(ops.config_history(&caller, &name).await?))
}

pub(super) async fn version(
    State(ops): State<Ops>,
    Extension(caller): Extension<Caller>,
    Path((name, version)): Path<(String, String)>,
) -> Reply<ConfigView> {
    let v = parse_version(&version)?;
    Ok(Json(ops.config(&caller, &name, Some(v)).await?))
}

/// A unified diff between two versions (`?from=1&to=2`; `to` defaults to the latest).
pub(super) async fn diff(
    State(ops): State<Ops>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Reply<ConfigDiff> {
    let version = |key: &str| q.get(key).map(|v| parse_version(v)).transpose();
    let (from, to) = (version("from")?, version("to")?);
    Ok(Json(ops.config_diff(&caller, &name, from, to).await?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RollbackBody {
    version: u64,
}

pub(super) async fn rollback(
    State(ops): State<Ops>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    body: Bytes,
) -> Reply<ConfigView> {
    let body: RollbackBody = parse_body(&body, "{\"version\": <number>}")?;
    Ok(Json(
        ops.rollback_config(&caller, &name, body.version).await?,
    ))
}

pub(super) async fn delete(
    State(ops): State<Ops>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
) -> Reply<ConfigDeleted> {
    Ok(Json(ops.delete_config(&caller, &name).await?))
}
