//! Which shards this coordinator may act on, under which epoch, and until when. Every piece of
//! work on a shard (an uplink, a sweep, an admin change) takes the shard's lock and asks for its
//! [`Fence`] first; no fence, no work.

use crate::fleet::agents::{copy_form, full_form};
use flotilla_common::names::SHARD_COUNT;
use flotilla_common::store::{Fence, Touch};
use flotilla_proto::bus::AgentRecord;
use flotilla_proto::opamp::EffectiveConfig;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Instant;
use tokio::sync::{Mutex, MutexGuard};
use uuid::Uuid;

pub struct ShardTable {
    base: Instant,
    slots: Vec<Slot>,
    shared: SharedConfigs,
}

struct Slot {
    /// Held by whatever acts on the shard (a message, a sweep, an admin change), across its
    /// store calls: one at a time.
    lock: Mutex<()>,
    /// The owner's copies of the shard's records: taken for a moment, never across an await,
    /// by the lock's holder, or by a walk that reads them without waiting for the lock
    /// ([`ShardTable::read_whole`]).
    cache: parking_lot::Mutex<ShardCache>,
    /// 0: not held.
    epoch: AtomicU64,
    /// Milliseconds after `base` until which the holder may act (u64::MAX: for good).
    valid_until_ms: AtomicU64,
    /// The epoch under which the store was last asked to count the shard's agents (0: never):
    /// read without the lock, so a sweep skips counted shards without waiting on their work.
    counted_epoch: AtomicU64,
    /// The shard's earliest silence deadline, as far as this process knows it.
    next_due: parking_lot::Mutex<NextDue>,
}

/// The earliest silence deadline of a shard, known under `epoch` (0: not known, ask the store).
/// The owner alone arms a shard's deadlines (every write is fenced): once a claim has named the
/// earliest one, only the owner's own writes can bring it forward, and a sweep skips the shard
/// until then instead of asking the store every second (ADR 0006).
#[derive(Debug, Default)]
struct NextDue {
    epoch: u64,
    at_ms: u64,
}

impl ShardTable {
    /// No shard held: a coordinator of a cluster before it acquires leases.
    pub fn none() -> Self {
        Self {
            base: Instant::now(),
            slots: (0..SHARD_COUNT)
                .map(|_| Slot {
                    lock: Mutex::new(()),
                    cache: parking_lot::Mutex::new(ShardCache::default()),
                    epoch: AtomicU64::new(0),
                    valid_until_ms: AtomicU64::new(0),
                    counted_epoch: AtomicU64::new(0),
                    next_due: parking_lot::Mutex::new(NextDue::default()),
                })
                .collect(),
            shared: SharedConfigs::default(),
        }
    }

    /// The effective configs the record copies of every shard share.
    pub(crate) fn shared_configs(&self) -> &SharedConfigs {
        &self.shared
    }

    /// Every shard held for good: the embedded mode, where one process is the only owner.
    pub fn all() -> Self {
        let t = Self::none();
        for slot in &t.slots {
            slot.epoch.store(1, Ordering::Relaxed);
            slot.valid_until_ms.store(u64::MAX, Ordering::Relaxed);
        }
        t
    }

    /// Takes the shard's lock; with it, the owner's copies of the shard's records, empty unless
    /// made under the epoch the shard is held with now.
    pub async fn lock(&self, shard: u16) -> ShardGuard<'_> {
        let slot = &self.slots[usize::from(shard)];
        let held = slot.lock.lock().await;
        let epoch = slot.epoch.load(Ordering::Acquire);
        let mut cache = slot.cache.lock();
        if cache.epoch != epoch {
            cache.clear();
            cache.epoch = epoch;
        }
        drop(cache);
        ShardGuard {
            _held: held,
            cache: &slot.cache,
        }
    }

    /// Gives `walk` the copy of every record of `shard` and returns true, if the copies are the
    /// whole shard under the epoch it is held with now (and its lease is valid): without waiting
    /// for the shard's lock, whose holder may be waiting for the store. The copies are the
    /// records as last written (a write in progress shows once the store has it). False, and
    /// `walk` given nothing, otherwise: the caller reads under the lock.
    ///
    /// A list's walk ([`Walk::listing`]) leaves the uids and keys of the copies it listed, in its
    /// order, until the next list's walk here: while nothing but touches changed the copies
    /// since, a list's walk that names the same listing is given those copies alone, in that
    /// order, until it has all it can show of them ([`Walk::take_listed`]).
    pub(crate) fn read_whole(&self, shard: u16, walk: &mut dyn Walk) -> bool {
        let Some(fence) = self.fence(shard) else {
            return false;
        };
        let mut cache = self.slots[usize::from(shard)].cache.lock();
        if cache.epoch != fence.epoch || !cache.whole {
            return false;
        }
        let Some((listing, descending)) = walk.listing() else {
            cache.copies().for_each(|rec| {
                walk.take(rec);
            });
            return true;
        };
        if let Some(listed) = cache
            .listed
            .as_ref()
            .filter(|l| l.listing == listing && l.changes == cache.changes)
        {
            for (i, (key, uid)) in listed.entries.iter().enumerate() {
                let rec = || cache.records.get(uid).map(|copy| &copy.rec);
                if !walk.take_listed(key, *uid, &rec) {
                    walk.count_listed(listed.entries.len() - i - 1);
                    break;
                }
            }
            return true;
        }
        let listing = listing.to_owned();
        let mut entries: Vec<(String, Uuid)> = cache
            .records
            .iter()
            .filter_map(|(uid, copy)| Some((walk.take(&copy.rec)?, *uid)))
            .collect();
        entries.sort_unstable();
        if descending {
            entries.reverse();
        }
        cache.listed = Some(Listed {
            listing,
            changes: cache.changes,
            entries,
        });
        true
    }

    /// The fence to write `shard` with, if this process may act on it now.
    pub fn fence(&self, shard: u16) -> Option<Fence> {
        let slot = &self.slots[usize::from(shard)];
        let epoch = slot.epoch.load(Ordering::Acquire);
        let until = slot.valid_until_ms.load(Ordering::Acquire);
        (epoch != 0 && self.ms(Instant::now()) < until).then_some(Fence { shard, epoch })
    }

    /// Held (by epoch), whether or not still valid: what the lease keeper renews or gives up.
    pub fn held(&self, shard: u16) -> Option<Fence> {
        let epoch = self.slots[usize::from(shard)].epoch.load(Ordering::Acquire);
        (epoch != 0).then_some(Fence { shard, epoch })
    }

    /// Records a lease: act on the shard under `fence` until `until`.
    pub fn hold(&self, fence: Fence, until: Instant) {
        let slot = &self.slots[usize::from(fence.shard)];
        slot.valid_until_ms.store(self.ms(until), Ordering::Release);
        slot.epoch.store(fence.epoch, Ordering::Release);
    }

    /// Extends a lease after a renewal sent at `sent` succeeded.
    pub fn extend(&self, fence: Fence, until: Instant) {
        let slot = &self.slots[usize::from(fence.shard)];
        if slot.epoch.load(Ordering::Acquire) == fence.epoch {
            slot.valid_until_ms.store(self.ms(until), Ordering::Release);
        }
    }

    /// Whether the store was asked to count the agents of the shard under `fence`.
    pub fn counted(&self, fence: Fence) -> bool {
        self.slots[usize::from(fence.shard)]
            .counted_epoch
            .load(Ordering::Acquire)
            == fence.epoch
    }

    /// Records that the store counts the agents of the shard under `fence`.
    pub fn mark_counted(&self, fence: Fence) {
        self.slots[usize::from(fence.shard)]
            .counted_epoch
            .store(fence.epoch, Ordering::Release);
    }

    /// Whether a silence sweep must ask the store for the shard's due deadlines at `now_ms`:
    /// unless a claim under `fence` named the shard's earliest deadline, it is later than
    /// `now_ms`, and no earlier one was armed since.
    pub fn may_be_due(&self, fence: Fence, now_ms: u64) -> bool {
        let next = self.slots[usize::from(fence.shard)].next_due.lock();
        next.epoch != fence.epoch || next.at_ms <= now_ms
    }

    /// A claim of the shard's due deadlines goes to the store under `fence`: the earliest
    /// deadline is from now on what the claim answers ([`ShardTable::armed`] with it) and what
    /// is armed meanwhile.
    pub fn claiming(&self, fence: Fence) {
        *self.slots[usize::from(fence.shard)].next_due.lock() = NextDue {
            epoch: fence.epoch,
            at_ms: u64::MAX,
        };
    }

    /// The store holds a deadline at `at_ms` in the shard, written under `fence` (called once the
    /// write returned: a claim sent before it either saw it, or is answered before this).
    pub fn armed(&self, fence: Fence, at_ms: u64) {
        let mut next = self.slots[usize::from(fence.shard)].next_due.lock();
        if next.epoch == fence.epoch {
            next.at_ms = next.at_ms.min(at_ms);
        }
    }

    /// The shard's earliest deadline is not known (a write that may have armed one failed, or
    /// a claim did): the next sweep asks the store.
    pub fn due_unknown(&self, shard: u16) {
        self.slots[usize::from(shard)].next_due.lock().epoch = 0;
    }

    /// Forgets `shard` (released, lost or fenced): nothing acts on it from now on, and its
    /// record copies go (a copy its lock's holder still makes is of an epoch no longer held:
    /// never read, and cleared by the next lock).
    pub fn drop_shard(&self, shard: u16) {
        let slot = &self.slots[usize::from(shard)];
        slot.epoch.store(0, Ordering::Release);
        slot.valid_until_ms.store(0, Ordering::Release);
        slot.cache.lock().clear();
        *slot.next_due.lock() = NextDue::default();
    }

    /// Shards this process may act on now.
    pub fn owned(&self) -> Vec<u16> {
        (0..SHARD_COUNT)
            .filter(|s| self.fence(*s).is_some())
            .collect()
    }

    pub fn owned_count(&self) -> usize {
        self.owned().len()
    }

    fn ms(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.base)
            .as_millis()
            .try_into()
            .unwrap_or(u64::MAX - 1)
    }
}

/// A shard's lock, held: its copies with it ([`ShardGuard::cache`]).
pub struct ShardGuard<'a> {
    _held: MutexGuard<'a, ()>,
    cache: &'a parking_lot::Mutex<ShardCache>,
}

impl ShardGuard<'_> {
    /// The copies, for a moment (not to be held across an await).
    pub fn cache(&self) -> parking_lot::MutexGuard<'_, ShardCache> {
        self.cache.lock()
    }
}

/// The owner's copies of one shard's agent records, as it last read or wrote them under the
/// shard's lock and [`ShardCache::epoch`]. They stand for the store's while that epoch is the
/// shard's: no one else may write the shard meanwhile (every write is fenced), so a heartbeat is
/// answered without reading the store, and what it changed is all that is written.
#[derive(Debug, Default)]
pub struct ShardCache {
    epoch: u64,
    /// Boxed: a record is over a KB, and a map's spare slots would hold as much again.
    records: HashMap<Uuid, Box<RecordCopy>>,
    /// Whether the copies are every record of the shard (all were read since the epoch began,
    /// and none was dropped since): the owner's walks over its agents read them, not the store.
    whole: bool,
    /// Counts every change of the copies but a touch (a touch changes the sequence number and
    /// last-seen time, which no list filters on).
    changes: u64,
    /// The copies the last list walk here took ([`ShardTable::read_whole`]).
    listed: Option<Listed>,
}

/// The keys and uids of the copies a list's walk listed, in its order ([`Walk::listing`]), and
/// the copies' [`ShardCache::changes`] then.
#[derive(Debug)]
struct Listed {
    listing: String,
    changes: u64,
    entries: Vec<(String, Uuid)>,
}

/// What a walk over an owner's records does with each ([`ShardTable::read_whole`]): a closure
/// takes each record; a list also names what it lists and in which order, and takes the records
/// it listed before without reading them again.
pub(crate) trait Walk: Send {
    /// Takes a record: its key in the walk's order if the walk lists it.
    fn take(&mut self, rec: &AgentRecord) -> Option<String>;

    /// What the walk lists and in which order (descending or not), in text, for a list whose
    /// every record's place reads nothing but the record and nothing a touch changes (sequence
    /// number, last-seen time); None otherwise.
    fn listing(&self) -> Option<(&str, bool)> {
        None
    }

    /// Takes a record it listed before (of `key`, read by `rec`), in the walk's order: false
    /// when no record after it in that order is wanted (those are counted by
    /// [`Walk::count_listed`]).
    fn take_listed<'r>(
        &mut self,
        _key: &str,
        _uid: Uuid,
        rec: &dyn Fn() -> Option<&'r AgentRecord>,
    ) -> bool {
        if let Some(rec) = rec() {
            self.take(rec);
        }
        true
    }

    /// Counts `n` records it listed before, not given to it.
    fn count_listed(&mut self, _n: usize) {}
}

impl<F: FnMut(&AgentRecord) + Send> Walk for F {
    fn take(&mut self, rec: &AgentRecord) -> Option<String> {
        self(rec);
        None
    }
}

impl ShardCache {
    /// Forgets every copy (the shard was lost, or a write's outcome is unknown).
    pub fn clear(&mut self) {
        self.records = HashMap::new();
        self.set_whole(false);
    }

    /// Forgets one copy whose record may differ in the store now (a write's outcome is
    /// unknown): the copies are no longer the whole shard.
    pub(crate) fn forget(&mut self, uid: &Uuid) {
        if self.remove(uid) {
            self.set_whole(false);
        }
    }

    /// Whether the copies are every record of the shard.
    pub(crate) fn is_whole(&self) -> bool {
        self.whole
    }

    pub(crate) fn set_whole(&mut self, whole: bool) {
        self.whole = whole;
        self.changes += 1;
    }

    pub(crate) fn get(&self, uid: &Uuid) -> Option<&RecordCopy> {
        self.records.get(uid).map(|b| &**b)
    }

    /// The copies' records.
    pub(crate) fn copies(&self) -> impl Iterator<Item = &AgentRecord> {
        self.records.values().map(|copy| &copy.rec)
    }

    /// Keeps `copy` as agent `uid`'s.
    pub(crate) fn keep(&mut self, uid: Uuid, copy: Box<RecordCopy>) {
        self.records.insert(uid, copy);
        self.changes += 1;
    }

    /// Removes agent `uid`'s copy; whether there was one.
    pub(crate) fn remove(&mut self, uid: &Uuid) -> bool {
        self.changes += 1;
        self.records.remove(uid).is_some()
    }

    /// Applies `touch` to its agent's copy; false if there is none.
    pub(crate) fn touch(&mut self, touch: &Touch) -> bool {
        match self.records.get_mut(&touch.uid) {
            Some(copy) => {
                touch.apply(&mut copy.rec);
                true
            }
            None => false,
        }
    }

    /// Agent `uid`'s copy, to compare a record with ([`Touch`] changes nothing else).
    pub(crate) fn get_mut(&mut self, uid: &Uuid) -> Option<&mut RecordCopy> {
        self.records.get_mut(uid).map(|b| &mut **b)
    }
}

/// An owner's copy of a record: the record in its copy's form ([`copy_form`]: description and
/// health tree encoded: the scale bench's 30-component tree takes 7.3 KB decoded, 1.7 KB
/// encoded, docs/benchmarks.md), and its effective config apart, shared with every copy reporting the same
/// ([`SharedConfigs`]): a fleet of collectors runs a handful of configs of tens of KB each, which
/// copies would otherwise hold once per agent. Walks over the copies read them in that form.
#[derive(Debug)]
pub(crate) struct RecordCopy {
    pub rec: AgentRecord,
    pub effective: Option<Arc<EffectiveConfig>>,
    /// The store holds this copy's description and health apart, as the copy has them (it
    /// wrote them so, [`Store::save_agent_keeping`]): a save that changes neither need not
    /// write them again. False for a copy of what was read.
    pub parts_apart: bool,
}

impl RecordCopy {
    /// The copy of `rec`, whose effective config is `effective` (not in `rec`).
    pub fn new(mut rec: AgentRecord, effective: Option<Arc<EffectiveConfig>>) -> Self {
        copy_form(&mut rec);
        Self {
            rec,
            effective,
            parts_apart: false,
        }
    }

    /// The record, whole and decoded; None if a part does not decode (the store's is read
    /// instead).
    pub fn whole(&self) -> Option<AgentRecord> {
        let mut rec = self.for_message();
        full_form(&mut rec).ok()?;
        Some(rec)
    }

    /// The record, whole but in the copy's form: what an agent's message is processed with
    /// (selectors read an encoded description in place; the message replaces what it reports),
    /// without decoding the parts a heartbeat does not change.
    pub fn for_message(&self) -> AgentRecord {
        let mut rec = self.rec.clone();
        rec.effective_config = self.effective.as_deref().cloned().map(Box::new);
        rec
    }
}

/// The effective configs the owner's copies share, by their config hash; an entry lives as long
/// as a copy holds it.
#[derive(Debug, Default)]
pub(crate) struct SharedConfigs(parking_lot::Mutex<HashMap<Vec<u8>, Weak<EffectiveConfig>>>);

impl SharedConfigs {
    /// The shared copy of `config` (of config hash `hash`): the one held already, else a new one.
    pub fn share(&self, hash: &[u8], config: &EffectiveConfig) -> Arc<EffectiveConfig> {
        let mut held = self.0.lock();
        if let Some(shared) = held.get(hash).and_then(Weak::upgrade)
            && *shared == *config
        {
            return shared;
        }
        let shared = Arc::new(config.clone());
        if !hash.is_empty() {
            if held.len() >= 1024 {
                held.retain(|_, w| w.strong_count() > 0);
            }
            held.insert(hash.to_vec(), Arc::downgrade(&shared));
        }
        shared
    }
}

/// Rendezvous (highest random weight) hashing: the preferred owner of `shard` among `members`.
/// Every coordinator computes the same answer from the same member list, and a member joining or
/// leaving moves only the shards it wins or held.
pub fn preferred_owner(shard: u16, members: &[String]) -> Option<&str> {
    members
        .iter()
        .max_by_key(|m| {
            let mut key = m.as_bytes().to_vec();
            key.extend_from_slice(&shard.to_be_bytes());
            (xxhash_rust::xxh3::xxh3_64(&key), m.as_str())
        })
        .map(String::as_str)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_sweep_skips_a_shard_until_its_earliest_deadline() {
        let t = ShardTable::none();
        let f = Fence { shard: 5, epoch: 7 };
        t.hold(f, Instant::now() + Duration::from_secs(5));
        assert!(t.may_be_due(f, 0), "never claimed: ask the store");
        t.claiming(f);
        // A deadline written while the claim is on its way, then the claim's answer.
        t.armed(f, 9_000);
        t.armed(f, 5_000);
        assert!(!t.may_be_due(f, 4_999));
        assert!(t.may_be_due(f, 5_000), "the earlier of the two");
        t.claiming(f);
        t.armed(f, u64::MAX);
        assert!(!t.may_be_due(f, 1 << 60), "the shard has no deadline");
        t.armed(f, 2_000);
        assert!(t.may_be_due(f, 2_000), "armed since: due then");
        t.claiming(f);
        t.armed(f, 8_000);
        let later = Fence { shard: 5, epoch: 8 };
        t.hold(later, Instant::now() + Duration::from_secs(5));
        assert!(
            t.may_be_due(later, 0),
            "held again under another epoch: not known"
        );
        t.armed(later, 9_000);
        assert!(
            t.may_be_due(later, 0),
            "an arm alone does not make it known"
        );
        t.claiming(later);
        t.armed(later, 9_000);
        assert!(!t.may_be_due(later, 8_999));
        t.due_unknown(5);
        assert!(t.may_be_due(later, 0), "a failed write: ask the store");
        t.claiming(later);
        t.armed(later, 9_000);
        t.drop_shard(5);
        assert!(t.may_be_due(later, 0), "dropped: forgotten");
    }

    #[test]
    fn fences_follow_holding_and_expiry() {
        let t = ShardTable::none();
        assert_eq!(t.fence(3), None);
        let f = Fence { shard: 3, epoch: 9 };
        t.hold(f, Instant::now() + Duration::from_secs(5));
        assert_eq!(t.fence(3), Some(f));
        assert_eq!(t.owned(), vec![3]);
        t.extend(Fence { shard: 3, epoch: 8 }, Instant::now());
        assert_eq!(
            t.fence(3),
            Some(f),
            "a renewal of an older epoch changes nothing"
        );
        t.extend(f, Instant::now());
        assert_eq!(t.fence(3), None, "expired: may not act");
        assert_eq!(
            t.held(3),
            Some(f),
            "but still held until renewed or dropped"
        );
        assert!(!t.counted(f));
        t.mark_counted(f);
        assert!(t.counted(f));
        assert!(
            !t.counted(Fence {
                shard: 3,
                epoch: 10
            }),
            "counted under another epoch: asked again"
        );
        t.drop_shard(3);
        assert_eq!(t.held(3), None);
        assert_eq!(ShardTable::all().owned_count(), usize::from(SHARD_COUNT));
    }

    /// The uids of the records `read_whole` gives, or None when it declines.
    fn read(t: &ShardTable, shard: u16) -> Option<Vec<Vec<u8>>> {
        let mut uids = Vec::new();
        t.read_whole(shard, &mut |rec: &AgentRecord| {
            uids.push(rec.instance_uid.clone());
        })
        .then_some(uids)
    }

    /// Walks read a shard's copies while a message holds its lock (waiting for the store), but
    /// only copies that are the whole shard under the epoch held now.
    #[tokio::test]
    async fn walks_read_whole_copies_without_the_lock_and_nothing_else() {
        let t = ShardTable::none();
        let f = Fence { shard: 5, epoch: 2 };
        t.hold(f, Instant::now() + Duration::from_secs(60));
        let uid = Uuid::now_v7();
        let copy = |uid: Uuid| {
            let rec = AgentRecord {
                instance_uid: uid.as_bytes().to_vec(),
                ..Default::default()
            };
            Box::new(RecordCopy::new(rec, None))
        };
        let held = t.lock(5).await;
        held.cache().keep(uid, copy(uid));
        assert_eq!(read(&t, 5), None, "not known to be the whole shard");
        held.cache().set_whole(true);
        assert_eq!(
            read(&t, 5),
            Some(vec![uid.as_bytes().to_vec()]),
            "read while the lock is held"
        );
        drop(held);

        t.hold(
            Fence { shard: 5, epoch: 3 },
            Instant::now() + Duration::from_secs(60),
        );
        assert_eq!(read(&t, 5), None, "copies of an epoch no longer held");
        let held = t.lock(5).await;
        assert!(
            held.cache().copies().next().is_none(),
            "and the next lock clears them"
        );
        held.cache().set_whole(true);
        drop(held);
        assert_eq!(read(&t, 5), Some(vec![]));

        let held = t.lock(5).await;
        t.drop_shard(5);
        assert_eq!(read(&t, 5), None, "dropped: not owned");
        // A copy its lock's holder makes after the drop is never read.
        held.cache().keep(uid, copy(uid));
        held.cache().set_whole(true);
        drop(held);
        assert_eq!(read(&t, 5), None);
        t.hold(
            Fence { shard: 5, epoch: 4 },
            Instant::now() + Duration::from_secs(60),
        );
        assert_eq!(read(&t, 5), None, "nor under the next epoch");
    }

    /// A list's walk for the tests: lists the copies of even sequence numbers in uid order,
    /// and wants the first `want` of them.
    struct Evens {
        listing: &'static str,
        want: usize,
        /// The sequence numbers of the copies it was given, in order.
        seen: Vec<u64>,
        listed: usize,
        /// Whether it was given the copies listed before (else every copy, in the map's order).
        given_listed: bool,
    }

    impl Walk for Evens {
        fn take(&mut self, rec: &AgentRecord) -> Option<String> {
            self.seen.push(rec.sequence_num);
            let listed = rec.sequence_num.is_multiple_of(2);
            self.listed += usize::from(listed);
            listed.then(String::new)
        }

        fn listing(&self) -> Option<(&str, bool)> {
            Some((self.listing, false))
        }

        fn take_listed<'r>(
            &mut self,
            _key: &str,
            _uid: Uuid,
            rec: &dyn Fn() -> Option<&'r AgentRecord>,
        ) -> bool {
            self.seen.extend(rec().map(|r| r.sequence_num));
            self.listed += 1;
            self.given_listed = true;
            self.seen.len() < self.want
        }

        fn count_listed(&mut self, n: usize) {
            self.listed += n;
        }
    }

    /// A list's walk of the same listing is given the copies the last took while only touches
    /// changed them since, in its order, until it wants no more (the rest only counted); any
    /// other change, another listing, or copies no longer whole give every copy again.
    #[tokio::test]
    async fn a_list_walk_reads_what_the_last_took_until_a_copy_changes() {
        let t = ShardTable::none();
        t.hold(
            Fence { shard: 7, epoch: 1 },
            Instant::now() + Duration::from_secs(60),
        );
        let copy = |uid: Uuid, seq: u64| {
            let rec = AgentRecord {
                instance_uid: uid.as_bytes().to_vec(),
                sequence_num: seq,
                ..Default::default()
            };
            Box::new(RecordCopy::new(rec, None))
        };
        let uids: Vec<Uuid> = (0..6).map(|i| Uuid::from_u64_pair(1, i)).collect();
        {
            let held = t.lock(7).await;
            let mut cache = held.cache();
            for (i, uid) in uids.iter().enumerate() {
                cache.keep(*uid, copy(*uid, i as u64));
            }
            cache.set_whole(true);
        }
        // The sequence numbers of the copies given (sorted when every copy is: a map's order),
        // and how many were listed.
        let walk = |listing, want| {
            let mut w = Evens {
                listing,
                want,
                seen: Vec::new(),
                listed: 0,
                given_listed: false,
            };
            let read = t.read_whole(7, &mut w);
            if !w.given_listed {
                w.seen.sort_unstable();
            }
            read.then_some((w.seen, w.listed))
        };
        assert_eq!(
            walk("a", 9),
            Some((vec![0, 1, 2, 3, 4, 5], 3)),
            "the first walk reads all"
        );
        assert_eq!(
            walk("a", 9),
            Some((vec![0, 2, 4], 3)),
            "the next, what it took"
        );
        assert_eq!(
            walk("a", 1),
            Some((vec![0], 3)),
            "in order, until it wants no more; the rest counted"
        );
        let touch = Touch {
            uid: uids[2],
            sequence_num: 12,
            last_seen_unix_ms: 1,
        };
        assert!(t.lock(7).await.cache().touch(&touch));
        assert_eq!(
            walk("a", 9),
            Some((vec![0, 12, 4], 3)),
            "a touch shows, and changes nothing else"
        );
        assert_eq!(
            walk("b", 9),
            Some((vec![0, 1, 3, 4, 5, 12], 3)),
            "another listing reads all"
        );
        assert_eq!(walk("b", 9), Some((vec![0, 12, 4], 3)));
        t.lock(7).await.cache().keep(uids[1], copy(uids[1], 8));
        assert_eq!(
            walk("b", 9),
            Some((vec![0, 3, 4, 5, 8, 12], 4)),
            "a copy kept: all again"
        );
        assert!(t.lock(7).await.cache().remove(&uids[0]));
        assert_eq!(
            walk("b", 9),
            Some((vec![3, 4, 5, 8, 12], 3)),
            "a copy removed: all again"
        );
        t.lock(7).await.cache().forget(&uids[3]);
        assert_eq!(walk("b", 9), None, "no longer whole: read under the lock");
    }

    #[test]
    fn rendezvous_spreads_shards_and_moves_only_a_leavers_share() {
        let three: Vec<String> = ["c1", "c2", "c3"].map(String::from).to_vec();
        let two: Vec<String> = ["c1", "c2"].map(String::from).to_vec();
        let mut counts = std::collections::BTreeMap::new();
        let mut moved = 0;
        for s in 0..SHARD_COUNT {
            let before = preferred_owner(s, &three).unwrap();
            *counts.entry(before).or_insert(0) += 1;
            let after = preferred_owner(s, &two).unwrap();
            if before != "c3" {
                assert_eq!(before, after, "shard {s} moved though its owner stayed");
            } else {
                moved += 1;
            }
        }
        assert_eq!(moved, counts["c3"]);
        for (m, n) in counts {
            assert!((250..=430).contains(&n), "{m} prefers {n} of 1024 shards");
        }
        assert_eq!(preferred_owner(0, &[]), None);
    }
}
