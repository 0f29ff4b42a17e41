//! Mutual TLS in the clustered mode: an agent's certificate binding and a certificate rotation
//! hold across gateways and coordinators, because both live in the agent's record in Redis.

mod cluster_support;

use cluster_support::Cluster;
use flotilla_common::pki::{Ca, Issued};
use flotilla_loadtest::client::{ConnectOptions, WsClient};
use flotilla_loadtest::sim::SimAgent;
use flotilla_proto::opamp::AgentCapabilities;
use std::time::Duration;
use uuid::Uuid;

const YEAR: Duration = Duration::from_secs(365 * 86_400);

fn opts(ca: &Ca, cert: &str, key: &str) -> ConnectOptions {
    ConnectOptions::tls(
        ca.cert_pem().as_bytes(),
        Some((cert.as_bytes(), key.as_bytes())),
    )
    .unwrap()
}

fn opts_of(ca: &Ca, issued: &Issued) -> ConnectOptions {
    opts(ca, &issued.cert_pem, issued.key_pem.as_deref().unwrap())
}

/// Connects to `url` and sends a full report as `agent`: the connection if it was accepted.
async fn served(url: &str, o: &ConnectOptions, agent: &mut SimAgent) -> Option<WsClient> {
    let mut ws = WsClient::connect_with(url, o).await.ok()?;
    let r = ws.request(&agent.full_report()).await.ok()?;
    r.error_response.is_none().then_some(ws)
}

#[tokio::test]
async fn certificate_binding_and_rotation_hold_across_gateways_and_coordinators() {
    let pki = tempfile::tempdir().unwrap();
    let ca = Ca::generate("cluster test CA").unwrap();
    let server = ca.issue_server(&["localhost"], YEAR).unwrap();
    let write = |name: &str, text: &str| {
        let p = pki.path().join(name);
        std::fs::write(&p, text).unwrap();
        p.to_str().unwrap().to_owned()
    };
    let (ca_pem, ca_key) = (
        write("ca.pem", ca.cert_pem()),
        write("ca-key.pem", ca.key_pem()),
    );
    let (srv_pem, srv_key) = (
        write("server.pem", &server.cert_pem),
        write("server-key.pem", server.key_pem.as_deref().unwrap()),
    );
    let flags = [
        "--tls-cert",
        &srv_pem,
        "--tls-key",
        &srv_key,
        "--client-ca",
        &ca_pem,
        "--signing-ca-cert",
        &ca_pem,
        "--signing-ca-key",
        &ca_key,
    ];
    let c = Cluster::start(2, 2, &flags).await;
    let urls: Vec<String> = c
        .ws_urls()
        .iter()
        .map(|u| u.replace("ws://127.0.0.1", "wss://localhost"))
        .collect();

    let uid = Uuid::now_v7();
    let boot = ca.issue_client(uid, YEAR).unwrap();
    let mut agent = SimAgent::new("otelcol", &[]);
    agent.uid = uid;
    agent.capabilities |= AgentCapabilities::AcceptsOpAmpConnectionSettings as u64;
    let mut ws = served(&urls[0], &opts_of(&ca, &boot), &mut agent)
        .await
        .expect("the agent is served through gateway 1");

    // Another fleet member's certificate cannot speak for it through the other gateway.
    let other = ca.issue_client(Uuid::now_v7(), YEAR).unwrap();
    let mut impostor = agent.clone();
    assert!(
        served(&urls[1], &opts_of(&ca, &other), &mut impostor)
            .await
            .is_none()
    );

    // Rotation asked of both coordinators' API (one of them is not the owner).
    let client = reqwest::Client::new();
    let path = format!("/api/v1/agents/{uid}/certificate");
    let resp = client
        .post(format!("{}{path}", c.coordinators[1].api))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["delivered"], true, "{body}");
    let offer = ws.recv(Duration::from_secs(5)).await.unwrap();
    let cert = offer
        .connection_settings
        .unwrap()
        .opamp
        .unwrap()
        .certificate
        .unwrap();
    let (new_cert, new_key) = (
        String::from_utf8(cert.cert).unwrap(),
        String::from_utf8(cert.private_key).unwrap(),
    );
    drop(ws);

    // The agent comes back through the other gateway on the new certificate; the old one is
    // refused from then on, through either gateway.
    let new = opts(&ca, &new_cert, &new_key);
    let _live = served(&urls[1], &new, &mut agent)
        .await
        .expect("the new certificate is accepted through gateway 2");
    for url in &urls {
        assert!(
            served(url, &opts_of(&ca, &boot), &mut agent)
                .await
                .is_none(),
            "the retired certificate still works through {url}"
        );
    }
    let (_, view) = c.get(c.api(), &format!("/api/v1/agents/{uid}")).await;
    assert_eq!(view["client_certificate"]["sha256"], body["sha256"]);
    assert_eq!(view["gateway"], "g2");
}
