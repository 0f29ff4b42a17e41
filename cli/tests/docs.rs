//! The docs cannot drift from the code: every relative link in a Markdown file of the repository
//! points at a file that exists, and every `--flag` a doc names belongs to one of the programs
//! (flotilla's commands, flotilla-swarm, flotilla-echo) or to a tool the docs call by name.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_flotilla");

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Every Markdown file of the repository (not under target/, nor the third-party crates under
/// vendor/: their text is theirs).
fn markdown(dir: &Path, out: &mut Vec<PathBuf>) {
    let vendored = dir.file_name().is_some_and(|n| n == "vendor");
    for entry in std::fs::read_dir(dir).unwrap() {
        let p = entry.unwrap().path();
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        if p.is_dir() {
            if !name.starts_with('.') && name != "target" && !vendored {
                markdown(&p, out);
            }
        } else if name.ends_with(".md") {
            out.push(p);
        }
    }
}

/// The targets of `[text](target)` links.
fn links(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find("](") {
        rest = &rest[i + 2..];
        if let Some(end) = rest.find(')') {
            out.push(rest[..end].to_owned());
        }
    }
    out
}

#[test]
fn every_relative_link_points_at_a_file() {
    let mut files = Vec::new();
    markdown(&root(), &mut files);
    assert!(files.len() > 10, "found {} Markdown files", files.len());
    let mut broken = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        for link in links(&text) {
            let target = link.split('#').next().unwrap_or_default();
            let external = link.contains("://") || link.starts_with("mailto:");
            if external || target.is_empty() {
                continue;
            }
            let path = file.parent().unwrap().join(target);
            if !path.exists() {
                broken.push(format!("{}: {link}", file.display()));
            }
        }
    }
    assert!(
        broken.is_empty(),
        "links to nothing:\n{}",
        broken.join("\n")
    );
}

/// The long flags of a clap program's source: fields under `#[arg(long ...)]`, as clap names
/// them (snake_case to kebab-case) or as `long = "..."` says.
fn flags_in_source(path: &Path, out: &mut BTreeSet<String>) {
    let text = std::fs::read_to_string(path).unwrap();
    let mut pending: Option<Option<String>> = None;
    for line in text.lines().map(str::trim) {
        if line.starts_with("#[arg(") && line.contains("long") {
            let named = line
                .split("long = \"")
                .nth(1)
                .and_then(|r| r.split('"').next())
                .map(str::to_owned);
            pending = Some(named);
        } else if let Some(named) = &pending
            && let Some((field, _)) = line.trim_start_matches("pub ").split_once(':')
            && !line.starts_with("///")
            && !line.starts_with('#')
        {
            out.insert(named.clone().unwrap_or_else(|| field.replace('_', "-")));
            pending = None;
        }
    }
}

/// Flags of the other tools the docs show (only those they name: a longer list would let a wrong
/// flag of ours pass).
const OTHER_TOOLS: &[&str] = &[
    // cargo
    "all-targets",
    "bench",
    "bin",
    "check",
    "locked",
    "nocapture",
    "path",
    "release",
    "test",
    "workspace",
    // scripts/bench.sh
    "quick",
    "scale",
    "pairs",
    // the `duplicates` tool CONTRIBUTING.md names
    "change",
    // perf, for the profiles docs/benchmarks.md reports
    "call-graph",
    // redis-server, as docs/benchmarks.md runs it
    "auto-aof-rewrite-min-size",
];

#[test]
fn every_flag_a_doc_names_exists() {
    let mut known: BTreeSet<String> = OTHER_TOOLS.iter().map(|s| s.to_string()).collect();
    // flotilla's every subcommand and flag, from its own completion script.
    let script = Command::new(BIN)
        .args(["completions", "bash"])
        .output()
        .unwrap();
    let script = String::from_utf8_lossy(&script.stdout);
    for word in script.split(|c: char| c.is_whitespace() || c == '"' || c == '\'') {
        if let Some(flag) = word.strip_prefix("--") {
            known.insert(flag.to_owned());
        }
    }
    assert!(known.contains("api-tokens") && known.contains("selector"));
    for bin in ["swarm.rs", "echo.rs"] {
        flags_in_source(&root().join("loadtest/src/bin").join(bin), &mut known);
    }
    assert!(known.contains("connect-rate") && known.contains("url"));

    let mut files = Vec::new();
    markdown(&root(), &mut files);
    let mut unknown = BTreeSet::new();
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        for (n, line) in text.lines().enumerate() {
            for (i, _) in line.match_indices("--") {
                let before = line[..i].chars().last();
                if before.is_some_and(|c| c.is_alphanumeric() || c == '-') {
                    continue;
                }
                let flag: String = line[i + 2..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
                    .collect();
                let flag = flag.trim_end_matches('-');
                if flag.is_empty() || !flag.starts_with(|c: char| c.is_ascii_lowercase()) {
                    continue;
                }
                if !known.contains(flag) {
                    unknown.insert(format!("{}:{}: --{flag}", file.display(), n + 1));
                }
            }
        }
    }
    assert!(
        unknown.is_empty(),
        "flags no program has:\n{}",
        unknown.into_iter().collect::<Vec<_>>().join("\n")
    );
}
