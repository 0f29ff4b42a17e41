//! The records of one owned shard, locked ([`Locked`]): every read and write of an agent's record
//! by its owner goes through here, under the shard's lock and fence. With a remote store the owner
//! keeps a copy of each record it read or wrote ([`super::shards::ShardCache`]): a message is
//! processed without reading the store, and a save that changes only the sequence number and
//! last-seen time (a heartbeat) writes just those ([`Store::touch_agent`]), still fenced.

use super::owner::Owner;
use super::shards::ShardCache;
use flotilla_common::store::{AuditEntry, Deadline, Fence, Store, StoreError, Touch};
use flotilla_proto::bus::AgentRecord;
use tokio::sync::MutexGuard;
use tracing::{Span, info};
use uuid::Uuid;

/// One owned shard under its lock, with the fence its writes carry.
pub(crate) struct Locked<'a> {
    cache: MutexGuard<'a, ShardCache>,
    pub(crate) fence: Fence,
    store: &'a dyn Store,
    /// Whether copies are kept (not when the store itself holds every record in memory).
    keep: bool,
}

impl Owner {
    /// Takes the lock of `shard`; None if this process may not act on it.
    pub(crate) async fn lock_owned(&self, shard: u16) -> Option<Locked<'_>> {
        let cache = self.shards.lock(shard).await;
        let fence = self.shards.fence(shard)?;
        Span::current()
            .record("shard", shard)
            .record("epoch", fence.epoch);
        Some(Locked {
            cache,
            fence,
            store: self.store.as_ref(),
            keep: !self.store.holds_agents_in_memory(),
        })
    }

    /// Saves under the shard's fence (with `audit` in the same step); false (and the shard
    /// dropped) if another coordinator took it.
    pub(crate) async fn save_or_drop(
        &self,
        shard: &mut Locked<'_>,
        rec: &AgentRecord,
        deadline: Deadline,
        audit: Option<&AuditEntry>,
    ) -> Result<bool, StoreError> {
        match shard.save(rec, deadline, audit).await {
            Ok(()) => Ok(true),
            Err(StoreError::Fenced { .. }) => {
                self.lost(shard);
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }

    /// Removes an agent (with `audit`): whether there was one; None (and the shard dropped) if
    /// another coordinator took the shard.
    pub(crate) async fn delete_or_drop(
        &self,
        shard: &mut Locked<'_>,
        uid: Uuid,
        audit: Option<&AuditEntry>,
    ) -> Result<Option<bool>, StoreError> {
        match shard.delete(uid, audit).await {
            Ok(deleted) => Ok(Some(deleted)),
            Err(StoreError::Fenced { .. }) => {
                self.lost(shard);
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// Has the store count the agents of owned shards it does not count yet (records written
    /// before counts were kept); each shard is asked once per epoch.
    pub(crate) async fn count_shards(&self) -> Result<(), StoreError> {
        for shard in self.shards.owned() {
            let Some(mut locked) = self.lock_owned(shard).await else {
                continue;
            };
            if locked.cache.counted {
                continue;
            }
            match locked.store.count_shard(locked.fence).await {
                Ok(counted) => {
                    if counted {
                        info!(shard, "agents written before counts were kept are counted");
                    }
                    locked.cache.counted = true;
                }
                Err(StoreError::Fenced { .. }) => self.lost(&mut locked),
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// A write was refused: another coordinator holds the shard now.
    fn lost(&self, shard: &mut Locked<'_>) {
        shard.cache.clear();
        self.fenced(shard.fence.shard);
    }
}

impl Locked<'_> {
    /// Agent `uid`'s record: the owner's copy, or the store's.
    pub(crate) async fn get(&mut self, uid: Uuid) -> Result<Option<AgentRecord>, StoreError> {
        if let Some(rec) = self.cache.records.get(&uid) {
            return Ok(Some(rec.clone()));
        }
        let rec = self.store.get_agent(uid).await?;
        if self.keep
            && let Some(rec) = &rec
        {
            self.cache.records.insert(uid, rec.clone());
        }
        Ok(rec)
    }

    /// Writes `rec` and changes its deadline (with `audit` in the same step): only its sequence
    /// number and last-seen time when nothing else differs from the copy, else all of it.
    pub(crate) async fn save(
        &mut self,
        rec: &AgentRecord,
        deadline: Deadline,
        audit: Option<&AuditEntry>,
    ) -> Result<(), StoreError> {
        let touch = Touch::of(rec)
            .ok_or_else(|| StoreError::Corrupt("agent record without a 16-byte uid".into()))?;
        let heard_only = audit.is_none()
            && self
                .cache
                .records
                .get_mut(&touch.uid)
                .is_some_and(|copy| heard_only(copy, rec));
        if heard_only {
            let touched = self.store.touch_agent(self.fence, touch, deadline).await;
            match touched {
                Ok(true) => {
                    if let Some(copy) = self.cache.records.get_mut(&touch.uid) {
                        touch.apply(copy);
                    }
                    return Ok(());
                }
                // Gone from the store: written whole below.
                Ok(false) => {}
                Err(e) => {
                    self.cache.records.remove(&touch.uid);
                    return Err(e);
                }
            }
        }
        let saved = self
            .store
            .save_agent(self.fence, rec, deadline, audit)
            .await;
        match &saved {
            Ok(()) if self.keep => {
                self.cache.records.insert(touch.uid, rec.clone());
            }
            // Written or not: the store's copy is the one to read next.
            _ => {
                self.cache.records.remove(&touch.uid);
            }
        }
        saved
    }

    /// Removes agent `uid` (with `audit` in the same step); false if there was no such agent.
    pub(crate) async fn delete(
        &mut self,
        uid: Uuid,
        audit: Option<&AuditEntry>,
    ) -> Result<bool, StoreError> {
        self.cache.records.remove(&uid);
        self.store.delete_agent(self.fence, uid, audit).await
    }
}

/// Whether `new` differs from `copy` in its sequence number and last-seen time alone. Compares in
/// place (the copy's two fields set to `new`'s, then put back) rather than cloning the record.
fn heard_only(copy: &mut AgentRecord, new: &AgentRecord) -> bool {
    let kept = (copy.sequence_num, copy.last_seen_unix_ms);
    (copy.sequence_num, copy.last_seen_unix_ms) = (new.sequence_num, new.last_seen_unix_ms);
    let same = copy == new;
    (copy.sequence_num, copy.last_seen_unix_ms) = kept;
    same
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_sequence_number_and_last_seen_time_make_a_touch() {
        let mut copy = AgentRecord {
            instance_uid: vec![7; 16],
            sequence_num: 4,
            last_seen_unix_ms: 1_000,
            ..Default::default()
        };
        let mut new = copy.clone();
        new.sequence_num = 5;
        new.last_seen_unix_ms = 31_000;
        assert!(heard_only(&mut copy, &new));
        assert_eq!(
            (copy.sequence_num, copy.last_seen_unix_ms),
            (4, 1_000),
            "the copy is left as it was"
        );
        new.status = 2;
        assert!(!heard_only(&mut copy, &new));
        assert_eq!((copy.sequence_num, copy.status), (4, 0));
    }
}
