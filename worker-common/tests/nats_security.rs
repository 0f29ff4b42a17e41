//! NatsBus against a real `nats-server` that requires TLS with client certificates and a user
//! and password (from the URL), or a token: what connects, and what each refusal says.

use flotilla_common::bus::{Bus, BusMessage, NatsBus};
use flotilla_common::config::NatsSecurity;
use flotilla_common::pki::Ca;
use flotilla_testkit::NatsServer;
use std::path::{Path, PathBuf};
use std::time::Duration;

struct Pki {
    ca: PathBuf,
    client: (PathBuf, PathBuf),
}

fn pki(dir: &Path) -> Pki {
    let ca = Ca::generate("nats test CA").unwrap();
    let year = Duration::from_secs(365 * 86_400);
    let server = ca.issue_server(&["127.0.0.1", "localhost"], year).unwrap();
    let client = ca.issue_shared_client("flotilla", year).unwrap();
    let write = |name: &str, pem: &str| {
        let p = dir.join(name);
        std::fs::write(&p, pem).unwrap();
        p
    };
    write("server.pem", &server.cert_pem);
    write("server-key.pem", server.key_pem.as_deref().unwrap());
    Pki {
        ca: write("ca.pem", ca.cert_pem()),
        client: (
            write("client.pem", &client.cert_pem),
            write("client-key.pem", client.key_pem.as_deref().unwrap()),
        ),
    }
}

async fn round_trip(bus: &NatsBus) {
    let mut sub = bus.subscribe("sec.*").await.unwrap();
    bus.publish(BusMessage::new("sec.1", "hello"))
        .await
        .unwrap();
    let got = tokio::time::timeout(Duration::from_secs(2), sub.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got.msg.payload.as_ref(), b"hello");
}

#[tokio::test]
async fn tls_client_certificates_and_url_credentials() {
    let dir = tempfile::tempdir().unwrap();
    let p = pki(dir.path());
    let d = dir.path().display();
    let nats = NatsServer::start_with_config(
        dir.path(),
        &format!(
            "tls {{ cert_file: \"{d}/server.pem\", key_file: \"{d}/server-key.pem\", \
             ca_file: \"{d}/ca.pem\", verify: true }}\n\
             authorization {{ user: flotilla, password: \"s3cret\" }}\n"
        ),
    );
    let port = nats.port;
    let secure = NatsSecurity {
        creds: None,
        ca: Some(p.ca.clone()),
        client: Some(p.client.clone()),
    };

    let bus = NatsBus::connect(
        &format!("tls://flotilla:s3cret@127.0.0.1:{port}"),
        "t",
        &secure,
    )
    .await
    .expect("TLS, a client certificate and the URL's user and password");
    round_trip(&bus).await;

    let refusals = [
        (
            format!("tls://flotilla:wrong@127.0.0.1:{port}"),
            secure.clone(),
            "authorization",
        ),
        (
            format!("tls://127.0.0.1:{port}"),
            secure.clone(),
            "authorization",
        ),
        (
            format!("tls://flotilla:s3cret@127.0.0.1:{port}"),
            NatsSecurity {
                client: None,
                ..secure.clone()
            },
            "BadCertificate",
        ),
        (
            format!("nats://flotilla:s3cret@127.0.0.1:{port}"),
            NatsSecurity::default(),
            "invalid peer certificate: UnknownIssuer",
        ),
    ];
    for (url, security, says) in refusals {
        let err = NatsBus::connect(&url, "t", &security).await.unwrap_err();
        assert!(
            err.to_lowercase().contains(&says.to_lowercase()),
            "{url}: {err}"
        );
        assert!(
            !err.contains("s3cret") && !err.contains("wrong"),
            "a password in {err}"
        );
    }
}

#[tokio::test]
async fn a_token_in_the_url_and_a_bad_credentials_file() {
    let dir = tempfile::tempdir().unwrap();
    let nats =
        NatsServer::start_with_config(dir.path(), "authorization { token: \"t0ken-xyz\" }\n");
    let port = nats.port;
    let none = NatsSecurity::default();
    let bus = NatsBus::connect(&format!("nats://t0ken-xyz@127.0.0.1:{port}"), "t", &none)
        .await
        .expect("the token from the URL");
    round_trip(&bus).await;
    let err = NatsBus::connect(&nats.url(), "t", &none).await.unwrap_err();
    assert!(err.to_lowercase().contains("authorization"), "{err}");

    let creds = dir.path().join("bad.creds");
    std::fs::write(&creds, "not a creds file").unwrap();
    let err = NatsBus::connect(
        &nats.url(),
        "t",
        &NatsSecurity {
            creds: Some(creds),
            ..Default::default()
        },
    )
    .await
    .unwrap_err();
    assert!(err.contains("--nats-creds"), "{err}");
}
