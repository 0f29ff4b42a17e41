//! The WebSocket transport: the upgrade, and one session per agent connection. A session reads
//! one message at a time and forwards it to the owner before reading the next, so an agent's
//! messages reach its owner in order; pushes for the connection are written in between. A
//! connection may carry several agents (a proxy, a uid assigned mid-session): all of them are
//! recorded as disconnected when it closes.

use crate::gateway::Gateway;
use crate::guard::ConnInfo;
use crate::heartbeats::Grant;
use crate::http::{HttpResponse, header_has, text};
use crate::table::{Bind, MAX_AGENTS_PER_CONNECTION};
use flotilla_common::codec::{decode_ws_frame, encode_ws_frame};
use flotilla_common::error::{ErrorKind, opamp_error_reply};
use flotilla_common::names::uid_text;
use flotilla_common::telemetry::traces;
use flotilla_proto::bus::Transport;
use flotilla_proto::opamp::AgentToServer;
use futures_util::{SinkExt, StreamExt};
use http::header::{
    CONNECTION, SEC_WEBSOCKET_ACCEPT, SEC_WEBSOCKET_KEY, SEC_WEBSOCKET_VERSION, UPGRADE,
};
use http::{HeaderValue, Request, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use prost::Message as _;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Error as WsError, Message, handshake::derive_accept_key};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, debug, debug_span};

/// The bytes an agent's WebSocket reads at a time, and keeps for its life: 2 KiB rather than 4
/// (measured in docs/benchmarks.md: with mutual TLS, where rustls keeps a 4 KiB buffer of its own,
/// a gateway kept 19.9 KiB per agent with 4).
const READ_BUFFER: usize = 2048;
/// Pushes queued per connection before further ones are dropped (desired state is re-sent).
const PUSH_QUEUE: usize = 8;
/// Messages over the rate limit in a row before the connection is closed.
const RATE_STRIKES: u32 = 10;

/// What to do after answering one message.
pub(crate) enum Next {
    Reply(Vec<u8>),
    /// Send this, then close: the agent may not speak for the uid it claimed.
    ReplyAndClose(Vec<u8>, &'static str),
}

impl Gateway {
    pub(crate) fn upgrade(
        self: Arc<Self>,
        req: Request<Incoming>,
        conn: Arc<ConnInfo>,
        cancel: CancellationToken,
        tracker: TaskTracker,
    ) -> HttpResponse {
        let key = req
            .headers()
            .get(SEC_WEBSOCKET_KEY)
            .map(|k| k.as_bytes().to_vec());
        let is_upgrade = header_has(req.headers(), UPGRADE, "websocket")
            && header_has(req.headers(), CONNECTION, "upgrade");
        let (Some(key), true) = (key, is_upgrade) else {
            return self.reject(
                "not_opamp",
                text(StatusCode::BAD_REQUEST, "expected a WebSocket upgrade, or a POST with Content-Type: application/x-protobuf"),
            );
        };
        if req
            .headers()
            .get(SEC_WEBSOCKET_VERSION)
            .is_none_or(|v| v != "13")
        {
            let mut r = text(
                StatusCode::UPGRADE_REQUIRED,
                "WebSocket version 13 is required",
            );
            r.headers_mut()
                .insert(SEC_WEBSOCKET_VERSION, HeaderValue::from_static("13"));
            return r;
        }
        let accept = derive_accept_key(&key);
        let authority = self.authority(req.headers());
        let this = self.clone();
        let peer = conn.peer;
        tracker.spawn(
            async move {
                match hyper::upgrade::on(req).await {
                    Ok(upgraded) => {
                        let ws = WebSocketStream::from_raw_socket(
                            TokioIo::new(upgraded),
                            Role::Server,
                            Some(this.ws_config()),
                        )
                        .await;
                        this.session(ws, conn, authority, cancel).await;
                    }
                    Err(e) => debug!(error = %e, "upgrade failed"),
                }
            }
            .instrument(debug_span!("ws", %peer)),
        );
        http::Response::builder()
            .status(StatusCode::SWITCHING_PROTOCOLS)
            .header(UPGRADE, "websocket")
            .header(CONNECTION, "Upgrade")
            .header(SEC_WEBSOCKET_ACCEPT, accept)
            .body(Default::default())
            .unwrap_or_else(|_| text(StatusCode::INTERNAL_SERVER_ERROR, "upgrade failed"))
    }

    fn ws_config(&self) -> WebSocketConfig {
        websocket_config(self.cfg.max_message_size)
    }

    async fn session<S>(
        self: Arc<Self>,
        mut ws: WebSocketStream<S>,
        conn: Arc<ConnInfo>,
        authority: String,
        cancel: CancellationToken,
    ) where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    {
        let origin = self.origin(Transport::Websocket, &conn, authority);
        // A trace of its own, as long as the connection, never entered: each message is a trace
        // of its own too.
        let session = traces::root(|| {
            debug_span!(
                parent: None,
                "opamp.session",
                otel.kind = "server",
                transport = "websocket",
                peer = %conn.peer,
                gateway = %self.cfg.gateway_id,
                uid = tracing::field::Empty,
            )
        });
        // An agent that upgrades and then says nothing is holding a slot for free.
        let first_message_by = tokio::time::Instant::now() + self.cfg.limits.handshake_timeout;
        let retire = async {
            match conn.retire_at {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(retire);
        let mut strikes = 0;
        let (tx, mut pushes) = mpsc::channel(PUSH_QUEUE);
        self.table.insert(origin.connection_id, tx);
        self.metrics.connections.inc();
        // Whether an agent has spoken on the connection yet (the agents themselves are in the
        // connection table).
        let mut spoken = false;
        // The owner's leave to answer an agent's heartbeats here (crate::heartbeats).
        let mut grant: Option<Grant> = None;
        // A WebSocket may idle between heartbeats; only a message left half-sent is timed.
        conn.activity.set_idle(None);
        let count = |dir| {
            self.metrics
                .messages
                .get_or_create(&vec![("transport", "websocket"), ("direction", dir)])
                .clone()
        };
        let (count_in, count_out) = (count("in"), count("out"));
        // Made once, not for every message: waiting on a token or a notification registers
        // with it (under its lock), and stops waiting when the wait is dropped.
        let cancelled = cancel.cancelled();
        let expired = conn.activity.expired();
        let first_message = tokio::time::sleep_until(first_message_by);
        tokio::pin!(cancelled, expired, first_message);

        let close: Option<CloseFrame> = loop {
            let reply = tokio::select! {
                () = &mut cancelled => break Some(close_frame(CloseCode::Away, "server shutting down")),
                () = &mut retire => {
                    self.count_rejected("connection_age");
                    break Some(close_frame(CloseCode::Away, "connection age limit; reconnect"));
                }
                () = &mut first_message, if !spoken => {
                    self.count_rejected("first_message_timeout");
                    break Some(close_frame(CloseCode::Policy, "no OpAMP message in time"));
                }
                _ = &mut expired => {
                    // A message begun and not finished: its bytes sit in memory until it is.
                    self.count_rejected("slow_message");
                    break Some(close_frame(CloseCode::Policy, "message not completed in time"));
                }
                Some(push) = pushes.recv() => {
                    if push.is_empty() {
                        // Not for the agent: its owner wants its next heartbeat.
                        if let Some(g) = grant.as_mut() {
                            g.end();
                        }
                        continue;
                    }
                    push
                }
                frame = ws.next() => match frame.inspect(|f| if f.is_ok() { conn.activity.settled() }) {
                    Some(Ok(Message::Binary(data))) => {
                        count_in.inc();
                        if conn.limiter.check().is_err() {
                            self.count_rejected("rate_limited");
                            strikes += 1;
                            if strikes >= RATE_STRIKES {
                                break Some(close_frame(CloseCode::Policy, "message rate limit"));
                            }
                            opamp_error_reply(
                                Vec::new(),
                                ErrorKind::Unavailable,
                                "too many messages on this connection; slow down".into(),
                                Some(Duration::from_secs(1)),
                            )
                        } else {
                            strikes = 0;
                            if !spoken && !session.is_disabled() {
                                session.record("uid", first_uid(&data));
                            }
                            match self.ws_message(&data, &conn, &origin, &mut spoken, &mut grant).await {
                                Next::Reply(reply) => reply,
                                Next::ReplyAndClose(reply, why) => {
                                    let _ = ws.send(Message::Binary(encode_ws_frame(&reply).into())).await;
                                    break Some(close_frame(CloseCode::Policy, why));
                                }
                            }
                        }
                    }
                    Some(Ok(Message::Text(_))) => {
                        // Not an OpAMP message; opamp-go's server also just reads on.
                        self.count_rejected("text_frame");
                        continue;
                    }
                    Some(Ok(Message::Close(_))) | None => break None,
                    Some(Ok(_)) => continue, // ping/pong are answered by tungstenite
                    Some(Err(WsError::Capacity(e))) => {
                        self.count_rejected("too_large");
                        debug!(error = %e, "message too big");
                        let code = ErrorKind::PayloadTooLarge.ws_close_code();
                        break Some(close_frame(CloseCode::from(code), "message too big"));
                    }
                    Some(Err(e)) => {
                        debug!(error = %e, "connection lost");
                        break None;
                    }
                },
            };
            if let Err(e) = ws
                .send(Message::Binary(encode_ws_frame(&reply).into()))
                .await
            {
                debug!(error = %e, "write failed");
                break None;
            }
            count_out.inc();
        };

        if let Some(frame) = close {
            let _ = ws.send(Message::Close(Some(frame))).await;
        }
        let _ = tokio::time::timeout(Duration::from_secs(1), SinkExt::close(&mut ws)).await;
        let agents = self.table.remove(origin.connection_id);
        self.metrics.connections.dec();
        for uid in agents {
            self.connection_closed(&uid, origin.clone()).await;
        }
    }

    /// Handles one binary message: what to write back.
    async fn ws_message(
        &self,
        data: &[u8],
        conn: &ConnInfo,
        origin: &flotilla_proto::bus::Origin,
        spoken: &mut bool,
        grant: &mut Option<Grant>,
    ) -> Next {
        let payload = decode_ws_frame(data);
        // Decoded to check it and learn its uid; only the uid is kept while the owner works (a
        // full report is tens of KB, and a busy cluster keeps many waiting).
        let mut msg = match AgentToServer::decode(payload) {
            Ok(m) => m,
            Err(e) => {
                self.count_rejected("bad_request");
                return Next::Reply(opamp_error_reply(
                    Vec::new(),
                    ErrorKind::BadRequest,
                    format!("malformed AgentToServer: {e}"),
                    None,
                ));
            }
        };
        let uid = &msg.instance_uid;
        if let Err(why) = conn.may_speak_for(self.cfg.identity, uid) {
            self.count_rejected("identity");
            self.refuse_certificate(conn);
            let reply = opamp_error_reply(uid.clone(), ErrorKind::BadRequest, why, None);
            return Next::ReplyAndClose(reply, "certificate does not name this instance_uid");
        }
        if self.table.bind(origin.connection_id, uid) == Bind::Full {
            self.count_rejected("too_many_agents");
            let why = format!(
                "one connection may speak for at most {MAX_AGENTS_PER_CONNECTION} agents; \
                 open another connection"
            );
            let reply = opamp_error_reply(uid.clone(), ErrorKind::BadRequest, why, None);
            return Next::Reply(reply);
        }
        *spoken = true;
        if let Some(reply) = grant
            .as_mut()
            .and_then(|g| self.answer_heartbeat(g, &msg, origin.connection_id))
        {
            return Next::Reply(reply);
        }
        let uid = std::mem::take(&mut msg.instance_uid);
        drop(msg);
        let through = Grant::answered_through(grant.take(), &uid);
        // Read before the owner answers: an end of all grants meanwhile voids this one.
        let epoch = self.grant_epoch();
        match self.forward(payload, &uid, origin, through).await {
            Ok(reply) if reply.close_connection => {
                self.count_rejected("identity");
                self.refuse_certificate(conn);
                // Not this connection's agent: its close must not be recorded as the agent's
                // disconnect.
                self.table.unbind(origin.connection_id, &uid);
                Next::ReplyAndClose(reply.server_to_agent, "certificate not bound to this agent")
            }
            Ok(reply) => {
                if !reply.new_instance_uid.is_empty() {
                    // Past the cap the new uid is not bound: its first message is refused.
                    self.table
                        .bind(origin.connection_id, &reply.new_instance_uid);
                }
                *grant = Grant::of(&uid, &reply, epoch);
                Next::Reply(reply.server_to_agent)
            }
            Err(e) => {
                debug!(error = %e, "no owner answered");
                self.count_rejected("unavailable");
                let text = format!("no server could take this agent's message ({e}); retry later");
                Next::Reply(opamp_error_reply(
                    uid,
                    ErrorKind::Unavailable,
                    text,
                    Some(self.cfg.retry_after),
                ))
            }
        }
    }
}

/// An agent's WebSocket, as the gateway sets it. Small buffers: tungstenite's 128 KiB default
/// read buffer alone would cost more per idle agent than the whole budget, and an idle agent's
/// heartbeat is tens of bytes. Messages larger than the buffer are still read, in pieces; and the
/// buffers a large message grew are given back (the patched tungstenite of vendor/README.md), so
/// a connection whose agent sent a full report of tens of KB once does not keep that much for
/// its life.
pub fn websocket_config(max_message_size: usize) -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(0)
        .max_message_size(Some(max_message_size))
        .max_frame_size(Some(max_message_size))
}

/// The instance uid of a session's first message, for its span (none if it does not decode).
fn first_uid(frame: &[u8]) -> String {
    AgentToServer::decode(decode_ws_frame(frame))
        .map(|m| uid_text(&m.instance_uid))
        .unwrap_or_default()
}

fn close_frame(code: CloseCode, reason: &'static str) -> CloseFrame {
    CloseFrame {
        code,
        reason: reason.into(),
    }
}
