//! Two regions on loopback, as `REGIONS="eu us" scripts/cluster.sh` runs them: each its own
//! nats-server, redis-server, coordinator and gateway, the two nats-servers joined by NATS
//! gateway connections (a supercluster) that run through a [`TcpProxy`] each way, so the test can
//! cut the link between the regions and heal it.

mod cluster_support;

use cluster_support::{
    Backends, Cluster, LiveAgent, SERIAL, TcpProxy, wait_applied, ws_agent, ws_sim_agent,
};
use flotilla_loadtest::client::{WsClient, WsEvent};
use flotilla_loadtest::sim::SimAgent;
use flotilla_proto::admin::{self as pb, admin_client::AdminClient};
use flotilla_proto::opamp::{AgentCapabilities, ServerToAgent};
use flotilla_testkit::{NatsServer, RedisServer, free_port};
use serde_json::Value;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

const HB: Duration = Duration::from_secs(2);
const REGIONS: [&str; 2] = ["eu", "us"];

struct Fleet {
    regions: BTreeMap<&'static str, Cluster>,
    /// Each region's gateway OpAMP URL (its `--region-endpoint`).
    endpoints: BTreeMap<&'static str, String>,
    /// The NATS gateway link into each region (every connection from the other region's NATS).
    links: Vec<TcpProxy>,
}

impl Fleet {
    async fn start() -> Self {
        let gateway_ports: Vec<u16> = REGIONS.iter().map(|_| free_port()).collect();
        let links: Vec<TcpProxy> = gateway_ports.iter().map(|p| TcpProxy::start(*p)).collect();
        let opamp_ports: Vec<u16> = REGIONS.iter().map(|_| free_port()).collect();
        let endpoints: BTreeMap<&str, String> = REGIONS
            .iter()
            .zip(&opamp_ports)
            .map(|(r, p)| (*r, format!("ws://127.0.0.1:{p}/v1/opamp")))
            .collect();
        let endpoint_flags: Vec<String> = endpoints
            .iter()
            .flat_map(|(r, url)| ["--region-endpoint".to_owned(), format!("{r}={url}")])
            .collect();
        let mut regions = BTreeMap::new();
        for (i, region) in REGIONS.iter().enumerate() {
            let other = 1 - i;
            // Each server advertises its proxy as its gateway address, so every connection
            // between the regions runs through a proxy, whichever side dialled.
            let config = format!(
                "gateway {{\n  name: {region}\n  listen: \"127.0.0.1:{}\"\n  advertise: \
                 \"127.0.0.1:{}\"\n  gateways: [{{name: {}, url: \"nats://127.0.0.1:{}\"}}]\n}}\n",
                gateway_ports[i], links[i].port, REGIONS[other], links[other].port
            );
            let dir = tempfile::tempdir().unwrap();
            let nats = NatsServer::start_with_config(dir.path(), &config);
            let redis = RedisServer::start(dir.path());
            let backends = Backends::new(dir, nats, redis);
            let mut flags = vec![
                "--heartbeat-interval",
                "2s",
                "--regions",
                "eu,us",
                "--region-timeout",
                "1s",
            ];
            flags.extend(endpoint_flags.iter().map(String::as_str));
            let gateways = [opamp_ports[i]];
            let c =
                Cluster::start_in(region, backends, 1, &gateways, &flags, Default::default()).await;
            regions.insert(*region, c);
        }
        Self {
            regions,
            endpoints,
            links,
        }
    }

    fn api(&self, region: &str) -> &str {
        self.regions[region].api()
    }

    async fn get(&self, region: &str, path: &str) -> Value {
        let (status, body) = self.regions[region].get(self.api(region), path).await;
        assert_eq!(status, 200, "GET {path} in {region}: {body}");
        body
    }

    fn cut(&self) {
        self.links.iter().for_each(TcpProxy::cut);
    }

    fn heal(&self) {
        self.links.iter().for_each(TcpProxy::heal);
    }

    fn logs(&self) -> String {
        self.regions
            .iter()
            .map(|(r, c)| format!("=== region {r}\n{}", c.logs()))
            .collect()
    }

    /// Waits until `region`'s fleet health satisfies `done`; returns it and how long it took.
    async fn wait_health(
        &self,
        region: &str,
        what: &str,
        timeout: Duration,
        done: impl Fn(&Value) -> bool,
    ) -> (Value, Duration) {
        let started = Instant::now();
        loop {
            let h = self.get(region, "/api/v1/fleet/health").await;
            if done(&h) {
                return (h, started.elapsed());
            }
            assert!(
                started.elapsed() < timeout,
                "{what} not seen from {region} within {timeout:?}: {h}\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

fn agents_in(c: &Cluster, n: usize) -> Vec<LiveAgent> {
    (0..n).map(|i| ws_agent(c.ws_urls(), i, HB)).collect()
}

/// An agent whose `cloud.region` is us, taking OpAMP connection settings or not.
fn from_us(takes_settings: bool) -> SimAgent {
    let mut a = SimAgent::new(
        "io.opentelemetry.collector",
        &[("env", "test"), ("cloud.region", "us")],
    );
    if takes_settings {
        a.capabilities |= AgentCapabilities::AcceptsOpAmpConnectionSettings as u64;
    }
    a
}

/// Sends the agent's full report over `ws` and returns the reply.
async fn report(ws: &mut WsClient, agent: &mut SimAgent) -> ServerToAgent {
    ws.send(&agent.full_report()).await.unwrap();
    match ws.next_event(Duration::from_secs(10)).await.unwrap() {
        WsEvent::Message(m) => *m,
        other => panic!("no reply: {other:?}"),
    }
}

/// Whether a reply offers no other OpAMP endpoint (a heartbeat alone may be offered).
fn sends_nowhere(reply: ServerToAgent) -> bool {
    reply
        .connection_settings
        .and_then(|c| c.opamp)
        .is_none_or(|o| o.destination_endpoint.is_empty())
}

fn connected(h: &Value, region: &str) -> u64 {
    h["regions"][region]["connected_agents"]
        .as_u64()
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_fleet_view_from_either_region_and_each_region_alone_when_cut_off() {
    let _serial = SERIAL.lock().await;
    let fleet = Fleet::start().await;
    let eu_agents = agents_in(&fleet.regions["eu"], 3);
    let us_agents = agents_in(&fleet.regions["us"], 2);

    // Once the NATS gateways have joined the regions, either API counts both regions' agents.
    let whole = |h: &Value| {
        h["partial"] == false
            && h["total_agents"] == 5
            && connected(h, "eu") == 3
            && connected(h, "us") == 2
    };
    let (h, took) = fleet
        .wait_health("eu", "both regions' agents", Duration::from_secs(30), whole)
        .await;
    eprintln!("one fleet view from eu after {took:?}: {h}");
    assert_eq!(h["missing_regions"], serde_json::json!([]));
    fleet
        .wait_health("us", "both regions' agents", Duration::from_secs(10), whole)
        .await;

    // The agent list merges the regions in uid order, each agent naming its region; a page of 2
    // with its cursor walks all 5 exactly once.
    let mut expected: Vec<(String, &str)> = eu_agents
        .iter()
        .map(|a| (a.uid.to_string(), "eu"))
        .chain(us_agents.iter().map(|a| (a.uid.to_string(), "us")))
        .collect();
    expected.sort();
    let mut seen = Vec::new();
    let mut cursor = String::new();
    loop {
        let page = fleet
            .get("us", &format!("/api/v1/agents?limit=2&cursor={cursor}"))
            .await;
        assert_eq!(page["total"], 5, "{page}");
        assert_eq!(page["partial"], false, "{page}");
        for a in page["agents"].as_array().unwrap() {
            seen.push((
                a["instance_uid"].as_str().unwrap().to_owned(),
                a["region"].as_str().unwrap().to_owned(),
            ));
        }
        match page["next_cursor"].as_str() {
            Some(c) => cursor = c.to_owned(),
            None => break,
        }
    }
    let seen: Vec<(String, &str)> = seen.iter().map(|(u, r)| (u.clone(), r.as_str())).collect();
    assert_eq!(seen, expected);

    // A selector and a sort apply in every region.
    let page = fleet
        .get(
            "eu",
            "/api/v1/agents?selector=env%3Dtest&sort=status&order=desc",
        )
        .await;
    assert_eq!(page["agents"].as_array().unwrap().len(), 5, "{page}");

    // One agent's page, from the region that does not hold it.
    let us_uid = us_agents[0].uid.to_string();
    let detail = fleet.get("eu", &format!("/api/v1/agents/{us_uid}")).await;
    assert_eq!(detail["region"], "us", "{detail}");
    assert_eq!(detail["instance_uid"], us_uid.as_str());
    assert_eq!(detail["status"], "connected");
    let (status, body) = fleet.regions["eu"]
        .get(
            fleet.api("eu"),
            "/api/v1/agents/00000000-0000-4000-8000-000000000000",
        )
        .await;
    assert_eq!(status, 404, "{body}");

    // A config stored in one region reaches every agent of both.
    let stored = Instant::now();
    let base = put_config(&fleet.regions["eu"], "base", "", "# everywhere\n", true).await;
    let everyone: Vec<&LiveAgent> = eu_agents.iter().chain(&us_agents).collect();
    loop {
        if everyone.iter().all(|a| a.applied() == base) {
            break;
        }
        assert!(
            stored.elapsed() < Duration::from_secs(20),
            "{}",
            fleet.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!(
        "a config stored in eu ran on every agent of both regions after {:?}",
        stored.elapsed()
    );

    // The link between the regions is cut: each region's view marks the other missing at once
    // (within the region timeout), never hangs, and counts its own agents.
    fleet.cut();
    let alone = |me: &'static str, them: &'static str| {
        move |h: &Value| {
            h["partial"] == true
                && h["missing_regions"] == serde_json::json!([them])
                && connected(h, me) == if me == "eu" { 3 } else { 2 }
        }
    };
    let (h, took) = fleet
        .wait_health(
            "eu",
            "us missing",
            Duration::from_secs(10),
            alone("eu", "us"),
        )
        .await;
    eprintln!("eu marks us missing {took:?} after the cut: {h}");
    assert_eq!(h["total_agents"], 3);
    fleet
        .wait_health(
            "us",
            "eu missing",
            Duration::from_secs(10),
            alone("us", "eu"),
        )
        .await;
    let asked = Instant::now();
    let page = fleet.get("eu", "/api/v1/agents").await;
    assert!(
        asked.elapsed() < Duration::from_secs(3),
        "{:?}",
        asked.elapsed()
    );
    assert_eq!(
        (&page["partial"], &page["missing_regions"], &page["total"]),
        (
            &Value::Bool(true),
            &serde_json::json!(["us"]),
            &Value::from(3)
        ),
        "{page}"
    );
    let (status, body) = fleet.regions["eu"]
        .get(fleet.api("eu"), &format!("/api/v1/agents/{us_uid}"))
        .await;
    assert_eq!(
        status, 503,
        "an agent of a missing region is not 'not found': {body}"
    );
    assert!(body.to_string().contains("us did not answer"), "{body}");

    // Cut off, each region still serves its agents and takes configs; both make version 1 of
    // config "shared" (us later).
    let mut shared = BTreeMap::new();
    for (region, agents) in [("eu", &eu_agents), ("us", &us_agents)] {
        let c = &fleet.regions[region];
        let hash = put_config(
            c,
            "shared",
            "env=test",
            &format!("# {region} alone\n"),
            true,
        )
        .await;
        let took = wait_applied(agents, &hash, Duration::from_secs(20)).await;
        eprintln!("{region} pushed a config to its agents while cut off in {took:?}");
        shared.insert(region, hash);
    }

    // The link returns: both views are whole again, and both regions hold us's version 1 (made
    // later), which every agent runs.
    fleet.heal();
    let healed = Instant::now();
    let (_, took) = fleet
        .wait_health("eu", "us back", Duration::from_secs(30), whole)
        .await;
    eprintln!("eu sees us again {took:?} after the link returned");
    fleet
        .wait_health("us", "eu back", Duration::from_secs(30), whole)
        .await;
    let all: Vec<LiveAgent> = eu_agents.into_iter().chain(us_agents).collect();
    let started = Instant::now();
    while !all.iter().all(|a| a.applied() == shared["us"]) {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "not every agent runs us's version 1 of shared ({}): {:?}\n{}",
            shared["us"],
            all.iter().map(LiveAgent::applied).collect::<Vec<_>>(),
            fleet.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!(
        "every agent runs the winning version 1 {:?} after the link returned",
        healed.elapsed()
    );
    for region in REGIONS {
        let v = fleet.get(region, "/api/v1/configs/shared").await;
        assert_eq!(
            (&v["version"], &v["hash"]),
            (&Value::from(1), &Value::from(shared["us"].clone())),
            "{region}: {v}"
        );
        let audit = fleet
            .get(region, "/api/v1/audit?object=config/shared")
            .await;
        let regions: Vec<&str> = audit["entries"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["region"].as_str().unwrap())
            .collect();
        assert!(
            regions.contains(&"eu") && regions.contains(&"us"),
            "audit from {region}: {audit}"
        );
    }
}

/// Stores config `name` through `c`'s API, activated or only staged; returns its hash.
async fn put_config(c: &Cluster, name: &str, selector: &str, body: &str, activate: bool) -> String {
    let r = reqwest::Client::new()
        .put(format!("{}/api/v1/configs/{name}", c.api()))
        .json(
            &serde_json::json!({"selector": selector, "activate": activate,
            "files": {"collector.yaml": format!("receivers: {{}}\n{body}")}}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    v["hash"].as_str().unwrap().to_owned()
}

/// Starts a rollout across regions (`body`) through eu's API; returns its id.
async fn start_across(fleet: &Fleet, body: Value) -> String {
    let r = reqwest::Client::new()
        .post(format!("{}/api/v1/region-rollouts", fleet.api("eu")))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let r: Value = r.json().await.unwrap();
    r["id"].as_str().unwrap().to_owned()
}

/// Follows rollout `id` across regions (calling `watch` at each look) until it ends.
async fn end_of(fleet: &Fleet, id: &str, mut watch: impl FnMut()) -> Value {
    let started = Instant::now();
    loop {
        let r = fleet
            .get("eu", &format!("/api/v1/region-rollouts/{id}"))
            .await;
        watch();
        if r["state"] != "running" {
            return r;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "{r}\n{}",
            fleet.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_agent_of_another_region_is_sent_home_or_served_as_roaming() {
    let _serial = SERIAL.lock().await;
    let fleet = Fleet::start().await;

    // It takes connection settings: the eu gateway's reply sends it to the us endpoint, and it
    // goes there (as the collector's supervisor does: a new client on the offered endpoint).
    let mut mover = from_us(true);
    let mut ws = WsClient::connect(&fleet.endpoints["eu"]).await.unwrap();
    let reply = report(&mut ws, &mut mover).await;
    let offered = reply
        .connection_settings
        .and_then(|c| c.opamp)
        .expect("an OpAMP connection settings offer");
    assert_eq!(offered.destination_endpoint, fleet.endpoints["us"]);
    assert!(offered.heartbeat_interval_seconds > 0);
    let uid = mover.uid.to_string();
    let seen_in_eu = fleet.get("eu", &format!("/api/v1/agents/{uid}")).await;
    assert_eq!(
        (
            &seen_in_eu["region"],
            &seen_in_eu["home_region"],
            &seen_in_eu["redirected_to"]
        ),
        (
            &Value::from("eu"),
            &Value::from("us"),
            &Value::from(fleet.endpoints["us"].clone())
        ),
        "{seen_in_eu}"
    );
    assert_eq!(seen_in_eu["roaming"], false);
    drop(ws);
    let mut ws = WsClient::connect(&offered.destination_endpoint)
        .await
        .unwrap();
    let reply = report(&mut ws, &mut mover).await;
    assert!(sends_nowhere(reply), "not sent anywhere from home");

    // It does not: served in eu, shown as roaming.
    let mut roamer = from_us(false);
    let mut roaming_ws = WsClient::connect(&fleet.endpoints["eu"]).await.unwrap();
    let reply = report(&mut roaming_ws, &mut roamer).await;
    assert!(sends_nowhere(reply));

    // From either region: the mover once, at home in us (what it left in eu is not counted
    // again), the roamer in eu; the list can be asked for either.
    for region in REGIONS {
        let started = Instant::now();
        let (mover_view, roamer_view) = loop {
            let page = fleet
                .get(region, "/api/v1/agents?selector=cloud.region%3Dus")
                .await;
            let agents = page["agents"].as_array().unwrap().clone();
            let find = |uid: &str| agents.iter().find(|a| a["instance_uid"] == uid).cloned();
            let mover_view = find(&uid).filter(|a| a["region"] == "us");
            let roamer_view = find(&roamer.uid.to_string());
            if page["total"] == 2
                && let (Some(m), Some(r)) = (mover_view, roamer_view)
            {
                break (m, r);
            }
            assert!(
                started.elapsed() < Duration::from_secs(15),
                "from {region}: {page}\n{}",
                fleet.logs()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        assert_eq!(
            (
                &mover_view["home_region"],
                &mover_view["roaming"],
                &mover_view["redirected_to"]
            ),
            (&Value::from("us"), &Value::Bool(false), &Value::Null),
            "{mover_view}"
        );
        assert_eq!(
            (
                &roamer_view["region"],
                &roamer_view["home_region"],
                &roamer_view["roaming"]
            ),
            (&Value::from("eu"), &Value::from("us"), &Value::Bool(true)),
            "{roamer_view}"
        );
        let detail = fleet.get(region, &format!("/api/v1/agents/{uid}")).await;
        assert_eq!(detail["region"], "us", "from {region}: {detail}");
    }
    drop((ws, roaming_ws));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_config_rolled_out_region_by_region_reaches_every_agent_one_region_after_the_other() {
    let _serial = SERIAL.lock().await;
    let fleet = Fleet::start().await;
    let eu_agents = agents_in(&fleet.regions["eu"], 2);
    let us_agents = agents_in(&fleet.regions["us"], 2);
    let api = fleet.api("eu");
    let hash = put_config(
        &fleet.regions["eu"],
        "staged",
        "env=test",
        "# staged\n",
        false,
    )
    .await;
    let started = Instant::now();
    let id = start_across(
        &fleet,
        serde_json::json!({"config": "staged", "regions": ["eu", "us"],
            "phases": {"percentages": [100]}, "soak": "1s"}),
    )
    .await;

    // eu's agents run it before any of us's does; then us's; then the rollout is completed.
    let (mut eu_done, mut us_first) = (None, None);
    let done = end_of(&fleet, &id, || {
        if eu_done.is_none() && eu_agents.iter().all(|a| a.applied() == hash) {
            eu_done = Some(started.elapsed());
        }
        if us_first.is_none() && us_agents.iter().any(|a| a.applied() == hash) {
            us_first = Some(started.elapsed());
        }
    })
    .await;
    eprintln!(
        "rollout across regions: eu's agents all ran it at {eu_done:?}, us's first at {us_first:?}, \
         completed at {:?}: {done}",
        started.elapsed()
    );
    assert_eq!(done["state"], "completed", "{done}");
    assert!(us_first.is_some_and(|us| eu_done.is_some_and(|eu| eu <= us)));
    let all: Vec<LiveAgent> = eu_agents.into_iter().chain(us_agents).collect();
    wait_applied(&all, &hash, Duration::from_secs(10)).await;
    // Each region ran its own part, visible there as a rollout.
    for region in REGIONS {
        let part = fleet
            .get(region, &format!("/api/v1/rollouts/{id}-{region}"))
            .await;
        assert_eq!(part["state"], "completed", "{region}: {part}");
        let config = fleet.get(region, "/api/v1/configs/staged").await;
        assert_eq!(config["hash"], hash.as_str(), "{region}: {config}");
    }

    // As the CLI shows it.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_flotilla"))
        .args(["ctl", "--api", api, "rollouts", "status", &id, "--regions"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("across regions: completed"), "{text}");
    for region in REGIONS {
        assert!(text.contains(&format!("{id}-{region}")), "{text}");
    }

    // And as gRPC shows it, with the audit log of every region.
    let mut grpc = AdminClient::connect(api.to_owned()).await.unwrap();
    let listed = grpc
        .list_region_rollouts(pb::ListRolloutsRequest {})
        .await
        .unwrap()
        .into_inner();
    let r = &listed.rollouts[0];
    assert_eq!(
        (r.id.as_str(), r.state.as_str()),
        (id.as_str(), "completed")
    );
    let parts: Vec<(&str, &str)> = r
        .regions
        .iter()
        .map(|p| (p.region.as_str(), p.state.as_str()))
        .collect();
    assert_eq!(parts, [("eu", "completed"), ("us", "completed")]);
    let audit = grpc
        .query_audit(pb::QueryAuditRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(!audit.partial);
    assert!(
        audit
            .entries
            .iter()
            .any(|e| e.region == "us" && e.action == "rollout.completed")
    );

    // Refused: a region the fleet does not have.
    let r = reqwest::Client::new()
        .post(format!("{api}/api/v1/region-rollouts"))
        .json(
            &serde_json::json!({"config": "staged", "regions": ["eu", "ap"],
            "phases": {"percentages": [100]}}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_region_that_rolls_back_stops_the_rollout_before_the_next_region() {
    let _serial = SERIAL.lock().await;
    let fleet = Fleet::start().await;
    // eu's agents fail every config that says BROKEN; us's would take it.
    let eu_agents: Vec<LiveAgent> = (0..2)
        .map(|i| {
            let mut a = SimAgent::new("io.opentelemetry.collector", &[("env", "test")]);
            a.fail_marker = Some("BROKEN".into());
            ws_sim_agent(a, fleet.regions["eu"].ws_urls(), i, HB)
        })
        .collect();
    let us_agents = agents_in(&fleet.regions["us"], 2);
    let hash = put_config(
        &fleet.regions["eu"],
        "risky",
        "env=test",
        "# BROKEN\n",
        false,
    )
    .await;
    let started = Instant::now();
    let id = start_across(
        &fleet,
        serde_json::json!({"config": "risky", "regions": ["eu", "us"],
            "phases": {"percentages": [100]}, "soak": "1s",
            "error_budget": {"max_failure_percent": 10, "min_sample": 1, "action": "rollback"}}),
    )
    .await;
    let done = end_of(&fleet, &id, || {}).await;
    eprintln!(
        "eu rolled back, the rollout stopped after {:?}: {done}",
        started.elapsed()
    );
    assert_eq!(done["state"], "rolled_back", "{done}");
    assert!(
        done["reason"].as_str().unwrap().contains("region eu"),
        "{done}"
    );
    assert_eq!(done["regions"][0]["state"], "rolled_back", "{done}");
    assert_eq!(
        done["regions"][1]["state"],
        Value::Null,
        "us never started: {done}"
    );
    // us never started its part, and its agents never got the version.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (status, _) = fleet.regions["us"]
        .get(fleet.api("us"), &format!("/api/v1/rollouts/{id}-us"))
        .await;
    assert_eq!(status, 404);
    assert!(us_agents.iter().all(|a| a.applied() != hash));
    assert!(eu_agents.iter().all(|a| a.applied() != hash));
}
