//! The fleet at a glance: counts by status, health, config state, agent version, region and
//! environment, and the agents that need someone's attention.

use super::agents::{CONFIG_STATES, FleetHealth, config_drift, config_state};
use super::time::rfc3339;
use crate::fleet::agents::{RecordAttributes, config_failure, healthy, status_name, uid_of};
use crate::fleet::configs::{Aspect, Desired};
use crate::opamp::desired::desired_config;
use flotilla_common::selector::Attributes;
use flotilla_proto::bus::AgentRecord;
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};

/// The attributes the overview counts agents by.
pub const VERSION_KEY: &str = "service.version";
pub const REGION_KEY: &str = "cloud.region";
pub const ENVIRONMENT_KEY: &str = "deployment.environment";

/// At most this many values per grouping are named; the rest are counted as `(other)`.
pub const MAX_GROUPS: usize = 12;
/// At most this many agents are listed as needing attention, per list.
pub const MAX_LISTED: usize = 25;

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct FleetOverview {
    #[serde(flatten)]
    pub health: FleetHealth,
    /// Agents by config state (every state, zero included).
    pub config_states: BTreeMap<&'static str, u64>,
    pub versions: Vec<Group>,
    pub regions: Vec<Group>,
    pub environments: Vec<Group>,
    /// Connected agents that report unhealthy (the first [`MAX_LISTED`] by uid).
    pub unhealthy: Vec<AgentBrief>,
    /// Silent agents (the first [`MAX_LISTED`] by uid).
    pub silent: Vec<AgentBrief>,
    /// Agents that failed to apply the config they should run (the first [`MAX_LISTED`] by uid).
    pub failed_configs: Vec<AgentBrief>,
    /// Agents whose effective config differs from what they should run (fleet/drift.rs).
    pub drifted_agents: u64,
    /// Those agents (the first [`MAX_LISTED`] by uid).
    pub drifted: Vec<AgentBrief>,
}

/// How many agents have one value of an attribute (`(none)`: agents without it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Group {
    pub value: String,
    pub agents: u64,
}

/// An agent in a list of those needing attention, with why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AgentBrief {
    pub instance_uid: String,
    pub name: String,
    pub last_seen: String,
    /// The last error it reported (health or config), or the config it fails.
    pub detail: String,
}

/// Builds a [`FleetOverview`] from the agent records, one at a time.
#[derive(Default)]
pub struct OverviewBuilder {
    out: FleetOverview,
    versions: HashMap<String, u64>,
    regions: HashMap<String, u64>,
    environments: HashMap<String, u64>,
}

impl OverviewBuilder {
    pub fn add(&mut self, rec: &AgentRecord, desired: &Desired) {
        self.out.health.count(rec);
        let status = status_name(rec);
        let attrs = RecordAttributes(rec);
        for (key, counts) in [
            (VERSION_KEY, &mut self.versions),
            (REGION_KEY, &mut self.regions),
            (ENVIRONMENT_KEY, &mut self.environments),
        ] {
            let value = attrs.attribute(key);
            let value = value.as_deref().unwrap_or("(none)");
            if let Some(n) = counts.get_mut(value) {
                *n += 1;
            } else if counts.len() < 4096 {
                counts.insert(value.to_owned(), 1);
            } else {
                // Bounded: past a few thousand distinct values, new ones count as (other).
                *counts.entry("(other)".to_owned()).or_default() += 1;
            }
        }
        let files = desired_config(rec, &attrs, desired, Aspect::Files);
        let state = config_state(rec, files.map(|c| c.hash.as_str()));
        *self.out.config_states.entry(state).or_default() += 1;
        let brief = |detail: String| AgentBrief {
            instance_uid: uid_of(rec).map(|u| u.to_string()).unwrap_or_default(),
            name: attrs
                .attribute("service.name")
                .map(|n| n.into_owned())
                .unwrap_or_default(),
            last_seen: rfc3339(rec.last_seen_unix_ms),
            detail,
        };
        if status == "connected" && healthy(rec) == Some(false) {
            let error = rec.health.as_ref().map(|h| h.last_error.clone());
            push_bounded(&mut self.out.unhealthy, brief(error.unwrap_or_default()));
        }
        if status == "silent" {
            push_bounded(&mut self.out.silent, brief(String::new()));
        }
        let cfg = files.map_or(String::new(), |c| format!("{} v{}", c.name, c.version));
        if state == "failed" {
            let detail = format!("{cfg}: {}", config_failure(rec));
            push_bounded(&mut self.out.failed_configs, brief(detail));
        }
        if config_drift(rec, files.map(|c| c.hash.as_str())) == Some(true) {
            self.out.drifted_agents += 1;
            push_bounded(
                &mut self.out.drifted,
                brief(format!("runs other than {cfg}")),
            );
        }
    }

    pub fn finish(mut self) -> FleetOverview {
        for state in CONFIG_STATES {
            self.out.config_states.entry(state).or_default();
        }
        self.out.versions = groups(self.versions);
        self.out.regions = groups(self.regions);
        self.out.environments = groups(self.environments);
        for list in [
            &mut self.out.unhealthy,
            &mut self.out.silent,
            &mut self.out.failed_configs,
            &mut self.out.drifted,
        ] {
            list.sort_by(|a, b| a.instance_uid.cmp(&b.instance_uid));
        }
        self.out
    }
}

/// Keeps the [`MAX_LISTED`] smallest uids seen so far (lists are sorted at the end).
fn push_bounded(list: &mut Vec<AgentBrief>, brief: AgentBrief) {
    if list.len() < MAX_LISTED {
        list.push(brief);
        return;
    }
    if let Some((i, largest)) = list
        .iter()
        .enumerate()
        .max_by(|a, b| a.1.instance_uid.cmp(&b.1.instance_uid))
        && brief.instance_uid < largest.instance_uid
    {
        list[i] = brief;
    }
}

/// The largest groups first (ties by value), the rest as one `(other)` group.
fn groups(counts: HashMap<String, u64>) -> Vec<Group> {
    let mut all: Vec<Group> = counts
        .into_iter()
        .map(|(value, agents)| Group { value, agents })
        .collect();
    all.sort_by(|a, b| b.agents.cmp(&a.agents).then_with(|| a.value.cmp(&b.value)));
    if all.len() > MAX_GROUPS {
        let rest: u64 = all.drain(MAX_GROUPS - 1..).map(|g| g.agents).sum();
        all.push(Group {
            value: "(other)".into(),
            agents: rest,
        });
    }
    all
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_name_the_largest_and_count_the_rest() {
        let counts: HashMap<String, u64> = (0..20).map(|i| (format!("v{i:02}"), i + 1)).collect();
        let g = groups(counts);
        assert_eq!(g.len(), MAX_GROUPS);
        assert_eq!(g[0].value, "v19");
        assert_eq!(g[0].agents, 20);
        let other = g.last().unwrap();
        assert_eq!(other.value, "(other)");
        // v00..v08 (1..=9 agents) fall into (other).
        assert_eq!(other.agents, (1..=9).sum::<u64>());
    }

    #[test]
    fn lists_keep_the_smallest_uids() {
        let mut list = Vec::new();
        for i in (0..100).rev() {
            let brief = AgentBrief {
                instance_uid: format!("{i:03}"),
                name: String::new(),
                last_seen: String::new(),
                detail: String::new(),
            };
            push_bounded(&mut list, brief);
        }
        list.sort_by(|a, b| a.instance_uid.cmp(&b.instance_uid));
        assert_eq!(list.len(), MAX_LISTED);
        assert_eq!(list[0].instance_uid, "000");
        assert_eq!(
            list[MAX_LISTED - 1].instance_uid,
            format!("{:03}", MAX_LISTED - 1)
        );
    }
}
