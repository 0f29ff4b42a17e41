//! Plumbing shared by Flotilla's roles: typed configuration ([`config`]), the [`bus::Bus`] between
//! gateways and coordinators with its in-process implementation, the [`store::Store`] of agent
//! state and configs with its embedded implementation, agent [`selector`]s, the shard function and subject
//! names ([`names`]), the error-kind mapping ([`error`]), the OpAMP WebSocket frame codec ([`codec`]) and logging ([`telemetry`]).
//!
//! This crate depends only on `flotilla-proto`; it never reaches for the gateway or coordinator.

pub mod bus;
pub mod codec;
pub mod config;
pub mod error;
pub mod names;
pub mod pki;
pub mod selector;
pub mod store;
pub mod telemetry;
pub mod tls;
