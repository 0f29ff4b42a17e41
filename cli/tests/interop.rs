//! Interop with an independent OpAMP client: agents built on the Python package
//! `opentelemetry-opamp-client` (plain HTTP) connect, get a pushed config on their next poll, and
//! are seen APPLIED through the API; when they stop they report AgentDisconnect.
//!
//! Needs `FLOTILLA_INTEROP_PYTHON`: a Python with that package installed (scripts/test.sh sets
//! one up). Without it the test fails, unless `FLOTILLA_SKIP_INTEROP=1` says to skip it.

mod common;

use common::{config, start};
use serde_json::{Value, json};
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

#[tokio::test]
async fn python_opamp_client_agents_receive_a_config_and_are_seen_applied() {
    let Ok(python) = std::env::var("FLOTILLA_INTEROP_PYTHON") else {
        if std::env::var("FLOTILLA_SKIP_INTEROP").is_ok_and(|v| v == "1") {
            eprintln!("interop test skipped (FLOTILLA_SKIP_INTEROP=1)");
            return;
        }
        panic!(
            "set FLOTILLA_INTEROP_PYTHON to a python with opentelemetry-opamp-client (see scripts/test.sh), or FLOTILLA_SKIP_INTEROP=1"
        );
    };
    let dir = tempfile::tempdir().unwrap();
    let srv = start(config(dir.path())).await;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/interop/opamp_agents.py");
    let mut child = Command::new(python)
        .args([
            script,
            "--endpoint",
            &srv.http_url,
            "--count",
            "3",
            "--attr",
            "env=interop",
        ])
        .args(["--poll-interval", "0.5", "--duration", "60"])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("python starts");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let uids: Vec<uuid::Uuid> =
        serde_json::from_str::<Value>(&line).expect("uid line")["instance_uids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|u| u.as_str().unwrap().parse().unwrap())
            .collect();
    assert_eq!(uids.len(), 3);
    for uid in &uids {
        let v = srv
            .wait_agent(*uid, Duration::from_secs(15), |v| {
                v["status"] == "connected"
            })
            .await;
        assert_eq!(v["non_identifying_attributes"]["env"], "interop");
        assert_eq!(v["transport"], "http");
    }

    let body = "receivers:\n  otlp: {}\nexporters:\n  debug: {}\nservice:\n  pipelines:\n    traces: {receivers: [otlp], exporters: [debug]}\n";
    let (status, cfg) = srv
        .put(
            "/api/v1/configs/interop",
            json!({"selector": {"env": "interop"}, "files": {"collector.yaml": body}}),
        )
        .await;
    assert_eq!(status, 200);
    for uid in &uids {
        let v = srv
            .wait_agent(*uid, Duration::from_secs(15), |v| {
                v["remote_config_status"]["status"] == "APPLIED"
            })
            .await;
        assert_eq!(v["remote_config_status"]["hash"], cfg["hash"]);
        assert_eq!(v["effective_config"]["collector.yaml"]["body"], body);
    }

    // SIGTERM: the client sends AgentDisconnect on stop.
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let status = tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success());
    for uid in &uids {
        srv.wait_agent(*uid, Duration::from_secs(10), |v| {
            v["status"] == "disconnected"
        })
        .await;
    }
    srv.stop().await;
}
