//! The fleet's counts (total, connected, healthy, ...), kept by the store as records change rather
//! than counted by walking every record: what an agent adds to them is its [`Tally`], a function
//! of its record alone, and the store adds the difference between a record's old and new tally
//! in the same write as the record ([`super::Store::agent_counts`] reads the sums).

use flotilla_proto::bus::{AgentRecord, AgentStatus};
use serde::{Deserialize, Serialize};

/// Whether the record is one of the fleet's agents: not the marker left under the old uid of an
/// agent that took a new one, nor what an agent sent to its home region left behind here once it
/// went (its home region holds it; retention removes this one).
pub fn in_fleet_view(rec: &AgentRecord) -> bool {
    rec.moved_to.is_empty()
        && (rec.redirected_to.is_empty() || rec.status == AgentStatus::Connected as i32)
}

/// The counters one agent adds 1 to.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tally(u8);

/// The counters, by name (as Redis keeps them) and bit.
const COUNTERS: [(&str, u8); 6] = [
    ("total", 1),
    ("connected", 2),
    ("healthy", 4),
    ("unhealthy", 8),
    ("silent", 16),
    ("disconnected", 32),
];

impl Tally {
    /// What `rec` adds; nothing if it is not one of the fleet's agents ([`in_fleet_view`]).
    pub fn of(rec: &AgentRecord) -> Self {
        if !in_fleet_view(rec) {
            return Self(0);
        }
        let by_status = match rec.status() {
            AgentStatus::Connected => match rec.health.as_ref().map(|h| h.healthy) {
                Some(true) => 2 | 4,
                Some(false) => 2 | 8,
                None => 2,
            },
            AgentStatus::Silent => 16,
            AgentStatus::Disconnected | AgentStatus::Unspecified => 32,
        };
        Self(1 | by_status)
    }

    /// The names of its counters, space-separated (empty: none).
    pub fn names(self) -> String {
        COUNTERS
            .iter()
            .filter(|(_, bit)| self.0 & bit != 0)
            .map(|(name, _)| *name)
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// The sums of the agents' tallies.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentCounts {
    pub total: u64,
    pub connected: u64,
    pub healthy: u64,
    pub unhealthy: u64,
    pub silent: u64,
    pub disconnected: u64,
}

impl AgentCounts {
    pub fn add(&mut self, t: Tally) {
        for (name, bit) in COUNTERS {
            if t.0 & bit != 0 {
                self.add_named(name, 1);
            }
        }
    }

    /// Adds `n` to the counter `name`; false if there is no such counter.
    pub fn add_named(&mut self, name: &str, n: i64) -> bool {
        let c = match name {
            "total" => &mut self.total,
            "connected" => &mut self.connected,
            "healthy" => &mut self.healthy,
            "unhealthy" => &mut self.unhealthy,
            "silent" => &mut self.silent,
            "disconnected" => &mut self.disconnected,
            _ => return false,
        };
        *c = c.saturating_add_signed(n);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flotilla_proto::opamp::ComponentHealth;

    fn rec(status: AgentStatus, healthy: Option<bool>) -> AgentRecord {
        AgentRecord {
            status: status as i32,
            health: healthy
                .map(|healthy| ComponentHealth {
                    healthy,
                    ..Default::default()
                })
                .map(Box::new),
            ..Default::default()
        }
    }

    #[test]
    fn an_agent_counts_once_in_total_and_by_its_status_and_health() {
        let cases = [
            (
                rec(AgentStatus::Connected, Some(true)),
                "total connected healthy",
            ),
            (
                rec(AgentStatus::Connected, Some(false)),
                "total connected unhealthy",
            ),
            (rec(AgentStatus::Connected, None), "total connected"),
            (rec(AgentStatus::Silent, Some(true)), "total silent"),
            (rec(AgentStatus::Disconnected, None), "total disconnected"),
            (rec(AgentStatus::Unspecified, None), "total disconnected"),
        ];
        let mut sum = AgentCounts::default();
        for (r, names) in &cases {
            assert_eq!(Tally::of(r).names(), *names);
            sum.add(Tally::of(r));
        }
        assert_eq!(
            sum,
            AgentCounts {
                total: 6,
                connected: 3,
                healthy: 1,
                unhealthy: 1,
                silent: 1,
                disconnected: 2,
            }
        );
        assert!(!sum.add_named("nonsense", 1));
        sum.add_named("total", -7);
        assert_eq!(sum.total, 0, "never below zero");
    }

    #[test]
    fn markers_and_agents_sent_home_count_nowhere() {
        let mut marker = rec(AgentStatus::Connected, Some(true));
        marker.moved_to = vec![1; 16];
        assert_eq!(Tally::of(&marker), Tally::default());
        let mut sent = rec(AgentStatus::Disconnected, None);
        sent.redirected_to = "us".into();
        assert_eq!(Tally::of(&sent), Tally::default());
        sent.status = AgentStatus::Connected as i32;
        assert_eq!(Tally::of(&sent).names(), "total connected");
    }
}
