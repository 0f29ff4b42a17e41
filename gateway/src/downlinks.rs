//! Owners' pushes to this gateway's agents: one ServerToAgent on the downlink subject, or a
//! batch of them on the batch subject (a config pushed to many agents), each handed to its live
//! WebSocket connection ([`crate::table::ConnectionTable::deliver`]) and acknowledged.

use crate::gateway::Gateway;
use flotilla_common::bus::{Incoming, Subscription};
use flotilla_common::telemetry::traces;
use flotilla_proto::bus::{Downlink, DownlinkAck, DownlinkBatch, DownlinkBatchAck};
use prost::Message;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;
use tracing::{debug_span, warn};

impl Gateway {
    /// Delivers the pushes of both subscriptions, one at a time, until `cancel`.
    pub(crate) async fn deliver_pushes(
        self: Arc<Self>,
        mut singles: Subscription,
        mut batches: Subscription,
        cancel: CancellationToken,
    ) {
        loop {
            tokio::select! {
                Some(i) = singles.next() => self.deliver(i).await,
                Some(i) = batches.next() => self.deliver_batch(i).await,
                () = cancel.cancelled() => break,
            }
        }
    }

    /// One push, acknowledged with whether it was delivered.
    async fn deliver(&self, incoming: Incoming) {
        // The owner's push, continued: handing the message to the agent's connection.
        let span = traces::continued(&incoming.msg, || {
            debug_span!(
                parent: None,
                "opamp.deliver",
                otel.kind = "server",
                gateway = %self.cfg.gateway_id,
                delivered = tracing::field::Empty,
            )
        });
        let delivered = span.in_scope(|| match Downlink::decode(incoming.msg.payload) {
            Ok(d) => self.deliver_one(d),
            Err(e) => {
                self.malformed_downlink(&e);
                false
            }
        });
        span.record("delivered", delivered);
        if let Some(reply) = incoming.reply {
            let _ = reply
                .send(DownlinkAck { delivered }.encode_to_vec().into())
                .await;
        }
    }

    /// An owner's batch of pushes, each handed to its connection as [`Gateway::deliver`] does;
    /// the ack says which were, in order (empty if the batch does not decode).
    async fn deliver_batch(&self, incoming: Incoming) {
        let span = traces::continued(&incoming.msg, || {
            debug_span!(
                parent: None,
                "opamp.deliver_batch",
                otel.kind = "server",
                gateway = %self.cfg.gateway_id,
                size = tracing::field::Empty,
                delivered = tracing::field::Empty,
            )
        });
        let acks: Vec<bool> = span.in_scope(|| match DownlinkBatch::decode(incoming.msg.payload) {
            Ok(b) => {
                if b.end_heartbeat_grants {
                    self.end_grants();
                }
                b.downlinks
                    .into_iter()
                    .map(|d| self.deliver_one(d))
                    .collect()
            }
            Err(e) => {
                self.malformed_downlink(&e);
                Vec::new()
            }
        });
        span.record("size", acks.len());
        span.record("delivered", acks.iter().filter(|d| **d).count());
        if let Some(reply) = incoming.reply {
            let ack = DownlinkBatchAck { delivered: acks };
            let _ = reply.send(ack.encode_to_vec().into()).await;
        }
    }

    /// Queues one push on its connection: only the live connection the agent speaks on.
    fn deliver_one(&self, d: Downlink) -> bool {
        self.table
            .deliver(d.connection_id, &d.instance_uid, d.server_to_agent)
    }

    /// An owner sent a push this gateway cannot read (of another version?): counted and logged
    /// (rate-limited); its agents get their desired state with their next message instead.
    fn malformed_downlink(&self, e: &prost::DecodeError) {
        self.count_rejected("malformed_downlink");
        self.downlink_log.warn(|suppressed| {
            warn!(error = %e, suppressed, "a push from an owner did not decode; not delivered");
        });
    }
}
