//! Agents' own-metrics samples a gateway holds for their owners: by shard, the latest per agent
//! (its counters are cumulative, so a newer sample carries what an older one did; the points it
//! dropped are added up), bounded in agents. A shard whose batch is on its way to the owner is not
//! taken again until that batch is answered or given up, so one shard without an owner holds back
//! only its own agents' samples.

use flotilla_common::names::shard_of;
use flotilla_proto::bus::OwnMetricsSample;
use parking_lot::Mutex;
use std::collections::{HashMap, HashSet};
use std::time::Duration;

/// Agents whose samples a gateway holds for the owners at most; past it exports are answered 503.
pub const MAX_QUEUED: usize = 50_000;
/// How often queued samples go to their owners.
pub const FLUSH_EVERY: Duration = Duration::from_secs(1);
/// The most one bus message carries (well under NATS's default max_payload of 1 MiB).
pub const MAX_BATCH_BYTES: usize = 256 * 1024;

#[derive(Debug, Default)]
struct Inner {
    /// By shard, by instance uid.
    by_shard: HashMap<u16, HashMap<Vec<u8>, OwnMetricsSample>>,
    /// Samples held (one per agent).
    held: usize,
    /// Shards whose batch is on its way.
    sending: HashSet<u16>,
}

/// What [`MetricsQueue::push`] did.
#[derive(Debug, PartialEq, Eq)]
pub enum Pushed {
    /// Queued; this many replaced an older sample of the same agent.
    Queued { superseded: usize },
    /// None queued: the queue holds as many agents as it may.
    Full,
}

/// Samples waiting for their owners.
#[derive(Debug, Default)]
pub(crate) struct MetricsQueue {
    inner: Mutex<Inner>,
}

impl MetricsQueue {
    /// Queues all of `samples`, or none when the queue would hold more than [`MAX_QUEUED`]
    /// agents.
    pub fn push(&self, samples: Vec<OwnMetricsSample>) -> Pushed {
        let mut q = self.inner.lock();
        let new = samples
            .iter()
            .filter(|s| {
                q.by_shard
                    .get(&shard_of(&s.instance_uid))
                    .is_none_or(|m| !m.contains_key(&s.instance_uid))
            })
            .count();
        if q.held + new > MAX_QUEUED {
            return Pushed::Full;
        }
        q.held += new;
        let mut superseded = 0;
        for mut s in samples {
            let held = q.by_shard.entry(shard_of(&s.instance_uid)).or_default();
            if let Some(old) = held.remove(&s.instance_uid) {
                superseded += 1;
                s.dropped_points += old.dropped_points;
            }
            held.insert(s.instance_uid.clone(), s);
        }
        Pushed::Queued { superseded }
    }

    /// The samples of every shard that has some and no batch on its way, in batches of at most
    /// [`MAX_BATCH_BYTES`]; those shards count as sending until [`MetricsQueue::sent`].
    pub fn take(&self) -> Vec<(u16, Vec<Vec<OwnMetricsSample>>)> {
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

    /// The batches of `shard` were answered (or given up): its next samples may go.
    pub fn sent(&self, shard: u16) {
        self.inner.lock().sending.remove(&shard);
    }
}

/// `samples` in batches of at most [`MAX_BATCH_BYTES`] (a sample larger than that alone).
fn batches(samples: impl Iterator<Item = OwnMetricsSample>) -> Vec<Vec<OwnMetricsSample>> {
    use prost::Message;
    let mut out: Vec<Vec<OwnMetricsSample>> = Vec::new();
    let mut bytes = 0;
    for s in samples {
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
        let q = MetricsQueue::default();
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
        let q = MetricsQueue::default();
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
