//! The desired state pushed to every connected agent of the owned shards whose reported config
//! differs: after a change, and when shards are acquired; in batches per gateway.

use super::owner::Owner;
use super::pusher::{Bodies, Push, live_ws, push_for};
use crate::fleet::agents::{RecordAttributes, uid_of};
use crate::fleet::configs::{Aspect, Desired};
use crate::opamp::offers::settings_of;
use flotilla_proto::bus::AgentRecord;
use std::collections::BTreeSet;
use tracing::{info, warn};

impl Owner {
    /// Shards were just acquired: their connected agents get their desired state now rather than
    /// at their next heartbeat (a config stored while a shard had no owner reaches them). One
    /// visit of the store for the whole batch.
    pub(crate) async fn shards_acquired(&self, shards: &[u16]) {
        let set: std::collections::HashSet<u16> = shards.iter().copied().collect();
        self.push_configs(&|s| set.contains(&s), None).await;
    }

    /// Sends each connected WebSocket agent of the owned shards `shards` accepts whose reported
    /// config differs from its desired one the desired config. Idempotent: agents that already
    /// run it get nothing.
    ///
    /// First ends the grants to answer heartbeats of the gateways where a reply to an agent's next
    /// heartbeat, the owner's, would carry more than the push does: connection settings (a
    /// heartbeat interval, own-telemetry destinations) that resolve otherwise than under `before`,
    /// the desired state the grants were given under; every agent's when there is no `before`
    /// (shards just acquired). A change of files or packages alone ends none: the push brings
    /// them, the agents' heartbeats stay with their gateways while it runs, and whatever else is
    /// due to an agent ends its grant when its owner records its heartbeat (ADR 0021).
    pub(crate) async fn push_configs(
        &self,
        shards: &(dyn Fn(u16) -> bool + Sync),
        before: Option<&Desired>,
    ) {
        let desired = self.desired.current();
        let mut pushes: Vec<Push> = Vec::new();
        let mut bodies = Bodies::default();
        let mut gateways = BTreeSet::new();
        let visited = self
            .visit_owned(shards, &mut |rec| {
                if let Some(origin) = live_ws(rec)
                    && !gateways.contains(&origin.gateway_id)
                    && before.is_none_or(|b| settings_moved(rec, b, &desired))
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

/// Whether `rec`'s connection settings resolve otherwise under `now` than under `before`.
fn settings_moved(rec: &AgentRecord, before: &Desired, now: &Desired) -> bool {
    let uid = uid_of(rec);
    let attrs = RecordAttributes(rec);
    let settings = |d| settings_of(Desired::resolve(d, uid.as_ref(), &attrs, Aspect::Settings));
    settings(before) != settings(now)
}
