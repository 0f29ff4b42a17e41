//! Rollouts as the API shows them, with their totals and phases.

use super::time::rfc3339;
use crate::fleet::rollout::{ErrorBudget, Phase, Plan, Rollout, State};
use serde::Serialize;
use uuid::Uuid;

/// A rollout with its totals: what `ctl rollouts status` draws its progress from.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RolloutView {
    pub id: String,
    pub config: String,
    pub from_version: u64,
    pub to_version: u64,
    pub state: State,
    pub reason: String,
    pub plan: Plan,
    pub soak: String,
    pub error_budget: ErrorBudget,
    pub agents_total: usize,
    pub enrolled: usize,
    pub applied: usize,
    pub failed: usize,
    /// Sent the version, but they report no remote config status.
    pub unknown: usize,
    pub pending: usize,
    pub phases: Vec<PhaseView>,
    pub created: String,
    pub created_by: String,
    pub updated: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PhaseView {
    pub phase: usize,
    pub agents: usize,
    pub applied: usize,
    pub failed: usize,
    pub unknown: usize,
    pub pending: usize,
    pub started: String,
    pub settled: Option<String>,
    pub completed: Option<String>,
    pub instance_uids: Vec<String>,
    /// Why agents of the phase failed, `<uid>: <why>` (the first 10).
    pub failures: Vec<String>,
}

impl RolloutView {
    pub fn of(r: &Rollout) -> Self {
        let sum = |f: fn(&Phase) -> usize| r.phases.iter().map(f).sum::<usize>();
        Self {
            id: r.id.clone(),
            config: r.config.clone(),
            from_version: r.from_version,
            to_version: r.to_version,
            state: r.state,
            reason: r.reason.clone(),
            plan: r.plan.clone(),
            soak: humantime::format_duration(r.soak).to_string(),
            error_budget: r.error_budget.clone(),
            agents_total: r.agents_total,
            enrolled: sum(|p| p.agents.len()),
            applied: sum(|p| p.applied),
            failed: sum(|p| p.failed),
            unknown: sum(|p| p.unknown),
            pending: sum(|p| p.pending),
            phases: r
                .phases
                .iter()
                .enumerate()
                .map(|(i, p)| PhaseView {
                    phase: i + 1,
                    agents: p.agents.len(),
                    applied: p.applied,
                    failed: p.failed,
                    unknown: p.unknown,
                    pending: p.pending,
                    started: rfc3339(p.started_unix_ms),
                    settled: p.settled_unix_ms.map(rfc3339),
                    completed: p.completed_unix_ms.map(rfc3339),
                    instance_uids: p.agents.iter().map(Uuid::to_string).collect(),
                    failures: p.failures.clone(),
                })
                .collect(),
            created: rfc3339(r.created_unix_ms),
            created_by: r.created_by.clone(),
            updated: rfc3339(r.updated_unix_ms),
        }
    }
}
