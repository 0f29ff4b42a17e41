//! A real cluster for tests: nats-server, redis-server and `flotilla serve` processes (the built
//! binary) on free loopback ports, plus simulated agents that keep a WebSocket to one of the
//! gateways (moving to the next when it drops) or poll over HTTP.
#![allow(dead_code)]

use flotilla_common::names::shard_of;
use flotilla_loadtest::client::{HttpClient, WsClient, WsEvent};
use flotilla_loadtest::sim::SimAgent;
use flotilla_proto::opamp::RemoteConfigStatuses;
#[allow(unused_imports)] // not every test binary cuts NATS off
pub use flotilla_testkit::TcpProxy;
use flotilla_testkit::{NatsServer, Proc, RedisServer, free_port, wait_for_port};
use serde_json::Value;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

const BIN: &str = env!("CARGO_BIN_EXE_flotilla");
pub const REGION: &str = "local";

/// Cluster tests start many processes and measure failover times: one at a time.
pub static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

pub struct Node {
    pub id: String,
    pub proc: Proc,
    pub api: String,
    /// `127.0.0.1:port` of the OpAMP listener (gateways).
    pub opamp: Option<String>,
}

pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub nats: NatsServer,
    pub redis: RedisServer,
    /// What flotilla processes are given as --nats-url and --redis-url (by default the URLs of
    /// `nats` and `redis`).
    pub nats_url: String,
    pub redis_url: String,
    pub coordinators: Vec<Node>,
    pub gateways: Vec<Node>,
    /// Every process's `--region`.
    pub region: String,
    extra: Vec<String>,
    /// Flags for coordinators only, and for gateways only.
    role_extra: [Vec<String>; 2],
    http: reqwest::Client,
}

impl Cluster {
    /// `extra`: flags for every flotilla process (e.g. `--heartbeat-interval 2s`).
    pub async fn start(coordinators: usize, gateways: usize, extra: &[&str]) -> Self {
        Self::start_with_nats(coordinators, gateways, extra, "").await
    }

    /// [`Cluster::start`] with flags for coordinators and flags for gateways.
    pub async fn start_roles(
        coordinators: usize,
        gateways: usize,
        coordinator_extra: &[&str],
        gateway_extra: &[&str],
    ) -> Self {
        let own = |flags: &[&str]| flags.iter().map(|s| s.to_string()).collect();
        Self::start_full(
            coordinators,
            gateways,
            &[],
            [own(coordinator_extra), own(gateway_extra)],
            "",
        )
        .await
    }

    /// [`Cluster::start`] with a NATS server configured by `nats_config` (e.g. `max_payload: 65536`).
    pub async fn start_with_nats(
        coordinators: usize,
        gateways: usize,
        extra: &[&str],
        nats_config: &str,
    ) -> Self {
        Self::start_full(
            coordinators,
            gateways,
            extra,
            Default::default(),
            nats_config,
        )
        .await
    }

    async fn start_full(
        coordinators: usize,
        gateways: usize,
        extra: &[&str],
        role_extra: [Vec<String>; 2],
        nats_config: &str,
    ) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let nats = NatsServer::start_with_config(dir.path(), nats_config);
        let redis = RedisServer::start(dir.path());
        let backends = Backends::new(dir, nats, redis);
        Self::start_on(backends, coordinators, gateways, extra, role_extra).await
    }

    /// A cluster on NATS and Redis the test started itself (e.g. a NATS cluster, or Redis behind
    /// Sentinel).
    pub async fn start_on(
        backends: Backends,
        coordinators: usize,
        gateways: usize,
        extra: &[&str],
        role_extra: [Vec<String>; 2],
    ) -> Self {
        let gateways: Vec<u16> = (0..gateways).map(|_| free_port()).collect();
        Self::start_in(REGION, backends, coordinators, &gateways, extra, role_extra).await
    }

    /// [`Cluster::start_on`] as region `region`, with gateways on the OpAMP ports `gateways`.
    pub async fn start_in(
        region: &str,
        backends: Backends,
        coordinators: usize,
        gateways: &[u16],
        extra: &[&str],
        role_extra: [Vec<String>; 2],
    ) -> Self {
        let Backends {
            dir,
            nats,
            redis,
            nats_url,
            redis_url,
        } = backends;
        let mut c = Self {
            dir,
            nats,
            redis,
            nats_url,
            redis_url,
            coordinators: Vec::new(),
            gateways: Vec::new(),
            region: region.to_owned(),
            extra: extra.iter().map(|s| s.to_string()).collect(),
            role_extra,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(2))
                .build()
                .unwrap(),
        };
        for i in 1..=coordinators {
            let node = c.spawn(&format!("c{i}"), None);
            c.coordinators.push(node);
        }
        for (i, port) in (1..).zip(gateways) {
            let node = c.spawn(&format!("g{i}"), Some(*port));
            c.gateways.push(node);
        }
        c.wait_balanced(Duration::from_secs(30)).await;
        c
    }

    /// Waits until all shards are owned and spread over every coordinator.
    pub async fn wait_balanced(&self, timeout: Duration) {
        let started = Instant::now();
        let fair = 1024 / (2 * self.coordinators.len()) as u64;
        loop {
            let mut owned = Vec::new();
            for c in &self.coordinators {
                let n = self
                    .metric(&c.api, "flotilla_coordinator_owned_shards")
                    .await;
                owned.push(n.unwrap_or(0.0) as u64);
            }
            if owned.iter().sum::<u64>() == 1024 && owned.iter().all(|n| *n >= fair) {
                return;
            }
            assert!(
                started.elapsed() < timeout,
                "shards not spread over the coordinators: {owned:?}\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Spawns a coordinator, or a gateway (on the OpAMP port `opamp_port`).
    fn spawn(&self, id: &str, opamp_port: Option<u16>) -> Node {
        self.spawn_with_nats(id, opamp_port, &self.nats_url)
    }

    fn spawn_with_nats(&self, id: &str, opamp_port: Option<u16>, nats_url: &str) -> Node {
        let gateway = opamp_port.is_some();
        let api_port = free_port();
        let mut args: Vec<String> = [
            "serve",
            "--roles",
            if gateway { "gateway" } else { "coordinator" },
            "--node-id",
            id,
            "--region",
            &self.region,
            "--nats-url",
            nats_url,
            "--redis-url",
            &self.redis_url,
            "--api-listen",
            &format!("127.0.0.1:{api_port}"),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let opamp = opamp_port.map(|port| format!("127.0.0.1:{port}"));
        if let Some(addr) = &opamp {
            args.extend(["--opamp-listen".to_string(), addr.clone()]);
        }
        args.extend(self.extra.iter().cloned());
        args.extend(self.role_extra[usize::from(gateway)].iter().cloned());
        let envs = [("RUST_LOG".to_string(), "info".to_string())];
        let proc = Proc::spawn(
            id,
            BIN,
            &args,
            &envs,
            self.dir.path().join(format!("{id}.log")),
        );
        assert!(
            wait_for_port(api_port, Duration::from_secs(20)),
            "{id} did not start\n{}",
            proc.log_tail(30)
        );
        Node {
            id: id.to_owned(),
            proc,
            api: format!("http://127.0.0.1:{api_port}"),
            opamp,
        }
    }

    /// Adds a coordinator `id` (e.g. to replace a killed one).
    pub fn add_coordinator(&mut self, id: &str) {
        let node = self.spawn(id, None);
        self.coordinators.push(node);
    }

    /// Adds a coordinator that reaches NATS at `nats_url` (e.g. through a [`TcpProxy`]).
    pub fn add_coordinator_via(&mut self, id: &str, nats_url: &str) {
        let node = self.spawn_with_nats(id, None, nats_url);
        self.coordinators.push(node);
    }

    pub fn ws_urls(&self) -> Vec<String> {
        self.gateways
            .iter()
            .map(|g| format!("ws://{}/v1/opamp", g.opamp.as_ref().unwrap()))
            .collect()
    }

    pub fn http_urls(&self) -> Vec<String> {
        self.gateways
            .iter()
            .map(|g| format!("http://{}/v1/opamp", g.opamp.as_ref().unwrap()))
            .collect()
    }

    pub fn coordinator(&mut self, id: &str) -> &mut Node {
        self.coordinators.iter_mut().find(|n| n.id == id).unwrap()
    }

    pub fn api(&self) -> &str {
        &self.coordinators[0].api
    }

    /// The API of a coordinator other than `not`.
    pub fn api_except(&self, not: &str) -> &str {
        &self.coordinators.iter().find(|n| n.id != not).unwrap().api
    }

    /// A metric's value on a node (summing every labelled series matching `name{labels`).
    pub async fn metric(&self, api: &str, series: &str) -> Option<f64> {
        let text = self
            .http
            .get(format!("{api}/metrics"))
            .send()
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        Some(flotilla_testkit::metric_sum(&text, series))
    }

    /// Sum of owned shards over the coordinators that answer (skipping `except`).
    pub async fn owned_shards(&self, except: &[&str]) -> u64 {
        let mut n = 0.0;
        for c in self
            .coordinators
            .iter()
            .filter(|c| !except.contains(&c.id.as_str()))
        {
            n += self
                .metric(&c.api, "flotilla_coordinator_owned_shards")
                .await
                .unwrap_or(0.0);
        }
        n as u64
    }

    /// Waits until the coordinators not in `except` own all 1024 shards between them; returns
    /// how long that took.
    pub async fn wait_shards_owned_by(&self, except: &[&str], timeout: Duration) -> Duration {
        let started = Instant::now();
        loop {
            if self.owned_shards(except).await == 1024 {
                return started.elapsed();
            }
            assert!(
                started.elapsed() < timeout,
                "shards not all owned after {timeout:?} (owned: {})\n{}",
                self.owned_shards(except).await,
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub async fn wait_all_shards_owned(&self, timeout: Duration) -> Duration {
        self.wait_shards_owned_by(&[], timeout).await
    }

    pub async fn get(&self, api: &str, path: &str) -> (u16, Value) {
        match self.http.get(format!("{api}{path}")).send().await {
            Ok(r) => (r.status().as_u16(), r.json().await.unwrap_or(Value::Null)),
            Err(_) => (0, Value::Null),
        }
    }

    /// Polls `path` of the API (every 100 ms) until `pred` holds of its body; fails, with the
    /// last body and the nodes' logs, after `timeout`.
    pub async fn get_until(
        &self,
        path: &str,
        timeout: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> Value {
        let started = Instant::now();
        loop {
            let (_, body) = self.get(self.api(), path).await;
            if pred(&body) {
                return body;
            }
            assert!(
                started.elapsed() < timeout,
                "{path} never reached the expected state; last: {body}\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Stores a config for every agent through `api`; returns its hash (hex).
    pub async fn put_config(&self, api: &str, name: &str, body: &str) -> String {
        let r = self
            .http
            .put(format!("{api}/api/v1/configs/{name}"))
            .json(&serde_json::json!({"selector": {}, "files": {"collector.yaml": body}}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 200);
        let v: Value = r.json().await.unwrap();
        v["hash"].as_str().unwrap().to_owned()
    }

    /// The coordinator holding the lease of `uid`'s shard, read from Redis.
    pub async fn owner_of(&self, uid: Uuid) -> Option<String> {
        let mut conn = self.redis_conn().await;
        let key = format!("opamp:{REGION}:{{s{:04}}}:lease", shard_of(uid.as_bytes()));
        let v: Option<String> = redis::cmd("GET")
            .arg(key)
            .query_async(&mut conn)
            .await
            .ok()?;
        v.and_then(|v| v.split('/').next().map(str::to_owned))
    }

    pub async fn redis_conn(&self) -> redis::aio::MultiplexedConnection {
        redis::Client::open(self.redis.url())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap()
    }

    /// The tail of every process's log, for failure messages.
    pub fn logs(&self) -> String {
        self.coordinators
            .iter()
            .chain(&self.gateways)
            .map(|n| n.proc.log_tail(15))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// The NATS and Redis a [`Cluster`] runs on, and the URLs its processes are given.
pub struct Backends {
    pub dir: tempfile::TempDir,
    pub nats: NatsServer,
    pub redis: RedisServer,
    pub nats_url: String,
    pub redis_url: String,
}

impl Backends {
    /// `nats` and `redis` as the flotilla processes reach them (their own URLs).
    pub fn new(dir: tempfile::TempDir, nats: NatsServer, redis: RedisServer) -> Self {
        Self {
            nats_url: nats.url(),
            redis_url: redis.url(),
            dir,
            nats,
            redis,
        }
    }
}

/// What a simulated agent has done, as the test sees it.
#[derive(Debug, Default, Clone)]
pub struct AgentView {
    /// Hex hash of the last config it applied.
    pub applied: String,
    /// Index (into the URL list) of the gateway it last connected to.
    pub gateway: usize,
    pub connects: u32,
}

pub struct LiveAgent {
    pub uid: Uuid,
    pub view: Arc<Mutex<AgentView>>,
    /// Stops the agent without a goodbye: its connection stays open, it just says nothing more.
    pub vanish: CancellationToken,
    task: JoinHandle<()>,
}

impl Drop for LiveAgent {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl LiveAgent {
    pub fn applied(&self) -> String {
        self.view.lock().unwrap().applied.clone()
    }
}

fn record(view: &Mutex<AgentView>, agent: &SimAgent) {
    if let Some(s) = &agent.remote_status
        && s.status == RemoteConfigStatuses::Applied as i32
    {
        let hex: String = s
            .last_remote_config_hash
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        view.lock().unwrap().applied = hex;
    }
}

/// An agent on WebSocket: connects to `urls[first]`, heartbeats every `heartbeat`, answers what
/// the server sends, and when its connection drops moves on to the next gateway in `urls`.
pub fn ws_agent(urls: Vec<String>, first: usize, heartbeat: Duration) -> LiveAgent {
    let agent = SimAgent::new("io.opentelemetry.collector", &[("env", "test")]);
    ws_sim_agent(agent, urls, first, heartbeat)
}

/// [`ws_agent`] with the simulated agent given (e.g. one that fails some configs).
pub fn ws_sim_agent(
    agent: SimAgent,
    urls: Vec<String>,
    first: usize,
    heartbeat: Duration,
) -> LiveAgent {
    spawn_agent(agent, move |mut agent, v, gone| async move {
        let mut idx = first;
        loop {
            let url = &urls[idx % urls.len()];
            let Ok(mut ws) = WsClient::connect(url).await else {
                idx += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            };
            {
                let mut view = v.lock().unwrap();
                view.connects += 1;
                view.gateway = idx % urls.len();
            }
            let mut outbox = vec![agent.full_report()];
            'conn: loop {
                while let Some(m) = outbox.pop() {
                    if ws.send(&m).await.is_err() {
                        break 'conn;
                    }
                }
                tokio::select! {
                    ev = tokio::time::timeout(heartbeat, ws.next_event(Duration::from_secs(3600))) => match ev {
                        Ok(Ok(WsEvent::Message(m))) => {
                            outbox.extend(agent.handle(&m));
                            record(&v, &agent);
                        }
                        Ok(_) => break 'conn,
                        Err(_) => outbox.push(agent.heartbeat()),
                    },
                    () = gone.cancelled() => {
                        // Silent from now on, with the connection left open.
                        std::future::pending::<()>().await;
                    }
                }
            }
            idx += 1;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
}

/// Runs `run(agent, view, vanish)` as a live agent.
fn spawn_agent<F, Fut>(agent: SimAgent, run: F) -> LiveAgent
where
    F: FnOnce(SimAgent, Arc<Mutex<AgentView>>, CancellationToken) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let uid = agent.uid;
    let view = Arc::new(Mutex::new(AgentView::default()));
    let vanish = CancellationToken::new();
    let task = tokio::spawn(run(agent, view.clone(), vanish.clone()));
    LiveAgent {
        uid,
        view,
        vanish,
        task,
    }
}

/// An agent polling over plain HTTP every `poll`, never sending AgentDisconnect.
pub fn http_agent(urls: Vec<String>, first: usize, poll: Duration) -> LiveAgent {
    let mut agent = SimAgent::new("io.opentelemetry.collector", &[("env", "test")]);
    agent.capabilities &= !(flotilla_proto::opamp::AgentCapabilities::ReportsHeartbeat as u64);
    spawn_agent(agent, move |mut agent, v, gone| async move {
        let mut idx = first;
        let mut outbox = vec![agent.full_report()];
        loop {
            let client = HttpClient::new(&urls[idx % urls.len()]);
            let msg = outbox.pop().unwrap_or_else(|| agent.heartbeat());
            match client.post(&msg, false).await {
                Ok(reply) if reply.status == 200 => {
                    if let Some(m) = &reply.message {
                        outbox.extend(agent.handle(m));
                        record(&v, &agent);
                    }
                }
                _ => idx += 1,
            }
            v.lock().unwrap().gateway = idx % urls.len();
            if outbox.is_empty() {
                tokio::select! {
                    () = tokio::time::sleep(poll) => {}
                    () = gone.cancelled() => std::future::pending::<()>().await,
                }
            }
        }
    })
}

/// Waits until every agent applied `hash`; returns how long it took.
pub async fn wait_applied(agents: &[LiveAgent], hash: &str, timeout: Duration) -> Duration {
    let started = Instant::now();
    loop {
        let behind: Vec<Uuid> = agents
            .iter()
            .filter(|a| a.applied() != hash)
            .map(|a| a.uid)
            .collect();
        if behind.is_empty() {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < timeout,
            "{} of {} agents did not apply {hash} within {timeout:?}: {:?}",
            behind.len(),
            agents.len(),
            &behind[..behind.len().min(5)]
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
