//! Synthetic OpAMP agents. [`sim::SimAgent`] is the protocol behaviour of one agent (sequence
//! numbers, compression, full state on request, applying pushed configs, restart); [`client`] moves
//! its messages over WebSocket or plain HTTP. Flotilla's tests use both directly; the
//! `flotilla-swarm` binary runs thousands of them; [`supervisor`] adds the habits of the
//! collector's OpAMP supervisor, [`realistic`] the report sizes of a production fleet. Of
//! Flotilla's crates it depends on `flotilla-proto` alone.

pub mod client;
pub mod otlp;
pub mod realistic;
pub mod sim;
pub mod supervisor;
pub mod swarm;
