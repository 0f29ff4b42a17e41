//! What every agent task of a run shares: the config, the statistics, the stop signal, the
//! own-metrics slots.

use super::config::SwarmConfig;
use super::own_metrics::OwnMetrics;
use super::stats::Stats;
use crate::realistic::Dress;
use crate::sim::SimAgent;
use flotilla_proto::opamp::AgentCapabilities as Cap;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

/// What every agent task shares.
pub(super) struct Shared {
    pub(super) cfg: SwarmConfig,
    pub(super) stats: Stats,
    pub(super) stop: CancellationToken,
    pub(super) connecting: Semaphore,
    pub(super) run_id: String,
    /// With `--own-metrics`.
    pub(super) own_metrics: Option<OwnMetrics>,
    /// The report shape, ready to put on each agent.
    pub(super) dress: Dress,
}

impl Shared {
    pub(super) fn new_agent(&self, index: usize, generation: u32) -> SimAgent {
        let host = format!("swarm-{}-{index}", self.run_id);
        let mut agent = SimAgent::from_profile(
            &self.cfg.profile,
            &host,
            &[
                ("swarm.run", &self.run_id),
                ("swarm.generation", &generation.to_string()),
            ],
            &mut rand::rng(),
        );
        agent.apply = self.cfg.apply;
        if self.cfg.supervisor {
            agent.act_as_supervisor(crate::supervisor::TYPICAL_BUILD);
        }
        if self.cfg.accept_certificates {
            agent.capabilities |= Cap::AcceptsOpAmpConnectionSettings as u64;
        }
        if self.cfg.no_config_status {
            agent.capabilities &= !(Cap::ReportsRemoteConfig as u64);
        }
        self.dress.put_on(&mut agent, index);
        agent
    }

    pub(super) fn connected(&self) -> u64 {
        self.stats.connected.load(Ordering::Relaxed)
    }

    /// Waits until `done` holds (checked every 50 ms) or the run's time is up; returns how long
    /// it took from `since`, or None.
    pub(super) async fn until(
        &self,
        deadline: Instant,
        since: Instant,
        done: impl Fn(&Self) -> bool,
    ) -> Option<Duration> {
        loop {
            if done(self) {
                return Some(since.elapsed());
            }
            if Instant::now() >= deadline || self.stop.is_cancelled() {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}
