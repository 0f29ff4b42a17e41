//! Heartbeats a gateway answers itself. An agent's heartbeat over a WebSocket (a message with
//! nothing but its uid, sequence number and capabilities) is most of what a fleet sends, and its
//! owner's reply to it is the same every time while the owner has nothing for the agent. So with
//! such a reply the owner may give the gateway leave to answer the agent's next heartbeats on the
//! connection itself ([`HeartbeatGrant`]): the gateway answers the heartbeats that follow, one
//! sequence number after the other with the same capabilities, with that reply at once, and tells
//! the owner of them in batches ([`AnsweredHeartbeats`], one per owner every 50 ms), which
//! the owner records as it would have recorded the heartbeats (last seen, silence deadline). Any
//! other message goes to the owner, naming the last heartbeat answered (so the owner sees it in
//! sequence), and ends the leave; the owner ends it too when a batch shows it has something for
//! the agent, and a batch no owner takes ends the leave of every connection in it (the agents'
//! next heartbeats go to the owner, as without a grant). docs/adr/0021-heartbeats-answered-by-gateways.md.

use crate::gateway::Gateway;
use crate::shard_queue::{Answered, Pushed, flush};
use flotilla_common::bus::BusMessage;
use flotilla_proto::bus::{
    AnsweredHeartbeat, AnsweredHeartbeats, AnsweredHeartbeatsAck, HeartbeatGrant, UplinkReply,
};
use flotilla_proto::opamp::AgentToServer;
use prost::Message;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use tokio_util::sync::CancellationToken;
use tracing::debug;

/// An owner's leave to answer one agent's heartbeats on one connection.
#[derive(Debug)]
pub(crate) struct Grant {
    instance_uid: Vec<u8>,
    /// The sequence number of the next heartbeat it covers.
    next: u64,
    capabilities: u64,
    /// The owner's reply (an encoded ServerToAgent), sent for each heartbeat answered.
    reply: Vec<u8>,
    /// The owner's node id, which the heartbeats answered go to.
    owner: String,
    /// The last heartbeat answered under it.
    answered: Option<u64>,
    /// The gateway's count of ends of all grants when it was given ([`Gateway::end_grants`]).
    epoch: u64,
    /// The owner ended it: it answers no more, and the next message still names the last
    /// heartbeat it answered.
    ended: bool,
}

impl Grant {
    /// The leave `reply` (the owner's answer to a message of `instance_uid`) gives, if any, in
    /// grant epoch `epoch`.
    pub fn of(instance_uid: &[u8], reply: &UplinkReply, epoch: u64) -> Option<Self> {
        let HeartbeatGrant {
            sequence_num,
            capabilities,
            owner,
        } = reply.heartbeat_grant.clone()?;
        Some(Self {
            instance_uid: instance_uid.to_vec(),
            next: sequence_num.wrapping_add(1),
            capabilities,
            reply: reply.server_to_agent.clone(),
            owner,
            answered: None,
            epoch,
            ended: false,
        })
    }

    /// The owner ended the grant.
    pub fn end(&mut self) {
        self.ended = true;
    }

    /// Whether `msg` is the next heartbeat of the agent, with nothing else in it.
    fn covers(&self, msg: &AgentToServer) -> bool {
        !self.ended
            && msg.instance_uid == self.instance_uid
            && msg.sequence_num == self.next
            && msg.capabilities == self.capabilities
            && *msg
                == AgentToServer {
                    instance_uid: self.instance_uid.clone(),
                    sequence_num: self.next,
                    capabilities: self.capabilities,
                    ..Default::default()
                }
    }

    /// The last heartbeat answered under a leave for `instance_uid` (the leave ends: the message
    /// after it goes to the owner).
    pub fn answered_through(grant: Option<Self>, instance_uid: &[u8]) -> Option<u64> {
        grant
            .filter(|g| g.instance_uid == instance_uid)
            .and_then(|g| g.answered)
    }
}

impl Gateway {
    /// The reply to `msg` under `grant`, if it covers the message and the owner can be told of
    /// it; None to send it to the owner.
    pub(crate) fn answer_heartbeat(
        &self,
        grant: &mut Grant,
        msg: &AgentToServer,
        connection_id: u64,
    ) -> Option<Vec<u8>> {
        if grant.epoch != self.grant_epoch() || !grant.covers(msg) {
            return None;
        }
        let answered = Answered {
            owner: grant.owner.clone(),
            heartbeat: AnsweredHeartbeat {
                instance_uid: msg.instance_uid.clone(),
                sequence_num: msg.sequence_num,
                connection_id,
            },
        };
        if self.heartbeats.push(vec![answered]) == Pushed::Full {
            self.count_heartbeats("queue_full", 1);
            return None;
        }
        self.count_heartbeats("answered", 1);
        grant.answered = Some(msg.sequence_num);
        grant.next = msg.sequence_num.wrapping_add(1);
        Some(grant.reply.clone())
    }

    /// Sends answered heartbeats to their owners until `cancel` ([`crate::shard_queue::flush`]).
    pub(crate) async fn flush_heartbeats(self: Arc<Self>, cancel: CancellationToken) {
        let queue = self.heartbeats.clone();
        flush(queue, cancel, move |owner, batch| {
            let this = self.clone();
            async move { this.send_heartbeats(&owner, batch).await }
        })
        .await;
    }

    /// Heartbeats answered under grants of coordinator `owner`, to it; ends the grants of the
    /// connections it names, or of all of them if it did not take the batch (it is gone, or of a
    /// version before grants: nobody answers on its subject).
    async fn send_heartbeats(&self, owner: &str, batch: Vec<Answered>) {
        let n = batch.len() as u64;
        let on: HashMap<u64, Vec<u8>> = batch
            .iter()
            .map(|a| (a.heartbeat.connection_id, a.heartbeat.instance_uid.clone()))
            .collect();
        let heartbeats = AnsweredHeartbeats {
            gateway_id: self.cfg.gateway_id.clone(),
            heartbeats: batch.into_iter().map(|a| a.heartbeat).collect(),
        };
        let subject = self.subjects.answered_heartbeats(owner);
        let request = BusMessage::new(subject, heartbeats.encode_to_vec());
        let answer = self.bus.request(request, self.cfg.uplink_timeout).await;
        let ended: Vec<u64> = match answer.map(AnsweredHeartbeatsAck::decode) {
            Ok(Ok(ack)) => {
                self.count_heartbeats("recorded", n);
                ack.grants_ended
            }
            answer => {
                debug!(
                    ?answer,
                    owner,
                    heartbeats = n,
                    "answered heartbeats not taken by their owner"
                );
                self.count_heartbeats("not_delivered", n);
                on.keys().copied().collect()
            }
        };
        for connection_id in &ended {
            if let Some(uid) = on.get(connection_id) {
                // An empty push: the session ends its grant.
                self.table.deliver(*connection_id, uid, Vec::new());
            }
        }
        self.count_heartbeats("grant_ended", ended.len() as u64);
    }

    /// Ends every grant this gateway holds (its sessions see it at their agents' next message).
    pub(crate) fn end_grants(&self) {
        self.grant_epoch.fetch_add(1, Ordering::AcqRel);
    }

    /// The current grant epoch: grants given before the last [`Gateway::end_grants`] are void.
    pub(crate) fn grant_epoch(&self) -> u64 {
        self.grant_epoch.load(Ordering::Acquire)
    }

    fn count_heartbeats(&self, outcome: &'static str, n: u64) {
        self.metrics
            .heartbeats
            .get_or_create(&vec![("outcome", outcome)])
            .inc_by(n);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant(seq: u64) -> Grant {
        let reply = UplinkReply {
            server_to_agent: vec![1, 2, 3],
            heartbeat_grant: Some(HeartbeatGrant {
                sequence_num: seq,
                capabilities: 7,
                owner: "c1".into(),
            }),
            ..Default::default()
        };
        Grant::of(&[9; 16], &reply, 0).expect("a grant")
    }

    fn heartbeat(seq: u64) -> AgentToServer {
        AgentToServer {
            instance_uid: vec![9; 16],
            sequence_num: seq,
            capabilities: 7,
            ..Default::default()
        }
    }

    #[test]
    fn a_grant_covers_only_the_next_bare_heartbeat_of_its_agent() {
        assert!(Grant::of(&[9; 16], &UplinkReply::default(), 0).is_none());
        let g = grant(4);
        assert!(g.covers(&heartbeat(5)));
        assert!(!g.covers(&heartbeat(4)), "the message it answered");
        assert!(!g.covers(&heartbeat(6)), "a gap");
        let other = |f: fn(&mut AgentToServer)| {
            let mut m = heartbeat(5);
            f(&mut m);
            !g.covers(&m)
        };
        assert!(other(|m| m.instance_uid = vec![8; 16]));
        assert!(other(|m| m.capabilities = 15));
        assert!(other(|m| m.flags = 1));
        assert!(other(|m| m.health = Some(Default::default())));
        assert!(other(|m| m.agent_disconnect = Some(Default::default())));
        assert!(other(|m| m.remote_config_status = Some(Default::default())));
        assert!(other(|m| m.custom_message = Some(Default::default())));
    }

    #[test]
    fn the_message_after_answered_heartbeats_names_the_last_one() {
        let mut g = grant(4);
        assert_eq!(Grant::answered_through(Some(grant(4)), &[9; 16]), None);
        g.answered = Some(6);
        assert_eq!(Grant::answered_through(None, &[9; 16]), None);
        assert_eq!(Grant::answered_through(Some(g), &[8; 16]), None);
        let mut g = grant(4);
        g.answered = Some(6);
        assert_eq!(Grant::answered_through(Some(g), &[9; 16]), Some(6));
    }
}
