//! Agents as the API shows them: the fleet's health, a page of summaries, one agent's detail.

use super::own_metrics::OwnMetricsView;
use super::time::rfc3339;
use crate::fleet::agents::{
    ConfigStanding, attributes, config_standing_seen, effective_map, healthy, hex_eq, status_name,
    uid_of, went_back,
};
use crate::fleet::configs::{self, Aspect, Desired};
use crate::fleet::redact::Redactor;
use crate::opamp::desired::desired_config;
use base64::Engine;
use flotilla_common::store::{AgentCounts, Tally};
use flotilla_common::telemetry::now_unix_ms;
use flotilla_proto::bus::{AgentRecord, Drift, Transport};
use flotilla_proto::opamp::{
    AgentCapabilities as Cap, ComponentHealth, KeyValue, PackageStatusEnum, RemoteConfigStatuses,
};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The agents' counts by status and health (health counts connected agents).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FleetHealth {
    pub total_agents: u64,
    pub connected_agents: u64,
    pub healthy_agents: u64,
    pub unhealthy_agents: u64,
    pub silent_agents: u64,
    pub disconnected_agents: u64,
    /// Each region's counts, when the fleet has several (`--regions`); absent otherwise.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub regions: BTreeMap<String, FleetHealth>,
    /// Regions that did not answer in time: their agents are not in the counts.
    #[serde(default)]
    pub missing_regions: Vec<String>,
    /// Whether a region is missing (the counts are a part of the fleet).
    #[serde(default)]
    pub partial: bool,
}

impl FleetHealth {
    /// Adds another region's counts.
    pub fn add(&mut self, o: &FleetHealth) {
        self.total_agents += o.total_agents;
        self.connected_agents += o.connected_agents;
        self.healthy_agents += o.healthy_agents;
        self.unhealthy_agents += o.unhealthy_agents;
        self.silent_agents += o.silent_agents;
        self.disconnected_agents += o.disconnected_agents;
    }

    /// Counts one more agent (by the rule the store keeps its counts by: [`Tally`]).
    pub fn count(&mut self, rec: &AgentRecord) {
        let mut c = AgentCounts::default();
        c.add(Tally::of(rec));
        self.add(&c.into());
    }
}

impl From<AgentCounts> for FleetHealth {
    fn from(c: AgentCounts) -> Self {
        Self {
            total_agents: c.total,
            connected_agents: c.connected,
            healthy_agents: c.healthy,
            unhealthy_agents: c.unhealthy,
            silent_agents: c.silent,
            disconnected_agents: c.disconnected,
            ..Default::default()
        }
    }
}

/// Which version of a config gives an agent one aspect.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigRef {
    pub name: String,
    pub version: u64,
    pub hash: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoteConfigStatusView {
    /// UNSET, APPLYING, APPLIED or FAILED.
    pub status: String,
    pub hash: String,
    pub error: String,
    /// The config it last reported FAILED for and went back from (the collector's supervisor
    /// rolls back so): not sent to it again. Absent when there is none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rolled_back: Option<RefusalView>,
    /// The config Flotilla did not send it, because its build lacks components the config
    /// names (`error` lists them). Absent when there is none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub not_sent: Option<RefusalView>,
}

/// A config refused for an agent (by the agent, or by the server for it), and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefusalView {
    pub hash: String,
    pub error: String,
}

/// AgentSummary: the list view.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentSummary {
    pub instance_uid: String,
    /// The region whose store holds the agent (set by [`AgentSummary::in_region`]).
    pub region: String,
    /// Its home region, when the fleet has several and the agent names one of them.
    pub home_region: Option<String>,
    /// Served outside its home region (it does not take connection settings that would send
    /// it home, or no endpoint is configured for its home).
    pub roaming: bool,
    /// The OpAMP endpoint of its home region it was offered.
    pub redirected_to: Option<String>,
    pub status: String,
    pub healthy: Option<bool>,
    pub last_seen: String,
    pub gateway: Option<String>,
    pub identifying_attributes: BTreeMap<String, String>,
    pub non_identifying_attributes: BTreeMap<String, String>,
    pub labels: BTreeMap<String, String>,
    pub remote_config_status: RemoteConfigStatusView,
    /// Where the agent stands with the config it should run ([`config_state`]).
    pub config_state: String,
    pub desired_config: Option<ConfigRef>,
    pub desired_packages: Option<ConfigRef>,
    pub desired_settings: Option<ConfigRef>,
    pub effective_config_hash: Option<String>,
    /// Whether the effective config differs from what the agent should run, past what the
    /// collector's supervisor adds (fleet/drift.rs); null when that cannot be told (no desired
    /// or effective config, not YAML, or not judged since the desired config changed).
    pub config_drift: Option<bool>,
}

/// One page of the agent list.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AgentsPage {
    /// Agents matching the filters, over every page.
    pub total: usize,
    pub agents: Vec<AgentSummary>,
    pub next_cursor: Option<String>,
    /// Regions that did not answer in time: their agents are not in the page or the total.
    pub missing_regions: Vec<String>,
    /// Whether a region is missing.
    pub partial: bool,
}

/// The detail view: the summary plus everything the agent reported.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AgentDetail {
    #[serde(flatten)]
    pub summary: AgentSummary,
    pub first_seen: String,
    pub sequence_num: u64,
    pub transport: Option<&'static str>,
    pub peer_address: Option<String>,
    pub capabilities: CapabilitiesView,
    pub client_certificate: ClientCertificateView,
    pub health: Option<HealthView>,
    /// File name to content type and body, secrets redacted.
    pub effective_config: Option<BTreeMap<String, EffectiveFile>>,
    pub packages: Option<PackagesView>,
    pub custom_capabilities: Option<Vec<String>>,
    /// What the agent's build contains (AvailableComponents): null until it reports them.
    pub available_components: Option<ComponentsView>,
    /// The custom messages it sent, newest first (the last 20).
    pub custom_messages: Vec<CustomMessageView>,
    /// Custom messages sent to it that wait for its next message, oldest first.
    pub pending_custom_messages: Vec<PendingCustomMessageView>,
    pub restart_pending: bool,
    /// Its own metrics, as it sends them over OTLP (null until it sends any).
    pub own_metrics: Option<OwnMetricsView>,
}

/// A custom message sent to an agent, waiting for its next message until `expires`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PendingCustomMessageView {
    pub capability: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub data_bytes: u64,
    pub expires: String,
}

/// A custom message an agent sent: its data in base64 (the first 4 KiB; `data_bytes` is the
/// size it had).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CustomMessageView {
    pub capability: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub data_base64: String,
    pub data_bytes: u64,
    pub truncated: bool,
    pub received: String,
}

/// An agent's available components: each kind (`receivers`, `processors`, `exporters`,
/// `extensions`, `connectors` for a collector) to its component types, sorted. `complete` is
/// false while only the hash is known (the server has asked for the list).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ComponentsView {
    pub hash: String,
    pub complete: bool,
    pub components: BTreeMap<String, Vec<String>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CapabilitiesView {
    pub bits: u64,
    pub names: Vec<&'static str>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ClientCertificateView {
    pub sha256: Option<String>,
    pub issued_sha256: Option<String>,
    pub retired: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HealthView {
    pub healthy: bool,
    pub start_time: Option<String>,
    pub last_error: String,
    pub status: String,
    pub status_time: Option<String>,
    pub attributes: BTreeMap<String, String>,
    pub components: BTreeMap<String, HealthView>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EffectiveFile {
    pub content_type: String,
    pub body: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PackagesView {
    pub server_provided_all_packages_hash: String,
    pub error: String,
    pub packages: BTreeMap<String, PackageView>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PackageView {
    pub agent_has_version: String,
    pub agent_has_hash: String,
    pub server_offered_version: String,
    pub status: &'static str,
    pub error: String,
}

fn attrs(kvs: &[KeyValue]) -> BTreeMap<String, String> {
    kvs.iter()
        .map(|kv| {
            let v = kv.value.as_ref().and_then(|v| v.value.as_ref());
            (kv.key.clone(), crate::fleet::agents::any_value_string(v))
        })
        .collect()
}

fn remote_config_status(rec: &AgentRecord) -> RemoteConfigStatusView {
    let s = rec.remote_config_status.clone().unwrap_or_default();
    let status = match s.status() {
        RemoteConfigStatuses::Unset => "UNSET",
        RemoteConfigStatuses::Applying => "APPLYING",
        RemoteConfigStatuses::Applied => "APPLIED",
        RemoteConfigStatuses::Failed => "FAILED",
    };
    let refusal = || RefusalView {
        hash: hex::encode(&rec.rejected_config_hash),
        error: rec.rejected_config_error.clone(),
    };
    RemoteConfigStatusView {
        status: status.to_owned(),
        hash: hex::encode(&s.last_remote_config_hash),
        error: s.error_message,
        rolled_back: went_back(rec).then(refusal),
        not_sent: rec.rejected_by_server.then(refusal),
    }
}

/// The hash of an agent's effective config: as recorded with it (visited records may come
/// without the body: [`flotilla_common::store::Store::visit_agents`]), or of the body for records
/// from before the hash was kept.
fn effective_hash(rec: &AgentRecord) -> Option<String> {
    if !rec.effective_config_hash.is_empty() {
        return Some(hex::encode(&rec.effective_config_hash));
    }
    effective_map(rec).map(|m| hex::encode(configs::hash_of_config_map(m)))
}

impl AgentSummary {
    pub fn of(rec: &AgentRecord, desired: &Desired) -> Self {
        let d = crate::fleet::agents::description(rec).into_owned();
        let attributes = attributes(rec);
        let files = desired_config(rec, &attributes, desired, Aspect::Files);
        let of = |aspect| {
            desired_config(rec, &attributes, desired, aspect).map(|c| ConfigRef {
                name: c.name.clone(),
                version: c.version,
                hash: c.hash.clone(),
            })
        };
        Self {
            instance_uid: uid_of(rec).map(|u| u.to_string()).unwrap_or_default(),
            region: String::new(),
            home_region: (!rec.home_region.is_empty()).then(|| rec.home_region.clone()),
            roaming: false,
            redirected_to: (!rec.redirected_to.is_empty()).then(|| rec.redirected_to.clone()),
            status: status_name(rec).to_owned(),
            healthy: healthy(rec),
            last_seen: rfc3339(rec.last_seen_unix_ms),
            gateway: rec.origin.as_ref().map(|o| o.gateway_id.clone()),
            identifying_attributes: attrs(&d.identifying_attributes),
            non_identifying_attributes: attrs(&d.non_identifying_attributes),
            labels: rec.labels.clone().into_iter().collect(),
            remote_config_status: remote_config_status(rec),
            config_state: config_state(rec, files.map(|c| c.hash.as_str())).to_owned(),
            desired_config: of(Aspect::Files),
            desired_packages: of(Aspect::Packages),
            desired_settings: of(Aspect::Settings),
            effective_config_hash: effective_hash(rec),
            config_drift: config_drift(rec, files.map(|c| c.hash.as_str())),
        }
    }
}

impl AgentSummary {
    /// The summary of an agent held by `region`'s store: roaming when that is not its home and
    /// it was not sent home.
    pub fn in_region(mut self, region: &str) -> Self {
        self.roaming = self.home_region.as_deref().is_some_and(|h| h != region)
            && self.redirected_to.is_none();
        self.region = region.to_owned();
        self
    }
}

/// The record's drift judgement, if it was made against the desired config of hash `want`.
pub fn config_drift(rec: &AgentRecord, want: Option<&str>) -> Option<bool> {
    if !want.is_some_and(|w| hex_eq(&rec.drift_checked_hash, w)) {
        return None;
    }
    match Drift::try_from(rec.config_drift) {
        Ok(Drift::InSync) => Some(false),
        Ok(Drift::Drifted) => Some(true),
        _ => None,
    }
}

impl AgentDetail {
    pub fn of(rec: &AgentRecord, desired: &Desired, redactor: &Redactor) -> Self {
        let hex_or_none = |b: &[u8]| (!b.is_empty()).then(|| hex::encode(b));
        Self {
            summary: AgentSummary::of(rec, desired),
            first_seen: rfc3339(rec.first_seen_unix_ms),
            sequence_num: rec.sequence_num,
            transport: rec.origin.as_ref().map(|o| match o.transport() {
                Transport::Http => "http",
                _ => "websocket",
            }),
            peer_address: rec.origin.as_ref().map(|o| o.peer_addr.clone()),
            capabilities: capabilities(rec.capabilities),
            client_certificate: ClientCertificateView {
                sha256: hex_or_none(&rec.cert_sha256),
                issued_sha256: hex_or_none(&rec.issued_cert_sha256),
                retired: rec.retired_cert_sha256.iter().map(hex::encode).collect(),
            },
            health: rec.health.as_deref().map(health),
            effective_config: effective_map(rec).map(|m| {
                m.config_map
                    .iter()
                    .map(|(name, f)| {
                        let body = redactor.redact(&String::from_utf8_lossy(&f.body));
                        let content_type = f.content_type.clone();
                        (name.clone(), EffectiveFile { content_type, body })
                    })
                    .collect()
            }),
            packages: rec.package_statuses.as_ref().map(|p| PackagesView {
                server_provided_all_packages_hash: hex::encode(
                    &p.server_provided_all_packages_hash,
                ),
                error: p.error_message.clone(),
                packages: p
                    .packages
                    .iter()
                    .map(|(n, s)| {
                        let view = PackageView {
                            agent_has_version: s.agent_has_version.clone(),
                            agent_has_hash: hex::encode(&s.agent_has_hash),
                            server_offered_version: s.server_offered_version.clone(),
                            status: package_status_name(s.status()),
                            error: s.error_message.clone(),
                        };
                        (n.clone(), view)
                    })
                    .collect(),
            }),
            custom_capabilities: rec
                .custom_capabilities
                .as_ref()
                .map(|c| c.capabilities.clone()),
            available_components: rec.available_components.as_ref().map(|a| ComponentsView {
                hash: hex::encode(&a.hash),
                complete: !a.components.is_empty(),
                components: a
                    .components
                    .iter()
                    .map(|(kind, details)| {
                        let mut types: Vec<String> =
                            details.sub_component_map.keys().cloned().collect();
                        types.sort();
                        (kind.clone(), types)
                    })
                    .collect(),
            }),
            custom_messages: rec
                .custom_messages
                .iter()
                .map(|m| CustomMessageView {
                    capability: m.capability.clone(),
                    kind: m.r#type.clone(),
                    data_base64: base64::engine::general_purpose::STANDARD.encode(&m.data),
                    data_bytes: m.data_bytes,
                    truncated: (m.data.len() as u64) < m.data_bytes,
                    received: rfc3339(m.at_unix_ms),
                })
                .collect(),
            pending_custom_messages: rec
                .pending_custom_messages
                .iter()
                // An expired one is dropped at the agent's next message; not waiting any more.
                .filter(|m| m.expires_unix_ms > now_unix_ms())
                .map(|m| PendingCustomMessageView {
                    capability: m.capability.clone(),
                    kind: m.r#type.clone(),
                    data_bytes: m.data.len() as u64,
                    expires: rfc3339(m.expires_unix_ms),
                })
                .collect(),
            restart_pending: rec.restart_expires_unix_ms > 0,
            own_metrics: rec.own_metrics.as_deref().map(OwnMetricsView::of),
        }
    }
}

/// The config states, in the order the console shows them.
pub const CONFIG_STATES: [&str; 6] = [
    "applied",
    "applying",
    "failed",
    "unknown",
    "pending",
    "unmanaged",
];

/// Where an agent stands with the config files it should run (`desired_hash`): `applied`,
/// `applying` or `failed` as it reports for that config (`failed` also when it failed that config
/// and went back to its previous one); `unknown` when it was sent the config but reports no
/// status; `pending` until then; `unmanaged` when no active config selects it.
pub fn config_state(rec: &AgentRecord, desired_hash: Option<&str>) -> &'static str {
    let Some(want) = desired_hash else {
        return "unmanaged";
    };
    match config_standing_seen(rec, want) {
        ConfigStanding::Applied => "applied",
        ConfigStanding::Applying => "applying",
        ConfigStanding::Failed => "failed",
        ConfigStanding::Unknown => "unknown",
        ConfigStanding::Pending => "pending",
    }
}

fn package_status_name(s: PackageStatusEnum) -> &'static str {
    match s {
        PackageStatusEnum::Installed => "INSTALLED",
        PackageStatusEnum::InstallPending => "INSTALL_PENDING",
        PackageStatusEnum::Installing => "INSTALLING",
        PackageStatusEnum::InstallFailed => "INSTALL_FAILED",
        PackageStatusEnum::Downloading => "DOWNLOADING",
    }
}

fn health(h: &ComponentHealth) -> HealthView {
    let time = |nanos: u64| (nanos > 0).then(|| rfc3339(nanos / 1_000_000));
    HealthView {
        healthy: h.healthy,
        start_time: time(h.start_time_unix_nano),
        last_error: h.last_error.clone(),
        status: h.status.clone(),
        status_time: time(h.status_time_unix_nano),
        attributes: attrs(&h.attributes),
        components: h
            .component_health_map
            .iter()
            .map(|(k, c)| (k.clone(), health(c)))
            .collect(),
    }
}

fn capabilities(bits: u64) -> CapabilitiesView {
    let names = (0..16)
        .filter(|i| bits & (1 << i) != 0)
        .filter_map(|i| {
            Cap::try_from(1i32 << i)
                .ok()
                .map(|c| c.as_str_name().trim_start_matches("AgentCapabilities_"))
        })
        .collect();
    CapabilitiesView { bits, names }
}
