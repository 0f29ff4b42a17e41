//! The `flotilla` binary's library half: [`app`] assembles the roles of `flotilla serve` (the
//! embedded single-process mode) and [`ctl`] is the admin CLI. `main.rs` only parses, starts and
//! waits; everything here can be started in-process by tests.

mod api_server;
pub mod app;
pub mod certs;
pub mod ctl;
