//! The habits of the collector's OpAMP supervisor, over a real WebSocket: rolling back a config
//! that did not come up (FAILED for it, then APPLIED for the previous one), and accepting configs
//! without reporting their status (its default).

use super::common::converse;
use super::*;
use flotilla_loadtest::client::{WsClient, WsEvent};
use flotilla_loadtest::sim::SimAgent;
use flotilla_proto::opamp::AgentCapabilities as Cap;

/// The next push the server sends unasked, answered; how many configs were sent meanwhile.
async fn take_push(ws: &mut WsClient, agent: &mut SimAgent) -> usize {
    match ws.next_event(Duration::from_secs(10)).await {
        Ok(WsEvent::Message(push)) => {
            let answers = agent.handle(&push);
            usize::from(push.remote_config.is_some()) + converse(ws, agent, answers).await
        }
        other => panic!("no push: {other:?}"),
    }
}

async fn put_otel(srv: &Server, note: &str) -> String {
    let (status, v) = srv
        .put(
            "/api/v1/configs/otel",
            json!({"selector": "env=prod", "files": {"collector.yaml": collector_yaml(note)}}),
        )
        .await;
    assert_eq!(status, 200, "{v}");
    v["hash"].as_str().unwrap().to_owned()
}

/// Stores `yaml` as the next version of config "otel" for env=prod without activating it (for
/// a rollout); the stored version.
async fn stage_otel(srv: &Server, yaml: String) -> Value {
    let (status, v) = srv
        .put(
            "/api/v1/configs/otel",
            json!({"selector": "env=prod", "files": {"collector.yaml": yaml}, "activate": false}),
        )
        .await;
    assert_eq!(status, 200, "{v}");
    v
}

#[tokio::test]
async fn a_config_the_agent_rolled_back_from_counts_as_failed_and_is_not_pushed_again() {
    let dir = tempfile::tempdir().unwrap();
    let srv = start(config(dir.path())).await;
    let good = put_otel(&srv, "v1").await;
    let mut agent = SimAgent::new("otelcol", &[("env", "prod")]);
    agent.apply.rollback = true;
    agent.fail_marker = Some("BROKEN".into());
    let mut ws = WsClient::connect(&srv.ws_url).await.unwrap();
    let first = agent.full_report();
    assert_eq!(converse(&mut ws, &mut agent, vec![first]).await, 1);

    let broken = put_otel(&srv, "v2 BROKEN").await;
    assert_eq!(take_push(&mut ws, &mut agent).await, 1, "v2 sent once");
    let view = srv.agent(agent.uid).await;
    assert_eq!(view["config_state"], "failed", "{view}");
    let status = &view["remote_config_status"];
    assert_eq!(status["status"], "APPLIED", "{status}");
    assert_eq!(status["hash"], good.as_str());
    assert_eq!(status["rolled_back"]["hash"], broken.as_str());
    assert_eq!(
        status["rolled_back"]["error"],
        "config rejected: invalid pipeline"
    );
    // Heartbeats and a full report after that: no re-push, so no collector restart loop.
    for _ in 0..3 {
        let hb = agent.heartbeat();
        assert_eq!(converse(&mut ws, &mut agent, vec![hb]).await, 0);
    }
    let full = agent.full_report();
    assert_eq!(converse(&mut ws, &mut agent, vec![full]).await, 0);
    let (_, failed) = srv
        .get("/api/v1/agents?selector=env=prod&config=failed")
        .await;
    assert_eq!(failed["total"], 1, "{failed}");

    // A fixed version is sent, and applied.
    let fixed = put_otel(&srv, "v3").await;
    assert_eq!(take_push(&mut ws, &mut agent).await, 1);
    let view = srv.agent(agent.uid).await;
    assert_eq!(view["config_state"], "applied", "{view}");
    assert_eq!(view["remote_config_status"]["hash"], fixed.as_str());
    srv.stop().await;
}

#[tokio::test]
async fn agents_that_report_no_config_status_get_each_config_once_and_do_not_stall_a_rollout() {
    let dir = tempfile::tempdir().unwrap();
    let srv = start(config(dir.path())).await;
    let (status, body) = srv
        .put(
            "/api/v1/configs/solo",
            json!({"selector": "team=solo", "files": {"collector.yaml": collector_yaml("solo")}}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let mut agent = SimAgent::new("otelcol", &[("team", "solo")]);
    agent.capabilities &= !(Cap::ReportsRemoteConfig as u64);
    let mut ws = WsClient::connect(&srv.ws_url).await.unwrap();
    let first = agent.full_report();
    assert_eq!(converse(&mut ws, &mut agent, vec![first]).await, 1);
    for _ in 0..3 {
        let hb = agent.heartbeat();
        assert_eq!(
            converse(&mut ws, &mut agent, vec![hb]).await,
            0,
            "sent once"
        );
    }
    let view = srv.agent(agent.uid).await;
    assert_eq!(view["config_state"], "unknown", "{view}");
    let _ = ws.close().await;

    // A rollout over ten such agents completes; they are counted unknown, not pending.
    let quiet = |mut a: SimAgent| {
        a.capabilities &= !(Cap::ReportsRemoteConfig as u64);
        a
    };
    let agents = collectors(10, &[("env", "prod")], |_| false, "")
        .into_iter()
        .map(quiet)
        .collect();
    put_otel(&srv, "v1").await;
    let fleet = Fleet::start(&srv.ws_url, agents).await;
    let v2 = stage_otel(&srv, collector_yaml("v2")).await;
    assert_eq!(v2["version"], 2, "{v2}");
    let (status, r) = srv
        .post_json(
            "/api/v1/rollouts",
            json!({"config": "otel", "phases": {"initial": 5, "multiplier": 2}, "soak": "1s"}),
        )
        .await;
    assert_eq!(status, 201, "{r}");
    let id = r["id"].as_str().unwrap();
    let done = srv
        .wait_for(&format!("/api/v1/rollouts/{id}"), WAIT, |r| {
            r["state"] == "completed"
        })
        .await;
    assert_eq!(
        (&done["unknown"], &done["failed"], &done["pending"]),
        (&json!(10), &json!(0), &json!(0)),
        "{done}"
    );
    fleet.stop().await;
    srv.stop().await;
}

#[tokio::test]
async fn the_components_an_agent_has_and_the_custom_messages_it_sends_are_shown() {
    use flotilla_proto::opamp::{AvailableComponents, ComponentDetails, ServerToAgentFlags};
    let dir = tempfile::tempdir().unwrap();
    let srv = start(config(dir.path())).await;
    let mut agent = SimAgent::new("otelcol", &[("env", "prod")]);
    agent.capabilities |= Cap::ReportsAvailableComponents as u64;
    let kind = |types: &[&str]| ComponentDetails {
        sub_component_map: types
            .iter()
            .map(|t| (t.to_string(), ComponentDetails::default()))
            .collect(),
        ..Default::default()
    };
    let all = AvailableComponents {
        hash: vec![9; 32],
        components: [
            ("receivers".to_string(), kind(&["otlp", "hostmetrics"])),
            ("exporters".to_string(), kind(&["debug"])),
        ]
        .into(),
    };
    let mut ws = WsClient::connect(&srv.ws_url).await.unwrap();
    // The supervisor's first message: the hash alone.
    let mut first = agent.full_report();
    first.available_components = Some(AvailableComponents {
        hash: all.hash.clone(),
        components: Default::default(),
    });
    let reply = ws.request(&first).await.unwrap();
    let asked = ServerToAgentFlags::ReportAvailableComponents as u64;
    assert_ne!(reply.flags & asked, 0, "the list is asked for");
    let view = srv.agent(agent.uid).await;
    assert_eq!(view["available_components"]["complete"], false, "{view}");
    let mut listed = agent.heartbeat();
    listed.available_components = Some(all.clone());
    let reply = ws.request(&listed).await.unwrap();
    assert_eq!(reply.flags & asked, 0);
    let view = srv.agent(agent.uid).await;
    assert_eq!(
        view["available_components"],
        json!({"hash": hex::encode([9; 32]), "complete": true, "components": {
            "exporters": ["debug"], "receivers": ["hostmetrics", "otlp"]}}),
        "{view}"
    );
    // The hash again after a reconnect: known, not asked for again.
    let mut again = agent.full_report();
    again.sequence_num = 0;
    again.available_components = Some(AvailableComponents {
        hash: all.hash.clone(),
        components: Default::default(),
    });
    let reply = ws.request(&again).await.unwrap();
    assert_eq!(reply.flags & asked, 0, "known hash, not asked again");

    // A custom message it sends is kept and shown.
    let mut custom = agent.heartbeat();
    custom.custom_message = Some(flotilla_proto::opamp::CustomMessage {
        capability: "io.example.echo".into(),
        r#type: "ping".into(),
        data: b"hi".to_vec(),
    });
    ws.request(&custom).await.unwrap();
    let view = srv.agent(agent.uid).await;
    let shown = &view["custom_messages"][0];
    assert_eq!(
        (&shown["capability"], &shown["type"], &shown["data_base64"]),
        (&json!("io.example.echo"), &json!("ping"), &json!("aGk=")),
        "{view}"
    );
    srv.stop().await;
}

#[tokio::test]
async fn an_effective_config_that_differs_from_the_desired_one_is_drift_past_what_the_supervisor_adds()
 {
    use flotilla_proto::opamp::{AgentConfigFile, AgentConfigMap};
    let dir = tempfile::tempdir().unwrap();
    let srv = start(config(dir.path())).await;
    put_otel(&srv, "v1").await;
    let mut agent = SimAgent::new("otelcol", &[("env", "prod")]);
    let mut ws = WsClient::connect(&srv.ws_url).await.unwrap();
    let first = agent.full_report();
    assert_eq!(converse(&mut ws, &mut agent, vec![first]).await, 1);
    // The supervisor reports one "" entry: what it was sent, plus its opamp extension and own
    // telemetry.
    let as_supervisor = |body: String| AgentConfigMap {
        config_map: [(
            String::new(),
            AgentConfigFile {
                body: body.into_bytes().into(),
                content_type: "text/yaml".into(),
            },
        )]
        .into(),
    };
    let uid = agent.uid;
    let supervised = |sent: String| {
        let service = format!(
            "service:\n  extensions: [opamp]\n  telemetry:\n    resource: {{service.instance.id: {uid}}}\n"
        );
        as_supervisor(
            sent.replace("service:\n", &service)
                + "extensions:\n  opamp:\n    server: {ws: {endpoint: ws://x/v1/opamp}}\n",
        )
    };
    agent.effective = Some(supervised(collector_yaml("v1")));
    let full = agent.full_report();
    converse(&mut ws, &mut agent, vec![full]).await;
    let view = srv.agent(agent.uid).await;
    assert_eq!(view["config_drift"], false, "{view}");

    // Someone changed the collector's exporters by hand.
    let by_hand = collector_yaml("v1").replace("exporters: [debug]", "exporters: [otlp]");
    agent.effective = Some(supervised(by_hand));
    let full = agent.full_report();
    converse(&mut ws, &mut agent, vec![full]).await;
    let view = srv.agent(agent.uid).await;
    assert_eq!(view["config_drift"], true, "{view}");
    let (_, overview) = srv.get("/api/v1/fleet/overview").await;
    assert_eq!(overview["drifted_agents"], 1, "{overview}");
    assert_eq!(
        overview["drifted"][0]["instance_uid"],
        agent.uid.to_string()
    );
    let (_, drifted) = srv.get("/api/v1/agents?drift=true").await;
    assert_eq!(drifted["total"], 1, "{drifted}");
    let (status, refused) = srv.get("/api/v1/agents?drift=maybe").await;
    assert_eq!(status, 400, "{refused}");
    srv.stop().await;
}

#[tokio::test]
async fn custom_messages_reach_the_agent_now_or_at_its_next_message_and_bad_ones_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let srv = start(config(dir.path())).await;
    let mut agent = SimAgent::new("otelcol", &[("env", "prod")]);
    agent.custom_capabilities = vec!["io.example.ping".into()];
    let mut ws = WsClient::connect(&srv.ws_url).await.unwrap();
    let first = agent.full_report();
    converse(&mut ws, &mut agent, vec![first]).await;
    let path = format!("/api/v1/agents/{}/custom-messages", agent.uid);

    // Connected over WebSocket: sent at once.
    let (status, sent) = srv
        .post_json(
            &path,
            json!({"capability": "io.example.ping", "type": "ping", "data": "hello"}),
        )
        .await;
    assert_eq!(status, 202, "{sent}");
    assert_eq!(
        (&sent["delivered"], &sent["queued"]),
        (&json!(true), &json!(false))
    );
    take_push(&mut ws, &mut agent).await;
    let got = agent.received_custom.last().expect("the push carried it");
    assert_eq!(
        (
            got.capability.as_str(),
            got.r#type.as_str(),
            got.data.as_slice()
        ),
        ("io.example.ping", "ping", b"hello".as_slice())
    );

    // Bad requests say why and send nothing.
    for (body, code, why) in [
        (
            json!({"capability": "io.example.other", "type": "t"}),
            409,
            "does not declare the custom capability",
        ),
        (
            json!({"capability": "io.example.ping", "type": ""}),
            400,
            "type must be",
        ),
        (
            json!({"capability": "io.example.ping", "type": "t", "data": "a", "data_base64": "YQ=="}),
            400,
            "not both",
        ),
        (
            json!({"capability": "io.example.ping", "type": "t", "data_base64": "!!"}),
            400,
            "not base64",
        ),
        (
            json!({"capability": "io.example.ping", "type": "t", "data": "x".repeat(65 * 1024)}),
            400,
            "at most 65536",
        ),
        (
            json!({"capability": "io.example.ping", "kind": "t"}),
            400,
            "kind",
        ),
    ] {
        let (status, err) = srv.post_json(&path, body.clone()).await;
        assert_eq!(status, code, "{body}: {err}");
        assert!(
            err["error"].as_str().unwrap().contains(why),
            "{body}: {err}"
        );
    }
    let (status, _) = srv
        .post_json(
            &format!("/api/v1/agents/{}/custom-messages", uuid::Uuid::now_v7()),
            json!({"capability": "io.example.ping", "type": "t"}),
        )
        .await;
    assert_eq!(status, 404);

    // Gone: kept for its next message, eight at most, the first sent with the CLI.
    let bye = agent.disconnect();
    ws.send(&bye).await.unwrap();
    ws.close().await.unwrap();
    srv.wait_agent(agent.uid, Duration::from_secs(10), |a| {
        a["status"] == "disconnected"
    })
    .await;
    let file = dir.path().join("payload.bin");
    std::fs::write(&file, [0u8, 159, 146, 150]).unwrap();
    let uid = agent.uid.to_string();
    let api = srv.api.clone();
    let cli = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_flotilla"))
            .args(["ctl", "--api", &api, "agents", "send-message", &uid])
            .args([
                "--capability",
                "io.example.ping",
                "--type",
                "m0",
                "--data-file",
            ])
            .arg(&file)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let out = String::from_utf8_lossy(&cli.stdout);
    assert!(
        cli.status.success(),
        "{out}{}",
        String::from_utf8_lossy(&cli.stderr)
    );
    assert!(out.contains("queued") && out.contains("true"), "{out}");
    for i in 1..8 {
        let (status, sent) = srv
            .post_json(
                &path,
                json!({"capability": "io.example.ping", "type": format!("m{i}")}),
            )
            .await;
        assert_eq!((status, &sent["queued"]), (202, &json!(true)), "{sent}");
    }
    let (status, full) = srv
        .post_json(
            &path,
            json!({"capability": "io.example.ping", "type": "m8"}),
        )
        .await;
    assert_eq!(status, 409, "{full}");
    assert!(
        full["error"].as_str().unwrap().contains("already has 8"),
        "{full}"
    );
    let view = srv.agent(agent.uid).await;
    assert_eq!(
        view["pending_custom_messages"].as_array().unwrap().len(),
        8,
        "{view}"
    );
    assert_eq!(view["pending_custom_messages"][0]["type"], "m0");
    assert_eq!(view["pending_custom_messages"][0]["data_bytes"], 4);

    // Back: one per reply, oldest first, the queue emptied.
    let mut ws = WsClient::connect(&srv.ws_url).await.unwrap();
    agent.received_custom.clear();
    for _ in 0..9 {
        let hb = agent.heartbeat();
        converse(&mut ws, &mut agent, vec![hb]).await;
    }
    let kinds: Vec<&str> = agent
        .received_custom
        .iter()
        .map(|m| m.r#type.as_str())
        .collect();
    assert_eq!(kinds, ["m0", "m1", "m2", "m3", "m4", "m5", "m6", "m7"]);
    assert_eq!(agent.received_custom[0].data, [0u8, 159, 146, 150]);
    let view = srv.agent(agent.uid).await;
    assert_eq!(view["pending_custom_messages"], json!([]), "{view}");

    // Each one sent is audited, with how it went.
    let (_, log) = srv
        .get(&format!(
            "/api/v1/audit?object=agent/{}&limit=100",
            agent.uid
        ))
        .await;
    let sent: Vec<&str> = log["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == "agent.custom_message")
        .map(|e| e["after"]["sent"].as_str().unwrap())
        .collect();
    assert_eq!(
        sent.iter().filter(|s| **s == "delivered").count(),
        1,
        "{log}"
    );
    assert_eq!(sent.iter().filter(|s| **s == "queued").count(), 8, "{log}");
}

/// A collector config that sends traces to Kafka.
fn kafka_yaml(note: &str) -> String {
    collector_yaml(note)
        .replace(
            "  debug: {}\n",
            "  debug: {}\n  kafka/eu:\n    brokers: [k:9092]\n",
        )
        .replace("exporters: [debug]", "exporters: [debug, kafka/eu]")
}

#[tokio::test]
async fn a_config_naming_a_component_an_agents_build_lacks_is_not_sent_to_it_and_its_rollout_says_why()
 {
    let dir = tempfile::tempdir().unwrap();
    let srv = start(config(dir.path())).await;
    const BASE: &[(&str, &[&str])] = &[
        ("receivers", &["otlp"]),
        ("processors", &["batch"]),
        ("exporters", &["debug"]),
    ];
    const WITH_KAFKA: &[(&str, &[&str])] = &[
        ("receivers", &["otlp"]),
        ("processors", &["batch"]),
        ("exporters", &["debug", "kafka"]),
    ];
    let mut plain = SimAgent::supervisor("otelcol", &[("env", "prod")], BASE);
    let mut kafka = SimAgent::supervisor("otelcol", &[("env", "prod")], WITH_KAFKA);
    let mut ws_plain = WsClient::connect(&srv.ws_url).await.unwrap();
    let mut ws_kafka = WsClient::connect(&srv.ws_url).await.unwrap();
    for (ws, agent) in [(&mut ws_plain, &mut plain), (&mut ws_kafka, &mut kafka)] {
        let first = agent.full_report();
        converse(ws, agent, vec![first]).await;
    }
    let v1 = put_otel(&srv, "v1").await;
    for (ws, agent) in [(&mut ws_plain, &mut plain), (&mut ws_kafka, &mut kafka)] {
        assert_eq!(take_push(ws, agent).await, 1, "v1 fits both builds");
    }

    // v2 sends to Kafka: staged, then rolled out to both in one phase.
    let v2 = stage_otel(&srv, kafka_yaml("v2")).await;
    let (status, r) = srv
        .post_json(
            "/api/v1/rollouts",
            json!({"config": "otel", "phases": {"percentages": [100]}, "soak": "1s",
                   "error_budget": {"max_failure_percent": 60, "min_sample": 1, "action": "pause"}}),
        )
        .await;
    assert_eq!(status, 201, "{r}");
    let id = r["id"].as_str().unwrap();
    assert_eq!(
        take_push(&mut ws_kafka, &mut kafka).await,
        1,
        "sent where it fits"
    );
    // The other gets nothing; its next message finds the config refused for it.
    let hb = plain.heartbeat();
    assert_eq!(
        converse(&mut ws_plain, &mut plain, vec![hb]).await,
        0,
        "not sent"
    );
    // The gateway answered the heartbeat under the owner's grant; the owner records it from the
    // gateway's next batch, within 50 ms or so (ADR 0021).
    let view = srv
        .wait_agent(plain.uid, WAIT, |a| a["config_state"] == "failed")
        .await;
    let not_sent = &view["remote_config_status"]["not_sent"];
    assert_eq!(not_sent["hash"], v2["hash"], "{view}");
    assert!(
        not_sent["error"]
            .as_str()
            .unwrap()
            .contains("lacks exporters/kafka"),
        "{view}"
    );
    assert_eq!(
        (
            &view["remote_config_status"]["status"],
            &view["remote_config_status"]["hash"]
        ),
        (&json!("APPLIED"), &json!(v1)),
        "it still runs v1"
    );
    let r = srv
        .wait_for(&format!("/api/v1/rollouts/{id}"), WAIT, |r| {
            r["phases"][0]["failures"]
                .as_array()
                .is_some_and(|f| !f.is_empty())
        })
        .await;
    let why = r["phases"][0]["failures"][0].as_str().unwrap();
    assert!(
        why.starts_with(&plain.uid.to_string()) && why.contains("lacks exporters/kafka"),
        "{r}"
    );
    assert_eq!(
        (r["applied"].as_u64(), r["failed"].as_u64()),
        (Some(1), Some(1)),
        "{r}"
    );
    srv.stop().await;
}

#[tokio::test]
async fn an_agent_given_a_new_uid_keeps_its_record_and_leaves_no_ghost() {
    use flotilla_proto::opamp::AgentToServerFlags;
    let dir = tempfile::tempdir().unwrap();
    let srv = start(config(dir.path())).await;
    let mut agent = SimAgent::supervisor("otelcol", &[("env", "prod")], &[]);
    let mut ws = WsClient::connect(&srv.ws_url).await.unwrap();
    let first = agent.full_report();
    converse(&mut ws, &mut agent, vec![first]).await;
    let old = agent.uid;
    let (status, v) = srv
        .post_json(
            &format!("/api/v1/agents/{old}/labels"),
            json!({"set": {"ring": "canary"}}),
        )
        .await;
    assert_eq!(status, 200, "{v}");

    // It asks for a new uid (the supervisor persists it and restarts its collector).
    let mut ask = agent.heartbeat();
    ask.flags = AgentToServerFlags::RequestInstanceUid as u64;
    // Past the gateway's per-connection burst allowance (the supervisor's first messages).
    tokio::time::sleep(Duration::from_secs(1)).await;
    converse(&mut ws, &mut agent, vec![ask]).await;
    assert_ne!(agent.uid, old, "the agent took the new uid");
    let view = srv.agent(agent.uid).await;
    assert_eq!(view["labels"]["ring"], "canary", "{view}");
    assert_eq!(view["status"], "connected", "{view}");
    let (status, _) = srv.get(&format!("/api/v1/agents/{old}")).await;
    assert_eq!(status, 404, "no ghost under the old uid");
    let (_, all) = srv.get("/api/v1/agents?selector=env=prod").await;
    assert_eq!(all["total"], 1, "{all}");
    let (_, log) = srv.get(&format!("/api/v1/audit?object=agent/{old}")).await;
    assert!(
        log["entries"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["action"] == "agent.new_uid"
                && e["after"]["instance_uid"] == agent.uid.to_string()),
        "{log}"
    );
    // It goes on under the new uid: the connection was re-bound to it.
    let hb = agent.heartbeat();
    converse(&mut ws, &mut agent, vec![hb]).await;
    srv.wait_agent(agent.uid, Duration::from_secs(5), |a| {
        a["status"] == "connected"
    })
    .await;
    srv.stop().await;
}

#[tokio::test]
async fn an_equivalent_config_under_a_new_hash_that_gets_no_status_counts_as_applied() {
    let dir = tempfile::tempdir().unwrap();
    let srv = start(config(dir.path())).await;
    let build: &[(&str, &[&str])] = &[
        ("receivers", &["otlp"]),
        ("processors", &["batch"]),
        ("exporters", &["debug"]),
    ];
    let mut agent = SimAgent::supervisor("otelcol", &[("env", "prod")], build);
    let mut ws = WsClient::connect(&srv.ws_url).await.unwrap();
    let first = agent.full_report();
    converse(&mut ws, &mut agent, vec![first]).await;
    let v1 = put_otel(&srv, "v1").await;
    assert_eq!(take_push(&mut ws, &mut agent).await, 1);
    srv.wait_agent(agent.uid, WAIT, |a| a["config_state"] == "applied")
        .await;

    // v2 differs by a comment: the supervisor composes the same config and says nothing.
    let v2 = put_otel(&srv, "v2, a comment only").await;
    assert_ne!(v1, v2);
    assert_eq!(take_push(&mut ws, &mut agent).await, 1, "sent");
    let hb = agent.heartbeat();
    converse(&mut ws, &mut agent, vec![hb]).await;
    // Recorded from the gateway's next batch (ADR 0021): it runs v2.
    let view = srv
        .wait_agent(agent.uid, WAIT, |a| {
            a["desired_config"]["hash"] == v2.as_str() && a["config_state"] == "applied"
        })
        .await;
    assert_eq!(
        view["remote_config_status"]["hash"],
        v1.as_str(),
        "no status for v2"
    );
    // Sent once: not again with every reply.
    for _ in 0..3 {
        let hb = agent.heartbeat();
        assert_eq!(
            converse(&mut ws, &mut agent, vec![hb]).await,
            0,
            "v2 sent again"
        );
    }

    // A change that is not equivalent (another pipeline) is not taken for applied: pending
    // until the agent reports it.
    let more = collector_yaml("v3").replace(
        "exporters: [debug]\n",
        "exporters: [debug]\n    metrics:\n      receivers: [otlp]\n      exporters: [debug]\n",
    );
    let (status, v3) = srv
        .put(
            "/api/v1/configs/otel",
            json!({"selector": "env=prod", "files": {"collector.yaml": more}}),
        )
        .await;
    assert_eq!(status, 200, "{v3}");
    let view = srv.agent(agent.uid).await;
    assert_eq!(view["config_state"], "pending", "{view}");
    assert_eq!(take_push(&mut ws, &mut agent).await, 1);
    let view = srv.agent(agent.uid).await;
    assert_eq!(
        (&view["config_state"], &view["remote_config_status"]["hash"]),
        (&json!("applied"), &v3["hash"]),
        "{view}"
    );
    srv.stop().await;
}

#[tokio::test]
async fn a_rollout_does_not_wait_for_an_agent_whose_record_is_gone() {
    let dir = tempfile::tempdir().unwrap();
    let srv = start(config(dir.path())).await;
    let mut a = SimAgent::new("otelcol", &[("env", "prod")]);
    let mut b = SimAgent::new("otelcol", &[("env", "prod")]);
    let mut ws_a = WsClient::connect(&srv.ws_url).await.unwrap();
    let mut ws_b = WsClient::connect(&srv.ws_url).await.unwrap();
    for (ws, agent) in [(&mut ws_a, &mut a), (&mut ws_b, &mut b)] {
        let first = agent.full_report();
        converse(ws, agent, vec![first]).await;
    }
    put_otel(&srv, "v1").await;
    for (ws, agent) in [(&mut ws_a, &mut a), (&mut ws_b, &mut b)] {
        take_push(ws, agent).await;
    }
    stage_otel(&srv, collector_yaml("v2")).await;
    let (status, r) = srv
        .post_json(
            "/api/v1/rollouts",
            json!({"config": "otel", "phases": {"percentages": [100]}, "soak": "1s"}),
        )
        .await;
    assert_eq!(status, 201, "{r}");
    let id = r["id"].as_str().unwrap().to_owned();
    // A applies v2; B never answers the push, and is then removed.
    take_push(&mut ws_a, &mut a).await;
    let removed = reqwest::Client::new()
        .delete(format!("{}/api/v1/agents/{}", srv.api, b.uid))
        .send()
        .await
        .unwrap();
    assert_eq!(removed.status(), 200);
    let done = srv
        .wait_for(&format!("/api/v1/rollouts/{id}"), WAIT, |r| {
            r["state"] == "completed"
        })
        .await;
    assert_eq!(
        (&done["applied"], &done["unknown"], &done["pending"]),
        (&json!(1), &json!(1), &json!(0)),
        "{done}"
    );
    srv.stop().await;
}
