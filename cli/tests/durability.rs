//! What the standalone server confirmed survives the process being killed, and a full disk under
//! `--data-dir` is reported, survived and recovered from. The `flotilla` binary runs as a real
//! process; the full disk is a small tmpfs mounted over its data directory (as root, or through
//! passwordless sudo).

mod common;

use common::pki::{Pki, csr_pem, csr_request};
use flotilla_loadtest::client::WsClient;
use flotilla_loadtest::sim::SimAgent;
use flotilla_proto::opamp::{AgentCapabilities, AgentToServer};
use flotilla_testkit::{Proc, free_port, wait_for_port};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_flotilla");

/// A standalone `flotilla serve` process.
struct Standalone {
    proc: Proc,
    api: String,
    opamp_port: u16,
    api_port: u16,
    http: reqwest::Client,
}

impl Standalone {
    /// `flotilla serve` with its data in `data`, on fresh ports, logging to `dir`.
    fn start(dir: &Path, data: &Path, extra: &[&str]) -> Self {
        let (opamp_port, api_port) = (free_port(), free_port());
        let mut args: Vec<String> = [
            "serve",
            "--opamp-listen",
            &format!("127.0.0.1:{opamp_port}"),
            "--api-listen",
            &format!("127.0.0.1:{api_port}"),
            "--data-dir",
            data.to_str().unwrap(),
        ]
        .map(String::from)
        .to_vec();
        args.extend(extra.iter().map(|s| s.to_string()));
        let envs = [("RUST_LOG".to_string(), "info".to_string())];
        let proc = Proc::spawn("flotilla", BIN, &args, &envs, dir.join("flotilla.log"));
        let s = Self {
            proc,
            api: format!("http://127.0.0.1:{api_port}"),
            opamp_port,
            api_port,
            // No pooled connections: the server is killed and restarted under them.
            http: reqwest::Client::builder()
                .pool_max_idle_per_host(0)
                .build()
                .unwrap(),
        };
        s.wait_up();
        s
    }

    fn wait_up(&self) {
        assert!(
            wait_for_port(self.api_port, Duration::from_secs(20))
                && wait_for_port(self.opamp_port, Duration::from_secs(5)),
            "flotilla did not start\n{}",
            self.proc.log_tail(30)
        );
    }

    fn restart(&mut self) {
        self.proc.restart();
        self.wait_up();
    }

    fn ws(&self) -> String {
        format!("ws://127.0.0.1:{}/v1/opamp", self.opamp_port)
    }

    async fn get(&self, path: &str) -> (u16, Value) {
        let r = self
            .http
            .get(format!("{}{path}", self.api))
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
    }

    async fn send(&self, method: reqwest::Method, path: &str, body: Value) -> (u16, Value) {
        let r = self
            .http
            .request(method, format!("{}{path}", self.api))
            .json(&body)
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
    }

    /// Stores a config `name` that sets only the heartbeat interval.
    async fn put_config(&self, name: &str) -> (u16, Value) {
        let body = json!({"settings": {"heartbeat_interval": "30s"}});
        self.send(
            reqwest::Method::PUT,
            &format!("/api/v1/configs/{name}"),
            body,
        )
        .await
    }

    async fn readyz(&self) -> (u16, String) {
        let r = self
            .http
            .get(format!("{}/readyz", self.api))
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    }

    async fn wait<T>(
        &self,
        what: &str,
        timeout: Duration,
        mut probe: impl AsyncFnMut() -> Option<T>,
    ) -> T {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(v) = probe().await {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "{what} did not happen within {timeout:?}\n{}",
                self.proc.log_tail(30)
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

async fn connect(url: &str, agent: &mut SimAgent) -> WsClient {
    let mut ws = WsClient::connect(url).await.unwrap();
    common::answered_ok(&mut ws, &agent.full_report()).await;
    ws
}

/// A custom message the API confirmed as queued, and a record moved to the new uid an agent
/// asked for, are on disk before the confirmation: a kill -9 right after loses neither.
#[tokio::test]
async fn a_queued_custom_message_and_a_moved_record_survive_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut srv = Standalone::start(dir.path(), &data, &[]);
    let mut agent = SimAgent::new("otelcol", &[]);
    agent.custom_capabilities = vec!["io.example.ping".into()];
    let mut ws = connect(&srv.ws(), &mut agent).await;
    let bye = agent.disconnect();
    common::answered_ok(&mut ws, &bye).await;
    let path = format!("/api/v1/agents/{}/custom-messages", agent.uid);
    let (status, sent) = srv
        .send(
            reqwest::Method::POST,
            &path,
            json!({"capability": "io.example.ping", "type": "ping", "data": "kept"}),
        )
        .await;
    assert_eq!((status, &sent["queued"]), (202, &json!(true)), "{sent}");
    srv.proc.kill();
    srv.restart();
    let mut ws = WsClient::connect(&srv.ws()).await.unwrap();
    let reply = common::answered_ok(&mut ws, &agent.full_report()).await;
    let got = reply
        .custom_message
        .expect("the queued message, after the kill");
    assert_eq!(got.data, b"kept");

    // It asks for a new uid: its record, labels and all, is under the new uid after a kill -9.
    let labels = format!("/api/v1/agents/{}/labels", agent.uid);
    let (status, v) = srv
        .send(
            reqwest::Method::POST,
            &labels,
            json!({"set": {"ring": "canary"}}),
        )
        .await;
    assert_eq!(status, 200, "{v}");
    let mut ask = agent.heartbeat();
    ask.flags = flotilla_proto::opamp::AgentToServerFlags::RequestInstanceUid as u64;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let reply = common::answered_ok(&mut ws, &ask).await;
    let new = reply
        .agent_identification
        .expect("a new uid")
        .new_instance_uid;
    let new = uuid::Uuid::from_slice(&new).unwrap();
    srv.proc.kill();
    srv.restart();
    let (status, moved) = srv.get(&format!("/api/v1/agents/{new}")).await;
    assert_eq!(status, 200, "{moved}");
    assert_eq!(moved["labels"]["ring"], "canary", "{moved}");
}

/// Item 8: labels the API confirmed, and a certificate signed for an agent's CSR, are on disk
/// before the reply: a kill -9 right after it loses neither.
#[tokio::test]
async fn confirmed_labels_and_signed_certificates_survive_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    let data = dir.path().join("data");
    let signing = [
        "--signing-ca-cert",
        pki.path("ca.pem").to_str().unwrap(),
        "--signing-ca-key",
        pki.path("ca-key.pem").to_str().unwrap(),
    ]
    .map(str::to_owned);
    let flags: Vec<&str> = signing.iter().map(String::as_str).collect();
    let mut srv = Standalone::start(dir.path(), &data, &flags);
    let mut agent = SimAgent::new("otelcol", &[]);
    agent.capabilities |= AgentCapabilities::AcceptsOpAmpConnectionSettings as u64;
    // The agent's record itself is written behind: give the flusher its second.
    drop(connect(&srv.ws(), &mut agent).await);
    tokio::time::sleep(Duration::from_millis(1500)).await;

    let labels = format!("/api/v1/agents/{}/labels", agent.uid);
    for round in 0..3 {
        let (status, body) = srv
            .send(
                reqwest::Method::POST,
                &labels,
                json!({"set": {format!("k{round}"): "v"}}),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        srv.proc.kill();
        srv.restart();
        let (_, body) = srv.get(&labels).await;
        for k in 0..=round {
            assert_eq!(
                body["labels"][format!("k{k}")],
                "v",
                "round {round}: {body}"
            );
        }
    }

    // A CSR: the certificate the agent is told about is on record after a kill -9.
    let csr = csr_pem(&rcgen::KeyPair::generate().unwrap(), agent.uid);
    let mut ws = connect(&srv.ws(), &mut agent).await;
    let reply = ws
        .request(&AgentToServer {
            connection_settings_request: Some(csr_request(csr)),
            ..agent.heartbeat()
        })
        .await
        .unwrap();
    let cert = reply
        .connection_settings
        .and_then(|c| c.opamp?.certificate)
        .expect("a signed certificate");
    let der = flotilla_common::pki::pem_certificate(&cert.cert).unwrap();
    let sha = hex::encode(flotilla_common::pki::cert_sha256(&der));
    srv.proc.kill();
    srv.restart();
    let (_, view) = srv.get(&format!("/api/v1/agents/{}", agent.uid)).await;
    assert_eq!(
        view["client_certificate"]["issued_sha256"],
        sha.as_str(),
        "{view}"
    );
    let (_, audit) = srv
        .get(&format!("/api/v1/audit?object=agent/{}", agent.uid))
        .await;
    let actions: Vec<&str> = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["action"].as_str())
        .collect();
    assert_eq!(
        actions,
        ["certificate.sign", "labels.set", "labels.set", "labels.set"]
    );
}

/// A small tmpfs mounted over a directory for the test's length.
struct SmallDisk(PathBuf);

impl SmallDisk {
    /// Mounts `size` of tmpfs on `dir`: as root, else through `sudo -n`.
    fn mount(dir: &Path, size: &str) -> Self {
        let ok = privileged(&[
            "mount",
            "-t",
            "tmpfs",
            "-o",
            &format!("size={size}"),
            "tmpfs",
            dir.to_str().unwrap(),
        ]);
        assert!(
            ok,
            "this test mounts a tmpfs to fill a disk for real: run it as root or with passwordless sudo"
        );
        Self(dir.to_owned())
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        privileged(&["umount", "-l", self.0.to_str().unwrap()]);
    }
}

fn privileged(cmd: &[&str]) -> bool {
    let root = std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"));
    let mut c = if root {
        Command::new(cmd[0])
    } else {
        let mut c = Command::new("sudo");
        c.args(["-n", cmd[0]]);
        c
    };
    c.args(&cmd[1..]).status().is_ok_and(|s| s.success())
}

/// Fills the file system of `dir` with a filler file; returns its path.
fn fill(dir: &Path) -> PathBuf {
    use std::io::Write;
    let filler = dir.join("filler");
    let mut f = std::fs::File::create(&filler).unwrap();
    let block = vec![0u8; 64 << 10];
    while f.write_all(&block).is_ok() {}
    // The last partial block, byte by byte.
    while f.write_all(&[0]).is_ok() {}
    let _ = f.flush();
    filler
}

/// Item 9: with the data directory full, writes fail with a clear error, /readyz and a metric say
/// so, and unwritten agent records stay queued; once space returns, everything is written and
/// nothing is lost across a restart.
#[tokio::test]
async fn a_full_data_directory_is_reported_and_recovered_from() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let _disk = SmallDisk::mount(&data, "4m");
    let mut srv = Standalone::start(dir.path(), &data, &[]);
    let (status, _) = srv.put_config("before").await;
    assert_eq!(status, 200);

    let filler = fill(&data);
    // An agent arrives while nothing can be written: it is served from memory.
    let mut agent = SimAgent::new("otelcol", &[]);
    let ws = connect(&srv.ws(), &mut agent).await;
    let (status, body) = srv.put_config("during").await;
    assert_eq!(status, 503, "{body}");
    let msg = body["error"].as_str().unwrap_or_default();
    assert!(msg.contains("space"), "{msg}");
    let (ready, why) = srv
        .wait("readiness to fail", Duration::from_secs(10), async || {
            let r = srv.readyz().await;
            (r.0 == 503).then_some(r)
        })
        .await;
    assert_eq!(ready, 503);
    assert!(why.contains("cannot write to"), "{why}");
    let labels = format!("/api/v1/agents/{}/labels", agent.uid);
    let (status, _) = srv
        .send(
            reqwest::Method::POST,
            &labels,
            json!({"set": {"team": "a"}}),
        )
        .await;
    assert_eq!(
        status, 503,
        "a change that cannot be made durable is refused"
    );
    let metric = async |name: &str| -> f64 {
        let text = srv
            .http
            .get(format!("{}/metrics", srv.api))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        flotilla_testkit::metric_sum(&text, name)
    };
    assert!(metric("flotilla_store_write_errors_total").await >= 1.0);
    srv.wait(
        "the agent to wait to be written",
        Duration::from_secs(5),
        async || (metric("flotilla_store_unwritten_agents").await == 1.0).then_some(()),
    )
    .await;

    // Space returns: the store recovers by itself, without a restart.
    std::fs::remove_file(&filler).unwrap();
    srv.wait("readiness to return", Duration::from_secs(10), async || {
        (srv.readyz().await.0 == 200).then_some(())
    })
    .await;
    let (status, body) = srv.put_config("after").await;
    assert_eq!(status, 200, "{body}");
    let (status, _) = srv
        .send(
            reqwest::Method::POST,
            &labels,
            json!({"set": {"team": "a"}}),
        )
        .await;
    assert_eq!(status, 200);
    drop(ws);

    // A graceful restart: the agent that arrived while the disk was full, its labels and the
    // configs are all there.
    assert_eq!(srv.proc.terminate(Duration::from_secs(20)), Some(0));
    srv.restart();
    let (status, view) = srv.get(&format!("/api/v1/agents/{}", agent.uid)).await;
    assert_eq!(status, 200, "{view}");
    assert_eq!(view["labels"]["team"], "a");
    let (_, configs) = srv.get("/api/v1/configs").await;
    let names: Vec<&str> = configs["configs"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|c| c["name"].as_str())
        .collect();
    assert_eq!(names, ["after", "before"]);
}
