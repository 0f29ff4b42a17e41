//! The OpAMP protocol, pure (no I/O, no clock): what one AgentToServer does to an agent's record
//! and what the reply carries ([`process`]), which offers (remote config, packages, connection
//! settings) an agent is due ([`desired`], [`offers`]), and which client certificate may speak for
//! which agent ([`identity`]).
//!
//! May use: the fleet rules ([`crate::fleet`]) for what an agent should run, flotilla-common's
//! types and limits, flotilla-proto. Must not: do I/O, read the clock, or use the operations, the
//! interfaces or the running service.

pub mod desired;
pub mod events;
pub mod identity;
pub mod offers;
pub mod process;

pub use events::EventKind;
pub use process::{Ctx, Outcome, SERVER_CAPABILITIES, process};

#[cfg(test)]
mod tests;
