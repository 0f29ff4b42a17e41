//! Hostile clients against the real listener: slow handshakes and bodies, silent upgrades, garbage
//! bytes and frames, message floods and more connections than allowed. Each must be turned away
//! while a well-behaved agent beside it keeps being served.

mod common;

use common::{Server, answered_ok, config, start};
use flotilla_loadtest::client::{HttpClient, WsClient, WsEvent};
use flotilla_loadtest::sim::SimAgent;
use flotilla_proto::opamp::ServerErrorResponseType;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const T: Duration = Duration::from_secs(5);

fn addr(srv: &Server) -> std::net::SocketAddr {
    srv.running.as_ref().unwrap().opamp_addr.unwrap()
}

/// Reads until the server closes the connection; returns what it sent and when it closed.
async fn until_closed(mut s: TcpStream) -> (String, Duration) {
    let started = Instant::now();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf)).await;
    (
        String::from_utf8_lossy(&buf).into_owned(),
        started.elapsed(),
    )
}

/// A well-behaved agent: served right now.
async fn assert_served(srv: &Server, agent: &mut SimAgent) {
    let mut ws = WsClient::connect(&srv.ws_url).await.unwrap();
    answered_ok(&mut ws, &agent.full_report()).await;
}

#[tokio::test]
async fn slow_and_silent_clients_are_cut_off_at_the_handshake_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.limits.handshake_timeout = Duration::from_millis(500);
    let srv = start(cfg).await;
    let mut good = SimAgent::new("otelcol", &[]);

    // Slowloris: headers that never end.
    let mut loris = TcpStream::connect(addr(&srv)).await.unwrap();
    loris
        .write_all(b"POST /v1/opamp HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    // A body that never arrives.
    let mut slow_body = TcpStream::connect(addr(&srv)).await.unwrap();
    slow_body
        .write_all(
            b"POST /v1/opamp HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-protobuf\r\n\
              Content-Length: 100\r\n\r\n0123456789",
        )
        .await
        .unwrap();
    // An upgrade that never sends a message.
    let mut silent = WsClient::connect(&srv.ws_url).await.unwrap();
    assert_served(&srv, &mut good).await;

    let (_, loris_closed) = until_closed(loris).await;
    assert!(loris_closed < Duration::from_secs(3), "{loris_closed:?}");
    let (reply, _) = until_closed(slow_body).await;
    assert!(reply.starts_with("HTTP/1.1 408"), "{reply}");
    match silent.next_event(T).await.unwrap() {
        WsEvent::Closed(Some(f)) => assert_eq!(u16::from(f.code), 1008),
        other => panic!("expected close 1008, got {other:?}"),
    }
    assert_served(&srv, &mut good).await;
    srv.stop().await;
}

#[tokio::test]
async fn a_tls_listener_drops_clients_that_never_finish_the_handshake() {
    let dir = tempfile::tempdir().unwrap();
    let pki = common::pki::Pki::new(dir.path());
    let mut cfg = common::pki::with_tls(config(dir.path()), pki.tls_files(true));
    cfg.limits.handshake_timeout = Duration::from_millis(500);
    let srv = start(cfg).await;
    let stalled = TcpStream::connect(addr(&srv)).await.unwrap();
    let mut half = TcpStream::connect(addr(&srv)).await.unwrap();
    half.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00])
        .await
        .unwrap(); // a ClientHello header only
    let cert = pki.agent(common::pki::YEAR);
    let mut agent = SimAgent::new("otelcol", &[]);
    agent.uid = cert.uid;
    let u = common::pki::urls(&srv);
    common::pki::ws_served(&u.ws, &pki.client(Some(&cert)), &mut agent)
        .await
        .unwrap();
    for s in [stalled, half] {
        let (_, closed) = until_closed(s).await;
        assert!(closed < Duration::from_secs(3), "{closed:?}");
    }
    srv.stop().await;
}

#[tokio::test]
async fn garbage_bytes_and_frames_end_only_their_own_connection() {
    let dir = tempfile::tempdir().unwrap();
    let srv = start(config(dir.path())).await;
    let mut good = SimAgent::new("otelcol", &[]);
    let mut ws_good = WsClient::connect(&srv.ws_url).await.unwrap();
    ws_good.request(&good.full_report()).await.unwrap();

    // Not HTTP at all.
    let mut junk = TcpStream::connect(addr(&srv)).await.unwrap();
    junk.write_all(&[
        0xde, 0xad, 0xbe, 0xef, b'\r', b'\n', 0, 0xff, b'\r', b'\n', b'\r', b'\n',
    ])
    .await
    .unwrap();
    let (reply, _) = until_closed(junk).await;
    assert!(
        reply.is_empty() || reply.starts_with("HTTP/1.1 400"),
        "{reply}"
    );

    // A WebSocket upgrade followed by bytes that are not a valid frame (unmasked, reserved bits).
    let mut raw = TcpStream::connect(addr(&srv)).await.unwrap();
    raw.write_all(
        b"GET /v1/opamp HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
          Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    )
    .await
    .unwrap();
    let mut head = [0u8; 12];
    raw.read_exact(&mut head).await.unwrap();
    assert_eq!(&head, b"HTTP/1.1 101");
    raw.write_all(&[0xf2, 0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff])
        .await
        .unwrap();
    let (_, closed) = until_closed(raw).await;
    assert!(closed < Duration::from_secs(3));

    // Binary frames that are not OpAMP: answered BAD_REQUEST, the connection stays usable.
    let mut ws = WsClient::connect(&srv.ws_url).await.unwrap();
    for garbage in [
        vec![0x00, 0xff, 0xff, 0xff],
        vec![0x07; 64],
        vec![0x00, 0x0a, 0x80],
    ] {
        ws.send_raw(garbage).await.unwrap();
        let r = ws.recv(T).await.unwrap();
        assert_eq!(
            r.error_response.unwrap().r#type(),
            ServerErrorResponseType::BadRequest
        );
    }
    answered_ok(&mut ws_good, &good.heartbeat()).await;
    srv.stop().await;
}

#[tokio::test]
async fn a_flooding_connection_is_slowed_then_closed() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.limits.message_rate = 2; // bursts of 10
    let srv = start(cfg).await;
    let mut good = SimAgent::new("otelcol", &[]);
    let mut ws_good = WsClient::connect(&srv.ws_url).await.unwrap();
    ws_good.request(&good.full_report()).await.unwrap();

    let mut flood = SimAgent::new("otelcol", &[]);
    let mut ws = WsClient::connect(&srv.ws_url).await.unwrap();
    let (mut served, mut slowed) = (0, 0);
    let close = loop {
        if ws.send(&flood.heartbeat()).await.is_err() {
            break None;
        }
        match ws.next_event(T).await.unwrap() {
            WsEvent::Message(m) => match m.error_response {
                None => served += 1,
                Some(e) => {
                    assert_eq!(e.r#type(), ServerErrorResponseType::Unavailable);
                    assert!(
                        e.details.is_some(),
                        "retry_info tells the agent when to retry"
                    );
                    slowed += 1;
                }
            },
            WsEvent::Closed(f) => break f,
        }
        assert!(served + slowed < 100, "never closed");
    };
    assert!((10..=12).contains(&served), "burst served: {served}");
    assert_eq!(u16::from(close.expect("a close frame").code), 1008);
    assert!(slowed >= 9, "{slowed}");

    // HTTP pollers on one keep-alive connection get 429 with Retry-After past the burst.
    let http = HttpClient::new(&srv.http_url);
    let mut statuses = Vec::new();
    for _ in 0..15 {
        let r = http.post(&flood.heartbeat(), false).await.unwrap();
        statuses.push(r.status);
        if r.status == 429 {
            assert!(r.headers.get("retry-after").is_some());
        }
    }
    assert!(statuses.contains(&429), "{statuses:?}");
    answered_ok(&mut ws_good, &good.heartbeat()).await;
    srv.stop().await;
}

#[tokio::test]
async fn connections_past_the_cap_get_503_with_retry_after() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.limits.max_connections = 4;
    let srv = start(cfg).await;
    let mut agents: Vec<(SimAgent, WsClient)> = Vec::new();
    for _ in 0..4 {
        let mut a = SimAgent::new("otelcol", &[]);
        let mut ws = WsClient::connect(&srv.ws_url).await.unwrap();
        ws.request(&a.full_report()).await.unwrap();
        agents.push((a, ws));
    }
    // A burst past the cap: every one is told to come back later.
    for _ in 0..20 {
        let err = WsClient::connect(&srv.ws_url).await.err().expect("refused");
        assert!(format!("{err:#}").contains("503"), "{err:#}");
    }
    let http = HttpClient::new(&srv.http_url);
    let r = http
        .post(&SimAgent::new("otelcol", &[]).full_report(), false)
        .await
        .unwrap();
    assert_eq!(r.status, 503);
    assert!(r.headers.get("retry-after").is_some());
    // Those inside the cap are unaffected; a freed slot is taken by the next agent.
    for (a, ws) in &mut agents {
        answered_ok(ws, &a.heartbeat()).await;
    }
    let (_, ws) = agents.pop().unwrap();
    ws.close().await.unwrap();
    let deadline = Instant::now() + T;
    loop {
        let mut next = SimAgent::new("otelcol", &[]);
        if let Ok(mut ws) = WsClient::connect(&srv.ws_url).await {
            answered_ok(&mut ws, &next.full_report()).await;
            break;
        }
        assert!(Instant::now() < deadline, "the freed slot was never reused");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    srv.stop().await;
}
