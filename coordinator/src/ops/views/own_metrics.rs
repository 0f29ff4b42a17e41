//! Agents' own metrics as the API shows them: one agent's rollup (in its detail), and the fleet's
//! top agents and troubled exporters.

use super::time::rfc3339;
use crate::fleet::own_metrics::queue_fill;
use flotilla_proto::bus::{AgentMetrics, ComponentMetrics, MinuteSeries};
use serde::Serialize;

/// An agent's own metrics: last values, rates over the last interval between its exports, and
/// one point per minute for the last hour (oldest first).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OwnMetricsView {
    /// The first and the latest export kept.
    pub since: String,
    pub last: String,
    /// CPU used, in cores (1.0: one core busy), over the last interval.
    pub cpu_cores: Option<f64>,
    pub memory_bytes: Option<f64>,
    pub receivers: Vec<ReceiverView>,
    pub exporters: Vec<ExporterView>,
    pub minutes: Vec<MinuteView>,
    /// Data points received and not kept (other metrics, past the bounds) since `since`.
    pub dropped_points: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ReceiverView {
    pub name: String,
    pub accepted_total: f64,
    pub refused_total: f64,
    pub accepted_per_second: f64,
    pub refused_per_second: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ExporterView {
    pub name: String,
    pub sent_total: f64,
    pub failed_total: f64,
    pub sent_per_second: f64,
    pub failed_per_second: f64,
    pub queue_size: Option<f64>,
    pub queue_capacity: Option<f64>,
    /// size / capacity, 0 to 1.
    pub queue_fill: Option<f64>,
    /// Since when it fails to send (absent while it does not): from an export with failures until
    /// one that sent without failing, or a minute without failures.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failing_since: Option<String>,
    /// Since when its queue is 90% full or more.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub queue_full_since: Option<String>,
}

/// One minute: CPU in cores on average, the highest memory, items over all receivers and
/// exporters, and the fullest exporter queue.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MinuteView {
    pub at: String,
    pub cpu_cores: f64,
    pub memory_bytes: f64,
    pub accepted: f64,
    pub refused: f64,
    pub sent: f64,
    pub failed: f64,
    pub queue_fill: f64,
}

fn since(ms: u64) -> Option<String> {
    (ms != 0).then(|| rfc3339(ms))
}

impl OwnMetricsView {
    pub fn of(m: &AgentMetrics) -> Self {
        Self {
            since: rfc3339(m.since_unix_ms),
            last: rfc3339(m.last_unix_ms),
            cpu_cores: m.cpu_cores,
            memory_bytes: m.memory_bytes,
            receivers: m
                .receivers
                .iter()
                .map(|r| ReceiverView {
                    name: r.name.clone(),
                    accepted_total: r.ok_total,
                    refused_total: r.bad_total,
                    accepted_per_second: r.ok_per_second,
                    refused_per_second: r.bad_per_second,
                })
                .collect(),
            exporters: m.exporters.iter().map(ExporterView::of).collect(),
            minutes: m.minutes.as_ref().map(minutes).unwrap_or_default(),
            dropped_points: m.dropped_points,
        }
    }
}

/// The points of a minute series (as many as its shortest column has).
fn minutes(s: &MinuteSeries) -> Vec<MinuteView> {
    let at = |i: usize, c: &[f32]| c.get(i).copied().map(f64::from);
    s.minute
        .iter()
        .enumerate()
        .map_while(|(i, minute)| {
            Some(MinuteView {
                at: rfc3339(minute.saturating_mul(60_000)),
                cpu_cores: at(i, &s.cpu_seconds)? / 60.0,
                memory_bytes: at(i, &s.memory_bytes)?,
                accepted: at(i, &s.accepted)?,
                refused: at(i, &s.refused)?,
                sent: at(i, &s.sent)?,
                failed: at(i, &s.failed)?,
                queue_fill: at(i, &s.queue_fill)?,
            })
        })
        .collect()
}

impl ExporterView {
    pub fn of(e: &ComponentMetrics) -> Self {
        Self {
            name: e.name.clone(),
            sent_total: e.ok_total,
            failed_total: e.bad_total,
            sent_per_second: e.ok_per_second,
            failed_per_second: e.bad_per_second,
            queue_size: e.queue_size,
            queue_capacity: e.queue_capacity,
            queue_fill: queue_fill(e),
            failing_since: since(e.failing_since_unix_ms),
            queue_full_since: since(e.queue_full_since_unix_ms),
        }
    }
}

/// The fleet's agents by their own metrics, among those a selector chose.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct FleetMetrics {
    /// Agents the selector chose, and those of them whose last export is at most
    /// `fresh_seconds` old (only those are ranked and listed).
    pub agents_selected: u64,
    pub agents_reporting: u64,
    pub fresh_seconds: u64,
    /// Highest first, `top` at most each.
    pub top_cpu: Vec<Ranked>,
    pub top_memory: Vec<Ranked>,
    /// Items refused by receivers, and failed by exporters, per second over the last interval.
    pub top_refused: Vec<Ranked>,
    pub top_failed: Vec<Ranked>,
    /// Exporters failing, longest first (`top` at most; the total beside).
    pub failing_exporters: Vec<Troubled>,
    pub failing_exporters_total: u64,
    /// Exporters whose queue is 90% full or more, fullest first.
    pub queues_near_full: Vec<Troubled>,
    pub queues_near_full_total: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Ranked {
    pub instance_uid: String,
    pub service_name: Option<String>,
    pub value: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Troubled {
    pub instance_uid: String,
    pub service_name: Option<String>,
    #[serde(flatten)]
    pub exporter: ExporterView,
}
