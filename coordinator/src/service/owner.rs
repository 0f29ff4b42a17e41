//! The shard owner's state: what it holds and the handles it was given. Its work is in the
//! files beside this one: agent messages and connection closes ([`super::uplinks`]), operations
//! on one agent ([`super::commands`]), pushes ([`super::pushes`]), silence and retention
//! ([`super::silence`]).

use super::config::CoordinatorConfig;
use super::events::Events;
use super::pusher::Pusher;
use super::shards::ShardTable;
use crate::fleet::configs::Desired;
use crate::metrics::OwnerMetrics;
use crate::ops::DesiredState;
use flotilla_common::store::Store;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

/// The owner of the shards this process holds: the only one that writes their agents' records.
pub struct Owner {
    pub(super) cfg: CoordinatorConfig,
    pub(super) store: Arc<dyn Store>,
    pub(crate) shards: Arc<ShardTable>,
    pub(super) desired: DesiredState,
    pub(super) pusher: Pusher,
    pub(super) events: Events,
    pub(crate) metrics: OwnerMetrics,
    /// A change of desired state was announced since the last push to connected agents.
    pub(super) pending_push: AtomicBool,
    /// The desired state as of the last push after a change (at start, as loaded): what the
    /// gateways' grants to answer heartbeats were given under, as far as a push needs to know.
    pub(super) pushed_under: parking_lot::Mutex<Arc<Desired>>,
    pub(super) alert_state: parking_lot::Mutex<super::sinks::AlertState>,
    pub(super) alert_client: reqwest::Client,
}

impl Owner {
    pub(super) fn new(
        cfg: CoordinatorConfig,
        store: Arc<dyn Store>,
        shards: ShardTable,
        desired: DesiredState,
        pusher: Pusher,
        events: Events,
        metrics: OwnerMetrics,
    ) -> Self {
        Self {
            cfg,
            store,
            shards: Arc::new(shards),
            pushed_under: parking_lot::Mutex::new(desired.current()),
            desired,
            pusher,
            events,
            metrics,
            pending_push: AtomicBool::new(false),
            alert_state: Default::default(),
            alert_client: reqwest::Client::builder()
                .timeout(super::sinks::SINK_TIMEOUT)
                .build()
                .unwrap_or_default(),
        }
    }
}
