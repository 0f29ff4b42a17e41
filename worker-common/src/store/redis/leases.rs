//! Shard leases and coordinator membership: who may write which shard, and for how long.

use super::scripts::{ACQUIRE, HEARTBEAT, RELEASE, RENEW};
use super::{RedisStore, io};
use crate::store::types::{Fence, StoreError};
use futures_util::future::join_all;
use std::sync::atomic::Ordering;
use std::time::Duration;

/// The record layout this version reads: 2, an agent's description and health in hash fields of
/// their own (d, k) where its record (r) lacks them. Versions before read r alone, and name no
/// layout in the membership.
const RECORD_LAYOUT: u32 = 2;

/// How long leases last and how they are kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseTiming {
    /// A lease (and a membership heartbeat) expires this long after its last renewal.
    pub ttl: Duration,
    /// Renewal period.
    pub renew_every: Duration,
    /// A holder stops acting on a shard this long after sending its last successful renewal:
    /// before the lease can expire in Redis, so two owners never act at once.
    pub act_for: Duration,
}

impl LeaseTiming {
    /// Renews every ttl/3 and acts for 2/3 of the ttl (15 s: renew every 5 s, act for 10 s).
    pub fn from_ttl(ttl: Duration) -> Self {
        Self {
            ttl,
            renew_every: ttl / 3,
            act_for: ttl * 2 / 3,
        }
    }
}

impl Default for LeaseTiming {
    fn default() -> Self {
        Self::from_ttl(Duration::from_secs(15))
    }
}

impl RedisStore {
    /// Records that coordinator `node` is alive and returns every live coordinator (sorted).
    /// Members that have not beaten for `ttl` are dropped. Also learns whether every live
    /// member reads records with parts kept apart ([`RECORD_LAYOUT`]), which decides how this
    /// store writes them from now on.
    pub async fn heartbeat(&self, node: &str, ttl: Duration) -> Result<Vec<String>, StoreError> {
        let (mut members, layouts): (Vec<String>, Vec<Option<u32>>) = HEARTBEAT
            .key(format!("{}:coords", self.prefix))
            .key(format!("{}:formats", self.prefix))
            .arg(node)
            .arg(ttl.as_millis() as u64)
            .arg(RECORD_LAYOUT)
            .invoke_async(&mut self.conn.clone())
            .await
            .map_err(io)?;
        let apart = layouts
            .iter()
            .all(|l| l.is_some_and(|l| l >= RECORD_LAYOUT));
        self.parts_apart.store(apart, Ordering::Relaxed);
        members.sort();
        Ok(members)
    }

    /// Removes `node` from the membership at once (a graceful stop).
    pub async fn leave(&self, node: &str) -> Result<(), StoreError> {
        let _: () = redis::pipe()
            .atomic()
            .zrem(format!("{}:coords", self.prefix), node)
            .ignore()
            .hdel(format!("{}:formats", self.prefix), node)
            .ignore()
            .query_async(&mut self.conn.clone())
            .await
            .map_err(io)?;
        Ok(())
    }

    /// Takes the lease of `shard` for `node` if nobody holds it; returns the new epoch.
    pub async fn acquire(
        &self,
        shard: u16,
        node: &str,
        ttl: Duration,
    ) -> Result<Option<Fence>, StoreError> {
        let epoch: String = ACQUIRE
            .key(self.shard_key(shard, "lease"))
            .key(self.shard_key(shard, "epoch"))
            .arg(node)
            .arg(ttl.as_millis() as u64)
            .invoke_async(&mut self.conn.clone())
            .await
            .map_err(io)?;
        // "0" when somebody holds the lease.
        let epoch: u64 = epoch
            .parse()
            .map_err(|_| StoreError::Corrupt(format!("lease epoch {epoch:?}")))?;
        Ok((epoch > 0).then_some(Fence { shard, epoch }))
    }

    /// Extends the leases `node` holds under `fences`; returns, per fence, whether it still holds
    /// (false: the lease expired or someone else took it; stop acting on the shard).
    pub async fn renew(
        &self,
        fences: &[Fence],
        node: &str,
        ttl: Duration,
    ) -> Result<Vec<bool>, StoreError> {
        let ttl_ms = ttl.as_millis() as u64;
        let results = join_all(fences.iter().map(|f| {
            let mut conn = self.conn.clone();
            let key = self.shard_key(f.shard, "lease");
            let value = Self::lease_value(node, f.epoch);
            async move {
                RENEW
                    .key(key)
                    .arg(value)
                    .arg(ttl_ms)
                    .invoke_async::<i64>(&mut conn)
                    .await
            }
        }))
        .await;
        results
            .into_iter()
            .map(|r| r.map(|n| n == 1).map_err(io))
            .collect()
    }

    /// Gives a lease up (only if `node` still holds it under `fence`).
    pub async fn release(&self, fence: Fence, node: &str) -> Result<bool, StoreError> {
        let n: i64 = RELEASE
            .key(self.shard_key(fence.shard, "lease"))
            .arg(Self::lease_value(node, fence.epoch))
            .invoke_async(&mut self.conn.clone())
            .await
            .map_err(io)?;
        Ok(n == 1)
    }
}
