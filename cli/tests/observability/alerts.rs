//! Alerts and the event stream on one `flotilla serve` app (embedded store, in-process bus),
//! with real HTTP receivers and an SSE client.

use crate::common::{self, Server, answered_ok};
use crate::sinks::Receivers;
use flotilla_common::config::AlertSettings;
use flotilla_loadtest::client::WsClient;
use flotilla_loadtest::sim::SimAgent;
use serde_json::Value;
use std::sync::{Arc, Mutex};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(15);

async fn server(dir: &std::path::Path, r: &Receivers, grace: Duration) -> Server {
    let mut cfg = common::config(dir);
    cfg.alerts = AlertSettings {
        webhooks: vec![r.hook_url()],
        alertmanagers: vec![r.base.clone()],
        kinds: Vec::new(),
        grace,
        interval: Duration::from_millis(200),
    };
    common::start(cfg).await
}

/// Sends `n` messages reporting the agent healthy or not.
async fn report(ws: &mut WsClient, agent: &mut SimAgent, healthy: bool, n: usize) {
    agent.health.healthy = healthy;
    agent.health.last_error = if healthy {
        ""
    } else {
        "exporter otlp: connection refused"
    }
    .into();
    for _ in 0..n {
        let mut msg = agent.heartbeat();
        msg.health = Some(agent.health.clone());
        answered_ok(ws, &msg).await;
    }
}

/// Reads `GET /api/v1/events?<query>` as Server-Sent Events: (event name, data). Returns once
/// the server answered (it answers once it follows the events).
async fn follow(api: &str, query: &str) -> Arc<Mutex<Vec<(String, Value)>>> {
    let events = Arc::new(Mutex::new(Vec::new()));
    let out = events.clone();
    let mut resp = reqwest::get(format!("{api}/api/v1/events?{query}"))
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let kind = resp.headers()["content-type"].to_str().unwrap().to_owned();
    assert!(kind.starts_with("text/event-stream"), "{kind}");
    tokio::spawn(async move {
        let mut buf = String::new();
        let mut name = String::new();
        while let Ok(Some(chunk)) = resp.chunk().await {
            buf.push_str(&String::from_utf8_lossy(&chunk));
            while let Some(end) = buf.find('\n') {
                let line: String = buf.drain(..=end).collect();
                let line = line.trim_end();
                if let Some(n) = line.strip_prefix("event: ") {
                    name = n.to_owned();
                } else if let Some(d) = line.strip_prefix("data: ") {
                    let data = serde_json::from_str(d).unwrap();
                    out.lock().unwrap().push((name.clone(), data));
                }
            }
        }
    });
    events
}

fn firing_for(r: &Receivers, uid: &str) -> (usize, usize) {
    let hook = r
        .hook()
        .iter()
        .filter(|(state, subject, _)| state == "firing" && subject == uid)
        .count();
    let am = r
        .alertmanager()
        .iter()
        .filter(|(state, a)| state == "firing" && a["labels"]["instance_uid"] == uid)
        .count();
    (hook, am)
}

#[tokio::test]
async fn an_unhealthy_agent_is_one_alert_per_sink_fired_and_resolved_though_a_sink_was_down() {
    let dir = tempfile::tempdir().unwrap();
    let r = Receivers::start().await;
    r.set_down(true);
    let srv = server(dir.path(), &r, Duration::from_secs(1)).await;
    let events = follow(&srv.api, "kind=unhealthy,healthy&selector=env%3Dtest").await;
    let others = follow(&srv.api, "selector=env%3Dprod").await;

    let mut agent = SimAgent::new("io.opentelemetry.collector", &[("env", "test")]);
    let mut ws = common::connect(&srv, &mut agent).await;
    let uid = agent.uid.to_string();
    report(&mut ws, &mut agent, false, 5).await;

    // Both sinks are down: nothing is taken, and the failures are counted.
    r.wait("refused deliveries", WAIT, |r| r.refused() >= 2)
        .await;
    assert_eq!(firing_for(&r, &uid), (0, 0));
    // Back up: each is told once, however many unhealthy messages the agent sent.
    r.set_down(false);
    r.wait("the alert at both sinks", WAIT, |r| {
        firing_for(r, &uid) == (1, 1)
    })
    .await;
    report(&mut ws, &mut agent, false, 3).await;
    let am = r.alertmanager();
    let (_, alert) = &am[0];
    assert_eq!(alert["labels"]["alertname"], "FlotillaAgentUnhealthy");
    assert_eq!(alert["labels"]["env"], "test");
    assert_eq!(
        alert["labels"]["service_name"],
        "io.opentelemetry.collector"
    );
    assert_eq!(
        alert["annotations"]["summary"],
        "exporter otlp: connection refused"
    );

    report(&mut ws, &mut agent, true, 1).await;
    r.wait("the resolution at both sinks", WAIT, |r| {
        r.hook()
            .iter()
            .any(|(s, u, _)| s == "resolved" && *u == uid)
            && r.alertmanager().iter().any(|(s, _)| s == "resolved")
    })
    .await;
    // Passes after that tell nobody anything more.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let hook: Vec<String> = r.hook().into_iter().map(|(s, _, _)| s).collect();
    assert_eq!(hook, ["firing", "resolved"], "nothing lost, nothing twice");
    assert_eq!(r.alertmanager().len(), 2, "{:#?}", r.alertmanager());
    let failed = srv
        .metric(
            "flotilla_coordinator_alert_notifications_total{sink=\"webhook\",outcome=\"failed\"}",
        )
        .await;
    assert!(failed >= 1.0);

    // The stream: one unhealthy event (not one a message), then healthy.
    let seen: Vec<(String, String)> = events
        .lock()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v["instance_uid"].as_str().unwrap().to_owned()))
        .collect();
    assert_eq!(
        seen,
        [
            ("unhealthy".to_owned(), uid.clone()),
            ("healthy".to_owned(), uid.clone())
        ]
    );
    let first = events.lock().unwrap()[0].1.clone();
    assert_eq!(first["attributes"]["env"], "test");
    assert_eq!(first["detail"], "exporter otlp: connection refused");
    assert!(
        others.lock().unwrap().is_empty(),
        "a selector keeps other agents out"
    );
    srv.stop().await;
}

#[tokio::test]
async fn an_agent_healthy_again_within_the_grace_raises_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let r = Receivers::start().await;
    let srv = server(dir.path(), &r, Duration::from_secs(2)).await;
    // A supervisor starting its collector: unhealthy, then healthy within the grace.
    let mut starting = SimAgent::new("io.opentelemetry.collector", &[("env", "test")]);
    let mut ws = common::connect(&srv, &mut starting).await;
    report(&mut ws, &mut starting, false, 1).await;
    // And one that stays unhealthy, which must be alerted on in the same run.
    let mut broken = SimAgent::new("io.opentelemetry.collector", &[("env", "test")]);
    let mut ws2 = common::connect(&srv, &mut broken).await;
    report(&mut ws2, &mut broken, false, 1).await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    report(&mut ws, &mut starting, true, 1).await;

    let broken_uid = broken.uid.to_string();
    r.wait("the lasting one's alert", WAIT, |r| {
        firing_for(r, &broken_uid) == (1, 1)
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let starting_uid = starting.uid.to_string();
    assert_eq!(firing_for(&r, &starting_uid), (0, 0), "{:#?}", r.hook());
    srv.stop().await;
}

#[tokio::test]
async fn the_event_stream_refuses_what_it_cannot_follow() {
    let dir = tempfile::tempdir().unwrap();
    let srv = common::start(common::config(dir.path())).await;
    for (query, says) in [
        ("kind=exploded", "unknown event kind \"exploded\""),
        ("selector=env%3D%3D", "selector"),
        ("since=yesterday", "unknown parameter \"since\""),
    ] {
        let (status, body) = srv.get(&format!("/api/v1/events?{query}")).await;
        assert_eq!(status, 400, "{query}: {body}");
        let error = body["error"].as_str().unwrap();
        assert!(error.contains(says), "{query}: {error}");
    }
    srv.stop().await;
}

/// An own-metrics export for `agent`: its exporter `otlp` has sent `sent` items and failed
/// `failed`, cumulatively.
fn exporter_export(agent: &SimAgent, sent: f64, failed: f64) -> Vec<u8> {
    use flotilla_loadtest::otlp::{counter, export, kv, point};
    let otlp = |v: f64| vec![point(vec![kv("exporter", "otlp")], v)];
    export(
        Some(&agent.uid.to_string()),
        vec![
            counter("otelcol_exporter_sent_spans", otlp(sent)),
            counter("otelcol_exporter_send_failed_spans", otlp(failed)),
        ],
    )
}

#[tokio::test]
async fn a_failing_exporter_is_alerted_after_the_grace_and_resolved_once_it_sends_again() {
    let dir = tempfile::tempdir().unwrap();
    let r = Receivers::start().await;
    let srv = server(dir.path(), &r, Duration::from_secs(1)).await;
    let mut agent = SimAgent::new("io.opentelemetry.collector", &[("env", "test")]);
    let _ws = common::connect(&srv, &mut agent).await;
    let uid = agent.uid.to_string();
    let otlp = flotilla_loadtest::client::HttpClient::new(
        &srv.http_url.replace("/v1/opamp", "/v1/metrics"),
    );
    let send = async |sent: f64, failed: f64| {
        let r = otlp
            .post_raw(exporter_export(&agent, sent, failed), &[])
            .await
            .unwrap();
        assert_eq!(r.status, 200);
        // The gateway hands exports to the owner once a second: one per batch.
        tokio::time::sleep(Duration::from_millis(1100)).await;
    };
    send(100.0, 0.0).await;
    send(100.0, 50.0).await;
    send(100.0, 90.0).await;
    r.wait("the exporter alert at both sinks", WAIT, |r| {
        firing_for(r, &uid) == (1, 1)
    })
    .await;
    let am = r.alertmanager();
    let (_, alert) = &am[0];
    assert_eq!(alert["labels"]["alertname"], "FlotillaAgentExporterFailing");
    assert_eq!(
        alert["annotations"]["summary"],
        "exporters failing to send: otlp"
    );
    // It sends again without failing: resolved.
    send(200.0, 90.0).await;
    r.wait("the resolution", WAIT, |r| {
        r.hook()
            .iter()
            .any(|(s, u, _)| s == "resolved" && *u == uid)
    })
    .await;
    srv.stop().await;
}
