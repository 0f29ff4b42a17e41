//! flotilla-swarm's scenarios against a real Flotilla: a rollout with failing agents, HTTP
//! pollers, churn and agents' own metrics (standalone), and the loss of a gateway in a cluster of
//! real processes. Each checks the swarm's report against what the server's API says.

mod cluster_support;
mod common;

use cluster_support::Cluster;
use flotilla_loadtest::sim::ApplyBehavior;
use flotilla_loadtest::swarm::{self, Api, Scenario, SwarmConfig, Transport};
use serde_json::Value;
use std::time::{Duration, Instant};

fn swarm_on(scenario: Scenario, urls: Vec<String>, agents: usize) -> SwarmConfig {
    let mut cfg = SwarmConfig::new(scenario, urls, agents);
    cfg.connect_rate = 1000.0;
    cfg.heartbeat = Duration::from_secs(1);
    cfg
}

/// How many of the agents of swarm run `run` the API shows with each remote config status.
async fn statuses(server: &common::Server, run: &str) -> (u64, u64, u64) {
    let (code, v) = server
        .get(&format!(
            "/api/v1/agents?selector=swarm.run={run}&limit=1000"
        ))
        .await;
    assert_eq!(code, 200, "{v}");
    let count = |s: &str| {
        v["agents"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|a| a["remote_config_status"]["status"] == s)
            .count() as u64
    };
    (
        v["total"].as_u64().unwrap(),
        count("APPLIED"),
        count("FAILED"),
    )
}

#[tokio::test]
async fn rollout_reaches_every_agent_and_reports_failures() {
    let dir = tempfile::tempdir().unwrap();
    let server = common::start(common::config(dir.path())).await;
    let mut cfg = swarm_on(Scenario::Rollout, vec![server.ws_url.clone()], 200);
    cfg.api = Some(Api {
        url: server.api.clone(),
        token: None,
        ca: None,
    });
    cfg.apply = ApplyBehavior {
        delay: Duration::from_millis(100),
        failure_rate: 0.2,
        ..Default::default()
    };
    let out = dir.path().join("report");
    cfg.out = Some(out.clone());
    let r = swarm::run(cfg).await.unwrap();

    let push = r.config_push.as_ref().unwrap();
    assert_eq!(push.agents, 200, "{r}");
    assert_eq!(push.applied + push.failed, 200, "{r}");
    assert_eq!(push.missing, 0);
    assert!(push.all_reported_s.is_some());
    // 20% of 200 fail: 40 expected, 10 to 80 is beyond five standard deviations.
    assert!((10..=80).contains(&push.failed), "{r}");
    assert_eq!(push.applied_after.count, push.applied);
    assert!(
        push.applied_after.p50_ms >= 100.0,
        "applying takes 100 ms: {r}"
    );
    assert_eq!(r.errors_total, 0, "{r}");

    // The server saw the same results.
    let (total, applied, failed) = statuses(&server, &r.run_id).await;
    assert_eq!(
        (total, applied, failed),
        (200, push.applied, push.failed),
        "{r}"
    );

    let json: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap();
    assert_eq!(json["config_push"]["applied"], push.applied);
    assert_eq!(json["scenario"], "rollout");
    assert!(!json["timeline"].as_array().unwrap().is_empty());
    let svg = std::fs::read_to_string(out.join("timeline.svg")).unwrap();
    assert!(svg.starts_with("<svg") && svg.contains("connected agents"));
    server.stop().await;
}

#[tokio::test]
async fn http_pollers_hold_a_steady_state() {
    let dir = tempfile::tempdir().unwrap();
    // Pollers poll at the interval the server offers.
    let server = common::start(flotilla_common::config::ServeConfig {
        heartbeat_interval: Duration::from_secs(1),
        ..common::config(dir.path())
    })
    .await;
    let mut cfg = swarm_on(Scenario::Steady, vec![server.http_url.clone()], 100);
    cfg.transport = Transport::Http;
    cfg.duration = Duration::from_secs(4);
    let r = swarm::run(cfg).await.unwrap();
    assert!(r.connect.all_connected_s.is_some(), "{r}");
    assert_eq!(r.errors_total, 0, "{r}");
    // A first report and at least two polls each.
    assert!(r.messages >= 300, "{r}");
    assert!(r.latency.steady.count > 0 && r.latency.steady.p99_ms > 0.0);
    let (total, _, _) = statuses(&server, &r.run_id).await;
    assert_eq!(total, 100);
    server.stop().await;
}

#[tokio::test]
async fn churn_replaces_agents_with_new_ones() {
    let dir = tempfile::tempdir().unwrap();
    let server = common::start(common::config(dir.path())).await;
    let mut cfg = swarm_on(Scenario::Churn, vec![server.ws_url.clone()], 100);
    cfg.churn_per_s = Some(0.2);
    cfg.duration = Duration::from_secs(4);
    let r = swarm::run(cfg).await.unwrap();
    let churn = r.churn.as_ref().unwrap();
    // About 20 a second for about 3 s.
    assert!(churn.left >= 10, "{r}");
    assert_eq!(churn.left, churn.joined);
    assert_eq!(r.errors_total, 0, "{r}");
    // Each newcomer is a new agent (a new uid) to the server, and each leaver said goodbye.
    let (total, _, _) = statuses(&server, &r.run_id).await;
    assert!(
        total > 100 && total <= 100 + churn.joined,
        "{total} agents: {r}"
    );
    server.stop().await;
}

#[tokio::test]
async fn gateway_loss_in_a_cluster_every_agent_comes_back() {
    let _serial = cluster_support::SERIAL.lock().await;
    let cluster = Cluster::start(1, 2, &["--heartbeat-interval", "2s"]).await;
    let mut cfg = swarm_on(Scenario::GatewayLoss, cluster.ws_urls(), 100);
    cfg.kill_pid = Some(cluster.gateways[0].proc.pid());
    cfg.kill_after = Duration::from_millis(500);
    cfg.duration = Duration::from_secs(40);
    cfg.gateway_pids = cluster.gateways.iter().map(|g| g.proc.pid()).collect();
    let swarm = tokio::spawn(swarm::run(cfg));

    // While the swarm holds its agents after the recovery, the cluster shows every agent of the
    // run connected through the surviving gateway.
    let deadline = Instant::now() + Duration::from_secs(40);
    let via_g2 = loop {
        let (_, v) = cluster
            .get(cluster.api(), "/api/v1/agents?status=connected&limit=1000")
            .await;
        let via_g2 = v["agents"]
            .as_array()
            .map_or(0, |a| a.iter().filter(|a| a["gateway"] == "g2").count());
        if via_g2 == 100 || swarm.is_finished() || Instant::now() > deadline {
            break via_g2;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let r = swarm.await.unwrap().unwrap();
    assert_eq!(via_g2, 100, "{r}");
    let rec = r.recovery.as_ref().unwrap();
    // Agents alternate between the two gateways: half of them were on the killed one.
    assert_eq!(rec.connected_before, 100, "{r}");
    assert_eq!(rec.lost, 50, "{r}");
    assert_eq!(rec.recovered, 50, "{r}");
    assert!(rec.all_back_s.is_some() && rec.converged_s.is_some(), "{r}");
    assert_eq!(r.processes.len(), 2);
    assert!(r.processes.iter().all(|p| p.rss_connected_kb > 0));
    assert!(r.cpu_ms_per_connection.is_some_and(|c| c > 0.0), "{r}");
}

/// Swarm agents started with --accept-certificates take the certificate `ctl rotate-certificate`
/// offers, reconnect with it, and the server then knows the agent by it (mutual TLS, the registry
/// rule, a signing CA): the shared certificate the agent came with is retired for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swarm_agents_take_an_offered_certificate_and_reconnect_with_it() {
    use common::pki::{Pki, YEAR, urls, with_tls};
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    let mut cfg = with_tls(common::config(dir.path()), pki.tls_files(true));
    cfg.signing_ca = Some((pki.path("ca.pem"), pki.path("ca-key.pem")));
    let srv = common::start(cfg).await;
    // One certificate naming no agent, shared by the swarm's three agents.
    let shared = pki.ca.issue_shared_client("swarm", YEAR).unwrap();
    let key = shared.key_pem.clone().unwrap();
    let ca = pki.ca.cert_pem().as_bytes().to_vec();
    let mut swarm_cfg = swarm_on(Scenario::Steady, vec![urls(&srv).ws], 3);
    swarm_cfg.duration = Duration::from_secs(10);
    swarm_cfg.connect = flotilla_loadtest::client::ConnectOptions::tls(
        &ca,
        Some((shared.cert_pem.as_bytes(), key.as_bytes())),
    )
    .unwrap();
    swarm_cfg.accept_certificates = true;
    swarm_cfg.server_ca = Some(ca);
    let run = tokio::spawn(swarm::run(swarm_cfg));

    let deadline = Instant::now() + Duration::from_secs(8);
    let uid = loop {
        let (_, page) = srv.get("/api/v1/agents?status=connected").await;
        if page["total"] == 3 {
            break page["agents"][0]["instance_uid"]
                .as_str()
                .unwrap()
                .to_owned();
        }
        assert!(Instant::now() < deadline, "agents did not connect: {page}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let (status, issued) = srv.post(&format!("/api/v1/agents/{uid}/certificate")).await;
    assert_eq!(
        (status, issued["delivered"].as_bool()),
        (202, Some(true)),
        "{issued}"
    );
    let sha = issued["sha256"].as_str().unwrap().to_owned();
    let deadline = Instant::now() + Duration::from_secs(8);
    let agent = loop {
        let (_, agent) = srv.get(&format!("/api/v1/agents/{uid}")).await;
        if agent["client_certificate"]["sha256"] == sha.as_str() || Instant::now() > deadline {
            break agent;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let report = run.await.unwrap().unwrap();
    assert_eq!(
        agent["client_certificate"]["sha256"],
        sha.as_str(),
        "the agent reconnected with its new certificate: {agent}\n{report}"
    );
    let retired = agent["client_certificate"]["retired"].as_array().unwrap();
    assert_eq!(
        retired.len(),
        1,
        "the shared certificate is retired for it: {agent}"
    );
    assert_eq!(report.certificates_taken, 1, "{report}");
    srv.stop().await;
}

#[tokio::test]
async fn a_supervisor_swarm_takes_a_config_and_shows_healthy_complete_and_in_sync() {
    let dir = tempfile::tempdir().unwrap();
    let server = common::start(common::config(dir.path())).await;
    let mut cfg = swarm_on(Scenario::Rollout, vec![server.ws_url.clone()], 100);
    cfg.supervisor = true;
    cfg.api = Some(Api {
        url: server.api.clone(),
        token: None,
        ca: None,
    });
    let r = swarm::run(cfg).await.unwrap();
    let push = r.config_push.as_ref().unwrap();
    assert_eq!(
        (push.agents, push.applied, push.failed),
        (100, 100, 0),
        "{r}"
    );
    assert_eq!(r.errors_total, 0, "{r}");

    // What the server shows of them: each up (healthy after starting unhealthy), its build's
    // components listed (asked for by hash), and running what it was sent past what the
    // supervisor adds (its effective config is one "" entry).
    let run = &r.run_id;
    let (code, v) = server
        .get(&format!(
            "/api/v1/agents?selector=swarm.run={run}&health=healthy&config=applied&drift=false&limit=1000"
        ))
        .await;
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["total"], 100, "{v}");
    let uid = v["agents"][0]["instance_uid"].as_str().unwrap();
    let (_, agent) = server.get(&format!("/api/v1/agents/{uid}")).await;
    assert_eq!(agent["available_components"]["complete"], true, "{agent}");
    assert_eq!(
        agent["available_components"]["components"]["exporters"],
        serde_json::json!(["debug", "otlp", "otlphttp", "prometheusremotewrite"]),
        "{agent}"
    );
    let effective: Vec<&String> = agent["effective_config"]
        .as_object()
        .unwrap()
        .keys()
        .collect();
    assert_eq!(effective, [""], "{agent}");
    server.stop().await;
}

/// `--own-metrics`: every agent of the run sends its own metrics, as a collector does, to the
/// gateway it talks OpAMP with, and the server shows them: every agent of the run reporting, and
/// the one agent the swarm makes fail (every 50th: agent 0 of 20) with an exporter failing and
/// its queue near full.
#[tokio::test]
async fn own_metrics_of_every_agent_reach_the_server() {
    let dir = tempfile::tempdir().unwrap();
    let server = common::start(common::config(dir.path())).await;
    let mut cfg = swarm_on(Scenario::Steady, vec![server.ws_url.clone()], 20);
    // The gateway's per-connection message rate (10/s) is no limit here: with 20 agents each of
    // the swarm's export lanes (one connection each) carries one agent's export a second.
    cfg.own_metrics = Some(Duration::from_secs(1));
    cfg.duration = Duration::from_secs(5);
    let r = swarm::run(cfg).await.unwrap();
    assert_eq!(r.errors_total, 0, "{r}");
    let own = r.own_metrics.as_ref().unwrap();
    assert_eq!((own.errors_total, own.ok), (0, own.exports), "{r}");
    // One a second each from about the first second on.
    assert!(own.exports >= 20 * 3, "{r}");
    assert_eq!(own.latency.count, own.exports, "{r}");
    assert!(own.bytes_per_export.is_some_and(|b| b > 1000.0), "{r}");

    // The owner folds what the gateway passes on every second: wait for the last of it.
    let failing = 20u64.div_ceil(swarm::FAILING_EVERY as u64);
    let run = &r.run_id;
    let path = format!("/api/v1/fleet/agent-metrics?selector=swarm.run={run}");
    let deadline = Instant::now() + Duration::from_secs(10);
    let v = loop {
        let (code, v) = server.get(&path).await;
        assert_eq!(code, 200, "{v}");
        let done = v["agents_reporting"] == 20 && v["failing_exporters_total"] == failing;
        if done || Instant::now() > deadline {
            break v;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(v["agents_selected"], 20, "{v}\n{r}");
    assert_eq!(v["agents_reporting"], 20, "{v}\n{r}");
    assert_eq!(v["failing_exporters_total"], failing, "{v}\n{r}");
    assert_eq!(v["queues_near_full_total"], failing, "{v}\n{r}");
    // CPU is a rate between two exports: every agent sent at least two.
    assert!(!v["top_cpu"].as_array().unwrap().is_empty(), "{v}");
    server.stop().await;
}
