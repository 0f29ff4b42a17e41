//! The flotilla-swarm and flotilla-echo binaries: a short steady run of a few hundred agents over
//! several source addresses against the echo baseline, its report files, and clear refusals of
//! bad flags.

use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Output, Stdio};

struct Echo {
    child: Child,
    url: String,
}

impl Drop for Echo {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// flotilla-echo on a free port; its first line says where.
fn echo() -> Echo {
    let mut child = Command::new(env!("CARGO_BIN_EXE_flotilla-echo"))
        .args(["--listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line.trim().rsplit("://").next().unwrap().to_owned();
    Echo {
        child,
        url: format!("ws://{addr}/v1/opamp"),
    }
}

fn swarm(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_flotilla-swarm"))
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn a_short_swarm_against_the_echo_baseline() {
    let echo = echo();
    let out = tempfile::tempdir().unwrap();
    let dir = out.path().to_str().unwrap();
    let run = swarm(&[
        "--url",
        &echo.url,
        "--agents",
        "300",
        "--connect-rate",
        "0",
        "--duration",
        "5s",
        "--heartbeat",
        "1s",
        "--source-ips",
        "4",
        "--out",
        dir,
    ]);
    let stdout = String::from_utf8_lossy(&run.stdout);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("steady with 300 ws agents"), "{stdout}");
    assert!(stdout.contains("errors: 0"), "{stdout}");
    // The progress line, once a second.
    assert!(stderr.contains("connected    300/300"), "{stderr}");

    let report: Value =
        serde_json::from_str(&std::fs::read_to_string(out.path().join("report.json")).unwrap())
            .unwrap();
    assert_eq!(report["agents"], 300);
    assert_eq!(report["errors_total"], 0);
    assert!(report["connect"]["all_connected_s"].as_f64().unwrap() < 3.0);
    assert_eq!(report["connect"]["connections"], 300);
    // A full report each, then a heartbeat a second.
    assert!(report["messages"].as_u64().unwrap() >= 600, "{report}");
    assert!(report["latency"]["steady"]["p99_ms"].as_f64().unwrap() > 0.0);
    assert!(report["timeline"].as_array().unwrap().len() >= 2);
    let svg = std::fs::read_to_string(out.path().join("timeline.svg")).unwrap();
    assert!(svg.starts_with("<svg") && svg.contains("reply latency"));
}

#[test]
fn bad_flags_are_refused_with_the_reason() {
    let cases: &[(&[&str], &str)] = &[
        (&["--scenario", "rollout", "--duration", "1s"], "--api"),
        (
            &["--scenario", "gateway-loss", "--duration", "1s"],
            "--kill-pid",
        ),
        (&["--scenario", "churn", "--duration", "1s"], "--churn"),
        (&["--env", "prod=many"], "whole number"),
        (&["--apply-failure-rate", "1.5"], "between 0 and 1"),
        (&["--cert", "c.pem", "--key", "k.pem"], "--cert needs --ca"),
        (
            &["--url", "http://127.0.0.1:1/v1/opamp", "--transport", "ws"],
            "does not fit",
        ),
        (&["--url", "ftp://127.0.0.1:1/v1/opamp"], "give ws://"),
        (&["--own-metrics", "0s"], "--own-metrics must be above 0"),
    ];
    for (args, reason) in cases {
        let run = swarm(args);
        let stderr = String::from_utf8_lossy(&run.stderr);
        assert!(!run.status.success(), "{args:?} was accepted");
        assert!(stderr.contains(reason), "{args:?}: {stderr}");
    }
}

#[test]
fn connect_failures_say_why() {
    // Nothing listens on this port (bound, then released).
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("ws://127.0.0.1:{port}/v1/opamp");
    let run = swarm(&["--url", &url, "--agents", "3", "--duration", "2s"]);
    let stdout = String::from_utf8_lossy(&run.stdout);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(
        stdout.contains("connect: "),
        "the reason in the summary: {stdout}"
    );
    assert!(stdout.to_lowercase().contains("refused"), "{stdout}");
    assert!(
        stderr.contains(": connect: "),
        "said as it happens: {stderr}"
    );
}

#[test]
fn sigterm_ends_the_run_with_its_summary_and_report() {
    let echo = echo();
    let out = tempfile::tempdir().unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_flotilla-swarm"))
        .args(["--url", &echo.url, "--agents", "20", "--duration", "120s"])
        .arg("--out")
        .arg(out.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_secs(2));
    let started = std::time::Instant::now();
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let run = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(run.status.success(), "{stdout}");
    assert!(
        started.elapsed().as_secs() < 20,
        "stopped soon after the signal"
    );
    assert!(stdout.contains("steady with 20 ws agents"), "{stdout}");
    assert!(out.path().join("report.json").exists());
    assert!(String::from_utf8_lossy(&run.stderr).contains("interrupted"));
}
