//! The Store: where the coordinator keeps agent records, silence deadlines and configs.
//! Redis in a cluster; [`EmbeddedStore`] (memory plus a redb file under `--data-dir`) when one
//! process runs every role.

mod embedded;

pub use embedded::EmbeddedStore;

use async_trait::async_trait;
use flotilla_proto::bus::AgentRecord;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use thiserror::Error;
use uuid::Uuid;

#[derive(Debug, Error)]
pub enum StoreError {
    #[error("store I/O failed: {0}")]
    Io(String),
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
}

/// One immutable version of a named configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredConfig {
    pub name: String,
    pub version: u64,
    /// Agents whose attributes contain every one of these pairs get this config.
    pub selector: BTreeMap<String, String>,
    pub files: BTreeMap<String, ConfigFile>,
    /// Hex of the OpAMP config_hash sent to agents.
    pub hash: String,
    pub created_unix_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigFile {
    pub body: String,
    pub content_type: String,
}

#[async_trait]
pub trait Store: Send + Sync + 'static {
    async fn get_agent(&self, uid: Uuid) -> Result<Option<AgentRecord>, StoreError>;
    async fn put_agent(&self, record: AgentRecord) -> Result<(), StoreError>;
    /// Calls `f` on every agent record. Fleet-wide views (counts, filters, pushes) use this so
    /// they copy only what they keep, never the whole fleet.
    async fn visit_agents(
        &self,
        f: &mut (dyn for<'r> FnMut(&'r AgentRecord) + Send),
    ) -> Result<(), StoreError>;

    /// (Re-)arms the silence deadline of an agent.
    async fn arm_deadline(&self, uid: Uuid, at_unix_ms: u64) -> Result<(), StoreError>;
    async fn clear_deadline(&self, uid: Uuid) -> Result<(), StoreError>;
    /// Removes and returns every agent whose deadline is at or before `now_unix_ms`. Each due
    /// deadline is returned once.
    async fn take_due(&self, now_unix_ms: u64) -> Result<Vec<Uuid>, StoreError>;

    /// Stores `config` as the next version of its name (the version field is assigned here).
    async fn put_config(&self, config: StoredConfig) -> Result<StoredConfig, StoreError>;
    /// The latest version of every config.
    async fn list_configs(&self) -> Result<Vec<StoredConfig>, StoreError>;
}
