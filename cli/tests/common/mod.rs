//! Shared helpers of the black-box tests: start `flotilla serve`'s app in-process on loopback
//! ports, and talk to its API.
#![allow(dead_code)]

pub mod browser;
pub mod fleet;
pub mod pki;
pub mod py_agent;

use flotilla::app::{self, Running};
use flotilla_common::config::ServeConfig;
use serde_json::Value;
use std::path::Path;
use std::time::{Duration, Instant};

pub struct Server {
    pub running: Option<Running>,
    pub api: String,
    pub ws_url: String,
    pub http_url: String,
}

pub fn config(data_dir: &Path) -> ServeConfig {
    ServeConfig {
        opamp_listen: "127.0.0.1:0".parse().unwrap(),
        api_listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: data_dir.to_owned(),
        ..ServeConfig::default()
    }
}

/// An `--api-tokens` file in `dir` with `(name, role, token)` entries.
pub fn api_tokens_file(dir: &Path, tokens: &[(&str, &str, &str)]) -> std::path::PathBuf {
    let text: String = tokens
        .iter()
        .map(|(name, role, token)| {
            format!("[[token]]\nname = \"{name}\"\nrole = \"{role}\"\ntoken = \"{token}\"\n")
        })
        .collect();
    let path = dir.join("api-tokens.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// How many agents of an agent list are APPLIED with config hash `hash`.
pub fn applied_with(list: &Value, hash: &str) -> usize {
    list["agents"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| {
            a["remote_config_status"]["status"] == "APPLIED"
                && a["remote_config_status"]["hash"] == hash
        })
        .count()
}

pub async fn start(cfg: ServeConfig) -> Server {
    let running = app::start(cfg).await.expect("server starts");
    Server {
        api: format!("http://{}", running.api_addr),
        ws_url: format!(
            "ws://{}/v1/opamp",
            running.opamp_addr.expect("gateway role")
        ),
        http_url: format!(
            "http://{}/v1/opamp",
            running.opamp_addr.expect("gateway role")
        ),
        running: Some(running),
    }
}

impl Server {
    pub async fn stop(mut self) {
        self.running
            .take()
            .unwrap()
            .shutdown(Duration::from_secs(10))
            .await;
    }

    /// The Prometheus exposition of `/metrics`.
    pub async fn metrics(&self) -> String {
        reqwest::get(format!("{}/metrics", self.api))
            .await
            .expect("API reachable")
            .text()
            .await
            .unwrap()
    }

    /// The sum of the samples of `series` (see [`flotilla_testkit::metric_sum`]).
    pub async fn metric(&self, series: &str) -> f64 {
        flotilla_testkit::metric_sum(&self.metrics().await, series)
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        let r = reqwest::get(format!("{}{path}", self.api))
            .await
            .expect("API reachable");
        (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
    }

    pub async fn put(&self, path: &str, body: Value) -> (u16, Value) {
        let r = reqwest::Client::new()
            .put(format!("{}{path}", self.api))
            .json(&body)
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
    }

    pub async fn post_json(&self, path: &str, body: Value) -> (u16, Value) {
        let r = reqwest::Client::new()
            .post(format!("{}{path}", self.api))
            .json(&body)
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
    }

    /// Polls `path` until `pred` holds of its body, or fails after `timeout`.
    pub async fn wait_for(
        &self,
        path: &str,
        timeout: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let (status, body) = self.get(path).await;
            if status == 200 && pred(&body) {
                return body;
            }
            assert!(
                Instant::now() < deadline,
                "{path} never reached the expected state; last: {body}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub async fn post(&self, path: &str) -> (u16, Value) {
        let r = reqwest::Client::new()
            .post(format!("{}{path}", self.api))
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
    }

    pub async fn agent(&self, uid: uuid::Uuid) -> Value {
        let (status, body) = self.get(&format!("/api/v1/agents/{uid}")).await;
        assert_eq!(status, 200, "agent {uid}: {body}");
        body
    }

    /// Polls the agent's API view until `pred` holds, or fails after `timeout`.
    pub async fn wait_agent(
        &self,
        uid: uuid::Uuid,
        timeout: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let (status, body) = self.get(&format!("/api/v1/agents/{uid}")).await;
            if status == 200 && pred(&body) {
                return body;
            }
            assert!(
                Instant::now() < deadline,
                "agent {uid} never reached the expected state; last: {body}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Connects `agent` over WebSocket and answers the server until it has nothing more to ask
/// (full state, a config to apply): the agent is then known and up to date.
pub async fn connect(
    srv: &Server,
    agent: &mut flotilla_loadtest::sim::SimAgent,
) -> flotilla_loadtest::client::WsClient {
    let mut ws = flotilla_loadtest::client::WsClient::connect(&srv.ws_url)
        .await
        .unwrap();
    let first = agent.full_report();
    converse(&mut ws, agent, vec![first]).await;
    ws
}

/// Sends `first` and whatever the agent answers to each reply, until it has nothing more to say;
/// returns how many configs the server sent it meanwhile.
pub async fn converse(
    ws: &mut flotilla_loadtest::client::WsClient,
    agent: &mut flotilla_loadtest::sim::SimAgent,
    first: Vec<flotilla_proto::opamp::AgentToServer>,
) -> usize {
    let mut queue = std::collections::VecDeque::from(first);
    let mut configs = 0;
    while let Some(msg) = queue.pop_front() {
        let reply = ws.request(&msg).await.expect("answered");
        configs += usize::from(reply.remote_config.is_some());
        queue.extend(agent.handle(&reply));
    }
    configs
}

/// Sends `msg` and asserts the server answered it without an error.
pub async fn answered_ok(
    ws: &mut flotilla_loadtest::client::WsClient,
    msg: &flotilla_proto::opamp::AgentToServer,
) -> flotilla_proto::opamp::ServerToAgent {
    let reply = ws.request(msg).await.expect("a reply");
    assert!(reply.error_response.is_none(), "an error reply: {reply:?}");
    reply
}

pub fn full_state_requested(m: &flotilla_proto::opamp::ServerToAgent) -> bool {
    m.flags & flotilla_proto::opamp::ServerToAgentFlags::ReportFullState as u64 != 0
}
