//! Pushes to connected agents: a ServerToAgent sent through the gateway that holds the agent's
//! WebSocket ([`Pusher`]), alone or with others for the same gateway ([`batches`]) while the
//! agents pushed to before answer ([`Awaiting`]), and what an agent's record says is due to it now
//! ([`push_for`]).

use super::awaiting::{Awaiting, PATIENCE, WINDOW};
use crate::fleet::agents::RecordAttributes;
use crate::fleet::configs::Desired;
use crate::metrics::OwnerMetrics;
use crate::opamp::SERVER_CAPABILITIES;
use crate::opamp::desired::{config_to_offer, packages_to_offer};
use crate::opamp::offers::remote_config_message;
use bytes::Bytes;
use flotilla_common::bus::{Bus, BusError, BusMessage};
use flotilla_common::names::{Subjects, uid_text};
use flotilla_common::telemetry::traces;
use flotilla_proto::bus::{
    AgentRecord, AgentStatus, Downlink, DownlinkAck, DownlinkBatch, DownlinkBatchAck, Origin,
    Transport,
};
use flotilla_proto::opamp::ServerToAgent;
use futures_util::StreamExt;
use prost::Message;
use std::collections::{BTreeMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;
use tracing::{Instrument, Span, debug, debug_span};
use uuid::Uuid;

/// Downlinks in one batch at most: a batch's agents answer at once, so a batch is a burst of
/// reports in front of the owners (ADR 0018).
pub(crate) const MAX_BATCH_COUNT: usize = 16;
/// Batch requests on their way at once (over all gateways).
const BATCHES_IN_FLIGHT: usize = 8;
/// Single requests on their way at once per batch, when its gateway takes no batches.
const SINGLES_IN_FLIGHT: usize = 32;

/// Sends ServerToAgent messages to the gateway connections that hold agents.
pub(crate) struct Pusher {
    bus: Arc<dyn Bus>,
    subjects: Subjects,
    timeout: Duration,
    metrics: OwnerMetrics,
    /// Encoded bytes of one batch at most (a single larger downlink still goes, alone).
    max_batch_bytes: usize,
    /// The owner's room for agent messages taken from the bus and not answered yet, over every
    /// shard ([`MAX_UPLINKS_IN_FLIGHT`]; each holds its message, a full report is tens of KB, and
    /// the record being made of it): a batch waits while it is more than half taken.
    room: Arc<Semaphore>,
    /// The agents batches reached that have not answered yet: a batch waits for room among them.
    awaiting: Awaiting,
}

/// Agent messages an owner processes at once, at most (its room, which pushes leave to them).
pub(super) const MAX_UPLINKS_IN_FLIGHT: usize = 256;

/// How long a batch waits for the owner's agent messages to thin out, at most: a push to many
/// agents makes each of them report (APPLYING, APPLIED with its effective config), and sent all
/// at once those reports would queue behind one another, every agent's own messages with them.
const MOST_WAIT_FOR_ROOM: Duration = Duration::from_secs(2);

impl Pusher {
    /// `max_message_size`: the largest message the bus carries (in a cluster, the NATS server's
    /// max_payload less room for headers); batches stay within half of it.
    pub fn new(
        bus: Arc<dyn Bus>,
        subjects: Subjects,
        timeout: Duration,
        metrics: OwnerMetrics,
        max_message_size: usize,
        room: Arc<Semaphore>,
    ) -> Self {
        let awaiting = Awaiting::new(
            WINDOW,
            PATIENCE,
            metrics.pushes_awaiting.clone(),
            metrics.pushes_unanswered.clone(),
        );
        Self {
            bus,
            subjects,
            timeout,
            metrics,
            max_batch_bytes: max_message_size / 2,
            room,
            awaiting,
        }
    }

    /// The agents pushed to that have not answered yet.
    pub fn awaiting(&self) -> &Awaiting {
        &self.awaiting
    }

    /// The owner's room for agent messages (the owner takes a permit for each), which this
    /// pusher leaves to them first.
    pub fn room(&self) -> &Arc<Semaphore> {
        &self.room
    }

    /// Waits (at most [`MOST_WAIT_FOR_ROOM`]) until at most half of the owner's room for agent
    /// messages is taken.
    async fn wait_for_room(&self) {
        let started = tokio::time::Instant::now();
        while self.room.available_permits() < MAX_UPLINKS_IN_FLIGHT / 2
            && started.elapsed() < MOST_WAIT_FOR_ROOM
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Sends a ServerToAgent (addressed by its instance_uid) to the connection `origin`; true if
    /// the gateway delivered it.
    pub async fn push(&self, origin: &Origin, msg: &ServerToAgent) -> bool {
        self.push_one(&origin.gateway_id, downlink(origin, msg))
            .await
    }

    /// [`Pusher::push`] of a downlink made already.
    async fn push_one(&self, gateway: &str, down: Downlink) -> bool {
        let span = traces::child_or_root(|| {
            debug_span!(
                "opamp.push",
                otel.kind = "client",
                uid = %uid_text(&down.instance_uid),
                %gateway,
                delivered = tracing::field::Empty,
            )
        });
        let subject = self.subjects.downlink(gateway);
        let ack = self.request(&span, subject, down.encode_to_vec()).await;
        let delivered = ack
            .ok()
            .and_then(|a| DownlinkAck::decode(a).ok())
            .is_some_and(|a| a.delivered);
        span.record("delivered", delivered);
        self.count(usize::from(delivered), 1);
        delivered
    }

    /// Sends many ServerToAgent messages, each to its connection: in batches per gateway, a few
    /// batches at a time, each when the agents pushed to before have answered (at most
    /// [`WINDOW`] awaited) and the owner has room for the reports it brings. Returns how many the
    /// gateways delivered; a batch whose request fails delivers none (those agents get their
    /// desired state in the reply to their next message), except that a gateway that takes no
    /// batches gets its pushes one by one.
    pub async fn push_many(&self, mut pushes: Vec<Push>) -> usize {
        self.awaiting.plan(pushes.iter_mut().filter_map(|p| {
            let uid = Uuid::from_slice(&p.instance_uid).ok()?;
            Some((uid, p.config_hash.take()))
        }));
        let batches = batches(pushes, MAX_BATCH_COUNT, self.max_batch_bytes);
        futures_util::stream::iter(batches)
            .map(|(gateway, downlinks)| self.push_batch(gateway, downlinks))
            .buffer_unordered(BATCHES_IN_FLIGHT)
            .fold(0, |sum, n| std::future::ready(sum + n))
            .await
    }

    /// One batch to one gateway, once there is room among the agents awaited (less those that
    /// reported the config on their own meanwhile); how many of it were delivered.
    async fn push_batch(&self, gateway: String, pushes: Vec<Push>) -> usize {
        let uids: Vec<Uuid> = pushes.iter().map(Push::uid).collect();
        let due = self.awaiting.take(&uids).await;
        let downlinks: Vec<Downlink> = pushes
            .iter()
            .zip(due)
            .filter(|(_, due)| *due)
            .map(|(p, _)| p.downlink())
            .collect();
        if downlinks.is_empty() {
            return 0;
        }
        self.wait_for_room().await;
        let size = downlinks.len();
        let span = traces::child_or_root(|| {
            debug_span!(
                "opamp.push_batch",
                otel.kind = "client",
                %gateway,
                size,
                delivered = tracing::field::Empty,
            )
        });
        let batch = DownlinkBatch {
            downlinks,
            end_heartbeat_grants: false,
        };
        let subject = self.subjects.downlink_batch(&gateway);
        let acks = match self.request(&span, subject, batch.encode_to_vec()).await {
            Ok(ack) => DownlinkBatchAck::decode(ack)
                .map(|a| a.delivered)
                .unwrap_or_default(),
            Err(BusError::NoResponders(_)) => {
                self.not_awaited(&batch.downlinks);
                // Nobody serves the gateway's batch subject: a gateway of the version before
                // batches (mixed versions during an upgrade) still takes them one by one, as
                // all pushes went before; a gateway that is gone refuses those at once too.
                let single = |d| self.push_one(&gateway, d);
                let delivered = futures_util::stream::iter(batch.downlinks)
                    .map(single)
                    .buffer_unordered(SINGLES_IN_FLIGHT)
                    .filter(|ok| std::future::ready(*ok))
                    .count()
                    .instrument(span.clone())
                    .await;
                span.record("delivered", delivered);
                return delivered;
            }
            Err(_) => Vec::new(),
        };
        // Entries past the batch's own (a confused gateway) count for nothing; those it did not
        // deliver to answer nothing.
        let missed = batch.downlinks.iter().enumerate();
        self.not_awaited(
            missed.filter_map(|(i, d)| (!acks.get(i).is_some_and(|a| *a)).then_some(d)),
        );
        let delivered = acks.iter().take(size).filter(|d| **d).count();
        span.record("delivered", delivered);
        self.count(delivered, size);
        delivered
    }

    /// Ends the leave to answer heartbeats that `gateways` hold (`DownlinkBatch.end_heartbeat_grants`):
    /// the desired state changed, and the replies to the agents' next heartbeats, the owners',
    /// may carry some of it (connection settings); no request when `gateways` is empty. A gateway
    /// that does not answer keeps its grants: what they withhold reaches the agents one
    /// heartbeat later (the owner ends each grant when it records a heartbeat whose reply would
    /// carry something).
    pub async fn end_grants(&self, gateways: impl IntoIterator<Item = String>) {
        let end = DownlinkBatch {
            downlinks: Vec::new(),
            end_heartbeat_grants: true,
        }
        .encode_to_vec();
        let span = traces::child_or_root(|| debug_span!("opamp.end_grants", otel.kind = "client"));
        let ends = gateways.into_iter().map(|gateway| {
            let subject = self.subjects.downlink_batch(&gateway);
            self.request(&span, subject, end.clone())
        });
        futures_util::future::join_all(ends).await;
    }

    /// The agents of `downlinks` answer nothing: they are not awaited.
    fn not_awaited<'d>(&self, downlinks: impl IntoIterator<Item = &'d Downlink>) {
        for d in downlinks {
            self.awaiting.gone(uid_of(&d.instance_uid));
        }
    }

    /// A bus request to a gateway within the push timeout, in `span`.
    async fn request(
        &self,
        span: &Span,
        subject: String,
        payload: Vec<u8>,
    ) -> Result<Bytes, BusError> {
        let req = span.in_scope(|| BusMessage::new(subject, payload).with_trace_context());
        let sent = self.bus.request(req, self.timeout).instrument(span.clone());
        sent.await
            .inspect_err(|e| debug!(error = %e, "push failed"))
    }

    /// Counts `delivered` of `total` pushes as delivered, the rest as undelivered.
    fn count(&self, delivered: usize, total: usize) {
        for (label, n) in [("delivered", delivered), ("undelivered", total - delivered)] {
            if n > 0 {
                self.metrics
                    .pushes
                    .get_or_create(&vec![("result", label)])
                    .inc_by(n as u64);
            }
        }
    }
}

/// One agent's push as planned: small, as a push to a fleet plans one for each of tens of
/// thousands of agents and holds them until each batch's turn (33,000 an owner at 100,000 agents:
/// docs/benchmarks.md). Its message is encoded once for every push of the same contents
/// ([`Bodies`]), without the agent's uid, which its downlink puts in front ([`Push::downlink`]).
#[derive(Debug)]
pub(crate) struct Push {
    /// The gateway that holds the agent's connection.
    gateway: String,
    connection_id: u64,
    instance_uid: Vec<u8>,
    /// The config the agent is to report applied (None: a push without a config).
    config_hash: Option<Vec<u8>>,
    /// The ServerToAgent but for its instance_uid, encoded.
    rest: Arc<[u8]>,
}

impl Push {
    /// `msg` to the connection `origin`, its encoding shared through `bodies`.
    pub(crate) fn new(origin: Origin, mut msg: ServerToAgent, bodies: &mut Bodies) -> Self {
        let instance_uid = std::mem::take(&mut msg.instance_uid);
        Self {
            config_hash: msg.remote_config.as_ref().map(|c| c.config_hash.clone()),
            rest: bodies.share(msg.encode_to_vec()),
            connection_id: origin.connection_id,
            instance_uid,
            gateway: origin.gateway_id,
        }
    }

    fn uid(&self) -> Uuid {
        uid_of(&self.instance_uid)
    }

    /// The message's encoding: its instance_uid (field 1, which prost writes first), then the rest.
    fn server_to_agent(&self) -> Vec<u8> {
        let mut bytes = Vec::with_capacity(self.message_len());
        if !self.instance_uid.is_empty() {
            prost::encoding::bytes::encode(1, &self.instance_uid, &mut bytes);
        }
        bytes.extend_from_slice(&self.rest);
        bytes
    }

    /// [`Push::server_to_agent`]'s length: the uid's field and the rest.
    fn message_len(&self) -> usize {
        field_len(self.instance_uid.len()) + self.rest.len()
    }

    /// The downlink that carries it.
    fn downlink(&self) -> Downlink {
        Downlink {
            connection_id: self.connection_id,
            instance_uid: self.instance_uid.clone(),
            server_to_agent: self.server_to_agent(),
        }
    }

    /// [`Push::downlink`]'s encoded length, without making it: the Downlink's connection id,
    /// uid and message (every field number below 16, a one-byte tag; an empty field is not
    /// encoded).
    fn encoded_len(&self) -> usize {
        let id = match self.connection_id {
            0 => 0,
            id => 1 + prost::encoding::encoded_len_varint(id),
        };
        id + field_len(self.instance_uid.len()) + field_len(self.message_len())
    }
}

/// The encoded length of a length-delimited field of `n` bytes and a one-byte tag (none if empty).
fn field_len(n: usize) -> usize {
    if n == 0 {
        0
    } else {
        1 + prost::length_delimiter_len(n) + n
    }
}

/// The encoded messages of a push's agents, one copy of each different one.
#[derive(Debug, Default)]
pub(crate) struct Bodies(HashSet<Arc<[u8]>>);

impl Bodies {
    fn share(&mut self, bytes: Vec<u8>) -> Arc<[u8]> {
        if let Some(held) = self.0.get(bytes.as_slice()) {
            return held.clone();
        }
        let held: Arc<[u8]> = bytes.into();
        self.0.insert(held.clone());
        held
    }
}

/// The agent named by `uid` (the nil uuid for a malformed one, which nothing awaits).
fn uid_of(uid: &[u8]) -> Uuid {
    Uuid::from_slice(uid).unwrap_or_default()
}

/// The Downlink that carries `msg` to the connection `origin`.
fn downlink(origin: &Origin, msg: &ServerToAgent) -> Downlink {
    Downlink {
        connection_id: origin.connection_id,
        instance_uid: msg.instance_uid.clone(),
        server_to_agent: msg.encode_to_vec(),
    }
}

/// Pushes grouped by gateway, each gateway's in the order of their agents' uids, split into
/// batches of at most `max_count` downlinks and `max_bytes` encoded bytes (a downlink larger than
/// `max_bytes` by itself is a batch of its own), and the gateways' batches taken in turn (in
/// gateway id order). Uid order spreads a batch over the shards (a shard is a hash of the uid):
/// the owners' walks give agents shard by shard, and a batch's agents in a few shards answer it
/// one after another behind those shards' locks. (Whether that is what held the 100,000-agent
/// pushes to about 1,000 agents a second, with the machine a fifth idle, the runs so far do not
/// tell: docs/benchmarks.md.)
pub(crate) fn batches(
    mut pushes: Vec<Push>,
    max_count: usize,
    max_bytes: usize,
) -> Vec<(String, Vec<Push>)> {
    pushes.sort_unstable_by(|a, b| a.instance_uid.cmp(&b.instance_uid));
    let mut by_gateway: BTreeMap<String, Vec<Push>> = BTreeMap::new();
    for mut push in pushes {
        by_gateway
            .entry(std::mem::take(&mut push.gateway))
            .or_default()
            .push(push);
    }
    let mut each: Vec<(String, VecDeque<Vec<Push>>)> = Vec::new();
    for (gateway, pushes) in by_gateway {
        let mut split = VecDeque::new();
        let mut batch: Vec<Push> = Vec::new();
        let mut bytes = 0;
        for push in pushes {
            // What its downlink adds to an encoded DownlinkBatch: its field's tag, length, body.
            let len = push.encoded_len();
            let adds = 1 + prost::length_delimiter_len(len) + len;
            let full = batch.len() >= max_count || bytes + adds > max_bytes;
            if full && !batch.is_empty() {
                split.push_back(std::mem::take(&mut batch));
                bytes = 0;
            }
            batch.push(push);
            bytes += adds;
        }
        if !batch.is_empty() {
            split.push_back(batch);
        }
        each.push((gateway, split));
    }
    let mut out = Vec::new();
    while !each.is_empty() {
        for (gateway, split) in &mut each {
            if let Some(batch) = split.pop_front() {
                out.push((gateway.clone(), batch));
            }
        }
        each.retain(|(_, split)| !split.is_empty());
    }
    out
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

#[cfg(test)]
#[path = "pusher_tests.rs"]
mod tests;
