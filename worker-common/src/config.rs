//! `flotilla serve` configuration: one place that maps command-line flags, `FLOTILLA_*` environment
//! variables (both through clap) and the TOML file given by `--config`. Precedence: flag, then env,
//! then file, then default.

use serde::Deserialize;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;
use thiserror::Error;

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
    /// PEM CA bundle; when given, agents must present a certificate it signed.
    #[arg(long, env = "FLOTILLA_CLIENT_CA")]
    pub client_ca: Option<PathBuf>,
    /// Heartbeat interval offered to agents; silence is 3 intervals without a message [default: 30s].
    #[arg(long, env = "FLOTILLA_HEARTBEAT_INTERVAL", value_parser = humantime::parse_duration)]
    pub heartbeat_interval: Option<Duration>,
    /// Largest OpAMP message accepted, after decompression, in bytes [default: 67108864].
    #[arg(long, env = "FLOTILLA_MAX_MESSAGE_SIZE")]
    pub max_message_size: Option<usize>,
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
    #[serde(default, with = "humantime_serde")]
    heartbeat_interval: Option<Duration>,
    max_message_size: Option<usize>,
    #[serde(default, with = "humantime_serde")]
    lease_ttl: Option<Duration>,
}

#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client_ca: Option<PathBuf>,
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
    pub heartbeat_interval: Duration,
    pub max_message_size: usize,
    pub lease_ttl: Duration,
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
            )?,
            heartbeat_interval: a
                .heartbeat_interval
                .or(f.heartbeat_interval)
                .unwrap_or(Duration::from_secs(30)),
            max_message_size: a
                .max_message_size
                .or(f.max_message_size)
                .unwrap_or(64 << 20),
            lease_ttl: a
                .lease_ttl
                .or(f.lease_ttl)
                .unwrap_or(Duration::from_secs(15)),
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
        if self.heartbeat_interval < Duration::from_secs(1) {
            return invalid("--heartbeat-interval must be at least 1s".into());
        }
        if self.max_message_size < 1024 {
            return invalid("--max-message-size must be at least 1024 bytes".into());
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
) -> Result<Option<TlsFiles>, ConfigError> {
    match (cert, key) {
        (Some(cert), Some(key)) => Ok(Some(TlsFiles {
            cert,
            key,
            client_ca,
        })),
        (None, None) if client_ca.is_some() => Err(ConfigError::Invalid(
            "--client-ca needs --tls-cert and --tls-key".into(),
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
             heartbeat_interval={} max_message_size={} lease_ttl={} tls={} client_ca={} nats={} \
             redis={}",
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
            self.nats_url.as_deref().map_or("-".into(), redact),
            self.redis_url.as_deref().map_or("-".into(), redact),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_the_contract() {
        let c = ServeConfig::default();
        assert!(c.gateway && c.coordinator);
        assert_eq!(c.opamp_listen.to_string(), "0.0.0.0:4320");
        assert_eq!(c.api_listen.to_string(), "0.0.0.0:4321");
        assert_eq!(c.region, "local");
        assert_eq!(c.data_dir, PathBuf::from("flotilla-data"));
        assert_eq!(c.heartbeat_interval, Duration::from_secs(30));
    }

    #[test]
    fn flags_override_file_and_file_overrides_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.toml");
        std::fs::write(&path, "region = \"eu1\"\nheartbeat-interval = \"10s\"\n").unwrap();
        let args = ServeArgs {
            config: Some(path),
            region: Some("us2".into()),
            ..Default::default()
        };
        let c = ServeConfig::load(args).unwrap();
        assert_eq!(c.region, "us2");
        assert_eq!(c.heartbeat_interval, Duration::from_secs(10));
    }

    #[test]
    fn unknown_file_keys_and_bad_values_are_clear_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.toml");
        std::fs::write(&path, "regoin = \"x\"\n").unwrap();
        let err = ServeConfig::load(ServeArgs {
            config: Some(path),
            ..Default::default()
        });
        assert!(
            err.unwrap_err()
                .to_string()
                .contains("unknown field `regoin`")
        );

        let err = ServeConfig::load(ServeArgs {
            region: Some("a.b".into()),
            ..Default::default()
        });
        assert!(err.unwrap_err().to_string().contains("--region"));

        let gw_only = ServeArgs {
            roles: Some(vec![Role::Gateway]),
            ..Default::default()
        };
        let err = ServeConfig::load(gw_only).unwrap_err().to_string();
        assert!(err.contains("--roles gateway needs --nats-url"), "{err}");
        let coord_only = ServeArgs {
            roles: Some(vec![Role::Coordinator]),
            nats_url: Some("nats://n:4222".into()),
            ..Default::default()
        };
        let err = ServeConfig::load(coord_only).unwrap_err().to_string();
        assert!(err.contains("--roles coordinator needs both"), "{err}");
        let half = ServeArgs {
            redis_url: Some("redis://r:6379".into()),
            ..Default::default()
        };
        let err = ServeConfig::load(half).unwrap_err().to_string();
        assert!(err.contains("the clustered mode needs both"), "{err}");
        let gw_cluster = ServeArgs {
            roles: Some(vec![Role::Gateway]),
            nats_url: Some("nats://n:4222".into()),
            ..Default::default()
        };
        assert!(ServeConfig::load(gw_cluster).unwrap().clustered());

        let half_tls = ServeArgs {
            tls_cert: Some("c.pem".into()),
            ..Default::default()
        };
        assert!(
            ServeConfig::load(half_tls)
                .unwrap_err()
                .to_string()
                .contains("go together")
        );
    }

    #[test]
    fn the_example_config_in_deploy_parses() {
        let path = PathBuf::from(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../deploy/flotilla.toml"
        ));
        let c = ServeConfig::load(ServeArgs {
            config: Some(path),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(c.node_id, "flotilla-1");
        assert_eq!(c.data_dir, PathBuf::from("/var/lib/flotilla"));
    }

    #[test]
    fn urls_are_redacted_in_the_logged_config() {
        assert_eq!(redact("redis://:hunter2@r:6379"), "redis://***@r:6379");
        assert_eq!(redact("nats://n:4222"), "nats://n:4222");
    }
}
