//! `flotilla ctl`: the admin CLI, a thin client of the REST API. `args` holds its commands and flags, `output`
//! what it prints; this file sends the requests.

mod args;
mod output;

use anyhow::{Context, bail};
pub use args::CtlArgs;
use args::{AgentsCommand, ConfigsCommand, CtlCommand, LabelsCommand, RolloutsCommand, api_name};
pub use output::emit;
use output::{Progress, out, print_agent_table, print_rollout};
use reqwest::Client;
use serde_json::{Value, json};
use std::time::Duration;

pub async fn run(args: CtlArgs) -> anyhow::Result<()> {
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
    let out = match args.command {
        CtlCommand::Health => call(client.get(url("/api/v1/fleet/health"))).await?,
        CtlCommand::Agents(AgentsCommand::Get { uid }) => {
            call(client.get(url(&format!("/api/v1/agents/{uid}")))).await?
        }
        CtlCommand::Agents(AgentsCommand::Delete { uid }) => {
            call(client.delete(url(&format!("/api/v1/agents/{uid}")))).await?
        }
        CtlCommand::Agents(AgentsCommand::List {
            selector,
            status,
            health,
            config,
            limit,
            cursor,
            all,
            json,
        }) => {
            let mut query = vec![("limit", limit.to_string())];
            query.extend(selector.map(|s| ("selector", s)));
            query.extend(status.map(|s| ("status", api_name(s))));
            query.extend(health.map(|h| ("health", api_name(h))));
            query.extend(config.map(|c| ("config", api_name(c))));
            let mut cursor = cursor;
            let mut first = true;
            loop {
                let mut q = query.clone();
                q.extend(cursor.clone().map(|c| ("cursor", c)));
                let page = call(client.get(url("/api/v1/agents")).query(&q)).await?;
                cursor = page["next_cursor"].as_str().map(str::to_owned);
                if json {
                    // One page per line with --all (a stream of JSON documents); else pretty.
                    if all {
                        out!("{}", serde_json::to_string(&page)?);
                    } else {
                        out!("{}", serde_json::to_string_pretty(&page)?);
                    }
                } else {
                    print_agent_table(&page, first, all);
                }
                first = false;
                if !all || cursor.is_none() {
                    return Ok(());
                }
            }
        }
        CtlCommand::Configs(cmd) => match configs(&client, &api, cmd).await? {
            Some(v) => v,
            None => return Ok(()),
        },
        CtlCommand::Labels(cmd) => {
            let (uid, body) = match cmd {
                LabelsCommand::Get { uid } => {
                    let path = format!("/api/v1/agents/{uid}/labels");
                    out!(
                        "{}",
                        serde_json::to_string_pretty(&call(client.get(url(&path))).await?)?
                    );
                    return Ok(());
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
            call(client.post(url(&path)).json(&body)).await?
        }
        CtlCommand::Rollouts(cmd) => return rollouts(&client, &api, cmd).await,
        CtlCommand::Restart { uid: Some(uid), .. } => {
            call(client.post(url(&format!("/api/v1/agents/{uid}/restart")))).await?
        }
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
            job
        }
        CtlCommand::RotateCertificate { uid } => {
            call(client.post(url(&format!("/api/v1/agents/{uid}/certificate")))).await?
        }
        CtlCommand::Audit {
            object,
            since,
            until,
            limit,
            json,
        } => {
            let mut query = vec![("limit", limit.to_string())];
            query.extend(object.map(|s| ("object", s)));
            query.extend(since.map(|s| ("since", s)));
            query.extend(until.map(|s| ("until", s)));
            let log = call(client.get(url("/api/v1/audit")).query(&query)).await?;
            if !json {
                for e in log["entries"].as_array().into_iter().flatten() {
                    let s = |k: &str| e[k].as_str().unwrap_or("-").to_owned();
                    out!(
                        "{:<24}  {:<12}  {:<20}  {}",
                        s("at"),
                        s("caller"),
                        s("action"),
                        s("object")
                    );
                }
                return Ok(());
            }
            log
        }
    };
    out!("{}", serde_json::to_string_pretty(&out)?);
    Ok(())
}

/// Runs a configs command; None when it printed its own output.
async fn configs(client: &Client, api: &str, cmd: ConfigsCommand) -> anyhow::Result<Option<Value>> {
    let url = |path: String| format!("{api}/api/v1/configs{path}");
    Ok(Some(match cmd {
        ConfigsCommand::List => call(client.get(url(String::new()))).await?,
        ConfigsCommand::Get {
            name,
            version: None,
        } => call(client.get(url(format!("/{name}")))).await?,
        ConfigsCommand::Get {
            name,
            version: Some(v),
        } => call(client.get(url(format!("/{name}/versions/{v}")))).await?,
        ConfigsCommand::History { name } => {
            let h = call(client.get(url(format!("/{name}/versions")))).await?;
            out!(
                "{:<8}  {:<6}  {:<24}  {:<12}  {:<16}  COMMENT",
                "VERSION",
                "ACTIVE",
                "CREATED",
                "BY",
                "HASH"
            );
            for v in h["versions"].as_array().into_iter().flatten() {
                let s = |k: &str| v[k].as_str().unwrap_or("").to_owned();
                out!(
                    "{:<8}  {:<6}  {:<24}  {:<12}  {:<16}  {}",
                    v["version"],
                    if v["active"] == true { "*" } else { "" },
                    s("created"),
                    s("created_by"),
                    s("hash").get(..16).unwrap_or_default(),
                    s("comment")
                );
            }
            return Ok(None);
        }
        ConfigsCommand::Diff { name, from, to } => {
            let mut q = vec![("from", from.to_string())];
            q.extend(to.map(|t| ("to", t.to_string())));
            let d = call(client.get(url(format!("/{name}/diff"))).query(&q)).await?;
            let text = d["diff"].as_str().unwrap_or_default();
            if text.is_empty() {
                out!("versions {} and {} are the same", d["from"], d["to"]);
            } else {
                out!("{}", text.trim_end_matches('\n'));
            }
            return Ok(None);
        }
        ConfigsCommand::Rollback { name, version } => {
            let body = json!({ "version": version });
            let stored = call(client.post(url(format!("/{name}/rollback"))).json(&body)).await?;
            warn_of(&stored);
            stored
        }
        ConfigsCommand::Apply {
            name,
            files,
            selector,
            no_activate,
        } => {
            let mut body_files = serde_json::Map::new();
            for path in files {
                let file_name = path
                    .file_name()
                    .and_then(|n| n.to_str())
                    .with_context(|| format!("{} has no usable file name", path.display()))?
                    .to_owned();
                let body = std::fs::read_to_string(&path)
                    .with_context(|| format!("cannot read {}", path.display()))?;
                body_files.insert(file_name, Value::String(body));
            }
            let body = json!({
                "selector": selector.unwrap_or_default(),
                "files": body_files,
                "activate": !no_activate,
            });
            let stored = call(client.put(url(format!("/{name}"))).json(&body)).await?;
            warn_of(&stored);
            stored
        }
    }))
}

async fn rollouts(client: &Client, api: &str, cmd: RolloutsCommand) -> anyhow::Result<()> {
    let url = |path: String| format!("{api}/api/v1/rollouts{path}");
    let (r, watch) = match cmd {
        RolloutsCommand::List => {
            let all = call(client.get(url(String::new()))).await?;
            out!(
                "{:<36}  {:<16}  {:<9}  {:<12}  {:<8}  CREATED",
                "ID",
                "CONFIG",
                "VERSIONS",
                "STATE",
                "APPLIED"
            );
            for r in all["rollouts"].as_array().into_iter().flatten() {
                let s = |k: &str| r[k].as_str().unwrap_or("").to_owned();
                out!(
                    "{:<36}  {:<16}  {:<9}  {:<12}  {:<8}  {}",
                    s("id"),
                    s("config"),
                    format!("{}->{}", r["from_version"], r["to_version"]),
                    s("state"),
                    format!("{}/{}", r["applied"], r["agents_total"]),
                    s("created")
                );
            }
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
            (
                call(client.post(url(String::new())).json(&body)).await?,
                watch,
            )
        }
        RolloutsCommand::Status { id, watch, json } => {
            let r = call(client.get(url(format!("/{id}")))).await?;
            if json {
                out!("{}", serde_json::to_string_pretty(&r)?);
                return Ok(());
            }
            (r, watch)
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
        print_rollout(&r);
        return Ok(());
    }
    let id = r["id"].as_str().unwrap_or_default().to_owned();
    let mut r = r;
    let mut progress = Progress::new(r["agents_total"].as_u64().unwrap_or(0), "rolling out");
    while matches!(r["state"].as_str(), Some("running" | "paused")) {
        progress.total(r["agents_total"].as_u64().unwrap_or(0));
        progress.set(
            r["applied"].as_u64().unwrap_or(0) + r["failed"].as_u64().unwrap_or(0),
            &format!(
                "{} phase {}: {} applied, {} failed, {} pending",
                r["state"].as_str().unwrap_or_default(),
                r["phases"].as_array().map_or(0, Vec::len),
                r["applied"],
                r["failed"],
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
    print_rollout(&r);
    if r["state"] != "completed" {
        bail!(
            "rollout {id} ended {}: {}",
            r["state"].as_str().unwrap_or_default(),
            r["reason"].as_str().unwrap_or_default()
        );
    }
    Ok(())
}

/// The warnings an answer carries, on stderr.
fn warn_of(answer: &Value) {
    for w in answer["warnings"].as_array().into_iter().flatten() {
        eprintln!("warning: {}", w.as_str().unwrap_or_default());
    }
}

async fn call(req: reqwest::RequestBuilder) -> anyhow::Result<Value> {
    let resp = req
        .send()
        .await
        .context("cannot reach the Flotilla API (is `flotilla serve` running? see --api)")?;
    let status = resp.status();
    let body: Value = resp.json().await.unwrap_or(Value::Null);
    if !status.is_success() {
        let msg = body
            .get("error")
            .and_then(Value::as_str)
            .unwrap_or("no error message");
        bail!("API answered {status}: {msg}");
    }
    Ok(body)
}
