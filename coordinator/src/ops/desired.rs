//! The desired state every agent is resolved against (the active version of each config, and the
//! versions active rollouts give their enrolled agents), read from the store and kept in memory.
//! One [`DesiredState`] is shared by the operations of a process and its shard owner.

use super::docs::{ROLLOUTS, parse};
use crate::fleet::configs::Desired;
use flotilla_common::store::{Store, StoreError};
use parking_lot::RwLock;
use std::sync::Arc;
use tracing::warn;

#[derive(Debug, Clone, Default)]
pub struct DesiredState(Arc<RwLock<Arc<Desired>>>);

impl DesiredState {
    /// Reads the desired state from `store`.
    pub async fn load(store: &dyn Store) -> Result<Self, StoreError> {
        Ok(Self(Arc::new(RwLock::new(Arc::new(load(store).await?)))))
    }

    pub fn current(&self) -> Arc<Desired> {
        self.0.read().clone()
    }

    /// Reads it again from `store`; true when it changed (another process stored a version, or a
    /// rollout moved on).
    pub async fn reload(&self, store: &dyn Store) -> Result<bool, StoreError> {
        let fresh = load(store).await?;
        if fresh.fingerprint() == self.current().fingerprint() {
            return Ok(false);
        }
        *self.0.write() = Arc::new(fresh);
        Ok(true)
    }
}

/// The active configs, and the versions active rollouts give their enrolled agents.
async fn load(store: &dyn Store) -> Result<Desired, StoreError> {
    let mut desired = Desired::new(store.list_configs().await?);
    for doc in store.list_docs(ROLLOUTS).await? {
        let r = parse(&doc)?;
        if !r.state.is_active() {
            continue;
        }
        let target = store
            .config_versions(&r.config)
            .await?
            .into_iter()
            .find(|c| c.version == r.to_version);
        match target {
            Some(target) => desired.add_rollout(&r.id, target, &r.enrolled()),
            None => warn!(rollout = %r.id, "rollout's version is missing; ignored"),
        }
    }
    Ok(desired)
}
