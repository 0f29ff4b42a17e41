//! `flotilla ctl`: the admin CLI, a thin client of the REST API. `args` holds its commands and
//! flags, `output` how answers are printed (`-o table|wide|json|yaml`) and `agent` and
//! `metrics` how agents and their own metrics are; this file sends the requests, `configs` and
//! `rollouts` those of their commands.

mod agent;
mod args;
mod configs;
mod gitops;
mod metrics;
mod output;
mod request;
mod rollouts;

use anyhow::{Context, bail};
pub use args::CtlArgs;
use args::{AgentsCommand, CtlCommand, LabelsCommand, api_name};
use base64::Engine;
pub use output::emit;
use output::{
    Format, Progress, Shape, document, document_in_stream, field, out, pairs, print_agent_table,
    print_config, selector_text, table,
};
use request::call;
use serde_json::{Value, json};
use std::time::Duration;

/// Prints `v` in `format`, as `shape` says for tables.
fn show(v: &Value, shape: Shape, format: Format) -> anyhow::Result<()> {
    if format.is_document() {
        return document(v, format);
    }
    let wide = format == Format::Wide;
    match shape {
        Shape::Pairs => pairs(v),
        Shape::Config => print_config(v, wide),
        Shape::Agent => agent::print_agent(v, wide)?,
        Shape::FleetMetrics => metrics::print_fleet(v),
        Shape::Configs => {
            let rows: Vec<Vec<String>> = v["configs"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|c| {
                    let files: Vec<&str> = c["files"]
                        .as_object()
                        .into_iter()
                        .flatten()
                        .map(|(k, _)| k.as_str())
                        .collect();
                    vec![
                        field(c, "name"),
                        field(c, "version"),
                        selector_text(&c["selector"]),
                        files.join(","),
                        field(c, "created"),
                        field(c, "created_by"),
                    ]
                })
                .collect();
            table(
                &["NAME", "VERSION", "SELECTOR", "FILES", "CREATED", "BY"],
                &rows,
            );
        }
        Shape::Labels => {
            for (k, val) in v["labels"].as_object().into_iter().flatten() {
                out!("{k}={}", val.as_str().unwrap_or_default());
            }
        }
        Shape::Audit => {
            let rows: Vec<Vec<String>> = v["entries"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|e| {
                    ["at", "caller", "action", "object"]
                        .iter()
                        .map(|k| field(e, k))
                        .collect()
                })
                .collect();
            table(&["AT", "CALLER", "ACTION", "OBJECT"], &rows);
            if v["truncated"] == true {
                out!("(more entries: narrow --since/--until or raise --limit)");
            }
        }
    }
    Ok(())
}

pub async fn run(args: CtlArgs) -> anyhow::Result<()> {
    let format = if args.json { Format::Json } else { args.output };
    let api = args.api;
    let mut builder = reqwest::Client::builder();
    if let Some(token) = &args.token {
        let mut value = reqwest::header::HeaderValue::from_str(&format!("Bearer {token}"))
            .context("--token must be printable text")?;
        value.set_sensitive(true);
        let headers =
            reqwest::header::HeaderMap::from_iter([(reqwest::header::AUTHORIZATION, value)]);
        builder = builder.default_headers(headers);
    }
    if let Some(ca) = &args.ca {
        let pem = std::fs::read(ca).with_context(|| format!("cannot read {}", ca.display()))?;
        let cert = reqwest::Certificate::from_pem(&pem)
            .with_context(|| format!("{} is not a PEM certificate", ca.display()))?;
        builder = builder.add_root_certificate(cert);
    }
    let client = builder.build().context("cannot set up the HTTP client")?;
    let url = |path: &str| format!("{api}{path}");
    let (out, shape) = match args.command {
        CtlCommand::Health => (
            call(client.get(url("/api/v1/fleet/health"))).await?,
            Shape::Pairs,
        ),
        CtlCommand::Agents(AgentsCommand::Get { uid }) => (
            call(client.get(url(&format!("/api/v1/agents/{uid}")))).await?,
            Shape::Agent,
        ),
        CtlCommand::Agents(AgentsCommand::Metrics { selector, top }) => {
            let mut query = Vec::new();
            query.extend(selector.map(|s| ("selector", s)));
            query.extend(top.map(|n| ("top", n.to_string())));
            (
                call(client.get(url("/api/v1/fleet/agent-metrics")).query(&query)).await?,
                Shape::FleetMetrics,
            )
        }
        CtlCommand::Agents(AgentsCommand::SendMessage {
            uid,
            capability,
            kind,
            data,
            data_file,
        }) => {
            let data = match (data, data_file) {
                (_, Some(path)) => {
                    let len = std::fs::metadata(&path)
                        .with_context(|| format!("cannot read {}", path.display()))?
                        .len();
                    if len > 64 * 1024 {
                        bail!(
                            "{} is {len} bytes; a custom message carries at most 65536",
                            path.display()
                        );
                    }
                    std::fs::read(&path)
                        .with_context(|| format!("cannot read {}", path.display()))?
                }
                (Some(text), None) => text.into_bytes(),
                (None, None) => Vec::new(),
            };
            let body = json!({
                "capability": capability,
                "type": kind,
                "data_base64": base64::engine::general_purpose::STANDARD.encode(data),
            });
            let path = format!("/api/v1/agents/{uid}/custom-messages");
            (
                call(client.post(url(&path)).json(&body)).await?,
                Shape::Pairs,
            )
        }
        CtlCommand::Agents(AgentsCommand::Delete { uid }) => (
            call(client.delete(url(&format!("/api/v1/agents/{uid}")))).await?,
            Shape::Pairs,
        ),
        CtlCommand::Agents(AgentsCommand::List {
            selector,
            status,
            health,
            config,
            config_name,
            config_version,
            drift,
            limit,
            cursor,
            all,
        }) => {
            let mut query = vec![("limit", limit.to_string())];
            query.extend(selector.map(|s| ("selector", s)));
            query.extend(status.map(|s| ("status", api_name(s))));
            query.extend(health.map(|h| ("health", api_name(h))));
            query.extend(config.map(|c| ("config", api_name(c))));
            query.extend(config_name.map(|n| ("config_name", n)));
            query.extend(config_version.map(|v| ("config_version", v.to_string())));
            query.extend(drift.map(|d| ("drift", d.to_string())));
            let mut cursor = cursor;
            let mut first = true;
            loop {
                let mut q = query.clone();
                q.extend(cursor.clone().map(|c| ("cursor", c)));
                let page = call(client.get(url("/api/v1/agents")).query(&q)).await?;
                cursor = page["next_cursor"].as_str().map(str::to_owned);
                match (format.is_document(), all) {
                    (true, true) => document_in_stream(&page, format)?,
                    (true, false) => document(&page, format)?,
                    (false, _) => print_agent_table(&page, first, all, format == Format::Wide),
                }
                first = false;
                if !all || cursor.is_none() {
                    return Ok(());
                }
            }
        }
        CtlCommand::Configs(cmd) => match configs::configs(&client, &api, cmd, format).await? {
            Some(shown) => shown,
            None => return Ok(()),
        },
        CtlCommand::Labels(cmd) => {
            let (uid, body) = match cmd {
                LabelsCommand::Get { uid } => {
                    let path = format!("/api/v1/agents/{uid}/labels");
                    return show(&call(client.get(url(&path))).await?, Shape::Labels, format);
                }
                LabelsCommand::Set { uid, labels } => {
                    let mut set = serde_json::Map::new();
                    for l in labels {
                        let Some((k, v)) = l.split_once('=') else {
                            bail!("labels are KEY=VALUE, got {l:?}")
                        };
                        set.insert(k.into(), Value::String(v.into()));
                    }
                    (uid, json!({"set": set}))
                }
                LabelsCommand::Remove { uid, keys } => (uid, json!({"remove": keys})),
            };
            let path = format!("/api/v1/agents/{uid}/labels");
            (
                call(client.post(url(&path)).json(&body)).await?,
                Shape::Labels,
            )
        }
        CtlCommand::Rollouts(cmd) => return rollouts::rollouts(&client, &api, cmd, format).await,
        CtlCommand::Restart { uid: Some(uid), .. } => (
            call(client.post(url(&format!("/api/v1/agents/{uid}/restart")))).await?,
            Shape::Pairs,
        ),
        CtlCommand::Restart {
            uid: None,
            selector,
            rate,
        } => {
            let body = json!({"selector": selector, "rate_per_second": rate});
            let job = call(client.post(url("/api/v1/restarts")).json(&body)).await?;
            let id = job["id"].as_str().unwrap_or_default().to_owned();
            let path = url(&format!("/api/v1/restarts/{id}"));
            let total = job["matched"].as_u64().unwrap_or(0);
            if total == 0 {
                bail!("no agent that accepts restart commands matches --selector {selector:?}");
            }
            let mut progress = Progress::new(total, "restarting");
            let mut job = job;
            while !job["done"].as_bool().unwrap_or(true) {
                let n = ["delivered", "queued", "failed"]
                    .iter()
                    .map(|k| job[k].as_u64().unwrap_or(0))
                    .sum();
                progress.set(n, &format!("{} failed", job["failed"]));
                tokio::time::sleep(Duration::from_millis(500)).await;
                job = call(client.get(&path)).await?;
            }
            progress.finish(&format!(
                "{} matched: {} delivered, {} queued, {} failed",
                job["matched"], job["delivered"], job["queued"], job["failed"]
            ));
            (job, Shape::Pairs)
        }
        CtlCommand::RotateCertificate { uid } => (
            call(client.post(url(&format!("/api/v1/agents/{uid}/certificate")))).await?,
            Shape::Pairs,
        ),
        CtlCommand::Apply { path } => {
            configs::apply(&client, &api, &path, false).await?;
            return Ok(());
        }
        CtlCommand::Diff { path, exit_code } => {
            let changed = configs::apply(&client, &api, &path, true).await?;
            if exit_code && changed > 0 {
                bail!("{changed} configs differ from the server's");
            }
            return Ok(());
        }
        CtlCommand::Audit {
            object,
            since,
            until,
            limit,
        } => {
            let mut query = vec![("limit", limit.to_string())];
            query.extend(object.map(|s| ("object", s)));
            query.extend(since.map(|s| ("since", s)));
            query.extend(until.map(|s| ("until", s)));
            (
                call(client.get(url("/api/v1/audit")).query(&query)).await?,
                Shape::Audit,
            )
        }
    };
    show(&out, shape, format)
}
