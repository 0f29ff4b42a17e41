//! The commands and flags of `flotilla ctl`.

pub use super::output::Format;
use clap::{Subcommand, ValueEnum};
use std::path::PathBuf;
use std::time::Duration;

/// An agent's connection status, as the API filters by it.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Status {
    Connected,
    Disconnected,
    Silent,
}

/// What an agent last said of its health.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Health {
    Healthy,
    Unhealthy,
}

/// Where an agent stands with the config it should run.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum ConfigState {
    Applied,
    Applying,
    Failed,
    /// Sent its config, but it reports no remote config status.
    Unknown,
    Pending,
    Unmanaged,
}

/// What a spent error budget does to a rollout.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum OnFailure {
    Rollback,
    Pause,
}

/// The name the API gives a value of one of the enums above.
pub fn api_name(v: impl ValueEnum) -> String {
    v.to_possible_value()
        .map(|p| p.get_name().to_owned())
        .unwrap_or_default()
}

/// The API's base URL: http:// or https://, checked before any request.
fn api_url(s: &str) -> Result<String, String> {
    let url = reqwest::Url::parse(s).map_err(|e| {
        format!("{s:?} is not a URL ({e}); give the scheme too, e.g. http://127.0.0.1:4321")
    })?;
    if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
        return Err(format!(
            "{s:?} is not an http:// or https:// URL; e.g. http://127.0.0.1:4321"
        ));
    }
    Ok(s.trim_end_matches('/').to_owned())
}

/// A duration such as 30s, 5m or 1h30m.
fn duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s)
        .map_err(|e| format!("{s:?} is not a duration such as 30s, 5m or 1h30m ({e})"))
}

#[derive(Debug, clap::Args)]
pub struct CtlArgs {
    /// Base URL of the admin API (http:// or https://).
    #[arg(
        long,
        env = "FLOTILLA_API",
        default_value = "http://127.0.0.1:4321",
        global = true,
        value_parser = api_url
    )]
    pub api: String,
    /// API token (Authorization: Bearer), when the API requires one.
    #[arg(long, env = "FLOTILLA_TOKEN", global = true, hide_env_values = true)]
    pub token: Option<String>,
    /// PEM CA that signed the API's certificate (https URLs with a private CA).
    #[arg(long, env = "FLOTILLA_API_CA", global = true)]
    pub ca: Option<PathBuf>,
    /// How to print answers: aligned tables, wider tables (config files in full), or the API's
    /// document as JSON or YAML.
    #[arg(short, long, global = true, value_enum, default_value_t = Format::Table)]
    pub output: Format,
    /// The same as -o json.
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub command: CtlCommand,
}

#[derive(Debug, Subcommand)]
pub enum CtlCommand {
    /// Fleet-wide counts: connected, healthy, silent, disconnected.
    Health,
    /// List or inspect agents.
    #[command(subcommand)]
    Agents(AgentsCommand),
    /// Store configs, see their history and differences, roll them back.
    #[command(subcommand)]
    Configs(ConfigsCommand),
    /// Server-set labels on agents (usable in selectors).
    #[command(subcommand)]
    Labels(LabelsCommand),
    /// Roll a config version out in phases, and watch, pause, resume or abort it.
    #[command(subcommand)]
    Rollouts(RolloutsCommand),
    /// Restart one agent (now over its WebSocket, or at its next poll), or every agent a
    /// selector matches at a bounded rate.
    Restart {
        /// The agent's instance uid.
        #[arg(required_unless_present = "selector", conflicts_with = "selector")]
        uid: Option<String>,
        /// Restart every agent this selector matches (e.g. "env=prod,region in (eu,us)").
        #[arg(long)]
        selector: Option<String>,
        /// Restarts per second, with --selector.
        #[arg(long, default_value_t = 10.0)]
        rate: f64,
    },
    /// Issue an agent a new client certificate and key, offered over OpAMP; its old certificate
    /// stops working once it has reconnected with the new one.
    RotateCertificate {
        /// The agent's instance uid.
        uid: String,
    },
    /// Stores the configs declared in YAML files (a file, or a directory read recursively) where
    /// they differ from the server's; unchanged ones make no new version. See docs/configs.md.
    Apply {
        /// A config document, or a directory of them (*.yaml, *.yml).
        #[arg(short = 'f', long = "file")]
        path: PathBuf,
    },
    /// What `apply -f` would change, nothing stored.
    Diff {
        /// A config document, or a directory of them (*.yaml, *.yml).
        #[arg(short = 'f', long = "file")]
        path: PathBuf,
        /// Exit 1 when something would change (for CI checks that the server matches the repo).
        #[arg(long)]
        exit_code: bool,
    },
    /// Who changed what, newest first.
    Audit {
        /// "config/otel", "agent/<uid>", "rollout/<id>", or a kind such as "config".
        #[arg(long)]
        object: Option<String>,
        /// Entries from this RFC 3339 time on, e.g. 2026-11-21T10:00:00Z.
        #[arg(long)]
        since: Option<String>,
        /// Entries up to this RFC 3339 time.
        #[arg(long)]
        until: Option<String>,
        /// At most this many entries.
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
}

#[derive(Debug, Subcommand)]
pub enum AgentsCommand {
    /// Agents matching the filters, a page at a time (or every page with --all), by instance uid.
    List {
        /// A selector over the agents' attributes and labels, e.g.
        /// "deployment.environment=prod,cloud.region in (eu-west-1,us-east-1),!canary".
        #[arg(long)]
        selector: Option<String>,
        /// Only agents with this connection status.
        #[arg(long, value_enum)]
        status: Option<Status>,
        /// Only agents that last reported this health.
        #[arg(long, value_enum)]
        health: Option<Health>,
        /// Only agents in this state with the config they should run.
        #[arg(long, value_enum)]
        config: Option<ConfigState>,
        /// Only agents whose config files come from this config.
        #[arg(long)]
        config_name: Option<String>,
        /// Only agents that should run this version of their config.
        #[arg(long)]
        config_version: Option<u64>,
        /// Only agents whose effective config differs (true) or not (false) from what they
        /// should run, past what the collector's supervisor adds.
        #[arg(long)]
        drift: Option<bool>,
        /// Agents per page (at most 1000).
        #[arg(long, default_value_t = 100)]
        limit: usize,
        /// The page after this one: the cursor the previous page printed.
        #[arg(long, conflicts_with = "all")]
        cursor: Option<String>,
        /// Every page, one after the other (the table's rows, or one document per page: JSON
        /// pages one a line, YAML documents apart).
        #[arg(long)]
        all: bool,
    },
    /// Everything known of one agent: description, health tree, configs, packages.
    Get {
        /// The agent's instance uid.
        uid: String,
    },
    /// The agents' own metrics: the top agents by CPU, memory, refused and failed items per
    /// second, and the exporters failing or with queues near full, among the agents that sent
    /// their metrics in the last 5 minutes.
    Metrics {
        /// Only agents this selector matches (as for `agents list`), e.g. "env=prod".
        #[arg(long)]
        selector: Option<String>,
        /// At most this many agents (or exporters) per list, 1 to 100 [default: 10].
        #[arg(long, value_parser = clap::value_parser!(u8).range(1..=100))]
        top: Option<u8>,
    },
    /// Removes an agent's record (it comes back at its next message if still connected).
    Delete {
        /// The agent's instance uid.
        uid: String,
    },
    /// Sends an agent a custom message (OpAMP CustomMessage) under a custom capability it
    /// declares: now over its WebSocket, or with the reply to its next message.
    SendMessage {
        /// The agent's instance uid.
        uid: String,
        /// The custom capability (one the agent lists in its custom capabilities).
        #[arg(long)]
        capability: String,
        /// The message's type within the capability.
        #[arg(long = "type")]
        kind: String,
        /// The data, as text.
        #[arg(long, conflicts_with = "data_file")]
        data: Option<String>,
        /// The data, read from a file (any bytes, at most 64 KiB).
        #[arg(long)]
        data_file: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
pub enum ConfigsCommand {
    /// Stores a new version of config NAME from files; agents matching the selector get it
    /// (unless --no-activate, which keeps it for a rollout).
    #[command(visible_alias = "put")]
    Apply {
        /// The config's name (letters, digits, '-', '_', '.').
        name: String,
        /// A file to include (its base name becomes the file name in the config). Repeatable.
        #[arg(short, long = "file", required = true)]
        files: Vec<PathBuf>,
        /// Which agents get the config, e.g. "env=prod,region in (eu,us)" (all when left out).
        #[arg(long)]
        selector: Option<String>,
        /// Store the version without giving it to agents; roll it out with `rollouts start`.
        #[arg(long)]
        no_activate: bool,
    },
    /// The active version of every config.
    List,
    /// One config: the active version, or another.
    Get {
        /// The config's name.
        name: String,
        /// A version other than the active one.
        #[arg(long)]
        version: Option<u64>,
    },
    /// Every version of a config, newest first.
    History {
        /// The config's name.
        name: String,
    },
    /// What changed between two versions (TO defaults to the latest).
    Diff {
        /// The config's name.
        name: String,
        /// The version to compare from.
        from: u64,
        /// The version to compare to [default: the latest].
        to: Option<u64>,
    },
    /// Stops giving a config to agents (no version active; its history stays).
    Delete {
        /// The config's name.
        name: String,
    },
    /// Makes a new version repeating VERSION, active at once.
    Rollback {
        /// The config's name.
        name: String,
        /// The version to repeat.
        version: u64,
    },
}

#[derive(Debug, Subcommand)]
pub enum LabelsCommand {
    /// An agent's labels.
    Get {
        /// The agent's instance uid.
        uid: String,
    },
    /// Sets labels: KEY=VALUE ...
    Set {
        /// The agent's instance uid.
        uid: String,
        /// KEY=VALUE pairs.
        #[arg(required = true)]
        labels: Vec<String>,
    },
    /// Removes labels: KEY ...
    Remove {
        /// The agent's instance uid.
        uid: String,
        /// The keys to remove.
        #[arg(required = true)]
        keys: Vec<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum RolloutsCommand {
    /// Starts rolling a version of CONFIG out in phases.
    Start {
        /// The config to roll out.
        config: String,
        /// The version to roll out [default: the latest].
        #[arg(long)]
        version: Option<u64>,
        /// Agents in the first phase.
        #[arg(long, conflicts_with = "percentages")]
        initial: Option<usize>,
        /// Each phase is this many times the previous one.
        #[arg(long, default_value_t = 2.0)]
        multiplier: f64,
        /// At most this many agents per phase.
        #[arg(long)]
        max_per_phase: Option<usize>,
        /// Cumulative percentages per phase instead, e.g. 10,50,100.
        #[arg(long, value_delimiter = ',')]
        percentages: Vec<f64>,
        /// How long a phase's agents must stay applied and healthy before the next phase
        /// (e.g. 30s, 5m).
        #[arg(long, default_value = "30s", value_parser = duration)]
        soak: Duration,
        /// Failure percentage (over at least --min-sample settled agents) that stops the rollout.
        #[arg(long, default_value_t = 10.0)]
        max_failure_percent: f64,
        /// Settled agents needed before the error budget is judged.
        #[arg(long, default_value_t = 5)]
        min_sample: usize,
        /// What a spent error budget does.
        #[arg(long, value_enum, default_value_t = OnFailure::Rollback)]
        on_failure: OnFailure,
        /// Start it even when no agent would take the version now (else refused).
        #[arg(long)]
        allow_empty: bool,
        /// Roll it out region by region instead, in this order (a fleet of several regions):
        /// each region runs these phases on its agents; the next starts when it completed.
        #[arg(long, value_delimiter = ',', conflicts_with = "allow_empty")]
        regions: Vec<String>,
        /// Follow it with a progress bar until it ends.
        #[arg(long)]
        watch: bool,
    },
    /// Every rollout, newest first.
    List,
    /// Shows a rollout's phases; with --watch, follows it until it ends.
    Status {
        /// The rollout's id.
        id: String,
        /// A rollout across regions (started with --regions).
        #[arg(long)]
        regions: bool,
        /// Follow it with a progress bar until it ends.
        #[arg(long)]
        watch: bool,
    },
    /// Holds a running rollout where it is.
    Pause {
        /// The rollout's id.
        id: String,
    },
    /// Carries a paused rollout on.
    Resume {
        /// The rollout's id.
        id: String,
    },
    /// Stops a rollout; its agents go back to the active version.
    Abort {
        /// The rollout's id.
        id: String,
    },
}
