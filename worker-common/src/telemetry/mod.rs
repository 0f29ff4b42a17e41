//! Logs and traces, set up once by every binary: `tracing` to stderr, as text or JSON lines
//! (`--log-format`), filtered by `--log-level` (else `RUST_LOG`, else `info`); and, when an OTLP
//! endpoint is configured, the same spans exported as OpenTelemetry traces ([`traces`]).

pub mod process;
pub mod traces;

use crate::config::LogFormat;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{EnvFilter, Layer, Registry};

/// What [`init`] started; [`Telemetry::shutdown`] exports the spans still queued.
#[derive(Debug)]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Whether spans are exported.
    pub fn tracing(&self) -> bool {
        self.provider.is_some()
    }

    /// Sends what the export queue holds (waiting at most a few seconds) and stops exporting.
    pub async fn shutdown(self) {
        if let Some(provider) = self.provider {
            let _ = tokio::task::spawn_blocking(move || {
                provider.shutdown_with_timeout(std::time::Duration::from_secs(5))
            })
            .await;
        }
    }
}

/// Starts logging and, if configured, trace export; `level` is a tracing filter (None:
/// `RUST_LOG`, else `info`). A filter or trace setting that does not parse is an error, said
/// before anything runs. Call it inside the Tokio runtime (gRPC export runs on it).
pub fn init(
    format: LogFormat,
    level: Option<&str>,
    trace: &traces::TraceConfig,
    service: &traces::ServiceInfo,
) -> Result<Telemetry, String> {
    let filter = match level {
        Some(l) => EnvFilter::try_new(l).map_err(|e| {
            format!("--log-level {l:?} is not a level or filter (e.g. info, info,flotilla_gateway=debug): {e}")
        })?,
        None => EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
    };
    // Colours only on a terminal: logs written to files stay plain text.
    let fmt = tracing_subscriber::fmt::layer()
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    let logs: Box<dyn Layer<Registry> + Send + Sync> = match format {
        // One object a line: timestamp, level, target, the event's fields under "fields" and the
        // current span's under "span" (kept apart, so no key appears twice).
        LogFormat::Json => fmt
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .with_filter(filter)
            .boxed(),
        LogFormat::Text => fmt.with_filter(filter).boxed(),
    };
    let provider = traces::provider(trace, service)?;
    let mut layers = vec![logs];
    if let Some(p) = &provider {
        layers.push(traces::layer(p).boxed());
    }
    tracing_subscriber::registry()
        .with(layers)
        .try_init()
        .map_err(|e| format!("logging could not start: {e}"))?;
    Ok(Telemetry { provider })
}

/// Milliseconds since the Unix epoch, from the wall clock.
pub fn now_unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Lets through log lines on a hot error path at a bounded rate (bursts of
/// [`LogLimiter::PER_WINDOW`], then one a second: a misbehaving agent must not flood the logs), and
/// says how many were held back since the last line that went out.
#[derive(Debug)]
pub struct LogLimiter {
    limiter: governor::DefaultDirectRateLimiter,
    suppressed: std::sync::atomic::AtomicU64,
}

impl Default for LogLimiter {
    fn default() -> Self {
        let burst =
            std::num::NonZeroU32::new(Self::PER_WINDOW).unwrap_or(std::num::NonZeroU32::MIN);
        let quota = governor::Quota::per_second(std::num::NonZeroU32::MIN).allow_burst(burst);
        Self {
            limiter: governor::RateLimiter::direct(quota),
            suppressed: std::sync::atomic::AtomicU64::new(0),
        }
    }
}

impl LogLimiter {
    pub const PER_WINDOW: u32 = 10;

    /// Calls `log` with the number of lines held back before it, unless the rate is spent (then
    /// it is counted as held back).
    pub fn warn(&self, log: impl FnOnce(u64)) {
        use std::sync::atomic::Ordering;
        if self.limiter.check().is_err() {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            return;
        }
        log(self.suppressed.swap(0, Ordering::Relaxed));
    }
}

/// A Prometheus label value written safely: the text exposition's escapes for `\`, `"` and line
/// feeds (prometheus-client writes label values as they are). For values agents choose (their
/// version, their exporters' names), which could otherwise forge series or break a scrape.
pub fn label_value(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::{LogLimiter, label_value};

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

    #[test]
    fn label_values_cannot_break_out() {
        let forged = "x\"} 0\nflotilla_agent_up{instance_uid=\"victim\\";
        assert_eq!(
            label_value(forged),
            "x\\\"} 0\\nflotilla_agent_up{instance_uid=\\\"victim\\\\"
        );
        assert_eq!(label_value("0.120.0"), "0.120.0");
    }
}
