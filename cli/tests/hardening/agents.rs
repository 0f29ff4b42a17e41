//! What agents' identities and restarts could get wrong: refused CSRs, certificates that name
//! their agent, agents restarted under the same uid.

use super::*;

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
            json!({
                "files": {"collector.yaml": "receivers: {otlp: {}}\nexporters: {debug: {}}\nservice: {pipelines: {traces: {receivers: [otlp], exporters: [debug]}}}\n"},
                "settings": {"own_metrics": {"destination_endpoint": "https://otlp.example:4318"}},
            }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let mut agent = SimAgent::new("otelcol", &[]);
    // It takes connection settings (so no heartbeat-only offer) and reports its own metrics.
    agent.capabilities |= AgentCapabilities::AcceptsOpAmpConnectionSettings as u64
        | AgentCapabilities::ReportsOwnMetrics as u64;
    let mut ws = WsClient::connect(&srv.ws_url).await.unwrap();
    let with_bad_csr = AgentToServer {
        connection_settings_request: Some(csr_request(b"not a CSR".to_vec())),
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
