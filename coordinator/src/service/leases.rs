//! Shard ownership in a cluster: membership heartbeats, rendezvous assignment, lease acquisition,
//! renewal, gradual rebalancing and graceful handoff, all through Redis ([`RedisStore`]), with one
//! NATS subscription per owned shard.
//!
//! Once a second the [`LeaseKeeper`] (which does nothing but let its leases lapse while it cannot
//! reach NATS):
//! 1. beats its membership and reads the live members;
//! 2. stops acting on shards whose lease it could not renew in time (a pause, a partition, a
//!    Redis outage) or that were fenced;
//! 3. renews its leases every `renew_every`; a lease found taken or expired is dropped;
//! 4. acquires the free shards rendezvous hashing prefers it for;
//! 5. hands over up to [`HANDOFF_PER_TICK`] shards that another live member is now preferred for.
//!
//! A handoff stops taking the shard's uplinks, finishes those in flight, releases the lease
//! (compare-and-delete) and announces it, so the next owner acquires in milliseconds; a crashed
//! owner's shards are taken when its leases expire.

use super::owner::Owner;
use flotilla_common::bus::{Bus, BusMessage};
use flotilla_common::names::{SHARD_COUNT, Subjects};
use flotilla_common::store::{Fence, LeaseTiming, RedisStore};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info, info_span, warn};

use super::shards::preferred_owner;

/// Most shards handed to their preferred owner per second: rebalancing after a join is gradual.
pub const HANDOFF_PER_TICK: usize = 128;

/// The announcement of a released shard.
#[derive(Debug, Serialize, Deserialize)]
struct Released {
    shard: u16,
    from: String,
    /// The sender is stopping: treat it as gone from the membership at once.
    leaving: bool,
}

struct Worker {
    stop: CancellationToken,
    done: JoinHandle<()>,
}

pub struct LeaseKeeper {
    owner: Arc<Owner>,
    store: RedisStore,
    bus: Arc<dyn Bus>,
    node: String,
    timing: LeaseTiming,
    subjects: Subjects,
    members: Vec<String>,
    workers: HashMap<u16, Worker>,
    last_renew: Option<Instant>,
    healthy: Arc<AtomicBool>,
    bus_connected: Arc<dyn Fn() -> bool + Send + Sync>,
    ticks: u64,
}

impl LeaseKeeper {
    /// `bus_connected` tells whether this process can hear its shards' uplinks: while it cannot,
    /// it neither beats its membership nor renews, so its shards go to coordinators that can.
    pub fn new(
        owner: Arc<Owner>,
        store: RedisStore,
        bus: Arc<dyn Bus>,
        bus_connected: Arc<dyn Fn() -> bool + Send + Sync>,
        region: &str,
        node: &str,
        timing: LeaseTiming,
    ) -> Self {
        Self {
            owner,
            store,
            bus,
            node: node.to_owned(),
            timing,
            subjects: Subjects::new(region),
            members: Vec::new(),
            workers: HashMap::new(),
            last_renew: None,
            healthy: Arc::new(AtomicBool::new(false)),
            bus_connected,
            ticks: 0,
        }
    }

    /// True while the membership heartbeat reaches Redis: what `/readyz` reports.
    pub fn health(&self) -> Arc<AtomicBool> {
        self.healthy.clone()
    }

    /// Keeps leases until `cancel`; then hands every shard over and leaves the membership.
    pub async fn run(mut self, cancel: CancellationToken) {
        let mut released = match self.bus.subscribe(&self.subjects.shard_released()).await {
            Ok(s) => Some(s),
            Err(e) => {
                warn!(error = %e, "cannot hear shard releases; acquiring once a second only");
                None
            }
        };
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        info!(node = %self.node, ttl = ?self.timing.ttl, "keeping shard leases");
        loop {
            tokio::select! {
                _ = tick.tick() => self.tick().await,
                Some(m) = async { released.as_mut()?.next().await } => {
                    if let Ok(r) = serde_json::from_slice::<Released>(&m.msg.payload) {
                        self.on_released(r).await;
                    }
                }
                () = cancel.cancelled() => break,
            }
        }
        self.leave().await;
    }

    async fn tick(&mut self) {
        self.ticks += 1;
        if !(self.bus_connected)() {
            // Cut off from NATS: the shards' uplinks cannot reach us. Let membership and leases
            // lapse so the others take over, rather than hold shards nobody can be served on.
            self.healthy.store(false, Ordering::Relaxed);
            warn!("NATS unreachable: not renewing shard leases");
            self.drop_lapsed().await;
            return;
        }
        match self.store.heartbeat(&self.node, self.timing.ttl).await {
            Ok(members) => {
                self.members = members;
                self.healthy.store(true, Ordering::Relaxed);
            }
            Err(e) => {
                warn!(error = %e, "membership heartbeat failed");
                self.healthy.store(false, Ordering::Relaxed);
            }
        }
        self.drop_lapsed().await;
        if self
            .last_renew
            .is_none_or(|at| at.elapsed() >= self.timing.renew_every)
        {
            self.renew().await;
        }
        // The first tick only joins the membership: coordinators started together see each other
        // before anyone acquires, instead of one taking every shard and handing most back.
        if self.ticks > 1 {
            self.acquire_preferred().await;
            self.hand_over_surplus().await;
        }
    }

    fn preferred_here(&self, shard: u16) -> bool {
        preferred_owner(shard, &self.members) == Some(self.node.as_str())
    }

    /// Shards held but no longer valid (renewals failed for `act_for`, or a write was fenced).
    async fn drop_lapsed(&mut self) {
        let lapsed: Vec<u16> = self
            .workers
            .keys()
            .copied()
            .filter(|s| self.owner.shards.fence(*s).is_none())
            .collect();
        if lapsed.is_empty() {
            return;
        }
        warn!(
            shards = lapsed.len(),
            "leases lapsed (not renewed in time, or fenced); stopped acting on them"
        );
        for shard in &lapsed {
            self.owner.shards.drop_shard(*shard);
            if let Some(w) = self.workers.remove(shard) {
                w.stop.cancel();
            }
        }
        self.owner.count_shard_changes("lost", lapsed.len());
    }

    async fn renew(&mut self) {
        let fences: Vec<Fence> = (0..SHARD_COUNT)
            .filter_map(|s| self.owner.shards.held(s))
            .collect();
        let sent = Instant::now();
        self.last_renew = Some(sent);
        if fences.is_empty() {
            return;
        }
        let results = match self.store.renew(&fences, &self.node, self.timing.ttl).await {
            Ok(r) => r,
            Err(e) => {
                // Leases stay valid until act_for after the last good renewal; retried next tick.
                warn!(error = %e, "lease renewal failed");
                self.last_renew = None;
                return;
            }
        };
        let mut lost = 0;
        for (fence, held) in fences.into_iter().zip(results) {
            if held {
                self.owner.shards.extend(fence, sent + self.timing.act_for);
            } else {
                warn!(shard = fence.shard, "lease lost (expired or taken over)");
                self.owner.shards.drop_shard(fence.shard);
                if let Some(w) = self.workers.remove(&fence.shard) {
                    w.stop.cancel();
                }
                lost += 1;
            }
        }
        if lost > 0 {
            self.owner.count_shard_changes("lost", lost);
        }
    }

    async fn acquire_preferred(&mut self) {
        let wanted: Vec<u16> = (0..SHARD_COUNT)
            .filter(|s| self.preferred_here(*s) && self.owner.shards.held(*s).is_none())
            .collect();
        self.acquire(wanted).await;
    }

    async fn acquire(&mut self, shards: Vec<u16>) {
        if shards.is_empty() {
            return;
        }
        let sent = Instant::now();
        let store = &self.store;
        let node = self.node.as_str();
        let ttl = self.timing.ttl;
        let got: Vec<Fence> = futures_util::stream::iter(shards)
            .map(|shard| async move { store.acquire(shard, node, ttl).await })
            .buffer_unordered(64)
            .filter_map(|r| async move {
                r.map_err(|e| debug!(error = %e, "acquire failed"))
                    .ok()
                    .flatten()
            })
            .collect()
            .await;
        if got.is_empty() {
            return;
        }
        for fence in &got {
            self.owner.shards.hold(*fence, sent + self.timing.act_for);
            self.start_worker(fence.shard).await;
        }
        self.owner.count_shard_changes("acquired", got.len());
        info!(
            acquired = got.len(),
            owned = self.workers.len(),
            "shards acquired"
        );
        let owner = self.owner.clone();
        let shards: Vec<u16> = got.iter().map(|f| f.shard).collect();
        tokio::spawn(async move { owner.shards_acquired(&shards).await }.in_current_span());
    }

    async fn start_worker(&mut self, shard: u16) {
        let sub = match self.bus.subscribe(&self.subjects.uplink(shard)).await {
            Ok(s) => s,
            Err(e) => {
                warn!(error = %e, shard, "cannot subscribe to the shard's uplinks; giving it back");
                if let Some(f) = self.owner.shards.held(shard) {
                    self.owner.shards.drop_shard(shard);
                    let _ = self.store.release(f, &self.node).await;
                }
                return;
            }
        };
        let stop = CancellationToken::new();
        let done = tokio::spawn(
            self.owner
                .clone()
                .serve(sub, stop.clone())
                .instrument(info_span!("shard", shard)),
        );
        self.workers.insert(shard, Worker { stop, done });
    }

    /// Gives shards another live member is preferred for to it, a few per tick.
    async fn hand_over_surplus(&mut self) {
        let surplus: Vec<u16> = self
            .workers
            .keys()
            .copied()
            .filter(|s| preferred_owner(*s, &self.members).is_some_and(|p| p != self.node))
            .take(HANDOFF_PER_TICK)
            .collect();
        if !surplus.is_empty() {
            info!(
                shards = surplus.len(),
                "handing shards to their preferred owners"
            );
            self.hand_over(surplus, false).await;
        }
    }

    /// Graceful handoff: stop taking uplinks, finish those in flight, release, announce.
    async fn hand_over(&mut self, shards: Vec<u16>, leaving: bool) {
        let workers: Vec<(u16, Worker)> = shards
            .into_iter()
            .filter_map(|s| self.workers.remove(&s).map(|w| (s, w)))
            .collect();
        let handed = workers.len();
        let this = &*self;
        futures_util::stream::iter(workers)
            .for_each_concurrent(64, |(shard, w)| async move {
                w.stop.cancel();
                let _ = w.done.await;
                let fence = {
                    // Sweeps and admin changes on the shard finish before the lease goes.
                    let _held = this.owner.shards.lock(shard).await;
                    let fence = this.owner.shards.held(shard);
                    this.owner.shards.drop_shard(shard);
                    fence
                };
                let Some(fence) = fence else { return };
                match this.store.release(fence, &this.node).await {
                    Ok(_) => {
                        let note = Released {
                            shard,
                            from: this.node.clone(),
                            leaving,
                        };
                        let body = serde_json::to_vec(&note).expect("serializable");
                        let msg = BusMessage::new(this.subjects.shard_released(), body);
                        let _ = this.bus.publish(msg).await;
                    }
                    Err(e) => warn!(error = %e, shard, "release failed; the lease will expire"),
                }
            })
            .await;
        self.owner.count_shard_changes("released", handed);
    }

    async fn on_released(&mut self, r: Released) {
        if r.from == self.node {
            return;
        }
        if r.leaving {
            self.members.retain(|m| *m != r.from);
        }
        if self.preferred_here(r.shard) && self.owner.shards.held(r.shard).is_none() {
            self.acquire(vec![r.shard]).await;
        }
    }

    /// A graceful stop: out of the membership first (so the others become preferred for this
    /// node's shards), then every shard handed over.
    async fn leave(mut self) {
        if let Err(e) = self.store.leave(&self.node).await {
            warn!(error = %e, "could not leave the membership; it expires by itself");
        }
        let all: Vec<u16> = self.workers.keys().copied().collect();
        let n = all.len();
        let started = Instant::now();
        self.hand_over(all, true).await;
        info!(shards = n, took = ?started.elapsed(), "handed every shard over");
    }
}
