//! `--own-metrics INTERVAL`: every agent of the run also sends its own metrics, as a collector
//! run by the OpAMP supervisor does, so that a benchmark includes the gateways' OTLP ingest. Each
//! agent, once the server has answered it, sends a collector-like export
//! ([`super::collector_metrics`]) every INTERVAL to the gateway it talks OpAMP with: its OpAMP URL
//! with the path `/v1/metrics` (and http(s) for ws(s)). The swarm does not read the destination
//! the server offers in its connection settings (the gateway's own endpoint by default).
//!
//! Exports are spread evenly over the interval (agent i of n at i/n of it) and go out on
//! [`LANES`] lanes, each one export at a time over its own keep-alive connection per gateway,
//! with the run's TLS, client certificate (not one the server offered an agent) and token: at
//! most [`LANES`] exports in flight. A lane that falls behind sends late rather than skipping;
//! a refused export (429, 503) is counted and not retried: the next one carries the same
//! counters. Every [`FAILING_EVERY`]th agent has one exporter failing and its queue near full.
//! An agent's state is its slot: uid, gateway, version, start time.

use super::config::{SwarmConfig, metrics_url};
use super::stats::{MAX_REASONS, Percentiles, percentiles, record};
use crate::sim::SimAgent;
use flotilla_proto::opamp::any_value;
use hdrhistogram::Histogram;
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use uuid::Uuid;

/// Exports in flight at most: one per lane.
pub const LANES: usize = 256;
/// A lane's connection idle this long is closed rather than reused: a gateway keeps a connection
/// that carried an export open for 130 s of idling; one reused as the gateway closes it fails
/// ("connection closed before message completed").
pub(super) const IDLE: Duration = Duration::from_secs(60);
/// One agent in this many (index 0, 50, 100, ...) has a failing exporter: 2%.
pub const FAILING_EVERY: usize = 50;

/// One agent, as its exports need it.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct Slot {
    /// Set once the server answered the agent; None before and after its life.
    pub(super) uid: Option<Uuid>,
    /// Index of the OpAMP URL it talks to.
    pub(super) url: usize,
    /// Index into the profile's service.version values.
    pub(super) version: usize,
    /// When it started (unix ns).
    pub(super) started_ns: u64,
}

#[derive(Default)]
struct Counts {
    errors: BTreeMap<String, u64>,
    reasons: Vec<String>,
    latency: Option<Histogram<u64>>,
}

/// The exports' side of a run: the agents' slots and what sending measured.
pub(super) struct OwnMetrics {
    pub(super) interval: Duration,
    /// Per OpAMP URL, its gateway's /v1/metrics.
    pub(super) urls: Vec<String>,
    slots: Vec<Mutex<Slot>>,
    /// Exports sent (answered or failed; not those the run's end cut off), answered 2xx, and
    /// the bytes and data points of all that were sent.
    sent: AtomicU64,
    ok: AtomicU64,
    pub(super) bytes: AtomicU64,
    pub(super) points: AtomicU64,
    errors_total: AtomicU64,
    counts: Mutex<Counts>,
}

pub(super) fn unix_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// The agent's service.version.
fn version_of(agent: &SimAgent) -> Option<&str> {
    agent
        .description
        .identifying_attributes
        .iter()
        .find(|kv| kv.key == "service.version")
        .and_then(|kv| match kv.value.as_ref()?.value.as_ref()? {
            any_value::Value::StringValue(s) => Some(s.as_str()),
            _ => None,
        })
}

/// The agents' own-metrics exports to the gateways' /v1/metrics.
#[derive(Debug, Clone, Serialize)]
pub struct OwnMetricsReport {
    /// Each agent sends one export this often.
    pub interval_s: f64,
    /// Exports sent (answered, refused or failed), over the whole run.
    pub exports: u64,
    pub exports_per_s: f64,
    /// Of them, answered 2xx.
    pub ok: u64,
    /// Average encoded size (protobuf, uncompressed) and data points of an export.
    pub bytes_per_export: Option<f64>,
    pub points_per_export: Option<f64>,
    pub errors_total: u64,
    /// By reason: `http_<status>` (e.g. http_429, http_503), `transport`, `timeout`.
    pub errors: BTreeMap<String, u64>,
    /// The first few distinct reasons, in the server's or the OS's words.
    pub error_reasons: Vec<String>,
    /// Export -> answer, of the exports answered (whatever the status).
    pub latency: Percentiles,
}

impl OwnMetrics {
    pub(super) fn new(cfg: &SwarmConfig, interval: Duration) -> anyhow::Result<Self> {
        Ok(Self {
            interval,
            urls: cfg
                .all_urls()
                .map(|u| metrics_url(u))
                .collect::<anyhow::Result<_>>()?,
            slots: (0..cfg.agents).map(|_| Mutex::default()).collect(),
            sent: AtomicU64::new(0),
            ok: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            points: AtomicU64::new(0),
            errors_total: AtomicU64::new(0),
            counts: Mutex::default(),
        })
    }

    pub(super) fn slot(&self, index: usize) -> Option<std::sync::MutexGuard<'_, Slot>> {
        // A poisoned slot is a few numbers: still good.
        let s = self.slots.get(index)?;
        Some(s.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Agent `index` talks to OpAMP URL `url` now.
    pub(super) fn moved(&self, index: usize, url: usize) {
        if let Some(mut s) = self.slot(index) {
            s.url = url;
        }
    }

    /// The server answered agent `index`: it sends its metrics from now on (under its new uid,
    /// if the server gave it one).
    pub(super) fn answered(&self, index: usize, agent: &SimAgent, cfg: &SwarmConfig) {
        let version = version_of(agent)
            .and_then(|v| cfg.profile.version.values().iter().position(|p| p == v))
            .unwrap_or(0);
        if let Some(mut s) = self.slot(index) {
            if s.uid.is_none() {
                s.started_ns = unix_ns();
            }
            s.uid = Some(agent.uid);
            s.version = version;
        }
    }

    /// Agent `index` left (churn): its successor starts anew.
    pub(super) fn left(&self, index: usize) {
        if let Some(mut s) = self.slot(index) {
            s.uid = None;
        }
    }

    fn counts(&self) -> std::sync::MutexGuard<'_, Counts> {
        self.counts.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn error(&self, kind: String, why: Option<String>) {
        self.errors_total.fetch_add(1, Ordering::Relaxed);
        let mut c = self.counts();
        if let Some(why) = why {
            let line = format!("{kind}: {why}");
            if c.reasons.len() < MAX_REASONS && !c.reasons.contains(&line) {
                c.reasons.push(line);
            }
        }
        *c.errors.entry(kind).or_default() += 1;
    }

    /// What sending measured, over a run of `duration_s`.
    pub(super) fn report(&self, duration_s: f64) -> OwnMetricsReport {
        let c = self.counts();
        let sent = self.sent.load(Ordering::Relaxed);
        let ok = self.ok.load(Ordering::Relaxed);
        let per = |v: u64| (sent > 0).then(|| v as f64 / sent as f64);
        OwnMetricsReport {
            interval_s: self.interval.as_secs_f64(),
            exports: sent,
            exports_per_s: sent as f64 / duration_s.max(1e-3),
            ok,
            bytes_per_export: per(self.bytes.load(Ordering::Relaxed)),
            points_per_export: per(self.points.load(Ordering::Relaxed)),
            errors_total: self.errors_total.load(Ordering::Relaxed),
            errors: c.errors.clone(),
            error_reasons: c.reasons.clone(),
            latency: percentiles(&c.latency),
        }
    }
}

pub(super) type Answer = Result<anyhow::Result<(u16, bytes::Bytes)>, tokio::time::error::Elapsed>;

impl OwnMetrics {
    /// An export's answer (or why there is none), `took` after it was sent.
    pub(super) fn note(&self, answer: Answer, took: Duration) {
        self.sent.fetch_add(1, Ordering::Relaxed);
        let (code, body) = match answer {
            Err(_) => return self.error("timeout".into(), None),
            Ok(Err(e)) => return self.error("transport".into(), Some(format!("{e:#}"))),
            Ok(Ok(answered)) => answered,
        };
        record(&mut self.counts().latency, took);
        if (200..300).contains(&code) {
            self.ok.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let body = String::from_utf8_lossy(&body);
        let why = body.trim().chars().take(200).collect::<String>();
        self.error(format!("http_{code}"), Some(format!("HTTP {code}: {why}")));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_metrics_endpoint_is_the_gateways_own() {
        for (opamp, metrics) in [
            (
                "ws://127.0.0.1:4320/v1/opamp",
                "http://127.0.0.1:4320/v1/metrics",
            ),
            (
                "wss://gw.example.com/v1/opamp",
                "https://gw.example.com/v1/metrics",
            ),
            ("http://gw:8080/v1/opamp?x=1", "http://gw:8080/v1/metrics"),
            ("https://gw:4320/opamp", "https://gw:4320/v1/metrics"),
        ] {
            assert_eq!(metrics_url(opamp).unwrap(), metrics, "{opamp}");
        }
        assert!(metrics_url("ftp://gw/v1/opamp").is_err());
        assert!(metrics_url("not a url").is_err());
    }

    #[test]
    fn a_slot_follows_the_agents_life() {
        let mut cfg = SwarmConfig::new(
            super::super::config::Scenario::Steady,
            vec!["ws://a:1/v1/opamp".into(), "ws://b:1/v1/opamp".into()],
            3,
        );
        cfg.own_metrics = Some(Duration::from_secs(10));
        let own = OwnMetrics::new(&cfg, Duration::from_secs(10)).unwrap();
        let agent = crate::sim::SimAgent::from_profile(&cfg.profile, "h", &[], &mut rand::rng());
        own.moved(2, 1);
        assert!(own.slot(2).unwrap().uid.is_none(), "not before an answer");
        own.answered(2, &agent, &cfg);
        let s = *own.slot(2).unwrap();
        assert_eq!((s.uid, s.url), (Some(agent.uid), 1));
        assert_eq!(
            cfg.profile.version.values()[s.version],
            version_of(&agent).unwrap()
        );
        own.left(2);
        assert!(own.slot(2).unwrap().uid.is_none());
        assert!(own.slot(3).is_none(), "no such agent");
    }
}
