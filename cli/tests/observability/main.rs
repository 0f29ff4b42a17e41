//! Observability end to end, with real parts: a cluster of nats-server, redis-server, a gateway
//! and a coordinator process exporting traces to an OTLP receiver built on the official protos
//! (the gateway over gRPC, the coordinator over http/protobuf); alerts told to real HTTP
//! receivers (webhook, Alertmanager API), across a sink outage and a coordinator's death; the
//! event stream read by an SSE client.

#[path = "../cluster_support/mod.rs"]
mod cluster_support;
#[path = "../common/mod.rs"]
mod common;

mod alerts;
mod otlp;
mod sinks;

use cluster_support::{Cluster, SERIAL, ws_agent};
use otlp::{Receiver, Span};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(20);

fn traced<'a>(receiver: &'a Receiver, protocol: &'a str) -> [&'a str; 6] {
    [
        "--otlp-endpoint",
        &receiver.url,
        "--otlp-protocol",
        protocol,
        "--trace-sample-ratio",
        "1",
    ]
}

fn find<'a>(spans: &'a [Span], service: &str, name: &str, trace: &str) -> Option<&'a Span> {
    spans.iter().find(|s| {
        s.service == service && s.name == name && (trace.is_empty() || s.trace_id == trace)
    })
}

#[tokio::test]
async fn one_agent_message_is_one_trace_across_the_gateway_and_the_coordinator() {
    let _serial = SERIAL.lock().await;
    let receiver = Receiver::start().await;
    let c = Cluster::start_roles(
        1,
        1,
        &traced(&receiver, "http/protobuf"),
        &traced(&receiver, "grpc"),
    )
    .await;
    let agent = ws_agent(c.ws_urls(), 0, Duration::from_secs(2));
    let uid = agent.uid.to_string();

    // The gateway's span of one message from this agent, and the coordinator's processing of it,
    // child of the gateway's bus request: one trace over two processes and two OTLP transports.
    let (message, request, process) = receiver
        .wait_for(
            "an agent message traced through both processes",
            WAIT,
            |spans| {
                spans
                    .iter()
                    .filter(|s| s.name == "opamp.message" && s.attr("uid") == uid)
                    .find_map(|m| {
                        let req = find(spans, "flotilla-gateway", "bus.request", &m.trace_id)?;
                        let p = find(spans, "flotilla-coordinator", "opamp.process", &m.trace_id)?;
                        Some((m.clone(), req.clone(), p.clone()))
                    })
            },
        )
        .await;
    assert_eq!(message.service, "flotilla-gateway");
    assert_eq!(message.via, "grpc");
    assert_eq!(message.parent_id, "", "a message starts its own trace");
    assert_eq!(message.attr("transport"), "websocket");
    assert_eq!(message.attr("gateway"), "g1");
    assert!(
        message.attr("peer").starts_with("127.0.0.1:"),
        "{message:?}"
    );
    assert_eq!(request.parent_id, message.span_id);
    assert_eq!(
        process.parent_id, request.span_id,
        "continued from the bus headers"
    );
    assert_eq!(process.via, "http");
    assert_eq!(process.attr("outcome"), "ok", "{process:?}");
    assert!(!process.attr("shard").is_empty() && !process.attr("epoch").is_empty());
    let store = receiver
        // Which store call depends on the message and on the owner's copies (a first message
        // is saved, and read first only while the owner has no copy of the whole shard; a
        // heartbeat is a touch): any of them.
        .wait_for("the owner's store call in that trace", WAIT, |spans| {
            spans
                .iter()
                .find(|s| {
                    s.service == "flotilla-coordinator"
                        && s.name.starts_with("store.")
                        && s.trace_id == process.trace_id
                })
                .cloned()
        })
        .await;
    assert_eq!(store.parent_id, process.span_id);
    assert_eq!(store.attr("db.system"), "redis");

    // An admin request continues its caller's trace; the push it causes runs through the
    // gateway in a trace of its own (coordinator push, gateway delivery).
    let caller_trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let resp = reqwest::Client::new()
        .put(format!("{}/api/v1/configs/traced", c.api()))
        .header(
            "traceparent",
            format!("00-{caller_trace}-00f067aa0ba902b7-01"),
        )
        .header("content-type", "application/json")
        .body(r#"{"selector": {}, "files": {"collector.yaml": "receivers: {}\n"}}"#)
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_success(), "{:?}", resp.text().await);
    let api = receiver
        .wait_for("the admin request's span", WAIT, |spans| {
            find(
                spans,
                "flotilla-coordinator",
                "PUT /api/v1/configs/{name}",
                caller_trace,
            )
            .cloned()
        })
        .await;
    assert_eq!(api.parent_id, "00f067aa0ba902b7");
    assert_eq!(api.attr("http.route"), "/api/v1/configs/{name}");
    assert_eq!(api.attr("http.response.status_code"), "200");
    assert_eq!(api.attr("caller"), "anonymous");
    let (push, deliver) = receiver
        .wait_for("a push delivered through the gateway", WAIT, |spans| {
            // Pushes of a config go to each gateway in batches (one agent here: a batch of one).
            spans
                .iter()
                .filter(|s| s.name == "opamp.push_batch")
                .find_map(|p| {
                    let d = find(
                        spans,
                        "flotilla-gateway",
                        "opamp.deliver_batch",
                        &p.trace_id,
                    )?;
                    Some((p.clone(), d.clone()))
                })
        })
        .await;
    assert_eq!(deliver.parent_id, push.span_id);
    assert_eq!(deliver.attr("size"), "1");
    assert_eq!(deliver.attr("delivered"), "1");
    assert_eq!(push.attr("delivered"), "1");

    // The session ends with the connection: its span names the agent it carried.
    drop(agent);
    let session = receiver
        .wait_for("the WebSocket session's span", WAIT, |spans| {
            spans
                .iter()
                .find(|s| s.name == "opamp.session" && s.attr("uid") == uid)
                .cloned()
        })
        .await;
    assert_eq!(session.service, "flotilla-gateway");
    assert_eq!(session.parent_id, "");
    assert_eq!(session.attr("transport"), "websocket");

    // What was sent is counted; nothing was dropped.
    let exported = c
        .metric(c.api(), "flotilla_trace_spans_total{fate=\"exported\"}")
        .await
        .unwrap_or(0.0);
    assert!(exported > 0.0, "{}", c.logs());
    assert_eq!(
        c.metric(c.api(), "flotilla_trace_spans_total{fate=\"dropped\"}")
            .await
            .unwrap_or(0.0),
        0.0
    );
}

#[tokio::test]
async fn an_alert_the_sink_missed_is_delivered_once_by_the_next_owner_after_a_coordinator_dies() {
    let _serial = SERIAL.lock().await;
    let sinks = sinks::Receivers::start().await;
    sinks.set_down(true);
    let hook = sinks.hook_url();
    let alerting = [
        "--alert-webhook",
        &hook,
        "--alert-grace",
        "0s",
        "--alert-interval",
        "200ms",
        "--lease-ttl",
        "3s",
    ];
    let mut c = Cluster::start_roles(2, 1, &alerting, &[]).await;
    let gateway = c.ws_urls()[0].clone();
    let mut agent = flotilla_loadtest::sim::SimAgent::new("io.opentelemetry.collector", &[]);
    let mut ws = flotilla_loadtest::client::WsClient::connect(&gateway)
        .await
        .unwrap();
    agent.health.healthy = false;
    agent.health.last_error = "disk full".into();
    common::answered_ok(&mut ws, &agent.full_report()).await;
    let uid = agent.uid.to_string();

    // The owner raised it but could not deliver it (it keeps failing).
    let owner = c.owner_of(agent.uid).await.expect("an owner");
    let owner_api = c
        .coordinators
        .iter()
        .find(|n| n.id == owner)
        .unwrap()
        .api
        .clone();
    let started = std::time::Instant::now();
    while c
        .metric(
            &owner_api,
            "flotilla_coordinator_alert_notifications_total{sink=\"webhook\",outcome=\"failed\"}",
        )
        .await
        .unwrap_or(0.0)
        < 1.0
    {
        assert!(started.elapsed() < WAIT, "no failed delivery\n{}", c.logs());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    c.coordinator(&owner).proc.kill();
    sinks.set_down(false);

    // The other coordinator takes the shard, finds the undelivered alert in the stored book and
    // delivers it: once.
    sinks
        .wait(
            "the alert from the next owner",
            Duration::from_secs(30),
            |s| {
                s.hook()
                    .iter()
                    .any(|(state, subject, _)| state == "firing" && *subject == uid)
            },
        )
        .await;
    // Keep the agent talking (the gateway forwards to the new owner) and give more passes time.
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_millis(400)).await;
        let mut beat = agent.heartbeat();
        beat.health = Some(agent.health.clone());
        let _ = ws.request(&beat).await;
    }
    let told: Vec<String> = sinks
        .hook()
        .into_iter()
        .filter(|(_, subject, _)| *subject == uid)
        .map(|(state, _, _)| state)
        .collect();
    assert_eq!(told, ["firing"], "delivered once\n{}", c.logs());
    let survivor = c.coordinators.iter().find(|n| n.id != owner).unwrap();
    assert_eq!(
        c.owner_of(agent.uid).await.as_deref(),
        Some(survivor.id.as_str())
    );
}
