//! The fleet by agents' own metrics: the top agents by CPU, memory, refused and failed items, and
//! the exporters failing or with queues near full, among the agents a selector chooses. One pass
//! over the records; only agents whose last export is recent are ranked.

use super::agents::parse_selector;
use super::error::bad_request;
use super::views::{ExporterView, FleetMetrics, Ranked, Troubled};
use super::{Caller, Ops, Result};
use crate::fleet::agents::{RecordAttributes, healthy, status_name};
use crate::fleet::own_metrics::{FRESH_MS, QUEUE_NEAR_FULL, queue_fill};
use flotilla_common::names::uid_text;
use flotilla_common::selector::{Attributes, Selector};
use flotilla_common::telemetry::now_unix_ms;
use flotilla_proto::bus::{AgentMetrics, AgentRecord};

/// The most agents each list holds.
pub const MAX_TOP: usize = 100;
const DEFAULT_TOP: usize = 10;

#[derive(Debug, Clone)]
pub struct FleetMetricsQuery {
    pub selector: Selector,
    pub top: usize,
}

impl FleetMetricsQuery {
    /// The query of text parameters (`selector`, `top`); unknown parameters are refused.
    pub fn parse<'a>(params: impl IntoIterator<Item = (&'a str, &'a str)>) -> Result<Self> {
        let mut q = Self {
            selector: Selector::default(),
            top: DEFAULT_TOP,
        };
        for (key, value) in params {
            match key {
                "selector" => q.selector = parse_selector(value)?,
                "top" => {
                    q.top = value
                        .parse()
                        .ok()
                        .filter(|n| (1..=MAX_TOP).contains(n))
                        .ok_or_else(|| {
                            bad_request(format!(
                                "top must be a number from 1 to {MAX_TOP}, not {value:?}"
                            ))
                        })?;
                }
                other => {
                    return Err(bad_request(format!(
                        "unknown parameter {other:?} (selector, top)"
                    )));
                }
            }
        }
        Ok(q)
    }
}

/// Keeps the `n` highest of what it is offered.
struct Top<T> {
    n: usize,
    items: Vec<(f64, T)>,
}

impl<T> Top<T> {
    fn new(n: usize) -> Self {
        Self {
            n,
            items: Vec::new(),
        }
    }

    fn offer(&mut self, value: f64, item: impl FnOnce() -> T) {
        if self.items.len() >= self.n * 2 {
            self.trim();
        }
        if self.items.len() < self.n || self.items.iter().any(|(v, _)| *v < value) {
            self.items.push((value, item()));
        }
    }

    fn trim(&mut self) {
        self.items.sort_by(|a, b| b.0.total_cmp(&a.0));
        self.items.truncate(self.n);
    }

    fn finish(mut self) -> Vec<(f64, T)> {
        self.trim();
        self.items
    }
}

struct Builder {
    out: FleetMetrics,
    cpu: Top<Ranked>,
    memory: Top<Ranked>,
    refused: Top<Ranked>,
    failed: Top<Ranked>,
    failing: Top<Troubled>,
    full: Top<Troubled>,
    now: u64,
}

impl Builder {
    fn new(top: usize, now: u64) -> Self {
        Self {
            out: FleetMetrics {
                fresh_seconds: FRESH_MS / 1000,
                ..Default::default()
            },
            cpu: Top::new(top),
            memory: Top::new(top),
            refused: Top::new(top),
            failed: Top::new(top),
            failing: Top::new(top),
            full: Top::new(top),
            now,
        }
    }

    fn add(&mut self, rec: &AgentRecord, m: &AgentMetrics) {
        let service_name = || {
            RecordAttributes(rec)
                .attribute("service.name")
                .map(|s| s.into_owned())
        };
        let ranked = |value: f64| {
            move || Ranked {
                instance_uid: uid_text(&rec.instance_uid),
                service_name: service_name(),
                value,
            }
        };
        if let Some(cpu) = m.cpu_cores {
            self.cpu.offer(cpu, ranked(cpu));
        }
        if let Some(mem) = m.memory_bytes {
            self.memory.offer(mem, ranked(mem));
        }
        let refused: f64 = m.receivers.iter().map(|r| r.bad_per_second).sum();
        if refused > 0.0 {
            self.refused.offer(refused, ranked(refused));
        }
        let failed: f64 = m.exporters.iter().map(|e| e.bad_per_second).sum();
        if failed > 0.0 {
            self.failed.offer(failed, ranked(failed));
        }
        for e in &m.exporters {
            let troubled = || Troubled {
                instance_uid: uid_text(&rec.instance_uid),
                service_name: service_name(),
                exporter: ExporterView::of(e),
            };
            if e.failing_since_unix_ms != 0 {
                self.out.failing_exporters_total += 1;
                // Longest failing first: the earliest start ranks highest.
                let age = self.now.saturating_sub(e.failing_since_unix_ms) as f64;
                self.failing.offer(age, troubled);
            }
            if let Some(fill) = queue_fill(e).filter(|f| *f >= QUEUE_NEAR_FULL) {
                self.out.queues_near_full_total += 1;
                self.full.offer(fill, troubled);
            }
        }
    }

    fn finish(self) -> FleetMetrics {
        let items = |t: Top<_>| t.finish().into_iter().map(|(_, r)| r).collect();
        FleetMetrics {
            top_cpu: items(self.cpu),
            top_memory: items(self.memory),
            top_refused: items(self.refused),
            top_failed: items(self.failed),
            failing_exporters: self.failing.finish().into_iter().map(|(_, t)| t).collect(),
            queues_near_full: self.full.finish().into_iter().map(|(_, t)| t).collect(),
            ..self.out
        }
    }
}

/// One agent's values for the per-agent Prometheus series (`/metrics/agents`).
#[derive(Debug, Clone, PartialEq)]
pub struct AgentSeries {
    pub instance_uid: String,
    pub service_name: String,
    pub connected: bool,
    pub healthy: Option<bool>,
    /// From its own metrics, while fresh.
    pub cpu_cores: Option<f64>,
    pub memory_bytes: Option<f64>,
    /// Per exporter: failed items per second, queue fill (0 to 1) when known.
    pub exporters: Vec<(String, f64, Option<f64>)>,
}

impl Ops {
    /// Every agent's values for per-agent series (one pass over the records).
    pub async fn agent_series(&self, _caller: &Caller) -> Result<Vec<AgentSeries>> {
        let now = now_unix_ms();
        let mut out = Vec::new();
        self.visit_fleet(&mut |rec| {
            let fresh = rec
                .own_metrics
                .as_ref()
                .filter(|m| now.saturating_sub(m.last_unix_ms) <= FRESH_MS);
            out.push(AgentSeries {
                instance_uid: uid_text(&rec.instance_uid),
                service_name: RecordAttributes(rec)
                    .attribute("service.name")
                    .map(|s| s.into_owned())
                    .unwrap_or_default(),
                connected: status_name(rec) == "connected",
                healthy: healthy(rec),
                cpu_cores: fresh.and_then(|m| m.cpu_cores),
                memory_bytes: fresh.and_then(|m| m.memory_bytes),
                exporters: fresh
                    .map(|m| {
                        m.exporters
                            .iter()
                            .map(|e| (e.name.clone(), e.bad_per_second, queue_fill(e)))
                            .collect()
                    })
                    .unwrap_or_default(),
            });
        })
        .await?;
        Ok(out)
    }

    /// The fleet by its agents' own metrics.
    pub async fn fleet_metrics(
        &self,
        _caller: &Caller,
        q: &FleetMetricsQuery,
    ) -> Result<FleetMetrics> {
        let now = now_unix_ms();
        let mut b = Builder::new(q.top, now);
        self.visit_fleet(&mut |rec| {
            if !q.selector.is_empty() && !q.selector.matches(&RecordAttributes(rec)) {
                return;
            }
            b.out.agents_selected += 1;
            if let Some(m) = rec
                .own_metrics
                .as_ref()
                .filter(|m| now.saturating_sub(m.last_unix_ms) <= FRESH_MS)
            {
                b.out.agents_reporting += 1;
                b.add(rec, m);
            }
        })
        .await?;
        Ok(b.finish())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_keeps_the_highest() {
        let mut t = Top::new(3);
        for v in [5.0, 1.0, 9.0, 3.0, 7.0, 2.0, 8.0, 0.5, 6.0] {
            t.offer(v, || v as u32);
        }
        let kept: Vec<u32> = t.finish().into_iter().map(|(_, v)| v).collect();
        assert_eq!(kept, [9, 8, 7]);
    }

    #[test]
    fn parameters_are_checked() {
        assert_eq!(FleetMetricsQuery::parse([("top", "5")]).unwrap().top, 5);
        for bad in [("top", "0"), ("top", "101"), ("top", "x"), ("sort", "cpu")] {
            assert!(FleetMetricsQuery::parse([bad]).is_err(), "{bad:?}");
        }
    }
}
