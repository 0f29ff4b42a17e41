//! The WebSocket transport against the real listener: framing, sequence numbers, status merging,
//! config push, restart, disconnects, size limits and malformed input.

mod common;

use common::{config, connect, converse, full_state_requested, start};
use flotilla_loadtest::client::{WsClient, WsEvent};
use flotilla_loadtest::sim::SimAgent;
use flotilla_proto::opamp::{
    AgentToServer, AgentToServerFlags, ServerErrorResponseType, ServerToAgent,
};
use prost::Message;
use serde_json::json;
use std::time::Duration;

const T: Duration = Duration::from_secs(5);

#[tokio::test]
async fn first_reply_carries_capabilities_and_sequence_gaps_and_repeats_ask_for_full_state() {
    let dir = tempfile::tempdir().unwrap();
    let srv = start(config(dir.path())).await;
    let mut agent = SimAgent::new("otelcol", &[("env", "prod")]);
    let mut ws = WsClient::connect(&srv.ws_url).await.unwrap();

    let first = ws.request(&agent.full_report()).await.unwrap();
    assert_eq!(first.instance_uid, agent.uid.as_bytes().to_vec());
    assert_eq!(first.capabilities & 0x1, 0x1, "AcceptsStatus");
    assert!(full_state_requested(&first), "unknown agent");
    assert_eq!(
        first
            .connection_settings
            .unwrap()
            .opamp
            .unwrap()
            .heartbeat_interval_seconds,
        30
    );

    let in_order = ws.request(&agent.full_report()).await.unwrap();
    assert!(!full_state_requested(&in_order));
    let hb = agent.heartbeat();
    assert!(!full_state_requested(&ws.request(&hb).await.unwrap()));
    assert!(
        full_state_requested(&ws.request(&hb).await.unwrap()),
        "a repeated sequence_num is answered and asks for full state"
    );
    let mut gap = agent.heartbeat();
    gap.sequence_num += 10;
    assert!(full_state_requested(&ws.request(&gap).await.unwrap()));

    let view = srv.agent(agent.uid).await;
    assert_eq!(view["status"], "connected");
    assert_eq!(view["healthy"], true);
    assert_eq!(view["non_identifying_attributes"]["env"], "prod");
    assert_eq!(
        view["health"]["components"]["pipeline:traces"]["healthy"],
        true
    );
    srv.stop().await;
}

#[tokio::test]
async fn headerless_frames_are_accepted_and_text_frames_ignored() {
    let dir = tempfile::tempdir().unwrap();
    let srv = start(config(dir.path())).await;
    let mut agent = SimAgent::new("otelcol", &[]);
    let mut ws = WsClient::connect(&srv.ws_url).await.unwrap();
    ws.send_text("hello").await.unwrap();
    ws.send_raw(agent.full_report().encode_to_vec())
        .await
        .unwrap();
    let reply = ws.recv(T).await.unwrap();
    assert_eq!(reply.instance_uid, agent.uid.as_bytes().to_vec());
    assert!(reply.error_response.is_none());
    // An empty message after the header is a valid (empty) AgentToServer: answered, with a new uid.
    ws.send_raw(vec![0]).await.unwrap();
    let reply = ws.recv(T).await.unwrap();
    assert_eq!(
        reply.agent_identification.unwrap().new_instance_uid.len(),
        16
    );
    srv.stop().await;
}

#[tokio::test]
async fn malformed_messages_get_bad_request_and_the_connection_stays_usable() {
    let dir = tempfile::tempdir().unwrap();
    let srv = start(config(dir.path())).await;
    let mut ws = WsClient::connect(&srv.ws_url).await.unwrap();
    ws.send_raw(vec![0, 0x0a, 0xff, 0x01]).await.unwrap();
    let reply = ws.recv(T).await.unwrap();
    let err = reply.error_response.expect("error response");
    assert_eq!(err.r#type, ServerErrorResponseType::BadRequest as i32);
    assert!(
        err.error_message.contains("malformed AgentToServer"),
        "{}",
        err.error_message
    );
    assert!(
        reply.remote_config.is_none() && reply.capabilities == 0,
        "error_response goes alone"
    );
    let mut agent = SimAgent::new("otelcol", &[]);
    assert!(
        ws.request(&agent.full_report())
            .await
            .unwrap()
            .error_response
            .is_none()
    );
    srv.stop().await;
}

#[tokio::test]
async fn oversize_messages_close_with_1009_and_others_are_unaffected() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.max_message_size = 4096;
    let srv = start(cfg).await;
    let mut ws = WsClient::connect(&srv.ws_url).await.unwrap();
    let mut agent = SimAgent::new("otelcol", &[]);
    let mut big = agent.full_report();
    big.agent_description
        .as_mut()
        .unwrap()
        .non_identifying_attributes
        .push(flotilla_loadtest::sim::kv("blob", &"x".repeat(10_000)));
    ws.send(&big).await.unwrap();
    match ws.next_event(T).await.unwrap() {
        WsEvent::Closed(Some(frame)) => assert_eq!(u16::from(frame.code), 1009),
        other => panic!("expected close 1009, got {other:?}"),
    }
    let mut other = SimAgent::new("otelcol", &[]);
    let mut ws2 = WsClient::connect(&srv.ws_url).await.unwrap();
    assert!(
        ws2.request(&other.full_report())
            .await
            .unwrap()
            .error_response
            .is_none()
    );
    srv.stop().await;
}

#[tokio::test]
async fn config_is_pushed_to_connected_agents_and_applied_and_failed_are_tracked() {
    let dir = tempfile::tempdir().unwrap();
    let srv = start(config(dir.path())).await;
    let mut good = SimAgent::new("otelcol", &[("env", "prod")]);
    let mut bad = SimAgent::new("otelcol", &[("env", "prod")]);
    bad.fail_marker = Some("exporters".into());
    let mut dev = SimAgent::new("otelcol", &[("env", "dev")]);
    let mut ws_good = connect(&srv, &mut good).await;
    let mut ws_bad = connect(&srv, &mut bad).await;
    let mut ws_dev = connect(&srv, &mut dev).await;

    let body = "receivers: {otlp: {}}\nexporters: {debug: {}}\nservice: {pipelines: {traces: {receivers: [otlp], exporters: [debug]}}}\n";
    let (status, cfg) = srv
        .put(
            "/api/v1/configs/prod-base",
            json!({"selector": {"env": "prod"}, "files": {"collector.yaml": body}}),
        )
        .await;
    assert_eq!(status, 200, "{cfg}");
    assert_eq!(cfg["version"], 1);
    let hash = cfg["hash"].as_str().unwrap().to_owned();

    for (agent, ws) in [(&mut good, &mut ws_good), (&mut bad, &mut ws_bad)] {
        let push = ws.recv(T).await.expect("pushed without the agent asking");
        let rc = push.remote_config.clone().expect("remote config");
        assert_eq!(
            rc.config.unwrap().config_map["collector.yaml"].body,
            body.as_bytes()
        );
        for msg in agent.handle(&push) {
            ws.request(&msg).await.unwrap();
        }
    }
    let v = srv
        .wait_agent(good.uid, T, |v| {
            v["remote_config_status"]["status"] == "APPLIED"
        })
        .await;
    assert_eq!(v["remote_config_status"]["hash"], hash);
    assert_eq!(
        v["desired_config"],
        json!({"name": "prod-base", "version": 1, "hash": hash})
    );
    assert_eq!(v["effective_config"]["collector.yaml"]["body"], body);
    assert_eq!(
        v["effective_config_hash"], hash,
        "effective config hashes like the config sent"
    );
    let v = srv
        .wait_agent(bad.uid, T, |v| {
            v["remote_config_status"]["status"] == "FAILED"
        })
        .await;
    assert_eq!(
        v["remote_config_status"]["error"],
        "config rejected: invalid pipeline"
    );

    // The dev agent matches no config and gets nothing; a heartbeat of the applied agent gets no re-offer.
    assert!(
        ws_dev.recv(Duration::from_millis(300)).await.is_err(),
        "nothing pushed to a non-matching agent"
    );
    assert!(
        ws_good
            .request(&good.heartbeat())
            .await
            .unwrap()
            .remote_config
            .is_none()
    );
    assert_eq!(
        srv.agent(dev.uid).await["desired_config"],
        serde_json::Value::Null
    );
    srv.stop().await;
}

#[tokio::test]
async fn a_config_change_reaches_the_agents_of_a_gateway_in_one_batch() {
    let dir = tempfile::tempdir().unwrap();
    let srv = start(config(dir.path())).await;
    let mut fleet = Vec::new();
    for _ in 0..12 {
        let mut agent = SimAgent::new("otelcol", &[("env", "batch")]);
        let ws = connect(&srv, &mut agent).await;
        fleet.push((agent, ws));
    }
    let downlinks = r#"flotilla_bus_requests_total{kind="downlink""#;
    assert_eq!(srv.metric(downlinks).await, 0.0, "nothing pushed yet");

    let body = "receivers: {otlp: {}}\nexporters: {debug: {}}\nservice: {pipelines: {traces: {receivers: [otlp], exporters: [debug]}}}\n";
    let (status, cfg) = srv
        .put(
            "/api/v1/configs/batch",
            json!({"selector": {"env": "batch"}, "files": {"collector.yaml": body}}),
        )
        .await;
    assert_eq!(status, 200, "{cfg}");
    for (agent, ws) in &mut fleet {
        let push = ws.recv(T).await.expect("pushed without the agent asking");
        assert_eq!(push.instance_uid, agent.uid.as_bytes().to_vec());
        let rc = push.remote_config.expect("remote config");
        assert_eq!(
            rc.config.unwrap().config_map["collector.yaml"].body,
            body.as_bytes()
        );
    }
    // The coordinator counts the acknowledgements once the gateway's answer is back.
    let delivered = r#"flotilla_coordinator_pushes_total{result="delivered"}"#;
    let deadline = std::time::Instant::now() + T;
    while srv.metric(delivered).await < 12.0 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(srv.metric(delivered).await, 12.0);
    assert_eq!(
        srv.metric(r#"flotilla_coordinator_pushes_total{result="undelivered"}"#)
            .await,
        0.0
    );
    assert_eq!(
        srv.metric(downlinks).await,
        1.0,
        "one bus request for the twelve agents; none ending the gateway's grants to answer \
         heartbeats (ADR 0021): the push brings all that changed"
    );
    srv.stop().await;
}

#[tokio::test]
async fn a_push_of_files_leaves_heartbeats_to_the_gateway_and_new_settings_end_its_grants() {
    let dir = tempfile::tempdir().unwrap();
    let srv = start(config(dir.path())).await;
    let mut agent = SimAgent::new("otelcol", &[("env", "grants")]);
    let mut ws = connect(&srv, &mut agent).await;
    let answered = "flotilla_gateway_heartbeats_total{outcome=\"answered\"}";
    let downlinks = r#"flotilla_bus_requests_total{kind="downlink""#;
    let bare = ws.request(&agent.heartbeat()).await.unwrap();
    assert!(bare.connection_settings.is_none() && bare.remote_config.is_none());
    assert_eq!(metric(&srv.metrics().await, answered), 1, "granted");

    // New files: pushed, and the agent's heartbeats are still its gateway's to answer.
    let body = "receivers: {otlp: {}}\nexporters: {debug: {}}\nservice: {pipelines: {traces: {receivers: [otlp], exporters: [debug]}}}\n";
    let (status, cfg) = srv
        .put(
            "/api/v1/configs/files",
            json!({"selector": {"env": "grants"}, "files": {"collector.yaml": body}}),
        )
        .await;
    assert_eq!(status, 200, "{cfg}");
    let push = ws.recv(T).await.unwrap();
    assert!(push.remote_config.is_some(), "pushed");
    let answers = agent.handle(&push);
    converse(&mut ws, &mut agent, answers).await;
    assert_eq!(ws.request(&agent.heartbeat()).await.unwrap(), bare);
    assert_eq!(metric(&srv.metrics().await, answered), 2, "still granted");
    assert_eq!(srv.metric(downlinks).await, 1.0, "the push alone");

    // A new heartbeat interval: the gateway's grants end before anything else of the change is
    // sent (nothing is pushed), and the agent's next heartbeat gets the owner's reply, with it.
    let (status, cfg) = srv
        .put(
            "/api/v1/configs/settings",
            json!({"selector": {"env": "grants"}, "settings": {"heartbeat_interval": "10s"}}),
        )
        .await;
    assert_eq!(status, 200, "{cfg}");
    let deadline = std::time::Instant::now() + T;
    while srv.metric(downlinks).await < 2.0 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        srv.metric(downlinks).await,
        2.0,
        "one request ending the grants"
    );
    let reply = ws.request(&agent.heartbeat()).await.unwrap();
    let opamp = reply.connection_settings.and_then(|s| s.opamp);
    assert_eq!(opamp.map(|o| o.heartbeat_interval_seconds), Some(10));
    assert_eq!(
        metric(&srv.metrics().await, answered),
        2,
        "the owner's reply"
    );
    srv.stop().await;
}

#[tokio::test]
async fn restart_is_delivered_alone_to_capable_agents_and_refused_to_others() {
    let dir = tempfile::tempdir().unwrap();
    let srv = start(config(dir.path())).await;
    let mut agent = SimAgent::new("otelcol", &[]);
    let mut ws = connect(&srv, &mut agent).await;
    let (status, body) = srv
        .post(&format!("/api/v1/agents/{}/restart", agent.uid))
        .await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["delivered"], true);
    let cmd = ws.recv(T).await.unwrap();
    assert!(cmd.command.is_some());
    assert!(cmd.remote_config.is_none() && cmd.connection_settings.is_none() && cmd.flags == 0);

    let mut plain = SimAgent::new("otelcol", &[]);
    plain.capabilities = flotilla_loadtest::sim::COLLECTOR_CAPS & !0x400;
    let _ws2 = connect(&srv, &mut plain).await;
    let (status, body) = srv
        .post(&format!("/api/v1/agents/{}/restart", plain.uid))
        .await;
    assert_eq!(status, 409);
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("AcceptsRestartCommand")
    );
    let (status, _) = srv
        .post(&format!("/api/v1/agents/{}/restart", uuid::Uuid::now_v7()))
        .await;
    assert_eq!(status, 404);
    srv.stop().await;
}

#[tokio::test]
async fn disconnect_and_close_mark_agents_disconnected_and_reconnects_resume_the_sequence() {
    let dir = tempfile::tempdir().unwrap();
    let srv = start(config(dir.path())).await;
    let mut a = SimAgent::new("otelcol", &[]);
    let mut ws = connect(&srv, &mut a).await;
    let bye = ws.request(&a.disconnect()).await.unwrap();
    assert_eq!(
        bye.instance_uid,
        a.uid.as_bytes().to_vec(),
        "AgentDisconnect is answered"
    );
    srv.wait_agent(a.uid, T, |v| v["status"] == "disconnected")
        .await;
    ws.close().await.unwrap();

    // Closing without AgentDisconnect also counts; the reconnect's compressed first message
    // continues the sequence, so no full state is needed.
    let mut b = SimAgent::new("otelcol", &[]);
    let ws = connect(&srv, &mut b).await;
    srv.wait_agent(b.uid, T, |v| v["status"] == "connected")
        .await;
    drop(ws);
    srv.wait_agent(b.uid, T, |v| v["status"] == "disconnected")
        .await;
    let mut ws = WsClient::connect(&srv.ws_url).await.unwrap();
    let reply = ws.request(&b.heartbeat()).await.unwrap();
    assert!(!full_state_requested(&reply));
    srv.wait_agent(b.uid, T, |v| v["status"] == "connected")
        .await;
    srv.stop().await;
}

#[tokio::test]
async fn requested_instance_uid_is_assigned_and_used_afterwards() {
    let dir = tempfile::tempdir().unwrap();
    let srv = start(config(dir.path())).await;
    let mut agent = SimAgent::new("otelcol", &[]);
    let temp = agent.uid;
    let mut ws = WsClient::connect(&srv.ws_url).await.unwrap();
    let msg = AgentToServer {
        flags: AgentToServerFlags::RequestInstanceUid as u64,
        ..agent.full_report()
    };
    let reply = ws.request(&msg).await.unwrap();
    assert_eq!(reply.instance_uid, temp.as_bytes().to_vec());
    for m in agent.handle(&reply) {
        ws.request(&m).await.unwrap();
    }
    assert_ne!(agent.uid, temp);
    let view = srv.agent(agent.uid).await;
    assert_eq!(view["status"], "connected");
    let (status, _) = srv.get(&format!("/api/v1/agents/{temp}")).await;
    assert_eq!(status, 404, "nothing is kept under the temporary uid");
    // Pushes reach the connection under its new uid.
    let (status, _) = srv
        .post(&format!("/api/v1/agents/{}/restart", agent.uid))
        .await;
    assert_eq!(status, 202);
    assert!(ws.recv(T).await.unwrap().command.is_some());
    srv.stop().await;
}

#[tokio::test]
async fn agents_that_stop_talking_are_marked_silent_once_and_recover() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.heartbeat_interval = Duration::from_secs(1);
    let srv = start(cfg).await;
    let mut agent = SimAgent::new("otelcol", &[]);
    let mut ws = connect(&srv, &mut agent).await;
    // The connection stays open but the agent says nothing: silent after 3 intervals.
    let started = std::time::Instant::now();
    srv.wait_agent(agent.uid, Duration::from_secs(8), |v| {
        v["status"] == "silent"
    })
    .await;
    assert!(
        started.elapsed() >= Duration::from_millis(2500),
        "not before 3 intervals"
    );
    let metrics = srv.metrics().await;
    assert!(
        metrics.contains("flotilla_coordinator_agent_events_total{kind=\"silent\"} 1"),
        "{metrics}"
    );
    ws.request(&agent.heartbeat()).await.unwrap();
    srv.wait_agent(agent.uid, T, |v| v["status"] == "connected")
        .await;
    srv.stop().await;
}

/// A metric's value in a Prometheus exposition (0 when absent).
fn metric(metrics: &str, series: &str) -> u64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0)
}

#[tokio::test]
async fn the_gateway_answers_heartbeats_under_the_owners_grant_and_the_owner_records_them() {
    let dir = tempfile::tempdir().unwrap();
    let srv = start(config(dir.path())).await;
    let mut agent = SimAgent::new("otelcol", &[]);
    let mut ws = connect(&srv, &mut agent).await;
    // From here on the test numbers the messages itself.
    let template = agent.heartbeat();
    let hb = |seq| AgentToServer {
        sequence_num: seq,
        ..template.clone()
    };
    let full = AgentToServer {
        sequence_num: 0,
        ..agent.full_report()
    };
    let report = |seq| AgentToServer {
        sequence_num: seq,
        ..full.clone()
    };
    // The owner's reply that ended the agent's first exchange granted: its heartbeats are
    // answered by the gateway, as the owner answers them.
    let owners = ws.request(&template).await.unwrap();
    let bare = ServerToAgent {
        instance_uid: agent.uid.as_bytes().to_vec(),
        capabilities: owners.capabilities,
        ..Default::default()
    };
    assert_eq!(
        owners, bare,
        "nothing but the uid and the server's capabilities"
    );
    assert_ne!(owners.capabilities, 0);
    let mut seq = template.sequence_num;
    for _ in 0..5 {
        seq += 1;
        assert_eq!(ws.request(&hb(seq)).await.unwrap(), owners);
    }
    let answered = "flotilla_gateway_heartbeats_total{outcome=\"answered\"}";
    let m = srv.metrics().await;
    assert_eq!(metric(&m, answered), 6, "{m}");
    // Recorded by the owner within a flush or a few (50 ms each): its sequence number, as connected.
    let view = srv
        .wait_agent(agent.uid, T, |v| v["sequence_num"] == seq)
        .await;
    assert_eq!(view["status"], "connected");
    let recorded = "flotilla_coordinator_uplinks_total{result=\"heartbeat\"}";
    assert!(metric(&srv.metrics().await, recorded) >= 1);

    // A repeat of an answered heartbeat goes to the owner, which asks for the full state; so
    // does a gap. The message after the last heartbeat the gateway answered is in sequence.
    assert!(full_state_requested(&ws.request(&hb(seq)).await.unwrap()));
    assert!(!full_state_requested(
        &ws.request(&report(seq + 1)).await.unwrap()
    ));
    seq += 5;
    assert!(full_state_requested(&ws.request(&hb(seq)).await.unwrap()));
    assert!(!full_state_requested(
        &ws.request(&report(seq + 1)).await.unwrap()
    ));
    assert_eq!(ws.request(&hb(seq + 2)).await.unwrap(), owners);
    assert!(
        !full_state_requested(&ws.request(&report(seq + 3)).await.unwrap()),
        "in sequence after a heartbeat the gateway answered"
    );
    seq += 3;

    // The agent is removed while the gateway answers its heartbeats: the owner ends the grant,
    // and the next heartbeat's reply (the owner's) asks for the full state that brings it back.
    let r = reqwest::Client::new()
        .delete(format!("{}/api/v1/agents/{}", srv.api, agent.uid))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let asked = async {
        loop {
            seq += 1;
            if full_state_requested(&ws.request(&hb(seq)).await.unwrap()) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    tokio::time::timeout(T, asked)
        .await
        .expect("the full state asked for within a few flushes");
    let ended = "flotilla_gateway_heartbeats_total{outcome=\"grant_ended\"}";
    assert!(metric(&srv.metrics().await, ended) >= 1);
    srv.stop().await;
}
