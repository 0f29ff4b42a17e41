//! Agents' own metrics as text: the fleet's top agents and troubled exporters
//! (`agents metrics`) and one agent's block (`agents get`), in the units people read: cores,
//! MiB, items per second. A value the API leaves out prints as "-".

use super::output::{field, out, table};
use serde_json::Value;

/// CPU in cores, 2 decimals.
pub(super) fn cores(v: &Value) -> String {
    v.as_f64()
        .map_or_else(|| "-".to_owned(), |c| format!("{c:.2} cores"))
}

/// Bytes in MiB.
pub(super) fn mib(v: &Value) -> String {
    v.as_f64().map_or_else(
        || "-".to_owned(),
        |b| format!("{:.1} MiB", b / (1024.0 * 1024.0)),
    )
}

/// Items per second.
pub(super) fn rate(v: &Value) -> String {
    v.as_f64()
        .map_or_else(|| "-".to_owned(), |r| format!("{r:.2}/s"))
}

/// An exporter's queue: how full, and its size of its capacity when both are known.
pub(super) fn queue(e: &Value) -> String {
    match (
        e["queue_fill"].as_f64(),
        e["queue_size"].as_f64(),
        e["queue_capacity"].as_f64(),
    ) {
        (Some(fill), Some(size), Some(cap)) => {
            format!("{:.0}% ({size:.0}/{cap:.0})", fill * 100.0)
        }
        (_, Some(size), _) => format!("{size:.0}"),
        _ => "-".to_owned(),
    }
}

/// A ranked list: its key in the answer, its title, its value's column and unit.
type Ranked = (
    &'static str,
    &'static str,
    &'static str,
    fn(&Value) -> String,
);

fn list(v: &Value) -> impl Iterator<Item = &Value> {
    v.as_array().into_iter().flatten()
}

/// `GET /api/v1/fleet/agent-metrics` as text: a table per top list, then the failing exporters
/// and the queues near full with their totals.
pub(super) fn print_fleet(v: &Value) {
    out!(
        "{} agents selected, {} reporting (an export in the last {} s)",
        v["agents_selected"],
        v["agents_reporting"],
        v["fresh_seconds"]
    );
    let ranked: [Ranked; 4] = [
        ("top_cpu", "top CPU", "CPU", cores),
        ("top_memory", "top memory", "MEMORY", mib),
        ("top_refused", "top refused (receivers)", "REFUSED", rate),
        ("top_failed", "top failed (exporters)", "FAILED", rate),
    ];
    for (key, title, column, unit) in ranked {
        let rows: Vec<Vec<String>> = list(&v[key])
            .map(|r| {
                vec![
                    field(r, "instance_uid"),
                    field(r, "service_name"),
                    unit(&r["value"]),
                ]
            })
            .collect();
        out!("");
        if rows.is_empty() {
            out!("{title}: none");
            continue;
        }
        out!("{title}:");
        table(&["INSTANCE UID", "SERVICE", column], &rows);
    }
    let troubled = [
        (
            "failing_exporters",
            "failing_exporters_total",
            "failing exporters",
            "failing_since",
            "FAILING SINCE",
        ),
        (
            "queues_near_full",
            "queues_near_full_total",
            "queues near full",
            "queue_full_since",
            "FULL SINCE",
        ),
    ];
    for (key, total_key, title, since, since_column) in troubled {
        let rows: Vec<Vec<String>> = list(&v[key])
            .map(|e| {
                vec![
                    field(e, "instance_uid"),
                    field(e, "service_name"),
                    field(e, "name"),
                    rate(&e["sent_per_second"]),
                    rate(&e["failed_per_second"]),
                    queue(e),
                    field(e, since),
                ]
            })
            .collect();
        let total = v[total_key].as_u64().unwrap_or(rows.len() as u64);
        out!("");
        if total == 0 {
            out!("{title}: none");
            continue;
        }
        if total > rows.len() as u64 {
            out!("{title}: {total} (showing {}; raise --top)", rows.len());
        } else {
            out!("{title}: {total}");
        }
        table(
            &[
                "INSTANCE UID",
                "SERVICE",
                "EXPORTER",
                "SENT",
                "FAILED",
                "QUEUE",
                since_column,
            ],
            &rows,
        );
    }
}

/// An agent's own metrics (its detail's `own_metrics`), when it sends them: CPU, memory, and per
/// receiver and exporter their rates, the queue and since when it is in trouble.
pub(super) fn print_agent_block(m: &Value) {
    if !m.is_object() {
        return;
    }
    let dropped = match m["dropped_points"].as_u64() {
        Some(n) if n > 0 => format!(", {n} points not kept"),
        _ => String::new(),
    };
    out!(
        "own metrics: last export {}, since {}{dropped}",
        field(m, "last"),
        field(m, "since")
    );
    out!("  cpu:    {}", cores(&m["cpu_cores"]));
    out!("  memory: {}", mib(&m["memory_bytes"]));
    for r in list(&m["receivers"]) {
        out!(
            "  receiver {}: accepted {}, refused {}",
            field(r, "name"),
            rate(&r["accepted_per_second"]),
            rate(&r["refused_per_second"])
        );
    }
    for e in list(&m["exporters"]) {
        let mut line = format!(
            "  exporter {}: sent {}, failed {}, queue {}",
            field(e, "name"),
            rate(&e["sent_per_second"]),
            rate(&e["failed_per_second"]),
            queue(e)
        );
        if let Some(since) = e["failing_since"].as_str() {
            line.push_str(&format!(", failing since {since}"));
        }
        if let Some(since) = e["queue_full_since"].as_str() {
            line.push_str(&format!(", queue near full since {since}"));
        }
        out!("{line}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn units_read_as_people_write_them() {
        assert_eq!(cores(&json!(0.4567)), "0.46 cores");
        assert_eq!(mib(&json!(150_000_000.0)), "143.1 MiB");
        assert_eq!(rate(&json!(40)), "40.00/s");
        assert_eq!(rate(&Value::Null), "-");
        let e = json!({"queue_size": 950.0, "queue_capacity": 1000.0, "queue_fill": 0.95});
        assert_eq!(queue(&e), "95% (950/1000)");
        assert_eq!(queue(&json!({"queue_size": 3.0})), "3");
        assert_eq!(queue(&json!({})), "-");
    }
}
