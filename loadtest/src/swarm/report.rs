//! The result of a run: JSON (report.json), a human summary, and the timeline plot.

use super::config::{Scenario, Transport, name};
use super::own_metrics::OwnMetricsReport;
use super::shared::Shared;
use super::stats::{Percentiles, Sample, unix_ms};
use crate::realistic::Shape;
use anyhow::Context;
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::Ordering;
use std::time::Duration;

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub scenario: Scenario,
    pub transport: Transport,
    pub urls: Vec<String>,
    pub tls: bool,
    pub agents: usize,
    pub run_id: String,
    /// When the run started, in ms since the Unix epoch.
    pub started_unix_ms: u64,
    pub duration_s: f64,
    /// What each agent reports in full (`--attributes`, `--components`,
    /// `--effective-config-bytes`; zeros: the minimum).
    pub shape: Shape,
    /// Encoded sizes of an agent's first full report and of a heartbeat.
    pub message_bytes: MessageBytes,
    pub connect: Connect,
    pub messages: u64,
    pub messages_per_s: f64,
    /// Status report -> reply, over the whole run and once every agent was connected.
    pub latency: Latencies,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub config_push: Option<ConfigPush>,
    /// Every config the agents reported APPLIED during the run (whoever pushed it), first
    /// applied first.
    pub applied_configs: Vec<AppliedConfig>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub churn: Option<Churn>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recovery: Option<Recovery>,
    /// The agents' own-metrics exports (`--own-metrics`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub own_metrics: Option<OwnMetricsReport>,
    pub errors_total: u64,
    pub errors: BTreeMap<String, u64>,
    /// Why connections failed (the first few distinct reasons).
    pub error_reasons: Vec<String>,
    /// Agents that took a client certificate the server offered and reconnected with it.
    pub certificates_taken: u64,
    pub processes: Vec<Process>,
    /// Agents connected when the processes were read.
    pub memory_connections: u64,
    /// Growth of the watched processes per connection held: resident memory, and CPU time spent
    /// connecting and serving the first reports.
    pub memory_bytes_per_connection: Option<f64>,
    pub cpu_ms_per_connection: Option<f64>,
    pub timeline: Vec<Sample>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Latencies {
    pub all: Percentiles,
    pub steady: Percentiles,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Connect {
    /// Seconds from the start until every agent was connected (None: never within the run).
    pub all_connected_s: Option<f64>,
    /// Agents connected per second over that time.
    pub per_s: Option<f64>,
    /// Connections made (reconnects included).
    pub connections: u64,
    /// Time to connect (TCP, TLS, WebSocket upgrade; HTTP: the first answered poll).
    pub time: Percentiles,
}

impl Connect {
    pub(super) fn ramp(all_connected: Option<Duration>, agents: u64) -> Self {
        Self {
            all_connected_s: all_connected.map(|d| d.as_secs_f64()),
            per_s: all_connected.map(|d| agents as f64 / d.as_secs_f64().max(1e-3)),
            ..Self::default()
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct ConfigPush {
    pub config: String,
    /// Agents connected when the config was pushed.
    pub agents: u64,
    pub applied: u64,
    pub failed: u64,
    /// Agents that reported neither within the run.
    pub missing: u64,
    /// Seconds from the push until every agent had reported APPLIED or FAILED.
    pub all_reported_s: Option<f64>,
    /// Push -> APPLIED per agent.
    pub applied_after: Percentiles,
}

/// A config the agents of a run applied: how many, and when they reported it (ms since the
/// Unix epoch, so that several swarms' reports line up with each other and with the push).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AppliedConfig {
    /// Hex config hash, as the API shows it.
    pub hash: String,
    pub agents: u64,
    pub first_unix_ms: u64,
    pub p50_unix_ms: u64,
    pub p99_unix_ms: u64,
    pub last_unix_ms: u64,
}

impl AppliedConfig {
    /// From the moments agents reported `hash` APPLIED (None if none did).
    pub fn of(hash: &[u8], mut times: Vec<u64>) -> Option<Self> {
        times.sort_unstable();
        let (&first, &last) = (times.first()?, times.last()?);
        // Nearest rank: the smallest time at least a fraction q of the reports came by.
        let at = |q: f64| {
            let rank = (q * times.len() as f64).ceil() as usize;
            times[rank.clamp(1, times.len()) - 1]
        };
        Some(Self {
            hash: hash.iter().map(|b| format!("{b:02x}")).collect(),
            agents: times.len() as u64,
            first_unix_ms: first,
            p50_unix_ms: at(0.50),
            p99_unix_ms: at(0.99),
            last_unix_ms: last,
        })
    }

    /// Every config of `applied` (hash -> report times), first applied first.
    pub fn all(applied: std::collections::BTreeMap<Vec<u8>, Vec<u64>>) -> Vec<Self> {
        let mut out: Vec<Self> = applied
            .into_iter()
            .filter_map(|(hash, times)| Self::of(&hash, times))
            .collect();
        out.sort_by_key(|c| c.first_unix_ms);
        out
    }
}

#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct MessageBytes {
    pub full_report: usize,
    pub heartbeat: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct Churn {
    pub left: u64,
    pub joined: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Recovery {
    pub killed_pid: u32,
    pub connected_before: u64,
    /// Sessions lost after the kill.
    pub lost: u64,
    /// Of them, agents answered again on a new connection.
    pub recovered: u64,
    /// Seconds from the kill until every agent was connected again.
    pub all_back_s: Option<f64>,
    /// ... and every agent that lost its session had been answered on the new one.
    pub converged_s: Option<f64>,
}

/// A watched process (a gateway): resident memory and CPU time before the agents connect and
/// once they are all connected and answered.
#[derive(Debug, Clone, Serialize)]
pub struct Process {
    pub pid: u32,
    pub rss_before_kb: u64,
    pub rss_connected_kb: u64,
    pub cpu_before_ms: u64,
    pub cpu_connected_ms: u64,
}

/// The processes before any agent connects.
pub(super) fn processes_before(pids: &[u32]) -> anyhow::Result<Vec<Process>> {
    pids.iter()
        .map(|&pid| {
            Ok(Process {
                pid,
                rss_before_kb: rss_kb(pid)?,
                rss_connected_kb: 0,
                cpu_before_ms: cpu_ms(pid)?,
                cpu_connected_ms: 0,
            })
        })
        .collect()
}

/// ... and with the agents connected.
pub(super) fn processes_after(mut before: Vec<Process>) -> anyhow::Result<Vec<Process>> {
    for p in &mut before {
        p.rss_connected_kb = rss_kb(p.pid)?;
        p.cpu_connected_ms = cpu_ms(p.pid)?;
    }
    Ok(before)
}

fn proc_file(pid: u32, name: &str) -> anyhow::Result<String> {
    let path = format!("/proc/{pid}/{name}");
    std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read {path}: is process {pid} running?"))
}

/// VmRSS of a process.
fn rss_kb(pid: u32) -> anyhow::Result<u64> {
    proc_file(pid, "status")?
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .with_context(|| format!("no VmRSS in /proc/{pid}/status"))
}

/// User + system CPU time of a process (all threads), from /proc/PID/stat in clock ticks of
/// 10 ms (USER_HZ is 100 on Linux).
fn cpu_ms(pid: u32) -> anyhow::Result<u64> {
    let stat = proc_file(pid, "stat")?;
    // Fields after the command name (which may contain spaces) start at field 3.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let tick = |i: usize| fields.get(i).and_then(|v| v.parse::<u64>().ok());
    match (tick(11), tick(12)) {
        (Some(utime), Some(stime)) => Ok((utime + stime) * 10),
        _ => anyhow::bail!("unexpected /proc/{pid}/stat: {stat}"),
    }
}

impl Report {
    pub(super) fn new(shared: &Shared) -> Self {
        let cfg = &shared.cfg;
        Self {
            scenario: cfg.scenario,
            transport: cfg.transport,
            urls: cfg.urls.clone(),
            tls: cfg.connect.tls.is_some(),
            agents: cfg.agents,
            run_id: shared.run_id.clone(),
            started_unix_ms: unix_ms()
                .saturating_sub(shared.stats.started.elapsed().as_millis() as u64),
            duration_s: 0.0,
            shape: cfg.shape,
            message_bytes: MessageBytes::of(&mut shared.new_agent(0, 0)),
            connect: Connect::default(),
            messages: 0,
            messages_per_s: 0.0,
            latency: Latencies::default(),
            config_push: None,
            applied_configs: Vec::new(),
            churn: None,
            recovery: None,
            own_metrics: None,
            errors_total: 0,
            errors: BTreeMap::new(),
            error_reasons: Vec::new(),
            certificates_taken: 0,
            processes: Vec::new(),
            memory_connections: 0,
            memory_bytes_per_connection: None,
            cpu_ms_per_connection: None,
            timeline: Vec::new(),
        }
    }

    /// Fills in what is known at the end of the run.
    pub(super) fn finish(&mut self, shared: &Shared) {
        let st = &shared.stats;
        self.duration_s = st.elapsed_s();
        // Connections over the whole run (reconnects and churn included).
        self.connect.connections = st.connects.load(Ordering::Relaxed);
        self.connect.time = st.handshakes();
        self.messages = st.messages.load(Ordering::Relaxed);
        self.messages_per_s = self.messages as f64 / self.duration_s.max(1e-3);
        let (all, steady) = st.latency();
        self.latency = Latencies { all, steady };
        if shared.cfg.churn_per_s.is_some() {
            self.churn = Some(Churn {
                left: st.left.load(Ordering::Relaxed),
                joined: st.joined.load(Ordering::Relaxed),
            });
        }
        self.own_metrics = shared
            .own_metrics
            .as_ref()
            .map(|o| o.report(self.duration_s));
        (self.errors_total, self.errors) = st.errors();
        self.error_reasons = st.reasons();
        self.certificates_taken = st.rotated.load(Ordering::Relaxed);
        self.applied_configs = AppliedConfig::all(st.applied_at());
        self.timeline = st.timeline();
    }

    /// The watched processes as read with `connected` agents connected.
    pub(super) fn set_processes(&mut self, processes: Vec<Process>, connected: u64) {
        let per = |f: fn(&Process) -> i64| {
            (!processes.is_empty() && connected > 0)
                .then(|| processes.iter().map(f).sum::<i64>() as f64 / connected as f64)
        };
        self.memory_bytes_per_connection =
            per(|p| (p.rss_connected_kb as i64 - p.rss_before_kb as i64) * 1024);
        self.cpu_ms_per_connection = per(|p| p.cpu_connected_ms as i64 - p.cpu_before_ms as i64);
        self.memory_connections = connected;
        self.processes = processes;
    }
}

impl MessageBytes {
    fn of(agent: &mut crate::sim::SimAgent) -> Self {
        use prost::Message;
        Self {
            full_report: agent.full_report().encoded_len(),
            heartbeat: agent.heartbeat().encoded_len(),
        }
    }
}

fn opt_s(v: Option<f64>) -> String {
    v.map_or("never".into(), |v| format!("{v:.2} s"))
}

fn pct(p: &Percentiles) -> String {
    format!(
        "p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms ({} samples)",
        p.p50_ms, p.p99_ms, p.max_ms, p.count
    )
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{} with {} {}{} agents against {} for {:.1} s (run {})",
            name(self.scenario),
            self.agents,
            name(self.transport),
            if self.tls { " (TLS)" } else { "" },
            self.urls.join(", "),
            self.duration_s,
            self.run_id
        )?;
        writeln!(
            f,
            "  connect: all connected after {}{}; {} connections, time to connect {}",
            opt_s(self.connect.all_connected_s),
            self.connect
                .per_s
                .map_or(String::new(), |r| format!(" ({r:.0} agents/s)")),
            self.connect.connections,
            pct(&self.connect.time)
        )?;
        if self.shape != Shape::default() {
            writeln!(
                f,
                "  reports: {} attributes, {} health components, {} bytes of effective config; full report {} bytes, heartbeat {} bytes",
                self.shape.attributes,
                self.shape.components,
                self.shape.effective_config_bytes,
                self.message_bytes.full_report,
                self.message_bytes.heartbeat
            )?;
        }
        writeln!(
            f,
            "  messages: {} ({:.0}/s); reply latency {}",
            self.messages,
            self.messages_per_s,
            pct(&self.latency.all)
        )?;
        writeln!(
            f,
            "  steady-state reply latency: {}",
            pct(&self.latency.steady)
        )?;
        if let Some(p) = &self.config_push {
            writeln!(
                f,
                "  config push {}: {} agents, {} applied, {} failed, {} missing; all reported after {}; push -> APPLIED {}",
                p.config,
                p.agents,
                p.applied,
                p.failed,
                p.missing,
                opt_s(p.all_reported_s),
                pct(&p.applied_after)
            )?;
        }
        for c in &self.applied_configs {
            writeln!(
                f,
                "  applied config {}: {} agents, first at {} ms, p50 +{} ms, p99 +{} ms, last +{} ms",
                &c.hash[..c.hash.len().min(12)],
                c.agents,
                c.first_unix_ms,
                c.p50_unix_ms - c.first_unix_ms,
                c.p99_unix_ms - c.first_unix_ms,
                c.last_unix_ms - c.first_unix_ms
            )?;
        }
        if let Some(c) = &self.churn {
            writeln!(f, "  churn: {} left, {} joined", c.left, c.joined)?;
        }
        if let Some(r) = &self.recovery {
            writeln!(
                f,
                "  gateway loss (pid {}): {} of {} sessions lost, {} recovered; all back after {}, converged after {}",
                r.killed_pid,
                r.lost,
                r.connected_before,
                r.recovered,
                opt_s(r.all_back_s),
                opt_s(r.converged_s)
            )?;
        }
        for p in &self.processes {
            writeln!(
                f,
                "  pid {}: {} KiB before, {} KiB connected; {} ms CPU while connecting",
                p.pid,
                p.rss_before_kb,
                p.rss_connected_kb,
                p.cpu_connected_ms.saturating_sub(p.cpu_before_ms)
            )?;
        }
        if let (Some(b), Some(c)) = (self.memory_bytes_per_connection, self.cpu_ms_per_connection) {
            writeln!(
                f,
                "  per connection: {:.1} KiB resident, {c:.3} ms CPU (TLS handshake, upgrade, first report)",
                b / 1024.0
            )?;
        }
        if let Some(o) = &self.own_metrics {
            writeln!(
                f,
                "  own metrics every {:.1} s: {} exports ({:.0}/s, {:.0} bytes, {:.0} points each), {} ok, {} errors{}; latency {}",
                o.interval_s,
                o.exports,
                o.exports_per_s,
                o.bytes_per_export.unwrap_or(0.0),
                o.points_per_export.unwrap_or(0.0),
                o.ok,
                o.errors_total,
                o.errors
                    .iter()
                    .map(|(k, n)| format!(", {k} {n}"))
                    .collect::<String>(),
                pct(&o.latency)
            )?;
            for why in &o.error_reasons {
                writeln!(f, "    {why}")?;
            }
        }
        if self.certificates_taken > 0 {
            writeln!(
                f,
                "  certificates taken from the server: {}",
                self.certificates_taken
            )?;
        }
        write!(f, "  errors: {}", self.errors_total)?;
        for (kind, n) in &self.errors {
            write!(f, ", {kind} {n}")?;
        }
        for why in &self.error_reasons {
            write!(f, "\n    {why}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn applied_configs_count_each_hash_with_its_first_percentiles_and_last() {
        let mut applied = BTreeMap::new();
        // 100 agents applied config ab from t=1000 to t=1099 (given out of order) ...
        applied.insert(vec![0xab], (0..100).rev().map(|i| 1_000 + i).collect());
        // ... after one agent applied config 01 at t=500.
        applied.insert(vec![0x01, 0xff], vec![500]);
        applied.insert(vec![0x02], vec![]);
        let all = AppliedConfig::all(applied);
        assert_eq!(
            all,
            [
                AppliedConfig {
                    hash: "01ff".into(),
                    agents: 1,
                    first_unix_ms: 500,
                    p50_unix_ms: 500,
                    p99_unix_ms: 500,
                    last_unix_ms: 500,
                },
                AppliedConfig {
                    hash: "ab".into(),
                    agents: 100,
                    first_unix_ms: 1_000,
                    p50_unix_ms: 1_049,
                    p99_unix_ms: 1_098,
                    last_unix_ms: 1_099,
                },
            ]
        );
        let two = AppliedConfig::of(b"x", vec![7, 3]).unwrap();
        assert_eq!((two.p50_unix_ms, two.p99_unix_ms), (3, 7));
    }
}
