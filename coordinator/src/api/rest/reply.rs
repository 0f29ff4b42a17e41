//! What every REST handler shares: an operation's error as a JSON response, and reading bodies,
//! query parameters and version numbers.

use crate::ops;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;
use serde_json::json;
use std::collections::HashMap;

/// An operation's error, as REST shows it.
pub struct ApiError(ops::Error);

impl From<ops::Error> for ApiError {
    fn from(e: ops::Error) -> Self {
        Self(e)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.0.kind().http_status())
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        (status, axum::Json(json!({"error": self.0.to_string()}))).into_response()
    }
}

pub(super) type Reply<T> = Result<axum::Json<T>, ApiError>;

/// A JSON body of the shape `shape` describes (named in the error).
pub(super) fn parse_body<T: DeserializeOwned>(body: &[u8], shape: &str) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| {
        ApiError(ops::Error::BadRequest(format!(
            "invalid body: {e}; expected {shape}"
        )))
    })
}

/// Query parameters as the operations read them.
pub(super) fn pairs(q: &HashMap<String, String>) -> impl Iterator<Item = (&str, &str)> {
    q.iter().map(|(k, v)| (k.as_str(), v.as_str()))
}

/// A version number from a path or query parameter.
pub(super) fn parse_version(s: &str) -> Result<u64, ApiError> {
    s.parse().map_err(|_| {
        ApiError(ops::Error::BadRequest(format!(
            "version must be a number, not {s:?}"
        )))
    })
}
