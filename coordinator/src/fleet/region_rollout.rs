//! Rollouts across the regions of a fleet: a region is a phase. Each region runs its own rollout
//! of the version (the phased rollout of [`super::rollout`], with its error budget judged on that
//! region's agents); the next region starts when the previous one completed, and the whole
//! rollout stops when one region rolls back or is aborted. Pure: the driver
//! (`crate::ops::region_rollouts`) asks each region how its rollout stands, applies
//! [`RegionRollout::advance`] and writes the result back with compare-and-set.

use super::rollout::State;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RegionRollout {
    pub id: String,
    pub config: String,
    pub version: u64,
    /// The regions in order, each with how its part stands.
    pub regions: Vec<RegionPhase>,
    pub state: State,
    /// Why it stopped, or what it waits for, in words.
    #[serde(default)]
    pub reason: String,
    /// What each region's rollout is started with (phases, soak, error budget), as the API took
    /// it.
    pub request: serde_json::Value,
    pub created_by: String,
    pub created_unix_ms: u64,
    pub updated_unix_ms: u64,
}

/// One region's part.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RegionPhase {
    pub region: String,
    /// None until it is started; then the state of the region's rollout, as last asked.
    pub state: Option<State>,
    /// The id of the rollout in that region (the same in every region: `<id>-<region>`).
    pub rollout: Option<String>,
    #[serde(default)]
    pub reason: String,
}

/// What a region said of its part when asked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Heard {
    /// Its rollout stands so (started now if it was not).
    State(State, String),
    /// It could not be asked, or could not start it yet (e.g. the version has not reached it).
    Waiting(String),
}

impl RegionPhase {
    /// A region's part, not started yet.
    pub fn pending(region: String) -> Self {
        Self {
            region,
            state: None,
            rollout: None,
            reason: String::new(),
        }
    }
}

impl RegionRollout {
    /// The region whose part runs now: the first not completed. None when every region is done
    /// or the rollout stopped.
    pub fn current(&self) -> Option<&RegionPhase> {
        if self.state != State::Running {
            return None;
        }
        self.regions
            .iter()
            .find(|p| p.state != Some(State::Completed))
    }

    /// Moves on with what the current region said: a completed region lets the next start; a
    /// region rolled back or aborted stops the whole rollout (later regions never start); a
    /// paused region holds it (an operator resumes the region's rollout there).
    pub fn advance(&mut self, heard: Heard, now_unix_ms: u64) {
        let Some(i) = self
            .current()
            .and_then(|c| self.regions.iter().position(|p| p.region == c.region))
        else {
            return;
        };
        let phase = &mut self.regions[i];
        match heard {
            Heard::Waiting(why) => {
                phase.reason = why.clone();
                self.reason = format!("waiting for region {}: {why}", phase.region);
            }
            Heard::State(state, why) => {
                phase.state = Some(state);
                phase.rollout = Some(format!("{}-{}", self.id, phase.region));
                phase.reason = why.clone();
                let region = phase.region.clone();
                match state {
                    State::RolledBack | State::Aborted => {
                        self.state = state;
                        self.reason = format!("region {region}: {}: {why}", state.as_str());
                    }
                    State::Paused => self.reason = format!("region {region} is paused: {why}"),
                    State::Running => self.reason.clear(),
                    State::Completed if i + 1 == self.regions.len() => {
                        self.state = State::Completed;
                        self.reason.clear();
                    }
                    State::Completed => self.reason.clear(),
                }
            }
        }
        self.updated_unix_ms = now_unix_ms;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rollout() -> RegionRollout {
        RegionRollout {
            id: "r1".into(),
            config: "base".into(),
            version: 3,
            regions: ["eu", "us", "ap"]
                .iter()
                .map(|r| RegionPhase::pending(r.to_string()))
                .collect(),
            state: State::Running,
            reason: String::new(),
            request: serde_json::json!({}),
            created_by: "t".into(),
            created_unix_ms: 1,
            updated_unix_ms: 1,
        }
    }

    #[test]
    fn regions_go_one_after_another_and_the_last_completes_it() {
        let mut r = rollout();
        assert_eq!(r.current().unwrap().region, "eu");
        r.advance(Heard::Waiting("version 3 has not reached it".into()), 2);
        assert_eq!(r.current().unwrap().region, "eu");
        assert!(r.reason.contains("waiting for region eu"), "{}", r.reason);
        r.advance(Heard::State(State::Running, String::new()), 3);
        assert_eq!(r.regions[0].rollout.as_deref(), Some("r1-eu"));
        assert_eq!(r.current().unwrap().region, "eu");
        r.advance(Heard::State(State::Completed, String::new()), 4);
        assert_eq!(r.current().unwrap().region, "us");
        assert_eq!(r.regions[1].state, None, "us starts at the next step");
        r.advance(Heard::State(State::Completed, String::new()), 5);
        r.advance(Heard::State(State::Completed, String::new()), 6);
        assert_eq!((r.state, r.current()), (State::Completed, None));
        assert_eq!(r.updated_unix_ms, 6);
    }

    #[test]
    fn a_region_that_rolls_back_stops_the_whole_rollout() {
        let mut r = rollout();
        r.advance(Heard::State(State::Completed, String::new()), 2);
        r.advance(Heard::State(State::Paused, "2 of 5 failed".into()), 3);
        assert_eq!(r.state, State::Running);
        assert!(r.reason.contains("region us is paused"), "{}", r.reason);
        r.advance(
            Heard::State(State::RolledBack, "3 of 5 agents failed".into()),
            4,
        );
        assert_eq!(r.state, State::RolledBack);
        assert!(
            r.reason.contains("region us: rolled_back: 3 of 5"),
            "{}",
            r.reason
        );
        assert_eq!(r.current(), None);
        assert_eq!(r.regions[2].state, None, "ap never starts");
        // Nothing moves it any more.
        r.advance(Heard::State(State::Completed, String::new()), 5);
        assert_eq!((r.state, r.updated_unix_ms), (State::RolledBack, 4));
    }
}
