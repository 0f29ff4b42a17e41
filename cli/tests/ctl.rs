//! `flotilla ctl` as a user types it: arguments checked before any request, paging through every
//! agent, agents' own metrics, and output piped into a reader that goes away.

mod common;

use common::fleet::{Fleet, collectors};
use flotilla_loadtest::client::HttpClient;
use flotilla_loadtest::otlp;
use flotilla_loadtest::sim::SimAgent;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_flotilla");

fn flotilla(args: &[&str]) -> Output {
    Command::new(BIN).args(args).output().unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn arguments_are_checked_before_any_request() {
    // No server runs: each of these must fail on its argument, not on the connection.
    let start = ["rollouts", "start", "base", "--percentages", "100"];
    let cases: &[(&[&str], &[&str], &str)] = &[
        (
            &["--api", "127.0.0.1:4321", "health"],
            &[],
            "give the scheme too",
        ),
        (
            &["--api", "ftp://h:1", "health"],
            &[],
            "not an http:// or https:// URL",
        ),
        (&start, &["--soak", "5"], "not a duration such as 30s"),
        (
            &start,
            &["--on-failure", "retry"],
            "possible values: rollback, pause",
        ),
        (
            &["agents", "list", "--status", "up"],
            &[],
            "possible values: connected, disconnected, silent",
        ),
        (
            &["agents", "metrics", "--top", "0"],
            &[],
            "0 is not in 1..=100",
        ),
        (
            &["agents", "metrics", "--top", "101"],
            &[],
            "101 is not in 1..=100",
        ),
    ];
    for (args, more, reason) in cases {
        let mut all = vec!["ctl"];
        all.extend_from_slice(args);
        all.extend_from_slice(more);
        let o = flotilla(&all);
        assert!(!o.status.success(), "{all:?} was accepted");
        assert!(stderr(&o).contains(reason), "{all:?}: {}", stderr(&o));
    }
}

#[test]
fn a_closed_pipe_ends_output_quietly() {
    // A pipe whose reader is gone before the first write: every write fails with EPIPE.
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let o = Command::new(BIN)
        .args(["completions", "bash"])
        .stdout(writer)
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(!stderr(&o).contains("panicked"), "{}", stderr(&o));

    let o = flotilla(&["completions", "zsh"]);
    assert!(o.status.success());
    assert!(stdout(&o).contains("#compdef flotilla"));
}

/// A server with `n` agents in `env=prod`, and `flotilla ctl` pointed at it.
async fn with_agents(
    n: usize,
) -> (
    tempfile::TempDir,
    common::Server,
    Fleet,
    impl Fn(&[&str]) -> Output,
) {
    let dir = tempfile::tempdir().unwrap();
    let srv = common::start(common::config(dir.path())).await;
    let fleet = Fleet::start(
        &srv.ws_url,
        collectors(n, &[("env", "prod")], |_| false, ""),
    )
    .await;
    let api = srv.api.clone();
    let ctl = move |args: &[&str]| {
        let mut all = vec!["ctl", "--api", api.as_str()];
        all.extend_from_slice(args);
        flotilla(&all)
    };
    (dir, srv, fleet, ctl)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_list_pages_with_a_cursor_or_all_at_once() {
    let (dir, srv, fleet, ctl) = with_agents(5).await;

    let first = ctl(&["agents", "list", "--limit", "2"]);
    assert!(first.status.success(), "{}", stderr(&first));
    let text = stdout(&first);
    assert!(text.contains("2 of 5 agents"), "{text}");
    let cursor = text
        .lines()
        .find_map(|l| l.strip_prefix("next page: --cursor "))
        .and_then(|l| l.split_whitespace().next())
        .unwrap_or_else(|| panic!("no cursor in {text}"))
        .to_owned();
    let rows = |t: &str| -> Vec<String> {
        t.lines()
            .filter(|l| fleet_uid(l).is_some())
            .map(str::to_owned)
            .collect()
    };
    let second = stdout(&ctl(&[
        "agents", "list", "--limit", "2", "--cursor", &cursor,
    ]));
    let (a, b) = (rows(&text), rows(&second));
    assert_eq!((a.len(), b.len()), (2, 2), "{text}\n{second}");
    assert!(
        a.iter().all(|r| !b.contains(r)),
        "the next page holds other agents"
    );

    let every = stdout(&ctl(&["agents", "list", "--limit", "2", "--all"]));
    assert_eq!(rows(&every).len(), 5, "{every}");
    assert_eq!(
        every.matches("INSTANCE UID").count(),
        1,
        "one header: {every}"
    );
    assert!(every.trim_end().ends_with("5 agents"), "{every}");

    let json = stdout(&ctl(&["agents", "list", "--limit", "2", "--all", "--json"]));
    let pages: Vec<serde_json::Value> = json
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(pages.len(), 3, "{json}");
    assert!(pages.iter().all(|p| p["total"] == 5));

    let unmanaged = stdout(&ctl(&["agents", "list", "--config", "unmanaged"]));
    assert!(unmanaged.contains("5 of 5 agents"), "{unmanaged}");
    let failed = stdout(&ctl(&["agents", "list", "--config", "failed"]));
    assert!(failed.contains("0 of 0 agents"), "{failed}");

    // Tables by default, the document as YAML or JSON on request; file bodies only when asked.
    let health = stdout(&ctl(&["health", "-o", "yaml"]));
    assert!(health.contains("total_agents: 5"), "{health}");
    let file = dir.path().join("collector.yaml");
    std::fs::write(&file, "receivers: {otlp: {}}\n# BODY-MARK\n").unwrap();
    let f = file.to_str().unwrap();
    let applied = ctl(&[
        "configs",
        "apply",
        "base",
        "-f",
        f,
        "--selector",
        "env=prod",
    ]);
    let text = stdout(&applied);
    assert!(text.contains("config base version 1"), "{text}");
    assert!(text.contains("matching:  5 agents now"), "{text}");
    assert!(text.contains("collector.yaml (2 lines"), "{text}");
    assert!(!text.contains("BODY-MARK"), "no body in the table: {text}");
    // Which agents run which config, by name and version.
    let wait = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !stdout(&ctl(&["agents", "list", "--config", "applied"])).contains("5 of 5") {
        assert!(
            std::time::Instant::now() < wait,
            "the config was not applied"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let by_name = |args: &[&str]| {
        let mut all = vec!["agents", "list"];
        all.extend_from_slice(args);
        stdout(&ctl(&all))
    };
    assert!(by_name(&["--config-name", "base", "--config-version", "1"]).contains("5 of 5"));
    assert!(by_name(&["--config-name", "base", "--config-version", "2"]).contains("0 of 0"));
    assert!(by_name(&["--config-name", "other"]).contains("0 of 0"));
    let wide = stdout(&ctl(&["configs", "get", "base", "-o", "wide"]));
    assert!(wide.contains("BODY-MARK"), "{wide}");
    let list = stdout(&ctl(&["configs", "list"]));
    let header = list.lines().next().unwrap_or_default();
    assert!(
        header.starts_with("NAME") && header.contains("SELECTOR"),
        "{list}"
    );
    let audit = stdout(&ctl(&["audit"]));
    assert!(audit.starts_with("AT "), "a header: {audit}");
    assert!(audit.contains("config.put"), "{audit}");
    let rows: Vec<&str> = audit.lines().collect();
    let column = |l: &str| l.find("config.put").or_else(|| l.find("ACTION"));
    assert_eq!(column(rows[0]), column(rows[1]), "aligned: {audit}");

    fleet.stop().await;
    srv.stop().await;
}

/// The instance uid a table row starts with, if it is a row.
fn fleet_uid(line: &str) -> Option<uuid::Uuid> {
    line.split_whitespace().next()?.parse().ok()
}

/// GitOps: a directory of config documents applied twice makes one version; a change shows in
/// `diff` (nothing stored) and makes the next version on `apply`; `configs delete` stops it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn declared_configs_apply_idempotently_diff_and_delete() {
    let (dir, srv, fleet, ctl) = with_agents(3).await;
    let repo = dir.path().join("repo");
    std::fs::create_dir_all(repo.join("prod")).unwrap();
    let collector = "receivers: {otlp: {}}\nexporters: {debug: {}}\nservice: {pipelines: {traces: {receivers: [otlp], exporters: [debug]}}}\n";
    // File bodies live outside the scanned tree (a collector.yaml is YAML, but no config
    // document); files_from reads them beside the document.
    std::fs::create_dir_all(dir.path().join("bodies")).unwrap();
    std::fs::write(dir.path().join("bodies/collector.yaml"), collector).unwrap();
    std::fs::write(
        repo.join("prod/base.yaml"),
        "name: base\nselector: env=prod\nfiles_from:\n  collector.yaml: ../../bodies/collector.yaml\n",
    )
    .unwrap();
    std::fs::write(
        repo.join("staging.yaml"),
        "name: staging\nselector: env=staging\nactivate: false\nfiles:\n  collector.yaml: |\n    receivers: {otlp: {}}\n    exporters: {debug: {}}\n    service: {pipelines: {logs: {receivers: [otlp], exporters: [debug]}}}\n",
    )
    .unwrap();
    let r = repo.to_str().unwrap();

    let first = ctl(&["apply", "-f", r]);
    assert!(first.status.success(), "{}", stderr(&first));
    let text = stdout(&first);
    assert!(text.contains("~ base stored: version 1"), "{text}");
    assert!(text.contains("2 configs: 2 changed, 0 unchanged"), "{text}");
    assert!(stderr(&first).contains("warning: selector \"env=staging\" matches no agent"));

    let again = stdout(&ctl(&["apply", "-f", r]));
    assert!(again.contains("= base unchanged (version 1)"), "{again}");
    assert!(
        again.contains("2 configs: 0 changed, 2 unchanged"),
        "{again}"
    );
    let (_, history) = srv.get("/api/v1/configs/base/versions").await;
    assert_eq!(
        history["versions"].as_array().unwrap().len(),
        1,
        "one version, not two"
    );

    // A change: diff shows it and stores nothing; apply stores version 2.
    std::fs::write(
        dir.path().join("bodies/collector.yaml"),
        collector.replace("debug: {}", "debug: {verbosity: basic}"),
    )
    .unwrap();
    let diff = stdout(&ctl(&["diff", "-f", r]));
    assert!(diff.contains("~ base"), "{diff}");
    assert!(diff.contains("-exporters: {debug: {}}"), "{diff}");
    assert!(
        diff.contains("+exporters: {debug: {verbosity: basic}}"),
        "{diff}"
    );
    assert!(diff.contains("= staging unchanged"), "{diff}");
    let (_, history) = srv.get("/api/v1/configs/base/versions").await;
    assert_eq!(
        history["versions"].as_array().unwrap().len(),
        1,
        "diff stores nothing"
    );
    let check = ctl(&["diff", "-f", r, "--exit-code"]);
    assert!(!check.status.success(), "differences: exit 1");
    assert!(
        stderr(&check).contains("1 configs differ"),
        "{}",
        stderr(&check)
    );
    let applied = stdout(&ctl(&["apply", "-f", r]));
    assert!(applied.contains("~ base stored: version 2"), "{applied}");
    assert!(
        ctl(&["diff", "-f", r, "--exit-code"]).status.success(),
        "in step: exit 0"
    );

    // A bad document is refused naming its file, and nothing of the directory is stored.
    std::fs::write(repo.join("bad.yaml"), "name: x\nfile: {}\n").unwrap();
    let bad = ctl(&["apply", "-f", r]);
    assert!(!bad.status.success());
    assert!(
        stderr(&bad).contains("bad.yaml is not a config document")
            && stderr(&bad).contains("unknown field"),
        "{}",
        stderr(&bad)
    );
    let (_, history) = srv.get("/api/v1/configs/base/versions").await;
    assert_eq!(history["versions"].as_array().unwrap().len(), 2);
    std::fs::remove_file(repo.join("bad.yaml")).unwrap();

    // Deleted: agents stop being managed by it; the audit log says who.
    let deleted = ctl(&["configs", "delete", "base"]);
    assert!(deleted.status.success(), "{}", stderr(&deleted));
    assert!(
        stdout(&deleted).contains("deactivated_version:  2"),
        "{}",
        stdout(&deleted)
    );
    let (status, _) = srv.get("/api/v1/configs").await;
    assert_eq!(status, 200);
    let (_, list) = srv.get("/api/v1/configs").await;
    assert!(
        list["configs"]
            .as_array()
            .unwrap()
            .iter()
            .all(|c| c["name"] != "base"),
        "{list}"
    );
    let unmanaged = stdout(&ctl(&["agents", "list", "--config", "unmanaged"]));
    assert!(unmanaged.contains("3 of 3 agents"), "{unmanaged}");
    let (_, audit) = srv.get("/api/v1/audit?object=config/base").await;
    assert_eq!(audit["entries"][0]["action"], "config.delete", "{audit}");
    let again = ctl(&["configs", "delete", "base"]);
    assert!(!again.status.success());
    assert!(
        stderr(&again).contains("no active version"),
        "{}",
        stderr(&again)
    );
    // Applying the directory again brings it back.
    let back = stdout(&ctl(&["apply", "-f", r]));
    assert!(back.contains("~ base stored: version 3"), "{back}");

    fleet.stop().await;
    srv.stop().await;
}

/// One metric of one point: a cumulative sum (a counter) or a gauge.
/// The lines of `text` from the one starting with `title` to the next blank line.
fn section<'a>(text: &'a str, title: &str) -> Vec<&'a str> {
    text.lines()
        .skip_while(|l| !l.starts_with(title))
        .take_while(|l| !l.is_empty())
        .collect()
}

/// The first row of the table under `title` (its line, then the header).
fn first_row<'a>(text: &'a str, title: &str) -> &'a str {
    let rows = section(text, title);
    assert_eq!(
        rows.get(1).map(|h| h.starts_with("INSTANCE UID")),
        Some(true),
        "{text}"
    );
    rows.get(2)
        .unwrap_or_else(|| panic!("no row under {title:?}: {text}"))
}

/// An agent that sends its own metrics, one exporter failing with its queue near full: `agents
/// metrics` ranks it and lists the exporter in both troubled lists, in people's units;
/// `agents get` shows its block; both print the API's JSON with -o json.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_metrics_and_get_show_an_agents_own_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let srv = common::start(common::config(dir.path())).await;
    let mut agent = SimAgent::new("otelcol-ctl", &[("env", "prod")]);
    let opamp = HttpClient::new(&srv.http_url);
    let reply = opamp.post(&agent.full_report(), false).await.unwrap();
    assert_eq!(reply.status, 200);
    let uid = agent.uid.to_string();

    let ctl = |args: &[&str]| {
        let mut all = vec!["ctl", "--api", srv.api.as_str()];
        all.extend_from_slice(args);
        flotilla(&all)
    };
    // Before any export: nobody reports, and the agent has no block.
    let before = stdout(&ctl(&["agents", "metrics"]));
    assert!(
        before.contains("1 agents selected, 0 reporting"),
        "{before}"
    );
    assert!(before.contains("failing exporters: none"), "{before}");
    assert!(!stdout(&ctl(&["agents", "get", &uid])).contains("own metrics:"));

    // Two exports apart in time, so rates exist: 50 spans failed in between.
    let otlp = HttpClient::new(&srv.http_url.replace("/v1/opamp", "/v1/metrics"));
    for (i, (cpu, sent, failed)) in [(1.0, 100.0, 10.0), (1.5, 200.0, 60.0)]
        .into_iter()
        .enumerate()
    {
        if i > 0 {
            tokio::time::sleep(Duration::from_millis(1100)).await;
        }
        let r = otlp
            .post_raw(otlp::collector(agent.uid, cpu, sent, failed, 950.0), &[])
            .await
            .unwrap();
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.raw));
    }
    // The gateway hands samples to the owner every second.
    srv.wait_agent(agent.uid, Duration::from_secs(20), |v| {
        v["own_metrics"]["exporters"][0]["failing_since"].is_string()
    })
    .await;

    let o = ctl(&["agents", "metrics", "--selector", "env=prod", "--top", "5"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = stdout(&o);
    assert!(text.contains("1 agents selected, 1 reporting"), "{text}");
    let memory = first_row(&text, "top memory:");
    assert!(
        memory.starts_with(&uid) && memory.contains("otelcol-ctl") && memory.ends_with("143.1 MiB"),
        "{text}"
    );
    assert!(first_row(&text, "top CPU:").ends_with(" cores"), "{text}");
    assert!(
        first_row(&text, "top failed (exporters):").ends_with("/s"),
        "{text}"
    );
    assert!(text.contains("top refused (receivers): none"), "{text}");
    for title in ["failing exporters: 1", "queues near full: 1"] {
        assert_eq!(section(&text, title).len(), 3, "one row: {text}");
        let row = first_row(&text, title);
        let cells: Vec<&str> = row.split_whitespace().take(3).collect();
        assert_eq!(cells, [uid.as_str(), "otelcol-ctl", "otlp"], "{text}");
        assert!(row.contains("95% (950/1000)"), "{text}");
    }

    let other = stdout(&ctl(&["agents", "metrics", "--selector", "env=dev"]));
    assert!(other.contains("0 agents selected, 0 reporting"), "{other}");
    assert!(other.contains("top CPU: none"), "{other}");
    let bad = ctl(&["agents", "metrics", "--selector", "env in (prod"]);
    assert!(!bad.status.success());
    assert!(
        stderr(&bad).contains("API answered 400"),
        "{}",
        stderr(&bad)
    );

    let json = ctl(&["agents", "metrics", "-o", "json"]);
    let v: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(v["failing_exporters"][0]["instance_uid"], uid.as_str());
    assert_eq!(v["failing_exporters"][0]["name"], "otlp");
    assert_eq!(v["top_memory"][0]["value"], 150_000_000.0);

    let get = stdout(&ctl(&["agents", "get", &uid]));
    let block = section(&get, "own metrics: last export");
    assert!(block.iter().any(|l| l.ends_with(" cores")), "{get}");
    assert!(block.contains(&"  memory: 143.1 MiB"), "{get}");
    let exporter = block
        .iter()
        .find(|l| l.starts_with("  exporter otlp: sent "))
        .unwrap_or_else(|| panic!("no exporter line: {get}"));
    assert!(
        exporter.contains("queue 95% (950/1000), failing since 20"),
        "{get}"
    );
    let get = ctl(&["agents", "get", &uid, "-o", "json"]);
    let v: serde_json::Value = serde_json::from_slice(&get.stdout).unwrap();
    assert_eq!(v["own_metrics"]["exporters"][0]["failed_total"], 60.0);

    srv.stop().await;
}
