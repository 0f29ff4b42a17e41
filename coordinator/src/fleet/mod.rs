//! Fleet management rules, pure (no I/O, no clock): named configs and how each agent's desired
//! state is resolved from them ([`configs`]), what selectors see of an agent and which of its
//! capabilities take which part of a config ([`agents`]), what an admin may store ([`checks`]),
//! collector config validation ([`validate`]) and what an agent's build lacks for a config
//! ([`components`]), secret redaction ([`redact`]), agents' home regions ([`regions`]), agents' own metrics rolled up ([`own_metrics`]), and the phased rollout plan and its step rule
//! ([`rollout`]) and across regions ([`region_rollout`]).
//!
//! May use: flotilla-common's types (selectors, stored configs, settings) and flotilla-proto's.
//! Must not: do I/O, read the clock, or use the OpAMP state machine, the operations, the
//! interfaces or the running service.

pub mod agents;
pub mod alerts;
pub mod checks;
pub mod components;
pub mod configs;
pub mod drift;
pub mod own_metrics;
pub mod redact;
pub mod region_rollout;
pub mod regions;
pub mod rollout;
pub mod validate;
pub mod yaml;
