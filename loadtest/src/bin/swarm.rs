//! flotilla-swarm: runs many synthetic OpAMP agents against one or more servers through a scenario
//! (connect storm, steady state, config rollout, churn, gateway loss) for a bounded time; prints a
//! progress line every second and a summary at the end, and writes report.json and timeline.svg.

use anyhow::Context;
use clap::Parser;
use flotilla_loadtest::client::ConnectOptions;
use flotilla_loadtest::realistic::Shape;
use flotilla_loadtest::sim::{ApplyBehavior, Profile, Weighted};
use flotilla_loadtest::swarm::{self, Api, Scenario, SwarmConfig, Transport};
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Parser)]
#[command(about = "Synthetic OpAMP agent swarm and benchmark scenarios")]
struct Args {
    #[arg(long, value_enum, default_value = "steady")]
    scenario: Scenario,
    /// OpAMP endpoint, e.g. ws://127.0.0.1:4320/v1/opamp or http://127.0.0.1:4320/v1/opamp.
    /// Repeat for several gateways: agents are spread over them and fail over to another.
    #[arg(long = "url", default_value = "ws://127.0.0.1:4320/v1/opamp")]
    urls: Vec<String>,
    /// An endpoint agents move to only after losing a connection (repeatable): an agent that lost
    /// one of the --url and --failover-url endpoints tries any other, at random. So each swarm of
    /// several can have its own gateway with the others as failover.
    #[arg(long = "failover-url")]
    failover_urls: Vec<String>,
    /// How agents talk OpAMP [default: from the URL: ws:// and wss:// WebSocket, http:// and
    /// https:// polling].
    #[arg(long, value_enum)]
    transport: Option<Transport>,
    #[arg(long, default_value_t = 100)]
    agents: usize,
    /// New agents per second while ramping up (0: all at once, see --connect-concurrency).
    #[arg(long, default_value_t = 500.0)]
    connect_rate: f64,
    /// At most this many agents connecting at the same time.
    #[arg(long, default_value_t = 256)]
    connect_concurrency: usize,
    /// Upper bound of the run; it stops by itself.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Heartbeat (or poll) interval of each agent, unless the server offers another.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    heartbeat: Duration,
    /// Every agent heartbeats at the same moments (multiples of --heartbeat from the start of
    /// the run), the worst case; by default each beats at its own phase, as a real fleet does.
    #[arg(long)]
    synchronized_heartbeats: bool,
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    reply_timeout: Duration,
    /// First reconnect delay; doubles per failed attempt up to --backoff-max, with jitter.
    #[arg(long, default_value = "250ms", value_parser = humantime::parse_duration)]
    backoff_min: Duration,
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    backoff_max: Duration,
    /// service.name of every agent.
    #[arg(long, default_value = "io.opentelemetry.collector")]
    service: String,
    /// deployment.environment values with weights, e.g. prod=70,staging=20,dev=10.
    #[arg(long, default_value = "prod=70,staging=20,dev=10")]
    env: Weighted,
    /// cloud.region values with weights.
    #[arg(long, default_value = "eu-west-1=50,us-east-1=30,ap-south-1=20")]
    region: Weighted,
    /// service.version values with weights.
    #[arg(long, default_value = "0.110.0=80,0.109.0=20")]
    version: Weighted,
    /// Attributes per agent in all (identifying and non-identifying): the usual ones count, the
    /// rest are host., os., cloud. and k8s. attributes with values of each agent's own
    /// [default: 0, the usual 9 alone].
    #[arg(long)]
    attributes: Option<usize>,
    /// Entries of each agent's health tree (pipelines and their receivers, processors and
    /// exporters, all healthy) [default: 0, the usual 6].
    #[arg(long)]
    components: Option<usize>,
    /// Bytes of the effective config each agent reports: a collector config padded to about
    /// this with rules of a second file, the same for every agent; after applying a pushed
    /// config, the pushed files plus the same padding [default: 0, none until a push].
    #[arg(long)]
    effective_config_bytes: Option<usize>,
    /// Reports of a production fleet: --attributes 15 --components 30
    /// --effective-config-bytes 20000 (each may still be given). Full reports grow, heartbeats do
    /// not.
    #[arg(long)]
    realistic: bool,
    /// How long applying a pushed config takes (APPLYING is reported first when above 0).
    #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
    apply_delay: Duration,
    /// Probability (0 to 1) that applying a config fails (FAILED with an error).
    #[arg(long, default_value_t = 0.0)]
    apply_failure_rate: f64,
    /// After a failed apply, go back to the previous config and report it APPLIED, as the
    /// collector's supervisor does with rollback on.
    #[arg(long)]
    rollback: bool,
    /// Agents do not report their remote config status (the supervisor's default: no
    /// ReportsRemoteConfig capability).
    #[arg(long)]
    no_config_status: bool,
    /// Agents behave as collectors run by the OpAMP supervisor (remote config on): unhealthy
    /// until the collector is up, components reported by hash until asked, effective config as
    /// one "" entry with the supervisor's sections, no status for an equivalent config.
    #[arg(long)]
    supervisor: bool,
    /// Churn: fraction of the agents leaving (replaced by new ones) per second, e.g. 0.01.
    #[arg(long)]
    churn: Option<f64>,
    /// Admin API for the rollout scenario, e.g. http://127.0.0.1:4321.
    #[arg(long)]
    api: Option<String>,
    #[arg(long)]
    api_token: Option<String>,
    /// PEM CA of an https:// API.
    #[arg(long)]
    api_ca: Option<PathBuf>,
    /// gateway-loss: the pid of the gateway process to kill (SIGKILL).
    #[arg(long)]
    kill_pid: Option<u32>,
    /// gateway-loss: how long after every agent is connected the gateway is killed.
    #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
    kill_after: Duration,
    /// Pid of a gateway (repeatable) whose resident memory is read before and after connecting.
    #[arg(long = "gateway-pid")]
    gateway_pids: Vec<u32>,
    /// Spread connections over source addresses 127.0.0.1..=127.0.0.N (0: the OS picks).
    #[arg(long, default_value_t = 0)]
    source_ips: u8,
    /// PEM CA to trust for wss:// and https:// URLs.
    #[arg(long)]
    ca: Option<PathBuf>,
    /// PEM client certificate every agent presents (mutual TLS), with --key.
    #[arg(long, requires = "key")]
    cert: Option<PathBuf>,
    /// PEM private key of --cert.
    #[arg(long, requires = "cert")]
    key: Option<PathBuf>,
    /// Agents take client certificates the server offers (AcceptsOpAMPConnectionSettings) and
    /// reconnect with them, so `flotilla ctl rotate-certificate` can be tried (wss:// with --ca).
    #[arg(long, requires = "ca")]
    accept_certificates: bool,
    /// Bearer token every agent presents (--agent-tokens on the server).
    #[arg(long)]
    token: Option<String>,
    /// Every agent also sends a collector's own metrics (OTLP/HTTP protobuf) this often, e.g.
    /// 10s, to its gateway's /v1/metrics (its --url with that path; the destination the server
    /// offers is not read), with --ca, --cert, --key and --token; spread over the interval, at
    /// most 256 in flight. Off by default.
    #[arg(long, value_parser = humantime::parse_duration)]
    own_metrics: Option<Duration>,
    /// Directory for report.json and timeline.svg.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Print the JSON report instead of the summary.
    #[arg(long)]
    json: bool,
    /// No progress line.
    #[arg(long)]
    quiet: bool,
}

fn read(p: &PathBuf) -> anyhow::Result<Vec<u8>> {
    std::fs::read(p).with_context(|| format!("cannot read {}", p.display()))
}

/// TLS trust, client identity and token from the flags.
fn connect_options(args: &Args) -> anyhow::Result<ConnectOptions> {
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

/// The transport the URLs' scheme says, or the one asked for if it agrees with them.
fn transport(args: &Args) -> anyhow::Result<Transport> {
    let of = |url: &str| match url.split("://").next() {
        Some("ws" | "wss") => Ok(Transport::Ws),
        Some("http" | "https") => Ok(Transport::Http),
        _ => Err(anyhow::anyhow!(
            "--url {url:?}: give ws://, wss://, http:// or https://"
        )),
    };
    let schemes = args
        .urls
        .iter()
        .chain(&args.failover_urls)
        .map(|u| of(u))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let first = schemes[0];
    if schemes.iter().any(|t| *t != first) {
        anyhow::bail!("--url: give every URL the same kind (all ws(s):// or all http(s)://)");
    }
    match args.transport {
        Some(t) if t != first => anyhow::bail!(
            "--transport {t:?} does not fit --url {} (its scheme says {first:?}); leave --transport out",
            args.urls[0]
        ),
        _ => Ok(first),
    }
}

fn config(args: Args) -> anyhow::Result<SwarmConfig> {
    if !(0.0..=1.0).contains(&args.apply_failure_rate) {
        anyhow::bail!("--apply-failure-rate must be between 0 and 1");
    }
    if args.source_ips > 254 {
        anyhow::bail!("--source-ips must be at most 254 (127.0.0.1 to 127.0.0.254)");
    }
    let connect = connect_options(&args)?;
    let base = if args.realistic {
        Shape::REALISTIC
    } else {
        Shape::default()
    };
    let shape = Shape {
        attributes: args.attributes.unwrap_or(base.attributes),
        components: args.components.unwrap_or(base.components),
        effective_config_bytes: args
            .effective_config_bytes
            .unwrap_or(base.effective_config_bytes),
    };
    let transport = transport(&args)?;
    let api = match args.api {
        Some(url) => Some(Api {
            url,
            token: args.api_token,
            ca: args.api_ca.as_ref().map(read).transpose()?,
        }),
        None => None,
    };
    Ok(SwarmConfig {
        scenario: args.scenario,
        urls: args.urls,
        failover_urls: args.failover_urls,
        transport,
        agents: args.agents,
        connect_rate: args.connect_rate,
        connect_concurrency: args.connect_concurrency,
        duration: args.duration,
        heartbeat: args.heartbeat,
        synchronized_heartbeats: args.synchronized_heartbeats,
        reply_timeout: args.reply_timeout,
        backoff_min: args.backoff_min,
        backoff_max: args.backoff_max,
        profile: Profile {
            service: args.service,
            environment: args.env,
            region: args.region,
            version: args.version,
        },
        shape,
        apply: ApplyBehavior {
            delay: args.apply_delay,
            failure_rate: args.apply_failure_rate,
            rollback: args.rollback,
        },
        churn_per_s: args.churn,
        connect,
        own_metrics: args.own_metrics,
        accept_certificates: args.accept_certificates,
        no_config_status: args.no_config_status,
        supervisor: args.supervisor,
        server_ca: args.ca.as_ref().map(read).transpose()?,
        source_ips: args.source_ips,
        api,
        kill_pid: args.kill_pid,
        kill_after: args.kill_after,
        gateway_pids: args.gateway_pids,
        out: args.out,
        progress: !args.quiet,
    })
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let json = args.json;
    let report = swarm::run(config(args)?).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!("{report}");
    }
    Ok(())
}
