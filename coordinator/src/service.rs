//! The coordinator as a running service: takes agent messages off the bus in order per shard,
//! keeps agent records in the store, pushes desired state to connected agents through their
//! gateway, sweeps silence deadlines, and carries out admin operations.
//!
//! It acts only on shards it holds ([`ShardTable`]): all of them in the embedded mode, those its
//! leases cover in a cluster ([`crate::cluster`]). Every store write carries the shard's fence.

use crate::agent::{self, Ctx, Deadline, EventKind, Outcome, has};
use crate::certs::{self, Issuer};
use crate::configs::{self, Desired};
use crate::duties::{DutyHealth, supervise};
use crate::metrics::Metrics;
use crate::shards::ShardTable;
use flotilla_common::bus::{Bus, BusError, BusMessage, Incoming, Subscription, request_with_retry};
use flotilla_common::config::RecordLimits;
use flotilla_common::error::{ErrorKind, opamp_error_reply};
use flotilla_common::names::{Subjects, shard_of};
use flotilla_common::store::{AuditEntry, Fence, Store, StoreError};
use flotilla_common::telemetry::now_unix_ms;
use flotilla_proto::bus::{
    AgentRecord, AgentStatus, DeleteAgent, DeleteResult, Downlink, DownlinkAck, Origin,
    RestartAgent, RestartResult, Transport, Uplink, UplinkReply, uplink,
};
use flotilla_proto::opamp::{
    AgentCapabilities as Cap, AgentToServer, CommandType, ServerCapabilities, ServerToAgent,
    ServerToAgentCommand,
};
use futures_util::future::BoxFuture;
use futures_util::{FutureExt, StreamExt};
use prometheus_client::registry::Registry;
use prost::Message;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};
use thiserror::Error;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, debug, debug_span, error, info, warn};
use uuid::Uuid;

#[derive(Debug, Clone)]
pub struct CoordinatorConfig {
    pub region: String,
    pub node_id: String,
    pub heartbeat_interval: Duration,
    /// How long a queued restart waits for its agent.
    pub restart_ttl: Duration,
    /// How long a push waits for the gateway's acknowledgement.
    pub push_timeout: Duration,
    /// How long an admin request keeps looking for the owner of an agent's shard.
    pub owner_deadline: Duration,
    /// The CA agents' certificates are issued with (CSR flow and offers); none: not offered.
    pub issuer: Option<Arc<Issuer>>,
    /// Hides secrets in the effective configs the API shows.
    pub redactor: crate::redact::Redactor,
    /// How much one agent's record may hold.
    pub limits: RecordLimits,
    /// Agents disconnected (or silent) for longer than this are removed.
    pub agent_retention: Duration,
    /// Largest ServerToAgent that can reach an agent (in a cluster, what the bus carries): no
    /// config is accepted whose offer would be larger.
    pub max_message_size: usize,
}

impl CoordinatorConfig {
    pub fn new(region: &str, node_id: &str, heartbeat_interval: Duration) -> Self {
        Self {
            region: region.into(),
            node_id: node_id.into(),
            heartbeat_interval,
            restart_ttl: Duration::from_secs(600),
            push_timeout: Duration::from_secs(2),
            owner_deadline: Duration::from_secs(5),
            issuer: None,
            redactor: crate::redact::Redactor::default(),
            limits: RecordLimits::default(),
            agent_retention: Duration::from_secs(30 * 24 * 3600),
            max_message_size: 64 << 20,
        }
    }
}

/// Errors of admin operations; `kind()` gives the HTTP status.
#[derive(Debug, Error)]
pub enum ServiceError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Unavailable(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl ServiceError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::BadRequest(_) => ErrorKind::BadRequest,
            Self::NotFound(_) => ErrorKind::NotFound,
            Self::Conflict(_) => ErrorKind::Conflict,
            Self::Unavailable(_) => ErrorKind::Unavailable,
            // A store that cannot be reached or written (Redis down, a full disk) is a condition
            // to retry; data the store cannot read back is a fault.
            Self::Store(StoreError::Io(_) | StoreError::Fenced { .. }) => ErrorKind::Unavailable,
            Self::Store(StoreError::Corrupt(_)) => ErrorKind::Internal,
        }
    }
}

/// What a restart request did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestartOutcome {
    /// Sent to the agent's live WebSocket connection.
    Delivered,
    /// Kept until the agent's next message (HTTP poll or reconnect), for the restart TTL.
    Queued,
}

pub struct Coordinator {
    cfg: CoordinatorConfig,
    pub(crate) bus: Arc<dyn Bus>,
    store: Arc<dyn Store>,
    pub(crate) subjects: Subjects,
    /// The active configs and rollouts agents are resolved against.
    desired: RwLock<Arc<Desired>>,
    /// The shards this process may act on; their locks serialize work on one shard's agents.
    pub(crate) shards: ShardTable,
    pub(crate) metrics: Metrics,
    duty_health: DutyHealth,
}

impl Coordinator {
    /// `shards`: [`ShardTable::all`] for the embedded mode, [`ShardTable::none`] in a cluster
    /// (where [`crate::cluster::LeaseKeeper`] fills it).
    pub async fn new(
        cfg: CoordinatorConfig,
        bus: Arc<dyn Bus>,
        store: Arc<dyn Store>,
        shards: ShardTable,
        registry: &mut Registry,
    ) -> Result<Arc<Self>, StoreError> {
        let desired = crate::rollouts::load_desired(store.as_ref()).await?;
        Ok(Arc::new(Self {
            subjects: Subjects::new(&cfg.region),
            cfg,
            bus,
            store,
            desired: RwLock::new(Arc::new(desired)),
            shards,
            metrics: Metrics::new(registry),
            duty_health: DutyHealth::default(),
        }))
    }

    /// Whether the background duties run well (for `/readyz`).
    pub fn duty_health(&self) -> DutyHealth {
        self.duty_health.clone()
    }

    /// The embedded mode: serves every shard's agent messages and runs the background duties
    /// until `cancel`; then finishes the messages already taken.
    pub async fn run(self: Arc<Self>, cancel: CancellationToken) -> Result<(), BusError> {
        let uplinks = self.bus.subscribe(&self.subjects.uplink_all()).await?;
        info!(node = %self.cfg.node_id, region = %self.cfg.region, "coordinator serving all shards");
        let duties = tokio::spawn(self.clone().run_duties(cancel.clone()));
        self.serve(uplinks, cancel).await;
        let _ = duties.await;
        Ok(())
    }

    /// Handles the messages of `uplinks` (one shard's subject, or all of them) until it ends or
    /// `stop`; then drains it: stops taking new ones, handles those already on their way, and
    /// returns when every one is answered. What a graceful handoff waits for.
    pub async fn serve(self: Arc<Self>, mut uplinks: Subscription, stop: CancellationToken) {
        let tracker = TaskTracker::new();
        let spawn = |incoming: Incoming| {
            let this = self.clone();
            tracker.spawn(async move { this.handle_uplink(incoming).await }.in_current_span());
        };
        loop {
            tokio::select! {
                incoming = uplinks.next() => match incoming {
                    Some(i) => spawn(i),
                    None => break,
                },
                () = stop.cancelled() => {
                    uplinks.drain().await;
                    while let Some(i) = uplinks.next().await {
                        spawn(i);
                    }
                    break;
                }
            }
        }
        tracker.close();
        tracker.wait().await;
    }

    /// Until `cancel`, each under the duty supervisor: sweeps silence deadlines and drives
    /// rollouts every second, refreshes gauges and re-reads the configs and rollouts every 5 s (and
    /// at once when a coordinator announces a change), and removes agents gone longer than the
    /// agent retention.
    pub async fn run_duties(self: Arc<Self>, cancel: CancellationToken) {
        let changed = Arc::new(Notify::new());
        // Agents are removed within a quarter of the retention past it, checked at most once a
        // second and at least once a minute.
        let retention_every =
            (self.cfg.agent_retention / 4).clamp(Duration::from_secs(1), Duration::from_secs(60));
        type Run = fn(Arc<Coordinator>) -> BoxFuture<'static, Result<(), String>>;
        let duty = |name: &'static str, every: Duration, wake: Option<Arc<Notify>>, run: Run| {
            let this = self.clone();
            supervise(
                name,
                every,
                wake,
                self.duty_health.clone(),
                self.metrics.duty_failures.clone(),
                cancel.clone(),
                move || run(this.clone()),
            )
        };
        tokio::join!(
            self.clone().hear_changes(changed.clone(), cancel.clone()),
            duty("silence_sweep", SECOND, None, |c| {
                async move { c.sweep_silent().await.map_err(|e| e.to_string()) }.boxed()
            }),
            duty("rollouts", SECOND, None, |c| {
                async move { c.drive_rollouts().await }.boxed()
            }),
            duty("gauges", 5 * SECOND, None, |c| {
                async move { c.refresh_gauges().await }.boxed()
            }),
            duty("desired_state", 5 * SECOND, Some(changed.clone()), |c| {
                async move { c.reload_desired().await }.boxed()
            }),
            duty("agent_retention", retention_every, None, |c| {
                async move { c.expire_agents().await }.boxed()
            }),
        );
    }

    /// Wakes `changed` whenever a coordinator announces a change of desired state.
    async fn hear_changes(self: Arc<Self>, changed: Arc<Notify>, cancel: CancellationToken) {
        let mut changes = match self.bus.subscribe(&self.subjects.desired_changed()).await {
            Ok(s) => s,
            Err(e) => {
                warn!(error = %e, "cannot hear config changes; re-reading them every 5 s only");
                return;
            }
        };
        loop {
            tokio::select! {
                m = changes.next() => match m {
                    Some(_) => changed.notify_one(),
                    None => return,
                },
                () = cancel.cancelled() => return,
            }
        }
    }

    async fn handle_uplink(&self, incoming: Incoming) {
        let Some(reply) = incoming.reply else { return };
        let span = debug_span!("uplink", traceparent = incoming.msg.header("traceparent"));
        let answer = async {
            match Uplink::decode(incoming.msg.payload) {
                Ok(Uplink {
                    origin: Some(origin),
                    kind: Some(uplink::Kind::AgentToServer(bytes)),
                }) => self.agent_message_guarded(&bytes, origin).await,
                Ok(Uplink {
                    origin: Some(origin),
                    kind: Some(uplink::Kind::Closed(c)),
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

    /// [`Coordinator::agent_message`], answering the agent with an error should processing
    /// panic (a bug), instead of leaving it without an answer until its gateway gives up.
    async fn agent_message_guarded(&self, bytes: &[u8], origin: Origin) -> Option<UplinkReply> {
        match AssertUnwindSafe(self.agent_message(bytes, origin))
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

    fn count_uplink(&self, result: &'static str) {
        self.metrics
            .uplinks
            .get_or_create(&vec![("result", result)])
            .inc();
    }

    /// The fence of `shard` if this process may act on it; counts the message as not ours if not.
    pub(crate) fn fence_for(&self, shard: u16) -> Option<Fence> {
        let fence = self.shards.fence(shard);
        if fence.is_none() {
            self.count_uplink("not_owner");
        }
        fence
    }

    /// A write was refused because another coordinator took the shard: stop acting on it.
    fn fenced(&self, shard: u16) {
        warn!(
            shard,
            "shard taken over by another coordinator; dropping it"
        );
        self.shards.drop_shard(shard);
        self.count_uplink("fenced");
    }

    /// Processes one encoded AgentToServer and returns the encoded ServerToAgent reply; None if
    /// this process does not own the agent's shard.
    pub async fn agent_message(&self, bytes: &[u8], origin: Origin) -> Option<UplinkReply> {
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
        let shard = shard_of(&msg.instance_uid);
        let _guard = self.shards.lock(shard).await;
        let fence = self.fence_for(shard)?;
        let stored = match Uuid::from_slice(&msg.instance_uid) {
            Ok(uid) => self.store.get_agent(uid).await,
            Err(_) => Ok(None),
        };
        let stored = match stored {
            Ok(s) => s,
            Err(e) => return Some(self.store_failed(uid_sent, &e)),
        };
        if let Err(why) = certs::check_identity(stored.as_ref(), &origin, &uid_sent) {
            self.count_uplink("identity");
            self.metrics.refusal_log.warn(|suppressed| {
                warn!(uid = %Uuid::from_slice(&uid_sent).unwrap_or_default(), peer = %origin.peer_addr, %why, suppressed, "refused an agent's certificate");
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
        let desired = self.desired();
        let ctx = Ctx {
            now_unix_ms: now_unix_ms(),
            heartbeat_interval: self.cfg.heartbeat_interval,
            desired: &desired,
            limits: &self.cfg.limits,
            hold_restart: csr.is_some(),
        };
        let origin_seen = origin.clone();
        let mut out = agent::process(stored, msg, origin, &ctx);
        if self.cfg.issuer.is_some() {
            out.reply.capabilities |= ServerCapabilities::AcceptsConnectionSettingsRequest as u64;
        }
        let mut audit = None;
        if let Some(rec) = out.record.as_mut() {
            certs::record_certificate(rec, &origin_seen);
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
        self.fit_reply(&mut out);
        let Some(rec) = out.record.as_ref() else {
            // Nothing to store: a uid was assigned (it becomes a record when the agent uses it),
            // or the report was refused.
            self.count_uplink(if out.reply.error_response.is_some() {
                "refused"
            } else {
                "uid_assigned"
            });
            return Some(UplinkReply {
                new_instance_uid: out
                    .reply
                    .agent_identification
                    .as_ref()
                    .map(|a| a.new_instance_uid.clone())
                    .unwrap_or_default(),
                server_to_agent: out.reply.encode_to_vec(),
                poll_interval_ms: millis(out.interval),
                ..Default::default()
            });
        };
        let uid = Uuid::from_slice(&rec.instance_uid).unwrap_or_default();
        match self
            .store
            .save_agent(fence, rec, out.deadline, audit.as_ref())
            .await
        {
            Ok(()) => {}
            Err(StoreError::Fenced { .. }) => {
                self.fenced(shard);
                return None;
            }
            Err(e) => return Some(self.store_failed(uid_sent, &e)),
        }
        for kind in &out.events {
            self.emit(*kind, uid).await;
        }
        self.count_uplink("ok");
        self.metrics
            .uplink_seconds
            .observe(started.elapsed().as_secs_f64());
        Some(UplinkReply {
            server_to_agent: out.reply.encode_to_vec(),
            poll_interval_ms: millis(out.interval),
            ..Default::default()
        })
    }

    /// Keeps a reply within what can reach the agent: packages wait for a later reply (the
    /// record forgets offering them) when the config and packages together are too large. A
    /// config too large on its own (stored before the limit was enforced) is not sent at all.
    fn fit_reply(&self, out: &mut Outcome) {
        let max = self.cfg.max_message_size;
        if out.reply.encoded_len() <= max {
            return;
        }
        if out.reply.packages_available.take().is_some() {
            if let Some(rec) = out.record.as_mut() {
                rec.offered_packages_hash.clear();
            }
            if out.reply.encoded_len() <= max {
                return;
            }
        }
        if let Some(rc) = out.reply.remote_config.take() {
            self.count_uplink("config_too_large");
            error!(
                config_bytes = rc.encoded_len(),
                max, "a config is too large to reach its agents; store a smaller version"
            );
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
        let shard = shard_of(uid_bytes);
        let _guard = self.shards.lock(shard).await;
        let Some(fence) = self.fence_for(shard) else {
            return false;
        };
        let Ok(Some(mut rec)) = self.store.get_agent(uid).await else {
            return true;
        };
        if rec.status != AgentStatus::Connected as i32 || rec.origin.as_ref() != Some(origin) {
            return true;
        }
        rec.status = AgentStatus::Disconnected as i32;
        rec.origin = None;
        match self
            .store
            .save_agent(fence, &rec, Deadline::Clear, None)
            .await
        {
            Ok(()) => self.emit(EventKind::Disconnected, uid).await,
            Err(StoreError::Fenced { .. }) => {
                self.fenced(shard);
                return false;
            }
            Err(e) => warn!(error = %e, %uid, "could not record a disconnect"),
        }
        true
    }

    /// Marks agents of owned shards whose deadline passed without a message as silent, once per
    /// silence: each due deadline is claimed under the shard's fence, so one owner handles it,
    /// and one that dies midway leaves it due again for the next.
    pub async fn sweep_silent(&self) -> Result<(), StoreError> {
        let now = now_unix_ms();
        let claims = futures_util::stream::iter(self.shards.owned())
            .filter_map(|shard| std::future::ready(self.shards.fence(shard)))
            .map(|fence| async move {
                match self.store.claim_due(fence, now, CLAIM_RETRY_MS).await {
                    Ok(uids) => Ok((fence, uids)),
                    Err(StoreError::Fenced { .. }) => {
                        self.fenced(fence.shard);
                        Ok((fence, Vec::new()))
                    }
                    Err(e) => Err(e),
                }
            })
            .buffer_unordered(32)
            .collect::<Vec<_>>()
            .await;
        for claim in claims {
            let (fence, uids) = claim?;
            for uid in uids {
                self.settle_due(fence.shard, uid, now).await?;
            }
        }
        Ok(())
    }

    /// One claimed deadline: silent if still due, otherwise re-armed (or cleared).
    async fn settle_due(&self, shard: u16, uid: Uuid, now: u64) -> Result<(), StoreError> {
        let _guard = self.shards.lock(shard).await;
        let Some(fence) = self.shards.fence(shard) else {
            return Ok(());
        };
        let Some(mut rec) = self.store.get_agent(uid).await? else {
            return Ok(());
        };
        let attrs = agent::attributes(&rec);
        let interval =
            agent::heartbeat_interval(&rec, &attrs, &self.desired(), self.cfg.heartbeat_interval);
        let silent = match agent::silence_deadline(&rec, interval) {
            Some(at) if at > now => {
                self.save_or_drop(fence, &rec, Deadline::Arm(at), None)
                    .await?;
                return Ok(());
            }
            Some(_) => true,
            None => false,
        };
        if silent {
            rec.status = AgentStatus::Silent as i32;
        }
        if self
            .save_or_drop(fence, &rec, Deadline::Clear, None)
            .await?
            && silent
        {
            info!(%uid, "agent silent");
            self.emit(EventKind::Silent, uid).await;
        }
        Ok(())
    }

    /// Saves under `fence` (with `audit` in the same step); false (and the shard dropped) if
    /// another coordinator took it.
    pub(crate) async fn save_or_drop(
        &self,
        fence: Fence,
        rec: &AgentRecord,
        deadline: Deadline,
        audit: Option<&AuditEntry>,
    ) -> Result<bool, StoreError> {
        match self.store.save_agent(fence, rec, deadline, audit).await {
            Ok(()) => Ok(true),
            Err(StoreError::Fenced { shard, .. }) => {
                self.fenced(shard);
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }

    async fn emit(&self, kind: EventKind, uid: Uuid) {
        self.metrics
            .events
            .get_or_create(&vec![("kind", kind.as_str())])
            .inc();
        let body = serde_json::json!({
            "kind": kind.as_str(),
            "instance_uid": uid.to_string(),
            "at_unix_ms": now_unix_ms(),
            "node": self.cfg.node_id,
        });
        let msg = BusMessage::new(self.subjects.event(kind.as_str()), body.to_string());
        if let Err(e) = self.bus.publish(msg).await {
            debug!(error = %e, "event not published");
        }
    }

    async fn refresh_gauges(&self) -> Result<(), String> {
        self.metrics
            .owned_shards
            .set(self.shards.owned_count() as i64);
        let mut counts = [0i64; 4];
        let owned = |s| self.shards.fence(s).is_some();
        self.store
            .visit_agents(&owned, &mut |a| counts[a.status.clamp(0, 3) as usize] += 1)
            .await
            .map_err(|e| e.to_string())?;
        for (status, n) in [
            ("connected", counts[1]),
            ("disconnected", counts[2]),
            ("silent", counts[3]),
        ] {
            self.metrics
                .agents
                .get_or_create(&vec![("status", status)])
                .set(n);
        }
        Ok(())
    }

    /// Counts `n` ownership changes of one kind and refreshes the owned-shards gauge.
    pub(crate) fn count_shard_changes(&self, change: &'static str, n: usize) {
        self.metrics
            .shard_changes
            .get_or_create(&vec![("change", change)])
            .inc_by(n as u64);
        self.metrics
            .owned_shards
            .set(self.shards.owned_count() as i64);
    }

    pub fn desired(&self) -> Arc<Desired> {
        self.desired
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Re-reads configs and rollouts from the store; when they changed (another coordinator
    /// stored a version or moved a rollout on), pushes to the connected agents of the shards this
    /// process owns.
    pub(crate) async fn reload_desired(&self) -> Result<(), String> {
        let fresh = crate::rollouts::load_desired(self.store.as_ref())
            .await
            .map_err(|e| format!("cannot re-read configs and rollouts: {e}"))?;
        if fresh.fingerprint() == self.desired().fingerprint() {
            return Ok(());
        }
        *self
            .desired
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(fresh);
        info!("desired state changed; pushing to connected agents");
        self.push_configs(&|_| true).await;
        Ok(())
    }

    /// Tells every coordinator (this one included) that desired state changed in the store.
    pub(crate) async fn announce_change(&self, what: &str) {
        let announce = BusMessage::new(self.subjects.desired_changed(), what.to_owned());
        if let Err(e) = self.bus.publish(announce).await {
            // The others re-read the store every few seconds anyway.
            warn!(error = %e, "change not announced");
        }
        if let Err(e) = self.reload_desired().await {
            // Pushed at the next re-read instead.
            warn!(error = %e, "desired state not re-read after a change");
        }
    }

    /// Records in the audit log what changed no stored state (a command delivered at once). A
    /// failed write is logged, not returned: the command has gone out by then.
    pub(crate) async fn audit_event(&self, entry: AuditEntry) {
        info!(target: "flotilla::audit", caller = %entry.caller, action = %entry.action, object = %entry.object, "change");
        if let Err(e) = self.store.append_audit(entry).await {
            warn!(error = %e, "audit entry not written");
        }
    }

    /// Calls `f` on every agent record (without copying the fleet).
    pub async fn visit_agents(
        &self,
        f: &mut (dyn for<'r> FnMut(&'r AgentRecord) + Send),
    ) -> Result<(), StoreError> {
        self.store.visit_agents(&|_| true, f).await
    }

    pub async fn agent(&self, uid: Uuid) -> Result<Option<AgentRecord>, StoreError> {
        self.store.get_agent(uid).await
    }

    /// Shards were just acquired: their connected agents get their desired state now rather than
    /// at their next heartbeat (a config stored while a shard had no owner reaches them). One
    /// visit of the store for the whole batch.
    pub(crate) async fn shards_acquired(&self, shards: &[u16]) {
        let set: std::collections::HashSet<u16> = shards.iter().copied().collect();
        self.push_configs(&|s| set.contains(&s)).await;
    }

    /// Sends each connected WebSocket agent of the owned shards `shards` accepts whose reported
    /// config differs from its desired one the desired config. Idempotent: agents that already
    /// run it get nothing.
    pub(crate) async fn push_configs(&self, shards: &(dyn Fn(u16) -> bool + Sync)) {
        let desired = self.desired();
        let mut pushes: Vec<(Origin, ServerToAgent)> = Vec::new();
        let mine = |s| shards(s) && self.shards.fence(s).is_some();
        let visited = self
            .store
            .visit_agents(&mine, &mut |rec| {
                if let Some(push) = push_for(rec, &desired) {
                    pushes.push(push);
                }
            })
            .await;
        if let Err(e) = visited {
            // Agents still get the config in the reply to their next message.
            warn!(error = %e, "config push skipped: agents unreadable");
            return;
        }
        let total = pushes.len();
        if total == 0 {
            return;
        }
        let delivered = futures_util::stream::iter(pushes)
            .map(|(origin, msg)| async move { self.push(&origin, &msg).await })
            .buffer_unordered(256)
            .filter(|ok| std::future::ready(*ok))
            .count()
            .await;
        info!(total, delivered, "config pushed to connected agents");
    }

    /// Sends a ServerToAgent (addressed by its instance_uid) to the connection `origin`; true if
    /// the gateway delivered it.
    pub(crate) async fn push(&self, origin: &Origin, msg: &ServerToAgent) -> bool {
        let down = Downlink {
            connection_id: origin.connection_id,
            instance_uid: msg.instance_uid.clone(),
            server_to_agent: msg.encode_to_vec(),
        };
        let req = BusMessage::new(
            self.subjects.downlink(&origin.gateway_id),
            down.encode_to_vec(),
        );
        let result = match self.bus.request(req, self.cfg.push_timeout).await {
            Ok(ack) => DownlinkAck::decode(ack)
                .map(|a| a.delivered)
                .unwrap_or(false),
            Err(e) => {
                debug!(error = %e, gateway = %origin.gateway_id, "push failed");
                false
            }
        };
        let label = if result { "delivered" } else { "undelivered" };
        self.metrics
            .pushes
            .get_or_create(&vec![("result", label)])
            .inc();
        result
    }

    /// Restarts an agent: at once over its live WebSocket, otherwise at its next message. Asks
    /// the owner of the agent's shard (this process or another), which alone may change it.
    /// `caller`: who to name in the audit log; empty for restarts of a job (audited as a whole).
    pub async fn restart(&self, uid: Uuid, caller: &str) -> Result<RestartOutcome, ServiceError> {
        let ask = Uplink {
            origin: None,
            kind: Some(uplink::Kind::Restart(RestartAgent {
                instance_uid: uid.as_bytes().to_vec(),
                caller: caller.to_owned(),
            })),
        };
        let reply = self.ask_owner(uid, ask).await?;
        let unavailable = |e: &dyn std::fmt::Display| {
            ServiceError::Unavailable(format!("agent {uid}: {e}; try again"))
        };
        match reply.restart() {
            RestartResult::Delivered => Ok(RestartOutcome::Delivered),
            RestartResult::Queued => Ok(RestartOutcome::Queued),
            RestartResult::UnknownAgent => Err(ServiceError::NotFound(format!("no agent {uid}"))),
            RestartResult::NotCapable => Err(ServiceError::Conflict(format!(
                "agent {uid} does not accept restart commands (no AcceptsRestartCommand capability)"
            ))),
            RestartResult::Failed | RestartResult::Unspecified => {
                Err(unavailable(&"the agent's state could not be written"))
            }
        }
    }

    /// Sends an admin request about agent `uid` to the owner of its shard (this process or
    /// another) and returns its answer.
    pub(crate) async fn ask_owner(
        &self,
        uid: Uuid,
        ask: Uplink,
    ) -> Result<UplinkReply, ServiceError> {
        let msg = BusMessage::new(
            self.subjects.uplink(shard_of(uid.as_bytes())),
            ask.encode_to_vec(),
        );
        let unavailable = |e: &dyn std::fmt::Display| {
            ServiceError::Unavailable(format!(
                "the owner of agent {uid} did not answer ({e}); try again"
            ))
        };
        let answer = request_with_retry(
            self.bus.as_ref(),
            msg,
            self.cfg.push_timeout + Duration::from_secs(1),
            self.cfg.owner_deadline,
        )
        .await
        .map_err(|e| unavailable(&e))?;
        UplinkReply::decode(answer).map_err(|e| unavailable(&e))
    }

    pub(crate) fn issuer(&self) -> Option<&Issuer> {
        self.cfg.issuer.as_deref()
    }

    pub(crate) fn heartbeat_interval(&self) -> Duration {
        self.cfg.heartbeat_interval
    }

    /// Largest ServerToAgent that can reach an agent: configs must fit in it.
    pub fn max_message_size(&self) -> usize {
        self.cfg.max_message_size
    }

    pub fn redactor(&self) -> &crate::redact::Redactor {
        &self.cfg.redactor
    }

    pub async fn audit_log(
        &self,
        query: &flotilla_common::store::AuditQuery,
    ) -> Result<flotilla_common::store::AuditPage, ServiceError> {
        Ok(self.store.query_audit(query).await?)
    }

    pub(crate) fn store(&self) -> &dyn Store {
        self.store.as_ref()
    }

    /// The owner's side of [`Coordinator::restart`]; None if this process does not own the shard.
    async fn restart_here(&self, req: &RestartAgent) -> Option<RestartResult> {
        let Ok(uid) = Uuid::from_slice(&req.instance_uid) else {
            return Some(RestartResult::UnknownAgent);
        };
        let shard = shard_of(&req.instance_uid);
        let _guard = self.shards.lock(shard).await;
        let fence = self.fence_for(shard)?;
        let mut rec = match self.store.get_agent(uid).await {
            Ok(Some(rec)) => rec,
            Ok(None) => return Some(RestartResult::UnknownAgent),
            Err(e) => {
                warn!(error = %e, %uid, "restart: agent unreadable");
                return Some(RestartResult::Failed);
            }
        };
        if !has(rec.capabilities, Cap::AcceptsRestartCommand) {
            return Some(RestartResult::NotCapable);
        }
        let entry = |how: &str| {
            (!req.caller.is_empty()).then(|| {
                audit_entry(
                    &req.caller,
                    "agent.restart",
                    format!("agent/{uid}"),
                    None,
                    Some(serde_json::json!({ "restart": how })),
                )
            })
        };
        if let Some(origin) = live_ws(&rec) {
            let cmd = ServerToAgent {
                instance_uid: rec.instance_uid.clone(),
                capabilities: agent::SERVER_CAPABILITIES,
                command: Some(ServerToAgentCommand {
                    r#type: CommandType::Restart as i32,
                }),
                ..Default::default()
            };
            if self.push(origin, &cmd).await {
                info!(%uid, "restart delivered");
                if let Some(e) = entry("delivered") {
                    self.audit_event(e).await;
                }
                return Some(RestartResult::Delivered);
            }
        }
        rec.restart_expires_unix_ms = now_unix_ms().saturating_add(millis(self.cfg.restart_ttl));
        match self
            .save_or_drop(fence, &rec, Deadline::Keep, entry("queued").as_ref())
            .await
        {
            Ok(true) => {
                info!(%uid, "restart queued until the agent's next message");
                Some(RestartResult::Queued)
            }
            Ok(false) => None,
            Err(e) => {
                warn!(error = %e, %uid, "restart: could not queue");
                Some(RestartResult::Failed)
            }
        }
    }

    /// Removes agent `uid`'s record (audited). A connected agent comes back as a new record at
    /// its next message.
    pub async fn delete_agent(&self, uid: Uuid, caller: &str) -> Result<(), ServiceError> {
        let ask = Uplink {
            origin: None,
            kind: Some(uplink::Kind::DeleteAgent(DeleteAgent {
                instance_uid: uid.as_bytes().to_vec(),
                caller: caller.to_owned(),
            })),
        };
        let result = self.ask_owner(uid, ask).await?.deleted.unwrap_or_default();
        if result.unknown_agent {
            return Err(ServiceError::NotFound(format!("no agent {uid}")));
        }
        if !result.error.is_empty() {
            return Err(ServiceError::Unavailable(format!(
                "agent {uid} not deleted: {}; try again",
                result.error
            )));
        }
        Ok(())
    }

    /// The owner's side of [`Coordinator::delete_agent`]; None if this process does not own the
    /// shard.
    async fn delete_here(&self, req: &DeleteAgent) -> Option<DeleteResult> {
        let unknown = DeleteResult {
            unknown_agent: true,
            ..Default::default()
        };
        let Ok(uid) = Uuid::from_slice(&req.instance_uid) else {
            return Some(unknown);
        };
        let shard = shard_of(&req.instance_uid);
        let _guard = self.shards.lock(shard).await;
        let fence = self.fence_for(shard)?;
        let before = match self.store.get_agent(uid).await {
            Ok(Some(rec)) => rec,
            Ok(None) => return Some(unknown),
            Err(e) => {
                return Some(DeleteResult {
                    error: e.to_string(),
                    ..Default::default()
                });
            }
        };
        let entry = audit_entry(
            &req.caller,
            "agent.delete",
            format!("agent/{uid}"),
            Some(crate::views::summary(&before, &self.desired())),
            None,
        );
        match self.store.delete_agent(fence, uid, Some(&entry)).await {
            Ok(true) => {
                info!(%uid, caller = %req.caller, "agent deleted");
                Some(DeleteResult::default())
            }
            Ok(false) => Some(unknown),
            Err(StoreError::Fenced { .. }) => {
                self.fenced(shard);
                None
            }
            Err(e) => Some(DeleteResult {
                error: e.to_string(),
                ..Default::default()
            }),
        }
    }

    /// Removes the agents of owned shards that have been disconnected or silent for longer than
    /// the agent retention, each with its audit entry.
    async fn expire_agents(&self) -> Result<(), String> {
        let horizon = now_unix_ms().saturating_sub(millis(self.cfg.agent_retention));
        let mut gone: Vec<Uuid> = Vec::new();
        let owned = |s| self.shards.fence(s).is_some();
        self.store
            .visit_agents(&owned, &mut |rec| {
                if rec.status != AgentStatus::Connected as i32
                    && rec.last_seen_unix_ms < horizon
                    && let Ok(uid) = Uuid::from_slice(&rec.instance_uid)
                {
                    gone.push(uid);
                }
            })
            .await
            .map_err(|e| e.to_string())?;
        for uid in gone {
            let shard = shard_of(uid.as_bytes());
            let _guard = self.shards.lock(shard).await;
            let Some(fence) = self.shards.fence(shard) else {
                continue;
            };
            // Read again under the lock: the agent may have come back meanwhile.
            let Some(rec) = self.store.get_agent(uid).await.map_err(|e| e.to_string())? else {
                continue;
            };
            if rec.status == AgentStatus::Connected as i32 || rec.last_seen_unix_ms >= horizon {
                continue;
            }
            let entry = audit_entry(
                SYSTEM_CALLER,
                "agent.expire",
                format!("agent/{uid}"),
                Some(
                    serde_json::json!({ "last_seen": crate::views::rfc3339(rec.last_seen_unix_ms) }),
                ),
                None,
            );
            match self.store.delete_agent(fence, uid, Some(&entry)).await {
                Ok(_) => info!(%uid, "agent removed after the agent retention"),
                Err(StoreError::Fenced { .. }) => self.fenced(shard),
                Err(e) => return Err(e.to_string()),
            }
        }
        Ok(())
    }
}

const SECOND: Duration = Duration::from_secs(1);

/// Who the audit log names for what Flotilla does by itself (rollout steps, agent retention).
pub(crate) const SYSTEM_CALLER: &str = "flotilla";

/// An audit entry of a change made now.
pub(crate) fn audit_entry(
    caller: &str,
    action: &str,
    object: String,
    before: Option<serde_json::Value>,
    after: Option<serde_json::Value>,
) -> AuditEntry {
    AuditEntry {
        id: String::new(),
        at_unix_ms: now_unix_ms(),
        caller: caller.to_owned(),
        action: action.to_owned(),
        object,
        before,
        after,
    }
}

/// Milliseconds of `d`, saturating.
pub(crate) fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// How long a claimed silence deadline waits before another sweep may claim it again (if the
/// claimer died before settling it).
const CLAIM_RETRY_MS: u64 = 5_000;

fn reply_of(server_to_agent: Vec<u8>) -> UplinkReply {
    UplinkReply {
        server_to_agent,
        ..Default::default()
    }
}

/// What to push to `rec` now: its config and packages, if they differ from what it reported and
/// it is connected over WebSocket. The offered-packages hash is not recorded here: the reply to
/// the agent's next message records it (and offers again only if it still differs).
pub(crate) fn push_for(rec: &AgentRecord, desired: &Desired) -> Option<(Origin, ServerToAgent)> {
    let origin = live_ws(rec)?;
    let attrs = agent::attributes(rec);
    let cfg = agent::config_to_offer(rec, &attrs, desired);
    let packages = agent::packages_to_offer(rec, &attrs, desired);
    if cfg.is_none() && packages.is_none() {
        return None;
    }
    let msg = ServerToAgent {
        instance_uid: rec.instance_uid.clone(),
        capabilities: agent::SERVER_CAPABILITIES,
        remote_config: cfg.map(configs::remote_config_message),
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
