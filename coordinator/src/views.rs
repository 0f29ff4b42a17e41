//! JSON shapes of the admin API, built from agent records. Field names are the API contract
//! (ARCHITECTURE.md, "Contracts").

use crate::agent::{self, attributes};
use crate::configs;
use flotilla_common::store::StoredConfig;
use flotilla_proto::bus::{AgentRecord, AgentStatus, Transport};
use flotilla_proto::opamp::{
    AgentCapabilities as Cap, ComponentHealth, KeyValue, PackageStatusEnum, RemoteConfigStatuses,
};
use serde_json::{Map, Value, json};
use std::time::{Duration, UNIX_EPOCH};
use uuid::Uuid;

pub fn status_name(rec: &AgentRecord) -> &'static str {
    match rec.status() {
        AgentStatus::Connected => "connected",
        AgentStatus::Silent => "silent",
        AgentStatus::Disconnected | AgentStatus::Unspecified => "disconnected",
    }
}

pub fn healthy(rec: &AgentRecord) -> Option<bool> {
    rec.health.as_ref().map(|h| h.healthy)
}

pub fn rfc3339(unix_ms: u64) -> String {
    humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(unix_ms)).to_string()
}

pub fn uid_string(rec: &AgentRecord) -> String {
    Uuid::from_slice(&rec.instance_uid)
        .map(|u| u.to_string())
        .unwrap_or_default()
}

fn attrs_json(kvs: &[KeyValue]) -> Value {
    Value::Object(
        kvs.iter()
            .map(|kv| {
                (
                    kv.key.clone(),
                    Value::String(agent::any_value_string(
                        kv.value.as_ref().and_then(|v| v.value.as_ref()),
                    )),
                )
            })
            .collect(),
    )
}

fn remote_config_status_json(rec: &AgentRecord) -> Value {
    let s = rec.remote_config_status.clone().unwrap_or_default();
    let status = match s.status() {
        RemoteConfigStatuses::Unset => "UNSET",
        RemoteConfigStatuses::Applying => "APPLYING",
        RemoteConfigStatuses::Applied => "APPLIED",
        RemoteConfigStatuses::Failed => "FAILED",
    };
    json!({"status": status, "hash": hex::encode(&s.last_remote_config_hash), "error": s.error_message})
}

/// AgentSummary: the list view.
pub fn summary(rec: &AgentRecord, configs: &[StoredConfig]) -> Value {
    let d = rec.description.clone().unwrap_or_default();
    let desired = agent::desired_config(rec, configs)
        .map(|c| json!({"name": c.name, "version": c.version, "hash": c.hash}));
    let effective_hash = rec
        .effective_config
        .as_ref()
        .and_then(|e| e.config_map.as_ref())
        .map(|m| hex::encode(configs::hash_of_config_map(m)));
    json!({
        "instance_uid": uid_string(rec),
        "status": status_name(rec),
        "healthy": healthy(rec),
        "last_seen": rfc3339(rec.last_seen_unix_ms),
        "gateway": rec.origin.as_ref().map(|o| o.gateway_id.clone()),
        "identifying_attributes": attrs_json(&d.identifying_attributes),
        "non_identifying_attributes": attrs_json(&d.non_identifying_attributes),
        "remote_config_status": remote_config_status_json(rec),
        "desired_config": desired,
        "effective_config_hash": effective_hash,
    })
}

/// The detail view: the summary plus everything the agent reported.
pub fn detail(rec: &AgentRecord, configs: &[StoredConfig]) -> Value {
    let mut v = summary(rec, configs);
    let obj = v.as_object_mut().expect("summary is an object");
    let extra = json!({
        "first_seen": rfc3339(rec.first_seen_unix_ms),
        "sequence_num": rec.sequence_num,
        "transport": rec.origin.as_ref().map(|o| match o.transport() {
            Transport::Http => "http",
            _ => "websocket",
        }),
        "peer_address": rec.origin.as_ref().map(|o| o.peer_addr.clone()),
        "capabilities": capabilities_json(rec.capabilities),
        "client_certificate": {
            "sha256": (!rec.cert_sha256.is_empty()).then(|| hex::encode(&rec.cert_sha256)),
            "issued_sha256": (!rec.issued_cert_sha256.is_empty()).then(|| hex::encode(&rec.issued_cert_sha256)),
            "retired": rec.retired_cert_sha256.iter().map(hex::encode).collect::<Vec<_>>(),
        },
        "health": rec.health.as_ref().map(health_json),
        "effective_config": rec.effective_config.as_ref().and_then(|e| e.config_map.as_ref()).map(|m| {
            Value::Object(m.config_map.iter().map(|(name, f)| (name.clone(), json!({
                "content_type": f.content_type,
                "body": String::from_utf8_lossy(&f.body),
            }))).collect())
        }),
        "packages": rec.package_statuses.as_ref().map(|p| json!({
            "server_provided_all_packages_hash": hex::encode(&p.server_provided_all_packages_hash),
            "error": p.error_message,
            "packages": Value::Object(p.packages.iter().map(|(n, s)| (n.clone(), json!({
                "agent_has_version": s.agent_has_version,
                "agent_has_hash": hex::encode(&s.agent_has_hash),
                "server_offered_version": s.server_offered_version,
                "status": package_status_name(s.status()),
                "error": s.error_message,
            }))).collect()),
        })),
        "custom_capabilities": rec.custom_capabilities.as_ref().map(|c| c.capabilities.clone()),
        "restart_pending": rec.restart_expires_unix_ms > 0,
    });
    if let Value::Object(extra) = extra {
        obj.extend(extra);
    }
    v
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

fn health_json(h: &ComponentHealth) -> Value {
    let components: Map<String, Value> = h
        .component_health_map
        .iter()
        .map(|(k, c)| (k.clone(), health_json(c)))
        .collect();
    json!({
        "healthy": h.healthy,
        "start_time": (h.start_time_unix_nano > 0).then(|| rfc3339(h.start_time_unix_nano / 1_000_000)),
        "last_error": h.last_error,
        "status": h.status,
        "status_time": (h.status_time_unix_nano > 0).then(|| rfc3339(h.status_time_unix_nano / 1_000_000)),
        "attributes": attrs_json(&h.attributes),
        "components": components,
    })
}

fn capabilities_json(bits: u64) -> Value {
    let names: Vec<&str> = (0..16)
        .filter(|i| bits & (1 << i) != 0)
        .filter_map(|i| {
            Cap::try_from(1i32 << i)
                .ok()
                .map(|c| c.as_str_name().trim_start_matches("AgentCapabilities_"))
        })
        .collect();
    json!({"bits": bits, "names": names})
}

pub fn config_json(c: &StoredConfig) -> Value {
    json!({
        "name": c.name,
        "version": c.version,
        "hash": c.hash,
        "selector": c.selector,
        "files": c.files.iter().map(|(n, f)| (n.clone(), Value::String(f.body.clone()))).collect::<Map<_, _>>(),
        "created": rfc3339(c.created_unix_ms),
        "created_by": c.created_by,
    })
}

/// True if `rec` passes the list filters.
pub fn matches_filters(rec: &AgentRecord, f: &Filters) -> bool {
    (f.status.is_none() || f.status.as_deref() == Some(status_name(rec)))
        && f.healthy.is_none_or(|want| healthy(rec) == Some(want))
        && (f.selector.is_empty() || configs::matches(&f.selector, &attributes(rec)))
}

#[derive(Debug, Default)]
pub struct Filters {
    pub selector: std::collections::BTreeMap<String, String>,
    pub status: Option<String>,
    pub healthy: Option<bool>,
}
