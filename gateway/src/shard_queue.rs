//! What a gateway holds for agents' owners and sends them in batches: agents' own-metrics samples
//! by shard ([`crate::own_metrics`]) and the heartbeats it answered itself by owner
//! ([`crate::heartbeats`]). By key, the latest item per agent (an own-metrics sample's counters
//! are cumulative, so a newer sample carries what an older one did, and the points it dropped are
//! added up; a newer heartbeat says all an older one did), bounded in agents. A key whose batch is
//! on its way is not taken again until that batch is answered or given up, so one shard (or owner)
//! that does not answer holds back only its own agents' items, and a key's batches arrive in
//! order.

use flotilla_common::names::shard_of;
use flotilla_proto::bus::{AnsweredHeartbeat, OwnMetricsSample};
use parking_lot::Mutex;
use std::collections::{HashMap, HashSet};
use std::hash::Hash;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::debug;

/// The most one bus message carries (well under NATS's default max_payload of 1 MiB).
pub const MAX_BATCH_BYTES: usize = 256 * 1024;
/// Shards whose batches are on their way at once.
const CONCURRENT_BATCHES: usize = 64;
/// How long a stopping gateway waits for the owners to take what it holds.
const FINAL_FLUSH: Duration = Duration::from_secs(5);

/// An item held for an agent's owner.
pub(crate) trait Queued: Sized {
    /// What the items are sent by.
    type Key: Hash + Eq + Clone + Send + 'static;
    /// Agents whose items a gateway holds at most.
    const MAX_QUEUED: usize;
    /// How often they go to their owners.
    const FLUSH_EVERY: Duration;
    fn key(&self) -> Self::Key;
    fn instance_uid(&self) -> &[u8];
    /// Takes on what `older`, the agent's item it replaces, said that this one does not.
    fn supersede(&mut self, older: Self);
    /// Its size in a batch.
    fn encoded_len(&self) -> usize;
}

/// By shard; past the bound exports are answered 503.
impl Queued for OwnMetricsSample {
    type Key = u16;
    const MAX_QUEUED: usize = 50_000;
    const FLUSH_EVERY: Duration = Duration::from_secs(1);
    fn key(&self) -> u16 {
        shard_of(&self.instance_uid)
    }
    fn instance_uid(&self) -> &[u8] {
        &self.instance_uid
    }
    fn supersede(&mut self, older: Self) {
        self.dropped_points += older.dropped_points;
    }
    fn encoded_len(&self) -> usize {
        prost::Message::encoded_len(self)
    }
}

/// A heartbeat answered under a grant of the coordinator `owner` (its node id).
#[derive(Debug)]
pub(crate) struct Answered {
    pub owner: String,
    pub heartbeat: AnsweredHeartbeat,
}

/// By owner; past the bound heartbeats go to their owners as they come. Often, so that each
/// batch is small: an owner records a batch in one go, and a large one is a burst of work the
/// agents' replies wait behind (every 0.5 s, the standalone server's reply p99 was 2.4-3.2 ms
/// against 0.6-0.7 ms before grants; docs/benchmarks.md).
impl Queued for Answered {
    type Key = String;
    const MAX_QUEUED: usize = 100_000;
    const FLUSH_EVERY: Duration = Duration::from_millis(50);
    fn key(&self) -> String {
        self.owner.clone()
    }
    fn instance_uid(&self) -> &[u8] {
        &self.heartbeat.instance_uid
    }
    fn supersede(&mut self, _older: Self) {}
    fn encoded_len(&self) -> usize {
        prost::Message::encoded_len(&self.heartbeat)
    }
}

#[derive(Debug)]
struct Inner<K, T> {
    /// By key, by instance uid.
    by_key: HashMap<K, HashMap<Vec<u8>, T>>,
    /// Items held (one per agent and key).
    held: usize,
    /// Keys whose batch is on its way.
    sending: HashSet<K>,
}

/// What [`ShardQueue::push`] did.
#[derive(Debug, PartialEq, Eq)]
pub enum Pushed {
    /// Queued; this many replaced an older item of the same agent.
    Queued { superseded: usize },
    /// None queued: the queue holds as many agents as it may.
    Full,
}

/// Items waiting for their owners, for at most [`Queued::MAX_QUEUED`] agents.
#[derive(Debug)]
pub(crate) struct ShardQueue<T: Queued> {
    inner: Mutex<Inner<T::Key, T>>,
}

impl<T: Queued> Default for ShardQueue<T> {
    fn default() -> Self {
        Self {
            inner: Mutex::new(Inner {
                by_key: HashMap::new(),
                held: 0,
                sending: HashSet::new(),
            }),
        }
    }
}

impl<T: Queued> ShardQueue<T> {
    /// Queues all of `items`, or none when the queue would hold more than its bound in agents.
    pub fn push(&self, items: Vec<T>) -> Pushed {
        let mut q = self.inner.lock();
        let new = items
            .iter()
            .filter(|s| {
                q.by_key
                    .get(&s.key())
                    .is_none_or(|m| !m.contains_key(s.instance_uid()))
            })
            .count();
        if q.held + new > T::MAX_QUEUED {
            return Pushed::Full;
        }
        q.held += new;
        let mut superseded = 0;
        for mut s in items {
            let uid = s.instance_uid().to_vec();
            let held = q.by_key.entry(s.key()).or_default();
            if let Some(old) = held.remove(&uid) {
                superseded += 1;
                s.supersede(old);
            }
            held.insert(uid, s);
        }
        Pushed::Queued { superseded }
    }

    /// The items of every key that has some and no batch on its way, in batches of at most
    /// [`MAX_BATCH_BYTES`]; those keys count as sending until [`ShardQueue::sent`].
    pub fn take(&self) -> Vec<(T::Key, Vec<Vec<T>>)> {
        let mut q = self.inner.lock();
        let ready: Vec<T::Key> = q
            .by_key
            .keys()
            .filter(|k| !q.sending.contains(k))
            .cloned()
            .collect();
        ready
            .into_iter()
            .filter_map(|key| {
                let held = q.by_key.remove(&key)?;
                q.held -= held.len();
                q.sending.insert(key.clone());
                Some((key, batches(held.into_values())))
            })
            .collect()
    }

    /// The batches of `key` were answered (or given up): its next items may go.
    pub fn sent(&self, key: &T::Key) {
        self.inner.lock().sending.remove(key);
    }
}

/// Sends what `queue` holds every [`Queued::FLUSH_EVERY`] until `cancel`, then once more
/// (waiting at most [`FINAL_FLUSH`] for the owners): each key's batches one after the other with
/// `send`, on their own, so a shard or owner that does not answer delays no other.
pub(crate) async fn flush<T, S, F>(queue: Arc<ShardQueue<T>>, cancel: CancellationToken, send: S)
where
    T: Queued + Send + 'static,
    S: Fn(T::Key, Vec<T>) -> F + Clone + Send + 'static,
    F: Future<Output = ()> + Send,
{
    let mut tick = tokio::time::interval(T::FLUSH_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let tracker = TaskTracker::new();
    let permits = Arc::new(Semaphore::new(CONCURRENT_BATCHES));
    loop {
        let stopping = tokio::select! {
            _ = tick.tick() => false,
            () = cancel.cancelled() => true,
        };
        for (key, batches) in queue.take() {
            let (queue, permits, send) = (queue.clone(), permits.clone(), send.clone());
            tracker.spawn(async move {
                let _permit = permits.acquire().await;
                for batch in batches {
                    send(key.clone(), batch).await;
                }
                queue.sent(&key);
            });
        }
        if stopping {
            break;
        }
    }
    tracker.close();
    if tokio::time::timeout(FINAL_FLUSH, tracker.wait())
        .await
        .is_err()
    {
        debug!("batches still on their way to owners at shutdown are given up");
    }
}

/// `items` in batches of at most [`MAX_BATCH_BYTES`] (an item larger than that alone).
fn batches<T: Queued>(items: impl Iterator<Item = T>) -> Vec<Vec<T>> {
    let mut out: Vec<Vec<T>> = Vec::new();
    let mut bytes = 0;
    for s in items {
        let len = s.encoded_len() + 4;
        match out.last_mut() {
            Some(batch) if bytes + len <= MAX_BATCH_BYTES => {
                batch.push(s);
                bytes += len;
            }
            _ => {
                out.push(vec![s]);
                bytes = len;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use flotilla_proto::bus::ComponentSample;

    const MAX_QUEUED: usize = OwnMetricsSample::MAX_QUEUED;

    fn samples(n: usize) -> Vec<OwnMetricsSample> {
        (0..n)
            .map(|i| OwnMetricsSample {
                instance_uid: (i as u128).to_le_bytes().to_vec(),
                dropped_points: 1,
                ..Default::default()
            })
            .collect()
    }

    fn held(batches: &[(u16, Vec<Vec<OwnMetricsSample>>)]) -> usize {
        batches.iter().flat_map(|(_, b)| b).map(Vec::len).sum()
    }

    #[test]
    fn holds_at_most_the_bound_in_agents_all_or_nothing() {
        let q = ShardQueue::default();
        let queued = |n| Pushed::Queued { superseded: n };
        assert_eq!(q.push(samples(MAX_QUEUED - 10)), queued(0));
        // The same agents again replace their samples: no room taken.
        assert_eq!(q.push(samples(5)), queued(5));
        // Eleven new ones would pass the bound: none of them is queued.
        let new = |from: usize, n: usize| samples(from + n).split_off(from);
        assert_eq!(q.push(new(MAX_QUEUED - 10, 11)), Pushed::Full);
        assert_eq!(q.push(new(MAX_QUEUED - 10, 10)), queued(0));
        assert_eq!(q.push(new(MAX_QUEUED, 1)), Pushed::Full);
        let taken = q.take();
        assert_eq!(held(&taken), MAX_QUEUED);
        for (shard, batches) in &taken {
            let mut all = batches.iter().flatten();
            assert!(all.all(|s| shard_of(&s.instance_uid) == *shard));
        }
        // The replaced samples' dropped points were added to their successors'.
        let twice = taken
            .iter()
            .flat_map(|(_, b)| b.iter().flatten())
            .filter(|s| s.dropped_points == 2)
            .count();
        assert_eq!(twice, 5);
        // Taken: room again.
        assert_eq!(q.push(samples(1)), queued(0));
    }

    #[test]
    fn a_shard_on_its_way_is_not_taken_again_until_sent() {
        let q = ShardQueue::default();
        q.push(samples(1));
        let [(shard, _)] = &q.take()[..] else {
            panic!("one shard")
        };
        q.push(samples(1));
        assert!(q.take().is_empty(), "its batch is still on its way");
        q.sent(shard);
        assert_eq!(held(&q.take()), 1);
    }

    #[test]
    fn batches_stay_under_the_bus_limit() {
        let big = |i: u128| OwnMetricsSample {
            instance_uid: i.to_le_bytes().to_vec(),
            exporters: (0..16)
                .map(|e| ComponentSample {
                    name: format!("{e:0>128}"),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        };
        let out = batches((0..400).map(big));
        assert!(out.len() > 1);
        assert_eq!(out.iter().map(Vec::len).sum::<usize>(), 400);
        for b in &out {
            let size: usize = b.iter().map(|s| s.encoded_len() + 4).sum();
            assert!(size <= MAX_BATCH_BYTES, "{size}");
        }
    }
}
