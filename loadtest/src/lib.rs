//! Synthetic OpAMP agents. [`sim::SimAgent`] is the protocol behaviour of one agent (sequence
//! numbers, compression, full state on request, applying pushed configs, restart); [`client`] moves
//! its messages over WebSocket or plain HTTP. Flotilla's tests use both directly; the
//! `flotilla-swarm` binary runs thousands of them. Depends only on `flotilla-proto`.

pub mod client;
pub mod sim;
pub mod swarm;
