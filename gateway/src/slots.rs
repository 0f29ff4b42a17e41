//! Connection slots under `--max-connections`. Every accepted connection takes one at once (so
//! the cap bounds open files), but a connection counts as *pending* until its first request is
//! authorised: when every slot is taken, the oldest pending connection is closed to make room.
//! Clients that connect and say nothing therefore cannot keep authorised agents out; only
//! established connections fill the gateway for good.

use parking_lot::Mutex;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

/// How long a new connection waits for the slot an evicted one frees.
const EVICTION_WAIT: Duration = Duration::from_secs(1);

#[derive(Debug)]
pub(crate) struct Slots {
    permits: Arc<Semaphore>,
    /// Pending connections, oldest first, with the token that closes each.
    pending: Mutex<BTreeMap<u64, CancellationToken>>,
    next: AtomicU64,
}

/// One connection's slot; dropping it frees the slot.
#[derive(Debug)]
pub(crate) struct Slot {
    id: u64,
    slots: Arc<Slots>,
    /// Cancelled when the connection is closed to make room (only while it is pending).
    pub evict: CancellationToken,
    _permit: OwnedSemaphorePermit,
}

/// What taking a slot did.
#[derive(Debug)]
pub(crate) enum Taken {
    Free(Slot),
    /// A pending connection was closed for this one.
    Evicted(Slot),
    /// Every slot is held by an established connection.
    Full,
}

impl Slots {
    pub fn new(max: usize) -> Arc<Self> {
        Arc::new(Self {
            permits: Arc::new(Semaphore::new(max)),
            pending: Mutex::new(BTreeMap::new()),
            next: AtomicU64::new(1),
        })
    }

    /// A slot for a new connection, closing the oldest pending connection if none is free.
    pub async fn take(self: &Arc<Self>) -> Taken {
        if let Ok(permit) = self.permits.clone().try_acquire_owned() {
            return Taken::Free(self.pending_slot(permit));
        }
        let Some((_, victim)) = self.pending.lock().pop_first() else {
            return Taken::Full;
        };
        victim.cancel();
        match tokio::time::timeout(EVICTION_WAIT, self.permits.clone().acquire_owned()).await {
            Ok(Ok(permit)) => Taken::Evicted(self.pending_slot(permit)),
            _ => Taken::Full,
        }
    }

    fn pending_slot(self: &Arc<Self>, permit: OwnedSemaphorePermit) -> Slot {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let evict = CancellationToken::new();
        self.pending.lock().insert(id, evict.clone());
        Slot {
            id,
            slots: self.clone(),
            evict,
            _permit: permit,
        }
    }

    /// Connections accepted but not yet established.
    #[cfg(test)]
    fn pending(&self) -> usize {
        self.pending.lock().len()
    }
}

impl Slot {
    /// Resolves when the connection holding `slot` is closed to make room (never for a
    /// connection without a slot).
    pub fn evicted(slot: Option<&Slot>) -> impl Future<Output = ()> + 'static {
        let token = slot.map(|s| s.evict.clone());
        async move {
            match token {
                Some(token) => token.cancelled_owned().await,
                None => std::future::pending().await,
            }
        }
    }

    /// The connection's first request was authorised: it is no longer evicted for others.
    pub fn establish(&self) {
        self.slots.pending.lock().remove(&self.id);
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.slots.pending.lock().remove(&self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn idle_connections_make_room_and_established_ones_do_not() {
        let slots = Slots::new(2);
        let Taken::Free(idle) = slots.take().await else {
            panic!("a free slot")
        };
        let Taken::Free(agent) = slots.take().await else {
            panic!("a free slot")
        };
        agent.establish();
        assert_eq!(slots.pending(), 1);
        // Full: the idle one is told to go, and its slot is handed over once it has gone.
        let freeing = idle.evict.clone();
        let taker = tokio::spawn({
            let slots = slots.clone();
            async move { slots.take().await }
        });
        freeing.cancelled().await;
        drop(idle);
        let Taken::Evicted(newcomer) = taker.await.unwrap() else {
            panic!("room was made")
        };
        newcomer.establish();
        // Everyone established: the cap holds.
        assert!(matches!(slots.take().await, Taken::Full));
        drop(agent);
        assert!(matches!(slots.take().await, Taken::Free(_)));
    }
}
