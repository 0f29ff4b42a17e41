//! Mutual TLS, agent identity, bearer tokens, certificate rotation over OpAMP and the admin API's
//! tokens and TLS, all over real TLS sockets against the in-process server.

mod common;

use common::pki::{
    AgentCert, Pki, YEAR, csr_pem, csr_request, http_status, urls, with_tls, ws_served,
};
use common::{answered_ok, config, start};
use flotilla_common::config::AgentIdentity;
use flotilla_loadtest::client::{ConnectOptions, WsClient, WsEvent};
use flotilla_loadtest::sim::SimAgent;
use flotilla_proto::opamp::{
    AgentCapabilities, AgentToServer, ServerErrorResponseType, ServerToAgent,
};
use serde_json::{Value, json};
use std::time::Duration;

const T: Duration = Duration::from_secs(5);

fn agent_for(cert: &AgentCert) -> SimAgent {
    let mut a = SimAgent::new("otelcol", &[]);
    a.uid = cert.uid;
    a.capabilities |= AgentCapabilities::AcceptsOpAmpConnectionSettings as u64;
    a
}

#[tokio::test]
async fn mutual_tls_turns_away_missing_foreign_revoked_and_expired_certificates() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    let good = pki.agent(YEAR);
    let revoked = pki.agent(YEAR);
    let expired = pki.agent(Duration::ZERO);
    let crl = pki
        .ca
        .revocation_list(std::slice::from_ref(&revoked.issued.serial), YEAR)
        .unwrap();
    std::fs::write(pki.path("crl.pem"), crl).unwrap();
    let mut files = pki.tls_files(true);
    files.crl = Some(pki.path("crl.pem"));
    let srv = start(with_tls(config(dir.path()), files)).await;
    let u = urls(&srv);
    tokio::time::sleep(Duration::from_millis(1100)).await; // `expired` is now past not_after

    let foreign_dir = tempfile::tempdir().unwrap();
    let foreign = Pki::new(foreign_dir.path());
    let foreign_cert = foreign.agent(YEAR);
    // Trusts our server, presents a certificate of another CA.
    let foreign_opts = ConnectOptions::tls(
        pki.ca.cert_pem().as_bytes(),
        Some((
            foreign_cert.issued.cert_pem.as_bytes(),
            foreign_cert.issued.key_pem.as_deref().unwrap().as_bytes(),
        )),
    )
    .unwrap();
    let cases = [
        ("no client certificate", pki.client(None)),
        ("another CA's certificate", foreign_opts),
        ("a revoked certificate", pki.client(Some(&revoked))),
        ("an expired certificate", pki.client(Some(&expired))),
    ];
    for (what, opts) in &cases {
        let mut agent = SimAgent::new("otelcol", &[]);
        assert!(
            ws_served(&u.ws, opts, &mut agent).await.is_err(),
            "WebSocket agent with {what} was served"
        );
        assert!(
            http_status(&u.http, opts, &mut agent).await.is_err(),
            "HTTP agent with {what} was served"
        );
    }
    let mut agent = agent_for(&good);
    let opts = pki.client(Some(&good));
    let reply = ws_served(&u.ws, &opts, &mut agent).await.unwrap();
    assert!(reply.error_response.is_none(), "{reply:?}");
    assert_eq!(http_status(&u.http, &opts, &mut agent).await.unwrap(), 200);
    let view = srv.agent(good.uid).await;
    assert_eq!(
        view["client_certificate"]["sha256"],
        hex::encode(&good.issued.sha256)
    );
    srv.stop().await;
}

#[tokio::test]
async fn one_agents_certificate_cannot_speak_for_another() {
    for rule in [AgentIdentity::Registry, AgentIdentity::UriSan] {
        let dir = tempfile::tempdir().unwrap();
        let pki = Pki::new(dir.path());
        let mut cfg = with_tls(config(dir.path()), pki.tls_files(true));
        cfg.agent_identity = rule;
        let srv = start(cfg).await;
        let u = urls(&srv);
        let (alice, mallory) = (pki.agent(YEAR), pki.agent(YEAR));
        let mut a = agent_for(&alice);
        let mut ws = WsClient::connect_with(&u.ws, &pki.client(Some(&alice)))
            .await
            .unwrap();
        answered_ok(&mut ws, &a.full_report()).await;

        // Mallory's valid certificate, Alice's uid: refused and the connection closed.
        let mut as_alice = agent_for(&mallory);
        as_alice.uid = alice.uid;
        let mut evil = WsClient::connect_with(&u.ws, &pki.client(Some(&mallory)))
            .await
            .unwrap();
        evil.send(&as_alice.full_report()).await.unwrap();
        let reply = evil.recv(T).await.unwrap();
        let err = reply.error_response.expect("an error reply");
        assert_eq!(
            err.r#type(),
            ServerErrorResponseType::BadRequest,
            "{rule:?}"
        );
        assert!(reply.remote_config.is_none() && reply.connection_settings.is_none());
        match evil.next_event(T).await.unwrap() {
            WsEvent::Closed(Some(f)) => assert_eq!(u16::from(f.code), 1008, "{rule:?}"),
            other => panic!("{rule:?}: expected a close, got {other:?}"),
        }
        let status = http_status(&u.http, &pki.client(Some(&mallory)), &mut as_alice)
            .await
            .unwrap();
        assert_eq!(status, 403, "{rule:?}");

        // Alice is untouched: still connected, still answered.
        answered_ok(&mut ws, &a.heartbeat()).await;
        assert_eq!(srv.agent(alice.uid).await["status"], "connected");
        srv.stop().await;
    }
}

#[tokio::test]
async fn agents_without_the_bearer_token_are_refused_before_the_upgrade() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("agent-tokens");
    std::fs::write(&tokens, "# fleet A\nfleet-a-token\n").unwrap();
    let mut cfg = config(dir.path());
    cfg.agent_tokens = Some(tokens);
    let srv = start(cfg).await;
    let mut agent = SimAgent::new("otelcol", &[]);

    let err = WsClient::connect(&srv.ws_url).await.err().unwrap();
    assert!(format!("{err:#}").contains("401"), "{err:#}");
    let wrong = ConnectOptions::default().with_token("guess");
    let err = WsClient::connect_with(&srv.ws_url, &wrong)
        .await
        .err()
        .unwrap();
    assert!(format!("{err:#}").contains("401"), "{err:#}");
    assert_eq!(
        http_status(&srv.http_url, &wrong, &mut agent)
            .await
            .unwrap(),
        401
    );

    let right = ConnectOptions::default().with_token("fleet-a-token");
    let mut ws = WsClient::connect_with(&srv.ws_url, &right).await.unwrap();
    answered_ok(&mut ws, &agent.full_report()).await;
    assert_eq!(
        http_status(&srv.http_url, &right, &mut agent)
            .await
            .unwrap(),
        200
    );
    srv.stop().await;
}

/// The certificate an offer carries, with its key if the server generated one.
fn offered_certificate(m: &ServerToAgent) -> Option<(String, Option<String>)> {
    let c = m
        .connection_settings
        .as_ref()?
        .opamp
        .as_ref()?
        .certificate
        .as_ref()?;
    let text = |b: &[u8]| String::from_utf8(b.to_vec()).unwrap();
    Some((
        text(&c.cert),
        (!c.private_key.is_empty()).then(|| text(&c.private_key)),
    ))
}

fn opts_for(pki: &Pki, cert: &str, key: &str) -> ConnectOptions {
    ConnectOptions::tls(
        pki.ca.cert_pem().as_bytes(),
        Some((cert.as_bytes(), key.as_bytes())),
    )
    .unwrap()
}

#[tokio::test]
async fn offered_and_csr_signed_certificates_replace_the_old_one_once_used() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    let mut cfg = with_tls(config(dir.path()), pki.tls_files(true));
    cfg.signing_ca = Some((pki.path("ca.pem"), pki.path("ca-key.pem")));
    // Where agents reach the server, and its certificate's CA: offers carry both, so the
    // collector's supervisor can take them as its new connection.
    cfg.opamp_advertise_url = Some("wss://opamp.example:4320/v1/opamp".into());
    cfg.opamp_server_ca = Some(pki.path("ca.pem"));
    let srv = start(cfg).await;
    let u = urls(&srv);
    let boot = pki.agent(YEAR);
    let mut agent = agent_for(&boot);
    let boot_opts = pki.client(Some(&boot));
    let mut ws = WsClient::connect_with(&u.ws, &boot_opts).await.unwrap();
    let first = ws.request(&agent.full_report()).await.unwrap();
    assert_ne!(
        first.capabilities & 0x40,
        0,
        "AcceptsConnectionSettingsRequest is offered with a signing CA"
    );

    // Offer flow: the admin asks, the live agent gets cert + key over its WebSocket.
    let (status, body) = srv
        .post(&format!("/api/v1/agents/{}/certificate", boot.uid))
        .await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["delivered"], true);
    let push = ws.recv(T).await.unwrap();
    let opamp = push
        .connection_settings
        .as_ref()
        .and_then(|c| c.opamp.as_ref())
        .unwrap();
    assert_eq!(
        opamp.destination_endpoint,
        "wss://opamp.example:4320/v1/opamp"
    );
    assert_eq!(
        opamp.tls.as_ref().unwrap().ca_pem_contents,
        pki.ca.cert_pem(),
        "the server's CA"
    );
    assert!(opamp.heartbeat_interval_seconds > 0);
    let (cert, key) = offered_certificate(&push).expect("a certificate offer");
    let key = key.expect("the offer flow carries the key");
    let sha = body["sha256"].as_str().unwrap().to_owned();
    ws.close().await.unwrap();
    // Until the agent reconnects with the new certificate the old one still works.
    assert!(ws_served(&u.ws, &boot_opts, &mut agent).await.is_ok());
    let new_opts = opts_for(&pki, &cert, &key);
    let mut ws = WsClient::connect_with(&u.ws, &new_opts).await.unwrap();
    let r = ws.request(&agent.full_report()).await.unwrap();
    assert!(
        r.error_response.is_none() && r.connection_settings.is_none(),
        "{r:?}"
    );
    let view = srv.agent(boot.uid).await;
    assert_eq!(view["client_certificate"]["sha256"], sha.as_str());
    let refused = ws_served(&u.ws, &boot_opts, &mut agent).await.unwrap();
    assert!(
        refused.error_response.is_some(),
        "the retired certificate still works"
    );

    // CSR flow: the agent keeps its key; a CSR naming another uid is refused.
    let key_pair = rcgen::KeyPair::generate().unwrap();
    let csr_for = |uid: uuid::Uuid| csr_pem(&key_pair, uid);
    let request = csr_request;
    let bad = ws
        .request(&AgentToServer {
            connection_settings_request: Some(request(csr_for(uuid::Uuid::now_v7()))),
            ..agent.heartbeat()
        })
        .await
        .unwrap();
    let err = bad
        .error_response
        .expect("a CSR for another uid is refused");
    assert_eq!(err.r#type(), ServerErrorResponseType::BadRequest);
    assert!(err.error_message.contains("names instance uid"), "{err:?}");
    let signed = ws
        .request(&AgentToServer {
            connection_settings_request: Some(request(csr_for(boot.uid))),
            ..agent.heartbeat()
        })
        .await
        .unwrap();
    let (csr_cert, csr_key) = offered_certificate(&signed).expect("the signed certificate");
    assert!(csr_key.is_none(), "no private key in the CSR flow");
    ws.close().await.unwrap();
    let csr_opts = opts_for(&pki, &csr_cert, &key_pair.serialize_pem());
    let r = ws_served(&u.ws, &csr_opts, &mut agent).await.unwrap();
    assert!(r.error_response.is_none(), "{r:?}");
    let refused = ws_served(&u.ws, &new_opts, &mut agent).await.unwrap();
    assert!(
        refused.error_response.is_some(),
        "the offered certificate was not retired"
    );
    let view = srv.agent(boot.uid).await;
    assert_eq!(
        view["client_certificate"]["retired"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    srv.stop().await;
}

async fn api_call(
    client: &reqwest::Client,
    method: reqwest::Method,
    url: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> (u16, Value) {
    let mut req = client.request(method, url);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    if let Some(b) = body {
        req = req.json(&b);
    }
    let r = req.send().await.unwrap();
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn the_api_needs_a_token_with_the_right_role_and_speaks_tls() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    let tokens = common::api_tokens_file(
        dir.path(),
        &[
            ("ann", "admin", "ann-token"),
            ("otto", "operator", "otto-token"),
            ("vic", "viewer", "vic-token"),
        ],
    );
    let mut cfg = config(dir.path());
    cfg.api_tokens = Some(tokens);
    cfg.api_tls = Some(flotilla_common::config::TlsFiles::new(
        pki.path("server.pem"),
        pki.path("server-key.pem"),
    ));
    let srv = start(cfg).await;
    let port = srv.running.as_ref().unwrap().api_addr.port();
    let base = format!("https://localhost:{port}");
    let client = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(pki.ca.cert_pem().as_bytes()).unwrap())
        .build()
        .unwrap();
    use reqwest::Method;
    let agents = format!("{base}/api/v1/agents");
    let config_url = format!("{base}/api/v1/configs/base");
    let restart = format!("{base}/api/v1/agents/{}/restart", uuid::Uuid::now_v7());
    let body = json!({"files": {"c.yaml": "a: 1"}});

    assert_eq!(
        api_call(&client, Method::GET, &agents, None, None).await.0,
        401
    );
    assert_eq!(
        api_call(&client, Method::GET, &agents, Some("nope"), None)
            .await
            .0,
        401
    );
    assert_eq!(
        api_call(&client, Method::GET, &agents, Some("vic-token"), None)
            .await
            .0,
        200
    );
    let (s, b) = api_call(
        &client,
        Method::PUT,
        &config_url,
        Some("vic-token"),
        Some(body.clone()),
    )
    .await;
    assert_eq!(s, 403, "{b}");
    assert!(
        b["error"]
            .as_str()
            .unwrap()
            .contains("needs the admin role"),
        "{b}"
    );
    assert_eq!(
        api_call(&client, Method::POST, &restart, Some("vic-token"), None)
            .await
            .0,
        403
    );
    let (s, _) = api_call(
        &client,
        Method::PUT,
        &config_url,
        Some("otto-token"),
        Some(body.clone()),
    )
    .await;
    assert_eq!(s, 403, "operators do not change configs");
    // An operator may restart: the agent is unknown, so 404 rather than 403.
    assert_eq!(
        api_call(&client, Method::POST, &restart, Some("otto-token"), None)
            .await
            .0,
        404
    );
    let (s, b) = api_call(
        &client,
        Method::PUT,
        &config_url,
        Some("ann-token"),
        Some(body),
    )
    .await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(
        b["created_by"], "ann",
        "the change is attributed to its caller"
    );
    // Health and metrics stay open for probes.
    assert_eq!(
        api_call(&client, Method::GET, &format!("{base}/readyz"), None, None)
            .await
            .0,
        200
    );
    // Plain HTTP on the TLS port gets nowhere.
    assert!(
        reqwest::get(format!("http://127.0.0.1:{port}/healthz"))
            .await
            .is_err()
    );
    srv.stop().await;
}

#[tokio::test]
async fn rotated_server_certificates_are_served_without_dropping_live_agents() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    let mut cfg = with_tls(config(dir.path()), pki.tls_files(false));
    cfg.limits.max_connection_age = None;
    let srv = start(cfg).await;
    let u = urls(&srv);
    let mut live_agent = SimAgent::new("otelcol", &[]);
    let mut live = WsClient::connect_with(&u.ws, &pki.client(None))
        .await
        .unwrap();
    live.request(&live_agent.full_report()).await.unwrap();

    // A new CA's server certificate replaces the old files.
    let next_dir = tempfile::tempdir().unwrap();
    let next = Pki::new(next_dir.path());
    for f in ["server.pem", "server-key.pem"] {
        std::fs::copy(next.path(f), pki.path(f)).unwrap();
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let mut agent = SimAgent::new("otelcol", &[]);
    while ws_served(&u.ws, &next.client(None), &mut agent)
        .await
        .is_err()
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the new certificate was never served"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        ws_served(&u.ws, &pki.client(None), &mut agent)
            .await
            .is_err()
    );
    // The live connection was not dropped.
    answered_ok(&mut live, &live_agent.heartbeat()).await;
    srv.stop().await;
}

#[tokio::test]
async fn connections_are_closed_at_their_maximum_age() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.limits.max_connection_age = Some(Duration::from_millis(800));
    let srv = start(cfg).await;
    let mut agent = SimAgent::new("otelcol", &[]);
    let mut ws = WsClient::connect(&srv.ws_url).await.unwrap();
    ws.request(&agent.full_report()).await.unwrap();
    let started = std::time::Instant::now();
    match ws.next_event(T).await.unwrap() {
        WsEvent::Closed(Some(f)) => {
            assert_eq!(u16::from(f.code), 1001);
            assert!(f.reason.contains("age"), "{f:?}");
        }
        other => panic!("expected a close, got {other:?}"),
    }
    assert!(started.elapsed() < Duration::from_secs(2));
    // The agent reconnects and is served as before.
    let mut ws = WsClient::connect(&srv.ws_url).await.unwrap();
    answered_ok(&mut ws, &agent.heartbeat()).await;
    srv.stop().await;
}
