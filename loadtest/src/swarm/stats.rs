//! What a swarm's agents measure, shared by all of them: counters, latency histograms (HDR, in
//! microseconds), errors by kind, and the once-a-second timeline.

use hdrhistogram::Histogram;
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Up to ten minutes, three significant digits.
fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid histogram bounds")
}

/// Percentiles of a histogram of microseconds, in milliseconds.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Percentiles {
    pub count: u64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
}

impl Percentiles {
    fn of(h: &Histogram<u64>) -> Self {
        let ms = |us: u64| us as f64 / 1000.0;
        if h.is_empty() {
            return Self::default();
        }
        Self {
            count: h.len(),
            p50_ms: ms(h.value_at_quantile(0.50)),
            p90_ms: ms(h.value_at_quantile(0.90)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            p999_ms: ms(h.value_at_quantile(0.999)),
            max_ms: ms(h.max()),
        }
    }
}

/// Milliseconds since the Unix epoch, now: what several swarms' reports are lined up by.
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The latency bucket of `us` microseconds: bucket b holds (10^((b-1)/20), 10^(b/20)] µs, 20 a
/// decade (each 12% wide), so that buckets of several seconds and swarms add up to percentiles
/// of any window.
pub fn bucket(us: u64) -> u16 {
    (20.0 * (us.max(1) as f64).log10()).ceil() as u16
}

/// One second of the run.
#[derive(Debug, Clone, Serialize)]
pub struct Sample {
    pub t_s: f64,
    /// When the second ended, in ms since the Unix epoch.
    pub unix_ms: u64,
    pub connected: u64,
    pub messages_per_s: u64,
    pub errors: u64,
    /// Reply latency of the messages answered in this second.
    pub p50_ms: f64,
    pub p99_ms: f64,
    /// ... as `[bucket, count]` pairs ([`bucket`]).
    pub reply_buckets: Vec<(u16, u64)>,
    /// Config results APPLIED so far.
    pub applied: u64,
}

#[derive(Default)]
struct Latency {
    all: Option<Histogram<u64>>,
    /// Only in the steady state.
    steady: Option<Histogram<u64>>,
    window: Option<Histogram<u64>>,
}

/// How many distinct failure reasons a run keeps.
pub const MAX_REASONS: usize = 8;

pub struct Stats {
    pub started: Instant,
    pub connected: AtomicU64,
    pub connects: AtomicU64,
    pub messages: AtomicU64,
    pub joined: AtomicU64,
    pub left: AtomicU64,
    pub applied: AtomicU64,
    pub failed: AtomicU64,
    /// Sessions lost and agents back (first reply on a new connection) after a loss.
    pub lost: AtomicU64,
    pub recovered: AtomicU64,
    /// Agents (lives, under churn) answered at least once.
    pub answered: AtomicU64,
    /// Every agent connected and answered, and the first replies settled: the steady state.
    pub steady: AtomicBool,
    errors_total: AtomicU64,
    /// Agents that took a client certificate the server offered.
    pub rotated: AtomicU64,
    errors: Mutex<BTreeMap<String, u64>>,
    /// Why connections failed, in the server's or the OS's words: the first few distinct ones.
    reasons: Mutex<Vec<String>>,
    latency: Mutex<Latency>,
    handshake: Mutex<Option<Histogram<u64>>>,
    push: Mutex<Option<Histogram<u64>>>,
    /// When the rollout's config was pushed, if one was.
    pub rollout_started: Mutex<Option<Instant>>,
    /// When each config (by hash) was reported APPLIED, in ms since the Unix epoch.
    applied_at: Mutex<BTreeMap<Vec<u8>, Vec<u64>>>,
    timeline: Mutex<Vec<Sample>>,
    last_messages: AtomicU64,
}

pub(super) fn record(h: &mut Option<Histogram<u64>>, d: Duration) {
    h.get_or_insert_with(histogram)
        .saturating_record((d.as_micros() as u64).max(1));
}

pub(super) fn percentiles(h: &Option<Histogram<u64>>) -> Percentiles {
    h.as_ref().map(Percentiles::of).unwrap_or_default()
}

impl Stats {
    pub(crate) fn new() -> Self {
        Self {
            started: Instant::now(),
            connected: AtomicU64::new(0),
            connects: AtomicU64::new(0),
            messages: AtomicU64::new(0),
            joined: AtomicU64::new(0),
            left: AtomicU64::new(0),
            applied: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            lost: AtomicU64::new(0),
            recovered: AtomicU64::new(0),
            answered: AtomicU64::new(0),
            steady: AtomicBool::new(false),
            errors_total: AtomicU64::new(0),
            rotated: AtomicU64::new(0),
            errors: Mutex::default(),
            reasons: Mutex::default(),
            latency: Mutex::default(),
            handshake: Mutex::default(),
            push: Mutex::default(),
            rollout_started: Mutex::default(),
            applied_at: Mutex::default(),
            timeline: Mutex::default(),
            last_messages: AtomicU64::new(0),
        }
    }

    pub fn elapsed_s(&self) -> f64 {
        self.started.elapsed().as_secs_f64()
    }

    pub fn error(&self, kind: &str) {
        self.errors_total.fetch_add(1, Ordering::Relaxed);
        *self
            .errors
            .lock()
            .expect("errors lock")
            .entry(kind.to_owned())
            .or_default() += 1;
    }

    /// Keeps `why` (the first [`MAX_REASONS`] distinct ones); true if it is new, to say once.
    pub fn reason(&self, kind: &str, why: &str) -> bool {
        let line = format!("{kind}: {why}");
        let mut reasons = self.reasons.lock().expect("reasons lock");
        if reasons.len() >= MAX_REASONS || reasons.contains(&line) {
            return false;
        }
        reasons.push(line);
        true
    }

    pub fn reasons(&self) -> Vec<String> {
        self.reasons.lock().expect("reasons lock").clone()
    }

    pub fn errors(&self) -> (u64, BTreeMap<String, u64>) {
        (
            self.errors_total.load(Ordering::Relaxed),
            self.errors.lock().expect("errors lock").clone(),
        )
    }

    /// A connection (TCP, TLS, WebSocket upgrade) that took `took`.
    pub fn connected(&self, took: Duration) {
        self.connects.fetch_add(1, Ordering::Relaxed);
        self.connected.fetch_add(1, Ordering::Relaxed);
        record(&mut self.handshake.lock().expect("handshake lock"), took);
    }

    pub fn disconnected(&self) {
        self.connected.fetch_sub(1, Ordering::Relaxed);
    }

    /// A reply that arrived `took` after its message was sent.
    pub fn reply(&self, took: Duration) {
        self.messages.fetch_add(1, Ordering::Relaxed);
        let steady = self.steady.load(Ordering::Relaxed);
        let mut l = self.latency.lock().expect("latency lock");
        record(&mut l.all, took);
        record(&mut l.window, took);
        if steady {
            record(&mut l.steady, took);
        }
    }

    /// An agent finished applying the pushed config of hash `hash`.
    pub fn config_result(&self, hash: &[u8], applied: bool) {
        if !applied {
            self.failed.fetch_add(1, Ordering::Relaxed);
            return;
        }
        self.applied.fetch_add(1, Ordering::Relaxed);
        self.applied_at
            .lock()
            .expect("applied lock")
            .entry(hash.to_vec())
            .or_default()
            .push(unix_ms());
        if let Some(t0) = *self.rollout_started.lock().expect("rollout lock") {
            record(&mut self.push.lock().expect("push lock"), t0.elapsed());
        }
    }

    /// Closes the current second of the timeline and returns it.
    pub fn sample(&self) -> Sample {
        let hist = self.latency.lock().expect("latency lock").window.take();
        let window = hist.as_ref().map(Percentiles::of).unwrap_or_default();
        let mut reply_buckets = BTreeMap::<u16, u64>::new();
        for v in hist.iter().flat_map(|h| h.iter_recorded()) {
            *reply_buckets
                .entry(bucket(v.value_iterated_to()))
                .or_default() += v.count_at_value();
        }
        let messages = self.messages.load(Ordering::Relaxed);
        let last = self.last_messages.swap(messages, Ordering::Relaxed);
        let s = Sample {
            t_s: self.elapsed_s(),
            unix_ms: unix_ms(),
            connected: self.connected.load(Ordering::Relaxed),
            messages_per_s: messages - last,
            errors: self.errors_total.load(Ordering::Relaxed),
            p50_ms: window.p50_ms,
            p99_ms: window.p99_ms,
            reply_buckets: reply_buckets.into_iter().collect(),
            applied: self.applied.load(Ordering::Relaxed),
        };
        self.timeline.lock().expect("timeline lock").push(s.clone());
        s
    }

    pub fn timeline(&self) -> Vec<Sample> {
        self.timeline.lock().expect("timeline lock").clone()
    }

    pub fn latency(&self) -> (Percentiles, Percentiles) {
        let l = self.latency.lock().expect("latency lock");
        (percentiles(&l.all), percentiles(&l.steady))
    }

    pub fn handshakes(&self) -> Percentiles {
        percentiles(&self.handshake.lock().expect("handshake lock"))
    }

    /// Every config hash APPLIED during the run, with the times of its reports.
    pub fn applied_at(&self) -> BTreeMap<Vec<u8>, Vec<u64>> {
        self.applied_at.lock().expect("applied lock").clone()
    }

    pub fn push_times(&self) -> Percentiles {
        percentiles(&self.push.lock().expect("push lock"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seconds_replies_go_into_buckets_of_twenty_a_decade() {
        assert_eq!(bucket(0), 0);
        assert_eq!(bucket(1_000), 60);
        assert_eq!(bucket(1_001), 61);
        assert_eq!(bucket(1_122), 61);
        assert_eq!(bucket(1_123), 62);
        let stats = Stats::new();
        for ms in [1, 1, 1, 50] {
            stats.reply(Duration::from_millis(ms));
        }
        let s = stats.sample();
        assert_eq!(s.reply_buckets, [(60, 3), (94, 1)]);
        assert!(stats.sample().reply_buckets.is_empty(), "the next second");
    }
}
