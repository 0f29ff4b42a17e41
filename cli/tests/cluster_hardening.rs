//! The cluster's limits and failures as agents and admins meet them, against real nats-server,
//! redis-server and `flotilla serve` processes: the bus's message limit, audit entries that never
//! go missing whatever the client does, and HTTP pollers told to come back during a Redis outage.

mod cluster_support;
mod common;

use cluster_support::{Cluster, SERIAL, ws_agent};
use flotilla_loadtest::client::{HttpClient, WsClient, WsEvent};
use flotilla_loadtest::sim::SimAgent;
use flotilla_proto::opamp::{AgentConfigFile, AgentConfigMap, EffectiveConfig};
use serde_json::{Value, json};
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

const KB: usize = 1024;

fn with_effective_config(
    agent: &mut SimAgent,
    bytes: usize,
) -> flotilla_proto::opamp::AgentToServer {
    let mut msg = agent.full_report();
    msg.effective_config = Some(EffectiveConfig {
        config_map: Some(AgentConfigMap {
            config_map: [(
                String::new(),
                AgentConfigFile {
                    body: vec![b'#'; bytes].into(),
                    content_type: "text/yaml".into(),
                },
            )]
            .into(),
        }),
    });
    msg
}

fn collector_config(padding: usize) -> String {
    format!(
        "# {}\nreceivers: {{otlp: {{}}}}\nexporters: {{debug: {{}}}}\nservice: {{pipelines: {{traces: {{receivers: [otlp], exporters: [debug]}}}}}}\n",
        "x".repeat(padding)
    )
}

/// Item 2: what does not fit the NATS server's max_payload is refused at once, the way the spec
/// says, and what fits is delivered.
#[tokio::test]
async fn messages_and_configs_beyond_the_bus_limit_are_refused_at_once() {
    let _serial = SERIAL.lock().await;
    let c =
        Cluster::start_with_nats(1, 1, &["--heartbeat-interval", "2s"], "max_payload: 65536").await;
    let ws_url = &c.ws_urls()[0];
    let http_url = &c.http_urls()[0];

    // A 100 KB report: WebSocket close 1009 and HTTP 413, at once.
    let mut big = SimAgent::new("otelcol", &[]);
    let started = Instant::now();
    let mut ws = WsClient::connect(ws_url).await.unwrap();
    ws.send(&with_effective_config(&mut big, 100 * KB))
        .await
        .unwrap();
    match ws.next_event(Duration::from_secs(3)).await.unwrap() {
        WsEvent::Closed(Some(f)) => assert_eq!(u16::from(f.code), 1009),
        other => panic!("expected close 1009, got {other:?}"),
    }
    let r = HttpClient::new(http_url)
        .post(&with_effective_config(&mut big, 100 * KB), false)
        .await
        .unwrap();
    assert_eq!(r.status, 413);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    // A 40 KB report is carried.
    let mut fits = SimAgent::new("otelcol", &[]);
    let mut ws = WsClient::connect(ws_url).await.unwrap();
    let reply = ws
        .request(&with_effective_config(&mut fits, 40 * KB))
        .await
        .unwrap();
    assert!(reply.error_response.is_none(), "{reply:?}");

    // A config that could not reach agents is refused at PUT, naming the limit; nothing stored.
    let http = reqwest::Client::new();
    let put = |name: &str, body: String| {
        http.put(format!("{}/api/v1/configs/{name}", c.api()))
            .json(&json!({"files": {"collector.yaml": body}}))
            .send()
    };
    let r = put("big", collector_config(100 * KB)).await.unwrap();
    assert_eq!(r.status(), 400);
    let msg = r.json::<Value>().await.unwrap()["error"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        msg.contains("max_payload") && msg.contains("nothing was stored"),
        "{msg}"
    );
    assert_eq!(c.get(c.api(), "/api/v1/configs/big").await.0, 404);
    // One that fits reaches the agents.
    let agents: Vec<_> = (0..3)
        .map(|i| ws_agent(c.ws_urls(), i, Duration::from_secs(2)))
        .collect();
    let r = put("fits", collector_config(30 * KB)).await.unwrap();
    assert_eq!(r.status(), 200);
    let hash = r.json::<Value>().await.unwrap()["hash"]
        .as_str()
        .unwrap()
        .to_owned();
    cluster_support::wait_applied(&agents, &hash, Duration::from_secs(15)).await;
}

/// Sends an HTTP request and hangs up without reading the answer.
async fn fire_and_hang_up(api: &str, method: &str, path: &str, body: &str) {
    let addr = api.trim_start_matches("http://");
    let mut s = TcpStream::connect(addr).await.unwrap();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    drop(s);
}

/// Item 7: a change and its audit entry are one: clients that hang up right after sending leave
/// no change without its entry, through any coordinator.
#[tokio::test]
async fn changes_are_never_on_record_without_their_audit_entry() {
    let _serial = SERIAL.lock().await;
    let c = Cluster::start(2, 1, &["--heartbeat-interval", "2s"]).await;
    let agent = ws_agent(c.ws_urls(), 0, Duration::from_secs(2));
    let uid = agent.uid;
    let deadline = Instant::now() + Duration::from_secs(15);
    while c.get(c.api(), &format!("/api/v1/agents/{uid}")).await.0 != 200 {
        assert!(Instant::now() < deadline, "the agent never showed up");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    const N: usize = 40;
    for i in 0..N {
        let api = &c.coordinators[i % 2].api;
        let config = json!({"files": {"collector.yaml": collector_config(i)}}).to_string();
        fire_and_hang_up(api, "PUT", "/api/v1/configs/hangup", &config).await;
        let labels = json!({"set": {format!("k{i}"): "v"}}).to_string();
        fire_and_hang_up(
            api,
            "POST",
            &format!("/api/v1/agents/{uid}/labels"),
            &labels,
        )
        .await;
    }
    // Whatever was applied settles; then count both sides.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (_, versions) = c.get(c.api(), "/api/v1/configs/hangup/versions").await;
    let versions = versions["versions"].as_array().map_or(0, Vec::len);
    let (_, labels) = c
        .get(c.api(), &format!("/api/v1/agents/{uid}/labels"))
        .await;
    let labels = labels["labels"].as_object().map_or(0, serde_json::Map::len);
    let count = |action: &'static str, object: String| {
        let c = &c;
        async move {
            let (_, audit) = c
                .get(
                    c.api(),
                    &format!("/api/v1/audit?object={object}&limit=1000"),
                )
                .await;
            audit["entries"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|e| e["action"] == action)
                .count()
        }
    };
    let config_entries = count("config.put", "config/hangup".into()).await;
    let label_entries = count("labels.set", format!("agent/{uid}")).await;
    println!(
        "of {N} hung-up requests each: {versions} config versions with {config_entries} audit entries, {labels} labels with {label_entries} audit entries"
    );
    assert!(versions > 0 && labels > 0, "some requests went through");
    assert_eq!(
        versions, config_entries,
        "config versions and their audit entries"
    );
    assert_eq!(
        labels, label_entries,
        "label changes and their audit entries"
    );
}

/// Item 16: while Redis is down, HTTP pollers are told 503 with Retry-After, not 200.
#[tokio::test]
async fn http_pollers_get_503_with_retry_after_while_redis_is_down() {
    let _serial = SERIAL.lock().await;
    let mut c = Cluster::start(1, 1, &["--heartbeat-interval", "2s"]).await;
    let http = HttpClient::new(&c.http_urls()[0]);
    let mut agent = SimAgent::new("otelcol", &[]);
    assert_eq!(
        http.post(&agent.full_report(), false).await.unwrap().status,
        200
    );
    c.redis.proc.kill();
    let started = Instant::now();
    let r = http.post(&agent.heartbeat(), false).await.unwrap();
    assert_eq!(r.status, 503, "{:?}", r.message);
    let retry: u64 = r.headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!(retry >= 1);
    assert!(
        started.elapsed() < Duration::from_secs(7),
        "{:?}",
        started.elapsed()
    );
}
