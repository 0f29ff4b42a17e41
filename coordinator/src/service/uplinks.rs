//! The owner's side of the bus: every uplink for an owned shard (an agent's message, a closed
//! connection, an operation on one agent) handled in order per shard under the shard's lock and
//! fence. An agent's message goes through the OpAMP state machine ([`crate::opamp::process`]),
//! and its record is saved before the reply goes out.

use super::millis;
use super::owner::Owner;
use super::records::Locked;
use crate::fleet::agents::uid_of;
use crate::fleet::configs::Desired;
use crate::opamp::desired::MayOfferConfig;
use crate::opamp::identity::{check_identity, record_certificate};
use crate::opamp::{Ctx, EventKind, process};
use crate::ops::audit;
use flotilla_common::bus::{Incoming, Subscription};
use flotilla_common::error::{ErrorKind, opamp_error_reply};
use flotilla_common::names::{shard_of, uid_text};
use flotilla_common::store::{AuditEntry, Deadline, StoreError};
use flotilla_common::telemetry::now_unix_ms;
use flotilla_common::telemetry::traces;
use flotilla_proto::bus::{AgentRecord, AgentStatus, Origin, Uplink, UplinkReply, uplink};
use flotilla_proto::opamp::{AgentToServer, ServerCapabilities, ServerToAgent};
use futures_util::FutureExt;
use prost::Message;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::field::Empty;
use tracing::{Instrument, Span, debug_span, error, info, warn};
use uuid::Uuid;

impl Owner {
    /// Handles the messages of `uplinks` (one shard's subject, or all of them) until it ends or
    /// `stop`; then drains it: stops taking new ones, handles those already on their way, and
    /// returns when every one is answered. What a graceful handoff waits for.
    pub(crate) async fn serve(self: Arc<Self>, mut uplinks: Subscription, stop: CancellationToken) {
        let tracker = TaskTracker::new();
        // Waits for room among the messages in flight: past the bound, messages stay with the
        // bus (and the gateways) rather than piling up here.
        let spawn = async |incoming: Incoming| {
            let Ok(permit) = self.pusher.room().clone().acquire_owned().await else {
                return;
            };
            let this = self.clone();
            this.metrics.uplinks_in_flight.inc();
            // Boxed: the handling is a large future, moved once into its box rather than
            // copied along the spawn's calls (3.8% of a standalone server's samples).
            tracker.spawn(
                Box::pin(async move {
                    this.handle_uplink(incoming).await;
                    this.metrics.uplinks_in_flight.dec();
                    drop(permit);
                })
                .in_current_span(),
            );
        };
        loop {
            tokio::select! {
                incoming = uplinks.next() => match incoming {
                    Some(i) => spawn(i).await,
                    None => break,
                },
                () = stop.cancelled() => {
                    uplinks.drain().await;
                    while let Some(i) = uplinks.next().await {
                        spawn(i).await;
                    }
                    break;
                }
            }
        }
        tracker.close();
        tracker.wait().await;
    }

    async fn handle_uplink(&self, incoming: Incoming) {
        let Some(reply) = incoming.reply else { return };
        // Continues the gateway's trace of this message; the outcome is the uplinks metric's result.
        let span = traces::continued(&incoming.msg, || {
            debug_span!(
                parent: None,
                "opamp.process",
                otel.kind = "server",
                shard = Empty,
                epoch = Empty,
                outcome = Empty,
            )
        });
        let answer = async {
            match Uplink::decode(incoming.msg.payload) {
                Ok(Uplink {
                    origin: Some(origin),
                    kind: Some(uplink::Kind::AgentToServer(bytes)),
                    heartbeats_answered_through,
                }) => {
                    self.agent_message_guarded(&bytes, origin, heartbeats_answered_through)
                        .await
                }
                Ok(Uplink {
                    origin: Some(origin),
                    kind: Some(uplink::Kind::Closed(c)),
                    ..
                }) => self
                    .connection_closed(&c.instance_uid, &origin)
                    .await
                    .then(UplinkReply::default),
                Ok(Uplink {
                    kind: Some(uplink::Kind::Restart(r)),
                    ..
                }) => self.restart_here(&r).await.map(|result| UplinkReply {
                    restart: result as i32,
                    ..Default::default()
                }),
                Ok(Uplink {
                    kind: Some(uplink::Kind::SetLabels(l)),
                    ..
                }) => self.labels_here(l).await.map(|labels| UplinkReply {
                    labels: Some(labels),
                    ..Default::default()
                }),
                Ok(Uplink {
                    kind: Some(uplink::Kind::IssueCertificate(c)),
                    ..
                }) => self.issue_here(&c).await.map(|issued| UplinkReply {
                    issued: Some(issued),
                    ..Default::default()
                }),
                Ok(Uplink {
                    kind: Some(uplink::Kind::DeleteAgent(d)),
                    ..
                }) => self.delete_here(&d).await.map(|deleted| UplinkReply {
                    deleted: Some(deleted),
                    ..Default::default()
                }),
                Ok(Uplink {
                    kind: Some(uplink::Kind::SendCustomMessage(m)),
                    ..
                }) => self.custom_message_here(m).await.map(|sent| UplinkReply {
                    custom_message: Some(sent),
                    ..Default::default()
                }),
                Ok(Uplink {
                    kind: Some(uplink::Kind::OwnMetrics(batch)),
                    ..
                }) => self.own_metrics_here(batch).await,
                _ => {
                    warn!("dropping a malformed bus uplink envelope");
                    Some(UplinkReply::default())
                }
            }
        }
        .instrument(span)
        .await;
        // None: this process does not own the shard (any more); the owner answers instead, or the
        // gateway retries until one does.
        if let Some(answer) = answer {
            // The gateway may have given up waiting; nothing to do then.
            let _ = reply.send(answer.encode_to_vec().into()).await;
        }
    }

    /// [`Owner::agent_message`], answering the agent with an error should processing panic (a
    /// bug), instead of leaving it without an answer until its gateway gives up.
    async fn agent_message_guarded(
        &self,
        bytes: &[u8],
        origin: Origin,
        heartbeats_answered_through: Option<u64>,
    ) -> Option<UplinkReply> {
        match AssertUnwindSafe(self.agent_message(bytes, origin, heartbeats_answered_through))
            .catch_unwind()
            .await
        {
            Ok(answer) => answer,
            Err(_) => {
                error!(
                    "processing an agent message panicked; the agent was answered with an error"
                );
                self.count_uplink("internal_error");
                let uid = AgentToServer::decode(bytes)
                    .map(|m| m.instance_uid)
                    .unwrap_or_default();
                let why = "the server failed to process this message".to_owned();
                Some(reply_of(opamp_error_reply(
                    uid,
                    ErrorKind::Internal,
                    why,
                    None,
                )))
            }
        }
    }

    pub(super) fn count_uplink(&self, result: &'static str) {
        Span::current().record("outcome", result);
        self.metrics
            .uplinks
            .get_or_create(&vec![("result", result)])
            .inc();
    }

    /// [`Owner::lock_owned`] for a message to the shard's owner: counted as not ours if this
    /// process may not act on it.
    pub(crate) async fn lock_for_uplink(&self, shard: u16) -> Option<Locked<'_>> {
        let locked = self.lock_owned(shard).await;
        if locked.is_none() {
            self.count_uplink("not_owner");
        }
        locked
    }

    /// A write was refused because another coordinator took the shard: stop acting on it.
    pub(super) fn fenced(&self, shard: u16) {
        warn!(
            shard,
            "shard taken over by another coordinator; dropping it"
        );
        self.shards.drop_shard(shard);
        self.count_uplink("fenced");
    }

    /// Processes one encoded AgentToServer and returns the encoded ServerToAgent reply; None if
    /// this process does not own the agent's shard. `heartbeats_answered_through`: as
    /// [`Ctx::heartbeats_answered_through`].
    pub(crate) async fn agent_message(
        &self,
        bytes: &[u8],
        origin: Origin,
        heartbeats_answered_through: Option<u64>,
    ) -> Option<UplinkReply> {
        let started = Instant::now();
        let msg = match AgentToServer::decode(bytes) {
            Ok(m) => m,
            Err(e) => {
                self.count_uplink("bad_request");
                let msg = format!("malformed AgentToServer: {e}");
                return Some(reply_of(opamp_error_reply(
                    Vec::new(),
                    ErrorKind::BadRequest,
                    msg,
                    None,
                )));
            }
        };
        let uid_sent = msg.instance_uid.clone();
        self.pusher.awaiting().heard(&msg);
        let mut shard = self.lock_for_uplink(shard_of(&msg.instance_uid)).await?;
        let stored = match Uuid::from_slice(&msg.instance_uid) {
            Ok(uid) => shard.get_for_message(uid).await,
            Err(_) => Ok(None),
        };
        let stored = match stored {
            Ok(s) => s,
            Err(e) => return Some(self.store_failed(uid_sent, &e)),
        };
        if let Err(why) = check_identity(stored.as_ref(), &origin, &uid_sent) {
            self.count_uplink("identity");
            self.metrics.refusal_log.warn(|suppressed| {
                warn!(uid = %uid_text(&uid_sent), peer = %origin.peer_addr, %why, suppressed, "refused an agent's certificate");
            });
            return Some(UplinkReply {
                server_to_agent: opamp_error_reply(uid_sent, ErrorKind::BadRequest, why, None),
                close_connection: true,
                ..Default::default()
            });
        }
        let csr = msg
            .connection_settings_request
            .as_ref()
            .and_then(|r| r.opamp.as_ref()?.certificate_request.as_ref())
            .map(|c| c.csr.clone());
        let desired = self.desired.current();
        let awaiting = self.pusher.awaiting();
        let may_offer = |uid: &[u8], hash: &[u8]| awaiting.may_offer(uid, hash);
        let ctx = Ctx {
            hold_restart: csr.is_some(),
            heartbeats_answered_through,
            ..self.message_ctx(&desired, &may_offer)
        };
        let origin_seen = origin.clone();
        let mut out = process::process(stored, msg, origin, &ctx);
        self.add_own_capabilities(&mut out.reply);
        let mut audit = None;
        if let (Some(marker), Some(rec)) = (out.left_behind.as_ref(), out.record.as_ref()) {
            // The moved record is written with its audit entry (durable before the reply names
            // the new uid); the CSR, if any, waits for a message under the new uid.
            audit = moved_entry(&marker.instance_uid, rec);
        } else if let Some(rec) = out.record.as_mut() {
            record_certificate(rec, &origin_seen);
            if let Some(csr) = csr {
                match self.sign_csr(&csr, rec) {
                    Ok((offer, entry)) => {
                        out.reply.connection_settings = Some(offer);
                        audit = Some(entry);
                    }
                    Err(why) => out.answer_with_error(ErrorKind::BadRequest, why),
                }
            }
        }
        if let Some(config_bytes) = out.fit(self.cfg.max_message_size) {
            self.count_uplink("config_too_large");
            error!(
                config_bytes,
                max = self.cfg.max_message_size,
                "a config is too large to reach its agents; store a smaller version"
            );
        }
        let heartbeat_grant = process::heartbeat_grant(&out, ctx.now_unix_ms, &self.cfg.node_id);
        let Some(rec) = out.record.take() else {
            // Nothing to store: a uid was assigned (it becomes a record when the agent uses it),
            // or the report was refused.
            self.count_uplink(if out.reply.error_response.is_some() {
                "refused"
            } else {
                "uid_assigned"
            });
            return Some(UplinkReply {
                new_instance_uid: assigned_uid(&out.reply),
                server_to_agent: out.reply.encode_to_vec(),
                poll_interval_ms: millis(out.interval),
                ..Default::default()
            });
        };
        // Made now: the record becomes the owner's copy as it is saved.
        let events: Vec<_> = out
            .events
            .iter()
            .map(|kind| self.events.message(*kind, &rec))
            .collect();
        match self
            .save_owned_or_drop(&mut shard, rec, out.deadline, audit.as_ref())
            .await
        {
            Ok(true) => {}
            Ok(false) => return None,
            Err(e) => return Some(self.store_failed(uid_sent, &e)),
        }
        // The agent's record is safe under its new uid: what is left under the old one is a
        // marker (answering a retry with the same new uid), removed when the new uid is used. A
        // failure here leaves a duplicate for retention to remove, never a lost record.
        if let Some(marker) = &mut out.left_behind
            && let Err(e) = shard.save(marker, Deadline::Clear, None).await
        {
            warn!(error = %e, "the record under an agent's old uid stays as it was");
        }
        if let Some(old) = out.forget
            && let Err(e) = shard.delete(old, None).await
        {
            warn!(error = %e, %old, "the marker under an agent's old uid stays");
        }
        for event in events {
            self.events.publish(event).await;
        }
        self.count_uplink("ok");
        self.metrics
            .uplink_seconds
            .observe(started.elapsed().as_secs_f64());
        Some(UplinkReply {
            new_instance_uid: assigned_uid(&out.reply),
            server_to_agent: out.reply.encode_to_vec(),
            poll_interval_ms: millis(out.interval),
            heartbeat_grant,
            ..Default::default()
        })
    }

    /// The capabilities of this server beyond [`crate::opamp::SERVER_CAPABILITIES`]: CSRs are
    /// taken when it has an issuer.
    pub(super) fn add_own_capabilities(&self, reply: &mut ServerToAgent) {
        if self.cfg.issuer.is_some() {
            reply.capabilities |= ServerCapabilities::AcceptsConnectionSettingsRequest as u64;
        }
    }

    /// The context an agent's message is processed in (no restart held, no heartbeats answered
    /// by the gateway), with `may_offer_config` deciding config offers.
    pub(super) fn message_ctx<'a>(
        &'a self,
        desired: &'a Desired,
        may_offer_config: &'a MayOfferConfig<'a>,
    ) -> Ctx<'a> {
        Ctx {
            now_unix_ms: now_unix_ms(),
            heartbeat_interval: self.cfg.heartbeat_interval,
            desired,
            limits: &self.cfg.limits,
            hold_restart: false,
            agent_metrics: &self.cfg.agent_metrics,
            region: &self.cfg.region,
            regions: &self.cfg.regions,
            server_ca_pem: self
                .cfg
                .issuer
                .as_ref()
                .and_then(|i| i.server_ca_pem.as_deref()),
            may_offer_config,
            heartbeats_answered_through: None,
        }
    }

    /// The answer while the agent's state cannot be read or written: UNAVAILABLE with a retry
    /// time (HTTP agents get 503 with Retry-After from the gateway).
    fn store_failed(&self, uid: Vec<u8>, e: &StoreError) -> UplinkReply {
        self.metrics.store_log.warn(|suppressed| {
            warn!(error = %e, suppressed, "agent state unavailable");
        });
        self.count_uplink("unavailable");
        // Agents retry soon: a store hiccup is usually over in seconds.
        let retry = Duration::from_secs(5);
        UplinkReply {
            server_to_agent: opamp_error_reply(
                uid,
                ErrorKind::Unavailable,
                "agent state temporarily unavailable".into(),
                Some(retry),
            ),
            retry_after_ms: millis(retry),
            ..Default::default()
        }
    }

    /// A gateway saw the agent's WebSocket close. Ignored if the agent has moved to another
    /// connection since (a late close must not mark a reconnected agent disconnected). False if
    /// this process does not own the agent's shard.
    async fn connection_closed(&self, uid_bytes: &[u8], origin: &Origin) -> bool {
        let Ok(uid) = Uuid::from_slice(uid_bytes) else {
            return true;
        };
        self.pusher.awaiting().gone(uid);
        let Some(mut shard) = self.lock_for_uplink(shard_of(uid_bytes)).await else {
            return false;
        };
        // In the copy's form: only the status and connection change, nothing is decoded.
        let Ok(Some(mut rec)) = shard.get_for_message(uid).await else {
            return true;
        };
        if rec.status != AgentStatus::Connected as i32 || rec.origin.as_ref() != Some(origin) {
            return true;
        }
        rec.status = AgentStatus::Disconnected as i32;
        rec.origin = None;
        match self
            .save_or_drop(&mut shard, &mut rec, Deadline::Clear, None)
            .await
        {
            Ok(true) => self.events.emit(EventKind::Disconnected, &rec).await,
            Ok(false) => return false,
            Err(e) => warn!(error = %e, %uid, "could not record a disconnect"),
        }
        true
    }
}

/// The audit entry of an agent's record moving from uid `old` to `rec`'s (it asked for a new one).
fn moved_entry(old: &[u8], rec: &AgentRecord) -> Option<AuditEntry> {
    let (old, new) = (Uuid::from_slice(old).ok()?, uid_of(rec)?);
    info!(%old, %new, "agent took a new instance uid; its record moves with it");
    Some(audit::entry(
        &format!("agent/{old}"),
        "agent.new_uid",
        format!("agent/{old}"),
        Some(serde_json::json!({ "instance_uid": old.to_string() })),
        Some(serde_json::json!({ "instance_uid": new.to_string() })),
    ))
}

/// The uid a reply gives the agent (AgentIdentification), for the gateway to re-bind the
/// connection to; empty when none.
fn assigned_uid(reply: &ServerToAgent) -> Vec<u8> {
    reply
        .agent_identification
        .as_ref()
        .map(|a| a.new_instance_uid.clone())
        .unwrap_or_default()
}

fn reply_of(server_to_agent: Vec<u8>) -> UplinkReply {
    UplinkReply {
        server_to_agent,
        ..Default::default()
    }
}
