//! What an admin, an agent or an attacker could do to crash, starve or mislead the standalone
//! server, each over real sockets against the in-process app: out-of-range settings, several
//! agents on one connection, refused CSRs, certificates that name their agent, half-sent
//! messages, oversized reports, uid-less floods, idle connections, refused certificates in a
//! loop, restarted agents, keep-alive pollers and the smaller cuts.

mod common;

use common::pki::{Pki, YEAR, urls, with_tls};
use common::{Server, answered_ok, config, start};
use flotilla_common::config::AgentIdentity;
use flotilla_loadtest::client::{HttpClient, WsClient};
use flotilla_loadtest::sim::SimAgent;
use flotilla_proto::opamp::{
    AgentCapabilities, AgentConfigFile, AgentConfigMap, AgentToServer, AgentToServerFlags,
    CertificateRequest, ComponentHealth, ConnectionSettingsRequest, EffectiveConfig,
    OpAmpConnectionSettingsRequest, ServerErrorResponseType, ServerToAgent,
};
use prost::Message;
use serde_json::{Value, json};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use uuid::Uuid;

const T: Duration = Duration::from_secs(5);

fn opamp_addr(srv: &Server) -> std::net::SocketAddr {
    srv.running.as_ref().unwrap().opamp_addr.unwrap()
}

fn api_addr(srv: &Server) -> std::net::SocketAddr {
    srv.running.as_ref().unwrap().api_addr
}

async fn metric(srv: &Server, series: &str) -> f64 {
    let text = reqwest::get(format!("{}/metrics", srv.api))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .filter(|l| l.starts_with(series))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn error_of(reply: &ServerToAgent) -> &str {
    &reply
        .error_response
        .as_ref()
        .unwrap_or_else(|| panic!("expected an error reply, got {reply:?}"))
        .error_message
}

/// One HTTP/1.1 request on `stream` (kept open), and the status and body of the response.
async fn http_on(
    stream: &mut TcpStream,
    head: &str,
    body: &[u8],
) -> std::io::Result<(u16, Vec<u8>)> {
    let mut req = format!(
        "{head}\r\nHost: x\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    req.extend_from_slice(body);
    stream.write_all(&req).await?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&buf);
        let Some(end) = text.find("\r\n\r\n") else {
            continue;
        };
        let len: usize = text[..end]
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("content-length")
                    .then(|| v.trim().parse().ok())?
            })
            .unwrap_or(0);
        if buf.len() >= end + 4 + len {
            let status = text[9..12].parse().unwrap_or(0);
            return Ok((status, buf[end + 4..end + 4 + len].to_vec()));
        }
    }
}

/// Items 1 and 16: settings out of range are refused at PUT; a huge interval already stored (by
/// an older version) cannot crash message handling or the silence sweep.
#[tokio::test]
async fn out_of_range_settings_are_refused_and_stored_ones_cannot_crash_the_server() {
    let dir = tempfile::tempdir().unwrap();
    {
        use flotilla_common::store::{
            AgentSettings, AuditEntry, EmbeddedStore, Store, StoredConfig,
        };
        let store = EmbeddedStore::open(dir.path()).unwrap();
        let forever = StoredConfig {
            name: "forever".into(),
            version: 0,
            selector: Default::default(),
            files: Default::default(),
            hash: String::new(),
            packages: Default::default(),
            settings: Some(AgentSettings {
                heartbeat_interval: Some(humantime::parse_duration("99999999999999d").unwrap()),
                ..Default::default()
            }),
            created_unix_ms: 1,
            created_by: "an older version".into(),
            comment: String::new(),
        };
        let audit = |c: &StoredConfig| AuditEntry {
            id: String::new(),
            at_unix_ms: 1,
            caller: "test".into(),
            action: "config.put".into(),
            object: format!("config/{}", c.name),
            before: None,
            after: None,
        };
        store.put_config(forever, true, &audit).await.unwrap();
    }
    let mut cfg = config(dir.path());
    cfg.heartbeat_interval = Duration::from_secs(1);
    let srv = start(cfg).await;

    let (status, body) = srv
        .put(
            "/api/v1/configs/huge",
            json!({"settings": {"heartbeat_interval": "99999999999999d"}}),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    let msg = body["error"].as_str().unwrap();
    assert!(msg.contains("from 1s to 1day"), "{msg}");
    assert_eq!(
        srv.get("/api/v1/configs/huge").await.0,
        404,
        "nothing stored"
    );
    let (status, body) = srv
        .put(
            "/api/v1/configs/half",
            json!({"settings": {"heartbeat_interval": "1500ms"}}),
        )
        .await;
    assert_eq!(status, 400, "{body}");

    // The stored interval reaches agents without a panic: answered, offered, not unavailable.
    let mut agent = SimAgent::new("otelcol", &[]);
    let mut ws = WsClient::connect(&srv.ws_url).await.unwrap();
    let reply = answered_ok(&mut ws, &agent.full_report()).await;
    let offered = reply.connection_settings.unwrap().opamp.unwrap();
    assert!(offered.heartbeat_interval_seconds > 1 << 60);
    answered_ok(&mut ws, &agent.heartbeat()).await;
    // The silence sweep ran over it (every second) and the duties are fine.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let ready = reqwest::get(format!("{}/readyz", srv.api)).await.unwrap();
    assert_eq!(ready.status(), 200, "{}", ready.text().await.unwrap());
    assert_eq!(
        metric(&srv, "flotilla_coordinator_duty_failures_total").await,
        0.0
    );
    assert_eq!(srv.agent(agent.uid).await["status"], "connected");
    srv.stop().await;
}

/// Item 3: every agent a WebSocket spoke for is disconnected when it closes.
#[tokio::test]
async fn every_agent_of_a_connection_is_disconnected_when_it_closes() {
    let dir = tempfile::tempdir().unwrap();
    let srv = start(config(dir.path())).await;
    let mut a = SimAgent::new("otelcol", &[]);
    let mut b = SimAgent::new("otelcol", &[]);
    let mut c = SimAgent::new("otelcol", &[]);
    let mut ws = WsClient::connect(&srv.ws_url).await.unwrap();
    answered_ok(&mut ws, &a.full_report()).await;
    answered_ok(&mut ws, &b.full_report()).await;
    // A uid assigned mid-session, then used.
    let mut ask = c.full_report();
    ask.flags = AgentToServerFlags::RequestInstanceUid as u64;
    let reply = answered_ok(&mut ws, &ask).await;
    c.handle(&reply);
    let assigned = Uuid::from_slice(
        &reply
            .agent_identification
            .expect("a new uid")
            .new_instance_uid,
    )
    .unwrap();
    assert_eq!(c.uid, assigned);
    answered_ok(&mut ws, &c.full_report()).await;
    for uid in [a.uid, b.uid, c.uid] {
        assert_eq!(srv.agent(uid).await["status"], "connected");
    }
    ws.close().await.unwrap();
    for uid in [a.uid, b.uid, c.uid] {
        srv.wait_agent(uid, T, |v| v["status"] == "disconnected")
            .await;
    }
    srv.stop().await;
}

/// Item 4: a refused CSR is answered with the error alone, and nothing due is lost.
#[tokio::test]
async fn a_refused_csr_is_answered_with_the_error_alone() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    let mut cfg = config(dir.path());
    cfg.signing_ca = Some((pki.path("ca.pem"), pki.path("ca-key.pem")));
    let srv = start(cfg).await;
    let (status, body) = srv
        .put(
            "/api/v1/configs/base",
            json!({"files": {"collector.yaml": "receivers: {otlp: {}}\nexporters: {debug: {}}\nservice: {pipelines: {traces: {receivers: [otlp], exporters: [debug]}}}\n"}}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let mut agent = SimAgent::new("otelcol", &[]);
    agent.capabilities |= AgentCapabilities::AcceptsOpAmpConnectionSettings as u64;
    let mut ws = WsClient::connect(&srv.ws_url).await.unwrap();
    let with_bad_csr = AgentToServer {
        connection_settings_request: Some(ConnectionSettingsRequest {
            opamp: Some(OpAmpConnectionSettingsRequest {
                certificate_request: Some(CertificateRequest {
                    csr: b"not a CSR".to_vec(),
                }),
            }),
        }),
        ..agent.full_report()
    };
    let reply = ws.request(&with_bad_csr).await.unwrap();
    let err = reply.error_response.clone().expect("the CSR is refused");
    assert_eq!(err.r#type(), ServerErrorResponseType::BadRequest);
    assert_eq!(
        reply,
        ServerToAgent {
            instance_uid: agent.uid.as_bytes().to_vec(),
            error_response: Some(err),
            ..Default::default()
        },
        "nothing beside the error"
    );
    // The config and settings the error displaced come with the next reply.
    let next = answered_ok(&mut ws, &agent.heartbeat()).await;
    assert!(
        next.remote_config.is_some() && next.connection_settings.is_some(),
        "{next:?}"
    );
    srv.stop().await;
}

/// Items 5 and 6: a certificate that names its agent's uid fixes the uid (uri-san), and wins over
/// another certificate that claimed the uid first (registry).
#[tokio::test]
async fn a_certificate_that_names_its_agent_fixes_and_keeps_its_uid() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    let mut cfg = with_tls(config(dir.path()), pki.tls_files(true));
    cfg.agent_identity = AgentIdentity::UriSan;
    let srv = start(cfg).await;
    let u = urls(&srv);
    let alice = pki.agent(YEAR);
    let mut agent = SimAgent::new("otelcol", &[]);
    agent.uid = alice.uid;
    let mut ws = WsClient::connect_with(&u.ws, &pki.client(Some(&alice)))
        .await
        .unwrap();
    let mut ask = agent.full_report();
    ask.flags = AgentToServerFlags::RequestInstanceUid as u64;
    let reply = answered_ok(&mut ws, &ask).await;
    assert!(
        reply.agent_identification.is_none(),
        "no uid the certificate would refuse: {reply:?}"
    );
    agent.handle(&reply);
    answered_ok(&mut ws, &agent.heartbeat()).await;
    srv.stop().await;

    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    let srv = start(with_tls(config(dir.path()), pki.tls_files(true))).await; // registry
    let u = urls(&srv);
    let (bob, mallory) = (pki.agent(YEAR), pki.agent(YEAR));
    // Mallory's valid certificate claims Bob's uid before Bob ever connected: refused.
    let mut as_bob = SimAgent::new("otelcol", &[]);
    as_bob.uid = bob.uid;
    let mut evil = WsClient::connect_with(&u.ws, &pki.client(Some(&mallory)))
        .await
        .unwrap();
    let refused = evil.request(&as_bob.full_report()).await.unwrap();
    assert!(
        error_of(&refused).contains("names instance_uid"),
        "{refused:?}"
    );
    // Bob, with the certificate that names him, is served.
    let mut ws = WsClient::connect_with(&u.ws, &pki.client(Some(&bob)))
        .await
        .unwrap();
    answered_ok(&mut ws, &as_bob.full_report()).await;
    let view = srv.agent(bob.uid).await;
    assert_eq!(
        view["client_certificate"]["sha256"],
        hex::encode(&bob.issued.sha256)
    );
    srv.stop().await;
}

/// Opens a WebSocket by hand (for frames no client library sends) and returns the stream.
async fn raw_websocket(addr: std::net::SocketAddr) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(
        b"GET /v1/opamp HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
          Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    )
    .await
    .unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut b = [0u8; 1];
        s.read_exact(&mut b).await.unwrap();
        head.push(b[0]);
    }
    assert!(
        head.starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    s
}

/// A masked client frame header for a binary message of `len` bytes (a mask of zeros, so the
/// payload goes as it is).
fn frame_header(len: u64) -> Vec<u8> {
    let mut h = vec![0x82, 0x80 | 127];
    h.extend_from_slice(&len.to_be_bytes());
    h.extend_from_slice(&[0, 0, 0, 0]);
    h
}

/// Sends `msg` as one whole frame on a hand-made WebSocket and reads the server's reply frame.
async fn raw_request(s: &mut TcpStream, msg: &AgentToServer) -> ServerToAgent {
    let mut payload = vec![0u8];
    payload.extend(msg.encode_to_vec());
    let mut frame = frame_header(payload.len() as u64);
    frame.extend(payload);
    s.write_all(&frame).await.unwrap();
    let mut head = [0u8; 2];
    s.read_exact(&mut head).await.unwrap();
    assert_eq!(head[0], 0x82, "a binary reply");
    let len = match head[1] {
        126 => {
            let mut l = [0u8; 2];
            s.read_exact(&mut l).await.unwrap();
            u64::from(u16::from_be_bytes(l))
        }
        127 => {
            let mut l = [0u8; 8];
            s.read_exact(&mut l).await.unwrap();
            u64::from_be_bytes(l)
        }
        n => u64::from(n),
    };
    let mut body = vec![0u8; usize::try_from(len).unwrap()];
    s.read_exact(&mut body).await.unwrap();
    ServerToAgent::decode(&body[1..]).unwrap()
}

/// Item 10: a message left half-sent is closed within the handshake timeout, and reports past
/// the record limits are refused with the limit named, nothing of them kept.
#[tokio::test]
async fn half_sent_messages_are_cut_off_and_oversized_reports_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.limits.handshake_timeout = Duration::from_secs(1);
    let srv = start(cfg).await;

    // A first message, then 2 MiB announced, 256 KiB sent, and nothing more: its buffer is held
    // until the connection is closed.
    let mut stalled = Vec::new();
    for _ in 0..4 {
        let mut s = raw_websocket(opamp_addr(&srv)).await;
        let mut agent = SimAgent::new("otelcol", &[]);
        let reply = raw_request(&mut s, &agent.full_report()).await;
        assert!(reply.error_response.is_none(), "{reply:?}");
        let mut frame = frame_header(2 << 20);
        frame.extend(vec![0u8; 256 << 10]);
        s.write_all(&frame).await.unwrap();
        stalled.push(s);
    }
    let started = Instant::now();
    for mut s in stalled {
        let mut buf = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf)).await;
        assert!(read.is_ok(), "a half-sent message held its connection open");
        let close_1008 = buf.len() >= 4 && buf[0] == 0x88 && buf[2..4] == [0x03, 0xf0];
        assert!(close_1008, "expected a close frame with 1008: {buf:?}");
    }
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
    assert!(
        metric(
            &srv,
            "flotilla_gateway_rejected_total{reason=\"slow_message\""
        )
        .await
            >= 4.0
    );

    // Reports past the limits: refused, naming the limit; nothing kept.
    let mut ws = WsClient::connect(&srv.ws_url).await.unwrap();
    let mut agent = SimAgent::new("otelcol", &[]);
    let mut huge_config = agent.full_report();
    huge_config.effective_config = Some(EffectiveConfig {
        config_map: Some(AgentConfigMap {
            config_map: [(
                String::new(),
                AgentConfigFile {
                    body: vec![b'#'; 2 << 20],
                    content_type: "text/yaml".into(),
                },
            )]
            .into(),
        }),
    });
    let mut many_components = agent.full_report();
    many_components.health = Some(ComponentHealth {
        component_health_map: (0..5_000)
            .map(|i| (format!("receiver/{i}"), ComponentHealth::default()))
            .collect(),
        ..Default::default()
    });
    for (msg, limit) in [
        (huge_config.clone(), "--max-effective-config-size"),
        (many_components, "--max-health-components"),
    ] {
        let reply = ws.request(&msg).await.unwrap();
        assert!(error_of(&reply).contains(limit), "{reply:?}");
        assert_eq!(
            srv.get(&format!("/api/v1/agents/{}", agent.uid)).await.0,
            404
        );
    }
    // The same by gzip over HTTP: 2 MiB inflated from a few KB is refused too.
    let http = HttpClient::new(&srv.http_url);
    let reply = http.post(&huge_config, true).await.unwrap();
    assert!(error_of(&reply.message.unwrap()).contains("--max-effective-config-size"));
    assert_eq!(
        srv.get(&format!("/api/v1/agents/{}", agent.uid)).await.0,
        404
    );
    // Within the limits the agent is served.
    answered_ok(&mut ws, &agent.full_report()).await;
    srv.stop().await;
}

/// Item 10: the bytes of incomplete messages over all connections share one budget: past it, the
/// connection that would exceed it is closed at once.
#[tokio::test]
async fn incomplete_messages_over_all_connections_share_a_budget() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.max_message_size = 2 << 20;
    cfg.limits.max_inflight_bytes = 2 << 20;
    let srv = start(cfg).await;
    let mut held = Vec::new();
    let started = Instant::now();
    let mut closed = 0;
    for _ in 0..3 {
        let mut s = raw_websocket(opamp_addr(&srv)).await;
        let mut agent = SimAgent::new("otelcol", &[]);
        raw_request(&mut s, &agent.full_report()).await;
        let mut frame = frame_header(2 << 20);
        frame.extend(vec![0u8; 900 << 10]);
        if s.write_all(&frame).await.is_err() {
            closed += 1;
            continue;
        }
        held.push(s);
    }
    for mut s in held {
        let mut rest = Vec::new();
        let read = tokio::time::timeout(Duration::from_millis(1500), s.read_to_end(&mut rest));
        if read.await.is_ok() {
            closed += 1;
        }
    }
    assert_eq!(
        closed, 1,
        "only the connection that passed the budget is closed"
    );
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(
        metric(
            &srv,
            "flotilla_gateway_rejected_total{reason=\"inflight_budget\""
        )
        .await,
        1.0
    );
    // Agents with whole messages are still served.
    let mut agent = SimAgent::new("otelcol", &[]);
    let mut ws = WsClient::connect(&srv.ws_url).await.unwrap();
    answered_ok(&mut ws, &agent.full_report()).await;
    srv.stop().await;
}

/// Item 11: messages without a uid leave no records; agents can be deleted (audited) and are
/// removed after the agent retention.
#[tokio::test]
async fn uidless_floods_leave_no_records_and_agents_are_deleted_and_expire() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.agent_retention = Duration::from_secs(2);
    let srv = start(cfg).await;
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let anonymous = AgentToServer::default().encode_to_vec();
    for _ in 0..200 {
        let r = client
            .post(&srv.http_url)
            .header("Content-Type", "application/x-protobuf")
            .body(anonymous.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let reply = ServerToAgent::decode(r.bytes().await.unwrap()).unwrap();
        assert!(reply.agent_identification.is_some());
    }
    let (_, health) = srv.get("/api/v1/fleet/health").await;
    assert_eq!(health["total_agents"], 0, "{health}");

    // Deleted on request, with an audit entry.
    let mut kept = SimAgent::new("otelcol", &[]);
    let mut ws = WsClient::connect(&srv.ws_url).await.unwrap();
    answered_ok(&mut ws, &kept.full_report()).await;
    let mut gone = SimAgent::new("otelcol", &[]);
    let mut ws2 = WsClient::connect(&srv.ws_url).await.unwrap();
    answered_ok(&mut ws2, &gone.full_report()).await;
    let r = reqwest::Client::new()
        .delete(format!("{}/api/v1/agents/{}", srv.api, gone.uid))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        srv.get(&format!("/api/v1/agents/{}", gone.uid)).await.0,
        404
    );
    let (_, audit) = srv
        .get(&format!("/api/v1/audit?object=agent/{}", gone.uid))
        .await;
    assert_eq!(audit["entries"][0]["action"], "agent.delete", "{audit}");

    // Disconnected past the retention: removed by the server, audited as its own doing.
    answered_ok(&mut ws, &kept.disconnect()).await;
    srv.wait_for(
        &format!("/api/v1/audit?object=agent/{}", kept.uid),
        Duration::from_secs(10),
        |v| v["entries"][0]["action"] == "agent.expire" && v["entries"][0]["caller"] == "flotilla",
    )
    .await;
    assert_eq!(
        srv.get(&format!("/api/v1/agents/{}", kept.uid)).await.0,
        404
    );
    srv.stop().await;
}

/// Item 12: connections that say nothing cannot keep authorised agents out.
#[tokio::test]
async fn idle_connections_cannot_keep_agents_out() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.limits.max_connections = 4;
    let srv = start(cfg).await;
    let mut idle = Vec::new();
    for _ in 0..10 {
        idle.push(TcpStream::connect(opamp_addr(&srv)).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut agents = Vec::new();
    for _ in 0..4 {
        let mut agent = SimAgent::new("otelcol", &[]);
        let mut ws = WsClient::connect(&srv.ws_url).await.expect("room is made");
        answered_ok(&mut ws, &agent.full_report()).await;
        agents.push(ws);
    }
    assert!(
        metric(
            &srv,
            "flotilla_gateway_rejected_total{reason=\"evicted_pending\""
        )
        .await
            >= 4.0
    );
    // Every slot held by an agent: the cap holds.
    let mut extra = SimAgent::new("otelcol", &[]);
    let r = HttpClient::new(&srv.http_url)
        .post(&extra.full_report(), false)
        .await
        .unwrap();
    assert_eq!(r.status, 503);
    srv.stop().await;
}

/// Item 13: a certificate the owner refused is turned away before the upgrade while it keeps
/// coming back, so a client looping on it costs a handshake, not a session and an owner visit.
#[tokio::test]
async fn a_refused_certificate_in_a_loop_costs_a_handshake_each() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    let srv = start(with_tls(config(dir.path()), pki.tls_files(true))).await;
    let u = urls(&srv);
    let (alice, mallory) = (pki.agent(YEAR), pki.agent(YEAR));
    let mut as_alice = SimAgent::new("otelcol", &[]);
    as_alice.uid = alice.uid;
    let evil_opts = pki.client(Some(&mallory));
    let started = Instant::now();
    let (mut upgraded, mut attempts) = (0, 0);
    while started.elapsed() < Duration::from_secs(2) {
        attempts += 1;
        if let Ok(mut ws) = WsClient::connect_with(&u.ws, &evil_opts).await {
            upgraded += 1;
            let _ = ws.request(&as_alice.full_report()).await;
        }
    }
    assert!(attempts > 20, "{attempts} attempts");
    assert_eq!(upgraded, 1, "only the first attempt reached a session");
    let owner_refusals = metric(
        &srv,
        "flotilla_coordinator_uplinks_total{result=\"identity\"",
    )
    .await;
    assert_eq!(owner_refusals, 1.0);
    assert!(
        metric(
            &srv,
            "flotilla_gateway_rejected_total{reason=\"refused_certificate\""
        )
        .await
            >= f64::from(attempts - 1)
    );
    let http = HttpClient::with_options(&u.http, &evil_opts).unwrap();
    let r = http.post(&as_alice.full_report(), false).await.unwrap();
    assert_eq!(r.status, 403);
    assert!(r.headers.get("retry-after").is_some());
    // Alice herself is served.
    let mut ws = WsClient::connect_with(&u.ws, &pki.client(Some(&alice)))
        .await
        .unwrap();
    answered_ok(&mut ws, &as_alice.full_report()).await;
    srv.stop().await;
}

/// Item 14: an agent that restarts under the same uid is offered its connection settings again.
#[tokio::test]
async fn a_restarted_agent_is_offered_its_settings_again() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.heartbeat_interval = Duration::from_secs(7);
    let srv = start(cfg).await;
    let mut agent = SimAgent::new("otelcol", &[]);
    let mut ws = WsClient::connect(&srv.ws_url).await.unwrap();
    let first = answered_ok(&mut ws, &agent.full_report()).await;
    assert_eq!(
        first
            .connection_settings
            .unwrap()
            .opamp
            .unwrap()
            .heartbeat_interval_seconds,
        7
    );
    answered_ok(&mut ws, &agent.heartbeat()).await;
    ws.close().await.unwrap();
    // A new process, same uid: its sequence starts over, and it reports no settings.
    let mut restarted = SimAgent::new("otelcol", &[]);
    restarted.uid = agent.uid;
    let mut ws = WsClient::connect(&srv.ws_url).await.unwrap();
    let reply = answered_ok(&mut ws, &restarted.full_report()).await;
    let offer = reply
        .connection_settings
        .expect("the settings are offered again");
    assert_eq!(offer.opamp.unwrap().heartbeat_interval_seconds, 7);
    srv.stop().await;
}

/// Item 15: a keep-alive poller is not cut between its polls, even when the poll interval is
/// longer than the handshake timeout; a later request left half-sent is still cut off.
#[tokio::test]
async fn keep_alive_pollers_are_not_cut_between_polls() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.heartbeat_interval = Duration::from_secs(1);
    cfg.limits.handshake_timeout = Duration::from_millis(400);
    let srv = start(cfg).await;
    let mut agent = SimAgent::new("otelcol", &[]);
    let mut s = TcpStream::connect(opamp_addr(&srv)).await.unwrap();
    let head = "POST /v1/opamp HTTP/1.1\r\nContent-Type: application/x-protobuf";
    for i in 0..4 {
        let msg = if i == 0 {
            agent.full_report()
        } else {
            agent.heartbeat()
        };
        let (status, body) = http_on(&mut s, head, &msg.encode_to_vec())
            .await
            .unwrap_or_else(|e| panic!("poll {i} on the kept-alive connection failed: {e}"));
        assert_eq!(status, 200);
        assert!(
            ServerToAgent::decode(body.as_slice())
                .unwrap()
                .error_response
                .is_none()
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    // Half a request's head, then nothing: cut off at the handshake timeout.
    s.write_all(b"POST /v1/opamp HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let started = Instant::now();
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut rest)).await;
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    srv.stop().await;
}

/// Item 16: `.`/`..` are not config names; multi-member gzip bodies are read whole; refused
/// admin calls are counted, logged and audited.
#[tokio::test]
async fn dot_names_multi_member_gzip_and_refused_admin_calls() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens.toml");
    std::fs::write(
        &tokens,
        "[[token]]\nname = \"ann\"\nrole = \"admin\"\ntoken = \"ann-secret\"\n\
         [[token]]\nname = \"vic\"\nrole = \"viewer\"\ntoken = \"vic-secret\"\n",
    )
    .unwrap();
    let mut cfg = config(dir.path());
    cfg.api_tokens = Some(tokens);
    let srv = start(cfg).await;

    let body = json!({"settings": {"heartbeat_interval": "10s"}}).to_string();
    for name in ["%2E", "%2E%2E"] {
        let mut s = TcpStream::connect(api_addr(&srv)).await.unwrap();
        let head = format!(
            "PUT /api/v1/configs/{name} HTTP/1.1\r\nAuthorization: Bearer ann-secret\r\n\
             Content-Type: application/json"
        );
        let (status, reply) = http_on(&mut s, &head, body.as_bytes()).await.unwrap();
        assert_eq!(status, 400, "{name}: {}", String::from_utf8_lossy(&reply));
    }

    // One AgentToServer, gzipped as two members.
    let mut agent = SimAgent::new("otelcol", &[]);
    let bytes = agent.full_report().encode_to_vec();
    let (a, b) = bytes.split_at(bytes.len() / 2);
    let gzip = |part: &[u8]| {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        std::io::Write::write_all(&mut enc, part).unwrap();
        enc.finish().unwrap()
    };
    let mut two_members = gzip(a);
    two_members.extend(gzip(b));
    let r = HttpClient::new(&srv.http_url)
        .post_raw(two_members, &[("Content-Encoding", "gzip".into())])
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    assert!(r.message.unwrap().error_response.is_none());

    // Refused calls: counted, and on record.
    let client = reqwest::Client::new();
    let put = |token: Option<&str>| {
        let mut r = client
            .put(format!("{}/api/v1/configs/x", srv.api))
            .json(&json!({"settings": {"heartbeat_interval": "10s"}}));
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        r.send()
    };
    assert_eq!(put(None).await.unwrap().status(), 401);
    assert_eq!(put(Some("vic-secret")).await.unwrap().status(), 403);
    assert_eq!(
        metric(
            &srv,
            "flotilla_coordinator_api_refused_total{reason=\"unauthenticated\""
        )
        .await,
        1.0
    );
    assert_eq!(
        metric(
            &srv,
            "flotilla_coordinator_api_refused_total{reason=\"forbidden\""
        )
        .await,
        1.0
    );
    let audit: Value = client
        .get(format!("{}/api/v1/audit?object=api", srv.api))
        .bearer_auth("ann-secret")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let actions: Vec<(&str, &str)> = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["action"].as_str().unwrap(), e["caller"].as_str().unwrap()))
        .collect();
    assert_eq!(
        actions,
        [
            ("api.forbidden", "vic"),
            ("api.unauthenticated", "(no valid token)")
        ]
    );
    srv.stop().await;
}

#[tokio::test]
async fn a_websocket_upgrade_to_a_full_gateway_still_answers_established_agents() {
    // The eviction of idle connections must never touch an agent's live session.
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.limits.max_connections = 2;
    let srv = start(cfg).await;
    let mut agent = SimAgent::new("otelcol", &[]);
    let mut ws = WsClient::connect(&srv.ws_url).await.unwrap();
    answered_ok(&mut ws, &agent.full_report()).await;
    for _ in 0..5 {
        let _idle = TcpStream::connect(opamp_addr(&srv)).await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    answered_ok(&mut ws, &agent.heartbeat()).await;
    if let Ok(ev) = tokio::time::timeout(Duration::from_millis(300), ws.next_event(T)).await {
        panic!("the agent's session was disturbed: {ev:?}");
    }
    srv.stop().await;
}
