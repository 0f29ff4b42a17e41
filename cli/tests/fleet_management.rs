//! Fleet management against a real standalone Flotilla with agents over real WebSockets: phased
//! rollouts (completing in order, and stopping and rolling back when agents fail), config
//! validation, labels that change which config an agent gets, history/diff/rollback, and the
//! audit log naming each change's caller.

mod common;

use common::fleet::{Fleet, collectors};
use common::{Server, config, start};
use serde_json::{Value, json};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(60);

fn collector_yaml(note: &str) -> String {
    format!(
        "# {note}\nreceivers:\n  otlp:\n    protocols: {{grpc: {{}}}}\nprocessors:\n  batch: {{}}\n\
         exporters:\n  debug: {{}}\nservice:\n  pipelines:\n    traces:\n      receivers: [otlp]\n      \
         processors: [batch]\n      exporters: [debug]\n"
    )
}

/// How many agents the API lists as APPLIED with config hash `hash`.
fn applied_with(list: &Value, hash: &str) -> usize {
    list["agents"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| {
            a["remote_config_status"]["status"] == "APPLIED"
                && a["remote_config_status"]["hash"] == hash
        })
        .count()
}

async fn wait_applied(srv: &Server, n: usize, hash: &str) {
    srv.wait_for("/api/v1/agents?selector=env=prod&limit=1000", WAIT, |v| {
        applied_with(v, hash) == n
    })
    .await;
}

/// Stores v1 (active) and v2 (staged) of config "otel" for env=prod; returns their hashes.
async fn two_versions(srv: &Server, v2_note: &str) -> (String, String) {
    let (status, v1) = srv
        .put(
            "/api/v1/configs/otel",
            json!({"selector": "env=prod", "files": {"collector.yaml": collector_yaml("v1")}}),
        )
        .await;
    assert_eq!(status, 200, "{v1}");
    let (status, v2) = srv
        .put(
            "/api/v1/configs/otel",
            json!({"selector": "env=prod", "files": {"collector.yaml": collector_yaml(v2_note)},
                   "activate": false}),
        )
        .await;
    assert_eq!(status, 200, "{v2}");
    assert_eq!(v2["version"], 2);
    let hash = |v: &Value| v["hash"].as_str().unwrap().to_owned();
    (hash(&v1), hash(&v2))
}

async fn start_rollout(srv: &Server) -> String {
    let (status, r) = srv
        .post_json(
            "/api/v1/rollouts",
            json!({"config": "otel", "phases": {"initial": 10, "multiplier": 3}, "soak": "1s",
                   "error_budget": {"max_failure_percent": 10, "min_sample": 5, "action": "rollback"}}),
        )
        .await;
    assert_eq!(status, 201, "{r}");
    assert_eq!(
        (r["from_version"].as_u64(), r["to_version"].as_u64()),
        (Some(1), Some(2))
    );
    assert_eq!(r["phases"][0]["agents"], 10, "phase 1 starts at once: {r}");
    r["id"].as_str().unwrap().to_owned()
}

fn audit_actions(v: &Value) -> Vec<(String, String)> {
    v["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            let s = |k: &str| e[k].as_str().unwrap_or_default().to_owned();
            (s("action"), s("caller"))
        })
        .collect()
}

#[tokio::test]
async fn a_three_phase_rollout_to_100_agents_completes_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let srv = start(config(dir.path())).await;
    let fleet = Fleet::start(
        &srv.ws_url,
        collectors(100, &[("env", "prod")], |_| false, ""),
    )
    .await;
    let (v1, v2) = two_versions(&srv, "v2").await;
    wait_applied(&srv, 100, &v1).await;

    let id = start_rollout(&srv).await;
    // While phase 1 soaks, the other 90 agents stay on v1.
    let path = format!("/api/v1/rollouts/{id}");
    let r = srv
        .wait_for(&path, WAIT, |r| r["phases"][0]["applied"] == 10)
        .await;
    let list = srv
        .get("/api/v1/agents?selector=env=prod&limit=1000")
        .await
        .1;
    assert!(applied_with(&list, &v1) >= 90, "{r}");

    let r = srv
        .wait_for(&path, WAIT, |r| r["state"] == "completed")
        .await;
    let phases = r["phases"].as_array().unwrap();
    let sizes: Vec<u64> = phases
        .iter()
        .map(|p| p["agents"].as_u64().unwrap())
        .collect();
    assert_eq!(sizes, [10, 30, 60], "{r}");
    for pair in phases.windows(2) {
        assert!(
            pair[1]["started"].as_str() >= pair[0]["completed"].as_str(),
            "a phase started before the previous one completed: {r}"
        );
    }
    assert!(phases.iter().all(|p| p["applied"] == p["agents"]), "{r}");
    assert_eq!(
        (r["applied"].as_u64(), r["failed"].as_u64()),
        (Some(100), Some(0))
    );
    let mut enrolled: Vec<&str> = phases
        .iter()
        .flat_map(|p| p["instance_uids"].as_array().unwrap())
        .map(|u| u.as_str().unwrap())
        .collect();
    enrolled.sort_unstable();
    enrolled.dedup();
    assert_eq!(enrolled.len(), 100, "every agent in exactly one phase");

    let (_, cfg) = srv.get("/api/v1/configs/otel").await;
    assert_eq!(cfg["version"], 2, "the rolled-out version is now active");
    wait_applied(&srv, 100, &v2).await;

    let (_, log) = srv.get(&format!("/api/v1/audit?object=rollout/{id}")).await;
    let actions = audit_actions(&log);
    assert!(
        actions.contains(&("rollout.start".into(), "anonymous".into())),
        "{log}"
    );
    assert!(
        actions.contains(&("rollout.completed".into(), "flotilla".into())),
        "{log}"
    );
    fleet.stop().await;
    srv.stop().await;
}

#[tokio::test]
async fn a_rollout_with_20_percent_failing_stops_at_phase_1_and_rolls_them_back() {
    let dir = tempfile::tempdir().unwrap();
    let srv = start(config(dir.path())).await;
    // Every fifth agent fails v2. The first phase takes the first 10 agents by uid (all are
    // connected), which are the first 10 created: 2 of them fail, 20% > the 10% budget.
    let agents = collectors(100, &[("env", "prod")], |i| i % 5 == 0, "BROKEN");
    let fleet = Fleet::start(&srv.ws_url, agents).await;
    let (v1, v2) = two_versions(&srv, "v2 BROKEN for some").await;
    wait_applied(&srv, 100, &v1).await;

    let id = start_rollout(&srv).await;
    let path = format!("/api/v1/rollouts/{id}");
    let r = srv
        .wait_for(&path, WAIT, |r| r["state"] == "rolled_back")
        .await;
    assert_eq!(
        r["phases"].as_array().unwrap().len(),
        1,
        "stopped in phase 1: {r}"
    );
    assert_eq!(r["phases"][0]["failed"], 2, "{r}");
    assert!(
        r["reason"]
            .as_str()
            .unwrap()
            .contains("2 of 10 agents failed"),
        "{r}"
    );

    // Phase 1's agents (failed or not) get v1 again, and nobody is left on v2.
    wait_applied(&srv, 100, &v1).await;
    let list = srv
        .get("/api/v1/agents?selector=env=prod&limit=1000")
        .await
        .1;
    assert_eq!(applied_with(&list, &v2), 0);
    let (_, cfg) = srv.get("/api/v1/configs/otel").await;
    assert_eq!(cfg["version"], 1, "v1 stays active");

    let (_, log) = srv.get(&format!("/api/v1/audit?object=rollout/{id}")).await;
    let actions = audit_actions(&log);
    assert!(
        actions.contains(&("rollout.rolled_back".into(), "flotilla".into())),
        "{log}"
    );
    // A second rollout may start now that the first is over; pause and abort work on it.
    let id2 = start_rollout(&srv).await;
    let (status, r) = srv.post(&format!("/api/v1/rollouts/{id2}/pause")).await;
    assert_eq!((status, r["state"].as_str()), (200, Some("paused")), "{r}");
    let (status, r) = srv.post(&format!("/api/v1/rollouts/{id2}/pause")).await;
    assert_eq!(status, 409, "{r}");
    let (status, r) = srv.post(&format!("/api/v1/rollouts/{id2}/abort")).await;
    assert_eq!((status, r["state"].as_str()), (200, Some("aborted")), "{r}");
    wait_applied(&srv, 100, &v1).await;
    fleet.stop().await;
    srv.stop().await;
}

#[tokio::test]
async fn invalid_configs_are_refused_naming_the_problem_and_nothing_is_stored() {
    let dir = tempfile::tempdir().unwrap();
    let srv = start(config(dir.path())).await;
    let broken = collector_yaml("x").replace("exporters: [debug]", "exporters: [debug, otlp/2]");
    let (status, body) = srv
        .put(
            "/api/v1/configs/bad",
            json!({"files": {"collector.yaml": broken}}),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    let msg = body["error"].as_str().unwrap();
    assert!(
        msg.contains("collector.yaml:14:26:")
            && msg.contains("\"otlp/2\"")
            && msg.contains("exporters"),
        "{msg}"
    );
    let (status, body) = srv
        .put(
            "/api/v1/configs/bad",
            json!({"files": {"collector.yaml": "a: [1, 2\nb: c\n"}}),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("collector.yaml:"),
        "{body}"
    );
    let (status, body) = srv
        .put(
            "/api/v1/configs/bad",
            json!({"selector": "env in (a", "files": {"a.yaml": "a: 1"}}),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("expected \")\""),
        "{body}"
    );
    assert_eq!(srv.get("/api/v1/configs/bad").await.0, 404);
    // The API describes itself.
    let (status, doc) = srv.get("/api/v1/openapi.json").await;
    assert_eq!(status, 200);
    assert!(
        doc["paths"]["/api/v1/rollouts/{id}/{action}"]["post"].is_object(),
        "{doc}"
    );
    let (_, log) = srv.get("/api/v1/audit?object=config/bad").await;
    assert_eq!(
        log["entries"],
        json!([]),
        "a refused config changes nothing"
    );
    srv.stop().await;
}

#[tokio::test]
async fn history_diff_and_rollback_of_a_config() {
    let dir = tempfile::tempdir().unwrap();
    let srv = start(config(dir.path())).await;
    for note in ["one", "two"] {
        let (status, body) = srv
            .put(
                "/api/v1/configs/otel",
                json!({"selector": {"env": "prod"}, "files": {"collector.yaml": collector_yaml(note)}}),
            )
            .await;
        assert_eq!(status, 200, "{body}");
    }
    let (_, diff) = srv.get("/api/v1/configs/otel/diff?from=1&to=2").await;
    let text = diff["diff"].as_str().unwrap();
    assert!(text.contains("-# one") && text.contains("+# two"), "{text}");
    let (status, back) = srv
        .post_json("/api/v1/configs/otel/rollback", json!({"version": 1}))
        .await;
    assert_eq!(status, 200, "{back}");
    assert_eq!(back["version"], 3);
    assert_eq!(back["comment"], "rollback to version 1");
    let (_, history) = srv.get("/api/v1/configs/otel/versions").await;
    assert_eq!(history["active_version"], 3);
    let versions: Vec<u64> = history["versions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["version"].as_u64().unwrap())
        .collect();
    assert_eq!(versions, [3, 2, 1]);
    let (_, v3) = srv.get("/api/v1/configs/otel/versions/3").await;
    let (_, v1) = srv.get("/api/v1/configs/otel/versions/1").await;
    assert_eq!(v3["hash"], v1["hash"], "same files, same hash");
    let (status, _) = srv.get("/api/v1/configs/otel/versions/9").await;
    assert_eq!(status, 404);
    srv.stop().await;
}

#[tokio::test]
async fn labels_change_which_config_an_agent_gets_and_the_audit_log_names_the_callers() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens.toml");
    std::fs::write(
        &tokens,
        "[[token]]\nname = \"ann\"\nrole = \"admin\"\ntoken = \"ann-token\"\n\
         [[token]]\nname = \"otto\"\nrole = \"operator\"\ntoken = \"otto-token\"\n\
         [[token]]\nname = \"vic\"\nrole = \"viewer\"\ntoken = \"vic-token\"\n",
    )
    .unwrap();
    let mut cfg = config(dir.path());
    cfg.api_tokens = Some(tokens);
    let srv = start(cfg).await;
    let api = Api::new(&srv.api);
    let (status, base) = api
        .send(
            "ann",
            "PUT",
            "/api/v1/configs/base",
            json!({"selector": "env=prod", "files": {"c.yaml": "base: 1"}}),
        )
        .await;
    assert_eq!(status, 200, "{base}");
    let (_, canary) = api
        .send(
            "ann",
            "PUT",
            "/api/v1/configs/canary",
            json!({"selector": "env=prod,ring=canary", "files": {"c.yaml": "canary: 1"}}),
        )
        .await;
    let (base, canary) = (base["hash"].clone(), canary["hash"].clone());

    let fleet = Fleet::start(
        &srv.ws_url,
        collectors(2, &[("env", "prod")], |_| false, ""),
    )
    .await;
    let (a, b) = (fleet.uids[0], fleet.uids[1]);
    let hash_of = |uid| {
        let api = &api;
        async move {
            let (_, v) = api
                .send("vic", "GET", &format!("/api/v1/agents/{uid}"), Value::Null)
                .await;
            (
                v["remote_config_status"]["status"].clone(),
                v["remote_config_status"]["hash"].clone(),
            )
        }
    };
    let applied = json!("APPLIED");
    wait_until(|| async { hash_of(a).await == (applied.clone(), base.clone()) }).await;

    let labels = format!("/api/v1/agents/{a}/labels");
    let set = json!({"set": {"ring": "canary"}});
    let (status, _) = api.send("vic", "POST", &labels, set.clone()).await;
    assert_eq!(status, 403, "viewers cannot label");
    let (status, body) = api.send("otto", "POST", &labels, set).await;
    assert_eq!(
        (status, &body["labels"]),
        (200, &json!({"ring": "canary"})),
        "{body}"
    );
    wait_until(|| async { hash_of(a).await == (applied.clone(), canary.clone()) }).await;
    assert_eq!(
        hash_of(b).await,
        (applied.clone(), base.clone()),
        "b is not labelled"
    );
    let (_, list) = api
        .send(
            "vic",
            "GET",
            "/api/v1/agents?selector=ring%3Dcanary",
            Value::Null,
        )
        .await;
    assert_eq!(list["total"], 1, "{list}");

    // Labels are the server's: a reconnect keeps them.
    fleet.stop().await;
    let mut again = flotilla_loadtest::sim::SimAgent::new("otelcol", &[("env", "prod")]);
    again.uid = a;
    let fleet = Fleet::start(&srv.ws_url, vec![again]).await;
    wait_until(|| async { hash_of(a).await == (applied.clone(), canary.clone()) }).await;
    let (_, l) = api.send("vic", "GET", &labels, Value::Null).await;
    assert_eq!(l["labels"], json!({"ring": "canary"}));
    let (status, _) = api
        .send("otto", "POST", &labels, json!({"remove": ["ring"]}))
        .await;
    assert_eq!(status, 200);
    wait_until(|| async { hash_of(a).await == (applied.clone(), base.clone()) }).await;

    let (_, log) = api
        .send("vic", "GET", "/api/v1/audit?limit=10", Value::Null)
        .await;
    let actions = audit_actions(&log);
    assert_eq!(
        actions,
        [
            ("labels.set".to_owned(), "otto".to_owned()),
            ("labels.set".to_owned(), "otto".to_owned()),
            // The viewer's refused attempt to set labels is on record too.
            ("api.forbidden".to_owned(), "vic".to_owned()),
            ("config.put".to_owned(), "ann".to_owned()),
            ("config.put".to_owned(), "ann".to_owned()),
        ],
        "{log}"
    );
    let first = &log["entries"][1];
    assert_eq!(
        (&first["before"], &first["after"]),
        (&json!({}), &json!({"ring": "canary"}))
    );
    fleet.stop().await;
    srv.stop().await;
}

async fn wait_until<F, Fut>(cond: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = std::time::Instant::now() + WAIT;
    while !cond().await {
        assert!(std::time::Instant::now() < deadline, "condition never held");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The API with a bearer token per caller name (`<name>-token`).
struct Api {
    base: String,
    http: reqwest::Client,
}

impl Api {
    fn new(base: &str) -> Self {
        Self {
            base: base.to_owned(),
            http: reqwest::Client::new(),
        }
    }

    async fn send(&self, who: &str, method: &str, path: &str, body: Value) -> (u16, Value) {
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(format!("{who}-token"));
        if !body.is_null() {
            req = req.json(&body);
        }
        let r = req.send().await.unwrap();
        (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
    }
}

/// Runs `flotilla ctl --api <api> args...`; returns (success, stdout, stderr).
async fn ctl(api: &str, args: &[&str]) -> (bool, String, String) {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_flotilla"))
        .args(["ctl", "--api", api])
        .args(args)
        .output()
        .await
        .expect("flotilla runs");
    let text = |b: Vec<u8>| String::from_utf8_lossy(&b).into_owned();
    (out.status.success(), text(out.stdout), text(out.stderr))
}

#[tokio::test]
async fn the_cli_drives_a_rollout_end_to_end() {
    let dir = tempfile::tempdir().unwrap();
    let srv = start(config(dir.path())).await;
    let fleet = Fleet::start(
        &srv.ws_url,
        collectors(12, &[("env", "prod")], |_| false, ""),
    )
    .await;
    let file = dir.path().join("collector.yaml");
    let path = file.to_str().unwrap();
    for (note, extra) in [("v1", None), ("v2", Some("--no-activate"))] {
        std::fs::write(&file, collector_yaml(note)).unwrap();
        let mut args = vec![
            "configs",
            "apply",
            "otel",
            "-f",
            path,
            "--selector",
            "env=prod",
        ];
        args.extend(extra);
        let (ok, out, err) = ctl(&srv.api, &args).await;
        assert!(ok, "{err}");
        assert!(out.contains("\"version\""), "{out}");
    }
    let (_, v1) = srv.get("/api/v1/configs/otel/versions/1").await;
    let (_, v2) = srv.get("/api/v1/configs/otel/versions/2").await;
    wait_applied(&srv, 12, v1["hash"].as_str().unwrap()).await;

    let (ok, out, err) = ctl(&srv.api, &["configs", "diff", "otel", "1", "2"]).await;
    assert!(
        ok && out.contains("-# v1") && out.contains("+# v2"),
        "{out}{err}"
    );
    let (ok, out, err) = ctl(
        &srv.api,
        &[
            "rollouts",
            "start",
            "otel",
            "--initial",
            "2",
            "--multiplier",
            "2",
            "--soak",
            "1s",
            "--watch",
        ],
    )
    .await;
    assert!(ok, "{out}{err}");
    assert!(
        err.contains("phase 1:") && err.contains("completed"),
        "progress shown: {err}"
    );
    assert!(out.contains("12 of 12 agents applied, 0 failed"), "{out}");
    wait_applied(&srv, 12, v2["hash"].as_str().unwrap()).await;

    let (ok, out, _) = ctl(&srv.api, &["configs", "history", "otel"]).await;
    assert!(
        ok && out.lines().nth(1).unwrap().starts_with("2 "),
        "v2 listed first: {out}"
    );
    let (ok, out, _) = ctl(&srv.api, &["rollouts", "list"]).await;
    assert!(
        ok && out.contains("completed") && out.contains("12/12"),
        "{out}"
    );
    let (ok, out, _) = ctl(&srv.api, &["audit", "--limit", "5"]).await;
    assert!(
        ok && out.contains("rollout.completed") && out.contains("rollout.start"),
        "{out}"
    );
    let (ok, _, err) = ctl(
        &srv.api,
        &["rollouts", "start", "otel", "--percentages", "50,40"],
    )
    .await;
    assert!(!ok && err.contains("percentages must rise"), "{err}");

    // Restart every agent matching a selector, at a bounded rate, with progress.
    let (ok, out, err) = ctl(
        &srv.api,
        &["restart", "--selector", "env=prod", "--rate", "50"],
    )
    .await;
    assert!(ok, "{err}");
    assert!(err.contains("12 matched: 12 delivered"), "{err}");
    assert!(out.contains("\"done\": true"), "{out}");
    fleet.stop().await;
    srv.stop().await;
}

#[tokio::test]
async fn packages_and_per_selector_settings_reach_agents_and_statuses_are_tracked() {
    use flotilla_proto::opamp::{
        AgentCapabilities as Cap, PackageStatus, PackageStatusEnum, PackageStatuses,
    };
    let dir = tempfile::tempdir().unwrap();
    let srv = start(config(dir.path())).await;
    let mut agent = flotilla_loadtest::sim::SimAgent::new("otelcol", &[("env", "prod")]);
    agent.capabilities |= Cap::AcceptsPackages as u64 | Cap::ReportsPackageStatuses as u64;
    let mut ws = common::connect(&srv, &mut agent).await;

    let (status, body) = srv
        .put(
            "/api/v1/configs/otelcol-package",
            json!({"selector": "env=prod",
                   "packages": {"otelcol": {"version": "0.110.0",
                                            "download_url": "https://example.com/otelcol.tgz",
                                            "content_hash": "ab".repeat(32),
                                            "signature": "c2lnbmVk"}},
                   "settings": {"heartbeat_interval": "7s"}}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let push = ws
        .recv(Duration::from_secs(10))
        .await
        .expect("packages pushed");
    let offer = push.packages_available.expect("PackagesAvailable");
    let pkg = &offer.packages["otelcol"];
    assert_eq!(pkg.version, "0.110.0");
    let file = pkg.file.as_ref().unwrap();
    assert_eq!(
        (file.content_hash.clone(), file.signature.clone()),
        (vec![0xab; 32], b"signed".to_vec())
    );

    // The next reply offers the selector's heartbeat interval.
    let reply = common::answered_ok(&mut ws, &agent.heartbeat()).await;
    let hb = reply.connection_settings.and_then(|s| s.opamp);
    assert_eq!(hb.map(|o| o.heartbeat_interval_seconds), Some(7));

    let mut report = agent.heartbeat();
    report.package_statuses = Some(PackageStatuses {
        packages: [(
            "otelcol".to_owned(),
            PackageStatus {
                name: "otelcol".into(),
                agent_has_version: "0.110.0".into(),
                server_offered_version: "0.110.0".into(),
                status: PackageStatusEnum::Installed as i32,
                ..Default::default()
            },
        )]
        .into(),
        server_provided_all_packages_hash: offer.all_packages_hash.clone(),
        error_message: String::new(),
    });
    let reply = common::answered_ok(&mut ws, &report).await;
    assert!(
        reply.packages_available.is_none(),
        "installed: not offered again"
    );
    let detail = srv.agent(agent.uid).await;
    assert_eq!(
        detail["packages"]["packages"]["otelcol"]["status"], "INSTALLED",
        "{detail}"
    );
    assert_eq!(detail["desired_packages"]["name"], "otelcol-package");
    srv.stop().await;
}
