//! Logging setup shared by every binary: `tracing` to stderr, filtered by `RUST_LOG`
//! (default `info`), as text or, with `FLOTILLA_LOG_FORMAT=json`, as JSON lines.

use tracing_subscriber::EnvFilter;

pub fn init_logging() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // Colours only on a terminal: logs written to files stay plain text.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    let json = std::env::var("FLOTILLA_LOG_FORMAT").is_ok_and(|v| v == "json");
    // try_init: tests may call this more than once per process.
    let _ = if json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}

/// Milliseconds since the Unix epoch, from the wall clock.
pub fn now_unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// A fresh W3C trace context (`traceparent`) for one agent message, carried in bus headers so the
/// gateway's and the owner's logs of that message share a trace id.
pub fn new_traceparent() -> String {
    let trace = uuid::Uuid::new_v4().simple().to_string();
    let span = &uuid::Uuid::new_v4().simple().to_string()[..16];
    format!("00-{trace}-{span}-01")
}
