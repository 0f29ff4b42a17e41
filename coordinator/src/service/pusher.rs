//! Pushes to connected agents: a ServerToAgent sent through the gateway that holds the agent's
//! WebSocket ([`Pusher`]), and what an agent's record says is due to it now ([`push_for`]).

use crate::fleet::agents::RecordAttributes;
use crate::fleet::configs::Desired;
use crate::metrics::OwnerMetrics;
use crate::opamp::SERVER_CAPABILITIES;
use crate::opamp::desired::{config_to_offer, packages_to_offer};
use crate::opamp::offers::remote_config_message;
use flotilla_common::bus::{Bus, BusMessage};
use flotilla_common::names::{Subjects, uid_text};
use flotilla_common::telemetry::traces;
use flotilla_proto::bus::{AgentRecord, AgentStatus, Downlink, DownlinkAck, Origin, Transport};
use flotilla_proto::opamp::ServerToAgent;
use prost::Message;
use std::sync::Arc;
use std::time::Duration;
use tracing::{Instrument, debug, debug_span};

/// Sends ServerToAgent messages to the gateway connections that hold agents.
pub(crate) struct Pusher {
    bus: Arc<dyn Bus>,
    subjects: Subjects,
    timeout: Duration,
    metrics: OwnerMetrics,
}

impl Pusher {
    pub fn new(
        bus: Arc<dyn Bus>,
        subjects: Subjects,
        timeout: Duration,
        metrics: OwnerMetrics,
    ) -> Self {
        Self {
            bus,
            subjects,
            timeout,
            metrics,
        }
    }

    /// Sends a ServerToAgent (addressed by its instance_uid) to the connection `origin`; true if
    /// the gateway delivered it.
    pub async fn push(&self, origin: &Origin, msg: &ServerToAgent) -> bool {
        let down = Downlink {
            connection_id: origin.connection_id,
            instance_uid: msg.instance_uid.clone(),
            server_to_agent: msg.encode_to_vec(),
        };
        let span = traces::child_or_root(|| {
            debug_span!(
                "opamp.push",
                otel.kind = "client",
                uid = %uid_text(&msg.instance_uid),
                gateway = %origin.gateway_id,
                delivered = tracing::field::Empty,
            )
        });
        let req = span.in_scope(|| {
            BusMessage::new(
                self.subjects.downlink(&origin.gateway_id),
                down.encode_to_vec(),
            )
            .with_trace_context()
        });
        let sent = self.bus.request(req, self.timeout).instrument(span.clone());
        let result = match sent.await {
            Ok(ack) => DownlinkAck::decode(ack)
                .map(|a| a.delivered)
                .unwrap_or(false),
            Err(e) => {
                debug!(error = %e, gateway = %origin.gateway_id, "push failed");
                false
            }
        };
        span.record("delivered", result);
        let label = if result { "delivered" } else { "undelivered" };
        self.metrics
            .pushes
            .get_or_create(&vec![("result", label)])
            .inc();
        result
    }
}

/// What to push to `rec` now: its config and packages, if they differ from what it reported and
/// it is connected over WebSocket. The offered-packages hash is not recorded here: the reply to
/// the agent's next message records it (and offers again only if it still differs).
pub(crate) fn push_for(rec: &AgentRecord, desired: &Desired) -> Option<(Origin, ServerToAgent)> {
    let origin = live_ws(rec)?;
    let attrs = RecordAttributes(rec);
    let cfg = config_to_offer(rec, &attrs, desired);
    let packages = packages_to_offer(rec, &attrs, desired);
    if cfg.is_none() && packages.is_none() {
        return None;
    }
    let msg = ServerToAgent {
        instance_uid: rec.instance_uid.clone(),
        capabilities: SERVER_CAPABILITIES,
        remote_config: cfg.map(remote_config_message),
        packages_available: packages,
        ..Default::default()
    };
    Some((origin.clone(), msg))
}

/// The connection of an agent that is connected over WebSocket (the only kind a push can reach).
pub(crate) fn live_ws(rec: &AgentRecord) -> Option<&Origin> {
    rec.origin.as_ref().filter(|o| {
        rec.status == AgentStatus::Connected as i32 && o.transport() == Transport::Websocket
    })
}
