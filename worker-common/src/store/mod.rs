//! The Store: where the coordinator keeps agent records, silence deadlines and configs.
//! [`RedisStore`] in a cluster; [`EmbeddedStore`] (memory plus a redb file under `--data-dir`)
//! when one process runs every role.
//!
//! Agent state is partitioned by shard, and every write of it carries a [`Fence`]: the epoch under
//! which the writer holds the shard's lease. A write under an epoch that is no longer the shard's
//! current one fails with [`StoreError::Fenced`], so a paused or partitioned former owner cannot
//! change anything once another coordinator has taken the shard.

mod embedded;
mod redis;

pub use self::redis::{LeaseTiming, RedisStore};
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
    #[error("shard {shard} is no longer held under epoch {epoch}")]
    Fenced { shard: u16, epoch: u64 },
}

/// The right to write one shard's agent state: the epoch of the writer's lease on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fence {
    pub shard: u16,
    pub epoch: u64,
}

/// What a save does to the agent's silence deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Deadline {
    /// (Re-)arm it at this time (unix ms).
    Arm(u64),
    /// The agent cannot be silent (disconnected, or already silent): no deadline.
    Clear,
    /// Leave it as it is.
    Keep,
}

/// Which shards a visit covers.
pub type ShardFilter<'a> = &'a (dyn Fn(u16) -> bool + Sync);

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
    /// Who stored this version (the API caller's token name).
    #[serde(default)]
    pub created_by: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigFile {
    pub body: String,
    pub content_type: String,
}

#[async_trait]
pub trait Store: Send + Sync + 'static {
    async fn get_agent(&self, uid: Uuid) -> Result<Option<AgentRecord>, StoreError>;
    /// Writes an agent record (keyed by its instance_uid, in shard `fence.shard`) and changes its
    /// silence deadline, in one step, if `fence` still holds.
    async fn save_agent(
        &self,
        fence: Fence,
        record: &AgentRecord,
        deadline: Deadline,
    ) -> Result<(), StoreError>;
    /// Calls `f` on every agent record of the shards `shards` accepts. Fleet-wide views (counts,
    /// filters, pushes) use this so they copy only what they keep, never the whole fleet.
    async fn visit_agents(
        &self,
        shards: ShardFilter<'_>,
        f: &mut (dyn for<'r> FnMut(&'r AgentRecord) + Send),
    ) -> Result<(), StoreError>;
    /// Claims the agents of `fence.shard` whose deadline is at or before `now_unix_ms`: their
    /// deadlines move to `now + retry_ms`, so if the claimer dies before saving them, the next
    /// owner finds them due again. The claimer saves each one (marking it silent, or re-arming).
    async fn claim_due(
        &self,
        fence: Fence,
        now_unix_ms: u64,
        retry_ms: u64,
    ) -> Result<Vec<Uuid>, StoreError>;

    /// Stores `config` as the next version of its name (the version field is assigned here).
    async fn put_config(&self, config: StoredConfig) -> Result<StoredConfig, StoreError>;
    /// The latest version of every config.
    async fn list_configs(&self) -> Result<Vec<StoredConfig>, StoreError>;
}
