//! Logging setup shared by every binary: `tracing` to stderr, filtered by `RUST_LOG`
//! (default `info`), as text or, with `FLOTILLA_LOG_FORMAT=json`, as JSON lines.

use tracing_subscriber::EnvFilter;

pub fn init_logging() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
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
