//! Fleet management against a real standalone Flotilla with agents over real WebSockets: phased
//! rollouts (completing in order, and stopping and rolling back when agents fail), config
//! validation, labels that change which config an agent gets, history/diff/rollback, the audit
//! log naming each change's caller, and the collector supervisor's habits.

#[path = "../common/mod.rs"]
mod common;

mod collectors;
mod configs;
mod rollouts;

use common::fleet::{Fleet, collectors};
use common::{Server, applied_with, config, start};
use serde_json::{Value, json};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(60);

fn collector_yaml(note: &str) -> String {
    format!(
        "# {note}\nreceivers:\n  otlp:\n    protocols: {{grpc: {{}}}}\nprocessors:\n  batch: {{}}\n\
         exporters:\n  debug: {{}}\nservice:\n  pipelines:\n    traces:\n      receivers: [otlp]\n      \
         processors: [batch]\n      exporters: [debug]\n"
    )
}

async fn wait_applied(srv: &Server, n: usize, hash: &str) {
    srv.wait_for("/api/v1/agents?selector=env=prod&limit=1000", WAIT, |v| {
        applied_with(v, hash) == n
    })
    .await;
}

/// Stores v1 (active) and v2 (staged) of config "otel" for env=prod; returns their hashes.
async fn two_versions(srv: &Server, v2_note: &str) -> (String, String) {
    let (status, v1) = srv
        .put(
            "/api/v1/configs/otel",
            json!({"selector": "env=prod", "files": {"collector.yaml": collector_yaml("v1")}}),
        )
        .await;
    assert_eq!(status, 200, "{v1}");
    let (status, v2) = srv
        .put(
            "/api/v1/configs/otel",
            json!({"selector": "env=prod", "files": {"collector.yaml": collector_yaml(v2_note)},
                   "activate": false}),
        )
        .await;
    assert_eq!(status, 200, "{v2}");
    assert_eq!(v2["version"], 2);
    let hash = |v: &Value| v["hash"].as_str().unwrap().to_owned();
    (hash(&v1), hash(&v2))
}

async fn start_rollout(srv: &Server) -> String {
    let (status, r) = srv
        .post_json(
            "/api/v1/rollouts",
            json!({"config": "otel", "phases": {"initial": 10, "multiplier": 3}, "soak": "1s",
                   "error_budget": {"max_failure_percent": 10, "min_sample": 5, "action": "rollback"}}),
        )
        .await;
    assert_eq!(status, 201, "{r}");
    assert_eq!(
        (r["from_version"].as_u64(), r["to_version"].as_u64()),
        (Some(1), Some(2))
    );
    assert_eq!(r["phases"][0]["agents"], 10, "phase 1 starts at once: {r}");
    r["id"].as_str().unwrap().to_owned()
}

fn audit_actions(v: &Value) -> Vec<(String, String)> {
    v["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            let s = |k: &str| e[k].as_str().unwrap_or_default().to_owned();
            (s("action"), s("caller"))
        })
        .collect()
}

async fn wait_until<F, Fut>(cond: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = std::time::Instant::now() + WAIT;
    while !cond().await {
        assert!(std::time::Instant::now() < deadline, "condition never held");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The API with a bearer token per caller name (`<name>-token`).
struct Api {
    base: String,
    http: reqwest::Client,
}

impl Api {
    fn new(base: &str) -> Self {
        Self {
            base: base.to_owned(),
            http: reqwest::Client::new(),
        }
    }

    async fn send(&self, who: &str, method: &str, path: &str, body: Value) -> (u16, Value) {
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(format!("{who}-token"));
        if !body.is_null() {
            req = req.json(&body);
        }
        let r = req.send().await.unwrap();
        (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
    }
}

/// Runs `flotilla ctl --api <api> args...`; returns (success, stdout, stderr).
async fn ctl(api: &str, args: &[&str]) -> (bool, String, String) {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_flotilla"))
        .args(["ctl", "--api", api])
        .args(args)
        .output()
        .await
        .expect("flotilla runs");
    let text = |b: Vec<u8>| String::from_utf8_lossy(&b).into_owned();
    (out.status.success(), text(out.stdout), text(out.stderr))
}
