//! The clustered mode, end to end: real nats-server and redis-server processes, coordinators and
//! gateways as separate `flotilla serve` processes, agents over WebSocket and HTTP, and the faults
//! the cluster must survive. One test at a time (they measure failover times).

mod cluster_support;

use cluster_support::{
    Cluster, LiveAgent, REGION, SERIAL, TcpProxy, http_agent, wait_applied, ws_agent,
};
use flotilla_common::bus::{Bus, NatsBus};
use flotilla_common::names::shard_of;
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

const HB: Duration = Duration::from_secs(2);
const HB_FLAG: [&str; 2] = ["--heartbeat-interval", "2s"];

fn ws_agents(c: &Cluster, n: usize) -> Vec<LiveAgent> {
    (0..n).map(|i| ws_agent(c.ws_urls(), i, HB)).collect()
}

async fn wait_known(c: &Cluster, n: u64) {
    let connected = |h: &serde_json::Value| h["connected_agents"].as_u64() == Some(n);
    c.get_until("/api/v1/fleet/health", Duration::from_secs(20), connected)
        .await;
}

/// Waits (a few seconds at most) for a node's /readyz to answer 200.
async fn wait_ready(c: &Cluster, api: &str) {
    let started = Instant::now();
    while c.get(api, "/readyz").await.0 != 200 {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{api} not ready\n{}",
            c.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Unavailable answers given to agents by every gateway (WS errors and HTTP 503s).
async fn unavailable(c: &Cluster) -> f64 {
    let mut n = 0.0;
    for g in &c.gateways {
        n += c
            .metric(
                &g.api,
                "flotilla_gateway_rejected_total{reason=\"unavailable\"",
            )
            .await
            .unwrap_or(0.0);
    }
    n
}

/// Store calls of operation `op` so far, over every coordinator.
async fn store_calls(c: &Cluster, op: &str) -> f64 {
    let series = format!("flotilla_store_seconds_count{{backend=\"redis\",op=\"{op}\"");
    let mut n = 0.0;
    for coord in &c.coordinators {
        n += c.metric(&coord.api, &series).await.unwrap_or(0.0);
    }
    n
}

#[tokio::test]
async fn config_and_restart_reach_agents_spread_across_gateways() {
    let _serial = SERIAL.lock().await;
    let c = Cluster::start(3, 2, &HB_FLAG).await;
    let mut agents = ws_agents(&c, 20);
    agents.extend((0..10).map(|i| http_agent(c.http_urls(), i, Duration::from_secs(1))));
    wait_known(&c, 30).await;
    let gateways: BTreeSet<usize> = agents
        .iter()
        .map(|a| a.view.lock().unwrap().gateway)
        .collect();
    assert_eq!(gateways.len(), 2, "agents use both gateways");

    // Stored through one coordinator, pushed by the owners of all shards, through both gateways.
    let hash = c
        .put_config(&c.coordinators[1].api, "base", "receivers: {otlp: {}}")
        .await;
    let took = wait_applied(&agents, &hash, Duration::from_secs(10)).await;
    println!("config applied by 30 agents on 2 gateways in {took:?}");

    // Once the agents are known, what they send changes nothing but their sequence numbers and
    // last-seen times: their owners write just those (touches), not their records; and the
    // owners' walks read no store.
    let (saves, touches, visits) = (
        store_calls(&c, "save_agent").await,
        store_calls(&c, "touch_agent").await,
        store_calls(&c, "visit_agents").await,
    );
    tokio::time::sleep(Duration::from_secs(6)).await;
    let saved = store_calls(&c, "save_agent").await - saves;
    let touched = store_calls(&c, "touch_agent").await - touches;
    let visited = store_calls(&c, "visit_agents").await - visits;
    println!(
        "in 6 s of heartbeats and polls: {saved} saves, {touched} touches, {visited} walks of the store"
    );
    assert!(touched >= 40.0, "{touched} touches");
    assert!(saved * 4.0 < touched, "{saved} saves, {touched} touches");
    // The owners' walks over their agents (alerts every 5 s, gauges, retention) read their
    // copies once those are the whole shard, not the store.
    assert_eq!(visited, 0.0, "the owners' walks read the store");
    // The copies keep health trees encoded: what the owners wrote from them (the configs'
    // statuses) still has every component.
    let path = format!("/api/v1/agents/{}", agents[0].uid);
    let (_, detail) = c.get(c.api(), &path).await;
    let traces = &detail["health"]["components"]["pipeline:traces"];
    assert_eq!(
        traces["components"]["receiver:otlp"]["healthy"], true,
        "{detail}"
    );
    assert_eq!(
        detail["remote_config_status"]["status"], "APPLIED",
        "{detail}"
    );
    // Every coordinator reads the records' description and health kept apart (ADR 0016), so
    // they are stored so: the record (field r) has neither, fields d and k have them.
    let key = format!(
        "opamp:{REGION}:{{s{:04}}}:a:{}",
        shard_of(agents[0].uid.as_bytes()),
        agents[0].uid
    );
    let (r, d, k): (Vec<u8>, Option<Vec<u8>>, Option<Vec<u8>>) = redis::cmd("HMGET")
        .arg(&key)
        .arg(&["r", "d", "k"][..])
        .query_async(&mut c.redis_conn().await)
        .await
        .unwrap();
    let r = <flotilla_proto::bus::AgentRecord as prost::Message>::decode(r.as_slice()).unwrap();
    assert!(r.description.is_none() && r.health.is_none(), "{r:?}");
    assert!(d.is_some() && k.is_some(), "parts apart: {d:?} {k:?}");

    // Every coordinator's API sees the whole fleet and where each agent is connected.
    for coord in &c.coordinators {
        let (_, h) = c.get(&coord.api, "/api/v1/fleet/health").await;
        assert_eq!(h["total_agents"], 30, "{}: {h}", coord.id);
    }
    // A list page is answered by the shard owners from their copies: no walk of the store; the
    // same page through every coordinator, and pages through the cursor meet every agent once.
    let visits = store_calls(&c, "visit_agents").await;
    let newest = "/api/v1/agents?limit=7&sort=last_seen&order=desc&status=connected";
    let (_, first) = c.get(&c.coordinators[0].api, newest).await;
    assert_eq!(first["total"], 30, "{first}");
    let uids = |page: &serde_json::Value| -> Vec<String> {
        page["agents"]
            .as_array()
            .map(|a| a.iter().map(|a| a["instance_uid"].to_string()).collect())
            .unwrap_or_default()
    };
    // RFC 3339 with milliseconds, fixed width: text order is time order.
    let seen: Vec<&str> = first["agents"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["last_seen"].as_str().unwrap())
        .collect();
    assert_eq!(seen.len(), 7);
    assert!(
        seen.windows(2).all(|w| w[0] >= w[1]),
        "newest first: {seen:?}"
    );
    let mut met = BTreeSet::new();
    let mut cursor = String::new();
    loop {
        let path = format!("/api/v1/agents?limit=8&cursor={cursor}");
        let (status, page) = c.get(&c.coordinators[2].api, &path).await;
        assert_eq!(status, 200, "{page}");
        assert_eq!(page["total"], 30, "{page}");
        let page_uids = uids(&page);
        assert!(page_uids.windows(2).all(|w| w[0] < w[1]), "{page_uids:?}");
        met.extend(page_uids);
        match page["next_cursor"].as_str() {
            Some(next) => cursor = next.to_owned(),
            None => break,
        }
    }
    assert_eq!(met.len(), 30, "every agent once through the cursor");
    let visited = store_calls(&c, "visit_agents").await - visits;
    assert_eq!(visited, 0.0, "a list page walked the store");

    let a = &agents[1];
    let (_, view) = c
        .get(&c.coordinators[2].api, &format!("/api/v1/agents/{}", a.uid))
        .await;
    assert_eq!(view["remote_config_status"]["status"], "APPLIED");
    assert_eq!(view["remote_config_status"]["hash"], hash.as_str());
    let expected_gw = format!("g{}", a.view.lock().unwrap().gateway + 1);
    assert_eq!(view["gateway"], expected_gw.as_str());

    // A restart asked of a coordinator that does not own the agent goes to the owner, which
    // delivers it over the agent's live WebSocket.
    let owner = c.owner_of(a.uid).await.expect("owned");
    let asked = c.api_except(&owner).to_owned();
    let r = reqwest::Client::new()
        .post(format!("{asked}/api/v1/agents/{}/restart", a.uid))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 202);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["delivered"], true, "{body}");
    let (status, _) = c
        .get(c.api(), &format!("/api/v1/agents/{}", uuid::Uuid::now_v7()))
        .await;
    assert_eq!(status, 404);

    // An agent that goes away is written disconnected from its owner's copy (nothing decoded):
    // its detail keeps its health tree; and a list asked again with the same filters, which the
    // owners answer from what their last walk took while only touches changed (ADR 0019), no
    // longer counts it.
    let connected = "/api/v1/agents?status=connected&limit=50";
    let (_, before) = c.get(c.api(), connected).await;
    assert_eq!(before["total"], 30, "{before}");
    let gone = agents.remove(0);
    let gone_uid = gone.uid;
    drop(gone);
    c.get_until(connected, Duration::from_secs(10), |now| now["total"] == 29)
        .await;
    let (_, detail) = c.get(c.api(), &format!("/api/v1/agents/{gone_uid}")).await;
    assert_eq!(detail["status"], "disconnected", "{detail}");
    let traces = &detail["health"]["components"]["pipeline:traces"];
    assert_eq!(
        traces["components"]["receiver:otlp"]["healthy"], true,
        "{detail}"
    );
}

#[tokio::test]
async fn graceful_handoff_loses_no_uplink() {
    let _serial = SERIAL.lock().await;
    let mut c = Cluster::start(3, 2, &HB_FLAG).await;
    let agents = ws_agents(&c, 30);
    wait_known(&c, 30).await;
    let refused_before = unavailable(&c).await;

    // SIGTERM: the coordinator hands its shards over (drain, release, announce) and exits.
    let started = Instant::now();
    let code = c.coordinator("c3").proc.terminate(Duration::from_secs(20));
    assert_eq!(code, Some(0), "{}", c.logs());
    let gap = c
        .wait_shards_owned_by(&["c3"], Duration::from_secs(5))
        .await
        .max(started.elapsed());
    println!("graceful handoff: all shards owned by the others {gap:?} after SIGTERM");

    // Uplinks through the handoff were all answered.
    let hash = c.put_config(c.api(), "base", "a: 1").await;
    wait_applied(&agents, &hash, Duration::from_secs(10)).await;
    tokio::time::sleep(HB * 2).await;
    assert_eq!(
        unavailable(&c).await,
        refused_before,
        "an uplink failed during the handoff"
    );

    // A new coordinator joins: shards move to it gradually, again without failures.
    c.add_coordinator("c4");
    let started = Instant::now();
    loop {
        let n = c
            .metric(&c.coordinators[3].api, "flotilla_coordinator_owned_shards")
            .await;
        if n.unwrap_or(0.0) >= 250.0 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "c4 got no share\n{}",
            c.logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    println!(
        "rebalance to a joining coordinator: {:?}",
        started.elapsed()
    );
    c.wait_shards_owned_by(&["c3"], Duration::from_secs(10))
        .await;
    tokio::time::sleep(HB * 2).await;
    assert_eq!(
        unavailable(&c).await,
        refused_before,
        "an uplink failed during rebalancing"
    );
}

#[tokio::test]
async fn a_killed_coordinator_is_replaced_within_the_lease_ttl_and_loses_no_config() {
    let _serial = SERIAL.lock().await;
    let mut c = Cluster::start(3, 2, &HB_FLAG).await;
    let agents = ws_agents(&c, 30);
    wait_known(&c, 30).await;
    let owned_by_c1 = c
        .metric(&c.coordinators[0].api, "flotilla_coordinator_owned_shards")
        .await
        .unwrap();
    assert!(owned_by_c1 > 0.0);

    let killed = Instant::now();
    c.coordinator("c1").proc.kill();
    // While nobody owns its shards, a list reads them from the store once the live owners have
    // answered and the dead one had 5 s more: the whole fleet still.
    let listed = Instant::now();
    let page: serde_json::Value = reqwest::Client::new()
        .get(format!("{}/api/v1/agents?limit=5", c.coordinators[1].api))
        .timeout(Duration::from_secs(15))
        .send()
        .await
        .expect("the list answers")
        .json()
        .await
        .expect("a page");
    println!("a list while an owner is dead: {:?}", listed.elapsed());
    assert_eq!(page["total"], 30, "{page}");
    assert_eq!(page["agents"].as_array().map(Vec::len), Some(5), "{page}");
    // A config stored during the gap, through a survivor.
    let hash = c
        .put_config(&c.coordinators[1].api, "base", "during: gap")
        .await;
    let served = c
        .wait_shards_owned_by(&["c1"], Duration::from_secs(25))
        .await
        .max(killed.elapsed());
    let converged = wait_applied(&agents, &hash, Duration::from_secs(25)).await;
    let converged = converged.max(killed.elapsed());
    println!(
        "kill -9 of a coordinator owning {owned_by_c1} shards: all shards served again after \
         {served:?}; every agent applied the config stored in the gap after {converged:?}"
    );
    // Lease TTL (15 s) + the 1 s acquisition tick + a little.
    assert!(served < Duration::from_secs(18), "{served:?}");
}

#[tokio::test]
async fn a_paused_owner_writes_nothing_and_gives_its_shards_up() {
    let _serial = SERIAL.lock().await;
    let c = Cluster::start(3, 2, &HB_FLAG).await;
    let agents = ws_agents(&c, 30);
    wait_known(&c, 30).await;

    // The epochs under which c1 holds its shards now.
    let mut conn = c.redis_conn().await;
    let mut c1_epochs: BTreeMap<u16, String> = BTreeMap::new();
    for shard in agents.iter().map(|a| shard_of(a.uid.as_bytes())) {
        let key = format!("opamp:{REGION}:{{s{shard:04}}}:lease");
        let v: Option<String> = redis::cmd("GET")
            .arg(&key)
            .query_async(&mut conn)
            .await
            .unwrap();
        if let Some((node, epoch)) = v.as_deref().and_then(|v| v.split_once('/'))
            && node == "c1"
        {
            c1_epochs.insert(shard, epoch.to_owned());
        }
    }
    assert!(!c1_epochs.is_empty(), "c1 owns some agents' shards");

    let c1 = &c.coordinators[0];
    c1.proc.pause();
    c.wait_shards_owned_by(&["c1"], Duration::from_secs(25))
        .await;
    // Agents keep reporting while c1 sleeps: their messages also queue up for c1 in NATS.
    tokio::time::sleep(HB * 2).await;
    c1.proc.resume();
    tokio::time::sleep(Duration::from_secs(3)).await;

    let lost = c
        .metric(
            &c1.api,
            "flotilla_coordinator_shard_changes_total{change=\"lost\"",
        )
        .await
        .unwrap();
    let dropped = c
        .metric(
            &c1.api,
            "flotilla_coordinator_uplinks_total{result=\"not_owner\"",
        )
        .await
        .unwrap();
    println!("after SIGCONT c1 dropped {lost} lapsed shards and {dropped} stale uplinks");
    assert!(lost > 0.0, "c1 gave nothing up\n{}", c1.proc.log_tail(30));
    assert!(dropped > 0.0, "c1 had queued uplinks to drop");

    // No agent record of c1's former shards was written under c1's old epoch after the pause.
    for a in &agents {
        let shard = shard_of(a.uid.as_bytes());
        let Some(old) = c1_epochs.get(&shard) else {
            continue;
        };
        let key = format!("opamp:{REGION}:{{s{shard:04}}}:a:{}", a.uid);
        let e: String = redis::cmd("HGET")
            .arg(&key)
            .arg("e")
            .query_async(&mut conn)
            .await
            .unwrap();
        assert_ne!(&e, old, "agent {} written under c1's stale epoch", a.uid);
    }
    // And the cluster still serves everybody.
    let hash = c.put_config(c.api(), "base", "after: pause").await;
    wait_applied(&agents, &hash, Duration::from_secs(15)).await;
}

#[tokio::test]
async fn a_coordinator_cut_off_from_nats_lets_its_shards_go_and_takes_them_back_when_healed() {
    let _serial = SERIAL.lock().await;
    let mut c = Cluster::start(2, 2, &HB_FLAG).await;
    let proxy = TcpProxy::start(c.nats.port);
    c.add_coordinator_via("c3", &format!("nats://127.0.0.1:{}", proxy.port));
    c.wait_balanced(Duration::from_secs(30)).await;
    let agents = ws_agents(&c, 30);
    wait_known(&c, 30).await;

    // c3 still reaches Redis, but hears no uplinks: it must not keep its shards.
    proxy.cut();
    let cut = Instant::now();
    let served = c
        .wait_shards_owned_by(&["c3"], Duration::from_secs(25))
        .await
        .max(cut.elapsed());
    let hash = c.put_config(c.api(), "base", "partition: nats").await;
    wait_applied(&agents, &hash, Duration::from_secs(10)).await;
    let (status, _) = c.get(&c.coordinators[2].api, "/readyz").await;
    assert_eq!(status, 503, "c3 reports not ready while cut off");
    println!("coordinator cut off from NATS: its shards served by the others after {served:?}");

    proxy.heal();
    c.wait_balanced(Duration::from_secs(30)).await;
    let hash = c.put_config(c.api(), "base", "healed: true").await;
    wait_applied(&agents, &hash, Duration::from_secs(10)).await;
}

#[tokio::test]
async fn agents_of_a_killed_gateway_reconnect_to_another_and_converge() {
    let _serial = SERIAL.lock().await;
    let mut c = Cluster::start(3, 2, &HB_FLAG).await;
    // Every agent starts on g1.
    let agents: Vec<LiveAgent> = (0..20).map(|_| ws_agent(c.ws_urls(), 0, HB)).collect();
    wait_known(&c, 20).await;
    c.gateways[0].proc.kill();
    let killed = Instant::now();
    let hash = c.put_config(c.api(), "base", "moved: true").await;
    let took = wait_applied(&agents, &hash, Duration::from_secs(15))
        .await
        .max(killed.elapsed());
    println!("gateway kill -9: 20 agents reconnected to g2 and applied a new config in {took:?}");
    for a in &agents {
        assert_eq!(a.view.lock().unwrap().gateway, 1);
        let (_, v) = c.get(c.api(), &format!("/api/v1/agents/{}", a.uid)).await;
        assert_eq!(v["gateway"], "g2", "{v}");
        assert_eq!(v["status"], "connected");
    }
}

#[tokio::test]
async fn the_cluster_recovers_by_itself_from_a_redis_restart() {
    let _serial = SERIAL.lock().await;
    let mut c = Cluster::start(3, 2, &HB_FLAG).await;
    let agents = ws_agents(&c, 20);
    wait_known(&c, 20).await;
    let hash = c.put_config(c.api(), "base", "before: redis").await;
    wait_applied(&agents, &hash, Duration::from_secs(10)).await;

    // Down longer than the 10 s a coordinator acts without renewing: every lease lapses.
    c.redis.proc.kill();
    tokio::time::sleep(Duration::from_secs(12)).await;
    c.redis.proc.restart();
    c.redis.wait_ready();
    let back = Instant::now();
    // Every coordinator is ready again and the shards are all owned.
    c.wait_all_shards_owned(Duration::from_secs(30)).await;
    for coord in &c.coordinators {
        wait_ready(&c, &coord.api).await;
    }
    let hash = c.put_config(c.api(), "base", "after: redis").await;
    let took = wait_applied(&agents, &hash, Duration::from_secs(20)).await;
    println!(
        "Redis down 12 s (kill -9, restart with its append-only file): recovered, config applied \
         {:?} after Redis was back",
        took.max(back.elapsed())
    );
    let (_, configs) = c.get(c.api(), "/api/v1/configs/base").await;
    assert_eq!(configs["version"], 2, "config versions survived: {configs}");
}

#[tokio::test]
async fn the_cluster_recovers_by_itself_from_a_nats_restart() {
    let _serial = SERIAL.lock().await;
    let mut c = Cluster::start(3, 2, &HB_FLAG).await;
    let agents = ws_agents(&c, 20);
    wait_known(&c, 20).await;

    c.nats.proc.kill();
    tokio::time::sleep(Duration::from_secs(2)).await;
    c.nats.restart();
    let back = Instant::now();
    let hash = c.put_config(c.api(), "base", "after: nats").await;
    let took = wait_applied(&agents, &hash, Duration::from_secs(20)).await;
    println!(
        "NATS down 2 s (kill -9, restart): config applied by all agents {:?} after NATS was back",
        took.max(back.elapsed())
    );
    for node in c.gateways.iter().chain(&c.coordinators) {
        wait_ready(&c, &node.api).await;
    }
}

#[tokio::test]
async fn vanished_agents_are_marked_silent_once_even_when_their_owner_dies() {
    let _serial = SERIAL.lock().await;
    // Short leases so the owner's death falls inside the 3-heartbeat silence window.
    let c = Cluster::start(3, 2, &["--heartbeat-interval", "3s", "--lease-ttl", "4s"]).await;
    let hb = Duration::from_secs(3);
    let events = NatsBus::connect(&c.nats.url(), "test", &Default::default())
        .await
        .unwrap();
    let mut silent = events
        .subscribe(&format!("opamp.{REGION}.evt.silent"))
        .await
        .unwrap();

    let ws: Vec<LiveAgent> = (0..12).map(|i| ws_agent(c.ws_urls(), i, hb)).collect();
    let http: Vec<LiveAgent> = (0..6).map(|i| http_agent(c.http_urls(), i, hb)).collect();
    wait_known(&c, 18).await;
    // 10 agents vanish (WS left open but mute, HTTP pollers stop); the rest keep reporting.
    let vanishing: Vec<&LiveAgent> = ws[..6].iter().chain(&http[..4]).collect();
    let staying: Vec<&LiveAgent> = ws[6..].iter().chain(&http[4..]).collect();
    let vanished = Instant::now();
    for a in &vanishing {
        a.vanish.cancel();
    }
    // Kill the coordinator owning the most vanished agents.
    let mut owners: BTreeMap<String, usize> = BTreeMap::new();
    for a in &vanishing {
        *owners.entry(c.owner_of(a.uid).await.unwrap()).or_default() += 1;
    }
    let (victim, n) = owners.iter().max_by_key(|(_, n)| **n).unwrap();
    println!(
        "killing {victim}, owner of {n} of the {} vanished agents",
        vanishing.len()
    );
    let victim = victim.clone();
    let mut c = c;
    c.coordinator(&victim).proc.kill();

    let expected: BTreeSet<uuid::Uuid> = vanishing.iter().map(|a| a.uid).collect();
    let mut seen: BTreeMap<uuid::Uuid, u32> = BTreeMap::new();
    let mut last = Duration::ZERO;
    // 3 intervals (9 s) + a few seconds, then a while longer to catch any duplicate.
    let until = vanished + Duration::from_secs(20);
    while Instant::now() < until {
        let left = until.saturating_duration_since(Instant::now());
        let Ok(Some(ev)) = tokio::time::timeout(left, silent.next()).await else {
            break;
        };
        let body: serde_json::Value = serde_json::from_slice(&ev.msg.payload).unwrap();
        let uid: uuid::Uuid = body["instance_uid"].as_str().unwrap().parse().unwrap();
        *seen.entry(uid).or_default() += 1;
        last = last.max(vanished.elapsed());
    }
    let once: BTreeSet<uuid::Uuid> = seen
        .iter()
        .filter(|(_, n)| **n == 1)
        .map(|(u, _)| *u)
        .collect();
    assert_eq!(
        seen.keys().copied().collect::<BTreeSet<_>>(),
        expected,
        "silent events: {seen:?}"
    );
    assert_eq!(once, expected, "each silent exactly once: {seen:?}");
    println!(
        "{} vanished agents marked silent once each, the last {last:?} after vanishing",
        expected.len()
    );
    assert!(last <= hb * 3 + Duration::from_secs(5), "{last:?}");
    for a in staying {
        let (_, v) = c
            .get(c.api_except(&victim), &format!("/api/v1/agents/{}", a.uid))
            .await;
        assert_eq!(v["status"], "connected", "{v}");
    }
}
