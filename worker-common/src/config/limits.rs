//! The limits that keep what outsiders send bounded: connections (from the open-file limit),
//! heartbeats, and what one agent's record may hold.

use std::time::Duration;

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

/// `--max-message-size`: the largest AgentToServer accepted, after decompression.
pub const DEFAULT_MAX_MESSAGE_SIZE: usize = 4 << 20;
/// `--api-max-body`: the largest admin API request body (twice the largest message, so a config
/// that fits in one still fits as JSON, with its escapes).
pub const DEFAULT_API_MAX_BODY: usize = 2 * DEFAULT_MAX_MESSAGE_SIZE;
/// `--max-inflight-bytes`: bytes of incomplete agent messages one gateway holds at once.
pub const DEFAULT_MAX_INFLIGHT_BYTES: u64 = 256 << 20;
/// `--agent-retention`: how long a disconnected or silent agent's record is kept.
pub const DEFAULT_AGENT_RETENTION: Duration = Duration::from_secs(30 * 24 * 3600);

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
