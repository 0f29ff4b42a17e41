//! How many event streams (`Ops::watch_events`) are open, within [`MAX_WATCHERS`], and what
//! they dropped.

use prometheus_client::metrics::counter::Counter;
use std::sync::Arc;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Event streams open at once at most, per process.
pub const MAX_WATCHERS: usize = 64;

/// Watchers open now and events dropped for slow ones, across the process.
#[derive(Debug, Clone)]
pub struct Watchers {
    open: Arc<Semaphore>,
    /// Events not given to a watcher that fell behind.
    pub dropped: Counter,
}

impl Default for Watchers {
    fn default() -> Self {
        Self {
            open: Arc::new(Semaphore::new(MAX_WATCHERS)),
            dropped: Counter::default(),
        }
    }
}

impl Watchers {
    /// A place for one more stream, if there is room.
    pub(crate) fn permit(&self) -> Option<OwnedSemaphorePermit> {
        self.open.clone().try_acquire_owned().ok()
    }
}
