//! Configs and what decides who gets them: validation, history, diff and rollback, labels,
//! packages and per-selector settings; and the audit log naming each change's caller.

use super::*;

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
    let tokens = common::api_tokens_file(
        dir.path(),
        &[
            ("ann", "admin", "ann-token"),
            ("otto", "operator", "otto-token"),
            ("vic", "viewer", "vic-token"),
        ],
    );
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

#[tokio::test]
async fn a_selector_that_matches_no_agent_is_said_and_an_empty_rollout_needs_allow_empty() {
    let dir = tempfile::tempdir().unwrap();
    let srv = start(config(dir.path())).await;
    let fleet = Fleet::start(
        &srv.ws_url,
        collectors(2, &[("env", "prod")], |_| false, ""),
    )
    .await;
    let files = json!({"collector.yaml": collector_yaml("x")});

    let (status, stored) = srv
        .put(
            "/api/v1/configs/prod",
            json!({"selector": "env=prod", "files": files}),
        )
        .await;
    assert_eq!(status, 200, "{stored}");
    assert_eq!(stored["matching_agents"], 2);
    assert!(stored.get("warnings").is_none(), "{stored}");

    let (status, stored) = srv
        .put(
            "/api/v1/configs/typo",
            json!({"selector": "env=prdo", "files": files, "activate": false}),
        )
        .await;
    assert_eq!(status, 200, "stored all the same: {stored}");
    assert_eq!(stored["matching_agents"], 0);
    let warning = stored["warnings"][0].as_str().unwrap_or_default();
    assert!(
        warning.contains("\"env=prdo\" matches no agent"),
        "{stored}"
    );

    // A rollout that no agent would take is refused, unless asked for.
    let rollout = |allow: bool| json!({"config": "typo", "phases": {"percentages": [100]}, "allow_empty": allow});
    let (status, refused) = srv.post_json("/api/v1/rollouts", rollout(false)).await;
    assert_eq!(status, 409, "{refused}");
    assert!(
        refused["error"]
            .as_str()
            .unwrap()
            .contains("no agent would take version 1"),
        "{refused}"
    );
    let (_, all) = srv.get("/api/v1/rollouts").await;
    assert_eq!(
        all["rollouts"].as_array().unwrap().len(),
        0,
        "nothing started"
    );
    let (status, started) = srv.post_json("/api/v1/rollouts", rollout(true)).await;
    assert_eq!(status, 201, "{started}");
    assert_eq!(started["state"], "completed", "nothing to wait for");

    // The CLI says it too, on stderr, and still stores.
    let file = dir.path().join("c.yaml");
    std::fs::write(&file, collector_yaml("y")).unwrap();
    let (ok, _, err) = ctl(
        &srv.api,
        &[
            "configs",
            "apply",
            "other",
            "-f",
            file.to_str().unwrap(),
            "--selector",
            "env=nowhere",
        ],
    )
    .await;
    assert!(ok, "{err}");
    assert!(
        err.contains("warning: selector \"env=nowhere\" matches no agent"),
        "{err}"
    );
    let (ok, _, err) = ctl(&srv.api, &["restart", "--selector", "env=nowhere"]).await;
    assert!(!ok);
    assert!(
        err.contains("no agent that accepts restart commands matches"),
        "{err}"
    );
    fleet.stop().await;
    srv.stop().await;
}
