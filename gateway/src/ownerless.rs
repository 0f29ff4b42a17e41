//! Shards nobody has served lately, and since when. A shard whose owner died has none until the
//! owner's lease runs out (up to the lease's TTL, 15 s by default); its agents' messages, each
//! asked again for the uplink deadline, were most of a gateway's NATS requests then (about
//! 10,000 *no responders* a second at each of the two gateways watched, 100,000 agents,
//! docs/benchmarks.md). A message for a shard that has had no owner for [`NO_OWNER_FOR`] is
//! asked once and answered "retry later" at once; one that arrives sooner still waits for an
//! owner (a handoff takes tens of ms, the cluster's start a second or two).

use flotilla_common::names::SHARD_COUNT;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::time::Instant;

/// How long a shard goes unserved before its messages stop waiting for an owner.
pub(crate) const NO_OWNER_FOR: Duration = Duration::from_secs(1);

/// A shard's last miss older than this starts a new spell without owner.
const SPELL_GAP: Duration = Duration::from_secs(2);

/// When each shard's spell without owner began and when it was last found without one (ms
/// since `base`, plus one: 0 is "never").
pub(crate) struct Ownerless {
    base: Instant,
    spells: Box<[Spell]>,
}

#[derive(Default)]
struct Spell {
    first: AtomicU64,
    last: AtomicU64,
}

impl Default for Ownerless {
    fn default() -> Self {
        Self {
            base: Instant::now(),
            spells: (0..SHARD_COUNT).map(|_| Spell::default()).collect(),
        }
    }
}

impl Ownerless {
    fn now(&self) -> u64 {
        self.base.elapsed().as_millis() as u64 + 1
    }

    fn spell(&self, shard: u16) -> Option<&Spell> {
        self.spells.get(usize::from(shard))
    }

    /// Nobody served `shard` just now.
    pub fn missed(&self, shard: u16) {
        let Some(spell) = self.spell(shard) else {
            return;
        };
        let now = self.now();
        let before = spell.last.swap(now, Ordering::Relaxed);
        if before == 0 || now.saturating_sub(before) > SPELL_GAP.as_millis() as u64 {
            spell.first.store(now, Ordering::Relaxed);
        }
    }

    /// Someone served `shard`.
    pub fn served(&self, shard: u16) {
        if let Some(spell) = self.spell(shard) {
            spell.last.store(0, Ordering::Relaxed);
        }
    }

    /// Whether `shard` has gone unserved for [`NO_OWNER_FOR`] or longer, up to now.
    pub fn for_long(&self, shard: u16) -> bool {
        let Some(spell) = self.spell(shard) else {
            return false;
        };
        let (now, last) = (self.now(), spell.last.load(Ordering::Relaxed));
        last != 0
            && now.saturating_sub(last) <= SPELL_GAP.as_millis() as u64
            && now.saturating_sub(spell.first.load(Ordering::Relaxed))
                >= NO_OWNER_FOR.as_millis() as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_shard_is_long_without_owner_after_a_second_of_misses_until_served() {
        let o = Ownerless::default();
        assert!(!o.for_long(7));
        o.missed(7);
        tokio::time::sleep(Duration::from_millis(600)).await;
        o.missed(7);
        assert!(!o.for_long(7), "0.6 s");
        tokio::time::sleep(Duration::from_millis(500)).await;
        o.missed(7);
        assert!(o.for_long(7), "1.1 s of misses");
        assert!(!o.for_long(8), "another shard");
        o.served(7);
        assert!(!o.for_long(7), "served");
        o.missed(7);
        assert!(!o.for_long(7), "a new spell");
        // Misses apart by more than the gap are spells of their own.
        tokio::time::sleep(Duration::from_millis(2_500)).await;
        o.missed(7);
        assert!(!o.for_long(7));
        // A spell's last miss long ago: no longer known to be without owner.
        tokio::time::sleep(Duration::from_millis(1_200)).await;
        o.missed(7);
        assert!(o.for_long(7));
        tokio::time::sleep(Duration::from_millis(2_500)).await;
        assert!(!o.for_long(7), "nothing heard for 2.5 s");
        assert!(!o.for_long(SHARD_COUNT), "out of range");
    }
}
