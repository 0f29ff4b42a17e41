//! What `flotilla ctl` prints: tables, rollout phases and progress. Everything goes through
//! [`out!`], which ends the process quietly when stdout is closed (`flotilla ctl ... | head`).

use serde_json::Value;
use std::io::{IsTerminal, Write};

/// Writes one line to stdout; a reader that went away (a closed pipe) ends the process with
/// success, as `head` expects, instead of a panic.
pub fn emit(line: &str) {
    let mut stdout = std::io::stdout().lock();
    if let Err(e) = writeln!(stdout, "{line}").and_then(|()| stdout.flush()) {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        eprintln!("flotilla: cannot write to stdout: {e}");
        std::process::exit(1);
    }
}

/// `println!` for `flotilla ctl`'s output: see [`emit`].
macro_rules! out {
    ($($arg:tt)*) => { $crate::ctl::output::emit(&format!($($arg)*)) };
}
pub(crate) use out;

/// How `flotilla ctl` prints an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Aligned columns, the fields people read.
    Table,
    /// Tables with every column, and config files in full.
    Wide,
    /// The API's JSON document.
    Json,
    /// The API's document as YAML.
    Yaml,
}

impl Format {
    pub(super) fn is_document(self) -> bool {
        matches!(self, Self::Json | Self::Yaml)
    }
}

/// The API's document as JSON (pretty) or YAML.
pub(super) fn document(v: &Value, format: Format) -> anyhow::Result<()> {
    if format == Format::Yaml {
        let mut text = String::new();
        saphyr::YamlEmitter::new(&mut text)
            .dump(&to_yaml(v))
            .map_err(|e| anyhow::anyhow!("cannot write YAML: {e:?}"))?;
        out!("{}", text.trim_end());
    } else {
        out!("{}", serde_json::to_string_pretty(v)?);
    }
    Ok(())
}

/// One page of a stream of documents (`agents list --all`): a JSON document a line, or YAML
/// documents apart.
pub(super) fn document_in_stream(v: &Value, format: Format) -> anyhow::Result<()> {
    match format {
        Format::Yaml => document(v, format),
        _ => {
            out!("{}", serde_json::to_string(v)?);
            Ok(())
        }
    }
}

fn to_yaml(v: &Value) -> saphyr::Yaml<'static> {
    use saphyr::{Scalar, Yaml};
    use std::borrow::Cow;
    match v {
        Value::Null => Yaml::Value(Scalar::Null),
        Value::Bool(b) => Yaml::Value(Scalar::Boolean(*b)),
        Value::Number(n) => match n.as_i64() {
            Some(i) => Yaml::Value(Scalar::Integer(i)),
            None => Yaml::Value(Scalar::FloatingPoint(n.as_f64().unwrap_or(0.0).into())),
        },
        Value::String(s) => Yaml::Value(Scalar::String(Cow::Owned(s.clone()))),
        Value::Array(a) => Yaml::Sequence(a.iter().map(to_yaml).collect()),
        Value::Object(o) => Yaml::Mapping(
            o.iter()
                .map(|(k, v)| {
                    (
                        Yaml::Value(Scalar::String(Cow::Owned(k.clone()))),
                        to_yaml(v),
                    )
                })
                .collect(),
        ),
    }
}

/// Rows under a header, each column as wide as its widest cell (the last one unpadded).
pub(super) fn table(header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    row_line(&widths, header);
    for row in rows {
        row_line(&widths, row);
    }
}

/// One row: each cell but the last padded to its column's width (a longer cell pushes the rest
/// of its row out) and two spaces.
fn row_line<S: AsRef<str>>(widths: &[usize], cells: &[S]) {
    let mut text = String::new();
    for (i, cell) in cells.iter().enumerate() {
        let cell = cell.as_ref();
        text.push_str(cell);
        if i + 1 < cells.len() {
            let width = widths.get(i).copied().unwrap_or(0);
            text.push_str(&" ".repeat(width.saturating_sub(cell.chars().count()) + 2));
        }
    }
    out!("{}", text.trim_end());
}

/// A field of a JSON object as text ("-" when absent; numbers and booleans as written).
pub(super) fn field(v: &Value, key: &str) -> String {
    match &v[key] {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// An object's scalar fields as aligned `key: value` lines (nested ones left to -o json/yaml).
pub(super) fn pairs(v: &Value) {
    let rows: Vec<Vec<String>> = v
        .as_object()
        .into_iter()
        .flatten()
        .filter(|(_, x)| !x.is_object() && !x.is_array())
        .map(|(k, _)| vec![format!("{k}:"), field(v, k)])
        .collect();
    let width = rows.iter().map(|r| r[0].len()).max().unwrap_or(0);
    for r in rows {
        out!("{:<width$}  {}", r[0], r[1]);
    }
}

/// A config version: what it is, where it goes and which files it holds (their bodies with
/// `wide`).
pub(super) fn print_config(c: &Value, wide: bool) {
    out!(
        "config {} version {}{}",
        field(c, "name"),
        c["version"],
        if c["active"] == true { " (active)" } else { "" }
    );
    out!("selector:  {}", selector_text(&c["selector"]));
    out!("hash:      {}", field(c, "hash"));
    out!(
        "created:   {} by {}",
        field(c, "created"),
        field(c, "created_by")
    );
    if let Some(n) = c["matching_agents"].as_u64() {
        out!("matching:  {n} agents now");
    }
    if c["comment"].as_str().is_some_and(|s| !s.is_empty()) {
        out!("comment:   {}", field(c, "comment"));
    }
    for (name, body) in c["files"].as_object().into_iter().flatten() {
        let body = body.as_str().unwrap_or_default();
        out!(
            "file:      {name} ({} lines, {} bytes)",
            body.lines().count(),
            body.len()
        );
        if wide {
            for line in body.lines() {
                out!("  {line}");
            }
        }
    }
    for (name, p) in c["packages"].as_object().into_iter().flatten() {
        out!("package:   {name} {}", field(p, "version"));
    }
}

/// A selector as the API shows it (text, or pairs) in its text form.
pub(super) fn selector_text(selector: &Value) -> String {
    match selector {
        Value::String(s) if s.is_empty() => "(every agent)".to_owned(),
        Value::String(s) => s.clone(),
        Value::Object(m) if m.is_empty() => "(every agent)".to_owned(),
        Value::Object(m) => m
            .iter()
            .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
            .collect::<Vec<_>>()
            .join(","),
        other => other.to_string(),
    }
}

pub(super) fn print_rollout(r: &Value) {
    out!(
        "rollout {} of {} {} -> {}: {} {}",
        field(r, "id"),
        field(r, "config"),
        r["from_version"],
        r["to_version"],
        field(r, "state"),
        r["reason"].as_str().unwrap_or_default()
    );
    let rows: Vec<Vec<String>> = r["phases"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| {
            [
                "phase", "agents", "applied", "failed", "unknown", "pending", "started",
            ]
            .iter()
            .map(|k| field(p, k))
            .collect()
        })
        .collect();
    table(
        &[
            "PHASE", "AGENTS", "APPLIED", "FAILED", "UNKNOWN", "PENDING", "STARTED",
        ],
        &rows,
    );
    out!(
        "{} of {} agents applied, {} failed",
        r["applied"],
        r["agents_total"],
        r["failed"]
    );
    for p in r["phases"].as_array().into_iter().flatten() {
        for why in p["failures"].as_array().into_iter().flatten() {
            out!(
                "phase {} failed: {}",
                p["phase"],
                why.as_str().unwrap_or_default()
            );
        }
    }
}

/// A progress bar on a terminal; on anything else (a pipe, CI), a line whenever the message
/// changes, so logs show progress too.
pub(super) struct Progress {
    bar: Option<indicatif::ProgressBar>,
    last: String,
}

impl Progress {
    pub(super) fn new(total: u64, what: &str) -> Self {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = indicatif::ProgressBar::new(total);
            bar.set_style(
                indicatif::ProgressStyle::with_template("{prefix} [{bar:40}] {pos}/{len} {msg}")
                    .expect("a valid template")
                    .progress_chars("=> "),
            );
            bar.set_prefix(what.to_owned());
            bar
        });
        Self {
            bar,
            last: String::new(),
        }
    }

    pub(super) fn total(&mut self, total: u64) {
        if let Some(bar) = &self.bar {
            bar.set_length(total);
        }
    }

    pub(super) fn set(&mut self, done: u64, msg: &str) {
        match &self.bar {
            Some(bar) => {
                bar.set_position(done);
                bar.set_message(msg.to_owned());
            }
            None if msg != self.last => eprintln!("{msg}"),
            None => {}
        }
        msg.clone_into(&mut self.last);
    }

    pub(super) fn finish(self, msg: &str) {
        match self.bar {
            Some(bar) => bar.finish_with_message(msg.to_owned()),
            None => eprintln!("{msg}"),
        }
    }
}

/// One page of agents as a table: the header on the first page; the count and the next page's
/// cursor at the end (with `all`, the count of every page at the last one). `wide` adds the
/// region, environment, version and gateway.
pub(super) fn print_agent_table(page: &Value, first: bool, all: bool, wide: bool) {
    let rows: Vec<Vec<String>> = page["agents"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|a| {
            let config = match a["desired_config"]["name"].as_str() {
                Some(name) => format!(
                    "{} {name} v{}",
                    field(a, "config_state"),
                    a["desired_config"]["version"]
                ),
                None => field(a, "config_state"),
            };
            let health = match a["healthy"].as_bool() {
                Some(true) => "healthy",
                Some(false) => "unhealthy",
                None => "-",
            };
            let attr = |k: &str| {
                [
                    &a["identifying_attributes"],
                    &a["non_identifying_attributes"],
                ]
                .iter()
                .find_map(|m| m[k].as_str())
                .unwrap_or("-")
                .to_owned()
            };
            let mut row = vec![
                field(a, "instance_uid"),
                field(a, "status"),
                health.to_owned(),
                config,
                field(a, "last_seen"),
                attr("service.name"),
            ];
            if wide {
                row.extend([
                    attr("service.version"),
                    attr("cloud.region"),
                    attr("deployment.environment"),
                    field(a, "gateway"),
                ]);
            }
            row
        })
        .collect();
    let mut header = vec![
        "INSTANCE UID",
        "STATUS",
        "HEALTH",
        "CONFIG",
        "LAST SEEN",
        "SERVICE",
    ];
    if wide {
        header.extend(["VERSION", "REGION", "ENVIRONMENT", "GATEWAY"]);
    }
    // Fixed widths, so every page of --all lines up with the first page's header.
    const WIDTHS: [usize; 9] = [36, 12, 9, 28, 24, 28, 10, 14, 12];
    if first {
        row_line(&WIDTHS, &header);
    }
    for row in &rows {
        row_line(&WIDTHS, row);
    }
    let next = page["next_cursor"].as_str();
    if all {
        if next.is_none() {
            out!("{} agents", page["total"]);
        }
        return;
    }
    out!("{} of {} agents", rows.len(), page["total"]);
    if let Some(c) = next {
        out!("next page: --cursor {c} (or --all for every page)");
    }
}

/// What an answer is, for its table form (-o json and yaml print the document as it is).
pub(super) enum Shape {
    /// Flat `key: value` lines.
    Pairs,
    /// One agent.
    Agent,
    /// The fleet by agents' own metrics.
    FleetMetrics,
    /// One config version.
    Config,
    /// The active configs.
    Configs,
    /// An agent's labels.
    Labels,
    /// Audit entries.
    Audit,
}
