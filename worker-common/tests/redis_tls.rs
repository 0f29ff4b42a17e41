//! RedisStore against a real `redis-server` that speaks only TLS and verifies client
//! certificates, with a password: what connects, and what each refusal says (never the password).

use flotilla_common::config::RedisTls;
use flotilla_common::pki::Ca;
use flotilla_common::store::{RedisStore, Store};
use flotilla_testkit::{RedisServer, free_port};
use std::time::Duration;

#[tokio::test]
async fn tls_with_client_certificates_and_a_password() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::generate("redis test CA").unwrap();
    let year = Duration::from_secs(365 * 86_400);
    let server = ca.issue_server(&["127.0.0.1", "localhost"], year).unwrap();
    let client = ca.issue_shared_client("flotilla", year).unwrap();
    let write = |name: &str, pem: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, pem).unwrap();
        p
    };
    let ca_pem = write("ca.pem", ca.cert_pem());
    let server_pem = write("server.pem", &server.cert_pem);
    let server_key = write("server-key.pem", server.key_pem.as_deref().unwrap());
    let client_pem = write("client.pem", &client.cert_pem);
    let client_key = write("client-key.pem", client.key_pem.as_deref().unwrap());
    let port = free_port();
    let s = |p: &std::path::Path| p.display().to_string();
    let _redis = RedisServer::start_with(
        dir.path(),
        &[
            "--port".into(),
            "0".into(),
            "--tls-port".into(),
            port.to_string(),
            "--tls-cert-file".into(),
            s(&server_pem),
            "--tls-key-file".into(),
            s(&server_key),
            "--tls-ca-cert-file".into(),
            s(&ca_pem),
            "--tls-auth-clients".into(),
            "yes".into(),
            "--requirepass".into(),
            "s3cret".into(),
        ],
    );
    let url = format!("rediss://:s3cret@127.0.0.1:{port}");
    let tls = RedisTls {
        ca: Some(ca_pem.clone()),
        client: Some((client_pem, client_key)),
    };
    let store = RedisStore::connect(&url, "t", &tls)
        .await
        .expect("TLS, a client certificate and the password");
    assert!(store.list_configs().await.unwrap().is_empty(), "it answers");

    let refusals = [
        (
            format!("rediss://:wrong@127.0.0.1:{port}"),
            tls.clone(),
            "Password authentication failed",
        ),
        (
            url.clone(),
            RedisTls {
                client: None,
                ..tls.clone()
            },
            "CertificateRequired",
        ),
        (
            format!("redis://:s3cret@127.0.0.1:{port}"),
            tls.clone(),
            "need a rediss:// URL",
        ),
    ];
    for (url, tls, says) in refusals {
        let err = match RedisStore::connect(&url, "t", &tls).await {
            Ok(_) => panic!("{url} connected"),
            Err(e) => e,
        };
        assert!(err.contains(says), "{err}");
        assert!(
            !err.contains("s3cret") && !err.contains("wrong"),
            "a password in {err}"
        );
    }
}
