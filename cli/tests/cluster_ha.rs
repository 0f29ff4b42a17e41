//! The cluster on highly available dependencies, as deploy/kubernetes runs it: Redis as a primary
//! and a replica watched by three real `redis-sentinel`s, and NATS as a cluster of three real
//! `nats-server`s. Each test loses one of them (the Redis primary; one NATS server) and checks
//! that the Flotilla cluster carries on: agents keep being served, and fencing still holds.

mod cluster_support;

use cluster_support::{Backends, Cluster, LiveAgent, REGION, SERIAL, wait_applied, ws_agent};
use flotilla_common::names::shard_of;
use flotilla_testkit::{NatsServer, RedisSentinel, RedisServer, free_port};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

const HB: Duration = Duration::from_secs(2);
const FLAGS: [&str; 4] = ["--heartbeat-interval", "2s", "--lease-ttl", "3s"];
const MASTER: &str = "flotilla";
/// Redis, its replica and the Sentinels share one password, as deploy/kubernetes sets them up.
const PASSWORD: &str = "s3cret";

fn ws_agents(c: &Cluster, n: usize) -> Vec<LiveAgent> {
    (0..n).map(|i| ws_agent(c.ws_urls(), i, HB)).collect()
}

/// Stores a config through any coordinator that takes it (some may answer 503 while their store
/// or bus fails over), within `timeout`; returns its hash.
async fn push_config(c: &Cluster, body: &str, timeout: Duration) -> String {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(3))
        .build()
        .unwrap();
    let started = Instant::now();
    loop {
        for node in &c.coordinators {
            let sent = http
                .put(format!("{}/api/v1/configs/base", node.api))
                .json(&serde_json::json!({"selector": {}, "files": {"collector.yaml": body}}))
                .send()
                .await;
            if let Ok(r) = sent
                && r.status().is_success()
            {
                let v: serde_json::Value = r.json().await.unwrap();
                return v["hash"].as_str().unwrap().to_owned();
            }
        }
        assert!(
            started.elapsed() < timeout,
            "no coordinator took a config within {timeout:?}\n{}",
            c.logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn connect(port: u16) -> redis::aio::MultiplexedConnection {
    redis::Client::open(format!("redis://:{PASSWORD}@127.0.0.1:{port}"))
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

/// `(node, epoch)` of every shard's lease, read from the Redis on `port`.
async fn leases(port: u16) -> BTreeMap<u16, (String, u64)> {
    let mut conn = connect(port).await;
    let mut pipe = redis::pipe();
    for shard in 0..1024u16 {
        pipe.get(format!("opamp:{REGION}:{{s{shard:04}}}:lease"));
    }
    let values: Vec<Option<String>> = pipe.query_async(&mut conn).await.unwrap();
    (0..1024u16)
        .zip(values)
        .filter_map(|(shard, v)| {
            let (node, epoch) = v?
                .split_once('/')
                .map(|(n, e)| (n.to_owned(), e.to_owned()))?;
            Some((shard, (node, epoch.parse().ok()?)))
        })
        .collect()
}

/// Waits until the replica on `replica` has everything the primary on `primary` wrote, so the
/// failover below loses nothing the test checks (replication is asynchronous: docs/deploy.md).
async fn wait_replicated(primary: u16, replica: u16) {
    let offset = |info: String, field: &str| -> Option<u64> {
        info.lines()
            .find_map(|l| l.strip_prefix(field)?.trim().parse().ok())
    };
    let (mut p_conn, mut r_conn) = (connect(primary).await, connect(replica).await);
    let started = Instant::now();
    loop {
        let (p, r) = (
            offset(info_replication(&mut p_conn).await, "master_repl_offset:"),
            offset(info_replication(&mut r_conn).await, "slave_repl_offset:"),
        );
        if p.is_some() && r >= p {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "replica behind: primary at {p:?}, replica at {r:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn info_replication(conn: &mut redis::aio::MultiplexedConnection) -> String {
    redis::cmd("INFO")
        .arg("replication")
        .query_async(conn)
        .await
        .unwrap()
}

/// What a Sentinel knows of the primary: `replicas` or (other) `sentinels`, one entry each.
async fn sentinel_knows(conn: &mut redis::aio::MultiplexedConnection, what: &str) -> usize {
    let known: Vec<redis::Value> = redis::cmd("SENTINEL")
        .arg(what)
        .arg(MASTER)
        .query_async(conn)
        .await
        .unwrap();
    known.len()
}

/// What a Sentinel names as the primary's port.
async fn primary_port(sentinel: u16) -> Option<u16> {
    let addr: Option<(String, String)> = redis::cmd("SENTINEL")
        .arg("get-master-addr-by-name")
        .arg(MASTER)
        .query_async(&mut connect(sentinel).await)
        .await
        .ok()?;
    addr?.1.parse().ok()
}

#[tokio::test]
async fn the_cluster_carries_on_when_sentinel_fails_the_redis_primary_over() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let auth = ["--requirepass", PASSWORD, "--masterauth", PASSWORD].map(String::from);
    let primary = RedisServer::start_with(&dir.path().join("primary"), &auth);
    let replica_of = [
        "--replicaof".into(),
        "127.0.0.1".into(),
        primary.port.to_string(),
    ];
    let replica = RedisServer::start_with(
        &dir.path().join("replica"),
        &[&auth[..], &replica_of[..]].concat(),
    );
    let sentinels: Vec<RedisSentinel> = (1..=3)
        .map(|i| {
            let dir = dir.path().join(format!("s{i}"));
            RedisSentinel::start(&dir, MASTER, primary.port, Some(PASSWORD))
        })
        .collect();
    // A failover needs the Sentinels to know the replica and each other (their hello messages).
    let mut conn = connect(sentinels[0].port).await;
    let started = Instant::now();
    loop {
        if sentinel_knows(&mut conn, "replicas").await == 1
            && sentinel_knows(&mut conn, "sentinels").await == 2
        {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "Sentinels did not find the replica and each other"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let addrs: Vec<String> = sentinels.iter().map(RedisSentinel::addr).collect();
    let redis_url = format!("redis+sentinel://:{PASSWORD}@{}/{MASTER}", addrs.join(","));
    let nats = NatsServer::start(dir.path());
    let backends = Backends {
        nats_url: nats.url(),
        redis_url,
        nats,
        redis: primary,
        dir,
    };
    let mut c = Cluster::start_on(backends, 2, 1, &FLAGS, Default::default()).await;
    let agents = ws_agents(&c, 20);
    let hash = push_config(&c, "before: failover", Duration::from_secs(10)).await;
    wait_applied(&agents, &hash, Duration::from_secs(15)).await;
    let before = leases(c.redis.port).await;
    assert_eq!(before.len(), 1024, "every shard leased before the failover");
    wait_replicated(c.redis.port, replica.port).await;

    // The primary dies; Sentinel promotes the replica; the coordinators find it by themselves.
    c.redis.proc.kill();
    let killed = Instant::now();
    loop {
        if primary_port(sentinels[1].port).await == Some(replica.port) {
            break;
        }
        assert!(
            killed.elapsed() < Duration::from_secs(30),
            "Sentinel did not promote the replica\n{}",
            sentinels[1].proc.log_tail(20)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let promoted = killed.elapsed();
    let hash = push_config(&c, "after: failover", Duration::from_secs(30)).await;
    wait_applied(&agents, &hash, Duration::from_secs(20)).await;
    let recovered = killed.elapsed();
    println!(
        "Redis primary killed: Sentinel promoted the replica after {promoted:?}; a config \
         pushed after that reached all {} agents {recovered:?} after the kill",
        agents.len()
    );
    c.wait_all_shards_owned(Duration::from_secs(20)).await;

    // Fencing on the promoted primary: c1 stops; c2 takes its shards under higher epochs; c1,
    // resumed, writes nothing under its old ones.
    let after = leases(replica.port).await;
    assert!(
        after.iter().all(|(s, (_, e))| *e >= before[s].1),
        "an epoch went backwards across the failover"
    );
    let c1_shards: BTreeMap<u16, u64> = after
        .iter()
        .filter(|(_, (node, _))| node == "c1")
        .map(|(s, (_, e))| (*s, *e))
        .collect();
    assert!(!c1_shards.is_empty(), "c1 holds shards after the failover");
    c.coordinator("c1").proc.pause();
    c.wait_shards_owned_by(&["c1"], Duration::from_secs(20))
        .await;
    let taken = leases(replica.port).await;
    for (shard, old) in &c1_shards {
        let (node, epoch) = &taken[shard];
        assert!(
            node == "c2" && epoch > old,
            "shard {shard}: {node}/{epoch} after c1's {old}"
        );
    }
    tokio::time::sleep(HB * 2).await;
    c.coordinator("c1").proc.resume();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut conn = connect(replica.port).await;
    for a in &agents {
        let shard = shard_of(a.uid.as_bytes());
        let Some(old) = c1_shards.get(&shard) else {
            continue;
        };
        let key = format!("opamp:{REGION}:{{s{shard:04}}}:a:{}", a.uid);
        let e: u64 = redis::cmd("HGET")
            .arg(&key)
            .arg("e")
            .query_async(&mut conn)
            .await
            .unwrap();
        assert_ne!(e, *old, "agent {} written under c1's stale epoch", a.uid);
    }
    let hash = push_config(&c, "after: pause", Duration::from_secs(10)).await;
    wait_applied(&agents, &hash, Duration::from_secs(15)).await;
}

/// Three `nats-server`s routed into one cluster, each with its own directory and ports.
fn nats_cluster(dir: &std::path::Path) -> Vec<NatsServer> {
    let routes: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let urls: Vec<String> = routes
        .iter()
        .map(|p| format!("nats-route://127.0.0.1:{p}"))
        .collect();
    (0..3)
        .map(|i| {
            let own = dir.join(format!("nats{i}"));
            std::fs::create_dir_all(&own).unwrap();
            NatsServer::start_with_config(
                &own,
                &format!(
                    "server_name: n{i}\ncluster {{\n  name: flotilla\n  listen: 127.0.0.1:{}\n  \
                     routes: [{}]\n}}\n",
                    routes[i],
                    urls.join(", ")
                ),
            )
        })
        .collect()
}

#[tokio::test]
async fn the_cluster_carries_on_when_one_of_three_nats_servers_dies() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let mut servers = nats_cluster(dir.path());
    let redis = RedisServer::start(dir.path());
    // Every process is given the first server only, the one that dies: they must find the
    // other two from the cluster's own gossip (deploy/kubernetes lists all three).
    let nats_url = servers[0].url();
    let first = servers.remove(0);
    let backends = Backends {
        nats_url,
        redis_url: redis.url(),
        nats: first,
        redis,
        dir,
    };
    let mut c = Cluster::start_on(backends, 2, 2, &FLAGS, Default::default()).await;
    let agents = ws_agents(&c, 20);
    let hash = push_config(&c, "before: nats loss", Duration::from_secs(10)).await;
    wait_applied(&agents, &hash, Duration::from_secs(15)).await;

    c.nats.proc.kill();
    let killed = Instant::now();
    let hash = push_config(&c, "after: nats loss", Duration::from_secs(20)).await;
    wait_applied(&agents, &hash, Duration::from_secs(20)).await;
    println!(
        "one of three NATS servers killed: a config pushed after that reached all {} agents {:?} \
         after the kill",
        agents.len(),
        killed.elapsed()
    );
    c.wait_all_shards_owned(Duration::from_secs(20)).await;
    // Nothing is lost for good: the survivors still route every agent's reports.
    let (_, health) = c.get(c.api(), "/api/v1/fleet/health").await;
    assert_eq!(health["connected_agents"], 20, "{health}");
    drop(servers);
}
