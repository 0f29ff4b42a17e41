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

pub(super) fn print_rollout(r: &Value) {
    let s = |v: &Value| v.as_str().unwrap_or("").to_owned();
    out!(
        "rollout {} of {} {} -> {}: {} {}",
        s(&r["id"]),
        s(&r["config"]),
        r["from_version"],
        r["to_version"],
        s(&r["state"]),
        s(&r["reason"])
    );
    out!(
        "{:<6}  {:<7}  {:<8}  {:<7}  {:<8}  STARTED",
        "PHASE",
        "AGENTS",
        "APPLIED",
        "FAILED",
        "PENDING"
    );
    for p in r["phases"].as_array().into_iter().flatten() {
        out!(
            "{:<6}  {:<7}  {:<8}  {:<7}  {:<8}  {}",
            p["phase"],
            p["agents"],
            p["applied"],
            p["failed"],
            p["pending"],
            s(&p["started"])
        );
    }
    out!(
        "{} of {} agents applied, {} failed",
        r["applied"],
        r["agents_total"],
        r["failed"]
    );
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
/// cursor at the end (with `all`, the count of every page at the last one).
pub(super) fn print_agent_table(page: &Value, first: bool, all: bool) {
    let rows: Vec<[String; 6]> = page["agents"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|a| {
            let s = |v: &Value| v.as_str().unwrap_or("-").to_owned();
            let config = match a["desired_config"]["name"].as_str() {
                Some(name) => format!(
                    "{} {name} v{}",
                    s(&a["config_state"]),
                    a["desired_config"]["version"]
                ),
                None => s(&a["config_state"]),
            };
            [
                s(&a["instance_uid"]),
                s(&a["status"]),
                a["healthy"].as_bool().map_or("-".into(), |h| {
                    if h { "healthy" } else { "unhealthy" }.into()
                }),
                config,
                s(&a["last_seen"]),
                s(&a["identifying_attributes"]["service.name"]),
            ]
        })
        .collect();
    if first {
        out!(
            "{:<36}  {:<12}  {:<9}  {:<28}  {:<24}  SERVICE",
            "INSTANCE UID",
            "STATUS",
            "HEALTH",
            "CONFIG",
            "LAST SEEN"
        );
    }
    for [uid, status, health, config, seen, service] in &rows {
        out!("{uid:<36}  {status:<12}  {health:<9}  {config:<28}  {seen:<24}  {service}");
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
