//! flotilla-swarm: runs many synthetic agents against an OpAMP server for a bounded time and
//! reports connections, message rates, reply latency and errors.

use anyhow::Context;
use clap::{Parser, ValueEnum};
use flotilla_loadtest::client::{ConnectOptions, HttpClient, WsClient, WsEvent};
use flotilla_loadtest::sim::SimAgent;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::Mutex;

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Transport {
    Ws,
    Http,
}

#[derive(Debug, Parser)]
#[command(about = "Synthetic OpAMP agent swarm")]
struct Args {
    /// OpAMP endpoint, e.g. ws://127.0.0.1:4320/v1/opamp or http://127.0.0.1:4320/v1/opamp.
    #[arg(long, default_value = "ws://127.0.0.1:4320/v1/opamp")]
    url: String,
    #[arg(long, value_enum, default_value = "ws")]
    transport: Transport,
    #[arg(long, default_value_t = 100)]
    agents: usize,
    /// New agents per second while ramping up.
    #[arg(long, default_value_t = 500)]
    connect_rate: u64,
    /// How long the run lasts (it stops by itself).
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Heartbeat (or poll) interval of each agent, unless the server offers another.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    heartbeat: Duration,
    /// Value of the `env` attribute of every agent.
    #[arg(long, default_value = "swarm")]
    env: String,
    /// PEM CA to trust for wss:// and https:// URLs.
    #[arg(long)]
    ca: Option<std::path::PathBuf>,
    /// PEM client certificate every agent presents (mutual TLS), with --key.
    #[arg(long, requires = "key")]
    cert: Option<std::path::PathBuf>,
    /// PEM private key of --cert.
    #[arg(long, requires = "cert")]
    key: Option<std::path::PathBuf>,
    /// Bearer token every agent presents (--agent-tokens on the server).
    #[arg(long)]
    token: Option<String>,
    #[arg(skip)]
    connect: ConnectOptions,
}

/// TLS trust, client identity and token from the flags.
fn connect_options(args: &Args) -> anyhow::Result<ConnectOptions> {
    let read = |p: &std::path::PathBuf| {
        std::fs::read(p).with_context(|| format!("cannot read {}", p.display()))
    };
    let mut opts = match &args.ca {
        Some(ca) => {
            let identity = match (&args.cert, &args.key) {
                (Some(c), Some(k)) => Some((read(c)?, read(k)?)),
                _ => None,
            };
            let identity = identity.as_ref().map(|(c, k)| (c.as_slice(), k.as_slice()));
            ConnectOptions::tls(&read(ca)?, identity)?
        }
        None if args.cert.is_some() => {
            anyhow::bail!("--cert needs --ca (and a wss:// or https:// URL)")
        }
        None => ConnectOptions::default(),
    };
    if let Some(t) = &args.token {
        opts = opts.with_token(t);
    }
    Ok(opts)
}

#[derive(Default)]
struct Stats {
    connected: AtomicU64,
    messages: AtomicU64,
    errors: AtomicU64,
    applied: AtomicU64,
    latencies_us: Mutex<Vec<u64>>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = Args::parse();
    args.connect = connect_options(&args)?;
    let args = Arc::new(args);
    let stats = Arc::new(Stats::default());
    let started = Instant::now();
    let end = started + args.duration;
    let mut tasks = tokio::task::JoinSet::new();
    let gap = Duration::from_secs_f64(1.0 / args.connect_rate.max(1) as f64);
    let progress = {
        let stats = stats.clone();
        tokio::spawn(async move {
            let mut last = 0;
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                let m = stats.messages.load(Ordering::Relaxed);
                eprintln!(
                    "[{:>5.1}s] connected {:>6}  msgs/s {:>6}  applied {:>6}  errors {}",
                    started.elapsed().as_secs_f64(),
                    stats.connected.load(Ordering::Relaxed),
                    m - last,
                    stats.applied.load(Ordering::Relaxed),
                    stats.errors.load(Ordering::Relaxed)
                );
                last = m;
            }
        })
    };
    for i in 0..args.agents {
        if Instant::now() >= end {
            break;
        }
        let (args, stats) = (args.clone(), stats.clone());
        tasks.spawn(async move {
            let agent = SimAgent::new(
                "io.opentelemetry.collector",
                &[("env", &args.env), ("swarm.index", &i.to_string())],
            );
            let result = match args.transport {
                Transport::Ws => run_ws(agent, &args, &stats, end).await,
                Transport::Http => run_http(agent, &args, &stats, end).await,
            };
            if result.is_err() {
                stats.errors.fetch_add(1, Ordering::Relaxed);
            }
        });
        tokio::time::sleep(gap).await;
    }
    while tasks.join_next().await.is_some() {}
    progress.abort();
    let mut lat = stats.latencies_us.lock().await.clone();
    lat.sort_unstable();
    let pct = |p: f64| {
        lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0)
    };
    let report = serde_json::json!({
        "agents": args.agents,
        "transport": format!("{:?}", args.transport).to_lowercase(),
        "duration_s": started.elapsed().as_secs_f64(),
        "messages": stats.messages.load(Ordering::Relaxed),
        "errors": stats.errors.load(Ordering::Relaxed),
        "configs_applied": stats.applied.load(Ordering::Relaxed),
        "reply_latency_us": {"p50": pct(0.50), "p99": pct(0.99), "max": lat.last().copied().unwrap_or(0)},
    });
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(())
}

async fn record(stats: &Stats, sent: Instant) {
    stats.messages.fetch_add(1, Ordering::Relaxed);
    stats
        .latencies_us
        .lock()
        .await
        .push(sent.elapsed().as_micros() as u64);
}

fn interval(agent: &SimAgent, args: &Args) -> Duration {
    agent
        .heartbeat_interval_seconds
        .filter(|s| *s > 0)
        .map_or(args.heartbeat, Duration::from_secs)
}

async fn run_ws(
    mut agent: SimAgent,
    args: &Args,
    stats: &Stats,
    end: Instant,
) -> anyhow::Result<()> {
    let mut ws = WsClient::connect_with(&args.url, &args.connect).await?;
    stats.connected.fetch_add(1, Ordering::Relaxed);
    let mut outbox = vec![agent.full_report()];
    let mut next_heartbeat = Instant::now() + interval(&agent, args);
    let result = async {
        while Instant::now() < end {
            if let Some(msg) = outbox.pop() {
                let sent = Instant::now();
                ws.send(&msg).await?;
                // Replies and pushes both arrive here; the first one answers the message.
                let reply = ws.recv(Duration::from_secs(10)).await?;
                record(stats, sent).await;
                outbox.extend(react(&mut agent, &reply, stats));
                // The interval counts from the last message sent, at the server's offered value.
                next_heartbeat = Instant::now() + interval(&agent, args);
                continue;
            }
            let wait = next_heartbeat
                .min(end)
                .saturating_duration_since(Instant::now());
            match ws.next_event(wait.max(Duration::from_millis(1))).await {
                Ok(WsEvent::Message(push)) => outbox.extend(react(&mut agent, &push, stats)),
                Ok(WsEvent::Closed(_)) => anyhow::bail!("server closed the connection"),
                Err(_) if Instant::now() >= next_heartbeat => outbox.push(agent.heartbeat()),
                Err(_) => {}
            }
        }
        let bye = agent.disconnect();
        ws.request(&bye).await.context("disconnect")?;
        ws.close().await
    }
    .await;
    stats.connected.fetch_sub(1, Ordering::Relaxed);
    result
}

async fn run_http(
    mut agent: SimAgent,
    args: &Args,
    stats: &Stats,
    end: Instant,
) -> anyhow::Result<()> {
    let client = HttpClient::with_options(&args.url, &args.connect)?;
    let mut outbox = vec![agent.full_report()];
    stats.connected.fetch_add(1, Ordering::Relaxed);
    let result = async {
        while Instant::now() < end {
            let msg = outbox.pop().unwrap_or_else(|| agent.heartbeat());
            let sent = Instant::now();
            let reply = client.post(&msg, false).await?;
            let Some(reply) = reply.message.filter(|_| reply.status == 200) else {
                anyhow::bail!("server answered HTTP {}", reply.status);
            };
            record(stats, sent).await;
            outbox.extend(react(&mut agent, &reply, stats));
            if outbox.is_empty() {
                tokio::time::sleep(
                    interval(&agent, args).min(end.saturating_duration_since(Instant::now())),
                )
                .await;
            }
        }
        client.post(&agent.disconnect(), false).await.map(|_| ())
    }
    .await;
    stats.connected.fetch_sub(1, Ordering::Relaxed);
    result
}

fn react(
    agent: &mut SimAgent,
    msg: &flotilla_proto::opamp::ServerToAgent,
    stats: &Stats,
) -> Vec<flotilla_proto::opamp::AgentToServer> {
    if msg.error_response.is_some() {
        stats.errors.fetch_add(1, Ordering::Relaxed);
    }
    let out = agent.handle(msg);
    if msg.remote_config.is_some() && out.iter().any(|m| m.remote_config_status.is_some()) {
        stats.applied.fetch_add(1, Ordering::Relaxed);
    }
    // Sent in order: the outbox is popped from the back.
    out.into_iter().rev().collect()
}
