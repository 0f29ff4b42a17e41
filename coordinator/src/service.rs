//! The coordinator as a running service: takes agent messages off the bus in order per shard,
//! keeps agent records in the store, pushes desired state to connected agents through their
//! gateway, sweeps silence deadlines, and carries out admin operations.

use crate::agent::{self, Ctx, Deadline, EventKind, has};
use crate::configs;
use crate::metrics::Metrics;
use flotilla_common::bus::{Bus, BusError, BusMessage, Incoming};
use flotilla_common::error::{ErrorKind, opamp_error_reply};
use flotilla_common::names::{SHARD_COUNT, Subjects, shard_of};
use flotilla_common::store::{ConfigFile, Store, StoreError, StoredConfig};
use flotilla_common::telemetry::now_unix_ms;
use flotilla_proto::bus::{
    AgentRecord, AgentStatus, Downlink, DownlinkAck, Origin, Transport, Uplink, UplinkReply, uplink,
};
use flotilla_proto::opamp::{
    AgentCapabilities as Cap, AgentToServer, CommandType, ConnectionSettingsOffers, ServerToAgent,
    ServerToAgentCommand,
};
use futures_util::StreamExt;
use prometheus_client::registry::Registry;
use prost::Message;
use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};
use thiserror::Error;
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, debug, info, warn};
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
}

impl CoordinatorConfig {
    pub fn new(region: &str, node_id: &str, heartbeat_interval: Duration) -> Self {
        Self {
            region: region.into(),
            node_id: node_id.into(),
            heartbeat_interval,
            restart_ttl: Duration::from_secs(600),
            push_timeout: Duration::from_secs(2),
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
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl ServiceError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::BadRequest(_) => ErrorKind::BadRequest,
            Self::NotFound(_) => ErrorKind::NotFound,
            Self::Conflict(_) => ErrorKind::Conflict,
            Self::Store(_) => ErrorKind::Internal,
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
    bus: Arc<dyn Bus>,
    store: Arc<dyn Store>,
    subjects: Subjects,
    /// Latest version of every config, sorted by name.
    configs: RwLock<Arc<Vec<StoredConfig>>>,
    /// Serializes work on one shard's agents: uplinks, sweeps and admin changes.
    shard_locks: Vec<Mutex<()>>,
    /// Constant for the process: computed (and hashed) once, not per message.
    heartbeat_offer: ConnectionSettingsOffers,
    metrics: Metrics,
}

impl Coordinator {
    pub async fn new(
        cfg: CoordinatorConfig,
        bus: Arc<dyn Bus>,
        store: Arc<dyn Store>,
        registry: &mut Registry,
    ) -> Result<Arc<Self>, StoreError> {
        let configs = store.list_configs().await?;
        Ok(Arc::new(Self {
            subjects: Subjects::new(&cfg.region),
            heartbeat_offer: agent::heartbeat_offer(cfg.heartbeat_interval),
            cfg,
            bus,
            store,
            configs: RwLock::new(Arc::new(configs)),
            shard_locks: (0..SHARD_COUNT).map(|_| Mutex::new(())).collect(),
            metrics: Metrics::new(registry),
        }))
    }

    /// Serves agent messages for every shard and sweeps silence deadlines until `cancel`; then
    /// finishes the messages already taken.
    pub async fn run(self: Arc<Self>, cancel: CancellationToken) -> Result<(), BusError> {
        let mut uplinks = self.bus.subscribe(&self.subjects.uplink_all()).await?;
        info!(node = %self.cfg.node_id, region = %self.cfg.region, "coordinator serving all shards");
        let tracker = TaskTracker::new();
        let mut sweep = tokio::time::interval(Duration::from_secs(1));
        sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut ticks = 0u64;
        loop {
            tokio::select! {
                incoming = uplinks.next() => {
                    let Some(incoming) = incoming else { break };
                    let this = self.clone();
                    tracker.spawn(async move { this.handle_uplink(incoming).await }.in_current_span());
                }
                _ = sweep.tick() => {
                    ticks += 1;
                    if let Err(e) = self.sweep_silent().await {
                        warn!(error = %e, "silence sweep failed; retrying next second");
                    }
                    if ticks % 5 == 1 {
                        self.refresh_gauges().await;
                    }
                }
                () = cancel.cancelled() => break,
            }
        }
        tracker.close();
        tracker.wait().await;
        Ok(())
    }

    async fn handle_uplink(&self, incoming: Incoming) {
        let Some(reply) = incoming.reply else { return };
        let answer = match Uplink::decode(incoming.msg.payload) {
            Ok(Uplink {
                origin: Some(origin),
                kind: Some(uplink::Kind::AgentToServer(bytes)),
            }) => self.agent_message(&bytes, origin).await,
            Ok(Uplink {
                origin: Some(origin),
                kind: Some(uplink::Kind::Closed(c)),
            }) => {
                self.connection_closed(&c.instance_uid, &origin).await;
                UplinkReply::default()
            }
            _ => {
                warn!("dropping a malformed bus uplink envelope");
                UplinkReply::default()
            }
        };
        let payload = answer.encode_to_vec();
        // The gateway may have given up waiting; nothing to do then.
        let _ = reply.send(payload.into()).await;
    }

    /// Processes one encoded AgentToServer and returns the encoded ServerToAgent reply.
    pub async fn agent_message(&self, bytes: &[u8], origin: Origin) -> UplinkReply {
        let started = Instant::now();
        let msg = match AgentToServer::decode(bytes) {
            Ok(m) => m,
            Err(e) => {
                self.metrics
                    .uplinks
                    .get_or_create(&vec![("result", "bad_request")])
                    .inc();
                let msg = format!("malformed AgentToServer: {e}");
                return reply_of(opamp_error_reply(
                    Vec::new(),
                    ErrorKind::BadRequest,
                    msg,
                    None,
                ));
            }
        };
        let uid_sent = msg.instance_uid.clone();
        let shard = shard_of(&msg.instance_uid);
        let _guard = self.shard_locks[usize::from(shard)].lock().await;
        let stored = match Uuid::from_slice(&msg.instance_uid) {
            Ok(uid) => self.store.get_agent(uid).await,
            Err(_) => Ok(None),
        };
        let stored = match stored {
            Ok(s) => s,
            Err(e) => return reply_of(self.store_failed(uid_sent, e)),
        };
        let configs = self.configs();
        let ctx = Ctx {
            now_unix_ms: now_unix_ms(),
            heartbeat_interval: self.cfg.heartbeat_interval,
            heartbeat_offer: &self.heartbeat_offer,
            configs: &configs,
        };
        let out = agent::process(stored, msg, origin, &ctx);
        let uid = Uuid::from_slice(&out.record.instance_uid).expect("records have 16-byte uids");
        let saved = async {
            self.store.put_agent(out.record).await?;
            match out.deadline {
                Deadline::Arm(at) => self.store.arm_deadline(uid, at).await,
                Deadline::Clear => self.store.clear_deadline(uid).await,
            }
        };
        if let Err(e) = saved.await {
            return reply_of(self.store_failed(uid_sent, e));
        }
        for kind in out.events {
            self.emit(kind, uid).await;
        }
        self.metrics
            .uplinks
            .get_or_create(&vec![("result", "ok")])
            .inc();
        self.metrics
            .uplink_seconds
            .observe(started.elapsed().as_secs_f64());
        UplinkReply {
            new_instance_uid: out
                .reply
                .agent_identification
                .as_ref()
                .map(|a| a.new_instance_uid.clone())
                .unwrap_or_default(),
            server_to_agent: out.reply.encode_to_vec(),
        }
    }

    fn store_failed(&self, uid: Vec<u8>, e: StoreError) -> Vec<u8> {
        warn!(error = %e, "agent state unavailable");
        self.metrics
            .uplinks
            .get_or_create(&vec![("result", "unavailable")])
            .inc();
        // Agents retry soon: a store hiccup is usually over in seconds.
        let retry = Some(Duration::from_secs(5));
        opamp_error_reply(
            uid,
            ErrorKind::Unavailable,
            "agent state temporarily unavailable".into(),
            retry,
        )
    }

    /// A gateway saw the agent's WebSocket close. Ignored if the agent has moved to another
    /// connection since (a late close must not mark a reconnected agent disconnected).
    async fn connection_closed(&self, uid_bytes: &[u8], origin: &Origin) {
        let Ok(uid) = Uuid::from_slice(uid_bytes) else {
            return;
        };
        let _guard = self.shard_locks[usize::from(shard_of(uid_bytes))]
            .lock()
            .await;
        let Ok(Some(mut rec)) = self.store.get_agent(uid).await else {
            return;
        };
        if rec.status != AgentStatus::Connected as i32 || rec.origin.as_ref() != Some(origin) {
            return;
        }
        rec.status = AgentStatus::Disconnected as i32;
        rec.origin = None;
        let saved = async {
            self.store.put_agent(rec).await?;
            self.store.clear_deadline(uid).await
        };
        if let Err(e) = saved.await {
            warn!(error = %e, %uid, "could not record a disconnect");
            return;
        }
        self.emit(EventKind::Disconnected, uid).await;
    }

    /// Marks agents whose deadline passed without a message as silent, once per silence.
    pub async fn sweep_silent(&self) -> Result<(), StoreError> {
        let now = now_unix_ms();
        for uid in self.store.take_due(now).await? {
            let _guard = self.shard_locks[usize::from(shard_of(uid.as_bytes()))]
                .lock()
                .await;
            let Some(mut rec) = self.store.get_agent(uid).await? else {
                continue;
            };
            match agent::silence_deadline(&rec, self.cfg.heartbeat_interval) {
                Some(at) if at > now => self.store.arm_deadline(uid, at).await?,
                Some(_) => {
                    rec.status = AgentStatus::Silent as i32;
                    self.store.put_agent(rec).await?;
                    info!(%uid, "agent silent");
                    self.emit(EventKind::Silent, uid).await;
                }
                None => {}
            }
        }
        Ok(())
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

    async fn refresh_gauges(&self) {
        let mut counts = [0i64; 4];
        let counted = self
            .store
            .visit_agents(&mut |a| counts[a.status.clamp(0, 3) as usize] += 1)
            .await;
        if counted.is_err() {
            return;
        }
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
    }

    pub fn configs(&self) -> Arc<Vec<StoredConfig>> {
        self.configs.read().expect("configs lock").clone()
    }

    /// Calls `f` on every agent record (without copying the fleet).
    pub async fn visit_agents(
        &self,
        f: &mut (dyn for<'r> FnMut(&'r AgentRecord) + Send),
    ) -> Result<(), StoreError> {
        self.store.visit_agents(f).await
    }

    pub async fn agent(&self, uid: Uuid) -> Result<Option<AgentRecord>, StoreError> {
        self.store.get_agent(uid).await
    }

    /// Stores a new version of a config and pushes it to the connected WebSocket agents whose
    /// desired config it changes; HTTP agents get it on their next poll.
    pub async fn put_config(
        &self,
        name: &str,
        selector: BTreeMap<String, String>,
        files: BTreeMap<String, String>,
    ) -> Result<StoredConfig, ServiceError> {
        if !configs::valid_name(name) {
            return Err(ServiceError::BadRequest(format!(
                "config name {name:?} must be 1-128 characters of letters, digits, '-', '_' or '.'"
            )));
        }
        if files.is_empty() {
            return Err(ServiceError::BadRequest(
                "a config needs at least one file in \"files\"".into(),
            ));
        }
        if let Some(k) = selector.keys().find(|k| k.is_empty()) {
            return Err(ServiceError::BadRequest(format!(
                "selector key {k:?} must not be empty"
            )));
        }
        let files: BTreeMap<String, ConfigFile> = files
            .into_iter()
            .map(|(n, body)| {
                let content_type = configs::content_type_for(&n).to_owned();
                (n, ConfigFile { body, content_type })
            })
            .collect();
        let draft = StoredConfig {
            name: name.to_owned(),
            version: 0,
            selector,
            hash: configs::hex(&configs::hash_of_files(&files)),
            files,
            created_unix_ms: now_unix_ms(),
        };
        let stored = self.store.put_config(draft).await?;
        {
            let mut all = self.configs.write().expect("configs lock");
            let mut next: Vec<StoredConfig> =
                all.iter().filter(|c| c.name != name).cloned().collect();
            next.push(stored.clone());
            next.sort_by(|a, b| a.name.cmp(&b.name));
            *all = Arc::new(next);
        }
        info!(config = %name, version = stored.version, hash = %stored.hash, "config stored");
        self.push_configs().await?;
        Ok(stored)
    }

    /// Sends each connected WebSocket agent whose reported config differs from its desired one the
    /// desired config. Idempotent: agents that already run it get nothing.
    async fn push_configs(&self) -> Result<(), StoreError> {
        let configs = self.configs();
        let mut pushes: Vec<(Origin, ServerToAgent)> = Vec::new();
        self.store
            .visit_agents(&mut |rec| {
                let (Some(origin), Some(cfg)) =
                    (live_ws(rec), agent::config_to_offer(rec, &configs))
                else {
                    return;
                };
                let msg = ServerToAgent {
                    instance_uid: rec.instance_uid.clone(),
                    capabilities: agent::SERVER_CAPABILITIES,
                    remote_config: Some(configs::remote_config_message(cfg)),
                    ..Default::default()
                };
                pushes.push((origin.clone(), msg));
            })
            .await?;
        let total = pushes.len();
        let delivered = futures_util::stream::iter(pushes)
            .map(|(origin, msg)| async move { self.push(&origin, &msg).await })
            .buffer_unordered(256)
            .filter(|ok| std::future::ready(*ok))
            .count()
            .await;
        info!(total, delivered, "config pushed to connected agents");
        Ok(())
    }

    /// Sends a ServerToAgent (addressed by its instance_uid) to the connection `origin`; true if
    /// the gateway delivered it.
    async fn push(&self, origin: &Origin, msg: &ServerToAgent) -> bool {
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

    /// Restarts an agent: at once over its live WebSocket, otherwise at its next message.
    pub async fn restart(&self, uid: Uuid) -> Result<RestartOutcome, ServiceError> {
        let _guard = self.shard_locks[usize::from(shard_of(uid.as_bytes()))]
            .lock()
            .await;
        let mut rec = self
            .store
            .get_agent(uid)
            .await?
            .ok_or_else(|| ServiceError::NotFound(format!("no agent {uid}")))?;
        if !has(rec.capabilities, Cap::AcceptsRestartCommand) {
            return Err(ServiceError::Conflict(format!(
                "agent {uid} does not accept restart commands (no AcceptsRestartCommand capability)"
            )));
        }
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
                return Ok(RestartOutcome::Delivered);
            }
        }
        rec.restart_expires_unix_ms = now_unix_ms() + self.cfg.restart_ttl.as_millis() as u64;
        self.store.put_agent(rec).await?;
        info!(%uid, "restart queued until the agent's next message");
        Ok(RestartOutcome::Queued)
    }
}

fn reply_of(server_to_agent: Vec<u8>) -> UplinkReply {
    UplinkReply {
        server_to_agent,
        new_instance_uid: Vec::new(),
    }
}

/// The connection of an agent that is connected over WebSocket (the only kind a push can reach).
fn live_ws(rec: &AgentRecord) -> Option<&Origin> {
    rec.origin.as_ref().filter(|o| {
        rec.status == AgentStatus::Connected as i32 && o.transport() == Transport::Websocket
    })
}
