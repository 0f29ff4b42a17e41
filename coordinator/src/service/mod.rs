//! The running coordinator: the shard owner ([`Owner`]) that takes agent messages off the bus in
//! order per shard, keeps agent records in the store and pushes desired state to connected agents
//! through their gateway; the background duties under their supervisor ([`duties`]); the shard
//! table ([`shards`]) and, in a cluster, the lease keeper ([`leases`]). [`Service`] assembles them
//! and hands each part the narrow handle it needs: the owner gets the store, the shard table, the
//! desired state, a [`pushes::Pusher`] and an [`events::Events`]; the lease keeper gets the owner;
//! the interfaces get only the operations ([`crate::ops::Ops`]).
//!
//! May use: the OpAMP state machine, the fleet rules, the operations (the rollout step, the
//! desired state), the Store and Bus. Must not: use the interfaces ([`crate::api`]).

pub mod alerts;
pub mod duties;
pub mod leases;
pub mod shards;

mod awaiting;
mod commands;
mod config;
mod events;
mod heartbeats;
mod lists;
mod own_metrics;
mod owner;
mod pusher;
mod pushes;
mod records;
mod silence;
mod sinks;
mod uplinks;

pub use config::CoordinatorConfig;
pub use owner::Owner;

use crate::fleet::agents::in_fleet_view;
use crate::metrics::OwnerMetrics;
use crate::ops::views::OverviewBuilder;
use crate::ops::{DesiredState, Ops, OpsConfig};
use bytes::Bytes;
use duties::{DutyHealth, supervise};
use events::Events;
use flotilla_common::bus::{Bus, BusError, Subscription};
use flotilla_common::names::{FLEET_QUERY_GROUP, Subjects};
use flotilla_common::store::{Store, StoreError};
use flotilla_common::telemetry::label_value;
use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use prometheus_client::registry::Registry;
use pusher::Pusher;
use shards::ShardTable;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// Answers each request of `requests` until `cancel`, each in a task of its own, with `answer`
/// while fewer than `at_once` are being answered; past that with `busy` at once, so the asker
/// is told rather than left to time out.
async fn answer_each<F>(
    mut requests: Subscription,
    cancel: CancellationToken,
    at_once: usize,
    answer: impl Fn(Bytes) -> F,
    busy: impl Fn() -> Bytes,
) where
    F: Future<Output = Bytes> + Send + 'static,
{
    let slots = Arc::new(tokio::sync::Semaphore::new(at_once));
    loop {
        let request = tokio::select! {
            m = requests.next() => match m {
                Some(m) => m,
                None => return,
            },
            () = cancel.cancelled() => return,
        };
        let Some(reply) = request.reply else { continue };
        match slots.clone().try_acquire_owned() {
            Ok(slot) => {
                let answering = answer(request.msg.payload);
                tokio::spawn(async move {
                    let answered = answering.await;
                    drop(slot);
                    if let Err(e) = reply.send(answered).await {
                        warn!(error = %e, "an answer to a request was not sent");
                    }
                });
            }
            Err(_) => {
                let _ = reply.send(busy()).await;
            }
        }
    }
}

/// A coordinator, assembled: its shard owner, its operations, its duties.
pub struct Service {
    owner: Arc<Owner>,
    ops: Ops,
    bus: Arc<dyn Bus>,
    subjects: Subjects,
    duty_health: DutyHealth,
}

impl Service {
    /// `shards`: [`ShardTable::all`] for the embedded mode, [`ShardTable::none`] in a cluster
    /// (where [`leases::LeaseKeeper`] fills it).
    pub async fn new(
        cfg: CoordinatorConfig,
        bus: Arc<dyn Bus>,
        store: Arc<dyn Store>,
        shards: ShardTable,
        registry: &mut Registry,
    ) -> Result<Arc<Self>, StoreError> {
        let desired = DesiredState::load(store.as_ref()).await?;
        let subjects = Subjects::new(&cfg.region);
        let metrics = OwnerMetrics::new(registry);
        let ops = Ops::new(
            OpsConfig {
                redactor: cfg.redactor.clone(),
                max_message_size: cfg.max_message_size,
                owner_timeout: cfg.push_timeout + Duration::from_secs(1),
                owner_deadline: cfg.owner_deadline,
                unhealthy_grace: Duration::from_millis(cfg.alerts.policy.grace_ms),
                peer_regions: cfg.regions.peers(&cfg.region),
                region_timeout: cfg.regions.timeout,
                ..OpsConfig::new(&cfg.region)
            },
            store.clone(),
            bus.clone(),
            desired.clone(),
        );
        let pusher = Pusher::new(
            bus.clone(),
            subjects.clone(),
            cfg.push_timeout,
            metrics.clone(),
            cfg.max_message_size,
            Arc::new(tokio::sync::Semaphore::new(pusher::MAX_UPLINKS_IN_FLIGHT)),
        );
        let events = Events::new(bus.clone(), subjects.clone(), &cfg.node_id, metrics.clone());
        let owner = Arc::new(Owner::new(
            cfg, store, shards, desired, pusher, events, metrics,
        ));
        Ok(Arc::new(Self {
            owner,
            ops,
            bus,
            subjects,
            duty_health: DutyHealth::default(),
        }))
    }

    /// The operations, for the interfaces.
    pub fn ops(&self) -> Ops {
        self.ops.clone()
    }

    /// The shard owner, for the lease keeper.
    pub fn owner(&self) -> Arc<Owner> {
        self.owner.clone()
    }

    /// Whether the background duties run well (for `/readyz`).
    pub fn duty_health(&self) -> DutyHealth {
        self.duty_health.clone()
    }

    /// The embedded mode: serves every shard's agent messages and runs the background duties
    /// until `cancel`; then finishes the messages already taken.
    pub async fn run(self: Arc<Self>, cancel: CancellationToken) -> Result<(), BusError> {
        let uplinks = self.bus.subscribe(&self.subjects.uplink_all()).await?;
        info!(node = %self.owner.cfg.node_id, region = %self.owner.cfg.region, "coordinator serving all shards");
        let duties = tokio::spawn(self.clone().run_duties(cancel.clone()));
        let heartbeats = tokio::spawn(self.clone().serve_heartbeats(cancel.clone()));
        self.owner.clone().serve(uplinks, cancel).await;
        let _ = duties.await;
        let _ = heartbeats.await;
        Ok(())
    }

    /// Records the heartbeats gateways answered under this coordinator's grants until `cancel`
    /// (ADR 0021). Without the subscription gateways find nobody taking them, end their grants,
    /// and send the agents' heartbeats to the owners as they come.
    pub async fn serve_heartbeats(self: Arc<Self>, cancel: CancellationToken) {
        let subject = self.subjects.answered_heartbeats(&self.owner.cfg.node_id);
        match self.bus.subscribe(&subject).await {
            Ok(batches) => self.owner.clone().serve_heartbeats(batches, cancel).await,
            Err(e) => {
                warn!(error = %e, %subject, "cannot take answered heartbeats; gateways will send every heartbeat on")
            }
        }
    }

    /// Until `cancel`, each under the duty supervisor: sweeps silence deadlines and steps
    /// rollouts every second, re-reads the desired state every 5 s (and pushes at once when a
    /// coordinator announces a change), refreshes gauges every 15 s, keeps the alert books (when
    /// there are alert sinks), and removes agents gone longer than the agent retention.
    pub async fn run_duties(self: Arc<Self>, cancel: CancellationToken) {
        let announced = Arc::new(Notify::new());
        // Agents are removed within a quarter of the retention past it, checked at most once a
        // second and at least once a minute.
        let retention_every = (self.owner.cfg.agent_retention / 4).clamp(SECOND, 60 * SECOND);
        type Run = fn(Arc<Service>) -> BoxFuture<'static, Result<(), String>>;
        let duty = |name: &'static str, every: Duration, wake: Option<Arc<Notify>>, run: Run| {
            let this = self.clone();
            supervise(
                name,
                every,
                wake,
                self.duty_health.clone(),
                self.owner.metrics.duty_failures.clone(),
                cancel.clone(),
                move || run(this.clone()),
            )
        };
        tokio::join!(
            self.clone().hear_changes(announced.clone(), cancel.clone()),
            self.clone().answer_regions(cancel.clone()),
            self.clone().answer_lists(cancel.clone()),
            duty("silence_sweep", SECOND, None, |s| {
                async move { s.owner.sweep_silent().await.map_err(|e| e.to_string()) }.boxed()
            }),
            duty("rollouts", SECOND, None, |s| {
                // The holder of shard 0 steps the rollouts: one process at a time.
                // It alone reports them by state (summed over coordinators, the fleet's).
                async move {
                    let rollouts = &s.owner.metrics.rollouts;
                    match s.owner.shards.fence(0) {
                        Some(_) => {
                            let states = s.ops.step_rollouts().await?;
                            for (state, n) in states {
                                let labels = vec![("state", state.as_str())];
                                rollouts.get_or_create(&labels).set(n as i64);
                            }
                            if s.ops.peer_regions().is_empty() {
                                return Ok(());
                            }
                            s.ops
                                .step_region_rollouts()
                                .await
                                .map_err(|e| e.to_string())
                        }
                        None => {
                            rollouts.clear();
                            Ok(())
                        }
                    }
                }
                .boxed()
            }),
            async {
                // A fleet of several regions: the holder of shard 0 takes the configs the other
                // regions hold and this one lacks.
                if !self.ops.peer_regions().is_empty() {
                    duty("config_sync", 2 * SECOND, None, |s| {
                        async move {
                            match s.owner.shards.fence(0) {
                                Some(_) => s
                                    .ops
                                    .sync_configs()
                                    .await
                                    .map(drop)
                                    .map_err(|e| e.to_string()),
                                None => Ok(()),
                            }
                        }
                        .boxed()
                    })
                    .await;
                }
            },
            duty("gauges", 15 * SECOND, None, |s| {
                async move { s.owner.refresh_gauges().await }.boxed()
            }),
            async {
                // No sink, no alerts: the books are not even kept.
                if !self.owner.cfg.alerts.sinks.is_empty() {
                    let every = self.owner.cfg.alerts.every;
                    duty("alerts", every, None, |s| {
                        async move { s.owner.alert_pass().await }.boxed()
                    })
                    .await;
                }
            },
            duty("desired_state", 5 * SECOND, Some(announced.clone()), |s| {
                async move { s.owner.follow_desired().await }.boxed()
            }),
            duty("agent_retention", retention_every, None, |s| {
                async move { s.owner.expire_agents().await }.boxed()
            }),
        );
    }

    /// Answers the other regions' fleet views (one coordinator of this region, the queue
    /// group's choice, answers each), at most [`REGION_ANSWERS`] at once: past that the asker is
    /// told this region is busy at once rather than left to time out.
    async fn answer_regions(self: Arc<Self>, cancel: CancellationToken) {
        let subject = self.subjects.fleet_query();
        let queries = match self.bus.subscribe_queue(&subject, FLEET_QUERY_GROUP).await {
            Ok(s) => s,
            Err(e) => {
                warn!(error = %e, "cannot answer other regions' fleet views");
                return;
            }
        };
        let ops = self.ops.clone();
        let answer = move |query: Bytes| {
            let ops = ops.clone();
            async move { ops.answer_region(&query).await }
        };
        answer_each(queries, cancel, REGION_ANSWERS, answer, || {
            self.ops.region_busy()
        })
        .await;
    }

    /// Wakes `announced` whenever a coordinator announces a change of desired state.
    async fn hear_changes(self: Arc<Self>, announced: Arc<Notify>, cancel: CancellationToken) {
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
                    Some(_) => {
                        self.owner.announced();
                        announced.notify_one();
                    }
                    None => return,
                },
                () = cancel.cancelled() => return,
            }
        }
    }
}

const SECOND: Duration = Duration::from_secs(1);

/// Other regions' fleet views one coordinator answers at once.
const REGION_ANSWERS: usize = 4;

/// Milliseconds of `d`, saturating.
pub(crate) fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl Owner {
    /// A coordinator announced a change of desired state: push at the next re-read.
    fn announced(&self) {
        self.pending_push.store(true, Ordering::Release);
    }

    /// Re-reads the desired state; pushes to the connected agents of the owned shards when it
    /// changed, or when a change was announced since the last run (this process's own changes
    /// are read at once by the operation that made them, so they show as no change here).
    async fn follow_desired(&self) -> Result<(), String> {
        let changed = self
            .desired
            .reload(self.store.as_ref())
            .await
            .map_err(|e| format!("cannot re-read configs and rollouts: {e}"))?;
        let announced = self.pending_push.swap(false, Ordering::AcqRel);
        if changed || announced {
            info!("desired state changed; pushing to connected agents");
            let now = self.desired.current();
            let before = std::mem::replace(&mut *self.pushed_under.lock(), now);
            self.push_configs(&|_| true, Some(&before)).await;
        }
        Ok(())
    }

    /// Agents of the owned shards by status, health, config state and version (at most
    /// [`crate::ops::views::MAX_GROUPS`] versions named, the rest `(other)`): summed over the coordinators, the fleet.
    async fn refresh_gauges(&self) -> Result<(), String> {
        self.metrics
            .owned_shards
            .set(self.shards.owned_count() as i64);
        let desired = self.desired.current();
        let mut overview = OverviewBuilder::default();
        self.visit_owned(&|_| true, &mut |a| {
            if in_fleet_view(a) {
                overview.add(a, &desired);
            }
        })
        .await
        .map_err(|e| e.to_string())?;
        let o = overview.finish();
        let h = &o.health;
        let m = &self.metrics;
        for (status, n) in [
            ("connected", h.connected_agents),
            ("disconnected", h.disconnected_agents),
            ("silent", h.silent_agents),
        ] {
            m.agents
                .get_or_create(&vec![("status", status)])
                .set(n as i64);
        }
        let unknown = h.connected_agents - h.healthy_agents - h.unhealthy_agents;
        for (health, n) in [
            ("healthy", h.healthy_agents),
            ("unhealthy", h.unhealthy_agents),
            ("unknown", unknown),
        ] {
            m.agents_health
                .get_or_create(&vec![("health", health)])
                .set(n as i64);
        }
        for (state, n) in &o.config_states {
            m.agents_config
                .get_or_create(&vec![("state", state)])
                .set(*n as i64);
        }
        // Versions come and go: the family is rebuilt, never left with versions nobody runs.
        m.agents_version.clear();
        for g in &o.versions {
            m.agents_version
                .get_or_create(&vec![("version", label_value(&g.value))])
                .set(g.agents as i64);
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
}
