//! The desired state pushed to every connected agent of the owned shards whose reported config
//! differs: after a change, and when shards are acquired; in batches per gateway.

use super::owner::Owner;
use super::pusher::{Bodies, Push, live_ws, push_for};
use std::collections::BTreeSet;
use tracing::{info, warn};

impl Owner {
    /// Shards were just acquired: their connected agents get their desired state now rather than
    /// at their next heartbeat (a config stored while a shard had no owner reaches them). One
    /// visit of the store for the whole batch.
    pub(crate) async fn shards_acquired(&self, shards: &[u16]) {
        let set: std::collections::HashSet<u16> = shards.iter().copied().collect();
        self.push_configs(&|s| set.contains(&s)).await;
    }

    /// Sends each connected WebSocket agent of the owned shards `shards` accepts whose reported
    /// config differs from its desired one the desired config. Idempotent: agents that already
    /// run it get nothing. First ends the grants to answer heartbeats of the gateways these agents
    /// are on, so the reply to each one's next heartbeat is the owner's, with what else of the
    /// desired state it may carry (a heartbeat interval, connection settings).
    pub(crate) async fn push_configs(&self, shards: &(dyn Fn(u16) -> bool + Sync)) {
        let desired = self.desired.current();
        let mut pushes: Vec<Push> = Vec::new();
        let mut bodies = Bodies::default();
        let mut gateways = BTreeSet::new();
        let visited = self
            .visit_owned(shards, &mut |rec| {
                if let Some(origin) = live_ws(rec)
                    && !gateways.contains(&origin.gateway_id)
                {
                    gateways.insert(origin.gateway_id.clone());
                }
                if let Some((origin, msg)) = push_for(rec, &desired) {
                    pushes.push(Push::new(origin, msg, &mut bodies));
                }
            })
            .await;
        self.pusher.end_grants(gateways).await;
        if let Err(e) = visited {
            // Agents still get the config in the reply to their next message.
            warn!(error = %e, "config push skipped: agents unreadable");
            return;
        }
        let total = pushes.len();
        if total == 0 {
            return;
        }
        let delivered = self.pusher.push_many(pushes).await;
        info!(total, delivered, "config pushed to connected agents");
    }
}
