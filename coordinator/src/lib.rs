//! The coordinator role: owns agents' state. It processes every agent message that gateways
//! forward over the Bus (the OpAMP state machine in [`agent`]), keeps agent records and silence
//! deadlines in the Store, chooses each agent's config ([`configs`]), pushes desired state to
//! connected agents back through their gateway, and serves the admin API, REST ([`api`]) and
//! gRPC ([`grpc`]) on one listener.
//!
//! Main types: [`Coordinator`] (the running service), [`agent::process`] (one message in, one
//! reply and a new record out). It reaches the gateway only through the Bus and never depends on
//! the gateway crate.

pub mod admin;
pub mod agent;
pub mod api;
pub mod auth;
pub mod certs;
pub mod cluster;
pub mod configs;
pub mod duties;
pub mod grpc;
mod metrics;
pub mod offers;
pub mod openapi;
pub mod redact;
pub mod rollout;
pub mod rollouts;
mod service;
pub mod shards;
pub mod validate;
pub mod views;

pub use service::{Coordinator, CoordinatorConfig, RestartOutcome, ServiceError};
pub use shards::ShardTable;
