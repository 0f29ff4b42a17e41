//! The documents the operations keep in the store, by collection: rollouts (read back by the
//! desired state as well as by the rollout operations) and restart jobs.

use crate::fleet::rollout::Rollout;
use flotilla_common::store::{Doc, StoreError};

/// Rollouts, by id.
pub const ROLLOUTS: &str = "rollouts";
/// Restart jobs, by id.
pub const RESTARTS: &str = "restarts";

/// A rollout from its document.
pub fn parse(doc: &Doc) -> Result<Rollout, StoreError> {
    serde_json::from_str(&doc.json)
        .map_err(|e| StoreError::Corrupt(format!("rollout {}: {e}", doc.id)))
}
