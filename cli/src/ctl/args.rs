//! The commands and flags of `flotilla ctl`.

use clap::Subcommand;
use std::path::PathBuf;

#[derive(Debug, clap::Args)]
pub struct CtlArgs {
    /// Base URL of the admin API.
    #[arg(
        long,
        env = "FLOTILLA_API",
        default_value = "http://127.0.0.1:4321",
        global = true
    )]
    pub api: String,
    /// API token (Authorization: Bearer), when the API requires one.
    #[arg(long, env = "FLOTILLA_TOKEN", global = true, hide_env_values = true)]
    pub token: Option<String>,
    /// PEM CA that signed the API's certificate (https URLs with a private CA).
    #[arg(long, env = "FLOTILLA_API_CA", global = true)]
    pub ca: Option<PathBuf>,
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
    RotateCertificate { uid: String },
    /// Who changed what, newest first.
    Audit {
        /// "config/otel", "agent/<uid>", "rollout/<id>", or a kind such as "config".
        #[arg(long)]
        object: Option<String>,
        /// RFC 3339 time, e.g. 2026-11-21T10:00:00Z.
        #[arg(long)]
        since: Option<String>,
        #[arg(long)]
        until: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: usize,
        /// Print the API's JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum AgentsCommand {
    List {
        /// A selector over the agents' attributes and labels: "env=prod,region in (eu,us),!canary".
        #[arg(long)]
        selector: Option<String>,
        /// connected, disconnected or silent.
        #[arg(long)]
        status: Option<String>,
        /// healthy or unhealthy.
        #[arg(long)]
        health: Option<String>,
        #[arg(long, default_value_t = 100)]
        limit: usize,
        /// Print the API's JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    Get {
        uid: String,
    },
    /// Removes an agent's record (it comes back at its next message if still connected).
    Delete {
        uid: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum ConfigsCommand {
    /// Stores a new version of config NAME from files; agents matching the selector get it
    /// (unless --no-activate, which keeps it for a rollout).
    #[command(visible_alias = "put")]
    Apply {
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
    List,
    Get {
        name: String,
        /// A version other than the active one.
        #[arg(long)]
        version: Option<u64>,
    },
    /// Every version of a config, newest first.
    History {
        name: String,
    },
    /// What changed between two versions (TO defaults to the latest).
    Diff {
        name: String,
        from: u64,
        to: Option<u64>,
    },
    /// Makes a new version repeating VERSION, active at once.
    Rollback {
        name: String,
        version: u64,
    },
}

#[derive(Debug, Subcommand)]
pub enum LabelsCommand {
    Get {
        uid: String,
    },
    /// Sets labels: KEY=VALUE ...
    Set {
        uid: String,
        #[arg(required = true)]
        labels: Vec<String>,
    },
    /// Removes labels: KEY ...
    Remove {
        uid: String,
        #[arg(required = true)]
        keys: Vec<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum RolloutsCommand {
    /// Starts rolling a version of CONFIG out in phases.
    Start {
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
        /// How long a phase's agents must stay applied and healthy before the next phase.
        #[arg(long, default_value = "30s")]
        soak: String,
        /// Failure percentage (over at least --min-sample settled agents) that stops the rollout.
        #[arg(long, default_value_t = 10.0)]
        max_failure_percent: f64,
        #[arg(long, default_value_t = 5)]
        min_sample: usize,
        /// What a spent error budget does: rollback or pause.
        #[arg(long, default_value = "rollback")]
        on_failure: String,
        /// Follow it with a progress bar until it ends.
        #[arg(long)]
        watch: bool,
    },
    List,
    /// Shows a rollout's phases; with --watch, follows it until it ends.
    Status {
        id: String,
        #[arg(long)]
        watch: bool,
        /// Print the API's JSON.
        #[arg(long)]
        json: bool,
    },
    Pause {
        id: String,
    },
    Resume {
        id: String,
    },
    Abort {
        id: String,
    },
}
