//! The admin API: fleet health, agent listing with filters and paging, configs, errors, metrics,
//! and what survives a restart of `flotilla serve`.

mod common;

use common::{config, start};
use flotilla_loadtest::client::HttpClient;
use flotilla_loadtest::sim::SimAgent;
use flotilla_proto::opamp::ComponentHealth;
use serde_json::{Value, json};
use std::collections::BTreeSet;

async fn report(http: &HttpClient, agent: &mut SimAgent) {
    let reply = http
        .post(&agent.full_report(), false)
        .await
        .unwrap()
        .message
        .unwrap();
    for m in agent.handle(&reply) {
        http.post(&m, false).await.unwrap();
    }
}

#[tokio::test]
async fn fleet_health_filters_and_paging() {
    let dir = tempfile::tempdir().unwrap();
    let srv = start(config(dir.path())).await;
    let http = HttpClient::new(&srv.http_url);
    let mut uids = BTreeSet::new();
    for i in 0..7 {
        let env = if i < 4 { "prod" } else { "dev" };
        let mut a = SimAgent::new("otelcol", &[("env", env)]);
        if i == 0 {
            a.health = ComponentHealth {
                healthy: false,
                last_error: "boom".into(),
                ..Default::default()
            };
        }
        report(&http, &mut a).await;
        if i == 6 {
            http.post(&a.disconnect(), false).await.unwrap();
        }
        uids.insert(a.uid.to_string());
    }
    let (_, h) = srv.get("/api/v1/fleet/health").await;
    assert_eq!(
        h,
        json!({"total_agents": 7, "connected_agents": 6, "healthy_agents": 5, "unhealthy_agents": 1, "silent_agents": 0, "disconnected_agents": 1, "missing_regions": [], "partial": false})
    );

    let (_, page) = srv
        .get("/api/v1/agents?selector=env=prod&health=unhealthy")
        .await;
    assert_eq!(page["total"], 1);
    assert_eq!(page["agents"][0]["healthy"], false);
    let (_, page) = srv.get("/api/v1/agents?status=disconnected").await;
    assert_eq!(page["total"], 1);

    // Pages of 3 cover every agent exactly once.
    let mut seen = BTreeSet::new();
    let mut cursor: Option<String> = None;
    loop {
        let q = cursor
            .as_ref()
            .map_or(String::new(), |c| format!("&cursor={c}"));
        let (status, page) = srv.get(&format!("/api/v1/agents?limit=3{q}")).await;
        assert_eq!(status, 200);
        assert_eq!(page["total"], 7);
        for a in page["agents"].as_array().unwrap() {
            assert!(seen.insert(a["instance_uid"].as_str().unwrap().to_owned()));
            for key in [
                "status",
                "healthy",
                "last_seen",
                "gateway",
                "identifying_attributes",
                "non_identifying_attributes",
                "remote_config_status",
                "desired_config",
                "effective_config_hash",
            ] {
                assert!(a.get(key).is_some(), "AgentSummary lacks {key}");
            }
        }
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    assert_eq!(seen, uids);
    srv.stop().await;
}

#[tokio::test]
async fn bad_requests_get_json_errors_that_say_what_is_wrong() {
    let dir = tempfile::tempdir().unwrap();
    let srv = start(config(dir.path())).await;
    for (path, needle) in [
        ("/api/v1/agents?status=asleep", "status must be"),
        ("/api/v1/agents?health=meh", "health must be"),
        ("/api/v1/agents?limit=0", "limit must be"),
        ("/api/v1/agents?selector=env%20in%20(a", "expected \")\""),
        ("/api/v1/agents?colour=red", "unknown query parameter"),
        ("/api/v1/agents/not-a-uid", "is not an instance uid"),
    ] {
        let (status, body) = srv.get(path).await;
        assert_eq!(status, 400, "{path}");
        assert!(
            body["error"].as_str().unwrap().contains(needle),
            "{path}: {body}"
        );
    }
    let (status, body) = srv
        .get(&format!("/api/v1/agents/{}", uuid::Uuid::now_v7()))
        .await;
    assert_eq!((status, body["error"].is_string()), (404, true));
    let (status, _) = srv.get("/api/v1/configs/none").await;
    assert_eq!(status, 404);

    // What axum answers itself is JSON too: an unknown path, a method a path does not take, a
    // body over the limit.
    let (status, body) = srv.get("/api/v1/nothing/here").await;
    assert_eq!(status, 404);
    assert!(
        body["error"].as_str().unwrap().contains("no such API path"),
        "{body}"
    );
    let http = reqwest::Client::new();
    let r = http
        .patch(format!("{}/api/v1/agents", srv.api))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 405);
    let body: serde_json::Value = r.json().await.unwrap();
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("PATCH is not allowed"),
        "{body}"
    );
    let r = http
        .put(format!("{}/api/v1/configs/big", srv.api))
        .header("content-type", "application/json")
        .body(vec![b' '; 9 << 20])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    let body: serde_json::Value = r.json().await.unwrap();
    assert!(
        body["error"].as_str().unwrap().contains("length limit"),
        "{body}"
    );
    // Outside /api/ a browser gets the console's page.
    let r = reqwest::get(format!("{}/nothing", srv.api)).await.unwrap();
    assert_eq!(r.status(), 404);
    assert!(
        r.text()
            .await
            .unwrap()
            .contains("There is no page at /nothing")
    );

    let (status, body) = srv.put("/api/v1/configs/x", json!({"files": {}})).await;
    assert_eq!(status, 400);
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("at least one of \"files\"")
    );
    let (status, body) = srv
        .put("/api/v1/configs/x", json!({"file": {"a": "b"}}))
        .await;
    assert_eq!(status, 400);
    assert!(
        body["error"].as_str().unwrap().contains("unknown field"),
        "{body}"
    );
    let (status, _) = srv
        .put("/api/v1/configs/bad%20name", json!({"files": {"a": "b"}}))
        .await;
    assert_eq!(status, 400);
    srv.stop().await;
}

#[tokio::test]
async fn configs_are_versioned_and_listed_and_health_and_metrics_answer() {
    let dir = tempfile::tempdir().unwrap();
    let srv = start(config(dir.path())).await;
    let put = |v: &str| json!({"selector": {"env": "prod"}, "files": {"c.yaml": v}});
    let (_, v1) = srv.put("/api/v1/configs/base", put("a: 1")).await;
    let (_, v2) = srv.put("/api/v1/configs/base", put("a: 2")).await;
    assert_eq!(
        (v1["version"].as_u64(), v2["version"].as_u64()),
        (Some(1), Some(2))
    );
    assert_ne!(v1["hash"], v2["hash"]);
    let (_, same) = srv.put("/api/v1/configs/other", put("a: 2")).await;
    assert_eq!(
        same["hash"], v2["hash"],
        "the hash depends only on the files"
    );
    let (_, list) = srv.get("/api/v1/configs").await;
    assert_eq!(list["configs"].as_array().unwrap().len(), 2);
    let (_, got) = srv.get("/api/v1/configs/base").await;
    assert_eq!(got["files"]["c.yaml"], "a: 2");

    for path in ["/healthz", "/readyz"] {
        assert_eq!(
            reqwest::get(format!("{}{path}", srv.api))
                .await
                .unwrap()
                .status(),
            200
        );
    }
    let http = HttpClient::new(&srv.http_url);
    report(&http, &mut SimAgent::new("otelcol", &[])).await;
    let metrics = srv.metrics().await;
    assert!(
        metrics.contains("flotilla_coordinator_uplinks_total{result=\"ok\"} 2"),
        "{metrics}"
    );
    assert!(
        metrics.contains("flotilla_gateway_messages_total"),
        "{metrics}"
    );
    srv.stop().await;
}

#[tokio::test]
async fn restart_of_the_server_keeps_configs_and_agents_which_show_disconnected() {
    let dir = tempfile::tempdir().unwrap();
    let mut agent = SimAgent::new("otelcol", &[("env", "prod")]);
    let srv = start(config(dir.path())).await;
    let (status, _) = srv
        .put(
            "/api/v1/configs/base",
            json!({"selector": {"env": "prod"}, "files": {"c.yaml": "a: 1"}}),
        )
        .await;
    assert_eq!(status, 200);
    let _ws = common::connect(&srv, &mut agent).await;
    srv.wait_agent(agent.uid, std::time::Duration::from_secs(5), |v| {
        v["remote_config_status"]["status"] == "APPLIED"
    })
    .await;
    srv.stop().await;

    let srv = start(config(dir.path())).await;
    let (_, got) = srv.get("/api/v1/configs/base").await;
    assert_eq!(got["version"], 1);
    let view: Value = srv.agent(agent.uid).await;
    assert_eq!(view["status"], "disconnected");
    assert_eq!(view["remote_config_status"]["status"], "APPLIED");
    assert_eq!(view["non_identifying_attributes"]["env"], "prod");
    // It comes back with a compressed message: state is known, so no full state is asked.
    let mut ws = flotilla_loadtest::client::WsClient::connect(&srv.ws_url)
        .await
        .unwrap();
    let reply = ws.request(&agent.heartbeat()).await.unwrap();
    assert!(!common::full_state_requested(&reply));
    assert!(reply.remote_config.is_none(), "it already runs its config");
    srv.wait_agent(agent.uid, std::time::Duration::from_secs(5), |v| {
        v["status"] == "connected"
    })
    .await;
    srv.stop().await;
}
