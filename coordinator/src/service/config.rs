//! What a coordinator is set to.

use crate::fleet::redact::Redactor;
use crate::opamp::identity::Issuer;
use flotilla_common::config::{
    AgentMetricsOffer, DEFAULT_AGENT_RETENTION, DEFAULT_MAX_MESSAGE_SIZE, RecordLimits,
    RegionSettings,
};
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, Clone)]
pub struct CoordinatorConfig {
    pub region: String,
    pub node_id: String,
    pub heartbeat_interval: Duration,
    /// How long a queued restart or custom message waits for its agent's next message.
    pub command_ttl: Duration,
    /// How long a push waits for the gateway's acknowledgement.
    pub push_timeout: Duration,
    /// How long an admin request keeps looking for the owner of an agent's shard.
    pub owner_deadline: Duration,
    /// The CA agents' certificates are issued with (CSR flow and offers); none: not offered.
    pub issuer: Option<Arc<Issuer>>,
    /// Hides secrets in the effective configs the API shows.
    pub redactor: Redactor,
    /// How much one agent's record may hold.
    pub limits: RecordLimits,
    /// Agents disconnected (or silent) for longer than this are removed.
    pub agent_retention: Duration,
    /// Largest ServerToAgent that can reach an agent (in a cluster, what the bus carries): no
    /// config is accepted whose offer would be larger.
    pub max_message_size: usize,
    /// Which alerts are raised and where they are sent (none: no sink, no alert duty).
    pub alerts: super::sinks::AlertsConfig,
    /// The own-metrics destination offered to agents whose config names none.
    pub agent_metrics: AgentMetricsOffer,
    /// The fleet's regions: who fleet views ask, where agents of other regions belong.
    pub regions: RegionSettings,
}

impl CoordinatorConfig {
    pub fn new(region: &str, node_id: &str, heartbeat_interval: Duration) -> Self {
        Self {
            region: region.into(),
            node_id: node_id.into(),
            heartbeat_interval,
            command_ttl: Duration::from_secs(600),
            push_timeout: Duration::from_secs(2),
            owner_deadline: Duration::from_secs(5),
            issuer: None,
            redactor: Redactor::default(),
            limits: RecordLimits::default(),
            agent_retention: DEFAULT_AGENT_RETENTION,
            max_message_size: DEFAULT_MAX_MESSAGE_SIZE,
            alerts: Default::default(),
            agent_metrics: AgentMetricsOffer::Gateway,
            regions: RegionSettings::default(),
        }
    }
}
