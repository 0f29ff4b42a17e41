//! Phased rollouts: the state of one rollout and the rule that moves it on. Pure: the driver
//! ([`crate::ops::rollouts`]) reads agents, calls [`Rollout::step`] and writes the result back to the
//! store with compare-and-set, so whichever coordinator drives a rollout next carries it on.
//!
//! A rollout gives a version of a config to the agents that would get that config ("candidates")
//! in phases. A phase's agents are enrolled (their desired version becomes the target) and the
//! phase settles when each of them has applied it or failed; after it has stayed settled, with every
//! applied agent healthy, for the soak time, the next phase starts, until every candidate is
//! enrolled and the target version becomes the config's active version. Failures are counted over
//! every enrolled agent: once at least `min_sample` agents have settled and more than
//! `max_failure_percent` of them failed, the rollout pauses or rolls back (enrolled agents return
//! to the version that was active when it started).

use serde::{Deserialize, Serialize};
use std::collections::{HashMap, HashSet};
use std::time::Duration;
use uuid::Uuid;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Rollout {
    pub id: String,
    pub config: String,
    /// The version active when the rollout started (0: none), where a rollback returns to.
    pub from_version: u64,
    pub to_version: u64,
    pub plan: Plan,
    #[serde(with = "humantime_serde")]
    pub soak: Duration,
    pub error_budget: ErrorBudget,
    pub state: State,
    /// Why the rollout stopped or paused, in words.
    #[serde(default)]
    pub reason: String,
    pub phases: Vec<Phase>,
    /// Enrolled agents plus those that could still join, as of the last step (for progress).
    #[serde(default)]
    pub agents_total: usize,
    pub created_by: String,
    pub created_unix_ms: u64,
    pub updated_unix_ms: u64,
}

/// How many agents each phase takes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged, deny_unknown_fields)]
pub enum Plan {
    /// `initial` agents, then `multiplier` times the previous phase, at most `max_per_phase`.
    Steps {
        initial: usize,
        #[serde(default = "Plan::default_multiplier")]
        multiplier: f64,
        #[serde(default)]
        max_per_phase: Option<usize>,
    },
    /// Cumulative percentages of the candidates, rising to 100: `[10, 50, 100]`.
    Percentages { percentages: Vec<f64> },
}

impl Plan {
    fn default_multiplier() -> f64 {
        2.0
    }

    pub fn check(&self) -> Result<(), String> {
        match self {
            Self::Steps {
                initial,
                multiplier,
                max_per_phase,
            } => {
                if *initial == 0 {
                    return Err("phases.initial must be at least 1".into());
                }
                if !multiplier.is_finite() || *multiplier < 1.0 {
                    return Err("phases.multiplier must be a number of at least 1".into());
                }
                if max_per_phase.is_some_and(|m| m < *initial) {
                    return Err("phases.max_per_phase must be at least phases.initial".into());
                }
            }
            Self::Percentages { percentages } => {
                let rising = percentages.windows(2).all(|w| w[0] < w[1]);
                let in_range = percentages.iter().all(|p| *p > 0.0 && *p <= 100.0);
                if percentages.last() != Some(&100.0) || !rising || !in_range {
                    return Err(format!(
                        "phases.percentages must rise from above 0 to exactly 100, e.g. [10, 50, 100]; got {percentages:?}"
                    ));
                }
            }
        }
        Ok(())
    }

    /// How many agents each phase would enroll out of `total` candidates, in order (at most
    /// `max_phases` phases are listed).
    pub fn phase_sizes(&self, total: usize, max_phases: usize) -> Vec<usize> {
        let mut sizes = Vec::new();
        let mut enrolled = 0;
        while enrolled < total && sizes.len() < max_phases {
            let size = self.size(sizes.len(), enrolled, total);
            sizes.push(size);
            enrolled += size;
        }
        sizes
    }

    /// How many agents phase `index` (from 0) enrolls, when `enrolled` are in already and
    /// `total` agents are in or could join.
    fn size(&self, index: usize, enrolled: usize, total: usize) -> usize {
        let size = match self {
            Self::Steps {
                initial,
                multiplier,
                max_per_phase,
            } => {
                let grown = *initial as f64 * multiplier.powi(index as i32);
                let grown = if grown >= usize::MAX as f64 {
                    usize::MAX
                } else {
                    grown.ceil() as usize
                };
                grown.min(max_per_phase.unwrap_or(usize::MAX))
            }
            Self::Percentages { percentages } => {
                let pct = percentages.get(index).copied().unwrap_or(100.0);
                let target = (total as f64 * pct / 100.0).ceil() as usize;
                target.saturating_sub(enrolled).max(1)
            }
        };
        size.min(total.saturating_sub(enrolled))
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ErrorBudget {
    pub max_failure_percent: f64,
    #[serde(default = "ErrorBudget::default_min_sample")]
    pub min_sample: usize,
    #[serde(default)]
    pub action: BudgetAction,
}

impl ErrorBudget {
    fn default_min_sample() -> usize {
        5
    }

    pub fn check(&self) -> Result<(), String> {
        if !(0.0..=100.0).contains(&self.max_failure_percent) {
            return Err("error_budget.max_failure_percent must be from 0 to 100".into());
        }
        if self.min_sample == 0 {
            return Err("error_budget.min_sample must be at least 1".into());
        }
        Ok(())
    }
}

impl Default for ErrorBudget {
    fn default() -> Self {
        Self {
            max_failure_percent: 10.0,
            min_sample: Self::default_min_sample(),
            action: BudgetAction::Rollback,
        }
    }
}

/// What a spent error budget does.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BudgetAction {
    #[default]
    Rollback,
    Pause,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    Running,
    Paused,
    Completed,
    RolledBack,
    Aborted,
}

impl State {
    pub const ALL: [State; 5] = [
        State::Running,
        State::Paused,
        State::Completed,
        State::RolledBack,
        State::Aborted,
    ];

    /// The name in the API (and metrics).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Running => "running",
            Self::Paused => "paused",
            Self::Completed => "completed",
            Self::RolledBack => "rolled_back",
            Self::Aborted => "aborted",
        }
    }

    /// Running and paused rollouts hold their enrolled agents on the target version.
    pub fn is_active(self) -> bool {
        matches!(self, Self::Running | Self::Paused)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Phase {
    pub agents: Vec<Uuid>,
    pub started_unix_ms: u64,
    /// Since when every agent of the phase has applied or failed (the soak runs from here).
    #[serde(default)]
    pub settled_unix_ms: Option<u64>,
    #[serde(default)]
    pub completed_unix_ms: Option<u64>,
    #[serde(default)]
    pub applied: usize,
    #[serde(default)]
    pub failed: usize,
    #[serde(default)]
    pub pending: usize,
    /// Agents sent the version that report no remote config status: they settle the phase but
    /// count neither as applied nor against the error budget.
    #[serde(default)]
    pub unknown: usize,
    /// Why agents of the phase failed, `<uid>: <why>`, the first [`MAX_FAILURES_SHOWN`].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failures: Vec<String>,
}

/// How many failed agents a phase says why of.
pub const MAX_FAILURES_SHOWN: usize = 10;

impl Rollout {
    /// Notes why agents failed (`why` holds a reason for each failed agent) in each phase that is
    /// not complete: its first [`MAX_FAILURES_SHOWN`] failed agents, by uid.
    pub fn note_failures(&mut self, why: &HashMap<Uuid, String>) {
        for p in self
            .phases
            .iter_mut()
            .filter(|p| p.completed_unix_ms.is_none())
        {
            p.failures = p
                .agents
                .iter()
                .filter_map(|u| why.get(u).map(|w| format!("{u}: {w}")))
                .take(MAX_FAILURES_SHOWN)
                .collect();
        }
    }
}

/// Where an enrolled agent stands with the target version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Runs it (every aspect the version defines) and is not unhealthy.
    Applied,
    /// Reported failing to apply it, or unhealthy on it for longer than a grace.
    Failed,
    /// Was sent it, and reports no remote config status: how it went is not known.
    Unknown,
    Pending,
}

/// What a step asks the driver to do besides storing the rollout.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Effects {
    /// Agents were enrolled or released: desired state changed, push it.
    pub desired_changed: bool,
    /// The rollout completed: make `to_version` the active version.
    pub activate: bool,
}

impl Rollout {
    pub fn enrolled(&self) -> HashSet<Uuid> {
        self.phases
            .iter()
            .flat_map(|p| p.agents.iter().copied())
            .collect()
    }

    /// One decision at `now`: `outcomes` of the enrolled agents, `candidates` the agents that
    /// could be enrolled next, in the order to take them.
    pub fn step(
        &mut self,
        now_unix_ms: u64,
        outcomes: &HashMap<Uuid, Outcome>,
        candidates: &[Uuid],
    ) -> Effects {
        let mut effects = Effects::default();
        self.count(outcomes);
        let enrolled = self.enrolled();
        self.agents_total =
            enrolled.len() + candidates.iter().filter(|u| !enrolled.contains(u)).count();
        if self.state != State::Running {
            return effects;
        }
        let (failed, settled) = self
            .phases
            .iter()
            .fold((0, 0), |(f, s), p| (f + p.failed, s + p.applied + p.failed));
        let budget = &self.error_budget;
        if settled >= budget.min_sample
            && failed as f64 * 100.0 > budget.max_failure_percent * settled as f64
        {
            self.reason = format!(
                "{failed} of {settled} agents failed ({:.1}% > error budget {}%)",
                failed as f64 * 100.0 / settled as f64,
                budget.max_failure_percent
            );
            self.state = match budget.action {
                BudgetAction::Rollback => {
                    effects.desired_changed = true;
                    State::RolledBack
                }
                BudgetAction::Pause => State::Paused,
            };
            self.updated_unix_ms = now_unix_ms;
            return effects;
        }
        let soak_ms = self.soak.as_millis() as u64;
        let ready_for_next = match self.phases.last_mut() {
            None => true,
            Some(phase) if phase.pending > 0 => {
                phase.settled_unix_ms = None;
                false
            }
            Some(phase) => {
                let settled_at = *phase.settled_unix_ms.get_or_insert(now_unix_ms);
                if now_unix_ms.saturating_sub(settled_at) >= soak_ms {
                    phase.completed_unix_ms.get_or_insert(now_unix_ms);
                    true
                } else {
                    false
                }
            }
        };
        if !ready_for_next {
            return effects;
        }
        let fresh: Vec<Uuid> = candidates
            .iter()
            .filter(|u| !enrolled.contains(u))
            .copied()
            .collect();
        if fresh.is_empty() {
            self.state = State::Completed;
            self.reason = format!("{} agents run version {}", enrolled.len(), self.to_version);
            self.updated_unix_ms = now_unix_ms;
            effects.activate = true;
            return effects;
        }
        let size = self.plan.size(
            self.phases.len(),
            enrolled.len(),
            enrolled.len() + fresh.len(),
        );
        let agents: Vec<Uuid> = fresh.into_iter().take(size.max(1)).collect();
        self.phases.push(Phase {
            pending: agents.len(),
            agents,
            started_unix_ms: now_unix_ms,
            settled_unix_ms: None,
            completed_unix_ms: None,
            applied: 0,
            failed: 0,
            unknown: 0,
            failures: Vec::new(),
        });
        self.updated_unix_ms = now_unix_ms;
        effects.desired_changed = true;
        effects
    }

    fn count(&mut self, outcomes: &HashMap<Uuid, Outcome>) {
        for phase in &mut self.phases {
            let (mut applied, mut failed, mut unknown) = (0, 0, 0);
            for uid in &phase.agents {
                match outcomes.get(uid) {
                    Some(Outcome::Applied) => applied += 1,
                    Some(Outcome::Failed) => failed += 1,
                    Some(Outcome::Unknown) => unknown += 1,
                    _ => {}
                }
            }
            phase.applied = applied;
            phase.failed = failed;
            phase.unknown = unknown;
            phase.pending = phase.agents.len() - applied - failed - unknown;
        }
    }
}

#[cfg(test)]
#[path = "rollout_tests.rs"]
mod tests;
