//! Requests to the admin API and what their answers mean: the body of a success, the API's error
//! message otherwise, the warnings an answer carries.

use anyhow::{Context, bail};
use serde_json::Value;

/// The warnings an answer carries, on stderr.
pub(super) fn warn_of(answer: &Value) {
    for w in answer["warnings"].as_array().into_iter().flatten() {
        eprintln!("warning: {}", w.as_str().unwrap_or_default());
    }
}

pub(super) async fn call(req: reqwest::RequestBuilder) -> anyhow::Result<Value> {
    let (status, body) = send(req).await?;
    success(status, body)
}

/// The body of a successful answer; otherwise the API's error message as an error.
pub(super) fn success(status: reqwest::StatusCode, body: Value) -> anyhow::Result<Value> {
    if !status.is_success() {
        let msg = body
            .get("error")
            .and_then(Value::as_str)
            .unwrap_or("no error message");
        bail!("API answered {status}: {msg}");
    }
    Ok(body)
}

/// The API's answer to `req`, whatever its status.
pub(super) async fn send(
    req: reqwest::RequestBuilder,
) -> anyhow::Result<(reqwest::StatusCode, Value)> {
    let resp = req
        .send()
        .await
        .context("cannot reach the Flotilla API (is `flotilla serve` running? see --api)")?;
    let status = resp.status();
    Ok((status, resp.json().await.unwrap_or(Value::Null)))
}
