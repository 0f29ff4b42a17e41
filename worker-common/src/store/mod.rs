//! The Store: where the coordinator keeps agent records, silence deadlines and configs.
//! [`RedisStore`] in a cluster; [`EmbeddedStore`] (memory plus a redb file under `--data-dir`)
//! when one process runs every role.
//!
//! Agent state is partitioned by shard, and every write of it carries a [`Fence`]: the epoch under
//! which the writer holds the shard's lease. A write under an epoch that is no longer the shard's
//! current one fails with [`StoreError::Fenced`], so a paused or partitioned former owner cannot
//! change anything once another coordinator has taken the shard.

mod embedded;
mod measured;
mod redis;
mod tally;
mod types;

pub use self::redis::RedisStore;
pub use self::redis::leases::LeaseTiming;
pub use embedded::EmbeddedStore;
pub use measured::Measured;
pub use tally::{AgentCounts, Tally, in_fleet_view};
pub use types::{
    AgentSettings, AuditEntry, AuditOf, AuditPage, AuditQuery, Claimed, ConfigFile,
    DEFAULT_AUDIT_RETENTION, Deadline, Doc, Fence, KeptParts, PackageOffer, ShardFilter, Store,
    StoreError, StoredConfig, TelemetryDestination, Touch,
};
