//! The admin service's messages from the coordinator's types and the REST views, and the REST
//! body a StartRollout stands for.

use super::pb;
use crate::admin::RestartJob;
use crate::rollouts::RolloutRequest;
use crate::views;
use flotilla_common::store::StoredConfig;
use serde_json::{Value, json};
use std::collections::HashMap;
use tonic::Status;

/// The REST body of a rollout, so its defaults (soak, multiplier, error budget) and checks are
/// the REST API's own.
pub(super) fn rollout_request(r: pb::StartRolloutRequest) -> Result<RolloutRequest, Status> {
    use pb::start_rollout_request::Phases;
    let phases = match r.phases {
        Some(Phases::Steps(s)) => {
            let mut p = json!({"initial": s.initial});
            if let Some(m) = s.multiplier {
                p["multiplier"] = json!(m);
            }
            if let Some(m) = s.max_per_phase {
                p["max_per_phase"] = json!(m);
            }
            p
        }
        Some(Phases::Percentages(p)) => json!({"percentages": p.percentages}),
        None => {
            return Err(Status::invalid_argument(
                "phases are required: steps {initial, multiplier, max_per_phase} or percentages",
            ));
        }
    };
    let mut body = json!({"config": r.config, "phases": phases});
    if let Some(v) = r.version {
        body["version"] = json!(v);
    }
    if !r.soak.is_empty() {
        body["soak"] = json!(r.soak);
    }
    if let Some(b) = r.error_budget {
        let mut budget = json!({"max_failure_percent": b.max_failure_percent});
        if let Some(n) = b.min_sample {
            budget["min_sample"] = json!(n);
        }
        if !b.action.is_empty() {
            budget["action"] = json!(b.action);
        }
        body["error_budget"] = budget;
    }
    serde_json::from_value(body)
        .map_err(|e| Status::invalid_argument(format!("invalid rollout: {e}")))
}

pub(super) fn config_version(c: &StoredConfig, active: bool) -> pb::ConfigVersion {
    pb::ConfigVersion {
        name: c.name.clone(),
        version: c.version,
        hash: c.hash.clone(),
        selector: c.selector.to_string(),
        created: views::rfc3339(c.created_unix_ms),
        created_by: c.created_by.clone(),
        comment: c.comment.clone(),
        active,
    }
}

pub(super) fn restart_job(j: RestartJob) -> pb::RestartJob {
    pb::RestartJob {
        id: j.id,
        selector: j.selector,
        rate_per_second: j.rate_per_second,
        matched: j.matched as u64,
        delivered: j.delivered as u64,
        queued: j.queued as u64,
        failed: j.failed as u64,
        errors: j.errors,
        done: j.done,
        created_by: j.created_by,
        created: views::rfc3339(j.created_unix_ms),
    }
}

fn text(v: &Value) -> String {
    v.as_str().unwrap_or_default().to_owned()
}

fn number(v: &Value) -> u64 {
    v.as_u64().unwrap_or_default()
}

fn strings(v: &Value) -> HashMap<String, String> {
    v.as_object()
        .map(|o| o.iter().map(|(k, v)| (k.clone(), text(v))).collect())
        .unwrap_or_default()
}

fn config_ref(v: &Value) -> Option<pb::ConfigRef> {
    v.is_object().then(|| pb::ConfigRef {
        name: text(&v["name"]),
        version: number(&v["version"]),
        hash: text(&v["hash"]),
    })
}

/// An agent summary from its REST view ([`views::summary`], or the detail that extends it).
pub(super) fn summary(v: &Value) -> pb::AgentSummary {
    let rcs = &v["remote_config_status"];
    pb::AgentSummary {
        instance_uid: text(&v["instance_uid"]),
        status: text(&v["status"]),
        healthy: v["healthy"].as_bool(),
        last_seen: text(&v["last_seen"]),
        gateway: text(&v["gateway"]),
        identifying_attributes: strings(&v["identifying_attributes"]),
        non_identifying_attributes: strings(&v["non_identifying_attributes"]),
        labels: strings(&v["labels"]),
        remote_config_status: text(&rcs["status"]),
        remote_config_hash: text(&rcs["hash"]),
        remote_config_error: text(&rcs["error"]),
        effective_config_hash: text(&v["effective_config_hash"]),
        desired_config: config_ref(&v["desired_config"]),
        desired_packages: config_ref(&v["desired_packages"]),
        desired_settings: config_ref(&v["desired_settings"]),
    }
}

/// A rollout from its REST view ([`views::rollout_json`]), which derives the totals.
pub(super) fn rollout_message(v: &Value) -> pb::Rollout {
    let phases = v["phases"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default();
    pb::Rollout {
        id: text(&v["id"]),
        config: text(&v["config"]),
        from_version: number(&v["from_version"]),
        to_version: number(&v["to_version"]),
        state: text(&v["state"]),
        reason: text(&v["reason"]),
        agents_total: number(&v["agents_total"]),
        enrolled: number(&v["enrolled"]),
        applied: number(&v["applied"]),
        failed: number(&v["failed"]),
        pending: number(&v["pending"]),
        phases: phases
            .iter()
            .map(|p| pb::Phase {
                agents: number(&p["agents"]),
                applied: number(&p["applied"]),
                failed: number(&p["failed"]),
                pending: number(&p["pending"]),
                started: text(&p["started"]),
                settled: text(&p["settled"]),
                completed: text(&p["completed"]),
                instance_uids: p["instance_uids"]
                    .as_array()
                    .map(|a| a.iter().map(text).collect())
                    .unwrap_or_default(),
            })
            .collect(),
        soak: text(&v["soak"]),
        created: text(&v["created"]),
        created_by: text(&v["created_by"]),
        updated: text(&v["updated"]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::configs::Desired;
    use crate::rollout::{BudgetAction, Plan};
    use flotilla_proto::bus::{AgentRecord, AgentStatus, Origin};
    use flotilla_proto::opamp::{
        AgentDescription, AnyValue, ComponentHealth, KeyValue, RemoteConfigStatus,
        RemoteConfigStatuses, any_value,
    };
    use std::time::Duration;
    use tonic::Code;

    fn kv(k: &str, v: &str) -> KeyValue {
        KeyValue {
            key: k.into(),
            value: Some(AnyValue {
                value: Some(any_value::Value::StringValue(v.into())),
            }),
        }
    }

    /// The message is read from the REST view by key: every key it reads must be one the view
    /// writes, with the value the view shows.
    #[test]
    fn summary_carries_what_the_rest_view_shows() {
        let uid = uuid::Uuid::now_v7();
        let rec = AgentRecord {
            instance_uid: uid.as_bytes().to_vec(),
            status: AgentStatus::Connected as i32,
            description: Some(AgentDescription {
                identifying_attributes: vec![kv("service.name", "otelcol")],
                non_identifying_attributes: vec![kv("env", "prod")],
            }),
            health: Some(ComponentHealth {
                healthy: false,
                ..Default::default()
            }),
            remote_config_status: Some(RemoteConfigStatus {
                last_remote_config_hash: vec![0xab],
                status: RemoteConfigStatuses::Failed as i32,
                error_message: "line 3: bad".into(),
            }),
            origin: Some(Origin {
                gateway_id: "gw-1".into(),
                ..Default::default()
            }),
            labels: [("ring".to_owned(), "canary".to_owned())].into(),
            last_seen_unix_ms: 1_700_000_000_000,
            ..Default::default()
        };
        let view = views::summary(&rec, &Desired::new(Vec::new()));
        let s = summary(&view);
        assert_eq!(s.instance_uid, uid.to_string());
        assert_eq!((s.status.as_str(), s.healthy), ("connected", Some(false)));
        assert_eq!(s.last_seen, view["last_seen"].as_str().unwrap());
        assert!(!s.last_seen.is_empty());
        assert_eq!(s.gateway, "gw-1");
        assert_eq!(s.identifying_attributes["service.name"], "otelcol");
        assert_eq!(s.non_identifying_attributes["env"], "prod");
        assert_eq!(s.labels["ring"], "canary");
        assert_eq!(
            (
                s.remote_config_status.as_str(),
                s.remote_config_hash.as_str(),
                s.remote_config_error.as_str()
            ),
            ("FAILED", "ab", "line 3: bad")
        );
        assert_eq!(s.desired_config, None);
    }

    fn steps(initial: u64) -> pb::StartRolloutRequest {
        pb::StartRolloutRequest {
            config: "otel".into(),
            phases: Some(pb::start_rollout_request::Phases::Steps(pb::StepPhases {
                initial,
                ..Default::default()
            })),
            ..Default::default()
        }
    }

    #[test]
    fn rollout_requests_take_the_rest_defaults() {
        let r = rollout_request(steps(3)).unwrap();
        assert_eq!(r.version, None);
        assert_eq!(r.soak, Duration::from_secs(30));
        assert_eq!(
            r.phases,
            Plan::Steps {
                initial: 3,
                multiplier: 2.0,
                max_per_phase: None
            }
        );
        assert_eq!(r.error_budget, Default::default());

        let r = rollout_request(pb::StartRolloutRequest {
            version: Some(4),
            phases: Some(pb::start_rollout_request::Phases::Percentages(
                pb::PercentagePhases {
                    percentages: vec![10.0, 100.0],
                },
            )),
            soak: "2m".into(),
            error_budget: Some(pb::ErrorBudget {
                max_failure_percent: 0.0,
                min_sample: None,
                action: "pause".into(),
            }),
            ..steps(1)
        })
        .unwrap();
        assert_eq!(r.version, Some(4));
        assert_eq!(r.soak, Duration::from_secs(120));
        assert_eq!(r.error_budget.max_failure_percent, 0.0);
        assert_eq!(r.error_budget.min_sample, 5);
        assert_eq!(r.error_budget.action, BudgetAction::Pause);

        let no_phases = pb::StartRolloutRequest {
            phases: None,
            ..steps(1)
        };
        for bad in [
            no_phases,
            pb::StartRolloutRequest {
                soak: "soon".into(),
                ..steps(1)
            },
        ] {
            let e = rollout_request(bad).unwrap_err();
            assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
        }
    }
}
