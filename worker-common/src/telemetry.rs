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

/// Lets through at most [`LogLimiter::PER_WINDOW`] log lines per ten seconds on a hot error path
/// (a misbehaving agent must not flood the logs), and says how many were held back since the
/// last line that went out.
#[derive(Debug, Default)]
pub struct LogLimiter {
    state: std::sync::Mutex<LimiterState>,
}

#[derive(Debug, Default)]
struct LimiterState {
    window_start: Option<std::time::Instant>,
    in_window: u32,
    suppressed: u64,
}

impl LogLimiter {
    pub const PER_WINDOW: u32 = 10;
    const WINDOW: std::time::Duration = std::time::Duration::from_secs(10);

    /// Calls `log` with the number of lines held back before it, unless this window's lines are
    /// spent (then it is counted as held back).
    pub fn warn(&self, log: impl FnOnce(u64)) {
        let suppressed = {
            let mut s = self
                .state
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let now = std::time::Instant::now();
            if s.window_start
                .is_none_or(|t| now.duration_since(t) >= Self::WINDOW)
            {
                s.window_start = Some(now);
                s.in_window = 0;
            }
            if s.in_window >= Self::PER_WINDOW {
                s.suppressed += 1;
                return;
            }
            s.in_window += 1;
            std::mem::take(&mut s.suppressed)
        };
        log(suppressed);
    }
}

#[cfg(test)]
mod tests {
    use super::LogLimiter;

    #[test]
    fn a_flood_of_lines_is_cut_to_a_few_that_count_the_rest() {
        let limiter = LogLimiter::default();
        let mut lines = Vec::new();
        for _ in 0..1000 {
            limiter.warn(|held_back| lines.push(held_back));
        }
        assert_eq!(lines.len(), LogLimiter::PER_WINDOW as usize);
        assert!(lines.iter().all(|n| *n == 0), "nothing held back yet");
    }
}
