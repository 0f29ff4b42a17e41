//! `flotilla serve` configuration: one place that maps command-line flags, `FLOTILLA_*` environment
//! variables (both through clap) and the TOML file given by `--config`. Precedence: flag, then env,
//! then file, then default.

mod limits;
mod sources;

use crate::telemetry::traces::TraceConfig;
pub use limits::{
    AgentLimits, DEFAULT_AGENT_RETENTION, DEFAULT_API_MAX_BODY, DEFAULT_MAX_INFLIGHT_BYTES,
    DEFAULT_MAX_MESSAGE_SIZE, MAX_HEARTBEAT, MIN_HEARTBEAT, RecordLimits, default_max_connections,
    open_file_limit, raise_open_file_limit,
};
pub use sources::{AgentIdentity, ConfigError, LogFormat, Role, ServeArgs, TlsVersion};
use sources::{FileConfig, read_file};

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// How this process authenticates to NATS and checks its servers, beyond the URL (which carries
/// user and password or a token, and `tls://`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NatsSecurity {
    pub creds: Option<PathBuf>,
    pub ca: Option<PathBuf>,
    /// Client certificate and key.
    pub client: Option<(PathBuf, PathBuf)>,
}

/// How this process checks Redis's certificate and proves its own, for a `rediss://` URL.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RedisTls {
    pub ca: Option<PathBuf>,
    /// Client certificate and key.
    pub client: Option<(PathBuf, PathBuf)>,
}

/// Two settings that are given together or not at all (a certificate and its key).
fn pair(
    a: Option<PathBuf>,
    b: Option<PathBuf>,
    what: &str,
) -> Result<Option<(PathBuf, PathBuf)>, ConfigError> {
    match (a, b) {
        (Some(a), Some(b)) => Ok(Some((a, b))),
        (None, None) => Ok(None),
        _ => Err(ConfigError::Invalid(format!("{what} go together"))),
    }
}

/// A list flag's values, else the file's (a list given on the command line replaces the file's).
fn either(flag: Vec<String>, file: Vec<String>) -> Vec<String> {
    if flag.is_empty() { file } else { flag }
}

/// `--agent-metrics-forward NAME=URL` values, by name.
fn forward_destinations(values: Vec<String>) -> Result<BTreeMap<String, String>, ConfigError> {
    let mut out = BTreeMap::new();
    for v in values {
        let parsed = v.split_once('=').filter(|(name, url)| {
            crate::names::is_forward_name(name)
                && (url.starts_with("http://") || url.starts_with("https://"))
        });
        let Some((name, url)) = parsed else {
            return Err(ConfigError::Invalid(format!(
                "--agent-metrics-forward {v:?} must be NAME=URL: a name of letters, digits, '-' \
                 or '_' and an http:// or https:// OTLP metrics URL"
            )));
        };
        if out.insert(name.to_owned(), url.to_owned()).is_some() {
            return Err(ConfigError::Invalid(format!(
                "--agent-metrics-forward names {name:?} twice"
            )));
        }
    }
    Ok(out)
}

/// `--region-endpoint REGION=URL` values, by region.
fn region_endpoints(values: Vec<String>) -> Result<BTreeMap<String, String>, ConfigError> {
    let mut out = BTreeMap::new();
    for v in values {
        let parsed = v.split_once('=').filter(|(region, url)| {
            is_subject_token(region)
                && ["ws://", "wss://", "http://", "https://"]
                    .iter()
                    .any(|s| url.starts_with(s))
        });
        let Some((region, url)) = parsed else {
            return Err(ConfigError::Invalid(format!(
                "--region-endpoint {v:?} must be REGION=URL: a region name and the ws://, wss://, \
                 http:// or https:// OpAMP URL of its gateways"
            )));
        };
        if out.insert(region.to_owned(), url.to_owned()).is_some() {
            return Err(ConfigError::Invalid(format!(
                "--region-endpoint names {region:?} twice"
            )));
        }
    }
    Ok(out)
}

/// How long a fleet view waits for the other regions by default.
pub const DEFAULT_REGION_TIMEOUT: Duration = Duration::from_secs(2);

/// The fleet's regions (`--regions`, `--region-endpoint`, `--home-region-attribute`,
/// `--region-timeout`).
#[derive(Debug, Clone, PartialEq)]
pub struct RegionSettings {
    /// Every region of the fleet as configured (this one included; empty: this one alone).
    pub fleet: Vec<String>,
    pub timeout: Duration,
    /// The OpAMP URL of each region's gateways, for agents that reach the wrong region.
    pub endpoints: BTreeMap<String, String>,
    /// The attribute naming an agent's home region.
    pub home_attribute: String,
}

impl Default for RegionSettings {
    fn default() -> Self {
        Self {
            fleet: Vec::new(),
            timeout: DEFAULT_REGION_TIMEOUT,
            endpoints: BTreeMap::new(),
            home_attribute: "cloud.region".into(),
        }
    }
}

impl RegionSettings {
    /// The other regions of the fleet, sorted, without `own`.
    pub fn peers(&self, own: &str) -> Vec<String> {
        let mut peers: Vec<String> = self.fleet.iter().filter(|r| *r != own).cloned().collect();
        peers.sort();
        peers.dedup();
        peers
    }
}

/// Where alerts go and which are raised (`--alert-*`, `--alertmanager-url`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AlertSettings {
    pub webhooks: Vec<String>,
    pub alertmanagers: Vec<String>,
    /// Empty: the default kinds.
    pub kinds: Vec<String>,
    pub grace: Duration,
    pub interval: Duration,
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

/// Which own-metrics destination agents are offered (their config's, when it names one, wins).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AgentMetricsOffer {
    /// The gateway's `/v1/metrics`, at the scheme, host and port the agent reached it with.
    Gateway,
    /// This URL.
    Url(String),
    /// None.
    Off,
}

/// The effective configuration of one `flotilla serve` process.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    pub gateway: bool,
    pub coordinator: bool,
    pub opamp_listen: SocketAddr,
    pub api_listen: SocketAddr,
    pub nats_url: Option<String>,
    pub nats_security: NatsSecurity,
    pub redis_url: Option<String>,
    pub redis_tls: RedisTls,
    pub data_dir: PathBuf,
    pub region: String,
    /// The fleet's other regions, and how agents find their home region.
    pub regions: RegionSettings,
    pub log_format: LogFormat,
    /// A tracing filter (`info`, `info,flotilla_gateway=debug`); None: RUST_LOG, else info.
    pub log_level: Option<String>,
    pub trace: TraceConfig,
    pub node_id: String,
    pub tls: Option<TlsFiles>,
    pub agent_identity: AgentIdentity,
    pub agent_tokens: Option<PathBuf>,
    pub limits: AgentLimits,
    /// CA certificate and key the coordinator issues agent certificates with.
    pub signing_ca: Option<(PathBuf, PathBuf)>,
    pub issued_cert_validity: Duration,
    /// The OpAMP URL agents reach this server at, for certificate offers.
    pub opamp_advertise_url: Option<String>,
    /// PEM CA of the OpAMP listener's certificate, for certificate offers.
    pub opamp_server_ca: Option<PathBuf>,
    /// The own-metrics destination offered to agents.
    pub agent_metrics: AgentMetricsOffer,
    /// Serve `/metrics/agents`, one series per agent.
    pub per_agent_metrics: bool,
    /// Where gateways forward copies of agents' own metrics, by name.
    pub agent_metrics_forward: BTreeMap<String, String>,
    pub api_tokens: Option<PathBuf>,
    pub api_tls: Option<TlsFiles>,
    pub heartbeat_interval: Duration,
    pub max_message_size: usize,
    pub api_max_body: usize,
    pub lease_ttl: Duration,
    pub audit_retention: Duration,
    pub agent_retention: Duration,
    pub record_limits: RecordLimits,
    /// Empty: the built-in patterns.
    pub redact_patterns: Vec<String>,
    pub alerts: AlertSettings,
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
            nats_security: NatsSecurity {
                creds: a.nats_creds.or(f.nats_creds),
                ca: a.nats_ca.or(f.nats_ca),
                client: pair(
                    a.nats_cert.or(f.nats_cert),
                    a.nats_key.or(f.nats_key),
                    "--nats-cert and --nats-key",
                )?,
            },
            redis_url: a.redis_url.or(f.redis_url),
            redis_tls: RedisTls {
                ca: a.redis_ca.or(f.redis_ca),
                client: pair(
                    a.redis_cert.or(f.redis_cert),
                    a.redis_key.or(f.redis_key),
                    "--redis-cert and --redis-key",
                )?,
            },
            data_dir: a
                .data_dir
                .or(f.data_dir)
                .unwrap_or_else(|| "flotilla-data".into()),
            region: a.region.or(f.region).unwrap_or_else(|| "local".into()),
            regions: RegionSettings {
                fleet: either(a.regions, f.regions),
                timeout: a
                    .region_timeout
                    .or(f.region_timeout)
                    .unwrap_or(DEFAULT_REGION_TIMEOUT),
                endpoints: region_endpoints(either(a.region_endpoint, f.region_endpoint))?,
                home_attribute: a
                    .home_region_attribute
                    .or(f.home_region_attribute)
                    .unwrap_or_else(|| "cloud.region".into()),
            },
            log_format: a.log_format.or(f.log_format).unwrap_or_default(),
            log_level: a.log_level.or(f.log_level),
            trace: TraceConfig {
                endpoint: a.otlp_endpoint.or(f.otlp_endpoint),
                protocol: a.otlp_protocol.or(f.otlp_protocol),
                sample_ratio: a.trace_sample_ratio.or(f.trace_sample_ratio),
            },
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
                    .unwrap_or(DEFAULT_MAX_INFLIGHT_BYTES),
            },
            signing_ca: pair(
                a.signing_ca_cert.or(f.signing_ca_cert),
                a.signing_ca_key.or(f.signing_ca_key),
                "--signing-ca-cert and --signing-ca-key",
            )?,
            issued_cert_validity: a
                .issued_cert_validity
                .or(f.issued_cert_validity)
                .unwrap_or(Duration::from_secs(30 * 86_400)),
            opamp_advertise_url: match a.opamp_advertise_url.or(f.opamp_advertise_url) {
                Some(url)
                    if !["ws://", "wss://", "http://", "https://"]
                        .iter()
                        .any(|scheme| url.starts_with(scheme)) =>
                {
                    return Err(ConfigError::Invalid(format!(
                        "--opamp-advertise-url {url:?} must be a ws://, wss://, http:// or \
                         https:// URL"
                    )));
                }
                url => url,
            },
            opamp_server_ca: a.opamp_server_ca.or(f.opamp_server_ca),
            per_agent_metrics: a.per_agent_metrics || f.per_agent_metrics.unwrap_or(false),
            agent_metrics_forward: forward_destinations(either(
                a.agent_metrics_forward,
                f.agent_metrics_forward,
            ))?,
            agent_metrics: match a.agent_metrics_url.or(f.agent_metrics_url) {
                None => AgentMetricsOffer::Gateway,
                Some(v) if v == "none" => AgentMetricsOffer::Off,
                Some(url) if url.starts_with("http://") || url.starts_with("https://") => {
                    AgentMetricsOffer::Url(url)
                }
                Some(url) => {
                    return Err(ConfigError::Invalid(format!(
                        "--agent-metrics-url {url:?} must be an http:// or https:// URL (with its \
                         path, e.g. https://opamp.example.com:4320/v1/metrics) or none"
                    )));
                }
            },
            api_tokens: a.api_tokens.or(f.api_tokens),
            api_tls: pair(
                a.api_tls_cert.or(f.api_tls_cert),
                a.api_tls_key.or(f.api_tls_key),
                "--api-tls-cert and --api-tls-key",
            )?
            .map(|(c, k)| TlsFiles::new(c, k)),
            heartbeat_interval: a
                .heartbeat_interval
                .or(f.heartbeat_interval)
                .unwrap_or(Duration::from_secs(30)),
            max_message_size: a
                .max_message_size
                .or(f.max_message_size)
                .unwrap_or(DEFAULT_MAX_MESSAGE_SIZE),
            // Twice the largest message unless set (the default's 8 MiB at the default message).
            api_max_body: a.api_max_body.or(f.api_max_body).unwrap_or_else(|| {
                let message = a
                    .max_message_size
                    .or(f.max_message_size)
                    .unwrap_or(DEFAULT_MAX_MESSAGE_SIZE);
                message.saturating_mul(DEFAULT_API_MAX_BODY / DEFAULT_MAX_MESSAGE_SIZE)
            }),
            audit_retention: a
                .audit_retention
                .or(f.audit_retention)
                .unwrap_or(Duration::from_secs(90 * 24 * 3600)),
            agent_retention: a
                .agent_retention
                .or(f.agent_retention)
                .unwrap_or(DEFAULT_AGENT_RETENTION),
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
            redact_patterns: either(a.redact_patterns, f.redact_patterns),
            alerts: AlertSettings {
                webhooks: either(a.alert_webhooks, f.alert_webhooks),
                alertmanagers: either(a.alertmanager_urls, f.alertmanager_urls),
                kinds: either(a.alert_kinds, f.alert_kinds),
                grace: a
                    .alert_grace
                    .or(f.alert_grace)
                    .unwrap_or(Duration::from_secs(60)),
                interval: a
                    .alert_interval
                    .or(f.alert_interval)
                    .unwrap_or(Duration::from_secs(5)),
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
        if self.signing_ca.is_none()
            && (self.opamp_advertise_url.is_some() || self.opamp_server_ca.is_some())
        {
            return invalid(
                "--opamp-advertise-url and --opamp-server-ca go into the certificates offered to \
                 agents: they need --signing-ca-cert and --signing-ca-key"
                    .into(),
            );
        }
        for (name, value) in [("--region", &self.region), ("--node-id", &self.node_id)] {
            if !is_subject_token(value) {
                return invalid(format!(
                    "{name} {value:?} must be non-empty and use only letters, digits, '-' and '_' \
                     (it becomes part of bus subjects)"
                ));
            }
        }
        if !self.regions.fleet.is_empty() && !self.regions.fleet.contains(&self.region) {
            return invalid(format!(
                "--regions {:?} must include this process's --region {:?}",
                self.regions.fleet.join(","),
                self.region
            ));
        }
        if !self.regions.peers(&self.region).is_empty() && self.nats_url.is_none() {
            return invalid(
                "--regions names other regions: they are asked over NATS, so --nats-url is needed"
                    .into(),
            );
        }
        if let Some(bad) = self.regions.fleet.iter().find(|r| !is_subject_token(r)) {
            return invalid(format!(
                "--regions names {bad:?}: a region uses only letters, digits, '-' and '_'"
            ));
        }
        if !(Duration::from_millis(100)..=Duration::from_secs(60)).contains(&self.regions.timeout) {
            return invalid("--region-timeout must be from 100ms to 60s".into());
        }
        if self.regions.home_attribute.is_empty() {
            return invalid("--home-region-attribute must not be empty".into());
        }
        if !(MIN_HEARTBEAT..=MAX_HEARTBEAT).contains(&self.heartbeat_interval) {
            return invalid("--heartbeat-interval must be from 1s to 1day".into());
        }
        if self.agent_retention < Duration::from_secs(1) {
            return invalid("--agent-retention must be at least 1s".into());
        }
        if self.alerts.interval < Duration::from_millis(100) {
            return invalid("--alert-interval must be at least 100ms".into());
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
        if self.api_max_body < self.max_message_size {
            return invalid(format!(
                "--api-max-body ({}) must be at least --max-message-size ({}): a config that \
                 reaches agents must fit in the API's request",
                self.api_max_body, self.max_message_size
            ));
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

/// A URL with its credentials hidden (`redis://:secret@host` as `redis://***@host`), for logs
/// and errors.
pub fn redact(url: &str) -> String {
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
             heartbeat_interval={} max_message_size={} api_max_body={} lease_ttl={} tls={} client_ca={} \
             agent_identity={:?} agent_tokens={} api_tokens={} api_tls={} signing_ca={} \
             max_connections={} nats={} redis={} otlp={} alert_sinks={}",
            if self.gateway { "gateway," } else { "" },
            if self.coordinator { "coordinator" } else { "" },
            self.opamp_listen,
            self.api_listen,
            self.region,
            self.node_id,
            self.data_dir.display(),
            humantime::format_duration(self.heartbeat_interval),
            self.max_message_size,
            self.api_max_body,
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
            self.trace.endpoint.as_deref().map_or("-".into(), redact),
            self.alerts.webhooks.len() + self.alerts.alertmanagers.len(),
        )
    }
}

#[cfg(test)]
mod tests;
