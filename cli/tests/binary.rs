//! The `flotilla` binary itself: `serve` as a real process (clear errors on bad config, drain on
//! SIGTERM, configs kept across a restart) and `ctl` against it.

use flotilla_testkit::free_port;
use serde_json::Value;
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_flotilla");

fn serve(data: &Path, opamp: u16, api: u16) -> Child {
    Command::new(BIN)
        .args([
            "serve",
            "--opamp-listen",
            &format!("127.0.0.1:{opamp}"),
            "--api-listen",
            &format!("127.0.0.1:{api}"),
        ])
        .arg("--data-dir")
        .arg(data)
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

fn wait_healthy(api: u16) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while probe::healthz(api).is_err() {
        assert!(Instant::now() < deadline, "server did not come up");
        std::thread::sleep(Duration::from_millis(50));
    }
}

mod probe {
    // A blocking probe with no HTTP client: a raw HTTP/1.0 GET.
    use std::io::{Read, Write};
    pub fn healthz(port: u16) -> std::io::Result<String> {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port))?;
        s.write_all(b"GET /healthz HTTP/1.0\r\n\r\n")?;
        let mut out = String::new();
        s.read_to_string(&mut out)?;
        Ok(out)
    }
}

fn ctl(api: u16, args: &[&str]) -> Output {
    Command::new(BIN)
        .args(["ctl", "--api", &format!("http://127.0.0.1:{api}")])
        .args(args)
        .output()
        .unwrap()
}

fn stop(mut child: Child) -> std::process::ExitStatus {
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    child.wait().unwrap()
}

#[test]
fn bad_config_exits_non_zero_with_a_clear_message() {
    let out = Command::new(BIN)
        .args(["serve", "--region", "eu.1"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--region") && err.contains("letters, digits"),
        "{err}"
    );

    let out = Command::new(BIN)
        .args(["serve", "--config", "/nonexistent/flotilla.toml"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.matches("os error 2").count(), 1, "said once: {err}");

    // A bad value from the environment names the variable, not a flag nobody typed.
    let out = Command::new(BIN)
        .args(["serve"])
        .env("FLOTILLA_MAX_CONNECTIONS", "abc")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("in the environment variable FLOTILLA_MAX_CONNECTIONS"),
        "{err}"
    );

    let out = Command::new(BIN)
        .args(["serve", "--log-level", "info,,=x"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--log-level"));

    let out = Command::new(BIN)
        .args(["serve", "--roles", "gateway"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--roles gateway needs --nats-url"));

    // A NATS URL nobody answers at: refused at start, not retried forever.
    let out = Command::new(BIN)
        .args(["serve", "--roles", "gateway", "--nats-url"])
        .arg(format!("nats://127.0.0.1:{}", free_port()))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot connect to NATS"), "{err}");

    // Held from bind to the end, so no other test can take it between.
    let busy = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = busy.local_addr().unwrap().port();
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(BIN)
        .args([
            "serve",
            "--opamp-listen",
            &format!("127.0.0.1:{port}"),
            "--api-listen",
            "127.0.0.1:0",
        ])
        .arg("--data-dir")
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("cannot listen on"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn serve_drains_on_sigterm_keeps_configs_across_restarts_and_ctl_drives_it() {
    let dir = tempfile::tempdir().unwrap();
    let (opamp, api) = (free_port(), free_port());
    let server = serve(dir.path(), opamp, api);
    wait_healthy(api);

    let file = dir.path().join("collector.yaml");
    std::fs::write(&file, "receivers: {otlp: {}}\n").unwrap();
    let out = ctl(
        api,
        &[
            "-o",
            "json",
            "configs",
            "put",
            "base",
            "-f",
            file.to_str().unwrap(),
            "--selector",
            "env=prod",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stored: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(stored["version"], 1);
    assert_eq!(stored["files"]["collector.yaml"], "receivers: {otlp: {}}\n");

    let out = ctl(api, &["agents", "get", "not-a-uid"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("400 Bad Request: \"not-a-uid\" is not an instance uid")
    );
    let out = ctl(api, &["agents", "list"]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("0 of 0 agents"));

    assert!(stop(server).success(), "SIGTERM drains and exits 0");
    let server = serve(dir.path(), opamp, api);
    wait_healthy(api);
    let out = ctl(api, &["configs", "get", "base", "-o", "json"]);
    assert!(out.status.success());
    let kept: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(kept["hash"], stored["hash"]);
    assert_eq!(kept["selector"]["env"], "prod");
    assert!(stop(server).success());

    let out = ctl(api, &["health"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot reach the Flotilla API"));
}

#[test]
fn logs_are_json_lines_at_the_level_asked() {
    let dir = tempfile::tempdir().unwrap();
    let (opamp, api) = (free_port(), free_port());
    let child = Command::new(BIN)
        .args(["serve", "--opamp-listen", &format!("127.0.0.1:{opamp}")])
        .args(["--api-listen", &format!("127.0.0.1:{api}")])
        .args(["--log-format", "json", "--log-level", "debug"])
        .arg("--data-dir")
        .arg(dir.path())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_healthy(api);
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines.len() > 3, "{text}");
    let mut levels = std::collections::BTreeSet::new();
    for line in &lines {
        let v: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert!(
            v["timestamp"].is_string() && v["fields"].is_object(),
            "{line}"
        );
        levels.insert(v["level"].as_str().unwrap_or_default().to_owned());
    }
    assert!(
        levels.contains("DEBUG"),
        "debug lines at --log-level debug: {levels:?}"
    );
    assert!(lines.iter().any(|l| l.contains("\"starting\"")), "{text}");
}
