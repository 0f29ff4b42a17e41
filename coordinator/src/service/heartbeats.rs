//! Heartbeats the agents' gateways answered themselves under the owner's grant
//! (gateway/src/heartbeats.rs, docs/adr/0021-heartbeats-answered-by-gateways.md): recorded as the
//! owner would have recorded them had it answered (the same processing, so last seen, silence
//! deadline and status move as they would), unless the owner has something for the agent now; then
//! the grant ends, and the agent's next heartbeat comes to the owner, whose reply carries it.

use super::owner::Owner;
use crate::opamp::process::{self, same_connection};
use flotilla_common::bus::Subscription;
use flotilla_common::names::shard_of;
use flotilla_proto::bus::{
    AnsweredHeartbeat, AnsweredHeartbeats, AnsweredHeartbeatsAck, Origin, Transport,
};
use flotilla_proto::opamp::AgentToServer;
use futures_util::StreamExt;
use prost::Message;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, warn};
use uuid::Uuid;

/// Batches recorded at once.
const BATCHES_AT_ONCE: usize = 8;
/// Shards of one batch recorded at once.
const SHARDS_AT_ONCE: usize = 16;

/// What became of one answered heartbeat.
enum Heard {
    Recorded,
    /// Older than what the record has seen (a later message came to the owner first).
    Stale,
    /// Not recorded, or recorded but the owner has something for the agent: the gateway sends
    /// the agent's next heartbeat on.
    EndGrant,
    /// This process does not own the agent's shard (any more): the gateway sends the agent's next
    /// heartbeat to its shard's owner.
    NotOwner,
}

impl Owner {
    /// Records the batches of answered heartbeats gateways send this coordinator (subject
    /// `opamp.<region>.owner.<node_id>.heartbeats`) until `cancel`, a few at a time.
    pub(crate) async fn serve_heartbeats(
        self: Arc<Self>,
        mut batches: Subscription,
        cancel: CancellationToken,
    ) {
        let tracker = TaskTracker::new();
        let room = Arc::new(Semaphore::new(BATCHES_AT_ONCE));
        loop {
            let incoming = tokio::select! {
                i = batches.next() => match i {
                    Some(i) => i,
                    None => break,
                },
                () = cancel.cancelled() => break,
            };
            let Ok(permit) = room.clone().acquire_owned().await else {
                break;
            };
            let this = self.clone();
            tracker.spawn(async move {
                match AnsweredHeartbeats::decode(incoming.msg.payload) {
                    Ok(batch) => {
                        let ack = this.heartbeats_here(batch).await;
                        if let Some(reply) = incoming.reply {
                            let _ = reply.send(ack.encode_to_vec().into()).await;
                        }
                    }
                    // Not answered: the gateway gives the batch up and ends its grants, so
                    // those agents' heartbeats come to their owners (an empty answer would
                    // say every one was recorded).
                    Err(e) => warn!(error = %e, "a batch of answered heartbeats did not decode"),
                }
                drop(permit);
            });
        }
        tracker.close();
        tracker.wait().await;
    }

    /// Records a batch of answered heartbeats, shard by shard, each shard in a task of its own;
    /// the answer names the connections whose grant ends (those of shards this process does not
    /// own among them: their agents' next heartbeats find the owner).
    ///
    /// Tasks, not futures polled together in this one: a task's yield after each heartbeat lets
    /// the runtime's other tasks (the agents' sessions) run, where futures polled together would
    /// each record one before the task yields, a burst of up to [`SHARDS_AT_ONCE`] records that
    /// the agents' replies wait behind (with them the standalone server's reply p99 was
    /// 0.73-0.79 ms, in tasks 0.59-0.65 ms, without any recording 0.43 ms; docs/benchmarks.md).
    async fn heartbeats_here(self: &Arc<Self>, batch: AnsweredHeartbeats) -> AnsweredHeartbeatsAck {
        let mut by_shard: BTreeMap<u16, Vec<AnsweredHeartbeat>> = BTreeMap::new();
        for h in batch.heartbeats {
            by_shard
                .entry(shard_of(&h.instance_uid))
                .or_default()
                .push(h);
        }
        let gateway: Arc<str> = batch.gateway_id.into();
        let ended: Vec<Vec<u64>> = futures_util::stream::iter(by_shard)
            .map(|(shard, heartbeats)| {
                // A task that did not finish (it panicked) ends its grants: nothing is lost.
                let connections: Vec<u64> = heartbeats.iter().map(|h| h.connection_id).collect();
                let (this, gateway) = (self.clone(), gateway.clone());
                let task = tokio::spawn(
                    async move { this.shard_heartbeats(shard, &gateway, heartbeats).await }
                        .in_current_span(),
                );
                async move { task.await.unwrap_or(connections) }
            })
            .buffer_unordered(SHARDS_AT_ONCE)
            .collect()
            .await;
        AnsweredHeartbeatsAck {
            grants_ended: ended.into_iter().flatten().collect(),
        }
    }

    /// One shard's answered heartbeats; the connections whose grant ends.
    async fn shard_heartbeats(
        &self,
        shard: u16,
        gateway_id: &str,
        heartbeats: Vec<AnsweredHeartbeat>,
    ) -> Vec<u64> {
        let mut ended = Vec::new();
        // A place among the owner's agent messages in flight, as each of them takes, before the
        // shard's lock (the order they take them in): these store writes queue with theirs,
        // not ahead of them.
        let Ok(_room) = self.pusher.room().acquire().await else {
            return heartbeats.iter().map(|h| h.connection_id).collect();
        };
        let mut locked = self.lock_owned(shard).await;
        for heartbeat in heartbeats {
            let connection_id = heartbeat.connection_id;
            let heard = match locked.as_mut() {
                Some(l) => self.answered_heartbeat(l, gateway_id, heartbeat).await,
                None => Heard::NotOwner,
            };
            if matches!(heard, Heard::NotOwner) {
                locked = None;
            }
            self.count_uplink(match heard {
                Heard::Recorded => "heartbeat",
                Heard::Stale => "heartbeat_stale",
                Heard::EndGrant | Heard::NotOwner => {
                    ended.push(connection_id);
                    "heartbeat_grant_ended"
                }
            });
            // Agents' messages waiting for this thread go first: these heartbeats are answered.
            tokio::task::yield_now().await;
        }
        ended
    }

    async fn answered_heartbeat(
        &self,
        shard: &mut super::records::Locked<'_>,
        gateway_id: &str,
        heartbeat: AnsweredHeartbeat,
    ) -> Heard {
        let Ok(uid) = Uuid::from_slice(&heartbeat.instance_uid) else {
            return Heard::EndGrant;
        };
        // A record the owner cannot read, or none (removed since): the owner's reply to the next
        // heartbeat says what to do.
        let Ok(Some(stored)) = shard.get_for_message(uid).await else {
            return Heard::EndGrant;
        };
        let here = Origin {
            gateway_id: gateway_id.to_owned(),
            connection_id: heartbeat.connection_id,
            transport: Transport::Websocket as i32,
            ..Default::default()
        };
        // The agent is known on another connection now, or disconnected.
        let origin = match &stored.origin {
            Some(o) if same_connection(Some(o), &here) => o.clone(),
            _ => return Heard::EndGrant,
        };
        if heartbeat.sequence_num <= stored.sequence_num {
            return Heard::Stale;
        }
        let msg = AgentToServer {
            instance_uid: heartbeat.instance_uid,
            sequence_num: heartbeat.sequence_num,
            capabilities: stored.capabilities,
            ..Default::default()
        };
        let awaiting = self.pusher.awaiting();
        awaiting.heard(&msg);
        // A config the agent should be offered is not offered here: a push on its way reaches
        // it; else its next heartbeat comes to the owner, whose reply offers it as paced.
        let unplanned_offer = AtomicBool::new(false);
        let may_offer = |uid: &[u8], _: &[u8]| {
            if !awaiting.expects(uid) {
                unplanned_offer.store(true, Ordering::Relaxed);
            }
            false
        };
        let desired = self.desired.current();
        let ctx = crate::opamp::Ctx {
            heartbeats_answered_through: Some(heartbeat.sequence_num.wrapping_sub(1)),
            ..self.message_ctx(&desired, &may_offer)
        };
        let mut out = process::process(Some(stored), msg, origin, &ctx);
        self.add_own_capabilities(&mut out.reply);
        // The reply the gateway sent was the grant's; anything else waits for the owner's reply
        // to the next heartbeat (nothing is taken from the record for it here).
        if process::heartbeat_grant(&out, ctx.now_unix_ms, &self.cfg.node_id).is_none() {
            return Heard::EndGrant;
        }
        let Some(rec) = out.record.take() else {
            return Heard::EndGrant;
        };
        let events: Vec<_> = out
            .events
            .iter()
            .map(|kind| self.events.message(*kind, &rec))
            .collect();
        match self
            .save_owned_or_drop(shard, rec, out.deadline, None)
            .await
        {
            Ok(true) => {}
            Ok(false) => return Heard::NotOwner,
            Err(_) => return Heard::EndGrant,
        }
        for event in events {
            self.events.publish(event).await;
        }
        if unplanned_offer.load(Ordering::Relaxed) {
            Heard::EndGrant
        } else {
            Heard::Recorded
        }
    }
}
