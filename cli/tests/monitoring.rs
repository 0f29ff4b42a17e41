//! What operators load into their monitoring holds together: the Prometheus rules parse and pass
//! their unit tests (promtool, from Debian's prometheus package), the Grafana dashboard's queries
//! parse, every metric they use is documented in docs/observability.md, every metric family a
//! running server exposes is documented, every documented family exists in the code, and every
//! alert has its entry in docs/deploy.md's runbook.

mod common;

use flotilla_loadtest::sim::SimAgent;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn read(path: &str) -> String {
    std::fs::read_to_string(root().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn promtool(args: &[&str], dir: &Path) -> String {
    flotilla_testkit::require("promtool");
    let out = Command::new("promtool")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool {args:?}:\n{text}");
    text
}

/// The metric names a PromQL expression uses (`flotilla_*` and `process_*`), histogram and
/// counter sample suffixes taken off.
fn metrics_in(expr: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for (i, _) in expr.match_indices(['f', 'p']) {
        let rest = &expr[i..];
        if !(rest.starts_with("flotilla_") || rest.starts_with("process_")) {
            continue;
        }
        if i > 0 && expr[..i].ends_with(|c: char| c.is_ascii_alphanumeric() || c == '_') {
            continue;
        }
        let name: String = rest
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        out.insert(family(&name).to_owned());
    }
    out
}

/// A sample's family: without `_total`, `_bucket`, `_count`, `_sum`.
fn family(sample: &str) -> &str {
    ["_total", "_bucket", "_count", "_sum"]
        .iter()
        .find_map(|s| sample.strip_suffix(s))
        .unwrap_or(sample)
}

/// The families docs/observability.md lists (first column of its metric tables).
fn documented() -> BTreeSet<String> {
    read("docs/observability.md")
        .lines()
        .filter_map(|l| l.strip_prefix("| `"))
        .filter_map(|l| l.split('`').next())
        .filter(|n| n.starts_with("flotilla_") || n.starts_with("process_"))
        .map(|n| family(n).to_owned())
        .collect()
}

fn dashboard_queries() -> Vec<String> {
    let dash: serde_json::Value =
        serde_json::from_str(&read("deploy/grafana/flotilla.json")).unwrap();
    let mut out = Vec::new();
    for panel in dash["panels"].as_array().unwrap() {
        for t in panel["targets"].as_array().into_iter().flatten() {
            out.push(t["expr"].as_str().unwrap().to_owned());
        }
    }
    out
}

#[test]
fn the_rules_pass_their_tests_and_the_dashboard_queries_parse() {
    let dir = root().join("deploy/prometheus");
    let checked = promtool(&["check", "rules", "rules.yml"], &dir);
    assert!(checked.contains("SUCCESS"), "{checked}");
    promtool(&["test", "rules", "rules_test.yml"], &dir);

    // Grafana's variables as Prometheus would see them, each query a recording rule to parse.
    let queries = dashboard_queries();
    assert!(queries.len() > 30, "{} queries", queries.len());
    let tmp = tempfile::tempdir().unwrap();
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, q) in queries.iter().enumerate() {
        let q = q.replace("$__rate_interval", "5m").replace("$job", ".*");
        rules.push_str(&format!(
            "      - record: dashboard:q{i}\n        expr: {q:?}\n"
        ));
    }
    std::fs::write(tmp.path().join("dashboard.yml"), rules).unwrap();
    promtool(&["check", "rules", "dashboard.yml"], tmp.path());
}

#[test]
fn every_alert_has_a_runbook_entry_and_every_entry_an_alert() {
    let alerts: BTreeSet<String> = read("deploy/prometheus/rules.yml")
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert: "))
        .map(str::to_owned)
        .collect();
    assert!(alerts.len() >= 13, "{alerts:?}");
    let deploy = read("docs/deploy.md");
    let runbook = deploy
        .split_once("## Runbook")
        .expect("docs/deploy.md has a Runbook section")
        .1;
    let entries: BTreeSet<String> = runbook
        .lines()
        .filter_map(|l| l.strip_prefix("| ")?.split(" |").next())
        .filter(|name| name.starts_with("Flotilla"))
        .map(str::to_owned)
        .collect();
    assert_eq!(
        alerts, entries,
        "rules.yml's alerts against the runbook's rows"
    );
}

#[test]
fn every_metric_the_rules_and_dashboard_use_is_documented_and_exists() {
    let documented = documented();
    assert!(documented.len() > 35, "{documented:?}");
    let mut used = metrics_in(&read("deploy/prometheus/rules.yml"));
    for q in dashboard_queries() {
        used.extend(metrics_in(&q));
    }
    let undocumented: Vec<&String> = used.difference(&documented).collect();
    assert!(
        undocumented.is_empty(),
        "used, not documented: {undocumented:?}"
    );

    // Each documented family is registered somewhere in the code (its name after the prefix
    // its registry adds), so the page cannot keep a metric that is gone.
    let mut code = String::new();
    for dir in ["coordinator/src", "gateway/src", "worker-common/src"] {
        let mut stack = vec![root().join(dir)];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(d).unwrap() {
                let p = e.unwrap().path();
                if p.is_dir() {
                    stack.push(p);
                } else if p.extension().is_some_and(|x| x == "rs") {
                    code.push_str(&std::fs::read_to_string(p).unwrap());
                }
            }
        }
    }
    let prefixes = [
        "flotilla_coordinator_",
        "flotilla_gateway_",
        "flotilla_store_",
        "flotilla_bus_",
        "",
    ];
    let missing: Vec<&String> = documented
        .iter()
        .filter(|name| {
            !prefixes.iter().any(|p| {
                name.strip_prefix(p)
                    .is_some_and(|rest| code.contains(&format!("\"{rest}\"")))
            })
        })
        .collect();
    assert!(
        missing.is_empty(),
        "documented, not in the code: {missing:?}"
    );
}

#[tokio::test]
async fn every_family_a_server_exposes_is_documented_and_well_named() {
    let dir = tempfile::tempdir().unwrap();
    let srv = common::start(common::config(dir.path())).await;
    // Some traffic, so families with labels have series.
    let mut agent = SimAgent::new("io.opentelemetry.collector", &[("env", "test")]);
    let _ws = common::connect(&srv, &mut agent).await;
    srv.get("/api/v1/agents").await;
    srv.get("/api/v1/nothing-here").await;
    let text = srv.metrics().await;
    let documented = documented();
    let mut exposed = BTreeSet::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("# TYPE ") else {
            continue;
        };
        let mut parts = rest.split(' ');
        let (name, kind) = (parts.next().unwrap(), parts.next().unwrap());
        assert!(
            name.chars().all(|c| c.is_ascii_lowercase() || c == '_'),
            "{name}"
        );
        assert!(
            name.starts_with("flotilla_") || name.starts_with("process_"),
            "{name}"
        );
        if kind == "histogram" {
            assert!(name.ends_with("_seconds"), "a histogram in seconds: {name}");
        }
        exposed.insert(name.to_owned());
    }
    assert!(exposed.len() > 25, "{exposed:?}");
    let undocumented: Vec<&String> = exposed.difference(&documented).collect();
    assert!(
        undocumented.is_empty(),
        "exposed, not documented: {undocumented:?}"
    );
    srv.stop().await;
}
