//! `flotilla ctl`: the admin CLI, a thin client of the REST API. `args` holds its commands and
//! flags, `output` how answers are printed (`-o table|wide|json|yaml`); this file sends the
//! requests.

mod args;
mod gitops;
mod output;

use anyhow::{Context, bail};
pub use args::CtlArgs;
use args::{AgentsCommand, ConfigsCommand, CtlCommand, LabelsCommand, RolloutsCommand, api_name};
use base64::Engine;
pub use output::emit;
use output::{
    Format, Progress, document, document_in_stream, field, out, pairs, print_agent_table,
    print_config, print_rollout, selector_text, table,
};
use reqwest::Client;
use serde_json::{Value, json};
use std::time::Duration;

/// What an answer is, for its table form (-o json and yaml print the document as it is).
enum Shape {
    /// Flat `key: value` lines.
    Pairs,
    /// One agent.
    Agent,
    /// One config version.
    Config,
    /// The active configs.
    Configs,
    /// An agent's labels.
    Labels,
    /// Audit entries.
    Audit,
}

/// Prints `v` in `format`, as `shape` says for tables.
fn show(v: &Value, shape: Shape, format: Format) -> anyhow::Result<()> {
    if format.is_document() {
        return document(v, format);
    }
    let wide = format == Format::Wide;
    match shape {
        Shape::Pairs => pairs(v),
        Shape::Config => print_config(v, wide),
        Shape::Agent => {
            pairs(v);
            for key in [
                "identifying_attributes",
                "non_identifying_attributes",
                "labels",
            ] {
                for (k, val) in v[key].as_object().into_iter().flatten() {
                    out!("{key}: {k}={}", val.as_str().unwrap_or_default());
                }
            }
            let desired = &v["desired_config"];
            if desired.is_object() {
                out!(
                    "desired config: {} v{}",
                    field(desired, "name"),
                    desired["version"]
                );
            }
            out!(
                "reported config: {} {}",
                field(&v["remote_config_status"], "status"),
                v["remote_config_status"]["error"]
                    .as_str()
                    .unwrap_or_default()
            );
            for (key, label) in [("rolled_back", "rolled back from"), ("not_sent", "config")] {
                let refusal = &v["remote_config_status"][key];
                if refusal.is_object() {
                    out!(
                        "{label}: {} {}",
                        field(refusal, "hash"),
                        refusal["error"].as_str().unwrap_or_default()
                    );
                }
            }
            for (kind, types) in v["available_components"]["components"]
                .as_object()
                .into_iter()
                .flatten()
            {
                let types: Vec<&str> = types
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_str)
                    .collect();
                out!("components: {kind}: {}", types.join(" "));
            }
            let custom: Vec<&str> = v["custom_capabilities"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .collect();
            if !custom.is_empty() {
                out!("custom capabilities: {}", custom.join(" "));
            }
            for (key, verb, when) in [
                ("custom_messages", "received", "received"),
                ("pending_custom_messages", "waiting", "expires"),
            ] {
                for m in v[key].as_array().into_iter().flatten() {
                    out!(
                        "custom message {verb}: {} {} ({} bytes) {when} {}",
                        field(m, "capability"),
                        field(m, "type"),
                        m["data_bytes"],
                        field(m, when)
                    );
                }
            }
            if !wide {
                out!("(health tree, effective config, packages: -o wide, json or yaml)");
            } else {
                out!(
                    "{}",
                    serde_json::to_string_pretty(&json!({
                        "health": v["health"],
                        "effective_config": v["effective_config"],
                        "packages": v["packages"],
                    }))?
                );
            }
        }
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
        CtlCommand::Configs(cmd) => match configs(&client, &api, cmd, format).await? {
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
        CtlCommand::Rollouts(cmd) => return rollouts(&client, &api, cmd, format).await,
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
            apply(&client, &api, &path, false).await?;
            return Ok(());
        }
        CtlCommand::Diff { path, exit_code } => {
            let changed = apply(&client, &api, &path, true).await?;
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

/// Runs a configs command: what to show, or None when it printed its own output.
async fn configs(
    client: &Client,
    api: &str,
    cmd: ConfigsCommand,
    format: Format,
) -> anyhow::Result<Option<(Value, Shape)>> {
    let url = |path: String| format!("{api}/api/v1/configs{path}");
    Ok(Some(match cmd {
        ConfigsCommand::List => (call(client.get(url(String::new()))).await?, Shape::Configs),
        ConfigsCommand::Get {
            name,
            version: None,
        } => (
            call(client.get(url(format!("/{name}")))).await?,
            Shape::Config,
        ),
        ConfigsCommand::Get {
            name,
            version: Some(v),
        } => (
            call(client.get(url(format!("/{name}/versions/{v}")))).await?,
            Shape::Config,
        ),
        ConfigsCommand::History { name } => {
            let h = call(client.get(url(format!("/{name}/versions")))).await?;
            if format.is_document() {
                document(&h, format)?;
                return Ok(None);
            }
            let rows: Vec<Vec<String>> = h["versions"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|v| {
                    vec![
                        field(v, "version"),
                        if v["active"] == true { "*" } else { "" }.to_owned(),
                        field(v, "created"),
                        field(v, "created_by"),
                        field(v, "hash").chars().take(16).collect(),
                        v["comment"].as_str().unwrap_or_default().to_owned(),
                    ]
                })
                .collect();
            table(
                &["VERSION", "ACTIVE", "CREATED", "BY", "HASH", "COMMENT"],
                &rows,
            );
            return Ok(None);
        }
        ConfigsCommand::Diff { name, from, to } => {
            let mut q = vec![("from", from.to_string())];
            q.extend(to.map(|t| ("to", t.to_string())));
            let d = call(client.get(url(format!("/{name}/diff"))).query(&q)).await?;
            if format.is_document() {
                document(&d, format)?;
                return Ok(None);
            }
            let text = d["diff"].as_str().unwrap_or_default();
            if text.is_empty() {
                out!("versions {} and {} are the same", d["from"], d["to"]);
            } else {
                out!("{}", text.trim_end_matches('\n'));
            }
            return Ok(None);
        }
        ConfigsCommand::Delete { name } => (
            call(client.delete(url(format!("/{name}")))).await?,
            Shape::Pairs,
        ),
        ConfigsCommand::Rollback { name, version } => {
            let body = json!({ "version": version });
            let stored = call(client.post(url(format!("/{name}/rollback"))).json(&body)).await?;
            warn_of(&stored);
            (stored, Shape::Config)
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
            (stored, Shape::Config)
        }
    }))
}

async fn rollouts(
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
        RolloutsCommand::Status { id, watch } => {
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

/// `ctl apply -f` (or, with `dry_run`, `ctl diff -f`): each declared config compared with the
/// server's and stored where it differs. Returns how many differed.
async fn apply(
    client: &Client,
    api: &str,
    path: &std::path::Path,
    dry_run: bool,
) -> anyhow::Result<usize> {
    let declared = gitops::read(path)?;
    let (mut changed, mut same) = (0, 0);
    for d in &declared {
        let url = format!("{api}/api/v1/configs/{}", d.name);
        // A config the server does not have yet is new; any other error stops the run.
        let current = match send(client.get(&url)).await? {
            (reqwest::StatusCode::NOT_FOUND, _) => None,
            (status, body) => Some(success(status, body)?),
        };
        let mut lines = gitops::differences(current.as_ref(), d)?;
        if let Some(cur) = &current {
            let history = call(client.get(format!("{url}/versions"))).await?;
            let wants_active = d.body["activate"] != false;
            if wants_active && history["active_version"].is_null() {
                lines.push(format!(
                    "~ activate (version {} is staged only)",
                    cur["version"]
                ));
            }
        }
        if dry_run {
            if gitops::print_differences(d, &lines) {
                changed += 1;
            } else {
                same += 1;
            }
            continue;
        }
        if lines.is_empty() {
            out!(
                "= {} unchanged (version {})",
                d.name,
                current.map_or(Value::Null, |c| c["version"].clone())
            );
            same += 1;
            continue;
        }
        let stored = call(client.put(&url).json(&d.body))
            .await
            .with_context(|| format!("{}: config {:?} not stored", d.source.display(), d.name))?;
        warn_of(&stored);
        out!("~ {} stored: version {}", d.name, stored["version"]);
        changed += 1;
    }
    let verb = if dry_run { "would change" } else { "changed" };
    out!(
        "{} configs: {changed} {verb}, {same} unchanged",
        declared.len()
    );
    Ok(changed)
}

/// The warnings an answer carries, on stderr.
fn warn_of(answer: &Value) {
    for w in answer["warnings"].as_array().into_iter().flatten() {
        eprintln!("warning: {}", w.as_str().unwrap_or_default());
    }
}

async fn call(req: reqwest::RequestBuilder) -> anyhow::Result<Value> {
    let (status, body) = send(req).await?;
    success(status, body)
}

/// The body of a successful answer; otherwise the API's error message as an error.
fn success(status: reqwest::StatusCode, body: Value) -> anyhow::Result<Value> {
    if !status.is_success() {
        let msg = body
            .get("error")
            .and_then(Value::as_str)
            .unwrap_or("no error message");
        bail!("API answered {status}: {msg}");
    }
    Ok(body)
}

/// The API's answer to `req`, whatever its status.
async fn send(req: reqwest::RequestBuilder) -> anyhow::Result<(reqwest::StatusCode, Value)> {
    let resp = req
        .send()
        .await
        .context("cannot reach the Flotilla API (is `flotilla serve` running? see --api)")?;
    let status = resp.status();
    Ok((status, resp.json().await.unwrap_or(Value::Null)))
}
