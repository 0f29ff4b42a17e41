//! The gateway role: terminates agents' OpAMP connections (WebSocket and plain HTTP on one port,
//! path `/v1/opamp`), checks sizes and framing, forwards each AgentToServer over the Bus to the
//! owner of the agent's shard and answers with the owner's reply, and delivers pushes that owners
//! address to its live connections.
//!
//! Main types: [`Gateway`] (the listener and its sessions), [`table::ConnectionTable`]. It keeps no
//! state that outlives it and never talks to the Store (Redis) or depends on the coordinator.

mod activity;
mod downlinks;
mod forward;
mod gateway;
mod guard;
mod heartbeats;
mod http;
mod metrics;
pub mod otlp;
mod otlp_wire;
mod own_metrics;
mod ownerless;
mod shard_queue;
mod slots;
pub mod table;
mod ws;

pub use gateway::{Gateway, GatewayConfig, MAX_UPLINKS_IN_FLIGHT, METRICS_PATH, OPAMP_PATH};
pub use guard::AgentTokens;
pub use http::{BodyError, decode_body};
pub use ws::websocket_config;
