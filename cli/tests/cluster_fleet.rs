//! Fleet management in the clustered mode (real nats-server, redis-server, two coordinators and
//! two gateways as processes): a phased rollout whose driving coordinator is killed mid-way
//! carries on from the store, labels and the audit log work through any coordinator, and the
//! collector supervisor's rollbacks and silences are judged alike by every coordinator.

mod cluster_support;
mod common;

use cluster_support::{Cluster, REGION, SERIAL};
use common::applied_with;
use common::fleet::{Fleet, collectors};
use common::py_agent::{PyAgent, python};
use serde_json::{Value, json};
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(60);

async fn send(http: &reqwest::Client, method: &str, url: &str, body: Value) -> (u16, Value) {
    let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
    let r = http.request(method, url).json(&body).send().await.unwrap();
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

async fn wait_for(c: &Cluster, api: &str, path: &str, pred: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + WAIT;
    loop {
        let (status, v) = c.get(api, path).await;
        if status == 200 && pred(&v) {
            return v;
        }
        assert!(Instant::now() < deadline, "{path}: last {v}\n{}", c.logs());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn a_rollout_carries_on_after_its_driving_coordinator_is_killed() {
    let _serial = SERIAL.lock().await;
    let mut c = Cluster::start(2, 2, &["--heartbeat-interval", "2s"]).await;
    let http = reqwest::Client::new();
    let mut agents = collectors(20, &[("env", "prod")], |_| false, "");
    let second_half = agents.split_off(10);
    let urls = c.ws_urls();
    let f1 = Fleet::start(&urls[0], agents).await;
    let f2 = Fleet::start(&urls[1], second_half).await;

    let api1 = c.coordinators[0].api.clone();
    let body = |note: &str, activate: bool| {
        json!({"selector": "env=prod", "activate": activate,
               "files": {"collector.yaml": format!("# {note}\nreceivers: {{otlp: {{}}}}\n")}})
    };
    let (s, v1) = send(
        &http,
        "PUT",
        &format!("{api1}/api/v1/configs/otel"),
        body("v1", true),
    )
    .await;
    assert_eq!(s, 200, "{v1}");
    let (s, v2) = send(
        &http,
        "PUT",
        &format!("{api1}/api/v1/configs/otel"),
        body("v2", false),
    )
    .await;
    assert_eq!(s, 200, "{v2}");
    let (v1, v2) = (v1["hash"].as_str().unwrap(), v2["hash"].as_str().unwrap());
    let list = "/api/v1/agents?selector=env=prod&limit=100";
    wait_for(&c, &api1, list, |l| applied_with(l, v1) == 20).await;

    // Labels set through one coordinator are seen through the other.
    let uid = f1.uids[0];
    let (s, l) = send(
        &http,
        "POST",
        &format!("{api1}/api/v1/agents/{uid}/labels"),
        json!({"set": {"team": "obs"}}),
    )
    .await;
    assert_eq!(s, 200, "{l}");
    let api2 = c.coordinators[1].api.clone();
    let (_, seen) = c.get(&api2, &format!("/api/v1/agents/{uid}/labels")).await;
    assert_eq!(seen["labels"], json!({"team": "obs"}));

    let (s, r) = send(
        &http,
        "POST",
        &format!("{api1}/api/v1/rollouts"),
        json!({"config": "otel", "phases": {"initial": 4, "multiplier": 2}, "soak": "2s"}),
    )
    .await;
    assert_eq!(s, 201, "{r}");
    let id = r["id"].as_str().unwrap().to_owned();
    let path = format!("/api/v1/rollouts/{id}");
    wait_for(&c, &api1, &path, |r| r["phases"][0]["applied"] == 4).await;

    // Kill whichever coordinator drives rollouts (the holder of shard 0).
    let mut conn = c.redis_conn().await;
    let lease: String = redis::cmd("GET")
        .arg(format!("opamp:{REGION}:{{s0000}}:lease"))
        .query_async(&mut conn)
        .await
        .unwrap();
    let driver = lease.split('/').next().unwrap().to_owned();
    let survivor = if driver == "c1" {
        api2.clone()
    } else {
        api1.clone()
    };
    c.coordinator(&driver).proc.kill();

    let r = wait_for(&c, &survivor, &path, |r| r["state"] == "completed").await;
    let sizes: Vec<u64> = r["phases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["agents"].as_u64().unwrap())
        .collect();
    assert_eq!(sizes, [4, 8, 8], "{r}");
    wait_for(&c, &survivor, list, |l| applied_with(l, v2) == 20).await;
    let (_, log) = c
        .get(&survivor, &format!("/api/v1/audit?object=rollout/{id}"))
        .await;
    let actions: Vec<&str> = log["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(actions, ["rollout.completed", "rollout.start"], "{log}");
    f1.stop().await;
    f2.stop().await;
}

/// The collector supervisor's habits across processes: agents that roll a failing config back
/// (each rolls back once: the refused config is not pushed again by whichever coordinator owns
/// it), and agents that report no config status (`unknown`, not `pending`).
#[tokio::test]
async fn supervisor_rollbacks_and_silent_agents_are_judged_alike_by_every_coordinator() {
    use flotilla_common::bus::{Bus, NatsBus};
    use flotilla_proto::opamp::AgentCapabilities as Cap;
    let _serial = SERIAL.lock().await;
    let c = Cluster::start(2, 1, &["--heartbeat-interval", "2s"]).await;
    let http = reqwest::Client::new();
    let mut agents = collectors(10, &[("env", "prod")], |i| i < 5, "BROKEN");
    for a in &mut agents[..5] {
        a.apply.rollback = true;
    }
    for a in &mut agents[5..] {
        a.capabilities &= !(Cap::ReportsRemoteConfig as u64);
    }
    let quiet: Vec<String> = agents[5..].iter().map(|a| a.uid.to_string()).collect();
    let fleet = Fleet::start(&c.ws_urls()[0], agents).await;
    let url = format!("{}/api/v1/configs/otel", c.api());
    let put = |note: &str| {
        let body = json!({"selector": "env=prod",
            "files": {"collector.yaml": format!("# {note}\nreceivers: {{otlp: }}\nexporters: {{debug: }}\nservice: {{pipelines: {{traces: {{receivers: [otlp], exporters: [debug]}}}}}}\n")}});
        send(&http, "PUT", &url, body)
    };
    let (status, v1) = put("v1").await;
    assert_eq!(status, 200, "{v1}");
    let states = "/api/v1/agents?selector=env=prod&limit=100";
    wait_for(&c, c.api(), states, |v| {
        applied_with(v, v1["hash"].as_str().unwrap()) == 5
    })
    .await;

    let events = NatsBus::connect(&c.nats.url(), "test", &Default::default())
        .await
        .unwrap();
    let mut rolled_back = events
        .subscribe(&format!("opamp.{REGION}.evt.config_rolled_back"))
        .await
        .unwrap();
    let (status, v2) = put("v2 BROKEN").await;
    assert_eq!(status, 200, "{v2}");
    let v2_hash = v2["hash"].as_str().unwrap().to_owned();
    // Read through the other coordinator: five failed by rollback, five unknown.
    let other = &c.coordinators[1].api;
    let list = wait_for(&c, other, states, |v| {
        v["agents"].as_array().unwrap().iter().all(|a| {
            let uid = a["instance_uid"].as_str().unwrap().to_owned();
            if quiet.contains(&uid) {
                a["config_state"] == "unknown"
            } else {
                a["config_state"] == "failed"
                    && a["remote_config_status"]["rolled_back"]["hash"] == v2_hash.as_str()
            }
        })
    })
    .await;
    assert_eq!(list["total"], 10);
    // Each agent rolled back once; heartbeats over the next 6 s bring no re-push.
    let until = Instant::now() + Duration::from_secs(6);
    let mut seen = 0;
    while let Ok(Some(_)) = tokio::time::timeout(
        until.saturating_duration_since(Instant::now()),
        rolled_back.next(),
    )
    .await
    {
        seen += 1;
    }
    assert_eq!(seen, 5, "config_rolled_back events");
    fleet.stop().await;
}

/// Sends `first` and whatever `agent` answers to each reply, until it has nothing more to say.
async fn converse(
    ws: &mut flotilla_loadtest::client::WsClient,
    agent: &mut flotilla_loadtest::sim::SimAgent,
    first: flotilla_proto::opamp::AgentToServer,
) {
    let mut queue = std::collections::VecDeque::from([first]);
    while let Some(msg) = queue.pop_front() {
        let reply = ws.request(&msg).await.expect("answered");
        queue.extend(agent.handle(&reply));
    }
}

#[tokio::test]
async fn custom_messages_new_uids_and_builds_that_lack_a_component_work_through_any_coordinator() {
    use flotilla_loadtest::client::{WsClient, WsEvent};
    use flotilla_loadtest::sim::SimAgent;
    use flotilla_proto::opamp::AgentToServerFlags;
    let _serial = SERIAL.lock().await;
    let c = Cluster::start(2, 1, &[]).await;
    let http = reqwest::Client::new();
    let [first, second] = [c.coordinators[0].api.clone(), c.coordinators[1].api.clone()];
    let build: &[(&str, &[&str])] = &[("receivers", &["otlp"]), ("exporters", &["debug"])];
    let mut agent = SimAgent::supervisor("otelcol", &[("env", "prod")], build);
    agent.custom_capabilities = vec!["io.example.ping".into()];
    let mut ws = WsClient::connect(&c.ws_urls()[0]).await.unwrap();
    let hello = agent.full_report();
    converse(&mut ws, &mut agent, hello).await;

    // A custom message sent through either coordinator reaches the agent's connection.
    for (api, data) in [(&first, "one"), (&second, "two")] {
        let url = format!("{api}/api/v1/agents/{}/custom-messages", agent.uid);
        let body = json!({"capability": "io.example.ping", "type": "ping", "data": data});
        let (status, sent) = send(&http, "POST", &url, body).await;
        assert_eq!((status, &sent["delivered"]), (202, &json!(true)), "{sent}");
        match ws.next_event(Duration::from_secs(10)).await {
            Ok(WsEvent::Message(m)) => {
                assert_eq!(m.custom_message.unwrap().data, data.as_bytes());
            }
            other => panic!("no custom message: {other:?}"),
        }
    }

    // A config naming Kafka is not sent to this build; read through the other coordinator.
    let body = json!({"selector": "env=prod", "files": {"collector.yaml":
        "receivers: {otlp: }\nexporters: {kafka: {brokers: [k:9092]}}\n\
         service: {pipelines: {traces: {receivers: [otlp], exporters: [kafka]}}}\n"}});
    let (status, v) = send(&http, "PUT", &format!("{first}/api/v1/configs/otel"), body).await;
    assert_eq!(status, 200, "{v}");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let hb = agent.heartbeat();
    converse(&mut ws, &mut agent, hb).await;
    let path = format!("/api/v1/agents/{}", agent.uid);
    let view = wait_for(&c, &second, &path, |a| a["config_state"] == "failed").await;
    let why = view["remote_config_status"]["not_sent"]["error"]
        .as_str()
        .unwrap();
    assert!(why.contains("lacks exporters/kafka"), "{view}");

    // Asked for a new uid: the record moves, labels and all; the old uid is gone everywhere.
    let labels = format!("{second}/api/v1/agents/{}/labels", agent.uid);
    let (status, v) = send(&http, "POST", &labels, json!({"set": {"ring": "canary"}})).await;
    assert_eq!(status, 200, "{v}");
    let old = agent.uid;
    let mut ask = agent.heartbeat();
    ask.flags = AgentToServerFlags::RequestInstanceUid as u64;
    tokio::time::sleep(Duration::from_secs(1)).await;
    converse(&mut ws, &mut agent, ask).await;
    assert_ne!(agent.uid, old);
    for api in [&first, &second] {
        let moved = wait_for(&c, api, &format!("/api/v1/agents/{}", agent.uid), |a| {
            a["labels"]["ring"] == "canary"
        })
        .await;
        assert_eq!(moved["status"], "connected", "{moved}");
        let (status, _) = c.get(api, &format!("/api/v1/agents/{old}")).await;
        assert_eq!(status, 404, "no ghost under {old}");
    }
    // The gateway re-bound the connection: a push reaches it under the new uid.
    let url = format!("{second}/api/v1/agents/{}/custom-messages", agent.uid);
    let body = json!({"capability": "io.example.ping", "type": "ping", "data": "three"});
    let (status, sent) = send(&http, "POST", &url, body).await;
    assert_eq!((status, &sent["delivered"]), (202, &json!(true)), "{sent}");
}

/// An agent written with the OpenTelemetry Python SDK sends its own metrics to the gateway it was
/// offered (the one it reached); the batches reach its shard's owner over NATS; the rollup is
/// read through either coordinator, and when the owner is killed the next owner continues it
/// from Redis (same `since`, new exports still kept).
#[tokio::test]
async fn own_metrics_reach_the_owner_through_the_gateway_and_outlive_it() {
    let Some(python) = python() else { return };
    let _serial = SERIAL.lock().await;
    let mut c = Cluster::start(2, 2, &["--heartbeat-interval", "2s"]).await;
    let opamp = c.http_urls()[1].clone();
    let agent = PyAgent::spawn(&python, &opamp, &["--failing"]);
    assert_eq!(
        agent.metrics_endpoint,
        opamp.replace("/v1/opamp", "/v1/metrics")
    );
    let uid = agent.uid;
    let path = format!("/api/v1/agents/{uid}");
    let failing = |v: &Value| v["own_metrics"]["exporters"][0]["failing_since"].is_string();
    let owner = c.owner_of(uid).await.unwrap();
    let other = c.api_except(&owner).to_owned();
    let before = wait_for(&c, &other, &path, failing).await;

    c.coordinator(&owner).proc.kill();
    let after = wait_for(&c, &other, &path, |v| {
        failing(v) && v["own_metrics"]["last"] != before["own_metrics"]["last"]
    })
    .await;
    let (m0, m1) = (&before["own_metrics"], &after["own_metrics"]);
    assert_eq!(m1["since"], m0["since"], "continued from what Redis holds");
    assert_eq!(
        m1["exporters"][0]["failing_since"], m0["exporters"][0]["failing_since"],
        "{m1}"
    );
    let fleet = wait_for(&c, &other, "/api/v1/fleet/agent-metrics", |f| {
        f["failing_exporters_total"] == 1
    })
    .await;
    assert_eq!(
        fleet["failing_exporters"][0]["instance_uid"],
        uid.to_string()
    );
    drop(agent);
}
