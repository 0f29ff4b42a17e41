//! What a gateway holds for the owners of agents' shards and sends them in batches, one shard at
//! a time: agents' own-metrics samples ([`crate::own_metrics`]) and the heartbeats it answered
//! itself ([`crate::heartbeats`]). By shard, the latest item per agent (an own-metrics sample's
//! counters are cumulative, so a newer sample carries what an older one did, and the points it
//! dropped are added up; a newer heartbeat says all an older one did), bounded in agents. A shard
//! whose batch is on its way to the owner is not taken again until that batch is answered or
//! given up, so one shard without an owner holds back only its own agents' items, and a shard's
//! batches reach its owner in order.

use flotilla_common::names::shard_of;
use flotilla_proto::bus::{AnsweredHeartbeat, OwnMetricsSample};
use parking_lot::Mutex;
use std::collections::{HashMap, HashSet};
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
pub(crate) trait Queued: prost::Message + Sized {
    /// Agents whose items a gateway holds at most.
    const MAX_QUEUED: usize;
    /// How often they go to their owners.
    const FLUSH_EVERY: Duration;
    fn instance_uid(&self) -> &[u8];
    /// Takes on what `older`, the agent's item it replaces, said that this one does not.
    fn supersede(&mut self, older: Self);
}

/// Past the bound exports are answered 503.
impl Queued for OwnMetricsSample {
    const MAX_QUEUED: usize = 50_000;
    const FLUSH_EVERY: Duration = Duration::from_secs(1);
    fn instance_uid(&self) -> &[u8] {
        &self.instance_uid
    }
    fn supersede(&mut self, older: Self) {
        self.dropped_points += older.dropped_points;
    }
}

/// Past the bound heartbeats go to their owners as they come.
impl Queued for AnsweredHeartbeat {
    const MAX_QUEUED: usize = 100_000;
    const FLUSH_EVERY: Duration = Duration::from_millis(500);
    fn instance_uid(&self) -> &[u8] {
        &self.instance_uid
    }
    fn supersede(&mut self, _older: Self) {}
}

#[derive(Debug)]
struct Inner<T> {
    /// By shard, by instance uid.
    by_shard: HashMap<u16, HashMap<Vec<u8>, T>>,
    /// Items held (one per agent).
    held: usize,
    /// Shards whose batch is on its way.
    sending: HashSet<u16>,
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
pub(crate) struct ShardQueue<T> {
    inner: Mutex<Inner<T>>,
}

impl<T> Default for ShardQueue<T> {
    fn default() -> Self {
        Self {
            inner: Mutex::new(Inner {
                by_shard: HashMap::new(),
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
                q.by_shard
                    .get(&shard_of(s.instance_uid()))
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
            let held = q.by_shard.entry(shard_of(&uid)).or_default();
            if let Some(old) = held.remove(&uid) {
                superseded += 1;
                s.supersede(old);
            }
            held.insert(uid, s);
        }
        Pushed::Queued { superseded }
    }

    /// The items of every shard that has some and no batch on its way, in batches of at most
    /// [`MAX_BATCH_BYTES`]; those shards count as sending until [`ShardQueue::sent`].
    pub fn take(&self) -> Vec<(u16, Vec<Vec<T>>)> {
        let mut q = self.inner.lock();
        let ready: Vec<u16> = q
            .by_shard
            .keys()
            .filter(|s| !q.sending.contains(s))
            .copied()
            .collect();
        ready
            .into_iter()
            .filter_map(|shard| {
                let held = q.by_shard.remove(&shard)?;
                q.held -= held.len();
                q.sending.insert(shard);
                Some((shard, batches(held.into_values())))
            })
            .collect()
    }

    /// The batches of `shard` were answered (or given up): its next items may go.
    pub fn sent(&self, shard: u16) {
        self.inner.lock().sending.remove(&shard);
    }
}

/// Sends what `queue` holds every [`Queued::FLUSH_EVERY`] until `cancel`, then once more
/// (waiting at most [`FINAL_FLUSH`] for the owners): each shard's batches one after the other with
/// `send`, on their own, so a shard without an owner delays no other.
pub(crate) async fn flush<T, S, F>(queue: Arc<ShardQueue<T>>, cancel: CancellationToken, send: S)
where
    T: Queued + Send + 'static,
    S: Fn(Vec<T>) -> F + Clone + Send + 'static,
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
        for (shard, batches) in queue.take() {
            let (queue, permits, send) = (queue.clone(), permits.clone(), send.clone());
            tracker.spawn(async move {
                let _permit = permits.acquire().await;
                for batch in batches {
                    send(batch).await;
                }
                queue.sent(shard);
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
fn batches<T: prost::Message>(items: impl Iterator<Item = T>) -> Vec<Vec<T>> {
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
        q.sent(*shard);
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
        use prost::Message;
        for b in &out {
            let size: usize = b.iter().map(|s| s.encoded_len() + 4).sum();
            assert!(size <= MAX_BATCH_BYTES, "{size}");
        }
    }
}
