//! `flotilla ctl rollouts`: start, list, watch, pause, resume and abort phased rollouts.

use super::args::{RolloutsCommand, api_name};
use super::output::{Format, Progress, document, field, print_rollout, table};
use super::request::call;
use anyhow::bail;
use reqwest::Client;
use serde_json::json;
use std::time::Duration;

pub(super) async fn rollouts(
    client: &Client,
    api: &str,
    cmd: RolloutsCommand,
    format: Format,
) -> anyhow::Result<()> {
    let url = |path: String| format!("{api}/api/v1/rollouts{path}");
    let (r, watch) = match cmd {
        RolloutsCommand::List => {
            let all = call(client.get(url(String::new()))).await?;
            if format.is_document() {
                return document(&all, format);
            }
            let rows: Vec<Vec<String>> = all["rollouts"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|r| {
                    vec![
                        field(r, "id"),
                        field(r, "config"),
                        format!("{}->{}", r["from_version"], r["to_version"]),
                        field(r, "state"),
                        format!("{}/{}", r["applied"], r["agents_total"]),
                        field(r, "created"),
                    ]
                })
                .collect();
            table(
                &["ID", "CONFIG", "VERSIONS", "STATE", "APPLIED", "CREATED"],
                &rows,
            );
            return Ok(());
        }
        RolloutsCommand::Start {
            config,
            version,
            initial,
            multiplier,
            max_per_phase,
            percentages,
            soak,
            max_failure_percent,
            min_sample,
            on_failure,
            allow_empty,
            regions,
            watch,
        } => {
            let phases = match (initial, percentages.is_empty()) {
                (Some(initial), true) => {
                    json!({"initial": initial, "multiplier": multiplier, "max_per_phase": max_per_phase})
                }
                (None, false) => json!({ "percentages": percentages }),
                _ => bail!(
                    "give either --initial N (with --multiplier, --max-per-phase) or --percentages 10,50,100"
                ),
            };
            let body = json!({
                "config": config,
                "version": version,
                "phases": phases,
                "soak": humantime::format_duration(soak).to_string(),
                "error_budget": {
                    "max_failure_percent": max_failure_percent,
                    "min_sample": min_sample,
                    "action": api_name(on_failure),
                },
                "allow_empty": allow_empty,
            });
            if !regions.is_empty() {
                let mut body = body;
                body["regions"] = json!(regions);
                if let Some(b) = body.as_object_mut() {
                    b.remove("allow_empty");
                }
                let across = format!("{api}/api/v1/region-rollouts");
                let r = call(client.post(&across).json(&body)).await?;
                return across_regions(client, &across, r, watch, format).await;
            }
            (
                call(client.post(url(String::new())).json(&body)).await?,
                watch,
            )
        }
        RolloutsCommand::Status {
            id,
            regions: true,
            watch,
        } => {
            let across = format!("{api}/api/v1/region-rollouts");
            let r = call(client.get(format!("{across}/{id}"))).await?;
            return across_regions(client, &across, r, watch, format).await;
        }
        RolloutsCommand::Status { id, watch, .. } => {
            (call(client.get(url(format!("/{id}")))).await?, watch)
        }
        RolloutsCommand::Pause { id } => {
            (call(client.post(url(format!("/{id}/pause")))).await?, false)
        }
        RolloutsCommand::Resume { id } => (
            call(client.post(url(format!("/{id}/resume")))).await?,
            false,
        ),
        RolloutsCommand::Abort { id } => {
            (call(client.post(url(format!("/{id}/abort")))).await?, false)
        }
    };
    if !watch {
        return match format.is_document() {
            true => document(&r, format),
            false => {
                print_rollout(&r);
                Ok(())
            }
        };
    }
    let id = r["id"].as_str().unwrap_or_default().to_owned();
    let mut r = r;
    let mut progress = Progress::new(r["agents_total"].as_u64().unwrap_or(0), "rolling out");
    while matches!(r["state"].as_str(), Some("running" | "paused")) {
        progress.total(r["agents_total"].as_u64().unwrap_or(0));
        progress.set(
            ["applied", "failed", "unknown"]
                .iter()
                .map(|k| r[k].as_u64().unwrap_or(0))
                .sum(),
            &format!(
                "{} phase {}: {} applied, {} failed, {} unknown, {} pending",
                r["state"].as_str().unwrap_or_default(),
                r["phases"].as_array().map_or(0, Vec::len),
                r["applied"],
                r["failed"],
                r["unknown"],
                r["pending"]
            ),
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
        r = call(client.get(url(format!("/{id}")))).await?;
    }
    progress.finish(&format!(
        "rollout {id} {}",
        r["state"].as_str().unwrap_or_default()
    ));
    if format.is_document() {
        document(&r, format)?;
    } else {
        print_rollout(&r);
    }
    if r["state"] != "completed" {
        bail!(
            "rollout {id} ended {}: {}",
            r["state"].as_str().unwrap_or_default(),
            r["reason"].as_str().unwrap_or_default()
        );
    }
    Ok(())
}

/// Shows a rollout across regions (`r`, from `across`); with `watch`, follows it until it ends
/// (an error when it did not complete).
async fn across_regions(
    client: &Client,
    across: &str,
    mut r: serde_json::Value,
    watch: bool,
    format: Format,
) -> anyhow::Result<()> {
    let id = field(&r, "id");
    if watch {
        let regions = r["regions"].as_array().map_or(0, Vec::len) as u64;
        let mut progress = Progress::new(regions, "regions completed");
        while r["state"] == "running" {
            let done = r["regions"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|p| p["state"] == "completed")
                .count();
            progress.set(done as u64, &field(&r, "reason"));
            tokio::time::sleep(Duration::from_millis(500)).await;
            r = call(client.get(format!("{across}/{id}"))).await?;
        }
        progress.finish(&format!("rollout {id} {}", field(&r, "state")));
    }
    if format.is_document() {
        document(&r, format)?;
    } else {
        println!(
            "rollout {id} of {} version {} across regions: {} {}",
            field(&r, "config"),
            r["version"],
            field(&r, "state"),
            field(&r, "reason")
        );
        let rows: Vec<Vec<String>> = r["regions"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|p| {
                vec![
                    field(p, "region"),
                    p["state"].as_str().unwrap_or("pending").to_owned(),
                    field(p, "rollout"),
                    field(p, "reason"),
                ]
            })
            .collect();
        table(&["REGION", "STATE", "ROLLOUT", "REASON"], &rows);
    }
    if watch && r["state"] != "completed" {
        bail!(
            "rollout {id} ended {}: {}",
            field(&r, "state"),
            field(&r, "reason")
        );
    }
    Ok(())
}
