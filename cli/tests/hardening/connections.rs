//! What connections could hold or starve: several agents on one socket, half-sent and oversized
//! messages, idle sockets, refused certificates in a loop, keep-alive pollers.

use super::*;

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
        srv.metric("flotilla_gateway_rejected_total{reason=\"slow_message\"")
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
                    body: vec![b'#'; 2 << 20].into(),
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
        srv.metric("flotilla_gateway_rejected_total{reason=\"inflight_budget\"")
            .await,
        1.0
    );
    // Agents with whole messages are still served.
    let mut agent = SimAgent::new("otelcol", &[]);
    let mut ws = WsClient::connect(&srv.ws_url).await.unwrap();
    answered_ok(&mut ws, &agent.full_report()).await;
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
        srv.metric("flotilla_gateway_rejected_total{reason=\"evicted_pending\"")
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
    let owner_refusals = srv
        .metric("flotilla_coordinator_uplinks_total{result=\"identity\"")
        .await;
    assert_eq!(owner_refusals, 1.0);
    assert!(
        srv.metric("flotilla_gateway_rejected_total{reason=\"refused_certificate\"")
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
