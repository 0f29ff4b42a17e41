//! Heartbeats the agents' gateways answered themselves under the owner's grant
//! (gateway/src/heartbeats.rs, docs/adr/0021-heartbeats-answered-by-gateways.md): recorded as the
//! owner would have recorded them had it answered (the same processing, so last seen, silence
//! deadline and status move as they would), unless the owner has something for the agent now; then
//! the grant ends, and the agent's next heartbeat comes to the owner, whose reply carries it.

use super::owner::Owner;
use crate::opamp::process::{self, same_connection};
use flotilla_common::names::shard_of;
use flotilla_proto::bus::{AnsweredHeartbeat, AnsweredHeartbeats, Origin, Transport, UplinkReply};
use flotilla_proto::opamp::AgentToServer;
use std::sync::atomic::{AtomicBool, Ordering};
use uuid::Uuid;

/// What became of one answered heartbeat.
enum Heard {
    Recorded,
    /// Older than what the record has seen (a later message came to the owner first).
    Stale,
    /// Not recorded, or recorded but the owner has something for the agent: the gateway sends
    /// the agent's next heartbeat on.
    EndGrant,
    /// Another coordinator holds the shard now.
    NotOwner,
}

impl Owner {
    /// Records a batch of one shard's answered heartbeats; the reply names the connections whose
    /// grant ends. None if this process does not own the shard (the gateway asks again until its
    /// owner answers; heartbeats recorded already are stale then).
    pub(super) async fn heartbeats_here(&self, batch: AnsweredHeartbeats) -> Option<UplinkReply> {
        let shard = shard_of(&batch.heartbeats.first()?.instance_uid);
        let mut locked = self.lock_for_uplink(shard).await?;
        let mut ended = Vec::new();
        for heartbeat in batch.heartbeats {
            let connection_id = heartbeat.connection_id;
            let heard = if shard_of(&heartbeat.instance_uid) == shard {
                self.answered_heartbeat(&mut locked, &batch.gateway_id, heartbeat)
                    .await
            } else {
                Heard::EndGrant
            };
            self.count_uplink(match heard {
                Heard::Recorded => "heartbeat",
                Heard::Stale => "heartbeat_stale",
                Heard::EndGrant => {
                    ended.push(connection_id);
                    "heartbeat_grant_ended"
                }
                Heard::NotOwner => return None,
            });
        }
        Some(UplinkReply {
            grants_ended: ended,
            heartbeats_taken: true,
            ..Default::default()
        })
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
        if !same_connection(stored.origin.as_ref(), &here) {
            return Heard::EndGrant;
        }
        if heartbeat.sequence_num <= stored.sequence_num {
            return Heard::Stale;
        }
        let Some(origin) = stored.origin.clone() else {
            return Heard::EndGrant;
        };
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
        if process::heartbeat_grant(&out, ctx.now_unix_ms).is_none() {
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
