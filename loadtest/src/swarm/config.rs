//! What a swarm run is asked to do: the scenario, the transport, the agents, the limits.

use crate::client::ConnectOptions;
use crate::realistic::Shape;
use crate::sim::{ApplyBehavior, Profile};
use anyhow::{Context, bail};
use std::path::PathBuf;
use std::time::Duration;

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
    /// OpAMP endpoints; agent i starts on `urls[i % len]` and moves to another on a lost
    /// connection.
    pub urls: Vec<String>,
    /// Where agents may also go, only once they lost a connection: an agent that lost one
    /// endpoint of `urls` and `failover_urls` tries any other of them, at random.
    pub failover_urls: Vec<String>,
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
    /// Every agent heartbeats at the same moments (multiples of the interval from the start of
    /// the run): the worst case. Otherwise each beats at its own phase of the interval, as the
    /// agents of a real fleet, started at different times, do.
    pub synchronized_heartbeats: bool,
    pub reply_timeout: Duration,
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    pub profile: Profile,
    /// How much each agent reports in full ([`crate::realistic`]); zeros: the minimum.
    pub shape: Shape,
    pub apply: ApplyBehavior,
    /// Fraction of the agents that leave (and are replaced) per second.
    pub churn_per_s: Option<f64>,
    pub connect: ConnectOptions,
    /// Every agent sends its own metrics (OTLP/HTTP) this often to its gateway's /v1/metrics,
    /// over `connect` ([`super::own_metrics`]).
    pub own_metrics: Option<Duration>,
    /// Agents announce AcceptsOpAMPConnectionSettings and reconnect with a client certificate the
    /// server offers them (WebSocket), trusting `server_ca` (PEM) for the server.
    pub accept_certificates: bool,
    /// Agents do not report their remote config status (no ReportsRemoteConfig).
    pub no_config_status: bool,
    /// Agents behave as collectors run by the OpAMP supervisor ([`crate::sim::SimAgent::supervisor`]).
    pub supervisor: bool,
    pub server_ca: Option<Vec<u8>>,
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

impl SwarmConfig {
    /// `agents` agents on `urls` in `scenario`, with the command line's defaults otherwise.
    pub fn new(scenario: Scenario, urls: Vec<String>, agents: usize) -> Self {
        Self {
            scenario,
            urls,
            failover_urls: Vec::new(),
            transport: Transport::Ws,
            agents,
            connect_rate: 500.0,
            connect_concurrency: 256,
            duration: Duration::from_secs(30),
            heartbeat: Duration::from_secs(5),
            synchronized_heartbeats: false,
            reply_timeout: Duration::from_secs(10),
            backoff_min: Duration::from_millis(250),
            backoff_max: Duration::from_secs(10),
            profile: Profile::default(),
            shape: Shape::default(),
            apply: ApplyBehavior::default(),
            churn_per_s: None,
            connect: ConnectOptions::default(),
            own_metrics: None,
            accept_certificates: false,
            no_config_status: false,
            supervisor: false,
            server_ca: None,
            source_ips: 0,
            api: None,
            kill_pid: None,
            kill_after: Duration::from_secs(3),
            gateway_pids: Vec::new(),
            out: None,
            progress: false,
        }
    }

    /// `urls`, then `failover_urls`: the ring agents move along.
    pub(super) fn all_urls(&self) -> impl Iterator<Item = &String> {
        self.urls.iter().chain(&self.failover_urls)
    }

    /// The `i`-th of [`SwarmConfig::all_urls`].
    pub(super) fn url(&self, i: usize) -> &str {
        match self.urls.get(i) {
            Some(u) => u,
            None => &self.failover_urls[i - self.urls.len()],
        }
    }

    pub(super) fn check(&self) -> anyhow::Result<()> {
        if self.urls.is_empty() {
            bail!("at least one OpAMP URL is needed");
        }
        if self.agents == 0 {
            bail!("--agents must be at least 1");
        }
        if let Some(interval) = self.own_metrics {
            if interval.is_zero() {
                bail!("--own-metrics must be above 0 (e.g. 10s)");
            }
            for url in self.all_urls() {
                metrics_url(url)?;
            }
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

/// The command-line name of a value (a scenario, a transport).
pub(super) fn name(v: impl clap::ValueEnum) -> String {
    v.to_possible_value()
        .map_or(String::new(), |p| p.get_name().to_owned())
}

/// The OTLP/HTTP metrics endpoint of the gateway at `opamp_url`.
pub(super) fn metrics_url(opamp_url: &str) -> anyhow::Result<String> {
    let mut url = reqwest::Url::parse(opamp_url).with_context(|| format!("URL {opamp_url:?}"))?;
    let scheme = match url.scheme() {
        "ws" | "http" => "http",
        "wss" | "https" => "https",
        other => bail!("URL {opamp_url:?}: no metrics endpoint for scheme {other}"),
    };
    url.set_scheme(scheme)
        .map_err(|()| anyhow::anyhow!("URL {opamp_url:?}: cannot use {scheme}"))?;
    url.set_path("/v1/metrics");
    url.set_query(None);
    Ok(url.into())
}
