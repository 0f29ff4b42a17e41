//! JSON shapes of the admin API, built from agent records. Field names are the API contract
//! (ARCHITECTURE.md, "Contracts").

use crate::agent::{self, attributes};
use crate::configs::{self, Aspect, Desired};
use crate::redact::Redactor;
use crate::rollout::Rollout;
use flotilla_common::selector::Selector;
use flotilla_common::store::{AuditEntry, StoredConfig};
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
pub fn summary(rec: &AgentRecord, desired: &Desired) -> Value {
    let d = rec.description.clone().unwrap_or_default();
    let attrs = attributes(rec);
    let of = |aspect| {
        agent::desired_config(rec, &attrs, desired, aspect)
            .map(|c| json!({"name": c.name, "version": c.version, "hash": c.hash}))
    };
    let labels: std::collections::BTreeMap<_, _> = rec.labels.iter().collect();
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
        "labels": labels,
        "remote_config_status": remote_config_status_json(rec),
        "desired_config": of(Aspect::Files),
        "desired_packages": of(Aspect::Packages),
        "desired_settings": of(Aspect::Settings),
        "effective_config_hash": effective_hash,
    })
}

/// The detail view: the summary plus everything the agent reported.
pub fn detail(rec: &AgentRecord, desired: &Desired, redactor: &Redactor) -> Value {
    let mut v = summary(rec, desired);
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
                "body": redactor.redact(&String::from_utf8_lossy(&f.body)),
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
        "selector": selector_json(&c.selector),
        "files": c.files.iter().map(|(n, f)| (n.clone(), Value::String(f.body.clone()))).collect::<Map<_, _>>(),
        "packages": c.packages,
        "settings": c.settings,
        "created": rfc3339(c.created_unix_ms),
        "created_by": c.created_by,
        "comment": c.comment,
    })
}

/// A selector as the API shows it: an object of key to value when it has only `=` terms (the
/// form the contract's PUT body uses), otherwise its text form.
pub fn selector_json(s: &Selector) -> Value {
    use flotilla_common::selector::Op;
    let pairs: Option<Map<String, Value>> = s
        .terms()
        .iter()
        .map(|t| match &t.op {
            Op::Eq(v) => Some((t.key.clone(), Value::String(v.clone()))),
            _ => None,
        })
        .collect();
    match pairs {
        Some(p) if p.len() == s.terms().len() => Value::Object(p),
        _ => Value::String(s.to_string()),
    }
}

/// A unified diff of two versions: the selector, then each file, then packages and settings.
pub fn diff(from: &StoredConfig, to: &StoredConfig) -> String {
    let mut out = String::new();
    let mut section = |name: &str, a: &str, b: &str| {
        if a != b {
            let d = similar::TextDiff::from_lines(a, b);
            let header = (format!("a/{name}"), format!("b/{name}"));
            out.push_str(&d.unified_diff().header(&header.0, &header.1).to_string());
        }
    };
    let line = |s: &Selector| format!("{s}\n");
    section("selector", &line(&from.selector), &line(&to.selector));
    let names: std::collections::BTreeSet<&String> =
        from.files.keys().chain(to.files.keys()).collect();
    for name in names {
        let body = |c: &StoredConfig| {
            c.files
                .get(name)
                .map(|f| f.body.clone())
                .unwrap_or_default()
        };
        section(name, &body(from), &body(to));
    }
    let pretty = |v: Value| serde_json::to_string_pretty(&v).unwrap_or_default() + "\n";
    section(
        "packages",
        &pretty(json!(from.packages)),
        &pretty(json!(to.packages)),
    );
    section(
        "settings",
        &pretty(json!(from.settings)),
        &pretty(json!(to.settings)),
    );
    out
}

/// A rollout with its totals: what `ctl rollouts status` draws its progress from.
pub fn rollout_json(r: &Rollout) -> Value {
    let sum = |f: fn(&crate::rollout::Phase) -> usize| r.phases.iter().map(f).sum::<usize>();
    let phases: Vec<Value> = r
        .phases
        .iter()
        .enumerate()
        .map(|(i, p)| {
            json!({
                "phase": i + 1,
                "agents": p.agents.len(),
                "applied": p.applied,
                "failed": p.failed,
                "pending": p.pending,
                "started": rfc3339(p.started_unix_ms),
                "settled": p.settled_unix_ms.map(rfc3339),
                "completed": p.completed_unix_ms.map(rfc3339),
                "instance_uids": p.agents.iter().map(Uuid::to_string).collect::<Vec<_>>(),
            })
        })
        .collect();
    json!({
        "id": r.id,
        "config": r.config,
        "from_version": r.from_version,
        "to_version": r.to_version,
        "state": r.state,
        "reason": r.reason,
        "plan": r.plan,
        "soak": humantime::format_duration(r.soak).to_string(),
        "error_budget": r.error_budget,
        "agents_total": r.agents_total,
        "enrolled": sum(|p| p.agents.len()),
        "applied": sum(|p| p.applied),
        "failed": sum(|p| p.failed),
        "pending": sum(|p| p.pending),
        "phases": phases,
        "created": rfc3339(r.created_unix_ms),
        "created_by": r.created_by,
        "updated": rfc3339(r.updated_unix_ms),
    })
}

pub fn audit_json(e: &AuditEntry) -> Value {
    json!({
        "id": e.id,
        "at": rfc3339(e.at_unix_ms),
        "caller": e.caller,
        "action": e.action,
        "object": e.object,
        "before": e.before,
        "after": e.after,
    })
}

/// True if `rec` passes the list filters.
pub fn matches_filters(rec: &AgentRecord, f: &Filters) -> bool {
    (f.status.is_none() || f.status.as_deref() == Some(status_name(rec)))
        && f.healthy.is_none_or(|want| healthy(rec) == Some(want))
        && (f.selector.is_empty() || f.selector.matches(&attributes(rec)))
}

#[derive(Debug, Default)]
pub struct Filters {
    pub selector: Selector,
    pub status: Option<String>,
    pub healthy: Option<bool>,
}
