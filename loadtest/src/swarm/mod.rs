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
//!
//! With `own_metrics`, every agent also sends its own metrics to its gateway throughout
//! ([`own_metrics`]).

mod agent;
mod collector_metrics;
mod collector_other;
mod collector_parts;
mod config;
mod exports;
mod own_metrics;
mod plot;
mod report;
mod shared;
mod stats;

pub use config::{Api, Scenario, SwarmConfig, Transport};
pub use own_metrics::OwnMetricsReport;
pub use own_metrics::{FAILING_EVERY, LANES};
pub use report::{AppliedConfig, ConfigPush, Connect, MessageBytes, Process, Recovery, Report};
use shared::Shared;
use stats::Stats;
pub use stats::{Percentiles, Sample, bucket};

use anyhow::{Context, bail};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

/// Runs the scenario and returns (and, with `out`, writes) its report.
pub async fn run(cfg: SwarmConfig) -> anyhow::Result<Report> {
    cfg.check()?;
    if let Some(out) = &cfg.out {
        std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    }
    let processes_before = report::processes_before(&cfg.gateway_pids)?;
    let own_metrics = cfg
        .own_metrics
        .map(|interval| own_metrics::OwnMetrics::new(&cfg, interval))
        .transpose()?;
    let shared = Arc::new(Shared {
        connecting: Semaphore::new(cfg.connect_concurrency.max(1)),
        stats: Stats::new(),
        stop: CancellationToken::new(),
        run_id: uuid::Uuid::new_v4().simple().to_string()[..8].to_owned(),
        own_metrics,
        dress: crate::realistic::Dress::new(cfg.shape),
        cfg,
    });
    let cfg = &shared.cfg;
    let deadline = shared.stats.started + cfg.duration;
    let mut exports = exports::spawn(&shared)?;
    let sampler = tokio::spawn(sample_every_second(shared.clone()));
    // Ctrl-C or SIGTERM ends the run early: agents say goodbye, the summary and report are
    // written as for a run that reached its end.
    let interrupt = tokio::spawn(stop_on_signal(shared.clone()));
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
            tokio::select! {
                () = tokio::time::sleep_until(deadline.into()) => {}
                () = shared.stop.cancelled() => {}
            }
        }
        Scenario::Rollout => report.config_push = Some(rollout(&shared, deadline).await?),
        Scenario::GatewayLoss => report.recovery = Some(gateway_loss(&shared, deadline).await?),
    }

    shared.stop.cancel();
    let _ = ramp.await;
    // Lanes stop at once, leaving an export in flight unanswered.
    while exports.join_next().await.is_some() {}
    sampler.abort();
    interrupt.abort();
    shared.stats.sample();
    report.finish(&shared);
    if let Some(out) = &shared.cfg.out {
        write(&report, out)?;
    }
    Ok(report)
}

async fn stop_on_signal(shared: Arc<Shared>) {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut term) = signal(SignalKind::terminate()) else {
        return;
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    eprintln!("interrupted: stopping the agents, then the summary");
    shared.stop.cancel();
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

/// report.json and timeline.svg in `dir`.
fn write(report: &Report, dir: &std::path::Path) -> anyhow::Result<()> {
    let path = dir.join("report.json");
    std::fs::write(&path, serde_json::to_string_pretty(report)?)
        .with_context(|| format!("cannot write {}", path.display()))?;
    let path = dir.join("timeline.svg");
    std::fs::write(&path, plot::timeline_svg(report)?)
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}
