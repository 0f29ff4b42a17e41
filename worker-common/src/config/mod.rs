//! `flotilla serve` configuration: one place that maps command-line flags, `FLOTILLA_*` environment
//! variables (both through clap) and the TOML file given by `--config`. Precedence: flag, then env,
//! then file, then default.

use serde::Deserialize;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;
use thiserror::Error;

/// File descriptors this process may hold (the soft RLIMIT_NOFILE), if known.
pub fn open_file_limit() -> Option<u64> {
    rlimit::getrlimit(rlimit::Resource::NOFILE)
        .ok()
        .map(|(soft, _)| soft)
}

/// Raises the soft open-file limit to the hard one, as servers holding many connections do;
/// returns the limit now in force.
pub fn raise_open_file_limit() -> Option<u64> {
    rlimit::increase_nofile_limit(u64::MAX).ok()
}

/// The connection cap when none is configured: what the open-file limit allows, less a tenth
/// (at least 256) for the process's own files (listeners, NATS, Redis, data files, API clients).
pub fn default_max_connections() -> usize {
    match open_file_limit() {
        Some(n) => {
            usize::try_from(n.saturating_sub((n / 10).max(256)).max(64)).unwrap_or(usize::MAX)
        }
        None => 100_000,
    }
}

/// The heartbeat intervals the server offers agents (its own default and configs' settings).
pub const MIN_HEARTBEAT: Duration = Duration::from_secs(1);
pub const MAX_HEARTBEAT: Duration = Duration::from_secs(24 * 3600);

#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{0}")]
    Invalid(String),
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
    #[arg(long, env = "FLOTILLA_NATS_URL")]
    pub nats_url: Option<String>,
    /// Redis URL; with --nats-url, runs the clustered mode instead of the embedded default.
    #[arg(long, env = "FLOTILLA_REDIS_URL")]
    pub redis_url: Option<String>,
    /// Where the embedded store keeps its data [default: ./flotilla-data].
    #[arg(long, env = "FLOTILLA_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Region name, part of every bus subject [default: local].
    #[arg(long, env = "FLOTILLA_REGION")]
    pub region: Option<String>,
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
    /// Shard lease time to live in a cluster; renewed every third of it, and a coordinator stops
    /// acting on a shard two thirds of it after its last renewal [default: 15s].
    #[arg(long, env = "FLOTILLA_LEASE_TTL", value_parser = humantime::parse_duration)]
    pub lease_ttl: Option<Duration>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct FileConfig {
    roles: Option<Vec<Role>>,
    opamp_listen: Option<SocketAddr>,
    api_listen: Option<SocketAddr>,
    nats_url: Option<String>,
    redis_url: Option<String>,
    data_dir: Option<PathBuf>,
    region: Option<String>,
    node_id: Option<String>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    client_ca: Option<PathBuf>,
    crl: Option<PathBuf>,
    tls_min_version: Option<TlsVersion>,
    agent_identity: Option<AgentIdentity>,
    agent_tokens: Option<PathBuf>,
    max_connections: Option<usize>,
    #[serde(default, with = "humantime_serde")]
    max_connection_age: Option<Duration>,
    agent_message_rate: Option<u32>,
    #[serde(default, with = "humantime_serde")]
    handshake_timeout: Option<Duration>,
    max_inflight_bytes: Option<u64>,
    signing_ca_cert: Option<PathBuf>,
    signing_ca_key: Option<PathBuf>,
    #[serde(default, with = "humantime_serde")]
    issued_cert_validity: Option<Duration>,
    api_tokens: Option<PathBuf>,
    api_tls_cert: Option<PathBuf>,
    api_tls_key: Option<PathBuf>,
    #[serde(default, with = "humantime_serde")]
    heartbeat_interval: Option<Duration>,
    max_message_size: Option<usize>,
    #[serde(default, with = "humantime_serde")]
    lease_ttl: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    audit_retention: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    agent_retention: Option<Duration>,
    max_effective_config_size: Option<usize>,
    max_health_components: Option<usize>,
    max_attributes: Option<usize>,
    max_agent_record_size: Option<usize>,
    #[serde(default)]
    redact_patterns: Vec<String>,
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

/// PEM files of a TLS listener.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client_ca: Option<PathBuf>,
    pub crl: Option<PathBuf>,
    pub allow_tls12: bool,
}

impl TlsFiles {
    pub fn new(cert: PathBuf, key: PathBuf) -> Self {
        Self {
            cert,
            key,
            client_ca: None,
            crl: None,
            allow_tls12: false,
        }
    }

    /// Every file, for change detection.
    pub fn paths(&self) -> Vec<PathBuf> {
        [
            Some(&self.cert),
            Some(&self.key),
            self.client_ca.as_ref(),
            self.crl.as_ref(),
        ]
        .into_iter()
        .flatten()
        .cloned()
        .collect()
    }
}

/// What protects the OpAMP listener from its agents.
#[derive(Debug, Clone)]
pub struct AgentLimits {
    pub max_connections: usize,
    pub max_connection_age: Option<Duration>,
    pub message_rate: u32,
    pub handshake_timeout: Duration,
    pub max_inflight_bytes: u64,
}

/// What one agent's record may hold. A report beyond a limit is refused (BAD_REQUEST naming the
/// limit) and nothing of it is stored: one agent must not be able to grow the server's memory,
/// store or API answers without bound.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordLimits {
    /// Bytes of all the files of a reported effective config (names and bodies).
    pub max_effective_config_bytes: usize,
    /// Components in a health tree, counting every level.
    pub max_health_components: usize,
    /// Identifying plus non-identifying attributes.
    pub max_attributes: usize,
    /// The encoded record, everything reported included.
    pub max_record_bytes: usize,
}

impl Default for RecordLimits {
    fn default() -> Self {
        Self {
            max_effective_config_bytes: 1 << 20,
            max_health_components: 1000,
            max_attributes: 200,
            max_record_bytes: 4 << 20,
        }
    }
}

impl RecordLimits {
    /// Checks what one message reports; Err names the limit it passes.
    pub fn check_message(&self, msg: &flotilla_proto::opamp::AgentToServer) -> Result<(), String> {
        if let Some(map) = msg
            .effective_config
            .as_ref()
            .and_then(|e| e.config_map.as_ref())
        {
            let bytes: usize = map
                .config_map
                .iter()
                .map(|(name, f)| name.len() + f.body.len())
                .sum();
            if bytes > self.max_effective_config_bytes {
                return Err(format!(
                    "the effective config has {bytes} bytes; this server keeps at most {} \
                     (--max-effective-config-size)",
                    self.max_effective_config_bytes
                ));
            }
        }
        if let Some(h) = &msg.health {
            let limit = self.max_health_components;
            if count_components(h, limit) > limit {
                return Err(format!(
                    "the health report has more than {limit} components \
                     (--max-health-components)"
                ));
            }
        }
        if let Some(d) = &msg.agent_description {
            let n = d.identifying_attributes.len() + d.non_identifying_attributes.len();
            if n > self.max_attributes {
                return Err(format!(
                    "the agent description has {n} attributes; this server keeps at most {} \
                     (--max-attributes)",
                    self.max_attributes
                ));
            }
        }
        Ok(())
    }

    /// Checks a record after a message was merged into it.
    pub fn check_record(&self, rec: &flotilla_proto::bus::AgentRecord) -> Result<(), String> {
        use prost::Message;
        let bytes = rec.encoded_len();
        if bytes > self.max_record_bytes {
            return Err(format!(
                "everything this agent reported comes to {bytes} bytes; this server keeps at \
                 most {} per agent (--max-agent-record-size)",
                self.max_record_bytes
            ));
        }
        Ok(())
    }
}

/// Components in a health tree (the root included), counting no further than past `limit`.
fn count_components(h: &flotilla_proto::opamp::ComponentHealth, limit: usize) -> usize {
    let mut n = 1;
    for child in h.component_health_map.values() {
        if n > limit {
            break;
        }
        n += count_components(child, limit);
    }
    n
}

/// The effective configuration of one `flotilla serve` process.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    pub gateway: bool,
    pub coordinator: bool,
    pub opamp_listen: SocketAddr,
    pub api_listen: SocketAddr,
    pub nats_url: Option<String>,
    pub redis_url: Option<String>,
    pub data_dir: PathBuf,
    pub region: String,
    pub node_id: String,
    pub tls: Option<TlsFiles>,
    pub agent_identity: AgentIdentity,
    pub agent_tokens: Option<PathBuf>,
    pub limits: AgentLimits,
    /// CA certificate and key the coordinator issues agent certificates with.
    pub signing_ca: Option<(PathBuf, PathBuf)>,
    pub issued_cert_validity: Duration,
    pub api_tokens: Option<PathBuf>,
    pub api_tls: Option<TlsFiles>,
    pub heartbeat_interval: Duration,
    pub max_message_size: usize,
    pub lease_ttl: Duration,
    pub audit_retention: Duration,
    pub agent_retention: Duration,
    pub record_limits: RecordLimits,
    /// Empty: the built-in patterns.
    pub redact_patterns: Vec<String>,
}

impl Default for ServeConfig {
    fn default() -> Self {
        Self::resolve(ServeArgs::default(), FileConfig::default()).expect("defaults are valid")
    }
}

impl ServeConfig {
    pub fn load(args: ServeArgs) -> Result<Self, ConfigError> {
        let file = match &args.config {
            Some(path) => read_file(path)?,
            None => FileConfig::default(),
        };
        Self::resolve(args, file)
    }

    fn resolve(a: ServeArgs, f: FileConfig) -> Result<Self, ConfigError> {
        let roles = a
            .roles
            .or(f.roles)
            .unwrap_or_else(|| vec![Role::Gateway, Role::Coordinator]);
        let cfg = Self {
            gateway: roles.contains(&Role::Gateway),
            coordinator: roles.contains(&Role::Coordinator),
            opamp_listen: a
                .opamp_listen
                .or(f.opamp_listen)
                .unwrap_or(([0, 0, 0, 0], 4320).into()),
            api_listen: a
                .api_listen
                .or(f.api_listen)
                .unwrap_or(([0, 0, 0, 0], 4321).into()),
            nats_url: a.nats_url.or(f.nats_url),
            redis_url: a.redis_url.or(f.redis_url),
            data_dir: a
                .data_dir
                .or(f.data_dir)
                .unwrap_or_else(|| "flotilla-data".into()),
            region: a.region.or(f.region).unwrap_or_else(|| "local".into()),
            node_id: a
                .node_id
                .or(f.node_id)
                .unwrap_or_else(|| uuid::Uuid::new_v4().simple().to_string()[..8].to_owned()),
            tls: tls_files(
                a.tls_cert.or(f.tls_cert),
                a.tls_key.or(f.tls_key),
                a.client_ca.or(f.client_ca),
                a.crl.or(f.crl),
                a.tls_min_version.or(f.tls_min_version),
            )?,
            agent_identity: AgentIdentity::None, // decided below, once mTLS is known
            agent_tokens: a.agent_tokens.or(f.agent_tokens),
            limits: AgentLimits {
                max_connections: a
                    .max_connections
                    .or(f.max_connections)
                    .unwrap_or_else(default_max_connections),
                max_connection_age: Some(
                    a.max_connection_age
                        .or(f.max_connection_age)
                        .unwrap_or(Duration::from_secs(24 * 3600)),
                )
                .filter(|d| !d.is_zero()),
                message_rate: a.agent_message_rate.or(f.agent_message_rate).unwrap_or(10),
                handshake_timeout: a
                    .handshake_timeout
                    .or(f.handshake_timeout)
                    .unwrap_or(Duration::from_secs(10)),
                max_inflight_bytes: a
                    .max_inflight_bytes
                    .or(f.max_inflight_bytes)
                    .unwrap_or(256 << 20),
            },
            signing_ca: match (
                a.signing_ca_cert.or(f.signing_ca_cert),
                a.signing_ca_key.or(f.signing_ca_key),
            ) {
                (Some(c), Some(k)) => Some((c, k)),
                (None, None) => None,
                _ => {
                    return Err(ConfigError::Invalid(
                        "--signing-ca-cert and --signing-ca-key go together".into(),
                    ));
                }
            },
            issued_cert_validity: a
                .issued_cert_validity
                .or(f.issued_cert_validity)
                .unwrap_or(Duration::from_secs(30 * 86_400)),
            api_tokens: a.api_tokens.or(f.api_tokens),
            api_tls: match (
                a.api_tls_cert.or(f.api_tls_cert),
                a.api_tls_key.or(f.api_tls_key),
            ) {
                (Some(c), Some(k)) => Some(TlsFiles::new(c, k)),
                (None, None) => None,
                _ => {
                    return Err(ConfigError::Invalid(
                        "--api-tls-cert and --api-tls-key go together".into(),
                    ));
                }
            },
            heartbeat_interval: a
                .heartbeat_interval
                .or(f.heartbeat_interval)
                .unwrap_or(Duration::from_secs(30)),
            max_message_size: a.max_message_size.or(f.max_message_size).unwrap_or(4 << 20),
            audit_retention: a
                .audit_retention
                .or(f.audit_retention)
                .unwrap_or(Duration::from_secs(90 * 24 * 3600)),
            agent_retention: a
                .agent_retention
                .or(f.agent_retention)
                .unwrap_or(Duration::from_secs(30 * 24 * 3600)),
            record_limits: {
                let d = RecordLimits::default();
                RecordLimits {
                    max_effective_config_bytes: a
                        .max_effective_config_size
                        .or(f.max_effective_config_size)
                        .unwrap_or(d.max_effective_config_bytes),
                    max_health_components: a
                        .max_health_components
                        .or(f.max_health_components)
                        .unwrap_or(d.max_health_components),
                    max_attributes: a
                        .max_attributes
                        .or(f.max_attributes)
                        .unwrap_or(d.max_attributes),
                    max_record_bytes: a
                        .max_agent_record_size
                        .or(f.max_agent_record_size)
                        .unwrap_or(d.max_record_bytes),
                }
            },
            redact_patterns: if a.redact_patterns.is_empty() {
                f.redact_patterns
            } else {
                a.redact_patterns
            },
            lease_ttl: a
                .lease_ttl
                .or(f.lease_ttl)
                .unwrap_or(Duration::from_secs(15)),
        };
        let mtls = cfg.tls.as_ref().is_some_and(|t| t.client_ca.is_some());
        let identity = a.agent_identity.or(f.agent_identity);
        let cfg = Self {
            agent_identity: match identity {
                Some(AgentIdentity::None) | None if !mtls => AgentIdentity::None,
                None => AgentIdentity::Registry,
                Some(rule) if mtls || rule == AgentIdentity::None => rule,
                Some(_) => {
                    return Err(ConfigError::Invalid(
                        "--agent-identity uri-san or registry needs client certificates \
                         (--client-ca)"
                            .into(),
                    ));
                }
            },
            ..cfg
        };
        cfg.validate()?;
        Ok(cfg)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |m: String| Err(ConfigError::Invalid(m));
        if !self.gateway && !self.coordinator {
            return invalid("--roles must name at least one of: gateway, coordinator".into());
        }
        for (name, value) in [("--region", &self.region), ("--node-id", &self.node_id)] {
            if !is_subject_token(value) {
                return invalid(format!(
                    "{name} {value:?} must be non-empty and use only letters, digits, '-' and '_' \
                     (it becomes part of bus subjects)"
                ));
            }
        }
        if !(MIN_HEARTBEAT..=MAX_HEARTBEAT).contains(&self.heartbeat_interval) {
            return invalid("--heartbeat-interval must be from 1s to 1day".into());
        }
        if self.agent_retention < Duration::from_secs(1) {
            return invalid("--agent-retention must be at least 1s".into());
        }
        let l = &self.record_limits;
        if l.max_health_components == 0 || l.max_attributes == 0 {
            return invalid("--max-health-components and --max-attributes must be positive".into());
        }
        if l.max_record_bytes < l.max_effective_config_bytes {
            return invalid(
                "--max-agent-record-size must be at least --max-effective-config-size".into(),
            );
        }
        if self.audit_retention < Duration::from_secs(60) {
            return invalid("--audit-retention must be at least 1m".into());
        }
        if self.max_message_size < 1024 {
            return invalid("--max-message-size must be at least 1024 bytes".into());
        }
        if self.limits.max_inflight_bytes < self.max_message_size as u64 {
            return invalid("--max-inflight-bytes must be at least --max-message-size".into());
        }
        if self.limits.max_connections == 0 || self.limits.message_rate == 0 {
            return invalid("--max-connections and --agent-message-rate must be positive".into());
        }
        if self.limits.handshake_timeout < Duration::from_millis(100) {
            return invalid("--handshake-timeout must be at least 100ms".into());
        }
        if self.lease_ttl < Duration::from_secs(3) {
            return invalid("--lease-ttl must be at least 3s".into());
        }
        match (&self.nats_url, &self.redis_url) {
            (None, None) if self.gateway && self.coordinator => Ok(()),
            (None, _) if !self.coordinator => invalid(
                "--roles gateway needs --nats-url: gateways reach coordinators over NATS".into(),
            ),
            (None, _) | (_, None) if self.coordinator => invalid(format!(
                "{} needs both --nats-url and --redis-url: coordinators of a cluster talk over \
                 NATS and keep state and shard leases in Redis (leave both out, with both roles, \
                 for the embedded single-process mode)",
                if self.gateway {
                    "the clustered mode"
                } else {
                    "--roles coordinator"
                }
            )),
            _ => Ok(()),
        }
    }

    /// True when this process is part of a cluster (NATS and Redis) rather than embedded.
    pub fn clustered(&self) -> bool {
        self.nats_url.is_some()
    }
}

fn read_file(path: &Path) -> Result<FileConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.into(),
        source,
    })?;
    toml::from_str(&text).map_err(|e| ConfigError::Parse {
        path: path.into(),
        message: e.to_string(),
    })
}

fn tls_files(
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    client_ca: Option<PathBuf>,
    crl: Option<PathBuf>,
    min_version: Option<TlsVersion>,
) -> Result<Option<TlsFiles>, ConfigError> {
    if crl.is_some() && client_ca.is_none() {
        return Err(ConfigError::Invalid(
            "--crl applies to client certificates: it needs --client-ca".into(),
        ));
    }
    match (cert, key) {
        (Some(cert), Some(key)) => Ok(Some(TlsFiles {
            cert,
            key,
            client_ca,
            crl,
            allow_tls12: min_version == Some(TlsVersion::Tls12),
        })),
        (None, None) if client_ca.is_some() || min_version.is_some() => Err(ConfigError::Invalid(
            "--client-ca and --tls-min-version need --tls-cert and --tls-key".into(),
        )),
        (None, None) => Ok(None),
        _ => Err(ConfigError::Invalid(
            "--tls-cert and --tls-key go together".into(),
        )),
    }
}

fn is_subject_token(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// Hides the password of a URL such as `redis://:secret@host`.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!("{}://***@{}", &url[..scheme], &url[at + 1..])
        }
        _ => url.to_owned(),
    }
}

impl fmt::Display for ServeConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "roles={}{} opamp_listen={} api_listen={} region={} node_id={} data_dir={} \
             heartbeat_interval={} max_message_size={} lease_ttl={} tls={} client_ca={} \
             agent_identity={:?} agent_tokens={} api_tokens={} api_tls={} signing_ca={} \
             max_connections={} nats={} redis={}",
            if self.gateway { "gateway," } else { "" },
            if self.coordinator { "coordinator" } else { "" },
            self.opamp_listen,
            self.api_listen,
            self.region,
            self.node_id,
            self.data_dir.display(),
            humantime::format_duration(self.heartbeat_interval),
            self.max_message_size,
            humantime::format_duration(self.lease_ttl),
            self.tls.is_some(),
            self.tls.as_ref().is_some_and(|t| t.client_ca.is_some()),
            self.agent_identity,
            self.agent_tokens.is_some(),
            self.api_tokens.is_some(),
            self.api_tls.is_some(),
            self.signing_ca.is_some(),
            self.limits.max_connections,
            self.nats_url.as_deref().map_or("-".into(), redact),
            self.redis_url.as_deref().map_or("-".into(), redact),
        )
    }
}

#[cfg(test)]
mod tests;
