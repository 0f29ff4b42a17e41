//! Agents' own metrics, end to end on a standalone server: agents written with the OpenTelemetry
//! Python SDK's OTLP/HTTP metric exporter send to the destination Flotilla offered them over
//! OpAMP, and the API shows each one's rollup and the fleet's top agents and troubled exporters
//! (selectors included); a client certificate cannot report for another agent; a flood of
//! unknown metrics leaves memory flat and the rollups bounded.
//!
//! The SDK test needs `FLOTILLA_INTEROP_PYTHON` (scripts/test.sh sets one up), or
//! `FLOTILLA_SKIP_INTEROP=1` to skip it.

mod common;

use common::pki::{Pki, YEAR};
use common::py_agent::{PyAgent, python};
use common::{config, start};
use flotilla_gateway::otlp::string_kv;
use flotilla_loadtest::client::{ConnectOptions, HttpClient};
use flotilla_loadtest::otlp::{self, counter, point};
use flotilla_loadtest::sim::SimAgent;
use opentelemetry_proto::tonic::metrics::v1::Metric;
use serde_json::Value;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(30);

/// Whether an agent's view has its own metrics with rates for `exporter`.
fn reports(v: &Value, exporter: &str) -> bool {
    let m = &v["own_metrics"];
    !m["cpu_cores"].is_null()
        && m["exporters"].as_array().is_some_and(|e| {
            e.iter().any(|e| {
                e["name"] == exporter
                    && (e["sent_per_second"].as_f64() > Some(0.0)
                        || e["failed_per_second"].as_f64() > Some(0.0))
            })
        })
}

fn uids(list: &Value) -> Vec<String> {
    list.as_array()
        .unwrap()
        .iter()
        .map(|e| e["instance_uid"].as_str().unwrap().to_owned())
        .collect()
}

// Multi-threaded: the agents are started (and their first line read) blocking, while the
// in-process server answers them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdk_agents_send_to_the_offered_destination_and_the_api_ranks_them() {
    let Some(python) = python() else { return };
    let dir = tempfile::tempdir().unwrap();
    let srv = start(config(dir.path())).await;
    let healthy = PyAgent::spawn(&python, &srv.http_url, &["--attr", "env=prod"]);
    let failing = PyAgent::spawn(&python, &srv.http_url, &["--attr", "env=prod", "--failing"]);
    let dev = PyAgent::spawn(&python, &srv.http_url, &["--attr", "env=dev"]);
    // Offered: this gateway's /v1/metrics, where the agent reached it.
    let offered = srv.http_url.replace("/v1/opamp", "/v1/metrics");
    for a in [&healthy, &failing, &dev] {
        assert_eq!(a.metrics_endpoint, offered);
    }

    let v = srv
        .wait_agent(healthy.uid, WAIT, |v| reports(v, "otlp"))
        .await;
    let m = &v["own_metrics"];
    assert!(m["cpu_cores"].as_f64().unwrap() > 0.2, "{m}");
    assert_eq!(m["memory_bytes"], 150_000_000.0);
    assert_eq!(m["receivers"][0]["name"], "otlp");
    assert!(m["receivers"][0]["accepted_total"].as_f64().unwrap() > 0.0);
    assert_eq!(m["exporters"][0]["queue_capacity"], 1000.0);
    assert!(m["exporters"][0].get("failing_since").is_none());
    assert!(!m["minutes"].as_array().unwrap().is_empty());
    // otelcol_other_metric is not kept, and counted.
    assert!(m["dropped_points"].as_u64().unwrap() > 0);

    let v = srv
        .wait_agent(failing.uid, WAIT, |v| reports(v, "otlp"))
        .await;
    let e = &v["own_metrics"]["exporters"][0];
    assert!(e["failing_since"].is_string(), "{e}");
    assert!(e["queue_full_since"].is_string(), "{e}");
    assert_eq!(e["queue_fill"], 1.0);
    srv.wait_agent(dev.uid, WAIT, |v| reports(v, "otlp")).await;

    let (status, prod) = srv
        .get("/api/v1/fleet/agent-metrics?selector=env%3Dprod&top=5")
        .await;
    assert_eq!(status, 200, "{prod}");
    assert_eq!(prod["agents_selected"], 2);
    assert_eq!(prod["agents_reporting"], 2);
    let mut top_cpu = uids(&prod["top_cpu"]);
    top_cpu.sort();
    let mut both = vec![healthy.uid.to_string(), failing.uid.to_string()];
    both.sort();
    assert_eq!(top_cpu, both);
    assert_eq!(prod["top_cpu"][0]["service_name"], "otelcol-contrib");
    assert_eq!(uids(&prod["top_failed"]), [failing.uid.to_string()]);
    assert_eq!(uids(&prod["failing_exporters"]), [failing.uid.to_string()]);
    assert_eq!(prod["failing_exporters"][0]["name"], "otlp");
    assert_eq!(uids(&prod["queues_near_full"]), [failing.uid.to_string()]);
    assert_eq!(prod["failing_exporters_total"], 1);

    let (_, dev_view) = srv
        .get("/api/v1/fleet/agent-metrics?selector=env%3Ddev")
        .await;
    assert_eq!(uids(&dev_view["top_cpu"]), [dev.uid.to_string()]);
    assert_eq!(dev_view["failing_exporters_total"], 0);
    let (status, bad) = srv.get("/api/v1/fleet/agent-metrics?top=0").await;
    assert_eq!(status, 400, "{bad}");
}

/// An export for one resource (`service.instance.id` = `uid`, when given).
fn export(uid: Option<Uuid>, metrics: Vec<Metric>) -> Vec<u8> {
    otlp::export(uid.map(|u| u.to_string()).as_deref(), metrics)
}

fn sent(v: f64) -> Metric {
    counter(
        "otelcol_exporter_sent_spans",
        vec![point(vec![string_kv("exporter", "otlp")], v)],
    )
}

#[tokio::test]
async fn a_client_certificate_reports_only_for_its_own_agent() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    let mut cfg = common::pki::with_tls(config(dir.path()), pki.tls_files(true));
    cfg.agent_identity = flotilla_common::config::AgentIdentity::UriSan;
    let srv = start(cfg).await;
    let urls = common::pki::urls(&srv);
    let cert = pki.agent(YEAR);
    let opts = pki.client(Some(&cert));
    // The agent exists: it connected with its certificate.
    let mut agent = SimAgent::new("otelcol", &[]);
    agent.uid = cert.uid;
    let opamp = HttpClient::with_options(&urls.http, &opts).unwrap();
    assert_eq!(
        opamp
            .post(&agent.full_report(), false)
            .await
            .unwrap()
            .status,
        200
    );

    let metrics_url = urls.http.replace("/v1/opamp", "/v1/metrics");
    let otlp = HttpClient::with_options(&metrics_url, &opts).unwrap();
    let other = Uuid::now_v7();
    let r = otlp
        .post_raw(export(Some(other), vec![sent(1.0)]), &[])
        .await
        .unwrap();
    assert_eq!(r.status, 403);
    let why = String::from_utf8_lossy(&r.raw);
    assert!(
        why.contains("cannot report metrics for another agent"),
        "{why}"
    );

    // Its own uid, then no uid at all (the certificate's): both kept.
    let r = otlp
        .post_raw(export(Some(cert.uid), vec![sent(10.0)]), &[])
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let r = otlp
        .post_raw(export(None, vec![sent(30.0)]), &[])
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    srv.wait_agent(cert.uid, WAIT, |v| {
        v["own_metrics"]["exporters"][0]["sent_total"] == 30.0
    })
    .await;
    // No other agent came to be.
    let (_, list) = srv.get("/api/v1/agents").await;
    assert_eq!(list["total"], 1);

    // Without a client certificate, no TLS session at all.
    let plain = ConnectOptions::tls(pki.ca.cert_pem().as_bytes(), None).unwrap();
    let anonymous = HttpClient::with_options(&metrics_url, &plain).unwrap();
    assert!(
        anonymous
            .post_raw(export(Some(cert.uid), vec![sent(1.0)]), &[])
            .await
            .is_err()
    );
}

/// An agent the server knows (it reported over plain HTTP), and a client of its OTLP endpoint.
async fn known_agent(srv: &common::Server) -> (SimAgent, HttpClient) {
    let mut agent = SimAgent::new("otelcol", &[]);
    let opamp = HttpClient::new(&srv.http_url);
    let reply = opamp.post(&agent.full_report(), false).await.unwrap();
    assert_eq!(reply.status, 200);
    let otlp = HttpClient::new(&srv.http_url.replace("/v1/opamp", "/v1/metrics"));
    (agent, otlp)
}

/// Resident memory of this process, in bytes.
fn rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kb * 1024
}

#[tokio::test]
async fn a_flood_of_unknown_metrics_leaves_memory_flat_and_rollups_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    // The flood comes over one connection, faster than an agent may send.
    cfg.limits.message_rate = 100_000;
    let srv = start(cfg).await;
    let (agent, otlp) = known_agent(&srv).await;
    let known = agent.uid;

    // Each export: 2,000 metrics never seen before, 40 exporters (16 are kept), for the agent and
    // for an agent that does not exist.
    let flood = |round: u32| {
        let unknown = (0..2000)
            .map(|i| counter(&format!("flood_{round}_{i}"), vec![point(vec![], 1.0)]))
            .collect::<Vec<_>>();
        let exporters = (0..40)
            .map(|i| {
                point(
                    vec![string_kv("exporter", &format!("otlp/{round}_{i}"))],
                    1.0,
                )
            })
            .collect();
        let mut metrics = unknown;
        metrics.push(counter("otelcol_exporter_sent_spans", exporters));
        let uid = if round.is_multiple_of(2) {
            known
        } else {
            Uuid::now_v7()
        };
        export(Some(uid), metrics)
    };
    let send = async |rounds: std::ops::Range<u32>| {
        for round in rounds {
            let r = otlp.post_raw(flood(round), &[]).await.unwrap();
            assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.raw));
        }
    };
    send(0..60).await;
    let before = rss();
    send(60..360).await;
    let grown = rss().saturating_sub(before);
    // 300 exports of ~100 KB each: were any of it kept, this would be tens of megabytes.
    assert!(grown < 24 << 20, "resident memory grew by {grown} bytes");

    let v = srv
        .wait_agent(agent.uid, WAIT, |v| {
            v["own_metrics"]["dropped_points"].as_u64() >= Some(180 * 2024)
        })
        .await;
    assert_eq!(v["own_metrics"]["exporters"].as_array().unwrap().len(), 16);
    let dropped = "flotilla_gateway_own_metrics_total{outcome=\"dropped_points\"}";
    assert_eq!(srv.metric(dropped).await, 360.0 * 2024.0);
    // The samples for agents that do not exist are counted and make no agent.
    let unknown = "flotilla_coordinator_own_metrics_samples_total{outcome=\"unknown_agent\"}";
    let deadline = std::time::Instant::now() + WAIT;
    while srv.metric(unknown).await < 180.0 {
        assert!(
            std::time::Instant::now() < deadline,
            "{}",
            srv.metrics().await
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (_, list) = srv.get("/api/v1/agents").await;
    assert_eq!(list["total"], 1);
}

#[tokio::test]
async fn per_agent_series_are_served_only_when_asked_for() {
    let dir = tempfile::tempdir().unwrap();
    let plain = start(config(dir.path().join("a").as_path())).await;
    let status = reqwest::get(format!("{}/metrics/agents", plain.api))
        .await
        .unwrap()
        .status();
    assert_eq!(status, 404);

    let mut cfg = config(dir.path().join("b").as_path());
    cfg.per_agent_metrics = true;
    let srv = start(cfg).await;
    let (agent, otlp) = known_agent(&srv).await;
    // An exporter named to forge a series of another agent: written escaped.
    let forger = "x\"} 1\nflotilla_agent_up{instance_uid=\"forged";
    let failed = |v: f64| {
        counter(
            "otelcol_exporter_send_failed_spans",
            vec![
                point(vec![string_kv("exporter", "otlp")], v),
                point(vec![string_kv("exporter", forger)], v),
            ],
        )
    };
    let cpu = |v: f64| counter("otelcol_process_cpu_seconds", vec![point(vec![], v)]);
    // The second export gzipped, as exporters with compression on send it.
    for (c, f, gzip) in [(1.0, 0.0, false), (3.0, 50.0, true)] {
        let mut body = export(Some(agent.uid), vec![cpu(c), failed(f)]);
        let mut headers = Vec::new();
        if gzip {
            let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            std::io::Write::write_all(&mut enc, &body).unwrap();
            body = enc.finish().unwrap();
            headers.push(("Content-Encoding", "gzip".to_owned()));
        }
        assert_eq!(otlp.post_raw(body, &headers).await.unwrap().status, 200);
        tokio::time::sleep(Duration::from_millis(1100)).await;
    }
    srv.wait_agent(agent.uid, WAIT, |v| {
        v["own_metrics"]["exporters"][0]["failed_per_second"].as_f64() > Some(0.0)
    })
    .await;
    let text = reqwest::get(format!("{}/metrics/agents", srv.api))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let uid = agent.uid;
    let series = |name: &str| {
        flotilla_testkit::metric_sum(&text, &format!("{name}{{instance_uid=\"{uid}\""))
    };
    assert_eq!(series("flotilla_agent_up"), 1.0, "{text}");
    assert!(series("flotilla_agent_cpu_cores") > 0.5, "{text}");
    assert!(
        series("flotilla_agent_exporter_failed_per_second") > 10.0,
        "{text}"
    );
    assert!(!text.contains("instance_uid=\"forged\""), "{text}");
    // The exposition is valid for Prometheus.
    {
        let mut promtool = Command::new("promtool")
            .args(["check", "metrics"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("promtool runs (scripts/test.sh installs prometheus)");
        std::io::Write::write_all(&mut promtool.stdin.take().unwrap(), text.as_bytes()).unwrap();
        let out = promtool.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "promtool: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[tokio::test]
async fn a_config_keeps_metrics_here_and_forwards_a_copy_to_a_named_destination() {
    // The user's OTLP backend: records what it is sent.
    let got: Arc<Mutex<Vec<bytes::Bytes>>> = Arc::default();
    let seen = got.clone();
    let backend = axum::Router::new().route(
        "/v1/metrics",
        axum::routing::post(move |body: bytes::Bytes| {
            let seen = seen.clone();
            async move {
                seen.lock().unwrap().push(body);
                "ok"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let backend_url = format!("http://{}/v1/metrics", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, backend).await });

    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.agent_metrics_forward = [("backend".to_owned(), backend_url)].into();
    let srv = start(cfg).await;
    let (status, body) = srv
        .put(
            "/api/v1/configs/fwd",
            serde_json::json!({"selector": {"env": "fwd"}, "settings": {"own_metrics_forward": "backend"}}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = srv
        .put(
            "/api/v1/configs/both",
            serde_json::json!({"selector": {"env": "x"}, "settings": {
                "own_metrics_forward": "backend",
                "own_metrics": {"destination_endpoint": "https://otlp.example/v1/metrics"}}}),
        )
        .await;
    assert_eq!(status, 400, "{body}");

    let mut agent = SimAgent::new("otelcol", &[("env", "fwd")]);
    agent.capabilities |= flotilla_proto::opamp::AgentCapabilities::ReportsOwnMetrics as u64;
    let opamp = HttpClient::new(&srv.http_url);
    let reply = opamp.post(&agent.full_report(), false).await.unwrap();
    let offer = reply
        .message
        .and_then(|m| m.connection_settings?.own_metrics)
        .expect("an own-metrics offer");
    let metrics_url = srv.http_url.replace("/v1/opamp", "/v1/metrics");
    assert_eq!(offer.destination_endpoint, metrics_url);
    let headers: Vec<(String, String)> = offer
        .headers
        .unwrap()
        .headers
        .into_iter()
        .map(|h| (h.key, h.value))
        .collect();
    assert_eq!(
        headers,
        [("Flotilla-Forward".to_owned(), "backend".to_owned())]
    );

    // The agent exports with the offered header: kept here, and a copy goes to the backend.
    let otlp = HttpClient::new(&metrics_url);
    let export = export(Some(agent.uid), vec![sent(5.0)]);
    let with = |name: &str| vec![("Flotilla-Forward", name.to_owned())];
    let r = otlp
        .post_raw(export.clone(), &with("backend"))
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    srv.wait_agent(agent.uid, WAIT, |v| {
        v["own_metrics"]["exporters"][0]["sent_total"] == 5.0
    })
    .await;
    let deadline = std::time::Instant::now() + WAIT;
    while got.lock().unwrap().is_empty() {
        assert!(std::time::Instant::now() < deadline, "nothing forwarded");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(got.lock().unwrap()[0], export);

    // A destination the gateway does not know: kept, not forwarded, counted.
    let r = otlp
        .post_raw(export.clone(), &with("nowhere"))
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    let unknown = "flotilla_gateway_own_metrics_forwarded_total{destination=\"(unknown)\",outcome=\"unknown_destination\"}";
    assert_eq!(srv.metric(unknown).await, 1.0);
    let sent_ok =
        "flotilla_gateway_own_metrics_forwarded_total{destination=\"backend\",outcome=\"sent\"}";
    assert_eq!(srv.metric(sent_ok).await, 1.0);
}

/// An exporter keeps its connection between exports: the gateway keeps it open longer than its
/// handshake timeout (which closes idle connections that never sent anything).
#[tokio::test]
async fn an_exporters_connection_stays_open_between_exports() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.limits.handshake_timeout = Duration::from_secs(1);
    let srv = start(cfg).await;
    let addr = srv.running.as_ref().unwrap().opamp_addr.unwrap();
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let body = export(Some(Uuid::now_v7()), vec![sent(1.0)]);
    let request = |body: &[u8]| {
        let mut r = format!(
            "POST /v1/metrics HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/x-protobuf\r\n\
             Content-Length: {}\r\n\r\n",
            body.len()
        )
        .into_bytes();
        r.extend_from_slice(body);
        r
    };
    for _ in 0..2 {
        tcp.write_all(&request(&body)).await.unwrap();
        let mut buf = vec![0u8; 4096];
        let n = tokio::time::timeout(WAIT, tcp.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        let head = String::from_utf8_lossy(&buf[..n]);
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        // Twice the handshake timeout: a connection that never sent anything would be closed.
        tokio::time::sleep(Duration::from_millis(2500)).await;
    }
}
