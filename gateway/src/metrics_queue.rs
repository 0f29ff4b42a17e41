//! Agents' own-metrics samples a gateway holds for their owners, by shard, bounded.

use flotilla_common::names::shard_of;
use flotilla_proto::bus::OwnMetricsSample;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::time::Duration;

/// Samples a gateway holds for the owners at most; past it exports are answered 503.
pub const MAX_QUEUED: usize = 50_000;
/// How often queued samples go to their owners.
pub const FLUSH_EVERY: Duration = Duration::from_secs(1);

/// Samples waiting for their owners, by shard.
#[derive(Debug, Default)]
pub(crate) struct MetricsQueue {
    inner: Mutex<(HashMap<u16, Vec<OwnMetricsSample>>, usize)>,
}

impl MetricsQueue {
    /// Queues all of `samples`, or none when the queue would hold more than [`MAX_QUEUED`].
    pub fn push(&self, samples: Vec<OwnMetricsSample>) -> bool {
        let mut q = self.inner.lock();
        if q.1 + samples.len() > MAX_QUEUED {
            return false;
        }
        q.1 += samples.len();
        for s in samples {
            q.0.entry(shard_of(&s.instance_uid)).or_default().push(s);
        }
        true
    }

    pub fn take(&self) -> HashMap<u16, Vec<OwnMetricsSample>> {
        let mut q = self.inner.lock();
        q.1 = 0;
        std::mem::take(&mut q.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn samples(n: usize) -> Vec<OwnMetricsSample> {
        (0..n)
            .map(|i| OwnMetricsSample {
                instance_uid: (i as u128).to_le_bytes().to_vec(),
                ..Default::default()
            })
            .collect()
    }

    #[test]
    fn holds_at_most_the_bound_all_or_nothing_by_shard() {
        let q = MetricsQueue::default();
        assert!(q.push(samples(MAX_QUEUED - 10)));
        // Eleven would pass the bound: none of them is queued.
        assert!(!q.push(samples(11)));
        assert!(q.push(samples(10)));
        assert!(!q.push(samples(1)));
        let batches = q.take();
        assert_eq!(batches.values().map(Vec::len).sum::<usize>(), MAX_QUEUED);
        for (shard, batch) in &batches {
            assert!(batch.iter().all(|s| shard_of(&s.instance_uid) == *shard));
        }
        // Taken: room again.
        assert!(q.push(samples(1)));
    }
}
