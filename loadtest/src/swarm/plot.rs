//! timeline.svg: connected agents (top) and reply latency p50/p99 per second (bottom).

use super::report::Report;
use plotters::prelude::*;

pub(super) fn timeline_svg(report: &Report) -> anyhow::Result<String> {
    let t = &report.timeline;
    let t_max = t.last().map_or(1.0, |s| s.t_s).max(1.0);
    let agents_max = t.iter().map(|s| s.connected).max().unwrap_or(0).max(1) as f64 * 1.05;
    let ms_max = t.iter().map(|s| s.p99_ms).fold(0.0, f64::max).max(1.0) * 1.1;
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (960, 640)).into_drawing_area();
        root.fill(&WHITE).map_err(plot_err)?;
        let (top, bottom) = root.split_vertically(320);
        let title = format!(
            "{}: {} {} agents (run {})",
            super::config::name(report.scenario),
            report.agents,
            super::config::name(report.transport),
            report.run_id
        );
        let mut chart = ChartBuilder::on(&top)
            .caption(title, ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(32)
            .y_label_area_size(64)
            .build_cartesian_2d(0.0..t_max, 0.0..agents_max)
            .map_err(plot_err)?;
        chart
            .configure_mesh()
            .x_desc("seconds")
            .y_desc("connected agents")
            .y_label_formatter(&|v| format!("{v:.0}"))
            .draw()
            .map_err(plot_err)?;
        chart
            .draw_series(LineSeries::new(
                t.iter().map(|s| (s.t_s, s.connected as f64)),
                &BLUE,
            ))
            .map_err(plot_err)?;

        let mut chart = ChartBuilder::on(&bottom)
            .caption("reply latency per second", ("sans-serif", 16))
            .margin(12)
            .x_label_area_size(32)
            .y_label_area_size(64)
            .build_cartesian_2d(0.0..t_max, 0.0..ms_max)
            .map_err(plot_err)?;
        chart
            .configure_mesh()
            .x_desc("seconds")
            .y_desc("ms")
            .draw()
            .map_err(plot_err)?;
        for (label, color, pick) in [
            (
                "p50",
                GREEN,
                (|s: &super::stats::Sample| s.p50_ms) as fn(&super::stats::Sample) -> f64,
            ),
            ("p99", RED, |s: &super::stats::Sample| s.p99_ms),
        ] {
            chart
                .draw_series(LineSeries::new(
                    t.iter()
                        .filter(|s| s.messages_per_s > 0)
                        .map(|s| (s.t_s, pick(s))),
                    &color,
                ))
                .map_err(plot_err)?
                .label(label)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
        }
        chart
            .configure_series_labels()
            .border_style(BLACK)
            .background_style(WHITE)
            .draw()
            .map_err(plot_err)?;
        root.present().map_err(plot_err)?;
    }
    Ok(svg)
}

fn plot_err<E: std::fmt::Display>(e: E) -> anyhow::Error {
    anyhow::anyhow!("drawing the timeline: {e}")
}
