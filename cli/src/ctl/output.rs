//! What `flotilla ctl` prints: tables, rollout phases and progress.

use serde_json::Value;
use std::io::IsTerminal;

pub(super) fn print_rollout(r: &Value) {
    let s = |v: &Value| v.as_str().unwrap_or("").to_owned();
    println!(
        "rollout {} of {} {} -> {}: {} {}",
        s(&r["id"]),
        s(&r["config"]),
        r["from_version"],
        r["to_version"],
        s(&r["state"]),
        s(&r["reason"])
    );
    println!(
        "{:<6}  {:<7}  {:<8}  {:<7}  {:<8}  STARTED",
        "PHASE", "AGENTS", "APPLIED", "FAILED", "PENDING"
    );
    for p in r["phases"].as_array().into_iter().flatten() {
        println!(
            "{:<6}  {:<7}  {:<8}  {:<7}  {:<8}  {}",
            p["phase"],
            p["agents"],
            p["applied"],
            p["failed"],
            p["pending"],
            s(&p["started"])
        );
    }
    println!(
        "{} of {} agents applied, {} failed",
        r["applied"], r["agents_total"], r["failed"]
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

pub(super) fn print_agent_table(page: &Value) {
    println!(
        "{:<36}  {:<12}  {:<9}  {:<10}  {:<24}  SERVICE",
        "INSTANCE UID", "STATUS", "HEALTHY", "CONFIG", "LAST SEEN"
    );
    for a in page["agents"].as_array().into_iter().flatten() {
        let s = |v: &Value| v.as_str().unwrap_or("-").to_owned();
        println!(
            "{:<36}  {:<12}  {:<9}  {:<10}  {:<24}  {}",
            s(&a["instance_uid"]),
            s(&a["status"]),
            a["healthy"].as_bool().map_or("-".into(), |h| h.to_string()),
            s(&a["remote_config_status"]["status"]),
            s(&a["last_seen"]),
            s(&a["identifying_attributes"]["service.name"]),
        );
    }
    println!(
        "{} of {} agents",
        page["agents"].as_array().map_or(0, Vec::len),
        page["total"]
    );
    if let Some(c) = page["next_cursor"].as_str() {
        println!("more: --cursor {c}");
    }
}
