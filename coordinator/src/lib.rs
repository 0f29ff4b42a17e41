//! The coordinator role: owns agents' state. Its layers, from the bottom up (each may use the
//! ones below it, never one above; the test in `tests/layers.rs` holds the tree to this):
//!
//! - [`fleet`]: fleet management rules, pure: configs and resolution, selectors' view of an
//!   agent, validation, redaction, the rollout plan and step;
//! - [`opamp`]: the OpAMP protocol, pure: one AgentToServer and the stored record in, the new
//!   record and the reply out; the offers; certificate identity;
//! - [`ops`]: the operations every interface calls, one function per admin operation taking a
//!   caller and returning a typed answer or an [`ops::Error`];
//! - [`api`]: the interfaces, thin adapters over the operations: REST, gRPC, auth, OpenAPI;
//! - [`service`]: the running coordinator: the shard owner processing agent messages, pushes,
//!   background duties under a supervisor, the shard table and leases.
//!
//! [`metrics`] is used by every layer and uses none. The coordinator reaches the gateway only
//! through the Bus and never depends on the gateway crate.

pub mod api;
pub mod fleet;
pub mod metrics;
pub mod opamp;
pub mod ops;
pub mod service;

pub use service::shards::ShardTable;
pub use service::{CoordinatorConfig, Service};
