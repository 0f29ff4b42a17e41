//! The gateway itself: its settings, the accept loop (connection slots, TLS, slow and idle
//! clients), each connection served over HTTP/1.1 (plain HTTP in [`crate::http`], upgrades in
//! [`crate::ws`]), forwarding to the owner over the bus; owners' pushes are delivered in
//! [`crate::downlinks`].

use crate::activity::{Activity, ActivityIo, Expiry, Inflight};
use crate::guard::{AgentTokens, ConnInfo, PeerCert, RefusedCerts};
use crate::metrics::Metrics;
use crate::ownerless::Ownerless;
use crate::shard_queue::{Answered, ShardQueue};
use crate::slots::{Slot, Slots, Taken};
use crate::table::ConnectionTable;
use bytes::Bytes;
use flotilla_common::bus::{Bus, BusError, BusMessage, retry_request};
use flotilla_common::config::{AgentIdentity, AgentLimits, DEFAULT_MAX_INFLIGHT_BYTES};
use flotilla_common::names::{Subjects, shard_of, uid_text};
use flotilla_common::telemetry::{LogLimiter, traces};
use flotilla_common::tls::ReloadingTls;
use flotilla_proto::bus::{
    IdentityRule, Origin, OwnMetricsSample, Transport, Uplink, UplinkReply, uplink,
};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use prometheus_client::registry::Registry;
use prost::Message;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, debug, debug_span, info, info_span, warn};

/// The OpAMP endpoint path.
pub const OPAMP_PATH: &str = "/v1/opamp";
/// Where agents send their own metrics (OTLP/HTTP), on the OpAMP listener.
pub const METRICS_PATH: &str = flotilla_common::names::OWN_METRICS_PATH;

#[derive(Debug, Clone)]
pub struct GatewayConfig {
    pub region: String,
    pub gateway_id: String,
    /// Largest AgentToServer accepted (after decompression, including the WS header); in a
    /// cluster no larger than what the bus carries.
    pub max_message_size: usize,
    /// How long one bus request to the owner may take.
    pub uplink_timeout: Duration,
    /// How long to keep retrying an owner that does not answer (e.g. during a shard handoff)
    /// before telling the agent to come back later.
    pub uplink_deadline: Duration,
    /// What agents are told to wait when no owner answers (retry_info / Retry-After).
    pub retry_after: Duration,
    /// TLS (and mutual TLS) on the listener; plain TCP when absent.
    pub tls: Option<Arc<ReloadingTls>>,
    /// How a client certificate binds the agent's instance_uid.
    pub identity: AgentIdentity,
    /// Bearer tokens agents must present, if any.
    pub tokens: Option<Arc<AgentTokens>>,
    pub limits: AgentLimits,
    /// Where copies of agents' own metrics may be forwarded, by name.
    pub forward: std::collections::BTreeMap<String, String>,
}

impl GatewayConfig {
    pub fn new(region: &str, gateway_id: &str, max_message_size: usize) -> Self {
        Self {
            region: region.into(),
            gateway_id: gateway_id.into(),
            max_message_size,
            uplink_timeout: Duration::from_secs(2),
            uplink_deadline: Duration::from_secs(5),
            retry_after: Duration::from_secs(30),
            tls: None,
            identity: AgentIdentity::None,
            tokens: None,
            limits: AgentLimits {
                max_connections: 100_000,
                max_connection_age: None,
                message_rate: 10,
                handshake_timeout: Duration::from_secs(10),
                max_inflight_bytes: DEFAULT_MAX_INFLIGHT_BYTES,
            },
            forward: Default::default(),
        }
    }
}

pub struct Gateway {
    pub(crate) cfg: GatewayConfig,
    pub(crate) bus: Arc<dyn Bus>,
    pub(crate) subjects: Subjects,
    pub(crate) table: ConnectionTable,
    next_connection: AtomicU64,
    /// One per open connection, up to `limits.max_connections`.
    slots: Arc<Slots>,
    /// Certificates owners refused lately: answered 403 before an upgrade.
    pub(crate) refused: RefusedCerts,
    /// Bytes of incomplete agent messages over all connections.
    inflight: Arc<Inflight>,
    pub(crate) metrics: Metrics,
    /// Agents' own metrics waiting for their owners.
    pub(crate) own_metrics_queue: Arc<ShardQueue<OwnMetricsSample>>,
    /// Heartbeats answered here, waiting for their owners.
    pub(crate) heartbeats: Arc<ShardQueue<Answered>>,
    /// Ends of all grants to answer heartbeats so far (crate::heartbeats).
    pub(crate) grant_epoch: AtomicU64,
    /// Copies of them for other destinations, once the gateway runs.
    pub(crate) forwarders: std::sync::OnceLock<crate::forward::Forwarders>,
    /// Pushes from owners that did not decode.
    pub(crate) downlink_log: LogLimiter,
    /// Room for agent messages sent to owners and not answered yet ([`MAX_UPLINKS_IN_FLIGHT`]).
    uplinks: Arc<Semaphore>,
    /// Shards nobody served lately: their messages do not wait for an owner once that has lasted.
    ownerless: Ownerless,
}

/// Agent messages a gateway has sent to their owners and not had answered, at most. Past it an
/// agent's next message waits here (its connection is not read meanwhile) until an owner answers
/// one: when owners fall behind (a fleet ramping up, a push to every agent), messages wait in a
/// short queue instead of each timing out at the owner, being answered "retry later", and coming
/// back as a full report of the agent's state.
pub const MAX_UPLINKS_IN_FLIGHT: usize = 256;

impl Gateway {
    pub fn new(cfg: GatewayConfig, bus: Arc<dyn Bus>, registry: &mut Registry) -> Arc<Self> {
        let metrics = Metrics::new(registry);
        let over_budget = metrics
            .rejected
            .get_or_create(&vec![("reason", "inflight_budget")])
            .clone();
        Arc::new(Self {
            inflight: Inflight::counting(cfg.limits.max_inflight_bytes, over_budget),
            subjects: Subjects::new(&cfg.region),
            slots: Slots::new(cfg.limits.max_connections),
            cfg,
            bus,
            table: ConnectionTable::default(),
            next_connection: AtomicU64::new(1),
            refused: RefusedCerts::default(),
            metrics,
            own_metrics_queue: Default::default(),
            heartbeats: Default::default(),
            grant_epoch: AtomicU64::new(0),
            forwarders: Default::default(),
            downlink_log: LogLimiter::default(),
            uplinks: Arc::new(Semaphore::new(MAX_UPLINKS_IN_FLIGHT)),
            ownerless: Ownerless::default(),
        })
    }

    /// Accepts agents on `listener` and delivers pushes until `cancel`; then closes WebSocket
    /// sessions with 1001 (going away), lets HTTP requests in flight finish, and returns.
    pub async fn run(
        self: Arc<Self>,
        listener: TcpListener,
        cancel: CancellationToken,
    ) -> Result<(), BusError> {
        let gateway_id = &self.cfg.gateway_id;
        let singles = self
            .bus
            .subscribe(&self.subjects.downlink(gateway_id))
            .await?;
        let batches = self
            .bus
            .subscribe(&self.subjects.downlink_batch(gateway_id))
            .await?;
        let tracker = TaskTracker::new();
        tracker.spawn(
            self.clone()
                .deliver_pushes(singles, batches, cancel.clone())
                .instrument(info_span!("downlink")),
        );
        let forwarders = crate::forward::Forwarders::start(
            &self.cfg.forward,
            self.metrics.own_metrics_forwarded.clone(),
            &cancel,
        );
        let _ = self.forwarders.set(forwarders);
        tracker.spawn(
            self.clone()
                .flush_own_metrics(cancel.clone())
                .instrument(info_span!("own_metrics")),
        );
        tracker.spawn(
            self.clone()
                .flush_heartbeats(cancel.clone())
                .instrument(info_span!("heartbeats")),
        );
        info!(gateway = %self.cfg.gateway_id, addr = ?listener.local_addr().ok(), "gateway accepting agents");
        loop {
            let (stream, peer) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // Out of file descriptors and the like: back off instead of spinning.
                        warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                () = cancel.cancelled() => break,
            };
            let _ = stream.set_nodelay(true);
            let this = self.clone();
            let conn_cancel = cancel.clone();
            let conn_tracker = tracker.clone();
            tracker.spawn(
                async move { this.accept(stream, peer, conn_cancel, conn_tracker).await }
                    .instrument(debug_span!("conn", %peer)),
            );
        }
        tracker.close();
        tracker.wait().await;
        Ok(())
    }

    /// Takes a connection slot (closing the oldest connection that has not sent an authorised
    /// request yet if none is free; with every slot established the connection is answered 503),
    /// completes the TLS handshake within the handshake timeout, and serves the connection.
    async fn accept(
        self: Arc<Self>,
        stream: TcpStream,
        peer: SocketAddr,
        cancel: CancellationToken,
        tracker: TaskTracker,
    ) {
        let slot = match self.slots.take().await {
            Taken::Free(s) => Some(s),
            Taken::Evicted(s) => {
                self.count_rejected("evicted_pending");
                Some(s)
            }
            Taken::Full => None,
        };
        let evicted = Slot::evicted(slot.as_ref());
        let limits = self.cfg.limits.clone();
        let retire_at = limits.max_connection_age.map(|age| {
            // Up to 10% later, so agents connected together do not all reconnect together.
            let jitter = age.mul_f64(rand::random::<f64>() * 0.1);
            tokio::time::Instant::now() + age + jitter
        });
        // Until its first request, a connection may idle no longer than a handshake takes.
        let activity = Activity::new(
            limits.handshake_timeout,
            Some(limits.handshake_timeout),
            self.inflight.clone(),
        );
        let conn = |cert| {
            Arc::new(ConnInfo::new(
                peer,
                cert,
                limits.message_rate,
                retire_at,
                slot,
                activity.clone(),
            ))
        };
        let Some(tls) = self.cfg.tls.as_ref().map(|t| t.current()) else {
            let io = ActivityIo::new(stream, activity.clone());
            return self.serve_io(io, conn(None), cancel, tracker).await;
        };
        let acceptor = tokio_rustls::TlsAcceptor::from(tls);
        let handshake = tokio::time::timeout(limits.handshake_timeout, acceptor.accept(stream));
        let handshake = tokio::select! {
            h = handshake => h,
            () = evicted => {
                self.count_rejected("evicted_pending");
                return;
            }
        };
        match handshake {
            Ok(Ok(stream)) => {
                let cert = stream
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|c| c.first())
                    .map(|der| PeerCert::of(der));
                let io = ActivityIo::new(stream, activity.clone());
                self.serve_io(io, conn(cert), cancel, tracker).await;
            }
            Ok(Err(e)) => {
                self.count_rejected("tls_handshake");
                debug!(error = %e, "TLS handshake failed");
            }
            Err(_) => {
                self.count_rejected("handshake_timeout");
                debug!("TLS handshake timed out");
            }
        }
    }

    pub(crate) fn count_rejected(&self, reason: &'static str) {
        self.metrics
            .rejected
            .get_or_create(&vec![("reason", reason)])
            .inc();
    }

    /// Serves HTTP/1.1 on one accepted connection (TLS or not); upgrades go to [`ws`].
    async fn serve_io<I>(
        self: Arc<Self>,
        io: I,
        conn_info: Arc<ConnInfo>,
        cancel: CancellationToken,
        tracker: TaskTracker,
    ) where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let this = self.clone();
        let svc_cancel = cancel.clone();
        let info = conn_info.clone();
        let service = service_fn(move |req| {
            let this = this.clone();
            let cancel = svc_cancel.clone();
            let tracker = tracker.clone();
            let info = info.clone();
            async move {
                Ok::<_, std::convert::Infallible>(this.route(req, info, cancel, tracker).await)
            }
        });
        // Slow and idle clients are timed by the connection's activity, not by hyper's header
        // timeout, which would also close keep-alive pollers between their polls.
        let conn = hyper::server::conn::http1::Builder::new()
            .timer(hyper_util::rt::TokioTimer::new())
            .header_read_timeout(None)
            .serve_connection(TokioIo::new(io), service)
            .with_upgrades();
        tokio::pin!(conn);
        let retire = async {
            match conn_info.retire_at {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        let evicted = Slot::evicted(conn_info.slot.as_ref());
        let result = tokio::select! {
            r = conn.as_mut() => r,
            () = cancel.cancelled() => {
                conn.as_mut().graceful_shutdown();
                conn.await
            }
            () = retire => {
                conn.as_mut().graceful_shutdown();
                conn.await
            }
            () = evicted => {
                // Never authorised a request: closed to make room for one that will.
                self.count_rejected("evicted_pending");
                return;
            }
            expiry = conn_info.activity.expired() => match expiry {
                Expiry::Idle => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
                Expiry::SlowMessage => {
                    self.count_rejected("slow_request");
                    debug!("request not complete within the handshake timeout; closed");
                    return;
                }
            },
        };
        if let Err(e) = result {
            debug!(error = %e, "connection ended with an error");
        }
    }

    /// Where a request reached this gateway (`https://host:port`, from its Host header), for
    /// offers of the gateway's own endpoints; empty when the header is missing or odd.
    pub(crate) fn authority(&self, headers: &http::HeaderMap) -> String {
        let host = headers
            .get(http::header::HOST)
            .and_then(|h| h.to_str().ok())
            .filter(|h| {
                !h.is_empty()
                    && h.len() <= 255
                    && h.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b".-:[]_".contains(&b))
            });
        match host {
            Some(h) if self.cfg.tls.is_some() => format!("https://{h}"),
            Some(h) => format!("http://{h}"),
            None => String::new(),
        }
    }

    pub(crate) fn origin(
        &self,
        transport: Transport,
        conn: &ConnInfo,
        authority: String,
    ) -> Origin {
        Origin {
            authority,
            gateway_id: self.cfg.gateway_id.clone(),
            connection_id: self.next_connection.fetch_add(1, Ordering::Relaxed),
            transport: transport as i32,
            peer_addr: conn.peer.to_string(),
            client_cert_sha256: conn
                .cert
                .as_ref()
                .map(|c| c.sha256.clone())
                .unwrap_or_default(),
            client_cert_uids: conn
                .cert
                .as_ref()
                .map(|c| c.uids.iter().map(|u| u.as_bytes().to_vec()).collect())
                .unwrap_or_default(),
            identity: match self.cfg.identity {
                AgentIdentity::None => IdentityRule::None,
                AgentIdentity::UriSan => IdentityRule::UriSan,
                AgentIdentity::Registry => IdentityRule::Registry,
            } as i32,
        }
    }

    /// Sends one decoded-and-checked AgentToServer to its owner, retrying an owner that does not
    /// answer until the uplink deadline.
    pub(crate) async fn forward(
        &self,
        agent_to_server: &[u8],
        instance_uid: &[u8],
        origin: &Origin,
        heartbeats_answered_through: Option<u64>,
    ) -> Result<UplinkReply, BusError> {
        // Each message is a trace of its own (a session lasts for days).
        let span = traces::root(|| {
            debug_span!(
                parent: None,
                "opamp.message",
                otel.kind = "server",
                uid = %uid_text(instance_uid),
                transport = match origin.transport() {
                    Transport::Websocket => "websocket",
                    Transport::Http => "http",
                    _ => "unknown",
                },
                peer = %origin.peer_addr,
                gateway = %self.cfg.gateway_id,
            )
        });
        // Room first: a message waiting for it is held once (its frame), not copied yet.
        let Ok(room) = self.uplinks.acquire().await else {
            return Err(BusError::Closed);
        };
        let uplink = agent_uplink(origin, agent_to_server, heartbeats_answered_through);
        self.request_owner_in(instance_uid, uplink, origin.connection_id, Some(room))
            .instrument(span)
            .await
    }

    /// Sends `uplink` to the owner of `instance_uid`'s shard ([`Gateway::request_owner_in`]).
    pub(crate) async fn request_owner(
        &self,
        instance_uid: &[u8],
        uplink: Uplink,
    ) -> Result<UplinkReply, BusError> {
        let connection_id = uplink.origin.as_ref().map_or(0, |o| o.connection_id);
        let uplink = Bytes::from(uplink.encode_to_vec());
        self.request_owner_in(instance_uid, uplink, connection_id, None)
            .await
    }

    /// Sends `uplink` (an encoded [`Uplink`] from the connection `connection_id`, 0 for none) to
    /// the owner of `instance_uid`'s shard and returns its answer, asking again
    /// while the shard has no owner or the owner does not answer in time, within the uplink
    /// deadline; once, if the shard has had no owner for a while ([`Ownerless`]). With `room` (an
    /// agent's message, holding its room for the first attempt), each attempt holds room among
    /// [`MAX_UPLINKS_IN_FLIGHT`] and the waits between attempts hold none: a shard whose owner
    /// died has none until its lease runs out (up to the lease's TTL), and its agents' messages,
    /// asked again for seconds, took all the room and stopped every other agent's messages
    /// (measured at 100,000 agents: docs/benchmarks.md).
    async fn request_owner_in(
        &self,
        instance_uid: &[u8],
        uplink: Bytes,
        connection_id: u64,
        mut room: Option<tokio::sync::SemaphorePermit<'_>>,
    ) -> Result<UplinkReply, BusError> {
        let started = Instant::now();
        let shard = shard_of(instance_uid);
        let subject = self.subjects.uplink(shard);
        let span = traces::child(|| debug_span!("bus.request", otel.kind = "client", %subject));
        let msg = {
            let _entered = span.enter();
            BusMessage::new(subject, uplink)
                .with_header("Flotilla-Instance-Uid", uid_text(instance_uid))
                .with_header("Flotilla-Gateway", self.cfg.gateway_id.as_str())
                .with_header("Flotilla-Connection", connection_id.to_string())
                .with_trace_context()
        };
        let roomed = room.is_some();
        let (msg, timeout) = (&msg, self.cfg.uplink_timeout);
        let attempt = || {
            let held = room.take();
            async move {
                let _room = match held {
                    Some(held) => Some(held),
                    None if roomed => {
                        Some(self.uplinks.acquire().await.map_err(|_| BusError::Closed)?)
                    }
                    None => None,
                };
                if roomed {
                    self.metrics.uplinks_in_flight.inc();
                }
                let answer = self.bus.request(msg.clone(), timeout).await;
                if roomed {
                    self.metrics.uplinks_in_flight.dec();
                }
                match &answer {
                    Ok(_) => self.ownerless.served(shard),
                    Err(BusError::NoResponders(_)) => self.ownerless.missed(shard),
                    Err(_) => {}
                }
                answer
            }
        };
        let deadline = if self.ownerless.for_long(shard) {
            Duration::ZERO
        } else {
            self.cfg.uplink_deadline
        };
        let bytes = retry_request(deadline, attempt).instrument(span).await?;
        self.metrics
            .uplink_seconds
            .observe(started.elapsed().as_secs_f64());
        UplinkReply::decode(bytes).map_err(|_| BusError::Closed)
    }

    /// Tells the owner that a WebSocket carrying `instance_uid` closed.
    pub(crate) async fn connection_closed(&self, instance_uid: &[u8], origin: Origin) {
        let uplink = Uplink {
            origin: Some(origin),
            kind: Some(uplink::Kind::Closed(
                flotilla_proto::bus::ConnectionClosed {
                    instance_uid: instance_uid.to_vec(),
                },
            )),
            heartbeats_answered_through: None,
        };
        if let Err(e) = self.request_owner(instance_uid, uplink).await {
            debug!(error = %e, "disconnect not recorded; the agent will be found silent instead");
        }
    }

    /// Open WebSocket connections.
    pub fn connections(&self) -> usize {
        self.table.len()
    }
}

/// The encoded [`Uplink`] of an agent's message, as prost encodes it (the origin, field 1, the
/// message, field 2, then the last heartbeat answered, field 11), written without a copy of the
/// origin or of the message made for it.
fn agent_uplink(origin: &Origin, agent_to_server: &[u8], answered_through: Option<u64>) -> Bytes {
    use prost::encoding::{
        WireType, encode_key, encode_varint, encoded_len_varint, message, uint64,
    };
    let n = agent_to_server.len() as u64;
    let len = message::encoded_len(1, origin)
        + 1
        + encoded_len_varint(n)
        + agent_to_server.len()
        + answered_through.map_or(0, |seq| uint64::encoded_len(11, &seq));
    let mut bytes = Vec::with_capacity(len);
    message::encode(1, origin, &mut bytes);
    encode_key(2, WireType::LengthDelimited, &mut bytes);
    encode_varint(n, &mut bytes);
    bytes.extend_from_slice(agent_to_server);
    if let Some(seq) = answered_through {
        uint64::encode(11, &seq, &mut bytes);
    }
    bytes.into()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Written by hand, it is what prost writes for the same Uplink: a message of 300 bytes
    /// (a two-byte length), and an empty one too (a oneof's field is written when set); with the
    /// last heartbeat answered (0 too: an optional field is written when set) and without.
    #[test]
    fn an_agents_uplink_is_encoded_as_prost_encodes_it() {
        let origin = Origin {
            gateway_id: "gw-1".into(),
            connection_id: 300,
            transport: Transport::Websocket as i32,
            peer_addr: "127.0.0.1:5".into(),
            client_cert_sha256: vec![7; 32],
            identity: IdentityRule::UriSan as i32,
            client_cert_uids: vec![vec![1; 16]],
            authority: "https://opamp.example:4320".into(),
        };
        let messages = [vec![], vec![0x0a, 0x10, 1, 2, 3], vec![9; 300]];
        for (message, through) in messages.into_iter().zip([None, Some(0), Some(300)]) {
            let uplink = Uplink {
                origin: Some(origin.clone()),
                kind: Some(uplink::Kind::AgentToServer(message.clone())),
                heartbeats_answered_through: through,
            };
            let written = agent_uplink(&origin, &message, through);
            assert_eq!(written, uplink.encode_to_vec());
            assert_eq!(Uplink::decode(written).unwrap(), uplink);
        }
    }
}
