//! The operations every interface calls: one function per admin operation, taking the
//! [`Caller`] and returning a typed result ([`views`]) or an [`Error`]. REST, gRPC and the console
//! are thin adapters over these; they never compute an answer themselves.
//!
//! An operation on one agent is carried out by the owner of the agent's shard (this process or
//! another), asked over the bus ([`owner`]); an operation on configs, rollouts or restart jobs
//! writes the store, with its audit entry in the same write, and announces the change so every
//! coordinator's shard owner pushes it to its connected agents.
//!
//! May use: the fleet rules and the OpAMP offers (for sizes), the Store and Bus traits,
//! flotilla-common and flotilla-proto. Must not: use the interfaces ([`crate::api`]) or the running
//! service ([`crate::service`]); the service calls down into this layer, never the reverse.

pub mod agents;
pub mod audit;
pub mod caller;
pub mod config_sync;
pub mod configs;
pub mod desired;
pub mod docs;
pub mod error;
pub mod events;
pub mod own_metrics;
pub mod owner;
pub mod query;
mod region_answers;
pub mod region_rollouts;
pub mod regions;
pub mod restarts;
pub mod rollouts;
pub mod views;
pub mod watchers;

pub use caller::{Caller, Role};
pub use desired::DesiredState;
pub use error::{Error, Result};
pub use owner::OwnerClient;

use crate::fleet::agents::in_fleet_view;
use crate::fleet::redact::Redactor;
use flotilla_common::bus::{Bus, BusMessage};
use flotilla_common::config::DEFAULT_MAX_MESSAGE_SIZE;
use flotilla_common::names::Subjects;
use flotilla_common::store::{Store, StoreError};
use flotilla_proto::bus::AgentRecord;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Semaphore, SemaphorePermit};
use tracing::warn;

/// What the operations are set to.
#[derive(Debug, Clone)]
pub struct OpsConfig {
    pub region: String,
    /// Hides secrets in the effective configs agents report.
    pub redactor: Redactor,
    /// Largest ServerToAgent that can reach an agent: no config is accepted whose offer would
    /// be larger.
    pub max_message_size: usize,
    /// How long one request to the owner of an agent's shard may take.
    pub owner_timeout: Duration,
    /// How long to keep looking for the owner of an agent's shard.
    pub owner_deadline: Duration,
    /// How long an agent may report unhealthy before a rollout counts it as failing (the
    /// collector's supervisor reports unhealthy while its collector starts): `--alert-grace`.
    pub unhealthy_grace: Duration,
    /// The fleet's other regions (sorted; empty: this one alone) and how long a fleet view
    /// waits for them.
    pub peer_regions: Vec<String>,
    pub region_timeout: Duration,
}

impl OpsConfig {
    pub fn new(region: &str) -> Self {
        Self {
            region: region.into(),
            redactor: Redactor::default(),
            max_message_size: DEFAULT_MAX_MESSAGE_SIZE,
            owner_timeout: Duration::from_secs(3),
            owner_deadline: Duration::from_secs(5),
            unhealthy_grace: Duration::from_secs(60),
            peer_regions: Vec::new(),
            region_timeout: flotilla_common::config::DEFAULT_REGION_TIMEOUT,
        }
    }
}

/// The handle every interface holds (cheap to clone).
#[derive(Clone)]
pub struct Ops {
    store: Arc<dyn Store>,
    bus: Arc<dyn Bus>,
    subjects: Subjects,
    owners: OwnerClient,
    desired: DesiredState,
    cfg: Arc<OpsConfig>,
    watchers: watchers::Watchers,
    /// Turns at walking the whole fleet.
    walks: Walks,
}

/// Turns at walking the whole fleet: one walk at a time per coordinator, and a request that
/// waits more than its bound for its turn is told to retry.
#[derive(Clone)]
struct Walks {
    turns: Arc<Semaphore>,
    wait: Duration,
}

impl Walks {
    fn new(wait: Duration) -> Self {
        Self {
            turns: Arc::new(Semaphore::new(1)),
            wait,
        }
    }

    async fn turn(&self) -> std::result::Result<SemaphorePermit<'_>, StoreError> {
        match tokio::time::timeout(self.wait, self.turns.acquire()).await {
            Ok(Ok(turn)) => Ok(turn),
            _ => Err(StoreError::Io(
                "the fleet is being read for other requests; retry later".into(),
            )),
        }
    }
}

impl Ops {
    pub fn new(
        cfg: OpsConfig,
        store: Arc<dyn Store>,
        bus: Arc<dyn Bus>,
        desired: DesiredState,
    ) -> Self {
        let subjects = Subjects::new(&cfg.region);
        Self {
            owners: OwnerClient::new(
                bus.clone(),
                subjects.clone(),
                cfg.owner_timeout,
                cfg.owner_deadline,
            ),
            store,
            bus,
            subjects,
            desired,
            cfg: Arc::new(cfg),
            watchers: watchers::Watchers::default(),
            walks: Walks::new(Duration::from_secs(30)),
        }
    }

    /// The event streams open, and what they dropped.
    pub fn watchers(&self) -> &watchers::Watchers {
        &self.watchers
    }

    pub(crate) fn store(&self) -> &dyn Store {
        self.store.as_ref()
    }

    /// Visits every agent of this region's store the fleet views show ([`in_fleet_view`]), one
    /// walk at a time: a walk reads every record, and several at once (a dashboard polling a
    /// list that takes longer than its timeout) took the store from the agents' own messages at
    /// 100,000 agents (docs/benchmarks.md). A request that waits too long for its
    /// turn ([`Walks`], 30 s) is answered "unavailable".
    pub(crate) async fn visit_fleet(
        &self,
        visit: &mut (dyn FnMut(&AgentRecord) + Send),
    ) -> std::result::Result<(), StoreError> {
        self.visit_fleet_shards(&|_| true, visit).await
    }

    /// [`Ops::visit_fleet`] over the shards `shards` selects.
    pub(crate) async fn visit_fleet_shards(
        &self,
        shards: &(dyn Fn(u16) -> bool + Sync),
        visit: &mut (dyn FnMut(&AgentRecord) + Send),
    ) -> std::result::Result<(), StoreError> {
        let _turn = self.walks.turn().await?;
        self.store
            .visit_agents(shards, &mut |rec| {
                if in_fleet_view(rec) {
                    visit(rec);
                }
            })
            .await
    }

    /// Tells every coordinator (this one included) that desired state changed in the store: this
    /// process re-reads it at once, so what the API shows next includes the change, and every
    /// shard owner pushes it to its connected agents when it hears the announcement.
    pub(crate) async fn announce_change(&self, what: &str) {
        if let Err(e) = self.desired.reload(self.store()).await {
            // The announcement below makes the owners re-read it anyway.
            warn!(error = %e, "desired state not re-read after a change");
        }
        let announce = BusMessage::new(self.subjects.desired_changed(), what.to_owned());
        if let Err(e) = self.bus.publish(announce).await {
            // The others re-read the store every few seconds anyway.
            warn!(error = %e, "change not announced");
        }
    }
}

#[cfg(test)]
mod walk_tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn walks_take_turns_and_a_long_wait_is_told_to_retry() {
        let walks = Walks::new(Duration::from_secs(30));
        let first = walks.turn().await.unwrap();
        // The second waits for the first...
        let second = walks.clone();
        let waiting = tokio::spawn(async move { second.turn().await.map(drop) });
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert!(!waiting.is_finished());
        drop(first);
        waiting.await.unwrap().unwrap();
        // ...and one that waits past the bound is refused, with a reason.
        let _held = walks.turn().await.unwrap();
        let third = walks.clone();
        let refused = tokio::spawn(async move { third.turn().await.map(drop) });
        tokio::time::sleep(Duration::from_secs(31)).await;
        let err = refused.await.unwrap().unwrap_err();
        assert!(err.to_string().contains("retry later"), "{err}");
    }
}
