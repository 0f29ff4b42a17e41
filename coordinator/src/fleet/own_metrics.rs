//! Agents' own metrics as Flotilla keeps them: each sample a gateway summarised from an OTLP
//! export ([`OwnMetricsSample`], cumulative counters) is folded into the agent's rollup
//! ([`AgentMetrics`], kept in its record): last values, rates over the last interval, one point
//! per minute for the last hour, and since when an exporter fails or its queue is near full.
//! Pure and bounded: a rollup never holds more than [`MAX_MINUTES`] points and the components a
//! sample may carry.

use flotilla_proto::bus::{
    AgentMetrics, ComponentMetrics, ComponentSample, MinuteSeries, OwnMetricsSample,
};

/// Minutes of history kept.
pub const MAX_MINUTES: usize = 60;
/// The longest interval between samples whose counts go to the minute of the later one.
pub const MAX_SPREAD_SECS: f64 = 90.0;
/// Own metrics older than this are not ranked or alerted on (the agent stopped sending them).
pub const FRESH_MS: u64 = 5 * 60 * 1000;
/// An exporter without failures for this long is no longer failing (even if it sent nothing).
pub const FAILING_PAUSE_MS: u64 = 60_000;
/// A queue this full (size / capacity) is near full.
pub const QUEUE_NEAR_FULL: f64 = 0.9;

/// The increase of a cumulative counter from `prev` to `cur`: a counter that went down restarted
/// (its process did), and counted `cur` since.
fn increase(prev: f64, cur: f64) -> f64 {
    if cur >= prev { cur - prev } else { cur }
}

/// How full a queue is (0 to 1), when both its size and capacity are known.
pub fn queue_fill(c: &ComponentMetrics) -> Option<f64> {
    match (c.queue_size, c.queue_capacity) {
        (Some(size), Some(cap)) if cap > 0.0 => Some((size / cap).clamp(0.0, 1.0)),
        _ => None,
    }
}

/// What one component's sample adds: (ok, bad) items since the previous sample.
fn fold_component(
    kept: &mut Vec<ComponentMetrics>,
    s: &ComponentSample,
    secs: Option<f64>,
    at: u64,
) -> (f64, f64) {
    let i = match kept.iter().position(|c| c.name == s.name) {
        Some(i) => i,
        None => {
            kept.push(ComponentMetrics {
                name: s.name.clone(),
                ok_total: s.ok_total,
                bad_total: s.bad_total,
                ..Default::default()
            });
            kept.len() - 1
        }
    };
    let c = &mut kept[i];
    let (ok, bad) = match secs {
        Some(_) => (
            increase(c.ok_total, s.ok_total),
            increase(c.bad_total, s.bad_total),
        ),
        None => (0.0, 0.0),
    };
    if let Some(secs) = secs.filter(|s| *s > 0.0) {
        c.ok_per_second = ok / secs;
        c.bad_per_second = bad / secs;
    }
    c.ok_total = s.ok_total;
    c.bad_total = s.bad_total;
    c.queue_size = s.queue_size;
    c.queue_capacity = s.queue_capacity;
    // Failing from a sample with failures until one that sent without failing, or a minute
    // without failures: exports that come closer together than the agent counts are no pause.
    if bad > 0.0 {
        c.last_failure_unix_ms = at;
        if c.failing_since_unix_ms == 0 {
            c.failing_since_unix_ms = at;
        }
    } else if ok > 0.0 || at.saturating_sub(c.last_failure_unix_ms) >= FAILING_PAUSE_MS {
        c.failing_since_unix_ms = 0;
    }
    let near_full = queue_fill(c).is_some_and(|f| f >= QUEUE_NEAR_FULL);
    c.queue_full_since_unix_ms = match (near_full, c.queue_full_since_unix_ms) {
        (true, 0) => at,
        (true, since) => since,
        (false, _) => 0,
    };
    (ok, bad)
}

/// Folds `s` into the agent's rollup (creating it). False, and nothing changes, when the sample is
/// older than the last one kept (exports that crossed on their way).
pub fn fold(rollup: &mut Option<Box<AgentMetrics>>, s: &OwnMetricsSample) -> bool {
    let m = rollup.get_or_insert_with(|| {
        Box::new(AgentMetrics {
            since_unix_ms: s.at_unix_ms,
            ..Default::default()
        })
    });
    let first = m.last_unix_ms == 0;
    if !first && s.at_unix_ms < m.last_unix_ms {
        return false;
    }
    // Seconds since the previous sample; None for the first (its counters have no base).
    let secs = (!first).then(|| (s.at_unix_ms - m.last_unix_ms) as f64 / 1000.0);
    let mut minute = Minute {
        minute: s.at_unix_ms / 60_000,
        ..Default::default()
    };
    if let Some(cpu) = s.cpu_seconds {
        if let (Some(prev), Some(secs)) = (m.cpu_seconds, secs) {
            let used = increase(prev, cpu);
            minute.cpu_seconds = used;
            if secs > 0.0 {
                m.cpu_cores = Some(used / secs);
            }
        }
        m.cpu_seconds = Some(cpu);
    }
    m.memory_bytes = s.memory_bytes;
    minute.memory_bytes = s.memory_bytes.unwrap_or(0.0);
    for r in &s.receivers {
        let (ok, bad) = fold_component(&mut m.receivers, r, secs, s.at_unix_ms);
        minute.accepted += ok;
        minute.refused += bad;
    }
    for e in &s.exporters {
        let (ok, bad) = fold_component(&mut m.exporters, e, secs, s.at_unix_ms);
        minute.sent += ok;
        minute.failed += bad;
    }
    // Components the agent no longer reports are not kept (a config change removed them).
    for (kept, sent) in [
        (&mut m.receivers, &s.receivers),
        (&mut m.exporters, &s.exporters),
    ] {
        kept.retain(|c| sent.iter().any(|s| s.name == c.name));
    }
    minute.queue_fill = m
        .exporters
        .iter()
        .filter_map(queue_fill)
        .fold(0.0, f64::max);
    // What an interval longer than [`MAX_SPREAD_SECS`] counted (a gap: no owner took the samples,
    // or the agent exports that seldom) is not put in one minute: those minutes show no counts.
    if secs.is_some_and(|s| s > MAX_SPREAD_SECS) {
        minute.cpu_seconds = 0.0;
        minute.accepted = 0.0;
        minute.refused = 0.0;
        minute.sent = 0.0;
        minute.failed = 0.0;
    }
    add_minute(m.minutes.get_or_insert_with(Default::default), &minute);
    m.last_unix_ms = s.at_unix_ms;
    m.dropped_points += s.dropped_points;
    true
}

/// A sample's share of its minute.
#[derive(Debug, Default)]
struct Minute {
    minute: u64,
    cpu_seconds: f64,
    memory_bytes: f64,
    accepted: f64,
    refused: f64,
    sent: f64,
    failed: f64,
    queue_fill: f64,
}

/// The value columns of a minute series, each with whether a minute keeps its highest value
/// (memory, queue fill) rather than the sum of its samples' shares.
fn columns(s: &mut MinuteSeries) -> [(&mut Vec<f32>, bool); 7] {
    [
        (&mut s.cpu_seconds, false),
        (&mut s.memory_bytes, true),
        (&mut s.accepted, false),
        (&mut s.refused, false),
        (&mut s.sent, false),
        (&mut s.failed, false),
        (&mut s.queue_fill, true),
    ]
}

/// Adds a sample's share to its minute's point and forgets points older than an hour.
fn add_minute(s: &mut MinuteSeries, p: &Minute) {
    let values = [
        p.cpu_seconds,
        p.memory_bytes,
        p.accepted,
        p.refused,
        p.sent,
        p.failed,
        p.queue_fill,
    ]
    .map(|v| v as f32);
    let n = s.minute.len();
    if columns(s).iter().any(|(c, _)| c.len() != n) {
        // Never written so; were it read so, start again rather than misalign the minutes.
        *s = MinuteSeries::default();
    }
    let same_minute = s.minute.last() == Some(&p.minute);
    if !same_minute {
        s.minute.push(p.minute);
    }
    for ((column, highest), v) in columns(s).into_iter().zip(values) {
        match column.last_mut() {
            Some(last) if same_minute && highest => *last = last.max(v),
            Some(last) if same_minute => *last += v,
            _ => column.push(v),
        }
    }
    let oldest = p.minute.saturating_sub(MAX_MINUTES as u64 - 1);
    let stale = s.minute.iter().take_while(|m| **m < oldest).count();
    s.minute.drain(..stale);
    for (column, _) in columns(s) {
        column.drain(..stale);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(at: u64, cpu: f64, sent: f64, failed: f64, queue: f64) -> OwnMetricsSample {
        OwnMetricsSample {
            instance_uid: vec![1; 16],
            at_unix_ms: at,
            cpu_seconds: Some(cpu),
            memory_bytes: Some(1e8),
            receivers: vec![ComponentSample {
                name: "otlp".into(),
                ok_total: sent,
                bad_total: 0.0,
                ..Default::default()
            }],
            exporters: vec![ComponentSample {
                name: "otlp".into(),
                ok_total: sent,
                bad_total: failed,
                queue_size: Some(queue),
                queue_capacity: Some(1000.0),
            }],
            dropped_points: 2,
            origin: None,
        }
    }

    const T0: u64 = 1_800_000_000_000;

    #[test]
    fn rates_come_from_the_increase_between_samples() {
        let mut m = None;
        assert!(fold(&mut m, &sample(T0, 10.0, 1000.0, 0.0, 0.0)));
        let r = m.as_ref().unwrap();
        assert_eq!((r.cpu_cores, r.exporters[0].ok_per_second), (None, 0.0));
        assert!(fold(&mut m, &sample(T0 + 10_000, 15.0, 3000.0, 0.0, 0.0)));
        let r = m.as_ref().unwrap();
        assert_eq!(r.cpu_cores, Some(0.5));
        assert_eq!(r.exporters[0].ok_per_second, 200.0);
        assert_eq!(r.receivers[0].ok_per_second, 200.0);
        assert_eq!(r.dropped_points, 4);
        assert_eq!((r.since_unix_ms, r.last_unix_ms), (T0, T0 + 10_000));
        // The process restarted: its counters start again from zero.
        assert!(fold(&mut m, &sample(T0 + 20_000, 1.0, 500.0, 0.0, 0.0)));
        let r = m.as_ref().unwrap();
        assert_eq!(r.exporters[0].ok_per_second, 50.0);
        assert_eq!(r.cpu_cores, Some(0.1));
        // An older sample that arrives late changes nothing.
        let before = m.clone();
        assert!(!fold(&mut m, &sample(T0 + 15_000, 99.0, 9e9, 0.0, 0.0)));
        assert_eq!(m, before);
    }

    #[test]
    fn failing_and_full_since_hold_while_the_condition_does() {
        let mut m = None;
        fold(&mut m, &sample(T0, 1.0, 0.0, 0.0, 100.0));
        fold(&mut m, &sample(T0 + 10_000, 1.0, 0.0, 5.0, 950.0));
        fold(&mut m, &sample(T0 + 20_000, 1.0, 0.0, 9.0, 990.0));
        let r = m.as_ref().unwrap();
        assert_eq!(r.exporters[0].failing_since_unix_ms, T0 + 10_000);
        assert_eq!(r.exporters[0].queue_full_since_unix_ms, T0 + 10_000);
        // An interval without failures and without sends is no pause (exports can come closer
        // together than the agent counts)...
        fold(&mut m, &sample(T0 + 30_000, 1.0, 0.0, 9.0, 990.0));
        assert_eq!(
            m.as_ref().unwrap().exporters[0].failing_since_unix_ms,
            T0 + 10_000
        );
        // ...one that sent without failing is, and a drained queue ends the other.
        fold(&mut m, &sample(T0 + 40_000, 1.0, 10.0, 9.0, 10.0));
        let r = m.as_ref().unwrap();
        assert_eq!(r.exporters[0].failing_since_unix_ms, 0);
        assert_eq!(r.exporters[0].queue_full_since_unix_ms, 0);
        // A minute without failures ends it too.
        fold(&mut m, &sample(T0 + 50_000, 1.0, 10.0, 12.0, 10.0));
        assert_eq!(
            m.as_ref().unwrap().exporters[0].failing_since_unix_ms,
            T0 + 50_000
        );
        fold(&mut m, &sample(T0 + 110_000, 1.0, 10.0, 12.0, 10.0));
        assert_eq!(m.as_ref().unwrap().exporters[0].failing_since_unix_ms, 0);
    }

    #[test]
    fn one_point_per_minute_for_an_hour() {
        let mut m = None;
        for i in 0..200u64 {
            // Every 30 s: two samples a minute, 6 items each interval.
            fold(
                &mut m,
                &sample(T0 + i * 30_000, i as f64, (i * 6) as f64, 0.0, 0.0),
            );
        }
        let r = m.unwrap().minutes.unwrap();
        assert_eq!(r.minute.len(), MAX_MINUTES);
        assert!(
            [&r.sent, &r.cpu_seconds, &r.queue_fill]
                .iter()
                .all(|c| c.len() == MAX_MINUTES)
        );
        assert_eq!(r.minute.last(), Some(&((T0 + 199 * 30_000) / 60_000)));
        assert!(r.minute.windows(2).all(|w| w[1] == w[0] + 1));
        // A full minute in the middle holds two intervals' worth.
        assert_eq!(r.sent[30], 12.0);
        assert_eq!(r.cpu_seconds[30], 2.0);
    }

    #[test]
    fn a_gap_is_not_counted_in_one_minute() {
        let mut m = None;
        fold(&mut m, &sample(T0, 10.0, 100.0, 0.0, 0.0));
        // Five minutes later: the rates cover the interval, the minute holds no counts.
        fold(&mut m, &sample(T0 + 300_000, 160.0, 3100.0, 0.0, 0.0));
        let r = m.unwrap();
        assert_eq!(r.cpu_cores, Some(0.5));
        assert_eq!(r.exporters[0].ok_per_second, 10.0);
        let minutes = r.minutes.unwrap();
        assert_eq!(minutes.sent, [0.0, 0.0]);
        assert_eq!(minutes.cpu_seconds, [0.0, 0.0]);
        assert_eq!(minutes.memory_bytes, [1e8, 1e8]);
    }

    #[test]
    fn components_no_longer_reported_are_forgotten() {
        let mut m = None;
        fold(&mut m, &sample(T0, 1.0, 0.0, 0.0, 0.0));
        let mut s = sample(T0 + 10_000, 1.0, 0.0, 0.0, 0.0);
        s.exporters[0].name = "otlphttp".into();
        fold(&mut m, &s);
        let names: Vec<_> = m.unwrap().exporters.into_iter().map(|e| e.name).collect();
        assert_eq!(names, ["otlphttp"]);
    }
}
