//! The plain-HTTP transport against the real listener: gzip both ways, size limits, malformed
//! input, the instance-uid header, config on the next poll, and pollers that just stop.

mod common;

use common::{config, full_state_requested, start};
use flate2::Compression;
use flate2::write::GzEncoder;
use flotilla_loadtest::client::HttpClient;
use flotilla_loadtest::sim::SimAgent;
use flotilla_proto::opamp::ServerErrorResponseType;
use prost::Message;
use serde_json::json;
use std::io::Write;
use std::time::Duration;

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut enc = GzEncoder::new(Vec::new(), Compression::best());
    enc.write_all(data).unwrap();
    enc.finish().unwrap()
}

#[tokio::test]
async fn polls_get_capabilities_every_time_and_config_on_the_next_poll_gzipped_when_asked() {
    let dir = tempfile::tempdir().unwrap();
    let srv = start(config(dir.path())).await;
    let http = HttpClient::new(&srv.http_url);
    let mut agent = SimAgent::new("otelcol", &[("env", "prod")]);

    let first = http.post(&agent.full_report(), true).await.unwrap();
    assert_eq!(first.status, 200);
    let reply = first.message.unwrap();
    assert!(full_state_requested(&reply));
    for m in agent.handle(&reply) {
        let r = http.post(&m, false).await.unwrap().message.unwrap();
        assert_eq!(
            r.capabilities & 1,
            1,
            "every HTTP reply carries capabilities"
        );
    }

    let body = format!("receivers: {{otlp: {{}}}}\n# {}\n", "padding ".repeat(100));
    let (status, _) = srv
        .put(
            "/api/v1/configs/all",
            json!({"files": {"collector.yaml": body}}),
        )
        .await;
    assert_eq!(status, 200);
    // Nothing can be pushed to a poller: the config comes with the next poll's reply, gzipped.
    let poll = http.post(&agent.heartbeat(), true).await.unwrap();
    assert_eq!(
        poll.headers
            .get("content-encoding")
            .map(|v| v.to_str().unwrap()),
        Some("gzip")
    );
    assert!(
        poll.raw.len() < poll.message.as_ref().unwrap().encoded_len(),
        "the body really is compressed"
    );
    let reply = poll.message.unwrap();
    assert!(reply.remote_config.is_some());
    for m in agent.handle(&reply) {
        http.post(&m, false).await.unwrap();
    }
    srv.wait_agent(agent.uid, Duration::from_secs(5), |v| {
        v["remote_config_status"]["status"] == "APPLIED"
    })
    .await;
    let poll = http.post(&agent.heartbeat(), false).await.unwrap();
    assert!(
        poll.message.unwrap().remote_config.is_none(),
        "no re-offer once applied"
    );
    assert!(
        poll.headers.get("content-encoding").is_none(),
        "no gzip when not asked"
    );
    srv.stop().await;
}

#[tokio::test]
async fn oversize_bodies_and_gzip_bombs_get_413_and_malformed_ones_bad_request() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.max_message_size = 64 * 1024;
    let srv = start(cfg).await;
    let http = HttpClient::new(&srv.http_url);

    let r = http.post_raw(vec![0x0a; 100 * 1024], &[]).await.unwrap();
    assert_eq!(r.status, 413);
    // 10 MB of zeros gzip to about 10 KB: under the limit on the wire, far over it unpacked.
    let bomb = gzip(&vec![0u8; 10 << 20]);
    assert!(bomb.len() < 64 * 1024);
    let r = http
        .post_raw(bomb, &[("Content-Encoding", "gzip".into())])
        .await
        .unwrap();
    assert_eq!(r.status, 413);

    let r = http.post_raw(vec![0x0a, 0xff, 0x01], &[]).await.unwrap();
    assert_eq!(r.status, 400);
    let err = r.message.unwrap().error_response.unwrap();
    assert_eq!(err.r#type, ServerErrorResponseType::BadRequest as i32);
    let r = http
        .post_raw(b"not gzip".to_vec(), &[("Content-Encoding", "gzip".into())])
        .await
        .unwrap();
    assert_eq!(r.status, 400);
    let r = http
        .post_raw(vec![], &[("Content-Encoding", "br".into())])
        .await
        .unwrap();
    assert_eq!(r.status, 415);

    // The server keeps serving.
    let mut agent = SimAgent::new("otelcol", &[]);
    assert_eq!(
        http.post(&agent.full_report(), true).await.unwrap().status,
        200
    );
    srv.stop().await;
}

#[tokio::test]
async fn instance_uid_header_must_agree_with_the_body() {
    let dir = tempfile::tempdir().unwrap();
    let srv = start(config(dir.path())).await;
    let http = HttpClient::new(&srv.http_url);
    let mut agent = SimAgent::new("otelcol", &[]);
    let body = agent.full_report().encode_to_vec();
    let other = uuid::Uuid::now_v7().to_string();
    let r = http
        .post_raw(body.clone(), &[("OpAMP-Instance-UID", other)])
        .await
        .unwrap();
    assert_eq!(r.status, 400);
    let r = http
        .post_raw(body.clone(), &[("OpAMP-Instance-UID", "nope".into())])
        .await
        .unwrap();
    assert_eq!(r.status, 400);
    let r = http
        .post_raw(body, &[("OpAMP-Instance-UID", agent.uid.to_string())])
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    srv.stop().await;
}

#[tokio::test]
async fn pollers_that_stop_without_disconnect_become_silent_and_disconnect_is_honoured() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.heartbeat_interval = Duration::from_secs(1);
    let srv = start(cfg).await;
    let http = HttpClient::new(&srv.http_url);
    let mut quiet = SimAgent::new("otelcol", &[]);
    quiet.capabilities &= !0x2000; // no ReportsHeartbeat: judged by the poll interval
    http.post(&quiet.full_report(), false).await.unwrap();
    let mut polite = SimAgent::new("otelcol", &[]);
    http.post(&polite.full_report(), false).await.unwrap();
    http.post(&polite.disconnect(), false).await.unwrap();
    srv.wait_agent(polite.uid, Duration::from_secs(2), |v| {
        v["status"] == "disconnected"
    })
    .await;
    srv.wait_agent(quiet.uid, Duration::from_secs(8), |v| {
        v["status"] == "silent"
    })
    .await;
    assert_eq!(
        srv.agent(polite.uid).await["status"],
        "disconnected",
        "a disconnected agent is not silent"
    );
    srv.stop().await;
}

#[tokio::test]
async fn non_opamp_requests_are_refused_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let srv = start(config(dir.path())).await;
    let base = srv.http_url.trim_end_matches("/v1/opamp").to_owned();
    let r = reqwest::get(format!("{base}/other")).await.unwrap();
    assert_eq!(r.status(), 404);
    let r = reqwest::get(&srv.http_url).await.unwrap();
    assert_eq!(r.status(), 400);
    assert!(r.text().await.unwrap().contains("WebSocket upgrade"));
    let r = reqwest::Client::new()
        .get(&srv.http_url)
        .header("Content-Type", "application/x-protobuf")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 405);
    srv.stop().await;
}
