//! Where settings come from: flags and `FLOTILLA_*` variables (`ServeArgs`, through clap) and
//! the TOML file (`FileConfig`), with the errors of reading them.

use crate::telemetry::traces::OtlpProtocol;
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum ConfigError {
    // Not a `source`: the message says it, once.
    #[error("cannot read config file {path}: {error}")]
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("invalid config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{0}")]
    Invalid(String),
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Gateway,
    Coordinator,
}

/// Flags of `flotilla serve`; every one is optional here so the file and defaults can fill in.
#[derive(Debug, Default, Clone, clap::Args)]
pub struct ServeArgs {
    /// TOML file with any of the settings below (kebab-case keys).
    #[arg(long, env = "FLOTILLA_CONFIG")]
    pub config: Option<PathBuf>,
    /// Roles this process runs [default: gateway,coordinator].
    #[arg(long, env = "FLOTILLA_ROLES", value_delimiter = ',')]
    pub roles: Option<Vec<Role>>,
    /// OpAMP listener (WebSocket and HTTP at /v1/opamp) [default: 0.0.0.0:4320].
    #[arg(long, env = "FLOTILLA_OPAMP_LISTEN")]
    pub opamp_listen: Option<SocketAddr>,
    /// Admin API listener [default: 0.0.0.0:4321].
    #[arg(long, env = "FLOTILLA_API_LISTEN")]
    pub api_listen: Option<SocketAddr>,
    /// NATS URL; with --redis-url, runs the clustered mode instead of the embedded default.
    /// Several servers comma-separated; `tls://` requires TLS; credentials in the URL
    /// (`nats://user:password@host:4222`, `nats://token@host:4222`) are sent to the server.
    #[arg(long, env = "FLOTILLA_NATS_URL")]
    pub nats_url: Option<String>,
    /// NATS credentials file (a JWT and an nkey seed, as `nsc` writes them).
    #[arg(long, env = "FLOTILLA_NATS_CREDS")]
    pub nats_creds: Option<PathBuf>,
    /// PEM CA to verify the NATS servers' certificates with (else the system's roots); implies TLS.
    #[arg(long, env = "FLOTILLA_NATS_CA")]
    pub nats_ca: Option<PathBuf>,
    /// PEM client certificate for NATS servers that verify clients (with --nats-key).
    #[arg(long, env = "FLOTILLA_NATS_CERT")]
    pub nats_cert: Option<PathBuf>,
    /// PEM private key for --nats-cert.
    #[arg(long, env = "FLOTILLA_NATS_KEY")]
    pub nats_key: Option<PathBuf>,
    /// Redis URL; with --nats-url, runs the clustered mode instead of the embedded default.
    /// `rediss://` for TLS; `redis://:password@host:6379` or `redis://user:password@...` (ACL);
    /// `redis+sentinel://[user:password@]host:port[,host:port...]/<master-name>` for a primary
    /// that Sentinel fails over (the credentials serve the Sentinels and the primary). Redis
    /// Cluster is refused.
    #[arg(long, env = "FLOTILLA_REDIS_URL")]
    pub redis_url: Option<String>,
    /// PEM CA to verify Redis's certificate with (else the system's roots), for `rediss://`.
    #[arg(long, env = "FLOTILLA_REDIS_CA")]
    pub redis_ca: Option<PathBuf>,
    /// PEM client certificate for a Redis that verifies clients (`tls-auth-clients yes`), with
    /// --redis-key.
    #[arg(long, env = "FLOTILLA_REDIS_CERT")]
    pub redis_cert: Option<PathBuf>,
    /// PEM private key for --redis-cert.
    #[arg(long, env = "FLOTILLA_REDIS_KEY")]
    pub redis_key: Option<PathBuf>,
    /// Where the embedded store keeps its data [default: ./flotilla-data].
    #[arg(long, env = "FLOTILLA_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Region name, part of every bus subject [default: local].
    #[arg(long, env = "FLOTILLA_REGION")]
    pub region: Option<String>,
    /// Every region of the fleet (this one included), comma-separated: fleet views answer for
    /// all of them, asking the others over NATS (a supercluster) [default: this region alone].
    #[arg(long, env = "FLOTILLA_REGIONS", value_delimiter = ',')]
    pub regions: Vec<String>,
    /// How long a fleet view waits for the other regions before answering without them (and
    /// saying which are missing) [default: 2s].
    #[arg(long, env = "FLOTILLA_REGION_TIMEOUT", value_parser = humantime::parse_duration)]
    pub region_timeout: Option<Duration>,
    /// The OpAMP URL of a region's gateways, as REGION=URL: agents of that region that reach
    /// this one are offered it. Repeatable.
    #[arg(long, env = "FLOTILLA_REGION_ENDPOINT")]
    pub region_endpoint: Vec<String>,
    /// The agent attribute that names an agent's home region (a `home-region` label pins it
    /// instead) [default: cloud.region].
    #[arg(long, env = "FLOTILLA_HOME_REGION_ATTRIBUTE")]
    pub home_region_attribute: Option<String>,
    /// Log lines as text or as JSON objects, one a line, on stderr [default: text].
    #[arg(long, env = "FLOTILLA_LOG_FORMAT", value_enum)]
    pub log_format: Option<LogFormat>,
    /// Which logs to write: a level (error, warn, info, debug, trace) or a tracing filter such as
    /// "info,flotilla_gateway=debug" [default: RUST_LOG, else info].
    #[arg(long, env = "FLOTILLA_LOG_LEVEL")]
    pub log_level: Option<String>,
    /// Export traces to this OTLP receiver (a base URL, as OTEL_EXPORTER_OTLP_ENDPOINT, which
    /// also turns export on) [default: off].
    #[arg(long, env = "FLOTILLA_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,
    /// OTLP transport [default: OTEL_EXPORTER_OTLP_PROTOCOL, else http/protobuf].
    #[arg(long, env = "FLOTILLA_OTLP_PROTOCOL", value_enum)]
    pub otlp_protocol: Option<OtlpProtocol>,
    /// Share of the traces started here that are exported, 0 to 1; a trace an earlier hop sampled
    /// is always kept [default: OTEL_TRACES_SAMPLER, else 0.1].
    #[arg(long, env = "FLOTILLA_TRACE_SAMPLE_RATIO")]
    pub trace_sample_ratio: Option<f64>,
    /// This process's id in the cluster [default: random].
    #[arg(long, env = "FLOTILLA_NODE_ID")]
    pub node_id: Option<String>,
    /// PEM certificate chain for TLS on the OpAMP listener.
    #[arg(long, env = "FLOTILLA_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for --tls-cert.
    #[arg(long, env = "FLOTILLA_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// PEM CA bundle; when given, agents must present a certificate it signed (mutual TLS).
    #[arg(long, env = "FLOTILLA_CLIENT_CA")]
    pub client_ca: Option<PathBuf>,
    /// PEM certificate revocation list(s) checked against agents' certificates (with --client-ca).
    #[arg(long, env = "FLOTILLA_CRL")]
    pub crl: Option<PathBuf>,
    /// Oldest TLS version accepted: 1.3, or 1.2 for old clients [default: 1.3].
    #[arg(long, env = "FLOTILLA_TLS_MIN_VERSION")]
    pub tls_min_version: Option<TlsVersion>,
    /// How an agent's certificate binds its instance_uid [default: registry with --client-ca,
    /// else none].
    #[arg(long, env = "FLOTILLA_AGENT_IDENTITY")]
    pub agent_identity: Option<AgentIdentity>,
    /// File of bearer tokens agents must present (one per line; `#` starts a comment).
    #[arg(long, env = "FLOTILLA_AGENT_TOKENS")]
    pub agent_tokens: Option<PathBuf>,
    /// Open agent connections one gateway holds before answering 503 [default: what the
    /// process's open-file limit allows, less room for its own files].
    #[arg(long, env = "FLOTILLA_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,
    /// Agent connections are closed after this age (plus up to 10% jitter) so that rotated
    /// certificates and CRLs reach them; 0s keeps them forever [default: 24h].
    #[arg(long, env = "FLOTILLA_MAX_CONNECTION_AGE", value_parser = humantime::parse_duration)]
    pub max_connection_age: Option<Duration>,
    /// Messages per second one agent connection may send (bursts of 5x) [default: 10].
    #[arg(long, env = "FLOTILLA_AGENT_MESSAGE_RATE")]
    pub agent_message_rate: Option<u32>,
    /// Time allowed for a TLS handshake, the request headers, a request body, a WebSocket's
    /// first message and any WebSocket message once it has begun to arrive [default: 10s].
    #[arg(long, env = "FLOTILLA_HANDSHAKE_TIMEOUT", value_parser = humantime::parse_duration)]
    pub handshake_timeout: Option<Duration>,
    /// Bytes of agent messages being received at once, over all of a gateway's connections;
    /// a connection whose message would pass it is closed [default: 268435456].
    #[arg(long, env = "FLOTILLA_MAX_INFLIGHT_BYTES")]
    pub max_inflight_bytes: Option<u64>,
    /// PEM CA certificate the coordinator signs agents' certificates with (CSR flow, offers).
    #[arg(long, env = "FLOTILLA_SIGNING_CA_CERT")]
    pub signing_ca_cert: Option<PathBuf>,
    /// PEM private key of --signing-ca-cert.
    #[arg(long, env = "FLOTILLA_SIGNING_CA_KEY")]
    pub signing_ca_key: Option<PathBuf>,
    /// Lifetime of the certificates the coordinator issues [default: 30d].
    #[arg(long, env = "FLOTILLA_ISSUED_CERT_VALIDITY", value_parser = humantime::parse_duration)]
    pub issued_cert_validity: Option<Duration>,
    /// The OpAMP URL agents reach this server at (e.g. wss://opamp.example.com:4320/v1/opamp):
    /// certificate offers carry it as their destination, which the collector's supervisor needs
    /// to take them.
    #[arg(long, env = "FLOTILLA_OPAMP_ADVERTISE_URL")]
    pub opamp_advertise_url: Option<String>,
    /// PEM CA that signed the OpAMP listener's certificate: certificate offers carry it
    /// (tls.ca_pem_contents) so agents keep verifying the server.
    #[arg(long, env = "FLOTILLA_OPAMP_SERVER_CA")]
    pub opamp_server_ca: Option<PathBuf>,
    /// Where agents that report their own metrics are told to send them (OTLP/HTTP, a full URL
    /// such as https://opamp.example.com:4320/v1/metrics), unless their config names another
    /// destination; `none`: not offered. [default: the gateway's /v1/metrics, at the host and
    /// port the agent reached it with]
    #[arg(long, env = "FLOTILLA_AGENT_METRICS_URL")]
    pub agent_metrics_url: Option<String>,
    /// Serve GET /metrics/agents on the API port: Prometheus series per agent (up, healthy, CPU,
    /// memory, exporters' failures and queues), about 4 series per agent plus 2 per exporter.
    #[arg(long, env = "FLOTILLA_PER_AGENT_METRICS")]
    pub per_agent_metrics: bool,
    /// A destination gateways forward a copy of agents' own metrics to, as NAME=URL (an
    /// OTLP/HTTP metrics URL); configs choose it with settings.own_metrics_forward. Repeatable.
    #[arg(long, env = "FLOTILLA_AGENT_METRICS_FORWARD")]
    pub agent_metrics_forward: Vec<String>,
    /// TOML file of admin API tokens with roles (viewer, operator, admin); without it the API
    /// is open to anyone who can reach it.
    #[arg(long, env = "FLOTILLA_API_TOKENS")]
    pub api_tokens: Option<PathBuf>,
    /// PEM certificate chain for TLS on the API listener.
    #[arg(long, env = "FLOTILLA_API_TLS_CERT")]
    pub api_tls_cert: Option<PathBuf>,
    /// PEM private key for --api-tls-cert.
    #[arg(long, env = "FLOTILLA_API_TLS_KEY")]
    pub api_tls_key: Option<PathBuf>,
    /// Heartbeat interval offered to agents; silence is 3 intervals without a message [default: 30s].
    #[arg(long, env = "FLOTILLA_HEARTBEAT_INTERVAL", value_parser = humantime::parse_duration)]
    pub heartbeat_interval: Option<Duration>,
    /// Largest OpAMP message accepted, after decompression, in bytes; in a cluster also no more
    /// than the NATS server's max_payload allows [default: 4194304].
    #[arg(long, env = "FLOTILLA_MAX_MESSAGE_SIZE")]
    pub max_message_size: Option<usize>,
    /// Largest admin API request body in bytes (a config's JSON, a console form); larger ones
    /// are answered 413. At least --max-message-size [default: twice --max-message-size,
    /// 8388608].
    #[arg(long, env = "FLOTILLA_API_MAX_BODY")]
    pub api_max_body: Option<usize>,
    /// How long audit log entries are kept [default: 90days].
    #[arg(long, env = "FLOTILLA_AUDIT_RETENTION", value_parser = humantime::parse_duration)]
    pub audit_retention: Option<Duration>,
    /// Agents disconnected (or silent) for longer than this are removed [default: 30days].
    #[arg(long, env = "FLOTILLA_AGENT_RETENTION", value_parser = humantime::parse_duration)]
    pub agent_retention: Option<Duration>,
    /// Largest effective config an agent may report, in bytes (all files) [default: 1048576].
    #[arg(long, env = "FLOTILLA_MAX_EFFECTIVE_CONFIG_SIZE")]
    pub max_effective_config_size: Option<usize>,
    /// Most components in an agent's health tree [default: 1000].
    #[arg(long, env = "FLOTILLA_MAX_HEALTH_COMPONENTS")]
    pub max_health_components: Option<usize>,
    /// Most attributes (identifying and non-identifying) in an agent's description [default: 200].
    #[arg(long, env = "FLOTILLA_MAX_ATTRIBUTES")]
    pub max_attributes: Option<usize>,
    /// Largest record the server keeps of one agent (everything it reported), in bytes
    /// [default: 4194304].
    #[arg(long, env = "FLOTILLA_MAX_AGENT_RECORD_SIZE")]
    pub max_agent_record_size: Option<usize>,
    /// A regular expression (case-insensitive) for key names whose values are hidden in the
    /// effective configs the API shows; repeatable, replaces the built-in list (password, secret,
    /// token, api_key, authorization, credential, private_key, bearer, access_key, passphrase).
    #[arg(
        long = "redact-pattern",
        env = "FLOTILLA_REDACT_PATTERNS",
        value_delimiter = ';'
    )]
    pub redact_patterns: Vec<String>,
    /// Send agent and rollout alerts (firing and resolved) to this URL as JSON; repeatable.
    #[arg(
        long = "alert-webhook",
        env = "FLOTILLA_ALERT_WEBHOOKS",
        value_delimiter = ','
    )]
    pub alert_webhooks: Vec<String>,
    /// Send alerts to this Alertmanager (its base URL, e.g. http://alertmanager:9093, v2 API);
    /// repeatable.
    #[arg(
        long = "alertmanager-url",
        env = "FLOTILLA_ALERTMANAGER_URLS",
        value_delimiter = ','
    )]
    pub alertmanager_urls: Vec<String>,
    /// Which conditions raise alerts: unhealthy, silent, disconnected, config_failed,
    /// rollout_paused, rollout_rolled_back, exporter_failing, exporter_queue_full [default: all
    /// but disconnected].
    #[arg(long, env = "FLOTILLA_ALERT_KINDS", value_delimiter = ',')]
    pub alert_kinds: Vec<String>,
    /// How long an agent may be unhealthy (or disconnected, or have an exporter failing or a
    /// queue near full) before it is alerted on, or counts as failing in a rollout: supervisors
    /// report unhealthy until their collector is up [default: 1m].
    #[arg(long, env = "FLOTILLA_ALERT_GRACE", value_parser = humantime::parse_duration)]
    pub alert_grace: Option<Duration>,
    /// How often the fleet is checked for alerts and sinks are told [default: 5s].
    #[arg(long, env = "FLOTILLA_ALERT_INTERVAL", value_parser = humantime::parse_duration)]
    pub alert_interval: Option<Duration>,
    /// Shard lease time to live in a cluster; renewed every third of it, and a coordinator stops
    /// acting on a shard two thirds of it after its last renewal [default: 15s].
    #[arg(long, env = "FLOTILLA_LEASE_TTL", value_parser = humantime::parse_duration)]
    pub lease_ttl: Option<Duration>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(super) struct FileConfig {
    pub(super) roles: Option<Vec<Role>>,
    pub(super) opamp_listen: Option<SocketAddr>,
    pub(super) api_listen: Option<SocketAddr>,
    pub(super) nats_url: Option<String>,
    pub(super) nats_creds: Option<PathBuf>,
    pub(super) nats_ca: Option<PathBuf>,
    pub(super) nats_cert: Option<PathBuf>,
    pub(super) nats_key: Option<PathBuf>,
    pub(super) redis_url: Option<String>,
    pub(super) redis_ca: Option<PathBuf>,
    pub(super) redis_cert: Option<PathBuf>,
    pub(super) redis_key: Option<PathBuf>,
    pub(super) data_dir: Option<PathBuf>,
    pub(super) region: Option<String>,
    #[serde(default)]
    pub(super) regions: Vec<String>,
    #[serde(default, with = "humantime_serde")]
    pub(super) region_timeout: Option<Duration>,
    #[serde(default)]
    pub(super) region_endpoint: Vec<String>,
    pub(super) home_region_attribute: Option<String>,
    pub(super) log_format: Option<LogFormat>,
    pub(super) log_level: Option<String>,
    pub(super) otlp_endpoint: Option<String>,
    pub(super) otlp_protocol: Option<OtlpProtocol>,
    pub(super) trace_sample_ratio: Option<f64>,
    pub(super) node_id: Option<String>,
    pub(super) tls_cert: Option<PathBuf>,
    pub(super) tls_key: Option<PathBuf>,
    pub(super) client_ca: Option<PathBuf>,
    pub(super) crl: Option<PathBuf>,
    pub(super) tls_min_version: Option<TlsVersion>,
    pub(super) agent_identity: Option<AgentIdentity>,
    pub(super) agent_tokens: Option<PathBuf>,
    pub(super) max_connections: Option<usize>,
    #[serde(default, with = "humantime_serde")]
    pub(super) max_connection_age: Option<Duration>,
    pub(super) agent_message_rate: Option<u32>,
    #[serde(default, with = "humantime_serde")]
    pub(super) handshake_timeout: Option<Duration>,
    pub(super) max_inflight_bytes: Option<u64>,
    pub(super) signing_ca_cert: Option<PathBuf>,
    pub(super) signing_ca_key: Option<PathBuf>,
    #[serde(default, with = "humantime_serde")]
    pub(super) issued_cert_validity: Option<Duration>,
    pub(super) opamp_advertise_url: Option<String>,
    pub(super) opamp_server_ca: Option<PathBuf>,
    pub(super) agent_metrics_url: Option<String>,
    pub(super) per_agent_metrics: Option<bool>,
    #[serde(default)]
    pub(super) agent_metrics_forward: Vec<String>,
    pub(super) api_tokens: Option<PathBuf>,
    pub(super) api_tls_cert: Option<PathBuf>,
    pub(super) api_tls_key: Option<PathBuf>,
    #[serde(default, with = "humantime_serde")]
    pub(super) heartbeat_interval: Option<Duration>,
    pub(super) max_message_size: Option<usize>,
    #[serde(default, with = "humantime_serde")]
    pub(super) lease_ttl: Option<Duration>,
    pub(super) api_max_body: Option<usize>,
    #[serde(default, with = "humantime_serde")]
    pub(super) audit_retention: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub(super) agent_retention: Option<Duration>,
    pub(super) max_effective_config_size: Option<usize>,
    pub(super) max_health_components: Option<usize>,
    pub(super) max_attributes: Option<usize>,
    pub(super) max_agent_record_size: Option<usize>,
    /// As the flag (`redact-pattern`, repeated: a list here); `redact-patterns` is accepted too.
    #[serde(default, rename = "redact-pattern", alias = "redact-patterns")]
    pub(super) redact_patterns: Vec<String>,
    #[serde(default, rename = "alert-webhook")]
    pub(super) alert_webhooks: Vec<String>,
    #[serde(default, rename = "alertmanager-url")]
    pub(super) alertmanager_urls: Vec<String>,
    #[serde(default)]
    pub(super) alert_kinds: Vec<String>,
    #[serde(default, with = "humantime_serde")]
    pub(super) alert_grace: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub(super) alert_interval: Option<Duration>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
pub enum TlsVersion {
    #[value(name = "1.2")]
    #[serde(rename = "1.2")]
    Tls12,
    #[value(name = "1.3")]
    #[serde(rename = "1.3")]
    Tls13,
}

/// How an agent's client certificate binds the instance_uid it may speak for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum AgentIdentity {
    /// No binding (no client certificates, or certificates shared by many agents).
    None,
    /// The certificate names the uid in a URI SAN `urn:uuid:<uid>`; the gateway checks it.
    UriSan,
    /// The first certificate an agent uses is recorded with it; only that one (or one the
    /// server issued it since) may speak for it afterwards.
    Registry,
}

pub(super) fn read_file(path: &Path) -> Result<FileConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|error| ConfigError::Read {
        path: path.into(),
        error,
    })?;
    toml::from_str(&text).map_err(|e| ConfigError::Parse {
        path: path.into(),
        message: e.to_string(),
    })
}
