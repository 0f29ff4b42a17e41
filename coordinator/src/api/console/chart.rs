//! Small line charts drawn on the server as plain SVG: an hour of per-minute points, one path per
//! series, broken where minutes are missing (a lone point is a dot). No script and no library:
//! the chart is a picture with a title, and the numbers it shows are also written beside it, so
//! nothing is said by the drawing (or its colours) alone. Every SVG element is closed explicitly:
//! inside HTML, `<line>` without its end tag would swallow what follows.

use maud::{Markup, html};

/// The points an hour holds, one a minute.
const MINUTES: u64 = 60;
const WIDTH: f64 = 300.0;
const HEIGHT: f64 = 72.0;
/// Room above and below the lines so strokes at 0 and at the top are not cut.
const PAD: f64 = 3.0;

/// One line of a chart: its name in the legend, its CSS class (`s0`, `s1`: stroke and dash), and
/// its points as (minute since the epoch, value). Values that are not finite are left out.
pub struct Line<'a> {
    pub label: &'a str,
    pub class: &'static str,
    pub points: Vec<(u64, f64)>,
}

/// A chart of `lines` over the hour ending at minute `last`: `key` names it (its element ids),
/// `title` says what it shows, `unit` writes a value, the top of the chart is the highest value
/// or `at_least` (a queue's fill is drawn against 100%). `last_at` is the last minute as text.
pub fn chart(
    key: &str,
    title: &str,
    unit: fn(f64) -> String,
    at_least: f64,
    last: u64,
    last_at: &str,
    lines: &[Line],
) -> Markup {
    let first = last.saturating_sub(MINUTES - 1);
    let finite = |l: &Line| -> Vec<(u64, f64)> {
        l.points
            .iter()
            .copied()
            .filter(|(m, v)| v.is_finite() && (first..=last).contains(m))
            .collect()
    };
    let lines: Vec<(&Line, Vec<(u64, f64)>)> = lines.iter().map(|l| (l, finite(l))).collect();
    let high = lines
        .iter()
        .flat_map(|(_, p)| p.iter().map(|(_, v)| *v))
        .fold(0.0_f64, f64::max);
    let top = match high.max(at_least) {
        t if t > 0.0 => t,
        _ => 1.0,
    };
    let x = |m: u64| (m - first) as f64 / (MINUTES - 1) as f64 * WIDTH;
    let y = |v: f64| HEIGHT - PAD - v.max(0.0) / top * (HEIGHT - 2.0 * PAD);
    let summary: Vec<String> = lines
        .iter()
        .map(|(l, p)| match p.last() {
            Some((_, v)) => format!("{} last {}", l.label, unit(*v)),
            None => format!("{} none", l.label),
        })
        .collect();
    let summary = format!("{}, highest {}", summary.join(", "), unit(high));
    let title_id = format!("chart-{key}-title");
    html! {
        figure.chart data-chart=(key) {
            figcaption { strong { (title) } " " span.muted { (summary) } }
            svg role="img" aria-labelledby=(title_id) width=(WIDTH) height=(HEIGHT)
                viewBox={ "0 0 " (WIDTH) " " (HEIGHT) } xmlns="http://www.w3.org/2000/svg" {
                title #(title_id) { (title) ", the last hour: " (summary) }
                line.grid x1="0" x2=(WIDTH) y1=(fmt(y(top))) y2=(fmt(y(top))) {}
                line.axis x1="0" x2=(WIDTH) y1=(fmt(y(0.0))) y2=(fmt(y(0.0))) {}
                @for (l, points) in &lines {
                    @let (path, dots) = segments(points, &x, &y);
                    @if !path.is_empty() { path class={ "series " (l.class) } d=(path) {} }
                    @for (cx, cy) in dots {
                        circle class={ "series dot " (l.class) } cx=(fmt(cx)) cy=(fmt(cy)) r="2.5" {}
                    }
                }
            }
            div.ticks aria-hidden="true" {
                span { "−60 min" }
                span { "0 to " (unit(top)) }
                span { (last_at) }
            }
            @if lines.len() > 1 {
                ul.legend {
                    @for (l, _) in &lines {
                        li { svg width="18" height="8" aria-hidden="true" { line class={ "series " (l.class) } x1="0" x2="18" y1="4" y2="4" {} } " " (l.label) }
                    }
                }
            }
        }
    }
}

/// The path through `points` (minutes in order), a new stroke after each missing minute, and the
/// points that stand alone (no neighbour to draw a line to) as dots.
fn segments(
    points: &[(u64, f64)],
    x: &dyn Fn(u64) -> f64,
    y: &dyn Fn(f64) -> f64,
) -> (String, Vec<(f64, f64)>) {
    let mut path = String::new();
    let mut dots = Vec::new();
    let mut run: Vec<(f64, f64)> = Vec::new();
    let mut flush = |run: &mut Vec<(f64, f64)>| {
        match run.as_slice() {
            [] => {}
            [one] => dots.push(*one),
            [start, rest @ ..] => {
                path.push_str(&format!("M{} {}", fmt(start.0), fmt(start.1)));
                for (px, py) in rest {
                    path.push_str(&format!(" L{} {}", fmt(*px), fmt(*py)));
                }
            }
        }
        run.clear();
    };
    let mut prev: Option<u64> = None;
    for &(m, v) in points {
        if prev.is_some_and(|p| m != p + 1) {
            flush(&mut run);
        }
        run.push((x(m), y(v)));
        prev = Some(m);
    }
    flush(&mut run);
    (path, dots)
}

/// A coordinate with one decimal.
fn fmt(v: f64) -> String {
    format!("{v:.1}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plain(v: f64) -> String {
        format!("{v}")
    }

    #[test]
    fn lines_break_at_missing_minutes_and_lone_points_are_dots() {
        let line = Line {
            label: "sent",
            class: "s0",
            points: vec![(100, 1.0), (101, 2.0), (103, 4.0), (105, f64::NAN)],
        };
        let html = chart("x", "Items", plain, 0.0, 105, "12:05", &[line]).0;
        // 100 and 101 are one stroke; 103 stands alone; NaN is left out.
        assert_eq!(html.matches("<path").count(), 1, "{html}");
        assert_eq!(html.matches(" L").count(), 1, "{html}");
        assert_eq!(html.matches("<circle").count(), 1, "{html}");
        assert!(!html.contains("NaN"), "{html}");
        assert!(html.contains("sent last 4, highest 4"), "{html}");
        // The highest point is at the top, the lowest value near the bottom.
        assert!(html.contains(&format!("cy=\"{}\"", fmt(PAD))), "{html}");
    }

    #[test]
    fn a_chart_without_points_or_with_hostile_labels_is_still_a_picture() {
        let line = Line {
            label: "<b>",
            class: "s0",
            points: vec![(1, 5.0), (2, 6.0)],
        };
        // Points older than the hour are not drawn; the label is escaped.
        let html = chart("y", "Memory", plain, 0.0, 500, "", &[line]).0;
        assert!(
            !html.contains("<path") && !html.contains("<circle"),
            "{html}"
        );
        assert!(html.contains("&lt;b&gt; none"), "{html}");
        assert!(html.contains("role=\"img\""), "{html}");
    }
}
