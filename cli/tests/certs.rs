//! `flotilla certs` and `flotilla serve` with mutual TLS as a user runs them: the development PKI
//! from `certs init` is accepted as written, `certs revoke` takes effect on a running server, and
//! `ctl rotate-certificate` (with an API token) reaches a connected agent.

mod common;

use flotilla_loadtest::client::{ConnectOptions, WsClient};
use flotilla_loadtest::sim::SimAgent;
use flotilla_proto::opamp::AgentCapabilities;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_flotilla");

fn flotilla(args: &[&str]) -> Output {
    Command::new(BIN).args(args).output().unwrap()
}

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Client options for the `n`th client certificate of `pki`, and the uid it names.
fn client(pki: &Path, n: usize) -> (ConnectOptions, uuid::Uuid) {
    let read = |f: &str| std::fs::read(pki.join(f)).unwrap();
    let index = String::from_utf8(read("clients.txt")).unwrap();
    let uid = index
        .lines()
        .find_map(|l| l.strip_prefix(&format!("client-{n}.pem ")))
        .expect("clients.txt lists the client")
        .parse()
        .unwrap();
    let (cert, key) = (
        read(&format!("client-{n}.pem")),
        read(&format!("client-{n}-key.pem")),
    );
    let opts = ConnectOptions::tls(&read("ca.pem"), Some((&cert, &key))).unwrap();
    (opts, uid)
}

async fn served(url: &str, opts: &ConnectOptions, uid: uuid::Uuid) -> Option<WsClient> {
    let mut agent = SimAgent::new("otelcol", &[]);
    agent.uid = uid;
    agent.capabilities |= AgentCapabilities::AcceptsOpAmpConnectionSettings as u64;
    let mut ws = WsClient::connect_with(url, opts).await.ok()?;
    let r = ws.request(&agent.full_report()).await.ok()?;
    r.error_response.is_none().then_some(ws)
}

#[tokio::test]
async fn a_certs_init_pki_runs_mutual_tls_and_revocations_apply_live() {
    let dir = tempfile::tempdir().unwrap();
    let pki = dir.path().join("pki");
    let pki_s = pki.to_str().unwrap();
    let out = flotilla(&["certs", "init", "--out", pki_s, "--clients", "2"]);
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("client-2-key.pem") && text.contains("--client-ca"),
        "{text}"
    );
    let again = flotilla(&["certs", "init", "--out", pki_s]);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("--force"));

    let out = flotilla(&[
        "certs",
        "revoke",
        "--dir",
        pki_s,
        pki.join("client-2.pem").to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{out:?}");
    let tokens = common::api_tokens_file(dir.path(), &[("ann", "admin", "t-ann")]);

    let port = |l: std::net::TcpListener| l.local_addr().unwrap().port();
    let (opamp, api) = (
        port(std::net::TcpListener::bind("127.0.0.1:0").unwrap()),
        port(std::net::TcpListener::bind("127.0.0.1:0").unwrap()),
    );
    let p = |f: &str| pki.join(f).to_str().unwrap().to_owned();
    let _srv = Server(
        Command::new(BIN)
            .args(["serve", "--opamp-listen", &format!("127.0.0.1:{opamp}")])
            .args(["--api-listen", &format!("127.0.0.1:{api}")])
            .args([
                "--tls-cert",
                &p("server.pem"),
                "--tls-key",
                &p("server-key.pem"),
            ])
            .args(["--client-ca", &p("ca.pem"), "--crl", &p("crl.pem")])
            .args([
                "--signing-ca-cert",
                &p("ca.pem"),
                "--signing-ca-key",
                &p("ca-key.pem"),
            ])
            .args(["--api-tokens", tokens.to_str().unwrap()])
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let url = format!("wss://localhost:{opamp}/v1/opamp");
    let (one, uid1) = client(&pki, 1);
    let (two, uid2) = client(&pki, 2);
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut ws = loop {
        if let Some(ws) = served(&url, &one, uid1).await {
            break ws;
        }
        assert!(
            Instant::now() < deadline,
            "the server never accepted client-1"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        served(&url, &two, uid2).await.is_none(),
        "a revoked certificate was accepted"
    );
    // The shared certificate for the load tester names no agent: any agent may use it.
    let read = |f: &str| std::fs::read(pki.join(f)).unwrap();
    let swarm = ConnectOptions::tls(
        &read("ca.pem"),
        Some((&read("swarm.pem"), &read("swarm-key.pem"))),
    )
    .unwrap();
    assert!(served(&url, &swarm, uuid::Uuid::now_v7()).await.is_some());

    // The admin rotates client-1's certificate through the CLI; the live agent gets the offer.
    let api_url = format!("http://127.0.0.1:{api}");
    let denied = flotilla(&[
        "ctl",
        "--api",
        &api_url,
        "rotate-certificate",
        &uid1.to_string(),
    ]);
    assert!(!denied.status.success());
    assert!(
        String::from_utf8_lossy(&denied.stderr).contains("401"),
        "{denied:?}"
    );
    let out = flotilla(&[
        "ctl",
        "--api",
        &api_url,
        "--token",
        "t-ann",
        "rotate-certificate",
        &uid1.to_string(),
    ]);
    assert!(out.status.success(), "{out:?}");
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.lines()
            .any(|l| l.starts_with("delivered:") && l.ends_with("true")),
        "{said}"
    );
    let offer = ws.recv(Duration::from_secs(5)).await.unwrap();
    let cert = offer
        .connection_settings
        .unwrap()
        .opamp
        .unwrap()
        .certificate
        .unwrap();
    assert!(!cert.private_key.is_empty() && !cert.ca_cert.is_empty());

    // Revoking client-1 as well takes effect without a restart.
    let out = flotilla(&["certs", "revoke", "--dir", pki_s, &p("client-1.pem")]);
    assert!(out.status.success(), "{out:?}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while served(&url, &one, uid1).await.is_some() {
        assert!(Instant::now() < deadline, "the new CRL was never applied");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
