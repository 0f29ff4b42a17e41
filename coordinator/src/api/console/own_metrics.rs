//! An agent's own metrics on its page: the last values, its receivers and exporters (a failing
//! exporter or a queue near full marked in words and colour), and charts of the last hour drawn
//! on the server; one line saying why when the agent sends none. Also how the console writes
//! these numbers (bytes, rates, counts), which the fleet page shares.

use super::chart::{Line, chart};
use super::render::badge;
use crate::fleet::own_metrics::QUEUE_NEAR_FULL;
use crate::ops::views::{ExporterView, MinuteView, OwnMetricsView};
use maud::{Markup, html};
use std::time::UNIX_EPOCH;

/// The "Own metrics" section of an agent's page. `declares`: the agent reports the
/// ReportsOwnMetrics capability.
pub fn section(m: Option<&OwnMetricsView>, declares: bool) -> Markup {
    html! {
        section #own-metrics {
            h2 { "Own metrics" }
            @match m {
                None => {
                    p.muted #no-own-metrics {
                        "This agent sends no own metrics: "
                        @if declares {
                            "it reports the ReportsOwnMetrics capability and was offered a destination, but none have arrived."
                        } @else {
                            "it needs the ReportsOwnMetrics capability to be offered a destination for them."
                        }
                    }
                }
                Some(m) => { (shown(m)) }
            }
        }
    }
}

fn shown(m: &OwnMetricsView) -> Markup {
    html! {
        p.hint {
            "From its own telemetry: last export " time { (m.last) } ", kept since " time { (m.since) } "."
            @if m.dropped_points > 0 { " " (count(m.dropped_points as f64)) " data points received and not kept." }
        }
        dl.facts {
            dt { "CPU" } dd data-cpu { (m.cpu_cores.map_or_else(|| "not reported".into(), |c| format!("{} cores", cores(c)))) }
            dt { "Memory" } dd data-memory { (m.memory_bytes.map_or_else(|| "not reported".into(), bytes)) }
        }
        (charts(&m.minutes))
        h3 { "Receivers" }
        @if m.receivers.is_empty() {
            p.muted { "None reported." }
        } @else {
            table.receivers {
                thead { tr {
                    th scope="col" { "Receiver" }
                    th.num scope="col" { "Accepted/s" } th.num scope="col" { "Refused/s" }
                    th.num scope="col" { "Accepted" } th.num scope="col" { "Refused" }
                } }
                tbody {
                    @for r in &m.receivers {
                        tr data-receiver=(r.name) class=[(r.refused_per_second > 0.0).then_some("warn")] {
                            td { code { (r.name) } }
                            td.num { (per_second(r.accepted_per_second)) }
                            td.num { (per_second(r.refused_per_second)) }
                            td.num { (count(r.accepted_total)) }
                            td.num { (count(r.refused_total)) }
                        }
                    }
                }
            }
        }
        h3 { "Exporters" }
        @if m.exporters.is_empty() {
            p.muted { "None reported." }
        } @else {
            table.exporters {
                thead { tr {
                    th scope="col" { "Exporter" } th scope="col" { "State" }
                    th.num scope="col" { "Sent/s" } th.num scope="col" { "Failed/s" }
                    th.num scope="col" { "Sent" } th.num scope="col" { "Failed" }
                    th.num scope="col" { "Queue" } th.num scope="col" { "Fill" }
                    th scope="col" { "Failing since" } th scope="col" { "Queue full since" }
                } }
                tbody { @for e in &m.exporters { (exporter_row(e)) } }
            }
        }
    }
}

/// Whether an exporter's queue is near full now.
pub fn near_full(e: &ExporterView) -> bool {
    e.queue_full_since.is_some() || e.queue_fill.is_some_and(|f| f >= QUEUE_NEAR_FULL)
}

fn exporter_row(e: &ExporterView) -> Markup {
    let failing = e.failing_since.is_some();
    let full = near_full(e);
    let class = if failing {
        Some("bad")
    } else if full {
        Some("warn")
    } else {
        None
    };
    let state = match (failing, full) {
        (true, true) => "failing near-full",
        (true, false) => "failing",
        (false, true) => "near-full",
        (false, false) => "ok",
    };
    html! {
        tr data-exporter=(e.name) data-state=(state) class=[class] {
            td { code { (e.name) } }
            td {
                @if failing { (badge("failing")) " " }
                @if full { (badge("near_full")) }
                @if !failing && !full { (badge("sending")) }
            }
            td.num { (per_second(e.sent_per_second)) }
            td.num { (per_second(e.failed_per_second)) }
            td.num { (count(e.sent_total)) }
            td.num { (count(e.failed_total)) }
            td.num { (queue(e)) }
            td.num { (e.queue_fill.map_or_else(String::new, percent)) }
            td { @if let Some(t) = &e.failing_since { time { (t) } } }
            td { @if let Some(t) = &e.queue_full_since { time { (t) } } }
        }
    }
}

/// "size / capacity" of an exporter's queue, as far as it is known.
pub fn queue(e: &ExporterView) -> String {
    match (e.queue_size, e.queue_capacity) {
        (Some(s), Some(c)) => format!("{} / {}", count(s), count(c)),
        (Some(s), None) => count(s),
        (None, Some(c)) => format!("? / {}", count(c)),
        (None, None) => String::new(),
    }
}

/// The minute a point is about (minutes since the epoch), from its time.
fn minute_of(at: &str) -> Option<u64> {
    let t = humantime::parse_rfc3339_weak(at).ok()?;
    Some(t.duration_since(UNIX_EPOCH).ok()?.as_secs() / 60)
}

fn charts(minutes: &[MinuteView]) -> Markup {
    // Minutes as the points say; should a time not read, by position (the hour ends at the last).
    let parsed: Option<Vec<u64>> = minutes.iter().map(|p| minute_of(&p.at)).collect();
    let xs = parsed.unwrap_or_else(|| (0..minutes.len() as u64).collect());
    let Some(&last) = xs.last() else {
        return html! { p.muted { "No minutes kept yet." } };
    };
    let last_at = minutes
        .last()
        .and_then(|p| p.at.get(11..16))
        .map(|hm| format!("{hm} UTC"))
        .unwrap_or_default();
    let c = Charts {
        xs: &xs,
        minutes,
        last,
        last_at: &last_at,
    };
    html! {
        div.charts {
            (c.draw("cpu", "CPU in cores, a minute's average", cores, 0.0, &[("cores", |p| p.cpu_cores)]))
            (c.draw("memory", "Memory, a minute's highest", bytes, 0.0, &[("memory", |p| p.memory_bytes)]))
            (c.draw("exported", "Items exported a minute", count, 0.0, &[("sent", |p| p.sent), ("failed", |p| p.failed)]))
            (c.draw("received", "Items received a minute", count, 0.0, &[("accepted", |p| p.accepted), ("refused", |p| p.refused)]))
            (c.draw("queue", "Fullest exporter queue", percent, 1.0, &[("fill", |p| p.queue_fill)]))
        }
    }
}

/// The minutes to chart, each at its minute `xs[i]`, the hour ending at `last`.
struct Charts<'a> {
    xs: &'a [u64],
    minutes: &'a [MinuteView],
    last: u64,
    last_at: &'a str,
}

type Pick = fn(&MinuteView) -> f64;

impl Charts<'_> {
    /// A chart of one line per (label, value of a minute), in the classes s0, s1; its top is
    /// the highest value or `at_least`.
    fn draw(
        &self,
        key: &str,
        title: &str,
        unit: fn(f64) -> String,
        at_least: f64,
        picks: &[(&str, Pick)],
    ) -> Markup {
        let lines: Vec<Line> = picks
            .iter()
            .zip(["s0", "s1"])
            .map(|((label, pick), class)| Line {
                label,
                class,
                points: self
                    .xs
                    .iter()
                    .zip(self.minutes)
                    .map(|(x, p)| (*x, pick(p)))
                    .collect(),
            })
            .collect();
        chart(key, title, unit, at_least, self.last, self.last_at, &lines)
    }
}

/// Cores with two decimals.
pub fn cores(v: f64) -> String {
    if v.is_finite() {
        format!("{v:.2}")
    } else {
        "?".into()
    }
}

/// Bytes in binary units (MiB, GiB).
pub fn bytes(v: f64) -> String {
    if !v.is_finite() {
        return "?".into();
    }
    let units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = v;
    let mut unit = 0;
    while v.abs() >= 1024.0 && unit < units.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{v:.0} B")
    } else {
        format!("{v:.1} {}", units[unit])
    }
}

/// Items per second: two decimals below 10, one below 1000, whole numbers above.
pub fn per_second(v: f64) -> String {
    if !v.is_finite() {
        "?".into()
    } else if v == 0.0 {
        "0".into()
    } else if v.abs() < 10.0 {
        format!("{v:.2}")
    } else if v.abs() < 1000.0 {
        format!("{v:.1}")
    } else {
        count(v)
    }
}

/// A whole number with thousands separated (1,234,567).
pub fn count(v: f64) -> String {
    if !v.is_finite() {
        return "?".into();
    }
    let digits = format!("{:.0}", v.abs());
    let mut out = String::with_capacity(digits.len() + digits.len() / 3 + 1);
    if v.round() < 0.0 {
        out.push('-');
    }
    for (i, d) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(d);
    }
    out
}

/// A fill (0 to 1) as a percentage.
pub fn percent(v: f64) -> String {
    if v.is_finite() {
        format!("{:.0}%", v * 100.0)
    } else {
        "?".into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_read_as_people_write_them() {
        assert_eq!(count(1_234_567.4), "1,234,567");
        assert_eq!(count(-1234.0), "-1,234");
        assert_eq!(count(999.0), "999");
        assert_eq!(count(f64::NAN), "?");
        assert_eq!(bytes(150_000_000.0), "143.1 MiB");
        assert_eq!(bytes(512.0), "512 B");
        assert_eq!(bytes(f64::INFINITY), "?");
        assert_eq!(per_second(0.5), "0.50");
        assert_eq!(per_second(12.34), "12.3");
        assert_eq!(per_second(12345.0), "12,345");
        assert_eq!(percent(0.95), "95%");
        assert_eq!(cores(0.5), "0.50");
    }

    fn exporter(name: &str, failing: bool, fill: Option<f64>) -> ExporterView {
        ExporterView {
            name: name.into(),
            sent_total: 10.0,
            failed_total: 5.0,
            sent_per_second: 1.0,
            failed_per_second: if failing { 2.0 } else { 0.0 },
            queue_size: fill.map(|f| f * 1000.0),
            queue_capacity: fill.map(|_| 1000.0),
            queue_fill: fill,
            failing_since: failing.then(|| "2025-01-01T00:00:00.000Z".into()),
            queue_full_since: None,
        }
    }

    fn view(minutes: Vec<MinuteView>, exporters: Vec<ExporterView>) -> OwnMetricsView {
        OwnMetricsView {
            since: "2025-01-01T00:00:00.000Z".into(),
            last: "2025-01-01T00:02:00.000Z".into(),
            cpu_cores: Some(0.25),
            memory_bytes: Some(1024.0 * 1024.0),
            receivers: vec![],
            exporters,
            minutes,
            dropped_points: 0,
        }
    }

    fn minute(at: &str, sent: f64) -> MinuteView {
        MinuteView {
            at: at.into(),
            cpu_cores: 0.25,
            memory_bytes: 1e6,
            accepted: 0.0,
            refused: 0.0,
            sent,
            failed: 1.0,
            queue_fill: 0.5,
        }
    }

    #[test]
    fn failing_and_full_exporters_are_marked_and_names_escaped() {
        let m = view(
            vec![],
            vec![
                exporter("<otlp>", true, None),
                exporter("kafka", false, Some(0.95)),
                exporter("debug", false, Some(0.1)),
            ],
        );
        let html = section(Some(&m), true).0;
        assert!(html.contains("data-exporter=\"&lt;otlp&gt;\""), "{html}");
        assert!(
            html.contains("data-state=\"failing\" class=\"bad\""),
            "{html}"
        );
        assert!(
            html.contains("data-state=\"near-full\" class=\"warn\""),
            "{html}"
        );
        assert!(html.contains("data-state=\"ok\">"), "{html}");
        assert!(html.contains("No minutes kept yet."), "{html}");
        assert!(
            html.contains("1.0 MiB") && html.contains("0.25 cores"),
            "{html}"
        );
    }

    #[test]
    fn minutes_become_charts_placed_by_time() {
        let m = view(
            vec![
                minute("2025-01-01T00:00:00.000Z", 10.0),
                minute("2025-01-01T00:01:00.000Z", 20.0),
            ],
            vec![],
        );
        let html = section(Some(&m), true).0;
        for key in ["cpu", "memory", "exported", "received", "queue"] {
            assert!(html.contains(&format!("data-chart=\"{key}\"")), "{key}");
        }
        // Two neighbouring minutes: one stroke each for sent and failed, at the right end.
        assert!(
            html.contains("sent last 20, failed last 1, highest 20"),
            "{html}"
        );
        assert!(html.contains("00:01 UTC"), "{html}");
        assert!(html.contains(" L300.0 3.0\""), "{html}");
        // The queue is drawn against 100%: half full is half way up.
        assert!(html.contains("M294.9 36.0 L300.0 36.0"), "{html}");
    }

    #[test]
    fn without_own_metrics_one_line_says_why() {
        let html = section(None, false).0;
        assert!(html.contains("sends no own metrics"), "{html}");
        assert!(html.contains("ReportsOwnMetrics capability"), "{html}");
        assert!(section(None, true).0.contains("none have arrived"));
    }
}
