//! `flotilla ctl configs` and `flotilla ctl apply|diff -f`: configs stored from files or from
//! declared documents, their history, differences and rollbacks.

use super::args::ConfigsCommand;
use super::gitops;
use super::output::Shape;
use super::output::{Format, document, field, out, table};
use super::request::{call, send, success, warn_of};
use anyhow::Context;
use reqwest::Client;
use serde_json::{Value, json};

/// Runs a configs command: what to show, or None when it printed its own output.
pub(super) async fn configs(
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

/// `ctl apply -f` (or, with `dry_run`, `ctl diff -f`): each declared config compared with the
/// server's and stored where it differs. Returns how many differed.
pub(super) async fn apply(
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
