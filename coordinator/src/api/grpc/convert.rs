//! The admin service's messages from the operations' typed answers, and the rollout request a
//! StartRollout stands for.

use crate::fleet::region_rollout::RegionRollout;
use crate::ops::region_rollouts::RegionRolloutRequest;
use crate::ops::restarts::RestartJob;
use crate::ops::rollouts::RolloutRequest;
use crate::ops::views::{
    AgentSummary, AuditView, ConfigRef, ConfigView, FleetHealth, RolloutView, VersionView, rfc3339,
};
use flotilla_proto::admin as pb;
use serde_json::json;
use tonic::Status;

/// The REST body of a rollout, so its defaults (soak, multiplier, error budget) and checks are
/// the REST API's own.
pub(super) fn rollout_request(r: pb::StartRolloutRequest) -> Result<RolloutRequest, Status> {
    serde_json::from_value(rollout_body(r)?)
        .map_err(|e| Status::invalid_argument(format!("invalid rollout: {e}")))
}

pub(super) fn region_rollout_request(
    r: pb::StartRegionRolloutRequest,
) -> Result<RegionRolloutRequest, Status> {
    let rollout = r
        .rollout
        .ok_or_else(|| Status::invalid_argument("rollout is required"))?;
    let mut body = rollout_body(rollout)?;
    body["regions"] = json!(r.regions);
    serde_json::from_value(body)
        .map_err(|e| Status::invalid_argument(format!("invalid rollout: {e}")))
}

pub(super) fn region_rollout(r: &RegionRollout) -> pb::RegionRollout {
    pb::RegionRollout {
        id: r.id.clone(),
        config: r.config.clone(),
        version: r.version,
        regions: r
            .regions
            .iter()
            .map(|p| pb::RegionPart {
                region: p.region.clone(),
                state: p.state.map(|s| s.as_str().to_owned()).unwrap_or_default(),
                rollout: p.rollout.clone().unwrap_or_default(),
                reason: p.reason.clone(),
            })
            .collect(),
        state: r.state.as_str().to_owned(),
        reason: r.reason.clone(),
        created_by: r.created_by.clone(),
        created: rfc3339(r.created_unix_ms),
        updated: rfc3339(r.updated_unix_ms),
    }
}

/// The JSON body `POST /api/v1/rollouts` takes, of a gRPC request.
fn rollout_body(r: pb::StartRolloutRequest) -> Result<serde_json::Value, Status> {
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
    let mut body = json!({"config": r.config, "phases": phases, "allow_empty": r.allow_empty});
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
    Ok(body)
}

pub(super) fn config_version(c: &ConfigView) -> pb::ConfigVersion {
    pb::ConfigVersion {
        name: c.name.clone(),
        version: c.version,
        hash: c.hash.clone(),
        selector: c.selector_text.clone(),
        created: c.created.clone(),
        created_by: c.created_by.clone(),
        comment: c.comment.clone(),
        active: c.active,
    }
}

pub(super) fn version_message(name: &str, v: &VersionView) -> pb::ConfigVersion {
    pb::ConfigVersion {
        name: name.to_owned(),
        version: v.version,
        hash: v.hash.clone(),
        selector: v.selector_text.clone(),
        created: v.created.clone(),
        created_by: v.created_by.clone(),
        comment: v.comment.clone(),
        active: v.active,
    }
}

pub(super) fn config_message(c: &ConfigView) -> pb::Config {
    pb::Config {
        version: Some(config_version(c)),
        packages_json: json!(c.packages).to_string(),
        settings_json: json!(c.settings).to_string(),
        files: c.files.clone().into_iter().collect(),
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
        created: rfc3339(j.created_unix_ms),
    }
}

fn config_ref(r: &Option<ConfigRef>) -> Option<pb::ConfigRef> {
    r.as_ref().map(|r| pb::ConfigRef {
        name: r.name.clone(),
        version: r.version,
        hash: r.hash.clone(),
    })
}

pub(super) fn fleet_health(h: &FleetHealth) -> pb::FleetHealth {
    pb::FleetHealth {
        total_agents: h.total_agents,
        connected_agents: h.connected_agents,
        healthy_agents: h.healthy_agents,
        unhealthy_agents: h.unhealthy_agents,
        silent_agents: h.silent_agents,
        disconnected_agents: h.disconnected_agents,
        regions: h
            .regions
            .iter()
            .map(|(r, h)| (r.clone(), fleet_health(h)))
            .collect(),
        missing_regions: h.missing_regions.clone(),
        partial: h.partial,
    }
}

pub(super) fn agent_summary(s: &AgentSummary) -> pb::AgentSummary {
    let map = |m: &std::collections::BTreeMap<String, String>| m.clone().into_iter().collect();
    pb::AgentSummary {
        instance_uid: s.instance_uid.clone(),
        status: s.status.to_owned(),
        healthy: s.healthy,
        last_seen: s.last_seen.clone(),
        gateway: s.gateway.clone().unwrap_or_default(),
        identifying_attributes: map(&s.identifying_attributes),
        non_identifying_attributes: map(&s.non_identifying_attributes),
        labels: map(&s.labels),
        remote_config_status: s.remote_config_status.status.to_owned(),
        remote_config_hash: s.remote_config_status.hash.clone(),
        remote_config_error: s.remote_config_status.error.clone(),
        effective_config_hash: s.effective_config_hash.clone().unwrap_or_default(),
        desired_config: config_ref(&s.desired_config),
        desired_packages: config_ref(&s.desired_packages),
        desired_settings: config_ref(&s.desired_settings),
        region: s.region.clone(),
        home_region: s.home_region.clone().unwrap_or_default(),
        roaming: s.roaming,
        redirected_to: s.redirected_to.clone().unwrap_or_default(),
    }
}

pub(super) fn rollout_message(r: &RolloutView) -> pb::Rollout {
    let n = |x: usize| x as u64;
    pb::Rollout {
        id: r.id.clone(),
        config: r.config.clone(),
        from_version: r.from_version,
        to_version: r.to_version,
        state: serde_json::to_value(r.state)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default(),
        reason: r.reason.clone(),
        agents_total: n(r.agents_total),
        enrolled: n(r.enrolled),
        applied: n(r.applied),
        failed: n(r.failed),
        unknown: n(r.unknown),
        pending: n(r.pending),
        phases: r
            .phases
            .iter()
            .map(|p| pb::Phase {
                agents: n(p.agents),
                applied: n(p.applied),
                failed: n(p.failed),
                unknown: n(p.unknown),
                pending: n(p.pending),
                started: p.started.clone(),
                settled: p.settled.clone().unwrap_or_default(),
                completed: p.completed.clone().unwrap_or_default(),
                instance_uids: p.instance_uids.clone(),
                failures: p.failures.clone(),
            })
            .collect(),
        soak: r.soak.clone(),
        created: r.created.clone(),
        created_by: r.created_by.clone(),
        updated: r.updated.clone(),
    }
}

pub(super) fn audit_entry(e: &AuditView) -> pb::AuditEntry {
    let json =
        |v: &Option<serde_json::Value>| v.as_ref().map(|v| v.to_string()).unwrap_or_default();
    pb::AuditEntry {
        id: e.id.clone(),
        at: e.at.clone(),
        caller: e.caller.clone(),
        action: e.action.clone(),
        object: e.object.clone(),
        before_json: json(&e.before),
        after_json: json(&e.after),
        region: e.region.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fleet::configs::Desired;
    use crate::fleet::rollout::{BudgetAction, Plan};
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

    /// The message carries what the REST view shows.
    #[test]
    fn summary_carries_what_the_rest_view_shows() {
        let uid = uuid::Uuid::now_v7();
        let rec = AgentRecord {
            instance_uid: uid.as_bytes().to_vec(),
            status: AgentStatus::Connected as i32,
            description: Some(Box::new(AgentDescription {
                identifying_attributes: vec![kv("service.name", "otelcol")],
                non_identifying_attributes: vec![kv("env", "prod")],
            })),
            health: Some(Box::new(ComponentHealth {
                healthy: false,
                ..Default::default()
            })),
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
        let view = AgentSummary::of(&rec, &Desired::new(Vec::new()));
        let s = agent_summary(&view);
        assert_eq!(s.instance_uid, uid.to_string());
        assert_eq!((s.status.as_str(), s.healthy), ("connected", Some(false)));
        assert_eq!(s.last_seen, view.last_seen);
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
