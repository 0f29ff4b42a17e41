//! Phased rollouts: completing in order, stopping and rolling back when agents fail, and driven
//! end to end from the CLI.

use super::*;

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
        assert!(out.contains("config otel version"), "{out}");
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
    assert!(
        out.lines()
            .any(|l| l.starts_with("done:") && l.ends_with("true")),
        "{out}"
    );
    fleet.stop().await;
    srv.stop().await;
}
