//! The swarm: many [`SimAgent`]s run against OpAMP servers through one scenario, measured into a
//! [`Report`]. `flotilla-swarm` is a command line over [`run`]; tests call [`run`] directly.
//!
//! Every scenario ramps agents up at `connect_rate` (at most `connect_concurrency` connecting at
//! once) and waits until all are connected and answered, plus 2 s (or the run's time is up): the
//! steady state, whose reply latency is reported apart from the ramp's. Then:
//! - `connect-storm` measures the ramp and the gateways' memory, and ends;
//! - `steady` holds the agents, heartbeating, until `duration`;
//! - `churn` is `steady` with agents leaving and new ones joining (`churn_per_s`);
//! - `rollout` pushes a config to exactly this run's agents through the API and ends once every
//!   agent has reported APPLIED or FAILED;
//! - `gateway-loss` kills the process `kill_pid` (a gateway) after `kill_after`, waits until
//!   every agent is connected again and answered, and ends 3 s later.

mod agent;
mod plot;
mod report;
mod stats;

pub use report::{ConfigPush, Connect, Process, Recovery, Report};
use stats::Stats;
pub use stats::{Percentiles, Sample};

use crate::client::ConnectOptions;
use crate::sim::{ApplyBehavior, Profile, SimAgent};
use anyhow::{Context, bail};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    Ws,
    Http,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Scenario {
    ConnectStorm,
    Steady,
    Rollout,
    Churn,
    GatewayLoss,
}

/// The admin API a rollout pushes its config through.
#[derive(Debug, Clone)]
pub struct Api {
    /// e.g. http://127.0.0.1:4321
    pub url: String,
    pub token: Option<String>,
    /// PEM CA for an https:// API.
    pub ca: Option<Vec<u8>>,
}

#[derive(Debug, Clone)]
pub struct SwarmConfig {
    pub scenario: Scenario,
    /// OpAMP endpoints; agent i starts on `urls[i % len]` and moves to the next on a lost
    /// connection.
    pub urls: Vec<String>,
    pub transport: Transport,
    pub agents: usize,
    /// New agents per second while ramping up; 0 starts them all at once.
    pub connect_rate: f64,
    /// At most this many agents connecting at the same time.
    pub connect_concurrency: usize,
    /// Upper bound of the whole run: it stops by itself.
    pub duration: Duration,
    /// Heartbeat (WebSocket) or poll (HTTP) interval, unless the server offers another.
    pub heartbeat: Duration,
    pub reply_timeout: Duration,
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    pub profile: Profile,
    pub apply: ApplyBehavior,
    /// Fraction of the agents that leave (and are replaced) per second.
    pub churn_per_s: Option<f64>,
    pub connect: ConnectOptions,
    /// Spread connections over 127.0.0.1..=127.0.0.N (0: let the OS pick).
    pub source_ips: u8,
    pub api: Option<Api>,
    pub kill_pid: Option<u32>,
    pub kill_after: Duration,
    /// Processes (gateways) whose resident memory and CPU time are read from /proc before and
    /// after connecting.
    pub gateway_pids: Vec<u32>,
    /// Where report.json and timeline.svg go.
    pub out: Option<PathBuf>,
    /// A progress line on stderr every second.
    pub progress: bool,
}

/// What every agent task shares.
struct Shared {
    cfg: SwarmConfig,
    stats: Stats,
    stop: CancellationToken,
    connecting: Semaphore,
    run_id: String,
}

impl Shared {
    fn new_agent(&self, index: usize, generation: u32) -> SimAgent {
        let host = format!("swarm-{}-{index}", self.run_id);
        let mut agent = SimAgent::from_profile(
            &self.cfg.profile,
            &host,
            &[
                ("swarm.run", &self.run_id),
                ("swarm.generation", &generation.to_string()),
            ],
            &mut rand::rng(),
        );
        agent.apply = self.cfg.apply;
        agent
    }

    fn connected(&self) -> u64 {
        self.stats.connected.load(Ordering::Relaxed)
    }

    /// Waits until `done` holds (checked every 50 ms) or the run's time is up; returns how long
    /// it took from `since`, or None.
    async fn until(
        &self,
        deadline: Instant,
        since: Instant,
        done: impl Fn(&Self) -> bool,
    ) -> Option<Duration> {
        loop {
            if done(self) {
                return Some(since.elapsed());
            }
            if Instant::now() >= deadline || self.stop.is_cancelled() {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl SwarmConfig {
    /// `agents` agents on `urls` in `scenario`, with the command line's defaults otherwise.
    pub fn new(scenario: Scenario, urls: Vec<String>, agents: usize) -> Self {
        Self {
            scenario,
            urls,
            transport: Transport::Ws,
            agents,
            connect_rate: 500.0,
            connect_concurrency: 256,
            duration: Duration::from_secs(30),
            heartbeat: Duration::from_secs(5),
            reply_timeout: Duration::from_secs(10),
            backoff_min: Duration::from_millis(250),
            backoff_max: Duration::from_secs(10),
            profile: Profile::default(),
            apply: ApplyBehavior::default(),
            churn_per_s: None,
            connect: ConnectOptions::default(),
            source_ips: 0,
            api: None,
            kill_pid: None,
            kill_after: Duration::from_secs(3),
            gateway_pids: Vec::new(),
            out: None,
            progress: false,
        }
    }

    fn check(&self) -> anyhow::Result<()> {
        if self.urls.is_empty() {
            bail!("at least one OpAMP URL is needed");
        }
        if self.agents == 0 {
            bail!("--agents must be at least 1");
        }
        match self.scenario {
            Scenario::Rollout if self.api.is_none() => {
                bail!("the rollout scenario pushes its config through the API: give --api URL")
            }
            Scenario::GatewayLoss if self.kill_pid.is_none() => {
                bail!("the gateway-loss scenario kills a gateway: give --kill-pid PID")
            }
            Scenario::GatewayLoss if self.urls.len() < 2 => {
                bail!("the gateway-loss scenario needs the URLs of at least two gateways")
            }
            Scenario::Churn if self.churn_per_s.is_none_or(|c| c <= 0.0) => {
                bail!("the churn scenario needs --churn above 0 (agents leaving per second)")
            }
            _ => Ok(()),
        }
    }
}

/// Runs the scenario and returns (and, with `out`, writes) its report.
pub async fn run(cfg: SwarmConfig) -> anyhow::Result<Report> {
    cfg.check()?;
    if let Some(out) = &cfg.out {
        std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    }
    let processes_before = report::processes_before(&cfg.gateway_pids)?;
    let shared = Arc::new(Shared {
        connecting: Semaphore::new(cfg.connect_concurrency.max(1)),
        stats: Stats::new(),
        stop: CancellationToken::new(),
        run_id: uuid::Uuid::new_v4().simple().to_string()[..8].to_owned(),
        cfg,
    });
    let cfg = &shared.cfg;
    let deadline = shared.stats.started + cfg.duration;
    let sampler = tokio::spawn(sample_every_second(shared.clone()));
    let ramp = tokio::spawn(ramp(shared.clone()));

    let all = cfg.agents as u64;
    let mut report = Report::new(&shared);
    let all_connected = shared
        .until(deadline, shared.stats.started, |s| s.connected() >= all)
        .await;
    report.connect = Connect::ramp(all_connected, all);
    let answered = shared
        .until(deadline, shared.stats.started, |s| {
            s.stats.answered.load(Ordering::Relaxed) >= all
        })
        .await;
    if answered.is_some() {
        // Let the first reports' follow-ups settle before the steady state and the memory reading.
        tokio::time::sleep(
            Duration::from_secs(2).min(deadline.saturating_duration_since(Instant::now())),
        )
        .await;
    }
    shared.stats.steady.store(true, Ordering::Relaxed);
    report.set_processes(
        report::processes_after(processes_before)?,
        shared.connected(),
    );

    match cfg.scenario {
        Scenario::ConnectStorm => {}
        Scenario::Steady | Scenario::Churn => {
            tokio::time::sleep_until(deadline.into()).await;
        }
        Scenario::Rollout => report.config_push = Some(rollout(&shared, deadline).await?),
        Scenario::GatewayLoss => report.recovery = Some(gateway_loss(&shared, deadline).await?),
    }

    shared.stop.cancel();
    let _ = ramp.await;
    sampler.abort();
    shared.stats.sample();
    report.finish(&shared);
    if let Some(out) = &shared.cfg.out {
        report.write(out)?;
    }
    Ok(report)
}

async fn ramp(shared: Arc<Shared>) {
    let mut agents = tokio::task::JoinSet::new();
    let gap = (shared.cfg.connect_rate > 0.0)
        .then(|| Duration::from_secs_f64(1.0 / shared.cfg.connect_rate));
    let mut next = Instant::now();
    for i in 0..shared.cfg.agents {
        if shared.stop.is_cancelled() {
            break;
        }
        agents.spawn(agent::run(shared.clone(), i));
        if let Some(gap) = gap {
            next += gap;
            tokio::select! {
                () = shared.stop.cancelled() => break,
                () = tokio::time::sleep_until(next.into()) => {}
            }
        }
    }
    shared.stop.cancelled().await;
    // Agents say goodbye within 2 s; do not wait forever for a stuck one.
    let _ = tokio::time::timeout(Duration::from_secs(10), async {
        while agents.join_next().await.is_some() {}
    })
    .await;
}

async fn sample_every_second(shared: Arc<Shared>) {
    let all = shared.cfg.agents;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.tick().await;
    loop {
        tick.tick().await;
        let s = shared.stats.sample();
        if shared.cfg.progress {
            let st = &shared.stats;
            eprintln!(
                "[{:>6.1}s] connected {:>6}/{all}  msgs/s {:>6}  p99 {:>7.2} ms  applied {} failed {}  errors {}",
                s.t_s,
                s.connected,
                s.messages_per_s,
                s.p99_ms,
                st.applied.load(Ordering::Relaxed),
                st.failed.load(Ordering::Relaxed),
                s.errors,
            );
        }
    }
}

/// A collector config that passes validation, unique to this run so that agents must apply it.
fn rollout_config(run_id: &str) -> String {
    format!(
        "# flotilla-swarm rollout, run {run_id}\n\
         receivers:\n  otlp:\n    protocols:\n      grpc: {{}}\n\
         exporters:\n  debug: {{}}\n\
         service:\n  pipelines:\n    traces:\n      receivers: [otlp]\n      exporters: [debug]\n"
    )
}

async fn rollout(shared: &Shared, deadline: Instant) -> anyhow::Result<ConfigPush> {
    let api = shared.cfg.api.as_ref().context("rollout needs the API")?;
    let name = format!("swarm-{}", shared.run_id);
    let mut http = reqwest::Client::builder().timeout(Duration::from_secs(30));
    if let Some(ca) = &api.ca {
        http = http.add_root_certificate(reqwest::Certificate::from_pem(ca)?);
    }
    let mut put = http
        .build()?
        .put(format!(
            "{}/api/v1/configs/{name}",
            api.url.trim_end_matches('/')
        ))
        .json(&serde_json::json!({
            "selector": {"swarm.run": shared.run_id},
            "files": {"collector.yaml": rollout_config(&shared.run_id)},
        }));
    if let Some(t) = &api.token {
        put = put.bearer_auth(t);
    }
    let connected = shared.connected();
    let t0 = Instant::now();
    *shared.stats.rollout_started.lock().expect("rollout lock") = Some(t0);
    let resp = put.send().await.context("PUT the rollout config")?;
    if !resp.status().is_success() {
        let status = resp.status();
        bail!(
            "the API refused the rollout config: {status}: {}",
            resp.text().await.unwrap_or_default()
        );
    }
    let st = &shared.stats;
    let results = || st.applied.load(Ordering::Relaxed) + st.failed.load(Ordering::Relaxed);
    let all = shared.until(deadline, t0, |_| results() >= connected).await;
    Ok(ConfigPush {
        config: name,
        agents: connected,
        applied: st.applied.load(Ordering::Relaxed),
        failed: st.failed.load(Ordering::Relaxed),
        missing: connected.saturating_sub(results()),
        all_reported_s: all.map(|d| d.as_secs_f64()),
        applied_after: st.push_times(),
    })
}

async fn gateway_loss(shared: &Shared, deadline: Instant) -> anyhow::Result<Recovery> {
    let pid = shared.cfg.kill_pid.context("gateway-loss needs a pid")?;
    tokio::time::sleep(
        shared
            .cfg
            .kill_after
            .min(deadline.saturating_duration_since(Instant::now())),
    )
    .await;
    let before = shared.connected();
    let status = std::process::Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()
        .context("running kill")?;
    if !status.success() {
        bail!("kill -KILL {pid} failed: is it running?");
    }
    let t0 = Instant::now();
    let st = &shared.stats;
    let (lost0, recovered0) = (
        st.lost.load(Ordering::Relaxed),
        st.recovered.load(Ordering::Relaxed),
    );
    let lost = || st.lost.load(Ordering::Relaxed) - lost0;
    let recovered = || st.recovered.load(Ordering::Relaxed) - recovered0;
    // Lost sessions show up as agents notice; "back" needs at least one of them noticed.
    let all = shared.cfg.agents as u64;
    let back = shared
        .until(deadline, t0, |s| lost() > 0 && s.connected() >= all)
        .await;
    let converged = shared
        .until(deadline, t0, |s| {
            lost() > 0 && s.connected() >= all && recovered() >= lost()
        })
        .await;
    // The steady state after the recovery, for the timeline (and for anyone looking).
    if converged.is_some() {
        tokio::time::sleep(
            Duration::from_secs(3).min(deadline.saturating_duration_since(Instant::now())),
        )
        .await;
    }
    Ok(Recovery {
        killed_pid: pid,
        connected_before: before,
        lost: lost(),
        recovered: recovered(),
        all_back_s: back.map(|d| d.as_secs_f64()),
        converged_s: converged.map(|d| d.as_secs_f64()),
    })
}
