//! When no owner answers (no coordinator, or a shard between owners), agents are told to come
//! back later instead of hanging: UNAVAILABLE with retry_info on WebSocket, 503 with Retry-After
//! on HTTP. The gateway keeps serving and the connection stays open.

mod common;

use flotilla_common::bus::{Bus, InProcessBus};
use flotilla_gateway::{Gateway, GatewayConfig};
use flotilla_loadtest::client::{HttpClient, WsClient};
use flotilla_loadtest::sim::SimAgent;
use flotilla_proto::opamp::{ServerErrorResponseType, server_error_response::Details};
use prometheus_client::registry::Registry;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

#[tokio::test]
async fn agents_are_told_to_retry_when_no_owner_answers() {
    let bus: Arc<dyn Bus> = Arc::new(InProcessBus::default());
    let mut cfg = GatewayConfig::new("test", "gw1", 1 << 20);
    cfg.uplink_deadline = Duration::from_millis(300);
    cfg.retry_after = Duration::from_secs(7);
    let gateway = Gateway::new(cfg, bus, &mut Registry::default());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let cancel = CancellationToken::new();
    let task = tokio::spawn(gateway.clone().run(listener, cancel.clone()));

    let mut agent = SimAgent::new("otelcol", &[]);
    let mut ws = WsClient::connect(&format!("ws://{addr}/v1/opamp"))
        .await
        .unwrap();
    let started = Instant::now();
    let reply = ws.request(&agent.full_report()).await.unwrap();
    assert!(
        started.elapsed() >= Duration::from_millis(250),
        "the owner is retried for a while first"
    );
    let err = reply.error_response.expect("error response");
    assert_eq!(err.r#type, ServerErrorResponseType::Unavailable as i32);
    assert_eq!(
        err.details,
        Some(Details::RetryInfo(flotilla_proto::opamp::RetryInfo {
            retry_after_nanoseconds: 7_000_000_000
        }))
    );
    assert_eq!(reply.instance_uid, agent.uid.as_bytes().to_vec());
    assert_eq!(gateway.connections(), 1, "the connection stays open");

    let http = HttpClient::new(&format!("http://{addr}/v1/opamp"));
    let r = http.post(&agent.full_report(), false).await.unwrap();
    assert_eq!(r.status, 503);
    assert_eq!(r.headers.get("retry-after").unwrap(), "7");

    // Shutdown closes live sessions with 1001 (going away).
    cancel.cancel();
    match ws.next_event(Duration::from_secs(5)).await.unwrap() {
        flotilla_loadtest::client::WsEvent::Closed(Some(f)) => assert_eq!(u16::from(f.code), 1001),
        other => panic!("expected close 1001, got {other:?}"),
    }
    task.await.unwrap().unwrap();
}

/// Agents of a shard nobody owns (its owner died; its lease runs for seconds more) wait for an
/// owner without holding the gateway's room for agent messages: more of them than that room
/// holds do not stop the message of an agent whose shard has an owner. Once a shard has had no
/// owner for a second, a new message of it is answered "retry later" at once.
#[tokio::test]
async fn agents_of_a_shard_without_owner_do_not_stop_the_others() {
    use flotilla_common::names::{Subjects, shard_of};
    use flotilla_gateway::MAX_UPLINKS_IN_FLIGHT;
    use flotilla_proto::opamp::ServerToAgent;

    let bus: Arc<dyn Bus> = Arc::new(InProcessBus::default());
    let mut owned = SimAgent::new("otelcol", &[]);
    let owned_shard = shard_of(owned.uid.as_bytes());
    // The owned shard, and each waiting agent's (one agent a shard).
    let mut shards_used = std::collections::BTreeSet::from([owned_shard]);
    common::answer_agents(
        bus.as_ref(),
        &Subjects::new("test").uplink(owned_shard),
        |msg| ServerToAgent {
            instance_uid: msg.instance_uid,
            ..Default::default()
        },
    )
    .await;
    let mut cfg = GatewayConfig::new("test", "gw1", 1 << 20);
    cfg.uplink_deadline = Duration::from_secs(6);
    let gateway = Gateway::new(cfg, bus, &mut Registry::default());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("ws://{}/v1/opamp", listener.local_addr().unwrap());
    let cancel = CancellationToken::new();
    let task = tokio::spawn(gateway.clone().run(listener, cancel.clone()));

    // More agents than the room holds, each of a shard without owner, all waiting for one.
    let mut waiting = Vec::new();
    while waiting.len() < MAX_UPLINKS_IN_FLIGHT + 44 {
        let mut agent = SimAgent::new("otelcol", &[]);
        if !shards_used.insert(shard_of(agent.uid.as_bytes())) {
            continue;
        }
        let mut ws = WsClient::connect(&url).await.unwrap();
        waiting.push(tokio::spawn(async move {
            ws.request(&agent.full_report()).await
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        waiting.iter().all(|w| !w.is_finished()),
        "they wait for an owner"
    );

    let mut ws = WsClient::connect(&url).await.unwrap();
    let started = Instant::now();
    let reply = tokio::time::timeout(Duration::from_secs(4), ws.request(&owned.full_report()))
        .await
        .expect("answered while the others wait (not once they gave up, after 6 s)")
        .unwrap();
    assert!(reply.error_response.is_none(), "{reply:?}");
    assert_eq!(reply.instance_uid, owned.uid.as_bytes().to_vec());
    println!(
        "answered in {:?} with 300 agents waiting",
        started.elapsed()
    );
    assert!(waiting.iter().all(|w| !w.is_finished()), "still waiting");

    // A second on, an agent of one of those shards is not kept waiting.
    tokio::time::sleep(Duration::from_millis(700)).await;
    let mut late = loop {
        let agent = SimAgent::new("otelcol", &[]);
        let shard = shard_of(agent.uid.as_bytes());
        if shard != owned_shard && shards_used.contains(&shard) {
            break agent;
        }
    };
    let mut ws = WsClient::connect(&url).await.unwrap();
    let reply = tokio::time::timeout(Duration::from_secs(2), ws.request(&late.full_report()))
        .await
        .expect("answered at once (not after the 6 s deadline)")
        .unwrap();
    let err = reply.error_response.expect("retry later");
    assert_eq!(err.r#type, ServerErrorResponseType::Unavailable as i32);

    for w in waiting {
        w.abort();
    }
    cancel.cancel();
    task.await.unwrap().unwrap();
}
